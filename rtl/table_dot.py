"""HadaNet dot products on EBR lookup tables: one output pixel's whole reduction per word.

``TableDot(rows=R, lanes=L, beta_w=Bw, beta_a=Ba)`` keeps ``R`` weight rows stationary in a
:class:`~hadahw.rtl.table_array.TableBank` and, for every valid word (the ``L``-lane patch of one
output pixel: sign bits and one delta_a code per ``Ba`` lanes), computes the ``R`` accumulators of
the integer contract (:func:`hadahw.golden.accumulate`):

    O_r = sum_i dw[r, i] * sum_{j in i} da_j * (2 * pc[r, j] - Ba)
        = 2 * sum_i dw[r, i] * sum_{j in i} da_j * (pc[r, j] - Ba / 2)

``pc[r, j]`` is row ``r``'s popcount(xnor) over activation segment ``j`` (``Ba / 8`` fields of the
bank), ``i`` runs over the weight segments of ``Bw`` lanes.  The whole reduction is one word
(``K <= L``); lanes past ``K`` must form whole activation segments with delta_a code 0, so they
contribute nothing (as conv zero padding does), and their weights are arbitrary.

This is the dataflow of ``docs/throughput.md`` with the reduction inside the tile: no partial
sums leave the array, and every cycle finishes ``R`` outputs.  It measures what HadaNet's
per-segment scaling adds to the table array: ``R * L / Ba`` products ``da * h`` and
``R * L / Bw`` products ``dw * v`` per cycle, in logic (the bits of the unsigned code selecting
shifted copies of the signed operand, summed in one adder tree per row) or in SB_MAC16 blocks.

Ports
-----
The bank's ``fill_*`` ports (:mod:`hadahw.rtl.table_array`), plus ``fill_dw``: with an accepted
``fill_start`` (``fill_busy`` low), ``fill_dw[rg][i]`` becomes the delta_w code (fixed point,
unsigned) of row ``4 rg + fill_row``, weight segment ``i``.  Outputs of rows whose slot is being
filled, or was refilled while their word was in flight, are undefined.

``valid`` qualifies ``act`` (bit ``i`` = lane ``i``) and ``da`` (code of lanes ``j Ba .. (j + 1) Ba
- 1``).  A free-running pipeline without back-pressure: :attr:`TableDot.latency` cycles after a
valid word, ``o_valid`` is high for one cycle with ``o[r]`` = ``O_r`` (signed).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hadahw.contract import signed_bits
from hadahw.tables import TABLE_LANES, TABLE_ROWS

from .pipeline import Stager, adder_tree, fit, select_terms, signed_for
from .table_array import UP5K_EBR, TableBank, _int_in, fill_members, forward_fill

__all__ = ["TableDot"]

_SCALINGS = ("logic", "dsp")


class TableDot(wiring.Component):
    """``rows`` HadaNet dot products of ``lanes`` elements per cycle on EBR lookup tables.

    Parameters
    ----------
    rows, lanes : int
        Rows (multiple of 4) and lanes (multiple of ``beta_w``).
    beta_w, beta_a : int
        Segment sizes, powers of two with ``8 <= beta_a <= beta_w <= lanes``.
    act_bits, dw_bits : int
        Widths of the delta_a and delta_w codes (1..16).
    scaling : {"logic", "dsp"}
        The delta products as selected shifted copies summed in logic, or as ``*`` between
        registers, which ``synth_ice40 -dsp`` maps to SB_MAC16 (the UP5K has 8; one per product).
    levels_per_stage : int
        Logic levels between pipeline registers.
    max_tables : int
        Most memory blocks allowed (default the UP5K's 30 EBR).

    Attributes
    ----------
    tables, bmac_per_cycle, latency : int
        Memory blocks, ``rows * lanes``, cycles from a valid word to ``o_valid``.
    out_bits : int
        Width of ``o[r]``: enough for ``dw_max * da_max * lanes``.
    table_data : list of MemoryData
        The bank's blocks (simulation may read them).
    """

    def __init__(self, *, rows: int, lanes: int, beta_w: int, beta_a: int, act_bits: int = 8, dw_bits: int = 8,
                 scaling: str = "logic", levels_per_stage: int = 2, max_tables: int = UP5K_EBR):
        try:
            self.bank = TableBank(rows=rows, lanes=lanes, max_tables=max_tables)
            self.bank._MustUse__silence = True  # elaborated by this component (which warns if unused)
            for name, b in (("beta_a", beta_a), ("beta_w", beta_w)):
                if isinstance(b, bool) or not isinstance(b, int) or b < TABLE_LANES or b & (b - 1):
                    raise ValueError(f"{name} must be a power of two >= {TABLE_LANES}, not {b!r}")
            if not beta_a <= beta_w <= lanes or lanes % beta_w:
                raise ValueError(f"need beta_a <= beta_w <= lanes with lanes a multiple of beta_w, not beta_a={beta_a}, "
                                 f"beta_w={beta_w}, lanes={lanes}")
            _int_in("act_bits", act_bits, 1, 16)
            _int_in("dw_bits", dw_bits, 1, 16)
            _int_in("levels_per_stage", levels_per_stage, 1, 8)
            if scaling not in _SCALINGS:
                raise ValueError(f"scaling must be one of {', '.join(_SCALINGS)}, not {scaling!r}")
        except Exception:
            self._MustUse__silence = True  # never built: no "created but never used" warning
            raise
        self.rows, self.lanes, self.beta_w, self.beta_a = rows, lanes, beta_w, beta_a
        self.act_bits, self.dw_bits, self.levels_per_stage = act_bits, dw_bits, levels_per_stage
        self.scaling = scaling
        self.tables, self.table_data = self.bank.tables, self.bank.table_data
        self.bmac_per_cycle = rows * lanes
        self.seg_a, self.seg_w = lanes // beta_a, lanes // beta_w
        self.out_bits = signed_bits(((1 << dw_bits) - 1) * ((1 << act_bits) - 1) * lanes)
        dry = Stager(levels_per_stage)
        self._datapath(dry, [[Signal(4) for _ in range(self.bank.groups)] for _ in range(rows)],
                       [Signal(act_bits) for _ in range(self.seg_a)],
                       [[Signal(dw_bits) for _ in range(self.seg_w)] for _ in range(rows)])
        self.latency = 1 + dry.stage  # the EBR register, then the datapath's registers (output included)
        super().__init__({
            **fill_members(self.tables),
            "fill_dw": In(data.ArrayLayout(data.ArrayLayout(unsigned(dw_bits), self.seg_w), rows // TABLE_ROWS)),
            "valid": In(1), "act": In(lanes), "da": In(data.ArrayLayout(unsigned(act_bits), self.seg_a)),
            "o_valid": Out(1), "o": Out(data.ArrayLayout(signed(self.out_bits), rows)),
        })

    def _datapath(self, st: Stager, fields, da, dw) -> list:
        """Fields (stage 0 of ``st``) and the word's delta_a codes -> the R registered sums."""
        R, F = self.rows, self.beta_a // TABLE_LANES
        per_w = self.beta_w // self.beta_a
        # Segment popcounts; the delta_a codes ride along (one-term groups) to stay aligned.
        groups = [fields[r][j * F:(j + 1) * F] for r in range(R) for j in range(self.seg_a)] + [[d] for d in da]
        sums = adder_tree(st, groups)
        pc, da = sums[:R * self.seg_a], sums[R * self.seg_a:]
        # h = pc - beta_a / 2 = p / 2 (signed; p = 2 pc - beta_a is always even, and a product
        # with a constant-zero bit made Yosys 0.70's DSP packing fold the whole datapath to
        # constants), then da * h, summed per weight segment; O is twice the final sum.
        h = st.step([pc[k] - self.beta_a // 2 for k in range(len(pc))] + da)
        h, da = h[:len(pc)], h[len(pc):]
        terms = self._products(st, [(h[r * self.seg_a + j], da[j]) for r in range(R) for j in range(self.seg_a)])
        v = adder_tree(st, [sum((terms[r * self.seg_a + i * per_w + j] for j in range(per_w)), [])
                            for r in range(R) for i in range(self.seg_w)])
        # |v| <= da_max * beta_w / 2: the exact width keeps a 16 x 16 product in one SB_MAC16.
        v = [fit(x, signed_for(((1 << self.act_bits) - 1) * self.beta_w // 2)) for x in v]
        # O_r = 2 sum_i dw[r, i] * v[r, i]: dw is stationary (it changes only with a fill).
        terms = self._products(st, [(v[r * self.seg_w + i], dw[r][i]) for r in range(R) for i in range(self.seg_w)])
        o = adder_tree(st, [sum(terms[r * self.seg_w:(r + 1) * self.seg_w], []) for r in range(R)])
        return st.register([fit(x << 1, signed(self.out_bits)) for x in o])

    def _products(self, st: Stager, pairs) -> list[list]:
        """``x * code`` for each (signed x, unsigned code) pair, as a list of terms to be summed."""
        if self.scaling == "dsp":
            # Registers on both sides and nothing between: Yosys folds them into one SB_MAC16.
            pairs = st.barrier(pairs)
            return [[q] for q in st.register([x * c for x, c in pairs])]
        return st.step([select_terms(x, c) for x, c in pairs])  # the code's bits select shifted copies of x

    def elaborate(self, platform):
        m = Module()
        R = self.rows
        m.submodules.bank = bank = self.bank
        forward_fill(m, self, bank)
        m.d.comb += bank.act.eq(self.act)

        dw = [[Signal(self.dw_bits, name=f"dw{r}_{i}", reset_less=True) for i in range(self.seg_w)] for r in range(R)]
        with m.If(self.fill_start & ~bank.fill_busy):
            for rg in range(R // TABLE_ROWS):
                for j in range(TABLE_ROWS):
                    with m.If(self.fill_row == j):
                        m.d.sync += [dw[TABLE_ROWS * rg + j][i].eq(self.fill_dw[rg][i]) for i in range(self.seg_w)]

        da_q = [Signal(self.act_bits, name=f"da{j}", reset_less=True) for j in range(self.seg_a)]
        m.d.sync += [d.eq(self.da[j]) for j, d in enumerate(da_q)]  # aligned with the EBR's output
        st = Stager(self.levels_per_stage, m, name="dot", reset_less=True)
        o = self._datapath(st, [[bank.fields[r][g] for g in range(bank.groups)] for r in range(R)], da_q, dw)
        m.d.comb += [self.o[r].eq(o[r]) for r in range(R)]

        valid = self.valid
        for _ in range(self.latency):
            v = Signal()
            m.d.sync += v.eq(valid)
            valid = v
        m.d.comb += self.o_valid.eq(valid)
        return m
