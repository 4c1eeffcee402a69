"""Output-stage gateware (MaxPool -> Requantizer -> Binarizer) against the integer contract.

Every stream test drives its input with random idle cycles and its output with random
back-pressure, checks the stream protocol (a valid beat stays valid and unchanged until taken),
and compares with :mod:`hadahw.contract` / :mod:`hadahw.golden` for equality.
"""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Cat, Elaboratable, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from hadahw.contract import Requant, binarize_int
from hadahw.golden import max_pool
from hadahw.params import AcceleratorConfig
from hadahw.rtl.binarizer import Binarizer, RestoringDivider
from hadahw.rtl.memories import EntryMemory
from hadahw.rtl.pool import MaxPool
from hadahw.rtl.requant import Requantizer
from hadahw.rtl.serializer import Serializer
from simutil import collect, drive, run_sim


# ---------------------------------------------------------------------------------------------
# Stream test harness (drive/collect/run_sim: tests/simutil.py)


def measure_latency(dut, beat, configure):
    """Cycles from the accepted input beat to its output beat becoming valid (no back-pressure)."""
    result = {}

    async def tb(ctx):
        await configure(ctx)
        ctx.set(dut.o_stream.ready, 1)
        ctx.set(dut.i_stream.valid, 1)
        ctx.set(dut.i_stream.payload, beat)
        await ctx.tick().until(dut.i_stream.ready)
        ctx.set(dut.i_stream.valid, 0)
        n = 0
        while not ctx.get(dut.o_stream.valid):
            await ctx.tick()
            n += 1
            assert n < 1000
        result["latency"] = n + 1  # the accepting edge counts as the first cycle
    run_sim(dut, tb)
    return result["latency"]


# ---------------------------------------------------------------------------------------------
# Requantizer

ACC_W, MULT_W, BIAS_W, CH = 20, 16, 24, 12


def requant_case(rng, n_beats):
    amax = (1 << (ACC_W - 1)) - 1
    mult = rng.integers(-(1 << (MULT_W - 1)), 1 << (MULT_W - 1), CH)
    mult[:4] = [-(1 << (MULT_W - 1)), (1 << (MULT_W - 1)) - 1, 1, -1]
    bias = rng.integers(-(1 << (BIAS_W - 1)), 1 << (BIAS_W - 1), CH)
    bias[:3] = [-(1 << (BIAS_W - 1)), (1 << (BIAS_W - 1)) - 1, 0]
    chan = rng.integers(0, CH, n_beats)
    acc = np.where(rng.random(n_beats) < 0.5, rng.integers(-amax, amax + 1, n_beats),
                   rng.integers(-3000, 3000, n_beats))
    extremes = np.array([amax, -amax, -amax - 1, 0, 1, -1])
    acc[:len(extremes)] = extremes
    chan[:8] = [0, 1, 0, 1, 0, 1, 2, 3]
    return mult, bias, chan, acc


def expected_requant(rq, chan, acc):
    """Golden outputs of beats (channel, acc): one row per beat, the value placed in its channel."""
    o = np.zeros((len(acc), rq.channels), np.int64)
    o[np.arange(len(acc)), chan] = acc
    return rq.apply(o)[np.arange(len(acc)), chan]


def requant_load(dut, mult, bias, cfg):
    async def load(ctx):
        ctx.set(dut.config, cfg)
        for c in range(len(mult)):
            ctx.set(dut.param_addr, c)
            ctx.set(dut.param_data, {"mult": int(mult[c]), "bias": int(bias[c])})
            ctx.set(dut.param_we, 1)
            await ctx.tick()
        ctx.set(dut.param_we, 0)
    return load


@pytest.mark.parametrize("shift", [0, 1, 13, 30])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("saturate", [False, True])
@pytest.mark.parametrize("seed", [1])
def test_requant_matches_contract(seed, shift, relu, saturate):
    rng = np.random.default_rng([seed, shift, relu, saturate])
    out_bits = 8 if shift >= 13 else 12
    n = 48
    mult, bias, chan, acc = requant_case(rng, n)
    rq = Requant(multiplier=mult, bias=bias, shift=shift, relu=relu, saturate_bits=out_bits if saturate else None)
    want = expected_requant(rq, chan, acc)
    dut = Requantizer(acc_width=ACC_W, channels=CH, mult_width=MULT_W, bias_width=BIAS_W)
    cfg = {"shift": shift, "relu": int(relu), "saturate": int(saturate), "out_bits": out_bits}
    flags = rng.random((n, 2)) < 0.3
    beats = [{"channel": int(c), "acc": int(a), "first": int(f), "last": int(l)}
             for c, a, (f, l) in zip(chan, acc, flags)]
    got = []
    run_sim(dut, drive(dut.i_stream, beats, rng, before=requant_load(dut, mult, bias, cfg)),
            collect(dut.o_stream, n, rng, got))
    assert [g["y"] for g in got] == want.tolist()
    assert [(g["channel"], g["first"], g["last"]) for g in got] == [
        (b["channel"], b["first"], b["last"]) for b in beats]


def test_requant_known_answer_and_full_rate():
    # o=5, M=3, B=1, S=2: (15 + 1 + 2) >> 2 = 4;  o=-5: (-15 + 1 + 2) >> 2 = -3 (floor);
    # o=-6 with relu: 0*3 + 1 -> (1 + 2) >> 2 = 0;  o=400, M=3 saturating to 8 bits: 300 -> 255.
    dut = Requantizer(acc_width=12, channels=2, mult_width=4, bias_width=4, max_shift=4, max_out_bits=8)
    rq = Requant(multiplier=[3, 3], bias=[1, 1], shift=2)
    assert rq.apply(np.array([[5, -5]])).tolist() == [[4, -3]]
    cases = [({"relu": 0, "saturate": 0}, 5, 4), ({"relu": 0, "saturate": 0}, -5, -3),
             ({"relu": 1, "saturate": 0}, -6, 0), ({"relu": 0, "saturate": 1}, 1600, 255),
             ({"relu": 0, "saturate": 1}, -1600, -255)]
    got = []

    async def tb(ctx):
        await requant_load(dut, [3, 3], [1, 1], {"shift": 2, "relu": 0, "saturate": 0, "out_bits": 8})(ctx)
        for cfg, o, _ in cases:
            ctx.set(dut.config, {"shift": 2, "out_bits": 8, **cfg})
            ctx.set(dut.o_stream.ready, 1)
            ctx.set(dut.i_stream.valid, 1)
            ctx.set(dut.i_stream.payload, {"channel": 1, "acc": o})
            await ctx.tick().until(dut.i_stream.ready)
            ctx.set(dut.i_stream.valid, 0)
            await ctx.tick().until(dut.o_stream.valid)
            got.append(ctx.get(dut.o_stream.payload.y))
        # Full rate: with the sink always ready one beat is accepted every cycle.
        ctx.set(dut.config, {"shift": 0, "relu": 0, "saturate": 0, "out_bits": 8})
        ctx.set(dut.i_stream.valid, 1)
        accepted = 0
        for i in range(20):
            ctx.set(dut.i_stream.payload, {"channel": 0, "acc": i})
            _, _, rdy = await ctx.tick().sample(dut.i_stream.ready)
            accepted += rdy
        assert accepted == 20
    run_sim(dut, tb)
    assert got == [c[2] for c in cases]


def test_requant_latency():
    dut = Requantizer(acc_width=16, channels=4)
    cfg = {"shift": 0, "relu": 0, "saturate": 0, "out_bits": 8}
    lat = measure_latency(dut, {"channel": 0, "acc": 7}, requant_load(dut, [1] * 4, [0] * 4, cfg))
    assert lat == dut.latency == 5


def boundary_accs(shift, out_bits, amax):
    """Accumulators whose ``round(acc / 2**shift)`` lands on and around the saturation limits,
    on both sides of every rounding step (with M = 1, B = 0), plus the widest values."""
    lim = (1 << out_bits) - 1
    half = 1 << shift >> 1
    targets = {0, 1, 2, lim - 1, lim, lim + 1, lim + 2, 2 * lim, 1 << 16, (1 << 16) + 1, 1 << 17, (1 << 17) - 1,
               1 << 20, amax >> shift}
    fracs = {0} if shift == 0 else {-half - 1, -half, -half + 1, -1, 0, 1, half - 1, half}
    accs = {sign * t * (1 << shift) + f for t in targets for sign in (1, -1) for f in fracs}
    accs |= {amax, -amax, -amax - 1, 0, 1, -1}
    return sorted(a for a in accs if -amax - 1 <= a <= amax)


@pytest.mark.parametrize("shift,out_bits", [(0, 1), (1, 1), (1, 8), (2, 5), (7, 16), (13, 12), (30, 3), (31, 16)])
@pytest.mark.parametrize("saturate", [False, True])
def test_requant_saturation_boundaries(shift, out_bits, saturate):
    """The core's widths (29-bit accumulators, 16-bit M, 32-bit B, 46-bit y): values on and around
    +-(2**n - 1), -2**n and every rounding step, and extreme M and B for the widest results."""
    acc_w, mult_w, bias_w = 29, 16, 32
    amax = (1 << (acc_w - 1)) - 1
    rng = np.random.default_rng([shift, out_bits, saturate])
    mult = np.array([1, -1, (1 << (mult_w - 1)) - 1, -(1 << (mult_w - 1))])
    bias = np.array([0, 0, -(1 << (bias_w - 1)), (1 << (bias_w - 1)) - 1])
    accs = boundary_accs(shift, out_bits, amax)
    chan = [0] * len(accs) + [1] * len(accs)
    acc = accs + accs
    wide = rng.integers(-amax - 1, amax + 1, 24).tolist() + [amax, -amax - 1, 0, -1]
    chan += [2] * len(wide) + [3] * len(wide)
    acc += wide + wide
    chan, acc = np.array(chan), np.array(acc, np.int64)
    rq = Requant(multiplier=mult, bias=bias, shift=shift, saturate_bits=out_bits if saturate else None)
    want = expected_requant(rq, chan, acc)
    dut = Requantizer(acc_width=acc_w, channels=4, mult_width=mult_w, bias_width=bias_w, max_shift=31,
                      max_out_bits=16)
    assert dut.y_width == 46
    cfg = {"shift": shift, "relu": 0, "saturate": int(saturate), "out_bits": out_bits}
    beats = [{"channel": int(c), "acc": int(a), "first": 0, "last": 0} for c, a in zip(chan, acc)]
    got = []
    run_sim(dut, drive(dut.i_stream, beats, rng, p_idle=0.1, before=requant_load(dut, mult, bias, cfg)),
            collect(dut.o_stream, len(beats), rng, got, p_stall=0.2))
    assert [g["y"] for g in got] == want.tolist()


# ---------------------------------------------------------------------------------------------
# MaxPool

@pytest.mark.parametrize("h,w,c,window", [(4, 6, 3, 2), (4, 4, 1, 2), (2, 2, 5, 2), (6, 6, 2, 3),
                                          (3, 5, 4, 1), (6, 4, 7, 2)])
@pytest.mark.parametrize("seed", [2])
def test_maxpool_matches_golden(seed, h, w, c, window):
    rng = np.random.default_rng([seed, h, w, c, window])
    acc_w = 18
    lim = (1 << (acc_w - 1)) - 1
    frames = [rng.integers(-lim, lim + 1, (h, w, c)) for _ in range(2)]
    frames[1][0, 0, 0] = lim
    frames[1][-1, -1, -1] = -lim
    frames.append(np.maximum(frames[0], 0))  # post-ReLU values as the engine may deliver them
    dut = MaxPool(acc_width=acc_w, max_width=8, max_channels=8, max_window=3)
    beats = [{"value": int(v)} for f in frames for v in f.reshape(-1)]
    want = np.concatenate([max_pool(f, window).reshape(-1) for f in frames])
    n_out = len(want)
    got = []

    async def configure(ctx):
        ctx.set(dut.config, {"width": w, "channels": c, "window": window})
    run_sim(dut, drive(dut.i_stream, beats, rng, before=configure), collect(dut.o_stream, n_out, rng, got))
    assert [g["value"] for g in got] == want.tolist()
    chans = np.tile(np.arange(c), n_out // c)
    assert [g["channel"] for g in got] == chans.tolist()
    assert [g["first"] for g in got] == (chans == 0).astype(int).tolist()
    assert [g["last"] for g in got] == (chans == c - 1).astype(int).tolist()


def test_maxpool_known_answer_and_latency():
    dut = MaxPool(acc_width=8, max_width=4, max_channels=2, max_window=2)
    # 2x2 map, one channel: max(3, -7, 5, 1) = 5.
    o = np.array([[3, -7], [5, 1]]).reshape(2, 2, 1)
    assert max_pool(o, 2).reshape(-1).tolist() == [5]
    got = []

    async def tb(ctx):
        ctx.set(dut.config, {"width": 2, "channels": 1, "window": 2})
        ctx.set(dut.o_stream.ready, 1)
        for i, v in enumerate([3, -7, 5, 1]):
            ctx.set(dut.i_stream.valid, 1)
            ctx.set(dut.i_stream.payload, {"value": v})
            await ctx.tick().until(dut.i_stream.ready)
        ctx.set(dut.i_stream.valid, 0)
        n = 1
        while not ctx.get(dut.o_stream.valid):
            await ctx.tick()
            n += 1
        got.append((ctx.get(dut.o_stream.payload.value), n))
    run_sim(dut, tb)
    assert got == [(5, dut.latency)]


@pytest.mark.parametrize("h,w,c,window", [(4, 4, 1, 2), (2, 2, 1, 2), (3, 3, 1, 3), (6, 3, 1, 3), (4, 6, 2, 2),
                                          (2, 4, 3, 2)])
def test_maxpool_single_channel_under_back_pressure(h, w, c, window):
    """One channel: a beat reads the line-buffer entry its predecessor writes in the same cycle;
    heavy back-pressure, idle input, and the extreme values (the most negative one included)."""
    rng = np.random.default_rng([7, h, w, c, window])
    acc_w = 12
    lo, hi = -(1 << (acc_w - 1)), (1 << (acc_w - 1)) - 1
    frames = [rng.integers(lo, hi + 1, (h, w, c)) for _ in range(2)]
    frames.append(np.full((h, w, c), lo))
    frames.append(rng.choice([lo, hi, 0, -1], (h, w, c)))
    dut = MaxPool(acc_width=acc_w, max_width=8, max_channels=4, max_window=3)
    beats = [{"value": int(v)} for f in frames for v in f.reshape(-1)]
    want = np.concatenate([max_pool(f, window).reshape(-1) for f in frames])
    got = []

    async def configure(ctx):
        ctx.set(dut.config, {"width": w, "channels": c, "window": window})
    run_sim(dut, drive(dut.i_stream, beats, rng, p_idle=0.2, before=configure),
            collect(dut.o_stream, len(want), rng, got, p_stall=0.7))
    assert [g["value"] for g in got] == want.tolist()
    chans = np.tile(np.arange(c), len(want) // c)
    assert [(g["channel"], g["first"], g["last"]) for g in got] == [
        (int(k), int(k == 0), int(k == c - 1)) for k in chans]


@pytest.mark.parametrize("max_width,max_channels,pow2_addr", [(100, 5, False), (8, 5, True), (8, 4, True)])
def test_maxpool_line_buffer_addressing(max_width, max_channels, pow2_addr):
    """Both line-buffer address schemes: px * 2**channel_bits + c where that fits the same EBRs
    as (max_width // 2) * max_channels entries, px * channels + c otherwise."""
    dut = MaxPool(acc_width=16, max_width=max_width, max_channels=max_channels, max_window=2)
    assert dut.pow2_addr == pow2_addr
    assert dut.depth >= (max_width // 2) * max_channels
    rng = np.random.default_rng([11, max_width, max_channels])
    lim = (1 << 15) - 1
    shapes = [(4, 6, max_channels), (2, 8, 3), (4, 4, 1), (2, 2, max_channels)]
    frames = [(rng.integers(-lim, lim + 1, sh), window) for sh in shapes for window in (2, 1)]
    beats = [{"value": int(v)} for f, _ in frames for v in f.reshape(-1)]
    want = [max_pool(f, window).reshape(-1) for f, window in frames]
    got = []
    n = [0]

    ends = np.cumsum([len(w) for w in want])

    async def source(ctx):
        for i, (f, window) in enumerate(frames):
            ctx.set(dut.config, {"width": f.shape[1], "channels": f.shape[2], "window": window})
            for v in f.reshape(-1):
                while rng.random() < 0.2:
                    await ctx.tick()
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload, {"value": int(v)})
                await ctx.tick().until(dut.i_stream.ready)
                ctx.set(dut.i_stream.valid, 0)
            while n[0] < ends[i]:
                await ctx.tick()                     # the frame drains before the next config

    async def sink(ctx):
        total = sum(len(w) for w in want)
        while len(got) < total:
            ready = bool(rng.random() >= 0.4)
            ctx.set(dut.o_stream.ready, ready)
            _, _, valid, value = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload.value)
            if valid and ready:
                got.append(value)
                n[0] += 1
    assert len(beats) == sum(f.size for f, _ in frames)
    run_sim(dut, source, sink)
    assert got == np.concatenate(want).tolist()


# ---------------------------------------------------------------------------------------------
# Binarizer and its divider

def binarizer_beats(y):
    """Input beats of pixels ``y`` (P, C) in channel order."""
    p, c = y.shape
    return [{"y": int(y[i, k]), "first": int(k == 0), "last": int(k == c - 1)}
            for i in range(p) for k in range(c)]


def expected_segments(y, beta_a):
    """Golden output beats: signs packed LSB first, delta from ``binarize_int``."""
    signs, delta = binarize_int(y, beta_a)
    p, c = y.shape
    beats = []
    for i in range(p):
        for j in range(delta.shape[1]):
            seg = signs[i, j * beta_a:(j + 1) * beta_a]
            beats.append({"signs": sum(int(b) << k for k, b in enumerate(seg)), "delta": int(delta[i, j]),
                          "length": len(seg), "first": int(j == 0), "last": int(j == delta.shape[1] - 1)})
    return beats


@pytest.mark.parametrize("beta_a", [1, 2, 4, 8, 16, 32, 64])
@pytest.mark.parametrize("multiple", [True, False])
@pytest.mark.parametrize("seed", [3])
def test_binarizer_matches_contract(seed, beta_a, multiple):
    rng = np.random.default_rng([seed, beta_a, multiple])
    y_bits = 8
    lim = (1 << y_bits) - 1
    if multiple:
        c = beta_a * int(rng.integers(1, 3))
    else:
        c = beta_a * int(rng.integers(0, 2)) + int(rng.integers(1, beta_a)) if beta_a > 1 else 3
    pixels = max(2, 96 // c)
    y = rng.integers(-lim, lim + 1, (pixels, c))
    y[0, :] = lim                      # largest sums
    y[1, :] = rng.choice([-lim, lim], c)
    if pixels > 2:
        y[2, :] = rng.integers(-2, 3, c)   # zeros: sign(0) = +1, rounding of small means
    dut = Binarizer(y_bits=y_bits, max_beta_a=64)
    want = expected_segments(y, beta_a)
    got = []

    async def configure(ctx):
        ctx.set(dut.config, {"log2_beta_a": beta_a.bit_length() - 1})
    run_sim(dut, drive(dut.i_stream, binarizer_beats(y), rng, before=configure),
            collect(dut.o_stream, len(want), rng, got))
    assert got == want


def test_binarizer_known_answer_and_latency():
    # y = [3, -4, 0, 5, -1] with beta_a = 4: signs 1,0,1,1 | 1 -> 0b1101, 0b0;  (12 + 2) // 4 = 3;
    # short segment n = 1: (1 + 0) // 1 = 1.
    y = np.array([[3, -4, 0, 5, -1]])
    s, d = binarize_int(y, 4)
    assert d.tolist() == [[3, 1]]
    assert expected_segments(y, 4) == [{"signs": 0b1101, "delta": 3, "length": 4, "first": 1, "last": 0},
                                       {"signs": 0b0, "delta": 1, "length": 1, "first": 0, "last": 1}]
    dut = Binarizer(y_bits=4, max_beta_a=8)

    async def cfg(ctx):
        ctx.set(dut.config, {"log2_beta_a": 0})
    assert measure_latency(dut, {"y": -5, "first": 1, "last": 0}, cfg) == dut.latency == 1
    dut = Binarizer(y_bits=4, max_beta_a=8)

    async def cfg4(ctx):
        ctx.set(dut.config, {"log2_beta_a": 2})
    assert measure_latency(dut, {"y": -5, "first": 1, "last": 1}, cfg4) == dut.short_latency


def divider_cases(y_bits, rng):
    """(sum, n) pairs: every n in 1..64, sums at rounding boundaries and up to 64*(2**y_bits-1)."""
    smax = 64 * ((1 << y_bits) - 1)
    pairs = []
    for n in range(1, 65):
        sums = {0, 1, n // 2, n - 1, n, smax, smax - 1, smax - n, n * ((1 << y_bits) - 1)}
        q = smax // n
        for k in (1, 2, q // 2, q - 1, q):
            for d in (-1, 0, 1):
                sums.add(k * n - n // 2 + d)   # where the rounded quotient steps
        sums.update(int(v) for v in rng.integers(0, smax + 1, 3))
        pairs += [(s, n) for s in sorted(sums) if 0 <= s <= smax]
    return pairs


class DividerHarness(Elaboratable):
    """Self-running divider test bench in gateware (Python per-cycle testbenches are too slow).

    Stimuli ``(dividend, divisor)`` come from a ROM; a 16-bit LFSR seeded by the test inserts
    random idle cycles on the input (valid rises with probability 3/4 per cycle) and random
    back-pressure on the output (ready with probability 3/4).  Results are stored in order in
    ``results``; ``protocol_error`` latches if the divider drops ``valid`` or changes its payload
    while stalled.
    """

    def __init__(self, pairs, *, width, seed):
        self.pairs, self.width, self.seed = pairs, width, seed
        self.done = Signal()
        self.protocol_error = Signal()
        self.results = Memory(shape=unsigned(width + 7), depth=len(pairs), init=[])

    def elaborate(self, platform):
        m = Module()
        w, n = self.width, len(self.pairs)
        m.submodules.div = div = RestoringDivider(dividend_width=w, divisor_width=7)
        m.submodules.stim = stim = Memory(shape=unsigned(w + 7), depth=n,
                                          init=[a | (b << w) for a, b in self.pairs])
        m.submodules.results = res = self.results
        rp, wp = stim.read_port(domain="comb"), res.write_port()
        lfsr = Signal(16, init=(self.seed & 0xFFFF) | 1)
        m.d.sync += lfsr.eq(Cat(lfsr[1:], lfsr[0] ^ lfsr[2] ^ lfsr[3] ^ lfsr[5]))
        i_idx, o_idx, i_valid = Signal(range(n + 1)), Signal(range(n + 1)), Signal()
        m.d.comb += [rp.addr.eq(i_idx), div.i_stream.valid.eq(i_valid),
                     div.i_stream.payload.dividend.eq(rp.data[:w]), div.i_stream.payload.divisor.eq(rp.data[w:]),
                     div.o_stream.ready.eq(lfsr[0:2] != 0)]
        with m.If(~i_valid & (i_idx < n) & (lfsr[4:6] != 0)):
            m.d.sync += i_valid.eq(1)
        with m.If(div.i_stream.valid & div.i_stream.ready):
            m.d.sync += [i_valid.eq(0), i_idx.eq(i_idx + 1)]
        o = div.o_stream
        m.d.comb += [wp.addr.eq(o_idx), wp.data.eq(o.payload.as_value()), wp.en.eq(o.valid & o.ready)]
        with m.If(wp.en):
            m.d.sync += o_idx.eq(o_idx + 1)
        stalled, held = Signal(), Signal.like(o.payload.as_value())
        m.d.sync += [stalled.eq(o.valid & ~o.ready), held.eq(o.payload.as_value())]
        with m.If(stalled & (~o.valid | (o.payload.as_value() != held))):
            m.d.sync += self.protocol_error.eq(1)
        m.d.comb += self.done.eq(o_idx == n)
        return m


def golden_delta(sums, n):
    """delta_a of binarize_int for segments of length ``n`` whose |y| sum to ``sums``."""
    y = np.zeros((len(sums), n), np.int64)
    y[:, 0] = sums                         # binarize_int only sees sum|y| and n
    return binarize_int(y, 64)[1][:, 0]


@pytest.mark.parametrize("y_bits", [2, 8, 16])
@pytest.mark.parametrize("seed", [4])
def test_divider_exact(seed, y_bits):
    """Short-segment delta_a: every n_j in 1..64; sums exhaustive for y_bits=2, boundaries otherwise."""
    rng = np.random.default_rng([seed, y_bits])
    width = y_bits + 6                      # the Binarizer's sum width for max_beta_a = 64
    if y_bits == 2:                         # exhaustive: every sum 0..64*3 for every n in 1..64
        pairs = [(s, n) for n in range(1, 65) for s in range(64 * 3 + 1)]
    else:
        pairs = divider_cases(y_bits, rng)
    stim = [(s + n // 2, n) for s, n in pairs]   # what the Binarizer feeds the divider
    assert max(a for a, _ in stim) < 1 << width
    dut = DividerHarness(stim, width=width, seed=int(rng.integers(1, 1 << 16)))
    got = []

    async def tb(ctx):
        await ctx.changed(dut.done)
        got.extend(ctx.get(dut.results.data[i]) for i in range(len(stim)))
        assert not ctx.get(dut.protocol_error)
    run_sim(dut, tb)
    got = np.array(got, dtype=np.int64)
    quot, rem = got & ((1 << width) - 1), got >> width
    s, n = np.array(pairs).T
    a = s + n // 2
    assert np.array_equal(rem, a % n)
    for nj in range(1, 65):
        sel = n == nj
        assert np.array_equal(quot[sel], golden_delta(s[sel], nj)), f"n_j={nj}"


@pytest.mark.parametrize("seed", [6])
def test_binarizer_every_short_length(seed):
    """beta_a = 64 and vectors of every length 1..64 (short final segments n_j = 1..63, then 64)."""
    rng = np.random.default_rng(seed)
    y_bits = 6
    lim = (1 << y_bits) - 1
    vecs = [rng.choice([-lim, lim, int(rng.integers(-lim, lim + 1))], c) for c in range(1, 65)]
    dut = Binarizer(y_bits=y_bits, max_beta_a=64)
    beats = [b for v in vecs for b in binarizer_beats(v[None, :])]
    want = [b for v in vecs for b in expected_segments(v[None, :], 64)]
    got = []

    async def configure(ctx):
        ctx.set(dut.config, {"log2_beta_a": 6})
    run_sim(dut, drive(dut.i_stream, beats, rng, p_idle=0.2, before=configure),
            collect(dut.o_stream, len(want), rng, got))
    assert got == want


@pytest.mark.parametrize("max_beta_a,beta_a,c", [(2, 1, 5), (2, 2, 7), (2, 2, 8), (4, 4, 9), (4, 2, 3)])
def test_binarizer_small_segments_under_back_pressure(max_beta_a, beta_a, c):
    """The core's binarizer (max_beta_a = beta_a = 2 by default), short final segments, heavy stalls."""
    rng = np.random.default_rng([8, max_beta_a, beta_a, c])
    y_bits = 8
    lim = (1 << y_bits) - 1
    y = rng.integers(-lim, lim + 1, (12, c))
    y[0, :] = -lim
    y[1, :] = lim
    y[2, :] = rng.choice([-1, 0, 1], c)
    dut = Binarizer(y_bits=y_bits, max_beta_a=max_beta_a)
    want = expected_segments(y, beta_a)
    got = []

    async def configure(ctx):
        ctx.set(dut.config, {"log2_beta_a": beta_a.bit_length() - 1})
    run_sim(dut, drive(dut.i_stream, binarizer_beats(y), rng, p_idle=0.2, before=configure),
            collect(dut.o_stream, len(want), rng, got, p_stall=0.6))
    assert got == want


# ---------------------------------------------------------------------------------------------
# Serializer


@pytest.mark.parametrize("rows,passes,last_rows,spacing", [(1, 5, 1, 1), (1, 3, 1, 2), (3, 4, 2, 1), (6, 3, 6, 2),
                                                           (8, 2, 5, 1), (8, 3, 8, 2), (4, 1, 3, 1)])
def test_serializer_order_and_spacing(rows, passes, last_rows, spacing):
    """Every pass's rows in order with channel g*R + r and the pixel's first/last, at most one value
    every ``spacing`` cycles, the pass released with its last value; random idle and stalls."""
    rng = np.random.default_rng([9, rows, passes, last_rows, spacing])
    cfg = AcceleratorConfig(rows=rows, lanes=8)
    dut = Serializer(cfg, max_spacing=2)
    pixels = 3
    lim = (1 << (cfg.acc_bits - 1)) - 1
    vals = rng.integers(-lim - 1, lim + 1, (pixels, passes, rows))
    want = []
    for p in range(pixels):
        for g in range(passes):
            n = last_rows if g == passes - 1 else rows
            for r in range(n):
                ch = g * rows + r
                want.append({"value": int(vals[p, g, r]), "channel": ch, "first": int(ch == 0),
                             "last": int(g == passes - 1 and r == n - 1)})
    beats = [[int(v) for v in vals[p, g]] for p in range(pixels) for g in range(passes)]
    got, cycles = [], []

    async def configure(ctx):
        ctx.set(dut.passes, passes)
        ctx.set(dut.last_rows, last_rows)
        ctx.set(dut.spacing, spacing)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)

    async def sink(ctx):
        names = ["value", "channel", "first", "last"]
        n = 0
        while len(got) < len(want):
            ready = bool(rng.random() >= 0.3)
            ctx.set(dut.o.ready, ready)
            _, _, valid, *vals_ = await ctx.tick().sample(dut.o.valid, *(dut.o.payload[k] for k in names))
            if valid and ready:
                got.append(dict(zip(names, vals_)))
                cycles.append(n)
            n += 1
            assert n < 10_000
    run_sim(dut, drive(dut.i, beats, rng, before=configure), sink)
    assert got == want
    assert all(b - a >= spacing for a, b in zip(cycles, cycles[1:]))


# ---------------------------------------------------------------------------------------------
# EntryMemory


@pytest.mark.parametrize("nbytes,stride,core_write", [(5, 8, True), (1, 1, False), (3, 4, False), (10, 16, True)])
def test_entry_memory_host_and_core_ports(nbytes, stride, core_write):
    """Host byte writes and reads (holes read 0, the byte held until the next read), core entry
    reads that hold while ``core_re`` is low, and core entry writes."""
    rng = np.random.default_rng([10, nbytes, stride])
    depth = 6
    dut = EntryMemory(nbytes=nbytes, depth=depth, stride=stride, core_write=core_write)
    image = rng.integers(0, 256, (depth, nbytes))

    async def tb(ctx):
        for e in range(depth):                       # host writes, holes included (ignored)
            for b in rng.permutation(stride):
                ctx.set(dut.host_addr, e * stride + int(b))
                ctx.set(dut.host_wdata, int(image[e, b]) if b < nbytes else int(rng.integers(0, 256)))
                ctx.set(dut.host_we, 1)
                await ctx.tick()
        ctx.set(dut.host_we, 0)
        for a in rng.permutation(depth * stride):    # host reads, in random order
            a = int(a)
            ctx.set(dut.host_addr, a)
            ctx.set(dut.host_re, 1)
            await ctx.tick()
            ctx.set(dut.host_re, 0)
            ctx.set(dut.host_addr, int(rng.integers(0, depth * stride)))
            e, b = divmod(a, stride)
            want = int(image[e, b]) if b < nbytes else 0
            for _ in range(2):                       # held until the next read
                assert ctx.get(dut.host_rdata) == want
                await ctx.tick()
        ctx.set(dut.core, 1)
        entries = [sum(int(v) << (8 * i) for i, v in enumerate(row)) for row in image]
        if core_write:
            new = [sum(int(v) << (8 * i) for i, v in enumerate(rng.integers(0, 256, nbytes))) for _ in range(depth)]
            for e in (1, 4):
                ctx.set(dut.core_waddr, e)
                ctx.set(dut.core_wdata, new[e])
                ctx.set(dut.core_we, 1)
                await ctx.tick()
                entries[e] = new[e]
            ctx.set(dut.core_we, 0)
        ctx.set(dut.host_we, 1)                      # ignored while the core owns the ports
        ctx.set(dut.host_addr, 0)
        ctx.set(dut.host_wdata, 0x5A)
        for e in rng.permutation(depth):
            ctx.set(dut.core_raddr, int(e))
            ctx.set(dut.core_re, 1)
            await ctx.tick()
            ctx.set(dut.core_re, 0)
            ctx.set(dut.core_raddr, int(rng.integers(0, depth)))
            for _ in range(2):
                assert ctx.get(dut.core_rdata) == entries[e]
                await ctx.tick()
        ctx.set(dut.host_we, 0)
    run_sim(dut, tb)


# ---------------------------------------------------------------------------------------------
# Chain: MaxPool -> Requantizer -> Binarizer against run_layer's output stage


class OutStage(wiring.Component):
    """Test top: the three blocks connected in the order the accelerator uses them."""

    def __init__(self, *, acc_width, width, channels, y_bits):
        self.pool = MaxPool(acc_width=acc_width, max_width=width, max_channels=channels, max_window=2)
        self.rq = Requantizer(acc_width=acc_width, channels=channels, mult_width=16, max_shift=31,
                              max_out_bits=y_bits)
        self.bin = Binarizer(y_bits=y_bits, max_beta_a=64)
        super().__init__({"i_stream": wiring.In(self.pool.i_stream.signature.flip()),
                          "o_stream": wiring.Out(self.bin.o_stream.signature)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.pool, m.submodules.rq, m.submodules.bin = self.pool, self.rq, self.bin
        wiring.connect(m, wiring.flipped(self.i_stream), self.pool.i_stream)
        wiring.connect(m, self.bin.o_stream, wiring.flipped(self.o_stream))
        p, r, b = self.pool.o_stream, self.rq.i_stream, self.bin.i_stream
        m.d.comb += [r.valid.eq(p.valid), p.ready.eq(r.ready), r.payload.channel.eq(p.payload.channel),
                     r.payload.acc.eq(p.payload.value), r.payload.first.eq(p.payload.first),
                     r.payload.last.eq(p.payload.last)]
        q = self.rq.o_stream
        m.d.comb += [b.valid.eq(q.valid), q.ready.eq(b.ready), b.payload.y.eq(q.payload.y),
                     b.payload.first.eq(q.payload.first), b.payload.last.eq(q.payload.last)]
        return m


@pytest.mark.parametrize("channels,beta_a,window", [(8, 4, 2), (16, 16, 2), (6, 2, 1)])
@pytest.mark.parametrize("seed", [5])
def test_output_stage_chain(seed, channels, beta_a, window):
    rng = np.random.default_rng([seed, channels, beta_a, window])
    h, w, acc_w, y_bits = 4, 4, 16, 8
    o = rng.integers(-(1 << 15) + 1, 1 << 15, (h, w, channels))
    rq = Requant(multiplier=rng.integers(-400, 400, channels), bias=rng.integers(-5000, 5000, channels),
                 shift=9, relu=True, saturate_bits=y_bits)
    y = rq.scale(max_pool(rq.activate(o), window))       # run_layer's order
    want = expected_segments(y.reshape(-1, channels), beta_a)
    dut = OutStage(acc_width=acc_w, width=w, channels=channels, y_bits=y_bits)

    async def configure(ctx):
        ctx.set(dut.pool.config, {"width": w, "channels": channels, "window": window})
        ctx.set(dut.bin.config, {"log2_beta_a": beta_a.bit_length() - 1})
        await requant_load(dut.rq, rq.multiplier, rq.bias,
                           {"shift": rq.shift, "relu": 1, "saturate": 1, "out_bits": y_bits})(ctx)
    got = []
    run_sim(dut, drive(dut.i_stream, [{"value": int(v)} for v in o.reshape(-1)], rng, before=configure),
            collect(dut.o_stream, len(want), rng, got))
    assert got == want


# ---------------------------------------------------------------------------------------------
# Verilog conversion and argument checks

@pytest.mark.parametrize("make", [
    lambda: Requantizer(acc_width=20, channels=64, mult_width=16),
    lambda: MaxPool(acc_width=20, max_width=32, max_channels=64, max_window=2),
    lambda: Binarizer(y_bits=8, max_beta_a=64),
    lambda: RestoringDivider(dividend_width=14, divisor_width=7),
], ids=["requant", "maxpool", "binarizer", "divider"])
def test_verilog_conversion(make):
    dut = make()
    text = verilog.convert(dut, name="top")
    assert "module top" in text


@pytest.mark.parametrize("make,msg", [
    (lambda: Requantizer(acc_width=0, channels=4), "acc_width"),
    (lambda: Requantizer(acc_width=8, channels=4, max_shift=63), "max_shift"),
    (lambda: MaxPool(acc_width=8, max_width=0, max_channels=4), "max_width"),
    (lambda: Binarizer(y_bits=8, max_beta_a=12), "power of two"),
    (lambda: RestoringDivider(dividend_width=4, divisor_width=0), "divisor_width"),
])
def test_bad_arguments(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
