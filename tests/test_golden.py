"""Integer golden model: internal consistency, bounds, errors, and agreement with the float HadaNet."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from hadahw import lower
from hadahw.contract import DeltaFormat, Requant, binarize_int, round_shift, segment_lengths
from hadahw.golden import QAct, QLayer, accumulate, act_from_int, im2col, run_layer, run_network
from hadahw.quant import hada_binarize, hada_binarize_weight

BETAS = [2, 4, 8, 16, 32, 64]


def random_layer(rng, *, kind="linear", n=5, k=37, beta_w=8, beta_a=2, fmt=DeltaFormat(), hwc=(5, 5, 4),
                 kernel=3, stride=1, padding=1, pool=1, out_beta_a=None, act_bits=8):
    if kind == "conv2d":
        k = kernel * kernel * hwc[2]
    nseg = -(-k // beta_w) if beta_w > 0 else 1
    rq = Requant(multiplier=rng.integers(-300, 300, n), bias=rng.integers(-5000, 5000, n), shift=int(rng.integers(0, 16)),
                 relu=bool(rng.integers(2)), saturate_bits=8 if out_beta_a else None)
    return QLayer(kind=kind, weight_signs=rng.random((n, k)) < 0.5, weight_delta=rng.integers(0, fmt.max_code + 1, (n, nseg)),
                  beta_w=beta_w, beta_a=beta_a, in_shape=(k,) if kind == "linear" else hwc, requant=rq, weight_format=fmt,
                  out_beta_a=out_beta_a, act_bits=act_bits,
                  **(dict(kernel=kernel, stride=stride, padding=padding, pool=pool) if kind == "conv2d" else {}))


def segment_formula(layer, signs, delta_elem):
    """Eqn (7) with the 2p - n correction, written as loops over segments (independent of accumulate)."""
    dw = layer.weight_format.decode(layer.weight_delta)
    k = layer.reduction
    out = np.zeros((signs.shape[0], layer.out_features), np.int64)
    for p in range(signs.shape[0]):
        for n in range(layer.out_features):
            total = 0
            for i in range(dw.shape[1]):
                inner = 0
                for j in range(i * layer.beta_w, min((i + 1) * layer.beta_w, k), layer.beta_a):
                    seg = slice(j, min(j + layer.beta_a, k))
                    n_j = seg.stop - seg.start
                    assert len(set(delta_elem[p, seg])) == 1, "activation segment not aligned"
                    pc = int(np.sum(layer.weight_signs[n, seg] == signs[p, seg]))
                    inner += int(delta_elem[p, j]) * (2 * pc - n_j)
                total += int(dw[n, i]) * inner
            out[p, n] = total
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta_w,beta_a", [(bw, ba) for bw in BETAS for ba in BETAS if ba <= bw][::3])
def test_linear_matches_segment_formula(seed, beta_w, beta_a):
    rng = np.random.default_rng([seed, beta_w, beta_a])
    k = int(rng.integers(1, 3 * beta_w + 9))
    layer = random_layer(rng, k=k, beta_w=beta_w, beta_a=beta_a,
                         fmt=DeltaFormat(bits=4, kind="log2") if seed % 2 else DeltaFormat())
    act = act_from_int(rng.integers(-255, 256, k), beta_a)
    got = accumulate(layer, act)
    want = segment_formula(layer, act.signs[None], act.delta_per_element()[None])[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 0, 3), (1, 0, 1), (2, 2, 5)])
def test_conv_matches_segment_formula_and_direct_conv(seed, stride, padding, kernel):
    rng = np.random.default_rng([seed, stride, padding, kernel])
    hwc = (6, 7, 8)
    layer = random_layer(rng, kind="conv2d", n=3, beta_w=16, beta_a=4, hwc=hwc, kernel=kernel, stride=stride, padding=padding)
    act = act_from_int(rng.integers(-255, 256, hwc), 4)
    o = accumulate(layer, act)
    s, d = im2col(act, layer)
    np.testing.assert_array_equal(o.reshape(-1, 3), segment_formula(layer, s, d))
    # Independent check through torch's conv2d on the ±delta values (exact in float64 at these sizes).
    x = torch.tensor(act.values().transpose(2, 0, 1)[None], dtype=torch.float64)
    w = torch.tensor(layer.weight_values().reshape(3, kernel, kernel, hwc[2]).transpose(0, 3, 1, 2), dtype=torch.float64)
    ref = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(o, ref.astype(np.int64))


@pytest.mark.parametrize("fmt", [DeltaFormat(), DeltaFormat(bits=4, kind="log2"), DeltaFormat(bits=12)])
@pytest.mark.parametrize("agree", [True, False])
def test_accumulator_bound_is_reached_and_fits(fmt, agree):
    k = 4096 * 9
    rng = np.random.default_rng(1)
    signs = rng.random(k) < 0.5
    layer = QLayer(kind="linear", weight_signs=(signs if agree else ~signs)[None], weight_delta=np.full((1, k // 64), fmt.max_code),
                   beta_w=64, beta_a=64, in_shape=(k,), requant=Requant.identity(1), weight_format=fmt)
    act = QAct(signs=signs, delta=np.full(k // 64, 255), beta_a=64)
    o = int(accumulate(layer, act)[0])
    bound = k * fmt.max_value * 255
    assert o == (bound if agree else -bound)
    assert -(1 << (layer.acc_bits - 1)) <= o < (1 << (layer.acc_bits - 1))  # fits the derived width
    assert not -(1 << (layer.acc_bits - 2)) <= o < (1 << (layer.acc_bits - 2))  # and one bit fewer would not


def test_binarizer_rule_and_sign_of_zero():
    y = np.array([0, -3, 4, -5, 6, 0, 0])
    signs, delta = binarize_int(y, 2)
    assert signs.tolist() == [True, False, True, False, True, True, True]  # sign(0) = +1
    # means: (0+3)/2=1.5 -> 2 (half up); (4+5)/2=4.5 -> 5; (6+0)/2 = 3; 0/1 = 0
    assert delta.tolist() == [2, 5, 3, 0]
    np.testing.assert_array_equal(segment_lengths(7, 2), [2, 2, 2, 1])


def test_round_shift_half_up():
    assert round_shift(np.array([5, 6, 7, -5, -6, -7, 2, -2]), 2).tolist() == [1, 2, 2, -1, -1, -2, 1, 0]


def test_log2_format_codes():
    fmt = DeltaFormat(bits=3, kind="log2")
    assert fmt.decode([0, 1, 2, 7]).tolist() == [0, 1, 2, 64]
    assert fmt.quantize([0.0, 1.0, 2.9, 3.0, 1000.0], 0).tolist() == [0, 1, 3, 3, 7]


def test_network_runs_layer_after_layer():
    rng = np.random.default_rng(7)
    l1 = random_layer(rng, kind="conv2d", n=8, hwc=(6, 6, 4), beta_w=8, beta_a=2, pool=2, out_beta_a=4)
    l2 = random_layer(rng, kind="linear", n=10, k=3 * 3 * 8, beta_w=16, beta_a=4)
    x = act_from_int(rng.integers(-255, 256, (6, 6, 4)), 2)
    out = run_network([l1, l2], x)
    mid = run_layer(l1, x)
    assert mid.shape == (3, 3, 8) and mid.delta.shape == (3, 3, 2)
    np.testing.assert_array_equal(out, run_layer(l2, mid))
    with pytest.raises(ValueError, match="must be final"):
        run_network([l1], x)


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta_w=12), "beta_w must be a power of two"),
    (dict(beta_w=4, beta_a=8), "beta_a must not exceed beta_w"),
    (dict(beta_w=0), "beta_w must be a positive integer"),
    (dict(kind="conv2d", hwc=(5, 5, 6), beta_a=4), r"in_channels \(6\) must be a multiple of beta_a \(4\)"),
    (dict(kind="conv2d", hwc=(6, 6, 4), pool=4), "pool 4 must divide"),
])
def test_bad_layers_raise_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as exc:
        random_layer(np.random.default_rng(0), **kwargs)
    assert "\n" not in str(exc.value)


def test_mismatched_activation_is_rejected():
    rng = np.random.default_rng(0)
    layer = random_layer(rng, k=16, beta_w=8, beta_a=2)
    with pytest.raises(ValueError, match="beta_a=4 does not match"):
        accumulate(layer, act_from_int(np.zeros(16, int), 4))
    with pytest.raises(ValueError, match="shape"):
        accumulate(layer, act_from_int(np.zeros(18, int), 2))
    with pytest.raises(ValueError, match=r"\[-255, 255\]"):
        act_from_int(np.array([256]), 2)


# --- integer model vs float HadaNet ---------------------------------------------------------------
@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(1, 6), k=st.integers(1, 300), bw=st.sampled_from(BETAS), ba=st.sampled_from(BETAS),
       seed=st.integers(0, 2**32 - 1), log2=st.booleans())
def test_integer_model_tracks_float_hadanet_within_derived_bound(n, k, bw, ba, seed, log2):
    ba = min(ba, bw)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)) * 0.1
    x = rng.standard_normal(k) * 3
    fmt = DeltaFormat(bits=8)
    signs, codes, ew = lower.quantize_weights(w, bw, fmt)
    layer = QLayer(kind="linear", weight_signs=signs, weight_delta=codes, weight_exponent=ew, weight_format=fmt,
                   beta_w=bw, beta_a=ba, in_shape=(k,), requant=Requant.identity(n))
    act = lower.quantize_input(x, ba)
    o_int = accumulate(layer, act) * 2.0 ** (ew + act.exponent)
    wt, xt = torch.tensor(w), torch.tensor(x)
    o_float = (hada_binarize(wt, bw, dim=-1) @ hada_binarize(xt, ba, dim=-1)).numpy()
    bound = lower.linear_error_bound(w, x, layer, act)
    assert np.all(np.abs(o_float - o_int) <= bound * (1 + 1e-9) + 1e-12)
    # The bound is meaningful: far below the output scale (a wrong segment or sign would exceed it).
    assert np.all(bound < 0.1 * np.abs(w).sum(axis=1) * np.abs(x).mean() + 1e-9)


def test_conv_weight_rows_use_the_hardware_order():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 8, 3, 3))
    rows = lower.conv_weight_to_rows(w)
    for bw in (4, 16, 72):
        ref = hada_binarize_weight(torch.tensor(w), bw, order="hwc").numpy()
        signs, codes, e = lower.quantize_weights(rows, bw, DeltaFormat(bits=16))
        delta = lower.segment_means(rows, bw)
        np.testing.assert_allclose(lower.conv_weight_to_rows(ref),
                                   np.where(signs, 1, -1) * np.repeat(delta, bw, axis=1)[:, : rows.shape[1]])
