# amaranth: UnusedElaboratable=no
"""Lookup-table popcount array: table images and the gateware against an independent xnor-popcount.

The reference counts agreeing sign bits directly from the weight matrix (never through the table
images); the gateware gets the weights as fill bytes, one row slot at a time, and builds the
images itself.  Checked cycle by cycle: ``acc_valid`` exactly ``latency`` cycles after each word
and never otherwise, ``acc`` equal to the reference then and held in between, across idle
cycles, ``first`` restarts, accumulator wrap-around and a refill of some row slots between two
passes (the others must keep their weights); and words streamed during a fill, exact for the
rows outside the slot being filled.
"""

import numpy as np
import pytest

from hadahw.rtl.table_array import UP5K_EBR, TableArray
from hadahw.tables import TABLE_DEPTH, array_tables, table_count, table_image
from simutil import run_sim
from tablesim import present_fill


# -- table images --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_table_image_counts_agreeing_bits(seed):
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 2, size=(4, 8))
    img = table_image(w)
    assert img.shape == (TABLE_DEPTH,) and img.dtype == np.uint16
    bytes_ = [int("".join(str(b) for b in row[::-1]), 2) for row in w]  # lane i = bit i
    for a in range(TABLE_DEPTH):
        for j, wb in enumerate(bytes_):
            assert (int(img[a]) >> (4 * j)) & 0xF == 8 - bin(a ^ wb).count("1")


def test_array_tables_order_is_row_group_major():
    rng = np.random.default_rng(7)
    w = rng.integers(0, 2, size=(8, 24)).astype(bool)
    imgs = array_tables(w)
    assert imgs.shape == (6, TABLE_DEPTH)
    for rg in range(2):
        for g in range(3):
            assert np.array_equal(imgs[rg * 3 + g], table_image(w[4 * rg:4 * rg + 4, 8 * g:8 * g + 8]))


@pytest.mark.parametrize("rows, lanes, name", [(6, 8, "rows"), (0, 8, "rows"), (4, 12, "lanes"), (4, True, "lanes")])
def test_table_count_rejects_partial_blocks(rows, lanes, name):
    with pytest.raises(ValueError, match=f"^{name} must be a positive multiple of"):
        table_count(rows, lanes)


def test_table_images_reject_bad_weights():
    with pytest.raises(ValueError, match=r"shape \(4, 8\)"):
        table_image(np.zeros((4, 7), int))
    with pytest.raises(ValueError, match="sign bits"):
        array_tables(np.full((4, 8), 2))
    with pytest.raises(ValueError, match="lanes must be"):
        array_tables(np.zeros((4, 12), bool))


# -- configuration -------------------------------------------------------------------------------

def test_array_rejects_configurations_that_cannot_be_built():
    with pytest.raises(ValueError, match="^rows must be a positive multiple of 4"):
        TableArray(rows=10, lanes=8)
    with pytest.raises(ValueError, match=r"needs 32 memory blocks .* max_tables is 30"):
        TableArray(rows=16, lanes=64)
    with pytest.raises(ValueError, match=r"^acc_bits must be an integer in \[6, 32\]"):
        TableArray(rows=4, lanes=32, acc_bits=5)
    with pytest.raises(ValueError, match="^levels_per_stage"):
        TableArray(rows=4, lanes=8, levels_per_stage=0)
    assert UP5K_EBR == 30 and TableArray(rows=20, lanes=48).tables == 30


def test_latency_follows_the_tree_depth():
    # EBR register + tree registers + accumulator; one 4-bit field per row needs no tree at all.
    assert TableArray(rows=4, lanes=8).latency == 2
    assert TableArray(rows=4, lanes=16, levels_per_stage=2).latency == 2   # 1 tree level + the add
    assert TableArray(rows=4, lanes=32, levels_per_stage=2).latency == 3   # 2 levels, then the add
    assert TableArray(rows=4, lanes=64, levels_per_stage=1).latency == 5   # every level registered


# -- gateware ------------------------------------------------------------------------------------

async def _fill(ctx, dut, weights, slots, tick):
    for j in slots:
        while ctx.get(dut.fill_busy):
            await tick()
        present_fill(ctx, dut, weights, j)
        await tick()
        ctx.set(dut.fill_start, 0)
        busy = 0
        while ctx.get(dut.fill_busy):
            busy += 1
            await tick()
        assert busy == 256, f"fill_busy was high for {busy} cycles, not 256"


def _simulate(dut: TableArray, passes, rng, *, p_idle: float):
    """Fill each pass's row slots, stream its words; return per-cycle observations and word cycles."""
    obs = {}          # cycle -> (acc_valid, acc tuple) seen during that cycle
    words = []        # (cycle, pass index, word index)

    async def tb(ctx):
        cycle = 0

        async def tick():
            nonlocal cycle
            await ctx.tick()
            cycle += 1
            obs[cycle] = (ctx.get(dut.acc_valid), tuple(ctx.get(dut.acc[r]) for r in range(dut.rows)))

        for p, (weights, slots, stream) in enumerate(passes):
            await _fill(ctx, dut, weights, slots, tick)
            for i, (act, first) in enumerate(stream):
                while rng.random() < p_idle:
                    await tick()
                ctx.set(dut.valid, 1)
                ctx.set(dut.first, int(first))
                ctx.set(dut.act, int(sum(int(b) << k for k, b in enumerate(act))))
                words.append((cycle, p, i))
                await tick()
                ctx.set(dut.valid, 0)
                ctx.set(dut.first, 0)
            for _ in range(dut.latency + 2):
                await tick()

    run_sim(dut, tb)
    return obs, words


def _reference(weights, stream, acc_bits):
    acc = np.zeros(weights.shape[0], dtype=np.int64)
    out = []
    for act, first in stream:
        if first:
            acc[:] = 0
        acc = (acc + (act[None, :] == weights).sum(axis=1)) % (1 << acc_bits)
        out.append(tuple(int(x) for x in acc))
    return out


def _check(rows, lanes, acc_bits, lps, seed, *, n_words=40, p_idle=0.3, p_first=0.2):
    rng = np.random.default_rng(seed)
    dut = TableArray(rows=rows, lanes=lanes, acc_bits=acc_bits, levels_per_stage=lps)
    passes = []
    weights = rng.integers(0, 2, size=(rows, lanes)).astype(bool)
    slots = [0, 1, 2, 3]
    for _ in range(2):
        stream = [(rng.integers(0, 2, size=lanes).astype(bool), i == 0 or rng.random() < p_first)
                  for i in range(n_words)]
        passes.append((weights.copy(), slots, stream))
        # The second pass refills some row slots with new weights; the others must keep theirs.
        slots = sorted(rng.choice(4, size=int(rng.integers(1, 4)), replace=False).tolist())
        for j in slots:
            weights[j::4] = rng.integers(0, 2, size=(rows // 4, lanes)).astype(bool)
    obs, words = _simulate(dut, passes, rng, p_idle=p_idle)
    expected = {p: _reference(w, s, acc_bits) for p, (w, _, s) in enumerate(passes)}
    due = {c + dut.latency: expected[p][i] for c, p, i in words}
    held = None
    for cycle in sorted(obs):
        valid, acc = obs[cycle]
        if cycle in due:
            assert valid, f"seed {seed}: acc_valid low at cycle {cycle}, {dut.latency} after a word"
            assert acc == due[cycle], f"seed {seed}: cycle {cycle}: acc {acc} != reference {due[cycle]}"
            held = acc
        else:
            assert not valid, f"seed {seed}: acc_valid high at cycle {cycle} with no word {dut.latency} before"
            if held is not None:
                assert acc == held, f"seed {seed}: acc changed at cycle {cycle} without a word"
    assert len(due) == 2 * n_words


def test_fill_writes_the_table_images_of_the_contract():
    rng = np.random.default_rng(11)
    dut = TableArray(rows=8, lanes=24)
    weights = rng.integers(0, 2, size=(8, 24)).astype(bool)
    contents = []

    async def tb(ctx):
        await _fill(ctx, dut, weights, range(4), ctx.tick)
        contents.extend([ctx.get(d[a]) for a in range(TABLE_DEPTH)] for d in dut.table_data)

    run_sim(dut, tb)
    assert np.array_equal(np.array(contents), array_tables(weights))


@pytest.mark.parametrize("rows, lanes, slot", [(8, 16, 0), (4, 24, 3)])
def test_words_during_a_fill_are_exact_outside_its_slot(rows, lanes, slot):
    rng = np.random.default_rng(rows + lanes + slot)
    dut = TableArray(rows=rows, lanes=lanes)
    old = rng.integers(0, 2, size=(rows, lanes)).astype(bool)
    new = old.copy()
    new[slot::4] = ~old[slot::4]  # every weight of the slot changes
    acts = rng.integers(0, 2, size=(300, lanes)).astype(bool)
    seen = []  # (word index, acc) for every acc_valid

    async def tb(ctx):
        async def tick():
            await ctx.tick()
            if ctx.get(dut.acc_valid):
                seen.append(tuple(ctx.get(dut.acc[r]) for r in range(rows)))

        await _fill(ctx, dut, old, range(4), tick)
        present_fill(ctx, dut, new, slot)
        await tick()
        ctx.set(dut.fill_start, 0)
        for act in acts:  # one-word accumulations, the first 256 while the slot is written
            ctx.set(dut.valid, 1)
            ctx.set(dut.first, 1)
            ctx.set(dut.act, int(sum(int(b) << k for k, b in enumerate(act))))
            await tick()
        ctx.set(dut.valid, 0)
        for _ in range(dut.latency + 1):
            await tick()

    run_sim(dut, tb)
    assert len(seen) == len(acts)
    others = [r for r in range(rows) if r % 4 != slot]
    for i, (act, acc) in enumerate(zip(acts, seen)):
        want_old = (act[None, :] == old).sum(axis=1)
        assert [acc[r] for r in others] == [int(want_old[r]) for r in others], f"word {i}: another slot changed"
    # Words read after the last write (the EBR read is at the word's cycle) see the new slot.
    for i in range(256, len(acts)):
        want_new = (acts[i][None, :] == new).sum(axis=1)
        assert list(seen[i]) == [int(v) for v in want_new], f"word {i}: slot {slot} not refilled"


# (rows, lanes, acc_bits, levels_per_stage): one block, several row groups and lane groups, odd
# lane-group counts (unbalanced trees), a shallow and a deep pipeline, accumulators that wrap.
CONFIGS = [
    (4, 8, 16, 2),
    (8, 24, 16, 2),
    (12, 16, 12, 1),
    (4, 40, 7, 3),
    (8, 48, 16, 1),
]


@pytest.mark.parametrize("rows, lanes, acc_bits, lps", CONFIGS)
def test_array_counts_equal_reference(rows, lanes, acc_bits, lps):
    _check(rows, lanes, acc_bits, lps, seed=rows * 1000 + lanes)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rows, lanes, acc_bits, lps", CONFIGS + [(20, 48, 16, 2), (28, 32, 16, 2)])
def test_array_counts_equal_reference_sweep(rows, lanes, acc_bits, lps, seed):
    _check(rows, lanes, acc_bits, lps, seed=seed, n_words=60, p_idle=0.5 if seed % 2 else 0.0)
