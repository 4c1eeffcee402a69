"""Hybrid networks: the layers the accelerator cannot run stay on the host.

The digits networks (and the paper's) keep their first and last layer at full precision
(``beta_w = beta_a = 1``); :class:`~hadahw.params.AcceleratorConfig` needs binarized weights
(``beta_w >= 2``; ``beta_a = 1``, HBWN's full-precision activations, is fine).
:func:`partition_network` splits a lowered network into

* a *head* of host layers (run with :func:`hadahw.golden.run_layer`),
* one contiguous accelerator *segment* (compiled with :func:`hadahw.program.compile_network`;
  its last layer compiled as final, i.e. ``out_beta_a=None``, so its requantized values come
  back to the host), and
* a *tail* of host layers.

Exactness: the golden model's non-final layer computes ``y = requant.scale(...)`` and hands
``act_from_int(y, out_beta_a, bits=requant.saturate_bits)`` to the next layer.  The hardware's
final layer writes the same ``y`` (saturation included, ``FLAG_SATURATE``), and
:meth:`HybridNetwork.run` applies that same ``act_from_int`` on the host, so the hybrid output
equals :func:`hadahw.golden.run_network` of the whole network bit for bit.

Which layers go to the accelerator: the longest run of consecutive layers that the configuration
accepts (``config.fits``: betas, delta format, ``act_bits``, ``max_reduction``) and that chain on
the chip (every layer but the segment's last feeds the next with ``out_beta_a == beta_a`` and
``saturate_bits == act_bits``); the first such run wins a tie.  Memory sizes and the other limits
are then checked by ``compile_network`` (one-line ValueError naming the layer).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from hadahw.golden import QAct, QLayer, act_from_int, run_layer
from hadahw.params import AcceleratorConfig
from hadahw.program import Program, compile_network

__all__ = ["HybridNetwork", "partition_network", "layer_placement", "reference_layer"]


def reference_layer(layers: Sequence[QLayer]) -> QLayer:
    """The network's first layer with binarized weights (``beta_w >= 2``), whose betas, delta_w
    format and ``act_bits`` an accelerator for the network takes.  ValueError when there is none
    (a full-precision network has nothing for the accelerator)."""
    for layer in layers:
        if layer.beta_w >= 2:
            return layer
    raise ValueError("no layer of the network has binarized weights (beta_w >= 2): nothing for the accelerator")


def _accepts(config: AcceleratorConfig, layer: QLayer) -> str | None:
    """None if the configuration can run ``layer`` (as far as ``config.fits`` says), else why not."""
    try:
        config.fits(layer)
    except ValueError as exc:
        return str(exc)
    return None


def _chains(config: AcceleratorConfig, layer: QLayer) -> bool:
    """Whether ``layer`` can feed another accelerator layer on the chip (binarized on-chip)."""
    return (layer.out_beta_a == config.beta_a and layer.requant.saturate_bits == config.act_bits)


def partition_network(layers: Sequence[QLayer], config: AcceleratorConfig) -> tuple[int, int]:
    """``(start, stop)``: the accelerator segment ``layers[start:stop]`` (see the module doc).

    Raises
    ------
    ValueError
        No layer can run on ``config`` (the message gives each layer's reason, shortened).
    """
    layers = tuple(layers)
    if not layers:
        raise ValueError("a network needs at least one layer")
    best = (0, 0)
    i = 0
    while i < len(layers):
        if _accepts(config, layers[i]) is not None:
            i += 1
            continue
        j = i + 1  # extend while the previous layer chains into an accepted one
        while j < len(layers) and _chains(config, layers[j - 1]) and _accepts(config, layers[j]) is None:
            j += 1
        if j - i > best[1] - best[0]:
            best = (i, j)
        i = j
    if best[1] == best[0]:
        reasons = "; ".join(f"layer {k}: {_accepts(config, l)}" for k, l in enumerate(layers))
        raise ValueError(f"no layer of the network can run on this accelerator ({reasons})")
    return best


def layer_placement(n_layers: int, start: int, stop: int) -> list[str]:
    """``"host"`` or ``"accelerator"`` for each layer index."""
    return ["accelerator" if start <= i < stop else "host" for i in range(n_layers)]


class HybridNetwork:
    """A lowered network split between host and accelerator for one configuration.

    Parameters
    ----------
    layers : sequence of QLayer
        The whole network, last layer final (as for :func:`hadahw.golden.run_network`).
    config : AcceleratorConfig

    Attributes
    ----------
    layers : tuple of QLayer
    start, stop : int
        The accelerator runs ``layers[start:stop]``.
    segment : tuple of QLayer
        Those layers as compiled: the last one made final (``out_beta_a=None``).
    program : Program
        ``compile_network(segment, config)``.
    placement : list of str
        ``"host"`` / ``"accelerator"`` per layer.

    Raises ValueError (one line) when no layer fits or the segment does not compile.
    """

    def __init__(self, layers: Sequence[QLayer], config: AcceleratorConfig):
        self.layers = tuple(layers)
        if not self.layers or self.layers[-1].out_beta_a is not None:
            raise ValueError("the network's last layer must be final (out_beta_a=None)")
        self.config = config
        self.start, self.stop = partition_network(self.layers, config)
        seg = list(self.layers[self.start:self.stop])
        seg[-1] = dataclasses.replace(seg[-1], out_beta_a=None)
        self.segment = tuple(seg)
        try:
            self.program: Program = compile_network(self.segment, config)
        except ValueError as exc:  # its layer numbers count from the segment's start
            raise ValueError(f"accelerator segment (network layers {self.start}..{self.stop - 1}): {exc}") from None
        self.placement = layer_placement(len(self.layers), self.start, self.stop)

    @property
    def head(self) -> tuple[QLayer, ...]:
        return self.layers[:self.start]

    @property
    def tail(self) -> tuple[QLayer, ...]:
        return self.layers[self.stop:]

    def run(self, act: QAct, device: Callable[[QAct], np.ndarray]) -> np.ndarray:
        """The network's output for input ``act``; ``device(act)`` runs the segment.

        ``device`` gets the segment's input activation and must return the segment's final
        values (what :meth:`hadahw.sw.accelerator.Accelerator.infer` returns as ``output``, or
        ``golden.run_network(self.segment, act)`` for a software stand-in).
        """
        for layer in self.head:
            act = run_layer(layer, act)
        y = np.asarray(device(act), dtype=np.int64)
        last = self.layers[self.stop - 1]
        if last.out_beta_a is None:  # the segment ends the network
            return y
        # What golden.run_layer does after requantizing a non-final layer (exponent 0, as in run_network).
        out = act_from_int(y, last.out_beta_a, bits=last.requant.saturate_bits)
        for layer in self.tail:
            out = run_layer(layer, out)
        return out
