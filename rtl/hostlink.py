"""HostLink gateware: the device end of the :mod:`hadahw.protocol` link, on byte streams.

Receive path: byte stream (e.g. from :class:`~hadahw.rtl.uart.UARTRx`) -> :class:`CobsDecoder`
-> receive buffer (``lib.memory.Memory``, ``6 + max_payload`` bytes) and a CRC-16/CCITT-FALSE
register (``amaranth.lib.crc``, one byte per cycle, residue check: the CRC over the whole frame is
0); the header, the first seven payload bytes and the last two bytes are also captured in
registers -> the receiver checks in the protocol's order -> execution against the host bus
(:mod:`hadahw.rtl.hostbus`).  WRITE_MEM data goes to the bus only after the whole frame passed
its checks, streamed from the receive buffer.

Transmit path: a reply is (code, seq, length, payload place).  Payloads live in the reply memory
(READ_MEM data, STATUS, WRITE_MEM echo and command NAKs are written there; the IDENTIFY payload is
part of its initial contents, so no ROM of its own) or, for transport NAKs, in two registers;
header and CRC bytes come from registers.  A first pass over header + payload computes the CRC
(the same CRC register: the receiver is waiting then); :class:`CobsEncoder` then reads the same
byte source again, twice per COBS block (scan for the zero, send), so it needs no lookahead
buffer, and sends ``0x00 | COBS(raw) | 0x00`` on the output stream (e.g. to
:class:`~hadahw.rtl.uart.UARTTx`).

The reply to the last *executed* frame stays in the reply memory with its descriptor, so a
retransmitted request (same seq and CRC) is answered by sending it again, without executing
anything; transport NAKs do not disturb it.

Concurrency: receiving runs while a reply is being sent.  When a frame is complete the receiver
waits for the transmitter to finish, then checks and executes the frame and computes the reply's
CRC; meanwhile the input stream is not ready (about one cycle per WRITE_MEM data byte plus bus
stalls, one per reply byte, and a dozen more).  A host that waits for each answer (the protocol
is stop-and-wait) never sends during that time; put a FIFO between UARTRx and the HostLink if
other traffic (retransmissions after a too-short host timeout) must not be lost.

Behaviour on the wire is that of :class:`hadahw.sw.devmodel.DevModel` with the same parameters,
except what depends on the core: STATUS reports the ``busy``/``done``/``run_status``/``cycles``
of the bus (the model advances its fake run per STATUS poll).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hadahw.protocol import (
    CRC_BYTES,
    FRAME_OVERHEAD,
    HEADER_BYTES,
    NAK_CODE,
    WRITE_HEADER_BYTES,
    Command,
    DevCounter,
    DeviceInfo,
    Space,
    Status,
    ack_code,
    pack_identify,
)

from .cobs import CobsDecoder, CobsEncoder
from .hostbus import HostBusSignature

__all__ = ["HostLink", "STATUS_PAYLOAD_BYTES"]

N_COUNTERS = len(DevCounter)
#: Length of the STATUS ACK payload.
STATUS_PAYLOAD_BYTES = 8 + 2 * N_COUNTERS
_COUNTER_MAX = 0xFFFF
_READ_REQ_BYTES = 7  # space u8, address u32, length u16
_RUN_REQ_BYTES = 4
_WRITE_ACK_BYTES = 7
_CAPTURED_ARGS = 7  # payload bytes 0..6 are also kept in registers

# What FILL writes into the reply buffer.
_FILL_NAK, _FILL_WACK, _FILL_STATUS = 0, 1, 2


def _crc16_processor():
    return catalog.CRC16_CCITT_FALSE(data_width=8).create()


def _gt_const(value, c: int):
    """``value > c`` for a constant ``c``; an OR of bit ranges when ``c`` is a power of two."""
    if c & (c - 1) or c == 0:
        return value > c
    k = c.bit_length() - 1
    return (value[k + 1:] != 0) | (value[k] & (value[:k] != 0))


def _ge_const(value, c: int):
    """``value >= c`` for a constant ``c``; an OR of high bits when ``c`` is a power of two."""
    if c & (c - 1) or c == 0:
        return value >= c
    return value[c.bit_length() - 1:] != 0


class HostLink(wiring.Component):
    """The device side of the HostLink protocol, between byte streams and a host bus.

    Parameters
    ----------
    max_payload : int
        Receive buffer (``6 + max_payload`` bytes) and longest READ_MEM, in
        ``[MIN_DEVICE_PAYLOAD, MAX_PAYLOAD]``; IDENTIFY reports it, so the host adapts.  256 keeps
        the receive buffer in one EBR, and the reply memory too if the IDENTIFY payload is at most
        252 bytes (2 EBR in all).
    space_sizes : mapping or sequence
        Bytes per :class:`~hadahw.protocol.Space` (BAD_ADDRESS checks, IDENTIFY, bus width).
    config_json : bytes
        The accelerator configuration as UTF-8 JSON, reported by IDENTIFY (stored in the reply
        memory's initial contents).
    align : int
        Power of two dividing every WRITE_MEM/READ_MEM address and length.
    addr_width : int, optional
        Bus address width (default: enough for the largest space).

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
        for tests that preset them).
    """

    def __init__(self, *, max_payload: int = 256, space_sizes, config_json: bytes = b"{}", align: int = 1,
                 addr_width: int | None = None):
        if not isinstance(config_json, (bytes, bytearray)):
            raise TypeError(f"config_json must be bytes, not {type(config_json).__name__}")
        try:
            config = bytes(config_json).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("config_json must be UTF-8") from None
        for name, v in (("max_payload", max_payload), ("align", align)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an integer, not {type(v).__name__}")
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
        """Reply buffer (payloads other than IDENTIFY's): the longest READ_MEM or STATUS."""
        return max(self.max_payload, STATUS_PAYLOAD_BYTES)

    @property
    def max_reply_payload(self) -> int:
        return max(self.max_payload, len(self.identify_payload), STATUS_PAYLOAD_BYTES)

    @property
    def ident_base(self) -> int:
        """Where the IDENTIFY reply sits in the reply memory (payload at ``ident_base + 4``).

        A power of two, so that ``ident_base | index`` addresses it, at or past the end of the
        reply buffer's payload (``4 + reply_buffer_bytes``, header slots being unused).
        """
        n = max(self.reply_buffer_bytes, HEADER_BYTES + len(self.identify_payload))
        return 1 << (n - 1).bit_length()

    def elaborate(self, platform):
        m = Module()
        mp = self.max_payload
        limit = self.rx_buffer_bytes
        ident = self.identify_payload
        pmax = self.max_reply_payload
        rmax = pmax + FRAME_OVERHEAD
        bus = self.bus
        aw = bus.signature.addr_width
        sizes = self.space_sizes

        # --- receive: COBS, buffer, captured fields -------------------------------------------
        m.submodules.cobs_dec = dec = CobsDecoder()
        wiring.connect(m, wiring.flipped(self.i), dec.i)
        tok = dec.o

        m.submodules.rx_buf = rx_buf = Memory(shape=8, depth=limit, init=[])
        rx_wp = rx_buf.write_port()
        rx_rp = rx_buf.read_port()
        # One CRC register: the receiver's while receiving, the reply's while the receiver waits.
        # Its inputs are registered: crc.crc includes a byte two cycles after the byte was taken.
        m.submodules.crc = crc = _crc16_processor()
        m.d.sync += [crc.start.eq(0), crc.valid.eq(0)]

        rx_n = Signal(range(limit + 1))  # decoded bytes in this frame
        rx_over = Signal()  # more than `limit` bytes: discarding up to the delimiter
        rx_code = Signal(8)
        rx_seq = Signal(8)
        rx_len = Signal(16)  # length field
        rx_arg = [Signal(8, name=f"rx_arg{k}") for k in range(_CAPTURED_ARGS)]
        rx_tail = Signal(16)  # last two bytes: the CRC field once the frame is complete
        f_status = Signal(4)  # receiver verdict of the completed frame
        f_nak = Signal()  # at least two bytes decoded: a transport NAK can be addressed
        f_lenbad = Signal()  # length field != decoded bytes - 6
        f_dup = Signal()  # same seq and CRC as the last executed frame
        f_ooo = Signal()  # seq is not last seq + 1

        # Request fields (meaningful once the payload size has been checked).
        space = rx_arg[0]
        rw_addr = Cat(*rx_arg[1:5])
        rd_len = Cat(rx_arg[5], rx_arg[6])
        run_addr = Cat(*rx_arg[0:4])
        wr_len = Signal(16)  # WRITE_MEM data length (registered in VERDICT)
        c_rw = Signal()  # the command is WRITE_MEM or READ_MEM (registered in VERDICT)
        c_run = Signal()  # the command is RUN
        cmd = Signal(3)  # rx_code if it is a Command, else 0 (registered in VERDICT)
        assert max(Command) < 8

        # --- counters: one shared incrementer, one mux (also read by STATUS) -------------------
        # count() registers the request; the next cycle reads the counter and registers its
        # successor, the cycle after writes it back (consecutive requests are for different
        # counters, so the pipeline needs no bypass).
        ctr = Array(self.counters)
        ctr_sel = Signal(range(N_COUNTERS))
        ctr_inc = Signal()
        ctr_clear = Signal()
        ctr_val = Signal(16)
        ctr_wsel = Signal(range(N_COUNTERS))
        ctr_wen = Signal()
        ctr_next = Signal(16)
        m.d.comb += ctr_val.eq(ctr[ctr_sel])
        m.d.sync += [
            ctr_inc.eq(0),
            ctr_wen.eq(ctr_inc & (ctr_val != _COUNTER_MAX)),
            ctr_wsel.eq(ctr_sel),
            ctr_next.eq(ctr_val + 1),
        ]
        with m.If(ctr_clear):
            m.d.sync += [c.eq(0) for c in ctr]
        with m.Elif(ctr_wen):
            m.d.sync += ctr[ctr_wsel].eq(ctr_next)

        def count(which):
            m.d.sync += [ctr_sel.eq(which), ctr_inc.eq(1)]

        # --- last executed frame and reply descriptors ----------------------------------------
        last_valid = Signal()
        last_seq = Signal(8)
        last_crc = Signal(16)
        l_code = Signal(8)  # stored reply: code, payload length, IDENTIFY payload (else buffer)
        l_len = Signal(range(pmax + 1))
        l_rom = Signal()
        t_seq = Signal(8)  # transport NAK: seq, status, received code
        t_status = Signal(4)
        t_code = Signal(8)
        tx_transport = Signal()  # the reply being sent is the transport NAK
        crc_final = Signal(16)

        # --- execution state -----------------------------------------------------------------
        ck_status = Signal(4)
        ex_status = Signal(4)
        wide = Signal(33)  # end of the accessed range; the cycles snapshot for STATUS
        snap_flags = Signal(2)
        snap_run_status = Signal(8)
        fill_kind = Signal(2)
        cnt = Signal(range(max(limit, rmax) + 1))
        cnt2 = Signal(range(max(limit, pmax) + 1))
        ptr = Signal(range(limit + 1))
        baddr = Signal(aw)
        rq_valid = Signal()  # READ_MEM: requests left to issue (cnt != 0)

        # Reply memory: payload byte j of the reply buffer at address 4 + j (the raw frame index),
        # the IDENTIFY payload likewise at ident_base + 4 + j.
        base = self.ident_base
        m.submodules.reply_mem = reply_mem = Memory(shape=8, depth=base + HEADER_BYTES + len(ident),
                                                    init=[0] * (base + HEADER_BYTES) + list(ident))
        rb_wp = reply_mem.write_port()
        rb_rp = reply_mem.read_port()

        m.d.comb += [rx_rp.en.eq(0), rx_wp.en.eq(0), rb_wp.en.eq(0)]

        # --- byte source of the reply (raw frame index -> byte, one cycle later) ---------------
        m.submodules.cobs_enc = enc = CobsEncoder(max_length=rmax)
        wiring.connect(m, enc.o, wiring.flipped(self.o))

        cur_code = Mux(tx_transport, NAK_CODE, l_code)
        cur_seq = Mux(tx_transport, t_seq, last_seq)
        cur_len = Signal(16)
        m.d.comb += cur_len.eq(Mux(tx_transport, 2, l_len))
        pay_end = Signal(range(rmax + 1))  # 4 + payload length: where the CRC starts
        src_addr = Signal(range(rmax + 2))  # driven by registers only
        src_en = Signal()
        crc_pass = Signal()  # the CRC pass reads the source at cnt (the encoder is idle)
        pay_last = Signal(range(rmax + 1))  # pay_end - 1
        crc_last = Signal()  # registered (cnt == pay_end) during the CRC pass
        m.d.comb += [src_addr.eq(Mux(crc_pass, cnt, enc.rd_addr)), src_en.eq(crc_pass | enc.rd_en)]
        reg_val = Signal(8)
        from_mem = Signal()
        with m.If(src_addr < HEADER_BYTES):
            m.d.comb += reg_val.eq(Array([cur_code, cur_seq, cur_len[:8], cur_len[8:]])[src_addr[:2]])
        with m.Elif(src_addr < pay_end):
            # Transport NAK: status at index 4, received code at index 5.
            m.d.comb += [reg_val.eq(Mux(src_addr[0], t_code, t_status)), from_mem.eq(~tx_transport)]
        with m.Elif(src_addr == pay_end):
            m.d.comb += reg_val.eq(crc_final[8:])
        with m.Else():
            m.d.comb += reg_val.eq(crc_final[:8])
        mem_q = Signal()
        reg_q = Signal(8)
        with m.If(src_en):
            m.d.sync += [mem_q.eq(from_mem), reg_q.eq(reg_val)]
        m.d.comb += [
            rb_rp.addr.eq(Mux(l_rom, base | src_addr, src_addr)),
            rb_rp.en.eq(src_en),
            enc.rd_data.eq(Mux(mem_q, rb_rp.data, reg_q)),
        ]

        wr, rq, rs, run = bus.write, bus.read_req, bus.read_resp, bus.run
        space2 = space[:len(wr.payload.space)]

        # A register equal to (state == RX), and the one-hot position of the byte being decoded
        # among the captured ones, keep the capture enables short.
        in_rx = Signal(init=1)
        cap = Signal(HEADER_BYTES + _CAPTURED_ARGS, init=1)
        m.d.comb += tok.ready.eq(in_rx)

        with m.FSM(name="link"):
            with m.State("RX"):
                d = tok.payload.data
                with m.If(tok.valid & tok.payload.end):
                    # The checks before and after the CRC's (its last byte is still in flight).
                    with m.If(rx_over):
                        m.d.sync += f_status.eq(Status.BAD_LENGTH)
                    with m.Elif(tok.payload.truncated | (rx_n < FRAME_OVERHEAD)):
                        m.d.sync += f_status.eq(Status.BAD_FRAME)
                    with m.Else():
                        m.d.sync += f_status.eq(Status.OK)
                    m.d.sync += [
                        f_lenbad.eq(rx_len != rx_n - FRAME_OVERHEAD),
                        f_nak.eq(rx_over | (rx_n >= 2)),
                        rx_n.eq(0),
                        rx_over.eq(0),
                        cap.eq(1),
                        in_rx.eq(0),
                    ]
                    m.next = "VERDICT"
                with m.Elif(tok.valid):
                    with m.If(~rx_over):
                        with m.If(rx_n == limit):
                            m.d.sync += rx_over.eq(1)
                        with m.Else():
                            m.d.comb += [rx_wp.addr.eq(rx_n), rx_wp.data.eq(d), rx_wp.en.eq(1)]
                            m.d.sync += [crc.start.eq(rx_n == 0), crc.valid.eq(1), crc.data.eq(d),
                                         rx_n.eq(rx_n + 1)]
                    # Captured fields: an overflowing frame is rejected whatever they hold, and the
                    # header (rx_n < 11 < limit) is never past an overflow.
                    m.d.sync += [rx_tail.eq(Cat(d, rx_tail[:8])), cap.eq(cap << 1)]
                    fields = [rx_code, rx_seq, rx_len[:8], rx_len[8:], *rx_arg]
                    for k, field in enumerate(fields):
                        with m.If(cap[k]):
                            m.d.sync += field.eq(d)

            with m.State("VERDICT"):
                m.d.sync += [
                    wr_len.eq(rx_len - WRITE_HEADER_BYTES),
                    c_rw.eq((rx_code == Command.WRITE_MEM) | (rx_code == Command.READ_MEM)),
                    c_run.eq(rx_code == Command.RUN),
                    cmd.eq(Mux(rx_code < 8, rx_code[:3], 0)),
                    f_dup.eq(last_valid & (rx_seq == last_seq) & (rx_tail == last_crc)),
                    f_ooo.eq(last_valid & (rx_seq != (last_seq + 1)[:8])),
                ]
                with m.If(f_status == Status.OK):
                    with m.If(crc.crc != 0):
                        m.d.sync += f_status.eq(Status.BAD_CRC)
                    with m.Elif(f_lenbad):
                        m.d.sync += f_status.eq(Status.BAD_LENGTH)
                m.next = "FRAME"

            with m.State("FRAME"):
                # Wait for the previous reply to be sent: the reply memory and descriptors are free.
                with m.If(enc.idle):
                    with m.If(f_status != Status.OK):
                        with m.Switch(f_status):
                            with m.Case(Status.BAD_CRC):
                                count(DevCounter.BAD_CRC)
                            with m.Case(Status.BAD_FRAME):
                                count(DevCounter.BAD_FRAME)
                            with m.Case(Status.BAD_LENGTH):
                                count(DevCounter.BAD_LENGTH)
                        with m.If(f_nak):
                            m.d.sync += [t_seq.eq(rx_seq), t_code.eq(rx_code), t_status.eq(f_status),
                                         tx_transport.eq(1)]
                            m.next = "CRC_START"
                        with m.Else():
                            m.d.sync += in_rx.eq(1)
                            m.next = "RX"
                    with m.Else():
                        count(DevCounter.FRAMES_OK)
                        m.next = "SEQ"

            with m.State("SEQ"):
                with m.If(f_dup):
                    count(DevCounter.DUPLICATE)
                    m.d.sync += tx_transport.eq(0)
                    m.next = "CRC_START"
                with m.Else():
                    with m.If(f_ooo):
                        count(DevCounter.OUT_OF_ORDER)
                    m.d.sync += [last_valid.eq(1), last_seq.eq(rx_seq), last_crc.eq(rx_tail)]
                    m.next = "CHECK"

            with m.State("CHECK"):
                # Everything up to BAD_ALIGN, in the protocol's order; the range end for DECIDE.
                align_mask = self.align - 1
                with m.Switch(cmd):
                    with m.Case(Command.IDENTIFY, Command.STATUS, Command.RESET_COUNTERS):
                        m.d.sync += ck_status.eq(Mux(rx_len != 0, Status.BAD_ARG, Status.OK))
                    with m.Case(Command.WRITE_MEM):
                        with m.If(rx_len <= WRITE_HEADER_BYTES):
                            m.d.sync += ck_status.eq(Status.BAD_ARG)
                        with m.Elif(space >= len(Space)):
                            m.d.sync += ck_status.eq(Status.BAD_SPACE)
                        with m.Elif(((rw_addr | wr_len) & align_mask) != 0):
                            m.d.sync += ck_status.eq(Status.BAD_ALIGN)
                        with m.Else():
                            m.d.sync += ck_status.eq(Status.OK)
                    with m.Case(Command.READ_MEM):
                        with m.If(rx_len != _READ_REQ_BYTES):
                            m.d.sync += ck_status.eq(Status.BAD_ARG)
                        with m.Elif(space >= len(Space)):
                            m.d.sync += ck_status.eq(Status.BAD_SPACE)
                        with m.Elif((rd_len == 0) | (rd_len > mp)):
                            m.d.sync += ck_status.eq(Status.BAD_ARG)
                        with m.Elif(((rw_addr | rd_len) & align_mask) != 0):
                            m.d.sync += ck_status.eq(Status.BAD_ALIGN)
                        with m.Else():
                            m.d.sync += ck_status.eq(Status.OK)
                    with m.Case(Command.RUN):
                        m.d.sync += ck_status.eq(Mux(rx_len != _RUN_REQ_BYTES, Status.BAD_ARG, Status.OK))
                    with m.Default():
                        m.d.sync += ck_status.eq(Status.UNKNOWN_CMD)
                m.d.sync += wide.eq(rw_addr + Mux(cmd[0], rd_len, wr_len))  # READ_MEM is odd
                m.next = "DECIDE"

            with m.State("DECIDE"):
                status = Signal(4)
                out_of_range = Signal()
                with m.If(c_run):
                    m.d.comb += out_of_range.eq(_ge_const(run_addr, sizes[Space.DESC]))
                with m.Else():
                    with m.Switch(space2):
                        for sp in Space:
                            with m.Case(sp):
                                m.d.comb += out_of_range.eq(_gt_const(wide, sizes[sp]))
                m.d.comb += status.eq(ck_status)
                with m.If((ck_status == Status.OK) & (c_rw | c_run)):
                    with m.If(out_of_range):
                        m.d.comb += status.eq(Status.BAD_ADDRESS)
                    with m.Elif(bus.busy):
                        m.d.comb += status.eq(Status.BUSY)
                m.d.sync += ex_status.eq(status)
                m.next = "ACT"

            with m.State("ACT"):
                with m.If(ex_status != Status.OK):
                    with m.Switch(ex_status):
                        with m.Case(Status.UNKNOWN_CMD):
                            count(DevCounter.UNKNOWN_CMD)
                        with m.Case(Status.BAD_SPACE, Status.BAD_ADDRESS, Status.BAD_ALIGN, Status.BAD_ARG):
                            count(DevCounter.BAD_ARG)
                    m.d.sync += [
                        fill_kind.eq(_FILL_NAK), cnt.eq(0),
                        l_code.eq(NAK_CODE), l_len.eq(2), l_rom.eq(0),
                    ]
                    m.next = "FILL"
                with m.Else():
                    with m.Switch(cmd):
                        with m.Case(Command.IDENTIFY):
                            m.d.sync += [l_code.eq(ack_code(Command.IDENTIFY)), l_len.eq(len(ident)), l_rom.eq(1)]
                            m.next = "REPLY"
                        with m.Case(Command.STATUS):
                            m.d.sync += [
                                l_code.eq(ack_code(Command.STATUS)), l_len.eq(STATUS_PAYLOAD_BYTES), l_rom.eq(0),
                                wide.eq(bus.cycles), snap_flags.eq(Cat(bus.busy, bus.done)),
                                snap_run_status.eq(bus.run_status), fill_kind.eq(_FILL_STATUS), cnt.eq(0),
                            ]
                            m.next = "FILL"
                        with m.Case(Command.RESET_COUNTERS):
                            m.d.comb += ctr_clear.eq(1)
                            m.d.sync += [l_code.eq(ack_code(Command.RESET_COUNTERS)), l_len.eq(0), l_rom.eq(0)]
                            m.next = "REPLY"
                        with m.Case(Command.WRITE_MEM):
                            m.d.comb += [rx_rp.addr.eq(HEADER_BYTES + WRITE_HEADER_BYTES), rx_rp.en.eq(1)]
                            m.d.sync += [
                                cnt.eq(wr_len), ptr.eq(HEADER_BYTES + WRITE_HEADER_BYTES + 1),
                                baddr.eq(rw_addr[:aw]),
                            ]
                            m.next = "WRITE"
                        with m.Case(Command.READ_MEM):
                            m.d.sync += [cnt.eq(rd_len), ptr.eq(rd_len), cnt2.eq(HEADER_BYTES),
                                         baddr.eq(rw_addr[:aw]), rq_valid.eq(1)]
                            m.next = "READ"
                        with m.Case(Command.RUN):
                            m.next = "RUN"

            with m.State("WRITE"):
                # rx_rp.data holds the byte at ptr - 1 until the next read enable.
                m.d.comb += [
                    wr.valid.eq(1),
                    wr.payload.space.eq(space2),
                    wr.payload.addr.eq(baddr),
                    wr.payload.data.eq(rx_rp.data),
                ]
                with m.If(wr.ready):
                    m.d.sync += [baddr.eq(baddr + 1), cnt.eq(cnt - 1)]
                    with m.If(cnt == 1):
                        m.d.sync += [
                            l_code.eq(ack_code(Command.WRITE_MEM)), l_len.eq(_WRITE_ACK_BYTES), l_rom.eq(0),
                            fill_kind.eq(_FILL_WACK), cnt.eq(0),
                        ]
                        m.next = "FILL"
                    with m.Else():
                        m.d.comb += [rx_rp.addr.eq(ptr), rx_rp.en.eq(1)]
                        m.d.sync += ptr.eq(ptr + 1)

            with m.State("READ"):
                m.d.comb += [
                    rq.valid.eq(rq_valid),
                    rq.payload.space.eq(space2),
                    rq.payload.addr.eq(baddr),
                    rs.ready.eq(1),
                ]
                with m.If(rq.valid & rq.ready):
                    m.d.sync += [baddr.eq(baddr + 1), cnt.eq(cnt - 1)]
                    with m.If(cnt == 1):
                        m.d.sync += rq_valid.eq(0)
                with m.If(rs.valid):
                    m.d.comb += [rb_wp.addr.eq(cnt2), rb_wp.data.eq(rs.payload), rb_wp.en.eq(1)]
                    m.d.sync += [cnt2.eq(cnt2 + 1), ptr.eq(ptr - 1)]
                    with m.If(ptr == 1):
                        m.d.sync += [l_code.eq(ack_code(Command.READ_MEM)), l_len.eq(rd_len), l_rom.eq(0)]
                        m.next = "REPLY"

            with m.State("RUN"):
                m.d.comb += [run.valid.eq(1), run.payload.eq(run_addr)]
                with m.If(run.ready):
                    m.d.sync += [l_code.eq(ack_code(Command.RUN)), l_len.eq(0), l_rom.eq(0)]
                    m.next = "REPLY"

            with m.State("FILL"):
                # Small replies written into the reply buffer, one byte per cycle.
                k = cnt[:5]
                fill_byte = Signal(8)
                fill_last = Signal()
                with m.Switch(fill_kind):
                    with m.Case(_FILL_NAK):
                        m.d.comb += [fill_byte.eq(Mux(k[0], rx_code, ex_status)), fill_last.eq(k == 1)]
                    with m.Case(_FILL_WACK):
                        wack = [rx_arg[0], rx_arg[1], rx_arg[2], rx_arg[3], rx_arg[4], wr_len[:8], wr_len[8:]]
                        m.d.comb += [fill_byte.eq(Array(wack)[k[:3]]), fill_last.eq(k == _WRITE_ACK_BYTES - 1)]
                    with m.Default():
                        head = [snap_flags, snap_run_status, Const(N_COUNTERS, 8), Const(0, 8),
                                wide[0:8], wide[8:16], wide[16:24], wide[24:32]]
                        m.d.sync += ctr_sel.eq((k + 1)[1:] - 4)  # bytes 8.. are the counters, two each
                        m.d.comb += [
                            fill_byte.eq(Mux(k < 8, Array(head)[k[:3]], Mux(k[0], ctr_val[8:], ctr_val[:8]))),
                            fill_last.eq(k == STATUS_PAYLOAD_BYTES - 1),
                        ]
                m.d.comb += [rb_wp.addr.eq(cnt + HEADER_BYTES), rb_wp.data.eq(fill_byte), rb_wp.en.eq(1)]
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(fill_last):
                    m.next = "REPLY"

            with m.State("REPLY"):
                m.d.sync += tx_transport.eq(0)
                m.next = "CRC_START"

            # The reply's CRC: one pass over header and payload, while the receiver waits.
            with m.State("CRC_START"):
                m.d.sync += [crc_pass.eq(1), cnt.eq(0), pay_end.eq(cur_len + HEADER_BYTES),
                             pay_last.eq(cur_len + HEADER_BYTES - 1)]
                m.next = "CRC_FETCH"
            with m.State("CRC_FETCH"):
                m.d.sync += [cnt.eq(1), crc_last.eq(cnt == pay_last)]  # byte 0 is fetched (crc_pass)
                m.next = "CRC"
            with m.State("CRC"):
                # src data is byte cnt - 1; byte cnt is fetched (crc_pass).
                m.d.sync += [crc.start.eq(cnt == 1), crc.valid.eq(1), crc.data.eq(enc.rd_data), cnt.eq(cnt + 1),
                             crc_last.eq(cnt == pay_last)]
                with m.If(crc_last):  # cnt == pay_end
                    m.d.sync += crc_pass.eq(0)
                    m.next = "CRC_END"
            with m.State("CRC_END"):
                m.next = "SEND"  # the last byte is being added
            with m.State("SEND"):
                m.d.sync += crc_final.eq(crc.crc)
                m.d.comb += [enc.start.eq(1), enc.length.eq(pay_end + CRC_BYTES)]
                m.d.sync += in_rx.eq(1)
                m.next = "RX"
        return m
