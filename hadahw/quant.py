"""Float HadaNet quantization in PyTorch (arXiv:1905.10759, Sec. 3.1, Eqns 1-6).

Hadamard binarization replaces a tensor ``x`` by ``sign(x) * delta`` where ``delta`` is the mean of
``|x|`` over consecutive segments of ``beta`` elements (Eqns 1-4).  ``beta = 1`` is full precision,
``beta = "all"`` (or any ``beta`` >= the segmented length) is XNOR-Net's single scale.

Conventions shared with :mod:`hadahw.contract`:

* Segment ``j`` covers indices ``[j*beta, min((j+1)*beta, n))``; a short final segment is averaged
  over its own length ``n_j``.
* ``zero="positive"`` (the default) maps sign(0) to +1 as the hardware does
  (:data:`hadahw.contract.SIGN_ZERO_BIT`); ``zero="keep"`` is ``torch.sign`` (zeros stay zero), as in
  the paper's reference code.  Only exact zeros differ: ``"positive"`` gives them ``+delta_j``
  (what the hardware computes), ``"keep"`` gives 0.  Both leave a zero at ``beta = 1`` zero.
* Conv weights are segmented per output filter in ``(kh, kw, C)`` order, channel fastest (the
  hardware's im2col order); ``order="chw"`` gives the paper's row-major order.
* Conv activations are segmented along the channel axis of each pixel (``act_axis="channel"``, the
  hardware contract) or along the image width as in the paper's Eqn (3) (``act_axis="width"``).

The float model accepts any positive integer ``beta``; the hardware additionally needs powers of two
with ``beta_a <= beta_w``, which the lowering checks, not this module.
"""

from __future__ import annotations

from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .contract import check_beta

__all__ = [
    "Beta",
    "hada_segments",
    "hada_binarize",
    "hada_binarize_weight",
    "sign_ste",
    "SignSTEFn",
    "HadaBinarizeFn",
    "HadaLinear",
    "HadaConv2d",
    "hada_conv_block",
    "hada_linear_block",
]

#: A segment size: a positive integer or ``"all"`` (the whole extent of the segmented axis).
Beta = Union[int, Literal["all"]]

_ZERO_MODES = ("positive", "keep")


def _check_beta(beta, name: str) -> Beta:
    """``"all"`` or :func:`hadahw.contract.check_beta`'s int; one-line ValueError naming ``name``."""
    if isinstance(beta, str) and beta == "all":
        return "all"
    try:
        return check_beta(beta, name)
    except ValueError:
        # Reword so the message also mentions the float model's extra option.
        raise ValueError(f"{name} must be a positive integer or 'all', not {beta!r}") from None


def _check_zero(zero) -> str:
    if zero not in _ZERO_MODES:
        raise ValueError(f"zero must be 'positive' or 'keep', not {zero!r}")
    return zero


def _segment_size(beta: Beta, length: int) -> int:
    """Effective segment size along an axis of ``length`` (>= 1 so empty axes need no special case)."""
    if beta == "all":
        return max(length, 1)
    return max(min(beta, length), 1)


def _signs(x: torch.Tensor, zero: str) -> torch.Tensor:
    if zero == "keep":
        return torch.sign(x)
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def _seg_sum(t: torch.Tensor, b: int) -> torch.Tensor:
    """Sum over segments of ``b`` along the last axis; shape ``t.shape[:-1] + (segments,)``."""
    length = t.shape[-1]
    nseg = -(-length // b)
    pad = nseg * b - length
    if pad:
        t = F.pad(t, (0, pad))
    return t.reshape(*t.shape[:-1], nseg, b).sum(-1)


def _seg_lengths(length: int, b: int, like: torch.Tensor) -> torch.Tensor:
    nseg = -(-length // b)
    n = torch.full((nseg,), float(b), dtype=like.dtype, device=like.device)
    if nseg and length % b:
        n[-1] = length % b
    return n


def _expand(d: torch.Tensor, b: int, length: int) -> torch.Tensor:
    """Repeat each segment value ``b`` times along the last axis and cut to ``length``."""
    nseg = d.shape[-1]
    return d.unsqueeze(-1).expand(*d.shape, b).reshape(*d.shape[:-1], nseg * b)[..., :length]


def _segments_last(x: torch.Tensor, b: int, zero: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Signs and segment means of ``|x|`` along the last axis, segment size ``b`` (an int)."""
    length = x.shape[-1]
    delta = _seg_sum(x.abs(), b) / _seg_lengths(length, b, x)
    return _signs(x, zero), delta


def hada_segments(x: torch.Tensor, beta: Beta, dim: int = -1, *, zero: str = "positive"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``x`` into signs and per-segment mean magnitudes along ``dim`` (Eqns 1 and 3).

    Parameters
    ----------
    x : Tensor
        Floating-point input.
    beta : int >= 1 or "all"
        Segment size along ``dim``; values >= ``x.shape[dim]`` and ``"all"`` give one segment.
    dim : int
        Axis to segment.
    zero : {"positive", "keep"}
        Sign of an exact zero: +1 (hardware) or 0 (``torch.sign``).

    Returns
    -------
    signs : Tensor, same shape as ``x``
        ±1 (0 at zeros when ``zero="keep"``); constants for autograd.
    delta : Tensor
        ``x.shape`` with ``dim`` replaced by the number of segments ``ceil(n / beta)``; segment ``j``
        is the mean of ``|x|`` over its own ``n_j`` elements.  Differentiable by plain autograd.

    Raises
    ------
    ValueError
        Bad ``beta`` or ``zero``.
    """
    beta = _check_beta(beta, "beta")
    zero = _check_zero(zero)
    b = _segment_size(beta, x.shape[dim])
    signs, delta = _segments_last(x.movedim(dim, -1), b, zero)
    return signs.movedim(-1, dim), delta.movedim(-1, dim)


class HadaBinarizeFn(torch.autograd.Function):
    """Hadamard binarization along the last axis with the gradient of Eqn (6).

    ``apply(x, b, zero)`` with ``b`` an int segment size.  For element ``i`` of segment ``j``::

        dC/dx_i = sign(x_i)/n_j * sum_{k in j} g_k sign(x_k)  +  delta_j * g_i * 1{|x_i| <= 1}

    The first term is the exact derivative through ``delta`` (``n_j`` is the segment's own length,
    equal to Eqn (6)'s ``1/beta`` for full segments); the second is the STE of Eqn (5).
    ``sign`` follows ``zero`` in both terms.
    """

    @staticmethod
    def forward(ctx, x, b: int, zero: str):
        signs, delta = _segments_last(x, b, zero)
        ctx.b = b
        ctx.save_for_backward(x, signs, delta)
        return signs * _expand(delta, b, x.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, signs, delta = ctx.saved_tensors
        b, length = ctx.b, x.shape[-1]
        through_delta = _seg_sum(g * signs, b) / _seg_lengths(length, b, x)
        grad = signs * _expand(through_delta, b, length)
        grad = grad + _expand(delta, b, length) * g * (x.abs() <= 1).to(g.dtype)
        return grad, None, None


class SignSTEFn(torch.autograd.Function):
    """``sign(x)`` with the straight-through estimator of Eqn (5): ``dsign/dx = 1{|x| <= 1}``."""

    @staticmethod
    def forward(ctx, x, zero: str):
        ctx.save_for_backward(x)
        return _signs(x, zero)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype), None


def sign_ste(x: torch.Tensor, *, zero: str = "positive") -> torch.Tensor:
    """Binary ``sign(x)`` whose gradient is the STE of Eqn (5), ``g * 1{|x| <= 1}``.

    ``zero`` as in :func:`hada_segments`.
    """
    return SignSTEFn.apply(x, _check_zero(zero))


def hada_binarize(x: torch.Tensor, beta: Beta, dim: int = -1, *, zero: str = "positive") -> torch.Tensor:
    """Hadamard-binarize ``x`` along ``dim``: ``sign(x) * delta`` (Eqns 2 and 4).

    Parameters are those of :func:`hada_segments`.  The result has the shape of ``x``.
    When autograd is recording and ``x`` requires grad, the backward pass is Eqn (6)
    (:class:`HadaBinarizeFn`).

    ``beta = 1`` returns ``x`` itself (no copy, bitwise identical, identity gradient): a
    full-precision layer, not Eqn (6) evaluated at ``beta = 1``.

    Raises
    ------
    ValueError
        Bad ``beta`` or ``zero``.
    """
    beta = _check_beta(beta, "beta")
    zero = _check_zero(zero)
    if beta == 1:
        return x
    xt = x.movedim(dim, -1)
    b = _segment_size(beta, xt.shape[-1])
    if torch.is_grad_enabled() and x.requires_grad:
        out = HadaBinarizeFn.apply(xt, b, zero)
    else:
        signs, delta = _segments_last(xt, b, zero)
        out = signs * _expand(delta, b, xt.shape[-1])
    return out.movedim(-1, dim)


def _filter_rows(w: torch.Tensor, order: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``w`` as ``(N, K)`` rows in ``order`` and the intermediate shape needed to undo it."""
    if order == "hwc":
        # Channels (dim 1) last: (N, C, kh, kw) -> (N, kh, kw, C); a no-op for 2-D weights.
        w = w.movedim(1, -1)
    return w.reshape(w.shape[0], -1), tuple(w.shape)


def hada_binarize_weight(w: torch.Tensor, beta_w: Beta, *, order: str = "hwc",
                         zero: str = "positive") -> torch.Tensor:
    """Hadamard-binarize each output filter of a weight tensor (Eqns 1-2).

    Parameters
    ----------
    w : Tensor, shape (N, K) or (N, C, kh, kw)
        Linear or conv weight (any ``ndim >= 2``; dim 0 is the output filter, dim 1 the channel).
    beta_w : int >= 1 or "all"
        Segment size along each flattened filter; ``"all"`` is one scale per filter (XNOR-Net).
    order : {"hwc", "chw"}
        Flattening order of a filter: ``"hwc"`` puts the channel fastest, i.e. ``(kh, kw, C)``, the
        hardware's im2col order; ``"chw"`` is PyTorch's row-major ``(C, kh, kw)`` as in the paper.
        Irrelevant for 2-D weights.
    zero : {"positive", "keep"}
        As in :func:`hada_segments`.

    Returns
    -------
    Tensor
        Binarized weight in the original shape and layout; gradient as in :func:`hada_binarize`.

    Raises
    ------
    ValueError
        Bad ``beta_w``, ``order`` or ``zero``, or ``w.ndim < 2``.
    """
    beta_w = _check_beta(beta_w, "beta_w")
    if order not in ("hwc", "chw"):
        raise ValueError(f"order must be 'hwc' or 'chw', not {order!r}")
    zero = _check_zero(zero)
    if w.ndim < 2:
        raise ValueError(f"weight must have at least 2 dims (filters, inputs), got shape {tuple(w.shape)}")
    if beta_w == 1:
        return w
    rows, shape = _filter_rows(w, order)
    out = hada_binarize(rows, beta_w, -1, zero=zero).reshape(shape)
    return out.movedim(-1, 1) if order == "hwc" else out


class HadaLinear(nn.Linear):
    """Linear layer with Hadamard-binarized input features (``beta_a``) and weights (``beta_w``).

    ``beta = 1`` is full precision (first/last layers, and ``beta_a = 1`` for HBWN);
    ``beta = "all"`` is XNOR-Net (one scale per sample / per output neuron).  Binarization uses
    ``zero="positive"`` and the Eqn (6) gradient.

    Raises
    ------
    ValueError
        Bad ``beta_w`` or ``beta_a``.
    """

    def __init__(self, in_features: int, out_features: int, *, beta_w: Beta, beta_a: Beta,
                 bias: bool = False, device=None, dtype=None):
        beta_w = _check_beta(beta_w, "beta_w")
        beta_a = _check_beta(beta_a, "beta_a")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.beta_w = beta_w
        self.beta_a = beta_a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = hada_binarize(x, self.beta_a, -1)
        w = hada_binarize_weight(self.weight, self.beta_w)
        return F.linear(a, w, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta_w={self.beta_w!r}, beta_a={self.beta_a!r}"


class HadaConv2d(nn.Conv2d):
    """2-D convolution with Hadamard-binarized input activations and weights.

    Parameters
    ----------
    beta_w : int >= 1 or "all"
        Weight segment size along each filter flattened in ``(kh, kw, C)`` order.
    beta_a : int >= 1 or "all"
        Activation segment size; ``"all"`` is one scale per sample over all ``C*H*W`` inputs.
    act_axis : {"channel", "width"}
        Axis along which activation segments run: the channels of each pixel (hardware contract;
        needs ``in_channels % beta_a == 0`` unless ``beta_a`` is 1 or ``"all"``), or the image
        width as in the paper's Eqn (3).

    Input is NCHW (or unbatched CHW).  Zero padding is applied after binarization, so a padded
    pixel is 0, like the hardware's all-zero-delta pixel.

    Raises
    ------
    ValueError
        Bad ``beta_w``, ``beta_a`` or ``act_axis``, or ``in_channels`` not a multiple of ``beta_a``
        with ``act_axis="channel"``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1, padding=0,
                 beta_w: Beta, beta_a: Beta, bias: bool = False, act_axis: str = "channel",
                 device=None, dtype=None):
        beta_w = _check_beta(beta_w, "beta_w")
        beta_a = _check_beta(beta_a, "beta_a")
        if act_axis not in ("channel", "width"):
            raise ValueError(f"act_axis must be 'channel' or 'width', not {act_axis!r}")
        if act_axis == "channel" and beta_a != "all" and in_channels % beta_a:
            raise ValueError(f"beta_a={beta_a} must divide in_channels={in_channels} when act_axis='channel'")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         bias=bias, device=device, dtype=dtype)
        self.beta_w = beta_w
        self.beta_a = beta_a
        self.act_axis = act_axis

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The activations this layer convolves: ``x`` binarized with ``beta_a``."""
        if self.beta_a == "all":
            return hada_binarize(x.flatten(-3), "all", -1).reshape(x.shape)
        return hada_binarize(x, self.beta_a, -3 if self.act_axis == "channel" else -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.binarize_input(x), hada_binarize_weight(self.weight, self.beta_w),
                                  self.bias)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, beta_w={self.beta_w!r}, beta_a={self.beta_a!r}, "
                f"act_axis={self.act_axis!r}")


def _activation(activation):
    if activation == "relu":
        return [nn.ReLU()]
    if activation is None:
        return []
    raise ValueError(f"activation must be 'relu' or None, not {activation!r}")


def hada_conv_block(in_ch: int, out_ch: int, kernel, *, beta_w: Beta, beta_a: Beta, stride=1,
                    padding=0, pool: int = 1, activation: str | None = "relu", bias: bool = False,
                    act_axis: str = "channel") -> nn.Sequential:
    """The paper's layer order: BatchNorm → binarize → conv → activation → pool (Sec. 4).

    Binarization happens inside :class:`HadaConv2d`.  The paper keeps the first and last layer of a
    network at full precision: pass ``beta_w=1, beta_a=1`` there.

    Returns
    -------
    nn.Sequential
        ``BatchNorm2d(in_ch), HadaConv2d, [ReLU], [MaxPool2d(pool)]``; ReLU is left out for
        ``activation=None``, the pool for ``pool == 1``.
    """
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be a positive integer, not {pool!r}")
    layers = [nn.BatchNorm2d(in_ch),
              HadaConv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, beta_w=beta_w,
                         beta_a=beta_a, bias=bias, act_axis=act_axis),
              *_activation(activation)]
    if pool > 1:
        layers.append(nn.MaxPool2d(pool))
    return nn.Sequential(*layers)


def hada_linear_block(in_f: int, out_f: int, *, beta_w: Beta, beta_a: Beta,
                      activation: str | None = "relu", bias: bool = False) -> nn.Sequential:
    """BatchNorm1d → binarize → linear → activation.

    For a network's last layer use ``activation=None`` and ``beta_w=beta_a=1`` (full precision).

    Returns
    -------
    nn.Sequential
        ``BatchNorm1d(in_f), HadaLinear, [ReLU]``.
    """
    return nn.Sequential(nn.BatchNorm1d(in_f),
                         HadaLinear(in_f, out_f, beta_w=beta_w, beta_a=beta_a, bias=bias),
                         *_activation(activation))
