"""HadaCore against the golden model: whole networks loaded and run over the host bus.

Each simulation compiles a random network (seeded; the seed is in the test id), loads the images
through the host bus (descriptors, requantizer parameters, the input and part of the weights byte
by byte with random idle cycles; the rest of the weights poked into the memory to save time),
starts RUN, waits for ``done``, reads the output buffer back through ``read_req``/``read_resp``
with random back-pressure, and compares with :func:`hadahw.golden.run_network` for equality.  The
core's ``cycles`` must equal :func:`hadahw.program.predict_cycles`.

The larger matrix is marked ``slow`` (``pytest --runslow``).
"""

import dataclasses

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.lib import data
from amaranth.sim import Simulator

from hadahw.contract import DeltaFormat
from hadahw.golden import run_network
from hadahw.params import AcceleratorConfig
from hadahw.program import (DESCRIPTOR_BYTES, DESCRIPTOR_FIELDS, FLAG_FINAL, FLAG_NARROW, MemoryMap, compile_network,
                            descriptor_field_bits, predict_cycles)
from hadahw.protocol import Space, Status
from hadahw.rtl.core import HadaCore
from hadahw.rtl.layouts import act_entry_layout, descriptor_layout, param_layout, weight_entry_layout

from netgen import Spec, config_kwargs, random_act, random_network

FIXED8 = DeltaFormat()
FIXED4 = DeltaFormat(bits=4)
LOG2_4 = DeltaFormat(bits=4, kind="log2")
LOG2_5 = DeltaFormat(bits=5, kind="log2")


# ---------------------------------------------------------------------------------------------
# Host-bus testbench helpers


async def bus_write(ctx, bus, space, addr, data, rng, p_idle=0.3):
    for i, b in enumerate(data):
        while rng.random() < p_idle:
            await ctx.tick()
        ctx.set(bus.write.payload, {"space": space, "addr": addr + i, "data": b})
        ctx.set(bus.write.valid, 1)
        await ctx.tick().until(bus.write.ready)
        ctx.set(bus.write.valid, 0)


async def wait_for(ctx, state, key, limit=1_000_000):
    for _ in range(limit):
        if key in state:
            return
        await ctx.tick()
    raise AssertionError(f"timed out waiting for {key!r}")


def reader(bus, rng, state, *, p_idle=0.3, p_stall=0.3):
    """Two background testbenches serving reads: ``state["read"] = (seq, space, addr, length)``
    with a new ``seq`` -> ``state["data"]`` (see :func:`read_bytes`).

    Requests are issued with random idle cycles while responses are taken with random
    back-pressure; a response must stay valid and unchanged until taken.
    """
    async def next_request(ctx, served):
        while state.get("read", (served,))[0] == served:
            await ctx.tick()
        return state["read"]

    async def requests(ctx):
        served = 0
        while True:
            served, space, addr, length = await next_request(ctx, served)
            for i in range(length):
                while rng.random() < p_idle:
                    await ctx.tick()
                ctx.set(bus.read_req.payload, {"space": space, "addr": addr + i})
                ctx.set(bus.read_req.valid, 1)
                await ctx.tick().until(bus.read_req.ready)
                ctx.set(bus.read_req.valid, 0)

    async def responses(ctx):
        served = 0
        while True:
            served, _, _, length = await next_request(ctx, served)
            got, held, cycles = [], None, 0
            while len(got) < length:
                ready = bool(rng.random() >= p_stall)
                ctx.set(bus.read_resp.ready, ready)
                _, _, valid, value = await ctx.tick().sample(bus.read_resp.valid, bus.read_resp.payload)
                if held is not None:
                    assert valid and value == held, "read response withdrawn or changed before it was taken"
                if valid and ready:
                    got.append(value)
                held = value if valid and not ready else None
                cycles += 1
                assert cycles < 100 * length + 1000, "read responses stopped"
            ctx.set(bus.read_resp.ready, 0)
            state["data"] = bytes(got)

    return requests, responses


async def read_bytes(ctx, state, space, addr, length) -> bytes:
    state["seq"] = state.get("seq", 0) + 1
    state["read"] = (state["seq"], space, addr, length)
    await wait_for(ctx, state, "data")
    data = state.pop("data")
    del state["read"]
    return data


def simulate(core, main, rng, **reader_kw):
    state = {}
    sim = Simulator(core)
    sim.add_clock(1e-6)
    async def testbench(ctx):
        await main(ctx, state)
    sim.add_testbench(testbench)
    for tb in reader(core.bus, rng, state, **reader_kw):
        sim.add_testbench(tb, background=True)
    sim.run()


async def run_program(ctx, bus, addr, *, limit=1_000_000):
    """RUN(addr), check the busy/done protocol, wait for done; returns (cycles, run_status)."""
    ctx.set(bus.run.payload, addr)
    ctx.set(bus.run.valid, 1)
    await ctx.tick().until(bus.run.ready)
    ctx.set(bus.run.valid, 0)
    assert ctx.get(bus.busy) and not ctx.get(bus.done), "busy must rise the cycle after RUN is taken"
    n = 0
    while not ctx.get(bus.done):
        assert ctx.get(bus.busy), "busy fell before done rose"
        assert not ctx.get(bus.write.ready) and not ctx.get(bus.read_req.ready) and not ctx.get(bus.run.ready)
        await ctx.tick()
        n += 1
        assert n < limit, "the run did not finish"
    assert not ctx.get(bus.busy)
    return ctx.get(bus.cycles), Status(ctx.get(bus.run_status))


def poke_entries(ctx, mem, image: bytes, stride: int, nbytes: int, first: int = 0):
    for e in range(first, len(image) // stride):
        ctx.set(mem.data[e], int.from_bytes(image[e * stride:e * stride + nbytes], "little"))


# ---------------------------------------------------------------------------------------------
# Whole-network check


def check_network(cfg: AcceleratorConfig, spec: Spec, seed: int, *, bus_weight_entries=4, runs=1, extreme=False,
                  p_idle=0.3, p_stall=0.3, final_saturate="random", final_relu=None):
    """Compile, load, run ``runs`` times (new input each time), compare with golden and the timing model.

    ``final_saturate``: the final layer's ``saturate_bits`` (an int or None), or "random" as generated;
    ``final_relu``: its ReLU (None: as generated).
    """
    rng = np.random.default_rng(seed)
    layers, act = random_network(rng, cfg, spec, extreme=extreme)
    if final_saturate != "random" or final_relu is not None:
        last = layers[-1]
        sat = last.requant.saturate_bits if final_saturate == "random" else final_saturate
        relu = last.requant.relu if final_relu is None else final_relu
        layers = [*layers[:-1], dataclasses.replace(
            last, requant=dataclasses.replace(last.requant, saturate_bits=sat, relu=relu))]
    prog = compile_network(layers, cfg)
    mm = prog.memory_map
    inputs = [act] + [random_act(rng, cfg, act.shape) for _ in range(runs - 1)]
    wants = [run_network(layers, a) for a in inputs]
    predicted = predict_cycles(prog)
    core = HadaCore(cfg)
    bus = core.bus
    results = []

    async def main(ctx, state):
        # Weights: the first entries through the bus, the rest poked.
        n_bus = min(bus_weight_entries, len(prog.weight_image) // mm.weight_stride)
        poke_entries(ctx, core.weights, prog.weight_image, mm.weight_stride, mm.weight_entry_bytes, first=n_bus)
        await bus_write(ctx, bus, Space.WEIGHTS, 0, prog.weight_image[:n_bus * mm.weight_stride], rng, p_idle)
        await bus_write(ctx, bus, Space.WEIGHTS, mm.param_base, prog.param_image, rng, p_idle)
        await bus_write(ctx, bus, Space.DESC, prog.desc_addr, prog.desc_image, rng, p_idle)
        for a in inputs:
            await bus_write(ctx, bus, Space.ACTS, prog.input_addr, prog.pack_input(a), rng, p_idle)
            cycles, status = await run_program(ctx, bus, prog.desc_addr)
            out = await read_bytes(ctx, state, Space.ACTS, prog.output_addr, prog.output_length)
            results.append((cycles, status, prog.unpack_output(out)))

    simulate(core, main, rng, p_idle=p_idle, p_stall=p_stall)
    assert len(results) == len(inputs)
    for (cycles, status, got), want in zip(results, wants):
        assert status == Status.OK
        np.testing.assert_array_equal(got, want)
        assert cycles == predicted, f"measured {cycles} cycles, predicted {predicted}"
    return prog


# ---------------------------------------------------------------------------------------------
# Configurations


def make_config(**kw):
    return AcceleratorConfig(**config_kwargs(**kw))


CONV3 = lambda c0, hw, n1, n2, n3, pool=2: Spec((hw, hw, c0), ("conv", n1, 3, 1, 1, pool), ("conv", n2, 3, 2, 1, 1),
                                                ("linear", n3))

#: (id, config kwargs, spec): conv(stride 1, pad 1, pool 2) -> conv(stride 2) -> linear, and linear -> linear.
DEFAULT_CASES = [
    ("conv-bw16gtL-ba16gtL-L8-R3", dict(lanes=8, rows=3, bw=16, ba=16), CONV3(16, 4, 16, 16, 5)),
    ("conv-Cneg-bw4-ba2-L16-R4-log2-shiftadd", dict(lanes=16, rows=4, bw=4, ba=2, fmt=LOG2_4, scaling="shiftadd"),
     CONV3(4, 6, 8, 12, 10)),
    ("conv-CeqL-bw8-ba4-L8-R4-fixed4-act4-i32",
     dict(lanes=8, rows=4, bw=8, ba=4, fmt=FIXED4, act_bits=4, mult_bits=8, bias_bits=12),
     Spec((5, 5, 8), ("conv", 8, 3, 1, 1, 1), ("conv", 16, 3, 2, 0, 1), ("linear", 7))),
    ("conv-bw32gtL-CltL-ba8-L16-R4-log2x5", dict(lanes=16, rows=4, bw=32, ba=8, fmt=LOG2_5),
     Spec((4, 4, 8), ("conv", 16, 3, 1, 1, 2), ("linear", 6))),
    ("fc-fc-short-segment-bw16-ba4-L8-R3-nopool", dict(lanes=8, rows=3, bw=16, ba=4, scaling="shiftadd", max_pool=1),
     Spec((20,), ("linear", 10), ("linear", 5))),
    ("fc-fc-ba16gtL-bw32-L8-R3-log2", dict(lanes=8, rows=3, bw=32, ba=16, fmt=LOG2_4),
     Spec((40,), ("linear", 20), ("linear", 3))),
    # beta_a = 1 (HBWN): one delta_a code per activation, written by the binarizer per value.
    ("conv-ba1-bw4-L8-R2", dict(lanes=8, rows=2, bw=4, ba=1), CONV3(8, 4, 8, 12, 5)),
    ("fc-fc-ba1-bw8-L16-R3-log2-shiftadd", dict(lanes=16, rows=3, bw=8, ba=1, fmt=LOG2_4, scaling="shiftadd"),
     Spec((37,), ("linear", 20), ("linear", 4))),
]


@pytest.mark.parametrize("kw,spec,seed", [(kw, spec, seed) for seed, (_, kw, spec) in enumerate(DEFAULT_CASES)],
                         ids=[f"{name}-seed{seed}" for seed, (name, _, _) in enumerate(DEFAULT_CASES)])
def test_core_runs_network_like_golden(kw, spec, seed):
    check_network(make_config(**kw), spec, seed)


def test_core_extreme_final_values_and_rerun():
    """Final-layer values at the requantizer's widest (int64 on the bus), two runs back to back."""
    cfg = make_config(lanes=8, rows=2, bw=8, ba=2)
    prog = check_network(cfg, Spec((12,), ("linear", 6), ("linear", 3)), 101, extreme=True, runs=2,
                         bus_weight_entries=10**6)
    assert prog.memory_map.output_value_bytes == 8


@pytest.mark.parametrize("sat", [None, 16], ids=["wide", "narrow-16"])
def test_core_final_values_narrow_when_saturated(sat):
    """A final layer saturating to 16 bits writes one entry per value (FLAG_NARROW); a wide one two
    (40-bit entries); below 16 bits see test_core_final_values_packed."""
    cfg = make_config(lanes=8, rows=2, bw=8, ba=2)
    prog = check_network(cfg, Spec((4, 4, 8), ("conv", 8, 3, 1, 1, 2), ("linear", 7)), 303, final_saturate=sat,
                         final_relu=False)
    mm = prog.memory_map
    assert mm.entries_per_output == 2 and mm.act_entry_bytes == 5
    assert prog.output_spacing == (2 if sat is None else 1)
    assert prog.output_length == 7 * prog.output_spacing * mm.act_stride
    assert bool(prog.descriptors[-1].flags & FLAG_NARROW) == (sat is not None)
    assert not prog.output_packed


def test_core_without_packing_gateware_writes_narrow_values():
    """pack_outputs=False: no packer is built and a byte-sized final layer is written narrow."""
    cfg = dataclasses.replace(make_config(lanes=8, rows=2, bw=8, ba=2), pack_outputs=False)
    prog = check_network(cfg, Spec((4, 4, 8), ("conv", 8, 3, 1, 1, 2), ("linear", 7)), 405, final_saturate=8)
    assert not prog.output_packed and prog.output_spacing == 1 and prog.descriptors[-1].flags & FLAG_NARROW


@pytest.mark.parametrize("spec,sat,relu,size", [
    (Spec((4, 4, 8), ("conv", 8, 3, 1, 1, 2), ("linear", 12)), 8, True, 2),    # 2 a 5-byte entry: 6 entries
    (Spec((4, 4, 8), ("conv", 8, 3, 1, 1, 2), ("linear", 5)), 6, False, 1),    # one full entry of 5
    (Spec((4, 4, 8), ("conv", 8, 3, 1, 1, 1), ("conv", 7, 3, 2, 1, 1)), 5, True, 1),  # 2x2 pixels, 2 entries each
    (Spec((6, 6, 8), ("conv", 11, 3, 1, 1, 2)), 15, False, 2),               # pooled 3x3 map, 6 entries a pixel
], ids=["fc-12-2byte", "fc-5-1byte", "conv-stride2-1byte", "conv-pool-2byte"])
def test_core_final_values_packed(spec, sat, relu, size):
    """A final layer whose values fit 1 or 2 bytes packs several per entry (FLAG_PACKED)."""
    cfg = make_config(lanes=8, rows=2, bw=8, ba=2)
    prog = check_network(cfg, spec, 404, final_saturate=sat, final_relu=relu)
    mm = prog.memory_map
    h, w, n = (1, 1, *prog.output_shape) if len(prog.output_shape) == 1 else prog.output_shape
    assert prog.output_packed and prog.descriptors[-1].flags & FLAG_NARROW and prog.output_value_bytes == size
    assert prog.output_length == h * w * -(-n // (mm.act_entry_bytes // size)) * mm.act_stride


@pytest.mark.parametrize("spec", [Spec((8,), ("linear", 60), ("linear", 5)),
                                  Spec((4, 4, 8), ("conv", 16, 1, 1, 0, 2), ("linear", 6))], ids=["fc-fc", "conv1x1"])
def test_core_is_exact_under_engine_back_pressure(spec):
    """With the pacing removed (pace = 0) a pass (one word here) is shorter than its serialization,
    so once the register slices are full the engine's input stalls behind its output: nothing may
    be lost or repeated (only the timing changes)."""
    cfg = make_config(lanes=8, rows=4, bw=8, ba=4)
    rng = np.random.default_rng(77)
    layers, act = random_network(rng, cfg, spec)
    prog = compile_network(layers, cfg)
    assert any(p.pace for p in prog.plans)
    desc = b"".join(dataclasses.replace(d, pace=0).encode() for d in prog.descriptors)
    core = HadaCore(cfg)
    out = {}

    async def main(ctx, state):
        for space, a, blob in prog.writes()[:2] + [(Space.DESC, 0, desc),
                                                   (Space.ACTS, prog.input_addr, prog.pack_input(act))]:
            await bus_write(ctx, core.bus, space, a, blob, rng, 0.1)
        stalls = 0
        ctx.set(core.bus.run.payload, 0)
        ctx.set(core.bus.run.valid, 1)
        await ctx.tick().until(core.bus.run.ready)
        ctx.set(core.bus.run.valid, 0)
        while not ctx.get(core.bus.done):
            stalls += ctx.get(core.engine.i.valid) and not ctx.get(core.engine.i.ready)
            await ctx.tick()
        out["stalls"] = stalls
        out["cycles"] = ctx.get(core.bus.cycles)
        out["y"] = prog.unpack_output(await read_bytes(ctx, state, Space.ACTS, prog.output_addr, prog.output_length))

    simulate(core, main, rng)
    assert out["stalls"] > 0
    np.testing.assert_array_equal(out["y"], run_network(layers, act))


# ---------------------------------------------------------------------------------------------
# Host bus paths and faults


def test_host_bus_read_back_and_holes():
    """Every space reads back what was written; holes and the parameter region read 0."""
    cfg = make_config(lanes=8, rows=3, bw=16, ba=4, weight_depth=8, act_depth=8, param_depth=4)
    mm = MemoryMap(cfg)
    core = HadaCore(cfg)
    bus = core.bus
    rng = np.random.default_rng(5)
    plan = [
        (Space.WEIGHTS, 0, mm.weight_stride * 3),
        (Space.WEIGHTS, mm.param_base, mm.param_stride * 2),
        (Space.ACTS, mm.act_stride * 5, mm.act_stride * 3),
        (Space.DESC, 7, 40),
    ]
    blobs = [bytes(rng.integers(1, 256, n, dtype=np.uint8)) for _, _, n in plan]
    seen = []

    async def main(ctx, state):
        for (space, addr, _), blob in zip(plan, blobs):
            await bus_write(ctx, bus, space, addr, blob, rng)
        for space, addr, n in plan:
            seen.append(await read_bytes(ctx, state, space, addr, n))
        # Entries written by the host are what the core reads.
        assert ctx.get(core.weights.data[0]) == int.from_bytes(blobs[0][:mm.weight_entry_bytes], "little")

    simulate(core, main, rng)

    def holes(blob, stride, nbytes):
        b = bytearray(blob)
        for i in range(len(b)):
            if i % stride >= nbytes:
                b[i] = 0
        return bytes(b)

    assert seen[0] == holes(blobs[0], mm.weight_stride, mm.weight_entry_bytes)
    assert seen[1] == bytes(len(blobs[1]))
    assert seen[2] == holes(blobs[2], mm.act_stride, mm.act_entry_bytes)
    assert seen[3] == blobs[3]


def field_offset(name: str) -> int:
    names = [f[0] for f in DESCRIPTOR_FIELDS]
    return sum(n for _, n, _ in DESCRIPTOR_FIELDS[:names.index(name)])


@pytest.mark.parametrize("what", ["address", "no-final", "zero-field", "beta", "dropped-bit"])
def test_run_faults(what):
    """A RUN that cannot run ends with RUN_FAULT instead of hanging; the core runs fine afterwards."""
    cfg = make_config(lanes=8, rows=2, bw=8, ba=2, desc_bytes=2 * DESCRIPTOR_BYTES)
    rng = np.random.default_rng(9)
    layers, act = random_network(rng, cfg, Spec((8,), ("linear", 4), ("linear", 2)))
    prog = compile_network(layers, cfg)
    bad = bytearray(prog.desc_image)
    addr = 0
    if what == "address":
        addr = DESCRIPTOR_BYTES + 1          # no room for a descriptor
    elif what == "no-final":
        bad[DESCRIPTOR_BYTES] &= ~FLAG_FINAL  # runs off the end of DESC
    elif what == "zero-field":
        off = field_offset("passes")
        bad[off:off + 2] = b"\0\0"
    elif what == "dropped-bit":
        # The top byte of `passes` is beyond what this config's register keeps (param_depth is
        # small): a non-zero bit there must fault, not silently run fewer passes.
        assert descriptor_field_bits(cfg)["passes"] < 16
        bad[field_offset("passes") + 1] |= 0x80
    else:
        bad[field_offset("log2_out_beta_a")] += 1
    core = HadaCore(cfg)
    bus = core.bus
    out = {}

    async def main(ctx, state):
        for space, a, blob in prog.writes()[:2]:
            await bus_write(ctx, bus, space, a, blob, rng, 0.0)
        await bus_write(ctx, bus, Space.DESC, 0, bytes(bad), rng, 0.0)
        await bus_write(ctx, bus, Space.ACTS, prog.input_addr, prog.pack_input(act), rng, 0.0)
        out["fault"] = await run_program(ctx, bus, addr, limit=5000)
        await bus_write(ctx, bus, Space.DESC, 0, prog.desc_image, rng, 0.0)
        out["ok"] = await run_program(ctx, bus, prog.desc_addr, limit=5000)
        out["y"] = prog.unpack_output(await read_bytes(ctx, state, Space.ACTS, prog.output_addr, prog.output_length))

    simulate(core, main, rng)
    assert out["fault"][1] == Status.RUN_FAULT
    if what == "address":
        assert out["fault"][0] == 1
    assert out["ok"] == (predict_cycles(prog), Status.OK)
    np.testing.assert_array_equal(out["y"], run_network(layers, act))


# ---------------------------------------------------------------------------------------------
# Layouts and export


@pytest.mark.parametrize("cfg", [make_config(lanes=8, rows=3, bw=16, ba=4), make_config(lanes=16, rows=2, bw=4, ba=2,
                                                                                          fmt=LOG2_5, act_bits=5)])
def test_layouts_agree_with_memory_map(cfg):
    mm = MemoryMap(cfg)
    w = weight_entry_layout(cfg)
    assert w.size == mm.weight_entry_bits
    for r in range(cfg.rows):
        assert w["w"].offset + r * cfg.lanes == mm.weight_sign_offset(r)
        for h in range(cfg.weight_groups):
            assert w["dw"].offset + (r * cfg.weight_groups + h) * cfg.weight_code_bits == mm.weight_code_offset(r, h)
    a = act_entry_layout(cfg)
    assert a.size == mm.act_entry_bits and a["a"].offset == 0
    assert all(a["da"].offset + g * cfg.act_bits == mm.act_code_offset(g) for g in range(cfg.act_groups))
    assert param_layout(cfg).size == mm.param_entry_bits
    d = descriptor_layout()
    assert d.size == 8 * DESCRIPTOR_BYTES
    off = 0
    for name, n, _ in DESCRIPTOR_FIELDS:
        assert d[name].offset == 8 * off and d[name].shape.width == 8 * n
        off += n
    # A descriptor decoded by the layout equals the encoder's fields.
    prog = compile_network(random_network(np.random.default_rng(1), cfg, Spec((16,), ("linear", 3)))[0], cfg)
    desc = prog.descriptors[0]
    view = data.Const(d, int.from_bytes(desc.encode(), "little"))
    assert all(view[name] == getattr(desc, name) for name, _, _ in DESCRIPTOR_FIELDS)


def test_converts_to_verilog():
    cfg = make_config(lanes=8, rows=2, bw=8, ba=2, weight_depth=32, act_depth=32, param_depth=16)
    text = verilog.convert(HadaCore(cfg), name="hada_core")
    assert "module hada_core" in text and "bus__write__valid" in text


def test_core_rejects_non_config():
    with pytest.raises(TypeError, match="AcceleratorConfig"):
        HadaCore({"rows": 2})


# ---------------------------------------------------------------------------------------------
# Slow matrix

SLOW_LANES = [(8, 3), (16, 4), (16, 5)]
SLOW_PAIRS = [(2, 2), (4, 2), (8, 4), (16, 2), (16, 16), (32, 8), (64, 16), (64, 64), (2, 1), (8, 1)]  # ba 1: HBWN
SLOW_CASES = []
for i, (bw, ba) in enumerate(SLOW_PAIRS):
    for j, (lanes, rows) in enumerate(SLOW_LANES):
        fmt = [FIXED8, LOG2_4, FIXED4, LOG2_5][(i + j) % 4]
        scaling = ["dsp", "shiftadd"][(i + j) % 2]
        c_small = max(ba, 2 if lanes > 2 else lanes)  # a channel count below L where allowed
        c0 = c_small if c_small < lanes and (bw % c_small == 0 or c_small % bw == 0) else max(lanes, ba, bw)
        n1 = max(ba, 8) if max(ba, 8) < lanes and bw % max(ba, 8) == 0 else max(2 * lanes, ba, bw)
        SLOW_CASES.append((f"bw{bw}-ba{ba}-L{lanes}-R{rows}-{fmt.kind}{fmt.bits}-{scaling}",
                           dict(lanes=lanes, rows=rows, bw=bw, ba=ba, fmt=fmt, scaling=scaling,
                                max_reduction=4096, weight_depth=4096, act_depth=512, param_depth=256,
                                max_pool_width=8, max_channels=64),
                           CONV3(c0, 4 if ba >= 32 else 6, n1, max(ba, 2 * lanes) if ba > lanes else 2 * lanes,
                                 2 * rows + 1)))
        SLOW_CASES.append((f"fc-bw{bw}-ba{ba}-L{lanes}-R{rows}",
                           dict(lanes=lanes, rows=rows, bw=bw, ba=ba, fmt=fmt, scaling=scaling, max_reduction=4096,
                                weight_depth=2048, act_depth=512, param_depth=256),
                           Spec((3 * lanes + ba,), ("linear", 3 * rows + 1), ("linear", 2 * ba + 1),
                                ("linear", rows + 2))))


@pytest.mark.slow
@pytest.mark.parametrize("kw,spec,seed", [(kw, spec, 1000 + s) for s, (_, kw, spec) in enumerate(SLOW_CASES)],
                         ids=[f"{name}-seed{1000 + s}" for s, (name, _, _) in enumerate(SLOW_CASES)])
def test_core_runs_network_like_golden_full(kw, spec, seed):
    check_network(make_config(**kw), spec, seed, bus_weight_entries=16)
