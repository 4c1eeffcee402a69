"""Layer shapes of reference networks, enough to count (and size) their weights.

No torchvision: every network is written out as a flat tuple of :class:`Layer` records in the
order torchvision registers the modules (``model.named_modules()``), with the same names, so the
first and the last weight layer are simply the first and last ``conv``/``linear`` entry.

Only layers that own parameters are listed (ReLU, pooling, dropout and flatten have none).

Networks (``MODELS``):

``alexnet``
    torchvision ``alexnet`` (the single-tower "one weird trick" variant, 64-192-384-256-256
    channels): 61,100,840 parameters.
``alexnet-caffe``
    the original two-GPU AlexNet (Krizhevsky et al. 2012 / BVLC reference), 96-256-384-384-256
    channels with ``groups=2`` on conv2, conv4 and conv5: 60,965,224 parameters.
``alexnet-1gpu``
    the same 96-256-384-384-256 AlexNet without groups: 62,378,344 parameters.
``resnet18``
    torchvision ``resnet18`` (BasicBlock, 1x1 stride-2 downsample convs with BatchNorm):
    11,689,512 parameters.
``vgg16``
    torchvision ``vgg16`` (no BatchNorm): 138,357,544 parameters.
``lenet5``
    LeNet-5 as usually written in PyTorch (conv 1->6 5x5, conv 6->16 5x5, fc 400-120-84-10, with
    biases): 61,706 parameters.
``digits-mlp``, ``digits-cnn``
    the small 8x8 "digits" networks of this project (:func:`hadahw.nets.build_model`): 84,490
    and 58,154 parameters without their BatchNorms (see the comment at their definitions).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

__all__ = ["Layer", "conv", "linear", "bn", "MODELS", "get_model", "weight_layers"]

LayerKind = Literal["conv", "linear", "bn"]


@dataclasses.dataclass(frozen=True)
class Layer:
    """Shape of one parameterised layer.

    For ``linear`` layers ``out_channels``/``in_channels`` are the out/in features and ``kernel``
    is ``(1, 1)``.  For ``bn`` layers both channel fields are the number of channels; the
    parameters are the affine ``gamma`` (counted as "weight") and ``beta`` (counted as "bias").
    """

    name: str
    kind: LayerKind
    out_channels: int
    in_channels: int
    kernel: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("conv", "linear", "bn"):
            raise ValueError(f"layer {self.name}: unknown kind {self.kind!r}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"layer {self.name}: channels not divisible by groups={self.groups}")

    @property
    def has_weight_matrix(self) -> bool:
        """True for conv/linear: the layers whose weights can be binarized."""
        return self.kind in ("conv", "linear")

    @property
    def fan_in(self) -> int:
        """Reduction length ``K`` of one output filter (0 for BatchNorm)."""
        if self.kind == "bn":
            return 0
        kh, kw = self.kernel
        return self.in_channels // self.groups * kh * kw

    @property
    def weight_params(self) -> int:
        """Elements of the weight tensor (BatchNorm: gamma)."""
        if self.kind == "bn":
            return self.out_channels
        return self.out_channels * self.fan_in

    @property
    def bias_params(self) -> int:
        """Elements of the bias vector (BatchNorm: beta)."""
        if self.kind == "bn":
            return self.out_channels
        return self.out_channels if self.bias else 0

    @property
    def params(self) -> int:
        """Trainable parameters, as ``sum(p.numel() for p in module.parameters())`` counts them."""
        return self.weight_params + self.bias_params

    @property
    def buffers(self) -> int:
        """Non-trainable state: BatchNorm running mean and variance (``num_batches_tracked`` and
        anything else that is not needed at inference is ignored)."""
        return 2 * self.out_channels if self.kind == "bn" else 0


def conv(name: str, cin: int, cout: int, k: int | tuple[int, int], *, groups: int = 1,
         bias: bool = True) -> Layer:
    kernel = (k, k) if isinstance(k, int) else tuple(k)
    return Layer(name, "conv", cout, cin, kernel, groups, bias)


def linear(name: str, fin: int, fout: int, *, bias: bool = True) -> Layer:
    return Layer(name, "linear", fout, fin, (1, 1), 1, bias)


def bn(name: str, c: int) -> Layer:
    return Layer(name, "bn", c, c, (1, 1), 1, True)


def weight_layers(layers: tuple[Layer, ...]) -> list[Layer]:
    """The conv/linear layers, in order."""
    return [l for l in layers if l.has_weight_matrix]


# --------------------------------------------------------------------------------------------
# ImageNet networks
# --------------------------------------------------------------------------------------------

def alexnet() -> tuple[Layer, ...]:
    """torchvision ``alexnet`` (input 3x224x224, 6x6 adaptive pool before the classifier)."""
    return (
        conv("features.0", 3, 64, 11),
        conv("features.3", 64, 192, 5),
        conv("features.6", 192, 384, 3),
        conv("features.8", 384, 256, 3),
        conv("features.10", 256, 256, 3),
        linear("classifier.1", 256 * 6 * 6, 4096),
        linear("classifier.4", 4096, 4096),
        linear("classifier.6", 4096, 1000),
    )


def _alexnet_96(groups: int) -> tuple[Layer, ...]:
    return (
        conv("conv1", 3, 96, 11),
        conv("conv2", 96, 256, 5, groups=groups),
        conv("conv3", 256, 384, 3),
        conv("conv4", 384, 384, 3, groups=groups),
        conv("conv5", 384, 256, 3, groups=groups),
        linear("fc6", 256 * 6 * 6, 4096),
        linear("fc7", 4096, 4096),
        linear("fc8", 4096, 1000),
    )


def alexnet_caffe() -> tuple[Layer, ...]:
    """Original two-GPU AlexNet (groups=2 on conv2/4/5), as in the BVLC reference model."""
    return _alexnet_96(groups=2)


def alexnet_1gpu() -> tuple[Layer, ...]:
    """96-256-384-384-256 AlexNet with the two towers merged (no groups)."""
    return _alexnet_96(groups=1)


def resnet18() -> tuple[Layer, ...]:
    """torchvision ``resnet18``: convs have no bias, every conv is followed by BatchNorm."""
    layers = [conv("conv1", 3, 64, 7, bias=False), bn("bn1", 64)]
    cin = 64
    for stage, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            s = stride if block == 0 else 1
            layers += [
                conv(f"{p}.conv1", cin, cout, 3, bias=False), bn(f"{p}.bn1", cout),
                conv(f"{p}.conv2", cout, cout, 3, bias=False), bn(f"{p}.bn2", cout),
            ]
            if s != 1 or cin != cout:
                layers += [conv(f"{p}.downsample.0", cin, cout, 1, bias=False),
                           bn(f"{p}.downsample.1", cout)]
            cin = cout
    layers.append(linear("fc", 512, 1000))
    return tuple(layers)


def vgg16() -> tuple[Layer, ...]:
    """torchvision ``vgg16`` (configuration D, no BatchNorm)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, cin, idx = [], 3, 0
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        layers.append(conv(f"features.{idx}", cin, v, 3))
        cin = v
        idx += 2  # conv, ReLU
    layers += [
        linear("classifier.0", 512 * 7 * 7, 4096),
        linear("classifier.3", 4096, 4096),
        linear("classifier.6", 4096, 1000),
    ]
    return tuple(layers)


# --------------------------------------------------------------------------------------------
# Small networks
# --------------------------------------------------------------------------------------------

def lenet5() -> tuple[Layer, ...]:
    """LeNet-5 (28x28 input padded to 32x32 by conv1's padding=2)."""
    return (
        conv("conv1", 1, 6, 5),
        conv("conv2", 6, 16, 5),
        linear("fc1", 16 * 5 * 5, 120),
        linear("fc2", 120, 84),
        linear("fc3", 84, 10),
    )


# The project's small 8x8 "digits" networks, as built by hadahw.nets.build_model (same module
# names, ``stages.<block>.<index>``).  BatchNorm layers are not listed: at inference they fold into
# the integer requantizer's per-channel multiplier and bias (see hadahw.lower_net), and the layer
# lists below are pinned by tests/test_size.py.  Their parameters (gamma and beta: 2 x 256 for the
# MLP, 2 x (32 + 64 + 64) for the CNN) would add 1,024 and 320 FP32 parameters.  Only the last
# layer has a bias: the requantizer applies ReLU to the raw accumulator, so a bias in front of a
# ReLU cannot be folded.

def digits_mlp() -> tuple[Layer, ...]:
    """MLP 64-256-256-10 on the flattened 8x8 digits; bias on the last layer only.

    ``stages.0.0`` (first, full precision) -> BN -> ``stages.1.1`` (binarized) -> BN ->
    ``stages.2.1`` (last, full precision).
    """
    return (
        linear("stages.0.0", 64, 256, bias=False),
        linear("stages.1.1", 256, 256, bias=False),
        linear("stages.2.1", 256, 10, bias=True),
    )


def digits_cnn() -> tuple[Layer, ...]:
    """CNN on 1x8x8 digits; bias on the last layer only.

    conv 1->32 3x3 pad 1 (8x8, first, full precision), BN, conv 32->64 3x3 pad 1, maxpool 2 (4x4),
    BN, conv 64->64 3x3 pad 1, maxpool 2 (2x2), BN, flatten, linear 64*2*2 -> 10 (last, full
    precision).
    """
    return (
        conv("stages.0.0", 1, 32, 3, bias=False),
        conv("stages.1.1", 32, 64, 3, bias=False),
        conv("stages.2.1", 64, 64, 3, bias=False),
        linear("stages.3.2", 64 * 2 * 2, 10, bias=True),
    )


#: Registry: model name -> function returning its layers.
MODELS: dict[str, Callable[[], tuple[Layer, ...]]] = {
    "alexnet": alexnet,
    "alexnet-caffe": alexnet_caffe,
    "alexnet-1gpu": alexnet_1gpu,
    "resnet18": resnet18,
    "vgg16": vgg16,
    "lenet5": lenet5,
    "digits-mlp": digits_mlp,
    "digits-cnn": digits_cnn,
}


def get_model(name: str) -> tuple[Layer, ...]:
    """Layers of ``name``; ``ValueError`` listing the valid names if it is unknown."""
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, not {name!r}")
    return MODELS[name]()
