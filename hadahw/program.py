"""The memory map and program format shared by the host and the accelerator core, and the compiler.

The core (:class:`hadahw.rtl.core.HadaCore`) runs a whole network from on-chip memories that the
host fills over the host bus (:mod:`hadahw.rtl.hostbus`, spaces of :class:`hadahw.protocol.Space`).
Everything both sides must agree on is defined here, once; the gateware builds its layouts from
the field lists and sizes of this module, and this module imports nothing from the gateware
(except :func:`predict_cycles`, which asks the gateware blocks for their latencies).

Every layer is a convolution over an ``(H, W, C)`` map.  A linear layer with ``K`` inputs is a
conv whose kernel covers its whole input map (``kh = H, kw = W``, no padding, a ``1 x 1 x N``
output); a vector input is a ``1 x 1 x K`` map.  The reduction order ``(ky, kx, c)``, channel
fastest, is the contract's im2col order and the HWC flatten order, so this is exact.

Memories and address spaces
---------------------------
Entries wider than a byte are stored little-endian, padded to whole bytes, at a power-of-two
byte stride in their space (the bytes between an entry's end and the next stride are holes:
writes are ignored, reads give 0).  All sizes come from :class:`~hadahw.params.AcceleratorConfig`
(``L`` lanes, ``R`` rows, ``S_w = L / min(beta_w, L)``, ``S_a = L / min(beta_a, L)``).

``Space.WEIGHTS``
    ``[0, weight_depth * weight_stride)``: the **weight store**.  Entry ``e`` at byte
    ``e * weight_stride``.  One entry per (layer, pass ``g`` of ``R`` output rows, word ``t``
    over ``(ky, kx, j)``): bits ``[r*L, (r+1)*L)`` are the sign word of row ``r`` (lane ``i`` =
    reduction index ``k_t + i``), then ``R x S_w`` delta_w codes (row-major, ``weight_bits``
    each): group ``h`` of a row carries the code of the weight segment its valid lanes belong to
    (0 for groups past the word's valid lanes and for rows ``>= N``).  A layer's entry for
    ``(g, t)`` is at ``weight_addr + g*T + t`` with ``T = kh * kw * wpp``.

    ``[param_base, param_base + param_depth * param_stride)`` with
    ``param_base = weight_depth * weight_stride``: the **requantizer parameters**, one entry per
    output channel of every layer: ``M`` (``mult_bits``, signed) then ``B`` (``bias_bits``,
    signed).  Channel ``c`` of a layer is entry ``param_addr + c``.  This region is write-only
    (reads give 0): the gateware stages the bytes of an entry and commits the entry when its last
    byte is written, so write whole entries, in address order (a WRITE_MEM may end mid-entry;
    the next one continues it).
``Space.ACTS``
    ``[0, act_depth * act_stride)``: the **activation memory**, shared by every layer's input
    and output (the compiler places them so that they never overlap).  One entry per
    ``(pixel, word j)``, ``j < wpp = ceil(C / L)``, at entry ``base + (y*W + x)*wpp + j``: ``L``
    sign bits (lane ``i`` = channel ``j*L + i``, 1 = +1, lanes past ``C`` are 0) then ``S_a``
    delta_a codes of ``act_bits`` (group ``q`` = lanes ``[q*min(beta_a, L), ...)``; when
    ``beta_a > L`` the segment's code repeats in each of its words; 0 for groups past ``C``).

    The final layer writes its requantized values instead: value ``v`` (HWC order) is
    ``output_value_bytes`` bytes, little-endian two's complement (4 when the requantizer's
    ``y_bits <= 32``, else 8), spread over ``entries_per_output`` consecutive entries
    (``act_entry_bytes`` bytes each, the last one zero-padded) starting at
    ``out_addr + v * entries_per_output``.  A final layer that saturates to ``out_bits`` with
    ``out_bits + 1 <= 8 * act_entry_bytes`` (:data:`FLAG_NARROW`, set by the compiler when it
    saves entries) writes each value into one entry instead: ``act_entry_bytes`` bytes of
    two's complement at ``out_addr + v``, which halves (or better) what the host reads back.
    A narrow final layer whose values fit ``s`` bytes of two's complement (``out_bits <= 7``:
    ``s = 1``; ``out_bits <= 15``: ``s = 2``) and whose entry holds at least two of them is
    **packed** (:data:`FLAG_PACKED`, ``s`` read from ``out_bits``): ``P = act_entry_bytes // s``
    values per entry, bytes ``[i*s, (i+1)*s)`` of a pixel's entry ``q`` holding its value
    ``q*P + i``; each pixel starts a new entry, so pixel ``p`` (HWC order) takes the
    ``ceil(N / P)`` entries from ``out_addr + p * ceil(N / P)`` (unused bytes are 0).
    :attr:`Program.output_spacing`, :attr:`Program.output_value_bytes` and
    :attr:`Program.output_packed` say which; :func:`unpack_output` undoes all three.
``Space.DESC``
    ``[0, desc_bytes)``: the **program**, a sequence of :data:`DESCRIPTOR_BYTES`-byte layer
    descriptors (:data:`DESCRIPTOR_FIELDS`, little-endian).  RUN(addr) runs the descriptors at
    ``addr, addr + DESCRIPTOR_BYTES, ...`` up to and including the first one flagged
    :data:`FLAG_FINAL`.

What fits
---------
:func:`compile_network` refuses (ValueError, one line naming the layer) anything the core cannot
run exactly: betas, delta formats, ``act_bits`` and ``K <= max_reduction`` (``config.fits``);
input channels ``C`` a multiple of ``min(beta_w, L)`` or a divisor of ``beta_w`` (so no word
straddles a weight segment; with ``C % beta_a == 0`` for maps, no word straddles an activation
segment either); a non-final layer's ``out_beta_a == beta_a`` and ``saturate_bits == act_bits``;
only the last layer final; requantizer ``M``/``B`` within ``mult_bits``/``bias_bits`` and
``shift <= max_shift``; pooling within ``max_pool``, ``max_pool_width`` and ``max_channels``; and
every memory (weights, activations with both of a layer's buffers, parameters, descriptors).

Timing
------
See :func:`predict_cycles`: exact for the gateware, which never stalls inside a layer because the
sequencer paces every pass to at least the time the output stage needs for it.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Sequence

import numpy as np

from .golden import QAct, QLayer
from .params import AcceleratorConfig
from .protocol import Space

__all__ = [
    "DESCRIPTOR_FIELDS",
    "DESCRIPTOR_BYTES",
    "WRAPPING_FIELDS",
    "IGNORED_FIELDS",
    "descriptor_field_bits",
    "check_descriptor_fits",
    "FLAG_FINAL",
    "FLAG_RELU",
    "FLAG_SATURATE",
    "FLAG_NARROW",
    "FLAG_PACKED",
    "Descriptor",
    "MemoryMap",
    "LayerPlan",
    "Program",
    "compile_network",
    "pack_input",
    "pack_act",
    "unpack_act",
    "unpack_output",
    "predict_cycles",
    "layer_cycles",
    "ebr_blocks",
    "pow2_ceil",
    "ebr_usage",
]

# ---------------------------------------------------------------------------------------------
# Descriptor format

#: Descriptor flags (field ``flags``).
FLAG_FINAL = 0x01  # last layer of the program; writes wide values for the host
FLAG_RELU = 0x02
FLAG_SATURATE = 0x04
FLAG_NARROW = 0x08  # final layer only: one activation entry per (saturated) value
FLAG_PACKED = 0x10  # final layer only, with FLAG_NARROW: one byte per value, act_entry_bytes per entry

#: The layer descriptor: ``(name, bytes, meaning)`` in memory order, little-endian, unsigned.
#: Both :meth:`Descriptor.encode` (``struct``) and the gateware's ``StructLayout``
#: (:func:`hadahw.rtl.layouts.descriptor_layout`) are built from this list.  The fields after
#: ``param_addr`` are derived from the ones before by :func:`compile_network`; the gateware uses
#: them instead of multiplying or dividing.
DESCRIPTOR_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("flags", 1, "FLAG_FINAL | FLAG_RELU | FLAG_SATURATE | FLAG_NARROW | FLAG_PACKED"),
    ("out_bits", 1, "requantizer saturation bits (next layer's act_bits)"),
    ("shift", 1, "requantizer rounding shift S"),
    ("log2_out_beta_a", 1, "log2 of the next layer's beta_a (binarizer segment); 0 when final"),
    ("in_h", 2, "input map height H"),
    ("in_w", 2, "input map width W"),
    ("in_c", 2, "input channels C"),
    ("kh", 2, "kernel height (H for a linear layer)"),
    ("kw", 2, "kernel width (W for a linear layer)"),
    ("stride", 1, "conv stride"),
    ("pad", 1, "conv zero padding"),
    ("pool", 1, "max-pool window and stride (1: none)"),
    ("reserved0", 1, "0"),
    ("out_h", 2, "conv output height, before pooling"),
    ("out_w", 2, "conv output width, before pooling"),
    ("n", 2, "output channels N"),
    ("in_addr", 2, "activation-memory entry of the input map's first word"),
    ("out_addr", 2, "activation-memory entry of the output's first word"),
    ("weight_addr", 2, "weight-store entry of the layer's first word"),
    ("param_addr", 2, "requantizer parameter entry of channel 0"),
    ("wpp", 2, "words per input pixel, ceil(C / L)"),
    ("last_count", 2, "valid lanes of a pixel's last word, C - (wpp - 1) * L"),
    ("words", 2, "T = kh * kw * wpp, words per pass"),
    ("passes", 2, "G = ceil(N / R), passes per output pixel"),
    ("last_rows", 2, "rows of the last pass, N - (G - 1) * R"),
    ("pace", 2, "idle cycles after the T words of each pass"),
    ("row_entries", 2, "entries per input row, W * wpp"),
    ("col_step", 2, "stride * wpp"),
    ("row_step", 2, "stride * W * wpp (mod 2**16)"),
    ("first_addr", 2, "entry of the window origin of output pixel (0, 0), (in_addr - pad*(W+1)*wpp) mod 2**16"),
    ("out_pixels", 2, "output pixels after pooling, (out_h / pool) * (out_w / pool)"),
    ("reserved1", 2, "0"),
)

_STRUCT_CODES = {1: "B", 2: "H", 4: "I"}
_DESC_STRUCT = struct.Struct("<" + "".join(_STRUCT_CODES[n] for _, n, _ in DESCRIPTOR_FIELDS))
#: Size of one descriptor in bytes.
DESCRIPTOR_BYTES = _DESC_STRUCT.size
assert DESCRIPTOR_BYTES % 4 == 0


def _encode(self) -> bytes:
    """The descriptor's :data:`DESCRIPTOR_BYTES` bytes; ValueError names a field out of range."""
    values = []
    for name, size, _ in DESCRIPTOR_FIELDS:
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < 1 << (8 * size):
            raise ValueError(f"descriptor field {name} must be an integer in 0..{(1 << 8 * size) - 1}, not {v!r}")
        values.append(int(v))
    return _DESC_STRUCT.pack(*values)


@classmethod
def _decode(cls, data: bytes):
    """Inverse of :meth:`encode`."""
    data = bytes(data)
    if len(data) != DESCRIPTOR_BYTES:
        raise ValueError(f"a descriptor is {DESCRIPTOR_BYTES} bytes, not {len(data)}")
    return cls(**dict(zip((n for n, _, _ in DESCRIPTOR_FIELDS), _DESC_STRUCT.unpack(data))))


def _ubits(n: int) -> int:
    """Bits of an unsigned register holding ``0..n`` (at least 1)."""
    return max(1, int(n).bit_length())


#: Descriptor fields that are addresses computed modulo ``2**16`` (they may "wrap" below zero
#: for a padded window): the core keeps only their low ``log2(act_depth)`` bits, which is exact
#: because ``(x mod 2**16) mod 2**k == x mod 2**k``.
WRAPPING_FIELDS = ("first_addr", "row_entries", "col_step", "row_step")
#: Descriptor fields the core does not read (the host's record of the layer): not kept, not checked.
IGNORED_FIELDS = ("in_c", "in_addr", "words", "reserved0", "reserved1")


def descriptor_field_bits(config: AcceleratorConfig) -> dict[str, int]:
    """Width of each descriptor field in the core's descriptor *register* for ``config``.

    The memory format (:data:`DESCRIPTOR_FIELDS`) is fixed; the sequencer keeps only as many low
    bits of each field as ``config`` can ever need (derived from the memory depths, the array
    size and the limits below), which saves most of a 448-bit register and narrows every loop
    counter.  :func:`compile_network` rejects a layer whose field does not fit its width, and the
    sequencer faults on a descriptor with a non-zero dropped bit (except in
    :data:`WRAPPING_FIELDS`, which are taken modulo ``2**k``).  ``0`` means the field is not kept
    (it is not kept; it must be zero unless it is in :data:`IGNORED_FIELDS`).
    """
    c = config
    act_addr = _ubits(c.act_depth - 1)
    # A map's rows/columns: every pixel of an input or (pooled) output map takes an activation
    # entry, and a conv output before pooling is at most max_pool times wider/taller.
    dim = _ubits(c.act_depth * c.max_pool)
    bits = {
        "flags": _ubits(max(FLAG_FINAL, FLAG_RELU, FLAG_SATURATE, FLAG_NARROW, FLAG_PACKED)), "out_bits": 5,
        "shift": _ubits(c.max_shift), "log2_out_beta_a": 3,
        "in_h": dim, "in_w": dim, "in_c": 0, "kh": dim, "kw": dim,
        "stride": min(8, dim), "pad": min(8, dim), "pool": _ubits(c.max_pool), "reserved0": 0,
        "out_h": dim, "out_w": dim, "n": _ubits(c.param_depth),
        "in_addr": 0, "out_addr": act_addr, "weight_addr": _ubits(c.weight_depth - 1),
        "param_addr": _ubits(c.param_depth - 1), "wpp": _ubits(c.act_depth), "last_count": _ubits(c.lanes),
        "words": 0, "passes": _ubits(c.param_depth), "last_rows": _ubits(c.rows),
        "pace": _ubits(MemoryMap(c).entries_per_output * c.rows),  # pace <= spacing * min(R, N)
        "row_entries": act_addr, "col_step": act_addr, "row_step": act_addr, "first_addr": act_addr,
        "out_pixels": _ubits(c.act_depth), "reserved1": 0,
    }
    assert set(bits) == {n for n, _, _ in DESCRIPTOR_FIELDS}
    return {name: min(bits[name], 8 * size) for name, size, _ in DESCRIPTOR_FIELDS}


def check_descriptor_fits(desc, config: AcceleratorConfig) -> None:
    """ValueError naming the field when ``desc`` has a value the core's register cannot hold."""
    widths = descriptor_field_bits(config)
    for name, _, _ in DESCRIPTOR_FIELDS:
        v = getattr(desc, name)
        if name not in WRAPPING_FIELDS + IGNORED_FIELDS and v >= 1 << widths[name]:
            raise ValueError(f"descriptor field {name}={v} does not fit the core's {widths[name]}-bit register "
                             f"for this configuration (act_depth={config.act_depth}, weight_depth="
                             f"{config.weight_depth}, param_depth={config.param_depth})")


#: One layer descriptor (frozen, keyword-only; every field of :data:`DESCRIPTOR_FIELDS`, default 0).
Descriptor = dataclasses.make_dataclass(
    "Descriptor", [(name, int, dataclasses.field(default=0)) for name, _, _ in DESCRIPTOR_FIELDS],
    frozen=True, kw_only=True, namespace={"encode": _encode, "decode": _decode})
Descriptor.__module__ = __name__
Descriptor.__doc__ = "One layer descriptor; fields as in :data:`DESCRIPTOR_FIELDS`."


# ---------------------------------------------------------------------------------------------
# Memory map


def pow2_ceil(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 << max(0, int(n) - 1).bit_length()


def ebr_blocks(width: int, depth: int) -> int:
    """iCE40 EBR (4 kbit) needed for a width x depth memory in the best of its port modes (256x16 .. 2048x2)."""
    if width <= 0 or depth <= 0:
        return 0
    return min(-(-width // w) * -(-depth // (4096 // w)) for w in (16, 8, 4, 2))


class MemoryMap:
    """Sizes, layouts and addresses of the core's memories for one configuration.

    Attributes
    ----------
    weight_entry_bits, weight_entry_bytes, weight_stride : int
        One weight-store entry: ``R*L + R*S_w*weight_bits`` bits, padded to bytes, byte stride
        (a power of two) in ``Space.WEIGHTS``.
    param_base, param_entry_bits, param_entry_bytes, param_stride : int
        The requantizer parameter region of ``Space.WEIGHTS``.
    act_entry_bits, act_entry_bytes, act_stride : int
        One activation entry: ``L + S_a*act_bits`` bits, padded to bytes, stride in ``Space.ACTS``.
    output_value_bytes : int
        Bytes of a final-layer value: 4 if ``config.y_bits <= 32`` else 8.
    entries_per_output : int
        Activation entries per final-layer value: ``ceil(output_value_bytes / act_entry_bytes)``.
    space_sizes : dict
        Bytes of each :class:`~hadahw.protocol.Space` (what the core's host bus decodes).
    compact_spaces : dict
        ``{Space.ACTS: (act_entry_bytes, act_stride)}`` when activation entries leave holes in
        their stride (else empty): the device answers compact reads of ``ACTS``
        (:data:`hadahw.protocol.COMPACT`), which skip the holes.
    """

    def __init__(self, config: AcceleratorConfig):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {type(config).__name__}")
        c = self.config = config
        self.weight_entry_bits = c.rows * c.lanes + c.rows * c.weight_groups * c.weight_code_bits
        self.weight_entry_bytes = -(-self.weight_entry_bits // 8)
        self.weight_stride = pow2_ceil(self.weight_entry_bytes)
        self.param_entry_bits = c.mult_bits + c.bias_bits
        self.param_entry_bytes = -(-self.param_entry_bits // 8)
        self.param_stride = pow2_ceil(self.param_entry_bytes)
        self.param_base = c.weight_depth * self.weight_stride
        self.act_entry_bits = c.lanes + c.act_groups * c.act_bits
        self.act_entry_bytes = -(-self.act_entry_bits // 8)
        self.act_stride = pow2_ceil(self.act_entry_bytes)
        self.output_value_bytes = 4 if c.y_bits <= 32 else 8
        self.entries_per_output = -(-self.output_value_bytes // self.act_entry_bytes)
        self.space_sizes = {
            Space.WEIGHTS: self.param_base + c.param_depth * self.param_stride,
            Space.ACTS: c.act_depth * self.act_stride,
            Space.DESC: c.desc_bytes,
        }
        self.compact_spaces = ({Space.ACTS: (self.act_entry_bytes, self.act_stride)}
                               if self.act_entry_bytes < self.act_stride else {})

    def final_spacing(self, saturate_bits: int | None) -> int:
        """Activation entries per value of a final layer saturating to ``saturate_bits`` (None: none).

        1 when the saturated values fit one entry as two's complement (:data:`FLAG_NARROW`),
        else :attr:`entries_per_output`.
        """
        if saturate_bits is not None and saturate_bits + 1 <= 8 * self.act_entry_bytes:
            return 1
        return self.entries_per_output

    def final_pack_bytes(self, saturate_bits: int | None) -> int:
        """Bytes per value of a packed final layer saturating to ``saturate_bits``; 0: not packed
        (also when the configuration has no packing gateware, ``pack_outputs=False``)."""
        if not self.config.pack_outputs or saturate_bits is None or saturate_bits > 15:
            return 0
        size = 1 if saturate_bits <= 7 else 2
        return size if self.act_entry_bytes // size >= 2 else 0

    # Bit offsets inside entries (the gateware's layouts must agree; a test checks).
    def weight_sign_offset(self, row: int) -> int:
        return row * self.config.lanes

    def weight_code_offset(self, row: int, group: int) -> int:
        c = self.config
        return c.rows * c.lanes + (row * c.weight_groups + group) * c.weight_code_bits

    def act_code_offset(self, group: int) -> int:
        return self.config.lanes + group * self.config.act_bits

    def ebr(self) -> dict[str, int]:
        """iCE40 EBR blocks of each core memory (see :func:`ebr_usage`)."""
        c = self.config
        pool_depth = (c.max_pool_width // 2) * c.max_channels if c.max_pool >= 2 else 0
        return {
            "weights": 0 if c.weight_memory == "spram" else ebr_blocks(8 * self.weight_entry_bytes, c.weight_depth),
            "acts": ebr_blocks(8 * self.act_entry_bytes, c.act_depth),
            "params": ebr_blocks(self.param_entry_bits, c.param_depth),
            "pool": ebr_blocks(c.acc_bits, pool_depth),
            "desc": ebr_blocks(8, c.desc_bytes),
        }

    def spram(self) -> int:
        """SB_SPRAM256KA blocks of the weight store (``weight_memory="spram"``; else 0)."""
        if self.config.weight_memory != "spram":
            return 0
        return -(-8 * self.weight_entry_bytes // 16)


def ebr_usage(config: AcceleratorConfig) -> dict[str, int]:
    """iCE40 EBR (30 on the UP5K) used by the core's memories, per memory and ``"total"``.

    Counts the best EBR port mode (256x16, 512x8, 1024x4, 2048x2) per memory; the HostLink's
    receive and reply buffers (about 2 EBR) come on top.  An estimate, not a synthesis result.
    """
    usage = MemoryMap(config).ebr()
    usage["total"] = sum(usage.values())
    return usage


# ---------------------------------------------------------------------------------------------
# Activation packing


def _word_tables(config: AcceleratorConfig, c: int, kh: int, kw: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduction index of the first lane (``k_t``) and valid lanes (``c_t``) of each pass word t."""
    lanes = config.lanes
    wpp = -(-c // lanes)
    j = np.arange(wpp)
    pix = np.arange(kh * kw)
    k = (pix[:, None] * c + j[None, :] * lanes).reshape(-1)
    cnt = np.tile(np.minimum(lanes, c - j * lanes), kh * kw)
    return k.astype(np.int64), cnt.astype(np.int64)


def _bits(values: np.ndarray, width: int) -> np.ndarray:
    """Little-endian bits of unsigned ``values`` (..., n) -> (..., n*width) bool."""
    v = np.asarray(values, dtype=np.uint64)
    b = (v[..., None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)
    return b.reshape(*v.shape[:-1], v.shape[-1] * width).astype(bool)


def _entries_to_bytes(bits: np.ndarray, nbytes: int, stride: int) -> bytes:
    """(entries, nbits) bool -> entries of ``nbytes`` little-endian bytes at ``stride``."""
    n, nbits = bits.shape
    padded = np.zeros((n, stride * 8), bool)
    padded[:, :nbits] = bits
    return np.packbits(padded, axis=1, bitorder="little").tobytes()


def _act_shape(act: QAct, shape) -> tuple[int, int, int]:
    if shape is None:
        return act.shape if act.signs.ndim == 3 else (1, 1, act.shape[0])
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or math.prod(shape) != act.signs.size:
        raise ValueError(f"activation of shape {act.shape} cannot be laid out as a map of shape {shape}")
    return shape


def pack_act(act: QAct, config: AcceleratorConfig, *, shape=None) -> bytes:
    """Activation-memory entries of ``act`` (``Space.ACTS`` bytes from its first entry).

    Parameters
    ----------
    act : QAct
        ``(H, W, C)`` map or ``(K,)`` vector; its ``beta_a`` and ``bits`` must match ``config``.
    shape : (H, W, C), optional
        Layout in memory; default the map's own shape, ``(1, 1, K)`` for a vector.  A map laid
        out as another shape is taken in HWC order (its segments must stay aligned).
    """
    if not isinstance(act, QAct):
        raise TypeError(f"act must be a QAct, not {type(act).__name__}")
    if act.beta_a != config.beta_a or act.bits != config.act_bits:
        raise ValueError(f"activation has beta_a={act.beta_a}, {act.bits}-bit deltas but the accelerator is built "
                         f"for beta_a={config.beta_a}, {config.act_bits}-bit deltas")
    h, w, c = _act_shape(act, shape)
    if act.signs.ndim == 3 and act.shape != (h, w, c):
        act = act.flatten()
    signs = act.signs.reshape(h * w, c)
    delta = act.delta_per_element().reshape(h * w, c)
    mm = MemoryMap(config)
    lanes = config.lanes
    wpp = -(-c // lanes)
    s = np.zeros((h * w, wpp * lanes), bool)
    d = np.zeros((h * w, wpp * lanes), np.int64)
    s[:, :c] = signs
    d[:, :c] = delta
    s = s.reshape(-1, lanes)
    codes = d.reshape(-1, lanes)[:, ::config.group_a]
    bits = np.concatenate([s, _bits(codes, config.act_bits)], axis=1)
    assert bits.shape[1] == mm.act_entry_bits
    return _entries_to_bytes(bits, mm.act_entry_bytes, mm.act_stride)


def pack_input(act: QAct, config: AcceleratorConfig, *, shape=None) -> bytes:
    """Bytes of the input buffer for ``act`` (see :func:`pack_act`; :meth:`Program.pack_input`
    passes the program's input shape)."""
    return pack_act(act, config, shape=shape)


def unpack_act(data: bytes, shape, config: AcceleratorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Signs (bool) and per-element delta_a codes, each ``(H, W, C)``, of activation entries.

    Reads what :func:`pack_act` and the core's writer produce; lanes and codes past ``C`` are
    required to be zero (ValueError otherwise).
    """
    h, w, c = (int(v) for v in shape)
    mm = MemoryMap(config)
    lanes = config.lanes
    wpp = -(-c // lanes)
    n = h * w * wpp
    raw = np.frombuffer(bytes(data), np.uint8)
    if raw.size != n * mm.act_stride:
        raise ValueError(f"{n} activation entries are {n * mm.act_stride} bytes, not {raw.size}")
    bits = np.unpackbits(raw.reshape(n, mm.act_stride), axis=1, bitorder="little")
    if bits[:, mm.act_entry_bits:].any():
        raise ValueError("activation entries have bits set past their last code")
    s = bits[:, :lanes].astype(bool).reshape(h * w, wpp * lanes)
    codes = bits[:, lanes:mm.act_entry_bits].reshape(n, config.act_groups, config.act_bits)
    codes = (codes.astype(np.int64) << np.arange(config.act_bits)).sum(axis=2)
    d = np.repeat(codes, config.group_a, axis=1).reshape(h * w, wpp * lanes)
    if s[:, c:].any() or d[:, -(-c // config.group_a) * config.group_a:].any():
        raise ValueError("activation entries have signs or codes set past the map's channels")
    return s[:, :c].reshape(h, w, c), d[:, :c].reshape(h, w, c)


# ---------------------------------------------------------------------------------------------
# Compiler


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """How one layer runs: its map geometry as the core sees it, and where its data lie."""

    index: int
    kind: str
    in_shape: tuple[int, int, int]      # (H, W, C) as laid out in the activation memory
    kh: int
    kw: int
    stride: int
    pad: int
    pool: int
    conv_out: tuple[int, int]           # (OH, OW) before pooling
    out_shape: tuple[int, int, int]     # (OH/pool, OW/pool, N)
    n: int
    wpp: int
    words: int                          # T
    passes: int                         # G
    pace: int
    final: bool
    spacing: int                        # activation entries per output value (1 unless final and wide)
    in_addr: int
    out_addr: int
    in_entries: int
    out_entries: int
    weight_addr: int
    weight_entries: int
    param_addr: int
    descriptor: "Descriptor"

    @property
    def pixels(self) -> int:
        return self.conv_out[0] * self.conv_out[1]

    @property
    def pass_cycles(self) -> int:
        return self.words + self.pace


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
    """A compiled network: the memory images and where the input and output live.

    Attributes
    ----------
    config : AcceleratorConfig
    memory_map : MemoryMap
    layers : tuple of QLayer
    plans : tuple of LayerPlan
    weight_image : bytes
        ``Space.WEIGHTS`` bytes from address 0 (the layers' weight entries).
    param_image : bytes
        ``Space.WEIGHTS`` bytes from ``memory_map.param_base``.
    desc_image : bytes
        ``Space.DESC`` bytes from :attr:`desc_addr` (RUN's address).
    desc_addr : int
    input_addr, input_length : int
        ``Space.ACTS`` byte range of the input buffer.
    input_shape : (H, W, C)
    output_addr, output_length : int
        ``Space.ACTS`` byte range that :func:`unpack_output` decodes.
    output_shape : tuple
        Shape of the final layer's output (``(N,)`` or ``(H, W, N)``).
    """

    config: AcceleratorConfig
    memory_map: MemoryMap
    layers: tuple
    plans: tuple
    weight_image: bytes
    param_image: bytes
    desc_image: bytes
    desc_addr: int
    input_addr: int
    input_length: int
    input_shape: tuple
    output_addr: int
    output_length: int
    output_shape: tuple

    @property
    def descriptors(self) -> tuple:
        return tuple(p.descriptor for p in self.plans)

    @property
    def output_spacing(self) -> int:
        """Activation entries per output value (1 for a narrow final layer, see the module doc)."""
        return self.plans[-1].spacing

    @property
    def output_packed(self) -> bool:
        """The final layer's values are packed several to an entry (:data:`FLAG_PACKED`)."""
        return bool(self.plans[-1].descriptor.flags & FLAG_PACKED)

    @property
    def output_value_bytes(self) -> int:
        """Bytes of two's complement per output value as stored (the rest of its entries is 0)."""
        mm = self.memory_map
        if self.output_packed:
            return mm.final_pack_bytes(self.plans[-1].descriptor.out_bits)
        return min(mm.output_value_bytes, self.output_spacing * mm.act_entry_bytes)

    def writes(self) -> list[tuple[Space, int, bytes]]:
        """``(space, address, data)`` to write before RUN(:attr:`desc_addr`), the input excepted."""
        return [(Space.WEIGHTS, 0, self.weight_image),
                (Space.WEIGHTS, self.memory_map.param_base, self.param_image),
                (Space.DESC, self.desc_addr, self.desc_image)]

    def pack_input(self, act: QAct) -> bytes:
        """Input buffer bytes (write them to ``Space.ACTS`` at :attr:`input_addr`)."""
        return pack_act(act, self.config, shape=self.input_shape)

    def unpack_output(self, data: bytes) -> np.ndarray:
        return unpack_output(data, self)

    def predict_cycles(self) -> int:
        return predict_cycles(self)


def _layer_name(i: int, layer: QLayer) -> str:
    return f"layer {i}" + (f" ({layer.name!r})" if layer.name else f" ({layer.kind})")


def _check_alignment(name: str, config: AcceleratorConfig, c: int, k: np.ndarray, cnt: np.ndarray) -> None:
    """Every weight group's valid lanes lie in one weight segment (and every word in one, beta_w > L)."""
    bw, gw = config.beta_w, config.group_w
    for h in range(config.weight_groups):
        lo = h * gw
        valid = cnt > lo
        first = k[valid] + lo
        last = k[valid] + np.minimum(cnt[valid], lo + gw) - 1
        if np.any(first // bw != last // bw):
            raise ValueError(f"{name}: with C={c} input channels on {config.lanes} lanes, words straddle "
                             f"beta_w={config.beta_w} weight segments; C must be a multiple of "
                             f"min(beta_w, L)={gw} or divide beta_w")


def _weight_entries(config: AcceleratorConfig, layer: QLayer, c: int, kh: int, kw: int) -> np.ndarray:
    """(G*T, weight_entry_bits) bool: the layer's weight entries in address order."""
    rows, lanes = config.rows, config.lanes
    k, cnt = _word_tables(config, c, kh, kw)
    n = layer.out_features
    g = -(-n // rows)
    t = k.size
    lane = np.arange(lanes)
    idx = k[:, None] + lane[None, :]                         # (T, L)
    valid = lane[None, :] < cnt[:, None]
    signs = np.zeros((g * rows, t, lanes), bool)
    signs[:n] = np.where(valid, layer.weight_signs[:, np.minimum(idx, layer.reduction - 1)], False)
    grp = np.arange(config.weight_groups) * config.group_w    # first lane of each group
    gvalid = grp[None, :] < cnt[:, None]                      # (T, S_w)
    seg = np.minimum((k[:, None] + grp[None, :]) // config.beta_w, layer.weight_delta.shape[1] - 1)
    codes = np.zeros((g * rows, t, config.weight_groups), np.int64)
    codes[:n] = np.where(gvalid, layer.weight_delta[:, seg], 0)
    signs = signs.reshape(g, rows, t, lanes).transpose(0, 2, 1, 3).reshape(g * t, rows * lanes)
    codes = codes.reshape(g, rows, t, -1).transpose(0, 2, 1, 3).reshape(g * t, -1)
    return np.concatenate([signs, _bits(codes, config.weight_code_bits)], axis=1)


def _param_entries(config: AcceleratorConfig, name: str, layer: QLayer) -> np.ndarray:
    rq = layer.requant
    mb, bb = config.mult_bits, config.bias_bits
    for what, vals, bits in (("multiplier", rq.multiplier, mb), ("bias", rq.bias, bb)):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if vals.size and (vals.min() < lo or vals.max() > hi):
            raise ValueError(f"{name}: requant {what} range [{vals.min()}, {vals.max()}] does not fit the "
                             f"accelerator's {bits}-bit signed {what}s")
    # Two's complement, truncated to the field (exact: the values fit, checked above).
    bits_m = _bits(rq.multiplier.astype(np.int64).view(np.uint64)[:, None], mb)
    bits_b = _bits(rq.bias.astype(np.int64).view(np.uint64)[:, None], bb)
    return np.concatenate([bits_m, bits_b], axis=1)


def compile_network(layers: Sequence[QLayer], config: AcceleratorConfig) -> Program:
    """Compile ``layers`` (the last one final) into memory images and descriptors.

    Everything is checked before anything is produced: a layer that does not fit the
    configuration raises ValueError with a one-line message naming the layer and what does not
    fit (formats and betas via ``config.fits``, map/channel alignment, requantizer widths and
    shift, pooling limits, and each memory's size).  Nothing is ever truncated.
    """
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {type(config).__name__}")
    layers = tuple(layers)
    if not layers:
        raise ValueError("a network needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, QLayer):
            raise TypeError(f"layer {i} must be a QLayer, not {type(layer).__name__}")
    mm = MemoryMap(config)
    lanes, rows = config.lanes, config.rows

    plans, w_bits, p_bits = [], [], []
    in_map = None
    w_addr = p_addr = 0
    in_addr = 0
    for i, layer in enumerate(layers):
        name = _layer_name(i, layer)
        try:
            config.fits(layer)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        final = layer.out_beta_a is None
        if final != (i == len(layers) - 1):
            raise ValueError(f"{name}: only the last layer may be final (out_beta_a=None), and it must be")
        rq = layer.requant
        if not final:
            if layer.out_beta_a != config.beta_a:
                raise ValueError(f"{name} has out_beta_a={layer.out_beta_a} but the accelerator is built for "
                                 f"beta_a={config.beta_a}")
            if rq.saturate_bits != config.act_bits:
                raise ValueError(f"{name} saturates to {rq.saturate_bits} bits but the next layer needs "
                                 f"act_bits={config.act_bits}")
        if rq.shift > config.max_shift:
            raise ValueError(f"{name} has requant shift {rq.shift}, more than max_shift={config.max_shift}")

        # Geometry as the core sees it.
        if layer.kind == "conv2d":
            h, w, c = layer.in_shape
            if in_map is not None and in_map != (h, w, c):
                raise ValueError(f"{name} expects an input of shape {(h, w, c)} but the previous layer "
                                 f"produces {in_map}")
            kh = kw = layer.kernel
            stride, pad, pool = layer.stride, layer.padding, layer.pool
            conv_out = layer.conv_out_hw
        else:
            (k_in,) = layer.in_shape
            h, w, c = in_map if in_map is not None else (1, 1, k_in)
            if h * w * c != k_in:
                raise ValueError(f"{name} has K={k_in} inputs but the previous layer produces {h * w * c} values")
            kh, kw, stride, pad, pool = h, w, 1, 0, 1
            conv_out = (1, 1)
        n = layer.out_features
        if pool > config.max_pool:
            raise ValueError(f"{name} pools {pool}x{pool}, more than max_pool={config.max_pool}")
        if pool > 1:
            if conv_out[1] > config.max_pool_width:
                raise ValueError(f"{name} pools a conv output {conv_out[1]} wide, more than max_pool_width="
                                 f"{config.max_pool_width}")
            if n > config.max_channels:
                raise ValueError(f"{name} pools {n} channels, more than max_channels={config.max_channels}")
        k_tab, cnt_tab = _word_tables(config, c, kh, kw)
        _check_alignment(name, config, c, k_tab, cnt_tab)
        if c % config.beta_a and h * w > 1:
            raise ValueError(f"{name}: a map of {c} channels is not a whole number of beta_a={config.beta_a} segments")
        out_shape = (conv_out[0] // pool, conv_out[1] // pool, n)

        # Sizes and placement.
        wpp = -(-c // lanes)
        t = kh * kw * wpp
        g = -(-n // rows)
        in_entries = h * w * wpp
        out_values = out_shape[0] * out_shape[1] * n
        spacing = mm.final_spacing(rq.saturate_bits) if final else 1
        narrow = final and spacing < mm.entries_per_output
        pack_bytes = mm.final_pack_bytes(rq.saturate_bits) if final else 0
        packed = pack_bytes > 0
        if packed:
            out_entries = out_shape[0] * out_shape[1] * -(-n // (mm.act_entry_bytes // pack_bytes))
        else:
            out_entries = (out_values * spacing if final
                           else out_shape[0] * out_shape[1] * -(-n // lanes))
        if in_entries + out_entries > config.act_depth:
            raise ValueError(f"{name} needs {in_entries} input + {out_entries} output activation entries, more "
                             f"than act_depth={config.act_depth}")
        out_addr = config.act_depth - out_entries if in_addr == 0 else 0
        if w_addr + g * t > config.weight_depth:
            raise ValueError(f"{name} needs weight entries {w_addr}..{w_addr + g * t - 1}, beyond weight_depth="
                             f"{config.weight_depth}")
        if p_addr + n > config.param_depth:
            raise ValueError(f"{name} needs requantizer channels {p_addr}..{p_addr + n - 1}, beyond param_depth="
                             f"{config.param_depth}")
        pace = max(0, spacing * min(rows, n) - t)
        row_entries = w * wpp
        flags = (FLAG_FINAL if final else 0) | (FLAG_RELU if rq.relu else 0) | \
            (FLAG_SATURATE if rq.saturate_bits is not None else 0) | (FLAG_NARROW if narrow else 0) | \
            (FLAG_PACKED if packed else 0)
        try:
            desc = Descriptor(
                flags=flags, out_bits=rq.saturate_bits or 0, shift=rq.shift,
                log2_out_beta_a=0 if final else layer.out_beta_a.bit_length() - 1,
                in_h=h, in_w=w, in_c=c, kh=kh, kw=kw, stride=stride, pad=pad, pool=pool,
                out_h=conv_out[0], out_w=conv_out[1], n=n,
                in_addr=in_addr, out_addr=out_addr, weight_addr=w_addr, param_addr=p_addr,
                wpp=wpp, last_count=c - (wpp - 1) * lanes, words=t, passes=g, last_rows=n - (g - 1) * rows,
                pace=pace, row_entries=row_entries & 0xFFFF, col_step=(stride * wpp) & 0xFFFF,
                row_step=(stride * row_entries) & 0xFFFF,
                first_addr=(in_addr - pad * (row_entries + wpp)) & 0xFFFF,
                out_pixels=out_shape[0] * out_shape[1])
            desc.encode()
            check_descriptor_fits(desc, config)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        plans.append(LayerPlan(
            index=i, kind=layer.kind, in_shape=(h, w, c), kh=kh, kw=kw, stride=stride, pad=pad, pool=pool,
            conv_out=conv_out, out_shape=out_shape, n=n, wpp=wpp, words=t, passes=g, pace=pace, final=final,
            spacing=spacing, in_addr=in_addr, out_addr=out_addr, in_entries=in_entries, out_entries=out_entries,
            weight_addr=w_addr, weight_entries=g * t, param_addr=p_addr, descriptor=desc))
        w_bits.append(_weight_entries(config, layer, c, kh, kw))
        p_bits.append(_param_entries(config, name, layer))
        w_addr += g * t
        p_addr += n
        in_addr = out_addr
        in_map = out_shape

    if len(plans) * DESCRIPTOR_BYTES > config.desc_bytes:
        raise ValueError(f"{len(plans)} descriptors need {len(plans) * DESCRIPTOR_BYTES} bytes, more than "
                         f"desc_bytes={config.desc_bytes}")
    weight_image = _entries_to_bytes(np.concatenate(w_bits), mm.weight_entry_bytes, mm.weight_stride)
    param_image = _entries_to_bytes(np.concatenate(p_bits), mm.param_entry_bytes, mm.param_stride)
    desc_image = b"".join(p.descriptor.encode() for p in plans)
    first, last = plans[0], plans[-1]
    out_shape = last.out_shape if layers[-1].kind == "conv2d" else (last.n,)
    return Program(
        config=config, memory_map=mm, layers=layers, plans=tuple(plans), weight_image=weight_image,
        param_image=param_image, desc_image=desc_image, desc_addr=0,
        input_addr=first.in_addr * mm.act_stride, input_length=first.in_entries * mm.act_stride,
        input_shape=first.in_shape,
        output_addr=last.out_addr * mm.act_stride, output_length=last.out_entries * mm.act_stride,
        output_shape=out_shape)


def unpack_output(data: bytes, program: Program) -> np.ndarray:
    """The final layer's values (int64, :attr:`Program.output_shape`) from the output bytes.

    ``data`` is the ``output_length`` bytes read from ``Space.ACTS`` at ``output_addr``.
    """
    mm = program.memory_map
    data = bytes(data)
    if len(data) != program.output_length:
        raise ValueError(f"the output is {program.output_length} bytes, not {len(data)}")
    k, ob = program.output_spacing, program.output_value_bytes
    if program.output_packed:
        n, size = program.output_shape[-1], ob
        per = mm.act_entry_bytes // size
        raw = np.frombuffer(data, np.uint8).reshape(-1, mm.act_stride)[:, :per * size]
        raw = raw.reshape(-1, -(-n // per) * per * size)[:, :n * size]
        values = raw.copy().view("<i1" if size == 1 else "<i2").astype(np.int64)
        return values.reshape(program.output_shape)
    raw = np.frombuffer(data, np.uint8).reshape(-1, mm.act_stride)[:, :mm.act_entry_bytes]
    raw = raw.reshape(-1, k * mm.act_entry_bytes)[:, :ob].astype(np.uint64)
    word = np.zeros(raw.shape[0], np.uint64)
    for i in range(ob):                                   # little-endian bytes -> 8*ob-bit word
        word |= raw[:, i] << np.uint64(8 * i)
    if ob == 8:
        values = word.view(np.int64)
    else:                                                 # sign-extend from 8*ob bits
        half = 1 << (8 * ob - 1)
        values = (word.astype(np.int64) ^ half) - half
    return values.reshape(program.output_shape)


# ---------------------------------------------------------------------------------------------
# Timing


def _timing_constants(config: AcceleratorConfig) -> dict:
    """Latencies of the core's blocks (from the gateware's own timing models)."""
    from .rtl.engine import EngineTiming  # lazy: the rest of this module needs no Amaranth
    from .rtl.pool import MaxPool
    from .rtl.requant import Requantizer
    from .rtl.streams import SkidBuffer
    return {
        "engine": EngineTiming(config).latency,
        "slices": 2 * SkidBuffer.latency,  # after the serializer and after the requantizer
        "pool": MaxPool.latency,
        "requant": Requantizer.latency,
        # Binarizer: a short final segment goes through the RestoringDivider of
        # act_bits + log2(beta_a) bits (Binarizer.short_latency = sum_width + 2).
        "short": config.act_bits + config.beta_a.bit_length() - 1 + 2,
    }


#: Cycles of the sequencer's fixed steps (see :func:`predict_cycles`).
FETCH_CYCLES = DESCRIPTOR_BYTES + 1
SETUP_CYCLES = 1


def layer_cycles(plan: LayerPlan, config: AcceleratorConfig, constants: dict | None = None) -> int:
    """Cycles the core spends on one layer (see :func:`predict_cycles`)."""
    k = constants or _timing_constants(config)
    passes = plan.pixels * plan.passes
    issue = (passes - 1) * plan.pass_cycles + plan.words          # first word .. last word (stage A)
    spacing = plan.spacing
    tail = 1 + k["engine"]                                         # stage B (memory read), engine
    tail += spacing * (plan.descriptor.last_rows - 1)              # serializer: the last pass's rows
    tail += k["slices"]                                            # the core's two register slices
    tail += k["pool"] if plan.pool > 1 else 0
    tail += k["requant"]
    if plan.final:
        tail += spacing                                            # writer: one entry per cycle
    else:
        short = plan.n % config.beta_a                             # short final segment: divider
        tail += k["short"] if short else 1                         # binarizer
        if config.beta_a > config.lanes:                           # writer: capture, then word by word
            tail += -(-(short or config.beta_a) // config.lanes)
    tail += 1                                                      # the sequencer sees the writer done
    return FETCH_CYCLES + SETUP_CYCLES + issue + tail


def predict_cycles(program: Program) -> int:
    """Exact ``cycles`` the core reports for RUN(:attr:`Program.desc_addr`) of ``program``.

    ``cycles`` counts the cycles ``busy`` is high, from the cycle after RUN is taken to the one in
    which the sequencer sees the last layer's writer finish.  Layers run back to back; per layer::

        DESCRIPTOR_BYTES + 1                      descriptor fetch, one byte per cycle
      + 1                                         set-up (checks, counters)
      + (P*G - 1) * (T + pace) + T                one word per cycle, `pace` idle cycles per pass
      + 1 + engine.latency                        memory read, DotEngine
      + s * (last_rows - 1)                       serializer: rows of the last pass (s = spacing)
      + 2                                         register slices (after the serializer and the requantizer)
      + MaxPool.latency (2)        if pooling
      + Requantizer.latency (5)
      + 1 (binarizer; act_bits + log2(beta_a) + 2 for a short final segment)
        [+ ceil(n_last / L) when beta_a > L]      binarized layer: the writer
        or s                                      final layer: the writer, one entry per cycle
      + 1                                         the sequencer sees `done`

    with ``P`` output pixels (before pooling), ``G`` passes, ``T`` words per pass, and
    ``pace = max(0, s * min(R, N) - T)`` (``s = LayerPlan.spacing``: the final layer's entries per
    value, :meth:`MemoryMap.final_spacing`; 1 for a binarized layer)
    so that the serializer finishes a pass before the next one's result: the engine and the
    output stage then never stall, and the formula is exact (the core tests check equality).
    """
    k = _timing_constants(program.config)
    return sum(layer_cycles(p, program.config, k) for p in program.plans)
