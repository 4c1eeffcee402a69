"""HostLink protocol: the one contract shared by the host driver and the gateware.

Everything a byte on the UART means is decided here -- framing, checksum, command and status
codes, payload layouts and limits -- and nothing here does I/O.  The host link layer
(:mod:`hadahw.sw.link`), the pure-Python device model (:mod:`hadahw.sw.devmodel`) and the
Amaranth HostLink (written against this module) all import these definitions.

Wire format
-----------
A frame is built from a *raw frame*, COBS-encoded (consistent overhead byte stuffing) so it
contains no ``0x00`` byte, and sent between two ``0x00`` delimiters::

    0x00 | COBS(raw frame) | 0x00

An empty frame (two delimiters in a row) is ignored, so the leading delimiter costs one byte and
flushes whatever garbage a receiver has buffered: a receiver resynchronises by discarding bytes
up to the next ``0x00``.  The raw frame (all integers little-endian except the CRC):

    ======  ======  ============================================================================
    offset  size    field
    ======  ======  ============================================================================
    0       1       ``code``: a :class:`Command` (``0x01..0x7F``) from host to device;
                    ``0x80 | command`` (ACK) or ``0xFF`` (NAK) from device to host
    1       1       ``seq``: sequence number; a response carries its request's ``seq``
    2       2       ``length`` N of the payload, u16 LE, ``N <= max_payload <= MAX_PAYLOAD``
    4       N       payload (layouts below)
    4+N     2       CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0)
                    of bytes ``[0, 4+N)``, **big-endian** (MSB first)
    ======  ======  ============================================================================

The CRC is sent MSB first so that the CRC of the whole raw frame, CRC bytes included, is 0: a
receiver runs one CRC register over every decoded byte and checks it is zero at the delimiter,
without knowing where the payload ends.  A raw frame is ``HEADER_BYTES + N + CRC_BYTES`` bytes;
the receiver also checks ``length == raw_length - 6``.

Receiver checks, in order (the first failure decides the NAK status and the counter)
----------------------------------------------------------------------------------------
1. more than ``FRAME_OVERHEAD + max_payload`` decoded bytes before the delimiter (the rest is
   discarded up to it): BAD_LENGTH;
2. COBS block truncated by the delimiter: BAD_FRAME;
3. fewer than ``FRAME_OVERHEAD`` (6) bytes: BAD_FRAME;
4. CRC register not 0 after the last byte: BAD_CRC;
5. ``length`` field != decoded bytes - 6: BAD_LENGTH;
6. (device) same ``seq`` and CRC as the last executed frame: replay the stored response;
7. (device) ``code`` not a :class:`Command`: UNKNOWN_CMD;
8. (device) payload size wrong for the command: BAD_ARG; then space (BAD_SPACE), READ_MEM length
   0 or > max_payload (BAD_ARG), alignment (BAD_ALIGN), range (BAD_ADDRESS), and finally BUSY.

Payloads
--------
``WRITE_MEM``/``READ_MEM`` addresses are byte addresses into one of the :class:`Space` memories.

    ===================  ==========================================  ===========================
    command              request payload                             ACK payload
    ===================  ==========================================  ===========================
    IDENTIFY      0x01   (empty)                                     see below
    WRITE_MEM     0x02   space u8, address u32, data (1.. bytes)     space u8, address u32,
                                                                     length u16 (an echo)
    READ_MEM      0x03   space u8, address u32, length u16           data (``length`` bytes)
    RUN           0x04   address u32 (in ``Space.DESC``)             (empty); returns at once
    STATUS        0x05   (empty)                                     see below
    RESET_COUNTERS 0x06  (empty)                                     (empty)
    NAK (response 0xFF)  --                                          status u8, received code u8
    ===================  ==========================================  ===========================

Compact transfers (protocol 1.1): bit 7 of the space byte of READ_MEM and WRITE_MEM
(:data:`COMPACT`) transfers the used bytes only, in a space whose memory holds entries of ``E``
bytes at a power-of-two stride of ``S > E`` bytes.  The device's configuration defines which spaces
have such a layout (the accelerator's ``ACTS``: :class:`hadahw.program.MemoryMap`'s
``act_entry_bytes`` and ``act_stride``).  Addresses and the READ_MEM length stay in the space's
bytes.  A compact READ_MEM needs address and length that are multiples of ``S`` (else BAD_ALIGN;
``length <= max_payload`` as always) and returns the first ``E`` bytes of each of the ``length /
S`` entries.  A compact WRITE_MEM needs an address that is a multiple of ``S`` (BAD_ALIGN); its
``N`` data bytes fill the first ``E`` bytes of consecutive entries (the last one may be partly
written; the holes are not touched), which must lie in the space: ``address / S + ceil(N / E)``
entries at most (else BAD_ADDRESS); the ACK echoes the space byte with its flag.  A device
answers a compact transfer of a space without a layout with BAD_SPACE; a 1.0 device knows none.

IDENTIFY ACK (``12 + 4*n_spaces + C`` bytes)::

    magic b"HADA" (4) | version_major u8 | version_minor u8 | max_payload u16 | align u8 |
    n_spaces u8 | config_length C u16 | size of each space u32 x n_spaces | config (C bytes)

``max_payload`` is the largest payload the device accepts (its receive buffer) and the longest
READ_MEM it answers; ``align`` (a power of two) divides every WRITE_MEM/READ_MEM address and
length; ``config`` is the accelerator configuration as UTF-8 JSON.  A host speaks to a device
whose magic matches and whose ``version_major`` equals :data:`PROTOCOL_VERSION` ``[0]``.

STATUS ACK (``8 + 2*n_counters`` bytes)::

    flags u8 (bit 0 BUSY, bit 1 DONE) | run_status u8 (a Status) | n_counters u8 | reserved u8 (0) |
    cycles u32 (of the current or last RUN) | counter u16 x n_counters (DevCounter order)

Counters saturate at 0xFFFF; RESET_COUNTERS zeroes them (the reset frame itself is not counted).

Sequence numbers and retransmission
-----------------------------------
Stop-and-wait: the host sends one request and waits for the response with the same ``seq``; it
takes a new ``seq`` (``+1 mod 256``) for each new request and resends the *byte-identical* frame
on timeout or on a transport NAK (:data:`TRANSPORT_ERRORS`).  The device keeps the ``seq`` and CRC
of the last request it executed and the response it sent: a valid frame with the same ``seq`` and
CRC is a retransmission, answered with the stored response and not executed again.  Any other
valid frame is executed (a ``seq`` other than last+1 is counted as OUT_OF_ORDER but obeyed: the
host is the authority, e.g. after it restarts).  A frame that fails COBS, length or CRC checks is
dropped and counted; if at least two bytes were decoded the device answers NAK with the received
``seq`` and a transport status, so the host retransmits without waiting for its timeout.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import operator
import struct
from typing import Iterator, NamedTuple

__all__ = [
    "PROTOCOL_VERSION",
    "MAGIC",
    "MAX_PAYLOAD",
    "MIN_DEVICE_PAYLOAD",
    "HEADER_BYTES",
    "CRC_BYTES",
    "FRAME_OVERHEAD",
    "MAX_RAW_FRAME",
    "MAX_WIRE_FRAME",
    "COUNTER_MAX",
    "DELIMITER",
    "RESPONSE_FLAG",
    "NAK_CODE",
    "FLAG_BUSY",
    "FLAG_DONE",
    "COMPACT",
    "WRITE_HEADER_BYTES",
    "Command",
    "Space",
    "Status",
    "DevCounter",
    "TRANSPORT_ERRORS",
    "ProtocolError",
    "FramingError",
    "CrcError",
    "LengthError",
    "PayloadError",
    "Frame",
    "FrameFault",
    "DeviceInfo",
    "DeviceStatus",
    "crc16",
    "crc16_update",
    "crc16_bitwise",
    "cobs_encode",
    "cobs_decode",
    "cobs_max_len",
    "ack_code",
    "encode_raw_frame",
    "encode_frame",
    "decode_raw_frame",
    "decode_frame",
    "FrameDecoder",
    "pack_write_mem",
    "unpack_write_mem",
    "pack_write_ack",
    "unpack_write_ack",
    "pack_read_mem",
    "unpack_read_mem",
    "ReadRequest",
    "WriteRequest",
    "WriteAck",
    "compact_length",
    "strip_holes",
    "fill_holes",
    "check_entry_layout",
    "pack_run",
    "unpack_run",
    "pack_nak",
    "unpack_nak",
    "pack_identify",
    "unpack_identify",
    "pack_status",
    "unpack_status",
    "check_empty",
]

# ---------------------------------------------------------------------------------------------
# Constants and enums

#: (major, minor).  A host accepts any device with the same major version.
PROTOCOL_VERSION = (1, 1)
#: Flag in the space byte of READ_MEM / WRITE_MEM: a compact transfer (protocol 1.1, see the module doc).
COMPACT = 0x80
#: First four bytes of an IDENTIFY response.
MAGIC = b"HADA"
#: Upper bound of the ``length`` field for every device; a device may accept less (IDENTIFY).
MAX_PAYLOAD = 1024
#: Every device accepts at least this payload, so a host may send it before IDENTIFY.
MIN_DEVICE_PAYLOAD = 64
HEADER_BYTES = 4
CRC_BYTES = 2
FRAME_OVERHEAD = HEADER_BYTES + CRC_BYTES
MAX_RAW_FRAME = FRAME_OVERHEAD + MAX_PAYLOAD
DELIMITER = 0x00
RESPONSE_FLAG = 0x80
NAK_CODE = 0xFF
FLAG_BUSY = 0x01
FLAG_DONE = 0x02


class Command(enum.IntEnum):
    """Request codes (host to device).  Codes ``0x01..0x7F``; ``0x00`` is never a command."""

    IDENTIFY = 0x01
    WRITE_MEM = 0x02
    READ_MEM = 0x03
    RUN = 0x04
    STATUS = 0x05
    RESET_COUNTERS = 0x06


class Space(enum.IntEnum):
    """Address spaces of WRITE_MEM / READ_MEM."""

    WEIGHTS = 0
    ACTS = 1
    DESC = 2  # layer descriptors; RUN starts the program at an address here


class Status(enum.IntEnum):
    """NAK status codes, also ``run_status`` in STATUS."""

    OK = 0
    BAD_CRC = 1  # CRC of the received frame is wrong
    BAD_FRAME = 2  # COBS structure broken or frame shorter than header + CRC
    BAD_LENGTH = 3  # frame longer than the device accepts, or length field != payload length
    UNKNOWN_CMD = 4
    BAD_SPACE = 5
    BAD_ADDRESS = 6  # address range outside the space (or RUN address outside DESC)
    BAD_ALIGN = 7  # address or length not a multiple of ``align``
    BAD_ARG = 8  # payload size wrong for the command, zero length, reserved bits set
    BUSY = 9  # a RUN is in progress: WRITE_MEM, READ_MEM and RUN are refused
    RUN_FAULT = 10  # the program stopped on an error (run_status only)


#: NAK statuses caused by the channel, not by the request: the host retransmits.
TRANSPORT_ERRORS = frozenset({Status.BAD_CRC, Status.BAD_FRAME, Status.BAD_LENGTH})


class DevCounter(enum.IntEnum):
    """Index of each u16 counter in the STATUS response."""

    FRAMES_OK = 0  # frames with a good CRC and length
    BAD_CRC = 1
    BAD_FRAME = 2  # COBS error or frame too short
    BAD_LENGTH = 3  # frame too long (overflow) or length field mismatch
    UNKNOWN_CMD = 4
    BAD_ARG = 5  # NAKs BAD_SPACE, BAD_ADDRESS, BAD_ALIGN, BAD_ARG
    OUT_OF_ORDER = 6  # executed frames whose seq was not last+1
    DUPLICATE = 7  # retransmissions answered from the stored response


COUNTER_MAX = 0xFFFF


def cobs_max_len(n: int) -> int:
    """Upper bound of the COBS encoding of ``n`` bytes (delimiters not included)."""
    return n + n // 254 + 1


#: Longest frame on the wire, both delimiters included.
MAX_WIRE_FRAME = cobs_max_len(MAX_RAW_FRAME) + 2

# ---------------------------------------------------------------------------------------------
# Errors


class ProtocolError(ValueError):
    """A malformed frame or payload.  ``status`` is the NAK status a device answers with."""

    status = Status.BAD_FRAME


class FramingError(ProtocolError):
    """COBS structure broken, a 0x00 inside a frame, or a frame too short to hold a header."""

    status = Status.BAD_FRAME


class CrcError(ProtocolError):
    """The CRC of a frame does not match."""

    status = Status.BAD_CRC


class LengthError(ProtocolError):
    """A frame longer than the receiver accepts, or a length field that disagrees with it."""

    status = Status.BAD_LENGTH


class PayloadError(ProtocolError):
    """A payload whose size or fields do not fit its command."""

    status = Status.BAD_ARG

    def __init__(self, message: str, status: Status = Status.BAD_ARG):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# CRC-16/CCITT-FALSE


def crc16_update(crc: int, byte: int) -> int:
    """One byte of CRC-16/CCITT-FALSE, MSB first (what the gateware does per cycle)."""
    crc ^= byte << 8
    for _ in range(8):
        crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        crc &= 0xFFFF
    return crc


def crc16_bitwise(data: bytes, crc: int = 0xFFFF) -> int:
    """Table-free reference of :func:`crc16`."""
    for b in data:
        crc = crc16_update(crc, b)
    return crc


_CRC_TABLE = tuple(crc16_update(0, i) for i in range(256))


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0) of ``data``.

    ``crc16(b"123456789") == 0x29B1``; ``crc`` continues a previous computation.
    """
    table = _CRC_TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ b]
    return crc


# ---------------------------------------------------------------------------------------------
# COBS


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode ``data``: the result has no 0x00 byte and is at most ``cobs_max_len`` long.

    Minimal form: a full block (code 0xFF) that ends ``data`` is not followed by an empty block;
    :func:`cobs_decode` accepts both forms.
    """
    out = bytearray()
    block = bytearray()
    need_final = True  # a final block is needed (always for b"", and after a zero)
    for b in data:
        if b == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
            need_final = True
        else:
            block.append(b)
            need_final = True
            if len(block) == 254:
                out.append(0xFF)
                out += block
                block.clear()
                need_final = False
    if need_final:
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS-encoded frame (no delimiters).  Raises :class:`FramingError`."""
    dec = _CobsState()
    out = bytearray()
    for i, b in enumerate(data):
        if b == 0:
            raise FramingError(f"COBS frame contains a 0x00 byte at offset {i}")
        dec.push(b, out)
    if dec.remain:
        raise FramingError(f"COBS block truncated: {dec.remain} byte(s) missing at the end of the frame")
    return bytes(out)


class _CobsState:
    """Byte-serial COBS decoder state: what the gateware keeps (``remain``, ``full``, ``first``)."""

    __slots__ = ("remain", "full", "first")

    def __init__(self):
        self.reset()

    def reset(self):
        self.remain = 0  # data bytes left in the current block
        self.full = False  # current block's code was 0xFF (no implicit zero after it)
        self.first = True  # no block started yet

    def push(self, b: int, out: bytearray) -> None:
        """Consume one nonzero byte, appending decoded bytes to ``out``."""
        if self.remain:
            out.append(b)
            self.remain -= 1
        else:  # a code byte
            if not self.first and not self.full:
                out.append(0)  # the implicit zero that ended the previous block
            self.first = False
            self.full = b == 0xFF
            self.remain = b - 1


# ---------------------------------------------------------------------------------------------
# Frames


class Frame(NamedTuple):
    """A checked frame: ``code`` (Command, ACK or NAK code), ``seq`` and ``payload``."""

    code: int
    seq: int
    payload: bytes


def ack_code(cmd: int) -> int:
    """Response code of an ACK to ``cmd``."""
    return RESPONSE_FLAG | int(cmd)


def _u8(name: str, value) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    if not 0 <= v <= 0xFF:
        raise ValueError(f"{name} must be in [0, 255], not {v}")
    return v


def encode_raw_frame(code: int, seq: int, payload: bytes = b"", *, max_payload: int = MAX_PAYLOAD) -> bytes:
    """Header + payload + CRC (before COBS).  Raises ValueError naming the bad argument."""
    code = _u8("code", code)
    seq = _u8("seq", seq)
    if code == 0:
        raise ValueError("code must be nonzero (0x00 is not a command or response code)")
    payload = bytes(payload)
    if len(payload) > max_payload:
        raise ValueError(f"payload is {len(payload)} bytes; the limit is {max_payload} (max_payload)")
    body = struct.pack("<BBH", code, seq, len(payload)) + payload
    return body + crc16(body).to_bytes(2, "big")


def encode_frame(code: int, seq: int, payload: bytes = b"", *, max_payload: int = MAX_PAYLOAD) -> bytes:
    """The wire bytes of a frame: ``0x00 | COBS(raw) | 0x00``."""
    return b"\x00" + cobs_encode(encode_raw_frame(code, seq, payload, max_payload=max_payload)) + b"\x00"


def decode_raw_frame(raw: bytes, *, max_payload: int = MAX_PAYLOAD) -> Frame:
    """Check a decoded raw frame: size, CRC, then length field.  Raises a :class:`ProtocolError`."""
    n = len(raw)
    if n < FRAME_OVERHEAD:
        raise FramingError(f"frame is {n} bytes, shorter than header + CRC ({FRAME_OVERHEAD})")
    if n > FRAME_OVERHEAD + max_payload:
        raise LengthError(f"frame is {n} bytes, longer than {FRAME_OVERHEAD + max_payload} (max_payload {max_payload})")
    if crc16(raw) != 0:
        got = int.from_bytes(raw[-2:], "big")
        raise CrcError(f"CRC mismatch: frame says 0x{got:04X}, computed 0x{crc16(raw[:-2]):04X}")
    length = raw[2] | raw[3] << 8
    if length != n - FRAME_OVERHEAD:
        raise LengthError(f"length field says {length} payload bytes, frame holds {n - FRAME_OVERHEAD}")
    return Frame(raw[0], raw[1], bytes(raw[HEADER_BYTES:-CRC_BYTES]))


def decode_frame(data: bytes, *, max_payload: int = MAX_PAYLOAD) -> Frame:
    """Decode one frame from its wire bytes (surrounding 0x00 delimiters optional)."""
    data = bytes(data)
    start = 1 if data[:1] == b"\x00" else 0
    end = len(data) - 1 if len(data) > start and data[-1] == 0 else len(data)
    return decode_raw_frame(cobs_decode(data[start:end]), max_payload=max_payload)


class FrameFault(NamedTuple):
    """A frame the :class:`FrameDecoder` rejected; ``seq``/``code`` are None if not received."""

    error: ProtocolError
    code: int | None
    seq: int | None


class FrameDecoder:
    """Byte-serial frame receiver with resynchronisation: the reference for the gateware RX.

    Feed it any byte stream; it yields a :class:`Frame` for each valid frame and a
    :class:`FrameFault` for each rejected one, and ignores empty frames.  Its memory is bounded:
    a frame longer than ``FRAME_OVERHEAD + max_payload`` decoded bytes is discarded up to the
    next delimiter and reported as a :class:`LengthError`.
    """

    def __init__(self, *, max_payload: int = MAX_PAYLOAD):
        if not MIN_DEVICE_PAYLOAD <= max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be in [{MIN_DEVICE_PAYLOAD}, {MAX_PAYLOAD}], not {max_payload}")
        self.max_payload = max_payload
        self._limit = FRAME_OVERHEAD + max_payload
        self._buf = bytearray()
        self._cobs = _CobsState()
        self._nbytes = 0  # encoded bytes seen in this frame
        self._overflow = False
        self._head = bytearray()  # first two decoded bytes survive an overflow

    def reset(self) -> None:
        """Drop the partial frame (as if a delimiter had been received, but report nothing)."""
        self._buf.clear()
        self._cobs.reset()
        self._nbytes = 0
        self._overflow = False

    def feed(self, data: bytes) -> Iterator[Frame | FrameFault]:
        """Consume ``data``; yield each frame or fault completed by a delimiter in it."""
        buf = self._buf
        for b in data:
            if b != 0:
                self._nbytes += 1
                if not self._overflow:
                    self._cobs.push(b, buf)
                    if len(buf) > self._limit:
                        self._overflow = True
                        self._head = buf[:2]
                        buf.clear()
                continue
            # Delimiter: finish the frame.
            if self._nbytes == 0:
                continue
            head = self._head if self._overflow else buf[:2]
            code = head[0] if len(head) >= 1 else None
            seq = head[1] if len(head) >= 2 else None
            try:
                if self._overflow:
                    raise LengthError(f"frame longer than {self._limit} bytes (max_payload {self.max_payload}); discarded")
                if self._cobs.remain:
                    raise FramingError(f"COBS block truncated: {self._cobs.remain} byte(s) missing before the delimiter")
                event = decode_raw_frame(bytes(buf), max_payload=self.max_payload)
            except ProtocolError as exc:
                event = FrameFault(exc, code, seq)
            self.reset()
            yield event


# ---------------------------------------------------------------------------------------------
# Payloads

_WRITE_HDR = struct.Struct("<BI")  # space, address
WRITE_HEADER_BYTES = _WRITE_HDR.size
_WRITE_ACK = struct.Struct("<BIH")  # space, address, length
_READ_REQ = struct.Struct("<BIH")  # space, address, length
_RUN_REQ = struct.Struct("<I")  # address
_NAK = struct.Struct("<BB")  # status, received code
_IDENT_HDR = struct.Struct("<4sBBHBBH")  # magic, major, minor, max_payload, align, n_spaces, config_len
_STATUS_HDR = struct.Struct("<BBBBI")  # flags, run_status, n_counters, reserved, cycles


def _space(value) -> Space:
    try:
        return Space(value)
    except ValueError:
        names = ", ".join(s.name for s in Space)
        raise PayloadError(f"space must be one of {names}, not {value!r}", Status.BAD_SPACE) from None


def _u32(name: str, value) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    if not 0 <= v < 1 << 32:
        raise PayloadError(f"{name} must be in [0, 2**32), not {v}", Status.BAD_ADDRESS)
    return v


def _expect_size(what: str, payload: bytes, size: int) -> None:
    if len(payload) != size:
        raise PayloadError(f"{what} payload must be {size} bytes, not {len(payload)}")


def check_empty(what: str, payload: bytes) -> None:
    """Raise :class:`PayloadError` unless ``payload`` is empty (IDENTIFY, STATUS, ...)."""
    _expect_size(what, payload, 0)


class WriteRequest(NamedTuple):
    """A WRITE_MEM request: ``compact`` writes the used bytes of consecutive entries."""

    space: Space
    address: int
    data: bytes
    compact: bool = False


class WriteAck(NamedTuple):
    """A WRITE_MEM ACK: the request's space, address and data length, echoed."""

    space: Space
    address: int
    length: int
    compact: bool = False


def _space_byte(value, compact: bool) -> int:
    return _space(value) | (COMPACT if compact else 0)


def pack_write_mem(space, address: int, data: bytes, *, compact: bool = False) -> bytes:
    """WRITE_MEM request payload."""
    data = bytes(data)
    if not data:
        raise PayloadError("data must not be empty")
    return _WRITE_HDR.pack(_space_byte(space, compact), _u32("address", address)) + data


def unpack_write_mem(payload: bytes) -> WriteRequest:
    """The :class:`WriteRequest` of a WRITE_MEM payload."""
    if len(payload) <= WRITE_HEADER_BYTES:
        raise PayloadError(f"WRITE_MEM payload must be longer than {WRITE_HEADER_BYTES} bytes, not {len(payload)}")
    space, address = _WRITE_HDR.unpack_from(payload)
    return WriteRequest(_space(space & ~COMPACT), address, bytes(payload[WRITE_HEADER_BYTES:]), bool(space & COMPACT))


def pack_write_ack(space, address: int, length: int, *, compact: bool = False) -> bytes:
    return _WRITE_ACK.pack(_space_byte(space, compact), _u32("address", address), length)


def unpack_write_ack(payload: bytes) -> WriteAck:
    _expect_size("WRITE_MEM ACK", payload, _WRITE_ACK.size)
    space, address, length = _WRITE_ACK.unpack(payload)
    return WriteAck(_space(space & ~COMPACT), address, length, bool(space & COMPACT))


class ReadRequest(NamedTuple):
    """A READ_MEM request: ``compact`` asks for the used bytes of each entry only."""

    space: Space
    address: int
    length: int
    compact: bool = False


def pack_read_mem(space, address: int, length: int, *, compact: bool = False) -> bytes:
    """READ_MEM request payload."""
    length = operator.index(length)
    if not 1 <= length <= 0xFFFF:
        raise PayloadError(f"length must be in [1, 65535], not {length}")
    return _READ_REQ.pack(_space_byte(space, compact), _u32("address", address), length)


def unpack_read_mem(payload: bytes) -> ReadRequest:
    """The :class:`ReadRequest` of a READ_MEM payload."""
    _expect_size("READ_MEM", payload, _READ_REQ.size)
    space, address, length = _READ_REQ.unpack(payload)
    compact = bool(space & COMPACT)
    space = _space(space & ~COMPACT)
    if length == 0:
        raise PayloadError("READ_MEM length must not be 0")
    return ReadRequest(space, address, length, compact)


def check_entry_layout(entry_bytes, stride) -> tuple[int, int]:
    """``(entry_bytes, stride)`` of a space that answers compact reads, validated: a power-of-two
    ``stride`` greater than ``entry_bytes >= 1``."""
    entry_bytes, stride = operator.index(entry_bytes), operator.index(stride)
    if stride < 2 or stride & (stride - 1) or not 1 <= entry_bytes < stride:
        raise ValueError(f"a compact entry layout needs a power-of-two stride above entry_bytes >= 1, not "
                         f"entry_bytes={entry_bytes}, stride={stride}")
    return entry_bytes, stride


def strip_holes(data: bytes, entry_bytes: int, stride: int) -> bytes:
    """The first ``entry_bytes`` of every ``stride`` bytes of ``data``: what a compact transfer moves."""
    return b"".join(data[i:i + entry_bytes] for i in range(0, len(data), stride))


def fill_holes(data: bytes, entry_bytes: int, stride: int) -> bytes:
    """The inverse of :func:`strip_holes` for whole entries: each entry padded to ``stride`` with 0."""
    pad = bytes(stride - entry_bytes)
    return b"".join(data[i:i + entry_bytes] + pad for i in range(0, len(data), entry_bytes))


def compact_length(length: int, entry_bytes: int, stride: int) -> int:
    """Bytes a compact read of ``length`` bytes (a multiple of ``stride``) returns."""
    return length // stride * entry_bytes


def pack_run(address: int) -> bytes:
    return _RUN_REQ.pack(_u32("address", address))


def unpack_run(payload: bytes) -> int:
    _expect_size("RUN", payload, _RUN_REQ.size)
    return _RUN_REQ.unpack(payload)[0]


def pack_nak(status, code: int) -> bytes:
    return _NAK.pack(int(Status(status)), _u8("code", code))


def unpack_nak(payload: bytes) -> tuple[Status | int, int]:
    """``(status, received code)``; an unknown status comes back as a plain int."""
    _expect_size("NAK", payload, _NAK.size)
    status, code = _NAK.unpack(payload)
    try:
        status = Status(status)
    except ValueError:
        pass
    return status, code


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceInfo:
    """What IDENTIFY reports.  ``sizes[i]`` is the size in bytes of ``Space(i)``."""

    version: tuple[int, int] = PROTOCOL_VERSION
    max_payload: int = MAX_PAYLOAD
    align: int = 1
    sizes: tuple[int, ...] = (0, 0, 0)
    config: str = "{}"

    def __post_init__(self):
        if not MIN_DEVICE_PAYLOAD <= self.max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be in [{MIN_DEVICE_PAYLOAD}, {MAX_PAYLOAD}], not {self.max_payload}")
        if not 1 <= self.align <= 64 or self.align & (self.align - 1):
            raise ValueError(f"align must be a power of two in [1, 64], not {self.align}")
        if len(self.sizes) > 255 or any(not 0 <= s < 1 << 32 for s in self.sizes):
            raise ValueError(f"sizes must be at most 255 values in [0, 2**32), not {self.sizes!r}")

    def size(self, space) -> int:
        """Size in bytes of ``space`` (0 if the device does not have it)."""
        space = _space(space)
        return self.sizes[space] if space < len(self.sizes) else 0

    def config_dict(self) -> dict:
        """The configuration JSON parsed; ProtocolError if it is not a JSON object."""
        try:
            cfg = json.loads(self.config)
        except json.JSONDecodeError as exc:
            raise PayloadError(f"IDENTIFY config is not valid JSON: {exc}") from None
        if not isinstance(cfg, dict):
            raise PayloadError(f"IDENTIFY config must be a JSON object, not {type(cfg).__name__}")
        return cfg


def pack_identify(info: DeviceInfo) -> bytes:
    """IDENTIFY ACK payload.  Raises ValueError if it does not fit in MAX_PAYLOAD."""
    config = info.config.encode("utf-8")
    out = _IDENT_HDR.pack(MAGIC, info.version[0], info.version[1], info.max_payload, info.align,
                          len(info.sizes), len(config))
    out += struct.pack(f"<{len(info.sizes)}I", *info.sizes) + config
    if len(out) > MAX_PAYLOAD:
        raise ValueError(f"config is {len(config)} bytes; the IDENTIFY response must fit in {MAX_PAYLOAD} bytes")
    return out


def unpack_identify(payload: bytes) -> DeviceInfo:
    """Parse an IDENTIFY ACK payload (the magic and sizes are checked, the version is not)."""
    if len(payload) < _IDENT_HDR.size:
        raise PayloadError(f"IDENTIFY response is {len(payload)} bytes, shorter than its {_IDENT_HDR.size}-byte header")
    magic, major, minor, max_payload, align, n_spaces, clen = _IDENT_HDR.unpack_from(payload)
    if magic != MAGIC:
        raise PayloadError(f"IDENTIFY magic is {magic!r}, expected {MAGIC!r} (not a hadahw device?)")
    want = _IDENT_HDR.size + 4 * n_spaces + clen
    if len(payload) != want:
        raise PayloadError(f"IDENTIFY response is {len(payload)} bytes, its header implies {want}")
    sizes = struct.unpack_from(f"<{n_spaces}I", payload, _IDENT_HDR.size)
    config = payload[_IDENT_HDR.size + 4 * n_spaces:]
    try:
        text = config.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("IDENTIFY config is not UTF-8") from None
    try:
        return DeviceInfo(version=(major, minor), max_payload=max_payload, align=align, sizes=sizes, config=text)
    except ValueError as exc:
        raise PayloadError(f"IDENTIFY response: {exc}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceStatus:
    """What STATUS reports.  ``counters[DevCounter.X]`` is that counter."""

    busy: bool = False
    done: bool = False
    run_status: Status | int = Status.OK
    cycles: int = 0
    counters: tuple[int, ...] = (0,) * len(DevCounter)

    def counter(self, which: DevCounter) -> int:
        return self.counters[which] if which < len(self.counters) else 0

    def as_dict(self) -> dict[str, int]:
        """Counters by name (those this host knows)."""
        return {c.name: self.counter(c) for c in DevCounter}


def pack_status(st: DeviceStatus) -> bytes:
    flags = (FLAG_BUSY if st.busy else 0) | (FLAG_DONE if st.done else 0)
    counters = [min(int(c), COUNTER_MAX) for c in st.counters]
    return _STATUS_HDR.pack(flags, int(st.run_status), len(counters), 0, st.cycles & 0xFFFFFFFF) + struct.pack(
        f"<{len(counters)}H", *counters
    )


def unpack_status(payload: bytes) -> DeviceStatus:
    if len(payload) < _STATUS_HDR.size:
        raise PayloadError(f"STATUS response is {len(payload)} bytes, shorter than its {_STATUS_HDR.size}-byte header")
    flags, run_status, n, _reserved, cycles = _STATUS_HDR.unpack_from(payload)
    _expect_size("STATUS response", payload, _STATUS_HDR.size + 2 * n)
    counters = struct.unpack_from(f"<{n}H", payload, _STATUS_HDR.size)
    try:
        run_status = Status(run_status)
    except ValueError:
        pass
    return DeviceStatus(busy=bool(flags & FLAG_BUSY), done=bool(flags & FLAG_DONE), run_status=run_status,
                        cycles=cycles, counters=counters)

