# amaranth: UnusedElaboratable=no
"""UART gateware: TX -> RX loopback, TX bit timing, RX against testbench-driven waveforms."""

import random

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.sim import Simulator

from hadahw.rtl.uart import UARTRx, UARTTx


class Loopback(Elaboratable):
    def __init__(self, divisor):
        self.tx = UARTTx(divisor=divisor)
        self.rx = UARTRx(divisor=divisor)

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx = self.tx
        m.submodules.rx = self.rx
        m.d.comb += self.rx.rx.eq(self.tx.tx)
        return m


def _run(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


@pytest.mark.parametrize("divisor", [4, 7, 12])
def test_loopback_random_bytes_random_idle(divisor):
    rng = random.Random(divisor)
    data = bytes(rng.randrange(256) for _ in range(40)) + b"\x00\xff\x55\xaa"
    dut = Loopback(divisor)
    got = bytearray()

    async def testbench(ctx):
        ctx.set(dut.rx.o.ready, 1)
        for b in data:
            if rng.random() < 0.5:  # idle between some bytes, back to back otherwise
                for _ in range(rng.randrange(1, 3 * divisor)):
                    _, _, valid, payload = await ctx.tick().sample(dut.rx.o.valid, dut.rx.o.payload)
                    if valid:
                        got.append(payload)
            ctx.set(dut.tx.i.valid, 1)
            ctx.set(dut.tx.i.payload, b)
            while True:
                _, _, ready, valid, payload = await ctx.tick().sample(dut.tx.i.ready, dut.rx.o.valid, dut.rx.o.payload)
                if valid:
                    got.append(payload)
                if ready:
                    break
            ctx.set(dut.tx.i.valid, 0)
        for _ in range(12 * divisor):
            _, _, valid, payload = await ctx.tick().sample(dut.rx.o.valid, dut.rx.o.payload)
            if valid:
                got.append(payload)
        assert ctx.get(dut.rx.framing_errors) == 0 and ctx.get(dut.rx.overruns) == 0

    _run(dut, testbench)
    assert bytes(got) == data


@pytest.mark.parametrize("divisor", [1, 4, 5])
def test_tx_bit_timing_back_to_back(divisor):
    """Every bit lasts exactly ``divisor`` cycles; a held stream leaves no gap between bytes."""
    data = [0x00, 0xFF, 0xA5, 0x3C]
    dut = UARTTx(divisor=divisor)
    line = []

    async def testbench(ctx):
        assert ctx.get(dut.tx) == 1
        sent = 0
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, data[0])
        for _ in range(len(data) * 10 * divisor + 3 * divisor + 2):
            _, _, ready, tx = await ctx.tick().sample(dut.i.ready, dut.tx)
            line.append(tx)
            if ready and sent < len(data):
                sent += 1
                if sent < len(data):
                    ctx.set(dut.i.payload, data[sent])
                else:
                    ctx.set(dut.i.valid, 0)

    _run(dut, testbench)
    # The first byte is taken at the first edge; its start bit shows from the next sample on.
    start = line.index(0)
    assert start == 1
    expect = []
    for b in data:
        bits = [0] + [(b >> i) & 1 for i in range(8)] + [1]
        expect += [v for v in bits for _ in range(divisor)]
    assert line[start:start + len(expect)] == expect
    assert all(line[start + len(expect):])


def _waveform(events, divisor, *, skew=0.0):
    """Line level per cycle for ``events``: ("byte", b[, stop]), ("idle", bits), ("low", cycles)."""
    levels = []
    for ev in events:
        if ev[0] == "byte":
            stop = ev[2] if len(ev) > 2 else 1
            bits = [0] + [(ev[1] >> i) & 1 for i in range(8)] + [stop]
            bit_len = divisor * (1 + skew)
            t0 = len(levels)
            for k, v in enumerate(bits):
                end = t0 + round((k + 1) * bit_len)
                levels += [v] * (end - len(levels))
        elif ev[0] == "idle":
            levels += [1] * round(ev[1] * divisor)
        else:
            levels += [0] * ev[1]
    return levels + [1] * (2 * divisor)


def _drive_rx(divisor, levels, *, ready=lambda cycle: True):
    dut = UARTRx(divisor=divisor)
    got = []
    result = {}

    async def testbench(ctx):
        prev = None
        for cycle, v in enumerate(levels):
            if v != prev:
                ctx.set(dut.rx, v)
                prev = v
            r = ready(cycle)
            ctx.set(dut.o.ready, r)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid and r:
                got.append(payload)
        result["framing_errors"] = ctx.get(dut.framing_errors)
        result["overruns"] = ctx.get(dut.overruns)

    _run(dut, testbench)
    return got, result


@pytest.mark.parametrize("skew", [-0.03, 0.0, 0.03])
def test_rx_waveform_with_framing_error_glitch_and_break(skew):
    divisor = 16
    rng = random.Random(3)
    good = [rng.randrange(256) for _ in range(6)]
    events = [("idle", 2)]
    events += [("byte", b) for b in good[:3]]                       # back to back
    events += [("idle", 1.5), ("low", divisor // 2 - 2), ("idle", 2)]  # glitch: ignored
    events += [("byte", 0x5A, 0), ("idle", 1)]                      # stop bit 0: dropped, counted
    events += [("byte", good[3]), ("idle", 0.3)]
    events += [("low", 30 * divisor), ("idle", 1)]                  # break: one framing error
    events += [("byte", b) for b in good[4:]]
    got, result = _drive_rx(divisor, _waveform(events, divisor, skew=skew))
    assert got == good
    assert result == {"framing_errors": 2, "overruns": 0}


def test_rx_overrun_keeps_the_latest_byte():
    divisor = 4
    events = [("idle", 1), ("byte", 0x11), ("byte", 0x22), ("byte", 0x33), ("idle", 2), ("byte", 0x44)]
    levels = _waveform(events, divisor)
    # Not ready during the first three bytes (plus a little), ready afterwards.
    got, result = _drive_rx(divisor, levels, ready=lambda cycle: cycle >= 4 + 3 * 10 * divisor + 4)
    assert got == [0x33, 0x44]
    assert result == {"framing_errors": 0, "overruns": 2}


def test_divisor_validation():
    with pytest.raises(ValueError, match="divisor"):
        UARTRx(divisor=3)
    with pytest.raises(ValueError, match="divisor"):
        UARTTx(divisor=0)
    with pytest.raises(TypeError, match="divisor"):
        UARTTx(divisor=4.0)
