"""Lowering float HadaNet parameters to the integer contract (float → :class:`~hadahw.golden.QLayer`).

The float model (:mod:`hadahw.quant`) and the integer model (:mod:`hadahw.golden`) are different
things; this module is the only bridge between them.  It chooses per-tensor exponents so that no
delta saturates, rounds deltas to codes, and folds scales (and a following BatchNorm) into the
integer requantization stage.

Error bound (used by the tests): with ``e_w``/``e_a`` the weight/activation exponents, every delta
code is within half an LSB of its real value, so for a linear layer

    |O_float - O_int * 2**(e_w + e_a)|  <=  sum_k (2**e_w / 2) |a_k|  +  |w_k| * err_a_k

where ``err_a_k = 2**e_a`` (input rounding plus delta rounding) when the quantized sign equals the
float sign, and ``2 * delta_a_float + 2**e_a`` where quantizing ``x < 0`` to 0 flipped it to +1.
See :func:`linear_error_bound`.
"""

from __future__ import annotations

import math

import numpy as np

from .contract import DeltaFormat, Requant, check_beta, quantize_activation, segment_index, segment_lengths
from .golden import QLayer, act_from_int, QAct

__all__ = [
    "segment_means",
    "quantize_weights",
    "conv_weight_to_rows",
    "activation_exponent",
    "quantize_input",
    "fold_requant",
    "linear_error_bound",
]


def segment_means(x: np.ndarray, beta: int) -> np.ndarray:
    """Mean of ``|x|`` over each ``beta`` segment of the last axis (short last segment: own length)."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    starts = np.arange(0, x.shape[-1], beta)
    return np.add.reduceat(x, starts, axis=-1) / segment_lengths(x.shape[-1], beta)


def conv_weight_to_rows(w: np.ndarray) -> np.ndarray:
    """(N, C, kh, kw) conv weights → (N, kh*kw*C) rows in the contract's (ky, kx, c) order."""
    w = np.asarray(w)
    if w.ndim != 4:
        raise ValueError(f"conv weight must be 4-D (N, C, kh, kw), got shape {w.shape}")
    return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def quantize_weights(w_rows: np.ndarray, beta_w: int, fmt: DeltaFormat = DeltaFormat()):
    """Signs, delta codes and exponent of weight rows (N, K) binarized with ``beta_w``.

    Returns ``(signs, codes, exponent)``; the exponent is the smallest at which the largest
    segment mean does not saturate.
    """
    beta_w = check_beta(beta_w, "beta_w")
    w_rows = np.asarray(w_rows, dtype=np.float64)
    delta = segment_means(w_rows, beta_w)
    exponent = fmt.choose_exponent(float(delta.max(initial=0.0)))
    return w_rows >= 0, fmt.quantize(delta, exponent), exponent


def activation_exponent(max_abs: float, bits: int) -> int:
    """Smallest exponent at which activations up to ``max_abs`` fit ``±(2**bits - 1)`` unsaturated."""
    if not max_abs > 0 or not math.isfinite(max_abs):
        return 0
    return math.ceil(math.log2(max_abs / ((1 << bits) - 1)))


def quantize_input(x: np.ndarray, beta_a: int, *, bits: int = 8, exponent: int | None = None) -> QAct:
    """Host-side quantization of a real input (channels last) into a :class:`QAct`."""
    x = np.asarray(x, dtype=np.float64)
    if exponent is None:
        exponent = activation_exponent(float(np.abs(x).max(initial=0.0)), bits)
    return act_from_int(quantize_activation(x, exponent, bits), beta_a, bits=bits, exponent=exponent)


def fold_requant(scale, bias, *, acc_exponent: int, out_exponent: int | None, relu: bool,
                 out_bits: int | None, mult_bits: int = 16) -> Requant:
    """Integer output stage realizing ``y = scale * O_real + bias`` per channel.

    ``O_real = O * 2**acc_exponent``.  With ``out_exponent`` the result is expressed in units of
    ``2**out_exponent`` and saturated to ``out_bits``; with ``None`` the stage keeps the
    accumulator scale (multiplier 1 where possible, for final logits).  The shift is chosen as
    large as the ``mult_bits``-bit signed multiplier allows.
    """
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    bias = np.asarray(bias, dtype=np.float64).reshape(-1)
    if out_exponent is None:
        out_exponent = acc_exponent
    # y_int = O * scale * 2**(acc_e - out_e) + bias * 2**-out_e
    m_real = scale * 2.0 ** (acc_exponent - out_exponent)
    b_real = bias * 2.0 ** (-out_exponent)
    m_max = float(np.abs(m_real).max(initial=0.0))
    lim = (1 << (mult_bits - 1)) - 1
    shift = 0
    if m_max > 0:
        shift = max(0, min(62 - 40, math.floor(math.log2(lim / m_max))))
    multiplier = np.round(m_real * 2.0**shift).astype(np.int64)
    if np.abs(multiplier).max(initial=0) > lim:
        raise ValueError(f"requant scale {m_max:g} does not fit a {mult_bits}-bit multiplier; raise out_exponent")
    return Requant(multiplier=multiplier, bias=np.round(b_real * 2.0**shift).astype(np.int64), shift=shift,
                   relu=relu, saturate_bits=out_bits)


def linear_error_bound(w_rows: np.ndarray, x: np.ndarray, layer: QLayer, act: QAct) -> np.ndarray:
    """Per-output bound on ``|O_float - O_int * 2**(e_w + e_a)|`` for a linear layer (see module doc).

    ``w_rows``/``x`` are the real weights and input; ``layer``/``act`` their lowered forms.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    w_rows = np.asarray(w_rows, dtype=np.float64)
    ew, ea = layer.weight_exponent, act.exponent
    idx_a = segment_index(x.size, layer.beta_a)
    a_float = segment_means(x, layer.beta_a)[idx_a]  # |a_k| of the float HadaNet
    flipped = (x < 0) & act.signs
    err_a = np.where(flipped, 2 * a_float + 2.0**ea, 2.0**ea)
    w_q = np.abs(layer.weight_values()) * 2.0**ew
    return (2.0**ew / 2) * a_float.sum() + w_q @ err_a
