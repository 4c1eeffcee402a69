"""Lowering trained digits HadaNets to the integer golden model (hadahw.lower_net).

Trained fixtures: seed 0, 3 epochs on the full training split (1437 images), no lr decay
(``lr_step=3``), BatchNorm statistics re-estimated after training (the recipe's default).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from hadahw.contract import DeltaFormat
from hadahw.golden import QLayer
from hadahw.lower import conv_weight_to_rows
from hadahw.lower_net import (calibrate, float_reference_check, golden_predict, golden_trace, lower_network,
                              lower_network_full, parse_units, weight_bytes)
from hadahw.nets import build_model
from hadahw.quant import HadaConv2d, HadaLinear, hada_binarize_weight
from hadahw.train import fit, load_split

SEED = 0


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def split():
    return load_split()


@pytest.fixture(scope="module")
def mlp(split):
    return fit("digits-mlp", "hada16-2", epochs=3, lr_step=3, seed=SEED, quiet=True).model


@pytest.fixture(scope="module")
def cnn(split):
    return fit("digits-cnn", "hada16-2", epochs=3, lr_step=3, seed=SEED, quiet=True).model


@pytest.fixture(scope="module")
def cnn_net(cnn, split):
    return lower_network_full(cnn, split.x_train)


@pytest.fixture(scope="module")
def mlp_net(mlp, split):
    return lower_network_full(mlp, split.x_train)


def _float_logits(model, x):
    with torch.no_grad():
        return model.eval()(x).double().numpy()


# ---- structure ------------------------------------------------------------------------------

def test_lowered_cnn_layers_are_valid_qlayers(cnn_net):
    layers = cnn_net.layers
    assert [l.kind for l in layers] == ["conv2d", "conv2d", "conv2d", "linear"]
    assert [l.in_shape for l in layers] == [(8, 8, 1), (8, 8, 32), (4, 4, 64), (256,)]
    assert [l.out_shape for l in layers] == [(8, 8, 32), (4, 4, 64), (2, 2, 64), (10,)]
    assert [(l.beta_w, l.beta_a) for l in layers] == [(1, 1), (16, 2), (16, 2), (1, 1)]
    assert [l.pool for l in layers] == [1, 2, 2, 1]
    assert [l.out_beta_a for l in layers] == [2, 2, 1, None]
    for a, b in zip(layers, layers[1:]):
        assert a.requant.saturate_bits == b.act_bits == 8  # the contract's hand-over
        assert a.requant.relu
        assert isinstance(a, QLayer)
    final = layers[-1]
    assert final.requant.saturate_bits is None and not final.requant.relu
    assert cnn_net.act_exponents[0] == cnn_net.input_exponent == -7  # pixel/16 in [0, 1]: lossless
    # sign-exact rounding only where a binarized layer (beta_a > 1) follows
    assert cnn_net.floored == [True, True, False, False]


def test_lowered_mlp_layers_and_return_value(mlp, mlp_net, split):
    layers, e_in = lower_network(mlp, split.x_train)
    assert layers == mlp_net.layers and e_in == mlp_net.input_exponent
    assert [(l.kind, l.in_shape, l.beta_w, l.beta_a, l.out_beta_a) for l in layers] == [
        ("linear", (64,), 1, 1, 2), ("linear", (256,), 16, 2, 1), ("linear", (256,), 1, 1, None)]


def test_weights_are_in_hardware_order(cnn, cnn_net):
    convs = [m for m in cnn.modules() if isinstance(m, HadaConv2d)]
    for mod, layer in zip(convs, cnn_net.layers):
        with torch.no_grad():
            ref = conv_weight_to_rows(hada_binarize_weight(mod.weight.double(), mod.beta_w).numpy())
        got = layer.weight_values() * 2.0 ** layer.weight_exponent
        assert np.abs(got - ref).max() <= 2.0 ** layer.weight_exponent / 2 + 1e-12
    # the last linear layer sees the HWC-flattened map: its columns are permuted from CHW
    lin = cnn.stages[3][2].weight.detach().double().numpy()
    want = lin.reshape(10, 64, 2, 2).transpose(0, 2, 3, 1).reshape(10, 256)
    last = cnn_net.layers[-1]
    got = last.weight_values() * 2.0 ** last.weight_exponent
    assert np.abs(got - want).max() <= 2.0 ** last.weight_exponent / 2 + 1e-12


def test_lowering_leaves_the_model_untouched(mlp, split):
    before = copy.deepcopy(mlp.state_dict())
    mlp.train()
    lower_network(mlp, split.x_train[:100])
    assert mlp.training
    mlp.eval()
    for k, v in mlp.state_dict().items():
        assert torch.equal(v, before[k]), k


# ---- integer vs float -----------------------------------------------------------------------

# Measured with these settings (hada16-2, 3 epochs, seeds 0/1/2), relative to the largest |float
# logit| on the test split: MLP agreement 1.0/1.0/1.0, max error 0.22/0.30/0.14, 99th percentile
# 0.021/0.022/0.022, mean 0.0058/0.0060/0.0056; CNN agreement 0.992/0.997/1.0, max 0.118/0.106/0.088,
# 99th percentile 0.052/0.055/0.057, mean 0.014/0.015/0.016.  The MLP's largest errors are single
# samples with an activation above the calibrated range (99.99th percentile), which saturates.
@pytest.mark.parametrize("which, max_rel, p99_rel, mean_rel", [("mlp", 0.4, 0.04, 0.01), ("cnn", 0.2, 0.09, 0.025)])
def test_golden_logits_track_the_float_model(which, max_rel, p99_rel, mean_rel, request, split):
    model = request.getfixturevalue(which)
    net = request.getfixturevalue(f"{which}_net")
    lf = _float_logits(model, split.x_test)
    li = net.predict(split.x_test)
    assert li.dtype == np.int64 and li.shape == (360, 10)
    lr = li * 2.0 ** net.logit_exponent
    np.testing.assert_array_equal(lr, net.logits(split.x_test))
    agree = (lf.argmax(1) == li.argmax(1)).mean()
    assert agree >= 0.97, agree
    scale = np.abs(lf).max()
    err = np.abs(lr - lf)
    assert err.max() <= max_rel * scale, (err.max(), scale)
    assert np.percentile(err, 99) <= p99_rel * scale, (np.percentile(err, 99), scale)
    assert err.mean() <= mean_rel * scale, (err.mean(), scale)
    y = split.y_test.numpy()
    # the integer model's accuracy is within 1 % of the float model's on these short runs
    assert abs((li.argmax(1) == y).mean() - (lf.argmax(1) == y).mean()) <= 0.01


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_every_layer_within_the_derived_bound(which, request, split):
    net = request.getfixturevalue(f"{which}_net")
    for i in range(6):
        for rep in float_reference_check(net, split.x_test[i].numpy()):
            assert rep["acc_max_ratio"] <= 1 + 1e-9, rep
            assert rep["max_ratio"] <= 1 + 1e-9, rep
            # the bound is not vacuous: errors are a visible fraction of it somewhere
    reps = [r for i in range(6) for r in float_reference_check(net, split.x_test[i].numpy())]
    assert max(r["max_ratio"] for r in reps) > 0.05


def test_golden_trace_is_run_network(cnn_net, split):
    x = split.x_test[:3].numpy()
    ref = golden_predict(cnn_net.layers, cnn_net.input_exponent, x)
    for i in range(3):
        tr = golden_trace(cnn_net.layers, cnn_net.input_exponent, x[i])
        np.testing.assert_array_equal(tr[-1].y, ref[i])
    assert golden_predict(cnn_net.layers, cnn_net.input_exponent, np.zeros((0, 1, 8, 8))).shape == (0, 10)
    with pytest.raises(ValueError, match="expects"):
        golden_predict(cnn_net.layers, cnn_net.input_exponent, np.zeros((1, 65)))
    with pytest.raises(ValueError, match="batch"):
        golden_predict(cnn_net.layers, cnn_net.input_exponent, np.zeros(64))


def test_sign_exact_rounding_keeps_signs(cnn, split):
    """Rounding down where a beta_a > 1 layer follows removes the sign flips of tiny negatives."""
    flips = {}
    for exact in (True, False):
        net = lower_network_full(cnn, split.x_train, sign_exact=exact)
        flips[exact] = sum(r["sign_mismatch"] for i in range(4)
                           for r in float_reference_check(net, split.x_test[i].numpy())[:2])
    assert flips[True] < flips[False]


def test_calibration_percentile(cnn, split):
    maxes, shapes = calibrate(cnn, split.x_train[:200])
    assert shapes == [(1, 8, 8), (32, 8, 8), (64, 4, 4), (256,)]
    assert maxes[0] == 1.0
    p, _ = calibrate(cnn, split.x_train[:200], percentile=99.0)
    assert all(a <= b for a, b in zip(p, maxes)) and p[1] < maxes[1]
    net = lower_network_full(cnn, split.x_train[:200], calib_percentile=100)
    assert net.calib_max == maxes
    for bad in (0, 101, True, "max"):
        with pytest.raises(ValueError, match="percentile"):
            calibrate(cnn, split.x_train[:10], percentile=bad)


# ---- max-pool before the BatchNorm affine, with negative scales ------------------------------

def _tiny_pool_bn_model(gamma):
    torch.manual_seed(1)
    conv = HadaConv2d(1, 4, 3, padding=1, beta_w=1, beta_a=1)
    bn = nn.BatchNorm2d(4)
    lin = HadaLinear(4 * 4 * 4, 3, beta_w=1, beta_a=1, bias=True)
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), bn, nn.Flatten(), lin)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        bn.running_mean.copy_(torch.tensor([0.2, 0.3, 0.1, 0.4]))
        bn.running_var.copy_(torch.tensor([0.5, 1.5, 0.8, 2.0]))
    return model.eval()


def test_negative_bn_scale_with_max_pool_tiny_model(split):
    model = _tiny_pool_bn_model([1.0, -1.5, 0.7, -0.4])
    units = parse_units(model)
    assert [(u.bn is not None, u.flatten, u.relu, u.pool) for u in units] == [(False, False, True, 2),
                                                                               (True, True, False, 1)]
    x = split.x_train[:300]
    net = lower_network_full(model, x, weight_format=DeltaFormat(bits=12), act_bits=12)
    m = net.layers[0].requant.multiplier
    assert (m < 0).sum() == 2 and (m > 0).sum() == 2  # the negative BN scales reached the requant
    lf = _float_logits(model, split.x_test[:50])
    lr = net.logits(split.x_test[:50])
    assert np.abs(lr - lf).max() <= 0.01 * np.abs(lf).max()
    # Folding the BN in front of the pool (max-pool of s*x) would be wrong on the negative channels:
    with torch.no_grad():
        wrong = nn.Sequential(model[0], model[1], model[3], model[2], model[4], model[5])(split.x_test[:50]).numpy()
    assert np.abs(wrong - lf).max() > 20 * np.abs(lr - lf).max()
    for i in range(5):
        for rep in float_reference_check(net, split.x_test[i].numpy()):
            assert rep["max_ratio"] <= 1 + 1e-9


def test_negative_bn_scale_in_trained_cnn(cnn, split):
    model = copy.deepcopy(cnn)
    bn = model.stages[2][0]  # BatchNorm after conv 32->64 -> ReLU -> max-pool
    with torch.no_grad():
        bn.weight[::2] *= -1  # half of the channels get a negative scale
    net = lower_network_full(model, split.x_train)
    assert (net.layers[1].requant.multiplier < 0).sum() == 32
    for i in range(4):
        for rep in float_reference_check(net, split.x_test[i].numpy()):
            assert rep["max_ratio"] <= 1 + 1e-9, rep
    # and the golden output of that layer is the affine of the max-pool, not the max-pool of the affine
    tr = golden_trace(net.layers, net.input_exponent, split.x_test[0].numpy())
    o = tr[1].acc  # (8, 8, 64) accumulators before ReLU and pool
    q = net.layers[1].requant
    right = q.scale(np.maximum(o, 0).reshape(4, 2, 4, 2, 64).max(axis=(1, 3)))
    np.testing.assert_array_equal(tr[1].y, right)
    wrong = q.scale(np.maximum(o, 0)).reshape(4, 2, 4, 2, 64).max(axis=(1, 3))
    neg = q.multiplier < 0
    assert (wrong[..., neg] != right[..., neg]).mean() > 0.3
    np.testing.assert_array_equal(wrong[..., ~neg], right[..., ~neg])


def test_bias_without_relu_is_folded(split):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), HadaLinear(64, 16, beta_w=1, beta_a=1, bias=True), nn.BatchNorm1d(16),
                          HadaLinear(16, 10, beta_w=8, beta_a=4, bias=True)).eval()
    with torch.no_grad():
        model[1].bias.uniform_(-1, 1)
        model[2].running_mean.uniform_(-0.5, 0.5)
        model[2].weight.uniform_(-2, 2)
    net = lower_network_full(model, split.x_train)
    assert net.floored == [True, False]
    for i in range(5):
        for rep in float_reference_check(net, split.x_test[i].numpy()):
            assert rep["max_ratio"] <= 1 + 1e-9 and rep["acc_max_ratio"] <= 1 + 1e-9, rep
    lf = _float_logits(model, split.x_test)
    assert (net.predict(split.x_test).argmax(1) == lf.argmax(1)).mean() >= 0.97


# ---- XNOR and the lowering's constraints ----------------------------------------------------

def test_xnor_lowering(split):
    x = split.x_train[:64]
    with pytest.raises(ValueError, match="float-only"):
        lower_network(build_model("digits-cnn", "all", "all").eval(), x)
    layers, _ = lower_network(build_model("digits-cnn", "all", "all", act_all="pixel").eval(), x)
    assert [(l.beta_w, l.beta_a) for l in layers] == [(1, 1), (512, 32), (1024, 64), (1, 1)]
    assert all(l.weight_delta.shape[1] == 1 for l in layers[1:3])  # one scale per filter
    layers, _ = lower_network(build_model("digits-mlp", "all", "all").eval(), x)
    assert [(l.beta_w, l.beta_a) for l in layers] == [(1, 1), (256, 256), (1, 1)]


IMG, VEC = (1, 8, 8), (64,)


@pytest.mark.parametrize("make, shape, match", [
    (lambda: nn.Sequential(nn.BatchNorm1d(64), HadaLinear(64, 10, beta_w=1, beta_a=1)), VEC, "first layer"),
    (lambda: nn.Sequential(HadaLinear(64, 8, beta_w=1, beta_a=1, bias=True), nn.ReLU(),
                           HadaLinear(8, 10, beta_w=1, beta_a=1)), VEC, "bias in front of ReLU"),
    (lambda: nn.Sequential(HadaLinear(64, 10, beta_w=1, beta_a=1), nn.Tanh()), VEC, "Tanh"),
    (lambda: nn.Sequential(HadaConv2d(1, 4, 3, beta_w=1, beta_a=1), nn.ReLU(),
                           HadaConv2d(4, 4, 3, beta_w=4, beta_a=2, act_axis="width")), IMG, "act_axis"),
    (lambda: nn.Sequential(HadaConv2d(1, 4, 3, beta_w=1, beta_a=1), nn.Flatten(), nn.BatchNorm1d(144),
                           HadaLinear(144, 10, beta_w=1, beta_a=1)), IMG, "per feature"),
    (lambda: nn.Sequential(HadaConv2d(1, 4, 3, beta_w=1, beta_a=1), nn.Flatten(),
                           HadaLinear(144, 10, beta_w=4, beta_a=2)), IMG, "CHW order"),
    (lambda: nn.Sequential(HadaLinear(64, 8, beta_w=1, beta_a=1), HadaLinear(8, 10, beta_w=3, beta_a=1)), VEC,
     "power of two"),
    (lambda: nn.Sequential(HadaLinear(64, 8, beta_w=1, beta_a=1), nn.BatchNorm1d(8)), VEC, "ends with"),
    (lambda: nn.Sequential(HadaConv2d(1, 4, 3, beta_w=1, beta_a=1), nn.MaxPool2d(2, stride=1)), IMG,
     "non-overlapping"),
])
def test_unsupported_models_raise_one_line_errors(make, shape, match, split):
    with pytest.raises(ValueError, match=match) as exc:
        lower_network(make().eval(), split.x_train[:16].reshape(16, *shape))
    assert "\n" not in str(exc.value)


def test_weight_bytes_accounting(cnn_net):
    wb = weight_bytes(cnn_net.layers)
    l1 = wb["per_layer"][1]
    # conv 32->64, K = 288: 64*288 sign bits + 64*18 8-bit deltas; 64 multipliers + biases of 32 bits
    assert l1["weights"] == (64 * 288 + 64 * 18 * 8) // 8
    assert l1["requant"] == 64 * 2 * 4
    assert wb["total"] == sum(p["total"] for p in wb["per_layer"])
