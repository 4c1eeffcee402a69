"""Full system: the host driver streams networks over the simulated UART into the board design.

The device is :class:`hadahw.sim.uart_board.SimulatedBoard`: the Verilog of the pin-free board
design (UART, FIFO, HostLink, HadaCore) under Verilator, its UART pins bit-banged by a cocotb bench
onto a pseudo-terminal; the host opens the pty with pyserial (``SerialPipe``) and runs
``Link`` + ``Accelerator`` exactly as against a board.  One simulation (one build of
``netgen.SYSTEM_CONFIG_KW``) serves the whole module; each test opens its own link.

* random networks (conv and linear; the seed is in the test id): outputs equal
  :func:`hadahw.golden.run_network`, the cycles the device measured equal
  :func:`hadahw.program.predict_cycles`;
* the same through :class:`~hadahw.sw.transport.FaultyPipe` (bit flips, drops, duplicates and
  inserted garbage in both directions; the seed is in the test id): still equal, and the faults
  and the retransmissions they caused are asserted, so the test cannot pass on a clean line;
* a digits HadaNet (random weights, no training) split between host and accelerator
  (:class:`hadahw.sw.partition.HybridNetwork`): equal to :func:`hadahw.lower_net.golden_predict`.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from hadahw.golden import run_network
from hadahw.lower_net import _input_act, golden_predict
from hadahw.params import AcceleratorConfig
from hadahw.program import compile_network, predict_cycles
from hadahw.sim.uart_board import SimulatedBoard
from hadahw.sw.accelerator import Accelerator
from hadahw.sw.partition import HybridNetwork
from hadahw.sw.transport import FAULT_KINDS, FaultyPipe

import netgen
from netgen import Spec, lowered_digits, random_act, random_network

CFG = AcceleratorConfig(**netgen.SYSTEM_CONFIG_KW)

#: (spec, seed): conv + linear, three linears, conv + strided conv + linear.
NETWORKS = [
    (Spec((4, 4, 16), ("conv", 16, 3, 1, 1, 2), ("linear", 6)), 10),
    (Spec((32,), ("linear", 24), ("linear", 16), ("linear", 5)), 11),
    (Spec((5, 5, 16), ("conv", 16, 3, 1, 1, 1), ("conv", 32, 3, 2, 0, 1), ("linear", 7)), 12),
]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_board_shuts_down_on_exception():
    """An exception in the ``with`` body stops the simulation and its whole process group.

    First in the module: the shared board below holds the build folder's lock until the end.
    """
    with pytest.raises(RuntimeError, match="^boom$"):
        with SimulatedBoard(CFG) as b:
            pid = b.pid
            with b.link() as link:
                assert Accelerator(link).config == CFG
            assert _group_alive(pid)
            raise RuntimeError("boom")
    assert b.port is None and not _group_alive(pid)


@pytest.fixture(scope="module")
def board():
    t0 = time.monotonic()
    with SimulatedBoard(CFG) as b:
        print(f"simulated board ready in {time.monotonic() - t0:.1f} s (build included) on {b.port}")
        yield b


def check_network(acc: Accelerator, spec: Spec, seed: int, inputs: int = 2) -> list:
    """Load one random network, run ``inputs`` random inputs; returns the inferences."""
    rng = np.random.default_rng(seed)
    layers, act = random_network(rng, CFG, spec)
    prog = compile_network(layers, CFG)
    acc.load(prog)
    results = []
    for i in range(inputs):
        a = act if i == 0 else random_act(rng, CFG, spec.in_shape)
        res = acc.infer(a)
        want = run_network(layers, a)
        assert res.output.shape == want.shape
        assert np.array_equal(res.output, want), f"seed {seed} input {i}: hardware {res.output} != golden {want}"
        assert res.cycles == predict_cycles(prog), f"seed {seed}: measured {res.cycles} cycles"
        results.append(res)
    # Not vacuous: two inputs give two different outputs.
    assert inputs < 2 or not np.array_equal(results[0].output, results[1].output)
    return results


@pytest.mark.parametrize("spec,seed", NETWORKS, ids=[f"seed{s}" for _, s in NETWORKS])
def test_networks_over_simulated_uart(board, spec, seed):
    with board.link() as link:
        acc = Accelerator(link, expect_config=CFG)
        results = check_network(acc, spec, seed)
        print(f"seed {seed}: {results[0].cycles} cycles; load {acc.load_s:.2f} s, per inference transfer "
              f"{results[0].transfer_s:.2f} s, compute {results[0].compute_s:.2f} s")
        assert link.stats.retransmits == 0, link.stats  # a clean line


@pytest.mark.parametrize("fault_seed", [7], ids=lambda s: f"faultseed{s}")
def test_fault_injection_over_simulated_uart(board, fault_seed):
    spec, seed = NETWORKS[2]
    pipe = FaultyPipe(board.open_pipe(), seed=fault_seed, flip=0.001, drop=0.001, dup=0.0005, insert=0.001,
                      burst=3)
    # Short frames and a short timeout: a damaged frame costs a retransmission, not seconds.
    with board.link(pipe=pipe, timeout=0.6, retries=40, max_payload=64) as link:
        acc = Accelerator(link, expect_config=CFG)
        check_network(acc, spec, seed)
        device = link.status().as_dict()
    counts = {d: {k: pipe.counts[d][k] for k in FAULT_KINDS} for d in ("tx", "rx")}
    print(f"faults injected {counts}; link {link.stats}; device counters {device}")
    assert pipe.faults("tx") > 0 and pipe.faults("rx") > 0, counts
    assert all(counts["tx"][k] + counts["rx"][k] > 0 for k in FAULT_KINDS), counts
    assert link.stats.retransmits > 0, link.stats


def test_hybrid_digits_over_simulated_uart(board):
    from hadahw.train import load_split

    net, _ = lowered_digits("digits-mlp", 3)
    hyb = HybridNetwork(net.layers, CFG)
    assert hyb.placement == ["host", "accelerator", "host"]
    x = load_split().x_test[:3].numpy().astype(np.float64)
    want = golden_predict(net.layers, net.input_exponent, x)
    with board.link() as link:
        acc = Accelerator(link, expect_config=CFG)
        acc.load(hyb.program)
        cycles = []

        def device(act):
            res = acc.infer(act)
            cycles.append(res.cycles)
            return res.output

        got = np.stack([hyb.run(_input_act(net.layers, net.input_exponent, s), device) for s in x])
    print(f"hybrid digits-mlp: load {acc.load_s:.1f} s ({len(hyb.program.weight_image)} weight bytes), "
          f"cycles {cycles}")
    assert np.array_equal(got, want)
    assert cycles == [predict_cycles(hyb.program)] * len(x)
    assert len({tuple(r) for r in want}) == len(x)  # three images, three different logit vectors
