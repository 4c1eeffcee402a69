"""xHBNN: the packed xnor-popcount kernel of HadaNets (arXiv:1905.10759, Sec. 4.2, Eqn 7), on the CPU.

The kernel computes, for every activation row ``p`` and weight row ``n``::

    O[p, n] = sum_i dw[n, i] * sum_{j in i} da[p, j] * (2*popcount(xnor(w[n, j], a[p, j]) & valid_j) - n_j)

where ``j`` runs over the ``beta_a`` segments and ``i`` over the ``beta_w`` segments of the
reduction axis ``K`` (``beta_a <= beta_w``, both powers of two, so every weight segment holds
whole activation segments; the last segment of either kind may be short).  This is exactly the
integer the golden model's plain path (:func:`hadahw.golden.accumulate`) produces; the numeric
contract is in :mod:`hadahw.contract`.

How it is computed
------------------
Signs are bit-packed into ``uint64`` words as the contract says (element ``k`` at bit ``k % 64``
of word ``k // 64``, LSB first, lanes past ``K`` zero).  Because those lanes are zero in *both*
operands, ``xor`` never counts them, so the kernel uses the mismatch count
``d_j = popcount(a_j ^ w_j)`` and ``2*popcount(xnor & valid) - n_j = n_j - 2*d_j``; it uses
``beta_a`` for ``n_j`` everywhere and subtracts ``da*dw*(beta_a - n_last)`` once for a short last
segment.  Everything is exact integer arithmetic; two code paths:

* **SIMD lane path** (used whenever int16/int32 provably cannot overflow for the actual maximum
  deltas, and a weight segment spans at most 16 lanes).  Sign bits are regrouped into uint16
  lanes of ``bl = min(beta_a, 16)`` bits (for ``beta_a = 16`` a free reinterpretation of the
  little-endian words; a 32- or 64-bit segment becomes 16-bit sub-segments sharing its delta,
  since ``p_j`` is additive over the parts), and the ``R = beta_w / bl`` lanes of each weight
  segment are stored as ``R`` contiguous planes.  Per lane: ``xor``, ``popcount``,
  ``da*(bl - 2d)`` in int16; the ``R`` terms of a weight segment are summed in int16 and
  multiplied by ``dw`` once (the factorization), accumulated in int32.  ``R`` (1..16) is a
  compile-time constant (one compiled tile kernel per ``R``), so LLVM unrolls it and vectorizes
  across weight segments: ``vpxor / vpshufb`` (nibble-table popcount) ``/ vpmullw / vpmaddwd``.
* **Generic word path** (any ``beta_a <= beta_w`` and any delta range whose bound fits int64;
  scalar int64).  For ``beta_a < 64`` one SWAR popcount per word yields all ``64/beta_a`` field
  counts at once (for ``beta_a = 16``: the four 16-bit field counts in about a dozen
  shift/and/add instructions); for ``beta_a >= 64`` the popcounts of ``beta_a/64`` words are
  summed.  The inner sum is multiplied by ``dw`` once per weight segment.  It is the fallback
  (wide deltas such as 16-bit or log2 codes, or ``beta_w / min(beta_a, 16)`` above 16) and the
  reference the tests hold the SIMD path to (``path="words"``).

Both paths tile the ``(P, N)`` output into blocks (an L2-sized block of weight rows is reused by
a block of activation rows) and spread the blocks over threads with ``prange``; the thread count
is numba's (``numba.set_num_threads``).

Public API: :func:`pack_bits`, :func:`xhbnn_matmul`, :func:`accumulate_fast`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from . import golden
from .contract import check_beta, segment_count

__all__ = ["pack_bits", "xhbnn_matmul", "accumulate_fast", "WORD_BITS"]

#: Bits per packed word.
WORD_BITS = 64

_I16_MAX = (1 << 15) - 1
_I32_MAX = (1 << 31) - 1
#: Bytes of weight rows kept hot per tile (about half of a typical 512 KiB-1 MiB L2).
_TILE_W_BYTES = 256 * 1024
#: Activation rows per tile.
_TILE_P = 64


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------
def pack_bits(signs) -> np.ndarray:
    """Pack a bool sign matrix (R, K), True = +1, into uint64 words (R, ceil(K/64)).

    Element ``k`` of a row goes to bit ``k % 64`` (LSB first) of word ``k // 64``; lanes past
    ``K`` in the last word are zero.
    """
    s = np.asarray(signs)
    if s.ndim != 2:
        raise ValueError(f"signs must be a 2-D (rows, K) array, got shape {s.shape}")
    if s.dtype != np.bool_:
        raise ValueError(f"signs must be a bool array (True = +1), got dtype {s.dtype}")
    rows, k = s.shape
    words = segment_count(k, WORD_BITS)
    by = np.packbits(s, axis=1, bitorder="little")  # (R, ceil(K/8)) uint8, padding bits 0
    buf = np.zeros((rows, words * 8), dtype=np.uint8)
    buf[:, : by.shape[1]] = by
    return buf.view("<u8").astype(np.uint64, copy=False).reshape(rows, words)


# --------------------------------------------------------------------------------------------
# Numba building blocks
# --------------------------------------------------------------------------------------------
@intrinsic
def _popcount(typingctx, x):
    """``llvm.ctpop`` of any integer (a single ``popcnt``, or a vector popcount after SLP/LV)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return x(x), codegen


_M1 = np.int64(0x5555555555555555)
_M2 = np.int64(0x3333333333333333)
_M4 = np.int64(0x0F0F0F0F0F0F0F0F)
_M8 = np.int64(0x00FF00FF00FF00FF)
_M16 = np.int64(0x0000FFFF0000FFFF)


@njit(inline="always", cache=True)
def _field_counts(x, beta):
    """SWAR popcount of every ``beta``-bit field of the 64-bit word ``x`` (int64, beta < 64).

    Field ``f`` of the result (bits ``f*beta ..``) holds the popcount of field ``f`` of ``x``.
    Arithmetic shifts are harmless: every mask has its top bit clear.
    """
    if beta == 1:
        return x
    c = x - ((x >> 1) & _M1)
    if beta == 2:
        return c
    c = (c & _M2) + ((c >> 2) & _M2)
    if beta == 4:
        return c
    c = (c + (c >> 4)) & _M4
    if beta == 8:
        return c
    c = (c + (c >> 8)) & _M8
    if beta == 16:
        return c
    return (c + (c >> 16)) & _M16


@njit(cache=True)
def _tile_grid(P, N, PB, NB):
    return (P + PB - 1) // PB, (N + NB - 1) // NB


@njit(parallel=True, cache=True)
def _kernel_words(a, da, w, dw, out, beta_a, log2_r, last_fix, PB, NB):
    """Generic int64 path. a, w: (P|N, words) int64 views of the packed words.

    da: (P, Sa) int64, dw: (N, Sw) int64; r = 2**log2_r activation segments per weight segment;
    last_fix = beta_a - n_last (0 when the last activation segment is full).
    """
    P = a.shape[0]
    N = w.shape[0]
    nwords = a.shape[1]
    Sa = da.shape[1]
    Sw = dw.shape[1]
    rmask = (1 << log2_r) - 1
    flush_tail = (Sa & rmask) != 0
    npb, nnb = _tile_grid(P, N, PB, NB)
    for t in prange(npb * nnb):
        pb = t // nnb
        nb = t - pb * nnb
        p1 = min(P, (pb + 1) * PB)
        n1 = min(N, (nb + 1) * NB)
        for p in range(pb * PB, p1):
            for n in range(nb * NB, n1):
                acc = np.int64(0)
                s = np.int64(0)
                if beta_a < 64:
                    fields = 64 // beta_a
                    fmask = np.int64((1 << beta_a) - 1)
                    for wd in range(nwords):
                        c = _field_counts(a[p, wd] ^ w[n, wd], beta_a)
                        j0 = wd * fields
                        nf = min(fields, Sa - j0)
                        for f in range(nf):
                            d = (c >> (f * beta_a)) & fmask
                            j = j0 + f
                            s += da[p, j] * (beta_a - 2 * d)
                            if ((j + 1) & rmask) == 0:
                                acc += dw[n, j >> log2_r] * s
                                s = 0
                else:
                    q = beta_a // 64
                    for j in range(Sa):
                        d = np.int64(0)
                        u1 = min(nwords, (j + 1) * q)
                        for u in range(j * q, u1):
                            d += _popcount(a[p, u] ^ w[n, u])
                        s += da[p, j] * (beta_a - 2 * d)
                        if ((j + 1) & rmask) == 0:
                            acc += dw[n, j >> log2_r] * s
                            s = 0
                if flush_tail:
                    acc += dw[n, Sw - 1] * s
                if last_fix:
                    acc -= last_fix * da[p, Sa - 1] * dw[n, Sw - 1]
                out[p, n] = acc


def _make_lane_tile(R: int):
    """Serial SIMD kernel of one output tile for ``R`` lanes per weight segment (a constant).

    a, w: (P|N, R, Sw) uint16 lanes in weight-segment planes: lane (q, i) holds activation lane
    ``i*R + q`` (``bl`` sign bits, zero-extended); da: (P, R, Sw) int16; dw: (N, Sw) int16.
    ``fix = bl - n_last`` for a short last lane at plane position (qlast, ilast).

    With ``R`` constant the inner ``q`` loop unrolls and LLVM vectorizes the ``i`` loop: the R lane
    terms of 8-16 weight segments are summed in int16 registers, then one ``vpmaddwd`` multiplies
    them by ``dw``, i.e. one multiply per weight segment.  The caller guarantees
    ``max|da| * R * bl <= 32767``, ``max|dw| <= 32767`` and ``R*Sw*bl*max|da|*max|dw| < 2**31``.
    """

    @njit(cache=True)
    def tile(a, da, w, dw, out, bl, fix, qlast, ilast, p0, p1, n0, n1):
        Sw = a.shape[2]
        for p in range(p0, p1):
            ap = a[p]
            dap = da[p]
            for n in range(n0, n1):
                wn = w[n]
                dwn = dw[n]
                acc = np.int32(0)
                for i in range(Sw):
                    s = np.int16(0)
                    for q in range(R):
                        # bl - 2*popcount is in [-16, 16]; da*(...) fits int16 by the guarantee
                        m = np.int16(bl - 2 * np.int16(_popcount(ap[q, i] ^ wn[q, i])))
                        s = np.int16(s + np.int16(dap[q, i] * m))
                    acc = np.int32(acc + np.int32(s) * np.int32(dwn[i]))
                res = np.int64(acc)
                if fix:
                    res -= fix * np.int64(dap[qlast, ilast]) * np.int64(dwn[Sw - 1])
                out[p, n] = res

    return tile


# One serial tile kernel per lanes-per-weight-segment ratio, one parallel driver for all of them
# (numba's parallel compilation is the expensive part, so it is paid once).
_LANE_R = (1, 2, 4, 8, 16)
_lane_tile_1 = _make_lane_tile(1)
_lane_tile_2 = _make_lane_tile(2)
_lane_tile_4 = _make_lane_tile(4)
_lane_tile_8 = _make_lane_tile(8)
_lane_tile_16 = _make_lane_tile(16)


@njit(parallel=True, cache=True)
def _kernel_lanes(a, da, w, dw, out, bl, fix, last, PB, NB):
    """SIMD path: tiles of the (P, N) output spread over threads; R = a.shape[1] in _LANE_R."""
    P, R, Sw = a.shape
    N = w.shape[0]
    qlast = last // Sw
    ilast = last - qlast * Sw
    npb, nnb = _tile_grid(P, N, PB, NB)
    for t in prange(npb * nnb):
        pb = t // nnb
        nb = t - pb * nnb
        p0 = pb * PB
        p1 = min(P, p0 + PB)
        n0 = nb * NB
        n1 = min(N, n0 + NB)
        if R == 1:
            _lane_tile_1(a, da, w, dw, out, bl, fix, qlast, ilast, p0, p1, n0, n1)
        elif R == 2:
            _lane_tile_2(a, da, w, dw, out, bl, fix, qlast, ilast, p0, p1, n0, n1)
        elif R == 4:
            _lane_tile_4(a, da, w, dw, out, bl, fix, qlast, ilast, p0, p1, n0, n1)
        elif R == 8:
            _lane_tile_8(a, da, w, dw, out, bl, fix, qlast, ilast, p0, p1, n0, n1)
        else:
            _lane_tile_16(a, da, w, dw, out, bl, fix, qlast, ilast, p0, p1, n0, n1)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------
def _as_words(bits, rows_name: str, k: int) -> np.ndarray:
    b = np.asarray(bits)
    if b.ndim != 2 or b.dtype != np.uint64:
        raise ValueError(f"{rows_name} must be a 2-D uint64 array of packed words, got {b.dtype} {b.shape}")
    words = segment_count(k, WORD_BITS)
    if b.shape[1] != words:
        raise ValueError(f"{rows_name} must have ceil(K/64) = {words} words per row for K={k}, got {b.shape[1]}")
    if k % WORD_BITS and b.shape[0] and np.any(b[:, -1] >> np.uint64(k % WORD_BITS)):
        raise ValueError(f"{rows_name} has nonzero padding lanes past K={k} (the contract requires zeros)")
    return np.ascontiguousarray(b)


def _as_delta(delta, name: str, rows: int, segs: int) -> np.ndarray:
    d = np.asarray(delta)
    if d.ndim != 2 or not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"{name} must be a 2-D integer array of decoded delta values, got {d.dtype} {d.shape}")
    if d.shape != (rows, segs):
        raise ValueError(f"{name} must have shape {(rows, segs)}, got {d.shape}")
    return np.ascontiguousarray(d, dtype=np.int64)


def _tiles(row_bytes_w: int) -> tuple[int, int]:
    """(activation rows, weight rows) per output tile: the weight block stays in L2."""
    return _TILE_P, max(8, _TILE_W_BYTES // max(1, row_bytes_w))


def _lanes16(words: np.ndarray, bl: int, count: int) -> np.ndarray:
    """(rows, count) uint16 lanes, lane ``l`` holding sign bits ``l*bl .. l*bl+bl-1`` (bl <= 16).

    16-bit lanes are a reinterpretation of the little-endian words; narrower lanes are widened
    (zero high bits, which never count because they are zero in both operands).  Lanes past the
    words are zero.
    """
    by = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    if bl == 16:
        lanes = by.view("<u2").astype(np.uint16, copy=False)
    elif bl == 8:
        lanes = by.astype(np.uint16)
    else:
        per = 8 // bl
        shifts = (np.arange(per, dtype=np.uint8) * bl)[None, None, :]
        lanes = ((by[:, :, None] >> shifts) & np.uint8((1 << bl) - 1)).reshape(by.shape[0], -1).astype(np.uint16)
    out = np.zeros((words.shape[0], count), dtype=np.uint16)
    m = min(count, lanes.shape[1])
    out[:, :m] = lanes[:, :m]
    return out


def xhbnn_matmul(a_bits, a_delta, w_bits, w_delta, *, k: int, beta_a: int, beta_w: int,
                 path: str = "auto") -> np.ndarray:
    """Exact xHBNN product ``O`` (P, N) int64 of packed activations and weights.

    Parameters
    ----------
    a_bits : uint64 (P, ceil(K/64))
        Packed activation signs (see :func:`pack_bits`).
    a_delta : int (P, ceil(K/beta_a))
        Decoded integer delta_a of every activation segment.
    w_bits : uint64 (N, ceil(K/64))
        Packed weight signs.
    w_delta : int (N, ceil(K/beta_w))
        Decoded integer delta_w of every weight segment.
    k : int
        Reduction length ``K``.
    beta_a, beta_w : int
        Segment sizes, powers of two, ``beta_a <= beta_w``.
    path : {"auto", "lanes", "words"}
        ``auto`` picks the SIMD lane path whenever it is exact for these deltas; ``words`` forces
        the generic int64 path; ``lanes`` forces the lane path (ValueError if not exact).

    Returns
    -------
    int64 array (P, N): ``sum_k w[n, k] * a[p, k]`` with ``w = ±dw``, ``a = ±da``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, not {k!r}")
    k = int(k)
    beta_a = check_beta(beta_a, "beta_a", power_of_two=True)
    beta_w = check_beta(beta_w, "beta_w", power_of_two=True)
    if beta_a > beta_w:
        raise ValueError(f"beta_a must not exceed beta_w (segments must nest), got beta_a={beta_a} > beta_w={beta_w}")
    if path not in ("auto", "lanes", "words"):
        raise ValueError(f"path must be 'auto', 'lanes' or 'words', not {path!r}")
    a = _as_words(a_bits, "a_bits", k)
    w = _as_words(w_bits, "w_bits", k)
    P, N = a.shape[0], w.shape[0]
    Sa, Sw = segment_count(k, beta_a), segment_count(k, beta_w)
    da = _as_delta(a_delta, "a_delta", P, Sa)
    dw = _as_delta(w_delta, "w_delta", N, Sw)
    out = np.empty((P, N), dtype=np.int64)
    if P == 0 or N == 0:
        return out
    if k == 0:
        out[:] = 0
        return out

    r = beta_w // beta_a
    da_max = int(np.abs(da).max())
    dw_max = int(np.abs(dw).max())
    if Sa * beta_a * da_max * dw_max >= 1 << 63:
        raise ValueError("|O| could exceed int64 for these delta ranges and K")

    # SIMD lane geometry: lanes of bl = min(beta_a, 16) bits.  A segment of 32 or more bits is
    # split into 16-bit sub-segments that share its delta (p_j is additive over the parts); a
    # weight segment holds R = beta_w / bl lanes.
    bl = min(beta_a, 16)
    R = beta_w // bl
    Sl = segment_count(k, bl)
    lanes_ok = (
        R in _LANE_R
        and da_max * beta_w <= _I16_MAX  # the int16 sum of a weight segment's R lane terms
        and dw_max <= _I16_MAX
        and Sw * beta_w * da_max * dw_max <= _I32_MAX  # int32 accumulator over the padded length
    )
    if path == "lanes" and not lanes_ok:
        raise ValueError("the SIMD lane path is not exact for these segment sizes / delta ranges")

    if not lanes_ok or path == "words":
        pb, nb = _tiles(a.shape[1] * 8 + Sw * 8)
        _kernel_words(a.view(np.int64), da, w.view(np.int64), dw, out, beta_a, r.bit_length() - 1,
                      (beta_a - k % beta_a) % beta_a, pb, nb)
        return out

    # Pad to Sw*R lanes (zero bits and zero delta contribute nothing), then put the R lanes of
    # each weight segment into R contiguous planes: (rows, R, Sw).
    L = Sw * R

    def planes(x):
        return np.ascontiguousarray(x.reshape(x.shape[0], Sw, R).transpose(0, 2, 1))

    dal = np.zeros((P, L), dtype=np.int16)
    dal[:, :Sl] = da if bl == beta_a else np.repeat(da, beta_a // bl, axis=1)[:, :Sl]
    last = Sl - 1
    pb, nb = _tiles(L * 2 + Sw * 2)
    _kernel_lanes(planes(_lanes16(a, bl, L)), planes(dal), planes(_lanes16(w, bl, L)), dw.astype(np.int16),
                  out, bl, (bl - k % bl) % bl, (last % R) * Sw + last // R, pb, nb)
    return out


def accumulate_fast(layer: golden.QLayer, act: golden.QAct) -> np.ndarray:
    """Same result as :func:`hadahw.golden.accumulate` (bit for bit), computed with xHBNN.

    Returns (N,) for a linear layer and (OH, OW, N) for a conv layer, int64.
    """
    act = golden.check_input(layer, act)
    w_bits = pack_bits(layer.weight_signs)
    w_delta = layer.weight_format.decode(layer.weight_delta)
    k = layer.reduction
    if layer.kind == "linear":
        a_bits = pack_bits(act.signs[None, :])
        a_delta = act.delta[None, :]
    else:
        signs, delta = golden.im2col(act, layer)
        a_bits = pack_bits(signs)
        # Activation segments never straddle pixels (in_channels % beta_a == 0), so the per-element
        # delta of a patch is constant over each beta_a run; its first element is the segment's.
        a_delta = delta[:, :: layer.beta_a]
    o = xhbnn_matmul(a_bits, a_delta, w_bits, w_delta, k=k, beta_a=layer.beta_a, beta_w=layer.beta_w)
    if layer.kind == "linear":
        o = o[0]
    else:
        o = o.reshape(*layer.conv_out_hw, layer.out_features)
    assert np.abs(o).max(initial=0) <= layer.acc_bound, "accumulator bound violated"
    return o
