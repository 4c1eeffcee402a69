"""Lowering a trained float HadaNet to the integer golden model (a list of :class:`QLayer`).

:func:`lower_network` walks the model's leaf modules and groups them into *units*, one per weight
layer, each ``[BatchNorm] [Flatten] HadaConv2d|HadaLinear [ReLU] [MaxPool2d]`` (the paper's
"BN -> binarize -> conv -> activation -> pool"; ReLU and max-pool may come in either order, they
commute).  Unit ``i`` becomes one :class:`~hadahw.golden.QLayer`:

* weights: :func:`hadahw.lower.quantize_weights` of the rows (conv rows in (ky, kx, c) order via
  :func:`hadahw.lower.conv_weight_to_rows`; a linear layer behind a ``Flatten`` of a conv map gets
  its columns permuted from PyTorch's CHW order to the hardware's HWC order);
* the output stage folds the **next** unit's BatchNorm (eval mode, running statistics)
  ``y = s * x + b`` with :func:`hadahw.lower.fold_requant`, in the contract's order
  ReLU -> max-pool -> affine -> saturate to ``act_bits``; ``out_beta_a`` is the next layer's
  ``beta_a``;
* the last unit is final (``out_beta_a=None``, no saturation); its bias is folded into the
  requant bias, and its logits are in units of ``2**logit_exponent`` (the accumulator's scale).

Activation exponents come from calibration: the float model is run on ``calib_x`` and the range
of the values entering each weight layer (after its BatchNorm, before binarization) fixes that
layer's input exponent (:func:`hadahw.lower.activation_exponent`).  The range is the 99.99th
percentile of ``|value|`` by default, ``calib_percentile=100`` is the plain maximum (nothing in
the calibration data saturates).  Why not the maximum: after a BatchNorm a nearly-always-zero
channel produces rare values of 30-50 standard units, and with a power-of-two exponent the maximum
rule then spends two of the eight bits on them.  On the digits networks the two defaults together
(this one and sign-exact rounding below) take the integer model from up to 2 points below the
float model to within one test image of it (``bench/digits_table.py``, columns "golden" and
"golden, plain").  The network input exponent comes from the raw input the same way ([0, 1] pixels:
-7, lossless for ``pixel/16``).

Sign-exact rounding (``sign_exact=True``, the default)
    Where a layer feeds a binarized layer (``beta_a > 1``), its output stage rounds *down*
    (:func:`_floor_requant`: the contract's rounding term is cancelled in the bias), so that an
    activation in ``(-LSB/2, 0)`` stays negative instead of becoming 0, i.e. +1.  A flipped sign
    costs ``2 * delta_a`` of its segment, far more than the half LSB that round-half-up saves;
    where ``beta_a = 1`` the sign of a tiny value costs at most an LSB and round-half-up is kept.

Max-pool and the BatchNorm sign
    ``maxpool(s * x) = s * maxpool(x)`` only for ``s >= 0``; for a channel with a negative folded
    scale it is ``s * minpool(x)``.  No correction is needed here because both models apply the
    affine *after* the pool: in the float model the BatchNorm that follows a pooled layer belongs
    to the next block (BN -> binarize -> conv -> ReLU -> pool -> | BN -> ...), and the integer
    output stage is ReLU -> max-pool -> affine.  What would be wrong is folding the BatchNorm in
    front of the pool; :func:`float_reference_check` (and the tests) verify the order per layer,
    with negative BatchNorm scales.

Constraints (one-line ``ValueError`` otherwise): no BatchNorm in front of the first layer; no bias
on a layer followed by ReLU (the requantizer applies ReLU to the raw accumulator); conv
activation segments along channels (``act_axis="channel"``); ``beta_a = "all"`` on a conv layer
(XNOR-Net's per-sample scale over ``C*H*W``) is float-only; ``beta_w = "all"`` becomes the next
power of two >= the fan-in; a linear layer behind a Flatten of a conv map needs ``beta_w = beta_a
= 1`` (its float segments would run in CHW order); BatchNorm must be per channel of the layer it
follows.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .contract import DeltaFormat, Requant, check_beta
from .golden import QAct, QLayer, accumulate, act_from_int, im2col, max_pool, run_network
from .lower import activation_exponent, conv_weight_to_rows, fold_requant, quantize_input, quantize_weights
from .quant import HadaConv2d, HadaLinear

__all__ = ["Unit", "LoweredNet", "parse_units", "calibrate", "lower_network", "lower_network_full",
           "golden_predict", "golden_trace", "float_reference_check", "weight_bytes"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_IGNORED = (nn.Identity, nn.Dropout)


@dataclasses.dataclass
class Unit:
    """One weight layer of a float model with the modules around it."""

    layer: nn.Module
    bn: nn.Module | None = None
    flatten: bool = False
    relu: bool = False
    pool: int = 1


def _mname(m: nn.Module) -> str:
    return type(m).__name__


def parse_units(model: nn.Module) -> list[Unit]:
    """Group the model's leaf modules (registration order = forward order) into :class:`Unit` s."""
    units: list[Unit] = []
    pre_bn, pre_flatten = None, False
    for m in model.modules():
        if any(True for _ in m.children()):
            continue
        if isinstance(m, _IGNORED):
            continue
        if isinstance(m, _BN):
            if pre_bn is not None:
                raise ValueError("two BatchNorms in a row cannot be lowered")
            if pre_flatten:
                raise ValueError("a BatchNorm after a Flatten is per feature, not per channel; put it before the Flatten")
            pre_bn = m
        elif isinstance(m, nn.Flatten):
            pre_flatten = True
        elif isinstance(m, (HadaConv2d, HadaLinear)):
            units.append(Unit(m, pre_bn, pre_flatten))
            pre_bn, pre_flatten = None, False
        elif isinstance(m, nn.ReLU):
            if not units or pre_bn is not None or pre_flatten or units[-1].relu:
                raise ValueError("a ReLU must directly follow a weight layer (or its pool)")
            units[-1].relu = True
        elif isinstance(m, nn.MaxPool2d):
            if not units or pre_bn is not None or pre_flatten or units[-1].pool != 1:
                raise ValueError("a MaxPool2d must directly follow a weight layer (or its ReLU)")
            k, s = m.kernel_size, m.stride
            if (not isinstance(k, int) or (s is not None and s != k) or m.padding != 0 or m.dilation != 1
                    or m.ceil_mode):
                raise ValueError(f"only square non-overlapping max-pools are supported, not {m}")
            if not isinstance(units[-1].layer, HadaConv2d):
                raise ValueError("max-pooling is supported after conv layers only")
            units[-1].pool = int(k)
        else:
            raise ValueError(f"cannot lower module {_mname(m)} (supported: BatchNorm, Flatten, HadaConv2d, "
                             "HadaLinear, ReLU, MaxPool2d)")
    if not units:
        raise ValueError("the model has no HadaConv2d/HadaLinear layer")
    if pre_bn is not None or pre_flatten:
        raise ValueError("the model ends with a BatchNorm/Flatten after its last weight layer")
    if units[0].bn is not None:
        raise ValueError("the first layer must not have a BatchNorm in front (it cannot be folded into the input)")
    return units


@torch.no_grad()
def calibrate(model: nn.Module, calib_x, units: Sequence[Unit] | None = None, batch_size: int = 512,
              percentile: float = 100.0) -> tuple[list[float], list[tuple[int, ...]]]:
    """Range of every weight layer's input over ``calib_x`` and the input shape (no batch).

    The range is the largest ``|value|`` (``percentile=100``) or that percentile of all
    ``|value|`` (values above it will saturate in the integer model).
    """
    units = parse_units(model) if units is None else units
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise ValueError(f"percentile must be a number in (0, 100], not {percentile!r}")
    x = torch.as_tensor(np.asarray(calib_x), dtype=torch.float32)
    maxes = [0.0] * len(units)
    values: list[list[np.ndarray]] = [[] for _ in units]
    shapes: list = [None] * len(units)

    def hook(i):
        def fn(_mod, args):
            a = args[0].detach().abs()
            maxes[i] = max(maxes[i], float(a.max()) if a.numel() else 0.0)
            if percentile < 100:
                values[i].append(a.reshape(-1).numpy().astype(np.float64))
            shapes[i] = tuple(a.shape[1:])
        return fn

    was_training = model.training
    model.eval()
    handles = [u.layer.register_forward_pre_hook(hook(i)) for i, u in enumerate(units)]
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if any(s is None for s in shapes):
        raise ValueError("calibration data is empty or does not reach every layer")
    if percentile < 100:
        maxes = [float(np.percentile(np.concatenate(v), percentile)) for v in values]
    return maxes, shapes


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _bn_affine(bn: nn.Module, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as ``y = s * x + b`` per channel (float64)."""
    if bn.num_features != channels:
        raise ValueError(f"BatchNorm has {bn.num_features} channels but the layer before it has {channels}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    mean = bn.running_mean.detach().double().numpy()
    var = bn.running_var.detach().double().numpy()
    gamma = bn.weight.detach().double().numpy() if bn.weight is not None else np.ones(channels)
    beta = bn.bias.detach().double().numpy() if bn.bias is not None else np.zeros(channels)
    s = gamma / np.sqrt(var + bn.eps)
    return s, beta - mean * s


@dataclasses.dataclass
class LoweredNet:
    """Result of :func:`lower_network_full`.

    ``act_exponents[i]`` is the exponent of layer ``i``'s input (``act_exponents[0] ==
    input_exponent``); real logits are ``golden_predict(...) * 2**logit_exponent``.
    """

    layers: list[QLayer]
    input_exponent: int
    act_exponents: list[int]
    logit_exponent: int
    units: list[Unit] = dataclasses.field(repr=False, default_factory=list)
    calib_max: list[float] = dataclasses.field(default_factory=list)
    floored: list[bool] = dataclasses.field(default_factory=list)  #: layers whose output stage rounds down

    def predict(self, x) -> np.ndarray:
        return golden_predict(self.layers, self.input_exponent, x)

    def logits(self, x) -> np.ndarray:
        return self.predict(x) * 2.0 ** self.logit_exponent


def _floor_requant(q: Requant) -> Requant:
    """The same stage rounding down: ``B - 2**(S-1)`` cancels the contract's rounding term.

    ``y = floor((O*M + B) / 2**S)`` is ``>= 0`` exactly when ``O*M + B >= 0``, so the next
    binarizer sees the float sign of every activation (round-half-up would turn values in
    ``(-LSB/2, 0)`` into 0, i.e. +1).  The magnitude error grows from half an LSB to one LSB.
    """
    return dataclasses.replace(q, bias=q.bias - (1 << (q.shift - 1)))


def _resolve_beta_w(unit: Unit, k: int) -> int:
    bw = unit.layer.beta_w
    return _next_pow2(k) if bw == "all" else check_beta(bw, "beta_w", power_of_two=True)


def _resolve_beta_a(unit: Unit, k: int, in_shape: tuple[int, ...], idx: int) -> int:
    layer, ba = unit.layer, unit.layer.beta_a
    if isinstance(layer, HadaConv2d):
        if ba == "all":
            raise ValueError(f"layer {idx}: beta_a='all' on a conv layer (one scale over C*H*W per sample) is "
                             "float-only; the hardware binarizer segments each pixel's channels "
                             "(use beta_a=in_channels, variant xnor-hw)")
        ba = check_beta(ba, "beta_a", power_of_two=True)
        if ba > 1 and layer.act_axis != "channel":
            raise ValueError(f"layer {idx}: activation segments must run along channels (act_axis='channel')")
        return ba
    if ba == "all":
        return _next_pow2(k)
    return check_beta(ba, "beta_a", power_of_two=True)


def _unit_geometry(i: int, u: Unit, shape: tuple[int, ...], prev_out: tuple[int, ...] | None):
    """Weight rows (float64, hardware order), in_shape and conv geometry of unit ``i``."""
    mod = u.layer
    if isinstance(mod, HadaConv2d):
        if mod.groups != 1 or mod.dilation != (1, 1) or mod.padding_mode != "zeros":
            raise ValueError(f"layer {i}: only groups=1, dilation=1, zero-padded convs are supported")
        k, s, p = mod.kernel_size, mod.stride, mod.padding
        if k[0] != k[1] or s[0] != s[1] or isinstance(p, str) or p[0] != p[1]:
            raise ValueError(f"layer {i}: only square kernels, strides and paddings are supported")
        c, h, w = shape
        rows = conv_weight_to_rows(mod.weight.detach().double().numpy())
        return rows, (h, w, c), dict(kernel=k[0], stride=s[0], padding=p[0], pool=u.pool)
    rows = mod.weight.detach().double().numpy()
    kdim = rows.shape[1]
    if u.flatten and prev_out is not None and len(prev_out) == 3:
        ph, pw, pc = prev_out
        if ph * pw * pc != kdim:
            raise ValueError(f"layer {i}: {kdim} inputs but the previous map is {ph}x{pw}x{pc}")
        if ph * pw > 1 and (mod.beta_w != 1 or mod.beta_a != 1):
            raise ValueError(f"layer {i}: a linear layer behind a Flatten of a conv map needs beta_w = "
                             "beta_a = 1 (float segments run in CHW order, hardware ones in HWC order)")
        # PyTorch flattens CHW; the hardware's QAct.flatten is HWC.
        rows = rows.reshape(-1, pc, ph, pw).transpose(0, 2, 3, 1).reshape(rows.shape[0], -1)
    return rows, (kdim,), {}


def lower_network_full(model: nn.Module, calib_x, *, act_bits: int = 8,
                       weight_format: DeltaFormat = DeltaFormat(), mult_bits: int = 16,
                       calib_percentile: float = 99.99, sign_exact: bool = True) -> LoweredNet:
    """Lower ``model`` (see the module doc) and return a :class:`LoweredNet`.

    Parameters
    ----------
    model
        A float network of :mod:`hadahw.quant` layers (e.g. :func:`hadahw.nets.build_model`);
        BatchNorms are used in eval mode.  The model is not modified.
    calib_x
        Calibration inputs, shaped as the model expects (e.g. the training images).
    act_bits
        Bits of activation delta codes (and of every requantized activation).
    weight_format
        Code format of the weight deltas.
    mult_bits
        Width of the signed requant multiplier (:func:`hadahw.lower.fold_requant`).
    calib_percentile
        Activation range per layer: 100 = the largest ``|value|`` on ``calib_x`` (nothing
        saturates there); the default 99.99 ignores the rare outliers that would otherwise cost
        a bit of resolution for every other value (see :func:`calibrate`).
    sign_exact
        Round the requantized activations *down* where they feed a layer with ``beta_a > 1``
        (:func:`_floor_requant`) so that no activation changes sign; ``False`` keeps the
        contract's round-half-up everywhere.
    """
    units = parse_units(model)
    maxes, shapes = calibrate(model, calib_x, units, percentile=calib_percentile)
    exps = [activation_exponent(m, act_bits) for m in maxes]
    # Pass 1: geometry and betas of every unit.
    geo = []
    prev_out: tuple[int, ...] | None = None
    for i, u in enumerate(units):
        rows, in_shape, g = _unit_geometry(i, u, shapes[i], prev_out)
        if prev_out is not None and math.prod(prev_out) != math.prod(in_shape):
            raise ValueError(f"layer {i}: input shape {in_shape} does not match the previous output {prev_out}")
        bw = _resolve_beta_w(u, rows.shape[1])
        ba = _resolve_beta_a(u, rows.shape[1], in_shape, i)
        if ba > bw:
            raise ValueError(f"layer {i}: beta_a must not exceed beta_w (segments must nest), got beta_a={ba} > "
                             f"beta_w={bw}")
        if g:
            h, w, _ = in_shape
            oh = (h + 2 * g["padding"] - g["kernel"]) // g["stride"] + 1
            ow = (w + 2 * g["padding"] - g["kernel"]) // g["stride"] + 1
            prev_out = (oh // u.pool, ow // u.pool, rows.shape[0])
        else:
            prev_out = (rows.shape[0],)
        geo.append((rows, in_shape, g, bw, ba, prev_out))
    # Pass 2: quantize weights and fold the output stages.
    layers: list[QLayer] = []
    floored: list[bool] = []
    logit_exponent = 0
    for i, (u, (rows, in_shape, g, bw, ba, out_shape)) in enumerate(zip(units, geo)):
        mod = u.layer
        last = i + 1 == len(units)
        signs, codes, ew = quantize_weights(rows, bw, weight_format)
        acc_e = ew + exps[i]
        n_out = rows.shape[0]
        bias = None if mod.bias is None else mod.bias.detach().double().numpy()
        if bias is not None and u.relu:
            raise ValueError(f"layer {i}: a bias in front of ReLU cannot be folded (the requantizer applies ReLU "
                             "to the raw accumulator); train without it")
        if last:
            requant = fold_requant(np.ones(n_out), np.zeros(n_out) if bias is None else bias, acc_exponent=acc_e,
                                   out_exponent=None, relu=u.relu, out_bits=None, mult_bits=mult_bits)
            out_ba = None
            logit_exponent = acc_e
        else:
            nxt = units[i + 1]
            if nxt.bn is not None:
                sc, sh = _bn_affine(nxt.bn, n_out)
            else:
                sc, sh = np.ones(n_out), np.zeros(n_out)
            if bias is not None:  # no ReLU here: max-pool(O + c) = max-pool(O) + c, then the affine
                sh = sh + sc * bias
            requant = fold_requant(sc, sh, acc_exponent=acc_e, out_exponent=exps[i + 1], relu=u.relu,
                                   out_bits=act_bits, mult_bits=mult_bits)
            out_ba = geo[i + 1][4]
            if sign_exact and out_ba > 1 and requant.shift:
                requant = _floor_requant(requant)
        floored.append(bool(sign_exact and out_ba is not None and out_ba > 1 and requant.shift))
        layers.append(QLayer(kind="conv2d" if g else "linear", weight_signs=signs, weight_delta=codes,
                             weight_format=weight_format, weight_exponent=ew, beta_w=bw, beta_a=ba,
                             in_shape=in_shape, requant=requant, act_bits=act_bits, out_beta_a=out_ba,
                             name=f"layer{i}", **g))
        assert layers[-1].out_shape == out_shape, "shape bookkeeping"
    return LoweredNet(layers=layers, input_exponent=exps[0], act_exponents=exps, logit_exponent=logit_exponent,
                      units=units, calib_max=maxes, floored=floored)


def lower_network(model: nn.Module, calib_x, *, act_bits: int = 8, weight_format: DeltaFormat = DeltaFormat(),
                  **kwargs) -> tuple[list[QLayer], int]:
    """``(layers, input_exponent)`` of :func:`lower_network_full` (same keyword arguments)."""
    net = lower_network_full(model, calib_x, act_bits=act_bits, weight_format=weight_format, **kwargs)
    return net.layers, net.input_exponent


def _input_act(layers: Sequence[QLayer], input_exponent: int, sample: np.ndarray) -> QAct:
    first = layers[0]
    if first.kind == "conv2d":
        h, w, c = first.in_shape
        if sample.size != h * w * c:
            raise ValueError(f"input sample has {sample.size} values, the first layer expects {h}x{w}x{c}")
        x = sample.reshape(c, h, w).transpose(1, 2, 0)  # CHW -> HWC (channels last)
    else:
        if sample.size != first.in_shape[0]:
            raise ValueError(f"input sample has {sample.size} values, the first layer expects {first.in_shape[0]}")
        x = sample.reshape(-1)
    return quantize_input(x, first.beta_a, bits=first.act_bits, exponent=input_exponent)


def golden_predict(layers: Sequence[QLayer], input_exponent: int, x) -> np.ndarray:
    """Integer logits ``(N, classes)`` of the golden model for a batch ``x`` (NCHW or (N, K), real).

    Each sample is quantized with :func:`hadahw.lower.quantize_input` at ``input_exponent`` (channels
    last) and run through :func:`hadahw.golden.run_network`.
    """
    x = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (N, ...), got shape {x.shape}")
    return np.stack([run_network(layers, _input_act(layers, input_exponent, s)) for s in x]) if len(x) else \
        np.zeros((0, layers[-1].out_features), np.int64)


@dataclasses.dataclass
class LayerTrace:
    """What one golden layer saw and produced for one sample (integers)."""

    act: QAct          #: input activation
    acc: np.ndarray    #: accumulator O
    pooled: np.ndarray  #: ReLU and max-pool of O
    y: np.ndarray      #: requantized output (before the next layer's binarizer; logits if final)


def golden_trace(layers: Sequence[QLayer], input_exponent: int, sample) -> list[LayerTrace]:
    """Run one sample through the golden model keeping every layer's intermediates.

    The same steps as :func:`hadahw.golden.run_layer`; the final ``y`` equals ``run_network``'s output.
    """
    sample = np.asarray(sample, dtype=np.float64)
    act = _input_act(layers, input_exponent, sample)
    out = []
    for layer in layers:
        o = accumulate(layer, act)
        p = layer.requant.activate(o)
        if layer.kind == "conv2d":
            p = max_pool(p, layer.pool)
        y = layer.requant.scale(p)
        out.append(LayerTrace(act, o, p, y))
        if layer.out_beta_a is not None:
            act = act_from_int(y, layer.out_beta_a, bits=layer.requant.saturate_bits)
    return out


def _acc_bound(layer: QLayer, a_real: np.ndarray, e_a: int) -> np.ndarray:
    """Bound on ``|O_float - O * 2**(e_w+e_a)|`` when the float layer binarizes exactly ``a_real``.

    Float activation ``a_k = sign * mean|a|`` and the golden ``da_k * 2**e_a`` share signs (both
    map 0 to +1) and differ by at most half an LSB (round-half-up mean of integers); float and
    golden weight deltas differ by at most half a weight LSB (no saturation by construction).
    Hence ``|sum w a - sum wq aq| <= 2**e_w/2 * sum|a_k| + 2**e_a/2 * sum_{k not padding} |wq_k|``.
    """
    ew = layer.weight_exponent
    wq = np.abs(layer.weight_values()) * 2.0 ** ew  # (N, K)
    ba = layer.beta_a
    if layer.kind == "linear":
        a = np.abs(a_real.reshape(-1))
        seg = np.add.reduceat(a, np.arange(0, a.size, ba)) / _seglen(a.size, ba)
        a_abs = np.repeat(seg, ba)[: a.size]
        return 2.0 ** ew / 2 * a_abs.sum() + 2.0 ** e_a / 2 * wq.sum(axis=1)
    h, w, c = layer.in_shape
    a = np.abs(a_real)
    seg = np.add.reduceat(a, np.arange(0, c, ba), axis=-1) / _seglen(c, ba)
    a_abs = np.repeat(seg, ba, axis=-1)[..., :c]
    ones = QAct(signs=np.ones((h, w, c), bool), delta=np.ones((h, w, -(-c // ba)), np.int64), beta_a=ba,
                bits=layer.act_bits)
    _, mask = im2col(ones, layer)  # 1 inside the image, 0 on padding
    # patches of |a| in (ky, kx, c) order, like golden.im2col
    k, s, p = layer.kernel, layer.stride, layer.padding
    padded = np.pad(a_abs, ((p, p), (p, p), (0, 0)))
    oh, ow = layer.conv_out_hw
    rows = (np.arange(oh) * s)[:, None] + np.arange(k)[None, :]
    cols = (np.arange(ow) * s)[:, None] + np.arange(k)[None, :]
    patches = padded[rows[:, None, :, None], cols[None, :, None, :]].reshape(oh * ow, -1)
    bound = 2.0 ** ew / 2 * patches.sum(axis=1, keepdims=True) + 2.0 ** e_a / 2 * (mask @ wq.T)
    return bound.reshape(oh, ow, -1)


def _seglen(length: int, beta: int) -> np.ndarray:
    n = np.full(-(-length // beta), beta, dtype=np.float64)
    if length % beta:
        n[-1] = length % beta
    return n


@torch.no_grad()
def float_reference_check(net: LoweredNet, sample) -> list[dict]:
    """Compare every golden layer with its float unit fed the *same* (dequantized) input.

    For layer ``i`` the float unit (binarize -> conv/linear -> ReLU -> max-pool -> next BatchNorm,
    in float64) runs on the golden's own input values, so the only differences are the
    quantization of deltas and of the output stage; each is bounded:

    * accumulator: :func:`_acc_bound` (``e``);
    * output stage, in output LSBs: ``0.5`` (round half up; ``1`` where the stage rounds down,
      see ``sign_exact``) ``+ (|P| + 1) / 2**(S+1)`` (multiplier and bias rounding)
      ``+ |s| * max_window(e) / 2**e_out`` (ReLU and max-pool are 1-Lipschitz);
    * final layer: ``e + (1/2 + 2**-(S+1)) * 2**logit_exponent``.

    Elements the golden saturated are not compared.  Returns one dict per layer with
    ``max_error`` and ``max_ratio`` (largest error / bound, <= 1 means within the bound; real
    units), the same for the accumulator (``acc_max_error``, ``acc_max_ratio``), ``saturated``
    and ``sign_mismatch`` (outputs whose sign differs from the float unit's).
    """
    sample = np.asarray(sample, dtype=np.float64)
    trace = golden_trace(net.layers, net.input_exponent, sample)
    report = []
    for i, (layer, unit, t) in enumerate(zip(net.layers, net.units, trace)):
        e_a = net.act_exponents[i]
        if i == 0:
            a_real = _input_act(net.layers, net.input_exponent, sample).values() * 2.0 ** e_a
        else:
            a_real = trace[i - 1].y * 2.0 ** e_a  # what the previous golden layer handed over
        mod = copy.deepcopy(unit.layer).double()
        mod.bias = None
        if layer.kind == "conv2d":
            o = mod(torch.from_numpy(a_real.transpose(2, 0, 1).copy())[None])
        else:
            if unit.flatten and i > 0 and len(net.layers[i - 1].out_shape) == 3:
                ph, pw, pc = net.layers[i - 1].out_shape
                a_in = a_real.reshape(ph, pw, pc).transpose(2, 0, 1).reshape(-1)  # HWC -> CHW for torch
            else:
                a_in = a_real.reshape(-1)
            o = mod(torch.from_numpy(a_in.copy())[None])
        acc_real = t.acc * 2.0 ** (layer.weight_exponent + e_a)
        acc_b = _acc_bound(layer, a_real, e_a)
        o_f = o[0].permute(1, 2, 0) if layer.kind == "conv2d" else o[0]  # HWC for conv
        if unit.layer.bias is not None:  # (never in front of a ReLU: the lowering rejects that)
            o_f = o_f + unit.layer.bias.detach().double()
        if unit.relu:
            o_f = torch.relu(o_f)
        if layer.kind == "conv2d" and layer.pool > 1:
            o_f = torch.nn.functional.max_pool2d(o_f.permute(2, 0, 1)[None], layer.pool)[0].permute(1, 2, 0)
            acc_b = max_pool(acc_b, layer.pool)
        q = layer.requant
        final = layer.out_beta_a is None
        if final:
            y_f = o_f.numpy()
            e_out = net.logit_exponent
            bound = acc_b + (0.5 + 0.5 * 2.0 ** -q.shift) * 2.0 ** e_out
            valid = np.ones(y_f.shape, bool)
        else:
            nxt = net.units[i + 1]
            if nxt.bn is not None:
                bn = copy.deepcopy(nxt.bn).double().eval()
                y_f = (bn(o_f.permute(2, 0, 1)[None])[0].permute(1, 2, 0) if layer.kind == "conv2d"
                       else bn(o_f[None])[0])
                sc, _ = _bn_affine(nxt.bn, layer.out_features)
            else:
                y_f, sc = o_f, np.ones(layer.out_features)
            y_f = y_f.numpy()
            e_out = net.act_exponents[i + 1]
            rounding = 1.0 if net.floored[i] else 0.5  # floor vs round half up
            bound = (rounding + (np.abs(t.pooled) + 1) * 0.5 * 2.0 ** -q.shift) * 2.0 ** e_out + np.abs(sc) * acc_b
            valid = np.abs(t.y) < q.y_max
        y_g = t.y * 2.0 ** e_out
        err = np.abs(y_g - y_f)
        acc_err = np.abs(acc_real - (o[0].permute(1, 2, 0).numpy() if layer.kind == "conv2d" else o[0].numpy()))
        report.append({
            "layer": i,
            "kind": layer.kind,
            "acc_max_error": float(acc_err.max()),
            "acc_max_ratio": float((acc_err / _acc_bound(layer, a_real, e_a)).max()),
            "max_error": float(err[valid].max(initial=0.0)),
            "max_ratio": float((err / bound)[valid].max(initial=0.0)),
            "saturated": int((~valid).sum()),
            # activations whose sign the golden model changed (what the next binarizer sees)
            "sign_mismatch": 0 if final else int(((y_f >= 0) != (t.y >= 0)).sum()),
        })
    return report


def weight_bytes(layers: Sequence[QLayer], *, requant_bits: int = 32) -> dict:
    """Bytes of a lowered network's parameters as the integer model holds them (own accounting).

    Per layer: ``N*K`` sign bits + ``N*ceil(K/beta_w)`` delta codes of ``weight_format.bits`` bits
    + ``N`` requant multipliers and ``N`` biases of ``requant_bits`` bits each (the folded
    BatchNorm, or the last layer's bias); every layer rounded up to whole bytes.  Returns
    ``{"weights": signs+deltas bytes, "requant": bytes, "total": bytes, "per_layer": [...]}``.
    """
    per_layer = []
    for l in layers:
        n, k = l.weight_signs.shape
        wbits = n * k + l.weight_delta.size * l.weight_format.bits
        rbits = 2 * n * requant_bits
        per_layer.append({"name": l.name, "weights": -(-wbits // 8), "requant": -(-rbits // 8),
                          "total": -(-(wbits + rbits) // 8)})
    return {"weights": sum(p["weights"] for p in per_layer), "requant": sum(p["requant"] for p in per_layer),
            "total": sum(p["total"] for p in per_layer), "per_layer": per_layer}
