"""cocotb testbench for :class:`hadahw.rtl.core.HadaCore`: whole networks over the host bus.

Driven by :mod:`tests.test_sim_core` through :func:`hadahw.sim.runner.run_cocotb`. For every case
in the parameters it writes the weight, parameter, descriptor and input images byte by byte
through ``bus.write`` (random idle cycles), issues RUN, checks the busy/done protocol while waiting
for ``done`` (cycle timeout), reads the output buffer back through ``bus.read_req`` /
``bus.read_resp`` (random request idles and response back-pressure; a response must hold until
taken), decodes the final-layer values and asserts they equal the golden ones, that
``run_status`` is OK and that ``cycles`` equals :func:`hadahw.program.predict_cycles`.

Parameters (``hadahw.sim.tbutil.tb_params``):

``spaces``        {"WEIGHTS": id, "ACTS": id, "DESC": id}
``status_ok``     value of ``run_status`` after a good run
``p_idle``, ``p_stall``  probabilities of an idle request cycle / a stalled response (default 0.3)
``cases``         list of {``name``, ``writes``: [[space, addr, hex], ...] (input last),
                  ``run_addr``, ``output_addr``, ``output_length``, ``act_stride``,
                  ``act_entry_bytes``, ``entries_per_output``, ``output_value_bytes``,
                  ``packed_values_per_pixel`` (0: not packed; else the final layer's channels,
                  packed ``act_entry_bytes // output_value_bytes`` to an entry, each pixel from a
                  new entry), ``expected`` (flat list of ints), ``cycles`` (predicted)}

Randomness comes from ``cocotb.RANDOM_SEED``.
"""

from __future__ import annotations

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

from hadahw.rtl.hostbus import SPACE_BITS
from hadahw.sim.tbutil import bit as _bit, tb_params, uint as _uint


def decode_output(data: bytes, case: dict) -> list[int]:
    """Independent decoder of the output buffer (see :func:`hadahw.program.unpack_output`)."""
    stride, entry = case["act_stride"], case["act_entry_bytes"]
    k, ob = case["entries_per_output"], case["output_value_bytes"]
    n = case.get("packed_values_per_pixel", 0)
    if n:
        per = entry // ob
        entries = [data[e * stride:e * stride + per * ob] for e in range(len(data) // stride)]
        per_pixel = -(-n // per)
        values = []
        for p in range(len(entries) // per_pixel):
            slots = b"".join(entries[p * per_pixel:(p + 1) * per_pixel])
            values += [int.from_bytes(slots[i * ob:(i + 1) * ob], "little", signed=True) for i in range(n)]
        return values
    assert len(data) % (stride * k) == 0, f"output length {len(data)} is not a multiple of {stride}*{k}"
    values = []
    for v in range(len(data) // (stride * k)):
        packed = b"".join(data[(v * k + e) * stride:(v * k + e) * stride + entry] for e in range(k))
        values.append(int.from_bytes(packed[:ob], "little", signed=True))
    return values


class CoreDriver:
    def __init__(self, dut, rng: random.Random, p_idle: float, p_stall: float):
        self.dut = dut
        self.rng = rng
        self.p_idle = p_idle
        self.p_stall = p_stall
        self.addr_width = len(dut.bus__write__payload) - SPACE_BITS - 8
        assert len(dut.bus__read_req__payload) == SPACE_BITS + self.addr_width, "read_req layout mismatch"
        self.cycle_count = 0

    def idle_bus(self):
        d = self.dut
        d.bus__write__valid.value = 0
        d.bus__write__payload.value = 0
        d.bus__read_req__valid.value = 0
        d.bus__read_req__payload.value = 0
        d.bus__read_resp__ready.value = 0
        d.bus__run__valid.value = 0
        d.bus__run__payload.value = 0

    async def tick(self):
        await FallingEdge(self.dut.clk)
        self.cycle_count += 1

    async def write(self, space: int, addr: int, blob: bytes):
        d = self.dut
        aw = self.addr_width
        for i, byte in enumerate(blob):
            while self.rng.random() < self.p_idle:
                d.bus__write__valid.value = 0
                d.bus__write__payload.value = self.rng.getrandbits(SPACE_BITS + aw + 8)  # junk
                await self.tick()
            d.bus__write__payload.value = space | ((addr + i) << SPACE_BITS) | (byte << (SPACE_BITS + aw))
            d.bus__write__valid.value = 1
            for wait in range(10_000):
                await ReadOnly()
                taken = _bit(d.bus__write__ready)
                await self.tick()
                if taken:
                    break
            else:
                raise AssertionError(f"write space {space} addr {addr + i}: ready never rose")
        d.bus__write__valid.value = 0

    async def read(self, space: int, addr: int, length: int) -> bytes:
        """Requests with random idles and responses with random back-pressure, concurrently."""
        d = self.dut
        sent, got = 0, []
        offered = False
        held = None
        limit = 100 * length + 1000
        for n in range(limit):
            if len(got) == length:
                break
            if not offered and sent < length and self.rng.random() >= self.p_idle:
                offered = True
            if offered:
                d.bus__read_req__payload.value = space | ((addr + sent) << SPACE_BITS)
                d.bus__read_req__valid.value = 1
            else:
                d.bus__read_req__valid.value = 0
                d.bus__read_req__payload.value = self.rng.getrandbits(SPACE_BITS + self.addr_width)
            d.bus__read_resp__ready.value = int(self.rng.random() >= self.p_stall)
            await ReadOnly()
            rq_take = offered and _bit(d.bus__read_req__ready)
            rs_valid, rs_ready = _bit(d.bus__read_resp__valid), _bit(d.bus__read_resp__ready)
            value = _uint(d.bus__read_resp__payload) if rs_valid else None
            if held is not None:
                assert rs_valid and value == held, (
                    f"read response withdrawn or changed before it was taken ({held} -> {value})")
            if rs_valid and rs_ready:
                assert len(got) < sent + int(rq_take), "read response without a request"
                got.append(value)
            held = value if rs_valid and not rs_ready else None
            if rq_take:
                sent += 1
                offered = False
            await self.tick()
        else:
            raise AssertionError(f"read of {length} bytes: {sent} requests taken, {len(got)} responses "
                                 f"after {limit} cycles")
        d.bus__read_req__valid.value = 0
        d.bus__read_resp__ready.value = 0
        # No response may follow the last one.
        for _ in range(4):
            d.bus__read_resp__ready.value = 1
            await ReadOnly()
            assert not _bit(d.bus__read_resp__valid), "spurious read response"
            await self.tick()
        d.bus__read_resp__ready.value = 0
        return bytes(got)

    async def run(self, addr: int, limit: int) -> tuple[int, int, int]:
        """RUN(addr); checks busy/done; returns (cycles register, run_status, cycles counted here)."""
        d = self.dut
        assert not _bit(d.bus__busy), "busy before RUN"
        d.bus__run__payload.value = addr
        d.bus__run__valid.value = 1
        for _ in range(1000):
            await ReadOnly()
            taken = _bit(d.bus__run__ready)
            await self.tick()
            if taken:
                break
        else:
            raise AssertionError("RUN never taken")
        d.bus__run__valid.value = 0
        d.bus__run__payload.value = 0
        await ReadOnly()
        assert _bit(d.bus__busy) and not _bit(d.bus__done), "busy must rise the cycle after RUN is taken"
        n = 0
        while not _bit(d.bus__done):
            assert _bit(d.bus__busy), f"busy fell before done rose (cycle {n})"
            assert not _bit(d.bus__write__ready) and not _bit(d.bus__read_req__ready) and not _bit(d.bus__run__ready), \
                "the core must refuse bus traffic while busy"
            await self.tick()
            await ReadOnly()
            n += 1
            assert n < limit, f"the run did not finish within {limit} cycles"
        assert not _bit(d.bus__busy), "busy still high with done"
        cycles, status = _uint(d.bus__cycles), _uint(d.bus__run_status)
        await self.tick()
        return cycles, status, n


@cocotb.test()
async def core_runs_networks(dut):
    """Every case: load over the bus, RUN, read back; output values and cycles equal the golden model."""
    params = tb_params()
    cases = params["cases"]
    status_ok = int(params["status_ok"])
    seed = cocotb.RANDOM_SEED
    rng = random.Random(seed)
    dut._log.info("tb_core: %d cases, test seed=%d (regression COCOTB_RANDOM_SEED=%s)",
                  len(cases), seed, os.environ.get("COCOTB_RANDOM_SEED", "?"))
    drv = CoreDriver(dut, rng, float(params.get("p_idle", 0.3)), float(params.get("p_stall", 0.3)))

    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    drv.idle_bus()
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    await drv.tick()

    for case in cases:
        name = case["name"]
        start = drv.cycle_count
        for space, addr, blob in case["writes"]:
            await drv.write(int(space), int(addr), bytes.fromhex(blob))
        loaded = drv.cycle_count
        predicted = int(case["cycles"])
        cycles, status, counted = await drv.run(int(case["run_addr"]), 4 * predicted + 1000)
        assert status == status_ok, f"{name}: run_status {status}, expected {status_ok}"
        data = await drv.read(params["spaces"]["ACTS"], int(case["output_addr"]), int(case["output_length"]))
        got = decode_output(data, case)
        want = [int(v) for v in case["expected"]]
        assert got == want, f"{name}: output differs from golden\n  got  {got}\n  want {want}"
        assert cycles == predicted, f"{name}: cycles register {cycles}, predicted {predicted}"
        assert counted + 1 >= cycles >= counted, f"{name}: cycles register {cycles} but the run took {counted}"
        dut._log.info("tb_core: %s OK (%d values, %d run cycles, load %d cycles, total %d)",
                      name, len(want), cycles, loaded - start, drv.cycle_count - start)
