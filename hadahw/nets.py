"""The two 8x8 "digits" HadaNets of this project, built from :mod:`hadahw.quant`'s blocks.

Networks (``build_model(name, beta_w, beta_a)``; input ``(N, 1, 8, 8)`` or ``(N, 64)`` in [0, 1])::

    digits-mlp   flatten 64 -> [HadaLinear 64->256, beta=1] -> ReLU                      (first)
                 -> [BN1d 256 -> HadaLinear 256->256 (beta_w, beta_a) -> ReLU]           (hada_linear_block)
                 -> [BN1d 256 -> HadaLinear 256->10 + bias, beta=1]                      (last)

    digits-cnn   [HadaConv 1->32 3x3 pad 1, beta=1] -> ReLU                              (first, 8x8)
                 -> [BN2d 32 -> HadaConv 32->64 3x3 pad 1 -> ReLU -> maxpool 2]          (hada_conv_block, 4x4)
                 -> [BN2d 64 -> HadaConv 64->64 3x3 pad 1 -> ReLU -> maxpool 2]          (hada_conv_block, 2x2)
                 -> [BN2d 64 -> flatten -> HadaLinear 256->10 + bias, beta=1]             (last)

The layer order inside a binarized block is the paper's (Sec. 5): BatchNorm -> binarize -> conv
-> activation -> pool.  The first and the last weight layer keep ``beta_w = beta_a = 1``.

Choices forced by the integer contract (:mod:`hadahw.contract`), and why:

* **No BatchNorm in front of the first layer.**  Inputs are fixed-scaled to [0, 1]
  (``pixel / 16``); a BatchNorm on the raw input would have to be folded into the host's input
  quantizer, which is a pure power-of-two scale, and with zero padding its shift would not be a
  per-channel constant at the image border.
* **No bias on a layer followed by ReLU.**  The requantizer applies ReLU to the raw accumulator
  ``O`` *before* its affine ``O*M + B``, so only a bias after the activation (i.e. the next
  block's BatchNorm shift) can be folded.  The last layer has no ReLU and keeps its bias.
* **The CNN's last BatchNorm is ``BatchNorm2d(64)`` before the flatten,** not ``BatchNorm1d(256)``
  after it: the requantizer of the conv layer that feeds it is per *channel*, so only a
  per-channel BN can be folded into it.
* **Conv activation segments run along the channels of a pixel** (``act_axis="channel"``), so
  ``in_channels % beta_a == 0`` (32 and 64 here).
* ``beta_w``/``beta_a`` must be powers of two with ``beta_a <= beta_w`` (checked here, because every
  model built here is meant to be lowerable) or ``"all"``.

XNOR-Net (``beta = "all"``)
    ``"all"`` on the weights is one scale per output filter; the integer model realises it as
    ``beta_w`` = the next power of two >= the filter's fan-in ``K`` (one, possibly short, segment).
    ``"all"`` on the activations is XNOR-Net's one scale per sample over the whole ``C*H*W`` input
    of a conv layer (``act_all="tensor"``, variant ``xnor``); the hardware binarizer works per
    pixel, so that form is **float-only for conv layers** (:func:`hadahw.lower_net.lower_network`
    rejects it).  ``act_all="pixel"`` (variant ``xnor-hw``) instead gives each conv layer one
    activation segment per pixel, ``beta_a = in_channels``: the hardware's XNOR-Net.  For the MLP's
    linear layer both forms are the same (one scale per sample over 256 features) and lower.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .contract import check_beta
from .quant import Beta, HadaConv2d, HadaLinear, hada_conv_block, hada_linear_block

__all__ = ["MODEL_NAMES", "VARIANTS", "INPUT_SHAPE", "NUM_CLASSES", "DigitsNet", "build_model",
           "variant_betas", "resolve_betas", "check_betas"]

MODEL_NAMES = ("digits-mlp", "digits-cnn")
INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10

#: Network variants of the paper's Table 2: name -> (beta_w, beta_a, act_all).
VARIANTS: dict[str, tuple[Beta, Beta, str]] = {
    "fp": (1, 1, "tensor"),
    "hbwn4": (4, 1, "tensor"),
    "hbwn8": (8, 1, "tensor"),
    "hada4-4": (4, 4, "tensor"),
    "hada16-2": (16, 2, "tensor"),
    "xnor": ("all", "all", "tensor"),
    "xnor-hw": ("all", "all", "pixel"),
}

_ACT_ALL = ("tensor", "pixel")


def _beta(value, name: str) -> Beta:
    """``"all"`` or a power-of-two int; one-line ValueError naming ``name``."""
    if isinstance(value, str):
        if value == "all":
            return "all"
        raise ValueError(f"{name} must be a power of two (1, 2, 4, ...) or 'all', not {value!r}")
    try:
        return check_beta(value, name, power_of_two=True)
    except ValueError:
        raise ValueError(f"{name} must be a power of two (1, 2, 4, ...) or 'all', not {value!r}") from None


def check_betas(beta_w, beta_a) -> tuple[Beta, Beta]:
    """Validate a (beta_w, beta_a) pair for the hardware: powers of two or ``"all"``, beta_a <= beta_w."""
    bw, ba = _beta(beta_w, "beta_w"), _beta(beta_a, "beta_a")
    if ba == "all" and bw != "all":
        raise ValueError(f"beta_a='all' needs beta_w='all' (beta_a <= beta_w), got beta_w={bw}")
    if ba != "all" and bw != "all" and ba > bw:
        raise ValueError(f"beta_a must not exceed beta_w (segments must nest), got beta_a={ba} > beta_w={bw}")
    return bw, ba


def variant_betas(variant: str) -> tuple[Beta, Beta, str]:
    """``(beta_w, beta_a, act_all)`` of a named variant; ValueError listing the names."""
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    return VARIANTS[variant]


def resolve_betas(variant=None, beta_w=None, beta_a=None) -> tuple[Beta, Beta, str, str]:
    """Betas from a variant name or explicit values: ``(beta_w, beta_a, act_all, tag)``.

    ``tag`` is the variant name, or ``"bw{beta_w}-ba{beta_a}"`` for explicit betas that match no
    variant.  Explicit betas default to the paper's best trade-off, ``beta_w=16, beta_a=2``.
    """
    if variant is not None:
        if beta_w is not None or beta_a is not None:
            raise ValueError("variant and beta_w/beta_a are mutually exclusive; give one or the other")
        bw, ba, act_all = variant_betas(variant)
        return bw, ba, act_all, variant
    bw, ba = check_betas(16 if beta_w is None else beta_w, 2 if beta_a is None else beta_a)
    for name, (vw, va, act_all) in VARIANTS.items():
        if (vw, va) == (bw, ba):
            return bw, ba, act_all, name
    return bw, ba, "tensor", f"bw{bw}-ba{ba}"


class DigitsNet(nn.Module):
    """A digits network: ``stages`` (an ``nn.Sequential`` of ``nn.Sequential`` blocks).

    Each stage is ``[BatchNorm] [Flatten] HadaConv2d|HadaLinear [ReLU] [MaxPool2d]``, the unit that
    :func:`hadahw.lower_net.lower_network` maps onto one :class:`hadahw.golden.QLayer`.
    """

    def __init__(self, name: str, stages: nn.Sequential, *, beta_w: Beta, beta_a: Beta, act_all: str):
        super().__init__()
        self.name = name
        self.beta_w = beta_w
        self.beta_a = beta_a
        self.act_all = act_all
        self.stages = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.name == "digits-mlp":
            x = x.reshape(n, -1)
        else:
            x = x.reshape(n, *INPUT_SHAPE)
        return self.stages(x)

    def weight_layers(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, (HadaConv2d, HadaLinear))]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, beta_w={self.beta_w!r}, beta_a={self.beta_a!r}, act_all={self.act_all!r}"


def _conv_beta_a(beta_a: Beta, in_ch: int, act_all: str) -> Beta:
    return in_ch if (beta_a == "all" and act_all == "pixel") else beta_a


def build_model(name: str, beta_w=16, beta_a=2, *, act_all: Literal["tensor", "pixel"] = "tensor"
                ) -> DigitsNet:
    """Build ``digits-mlp`` or ``digits-cnn`` with the hidden layers at ``(beta_w, beta_a)``.

    Parameters
    ----------
    name : {"digits-mlp", "digits-cnn"}
    beta_w, beta_a : int (power of two) or "all"
        Segment sizes of the binarized (hidden) layers; first and last layer are always 1.
        ``beta_a <= beta_w``.
    act_all : {"tensor", "pixel"}
        Meaning of ``beta_a="all"`` for conv layers: one scale per sample over ``C*H*W``
        (XNOR-Net, float-only) or one per pixel over its channels (hardware XNOR, lowerable).

    Raises
    ------
    ValueError
        Unknown ``name``, bad ``beta_w``/``beta_a``/``act_all``; one line naming the parameter.
    """
    if not isinstance(name, str) or name not in MODEL_NAMES:
        raise ValueError(f"model must be one of {', '.join(MODEL_NAMES)}, not {name!r}")
    bw, ba = check_betas(beta_w, beta_a)
    if act_all not in _ACT_ALL:
        raise ValueError(f"act_all must be 'tensor' or 'pixel', not {act_all!r}")
    if name == "digits-mlp":
        stages = nn.Sequential(
            nn.Sequential(HadaLinear(64, 256, beta_w=1, beta_a=1), nn.ReLU()),
            hada_linear_block(256, 256, beta_w=bw, beta_a=ba),
            hada_linear_block(256, NUM_CLASSES, beta_w=1, beta_a=1, activation=None, bias=True),
        )
    else:
        stages = nn.Sequential(
            nn.Sequential(HadaConv2d(1, 32, 3, padding=1, beta_w=1, beta_a=1), nn.ReLU()),
            hada_conv_block(32, 64, 3, padding=1, pool=2, beta_w=bw, beta_a=_conv_beta_a(ba, 32, act_all)),
            hada_conv_block(64, 64, 3, padding=1, pool=2, beta_w=bw, beta_a=_conv_beta_a(ba, 64, act_all)),
            nn.Sequential(nn.BatchNorm2d(64), nn.Flatten(),
                          HadaLinear(64 * 2 * 2, NUM_CLASSES, beta_w=1, beta_a=1, bias=True)),
        )
    return DigitsNet(name, stages, beta_w=bw, beta_a=ba, act_all=act_all)
