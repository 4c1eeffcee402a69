"""COBS framing in gateware, byte-serial, as :mod:`hadahw.protocol` defines it.

:class:`CobsDecoder` turns the received byte stream (0x00-delimited COBS frames) into a stream of
decoded-byte and end-of-frame tokens, one token per input byte at most (registered).
:class:`CobsEncoder` sends one frame, ``0x00 | COBS(raw) | 0x00``, reading the raw bytes from a
random-access byte source (a memory read port, or anything with the same 1-cycle latency): it
scans each block for its zero before sending the block's code byte, so it needs no lookahead
FIFO, only a second read of each byte.  Its output is byte-identical to
:func:`hadahw.protocol.cobs_encode` (minimal form: no empty block after a final full one).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["CobsToken", "CobsDecoder", "CobsEncoder"]

#: Output of :class:`CobsDecoder`: a decoded byte (``end`` = 0) or the end of a non-empty frame
#: (``end`` = 1, ``data`` = 0), with ``truncated`` set if the delimiter cut a COBS block short.
CobsToken = data.StructLayout({"data": 8, "end": 1, "truncated": 1})


class CobsDecoder(wiring.Component):
    """Byte-serial COBS decoder (the state of :class:`hadahw.protocol._CobsState`).

    Per input byte it emits at most one token: a data byte of the block, the implicit zero that a
    code byte implies for the previous block, or an end token at a delimiter.  Code bytes that
    imply nothing and delimiters of empty frames (``00 00``) emit nothing.  The token is
    registered (one cycle of latency, one byte per cycle while the consumer is ready).

    Members
    -------
    i : In(stream.Signature(8))
    o : Out(stream.Signature(CobsToken))
    """

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(CobsToken)),
        })

    def elaborate(self, platform):
        m = Module()
        remain = Signal(8)  # data bytes left in the current block
        full = Signal()  # the current block's code was 0xFF (no implicit zero after it)
        first = Signal(init=1)  # no block started in this frame yet
        nonempty = Signal()  # a nonzero byte was seen since the last delimiter

        b = self.i.payload
        delim = b == 0
        produce = Signal()
        token = Signal(CobsToken)
        with m.If(delim):
            m.d.comb += [produce.eq(nonempty), token.end.eq(1), token.truncated.eq(remain != 0)]
        with m.Elif(remain != 0):
            m.d.comb += [produce.eq(1), token.data.eq(b)]
        with m.Else():
            m.d.comb += produce.eq(~first & ~full)  # the implicit zero (data 0)

        # Registered output: a token slot that takes a new token while it is empty or being read.
        o_valid = Signal()
        m.d.comb += [self.o.valid.eq(o_valid), self.i.ready.eq(~o_valid | self.o.ready)]
        with m.If(self.o.ready):
            m.d.sync += o_valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            with m.If(produce):
                m.d.sync += [o_valid.eq(1), self.o.payload.eq(token)]
            with m.If(delim):
                m.d.sync += [remain.eq(0), full.eq(0), first.eq(1), nonempty.eq(0)]
            with m.Else():
                m.d.sync += nonempty.eq(1)
                with m.If(remain != 0):
                    m.d.sync += remain.eq(remain - 1)
                with m.Else():
                    m.d.sync += [first.eq(0), full.eq(b == 0xFF), remain.eq(b - 1)]
        return m


class CobsEncoder(wiring.Component):
    """Sends one delimited COBS frame of ``length`` raw bytes read from a byte source.

    Parameters
    ----------
    max_length : int
        Longest raw frame (bytes).

    Members
    -------
    start : In(1)
        Pulse (while ``idle``) to send a frame of ``length`` bytes, ``length`` >= 1.
    length : In(range(max_length + 1))
        Sampled at ``start``.
    idle : Out(1)
    rd_addr, rd_en : Out
        Byte source request: when ``rd_en``, the byte at ``rd_addr`` must appear on ``rd_data``
        the next cycle and stay there until the next ``rd_en`` (a memory read port with enable
        behaves so).  ``rd_addr`` comes straight from a register, so the source may decode it
        without lengthening a combinational path; it may point past the frame (any data then).
    rd_data : In(8)
    o : Out(stream.Signature(8))
        ``0x00``, the COBS blocks, ``0x00``.  Each block is scanned (one cycle per byte) before
        its code byte is sent, then sent at up to one byte per cycle.
    """

    def __init__(self, *, max_length: int):
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, not {max_length!r}")
        self.max_length = max_length
        super().__init__({
            "start": In(1),
            "length": In(range(max_length + 1)),
            "idle": Out(1),
            "rd_addr": Out(range(max_length + 2)),
            "rd_en": Out(1),
            "rd_data": In(8),
            "o": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.max_length
        length = Signal(range(n + 1))
        at_end = Signal()  # registered (fetch - 1 == length): the scan is past the frame
        fetch = Signal(range(n + 2))  # next address to read: rd_addr is this register
        cnt = Signal(range(255))  # nonzero bytes scanned in this block
        code = Signal(8)
        last = Signal()  # this block ends the frame
        skip = Signal()  # the block ends at a zero byte (the next block starts after it)
        blk = Signal(range(n + 1))  # first byte of the current block
        left = Signal(8)  # data bytes still to send in this block

        m.d.comb += self.rd_addr.eq(fetch)
        o = self.o
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(1)
                with m.If(self.start):
                    m.d.sync += [length.eq(self.length), fetch.eq(0)]
                    m.next = "LEAD"
            with m.State("LEAD"):
                m.d.comb += [o.valid.eq(1), o.payload.eq(0)]
                with m.If(o.ready):
                    m.next = "SCAN_START"
            with m.State("SCAN_START"):
                m.d.comb += self.rd_en.eq(1)
                m.d.sync += [blk.eq(fetch), fetch.eq(fetch + 1), cnt.eq(0), at_end.eq(fetch == length)]
                m.next = "SCAN"
            with m.State("SCAN"):
                # rd_data is the byte at fetch - 1, if that is inside the frame.  The next byte is
                # read whatever happens (CODE reads again from blk), so rd_en is not a function of
                # the data.
                m.d.comb += self.rd_en.eq(1)
                with m.If(cnt == 254):
                    m.d.sync += [code.eq(0xFF), skip.eq(0), last.eq(at_end)]
                    m.d.sync += fetch.eq(blk)
                    m.next = "CODE"
                with m.Elif(at_end):
                    m.d.sync += [code.eq(cnt + 1), skip.eq(0), last.eq(1), fetch.eq(blk)]
                    m.next = "CODE"
                with m.Elif(self.rd_data == 0):
                    m.d.sync += [code.eq(cnt + 1), skip.eq(1), last.eq(0), fetch.eq(blk)]
                    m.next = "CODE"
                with m.Else():
                    m.d.sync += [fetch.eq(fetch + 1), cnt.eq(cnt + 1), at_end.eq(fetch == length)]
            with m.State("CODE"):
                m.d.comb += [o.valid.eq(1), o.payload.eq(code)]
                with m.If(o.ready):
                    with m.If(code == 1):
                        m.next = "NEXT"
                    with m.Else():
                        m.d.comb += self.rd_en.eq(1)
                        m.d.sync += [fetch.eq(fetch + 1), left.eq(code - 1)]
                        m.next = "DATA"
            with m.State("DATA"):
                # rd_data is the byte at fetch - 1; fetch ends at the block's end.
                m.d.comb += [o.valid.eq(1), o.payload.eq(self.rd_data)]
                with m.If(o.ready):
                    m.d.sync += left.eq(left - 1)
                    with m.If(left == 1):
                        m.next = "NEXT"
                    with m.Else():
                        m.d.comb += self.rd_en.eq(1)
                        m.d.sync += fetch.eq(fetch + 1)
            with m.State("NEXT"):
                # fetch is the end of the block: its zero, the frame's end, or blk + 254.
                with m.If(last):
                    m.next = "TRAIL"
                with m.Else():
                    m.d.sync += fetch.eq(fetch + skip)
                    m.next = "SCAN_START"
            with m.State("TRAIL"):
                m.d.comb += [o.valid.eq(1), o.payload.eq(0)]
                with m.If(o.ready):
                    m.next = "IDLE"
        return m
