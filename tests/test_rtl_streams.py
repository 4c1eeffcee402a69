"""SkidBuffer: every beat once and in order, full throughput, ready and valid from flip-flops."""

import numpy as np
import pytest
from amaranth.hdl import unsigned
from amaranth.lib import data

from hadahw.rtl.streams import SkidBuffer
from simutil import collect, drive, run_sim

LAYOUT = data.StructLayout({"x": unsigned(12), "last": unsigned(1)})


@pytest.mark.parametrize("p_idle,p_stall", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.5), (0.4, 0.4), (0.1, 0.8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_skid_buffer_passes_every_beat_once_in_order(p_idle, p_stall, seed):
    """``collect`` also checks that a refused beat stays valid and unchanged."""
    rng = np.random.default_rng(seed)
    beats = [{"x": int(v), "last": int(i % 7 == 6)} for i, v in enumerate(rng.integers(0, 1 << 12, 300))]
    dut = SkidBuffer(LAYOUT)
    got, cycles = [], []

    async def clock(ctx):
        n = 0
        while len(got) < len(beats):
            await ctx.tick()
            n += 1
        cycles.append(n)

    run_sim(dut, drive(dut.i, beats, rng, p_idle=p_idle), collect(dut.o, len(beats), rng, got, p_stall=p_stall),
            clock)
    assert got == beats
    if p_idle == 0 and p_stall == 0:
        assert cycles[0] <= len(beats) + SkidBuffer.latency + 1, "one beat per cycle when nothing stalls"


def test_skid_buffer_ready_does_not_follow_o_ready_combinationally():
    """i.ready is a register: it drops only the cycle after o refused a beat while another came."""
    dut = SkidBuffer(LAYOUT)
    seen = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i.valid, 1)
        for x in range(3):
            ctx.set(dut.i.payload, {"x": x, "last": 0})
            seen.append(ctx.get(dut.i.ready))
            ctx.set(dut.o.ready, 1)           # flipping o.ready within the cycle ...
            seen.append(ctx.get(dut.i.ready))  # ... leaves i.ready as it was
            ctx.set(dut.o.ready, 0)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)

    run_sim(dut, tb)
    # cycle 0: empty; cycle 1: output full, skid empty; cycle 2: both full -> not ready
    assert seen == [1, 1, 1, 1, 0, 0]
