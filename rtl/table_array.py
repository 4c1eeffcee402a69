"""Stationary-weight popcount array whose xnor and first popcount levels are EBR lookup tables.

``TableArray(rows=R, lanes=L)`` computes, every cycle, the xnor-popcount of one ``L``-bit
activation word against ``R`` stationary weight rows and accumulates it per row: ``R * L``
binary MACs per cycle.  The weights live only as table images (:mod:`hadahw.tables`) in
``(R / 4) * (L / 8)`` memory blocks of 256 x 16 bits, one iCE40 EBR each: block ``(rg, g)`` is
addressed by the 8 activation bits of lane group ``g`` and returns the four popcounts of rows
``4 rg .. 4 rg + 3`` over those lanes.  The logic left per row is an adder tree over ``L / 8``
4-bit fields and an accumulator; the datapath has no xnor gates and holds no weights in flip-flops.

The images are built on chip from weight bits, one *row slot* ``j`` (rows ``4 rg + j`` of every
row group) at a time and in every block at once: field ``j`` of entry ``a`` must be
``popcount(a ^ ~w)`` for the block's weight byte ``w``, so the filler writes ``popcount(x)`` to
entry ``x ^ ~w`` for ``x = 0 .. 255``, a shared counter, a shared popcount and eight XORs per block,
with the EBR's write mask keeping the other three fields.  A whole tile takes 4 x 257 cycles.

This is the array of the stationary-weight datapath of ``docs/throughput.md``, built and
measured on its own (``bench/table_array_bench.py``); the accelerator's sequencer does not drive
it yet.

Ports
-----
Fill: in a cycle with ``fill_busy`` low, ``fill_start`` takes ``fill_row`` (the slot ``j``) and
``fill_weights[t]`` (block ``t``'s weight byte for slot ``j``: bit ``i`` = lane ``8 g + i`` of row
``4 rg + j``, ``t = rg * L / 8 + g``); ``fill_busy`` is then high for 256 cycles while the slot's
fields are written (``fill_start`` is ignored meanwhile).  Words read by the EBR while slot ``j``
is being filled give undefined counts for its rows only; the other rows' counts stay exact, so
words may stream during a fill.

Words: ``valid`` qualifies ``act`` (bit ``i`` = lane ``i``) and ``first`` (start a new
accumulation).  The array is a free-running pipeline without back-pressure: idle cycles are
``valid`` low.  :attr:`TableArray.latency` cycles after a valid word, ``acc_valid`` is high for one
cycle and ``acc[r]`` holds row ``r``'s sum of popcounts over the words since the last ``first``
(the word itself included); ``acc`` holds its value between valid words.  Counts wrap modulo
``2 ** acc_bits``: an accumulation of ``n`` words needs ``acc_bits >= (n * L).bit_length()``.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory, MemoryData
from amaranth.lib.wiring import In, Out

from hadahw.tables import FIELD_BITS, TABLE_DEPTH, TABLE_LANES, TABLE_ROWS, table_count

from .memories import EBRReadPort
from .pipeline import Stager, adder_tree, fit

__all__ = ["UP5K_EBR", "TableArray", "TableBank", "fill_members", "forward_fill"]

#: EBR blocks of the iCE40 UP5K: the most tables one array may use there.
UP5K_EBR = 30


def _int_in(name: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], not {v!r}")
    return v


class TableBank(wiring.Component):
    """The memory blocks and their filler: ``fields[r][g]`` = popcount(xnor) of row ``r``, lane group ``g``.

    The ``fill_*`` ports are those of the module docstring.  ``act`` (bit ``i`` = lane ``i``)
    addresses every block each cycle; ``fields`` shows the counts the next cycle (the EBR's
    output register) and holds them while ``act`` is unchanged.

    Parameters
    ----------
    rows, lanes : int
        Rows (multiple of 4) and lanes (multiple of 8).
    max_tables : int
        Most blocks allowed (default the UP5K's 30 EBR).

    Attributes
    ----------
    tables : int
        Memory blocks, ``(rows / 4) * (lanes / 8)``.
    table_data : list of MemoryData
        The blocks' contents, block ``t`` at index ``t`` (simulation may read them).
    """

    def __init__(self, *, rows: int, lanes: int, max_tables: int = UP5K_EBR):
        try:
            self.tables = table_count(rows, lanes)
            if self.tables > max_tables:
                raise ValueError(f"rows x lanes = {rows} x {lanes} needs {self.tables} memory blocks (rows/4 * "
                                 f"lanes/8); max_tables is {max_tables}")
        except Exception:
            self._MustUse__silence = True  # never built: no "created but never used" warning
            raise
        self.rows, self.lanes, self.groups = rows, lanes, lanes // TABLE_LANES
        self.table_data = [MemoryData(shape=TABLE_ROWS * FIELD_BITS, depth=TABLE_DEPTH, init=[])
                           for _ in range(self.tables)]
        super().__init__({
            **fill_members(self.tables),
            "act": In(lanes),
            "fields": Out(data.ArrayLayout(data.ArrayLayout(unsigned(FIELD_BITS), self.groups), rows)),
        })

    def elaborate(self, platform):
        m = Module()
        R, G = self.rows, self.groups

        # Filler: x runs 0..255 once per slot; entry x ^ ~w gets popcount(x) in field `slot`.
        x = Signal(8)
        slot = Signal(range(TABLE_ROWS))
        not_w = [Signal(TABLE_LANES, name=f"fill_nw{t}", reset_less=True) for t in range(self.tables)]
        with m.If(self.fill_busy):
            m.d.sync += x.eq(x + 1)
            with m.If(x == TABLE_DEPTH - 1):
                m.d.sync += self.fill_busy.eq(0)
        with m.Elif(self.fill_start):
            m.d.sync += [self.fill_busy.eq(1), x.eq(0), slot.eq(self.fill_row)]
            m.d.sync += [nw.eq(~self.fill_weights[t]) for t, nw in enumerate(not_w)]
        count = Signal(FIELD_BITS)
        m.d.comb += count.eq(sum(x[i] for i in range(TABLE_LANES)))
        field_en = Signal(TABLE_ROWS)
        m.d.comb += field_en.eq(Mux(self.fill_busy, 1 << slot, 0))

        for rg in range(R // TABLE_ROWS):
            for g in range(G):
                t = rg * G + g
                mem = Memory(data=self.table_data[t], attrs={"no_rw_check": 1})
                m.submodules[f"table{t}"] = mem
                wp = mem.write_port(granularity=FIELD_BITS)
                m.d.comb += [wp.addr.eq(x ^ not_w[t]), wp.data.eq(count.replicate(TABLE_ROWS)), wp.en.eq(field_en)]
                rp = EBRReadPort(m, mem)
                m.d.comb += [rp.addr.eq(self.act[TABLE_LANES * g:TABLE_LANES * (g + 1)]), rp.en.eq(1)]
                for j in range(TABLE_ROWS):
                    m.d.comb += self.fields[TABLE_ROWS * rg + j][g].eq(rp.data[FIELD_BITS * j:FIELD_BITS * (j + 1)])
        return m


def fill_members(tables: int) -> dict:
    """The ``fill_*`` signature members of a component built on a :class:`TableBank`."""
    return {"fill_start": In(1), "fill_row": In(range(TABLE_ROWS)),
            "fill_weights": In(data.ArrayLayout(TABLE_LANES, tables)), "fill_busy": Out(1)}


def forward_fill(m: Module, outer, bank: TableBank) -> None:
    """Connect ``outer``'s ``fill_*`` ports (made with :func:`fill_members`) to its bank's."""
    m.d.comb += [bank.fill_start.eq(outer.fill_start), bank.fill_row.eq(outer.fill_row),
                 bank.fill_weights.eq(outer.fill_weights), outer.fill_busy.eq(bank.fill_busy)]


class TableArray(wiring.Component):
    """``rows`` x ``lanes`` stationary-weight xnor-popcount array on EBR lookup tables.

    Parameters
    ----------
    rows, lanes : int
        Rows (multiple of 4) and lanes (multiple of 8).
    acc_bits : int
        Accumulator width per row (at least enough for one word's count, at most 32).
    levels_per_stage : int
        Adder-tree levels between pipeline registers (the accumulator's add counts as one).
    max_tables : int
        Most blocks allowed (default the UP5K's 30 EBR).

    Attributes
    ----------
    tables : int
        Memory blocks used, ``(rows / 4) * (lanes / 8)``.
    bmac_per_cycle : int
        ``rows * lanes``.
    latency : int
        Cycles from a valid word at the ports to ``acc_valid`` with that word counted.
    table_data : list of MemoryData
        The blocks' contents, block ``t`` at index ``t`` (simulation may read them).
    """

    def __init__(self, *, rows: int, lanes: int, acc_bits: int = 16, levels_per_stage: int = 2,
                 max_tables: int = UP5K_EBR):
        try:
            self.bank = TableBank(rows=rows, lanes=lanes, max_tables=max_tables)
            self.bank._MustUse__silence = True  # elaborated by this component (which warns if unused)
            _int_in("acc_bits", acc_bits, lanes.bit_length(), 32)
            _int_in("levels_per_stage", levels_per_stage, 1, 8)
        except Exception:
            self._MustUse__silence = True  # never built: no "created but never used" warning
            raise
        self.tables, self.table_data = self.bank.tables, self.bank.table_data
        self.groups = self.bank.groups
        self.rows, self.lanes, self.acc_bits = rows, lanes, acc_bits
        self.levels_per_stage = levels_per_stage
        self.bmac_per_cycle = rows * lanes
        dry = Stager(levels_per_stage)
        self._row_sums(dry, [[0] * self.groups] * rows)
        # the EBR's output register + the tree's registers + the accumulator register
        self.latency = 1 + dry.stage + 1
        super().__init__({
            **fill_members(self.tables),
            "valid": In(1), "first": In(1), "act": In(lanes),
            "acc_valid": Out(1), "acc": Out(data.ArrayLayout(unsigned(acc_bits), rows)),
        })

    def _row_sums(self, st: Stager, fields: list[list]) -> list:
        """Each row's sum of its fields, pipelined by ``st``; leaves room for the accumulator's add."""
        sums = adder_tree(st, fields)
        if st.level + 1 > self.levels_per_stage:
            sums = st.register(sums)
        return sums

    def elaborate(self, platform):
        m = Module()
        R, G = self.rows, self.groups

        m.submodules.bank = bank = self.bank
        forward_fill(m, self, bank)
        m.d.comb += bank.act.eq(self.act)
        fields = [[bank.fields[r][g] for g in range(G)] for r in range(R)]

        st = Stager(self.levels_per_stage, m, name="tree", reset_less=True)
        sums = self._row_sums(st, fields)

        # valid/first follow the data through the same number of stages (with reset: no phantom words).
        valid, first = self.valid, self.first
        for _ in range(1 + st.stage):  # the EBR register, then the tree's
            v, f = Signal(), Signal()
            m.d.sync += [v.eq(valid), f.eq(first)]
            valid, first = v, f

        for r in range(R):
            acc = self.acc[r]
            acc_q = Signal(unsigned(self.acc_bits), reset_less=True, name=f"acc{r}")
            with m.If(valid):
                m.d.sync += acc_q.eq(fit(Mux(first, 0, acc_q) + sums[r], unsigned(self.acc_bits)))
            m.d.comb += acc.eq(acc_q)
        m.d.sync += self.acc_valid.eq(valid)
        return m
