"""Table images of the lookup-table popcount array (:mod:`hadahw.rtl.table_array`): the contract.

The array keeps a tile of binary weights *stationary* as the contents of iCE40 EBR blocks used in
their 256 x 16 mode.  One block covers 4 rows (output channels) x 8 lanes (reduction elements);
an array of ``R`` rows x ``L`` lanes (``R % 4 == 0``, ``L % 8 == 0``) has ``(R / 4) * (L / 8)``
blocks, block ``t = rg * (L / 8) + g`` covering rows ``4 rg .. 4 rg + 3`` and lanes
``8 g .. 8 g + 7``.

Entry ``a`` of a block (``0 <= a < 256``; bit ``i`` of ``a`` is the activation sign bit of lane
``8 g + i``) holds four 4-bit fields; field ``j`` (bits ``4 j .. 4 j + 3``) is the number of lanes
``i`` whose activation sign bit equals row ``4 rg + j``'s weight sign bit: popcount(xnor).  Sign
bits follow :mod:`hadahw.contract` (1 = +1, 0 = -1), but only agreement matters, so the image
is the same for any consistent bit convention.  A lane the layer does not use must get weight
and activation bits that the caller accounts for (e.g. pad both with the same bit and subtract
the padded lanes, as for any xnor-popcount).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FIELD_BITS", "TABLE_DEPTH", "TABLE_LANES", "TABLE_ROWS", "array_tables", "table_count", "table_image"]

TABLE_ROWS = 4  #: rows (output channels) one block covers: four 4-bit fields in a 16-bit entry
TABLE_LANES = 8  #: lanes one block covers: its 8 address bits
TABLE_DEPTH = 1 << TABLE_LANES  #: entries per block (256)
FIELD_BITS = 4  #: bits of one field (a count 0..8)


def _bits(weight_bits, rows: int | None, lanes: int | None, name: str) -> np.ndarray:
    w = np.asarray(weight_bits)
    if w.ndim != 2 or (rows is not None and w.shape != (rows, lanes)):
        want = f"({rows}, {lanes})" if rows is not None else "(rows, lanes)"
        raise ValueError(f"{name} must be a 2-D array of shape {want}, not shape {w.shape}")
    if w.dtype != bool and not np.isin(w, (0, 1)).all():
        raise ValueError(f"{name} must hold sign bits (0/1 or bool)")
    return w.astype(bool)


def table_count(rows: int, lanes: int) -> int:
    """Blocks an array of ``rows`` x ``lanes`` needs (both multiples of the block's 4 x 8)."""
    for name, v, unit in (("rows", rows, TABLE_ROWS), ("lanes", lanes, TABLE_LANES)):
        if isinstance(v, bool) or not isinstance(v, int) or v < unit or v % unit:
            raise ValueError(f"{name} must be a positive multiple of {unit}, not {v!r}")
    return (rows // TABLE_ROWS) * (lanes // TABLE_LANES)


def table_image(weight_bits) -> np.ndarray:
    """The 256 entries (uint16) of one block for a ``(4, 8)`` tile of weight sign bits."""
    w = _bits(weight_bits, TABLE_ROWS, TABLE_LANES, "weight_bits")
    a = (np.arange(TABLE_DEPTH)[:, None] >> np.arange(TABLE_LANES)) & 1  # (256, 8) address bits
    counts = (a[:, None, :].astype(bool) == w[None, :, :]).sum(axis=2)  # (256, 4)
    return (counts << (FIELD_BITS * np.arange(TABLE_ROWS))).sum(axis=1).astype(np.uint16)


def array_tables(weight_bits) -> np.ndarray:
    """Images of every block, ``(table_count(R, L), 256)`` uint16, for ``(R, L)`` weight sign bits."""
    w = _bits(weight_bits, None, None, "weight_bits")
    rows, lanes = w.shape
    table_count(rows, lanes)
    return np.stack([table_image(w[r:r + TABLE_ROWS, l:l + TABLE_LANES])
                     for r in range(0, rows, TABLE_ROWS) for l in range(0, lanes, TABLE_LANES)])
