"""Serializer: the engine's R accumulators of a pass, one output channel per beat.

The core computes an output pixel in ``G = ceil(N / R)`` passes of ``R`` rows; each pass ends in
one engine output beat carrying R accumulators.  The serializer emits rows ``0..n_g-1`` of it
(``n_g = R``, or ``last_rows`` for the pixel's last pass; rows past ``N`` are dropped), tagging
each value with its channel ``g*R + r`` and the pixel's ``first``/``last`` flags, at most one
value every ``spacing`` cycles.  It reads the engine's output register in place (no copy) and
releases it with the pass's last value.  Its counters are only as wide as the core's descriptor
register fields (:func:`hadahw.program.descriptor_field_bits`); with more than 4 rows the row is
selected by a one-hot register (an AND-OR per bit instead of a binary mux).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hadahw.params import AcceleratorConfig
from hadahw.program import descriptor_field_bits

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
        ``G`` (1 .. ``2**descriptor_field_bits(config)["passes"] - 1``, the values the core's
        descriptor register holds; higher bits are ignored) and the rows of the last pass of a
        pixel (1..R).
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
        cfg = self.config
        rows = cfg.rows
        # Counters only as wide as the values the core's descriptor register can hold
        # (:func:`hadahw.program.descriptor_field_bits`): g < passes, r < last_rows <= R, and the
        # channel g*R + r below passes*R.
        widths = descriptor_field_bits(cfg)
        gb = max(1, widths["passes"])
        rb = max(1, widths["last_rows"])
        cb = min(CHANNEL_BITS, max(1, (((1 << gb) - 1) * rows - 1).bit_length()))
        r = Signal(range(rows))
        pow2 = rows & (rows - 1) == 0
        # The channel g*R + r: with a power-of-two R the pass index g sits above r's bits;
        # otherwise c counts by itself (the passes are counted by `left`).
        g = Signal(gb) if pow2 else None
        c = Cat(r[:rows.bit_length() - 1], g) if pow2 else Signal(cb)
        first = Signal(init=1)                               # c == 0
        gap = Signal(range(self.max_spacing + 1))
        r_inc = r + 1
        # "Last row of the pass" and "last pass of the pixel" are registers, computed when r and g
        # change: i.ready (= taking a pass's last value) feeds the engine's stall and the sequencer
        # behind it, so it must not wait for an incrementer and a comparison.
        passes, last_rows = self.passes[:gb], self.last_rows[:rb]
        last_g = Signal()                                    # g == passes - 1
        last_r = Signal()                                    # r == (last_rows if last_g else R) - 1
        left = Signal(gb)                                    # passes - 1 - g: last_g' = (left == 1)
        one_pass = Signal()                                  # passes == 1 (held from `start`)

        def last_row_after(r_next, g_is_last):
            return Mux(g_is_last, r_next == last_rows, r_next == rows)

        if rows > 4:
            # One-hot row select: an AND-OR per bit is cheaper than a binary R:1 mux.
            sel = Signal(rows, init=1)
            words = [self.i.payload[k] for k in range(rows)]
            value = Cat(*[Cat(*[sel[k] & words[k][i] for k in range(rows)]).any()
                          for i in range(cfg.acc_bits)])
        else:
            value = Array(self.i.payload[k] for k in range(rows))[r]
        m.d.comb += [
            self.o.valid.eq(self.i.valid & (gap == 0)),
            self.o.payload.value.eq(value),
            self.o.payload.channel.eq(c),
            self.o.payload.first.eq(first),
            self.o.payload.last.eq(last_g & last_r),
        ]
        take = self.o.valid & self.o.ready
        m.d.comb += self.i.ready.eq(take & last_r)

        def pixel_start(single):
            return [left.eq(passes - 1), last_g.eq(single), last_r.eq(last_row_after(1, single))]

        with m.If(self.start):
            m.d.sync += [r.eq(0), c.eq(0), first.eq(1), gap.eq(0), one_pass.eq(passes == 1),
                         *pixel_start(passes == 1)]
            if rows > 4:
                m.d.sync += sel.eq(1)
        with m.Elif(take):
            m.d.sync += gap.eq(self.spacing - 1)
            with m.If(last_r):
                m.d.sync += [r.eq(0), first.eq(last_g)]
                if pow2:
                    m.d.sync += g.eq(Mux(last_g, 0, g + 1))
                else:
                    m.d.sync += c.eq(Mux(last_g, 0, c + 1))
                with m.If(last_g):
                    m.d.sync += pixel_start(one_pass)
                with m.Else():
                    next_last_g = left == 1
                    m.d.sync += [left.eq(left - 1), last_g.eq(next_last_g),
                                 last_r.eq(last_row_after(1, next_last_g))]
                if rows > 4:
                    m.d.sync += sel.eq(1)
            with m.Else():
                m.d.sync += [r.eq(r_inc), first.eq(0), last_r.eq(last_row_after(r + 2, last_g))]
                if not pow2:
                    m.d.sync += c.eq(c + 1)
                if rows > 4:
                    m.d.sync += sel.eq(sel.rotate_left(1))
        with m.Elif(gap != 0):
            m.d.sync += gap.eq(gap - 1)
        return m
