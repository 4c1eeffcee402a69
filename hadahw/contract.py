"""The integer numeric contract shared by the golden model, the packer, the RTL and the estimator.

Every decision that "bit-exact" depends on is made here, once.  Nothing in this module knows
about PyTorch, Amaranth or bytes on a wire; it works on NumPy integer arrays.

Decisions
---------
Reduction axis and segmentation
    A layer reduces over ``K`` inputs.  For ``Linear`` that is the feature axis.  For ``Conv2d``
    it is the im2col patch in **(ky, kx, c)** order, channel fastest, because activations live
    channels-last (HWC) in hardware.  Segment ``j`` of size ``beta`` covers reduction indices
    ``[j*beta, min((j+1)*beta, K))``; the final segment may be short (``n_j < beta``) and is
    averaged over its own length.
Activation segments (delta_a)
    Activation segments run along the channel axis of one pixel, so a conv patch segment is exactly
    one segment of the input map and the previous layer's on-chip binarizer can compute every
    delta_a once.  Therefore a Conv2d needs ``in_channels % beta_a == 0``.  This differs from the
    paper's Eqn (3) (segments along the image width); the float model offers both.
Segment alignment
    ``beta_a`` and ``beta_w`` are powers of two with ``beta_a <= beta_w``, so every weight segment
    holds whole activation segments and the dot product factorizes as
    ``O = sum_i dw_i * sum_{j in i} da_j * p_j``  with  ``p_j = 2*popcount(xnor(w_j, a_j)) - n_j``.
    (The paper's Eqn (7) omits the ``2p - n`` correction.)
Sign encoding
    One bit per element, bit 1 = +1, bit 0 = -1.  Hardware sign(0) is +1 (``x >= 0``).  Element
    ``k`` of a row is bit ``k % L`` (LSB first) of little-endian word ``k // L``.  Lanes past ``K``
    are zero in packed data and never counted: they are masked by the segment length.
Padding
    Conv zero padding is a pixel whose every delta_a is 0; its sign bits are 1 and it contributes
    nothing, so no separate mask is needed.
Delta formats
    Unsigned codes of ``bits`` bits with a per-tensor power-of-two exponent ``e``:
    ``fixed``  real = code * 2**e;
    ``log2``   real = 0 if code == 0 else 2**(code - 1 + e)  (multiply-free: a shift).
    Real to code rounds half up (fixed) or to the nearest exponent (log2) and saturates.
    Activation deltas are always ``fixed`` because the on-chip binarizer produces them.
Accumulators
    Exact signed integers.  Widths are derived from the layer shape by :func:`acc_bits`, so
    overflow is impossible; the golden model asserts the bound.
Requantization (output stage)
    ``O`` (signed) -> optional ReLU -> optional max-pool -> per-channel affine
    ``y = (O*M_c + B_c + 2**(S-1)) >> S`` (arithmetic shift, round half up; no rounding term when
    ``S == 0``) -> saturate to ``[-(2**da_bits - 1), 2**da_bits - 1]`` when the layer feeds another
    binarized layer.  ``M_c, B_c`` fold the next layer's BatchNorm and the delta scales.
On-chip binarizer
    Given requantized ``y`` of a pixel: sign bit ``y >= 0``; ``da_j = floor((sum|y| + n_j//2) / n_j)``
    over each ``beta_a`` channel segment (a shift when ``n_j`` is a power of two).  Because
    ``|y| <= 2**da_bits - 1`` the mean never saturates.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

__all__ = [
    "DeltaFormat",
    "Requant",
    "check_beta",
    "segment_count",
    "segment_lengths",
    "segment_index",
    "acc_bits",
    "signed_bits",
    "round_shift",
    "binarize_int",
    "quantize_activation",
    "SIGN_ZERO_BIT",
]

#: Sign bit that hardware assigns to an exact zero: sign(0) = +1.
SIGN_ZERO_BIT = 1


def check_beta(beta, name: str = "beta", *, power_of_two: bool = False) -> int:
    """Validate a segment size and return it as ``int``.

    Raises
    ------
    ValueError
        One-line message naming ``name`` (also for non-integers, so callers catch one type).
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer, not {beta!r}")
    beta = int(beta)
    if beta < 1:
        raise ValueError(f"{name} must be a positive integer, not {beta}")
    if power_of_two and beta & (beta - 1):
        raise ValueError(f"{name} must be a power of two (1, 2, 4, ..., 64), not {beta}")
    return beta


def segment_count(length: int, beta: int) -> int:
    """Number of segments of ``beta`` covering ``length`` elements (last one may be short)."""
    return -(-length // beta)


def segment_lengths(length: int, beta: int) -> np.ndarray:
    """Length ``n_j`` of every segment: ``beta`` except possibly the last."""
    n = np.full(segment_count(length, beta), beta, dtype=np.int64)
    if length % beta:
        n[-1] = length % beta
    return n


def segment_index(length: int, beta: int) -> np.ndarray:
    """Segment number of every element ``k`` in ``range(length)``."""
    return np.arange(length, dtype=np.int64) // beta


def signed_bits(bound: int) -> int:
    """Bits of a two's-complement register holding every integer in ``[-bound, bound]``."""
    return int(bound).bit_length() + 1


def acc_bits(k: int, dw_max: int, da_max: int) -> int:
    """Accumulator width that makes overflow impossible for a ``k``-long reduction.

    ``|O| <= k * dw_max * da_max`` because ``|p_j| <= n_j`` and ``sum n_j = k``.
    """
    return signed_bits(k * dw_max * da_max)


def round_shift(v: np.ndarray, shift: int) -> np.ndarray:
    """Arithmetic right shift rounding half up: ``floor(v / 2**shift + 1/2)``."""
    v = np.asarray(v, dtype=np.int64)
    if shift == 0:
        return v
    return (v + (1 << (shift - 1))) >> shift


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeltaFormat:
    """Encoding of a segment scale delta as an unsigned code.

    Parameters
    ----------
    bits : int
        Code width, 1..16.
    kind : {"fixed", "log2"}
        ``fixed``: value = code.  ``log2``: value = 0 for code 0, else ``2**(code-1)``.
        The real delta is ``value * 2**exponent``; the exponent is stored per tensor.
    """

    bits: int = 8
    kind: Literal["fixed", "log2"] = "fixed"

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise ValueError(f"delta bits must be an integer in 1..16, not {self.bits!r}")
        if self.kind not in ("fixed", "log2"):
            raise ValueError(f"delta kind must be 'fixed' or 'log2', not {self.kind!r}")
        if self.kind == "log2" and self.bits > 5:
            raise ValueError(f"log2 delta bits must be in 1..5 (values up to 2**30), not {self.bits}")

    @property
    def max_code(self) -> int:
        return (1 << self.bits) - 1

    @property
    def max_value(self) -> int:
        """Largest decoded integer value (what accumulator widths are derived from)."""
        return self.max_code if self.kind == "fixed" else 1 << (self.max_code - 1)

    def decode(self, codes) -> np.ndarray:
        """Integer value of each code (the hardware's multiplicand)."""
        c = np.asarray(codes, dtype=np.int64)
        if c.size and (c.min() < 0 or c.max() > self.max_code):
            raise ValueError(f"delta codes must be in 0..{self.max_code} for {self.bits}-bit {self.kind}")
        if self.kind == "fixed":
            return c
        return np.where(c == 0, 0, np.left_shift(1, np.maximum(c - 1, 0)))

    def choose_exponent(self, max_delta: float) -> int:
        """Smallest exponent at which ``max_delta`` is representable without saturation."""
        if not max_delta > 0 or not math.isfinite(max_delta):
            return 0
        return math.ceil(math.log2(max_delta / self.max_value))

    def quantize(self, delta, exponent: int) -> np.ndarray:
        """Codes for real deltas (>= 0) at ``exponent``; rounds, then saturates to the code range."""
        d = np.asarray(delta, dtype=np.float64) / 2.0**exponent
        if self.kind == "fixed":
            return np.clip(np.floor(d + 0.5), 0, self.max_code).astype(np.int64)
        with np.errstate(divide="ignore"):
            e = np.round(np.log2(np.where(d > 0, d, 1.0)))
        codes = np.clip(e, 0, self.max_code - 1).astype(np.int64) + 1
        return np.where(d > 0, codes, 0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Requant:
    """Output stage of a layer: ReLU, per-channel affine with rounding shift, saturation.

    ``y = sat((O * multiplier[c] + bias[c] + 2**(shift-1)) >> shift)`` (no rounding term when
    ``shift == 0``).  ``saturate_bits=None`` keeps the wide result (a network's final logits).
    """

    multiplier: np.ndarray
    bias: np.ndarray
    shift: int = 0
    relu: bool = False
    saturate_bits: int | None = None

    def __post_init__(self):
        m = np.asarray(self.multiplier, dtype=np.int64).reshape(-1)
        b = np.asarray(self.bias, dtype=np.int64).reshape(-1)
        if m.shape != b.shape:
            raise ValueError(f"requant multiplier and bias must have one entry per channel, got {m.size} and {b.size}")
        if not isinstance(self.shift, (int, np.integer)) or not 0 <= self.shift <= 62:
            raise ValueError(f"requant shift must be an integer in 0..62, not {self.shift!r}")
        if self.saturate_bits is not None and not 1 <= self.saturate_bits <= 16:
            raise ValueError(f"requant saturate_bits must be in 1..16 or None, not {self.saturate_bits!r}")
        object.__setattr__(self, "multiplier", m)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "shift", int(self.shift))

    @classmethod
    def identity(cls, channels: int, *, relu: bool = False) -> "Requant":
        return cls(multiplier=np.ones(channels, np.int64), bias=np.zeros(channels, np.int64), relu=relu)

    @property
    def channels(self) -> int:
        return self.multiplier.size

    @property
    def y_max(self) -> int | None:
        return None if self.saturate_bits is None else (1 << self.saturate_bits) - 1

    def apply(self, o: np.ndarray, channel_axis: int = -1) -> np.ndarray:
        """Apply the stage to accumulator values ``o`` (int64) whose channel axis is ``channel_axis``.

        ReLU comes before max-pooling in the network order; callers pool between
        :meth:`activate` and :meth:`scale` when the layer pools.
        """
        return self.scale(self.activate(o), channel_axis)

    def activate(self, o: np.ndarray) -> np.ndarray:
        o = np.asarray(o, dtype=np.int64)
        return np.maximum(o, 0) if self.relu else o

    def scale(self, o: np.ndarray, channel_axis: int = -1) -> np.ndarray:
        o = np.moveaxis(np.asarray(o, dtype=np.int64), channel_axis, -1)
        if o.shape[-1] != self.channels:
            raise ValueError(f"requant has {self.channels} channels but the layer output has {o.shape[-1]}")
        y = round_shift(o * self.multiplier + self.bias, self.shift)
        if self.saturate_bits is not None:
            y = np.clip(y, -self.y_max, self.y_max)
        return np.moveaxis(y, -1, channel_axis)

    def bound(self, o_bound: int) -> int:
        """Largest ``|O*M + B|`` for ``|O| <= o_bound`` (sizes the requant datapath)."""
        return int(o_bound * np.abs(self.multiplier).max(initial=0) + np.abs(self.bias).max(initial=0))

    def __eq__(self, other):
        if not isinstance(other, Requant):
            return NotImplemented
        return (np.array_equal(self.multiplier, other.multiplier) and np.array_equal(self.bias, other.bias)
                and (self.shift, self.relu, self.saturate_bits) == (other.shift, other.relu, other.saturate_bits))


def binarize_int(y, beta_a: int) -> tuple[np.ndarray, np.ndarray]:
    """The on-chip binarizer: signs and delta_a codes of integer activations along the last axis.

    Parameters
    ----------
    y : array of int
        Activations, channels (the reduction/segment axis) last.
    beta_a : int
        Activation segment size.

    Returns
    -------
    signs : bool array, same shape as ``y``; True means +1 (``y >= 0``).
    delta : int64 array, shape ``y.shape[:-1] + (segments,)``; ``floor((sum|y| + n//2) / n)``.
    """
    y = np.asarray(y, dtype=np.int64)
    beta_a = check_beta(beta_a, "beta_a")
    length = y.shape[-1]
    n = segment_lengths(length, beta_a)
    starts = np.arange(0, length, beta_a)
    sums = np.add.reduceat(np.abs(y), starts, axis=-1) if length else np.zeros(y.shape[:-1] + (0,), np.int64)
    delta = (sums + n // 2) // n
    return y >= 0, delta


def quantize_activation(x, exponent: int, bits: int) -> np.ndarray:
    """Host-side input quantization: ``round_half_up(x / 2**exponent)`` saturated to ``±(2**bits-1)``."""
    lim = (1 << bits) - 1
    return np.clip(np.floor(np.asarray(x, np.float64) / 2.0**exponent + 0.5), -lim, lim).astype(np.int64)
