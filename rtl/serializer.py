"""Serializer: the engine's R accumulators of a pass, one output channel per beat.

The core computes an output pixel in ``G = ceil(N / R)`` passes of ``R`` rows; each pass ends in
one engine output beat carrying R accumulators.  The serializer emits rows ``0..n_g-1`` of it
(``n_g = R``, or ``last_rows`` for the pixel's last pass; rows past ``N`` are dropped), tagging
each value with its channel ``g*R + r`` and the pixel's ``first``/``last`` flags, at most one
value every ``spacing`` cycles.  It reads the engine's output register in place (no copy) and
releases it with the pass's last value.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hadahw.params import AcceleratorConfig

from .engine import output_layout

__all__ = ["Serializer", "value_layout"]

CHANNEL_BITS = 16


def value_layout(config: AcceleratorConfig) -> data.StructLayout:
    """One accumulator value with its channel and the pixel's first/last flags."""
    return data.StructLayout({"value": signed(config.acc_bits), "channel": unsigned(CHANNEL_BITS),
                              "first": unsigned(1), "last": unsigned(1)})


class Serializer(wiring.Component):
    """Engine results (R values per beat) to one value per beat, channel order.

    Parameters
    ----------
    config : AcceleratorConfig
    max_spacing : int
        Largest ``spacing`` (cycles between values).

    Members
    -------
    i : In(stream.Signature(output_layout(config)))
        The engine's output.
    o : Out(stream.Signature(value_layout(config)))
    passes, last_rows : In(16)
        ``G`` and the rows of the last pass of a pixel (1..R).
    spacing : In(range(max_spacing + 1))
        Cycles from one value to the next, >= 1.
    start : In(1)
        Restart at pass 0, channel 0 (layer start; hold the stream idle).
    """

    def __init__(self, config: AcceleratorConfig, *, max_spacing: int = 1):
        self.config = config
        self.max_spacing = max(1, max_spacing)
        super().__init__({
            "i": In(stream.Signature(output_layout(config))),
            "o": Out(stream.Signature(value_layout(config))),
            "passes": In(16),
            "last_rows": In(16),
            "spacing": In(range(self.max_spacing + 1)),
            "start": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        rows = self.config.rows
        r = Signal(range(rows))
        g = Signal(16)
        c = Signal(CHANNEL_BITS)
        gap = Signal(range(self.max_spacing + 1))
        last_g = g == self.passes - 1
        n_rows = Mux(last_g, self.last_rows, rows)
        last_r = r == n_rows - 1
        values = Array(self.i.payload[k] for k in range(rows))
        m.d.comb += [
            self.o.valid.eq(self.i.valid & (gap == 0)),
            self.o.payload.value.eq(values[r]),
            self.o.payload.channel.eq(c),
            self.o.payload.first.eq(c == 0),
            self.o.payload.last.eq(last_g & last_r),
        ]
        take = self.o.valid & self.o.ready
        m.d.comb += self.i.ready.eq(take & last_r)
        with m.If(self.start):
            m.d.sync += [r.eq(0), g.eq(0), c.eq(0), gap.eq(0)]
        with m.Elif(take):
            m.d.sync += gap.eq(self.spacing - 1)
            with m.If(last_r):
                m.d.sync += [r.eq(0), g.eq(Mux(last_g, 0, g + 1)), c.eq(Mux(last_g, 0, c + 1))]
            with m.Else():
                m.d.sync += [r.eq(r + 1), c.eq(c + 1)]
        with m.Elif(gap != 0):
            m.d.sync += gap.eq(gap - 1)
        return m
