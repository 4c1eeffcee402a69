# amaranth: UnusedElaboratable=no
"""TableDot: HadaNet accumulators on the lookup-table bank equal the golden model's, pixel by pixel.

Random linear and conv layers (seeded) in the integer contract; the expected values are
:func:`hadahw.golden.accumulate`'s.  The harness turns each output pixel's im2col patch into a
word (sign bits, one delta_a code per beta_a lanes, unused lanes as whole segments with code 0)
and fills the tables and delta_w codes from the layer's weights, one row slot at a time.  Checked:
``o_valid`` exactly ``latency`` cycles after each word and never otherwise, ``o`` equal to the
golden accumulators for every used row, across idle cycles.
"""

import numpy as np
import pytest

from hadahw.contract import DeltaFormat, Requant, segment_count
from hadahw.golden import QAct, QLayer, accumulate, check_input, im2col
from hadahw.rtl.table_dot import TableDot
from simutil import run_sim
from tablesim import present_fill


def _layer(rng, *, kind, n, k_or_shape, beta_w, beta_a, act_bits, dw_bits, kernel=1, padding=0, stride=1):
    if kind == "linear":
        in_shape, geo = (k_or_shape,), {}
        k = k_or_shape
    else:
        in_shape, geo = tuple(k_or_shape), dict(kernel=kernel, padding=padding, stride=stride)
        k = kernel * kernel * in_shape[2]
    layer = QLayer(kind=kind, weight_signs=rng.random((n, k)) < 0.5,
                   weight_delta=rng.integers(0, 1 << dw_bits, (n, segment_count(k, beta_w))),
                   beta_w=beta_w, beta_a=beta_a, in_shape=in_shape, requant=Requant.identity(n),
                   weight_format=DeltaFormat(bits=dw_bits), act_bits=act_bits, **geo)
    nseg = segment_count(in_shape[-1], beta_a)
    act = QAct(signs=rng.random(in_shape) < 0.5, delta=rng.integers(0, 1 << act_bits, in_shape[:-1] + (nseg,)),
               beta_a=beta_a, bits=act_bits)
    return layer, act


def _words(layer, act, lanes):
    """(sign bits, delta_a codes) of every output pixel's patch, padded to ``lanes``."""
    act = check_input(layer, act)
    if layer.kind == "linear":
        signs, delta = act.signs[None, :], act.delta_per_element()[None, :]
    else:
        signs, delta = im2col(act, layer)
    k = signs.shape[1]
    out = []
    for s, d in zip(signs, delta):
        bits = np.ones(lanes, bool)
        bits[:k] = s
        codes = np.zeros(lanes // layer.beta_a, np.int64)
        codes[:k // layer.beta_a] = d[::layer.beta_a]
        out.append((int(sum(int(b) << i for i, b in enumerate(bits))), codes.tolist()))
    return out


def _run(dut: TableDot, layer, act, rng, *, p_idle=0.3):
    rows, lanes = dut.rows, dut.lanes
    n, k = layer.weight_signs.shape
    w = rng.random((rows, lanes)) < 0.5  # unused rows and lanes: arbitrary weights
    w[:n, :k] = layer.weight_signs
    dw = np.zeros((rows, dut.seg_w), np.int64)
    dw[:n, :layer.weight_delta.shape[1]] = layer.weight_delta
    words = _words(layer, act, lanes)
    sent, seen = [], []

    async def tb(ctx):
        cycle = 0

        async def tick():
            nonlocal cycle
            await ctx.tick()
            cycle += 1
            if ctx.get(dut.o_valid):
                seen.append((cycle, [ctx.get(dut.o[r]) for r in range(n)]))

        for j in range(4):
            while ctx.get(dut.fill_busy):
                await tick()
            present_fill(ctx, dut, w, j)
            for rg in range(rows // 4):
                for i in range(dut.seg_w):
                    ctx.set(dut.fill_dw[rg][i], int(dw[4 * rg + j, i]))
            await tick()
            ctx.set(dut.fill_start, 0)
        while ctx.get(dut.fill_busy):
            await tick()
        for bits, codes in words:
            while rng.random() < p_idle:
                await tick()
            ctx.set(dut.valid, 1)
            ctx.set(dut.act, bits)
            for j, c in enumerate(codes):
                ctx.set(dut.da[j], c)
            sent.append(cycle)
            await tick()
            ctx.set(dut.valid, 0)
        for _ in range(dut.latency + 2):
            await tick()

    run_sim(dut, tb)
    return sent, seen


# (rows, lanes, beta_w, beta_a, act_bits, dw_bits, layer): linear layers that fill the lanes or
# leave whole segments unused, a 3x3 conv with padding and stride, narrow and wide codes.
CASES = [
    (4, 32, 16, 8, 8, 8, ("linear", 4, 32)),
    (8, 64, 32, 16, 8, 8, ("linear", 6, 48)),
    (4, 80, 16, 8, 6, 5, ("conv2d", 3, (5, 5, 8), 3, 1, 1)),
    (4, 72, 8, 8, 8, 8, ("conv2d", 4, (4, 4, 8), 3, 1, 2)),
    (4, 64, 64, 64, 4, 3, ("linear", 4, 64)),
]


def _case(rows, lanes, beta_w, beta_a, act_bits, dw_bits, spec, seed, lps=2, scaling="logic"):
    rng = np.random.default_rng(seed)
    kind, n, shape = spec[:3]
    geo = dict(kernel=spec[3], padding=spec[4], stride=spec[5]) if kind == "conv2d" else {}
    layer, act = _layer(rng, kind=kind, n=n, k_or_shape=shape, beta_w=beta_w, beta_a=beta_a,
                        act_bits=act_bits, dw_bits=dw_bits, **geo)
    dut = TableDot(rows=rows, lanes=lanes, beta_w=beta_w, beta_a=beta_a, act_bits=act_bits, dw_bits=dw_bits,
                   levels_per_stage=lps, scaling=scaling)
    sent, seen = _run(dut, layer, act, rng)
    want = accumulate(layer, act).reshape(-1, n)
    assert [c for c, _ in seen] == [c + dut.latency for c in sent], f"seed {seed}: o_valid timing"
    got = np.array([o for _, o in seen])
    assert np.array_equal(got, want), f"seed {seed}: first difference at pixel {np.argwhere(got != want)[0]}"


@pytest.mark.parametrize("case", range(len(CASES)))
def test_table_dot_equals_golden_accumulators(case):
    _case(*CASES[case], seed=100 + case)


@pytest.mark.parametrize("case", [0, 2])
def test_table_dot_with_dsp_products_equals_golden_accumulators(case):
    _case(*CASES[case], seed=200 + case, scaling="dsp")


@pytest.mark.slow
@pytest.mark.parametrize("scaling", ["logic", "dsp"])
@pytest.mark.parametrize("lps", [1, 3])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_table_dot_equals_golden_accumulators_sweep(case, seed, lps, scaling):
    _case(*CASES[case], seed=seed, lps=lps, scaling=scaling)


def test_table_dot_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="^beta_a must be a power of two >= 8"):
        TableDot(rows=4, lanes=32, beta_w=16, beta_a=4)
    with pytest.raises(ValueError, match="need beta_a <= beta_w <= lanes"):
        TableDot(rows=4, lanes=48, beta_w=32, beta_a=8)
    with pytest.raises(ValueError, match="^act_bits must be an integer in"):
        TableDot(rows=4, lanes=32, beta_w=16, beta_a=8, act_bits=0)
    with pytest.raises(ValueError, match="^scaling must be one of logic, dsp"):
        TableDot(rows=4, lanes=32, beta_w=16, beta_a=8, scaling="lut")
    with pytest.raises(ValueError, match="max_tables is 30"):
        TableDot(rows=8, lanes=128, beta_w=16, beta_a=8)
