"""xHBNN packed kernel: exact agreement with a plain int64 computation and with the golden model.

Every random case uses a NumPy Generator seeded from the case's parameters; the seed is part of
each assertion message so a failure can be replayed.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hadahw.contract import DeltaFormat, Requant, segment_count
from hadahw.golden import QAct, QLayer, accumulate, act_from_int
from hadahw.xhbnn import accumulate_fast, pack_bits, xhbnn_matmul

BETAS = [1, 2, 4, 8, 16, 32, 64, 128]
BETA_PAIRS = [(ba, bw) for ba in BETAS for bw in BETAS if ba <= bw]
KS = [1, 7, 63, 64, 65, 200, 1000]


def plain(a_signs, a_delta, w_signs, w_delta, k, beta_a, beta_w):
    """Independent reference: expand ±delta to every element and take an int64 matmul."""
    a = np.where(a_signs, 1, -1) * np.repeat(np.asarray(a_delta, np.int64), beta_a, axis=1)[:, :k]
    w = np.where(w_signs, 1, -1) * np.repeat(np.asarray(w_delta, np.int64), beta_w, axis=1)[:, :k]
    return a @ w.T


def random_case(seed, k, beta_a, beta_w, *, dmax=255, p=None, n=None):
    rng = np.random.default_rng(seed)
    p = int(rng.integers(1, 9)) if p is None else p
    n = int(rng.integers(1, 9)) if n is None else n
    a_signs = rng.random((p, k)) < 0.5
    w_signs = rng.random((n, k)) < 0.5
    da = rng.integers(0, dmax + 1, (p, segment_count(k, beta_a)))
    dw = rng.integers(0, dmax + 1, (n, segment_count(k, beta_w)))
    # The extremes of the delta range on purpose: a maximal row/column and zeros.
    da[0] = dmax
    dw[:, -1] = dmax
    dw[-1, 0] = 0
    if p > 1:
        da[-1, : max(1, da.shape[1] // 2)] = 0
    return a_signs, da, w_signs, dw


# ------------------------------------------------------------------------------------------
# pack_bits
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 7, 63, 64, 65, 130, 1000])
def test_pack_bits_layout(k):
    seed = [11, k]
    rng = np.random.default_rng(seed)
    signs = rng.random((3, k)) < 0.5
    words = pack_bits(signs)
    assert words.dtype == np.uint64 and words.shape == (3, segment_count(k, 64)), f"seed={seed}"
    for r in range(3):
        for i in range(k):
            bit = (int(words[r, i // 64]) >> (i % 64)) & 1
            assert bit == int(signs[r, i]), f"seed={seed} row={r} k={i}"
        if k % 64:
            assert int(words[r, -1]) >> (k % 64) == 0, f"padding lanes must be zero (seed={seed})"


def test_pack_bits_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        pack_bits(np.zeros(5, bool))
    with pytest.raises(ValueError, match="bool"):
        pack_bits(np.zeros((2, 5), np.int64))


# ------------------------------------------------------------------------------------------
# xhbnn_matmul vs the plain computation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("beta_a,beta_w", BETA_PAIRS)
def test_matmul_matches_plain(beta_a, beta_w, k):
    seed = [beta_a, beta_w, k]
    a_signs, da, w_signs, dw = random_case(seed, k, beta_a, beta_w)
    want = plain(a_signs, da, w_signs, dw, k, beta_a, beta_w)
    a_bits, w_bits = pack_bits(a_signs), pack_bits(w_signs)
    for path in ("auto", "words"):
        got = xhbnn_matmul(a_bits, da, w_bits, dw, k=k, beta_a=beta_a, beta_w=beta_w, path=path)
        assert got.dtype == np.int64 and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=f"seed={seed} path={path}")


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(BETA_PAIRS), st.integers(1, 400), st.integers(1, 6), st.integers(1, 6),
       st.integers(0, 2**32 - 1), st.sampled_from([1, 255, 2047, 65535]))
def test_matmul_matches_plain_property(pair, k, p, n, seed, dmax):
    beta_a, beta_w = pair
    a_signs, da, w_signs, dw = random_case(seed, k, beta_a, beta_w, dmax=dmax, p=p, n=n)
    got = xhbnn_matmul(pack_bits(a_signs), da, pack_bits(w_signs), dw, k=k, beta_a=beta_a, beta_w=beta_w)
    np.testing.assert_array_equal(got, plain(a_signs, da, w_signs, dw, k, beta_a, beta_w),
                                  err_msg=f"seed={seed} beta_a={beta_a} beta_w={beta_w} k={k} dmax={dmax}")


@pytest.mark.parametrize("beta_a,beta_w", [(16, 16), (8, 64), (64, 64), (2, 8)])
def test_wide_deltas_take_the_int64_path_exactly(beta_a, beta_w):
    """16-bit fixed and log2 (up to 2**30) deltas do not fit the SIMD path; the result stays exact."""
    seed = [7, beta_a, beta_w]
    k = 1000
    a_signs, da, w_signs, dw = random_case(seed, k, beta_a, beta_w, dmax=65535)
    dw = DeltaFormat(bits=5, kind="log2").decode(np.random.default_rng(seed).integers(0, 32, dw.shape))
    a_bits, w_bits = pack_bits(a_signs), pack_bits(w_signs)
    with pytest.raises(ValueError, match="not exact"):
        xhbnn_matmul(a_bits, da, w_bits, dw, k=k, beta_a=beta_a, beta_w=beta_w, path="lanes")
    got = xhbnn_matmul(a_bits, da, w_bits, dw, k=k, beta_a=beta_a, beta_w=beta_w)
    np.testing.assert_array_equal(got, plain(a_signs, da, w_signs, dw, k, beta_a, beta_w), err_msg=f"seed={seed}")


@pytest.mark.parametrize("beta", [1, 16, 128])
def test_overflow_boundary_all_equal_signs_max_delta(beta):
    """All signs equal, all deltas 255, K = 4096: every output is exactly +-K*255*255."""
    k, p, n = 4096, 3, 5
    bound = k * 255 * 255
    ones = np.ones((p, k), bool)
    da = np.full((p, segment_count(k, beta)), 255)
    dw = np.full((n, segment_count(k, beta)), 255)
    for w_signs, want in ((np.ones((n, k), bool), bound), (np.zeros((n, k), bool), -bound)):
        for path in ("auto", "words"):
            got = xhbnn_matmul(pack_bits(ones), da, pack_bits(w_signs), dw, k=k, beta_a=beta, beta_w=beta, path=path)
            assert (got == want).all(), (path, want, got.min(), got.max())


@pytest.mark.parametrize("dw_value,path", [(2056, "lanes"), (2057, "words")])
def test_int32_accumulator_boundary(dw_value, path):
    """K*da*dw just below 2**31 still takes the int32 SIMD path; just above it falls back; both exact."""
    k, beta = 4096, 16
    want = k * 255 * dw_value
    assert (want < 2**31) == (path == "lanes")
    ones = np.ones((2, k), bool)
    da = np.full((2, k // beta), 255)
    dw = np.full((3, k // beta), dw_value)
    got = xhbnn_matmul(pack_bits(ones), da, pack_bits(ones[:1].repeat(3, 0)), dw, k=k, beta_a=beta, beta_w=beta)
    assert (got == want).all()
    if path == "lanes":
        forced = xhbnn_matmul(pack_bits(ones), da, pack_bits(ones[:1].repeat(3, 0)), dw, k=k, beta_a=beta,
                              beta_w=beta, path="lanes")
        assert (forced == want).all()
    else:
        with pytest.raises(ValueError, match="not exact"):
            xhbnn_matmul(pack_bits(ones), da, pack_bits(ones[:1].repeat(3, 0)), dw, k=k, beta_a=beta,
                         beta_w=beta, path="lanes")


def test_empty_shapes():
    w = pack_bits(np.ones((3, 10), bool))
    out = xhbnn_matmul(np.zeros((0, 1), np.uint64), np.zeros((0, 1), np.int64), w, np.ones((3, 1), np.int64), k=10,
                       beta_a=16, beta_w=16)
    assert out.shape == (0, 3) and out.dtype == np.int64
    out = xhbnn_matmul(np.zeros((2, 0), np.uint64), np.zeros((2, 0), np.int64), np.zeros((3, 0), np.uint64),
                       np.zeros((3, 0), np.int32), k=0, beta_a=4, beta_w=8)
    np.testing.assert_array_equal(out, np.zeros((2, 3), np.int64))


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta_a=32, beta_w=16), "must not exceed"),
    (dict(beta_a=3, beta_w=16), "power of two"),
    (dict(beta_a=16, beta_w=24), "power of two"),
    (dict(beta_a=16, beta_w=16, path="fast"), "path"),
    (dict(beta_a=16, beta_w=16, k=-1), "non-negative"),
])
def test_bad_arguments_raise(kwargs, match):
    kwargs = {"k": 70, **kwargs}
    k = max(kwargs["k"], 0)
    bits = pack_bits(np.ones((2, k), bool))
    da = np.ones((2, segment_count(k, 16)), np.int64)
    with pytest.raises(ValueError, match=match):
        xhbnn_matmul(bits, da, bits, da, **kwargs)


def test_bad_operands_raise():
    k = 70
    bits = pack_bits(np.ones((2, k), bool))
    da = np.ones((2, segment_count(k, 16)), np.int64)
    call = lambda a, d, w, e: xhbnn_matmul(a, d, w, e, k=k, beta_a=16, beta_w=16)  # noqa: E731
    dirty = bits.copy()
    dirty[0, -1] |= np.uint64(1) << np.uint64(63)
    with pytest.raises(ValueError, match="padding"):
        call(dirty, da, bits, da)
    with pytest.raises(ValueError, match="words per row"):
        call(bits[:, :1], da, bits, da)
    with pytest.raises(ValueError, match="uint64"):
        call(bits.astype(np.int64), da, bits, da)
    with pytest.raises(ValueError, match="shape"):
        call(bits, da[:, :-1], bits, da)
    with pytest.raises(ValueError, match="integer"):
        call(bits, da.astype(float), bits, da)


# ------------------------------------------------------------------------------------------
# accumulate_fast vs the golden model
# ------------------------------------------------------------------------------------------
def make_layer(rng, *, kind, n, beta_a, beta_w, fmt, k=None, hwc=None, kernel=1, stride=1, padding=0):
    if kind == "conv2d":
        k = kernel * kernel * hwc[2]
    geometry = dict(kernel=kernel, stride=stride, padding=padding) if kind == "conv2d" else {}
    return QLayer(kind=kind, weight_signs=rng.random((n, k)) < 0.5,
                  weight_delta=rng.integers(0, fmt.max_code + 1, (n, segment_count(k, beta_w))),
                  beta_w=beta_w, beta_a=beta_a, in_shape=(k,) if kind == "linear" else hwc,
                  requant=Requant.identity(n), weight_format=fmt, **geometry)


FORMATS = [DeltaFormat(), DeltaFormat(bits=4, kind="log2"), DeltaFormat(bits=12)]


@pytest.mark.parametrize("fmt", FORMATS, ids=["fixed8", "log2-4", "fixed12"])
@pytest.mark.parametrize("beta_a,beta_w,k", [(1, 1, 37), (2, 16, 100), (4, 4, 9), (8, 32, 300), (16, 16, 1000),
                                             (16, 64, 200), (32, 128, 65), (64, 64, 64), (128, 128, 500)])
def test_accumulate_fast_linear_matches_golden(beta_a, beta_w, k, fmt):
    seed = [beta_a, beta_w, k, fmt.bits]
    rng = np.random.default_rng(seed)
    layer = make_layer(rng, kind="linear", n=11, beta_a=beta_a, beta_w=beta_w, fmt=fmt, k=k)
    act = act_from_int(rng.integers(-255, 256, k), beta_a)
    got = accumulate_fast(layer, act)
    want = accumulate(layer, act)
    assert got.shape == want.shape == (11,) and got.dtype == np.int64
    np.testing.assert_array_equal(got, want, err_msg=f"seed={seed}")


@pytest.mark.parametrize("fmt", FORMATS[:2], ids=["fixed8", "log2-4"])
@pytest.mark.parametrize("hwc,beta_a,beta_w,kernel,stride,padding", [
    ((6, 7, 8), 4, 16, 3, 1, 1),
    ((6, 7, 8), 8, 8, 3, 2, 0),
    ((9, 9, 16), 16, 64, 3, 2, 1),
    ((5, 6, 32), 32, 32, 1, 1, 0),
    ((8, 8, 4), 2, 4, 5, 2, 2),
    ((7, 5, 64), 64, 128, 3, 1, 1),
])
def test_accumulate_fast_conv_matches_golden(hwc, beta_a, beta_w, kernel, stride, padding, fmt):
    seed = [*hwc, beta_a, beta_w, kernel, stride, padding, fmt.bits]
    rng = np.random.default_rng(seed)
    layer = make_layer(rng, kind="conv2d", n=6, beta_a=beta_a, beta_w=beta_w, fmt=fmt, hwc=hwc, kernel=kernel,
                       stride=stride, padding=padding)
    act = act_from_int(rng.integers(-255, 256, hwc), beta_a)
    got = accumulate_fast(layer, act)
    want = accumulate(layer, act)
    assert got.shape == want.shape == (*layer.conv_out_hw, 6)
    np.testing.assert_array_equal(got, want, err_msg=f"seed={seed}")


def test_accumulate_fast_flattens_a_map_for_linear():
    seed = [99]
    rng = np.random.default_rng(seed)
    layer = make_layer(rng, kind="linear", n=4, beta_a=8, beta_w=16, fmt=DeltaFormat(), k=3 * 3 * 16)
    act = act_from_int(rng.integers(-255, 256, (3, 3, 16)), 8)
    np.testing.assert_array_equal(accumulate_fast(layer, act), accumulate(layer, act), err_msg=f"seed={seed}")


def test_accumulate_fast_reaches_the_layer_bound():
    k, beta = 4096, 16
    fmt = DeltaFormat()
    layer = QLayer(kind="linear", weight_signs=np.ones((2, k), bool), weight_delta=np.full((2, k // beta), 255),
                   beta_w=beta, beta_a=beta, in_shape=(k,), requant=Requant.identity(2), weight_format=fmt)
    act = QAct(signs=np.ones(k, bool), delta=np.full(k // beta, 255), beta_a=beta)
    got = accumulate_fast(layer, act)
    assert (got == layer.acc_bound).all() and layer.acc_bound == k * 255 * 255
    np.testing.assert_array_equal(got, accumulate(layer, act))


def test_accumulate_fast_rejects_mismatched_activation():
    rng = np.random.default_rng(5)
    layer = make_layer(rng, kind="linear", n=3, beta_a=4, beta_w=8, fmt=DeltaFormat(), k=16)
    with pytest.raises(ValueError, match="beta_a"):
        accumulate_fast(layer, act_from_int(rng.integers(-9, 9, 16), 2))
