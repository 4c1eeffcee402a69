"""Hybrid host/accelerator networks (hadahw.sw.partition), in pure Python.

The accelerator segment runs on a software stand-in (the golden model of the compiled segment),
so these tests check the split and the host-side hand-over; tests/test_sim_system.py runs the
same through the simulated board.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hadahw.contract import DeltaFormat
from hadahw.golden import run_network
from hadahw.lower_net import _input_act, golden_predict
from hadahw.params import AcceleratorConfig
from hadahw.sw.partition import HybridNetwork, layer_placement, partition_network, reference_layer

import netgen
from netgen import Spec, lowered_digits, random_network

CFG = AcceleratorConfig(**netgen.SYSTEM_CONFIG_KW)


@pytest.mark.parametrize("name,seed,split", [("digits-mlp", 0, (1, 2)), ("digits-cnn", 1, (1, 3))])
def test_digits_hybrid_equals_golden(name, seed, split):
    net, calib = lowered_digits(name, seed)
    hyb = HybridNetwork(net.layers, CFG)
    # The full-precision first and last layers stay on the host; every hidden layer goes over.
    assert (hyb.start, hyb.stop) == split
    assert hyb.placement == layer_placement(len(net.layers), *split)
    assert hyb.placement[0] == hyb.placement[-1] == "host"
    assert hyb.segment[-1].out_beta_a is None and net.layers[split[1] - 1].out_beta_a == 1
    x = calib[:12].numpy().astype(np.float64)
    want = golden_predict(net.layers, net.input_exponent, x)
    calls = []

    def device(act):
        calls.append(act)
        return run_network(hyb.segment, act)

    got = np.stack([hyb.run(_input_act(net.layers, net.input_exponent, s), device) for s in x])
    assert len(calls) == len(x)
    assert np.array_equal(got, want)
    # Not vacuous: the logits vary between images and the hand-over binarizes with beta_a = 1.
    assert len({tuple(r) for r in want}) > 1


def test_whole_network_on_the_accelerator():
    rng = np.random.default_rng(5)
    layers, act = random_network(rng, CFG, Spec((4, 4, 16), ("conv", 16, 3, 1, 1, 2), ("linear", 6)))
    hyb = HybridNetwork(layers, CFG)
    assert (hyb.start, hyb.stop) == (0, 2) and hyb.placement == ["accelerator"] * 2
    assert hyb.segment == tuple(layers)
    assert np.array_equal(hyb.run(act, lambda a: run_network(hyb.segment, a)), run_network(layers, act))


def test_longest_run_wins_and_chain_breaks():
    rng = np.random.default_rng(6)
    layers, _ = random_network(rng, CFG, Spec((32,), ("linear", 16), ("linear", 16), ("linear", 16), ("linear", 8)))
    # a weight format the accelerator was not built for
    fixed4 = dataclasses.replace(layers[1], weight_format=DeltaFormat(bits=4), weight_delta=layers[1].weight_delta % 16)
    assert partition_network(layers, CFG) == (0, 4)
    assert partition_network([layers[0], fixed4, layers[2], layers[3]], CFG) == (2, 4)
    assert partition_network([layers[0], layers[1], fixed4, layers[3]], CFG) == (0, 2)
    # A layer that binarizes for another beta_a ends a segment (it can still be its last layer).
    to_ba4 = dataclasses.replace(layers[1], out_beta_a=4)
    assert partition_network([layers[0], to_ba4, layers[2], layers[3]], CFG) == (0, 2)


def test_nothing_fits():
    net, _ = lowered_digits("digits-mlp", 2)
    other = dataclasses.replace(CFG, beta_w=8)
    with pytest.raises(ValueError, match=r"^no layer of the network can run on this accelerator \(layer 0: .*beta_w=1"):
        HybridNetwork(net.layers, other)


def test_segment_that_does_not_compile_names_the_network_layers():
    net, _ = lowered_digits("digits-mlp", 3)
    small = dataclasses.replace(CFG, weight_depth=256)
    with pytest.raises(ValueError, match=r"^accelerator segment \(network layers 1\.\.1\): .*weight_depth=256"):
        HybridNetwork(net.layers, small)


@pytest.mark.parametrize("beta_a", [2, 1])
def test_reference_layer_is_the_first_with_binarized_weights(beta_a):
    """HadaNet and HBWN (beta_a = 1) alike: the full-precision first layer is skipped; a network
    without binarized weights has no reference layer."""
    net, _ = lowered_digits("digits-mlp", 0, beta_w=4, beta_a=beta_a)
    assert [layer.beta_w for layer in net.layers] == [1, 4, 1]
    assert reference_layer(net.layers) is net.layers[1] and net.layers[1].beta_a == beta_a
    hyb = HybridNetwork(net.layers, AcceleratorConfig(**{**netgen.SYSTEM_CONFIG_KW, "beta_w": 4, "beta_a": beta_a}))
    assert (hyb.start, hyb.stop) == (1, 2)
    with pytest.raises(ValueError, match=r"no layer of the network has binarized weights \(beta_w >= 2\)"):
        reference_layer([net.layers[0], net.layers[2]])

