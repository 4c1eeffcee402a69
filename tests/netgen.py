"""Random integer-contract networks for the core and program tests (seeded, golden-checked).

Each layer is drawn with random weights and a requantizer whose shift is chosen from the layer's
actual accumulators on the given input, so activations spread over the code range (some
saturate) instead of collapsing to 0 or to the limit.
"""

from __future__ import annotations

import numpy as np

from hadahw.contract import DeltaFormat, Requant, segment_count
from hadahw.golden import QAct, QLayer, accumulate, max_pool, run_layer
from hadahw.params import AcceleratorConfig
from hadahw.program import DESCRIPTOR_BYTES

__all__ = ["random_act", "random_layer", "random_network", "Spec", "config_kwargs", "SYSTEM_CONFIG_KW", "lowered_digits"]


def random_act(rng, cfg: AcceleratorConfig, shape) -> QAct:
    shape = tuple(shape)
    nseg = segment_count(shape[-1], cfg.beta_a)
    delta = rng.integers(0, cfg.da_max + 1, shape[:-1] + (nseg,))
    return QAct(signs=rng.random(shape) < 0.5, delta=delta, beta_a=cfg.beta_a, bits=cfg.act_bits)


def random_layer(rng, cfg: AcceleratorConfig, act: QAct, *, kind: str, n: int, kernel=1, stride=1, padding=0,
                 pool=1, final=False, relu=None, extreme=False, name="") -> QLayer:
    """A random layer fed by ``act`` (its shape decides in_shape), requant fitted to the data."""
    fmt = cfg.weight_delta
    if kind == "linear":
        k = act.signs.size
        in_shape = (k,)
        geo = {}
    else:
        h, w, c = act.shape
        k = kernel * kernel * c
        in_shape = (h, w, c)
        geo = dict(kernel=kernel, stride=stride, padding=padding, pool=pool)
    nseg = segment_count(k, cfg.beta_w)
    codes = rng.integers(0, fmt.max_code + 1, (n, nseg))
    if fmt.kind == "log2":  # keep magnitudes moderate most of the time
        codes = np.where(rng.random((n, nseg)) < 0.8, rng.integers(0, min(fmt.max_code, 6) + 1, (n, nseg)), codes)
    common = dict(kind=kind, weight_signs=rng.random((n, k)) < 0.5, weight_delta=codes, beta_w=cfg.beta_w,
                  beta_a=cfg.beta_a, in_shape=in_shape, weight_format=fmt, act_bits=cfg.act_bits,
                  name=name, **geo)
    probe = QLayer(requant=Requant.identity(n), out_beta_a=None, **common)
    relu = bool(rng.random() < 0.5) if relu is None else relu
    o = accumulate(probe, act)
    if relu:
        o = np.maximum(o, 0)
    if kind == "conv2d":
        o = max_pool(o, pool)
    mlim = (1 << (cfg.mult_bits - 1)) - 1
    mult = rng.integers(-min(mlim, 60), min(mlim, 60) + 1, n)
    mult[mult == 0] = 1
    scale = float(np.percentile(np.abs(o * mult[None, :] if o.ndim == 1 else o * mult), 90)) + 1.0
    blim = (1 << (cfg.bias_bits - 1)) - 1
    bias = rng.integers(-int(min(blim, scale)), int(min(blim, scale)) + 1, n)
    target = (1 << cfg.act_bits) - 1 if not final else 1 << 10
    shift = max(0, int(np.ceil(np.log2(scale / target))) + int(rng.integers(-1, 2)))
    shift = min(shift, cfg.max_shift)
    if extreme:  # the widest values the requantizer can produce
        mult[0], mult[-1] = mlim, -mlim - 1
        bias[0], bias[-1] = blim, -blim - 1
        shift = 0
    sat = None if final and rng.random() < 0.7 else cfg.act_bits if not final else int(rng.integers(4, 17))
    rq = Requant(multiplier=mult, bias=bias, shift=shift, relu=relu, saturate_bits=sat)
    return QLayer(requant=rq, out_beta_a=None if final else cfg.beta_a, **common)


class Spec:
    """A network shape: ``("conv", n, kernel, stride, padding, pool)`` or ``("linear", n)`` items."""

    def __init__(self, in_shape, *layers):
        self.in_shape = tuple(in_shape)
        self.layers = layers


def random_network(rng, cfg: AcceleratorConfig, spec: Spec, *, extreme=False):
    """(layers, input act) following ``spec``; the last layer is final."""
    act0 = act = random_act(rng, cfg, spec.in_shape)
    layers = []
    for i, item in enumerate(spec.layers):
        final = i == len(spec.layers) - 1
        if item[0] == "conv":
            _, n, kernel, stride, padding, pool = item
            layer = random_layer(rng, cfg, act, kind="conv2d", n=n, kernel=kernel, stride=stride, padding=padding,
                                 pool=pool, final=final, extreme=extreme and final, name=f"conv{i}")
        else:
            layer = random_layer(rng, cfg, act, kind="linear", n=item[1], final=final,
                                 extreme=extreme and final, name=f"fc{i}")
        layers.append(layer)
        if not final:
            act = run_layer(layer, act)
    return layers, act0


def config_kwargs(*, lanes, rows, bw, ba, fmt=None, scaling="dsp", act_bits=8, **kw) -> dict:
    """AcceleratorConfig keyword arguments for small test cores: memories sized for the random
    networks of this module (override any field through ``kw``)."""
    kw.setdefault("max_reduction", 512)
    kw.setdefault("weight_depth", 256)
    kw.setdefault("act_depth", 256)
    kw.setdefault("param_depth", 96)
    kw.setdefault("desc_bytes", 4 * DESCRIPTOR_BYTES)
    kw.setdefault("max_channels", 32)
    kw.setdefault("max_pool_width", 8)
    return dict(rows=rows, lanes=lanes, beta_w=bw, beta_a=ba, weight_delta=fmt or DeltaFormat(), scaling=scaling,
                act_bits=act_bits, **kw)


#: The accelerator of the full-system simulation (tests/test_sim_system.py), the hybrid tests and
#: the ``hadahw.run --sim`` test: beta 16/2 like the digits variant hada16-2, memories large enough
#: for the digits networks' hidden layers, small enough for a quick Verilator build.  One
#: configuration, so one simulated-board build serves all of them.
SYSTEM_CONFIG_KW = config_kwargs(lanes=16, rows=4, bw=16, ba=2, weight_depth=1024, act_depth=512, param_depth=512,
                                 max_channels=64, max_reduction=1024)


def lowered_digits(name: str, seed: int, *, beta_w: int = 16, beta_a: int = 2, n_calib: int = 64):
    """A randomly initialised digits network (no training) lowered on random calibration images:
    ``(hadahw.lower_net.LoweredNet, calibration images (n, 1, 8, 8) float tensor)``."""
    import torch

    from hadahw.lower_net import lower_network_full
    from hadahw.nets import build_model

    torch.manual_seed(seed)
    model = build_model(name, beta_w, beta_a).eval()
    calib = torch.rand(n_calib, 1, 8, 8)
    return lower_network_full(model, calib), calib
