"""DotEngine gateware against the integer golden model: equality, back-pressure, timing, export.

Every simulation streams several linear layers back to back (reductions of different lengths,
each split in passes of R rows) with random idle cycles on the input, random back-pressure on the
output and random junk in every lane and code that the contract says must be ignored.

The full configuration product is marked ``slow`` (run it with ``pytest --runslow``).
"""

import itertools

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hadahw.contract import DeltaFormat, Requant
from hadahw.golden import QAct, QLayer, accumulate
from hadahw.params import AcceleratorConfig
from hadahw.rtl.engine import DotEngine, EngineTiming, input_layout
from hadahw.rtl.pe import PE

BETAS = [2, 4, 8, 16, 32, 64]
#: beta_a = 1: every activation has its own delta_a code (HBWN).
PAIRS = [(bw, ba) for bw in BETAS for ba in [1, *BETAS] if ba <= bw]

FIXED8 = DeltaFormat()
LOG2_4 = DeltaFormat(bits=4, kind="log2")


# Stimulus ------------------------------------------------------------------------------------------

def random_layer(rng, cfg: AcceleratorConfig, n: int, k: int, *, w_signs=None, w_delta=None) -> QLayer:
    fmt = cfg.weight_delta
    nseg = -(-k // cfg.beta_w)
    return QLayer(kind="linear",
                  weight_signs=rng.random((n, k)) < 0.5 if w_signs is None else np.full((n, k), w_signs),
                  weight_delta=rng.integers(0, fmt.max_code + 1, (n, nseg)) if w_delta is None else np.full((n, nseg), w_delta),
                  beta_w=cfg.beta_w, beta_a=cfg.beta_a, in_shape=(k,), requant=Requant.identity(n),
                  weight_format=fmt, act_bits=cfg.act_bits)


def random_act(rng, cfg: AcceleratorConfig, k: int, *, signs=None, delta=None) -> QAct:
    nseg = -(-k // cfg.beta_a)
    return QAct(signs=rng.random(k) < 0.5 if signs is None else np.full(k, signs),
                delta=rng.integers(0, cfg.da_max + 1, nseg) if delta is None else np.full(nseg, delta),
                beta_a=cfg.beta_a, bits=cfg.act_bits)


def _word(bits, lo, cnt, lanes, rng) -> int:
    """Bits ``lo..lo+cnt`` LSB first, junk in the lanes past ``cnt``."""
    b = np.concatenate([np.asarray(bits[lo:lo + cnt], bool), rng.random(lanes - cnt) < 0.5])
    return int(sum(1 << i for i in np.flatnonzero(b)))


def beats_for(cfg: AcceleratorConfig, layer: QLayer, act: QAct, rng, *, channels=None) -> tuple[list[int], np.ndarray]:
    """Packed input beats for every pass of R rows, and the expected accumulators (passes*R,).

    ``channels``: lay the reduction out as pixels of that many channels, each pixel starting a new
    word (as the core does for a conv over C channels), so words in the middle may be partial.
    """
    n, k = layer.out_features, layer.reduction
    lanes, rows = cfg.lanes, cfg.rows
    layout = input_layout(cfg)
    c = channels or k
    starts = [(p * c + j * lanes, min(lanes, c - j * lanes)) for p in range(k // c) for j in range(-(-c // lanes))]
    passes, words = -(-n // rows), len(starts)
    beats = []
    for p, j in itertools.product(range(passes), range(words)):
        lo, cnt = starts[j]
        # Codes of groups that lie wholly past K are junk: they must not count.
        da = [int(act.delta[(lo + g * cfg.group_a) // cfg.beta_a]) if lo + g * cfg.group_a < k
              else int(rng.integers(0, cfg.da_max + 1)) for g in range(cfg.act_groups)]
        w, dw = [], []
        for r in range(rows):
            row = p * rows + r
            if row < n:
                w.append(_word(layer.weight_signs[row], lo, cnt, lanes, rng))
                dw.append([int(layer.weight_delta[row, (lo + h * cfg.group_w) // cfg.beta_w]) if lo + h * cfg.group_w < k
                           else int(rng.integers(0, cfg.weight_delta.max_code + 1)) for h in range(cfg.weight_groups)])
            else:  # padding row: any signs, zero delta_w
                w.append(_word(rng.random(lanes) < 0.5, 0, lanes, lanes, rng))
                dw.append([0] * cfg.weight_groups)
        payload = {"a": _word(act.signs, lo, cnt, lanes, rng), "count": cnt, "da": da, "w": w, "dw": dw,
                   "seg_end": (lo + cnt) % cfg.beta_w == 0, "last": j == words - 1}
        beats.append(layout.const(payload).as_value().value)
    want = np.zeros(passes * rows, np.int64)
    want[:n] = accumulate(layer, act)
    return beats, want


def simulate(cfg: AcceleratorConfig, beats: list[int], n_results: int, rng, *, idle=0.0, stall=0.0):
    """Drive ``beats`` into a DotEngine; return (results (n_results, R), cycle of the last result).

    ``idle`` / ``stall``: probability of an idle input cycle / of ``o.ready`` low in a cycle.
    Cycle 0 is the cycle in which the first beat is offered (when ``idle`` is 0).
    """
    dut = DotEngine(cfg)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    results, last_cycle = [], []
    payload_width = len(dut.i.payload.as_value())

    async def producer(ctx):
        for beat in beats:
            while rng.random() < idle:
                junk = int.from_bytes(rng.bytes(payload_width // 8 + 1), "little") & ((1 << payload_width) - 1)
                ctx.set(dut.i.payload.as_value(), junk)
                await ctx.tick()
            ctx.set(dut.i.payload.as_value(), beat)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        cycle = 0
        limit = 50 * (len(beats) + dut.latency + 10) * (1 + int(stall * 10))
        held = None  # payload offered but not taken in the previous cycle
        while len(results) < n_results:
            ready = bool(rng.random() >= stall)
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            values = [payload[r] for r in range(cfg.rows)]
            if held is not None:
                assert valid and values == held, "output withdrawn or changed before it was taken"
            if valid and ready:
                results.append(values)
                last_cycle.append(cycle)
            held = values if valid and not ready else None
            cycle += 1
            assert cycle < limit, f"engine produced {len(results)} of {n_results} results in {cycle} cycles"
        # Nothing extra may come out afterwards.
        ctx.set(dut.o.ready, 1)
        for _ in range(dut.latency + 4):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            assert not valid, "engine produced more results than reductions"

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return np.array(results, np.int64).reshape(n_results, cfg.rows), last_cycle[-1]


def ks_for(cfg: AcceleratorConfig) -> list[int]:
    """Reduction lengths that are and are not multiples of L and of the betas."""
    lanes, bw = cfg.lanes, cfg.beta_w
    ks = [1, lanes - 1, lanes + 3, 3 * bw + 5, 2 * max(bw, lanes)]
    return [k for k in dict.fromkeys(ks) if 1 <= k <= cfg.max_reduction]


def check_config(cfg: AcceleratorConfig, seed: int, *, idle=0.3, stall=0.3, n=None):
    rng = np.random.default_rng(seed)
    n = n if n is not None else cfg.rows + 1  # two passes, the second padded (except for R = 1)
    beats, want = [], []
    for k in ks_for(cfg):
        layer, act = random_layer(rng, cfg, n, k), random_act(rng, cfg, k)
        cfg.fits(layer)
        b, w = beats_for(cfg, layer, act, rng)
        beats += b
        want.append(w)
    want = np.concatenate(want).reshape(-1, cfg.rows)
    got, _ = simulate(cfg, beats, len(want), rng, idle=idle, stall=stall)
    np.testing.assert_array_equal(got, want)


def make_config(bw, ba, lanes, rows, scaling, fmt, **kw) -> AcceleratorConfig:
    kw.setdefault("max_reduction", 3 * max(bw, lanes) + 5 + 2 * max(bw, lanes))
    return AcceleratorConfig(rows=rows, lanes=lanes, beta_w=bw, beta_a=ba, scaling=scaling, weight_delta=fmt, **kw)


# Default matrix: every (beta_w, beta_a) pair twice, the other axes rotated so each value of each
# axis appears many times (and both beta > L and beta <= L occur for every lane count).
LANES, ROWS, SCALINGS, FORMATS = [8, 16, 64], [1, 3, 4], ["shiftadd", "dsp"], [FIXED8, LOG2_4]
DEFAULT_CASES = [
    (bw, ba, LANES[(i + j) % 3], ROWS[(i // 3 + j) % 3], SCALINGS[(i + j) % 2], FORMATS[(i // 2 + j) % 2])
    for j in range(2) for i, (bw, ba) in enumerate(PAIRS)
]
FULL_CASES = [(bw, ba, lanes, rows, sc, fmt) for (bw, ba) in PAIRS for lanes in LANES for rows in ROWS
              for sc in SCALINGS for fmt in FORMATS]


def _case_id(case, seed):
    bw, ba, lanes, rows, sc, fmt = case
    return f"bw{bw}-ba{ba}-L{lanes}-R{rows}-{sc}-{fmt.kind}{fmt.bits}-seed{seed}"


@pytest.mark.parametrize("case,seed", [(c, s) for s, c in enumerate(DEFAULT_CASES)],
                         ids=[_case_id(c, s) for s, c in enumerate(DEFAULT_CASES)])
def test_engine_matches_golden(case, seed):
    check_config(make_config(*case), seed)


@pytest.mark.parametrize("case,seed", [(c, 1000 + s) for s, c in enumerate(FULL_CASES)],
                         ids=[_case_id(c, 1000 + s) for s, c in enumerate(FULL_CASES)])
@pytest.mark.slow
def test_engine_matches_golden_full(case, seed):
    check_config(make_config(*case), seed)


@pytest.mark.parametrize("kw,seed", [
    (dict(levels_per_stage=1), 11),
    (dict(levels_per_stage=3, beta_w=2, beta_a=2), 12),
    (dict(levels_per_stage=5, beta_w=64, beta_a=8, lanes=16), 13),
    (dict(act_bits=3, weight_delta=DeltaFormat(bits=5, kind="log2")), 14),
    (dict(act_bits=12, weight_delta=DeltaFormat(bits=12), scaling="dsp"), 15),
    (dict(act_bits=1, weight_delta=DeltaFormat(bits=1), beta_w=32, beta_a=4, lanes=8), 16),
], ids=["levels1-seed11", "levels3-bw2-seed12", "levels5-bw64-seed13", "act3-log2x5-seed14",
        "act12-fixed12-dsp-seed15", "act1-fixed1-seed16"])
def test_engine_other_parameters(kw, seed):
    base = dict(rows=2, lanes=16, beta_w=8, beta_a=4)
    base.update(kw)
    base.setdefault("max_reduction", 3 * max(base["beta_w"], base["lanes"]) + 5 + 2 * max(base["beta_w"], base["lanes"]))
    check_config(AcceleratorConfig(**base), seed)


@pytest.mark.parametrize("stall,idle", [(0.0, 0.0), (0.9, 0.0), (0.0, 0.9), (0.7, 0.5)])
def test_engine_back_pressure(stall, idle):
    """Heavy stalls with one-word reductions (results every cycle) and long ones."""
    cfg = AcceleratorConfig(rows=3, lanes=8, beta_w=16, beta_a=4, max_reduction=64)
    rng = np.random.default_rng(int(stall * 10 + idle * 100))
    beats, want = [], []
    for k in [3, 8, 1, 5, 40, 2, 64, 7]:
        layer, act = random_layer(rng, cfg, 4, k), random_act(rng, cfg, k)
        b, w = beats_for(cfg, layer, act, rng)
        beats += b
        want.append(w)
    want = np.concatenate(want).reshape(-1, cfg.rows)
    got, _ = simulate(cfg, beats, len(want), rng, idle=idle, stall=stall)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case,c,pixels", [
    ((16, 2, 8, 3, "shiftadd", FIXED8), 4, 9),     # beta_w > L, C < L divides beta_w: partial words, seg_end by K
    ((64, 8, 16, 2, "dsp", LOG2_4), 8, 12),        # a segment spans 8 half-full words
    ((4, 2, 16, 3, "dsp", FIXED8), 12, 5),         # beta_w <= L, beta_w | C < L
    ((8, 4, 8, 2, "shiftadd", LOG2_4), 24, 3),     # C > L, not a power of two: one partial word per pixel
    ((32, 4, 16, 1, "shiftadd", FIXED8), 48, 2),   # beta_w > L, C a multiple of L but not of beta_w
], ids=["bw16-C4-L8", "bw64-C8-L16", "bw4-C12-L16", "bw8-C24-L8", "bw32-C48-L16"])
def test_engine_partial_words_with_explicit_segment_ends(case, c, pixels):
    """Conv-style reductions: every pixel starts a new word, so words in the middle are partial and a
    weight segment ends where the reduction index (not the word count) crosses a multiple of beta_w."""
    bw, ba, lanes, rows, sc, fmt = case
    k = c * pixels
    cfg = make_config(bw, ba, lanes, rows, sc, fmt, max_reduction=k)
    rng = np.random.default_rng(c * 100 + pixels)
    layer, act = random_layer(rng, cfg, rows + 1, k), random_act(rng, cfg, k)
    beats, want = beats_for(cfg, layer, act, rng, channels=c)
    got, _ = simulate(cfg, beats, len(want) // cfg.rows, rng, idle=0.2, stall=0.2)
    np.testing.assert_array_equal(got.reshape(-1), want)


@pytest.mark.parametrize("agree", [True, False], ids=["agree", "disagree"])
@pytest.mark.parametrize("case", [
    (16, 2, 64, 3, "shiftadd", FIXED8),
    (64, 64, 8, 1, "dsp", FIXED8),
    (4, 2, 16, 4, "shiftadd", DeltaFormat(bits=5, kind="log2")),
    (32, 8, 16, 2, "dsp", DeltaFormat(bits=3, kind="log2")),
], ids=lambda c: _case_id(c, 0)[:-6])
def test_engine_extremes_reach_accumulator_bound(case, agree):
    """All deltas maximal, K = max_reduction: the result is exactly +bound (or -bound)."""
    bw, ba, lanes, rows, sc, fmt = case
    k = 3 * max(bw, lanes) + 5
    cfg = make_config(bw, ba, lanes, rows, sc, fmt, max_reduction=k)
    rng = np.random.default_rng(7)
    layer = random_layer(rng, cfg, rows, k, w_signs=True, w_delta=fmt.max_code)
    act = random_act(rng, cfg, k, signs=agree, delta=cfg.da_max)
    beats, want = beats_for(cfg, layer, act, rng)
    assert np.all(want == (cfg.acc_bound if agree else -cfg.acc_bound))
    assert cfg.acc_bound.bit_length() + 1 == cfg.acc_bits
    got, _ = simulate(cfg, beats, 1, rng, idle=0.2, stall=0.2)
    np.testing.assert_array_equal(got[0], want)


@pytest.mark.parametrize("case,n,k", [
    ((16, 2, 64, 4, "shiftadd", FIXED8), 9, 200),
    ((64, 16, 8, 3, "dsp", LOG2_4), 3, 150),
    ((4, 4, 16, 1, "shiftadd", LOG2_4), 2, 1),
    ((8, 2, 8, 2, "dsp", FIXED8), 5, 8),
], ids=["L64-R4", "L8-R3-span8", "L16-R1-k1", "L8-R2"])
def test_cycles_match_prediction(case, n, k):
    """Cycles from the first input to the last result, never stalled, equal ``cycles_for``."""
    cfg = make_config(*case, max_reduction=max(k, 8))
    rng = np.random.default_rng(3)
    layer, act = random_layer(rng, cfg, n, k), random_act(rng, cfg, k)
    beats, want = beats_for(cfg, layer, act, rng)
    got, last_cycle = simulate(cfg, beats, len(want) // cfg.rows, rng)
    np.testing.assert_array_equal(got.reshape(-1), want)
    engine = EngineTiming(cfg)
    assert last_cycle + 1 == engine.cycles_for(k, n) == engine.layer_cycles(layer)
    passes, words = -(-n // cfg.rows), -(-k // cfg.lanes)
    assert engine.cycles_for(k, n) == passes * words + engine.latency
    # A single one-word reduction: offered in cycle 0, result valid in cycle `latency`.
    got, last_cycle = simulate(cfg, beats_for(cfg, random_layer(rng, cfg, 1, 1), random_act(rng, cfg, 1), rng)[0], 1, rng)
    assert last_cycle == engine.latency


def test_timing_model_errors():
    engine = EngineTiming(AcceleratorConfig(rows=2, lanes=8, beta_w=8, beta_a=2, max_reduction=16))
    assert engine.initiation_interval == 1
    with pytest.raises(ValueError, match="positive reduction length"):
        engine.cycles_for(0)
    with pytest.raises(ValueError, match="exceeds max_reduction"):
        engine.cycles_for(17)
    with pytest.raises(ValueError, match="outputs must be a positive integer"):
        engine.cycles_for(4, 0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="max_reduction"):
        engine.layer_cycles(random_layer(rng, AcceleratorConfig(rows=2, lanes=8, beta_w=8, beta_a=2), 2, 17))
    with pytest.raises(TypeError, match="AcceleratorConfig"):
        DotEngine({"rows": 2})


@pytest.mark.parametrize("levels", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("bw,ba,lanes", [(2, 2, 64), (16, 2, 64), (64, 4, 8), (8, 8, 8)])
@pytest.mark.parametrize("scaling", ["shiftadd", "dsp"])
def test_schedule_is_consistent(levels, bw, ba, lanes, scaling):
    """Stages are ordered, the correction is ready when the PEs need it, latency grows with depth."""
    cfg = AcceleratorConfig(rows=1, lanes=lanes, beta_w=bw, beta_a=ba, scaling=scaling, levels_per_stage=levels)
    engine = EngineTiming(cfg)
    s = engine.schedule
    assert s["a"] == s["w"] == s["mask"] == 0
    assert s["da"] <= s["corr"] <= s["dw"] <= s["acc"]
    assert s["corr"] >= engine.correction_stage
    assert ("seg" in s) == (bw > lanes)
    assert engine.latency == s["acc"] + 2
    if levels < 8:
        deeper = EngineTiming(AcceleratorConfig(rows=1, lanes=lanes, beta_w=bw, beta_a=ba, scaling=scaling,
                                             levels_per_stage=levels + 1))
        assert deeper.latency <= engine.latency


def test_pe_rejects_bad_parameters():
    common = dict(act_bits=8, weight_bits=8, acc_bits=20)
    with pytest.raises(ValueError, match="lanes must be a power of two"):
        PE(lanes=12, beta_w=4, beta_a=2, **common)
    with pytest.raises(ValueError, match="beta_a must not exceed beta_w"):
        PE(lanes=8, beta_w=2, beta_a=4, **common)
    with pytest.raises(ValueError, match="scaling"):
        PE(lanes=8, beta_w=4, beta_a=2, scaling="lut", **common)
    with pytest.raises(ValueError, match="weight_kind"):
        PE(lanes=8, beta_w=4, beta_a=2, weight_kind="float", **common)


@pytest.mark.parametrize("kw", [
    dict(rows=2, lanes=16, beta_w=16, beta_a=2),
    dict(rows=2, lanes=8, beta_w=64, beta_a=8, scaling="dsp", weight_delta=LOG2_4),
], ids=["span1", "span8-dsp-log2"])
def test_converts_to_verilog(kw):
    text = verilog.convert(DotEngine(AcceleratorConfig(max_reduction=1024, **kw)), name="dot_engine")
    assert "module dot_engine" in text
    assert "i__ready" in text and "o__valid" in text
