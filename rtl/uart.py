"""8N1 UART transmitter and receiver with byte streams.

Both take ``divisor``, the number of clock cycles per bit (clock frequency / baud rate, e.g.
36 MHz / 3 Mbaud = 12, or 12 MHz / 3 Mbaud = 4 straight from the iCEBreaker crystal).  Bytes go
LSB first after a start bit (0) and before a stop bit (1); the line idles high.

:class:`UARTRx` has no flow control: the byte it received is offered on its stream until the
consumer takes it or the next byte replaces it (counted in ``overruns``); its ``valid`` never
waits on ``ready``.  A consumer that may stall for longer than a byte time needs a FIFO in front.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx"]

#: Width of the error counters of :class:`UARTRx` (they saturate).
COUNTER_BITS = 16


def _check_divisor(divisor, minimum: int) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int):
        raise TypeError(f"divisor must be an integer, not {type(divisor).__name__}")
    if divisor < minimum:
        raise ValueError(f"divisor must be at least {minimum} clock cycles per bit, not {divisor}")
    return divisor


class UARTTx(wiring.Component):
    """8N1 transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (>= 1).

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send.  ``ready`` is high while the line is free and in the last cycle of a stop
        bit, so back-to-back bytes leave no gap.
    tx : Out(1)
        The line (registered, idles high).
    """

    def __init__(self, *, divisor: int):
        self.divisor = _check_divisor(divisor, 1)
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        # Shift register holding start, 8 data and stop bits; tx is its LSB.  Ones shift in, so
        # the line idles high and tx is a plain register output (no glitches on the pin).
        shreg = Signal(10, init=0x3FF)
        bits = Signal(range(11))
        count = Signal(range(self.divisor))

        m.d.comb += [
            # Free, or in the last cycle of the stop bit: the next start bit follows without a gap.
            self.i.ready.eq((bits == 0) | ((bits == 1) & (count == 0))),
            self.tx.eq(shreg[0]),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                shreg.eq(self.i.payload << 1 | 1 << 9),  # start bit 0 in bit 0, stop bit 1 in bit 9
                bits.eq(10),
                count.eq(self.divisor - 1),
            ]
        with m.Elif(bits != 0):
            with m.If(count == 0):
                m.d.sync += [
                    shreg.eq(shreg >> 1 | 1 << 9),
                    bits.eq(bits - 1),
                    count.eq(self.divisor - 1),
                ]
            with m.Else():
                m.d.sync += count.eq(count - 1)
        return m


class UARTRx(wiring.Component):
    """8N1 receiver with a two-flip-flop synchronizer and mid-bit sampling.

    A falling edge starts a byte; the start bit is checked at its middle (a glitch shorter than
    half a bit is ignored) and every following bit is sampled ``divisor`` cycles later.  A stop
    bit read as 0 is a framing error: the byte is dropped, ``framing_errors`` counts it and the
    receiver waits for the line to go high again (so a break counts once).

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (>= 4).

    Members
    -------
    rx : In(1)
        The line (asynchronous; idles high).
    o : Out(stream.Signature(8))
        Received bytes.  ``valid`` rises the cycle after the middle of the stop bit and stays
        until ``ready`` or until the next byte overwrites it.
    framing_errors, overruns : Out(16)
        Saturating counts of dropped bytes: bad stop bit, and bytes overwritten unread.
    """

    def __init__(self, *, divisor: int):
        self.divisor = _check_divisor(divisor, 4)
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "framing_errors": Out(COUNTER_BITS),
            "overruns": Out(COUNTER_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        sync1 = Signal(init=1)
        line = Signal(init=1)
        m.d.sync += [sync1.eq(self.rx), line.eq(sync1)]

        count = Signal(range(div))
        bit = Signal(range(8))
        shreg = Signal(8)
        valid = Signal()
        data = Signal(8)
        m.d.comb += [self.o.valid.eq(valid), self.o.payload.eq(data)]
        with m.If(self.o.ready):
            m.d.sync += valid.eq(0)

        max_count = (1 << COUNTER_BITS) - 1

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += count.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(count == 0):
                    m.d.sync += [count.eq(div - 1), bit.eq(0)]
                    with m.If(line):  # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += count.eq(count - 1)
            with m.State("DATA"):
                with m.If(count == 0):
                    m.d.sync += [count.eq(div - 1), shreg.eq(line << 7 | shreg >> 1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += count.eq(count - 1)
            with m.State("STOP"):
                with m.If(count == 0):
                    with m.If(line):
                        m.d.sync += [valid.eq(1), data.eq(shreg)]
                        with m.If(valid & ~self.o.ready & (self.overruns != max_count)):
                            m.d.sync += self.overruns.eq(self.overruns + 1)
                        m.next = "IDLE"
                    with m.Else():
                        with m.If(self.framing_errors != max_count):
                            m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
                        m.next = "BREAK"
                with m.Else():
                    m.d.sync += count.eq(count - 1)
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m
