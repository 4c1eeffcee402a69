"""Shared simulation helpers for the lookup-table arrays (TableArray, TableDot)."""


def slot_bytes(weights, slot):
    """``fill_weights`` for one row slot, from a (rows, lanes) weight-bit matrix (block t = rg * G + g)."""
    rows, lanes = weights.shape
    return [int(sum(int(weights[4 * rg + slot, 8 * g + i]) << i for i in range(8)))
            for rg in range(rows // 4) for g in range(lanes // 8)]


def present_fill(ctx, dut, weights, slot):
    """Drive ``fill_start`` with the slot's weight bytes (the caller ticks, then lowers ``fill_start``)."""
    ctx.set(dut.fill_start, 1)
    ctx.set(dut.fill_row, slot)
    for t, byte in enumerate(slot_bytes(weights, slot)):
        ctx.set(dut.fill_weights[t], byte)
