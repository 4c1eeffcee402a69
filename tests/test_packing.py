"""Tests of the packed binary format (hadahw.sw.packing, docs/packing.md)."""

from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hadahw.contract import DeltaFormat, Requant
from hadahw.golden import QAct, QLayer
from hadahw.sw.packing import (
    LANE_WIDTHS,
    PackingError,
    act_layout,
    blob_layout,
    layer_layout,
    pack_act,
    pack_layer,
    pack_network,
    packed_sign_words,
    unpack,
    unpack_act,
    unpack_layer,
    unpack_network,
    unpacked_sign_words,
)

HYP = settings(derandomize=True, database=None, deadline=None, max_examples=60)
BETAS = [1, 2, 4, 8, 16, 32, 64]
BETA_PAIRS = [(bw, ba) for bw in BETAS for ba in BETAS if ba <= bw]
FORMATS = [DeltaFormat(bits=b, kind="fixed") for b in (1, 3, 8, 9, 16)] + [
    DeltaFormat(bits=b, kind="log2") for b in (1, 2, 5)
]


# ---------------------------------------------------------------------------------------------
# Random valid layers and activations


def make_requant(rng, n: int, *, final: bool) -> Requant:
    return Requant(
        multiplier=rng.integers(-(2**31), 2**31, n),
        bias=rng.integers(-(2**62), 2**62, n),
        shift=int(rng.integers(0, 63)),
        relu=bool(rng.integers(2)),
        saturate_bits=None if final and rng.integers(2) else int(rng.integers(1, 17)),
    )


def make_layer(rng, *, kind: str = "linear", n: int = 3, k: int | None = None, beta_w: int = 4, beta_a: int = 2,
               fmt: DeltaFormat = DeltaFormat(), exponent: int | None = None, name: str = "", act_bits: int = 8,
               channels: int | None = None) -> QLayer:
    """A random valid QLayer.  Linear: ``k`` inputs.  Conv: ``channels`` (a multiple of beta_a)."""
    final = bool(rng.integers(2))
    geo = {}
    if kind == "linear":
        k = int(rng.integers(1, 100)) if k is None else k
        in_shape = (k,)
    else:
        c = channels if channels is not None else beta_a * int(rng.integers(1, 4))
        kernel = int(rng.integers(1, 4))
        padding = int(rng.integers(0, 2))
        stride = int(rng.integers(1, 3))
        h = kernel + int(rng.integers(0, 5))
        w = kernel + int(rng.integers(0, 5))
        oh, ow = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
        pool = 2 if oh % 2 == 0 and ow % 2 == 0 and rng.integers(2) else 1
        geo = dict(kernel=kernel, stride=stride, padding=padding, pool=pool)
        in_shape = (h, w, c)
        k = kernel * kernel * c
    segs = -(-k // beta_w)
    return QLayer(
        kind=kind,
        weight_signs=rng.random((n, k)) < 0.5,
        weight_delta=rng.integers(0, fmt.max_code + 1, (n, segs)),
        beta_w=beta_w,
        beta_a=beta_a,
        in_shape=in_shape,
        requant=make_requant(rng, n, final=final),
        weight_format=fmt,
        weight_exponent=int(rng.integers(-40, 40)) if exponent is None else exponent,
        act_bits=act_bits,
        out_beta_a=None if final else int(2 ** rng.integers(0, 7)),
        name=name,
        **geo,
    )


def make_act(rng, shape, *, beta_a: int = 4, bits: int = 8, exponent: int = -3) -> QAct:
    segs = -(-shape[-1] // beta_a)
    return QAct(signs=rng.random(shape) < 0.5, delta=rng.integers(0, 1 << bits, shape[:-1] + (segs,)),
                beta_a=beta_a, bits=bits, exponent=exponent)


def small_layer(lane_width: int = 8) -> bytes:
    rng = np.random.default_rng(7)
    layer = make_layer(rng, n=2, k=11, beta_w=4, beta_a=2, fmt=DeltaFormat(bits=9), exponent=-5, name="fc")
    return pack_layer(layer, lane_width=lane_width)


def refix_crc(blob: bytes | bytearray) -> bytes:
    """Recompute the trailer so that tests reach the checks behind the checksum."""
    b = bytearray(blob)
    struct.pack_into("<I", b, len(b) - 4, zlib.crc32(bytes(b[:-4])))
    return bytes(b)


def patch(blob: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    return refix_crc(b)


# ---------------------------------------------------------------------------------------------
# Known answers, written by hand from the contract (bit 1 = +1, element k at bit k % L of
# little-endian word k // L) and the field table in docs/packing.md.


def test_sign_bits_known_answer_lane8():
    # signs -1 +1 +1 -1 -1 +1 -> bits k=0..5 = 0 1 1 0 0 1 -> LSB first: 0b00100110
    signs = np.array([[False, True, True, False, False, True]])
    words = packed_sign_words(signs, 8)
    assert words.dtype == np.uint8 and words.tolist() == [[0b00100110]]
    np.testing.assert_array_equal(unpacked_sign_words(words, 6, 8), signs)


def test_sign_bits_known_answer_wide_lanes():
    # K = 10, +1 only at k = 0 and k = 9: one 16-bit word 0x0201, stored little-endian as 01 02.
    s = np.zeros((1, 10), bool)
    s[0, [0, 9]] = True
    assert packed_sign_words(s, 16).tolist() == [[0x0201]]
    assert packed_sign_words(s, 16).astype("<u2").tobytes() == b"\x01\x02"
    # K = 70 in 64-bit lanes: word 0 holds k = 0..63, word 1 holds k = 64..69 in bits 0..5.
    s = np.zeros((2, 70), bool)
    s[0, [0, 63, 64, 69]] = True
    s[1, [1, 65]] = True
    assert packed_sign_words(s, 64).tolist() == [[1 | 1 << 63, 1 | 1 << 5], [2, 2]]
    # 8-bit lanes of the same row: bytes 01 00 .. 00 80 | 21 (k=64 -> bit 0, k=69 -> bit 5)
    assert packed_sign_words(s[:1], 8).tolist() == [[1, 0, 0, 0, 0, 0, 0, 0x80, 0x21]]


def test_layer_known_answer_bytes():
    layer = QLayer(
        kind="linear", weight_signs=np.array([[True, False, True]]), weight_delta=np.array([[5]]),
        beta_w=4, beta_a=1, in_shape=(3,), weight_exponent=-2,
        requant=Requant(multiplier=[3], bias=[-1], shift=2, relu=True, saturate_bits=8),
        out_beta_a=1, name="ab",
    )
    head = bytes.fromhex(
        "48 48 57 4c"  # magic HHWL
        " 01 00 00 00"  # version 1, reserved 0
        " 64 00 00 00"  # total_length 100
        " 00 08 08 00"  # kind linear, lane 8, delta bits 8, delta kind fixed
        " 01 00 00 00 03 00 00 00"  # N = 1, K = 3
        " 00 00 00 00 00 00 00 00 03 00 00 00"  # in_h = in_w = 0, in_c = 3
        " 01 00 01 00 00 00 01 00"  # kernel 1, stride 1, padding 0, pool 1
        " 04 00 01 00 01 00 fe ff"  # beta_w 4, beta_a 1, out_beta_a 1, weight_exponent -2
        " 08 02 01 08 02"  # act_bits 8, shift 2, relu 1, saturate_bits 8, name_len 2
        " 61 62 00 00 00 00 00"  # "ab", pad to 64
        " 03 00 00 00 00 00 00 00"  # multiplier [3] (i32), pad to 72
        " ff ff ff ff ff ff ff ff"  # bias [-1] (i64)
        " 05 00 00 00 00 00 00 00"  # signs +1 -1 +1 -> 0b101, pad to 88
        " 05 00 00 00 00 00 00 00"  # delta code 5, pad to 96
    )
    expected = head + struct.pack("<I", zlib.crc32(head))
    assert pack_layer(layer, lane_width=8) == expected
    assert unpack_layer(expected) == layer


def test_act_known_answer_bytes():
    act = QAct(signs=np.array([True, True, False, False, True]), delta=np.array([7, 300]), beta_a=4, bits=9,
               exponent=1)
    head = bytes.fromhex(
        "48 48 57 41 01 00 00 00 34 00 00 00"  # HHWA, version 1, reserved 0, total_length 52
        " 01 10 09 00"  # ndim 1, lane 16, bits 9, reserved
        " 00 00 00 00 00 00 00 00 05 00 00 00"  # H = W = 0, C = 5
        " 04 00 01 00"  # beta_a 4, exponent 1
        " 13 00 00 00 00 00 00 00"  # signs + + - - + -> 0b10011 = 0x0013 (one u16 LE), pad to 40
        " 07 00 2c 01 00 00 00 00"  # codes 7, 300 (u16 LE), pad to 48
    )
    expected = head + struct.pack("<I", zlib.crc32(head))
    assert pack_act(act, lane_width=16) == expected
    assert unpack_act(expected) == act


# ---------------------------------------------------------------------------------------------
# Sign-word helpers


@HYP
@given(rows=st.integers(0, 4), k=st.integers(0, 200), lane=st.sampled_from(LANE_WIDTHS), seed=st.integers(0, 2**32 - 1))
def test_sign_words_match_naive_reference(rows, k, lane, seed):
    signs = np.random.default_rng(seed).random((rows, k)) < 0.5
    words = packed_sign_words(signs, lane)
    ref = [[0] * (-(-k // lane)) for _ in range(rows)]
    for r in range(rows):
        for i in range(k):
            if signs[r, i]:
                ref[r][i // lane] |= 1 << (i % lane)
    assert words.dtype == np.dtype(f"u{lane // 8}")
    assert words.shape == (rows, -(-k // lane)) and words.tolist() == ref
    np.testing.assert_array_equal(unpacked_sign_words(words, k, lane), signs)


def test_sign_bytes_independent_of_lane_when_k_is_a_multiple_of_64():
    signs = np.random.default_rng(1).random((3, 192)) < 0.5
    raw = {lane: packed_sign_words(signs, lane).astype(f"<u{lane // 8}").tobytes() for lane in LANE_WIDTHS}
    assert len(set(raw.values())) == 1


def test_unpacked_sign_words_rejects_padding_and_bad_shapes():
    with pytest.raises(PackingError, match="padding lane 6"):
        unpacked_sign_words(np.array([[1 << 6]], np.uint8), 6, 8)
    with pytest.raises(PackingError, match="words"):
        unpacked_sign_words(np.zeros((1, 2), np.uint8), 6, 8)
    with pytest.raises(PackingError, match="fit in 8 bits"):
        unpacked_sign_words(np.array([[256]]), 8, 8)
    with pytest.raises(PackingError, match="bool"):
        packed_sign_words(np.array([[1, -1]]), 8)
    with pytest.raises(PackingError, match="lane_width"):
        packed_sign_words(np.zeros((1, 3), bool), 12)


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("beta_w,beta_a", BETA_PAIRS)
def test_linear_round_trip(beta_w, beta_a):
    rng = np.random.default_rng(beta_w * 100 + beta_a)
    for lane in LANE_WIDTHS:
        ks = {1, lane - 1, lane, lane + 1, 2 * lane + 5, beta_w, 3 * beta_w, 3 * beta_w + 1}
        for k in sorted(ks):
            fmt = FORMATS[int(rng.integers(len(FORMATS)))]
            layer = make_layer(rng, n=int(rng.integers(1, 5)), k=k, beta_w=beta_w, beta_a=beta_a, fmt=fmt)
            blob = pack_layer(layer, lane_width=lane)
            assert unpack_layer(blob) == layer
            lay = layer_layout(layer, lane_width=lane)
            assert len(blob) == lay.total_bytes and blob_layout(blob) == lay


@pytest.mark.parametrize("beta_w,beta_a", BETA_PAIRS)
def test_conv_round_trip(beta_w, beta_a):
    rng = np.random.default_rng(1000 + beta_w * 100 + beta_a)
    for lane in LANE_WIDTHS:
        for fmt in (DeltaFormat(bits=8), DeltaFormat(bits=12), DeltaFormat(bits=4, kind="log2")):
            layer = make_layer(rng, kind="conv2d", n=int(rng.integers(1, 4)), beta_w=beta_w, beta_a=beta_a, fmt=fmt,
                               name=f"conv{lane}")
            assert layer.kind == "conv2d"
            assert unpack_layer(pack_layer(layer, lane_width=lane)) == layer


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f.kind}{f.bits}")
def test_formats_exponents_names(fmt):
    rng = np.random.default_rng(fmt.bits)
    for exponent, name in [(-32768, ""), (-7, "fc1"), (0, "ünïcødé ⚡ layer"), (32767, "x" * 255),
                           (3, "é" * 127)]:
        layer = make_layer(rng, k=37, fmt=fmt, exponent=exponent, name=name, act_bits=int(rng.integers(1, 17)))
        got = unpack_layer(pack_layer(layer, lane_width=16))
        assert got == layer and got.name == name and got.weight_exponent == exponent
    # extremes of every code range and of the requant fields
    layer = make_layer(rng, k=9, fmt=fmt)
    layer = dataclasses.replace(
        layer, weight_delta=np.full(layer.weight_delta.shape, fmt.max_code),
        requant=Requant(multiplier=[-(2**31), 2**31 - 1, 0], bias=[-(2**63), 2**63 - 1, 0], shift=62,
                        relu=False, saturate_bits=16))
    assert unpack_layer(pack_layer(layer)) == layer


@HYP
@given(kind=st.sampled_from(["linear", "conv2d"]), bw=st.sampled_from(BETAS), ba=st.sampled_from(BETAS),
       lane=st.sampled_from(LANE_WIDTHS), fmt=st.sampled_from(FORMATS), n=st.integers(1, 6),
       k=st.integers(1, 150), seed=st.integers(0, 2**32 - 1))
def test_round_trip_property(kind, bw, ba, lane, fmt, n, k, seed):
    bw, ba = max(bw, ba), min(bw, ba)
    layer = make_layer(np.random.default_rng(seed), kind=kind, n=n, k=k, beta_w=bw, beta_a=ba, fmt=fmt)
    blob = pack_layer(layer, lane_width=lane)
    assert unpack_layer(blob) == layer
    assert unpack(blob) == layer
    assert pack_layer(unpack_layer(blob), lane_width=lane) == blob


@pytest.mark.parametrize("lane", LANE_WIDTHS)
@pytest.mark.parametrize("shape", [(1,), (5,), (64,), (100,), (3, 4, 8), (2, 1, 72), (1, 1, 1), (0, 3, 4)])
def test_act_round_trip(shape, lane):
    rng = np.random.default_rng(sum(shape) + lane)
    for bits in (1, 4, 8, 9, 16):
        for beta_a in (1, 4, 8, 64):
            act = make_act(rng, shape, beta_a=beta_a, bits=bits, exponent=int(rng.integers(-100, 100)))
            blob = pack_act(act, lane_width=lane)
            assert unpack_act(blob) == act and unpack(blob) == act
            lay = act_layout(act, lane_width=lane)
            assert len(blob) == lay.total_bytes and blob_layout(blob) == lay


def test_network_round_trip():
    rng = np.random.default_rng(3)
    layers = [make_layer(rng, kind="conv2d", beta_w=8, beta_a=4, name="c1"),
              make_layer(rng, k=50, beta_w=16, beta_a=16, fmt=DeltaFormat(bits=3, kind="log2"), name="fc"),
              make_layer(rng, k=3, beta_w=1, beta_a=1, fmt=DeltaFormat(bits=16))]
    for lane in LANE_WIDTHS:
        blob = pack_network(layers, lane_width=lane)
        assert unpack_network(blob) == layers and unpack(blob) == layers
        lay = blob_layout(blob)
        assert lay.rows == 3 and len(blob) == lay.total_bytes
        for i, layer in enumerate(layers):
            s = lay.section(f"layer{i}")
            assert s.offset % 8 == 0 and blob[s.offset:s.end] == pack_layer(layer, lane_width=lane)
    assert unpack_network(pack_network([])) == []


def test_layout_sizes():
    rng = np.random.default_rng(4)
    layer = make_layer(rng, n=5, k=100, beta_w=8, beta_a=4, fmt=DeltaFormat(bits=12), name="abc")
    lay = layer_layout(layer, lane_width=32)
    assert lay.words_per_row == 4 and lay.row_bytes == 16
    assert lay.sign_bytes == 5 * 16
    assert lay.delta_bytes == 5 * 13 * 2
    assert lay.requant_bytes == 5 * 4 + 5 * 8
    assert lay.header_bytes == 57 + 3
    assert lay.metadata_bytes == lay.header_bytes + lay.requant_bytes + 4
    assert lay.total_bytes == lay.metadata_bytes + lay.sign_bytes + lay.delta_bytes + lay.padding_bytes
    assert all(s.offset % 8 == 0 for s in lay.sections)
    assert [s.name for s in lay.sections] == ["header", "multiplier", "bias", "signs", "deltas", "crc"]
    blob = pack_layer(layer, lane_width=32)
    s = lay.section("signs")
    words = np.frombuffer(blob, "<u4", count=s.size // 4, offset=s.offset).reshape(5, 4)
    np.testing.assert_array_equal(unpacked_sign_words(words, 100, 32), layer.weight_signs)
    act = make_act(rng, (4, 4, 16), beta_a=8, bits=8)
    alay = act_layout(act, lane_width=8)
    assert (alay.rows, alay.words_per_row, alay.sign_bytes, alay.delta_bytes) == (16, 2, 32, 32)


# ---------------------------------------------------------------------------------------------
# Corruption: nothing silently wrong


@pytest.mark.parametrize("lane", [8, 64])
def test_every_byte_flip_raises(lane):
    blob = small_layer(lane)
    assert len(blob) < 400
    for pos in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF, 0x5A):
            bad = bytearray(blob)
            bad[pos] ^= mask
            with pytest.raises(PackingError):
                unpack_layer(bytes(bad))


def test_every_byte_flip_raises_act_and_network():
    rng = np.random.default_rng(5)
    act_blob = pack_act(make_act(rng, (2, 2, 12), beta_a=4, bits=10), lane_width=16)
    net_blob = pack_network([make_layer(rng, n=1, k=5, beta_w=2, beta_a=1), make_layer(rng, n=1, k=3)])
    for blob, fn in ((act_blob, unpack_act), (net_blob, unpack_network)):
        for pos in range(len(blob)):
            for mask in (0x01, 0xFF):
                bad = bytearray(blob)
                bad[pos] ^= mask
                with pytest.raises(PackingError):
                    fn(bytes(bad))


def test_every_truncation_raises():
    rng = np.random.default_rng(6)
    cases = [(small_layer(), unpack_layer), (pack_act(make_act(rng, (9,))), unpack_act),
             (pack_network([make_layer(rng, n=1, k=4)]), unpack_network)]
    for blob, fn in cases:
        for n in range(len(blob)):
            with pytest.raises(PackingError, match="truncated|magic"):
                fn(blob[:n])
            with pytest.raises(PackingError):
                unpack(blob[:n])
    with pytest.raises(PackingError, match=r"truncated layer: expected \d+ bytes, got 40"):
        unpack_layer(small_layer()[:40])


def test_trailing_garbage_raises():
    blob = small_layer()
    for extra in (b"\x00", b"\xff" * 7, blob):
        with pytest.raises(PackingError, match="trailing garbage"):
            unpack_layer(blob + extra)
    with pytest.raises(PackingError, match="trailing garbage: 1 bytes"):
        unpack_act(pack_act(make_act(np.random.default_rng(0), (3,))) + b"\x00")


def test_wrong_magic_says_what_it_looks_like():
    rng = np.random.default_rng(8)
    act_blob = pack_act(make_act(rng, (4,)))
    with pytest.raises(PackingError, match="wrong magic b'HHWA'.*activations.*expected b'HHWL'"):
        unpack_layer(act_blob)
    with pytest.raises(PackingError, match="wrong magic b'HHWL'.*layer"):
        unpack_act(small_layer())
    with pytest.raises(PackingError, match="magic.*network"):
        unpack_layer(pack_network([]))
    with pytest.raises(PackingError, match="magic.*NumPy"):
        unpack_layer(b"\x93NUMPY" + bytes(100))
    with pytest.raises(PackingError, match="magic.*byte-reversed"):
        unpack_layer(b"LWHH" + small_layer()[4:])
    with pytest.raises(PackingError, match="wrong magic b'XXXX'"):
        unpack(b"XXXX" + bytes(60))


def test_unsupported_version():
    blob = bytearray(small_layer())
    struct.pack_into("<H", blob, 4, 2)
    with pytest.raises(PackingError, match="unsupported layer format version 2"):
        unpack_layer(refix_crc(blob))
    act = bytearray(pack_act(make_act(np.random.default_rng(0), (3,))))
    struct.pack_into("<H", act, 4, 0)
    with pytest.raises(PackingError, match="version 0"):
        unpack_act(bytes(act))


def test_checksum_mismatch():
    blob = bytearray(small_layer())
    blob[-1] ^= 1
    with pytest.raises(PackingError, match="checksum mismatch"):
        unpack_layer(bytes(blob))


# Checks behind the checksum (a buggy packer, or a blob edited and re-checksummed).


def test_nonzero_sign_padding_raises():
    rng = np.random.default_rng(9)
    layer = make_layer(rng, n=2, k=11, beta_w=4, beta_a=2)
    blob = pack_layer(layer, lane_width=8)
    s = layer_layout(layer, lane_width=8).section("signs")
    bad = bytearray(blob)
    bad[s.offset + 3] |= 0x80  # row 1, word 1 (k = 8..10), lane 7 -> element 15 >= K = 11
    with pytest.raises(PackingError, match="padding lane 7 of row 1"):
        unpack_layer(refix_crc(bad))
    act = make_act(rng, (2, 2, 5), beta_a=1)
    ablob = bytearray(pack_act(act, lane_width=32))
    ab = act_layout(act, lane_width=32).section("signs")
    ablob[ab.offset + 4 * 3 + 3] |= 1  # pixel 3, bit 24
    with pytest.raises(PackingError, match="padding lane 24 of row 3"):
        unpack_act(refix_crc(ablob))


def test_out_of_range_codes_raise():
    rng = np.random.default_rng(10)
    for fmt, value in ((DeltaFormat(bits=4), 16), (DeltaFormat(bits=9), 512), (DeltaFormat(bits=3, kind="log2"), 8)):
        layer = make_layer(rng, n=2, k=12, beta_w=4, fmt=fmt)
        s = layer_layout(layer).section("deltas")
        size = 1 if fmt.bits <= 8 else 2
        bad = patch(pack_layer(layer), s.offset + 4 * size, "<B" if size == 1 else "<H", value)
        with pytest.raises(PackingError, match=rf"delta code {value} at \(row, segment\) \(1, 1\) is out of range"):
            unpack_layer(bad)
    act = make_act(rng, (6,), beta_a=2, bits=3)
    s = act_layout(act).section("deltas")
    with pytest.raises(PackingError, match="delta code 9 .* out of range 0..7"):
        unpack_act(patch(pack_act(act), s.offset + 2, "<B", 9))


def test_inconsistent_header_fields_raise():
    rng = np.random.default_rng(11)
    lin = pack_layer(make_layer(rng, n=2, k=10, beta_w=4, beta_a=2))
    conv_layer = make_layer(rng, kind="conv2d", n=2, beta_w=4, beta_a=2)
    conv = pack_layer(conv_layer)
    cases = [
        (patch(lin, 32, "<I", 11), "inconsistent layer header: linear in_shape"),  # in_c != K
        (patch(lin, 24, "<I", 1), "inconsistent layer header: linear in_shape"),  # in_h != 0
        (patch(conv, 36, "<H", conv_layer.kernel + 1), "inconsistent layer header: K=.* does not match kernel"),
        (patch(lin, 20, "<I", 10), None),  # unchanged K: control, must not raise
        (patch(lin, 16, "<I", 3), "inconsistent layer header: its fields imply"),  # N changed
        (patch(lin, 44, "<H", 1), "inconsistent layer header: its fields imply"),  # beta_w changes the code count
        (patch(lin, 46, "<H", 8), "invalid layer in packed data: beta_a must not exceed beta_w"),
        (patch(lin, 46, "<H", 3), "invalid layer in packed data: beta_a must be a power of two"),
        (patch(lin, 6, "<H", 1), "reserved header field"),
        (patch(lin, 12, "<B", 2), "unknown layer kind code 2"),
        (patch(lin, 13, "<B", 12), "lane_width 12"),
        (patch(lin, 15, "<B", 2), "unknown weight delta kind code 2"),
        (patch(lin, 14, "<B", 17), "corrupt layer: delta bits must be an integer in 1..16"),
        (patch(lin, 54, "<B", 2), "relu flag is 2"),
        (patch(lin, 56, "<B", 200), "name length 200 runs past the end|its fields imply"),
    ]
    for blob, message in cases:
        if message is None:
            unpack_layer(blob)
        else:
            with pytest.raises(PackingError, match=message):
                unpack_layer(blob)


def test_nonzero_alignment_padding_and_bad_name_raise():
    rng = np.random.default_rng(12)
    layer = make_layer(rng, n=3, k=10, name="ab")  # header 59 bytes, padded to 64
    blob = pack_layer(layer)
    with pytest.raises(PackingError, match="nonzero padding byte at offset 60"):
        unpack_layer(patch(blob, 60, "<B", 1))
    lay = layer_layout(layer)
    m = lay.section("multiplier")  # 12 bytes, padded to 16
    with pytest.raises(PackingError, match=f"nonzero padding byte at offset {m.end}"):
        unpack_layer(patch(blob, m.end, "<B", 1))
    with pytest.raises(PackingError, match="not valid UTF-8"):
        unpack_layer(patch(blob, 57, "<B", 0xFF))


def test_total_length_must_match_layout():
    blob = small_layer()
    grown = bytearray(blob[:-4] + bytes(8) + blob[-4:])
    struct.pack_into("<I", grown, 8, len(grown))
    with pytest.raises(PackingError, match="fields imply .* but total_length is"):
        unpack_layer(refix_crc(grown))


def test_network_table_must_be_canonical():
    rng = np.random.default_rng(13)
    blob = pack_network([make_layer(rng, n=1, k=4), make_layer(rng, n=1, k=4)])
    with pytest.raises(PackingError, match="inconsistent network table: layer 1"):
        unpack_network(patch(blob, 16 + 8, "<I", struct.unpack_from("<I", blob, 24)[0] + 8))
    with pytest.raises(PackingError, match="inconsistent network header"):
        unpack_network(patch(blob, 12, "<I", 1000))
    # a corrupt layer inside a re-checksummed container is reported with its index
    s = blob_layout(blob).section("layer1")
    bad = bytearray(blob)
    bad[s.offset + 20] ^= 1
    with pytest.raises(PackingError, match="network layer 1: checksum mismatch in layer"):
        unpack_network(refix_crc(bad))


# ---------------------------------------------------------------------------------------------
# Packing errors name the field


def test_multiplier_overflow_names_the_field():
    rng = np.random.default_rng(14)
    layer = make_layer(rng, n=3, k=8)
    big = dataclasses.replace(layer, requant=dataclasses.replace(layer.requant, multiplier=np.array([1, 2**31, 3])))
    with pytest.raises(PackingError, match=r"requant.multiplier\[1\] = 2147483648 does not fit in int32") as e:
        pack_layer(big)
    assert isinstance(e.value, ValueError)
    small = dataclasses.replace(layer, requant=dataclasses.replace(layer.requant, multiplier=np.array([0, 0, -(2**31) - 1])))
    with pytest.raises(ValueError, match=r"requant.multiplier\[2\]"):
        pack_layer(small)


def test_other_pack_errors_name_the_field():
    rng = np.random.default_rng(15)
    layer = make_layer(rng, k=8)
    # Values no layer/activation may hold are refused when the object is built, naming the field.
    with pytest.raises(ValueError, match="weight_exponent must be an integer"):
        dataclasses.replace(layer, weight_exponent=40000)
    with pytest.raises(ValueError, match="weight_exponent must be an integer"):
        dataclasses.replace(layer, weight_exponent=0.5)
    with pytest.raises(PackingError, match="name is 256 bytes"):
        pack_layer(dataclasses.replace(layer, name="x" * 256))
    with pytest.raises(PackingError, match="lane_width"):
        pack_layer(layer, lane_width=24)
    with pytest.raises(ValueError, match="activation exponent must be an integer"):
        make_act(rng, (4,), exponent=-40000)
    with pytest.raises(ValueError, match="activation bits must be an integer in 1..16"):
        QAct(signs=np.ones(2, bool), delta=np.array([1 << 16]), beta_a=2, bits=17)
    with pytest.raises(TypeError):
        pack_layer(make_act(rng, (4,)))
