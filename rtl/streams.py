"""Stream plumbing: a register slice that cuts a ready/valid chain.

A chain of stream stages whose ``ready`` is combinational (``ready = ~valid | ready_next``) makes
one long path from the last consumer back to the first producer.  :class:`SkidBuffer` ends it:
its ``i.ready`` and ``o.valid`` both come straight from flip-flops, and it still passes one beat
per cycle (the second register catches the beat already in flight when ``o.ready`` drops).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Two-register stream slice: registered ``i.ready`` and ``o``, full throughput.

    Parameters
    ----------
    layout : shape-castable
        Payload of both streams.

    Members
    -------
    i : In(stream.Signature(layout))
    o : Out(stream.Signature(layout))

    Timing contract: a beat taken on ``i`` in cycle ``t`` is offered on ``o`` from cycle ``t + 1``
    (latency 1); beats leave in order, none is lost or duplicated; ``i.ready`` is low only while
    the skid register holds a beat (after ``o`` refused one).
    """

    latency = 1

    def __init__(self, layout):
        self.layout = layout
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        # Data registers need no reset: the valid bits qualify them.
        skid = Signal(self.layout, reset_less=True)
        skid_valid = Signal()
        out = Signal(self.layout, reset_less=True)
        out_valid = Signal()
        m.d.comb += [self.i.ready.eq(~skid_valid), self.o.valid.eq(out_valid), self.o.payload.eq(out)]
        with m.If(~out_valid | self.o.ready):
            # The output register is free: refill it from the skid register first, else from i.
            m.d.sync += [out.eq(Mux(skid_valid, skid, self.i.payload)),
                         out_valid.eq(skid_valid | self.i.valid), skid_valid.eq(0)]
        with m.Elif(self.i.valid & ~skid_valid):
            m.d.sync += [skid.eq(self.i.payload), skid_valid.eq(1)]
        return m
