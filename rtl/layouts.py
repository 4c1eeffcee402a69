"""Amaranth layouts of the core's memory entries and descriptors, built from :mod:`hadahw.program`.

The host side defines every format once (:data:`hadahw.program.DESCRIPTOR_FIELDS`,
:class:`hadahw.program.MemoryMap`); these functions turn them into ``lib.data`` layouts, so the
gateware decodes exactly what the compiler encodes (a test compares the bit offsets).
"""

from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from hadahw.params import AcceleratorConfig
from hadahw.program import DESCRIPTOR_FIELDS, descriptor_field_bits

__all__ = ["descriptor_layout", "weight_entry_layout", "act_entry_layout", "param_layout"]


def descriptor_layout(config: AcceleratorConfig | None = None) -> data.StructLayout:
    """One layer descriptor: each field of :data:`~hadahw.program.DESCRIPTOR_FIELDS`, in order.

    Without ``config``: the memory format (every field at its full byte width).  With ``config``:
    the sequencer's register, each field only :func:`~hadahw.program.descriptor_field_bits` wide
    (fields of width 0 are left out).
    """
    if config is None:
        return data.StructLayout({name: unsigned(8 * size) for name, size, _ in DESCRIPTOR_FIELDS})
    return data.StructLayout({name: unsigned(bits) for name, bits in descriptor_field_bits(config).items() if bits})


def weight_entry_layout(config: AcceleratorConfig) -> data.StructLayout:
    """One weight-store entry: ``w`` (R sign words) then ``dw`` (R x S_w codes), as the engine takes them."""
    return data.StructLayout({
        "w": data.ArrayLayout(unsigned(config.lanes), config.rows),
        "dw": data.ArrayLayout(data.ArrayLayout(unsigned(config.weight_code_bits), config.weight_groups),
                               config.rows),
    })


def act_entry_layout(config: AcceleratorConfig) -> data.StructLayout:
    """One activation entry: ``a`` (L sign bits) then ``da`` (S_a delta_a codes)."""
    return data.StructLayout({
        "a": unsigned(config.lanes),
        "da": data.ArrayLayout(unsigned(config.act_bits), config.act_groups),
    })


def param_layout(config: AcceleratorConfig) -> data.StructLayout:
    """One requantizer parameter entry (the layout of :class:`~hadahw.rtl.requant.Requantizer`)."""
    return data.StructLayout({"mult": signed(config.mult_bits), "bias": signed(config.bias_bits)})
