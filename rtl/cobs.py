"""COBS framing in gateware, byte-serial, as :mod:`hadahw.protocol` defines it.

:class:`CobsDecoder` turns the received byte stream (0x00-delimited COBS frames) into a stream of
decoded-byte and end-of-frame tokens, one token per input byte at most (registered).
:class:`CobsEncoder` sends one frame, ``0x00 | COBS(raw) | 0x00``, reading the raw bytes from a
random-access byte source (a memory read port, or anything with the same 1-cycle latency): it
scans each block for its zero before sending the block's code byte, so it needs no lookahead
FIFO, only a second read of each byte.  Its output is byte-identical to
:func:`hadahw.protocol.cobs_encode` (minimal form: no empty block after a final full one).
:class:`CobsWriter` encodes in place instead: it takes the raw bytes one at a time, as they are
produced, and writes ``0x00 | COBS(raw) | 0x00`` into a memory (each block's code byte is written
into a slot reserved when the block started, once the block ends), so the frame can then be sent
with a plain walk through the memory.  The HostLink uses the writer; the encoder serves byte
sources that cannot be written to.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["CobsToken", "CobsDecoder", "CobsEncoder", "CobsWriter"]

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
        # Data bytes left in the current block, plus one; the next byte is a code byte while
        # left <= 1 (so a code byte b loads b, and one decrementer serves).
        left = Signal(8)
        in_block = left[1:] != 0
        full = Signal()  # the current block's code was 0xFF (no implicit zero after it)
        first = Signal(init=1)  # no block started in this frame yet
        nonempty = Signal()  # a nonzero byte was seen since the last delimiter

        b = self.i.payload
        delim = b == 0
        produce = Signal()
        token = Signal(CobsToken)
        with m.If(delim):
            m.d.comb += [produce.eq(nonempty), token.end.eq(1), token.truncated.eq(in_block)]
        with m.Elif(in_block):
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
                m.d.sync += [left.eq(0), full.eq(0), first.eq(1), nonempty.eq(0)]
            with m.Else():
                m.d.sync += nonempty.eq(1)
                with m.If(in_block):
                    m.d.sync += left.eq(left - 1)
                with m.Else():
                    m.d.sync += [first.eq(0), full.eq(b == 0xFF), left.eq(b)]
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


class CobsWriter(wiring.Component):
    """Writes one delimited COBS frame into a memory, encoding in place as raw bytes arrive.

    The frame goes to ``base``: ``base`` itself holds the leading ``0x00`` (the writer never
    writes it: give the memory that initial content), then ``COBS(raw)`` and the trailing
    ``0x00``, at most ``2 + cobs_max_len(n)`` bytes in all for ``n`` raw bytes.  A data byte is
    written where it goes in the encoded frame; a zero byte, the 254th data byte of a block and
    the end of the frame *close* the block: its code byte goes into the slot reserved when the
    block started (the code of a block closed by its 254th byte, 0xFF, is written in the cycle
    after that byte; ``ready`` is low then).  The output is byte-identical to
    :func:`hadahw.protocol.cobs_encode` between two delimiters.

    Parameters
    ----------
    depth : int
        Depth of the memory (addresses ``range(depth)``).

    Members
    -------
    start : In(1)
        Begin a frame at ``base`` (no byte may be taken in the same cycle).
    base : In(range(depth))
        Sampled at ``start``.
    data : In(8)
    take : In(1)
        Take ``data`` as the next raw byte; only while ``ready``.
    ready : Out(1)
        Low in the cycle after a block's 254th data byte (its code byte is written then).
    finish : In(1)
        Hold high (after the last byte) until ``done``: two cycles once ``ready``, writing the last
        code byte and the trailing delimiter.
    done : Out(1)
    wr_addr, wr_data, wr_en : Out
        Memory write port.
    """

    def __init__(self, *, depth: int):
        if not isinstance(depth, int) or depth < 3:
            raise ValueError(f"depth must be an integer >= 3, not {depth!r}")
        self.depth = depth
        super().__init__({
            "start": In(1),
            "base": In(range(depth)),
            "data": In(8),
            "take": In(1),
            "ready": Out(1),
            "finish": In(1),
            "done": Out(1),
            "wr_addr": Out(range(depth)),
            "wr_data": Out(8),
            "wr_en": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        opos = Signal(range(self.depth))  # next free address
        cpos = Signal(range(self.depth))  # the current block's code slot
        run = Signal(8)  # data bytes in the current block (0..254)
        pend = Signal()  # the current block has 254 data bytes: close it now
        full = Signal()  # the last block was closed by its 254th byte and nothing followed
        last = Signal()  # second finishing cycle: the trailing delimiter
        m.d.comb += self.ready.eq(~pend)
        m.d.sync += pend.eq(self.take & (self.data != 0) & (run == 253))

        with m.If(self.start):
            m.d.sync += [cpos.eq(self.base + 1), opos.eq(self.base + 2), run.eq(0), full.eq(0)]
        with m.Elif(pend | (self.take & (self.data == 0))):
            # Close the block: its code byte into its slot; the next block's slot is here (where
            # the zero byte would have gone, or after a full block).
            m.d.comb += [self.wr_addr.eq(cpos), self.wr_data.eq(run + 1), self.wr_en.eq(1)]
            m.d.sync += [cpos.eq(opos), opos.eq(opos + 1), run.eq(0), full.eq(pend)]
        with m.Elif(self.take):
            m.d.comb += [self.wr_addr.eq(opos), self.wr_data.eq(self.data), self.wr_en.eq(1)]
            m.d.sync += [opos.eq(opos + 1), run.eq(run + 1), full.eq(0)]
        with m.Elif(self.finish):
            with m.If(~last):
                # The final block's code; after a full block there is none (minimal form): the
                # reserved slot takes the trailing delimiter.
                m.d.comb += [self.wr_addr.eq(cpos), self.wr_data.eq(Mux(full, 0, run + 1)), self.wr_en.eq(1)]
                m.d.sync += last.eq(1)
            with m.Else():
                m.d.comb += [self.wr_addr.eq(opos), self.wr_data.eq(0), self.wr_en.eq(1), self.done.eq(1)]
                m.d.sync += last.eq(0)
        return m
