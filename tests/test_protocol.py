"""Tests of the HostLink wire protocol (hadahw.protocol): CRC, COBS, frames, payloads."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hadahw import protocol as P
from hadahw.protocol import (
    MAX_PAYLOAD,
    MAX_RAW_FRAME,
    MAX_WIRE_FRAME,
    Command,
    CrcError,
    DevCounter,
    DeviceInfo,
    DeviceStatus,
    Frame,
    FrameDecoder,
    FrameFault,
    FramingError,
    LengthError,
    PayloadError,
    Space,
    Status,
    cobs_decode,
    cobs_encode,
    cobs_max_len,
    crc16,
    crc16_bitwise,
    crc16_update,
    decode_frame,
    decode_raw_frame,
    encode_frame,
    encode_raw_frame,
)

SETTINGS = settings(derandomize=True, database=None, max_examples=200, deadline=None)

# Bytes drawn mostly from the values that matter to COBS: 0x00, 0xFF and a few others.
zero_heavy = st.lists(st.sampled_from([0x00, 0x00, 0x00, 0x01, 0x7F, 0xFF]), max_size=MAX_RAW_FRAME).map(bytes)
any_bytes = st.binary(max_size=MAX_RAW_FRAME)


# ---------------------------------------------------------------------------------------------
# CRC


def test_crc_known_answer():
    # CRC-16/CCITT-FALSE check value (catalogue of parametrised CRC algorithms): 0x29B1.
    assert crc16(b"123456789") == 0x29B1
    assert crc16_bitwise(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF
    crc = 0xFFFF
    for b in b"123456789":
        crc = crc16_update(crc, b)
    assert crc == 0x29B1


@SETTINGS
@given(data=any_bytes, split=st.integers(0, MAX_RAW_FRAME))
def test_crc_table_matches_bitwise_and_residue_is_zero(data, split):
    c = crc16(data)
    assert c == crc16_bitwise(data)
    assert crc16(data[split:], crc16(data[:split])) == c  # continuation
    assert crc16(data + c.to_bytes(2, "big")) == 0  # MSB-first CRC: zero residue


# ---------------------------------------------------------------------------------------------
# COBS

# Published examples (Wikipedia, "Consistent Overhead Byte Stuffing"), delimiter not included.
_SEQ_01_FE = bytes(range(1, 255))
COBS_VECTORS = [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (_SEQ_01_FE, b"\xff" + _SEQ_01_FE),
    (b"\x00" + _SEQ_01_FE, b"\x01\xff" + _SEQ_01_FE),
    (bytes(range(1, 256)), b"\xff" + _SEQ_01_FE + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize("raw,enc", COBS_VECTORS, ids=[f"vec{i}" for i in range(len(COBS_VECTORS))])
def test_cobs_vectors(raw, enc):
    assert cobs_encode(raw) == enc
    assert cobs_decode(enc) == raw


def test_cobs_accepts_trailing_empty_block():
    # Some encoders end a data run of exactly 254 bytes with an empty block (0x01).
    assert cobs_decode(b"\xff" + _SEQ_01_FE + b"\x01") == _SEQ_01_FE


@SETTINGS
@given(data=st.one_of(zero_heavy, any_bytes))
def test_cobs_round_trip(data):
    enc = cobs_encode(data)
    assert 0 not in enc
    assert len(enc) <= cobs_max_len(len(data))
    assert cobs_decode(enc) == data


@pytest.mark.parametrize("fill", [0x00, 0x01, 0xFF], ids=["zeros", "ones", "ff"])
def test_cobs_max_length(fill):
    data = bytes([fill]) * MAX_RAW_FRAME
    enc = cobs_encode(data)
    assert len(enc) <= cobs_max_len(MAX_RAW_FRAME) and 0 not in enc
    assert cobs_decode(enc) == data


def test_cobs_decode_errors():
    with pytest.raises(FramingError, match="0x00 byte at offset 1"):
        cobs_decode(b"\x02\x00")
    with pytest.raises(FramingError, match="truncated: 1 byte"):
        cobs_decode(b"\x04\x11\x22")


# ---------------------------------------------------------------------------------------------
# Frames


@SETTINGS
@given(code=st.integers(1, 255), seq=st.integers(0, 255), payload=st.one_of(
    st.binary(max_size=MAX_PAYLOAD), st.lists(st.sampled_from([0, 0xFF]), max_size=MAX_PAYLOAD).map(bytes)))
def test_frame_round_trip(code, seq, payload):
    wire = encode_frame(code, seq, payload)
    assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]
    assert len(wire) <= MAX_WIRE_FRAME
    assert decode_frame(wire) == Frame(code, seq, payload)
    events = list(FrameDecoder().feed(wire))
    assert events == [Frame(code, seq, payload)]


def test_frame_layout():
    raw = encode_raw_frame(Command.READ_MEM, 0x42, b"\x01\x02\x03")
    assert raw[:4] == bytes([0x03, 0x42, 0x03, 0x00])
    assert raw[4:7] == b"\x01\x02\x03"
    assert raw[7:] == crc16(raw[:7]).to_bytes(2, "big")


def test_max_length_frame_fits_the_bound():
    payload = bytes(range(1, 256)) * 4 + b"\x01" * (MAX_PAYLOAD - 1020)
    wire = encode_frame(Command.WRITE_MEM, 1, payload)
    assert len(wire) <= MAX_WIRE_FRAME
    assert decode_frame(wire).payload == payload


def test_encode_frame_bad_arguments():
    with pytest.raises(ValueError, match=r"payload is 1025 bytes; the limit is 1024 \(max_payload\)"):
        encode_frame(Command.WRITE_MEM, 0, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(ValueError, match="seq must be in"):
        encode_frame(Command.STATUS, 256)
    with pytest.raises(ValueError, match="code must be nonzero"):
        encode_frame(0, 1)
    with pytest.raises(TypeError, match="code must be an integer"):
        encode_frame("STATUS", 1)


def _wire(raw: bytes) -> bytes:
    return b"\x00" + cobs_encode(raw) + b"\x00"


def _with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "big")


def test_malformed_frames_give_specific_errors():
    good = encode_raw_frame(Command.RUN, 9, b"\x10\x00\x00\x00")
    bad_crc = bytearray(good)
    bad_crc[5] ^= 0x04
    with pytest.raises(CrcError, match="CRC mismatch"):
        decode_frame(_wire(bytes(bad_crc)))
    with pytest.raises(FramingError, match="shorter than header"):
        decode_frame(_wire(good[:5]))
    with pytest.raises(LengthError, match="length field says 5 payload bytes, frame holds 4"):
        decode_frame(_wire(_with_crc(bytes([Command.RUN, 9, 5, 0]) + b"\x10\x00\x00\x00")))
    with pytest.raises(LengthError, match="longer than 70"):
        decode_raw_frame(_with_crc(bytes([2, 0, 65, 0]) + bytes(65)), max_payload=64)
    with pytest.raises(FramingError, match="truncated"):
        decode_frame(b"\x00" + cobs_encode(good)[:-1] + b"\x00")
    with pytest.raises(FramingError, match="0x00 byte"):
        decode_frame(b"\x00" + cobs_encode(good) + b"\x00\x05\x00")
    for exc, status in [(CrcError, Status.BAD_CRC), (FramingError, Status.BAD_FRAME), (LengthError, Status.BAD_LENGTH)]:
        assert exc.status is status and issubclass(exc, ValueError)


def test_decoder_resyncs_after_garbage():
    f1 = encode_frame(Command.IDENTIFY, 1)
    f2 = encode_frame(Command.STATUS, 2)
    garbage = b"\x13\x37\xff\x10"  # no 0x00: merges with nothing because frames start with 0x00
    stream = garbage + f1 + b"\x00\x00" + b"\x05\x01\x02" + f2
    events = list(FrameDecoder().feed(stream))
    assert [type(e) for e in events] == [FrameFault, Frame, FrameFault, Frame]
    assert isinstance(events[0].error, FramingError)  # the garbage ends at f1's leading delimiter
    assert events[1] == Frame(Command.IDENTIFY, 1, b"")
    assert events[3] == Frame(Command.STATUS, 2, b"")


@SETTINGS
@given(cuts=st.lists(st.integers(0, 400), max_size=6))
def test_decoder_is_byte_serial(cuts):
    stream = b"".join(encode_frame(Command.WRITE_MEM, i, bytes([i, 0, 0xFF] * 20)) for i in range(5))
    dec = FrameDecoder()
    events = []
    for a, b in zip([0] + sorted(cuts), sorted(cuts) + [len(stream)]):
        events += list(dec.feed(stream[a:b]))
    assert events == [Frame(Command.WRITE_MEM, i, bytes([i, 0, 0xFF] * 20)) for i in range(5)]


def test_decoder_overflow_is_bounded_and_reports_seq():
    dec = FrameDecoder(max_payload=64)
    long = encode_frame(Command.WRITE_MEM, 77, bytes(range(1, 101)))  # 100 > 64
    events = list(dec.feed(long + encode_frame(Command.STATUS, 78)))
    assert isinstance(events[0], FrameFault) and isinstance(events[0].error, LengthError)
    assert (events[0].code, events[0].seq) == (Command.WRITE_MEM, 77)
    assert events[1] == Frame(Command.STATUS, 78, b"")
    assert len(dec._buf) == 0
    with pytest.raises(ValueError, match="max_payload must be in"):
        FrameDecoder(max_payload=5000)


# ---------------------------------------------------------------------------------------------
# Enums and payloads


def test_codes_are_unambiguous():
    codes = [int(c) for c in Command]
    assert len(set(codes)) == len(codes) and all(0 < c < P.RESPONSE_FLAG for c in codes)
    acks = {P.ack_code(c) for c in Command}
    assert len(acks) == len(codes) and P.NAK_CODE not in acks
    assert all(0 <= s < 256 for s in Status)
    assert P.TRANSPORT_ERRORS == {Status.BAD_CRC, Status.BAD_FRAME, Status.BAD_LENGTH}
    assert len(DevCounter) == 8


def test_payload_round_trips():
    p = P.pack_write_mem(Space.ACTS, 0x1234, b"\x00\x01")
    assert p == b"\x01\x34\x12\x00\x00\x00\x01"
    assert P.unpack_write_mem(p) == (Space.ACTS, 0x1234, b"\x00\x01", False)
    assert P.unpack_write_ack(P.pack_write_ack(Space.DESC, 8, 300)) == (Space.DESC, 8, 300, False)
    p = P.pack_write_mem(Space.ACTS, 16, b"\x07", compact=True)
    assert p[0] == 0x81 and P.unpack_write_mem(p) == P.WriteRequest(Space.ACTS, 16, b"\x07", compact=True)
    assert P.unpack_write_ack(P.pack_write_ack(Space.ACTS, 16, 1, compact=True)) == P.WriteAck(Space.ACTS, 16, 1, True)
    assert P.unpack_read_mem(P.pack_read_mem(Space.WEIGHTS, 0xFFFFFFF0, 16)) == (Space.WEIGHTS, 0xFFFFFFF0, 16, False)
    p = P.pack_read_mem(Space.ACTS, 64, 32, compact=True)
    assert p == b"\x81\x40\x00\x00\x00\x20\x00"  # bit 7 of the space byte
    assert P.unpack_read_mem(p) == P.ReadRequest(Space.ACTS, 64, 32, compact=True)
    assert P.compact_length(256, 5, 8) == 160
    strided = bytes(range(16))
    assert P.strip_holes(strided, 5, 8) == bytes([0, 1, 2, 3, 4, 8, 9, 10, 11, 12])
    assert P.fill_holes(P.strip_holes(strided, 5, 8), 5, 8) == bytes([0, 1, 2, 3, 4, 0, 0, 0, 8, 9, 10, 11, 12, 0, 0, 0])
    for bad in ((5, 5), (0, 8), (5, 12), (9, 8)):
        with pytest.raises(ValueError, match="power-of-two stride above entry_bytes"):
            P.check_entry_layout(*bad)
    assert P.unpack_run(P.pack_run(64)) == 64
    assert P.unpack_nak(P.pack_nak(Status.BUSY, Command.RUN)) == (Status.BUSY, Command.RUN)
    assert P.unpack_nak(b"\xee\x01") == (0xEE, 1)
    info = DeviceInfo(max_payload=256, align=4, sizes=(1024, 512, 64), config='{"rows": 4}')
    raw = P.pack_identify(info)
    assert raw[:4] == P.MAGIC and len(raw) == 12 + 12 + len(info.config)
    assert P.unpack_identify(raw) == info
    assert info.config_dict() == {"rows": 4} and info.size(Space.DESC) == 64
    stt = DeviceStatus(busy=True, done=False, run_status=Status.OK, cycles=123456, counters=tuple(range(8)))
    raw = P.pack_status(stt)
    assert len(raw) == 8 + 16
    assert P.unpack_status(raw) == stt
    assert P.unpack_status(raw).counter(DevCounter.DUPLICATE) == 7


def test_payload_errors_name_the_field():
    with pytest.raises(PayloadError, match="space must be one of WEIGHTS, ACTS, DESC, not 7") as ei:
        P.pack_write_mem(7, 0, b"x")
    assert ei.value.status is Status.BAD_SPACE
    with pytest.raises(PayloadError, match=r"address must be in \[0, 2\*\*32\)") as ei:
        P.pack_read_mem(Space.ACTS, -1, 4)
    assert ei.value.status is Status.BAD_ADDRESS
    with pytest.raises(PayloadError, match="length must be in"):
        P.pack_read_mem(Space.ACTS, 0, 0)
    with pytest.raises(PayloadError, match="data must not be empty"):
        P.pack_write_mem(Space.ACTS, 0, b"")
    with pytest.raises(PayloadError, match="RUN payload must be 4 bytes, not 3"):
        P.unpack_run(b"\x00\x00\x00")
    with pytest.raises(PayloadError, match="READ_MEM length must not be 0"):
        P.unpack_read_mem(struct.pack("<BIH", 0, 0, 0))
    with pytest.raises(PayloadError, match="magic"):
        P.unpack_identify(b"NOPE" + bytes(8))
    with pytest.raises(PayloadError, match="header implies"):
        P.unpack_identify(P.pack_identify(DeviceInfo()) + b"x")
    with pytest.raises(ValueError, match="must fit in 1024 bytes"):
        P.pack_identify(DeviceInfo(config="x" * 1010))
    with pytest.raises(ValueError, match="align must be a power of two"):
        DeviceInfo(align=3)
    with pytest.raises(ValueError, match="max_payload must be in"):
        DeviceInfo(max_payload=32)


def test_amaranth_crc_processor_accepts_our_frames():
    """The gateware can use amaranth.lib.crc as is: same CRC, and its residue check (match_detected)
    accepts a raw frame because the CRC is sent MSB first."""
    crc_lib = pytest.importorskip("amaranth.lib.crc")
    from amaranth.sim import Simulator

    params = crc_lib.catalog.CRC16_CCITT_FALSE(data_width=8)
    assert params.compute(b"123456789") == 0x29B1 and params.residue() == 0
    raw = encode_raw_frame(Command.WRITE_MEM, 0x5A, P.pack_write_mem(Space.WEIGHTS, 0x100, b"\x00\xff\x10\x00"))
    bad = bytearray(raw)
    bad[6] ^= 0x80
    dut = crc_lib.Processor(params)
    seen = {}

    async def bench(ctx):
        for name, frame in (("good", raw), ("bad", bytes(bad))):
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.valid, 1)
            for i, b in enumerate(frame):
                ctx.set(dut.data, b)
                await ctx.tick()
                if i == len(frame) - 3:
                    seen[name + "_crc"] = ctx.get(dut.crc)
            ctx.set(dut.valid, 0)
            seen[name] = ctx.get(dut.match_detected)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen["good_crc"] == crc16(raw[:-2])
    assert seen["good"] == 1 and seen["bad"] == 0
