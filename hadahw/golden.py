"""Integer golden model: what the accelerator computes, layer by layer, bit for bit.

The numeric contract is in :mod:`hadahw.contract`.  This module holds the layer description that
the packer, the RTL generator and the estimator consume (:class:`QLayer`), the activation
description (:class:`QAct`), and a plain, obviously-correct integer implementation of a layer and
a network.  The fast packed kernel (:mod:`hadahw.xhbnn`) must agree with it exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import numpy as np

from .contract import (
    DeltaFormat,
    Requant,
    acc_bits,
    binarize_int,
    check_beta,
    segment_count,
    segment_index,
)

__all__ = ["QAct", "QLayer", "check_input", "accumulate", "run_layer", "run_network", "im2col", "act_from_int"]


def _check_int_range(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class QAct:
    """A binarized activation tensor as the hardware holds it.

    ``signs`` (bool, True = +1) has shape ``(H, W, C)`` for a feature map or ``(K,)`` for a vector;
    ``delta`` holds the unsigned fixed-point delta_a codes along the last axis, one per ``beta_a``
    segment: shape ``signs.shape[:-1] + (ceil(C / beta_a),)``.  The real value of element ``i`` is
    ``(+1 if sign else -1) * delta[seg(i)] * 2**exponent``.
    """

    signs: np.ndarray
    delta: np.ndarray
    beta_a: int
    bits: int = 8
    exponent: int = 0

    def __post_init__(self):
        s = np.asarray(self.signs, dtype=bool)
        d = np.asarray(self.delta, dtype=np.int64)
        beta_a = check_beta(self.beta_a, "beta_a", power_of_two=True)
        _check_int_range("activation bits", self.bits, 1, 16)
        _check_int_range("activation exponent", self.exponent, -(1 << 15), (1 << 15) - 1)
        if s.ndim not in (1, 3):
            raise ValueError(f"activation signs must be (K,) or (H, W, C), got shape {s.shape}")
        want = s.shape[:-1] + (segment_count(s.shape[-1], beta_a),)
        if d.shape != want:
            raise ValueError(f"activation delta must have shape {want} for beta_a={beta_a}, got {d.shape}")
        if d.size and (d.min() < 0 or d.max() >= 1 << self.bits):
            raise ValueError(f"activation delta codes must be in 0..{(1 << self.bits) - 1}")
        object.__setattr__(self, "signs", s)
        object.__setattr__(self, "delta", d)
        object.__setattr__(self, "beta_a", beta_a)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.signs.shape

    def delta_per_element(self) -> np.ndarray:
        """delta_a code of every element (same shape as ``signs``)."""
        return np.take(self.delta, segment_index(self.shape[-1], self.beta_a), axis=-1)

    def values(self) -> np.ndarray:
        """Integer value of every element, ``±delta`` (real value times ``2**-exponent``)."""
        return np.where(self.signs, 1, -1) * self.delta_per_element()

    def flatten(self) -> "QAct":
        """The (H, W, C) map as a (H*W*C,) vector in HWC order; segments stay aligned."""
        if self.signs.ndim == 1:
            return self
        h, w, c = self.shape
        if c % self.beta_a:
            raise ValueError(f"cannot flatten a map with {c} channels into beta_a={self.beta_a} segments")
        return dataclasses.replace(self, signs=self.signs.reshape(-1), delta=self.delta.reshape(-1))

    def __eq__(self, other):
        if not isinstance(other, QAct):
            return NotImplemented
        return (np.array_equal(self.signs, other.signs) and np.array_equal(self.delta, other.delta)
                and (self.beta_a, self.bits, self.exponent) == (other.beta_a, other.bits, other.exponent))


def act_from_int(y, beta_a: int, *, bits: int = 8, exponent: int = 0) -> QAct:
    """Binarize integer activations (channels last) with the on-chip binarizer's rule."""
    y = np.asarray(y, dtype=np.int64)
    lim = (1 << bits) - 1
    if y.size and np.abs(y).max() > lim:
        raise ValueError(f"activations must lie in [-{lim}, {lim}] for {bits}-bit deltas")
    signs, delta = binarize_int(y, beta_a)
    return QAct(signs=signs, delta=delta, beta_a=beta_a, bits=bits, exponent=exponent)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class QLayer:
    """One binarized layer in the integer contract.

    Parameters
    ----------
    kind : {"linear", "conv2d"}
    weight_signs : bool array (N, K)
        True = +1.  For conv, ``K = kh * kw * in_channels`` in (ky, kx, c) order.
    weight_delta : int array (N, ceil(K / beta_w))
        delta_w codes in ``weight_format``.
    beta_w, beta_a : int
        Powers of two, ``beta_a <= beta_w``; ``beta_a`` is the segment size of this layer's input.
    in_shape : tuple
        ``(K,)`` for linear, ``(H, W, C)`` for conv.
    kernel, stride, padding : int
        Conv geometry (square kernel); ignored for linear.
    pool : int
        Max-pool window and stride applied after ReLU (1 = none).  Conv only.
    requant : Requant
        Output stage; ``requant.channels == N``.
    out_beta_a : int or None
        Segment size of the next layer's input, used by the on-chip binarizer; None for a final
        layer whose wide requantized outputs go back to the host.
    """

    kind: Literal["linear", "conv2d"]
    weight_signs: np.ndarray
    weight_delta: np.ndarray
    beta_w: int
    beta_a: int
    in_shape: tuple[int, ...]
    requant: Requant
    weight_format: DeltaFormat = DeltaFormat()
    weight_exponent: int = 0
    act_bits: int = 8
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    pool: int = 1
    out_beta_a: int | None = None
    name: str = ""

    def __post_init__(self):
        ws = np.asarray(self.weight_signs, dtype=bool)
        wd = np.asarray(self.weight_delta, dtype=np.int64)
        beta_w = check_beta(self.beta_w, "beta_w", power_of_two=True)
        beta_a = check_beta(self.beta_a, "beta_a", power_of_two=True)
        if beta_a > beta_w:
            raise ValueError(f"beta_a must not exceed beta_w (segments must nest), got beta_a={beta_a} > beta_w={beta_w}")
        if self.kind not in ("linear", "conv2d"):
            raise ValueError(f"layer kind must be 'linear' or 'conv2d', not {self.kind!r}")
        _check_int_range("act_bits", self.act_bits, 1, 16)
        _check_int_range("weight_exponent", self.weight_exponent, -(1 << 15), (1 << 15) - 1)
        in_shape = tuple(int(v) for v in self.in_shape)
        if ws.ndim != 2:
            raise ValueError(f"weight_signs must be 2-D (N, K), got shape {ws.shape}")
        n, k = ws.shape
        if self.kind == "linear":
            if len(in_shape) != 1 or in_shape[0] != k:
                raise ValueError(f"linear in_shape must be ({k},) to match weight_signs, got {in_shape}")
            if (self.kernel, self.stride, self.padding, self.pool) != (1, 1, 0, 1):
                raise ValueError("kernel, stride, padding and pool must keep their defaults (1, 1, 0, 1) on a linear layer")
        else:
            if len(in_shape) != 3:
                raise ValueError(f"conv2d in_shape must be (H, W, C), got {in_shape}")
            h, w, c = in_shape
            if k != self.kernel * self.kernel * c:
                raise ValueError(f"conv2d weight_signs K={k} does not match kernel {self.kernel}x{self.kernel}x{c}")
            if c % beta_a:
                raise ValueError(f"conv2d in_channels ({c}) must be a multiple of beta_a ({beta_a})")
            for field in ("kernel", "stride", "pool"):
                if getattr(self, field) < 1:
                    raise ValueError(f"{field} must be >= 1, not {getattr(self, field)}")
            if self.padding < 0:
                raise ValueError(f"padding must be >= 0, not {self.padding}")
            oh, ow = self.conv_out_hw
            if oh < 1 or ow < 1:
                raise ValueError(f"conv2d output would be empty for input {in_shape} and kernel {self.kernel}")
            if oh % self.pool or ow % self.pool:
                raise ValueError(f"pool {self.pool} must divide the conv output {oh}x{ow}")
        if wd.shape != (n, segment_count(k, beta_w)):
            raise ValueError(f"weight_delta must have shape {(n, segment_count(k, beta_w))}, got {wd.shape}")
        self.weight_format.decode(wd)  # range check
        if self.requant.channels != n:
            raise ValueError(f"requant has {self.requant.channels} channels but the layer has {n} outputs")
        if self.out_beta_a is not None:
            check_beta(self.out_beta_a, "out_beta_a", power_of_two=True)
            if self.requant.saturate_bits is None:
                raise ValueError("a layer feeding another binarized layer needs requant.saturate_bits")
        if acc_bits(k, self.weight_format.max_value, (1 << self.act_bits) - 1) > 62:
            raise ValueError(f"layer with K={k} needs more than 62 accumulator bits; reduce delta bits")
        for name, val in (("weight_signs", ws), ("weight_delta", wd)):
            val.setflags(write=False)
            object.__setattr__(self, name, val)
        object.__setattr__(self, "beta_w", beta_w)
        object.__setattr__(self, "beta_a", beta_a)
        object.__setattr__(self, "in_shape", in_shape)

    # Derived shapes and widths -------------------------------------------------------------
    @property
    def out_features(self) -> int:
        return self.weight_signs.shape[0]

    @property
    def reduction(self) -> int:
        return self.weight_signs.shape[1]

    @property
    def conv_out_hw(self) -> tuple[int, int]:
        h, w, _ = self.in_shape
        return ((h + 2 * self.padding - self.kernel) // self.stride + 1,
                (w + 2 * self.padding - self.kernel) // self.stride + 1)

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out_features,)
        oh, ow = self.conv_out_hw
        return (oh // self.pool, ow // self.pool, self.out_features)

    @property
    def acc_bits(self) -> int:
        """Accumulator width: overflow-free for any input of this layer's formats."""
        return acc_bits(self.reduction, self.weight_format.max_value, (1 << self.act_bits) - 1)

    @property
    def acc_bound(self) -> int:
        return self.reduction * self.weight_format.max_value * ((1 << self.act_bits) - 1)

    def weight_values(self) -> np.ndarray:
        """Integer weight of every element (N, K): ``±decode(delta_w)``."""
        dw = self.weight_format.decode(self.weight_delta)
        per_elem = np.take(dw, segment_index(self.reduction, self.beta_w), axis=1)
        return np.where(self.weight_signs, 1, -1) * per_elem

    def __eq__(self, other):
        if not isinstance(other, QLayer):
            return NotImplemented
        fields = [f.name for f in dataclasses.fields(self)]
        for f in fields:
            a, b = getattr(self, f), getattr(other, f)
            if isinstance(a, np.ndarray):
                if not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True


def im2col(act: QAct, layer: QLayer) -> tuple[np.ndarray, np.ndarray]:
    """Patch signs and per-element delta_a codes, shape (OH*OW, K), K in (ky, kx, c) order.

    Padding pixels get sign +1 and delta 0, so they contribute nothing.
    """
    k, s, p = layer.kernel, layer.stride, layer.padding
    signs = np.pad(act.signs, ((p, p), (p, p), (0, 0)), constant_values=True)
    delta = np.pad(act.delta_per_element(), ((p, p), (p, p), (0, 0)), constant_values=0)
    oh, ow = layer.conv_out_hw
    rows = (np.arange(oh) * s)[:, None] + np.arange(k)[None, :]  # (oh, k)
    cols = (np.arange(ow) * s)[:, None] + np.arange(k)[None, :]  # (ow, k)
    # (oh, ow, ky, kx, c) -> (oh*ow, K)
    gather = lambda t: t[rows[:, None, :, None], cols[None, :, None, :]].reshape(oh * ow, -1)
    return gather(signs), gather(delta)


def check_input(layer: QLayer, act: QAct) -> QAct:
    """Validate that ``act`` can feed ``layer`` and return it in the layer's input shape."""
    if act.beta_a != layer.beta_a:
        raise ValueError(f"activation beta_a={act.beta_a} does not match the layer's beta_a={layer.beta_a}")
    if act.bits != layer.act_bits:
        raise ValueError(f"activation delta bits {act.bits} do not match the layer's act_bits={layer.act_bits}")
    if layer.kind == "linear":
        act = act.flatten()
    if act.shape != layer.in_shape:
        raise ValueError(f"activation shape {act.shape} does not match the layer's in_shape {layer.in_shape}")
    return act


def accumulate(layer: QLayer, act: QAct) -> np.ndarray:
    """Accumulator values ``O`` before the output stage: (N,) for linear, (OH, OW, N) for conv.

    The plain integer path: ``O[n] = sum_k w[n,k] * a[k]`` with ``w = ±delta_w`` and ``a = ±delta_a``,
    which equals the segment form ``sum_j dw_j * da_j * (2*popcount_j - n_j)``.
    """
    act = check_input(layer, act)
    w = layer.weight_values()
    if layer.kind == "linear":
        o = w @ act.values()
    else:
        s, d = im2col(act, layer)
        o = (np.where(s, 1, -1) * d) @ w.T
        o = o.reshape(*layer.conv_out_hw, layer.out_features)
    assert np.abs(o).max(initial=0) <= layer.acc_bound, "accumulator bound violated"
    return o


def max_pool(o: np.ndarray, window: int) -> np.ndarray:
    """Non-overlapping max-pool of an (H, W, C) integer map."""
    if window == 1:
        return o
    h, w, c = o.shape
    return o.reshape(h // window, window, w // window, window, c).max(axis=(1, 3))


def run_layer(layer: QLayer, act: QAct, *, exponent: int = 0) -> QAct | np.ndarray:
    """Run one layer end to end: accumulate, ReLU, pool, requantize, binarize for the next layer.

    Returns the next layer's :class:`QAct` (with ``exponent`` recorded) or, for a final layer
    (``out_beta_a is None``), the requantized int64 outputs.
    """
    o = layer.requant.activate(accumulate(layer, act))
    if layer.kind == "conv2d":
        o = max_pool(o, layer.pool)
    y = layer.requant.scale(o)
    if layer.out_beta_a is None:
        return y
    return act_from_int(y, layer.out_beta_a, bits=layer.requant.saturate_bits, exponent=exponent)


def run_network(layers: Sequence[QLayer], act: QAct) -> np.ndarray:
    """Run layers in order; the last one must be final (``out_beta_a is None``)."""
    if not layers:
        raise ValueError("a network needs at least one layer")
    for i, layer in enumerate(layers):
        out = run_layer(layer, act)
        if i + 1 < len(layers):
            if not isinstance(out, QAct):
                raise ValueError(f"layer {i} is final (out_beta_a=None) but layer {i + 1} follows it")
            act = out
    if isinstance(out, QAct):
        raise ValueError("the last layer must be final (out_beta_a=None) and return integer outputs")
    return out
