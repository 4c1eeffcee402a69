"""Smoke testbench: a registered L-bit xnor-popcount behind ``amaranth.lib.stream`` ports.

DUT ports (Amaranth flattening of ``wiring.Component`` members ``i`` and ``o``)::

    clk, rst                                  sync domain
    i__valid, i__ready, i__payload[2L-1:0]    in stream, payload {b, a} (a in the low L bits)
    o__valid, o__ready, o__payload            out stream, popcount(~(a ^ b) & mask)

Testbench parameters (``hadahw.sim.tbutil.tb_params``): ``L`` (word width, required),
``n_items`` (default 300). Randomness comes from ``cocotb.RANDOM_SEED`` (set from
``run_cocotb(seed=...)`` or ``$COCOTB_RANDOM_SEED``), logged at the start.
"""

from __future__ import annotations

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

from hadahw.sim.tbutil import bit as _bit, tb_params, uint as _uint


def xnor_popcount(a: int, b: int, width: int) -> int:
    """Independent Python model of the DUT."""
    mask = (1 << width) - 1
    return bin(~(a ^ b) & mask).count("1")


@cocotb.test()
async def smoke_stream(dut):
    """Random words, random input idles, random output back-pressure; every count checked."""
    params = tb_params()
    width = int(params["L"])
    n_items = int(params.get("n_items", 300))
    seed = cocotb.RANDOM_SEED
    rng = random.Random(seed)
    dut._log.info(
        "tb_smoke: L=%d n_items=%d test seed=%d (regression COCOTB_RANDOM_SEED=%s)",
        width, n_items, seed, os.environ.get("COCOTB_RANDOM_SEED", "?"),
    )
    assert len(dut.i__payload) == 2 * width, (
        f"DUT input payload is {len(dut.i__payload)} bits, expected 2*L={2 * width}"
    )

    items = [(rng.getrandbits(width), rng.getrandbits(width)) for _ in range(n_items)]
    expected = [xnor_popcount(a, b, width) for a, b in items]
    # (items in phase, P(input idle), P(output stall)): first a full-rate phase, where a
    # 1-deep pipeline with proper back-pressure must accept one item every cycle.
    q = n_items // 4
    phases = [(q, 0.0, 0.0), (n_items - 2 * q, 0.3, 0.3), (q, 0.1, 0.7)]

    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.i__payload.value = 0
    dut.o__ready.value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0

    sent = 0
    got: list[int] = []
    offered: tuple[int, int] | None = None
    held: int | None = None  # output payload seen valid but not accepted last cycle
    phase_end = []
    total = 0
    for count, _, _ in phases:
        total += count
        phase_end.append(total)
    max_cycles = 20 * n_items + 100

    for cycle in range(max_cycles):
        if sent == n_items and len(got) == n_items:
            break
        phase = next((k for k, end in enumerate(phase_end) if sent < end), len(phases) - 1)
        _, p_idle, p_stall = phases[phase]
        full_rate = p_idle == 0.0 and p_stall == 0.0 and sent < n_items

        await FallingEdge(dut.clk)
        if offered is None and sent < n_items and rng.random() >= p_idle:
            offered = items[sent]
        if offered is not None:
            dut.i__valid.value = 1
            dut.i__payload.value = offered[0] | (offered[1] << width)
        else:
            dut.i__valid.value = 0
            dut.i__payload.value = rng.getrandbits(2 * width)  # junk while idle
        dut.o__ready.value = int(rng.random() >= p_stall)

        await ReadOnly()
        i_valid, i_ready = _bit(dut.i__valid), _bit(dut.i__ready)
        o_valid, o_ready = _bit(dut.o__valid), _bit(dut.o__ready)
        o_payload = _uint(dut.o__payload)

        if held is not None:
            assert o_valid, f"cycle {cycle}: o.valid dropped before its payload was accepted"
            assert o_payload == held, (
                f"cycle {cycle}: o.payload changed from {held} to {o_payload} while stalled"
            )
        if full_rate and cycle > 0:
            assert i_ready, f"cycle {cycle}: i.ready low although o.ready is high (throughput < 1/cycle)"
        if o_valid and o_ready:
            k = len(got)
            assert k < n_items, f"cycle {cycle}: extra output {o_payload} after all {n_items} results"
            a, b = items[k]
            assert o_payload == expected[k], (
                f"output #{k}: a=0x{a:0{(width + 3) // 4}x} b=0x{b:0{(width + 3) // 4}x} "
                f"expected popcount {expected[k]}, DUT gave {o_payload}"
            )
            got.append(o_payload)
        held = o_payload if (o_valid and not o_ready) else None
        if i_valid and i_ready:
            sent += 1
            offered = None
    else:
        raise AssertionError(
            f"timeout after {max_cycles} cycles: {sent}/{n_items} items accepted, "
            f"{len(got)}/{n_items} results seen"
        )

    main_cycles = cycle

    # Nothing more may come out: outputs count equals inputs.
    await FallingEdge(dut.clk)
    dut.i__valid.value = 0
    dut.o__ready.value = 1
    for _ in range(8):
        await ReadOnly()
        assert not _bit(dut.o__valid), f"spurious output {_uint(dut.o__payload)} after the last result"
        await FallingEdge(dut.clk)
    assert len(got) == sent == n_items, f"{n_items} items in, {sent} accepted, {len(got)} results out"
    dut._log.info("tb_smoke: %d items checked in %d cycles", n_items, main_cycles)
