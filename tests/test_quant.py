"""Tests for the float HadaNet quantization (hadahw.quant)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hadahw.quant import (
    HadaBinarizeFn,
    HadaConv2d,
    HadaLinear,
    hada_binarize,
    hada_binarize_weight,
    hada_conv_block,
    hada_linear_block,
    hada_segments,
    sign_ste,
)

BAD_BETAS = [0, -1, 2.5, "x", True]


def ref_binarize(x, beta, dim=-1, zero="positive"):
    """Plain NumPy loop over segments: the obvious reading of Eqns (1)-(4)."""
    a = np.moveaxis(np.asarray(x, dtype=np.float64), dim, -1)
    n = a.shape[-1]
    b = n if beta == "all" else beta
    s = np.where(a >= 0, 1.0, -1.0) if zero == "positive" else np.sign(a)
    out = np.empty_like(a)
    for start in range(0, n, b):
        seg = a[..., start:start + b]
        out[..., start:start + b] = s[..., start:start + b] * np.abs(seg).mean(-1, keepdims=True)
    return np.moveaxis(out, -1, dim)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ste_sign(x):
    c = x.clamp(-1, 1)
    return c + (torch.sign(x) - c).detach()


def surrogate_delta(x, beta):
    """delta(x) expanded to x's shape along the last axis, by explicit slicing (differentiable)."""
    parts = []
    for start in range(0, x.shape[-1], beta):
        seg = x[..., start:start + beta]
        parts.append(seg.abs().mean(-1, keepdim=True).expand_as(seg))
    return torch.cat(parts, -1)


# --- forward ---------------------------------------------------------------------------------------

def test_beta_one_is_identity_bitwise():
    x = torch.randn(3, 17, generator=gen(), dtype=torch.float32)
    x[0, :3] = torch.tensor([0.0, -0.0, 1e-40])
    y = hada_binarize(x, 1)
    assert torch.equal(y.view(torch.int32), x.view(torch.int32))
    assert torch.equal(hada_binarize_weight(x, 1).view(torch.int32), x.view(torch.int32))


@pytest.mark.parametrize("beta", [16, 17, 1000, "all"])
def test_large_beta_and_all_are_xnor(beta):
    x = torch.randn(4, 16, generator=gen(1), dtype=torch.float64)
    want = x.abs().mean(-1, keepdim=True) * torch.where(x >= 0, 1.0, -1.0)
    torch.testing.assert_close(hada_binarize(x, beta), want, rtol=1e-15, atol=0)


def test_short_final_segment_uses_own_length():
    x = torch.randn(2, 10, generator=gen(2), dtype=torch.float64)
    y = hada_binarize(x, 4)
    want = torch.empty_like(x)
    for r in range(2):
        for start in (0, 4, 8):
            seg = x[r, start:start + 4]
            want[r, start:start + 4] = torch.sign(seg) * seg.abs().sum() / len(seg)
    torch.testing.assert_close(y, want, rtol=1e-15, atol=0)
    signs, delta = hada_segments(x, 4)
    assert delta.shape == (2, 3)
    torch.testing.assert_close(delta[:, 2], x[:, 8:].abs().mean(-1), rtol=1e-15, atol=0)
    assert set(signs.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("beta", [2, 3, "all"])
def test_dim_argument(dim, beta):
    x = torch.randn(5, 6, 7, generator=gen(3), dtype=torch.float64)
    y = hada_binarize(x, beta, dim)
    np.testing.assert_allclose(y.numpy(), ref_binarize(x.numpy(), beta, dim), rtol=1e-14)
    signs, delta = hada_segments(x, beta, dim)
    length = x.shape[dim]
    nseg = 1 if beta == "all" else math.ceil(length / beta)
    expected = list(x.shape)
    expected[dim] = nseg
    assert tuple(delta.shape) == tuple(expected) and signs.shape == x.shape


@settings(derandomize=True, max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       beta=st.one_of(st.integers(1, 12), st.just("all")),
       data=st.data())
def test_matches_reference_loop(shape, beta, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    zero = data.draw(st.sampled_from(["positive", "keep"]))
    seed = data.draw(st.integers(0, 2**31 - 1))
    x = torch.randn(*shape, generator=gen(seed), dtype=torch.float64)
    x[x.abs() < 0.3] = 0.0  # exact zeros exercise the sign convention
    y = hada_binarize(x, beta, dim, zero=zero)
    if beta == 1:
        assert y is x
    else:
        np.testing.assert_allclose(y.numpy(), ref_binarize(x.numpy(), beta, dim, zero), rtol=1e-14)


def test_zero_convention():
    x = torch.tensor([0.0, 2.0, -0.0, -4.0, 0.0, 0.0])
    pos = hada_binarize(x, 2, zero="positive")
    keep = hada_binarize(x, 2, zero="keep")
    assert pos.tolist() == [1.0, 1.0, 2.0, -2.0, 0.0, 0.0]
    assert keep.tolist() == [0.0, 1.0, 0.0, -2.0, 0.0, 0.0]
    s_pos, _ = hada_segments(x, 2, zero="positive")
    s_keep, _ = hada_segments(x, 2, zero="keep")
    assert s_pos.tolist() == [1, 1, 1, -1, 1, 1]
    assert s_keep.tolist() == [0, 1, 0, -1, 0, 0]
    assert sign_ste(x).tolist() == [1, 1, 1, -1, 1, 1]
    assert sign_ste(x, zero="keep").tolist() == [0, 1, 0, -1, 0, 0]
    with pytest.raises(ValueError, match="zero"):
        hada_binarize(x, 2, zero="negative")


def test_fig3_angle_property():
    x = torch.randn(2**14, generator=gen(4), dtype=torch.float64)
    angles = []
    for k in range(11):
        y = hada_binarize(x, 2**k)
        cos = (x @ y / (x.norm() * y.norm())).clamp(-1, 1)
        angles.append(math.degrees(math.acos(cos.item())))
    assert angles[0] < 1e-5
    assert all(b >= a - 1e-9 for a, b in zip(angles, angles[1:])), angles
    xnor = math.degrees(math.acos(math.sqrt(2 / math.pi)))  # ~37.0 degrees
    assert abs(angles[-1] - xnor) < 1.5, angles


# --- gradients -------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [2, 3, 4, "all"])
def test_gradcheck_away_from_kinks(beta):
    g = gen(5)
    mag = 1.2 + torch.rand(3, 10, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(3, 10, generator=g) < 0.5, -1.0, 1.0).double()
    x = (mag * sign).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: hada_binarize(t, beta, -1), (x,))
    assert torch.autograd.gradcheck(lambda t: hada_binarize(t, beta, 0), (x,))


@pytest.mark.parametrize("beta,length", [(2, 8), (3, 10), (4, 10), (10, 10)])
def test_backward_matches_ste_surrogate(beta, length):
    g = gen(6)
    x0 = 1.5 * torch.randn(4, length, generator=g, dtype=torch.float64)
    assert (x0.abs() <= 1).any() and (x0.abs() > 1).any()
    up = torch.randn(4, length, generator=g, dtype=torch.float64)

    x = x0.clone().requires_grad_()
    y = HadaBinarizeFn.apply(x, beta, "positive")
    y.backward(up)

    xs = x0.clone().requires_grad_()
    ys = surrogate_delta(xs, beta) * ste_sign(xs)
    ys.backward(up)

    torch.testing.assert_close(y.detach(), ys.detach(), rtol=1e-14, atol=0)
    torch.testing.assert_close(x.grad, xs.grad, rtol=1e-12, atol=1e-14)

    # The public function routes through the same Function.
    xp = x0.clone().requires_grad_()
    hada_binarize(xp, beta).backward(up)
    torch.testing.assert_close(xp.grad, xs.grad, rtol=1e-12, atol=1e-14)


def test_eqn6_formula_by_hand():
    x = torch.tensor([0.5, -2.0, 0.25, 3.0, -0.75], dtype=torch.float64, requires_grad=True)
    up = torch.tensor([1.0, 2.0, -1.0, 0.5, 4.0], dtype=torch.float64)
    hada_binarize(x, 2).backward(up)
    xd = x.detach()
    s = torch.sign(xd)
    want = torch.empty(5, dtype=torch.float64)
    for lo, hi in ((0, 2), (2, 4), (4, 5)):
        n = hi - lo
        delta = xd[lo:hi].abs().mean()
        for i in range(lo, hi):
            want[i] = s[i] / n * (up[lo:hi] * s[lo:hi]).sum() + delta * up[i] * float(abs(xd[i]) <= 1)
    torch.testing.assert_close(x.grad, want, rtol=1e-15, atol=0)


def test_sign_ste_gradient():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    up = torch.arange(1.0, 8.0, dtype=torch.float64)
    y = sign_ste(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    y.backward(up)
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 6, 0]
    xs = x.detach().clone().requires_grad_()
    ste_sign(xs).backward(up)
    assert torch.equal(x.grad, xs.grad)


def test_no_grad_forward_equals_grad_forward():
    x = torch.randn(3, 11, generator=gen(7))
    with torch.no_grad():
        a = hada_binarize(x.clone().requires_grad_(), 4)
    b = hada_binarize(x.clone().requires_grad_(), 4)
    assert b.requires_grad and not a.requires_grad
    assert torch.equal(a, b.detach())


def test_beta_one_gradient_is_identity():
    x = torch.randn(5, generator=gen(8), requires_grad=True)
    up = torch.randn(5, generator=gen(9))
    hada_binarize(x, 1).backward(up)
    assert torch.equal(x.grad, up)


# --- weights ---------------------------------------------------------------------------------------

def test_weight_orders():
    w = torch.randn(3, 4, 3, 2, generator=gen(10), dtype=torch.float64)  # (N, C, kh, kw)
    hwc = hada_binarize_weight(w, 4, order="hwc")
    chw = hada_binarize_weight(w, 4, order="chw")
    assert hwc.shape == chw.shape == w.shape
    rows = w.permute(0, 2, 3, 1).reshape(3, -1)
    want_hwc = torch.from_numpy(ref_binarize(rows.numpy(), 4)).reshape(3, 3, 2, 4).permute(0, 3, 1, 2)
    want_chw = torch.from_numpy(ref_binarize(w.reshape(3, -1).numpy(), 4)).reshape(w.shape)
    torch.testing.assert_close(hwc, want_hwc, rtol=1e-14, atol=0)
    torch.testing.assert_close(chw, want_chw, rtol=1e-14, atol=0)
    assert not torch.allclose(hwc, chw)
    # "all" is one scale per filter regardless of order.
    torch.testing.assert_close(hada_binarize_weight(w, "all", order="hwc"),
                               hada_binarize_weight(w, "all", order="chw"), rtol=1e-14, atol=0)


def test_weight_2d_order_irrelevant_and_validation():
    w = torch.randn(5, 9, generator=gen(11), dtype=torch.float64)
    a = hada_binarize_weight(w, 4, order="hwc")
    assert torch.equal(a, hada_binarize_weight(w, 4, order="chw"))
    np.testing.assert_allclose(a.numpy(), ref_binarize(w.numpy(), 4), rtol=1e-14)
    with pytest.raises(ValueError, match="order"):
        hada_binarize_weight(w, 4, order="whc")
    with pytest.raises(ValueError, match="weight"):
        hada_binarize_weight(torch.randn(4), 2)


def test_weight_gradient_flows_in_original_layout():
    w = torch.randn(2, 3, 2, 2, generator=gen(12), dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 3, 2, 2, generator=gen(13), dtype=torch.float64)
    hada_binarize_weight(w, 4).backward(up)
    xs = w.detach().permute(0, 2, 3, 1).reshape(2, -1).clone().requires_grad_()
    (surrogate_delta(xs, 4) * ste_sign(xs)).backward(up.permute(0, 2, 3, 1).reshape(2, -1))
    torch.testing.assert_close(w.grad, xs.grad.reshape(2, 2, 2, 3).permute(0, 3, 1, 2), rtol=1e-12, atol=1e-14)


# --- modules ---------------------------------------------------------------------------------------

def test_linear_forward_and_manual():
    torch.manual_seed(0)
    m = HadaLinear(12, 5, beta_w=4, beta_a=3, bias=True)
    x = torch.randn(7, 12, generator=gen(14))
    y = m(x)
    assert y.shape == (7, 5)
    want = F.linear(hada_binarize(x, 3), hada_binarize(m.weight, 4), m.bias)
    torch.testing.assert_close(y, want)
    y.sum().backward()
    assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    assert "beta_w=4" in repr(m) and "beta_a=3" in repr(m)


def test_linear_beta_one_is_plain_linear():
    torch.manual_seed(0)
    m = HadaLinear(6, 3, beta_w=1, beta_a=1, bias=True)
    ref = nn.Linear(6, 3)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(4, 6, generator=gen(15))
    assert torch.equal(m(x), ref(x))


def test_linear_all_is_xnor():
    torch.manual_seed(0)
    m = HadaLinear(8, 3, beta_w="all", beta_a="all")
    x = torch.randn(4, 8, generator=gen(16), dtype=torch.float32)
    sgn = lambda t: torch.where(t >= 0, 1.0, -1.0)
    a = x.abs().mean(-1, keepdim=True) * sgn(x)
    w = m.weight.abs().mean(-1, keepdim=True) * sgn(m.weight)
    torch.testing.assert_close(m(x), a @ w.T)


@pytest.mark.parametrize("beta_a", [1, 2, 4, "all"])
def test_conv_channel_axis_matches_manual(beta_a):
    torch.manual_seed(0)
    m = HadaConv2d(4, 6, 3, stride=1, padding=1, beta_w=8, beta_a=beta_a)
    x = torch.randn(2, 4, 5, 5, generator=gen(17), dtype=torch.float32)
    y = m(x)
    assert y.shape == (2, 6, 5, 5)
    if beta_a == "all":
        a = x.abs().mean((1, 2, 3), keepdim=True) * torch.where(x >= 0, 1.0, -1.0)
    else:
        a = torch.from_numpy(ref_binarize(x.numpy(), beta_a, dim=1)).float()
    wr = m.weight.detach().permute(0, 2, 3, 1).reshape(6, -1)
    w = torch.from_numpy(ref_binarize(wr.numpy(), 8)).float().reshape(6, 3, 3, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, F.conv2d(a, w, padding=1), rtol=1e-5, atol=1e-5)


def test_conv_width_axis_and_shapes():
    torch.manual_seed(0)
    m = HadaConv2d(3, 8, (3, 3), stride=2, padding=1, beta_w=4, beta_a=4, act_axis="width", bias=True)
    x = torch.randn(2, 3, 9, 10, generator=gen(18))
    y = m(x)
    assert y.shape == (2, 8, 5, 5)
    a = torch.from_numpy(ref_binarize(x.numpy(), 4, dim=3)).float()
    want = F.conv2d(a, hada_binarize_weight(m.weight, 4), m.bias, stride=2, padding=1)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    assert m(x[0]).shape == (8, 5, 5)  # unbatched CHW
    y.sum().backward()
    assert m.weight.grad.abs().sum() > 0
    r = repr(m)
    assert "beta_w=4" in r and "beta_a=4" in r and "act_axis='width'" in r


def test_conv_beta_one_is_plain_conv():
    torch.manual_seed(0)
    m = HadaConv2d(3, 4, 3, padding=1, beta_w=1, beta_a=1)
    ref = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 6, 6, generator=gen(19))
    assert torch.equal(m(x), ref(x))


@pytest.mark.parametrize("bad", BAD_BETAS)
@pytest.mark.parametrize("which", ["beta_w", "beta_a"])
def test_module_beta_validation(bad, which):
    kw = {"beta_w": 2, "beta_a": 2, which: bad}
    for make in (lambda: HadaLinear(8, 4, **kw), lambda: HadaConv2d(8, 4, 3, **kw)):
        with pytest.raises(ValueError, match=which) as e:
            make()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", BAD_BETAS)
def test_function_beta_validation(bad):
    x = torch.randn(8)
    with pytest.raises(ValueError, match="beta"):
        hada_binarize(x, bad)
    with pytest.raises(ValueError, match="beta"):
        hada_segments(x, bad)
    with pytest.raises(ValueError, match="beta_w"):
        hada_binarize_weight(x.reshape(2, 4), bad)


def test_conv_channel_divisibility():
    with pytest.raises(ValueError, match="beta_a"):
        HadaConv2d(6, 4, 3, beta_w=4, beta_a=4)
    with pytest.raises(ValueError, match="beta_a"):
        HadaConv2d(3, 4, 3, beta_w=4, beta_a=4)
    HadaConv2d(6, 4, 3, beta_w=4, beta_a=4, act_axis="width")  # paper layout: no constraint
    HadaConv2d(6, 4, 3, beta_w=4, beta_a="all")
    HadaConv2d(6, 4, 3, beta_w=4, beta_a=3)
    with pytest.raises(ValueError, match="act_axis"):
        HadaConv2d(8, 4, 3, beta_w=4, beta_a=4, act_axis="height")


# --- blocks ----------------------------------------------------------------------------------------

def test_blocks_order_and_shapes():
    torch.manual_seed(0)
    blk = hada_conv_block(4, 8, 3, beta_w=8, beta_a=2, padding=1, pool=2)
    assert [type(m) for m in blk] == [nn.BatchNorm2d, HadaConv2d, nn.ReLU, nn.MaxPool2d]
    assert blk(torch.randn(2, 4, 8, 8, generator=gen(20))).shape == (2, 8, 4, 4)
    assert [type(m) for m in hada_conv_block(3, 4, 3, beta_w=1, beta_a=1)] == [nn.BatchNorm2d, HadaConv2d, nn.ReLU]

    lin = hada_linear_block(16, 10, beta_w=1, beta_a=1, activation=None)
    assert [type(m) for m in lin] == [nn.BatchNorm1d, HadaLinear]
    mid = hada_linear_block(16, 10, beta_w=4, beta_a=2)
    assert [type(m) for m in mid] == [nn.BatchNorm1d, HadaLinear, nn.ReLU]
    out = mid(torch.randn(3, 16, generator=gen(21)))
    assert out.shape == (3, 10) and (out >= 0).all()

    with pytest.raises(ValueError, match="activation"):
        hada_linear_block(4, 4, beta_w=1, beta_a=1, activation="tanh")
    with pytest.raises(ValueError, match="pool"):
        hada_conv_block(4, 4, 3, beta_w=1, beta_a=1, pool=0)
