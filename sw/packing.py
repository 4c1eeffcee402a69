"""Packed binary format for layers (``HHWL``), activations (``HHWA``) and networks (``HHWN``).

The full byte layout, with a table of every field, is in ``docs/packing.md``.  In brief:

* Every blob starts with a 12-byte preamble -- magic (4 bytes), format version (u16, = 1), a
  reserved u16 (= 0), total length in bytes (u32, CRC included) -- and ends with the CRC-32
  (``zlib.crc32``, u32) of every byte before it.  All integers are little-endian.
* A layer blob then holds a fixed metadata header (kind, N, K, in_shape, conv geometry, beta_w,
  beta_a, out_beta_a, weight delta format and exponent, act_bits, requant scalars, lane width),
  the UTF-8 name (length-prefixed, <= 255 bytes), and the sections ``multiplier`` (i32 x N),
  ``bias`` (i64 x N), ``signs`` (N rows of ``ceil(K / L)`` little-endian words of ``L`` =
  lane_width bits) and ``deltas`` (N x ceil(K / beta_w) unsigned codes, 1 byte each for formats
  of <= 8 bits, else 2 bytes).  Every section starts at an 8-byte aligned offset; the gaps are
  zero.
* Sign element ``k`` of a row is bit ``k % L`` of word ``k // L`` and bit 1 means +1 (the
  contract's sign encoding); the lanes past ``K`` in a row's last word are zero.
* An activation blob holds the :class:`~hadahw.golden.QAct` fields and the same two bit/code
  sections, one row per pixel (a vector is one row).
* A network blob holds a table of (offset, length) entries and the layer blobs, each 8-byte
  aligned.

Unpacking never returns a silently wrong result: a wrong magic, an unsupported version, a
truncation, trailing bytes, a checksum mismatch, inconsistent header fields, nonzero padding and
out-of-range codes all raise :class:`PackingError` (a ``ValueError``) with a one-line message.
Packing a value that does not fit its field also raises :class:`PackingError`, naming the field.
"""

from __future__ import annotations

import dataclasses
import operator
import struct
import zlib
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from hadahw.contract import DeltaFormat, Requant, segment_count
from hadahw.golden import QAct, QLayer

__all__ = [
    "PackingError",
    "FORMAT_VERSION",
    "MAGIC_LAYER",
    "MAGIC_ACT",
    "MAGIC_NETWORK",
    "LANE_WIDTHS",
    "ALIGN",
    "Section",
    "LayoutInfo",
    "pack_layer",
    "unpack_layer",
    "pack_act",
    "unpack_act",
    "pack_network",
    "unpack_network",
    "unpack",
    "packed_sign_words",
    "unpacked_sign_words",
    "words_per_row",
    "code_bytes_for",
    "layer_layout",
    "act_layout",
    "blob_layout",
]

FORMAT_VERSION = 1
MAGIC_LAYER = b"HHWL"
MAGIC_ACT = b"HHWA"
MAGIC_NETWORK = b"HHWN"
LANE_WIDTHS = (8, 16, 32, 64)
#: Alignment (bytes) of every section and of every layer blob inside a network.
ALIGN = 8
CRC_BYTES = 4
MAX_NAME_BYTES = 255

# Preamble shared by all blobs: magic, version, reserved, total_length.
_PREAMBLE = struct.Struct("<4sHHI")
# Layer header (57 bytes), see docs/packing.md for the offsets.
_LAYER_HEAD = struct.Struct(
    "<4sHHI"  # magic, version, reserved, total_length                      0..11
    "BBBB"  # kind, lane_width, weight delta bits, weight delta kind        12..15
    "IIIII"  # N, K, in_h, in_w, in_c                                      16..35
    "HHHH"  # kernel, stride, padding, pool                                 36..43
    "HHHh"  # beta_w, beta_a, out_beta_a (0 = None), weight_exponent        44..51
    "BBBBB"  # act_bits, shift, relu, saturate_bits (0 = None), name_len   52..56
)
# Activation header (32 bytes).
_ACT_HEAD = struct.Struct(
    "<4sHHI"  # magic, version, reserved, total_length                      0..11
    "BBBB"  # ndim (1 or 3), lane_width, bits, reserved                     12..15
    "III"  # H, W, C (H = W = 0 for a vector of C = K elements)            16..27
    "Hh"  # beta_a, exponent                                                28..31
)
# Network header (16 bytes) and its table entries (8 bytes each).
_NET_HEAD = struct.Struct("<4sHHII")
_NET_ENTRY = struct.Struct("<II")

_KINDS = ("linear", "conv2d")
_DELTA_KINDS = ("fixed", "log2")

_KNOWN_MAGICS = {
    MAGIC_LAYER: "a packed layer (HHWL; use unpack_layer)",
    MAGIC_ACT: "packed activations (HHWA; use unpack_act)",
    MAGIC_NETWORK: "a packed network (HHWN; use unpack_network)",
    b"\x93NUM": "a NumPy .npy file",
    b"PK\x03\x04": "a zip archive (.npz or a PyTorch checkpoint)",
    b"\x7fELF": "an ELF executable",
}


class PackingError(ValueError):
    """Data that cannot be packed, or packed data that is malformed or corrupt."""


# ---------------------------------------------------------------------------------------------
# Small helpers


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _check_lane(lane_width) -> int:
    if isinstance(lane_width, bool) or not isinstance(lane_width, (int, np.integer)) or lane_width not in LANE_WIDTHS:
        raise PackingError(f"lane_width must be one of {LANE_WIDTHS}, not {lane_width!r}")
    return int(lane_width)


def _int_field(field: str, value, lo: int, hi: int) -> int:
    """``value`` as an ``int`` in ``[lo, hi]``, or a PackingError naming ``field``."""
    if isinstance(value, bool):
        value = int(value)
    try:
        v = operator.index(value)
    except TypeError:
        raise PackingError(f"{field} must be an integer, not {value!r}") from None
    if not lo <= v <= hi:
        raise PackingError(f"{field} = {v} does not fit its field (range {lo}..{hi})")
    return v


def _u(field: str, value, bits: int) -> int:
    return _int_field(field, value, 0, (1 << bits) - 1)


def _s(field: str, value, bits: int) -> int:
    return _int_field(field, value, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def _array_field(field: str, values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` as a little-endian array of ``dtype``, or a PackingError naming the field."""
    v = np.asarray(values)
    info = np.iinfo(np.dtype(dtype))
    if v.size:
        bad = np.flatnonzero((v < info.min) | (v > info.max))
        if bad.size:
            i = int(bad[0])
            raise PackingError(f"{field}[{i}] = {int(v.reshape(-1)[i])} does not fit in {np.dtype(dtype).name} "
                               f"(range {info.min}..{info.max})")
    return v.astype(dtype)


def _describe_magic(head: bytes) -> str:
    if head in _KNOWN_MAGICS:
        return "looks like " + _KNOWN_MAGICS[head]
    if head[::-1] in (MAGIC_LAYER, MAGIC_ACT, MAGIC_NETWORK):
        return "looks like a hadahw magic byte-reversed (written with the wrong endianness?)"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "looks like text"
    return "unknown format"


def code_bytes_for(bits: int) -> int:
    """Bytes per stored delta code: 1 for formats of <= 8 bits, else 2."""
    return 1 if bits <= 8 else 2


def words_per_row(k: int, lane_width: int) -> int:
    """Words of ``lane_width`` bits holding a row of ``k`` sign bits (rows are padded to whole words)."""
    return -(-k // _check_lane(lane_width))


# ---------------------------------------------------------------------------------------------
# Sign bits


def packed_sign_words(signs, lane_width: int = 32) -> np.ndarray:
    """Pack sign bits row by row into words: the contract's sign encoding.

    Parameters
    ----------
    signs : bool array (R, K)
        True = +1 (bit 1), False = -1 (bit 0).
    lane_width : {8, 16, 32, 64}

    Returns
    -------
    words : uint array (R, ceil(K / lane_width)) of dtype ``uint{lane_width}``
        Element ``k`` of row ``r`` is bit ``k % lane_width`` (LSB first) of ``words[r, k // lane_width]``;
        lanes past ``K`` in the last word are 0.
    """
    lane = _check_lane(lane_width)
    s = np.asarray(signs)
    if s.dtype != np.bool_:
        raise PackingError(f"signs must be a bool array (True = +1), not dtype {s.dtype}")
    if s.ndim != 2:
        raise PackingError(f"signs must be 2-D (rows, K), got shape {s.shape}")
    r, k = s.shape
    w = -(-k // lane)
    padded = np.zeros((r, w * lane), dtype=bool)
    padded[:, :k] = s
    by = np.packbits(padded, axis=1, bitorder="little").reshape(r, w * (lane // 8))
    return np.ascontiguousarray(by).view(f"<u{lane // 8}").reshape(r, w).astype(f"u{lane // 8}")


def unpacked_sign_words(words, k: int, lane_width: int = 32) -> np.ndarray:
    """Inverse of :func:`packed_sign_words`: bool (R, K) sign bits of (R, ceil(K / lane_width)) words.

    Raises :class:`PackingError` if the shape does not match ``k``, a word does not fit in
    ``lane_width`` bits, or a padding lane (past ``K``) is set.
    """
    lane = _check_lane(lane_width)
    k = _u("K", k, 64)
    wd = np.asarray(words)
    if wd.ndim != 2 or wd.dtype.kind not in "ui":
        raise PackingError(f"sign words must be a 2-D integer array, got shape {wd.shape} dtype {wd.dtype}")
    r, w = wd.shape
    if w != -(-k // lane):
        raise PackingError(f"K={k} needs {-(-k // lane)} words of {lane} bits per row, got {w}")
    if wd.size and (wd.min() < 0 or wd.max() > (1 << lane) - 1):
        raise PackingError(f"sign words must fit in {lane} bits")
    le = np.ascontiguousarray(wd.astype(f"<u{lane // 8}"))
    bits = np.unpackbits(le.view(np.uint8).reshape(r, w * (lane // 8)), axis=1, bitorder="little")
    pad = bits[:, k:]
    if pad.any():
        row, lane_i = (int(v) for v in np.argwhere(pad)[0])
        raise PackingError(f"corrupt sign bits: padding lane {(k + lane_i) % lane} of row {row}'s last word is set "
                           f"(element {k + lane_i} >= K={k})")
    return bits[:, :k].astype(bool)


# ---------------------------------------------------------------------------------------------
# Layout


class Section(NamedTuple):
    """A named byte range of a blob."""

    name: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclasses.dataclass(frozen=True)
class LayoutInfo:
    """Where each section of a packed blob lies, and how big it is.

    ``sections`` lists the named byte ranges in file order: ``header`` (the fixed header plus
    the name), then ``multiplier`` and ``bias`` (layers only), ``signs``, ``deltas`` and ``crc``.
    Bytes not covered by a section are alignment padding (zero).
    """

    magic: bytes
    lane_width: int
    rows: int  #: sign rows: N for a layer, 1 for a vector, H*W for a map; layer count for a network
    row_elements: int  #: sign bits per row: K for a layer, C for activations
    words_per_row: int
    segments_per_row: int  #: delta codes per row
    code_bytes: int  #: 1 or 2
    sections: tuple[Section, ...]
    total_bytes: int

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(name)

    def _size(self, name: str) -> int:
        return next((s.size for s in self.sections if s.name == name), 0)

    @property
    def row_bytes(self) -> int:
        """Bytes of one packed sign row (whole words)."""
        return self.words_per_row * self.lane_width // 8

    @property
    def sign_bytes(self) -> int:
        return self._size("signs")

    @property
    def delta_bytes(self) -> int:
        return self._size("deltas")

    @property
    def header_bytes(self) -> int:
        return self._size("header")

    @property
    def requant_bytes(self) -> int:
        return self._size("multiplier") + self._size("bias")

    @property
    def metadata_bytes(self) -> int:
        """Everything but the sign bits, the delta codes and padding: header, requant, CRC."""
        return self.header_bytes + self.requant_bytes + self._size("crc")

    @property
    def padding_bytes(self) -> int:
        return self.total_bytes - sum(s.size for s in self.sections)


def _build_layout(magic: bytes, head_bytes: int, arrays: Sequence[tuple[str, int]], *, lane: int, rows: int,
                  row_elements: int, segments: int, code_bytes: int) -> LayoutInfo:
    sections = [Section("header", 0, head_bytes)]
    off = _align(head_bytes)
    for name, size in arrays:
        sections.append(Section(name, off, size))
        off = _align(off + size)
    sections.append(Section("crc", off, CRC_BYTES))
    return LayoutInfo(magic=magic, lane_width=lane, rows=rows, row_elements=row_elements,
                      words_per_row=-(-row_elements // lane), segments_per_row=segments, code_bytes=code_bytes,
                      sections=tuple(sections), total_bytes=off + CRC_BYTES)


def _layer_layout(n: int, k: int, lane: int, delta_bits: int, beta_w: int, name_len: int) -> LayoutInfo:
    w = -(-k // lane)
    s = segment_count(k, beta_w)
    cb = code_bytes_for(delta_bits)
    return _build_layout(MAGIC_LAYER, _LAYER_HEAD.size + name_len,
                         [("multiplier", 4 * n), ("bias", 8 * n), ("signs", n * w * lane // 8), ("deltas", n * s * cb)],
                         lane=lane, rows=n, row_elements=k, segments=s, code_bytes=cb)


def _act_layout(rows: int, c: int, lane: int, bits: int, beta_a: int) -> LayoutInfo:
    w = -(-c // lane)
    s = segment_count(c, beta_a)
    cb = code_bytes_for(bits)
    return _build_layout(MAGIC_ACT, _ACT_HEAD.size, [("signs", rows * w * lane // 8), ("deltas", rows * s * cb)],
                         lane=lane, rows=rows, row_elements=c, segments=s, code_bytes=cb)


def _encode_name(name) -> bytes:
    if not isinstance(name, str):
        raise PackingError(f"name must be a str, not {type(name).__name__}")
    b = name.encode("utf-8")
    if len(b) > MAX_NAME_BYTES:
        raise PackingError(f"name is {len(b)} bytes in UTF-8; the format allows at most {MAX_NAME_BYTES}")
    return b


def layer_layout(layer: QLayer, *, lane_width: int = 32) -> LayoutInfo:
    """Section sizes and offsets of ``pack_layer(layer, lane_width=lane_width)`` without packing."""
    if not isinstance(layer, QLayer):
        raise TypeError(f"layer_layout needs a QLayer, not {type(layer).__name__}")
    n, k = layer.weight_signs.shape
    return _layer_layout(n, k, _check_lane(lane_width), layer.weight_format.bits, layer.beta_w,
                         len(_encode_name(layer.name)))


def act_layout(act: QAct, *, lane_width: int = 32) -> LayoutInfo:
    """Section sizes and offsets of ``pack_act(act, lane_width=lane_width)`` without packing."""
    if not isinstance(act, QAct):
        raise TypeError(f"act_layout needs a QAct, not {type(act).__name__}")
    rows, c = _act_rows(act)
    return _act_layout(rows, c, _check_lane(lane_width), _check_act_bits(act.bits), act.beta_a)


# ---------------------------------------------------------------------------------------------
# Envelope: preamble, length and checksum


def _finish(buf: bytearray) -> bytes:
    if len(buf) > 0xFFFFFFFF:
        raise PackingError(f"total_length = {len(buf)} does not fit its field (u32); the blob is too large")
    struct.pack_into("<I", buf, len(buf) - CRC_BYTES, zlib.crc32(memoryview(buf)[:-CRC_BYTES]))
    return bytes(buf)


def _open(data, magic: bytes, what: str, min_size: int) -> bytes:
    """Check magic, version, length and checksum; return the blob as ``bytes``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"packed {what} must be bytes-like, not {type(data).__name__}")
    data = bytes(data)
    head = data[:4]
    if head != magic[: len(head)]:
        raise PackingError(f"wrong magic {head!r} ({_describe_magic(head)}), expected {magic!r} for {what}")
    if len(data) < _PREAMBLE.size:
        raise PackingError(f"truncated {what}: expected at least {_PREAMBLE.size} bytes for the preamble, got {len(data)}")
    _, version, _, total = _PREAMBLE.unpack_from(data)
    if version != FORMAT_VERSION:
        raise PackingError(f"unsupported {what} format version {version} (this reader supports version {FORMAT_VERSION})")
    if total < min_size:
        raise PackingError(f"corrupt {what}: total_length {total} is below the minimum of {min_size} bytes")
    if len(data) < total:
        raise PackingError(f"truncated {what}: expected {total} bytes, got {len(data)}")
    if len(data) > total:
        raise PackingError(f"trailing garbage: {len(data) - total} bytes after the {total}-byte {what}")
    stored = int.from_bytes(data[-CRC_BYTES:], "little")
    actual = zlib.crc32(data[:-CRC_BYTES])
    if stored != actual:
        raise PackingError(f"checksum mismatch in {what}: stored CRC-32 0x{stored:08x}, computed 0x{actual:08x}")
    return data


def _check_layout(data: bytes, lay: LayoutInfo, what: str, header_total: int) -> None:
    """The header's total length must match the layout its fields imply; padding must be zero."""
    if lay.total_bytes != header_total:
        raise PackingError(f"inconsistent {what} header: its fields imply {lay.total_bytes} bytes "
                           f"but total_length is {header_total}")
    pos = 0
    for s in lay.sections:
        gap = data[pos:s.offset]
        if any(gap):
            off = pos + next(i for i, b in enumerate(gap) if b)
            raise PackingError(f"corrupt {what}: nonzero padding byte at offset {off} (before section {s.name!r})")
        pos = s.end


def _read(data: bytes, lay: LayoutInfo, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    s = lay.section(name)
    return np.frombuffer(data, dtype=dtype, count=s.size // np.dtype(dtype).itemsize, offset=s.offset).reshape(shape)


def _write(buf: bytearray, lay: LayoutInfo, name: str, arr: np.ndarray) -> None:
    s = lay.section(name)
    raw = np.ascontiguousarray(arr).tobytes()
    assert len(raw) == s.size, (name, len(raw), s.size)
    buf[s.offset:s.end] = raw


def _sign_dtype(lane: int) -> str:
    return f"<u{lane // 8}"


def _code_dtype(code_bytes: int) -> str:
    return "<u1" if code_bytes == 1 else "<u2"


def _read_signs(data: bytes, lay: LayoutInfo, what: str) -> np.ndarray:
    words = _read(data, lay, "signs", _sign_dtype(lay.lane_width), (lay.rows, lay.words_per_row))
    try:
        return unpacked_sign_words(words, lay.row_elements, lay.lane_width)
    except PackingError as e:
        raise PackingError(f"{what}: {e}") from None


def _read_codes(data: bytes, lay: LayoutInfo, max_code: int, what: str) -> np.ndarray:
    codes = _read(data, lay, "deltas", _code_dtype(lay.code_bytes), (lay.rows, lay.segments_per_row))
    if codes.size and codes.max() > max_code:
        pos = tuple(int(v) for v in np.argwhere(codes > max_code)[0])
        raise PackingError(f"corrupt {what}: delta code {int(codes[pos])} at (row, segment) {pos} is out of range "
                           f"0..{max_code}")
    return codes.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Layers


def pack_layer(layer: QLayer, *, lane_width: int = 32) -> bytes:
    """Pack a :class:`QLayer` into an ``HHWL`` blob (see ``docs/packing.md``)."""
    if not isinstance(layer, QLayer):
        raise TypeError(f"pack_layer needs a QLayer, not {type(layer).__name__}")
    lane = _check_lane(lane_width)
    name = _encode_name(layer.name)
    n, k = layer.weight_signs.shape
    fmt = layer.weight_format
    lay = _layer_layout(n, k, lane, fmt.bits, layer.beta_w, len(name))
    if layer.kind == "linear":
        in_h, in_w, in_c = 0, 0, layer.in_shape[0]
    else:
        in_h, in_w, in_c = layer.in_shape
    rq = layer.requant
    buf = bytearray(lay.total_bytes)
    _LAYER_HEAD.pack_into(
        buf, 0, MAGIC_LAYER, FORMAT_VERSION, 0, _u("total_length", lay.total_bytes, 32),
        _KINDS.index(layer.kind), lane, fmt.bits, _DELTA_KINDS.index(fmt.kind),
        _u("N (out_features)", n, 32), _u("K (reduction)", k, 32),
        _u("in_shape H", in_h, 32), _u("in_shape W", in_w, 32), _u("in_shape C", in_c, 32),
        _u("kernel", layer.kernel, 16), _u("stride", layer.stride, 16), _u("padding", layer.padding, 16),
        _u("pool", layer.pool, 16), _u("beta_w", layer.beta_w, 16), _u("beta_a", layer.beta_a, 16),
        0 if layer.out_beta_a is None else _int_field("out_beta_a", layer.out_beta_a, 1, 0xFFFF),
        _s("weight_exponent", layer.weight_exponent, 16), _u("act_bits", layer.act_bits, 8),
        _u("requant.shift", rq.shift, 8), int(bool(rq.relu)),
        0 if rq.saturate_bits is None else _int_field("requant.saturate_bits", rq.saturate_bits, 1, 255),
        len(name),
    )
    buf[_LAYER_HEAD.size:_LAYER_HEAD.size + len(name)] = name
    _write(buf, lay, "multiplier", _array_field("requant.multiplier", rq.multiplier, "<i4"))
    _write(buf, lay, "bias", _array_field("requant.bias", rq.bias, "<i8"))
    _write(buf, lay, "signs", packed_sign_words(layer.weight_signs, lane).astype(_sign_dtype(lane)))
    _write(buf, lay, "deltas", _array_field("weight_delta", layer.weight_delta, _code_dtype(lay.code_bytes)))
    return _finish(buf)


def _parse_layer(data) -> tuple[dict, LayoutInfo, bytes]:
    what = "layer"
    data = _open(data, MAGIC_LAYER, what, _LAYER_HEAD.size + CRC_BYTES)
    (_, _, reserved, total, kind, lane, dbits, dkind, n, k, in_h, in_w, in_c, kernel, stride, padding, pool,
     beta_w, beta_a, out_beta_a, wexp, act_bits, shift, relu, sat, name_len) = _LAYER_HEAD.unpack_from(data)
    if reserved:
        raise PackingError(f"corrupt {what}: reserved header field is {reserved}, expected 0")
    if kind >= len(_KINDS):
        raise PackingError(f"corrupt {what}: unknown layer kind code {kind} (0 = linear, 1 = conv2d)")
    if lane not in LANE_WIDTHS:
        raise PackingError(f"corrupt {what}: lane_width {lane} is not one of {LANE_WIDTHS}")
    if dkind >= len(_DELTA_KINDS):
        raise PackingError(f"corrupt {what}: unknown weight delta kind code {dkind} (0 = fixed, 1 = log2)")
    if relu > 1:
        raise PackingError(f"corrupt {what}: requant relu flag is {relu}, expected 0 or 1")
    if beta_w == 0:
        raise PackingError(f"corrupt {what}: beta_w is 0")
    if _KINDS[kind] == "linear":
        if (in_h, in_w, in_c) != (0, 0, k):
            raise PackingError(f"inconsistent {what} header: linear in_shape fields (H, W, C) = {(in_h, in_w, in_c)} "
                               f"must be (0, 0, K={k})")
    elif k != kernel * kernel * in_c:
        raise PackingError(f"inconsistent {what} header: K={k} does not match kernel {kernel}x{kernel} "
                           f"x in_channels {in_c}")
    if _LAYER_HEAD.size + name_len > total - CRC_BYTES:
        raise PackingError(f"inconsistent {what} header: name length {name_len} runs past the end of the blob")
    try:
        fmt = DeltaFormat(bits=dbits, kind=_DELTA_KINDS[dkind])
    except ValueError as e:
        raise PackingError(f"corrupt {what}: {e}") from None
    lay = _layer_layout(n, k, lane, dbits, beta_w, name_len)
    _check_layout(data, lay, what, total)
    try:
        name = data[_LAYER_HEAD.size:_LAYER_HEAD.size + name_len].decode("utf-8")
    except UnicodeDecodeError as e:
        raise PackingError(f"corrupt {what}: name is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    fields = dict(kind=_KINDS[kind], n=n, k=k, in_shape=(k,) if kind == 0 else (in_h, in_w, in_c), kernel=kernel,
                  stride=stride, padding=padding, pool=pool, beta_w=beta_w, beta_a=beta_a,
                  out_beta_a=out_beta_a or None, weight_format=fmt, weight_exponent=wexp, act_bits=act_bits,
                  shift=shift, relu=bool(relu), saturate_bits=sat or None, name=name)
    return fields, lay, data


def unpack_layer(data) -> QLayer:
    """Inverse of :func:`pack_layer`; raises :class:`PackingError` on any malformed or corrupt input."""
    f, lay, data = _parse_layer(data)
    what = "layer"
    n = f["n"]
    signs = _read_signs(data, lay, f"corrupt {what}")
    codes = _read_codes(data, lay, f["weight_format"].max_code, what)
    mult = _read(data, lay, "multiplier", "<i4", (n,)).astype(np.int64)
    bias = _read(data, lay, "bias", "<i8", (n,)).astype(np.int64)
    try:
        rq = Requant(multiplier=mult, bias=bias, shift=f["shift"], relu=f["relu"], saturate_bits=f["saturate_bits"])
        return QLayer(kind=f["kind"], weight_signs=signs, weight_delta=codes, beta_w=f["beta_w"], beta_a=f["beta_a"],
                      in_shape=f["in_shape"], requant=rq, weight_format=f["weight_format"],
                      weight_exponent=f["weight_exponent"], act_bits=f["act_bits"], kernel=f["kernel"],
                      stride=f["stride"], padding=f["padding"], pool=f["pool"], out_beta_a=f["out_beta_a"],
                      name=f["name"])
    except ValueError as e:
        raise PackingError(f"invalid {what} in packed data: {e}") from None


# ---------------------------------------------------------------------------------------------
# Activations


def _check_act_bits(bits) -> int:
    return _int_field("act bits", bits, 1, 16)


def _act_rows(act: QAct) -> tuple[int, int]:
    if act.signs.ndim == 1:
        return 1, act.shape[0]
    h, w, c = act.shape
    return h * w, c


def pack_act(act: QAct, *, lane_width: int = 32) -> bytes:
    """Pack a :class:`QAct` into an ``HHWA`` blob: one sign row per pixel (a vector is one row)."""
    if not isinstance(act, QAct):
        raise TypeError(f"pack_act needs a QAct, not {type(act).__name__}")
    lane = _check_lane(lane_width)
    bits = _check_act_bits(act.bits)
    rows, c = _act_rows(act)
    lay = _act_layout(rows, c, lane, bits, act.beta_a)
    ndim = act.signs.ndim
    h, w = (0, 0) if ndim == 1 else act.shape[:2]
    buf = bytearray(lay.total_bytes)
    _ACT_HEAD.pack_into(buf, 0, MAGIC_ACT, FORMAT_VERSION, 0, _u("total_length", lay.total_bytes, 32),
                        ndim, lane, bits, 0, _u("shape H", h, 32), _u("shape W", w, 32), _u("shape C", c, 32),
                        _u("beta_a", act.beta_a, 16), _s("exponent", act.exponent, 16))
    _write(buf, lay, "signs", packed_sign_words(act.signs.reshape(rows, c), lane).astype(_sign_dtype(lane)))
    _write(buf, lay, "deltas", _array_field("delta", act.delta.reshape(rows, lay.segments_per_row), _code_dtype(lay.code_bytes)))
    return _finish(buf)


def _parse_act(data) -> tuple[dict, LayoutInfo, bytes]:
    what = "activations"
    data = _open(data, MAGIC_ACT, what, _ACT_HEAD.size + CRC_BYTES)
    _, _, reserved, total, ndim, lane, bits, reserved2, h, w, c, beta_a, exponent = _ACT_HEAD.unpack_from(data)
    if reserved or reserved2:
        raise PackingError(f"corrupt {what}: reserved header field is nonzero")
    if ndim not in (1, 3):
        raise PackingError(f"corrupt {what}: ndim is {ndim}, expected 1 or 3")
    if ndim == 1 and (h, w) != (0, 0):
        raise PackingError(f"inconsistent {what} header: a vector must have H = W = 0, got H={h} W={w}")
    if lane not in LANE_WIDTHS:
        raise PackingError(f"corrupt {what}: lane_width {lane} is not one of {LANE_WIDTHS}")
    if not 1 <= bits <= 16:
        raise PackingError(f"corrupt {what}: delta bits {bits} not in 1..16")
    if beta_a == 0:
        raise PackingError(f"corrupt {what}: beta_a is 0")
    rows = 1 if ndim == 1 else h * w
    lay = _act_layout(rows, c, lane, bits, beta_a)
    _check_layout(data, lay, what, total)
    shape = (c,) if ndim == 1 else (h, w, c)
    return dict(shape=shape, beta_a=beta_a, bits=bits, exponent=exponent), lay, data


def unpack_act(data) -> QAct:
    """Inverse of :func:`pack_act`; raises :class:`PackingError` on any malformed or corrupt input."""
    f, lay, data = _parse_act(data)
    what = "activations"
    shape = f["shape"]
    signs = _read_signs(data, lay, f"corrupt {what}").reshape(shape)
    codes = _read_codes(data, lay, (1 << f["bits"]) - 1, what).reshape(shape[:-1] + (lay.segments_per_row,))
    try:
        return QAct(signs=signs, delta=codes, beta_a=f["beta_a"], bits=f["bits"], exponent=f["exponent"])
    except ValueError as e:
        raise PackingError(f"invalid {what} in packed data: {e}") from None


# ---------------------------------------------------------------------------------------------
# Networks


def pack_network(layers: Iterable[QLayer], *, lane_width: int = 32) -> bytes:
    """Pack layers into an ``HHWN`` container: a table of (offset, length) and 8-byte aligned layer blobs."""
    blobs = [pack_layer(layer, lane_width=lane_width) for layer in layers]
    count = _u("layer count", len(blobs), 32)
    off = _align(_NET_HEAD.size + _NET_ENTRY.size * count)
    entries = []
    for b in blobs:
        entries.append((off, len(b)))
        off = _align(off + len(b))
    total = off + CRC_BYTES
    buf = bytearray(total)
    _NET_HEAD.pack_into(buf, 0, MAGIC_NETWORK, FORMAT_VERSION, 0, _u("total_length", total, 32), count)
    for i, ((o, size), b) in enumerate(zip(entries, blobs)):
        _NET_ENTRY.pack_into(buf, _NET_HEAD.size + i * _NET_ENTRY.size, o, size)
        buf[o:o + size] = b
    return _finish(buf)


def _parse_network(data) -> tuple[LayoutInfo, bytes]:
    what = "network"
    data = _open(data, MAGIC_NETWORK, what, _NET_HEAD.size + CRC_BYTES)
    _, _, reserved, total, count = _NET_HEAD.unpack_from(data)
    if reserved:
        raise PackingError(f"corrupt {what}: reserved header field is {reserved}, expected 0")
    table_end = _NET_HEAD.size + _NET_ENTRY.size * count
    if _align(table_end) + CRC_BYTES > total:
        raise PackingError(f"inconsistent {what} header: a table of {count} layers does not fit in {total} bytes")
    sections = [Section("header", 0, table_end)]
    off = _align(table_end)
    for i in range(count):
        o, size = _NET_ENTRY.unpack_from(data, _NET_HEAD.size + i * _NET_ENTRY.size)
        if o != off or o + size > total - CRC_BYTES:
            raise PackingError(f"inconsistent {what} table: layer {i} at offset {o} (+{size} bytes), expected "
                               f"offset {off} within {total - CRC_BYTES} bytes")
        sections.append(Section(f"layer{i}", o, size))
        off = _align(o + size)
    sections.append(Section("crc", off, CRC_BYTES))
    lay = LayoutInfo(magic=MAGIC_NETWORK, lane_width=0, rows=count, row_elements=0, words_per_row=0,
                     segments_per_row=0, code_bytes=0, sections=tuple(sections), total_bytes=off + CRC_BYTES)
    _check_layout(data, lay, what, total)
    return lay, data


def unpack_network(data) -> list[QLayer]:
    """Inverse of :func:`pack_network`; raises :class:`PackingError` on any malformed or corrupt input."""
    lay, data = _parse_network(data)
    layers = []
    for i, s in enumerate(lay.sections[1:-1]):
        try:
            layers.append(unpack_layer(data[s.offset:s.end]))
        except PackingError as e:
            raise PackingError(f"network layer {i}: {e}") from None
    return layers


# ---------------------------------------------------------------------------------------------
# Dispatch and inspection


def unpack(data) -> QLayer | QAct | list[QLayer]:
    """Unpack any hadahw blob, dispatching on its magic."""
    head = bytes(data[:4])
    if head == MAGIC_LAYER:
        return unpack_layer(data)
    if head == MAGIC_ACT:
        return unpack_act(data)
    if head == MAGIC_NETWORK:
        return unpack_network(data)
    if len(head) < 4 and any(m.startswith(head) for m in (MAGIC_LAYER, MAGIC_ACT, MAGIC_NETWORK)):
        raise PackingError(f"truncated blob: expected at least {_PREAMBLE.size} bytes, got {len(head)}")
    raise PackingError(f"wrong magic {head!r} ({_describe_magic(head)}), expected one of "
                       f"{MAGIC_LAYER!r}, {MAGIC_ACT!r}, {MAGIC_NETWORK!r}")


def blob_layout(data) -> LayoutInfo:
    """Validate a packed blob's envelope and header and return its layout (sections and offsets).

    Lets a driver find the ``signs`` and ``deltas`` sections (and the lane width) for DMA without
    decoding them.  For a network, ``rows`` is the layer count and the sections are the layer
    blobs ``layer0``, ``layer1``, ...  Section contents are not range-checked; the ``unpack_*``
    functions do that.
    """
    head = bytes(data[:4])
    if head == MAGIC_ACT:
        return _parse_act(data)[1]
    if head == MAGIC_NETWORK:
        return _parse_network(data)[0]
    return _parse_layer(data)[1]
