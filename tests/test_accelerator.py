"""The Accelerator driver (hadahw.sw.accelerator) against the protocol's device model.

The device model's executor plays the core (:func:`fakedev.golden_device`), so these tests check
the driver's addresses, packing, run handling and errors without a simulator;
tests/test_sim_system.py runs the real gateware.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hadahw.golden import run_network
from hadahw.params import AcceleratorConfig
from hadahw.program import MemoryMap, compile_network
from hadahw.protocol import Space
from hadahw.rtl.top import config_json
from hadahw.sw.accelerator import Accelerator, RunError, config_differences
from hadahw.sw.devmodel import DevModel, DevModelPipe
from hadahw.sw.link import IncompatibleDevice, Link
from hadahw.sw.transport import FaultyPipe

import netgen
from fakedev import encode_output, golden_device
from netgen import Spec, random_act, random_network

CFG = AcceleratorConfig(**netgen.config_kwargs(lanes=16, rows=4, bw=16, ba=2))
SPEC = Spec((4, 4, 16), ("conv", 16, 3, 1, 1, 2), ("linear", 6))


def test_load_and_infer_equal_golden():
    rng = np.random.default_rng(1)
    layers, act = random_network(rng, CFG, SPEC)
    prog = compile_network(layers, CFG)
    want = run_network(layers, act)
    assert prog.unpack_output(encode_output(want, prog)).tolist() == want.tolist()  # the fake core's format
    holder = {"program": prog}
    dev = golden_device(CFG, holder, run_polls=3)
    acc = Accelerator(Link(DevModelPipe(dev), timeout=0.05, retries=2), expect_config=CFG)
    assert acc.config == CFG
    acc.load(prog)
    assert bytes(dev.mem[Space.WEIGHTS][:len(prog.weight_image)]) == prog.weight_image
    for a in (act, random_act(rng, CFG, act.shape)):
        res = acc.infer(a)
        assert np.array_equal(res.output, run_network(layers, a))
        assert res.cycles == prog.predict_cycles()
        assert res.transfer_s > 0 and res.compute_s > 0
    assert holder["runs"] == 2


def test_activations_move_compact_with_a_protocol_1_1_device_and_plain_with_1_0():
    """The same outputs either way; compact transfers move the entries' used bytes only."""
    import dataclasses

    from hadahw.protocol import pack_identify
    rng = np.random.default_rng(3)
    layers, act = random_network(rng, CFG, SPEC)
    prog = compile_network(layers, CFG)
    used, stride = prog.memory_map.compact_spaces[Space.ACTS]
    received, sent = {}, {}
    for version in ((1, 1), (1, 0)):
        dev = golden_device(CFG, {"program": prog})
        dev._identify = pack_identify(dataclasses.replace(dev.info, version=version))
        link = Link(DevModelPipe(dev), timeout=0.05)
        acc = Accelerator(link, expect_config=CFG)
        assert acc.act_entry == ((used, stride) if version == (1, 1) else None)
        acc.load(prog)
        before = link.stats.bytes_received, link.stats.bytes_sent
        assert np.array_equal(acc.infer(act).output, run_network(layers, act))
        received[version] = link.stats.bytes_received - before[0]
        sent[version] = link.stats.bytes_sent - before[1]
    holes = lambda n: n - n // stride * used  # noqa: E731  (bytes of the holes in n bytes of entries)
    assert received[(1, 0)] - received[(1, 1)] >= holes(prog.output_length)
    assert sent[(1, 0)] - sent[(1, 1)] >= holes(prog.input_length)


def test_faulty_line():
    rng = np.random.default_rng(2)
    layers, act = random_network(rng, CFG, SPEC)
    prog = compile_network(layers, CFG)
    dev = golden_device(CFG, {"program": prog})
    pipe = FaultyPipe(DevModelPipe(dev), seed=3, flip=0.001, drop=0.001, insert=0.001, burst=2)
    link = Link(pipe, timeout=0.02, retries=30, max_payload=64)
    acc = Accelerator(link, expect_config={"beta_w": 16, "rows": 4})
    acc.load(prog)
    assert np.array_equal(acc.infer(act).output, run_network(layers, act))
    assert pipe.faults() > 0 and link.stats.retransmits > 0


def test_incompatible_devices():
    sizes = MemoryMap(CFG).space_sizes

    def connect(config, expect=None, sizes=sizes):
        return Accelerator(Link(DevModelPipe(DevModel(sizes=sizes, config=config)), timeout=0.05), expect)

    with pytest.raises(IncompatibleDevice, match=r"not an accelerator configuration \(unknown accelerator"):
        connect({"rows": 4, "pe": 2})
    other = dataclasses.replace(CFG, rows=8)
    with pytest.raises(IncompatibleDevice, match=r"device vs expected: rows: 4 vs 8\)$"):
        connect(config_json(CFG).decode(), other)
    with pytest.raises(IncompatibleDevice, match=r"has beta_a = 2, expected 4$"):
        connect(config_json(CFG).decode(), {"beta_a": 4})
    with pytest.raises(IncompatibleDevice, match="WEIGHTS space is 100 bytes"):
        connect(config_json(CFG).decode(), sizes={**sizes, Space.WEIGHTS: 100})
    assert connect(config_json(CFG).decode()).config == CFG


def test_usage_errors():
    rng = np.random.default_rng(4)
    layers, act = random_network(rng, CFG, SPEC)
    holder = {"program": compile_network(layers, CFG)}
    acc = Accelerator(Link(DevModelPipe(golden_device(CFG, holder)), timeout=0.05))
    with pytest.raises(RuntimeError, match="no program is loaded"):
        acc.infer(act)
    other = dataclasses.replace(CFG, weight_depth=512)
    with pytest.raises(ValueError, match=r"^the program was compiled for another accelerator configuration "
                                         r"\(program vs device: weight_depth: 512 vs 256\)$"):
        acc.load(compile_network(layers, other))
    assert config_differences(CFG, other) == ["weight_depth: 256 vs 512"]
    acc.load(holder["program"])
    with pytest.raises(ValueError, match="beta_a"):
        acc.infer(dataclasses.replace(act, beta_a=4, delta=act.delta[..., ::2]))


def test_run_fault_and_timeout():
    rng = np.random.default_rng(5)
    layers, act = random_network(rng, CFG, SPEC)
    prog = compile_network(layers, CFG)
    holder = {"program": prog}
    dev = golden_device(CFG, holder)
    acc = Accelerator(Link(DevModelPipe(dev), timeout=0.05))
    acc.load(prog)
    holder["program"] = None  # the executor fails: the device reports RUN_FAULT
    with pytest.raises(RunError, match=r"^the run ended with RUN_FAULT after 0 cycles$"):
        acc.infer(act)
    dev.run_polls = 10_000  # never finishes within the timeout
    acc.run_timeout = 0.05
    holder["program"] = prog
    with pytest.raises(RunError, match="did not finish within 0.05 s"):
        acc.infer(act)
