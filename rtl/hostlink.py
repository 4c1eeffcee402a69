"""HostLink gateware: the device end of the :mod:`hadahw.protocol` link, on byte streams.

Receive path: byte stream (e.g. from :class:`~hadahw.rtl.uart.UARTRx`) -> :class:`CobsDecoder`
-> receive buffer (``lib.memory.Memory``, ``6 + max_payload`` bytes) and a CRC-16/CCITT-FALSE
register (one byte per cycle; residue check: the CRC over the whole frame is 0).  The fields the
checks need are captured in registers as they go by, already reduced to what a valid request can
hold: the command (3 bits), seq, the length field, the space, the address bits of the largest
space (straight into the bus address register) with one "higher bits set" flag, the READ_MEM
length (straight into the length counter) with its own flag, and the last two bytes (the CRC
field, for retransmission detection).  The receiver then checks in the protocol's order and
executes against the host bus (:mod:`hadahw.rtl.hostbus`).  WRITE_MEM data goes to the bus only
after the whole frame passed its checks, streamed from the receive buffer.

Transmit path: every reply is produced once, byte by byte (header, payload, CRC), into a
:class:`~hadahw.rtl.cobs.CobsWriter` that COBS-encodes it in place into the reply memory, both
delimiters included; sending is then a plain walk through that memory up to the trailing
``0x00``.  Payload bytes come from registers (NAK status, the echoed WRITE_MEM length, STATUS),
from the host bus (READ_MEM: one request at a time, straight into the writer; a compact read of
the space given by ``compact`` steps from an entry's last used byte to the next entry, as a
compact write does, and its reply length is ``length / stride * entry_bytes``) or from the receive
buffer's memory: the request's own bytes (a NAK's received code, the echoed WRITE_MEM space and
address) and the IDENTIFY payload, which is stored after the buffer as initial contents.  The
reply's CRC is computed by the receiver's CRC register (the receiver is waiting then); its two
bytes go through the writer like the others.

The reply to the last *executed* frame stays in its own region of the reply memory, so a
retransmitted request (same seq and CRC) is answered by sending it again without executing
anything; transport NAKs are built in a second, small region and do not disturb it.

Counters: the eight :class:`~hadahw.protocol.DevCounter` registers are incremented bit-serially
(the selected counter rotates through one serial adder, 16 cycles per count, 32 when a count
would wrap 0xFFFF: the second pass decrements it back) and read by rotating them byte-wise: with
the STATUS snapshot (flags, run_status, cycles) they form one ring of byte registers whose head is
the STATUS payload source; one full turn of the ring sends them and puts every byte back in its
place.  So there is no counter-selection multiplexer and no 16-bit incrementer, and the logic in
front of each counter bit fits in the LUT of its own logic cell.

Concurrency: receiving runs while a reply is being sent.  When a frame is complete the receiver
waits for the transmitter to finish, then checks and executes the frame and builds the reply;
meanwhile the input stream is not ready (one or two cycles per reply byte, about one per
WRITE_MEM data byte plus bus stalls, and up to about fifty for the counters).  A host that waits for
each answer (the protocol is stop-and-wait) never sends during that time; put a FIFO between
UARTRx and the HostLink if other traffic (retransmissions after a too-short host timeout) must
not be lost.

Behaviour on the wire is that of :class:`hadahw.sw.devmodel.DevModel` with the same parameters,
except what depends on the core: STATUS reports the ``busy``/``done``/``run_status``/``cycles``
of the bus (the model advances its fake run per STATUS poll).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hadahw.protocol import (
    FRAME_OVERHEAD,
    HEADER_BYTES,
    NAK_CODE,
    RESPONSE_FLAG,
    WRITE_HEADER_BYTES,
    Command,
    DevCounter,
    DeviceInfo,
    Space,
    Status,
    check_entry_layout,
    cobs_max_len,
    pack_identify,
)

from .cobs import CobsDecoder, CobsWriter
from .hostbus import HostBusSignature

__all__ = ["HostLink", "STATUS_PAYLOAD_BYTES"]

N_COUNTERS = len(DevCounter)
#: Length of the STATUS ACK payload.
STATUS_PAYLOAD_BYTES = 8 + 2 * N_COUNTERS
_READ_REQ_BYTES = 7  # space u8, address u32, length u16
_RUN_REQ_BYTES = 4
_WRITE_ACK_BYTES = 7
_NAK_BYTES = 2
_SNAP_BYTES = 6  # STATUS snapshot at the head of the ring: flags, run_status, cycles u32
_FIELDS_END = HEADER_BYTES + _READ_REQ_BYTES  # raw bytes 0..10 may hold captured fields
_WRITE_DATA = HEADER_BYTES + WRITE_HEADER_BYTES  # raw index of the first WRITE_MEM data byte
assert max(Command) < 8 and int(Status.OK) == int(DevCounter.FRAMES_OK) == 0
# A transport status doubles as the index of its counter (FRAME counts `status` as it is).
assert all(int(Status[c.name]) == int(c) for c in (DevCounter.BAD_CRC, DevCounter.BAD_FRAME, DevCounter.BAD_LENGTH))


def _crc16_next(crc, data):
    """CRC-16/CCITT-FALSE (poly 0x1021, MSB first, no reflection) of ``crc`` after one byte.

    The XOR network is derived bit by bit (term sets, XORs of equal terms cancel), so each
    output bit is one XOR of at most 7 inputs.
    """
    state = [frozenset([("s", i)]) for i in range(16)]
    for i in reversed(range(8)):  # data MSB first
        fb = state[15] ^ frozenset([("d", i)])
        state = [frozenset()] + state[:15]
        for tap in (0, 5, 12):
            state[tap] = state[tap] ^ fb
    src = {"s": crc, "d": data}

    def xor(terms):
        out = Const(0, 1)
        for kind, i in sorted(terms):
            out = out ^ src[kind][i]
        return out
    return Cat(*(xor(t) for t in state))


def _times_const(value, c: int):
    """``value * c`` for a small constant ``c`` as a sum of shifted copies (no ``$mul`` that
    ``synth_ice40 -dsp`` would put in an SB_MAC16)."""
    terms = [value << k for k in range(c.bit_length()) if c >> k & 1]
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _gt_const(value, c: int):
    """``value > c`` for a constant ``c``; an OR of bit ranges when ``c`` is a power of two."""
    if c >= (1 << len(value)) - 1:
        return Const(0)
    if c & (c - 1) or c == 0:
        return value > c
    k = c.bit_length() - 1
    return (value[k + 1:] != 0) | (value[k] & (value[:k] != 0))


class HostLink(wiring.Component):
    """The device side of the HostLink protocol, between byte streams and a host bus.

    Parameters
    ----------
    max_payload : int
        Receive buffer (``6 + max_payload`` bytes) and longest READ_MEM, in
        ``[MIN_DEVICE_PAYLOAD, MAX_PAYLOAD]``; IDENTIFY reports it, so the host adapts.  With 256
        the reply memory (two COBS frame regions) is one EBR, and the receive buffer with the
        IDENTIFY payload after it two for up to 762 bytes of IDENTIFY payload.
    space_sizes : mapping or sequence
        Bytes per :class:`~hadahw.protocol.Space` (BAD_ADDRESS checks, IDENTIFY, bus width).
    config_json : bytes
        The accelerator configuration as UTF-8 JSON, reported by IDENTIFY (stored after the
        receive buffer, as initial contents of its memory).
    align : int
        Power of two dividing every WRITE_MEM/READ_MEM address and length.
    addr_width : int, optional
        Bus address width (default: enough for the largest space).
    compact : mapping of Space to (entry_bytes, stride), optional
        At most one space that takes compact transfers (:data:`~hadahw.protocol.COMPACT`): its
        memory holds ``entry_bytes`` per power-of-two ``stride``, and a compact READ_MEM /
        WRITE_MEM moves the first ``entry_bytes`` of each entry only
        (``hadahw.program.MemoryMap.compact_spaces``).

    Members
    -------
    i : In(stream.Signature(8))
        Received bytes.
    o : Out(stream.Signature(8))
        Bytes to send.
    bus : Out(HostBusSignature)

    Attributes
    ----------
    info : DeviceInfo
        What IDENTIFY reports; ``identify_payload`` is its encoding.
    counters : tuple of Signal(16)
        The :class:`~hadahw.protocol.DevCounter` registers, in that order (for debug outputs, and
        for tests that preset them).  Each holds its counter whenever the link is idle; they move
        (rotate) only while a count is applied or a STATUS reply is built.
    """

    def __init__(self, *, max_payload: int = 256, space_sizes, config_json: bytes = b"{}", align: int = 1,
                 addr_width: int | None = None, compact=None):
        if not isinstance(config_json, (bytes, bytearray)):
            raise TypeError(f"config_json must be bytes, not {type(config_json).__name__}")
        try:
            config = bytes(config_json).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("config_json must be UTF-8") from None
        for name, v in (("max_payload", max_payload), ("align", align)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an integer, not {type(v).__name__}")
        self.compact = {Space(k): check_entry_layout(*v) for k, v in (compact or {}).items()}
        if len(self.compact) > 1:
            raise ValueError(f"compact transfers of at most one space are supported, not {len(self.compact)}")
        bus_sig = HostBusSignature(space_sizes, addr_width=addr_width)
        self.info = DeviceInfo(max_payload=max_payload, align=align, sizes=bus_sig.space_sizes, config=config)
        self.identify_payload = pack_identify(self.info)
        self.max_payload = max_payload
        self.align = align
        self.space_sizes = bus_sig.space_sizes
        self.counters = tuple(Signal(16, name=f"ctr_{c.name.lower()}") for c in DevCounter)
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "bus": Out(bus_sig),
        })

    # Sizes derived from the parameters.
    @property
    def rx_buffer_bytes(self) -> int:
        """Receive buffer: the longest raw frame accepted."""
        return FRAME_OVERHEAD + self.max_payload

    @property
    def reply_buffer_bytes(self) -> int:
        """Longest reply payload gathered at run time: the longest READ_MEM or STATUS."""
        return max(self.max_payload, STATUS_PAYLOAD_BYTES)

    @property
    def max_reply_payload(self) -> int:
        """Longest reply payload, IDENTIFY's included."""
        return max(self.max_payload, len(self.identify_payload), STATUS_PAYLOAD_BYTES)

    @property
    def reply_layout(self) -> tuple[int, int, int]:
        """Reply memory layout: (stored reply base, transport NAK base, depth).

        Each region holds ``0x00 | COBS(raw frame) | 0x00``; its first byte is the leading
        delimiter, 0 from the initial contents and never written.
        """
        stored = 2 + cobs_max_len(FRAME_OVERHEAD + self.max_reply_payload)
        transport = 2 + cobs_max_len(FRAME_OVERHEAD + _NAK_BYTES)
        return 0, stored, stored + transport

    def elaborate(self, platform):
        m = Module()
        mp = self.max_payload
        limit = self.rx_buffer_bytes
        ident = self.identify_payload
        bus = self.bus
        sizes = self.space_sizes
        wr, rq, rs, run = bus.write, bus.read_req, bus.read_resp, bus.run

        # Address bits kept: enough for every address inside a space, and for the alignment
        # check.  Higher address bits only matter as "some are set" (then out of range).
        abits = max(max(1, (max(sizes) - 1).bit_length()), (self.align - 1).bit_length())
        # Length counter: READ_MEM and WRITE_MEM data lengths (<= max_payload once checked).
        lbits = mp.bit_length()

        # --- receive: COBS, buffer, CRC ---------------------------------------------------------
        m.submodules.cobs_dec = dec = CobsDecoder()
        wiring.connect(m, wiring.flipped(self.i), dec.i)
        tok = dec.o
        d = tok.payload.data

        # The receive buffer, followed by the IDENTIFY payload (initial contents, never written):
        # reply bytes copied from the request (the WRITE_MEM echo, a NAK's received code) and the
        # IDENTIFY payload come through one read port.
        id_base = limit
        id_end = limit + len(ident)
        m.submodules.rx_buf = rx_buf = Memory(shape=8, depth=id_end, init=[0] * limit + list(ident))
        rx_wp = rx_buf.write_port()
        rx_rp = rx_buf.read_port()
        m.d.comb += [rx_rp.en.eq(0), rx_wp.en.eq(0)]

        # In the receive state, tokens are taken; `in_rx` is a register equal to that state.
        in_rx = Signal(init=1)
        rx_n = Signal(range(id_end + 1))  # decoded bytes in this frame; rx_buf address while executing
        rx_over = Signal()  # more than `limit` bytes: discarding up to the delimiter
        # One-hot position of the byte being decoded among raw bytes 0..10 (the captured ones).
        cap = Signal(_FIELDS_END, init=1)
        rx_seq = Signal(8)
        cmd = Signal(3)  # the code if it is a Command (< 8), else 0
        plen = Signal(lbits)  # the length field; plen_hi: some higher bit of it is set
        plen_hi = Signal()
        space = Signal(2)  # the space byte's low bits; space_bad: bits 0..6 are >= len(Space)
        space_bad = Signal()
        x_compact = Signal()  # bit 7 of the space byte (COMPACT: a compact READ_MEM / WRITE_MEM)
        baddr = Signal(abits)  # bus address: the request's, then incremented per transfer
        addr_hi = Signal()  # some address bit >= abits is set (the request is out of range)
        cnt = Signal(lbits)  # READ_MEM length as received, then bytes left to transfer
        cnt_hi = Signal()  # some READ_MEM length bit >= lbits is set
        rx_tail = Signal(16)  # last two bytes: the CRC field once the frame is complete
        f_lenbad = Signal()  # length field != decoded bytes - 6
        f_nak = Signal()  # at least two bytes decoded: a transport NAK can be addressed
        st = Signal(4)  # the Status of the frame, then of the request

        # Request fields, meaningful once the payload size has been checked.
        is_run = cmd == Command.RUN
        is_write = cmd == Command.WRITE_MEM
        is_read = cmd == Command.READ_MEM

        def capture_le(reg, flag, byte, en):
            """Byte ``byte`` of a little-endian field (``d``, when ``en``) into ``reg``; bits past
            ``reg`` into the sticky ``flag`` (assigned by the first such byte, ORed by later ones)."""
            lo, w = 8 * byte, len(reg)
            with m.If(en):
                if lo < w:
                    m.d.sync += reg[lo:min(w, lo + 8)].eq(d[:min(w, lo + 8) - lo])
                if lo + 8 > w:
                    extra = d[max(0, w - lo):] != 0
                    m.d.sync += flag.eq(extra if lo <= w else flag | extra)

        # --- counters: bit-serial saturating increments, byte-wise ring for STATUS --------------
        # A count selects one counter (ctr_sel) and rotates it LSB first through the serial adder
        # (carry ctr_t): 16 steps put every bit back in place, incremented.  A carry out of the
        # last step means it was 0xFFFF (now 0): a second pass subtracts 1 (borrow ctr_t), which
        # saturates it.  FRAME, SEQ and ACT each start at most one count, after the previous one.
        ctrs = self.counters
        snap = Signal(8 * _SNAP_BYTES)  # STATUS snapshot: flags, run_status, cycles
        ring = [snap[8 * i:8 * i + 8] for i in range(_SNAP_BYTES)] + [c[h:h + 8] for c in ctrs for h in (0, 8)]
        ring_step = Signal()  # rotate the ring by one byte: byte i takes byte i + 1
        snap_load = Signal()
        ctr_clear = Signal()
        ctr_busy = Signal()  # a count is being applied
        ctr_sel = Signal(range(N_COUNTERS))
        ctr_bit = Signal(4)  # steps of the current pass (wraps to 0 at its end)
        ctr_t = Signal()  # serial carry (increment) or borrow (decrement)
        ctr_dec = Signal()  # second pass: the increment wrapped 0xFFFF to 0, decrement it back
        ctr_q0 = Signal()
        m.d.comb += ctr_q0.eq(Array(c[0] for c in ctrs)[ctr_sel])

        def ring_next(i):
            return ring[(i + 1) % len(ring)]

        with m.If(snap_load):
            m.d.sync += snap.eq(Cat(bus.busy, bus.done, Const(0, 6), bus.run_status, bus.cycles))
        with m.Elif(ring_step):
            m.d.sync += snap.eq(Cat(*(ring_next(i) for i in range(_SNAP_BYTES))))
        for n, c in enumerate(ctrs):
            i = _SNAP_BYTES + 2 * n
            with m.If(ctr_clear):
                m.d.sync += c.eq(0)
            with m.Elif(ring_step):
                m.d.sync += c.eq(Cat(ring_next(i), ring_next(i + 1)))
            with m.Elif(ctr_busy & (ctr_sel == n)):
                # LSB first through the serial adder; after 16 steps every bit is back in place.
                m.d.sync += c.eq(Cat(c[1:], c[0] ^ ctr_t))
        with m.If(ctr_busy):
            m.d.sync += [ctr_bit.eq(ctr_bit + 1), ctr_t.eq(ctr_t & (ctr_q0 ^ ctr_dec))]
            with m.If(ctr_bit == 15):
                with m.If(~ctr_dec & ctr_t & ctr_q0):  # carry out: it was 0xFFFF
                    m.d.sync += [ctr_dec.eq(1), ctr_t.eq(1)]
                with m.Else():
                    m.d.sync += ctr_busy.eq(0)

        def count(which):
            """Start a count (only while ``~ctr_busy``): 16 cycles, 32 if saturated."""
            m.d.sync += [ctr_sel.eq(which), ctr_busy.eq(1), ctr_t.eq(1), ctr_dec.eq(0)]

        # --- reply memory, writer and sender ----------------------------------------------------
        s_base, t_base, depth = self.reply_layout
        m.submodules.reply_mem = reply_mem = Memory(shape=8, depth=depth, init=[])
        rb_wp = reply_mem.write_port()
        rb_rp = reply_mem.read_port()
        rptr = Signal(range(depth + 1))  # the sender's read address
        m.d.comb += [rb_rp.addr.eq(rptr), rx_rp.addr.eq(rx_n), rb_rp.en.eq(0)]

        m.submodules.writer = bld = CobsWriter(depth=depth)
        m.d.comb += [rb_wp.addr.eq(bld.wr_addr), rb_wp.data.eq(bld.wr_data), rb_wp.en.eq(bld.wr_en)]
        region = Signal()  # the reply being built or sent: 0 stored reply, 1 transport NAK
        base = Mux(region, t_base, s_base)
        # The byte stream through the CRC: received bytes while receiving, then the reply's raw
        # bytes (the writer takes those).  Registered once (bq): the CRC register and the writer
        # work on bq, so their logic does not depend on the byte multiplexer (b, selected by the
        # state).  The writer is never offered a byte while it closes a 254-byte block (its
        # `ready` is low then, the cycle after such a block's last byte): the header and the small
        # payloads are too short to fill a block, and every other byte (copied, READ_MEM data,
        # CRC) is at least two cycles after the previous one.
        b = Signal(8)  # the next byte, when b_take
        b_take = Signal()
        bq = Signal(8)
        bq_take = Signal()
        m.d.sync += [bq.eq(b), bq_take.eq(b_take)]
        m.d.comb += [bld.data.eq(bq), bld.take.eq(bq_take & ~in_rx)]
        # One CRC register: the receiver's while receiving, the reply's while the receiver waits;
        # set to its initial value whenever one of them starts.  It includes a byte two cycles
        # after the byte was taken (b_take).
        crc = Signal(16, init=0xFFFF)
        crc_clear = Signal()
        with m.If(crc_clear):
            m.d.sync += crc.eq(0xFFFF)
        with m.Elif(bq_take):
            m.d.sync += crc.eq(_crc16_next(crc, bq))

        # Sender: one byte per two cycles (fetch, offer) from the region's leading delimiter up to
        # and including the first 0x00 after it.
        tx_busy = Signal()
        tx_have = Signal()  # rb_rp.data holds the byte to offer
        tx_first = Signal()
        with m.If(tx_busy & ~tx_have):
            m.d.comb += rb_rp.en.eq(1)
            m.d.sync += [rptr.eq(rptr + 1), tx_have.eq(1)]
        m.d.comb += self.o.payload.eq(rb_rp.data)
        with m.If(tx_have):
            m.d.comb += self.o.valid.eq(1)
            with m.If(self.o.ready):
                m.d.sync += [tx_have.eq(0), tx_first.eq(0)]
                with m.If((rb_rp.data == 0) & ~tx_first):
                    m.d.sync += tx_busy.eq(0)

        # --- request checks (combinational, from the captured fields) ---------------------------
        wl = Signal(lbits)  # WRITE_MEM data length (meaningful when the payload is > 5 bytes)
        m.d.comb += wl.eq(plen - WRITE_HEADER_BYTES)
        # Compact transfers: the space that has an entry layout; a read's reply length (length /
        # stride entries of entry_bytes each: ACT makes it the count of bytes to send); the
        # address step that jumps over an entry's hole.
        ((c_sp, (c_used, c_stride)),) = self.compact.items() or ((None, (1, 1)),)
        c_shift = c_stride.bit_length() - 1
        c_space = Const(0) if c_sp is None else (space == c_sp)
        rlen = Mux(x_compact, _times_const(cnt >> c_shift, c_used), cnt)
        w_pos = Signal(range(c_used))  # byte of the entry the next compact-write data byte is in
        w_cnt = Signal(range(limit + 1))  # entries started so far (data and CRC bytes)
        w_prev = Signal.like(w_cnt)
        w_ent = Signal.like(w_cnt)  # entries started by the data: w_cnt two bytes back
        step_addr = Signal(abits)
        if c_sp is None:
            m.d.comb += step_addr.eq(baddr + 1)
        else:  # one adder: +1, or over the hole to the next entry (a multiple of the stride)
            skip = x_compact & (baddr[:c_shift] == c_used - 1)
            m.d.comb += step_addr.eq(baddr + Mux(skip, c_stride - c_used + 1, 1))
        align_mask = self.align - 1
        ck = Signal(4)
        with m.Switch(cmd):
            with m.Case(Command.IDENTIFY, Command.STATUS, Command.RESET_COUNTERS):
                m.d.comb += ck.eq(Mux(plen != 0, Status.BAD_ARG, Status.OK))
            with m.Case(Command.WRITE_MEM):
                with m.If(plen <= WRITE_HEADER_BYTES):
                    m.d.comb += ck.eq(Status.BAD_ARG)
                with m.Elif(space_bad | (x_compact & ~c_space)):
                    m.d.comb += ck.eq(Status.BAD_SPACE)
                with m.Elif((((baddr | wl) & align_mask) != 0) | (x_compact & ((baddr & (c_stride - 1)) != 0))):
                    m.d.comb += ck.eq(Status.BAD_ALIGN)
            with m.Case(Command.READ_MEM):
                with m.If(plen != _READ_REQ_BYTES):
                    m.d.comb += ck.eq(Status.BAD_ARG)
                with m.Elif(space_bad | (x_compact & ~c_space)):
                    m.d.comb += ck.eq(Status.BAD_SPACE)
                with m.Elif((cnt == 0) | cnt_hi | _gt_const(cnt, mp)):
                    m.d.comb += ck.eq(Status.BAD_ARG)
                with m.Elif((((baddr | cnt) & align_mask) != 0)
                            | (x_compact & (((baddr | cnt) & (c_stride - 1)) != 0))):
                    m.d.comb += ck.eq(Status.BAD_ALIGN)
            with m.Case(Command.RUN):
                m.d.comb += ck.eq(Mux(plen != _RUN_REQ_BYTES, Status.BAD_ARG, Status.OK))
            with m.Default():
                m.d.comb += ck.eq(Status.UNKNOWN_CMD)
        # Range: address + length > size (RUN: address + 1 > size of DESC); the sum of the kept
        # address bits and a length <= max_payload cannot wrap.
        # A compact write covers w_ent entries (counted as the frame came in) of c_stride bytes.
        wext = Mux(x_compact, w_ent << c_shift, wl) if c_sp is not None else wl
        extent = Signal(lbits + c_shift)  # the length the range covers, registered (see verdict_q below)
        m.d.sync += extent.eq(Mux(is_run, 1, Mux(is_write, wext, cnt)))
        end = Signal(max(abits, lbits + c_shift) + 1)
        m.d.comb += end.eq(baddr + extent)
        out_of_range = Signal()
        with m.Switch(Mux(is_run, Space.DESC, space)):
            for sp in Space:
                with m.Case(sp):
                    m.d.comb += out_of_range.eq(addr_hi | _gt_const(end, sizes[sp]))
        # Three register stages (a long path otherwise: length decode -> end adder -> range
        # compare was the board build's longest at 30 MHz): the range's extent, the checks, the
        # verdict.  SEQ reads the verdict at least five cycles after the last field was captured
        # (the CRC's two bytes and the FRAME and VERDICT states come between), so all three
        # stages have settled by then.
        # `bus.busy` joins in the second stage; it can only fall by itself, so the register at
        # worst answers BUSY for a RUN that ended in the cycle before.
        ck_q = Signal(4)
        out_of_range_q = Signal()
        m.d.sync += [ck_q.eq(ck), out_of_range_q.eq(out_of_range)]
        verdict = Signal(4)
        m.d.comb += verdict.eq(ck_q)
        with m.If((ck_q == Status.OK) & (is_run | is_write | is_read)):
            with m.If(out_of_range_q):
                m.d.comb += verdict.eq(Status.BAD_ADDRESS)
            with m.Elif(bus.busy):
                m.d.comb += verdict.eq(Status.BUSY)
        verdict_q = Signal(4)
        m.d.sync += verdict_q.eq(verdict)

        # --- reply header and small payloads -----------------------------------------------------
        r_nak = Signal()  # the reply is a NAK (code 0xFF, payload status + received code)
        k = Signal(range(STATUS_PAYLOAD_BYTES))  # byte index in the header / small payload
        # ACK: RESPONSE_FLAG | command; NAK: 0xFF.
        code_byte = Cat(Mux(r_nak, 7, cmd), r_nak.replicate(4), Const(1, 1))
        assert RESPONSE_FLAG == 0x80 and NAK_CODE == 0xFF
        len_lo = Signal(8)
        len_hi = Signal(8)
        with m.If(r_nak):
            m.d.comb += len_lo.eq(_NAK_BYTES)
        with m.Else():
            with m.Switch(cmd):
                with m.Case(Command.IDENTIFY):
                    m.d.comb += [len_lo.eq(len(ident) & 0xFF), len_hi.eq(len(ident) >> 8)]
                with m.Case(Command.STATUS):
                    m.d.comb += len_lo.eq(STATUS_PAYLOAD_BYTES)
                with m.Case(Command.WRITE_MEM):
                    m.d.comb += len_lo.eq(_WRITE_ACK_BYTES)
                with m.Case(Command.READ_MEM):
                    m.d.comb += Cat(len_lo, len_hi).eq(cnt)

        def start_build(to_region):
            m.d.comb += [bld.start.eq(1), bld.base.eq(t_base if to_region else s_base), crc_clear.eq(1)]
            m.d.sync += [region.eq(to_region), k.eq(0)]

        # Bus payloads are driven all the time (only the valids depend on the state).
        m.d.comb += [
            wr.payload.space.eq(space), wr.payload.addr.eq(baddr), wr.payload.data.eq(rx_rp.data),
            rq.payload.space.eq(space), rq.payload.addr.eq(baddr),
            run.payload.eq(baddr),
        ]

        m.d.comb += tok.ready.eq(in_rx)

        with m.FSM(name="link"):
            with m.State("RX"):
                with m.If(tok.valid & tok.payload.end):
                    # The checks before the CRC's (its last byte is still in flight).
                    with m.If(rx_over):
                        m.d.sync += st.eq(Status.BAD_LENGTH)
                    with m.Elif(tok.payload.truncated | (rx_n < FRAME_OVERHEAD)):
                        m.d.sync += st.eq(Status.BAD_FRAME)
                    with m.Else():
                        m.d.sync += st.eq(Status.OK)
                    m.d.sync += [
                        f_lenbad.eq(plen_hi | (plen != (rx_n - FRAME_OVERHEAD)[:lbits])),
                        f_nak.eq(rx_over | (rx_n >= 2)),
                        rx_n.eq(0),
                        rx_over.eq(0),
                        cap.eq(1),
                        w_pos.eq(0),
                        w_cnt.eq(0),
                        in_rx.eq(0),
                    ]
                    # STATUS reports the state of the bus when its request was received (the ring
                    # is idle while receiving).
                    m.d.comb += snap_load.eq(1)
                    m.next = "FRAME"
                with m.Elif(tok.valid):
                    with m.If(~rx_over):
                        with m.If(rx_n == limit):
                            m.d.sync += rx_over.eq(1)
                        with m.Else():
                            m.d.comb += [rx_wp.addr.eq(rx_n), rx_wp.data.eq(d), rx_wp.en.eq(1)]
                            m.d.comb += [b.eq(d), b_take.eq(1)]
                            m.d.sync += rx_n.eq(rx_n + 1)
                            if c_sp is not None:
                                # Entries a compact WRITE_MEM's data starts, counted over every byte
                                # from the first data byte on; the CRC's two bytes come last, so the
                                # count two bytes back (w_ent) is the data's.
                                with m.If(rx_n >= _WRITE_DATA):
                                    m.d.sync += [w_pos.eq(Mux(w_pos == c_used - 1, 0, w_pos + 1)),
                                                 w_cnt.eq(w_cnt + (w_pos == 0)), w_prev.eq(w_cnt),
                                                 w_ent.eq(w_prev)]
                    # Captured fields: an overflowing frame is rejected whatever they hold, and the
                    # fields (rx_n < 11 < limit) are never past an overflow.  A field a frame is too
                    # short for is stale, and rejected by the payload size checks before any use.
                    m.d.sync += [rx_tail.eq(Cat(d, rx_tail[:8])), cap.eq(cap << 1)]
                    with m.If(cap[0]):
                        m.d.sync += cmd.eq(Mux(d[3:] == 0, d[:3], 0))
                    with m.If(cap[1]):
                        m.d.sync += rx_seq.eq(d)
                    capture_le(plen, plen_hi, 0, cap[2])
                    capture_le(plen, plen_hi, 1, cap[3])
                    with m.If(cap[4]):
                        m.d.sync += [space.eq(d[:2]), space_bad.eq(d[:7] >= len(Space)),
                                     x_compact.eq(d[7])]
                    # The address: raw bytes 4..7 (RUN) or 5..8 (WRITE_MEM, READ_MEM).
                    for j in range(4):
                        capture_le(baddr, addr_hi, j, Mux(is_run, cap[4 + j], cap[5 + j]))
                    capture_le(cnt, cnt_hi, 0, cap[9])
                    capture_le(cnt, cnt_hi, 1, cap[10])

            with m.State("FRAME"):
                # Wait for the previous reply to be sent (a new reply may overwrite it) and for the
                # last count; then the CRC and length checks.  Their verdict is registered and
                # acted on in VERDICT: deciding and acting in one cycle was the board build's
                # longest path (CRC compare -> counter select -> reply builder -> COBS writer).
                final = Signal(4)
                m.d.comb += final.eq(st)
                with m.If(st == Status.OK):
                    with m.If(crc != 0):
                        m.d.comb += final.eq(Status.BAD_CRC)
                    with m.Elif(f_lenbad):
                        m.d.comb += final.eq(Status.BAD_LENGTH)
                with m.If(~tx_busy & ~ctr_busy):
                    m.d.sync += st.eq(final)
                    m.next = "VERDICT"

            with m.State("VERDICT"):
                # Nothing starts the sender or the counters between FRAME and here.
                count(st[:3])  # FRAMES_OK, BAD_CRC, BAD_FRAME or BAD_LENGTH
                with m.If(st == Status.OK):
                    m.next = "SEQ"
                with m.Elif(f_nak):
                    m.d.sync += r_nak.eq(1)
                    start_build(1)
                    m.next = "HDR"
                with m.Else():
                    m.d.comb += crc_clear.eq(1)
                    m.d.sync += in_rx.eq(1)
                    m.next = "RX"

            with m.State("SEQ"):
                with m.If(~ctr_busy):
                    last_valid = Signal()
                    last_seq = Signal(8)
                    last_crc = Signal(16)
                    with m.If(last_valid & (rx_seq == last_seq) & (rx_tail == last_crc)):
                        count(DevCounter.DUPLICATE)
                        m.d.sync += region.eq(0)
                        m.next = "SEND"
                    with m.Else():
                        with m.If(last_valid & (rx_seq != (last_seq + 1)[:8])):
                            count(DevCounter.OUT_OF_ORDER)
                        m.d.sync += [last_valid.eq(1), last_seq.eq(rx_seq), last_crc.eq(rx_tail),
                                     st.eq(verdict_q)]
                        m.next = "ACT"

            with m.State("ACT"):
                with m.If(~ctr_busy):
                    m.d.sync += r_nak.eq(st != Status.OK)
                    with m.If(st != Status.OK):
                        with m.If(st == Status.UNKNOWN_CMD):
                            count(DevCounter.UNKNOWN_CMD)
                        with m.Elif(st != Status.BUSY):
                            count(DevCounter.BAD_ARG)
                        start_build(0)
                        m.next = "HDR"
                    with m.Elif(is_run):
                        m.next = "RUN"
                    with m.Else():
                        with m.Switch(cmd):
                            with m.Case(Command.RESET_COUNTERS):
                                m.d.comb += ctr_clear.eq(1)
                            with m.Case(Command.IDENTIFY):
                                m.d.sync += rx_n.eq(id_base)
                            with m.Case(Command.WRITE_MEM):
                                # The echo: space and address are raw bytes 4..8, then the length.
                                m.d.sync += [cnt.eq(wl), rx_n.eq(HEADER_BYTES)]
                            with m.Case(Command.READ_MEM):
                                m.d.sync += cnt.eq(rlen)  # the bytes to send (fewer when compact)
                        start_build(0)
                        m.next = "HDR"

            with m.State("RUN"):
                m.d.comb += run.valid.eq(1)
                with m.If(run.ready):
                    start_build(0)
                    m.next = "HDR"

            # --- building the reply: header and small payloads, one byte per cycle ----------------
            with m.State("HDR"):
                m.d.comb += [b.eq(Array([code_byte, rx_seq, len_lo, len_hi])[k[:2]]), b_take.eq(1)]
                m.d.sync += k.eq(k + 1)
                with m.If(k == HEADER_BYTES - 1):
                    m.d.sync += k.eq(0)
                    with m.If(r_nak):
                        m.next = "P_NAK"
                    with m.Else():
                        with m.Switch(cmd):
                            with m.Case(Command.IDENTIFY):
                                m.next = "COPY_A"
                            with m.Case(Command.STATUS):
                                m.next = "P_STATUS"
                            with m.Case(Command.WRITE_MEM):
                                m.next = "COPY_A"
                            with m.Case(Command.READ_MEM):
                                m.next = "RD_REQ"
                            with m.Default():
                                m.next = "CRC_WAIT"

            with m.State("P_NAK"):
                # The status, then the received code: raw byte 0 (rx_n is 0), read meanwhile.
                m.d.comb += [b.eq(Mux(k[0], rx_rp.data, st)), b_take.eq(1), rx_rp.en.eq(~k[0])]
                m.d.sync += k.eq(k + 1)
                with m.If(k == _NAK_BYTES - 1):
                    m.next = "CRC_WAIT"

            with m.State("P_WLEN"):  # the WRITE_MEM echo's length, after space and address
                m.d.comb += [b.eq(Mux(k[0], cnt[8:], cnt[:8])), b_take.eq(1)]
                m.d.sync += k.eq(k + 1)
                with m.If(k == 1):
                    m.next = "CRC_WAIT"

            with m.State("P_STATUS"):
                # flags, run_status (ring), n_counters, reserved, cycles, counters (ring): 22 ring
                # steps, one full turn.
                is_const = k[1:] == 1  # k is 2 or 3
                m.d.comb += [b.eq(Mux(is_const, Mux(k[0], 0, N_COUNTERS), ring[0])), b_take.eq(1),
                             ring_step.eq(~is_const)]
                m.d.sync += k.eq(k + 1)
                with m.If(k == STATUS_PAYLOAD_BYTES - 1):
                    m.next = "CRC_WAIT"

            # --- long payloads: at most one byte every other cycle -------------------------------
            with m.State("COPY_A"):  # from rx_buf: the IDENTIFY payload, or raw bytes 4..8 (echo)
                m.d.comb += rx_rp.en.eq(1)
                m.d.sync += rx_n.eq(rx_n + 1)
                m.next = "COPY_B"
            with m.State("COPY_B"):
                m.d.comb += [b.eq(rx_rp.data), b_take.eq(1)]
                with m.If(is_write):
                    with m.If(rx_n == _WRITE_DATA):  # then rx_n addresses the data (WRITE)
                        m.next = "P_WLEN"
                    with m.Else():
                        m.next = "COPY_A"
                with m.Elif(rx_n == id_end):
                    m.next = "CRC_WAIT"
                with m.Else():
                    m.next = "COPY_A"

            with m.State("RD_REQ"):  # READ_MEM: one request at a time
                m.d.comb += [rq.valid.eq(1), rs.ready.eq(1)]
                with m.If(rq.ready):
                    m.d.sync += baddr.eq(step_addr)
                    m.next = "RD_RESP"
            with m.State("RD_RESP"):
                m.d.comb += rs.ready.eq(1)
                with m.If(rs.valid):
                    m.d.comb += [b.eq(rs.payload), b_take.eq(1)]
                    m.d.sync += cnt.eq(cnt - 1)
                    with m.If(cnt == 1):
                        m.next = "CRC_WAIT"
                    with m.Else():
                        m.next = "RD_REQ"

            # --- the CRC bytes -----------------------------------------------------------------
            # A byte taken at t is in `crc` at t + 2.  Taking CRC[15:8] as data shifts the register
            # by a byte (CRC[7:0] moves up, the rest is 0): both bytes come from crc[8:], each two
            # cycles after the previous byte.
            with m.State("CRC_WAIT"):
                m.next = "CRC_HI"
            with m.State("CRC_HI"):
                m.d.comb += [b.eq(crc[8:]), b_take.eq(1)]
                m.next = "CRC_WAIT2"
            with m.State("CRC_WAIT2"):
                m.next = "CRC_LO"
            with m.State("CRC_LO"):
                m.d.comb += [b.eq(crc[8:]), b_take.eq(1)]
                m.next = "END"
            with m.State("END"):
                m.d.comb += bld.finish.eq(1)
                with m.If(bld.done):
                    with m.If(~r_nak & is_write):
                        # rx_n addresses the data (the copy of the echo left it there).
                        m.d.comb += rx_rp.en.eq(1)
                        m.d.sync += rx_n.eq(rx_n + 1)
                        m.next = "WRITE"
                    with m.Else():
                        m.next = "SEND"

            # --- WRITE_MEM data, after its reply is built (its echo leaves rx_n at the data) -------
            with m.State("WRITE"):
                # rx_rp.data holds the byte at rx_n - 1 until the next read enable.
                m.d.comb += wr.valid.eq(1)
                with m.If(wr.ready):
                    m.d.sync += [baddr.eq(step_addr), cnt.eq(cnt - 1)]
                    with m.If(cnt == 1):
                        m.next = "SEND"
                    with m.Else():
                        m.d.comb += rx_rp.en.eq(1)
                        m.d.sync += rx_n.eq(rx_n + 1)

            with m.State("SEND"):
                m.d.comb += crc_clear.eq(1)
                m.d.sync += [tx_busy.eq(1), tx_first.eq(1), rptr.eq(base), in_rx.eq(1), rx_n.eq(0)]
                m.next = "RX"
        return m
