"""Processing element: one output channel's share of the HadaNet dot product, L lanes per cycle.

Per input word (L sign bits of one weight row and of the activation vector) the PE computes, for
every activation group ``g`` of ``G_a = min(beta_a, L)`` lanes and weight group ``h`` of
``G_w = min(beta_w, L)`` lanes,

    pc_g = popcount(xnor(w, a) & mask)            agreeing valid lanes
    u_h  = sum_{g in h} da_g * pc_g               unsigned
    s_h  = 2 * u_h - corr_h                       corr_h = sum_{g in h} da_g * n_g  (shared, from the engine)

so that ``s_h = sum_{g in h} da_g * p_g`` with ``p_g = 2 pc_g - n_g``.  Subtracting the shared
correction once per weight group instead of ``n_g`` once per activation group keeps every
per-row multiply unsigned and saves ``G_w / G_a - 1`` subtractors per group.

``beta_w <= L``: ``acc += sum_h dw_h * s_h`` every word.
``beta_w > L`` (one weight group per word, a segment spans ``beta_w / L`` words): ``seg += s``
every word, and at the segment's last word ``acc += dw * seg`` -- the factorization
``sum_i dw_i (sum_{j in i} da_j p_j)`` that needs one delta_w product per segment.

Products: ``da * pc`` always sums shifted partial products selected by the bits of ``pc`` (at
most 7 bits; for ``G_a = 2`` a 3-way mux).  The delta_w product follows ``scaling``:
``"shiftadd"`` sums partial products selected by the code's bits, ``"dsp"`` writes ``*`` with
registers on both sides (``synth_ice40 -dsp`` maps it to an SB_MAC16 with the registers inside;
UP5K has 8, so this suits ``R <= 8`` with ``beta_w >= L``, one product per PE per cycle).  A
``log2`` delta_w is a barrel shift by its code, whatever the scaling.

Timing contract: the PE is a free-running pipeline (stall it with ``EnableInserter``).  The
inputs of one word are sampled at different stages: ``a``, ``mask`` and ``w`` at stage 0, the
others at the stage given by :attr:`PE.schedule`; stage ``s`` is ``s`` cycles after stage 0.
At ``schedule["acc"]`` the ``result`` output shows the accumulator including that stage's
contribution (combinationally), and the accumulator register takes it when ``acc_valid``.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .pipeline import Stager, adder_tree, fit, select_terms, signed_for, unsigned_for

__all__ = ["PE", "PEDatapath", "act_products"]

_SCALINGS = ("dsp", "shiftadd")
_SCHEDULE_KEY = {"acc_valid": "acc", "acc_last": "acc", "seg_valid": "seg", "seg_last": "seg"}


def act_products(st: Stager, da: list, counts: list) -> list:
    """``da[g] * counts[g]`` for unsigned small ``counts[g]`` in ``0..G`` (G a power of two).

    Always shift-add: ``counts`` has only ``log2(G) + 1`` bits, so a multiplier (or a DSP) buys
    nothing.  Shared by the PE (counts = popcounts) and the engine (counts = valid lanes, for the
    correction), so both pipelines have the same depth.
    """
    if len(counts[0]) == 2:
        # G = 2: count is 0, 1 or 2 -- a 3-way mux, one level, no adder.
        return st.step([Mux(c[1], d << 1, Mux(c[0], d, 0)) for d, c in zip(da, counts)])
    terms = st.step([select_terms(d, c) for d, c in zip(da, counts)])
    return adder_tree(st, terms)


class PEDatapath:
    """Parameters, exact widths, schedule and gateware of one PE, without being a component.

    Takes the keyword arguments of :class:`PE`.  Constructing it runs the datapath once as a dry
    run to fill :attr:`schedule`, so timing is known without creating hardware (the engine's
    timing model and the estimator use this).

    Attributes
    ----------
    schedule : dict[str, int]
        Stage at which each input is sampled: ``"a"``, ``"mask"``, ``"w"`` (0), ``"da"``,
        ``"corr"``, ``"dw"``, ``"seg"`` (``seg_valid``/``seg_last``, only when
        ``beta_w > lanes``) and ``"acc"`` (``acc_valid``/``acc_last``, and the stage at which
        ``result`` holds the updated accumulator).
    """

    def __init__(self, *, lanes: int, beta_w: int, beta_a: int, act_bits: int, weight_bits: int,
                 weight_kind: str = "fixed", scaling: str = "shiftadd", acc_bits: int,
                 levels_per_stage: int = 2, correction_stage: int = 0):
        for name, v, lo in (("lanes", lanes, 2), ("beta_w", beta_w, 2), ("beta_a", beta_a, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= {lo}, not {v!r}")
        if beta_a > beta_w:
            raise ValueError(f"beta_a must not exceed beta_w, not {beta_a} > {beta_w}")
        if weight_kind not in ("fixed", "log2"):
            raise ValueError(f"weight_kind must be 'fixed' or 'log2', not {weight_kind!r}")
        if scaling not in _SCALINGS:
            raise ValueError(f"scaling must be 'dsp' or 'shiftadd', not {scaling!r}")
        for name, v, lo in (("act_bits", act_bits, 1), ("weight_bits", weight_bits, 1), ("acc_bits", acc_bits, 2),
                            ("levels_per_stage", levels_per_stage, 1), ("correction_stage", correction_stage, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, not {v!r}")
        self.lanes = lanes
        self.beta_w = beta_w
        self.beta_a = beta_a
        self.act_bits = act_bits
        self.weight_bits = weight_bits
        self.weight_kind = weight_kind
        self.scaling = scaling
        self.acc_bits = acc_bits
        self.levels_per_stage = levels_per_stage
        self.correction_stage = correction_stage

        self.group_a = min(beta_a, lanes)
        self.group_w = min(beta_w, lanes)
        self.act_groups = lanes // self.group_a
        self.weight_groups = lanes // self.group_w
        self.span = max(1, beta_w // lanes)
        da_max = (1 << act_bits) - 1
        dw_max = (1 << weight_bits) - 1 if weight_kind == "fixed" else 1 << ((1 << weight_bits) - 2)
        self.term_shape = unsigned_for(da_max * self.group_a)        # da * pc
        self.group_shape = unsigned_for(da_max * self.group_w)       # u_h, corr_h
        self.word_s_shape = signed_for(da_max * self.group_w)        # s_h
        self.seg_shape = signed_for(da_max * beta_w)                 # segment sum
        self.prod_shape = signed_for(dw_max * da_max * beta_w)       # dw * segment sum
        self.contrib_shape = signed_for(dw_max * da_max * max(lanes, beta_w))  # per accumulator update

        self.schedule = {}
        placeholders = {name: Signal(shape, name=f"dry_{name}") for name, shape in self.input_shapes().items()}
        self.build(None, placeholders)

    def input_shapes(self) -> dict:
        """Shape of every input of the PE, by name."""
        shapes = {
            "a": unsigned(self.lanes),
            "mask": unsigned(self.lanes),
            "w": unsigned(self.lanes),
            "da": data.ArrayLayout(unsigned(self.act_bits), self.act_groups),
            "corr": data.ArrayLayout(self.group_shape, self.weight_groups),
            "dw": data.ArrayLayout(unsigned(self.weight_bits), self.weight_groups),
            "acc_valid": unsigned(1),
            "acc_last": unsigned(1),
        }
        if self.span > 1:
            shapes["seg_valid"] = unsigned(1)
            shapes["seg_last"] = unsigned(1)
        return shapes

    def build(self, m, inputs: dict):
        """Build the datapath from ``inputs`` (by name) into ``m``; ``m=None`` is a dry run.

        Returns the updated-accumulator value (see :class:`PE` ``result``).  Checks that the
        schedule equals the dry run's.
        """
        expected = dict(self.schedule)
        self.schedule.clear()
        # Data registers need no reset (acc_valid/seg_valid qualify them; `acc` and `seg` keep
        # theirs), and without one Yosys folds the delta_w product's registers into the SB_MAC16
        # (the 1x8 board engine synthesised alone: 323 -> 289 flip-flops).
        st = Stager(self.levels_per_stage, m, name="pe", reset_less=True)

        def take(name):
            self.schedule.setdefault(_SCHEDULE_KEY.get(name, name), st.stage)
            return inputs[name]
        result = self._datapath(st, take, m)
        assert not expected or self.schedule == expected, (self.schedule, expected)
        return result

    def _datapath(self, st: Stager, take, m):
        """The whole datapath, written once for the dry run (``m is None``) and for elaboration."""
        ga, gw = self.group_a, self.group_w
        x = ~(take("w") ^ take("a")) & take("mask")
        bits = st.step([[x[g * ga + i] for i in range(ga)] for g in range(self.act_groups)])
        pcs = adder_tree(st, bits)

        da = take("da")
        terms = act_products(st, [da[g] for g in range(self.act_groups)], pcs)
        terms = [fit(t, self.term_shape) for t in terms]

        per_w = gw // ga
        u = adder_tree(st, [terms[h * per_w:(h + 1) * per_w] for h in range(self.weight_groups)])
        u = st.pad_to(self.correction_stage, u)
        corr = take("corr")
        s = st.step([fit((fit(u[h], self.group_shape) << 1) - corr[h], self.word_s_shape)
                     for h in range(self.weight_groups)])

        if self.span == 1:
            prods = self._weight_products(st, take, s)
            contrib = adder_tree(st, [prods])[0]
        else:
            s = st.barrier(s)
            seg_valid, seg_last = take("seg_valid"), take("seg_last")
            seg = Signal(self.seg_shape, name="seg")  # sum of the open segment's earlier words
            tot = fit(seg + s[0], self.seg_shape)
            if m is not None:
                with m.If(seg_valid):  # cleared after a segment's last word (a synchronous reset)
                    m.d.sync += seg.eq(Mux(seg_last, 0, tot))
            tot = st.barrier(st.step([tot]))
            contrib = self._weight_products(st, take, tot)[0]

        contrib = st.barrier(fit(contrib, self.contrib_shape))
        acc_valid, acc_last = take("acc_valid"), take("acc_last")
        acc = Signal(signed(self.acc_bits), name="acc")  # sum of the reduction's earlier contributions
        result = fit(acc + contrib, signed(self.acc_bits))
        if m is not None:
            with m.If(acc_valid):  # cleared after a reduction's last contribution
                m.d.sync += acc.eq(Mux(acc_last, 0, result))
        return result

    def _weight_products(self, st: Stager, take, s: list) -> list:
        """``dw[h] * s[h]`` for every weight group, exact to :attr:`prod_shape`."""
        n = len(s)
        if self.weight_kind == "log2":
            # value = 0 for code 0, else 2**(code-1): shift by the code, then drop one bit.
            dw = take("dw")
            codes = [dw[h] for h in range(n)]
            wide = signed(self.prod_shape.width + 1)
            for b in range(self.weight_bits):
                s = [fit(Mux(c[b], v << (1 << b), v), wide) for v, c in zip(s, codes)]
                s, codes = st.step((s, codes))
            return st.step([fit(Mux(c != 0, v >> 1, 0), self.prod_shape) for v, c in zip(s, codes)])
        if self.scaling == "dsp":
            s = st.barrier(s)
            dw = take("dw")
            prods = st.step([fit(v * dw[h], self.prod_shape) for h, v in enumerate(s)])
            return st.barrier(prods)
        dw = take("dw")
        terms = st.step([select_terms(v, dw[h]) for h, v in enumerate(s)])
        return [fit(p, self.prod_shape) for p in adder_tree(st, terms)]


class PE(wiring.Component):
    """One row of the dot-product engine (see the module docstring for the arithmetic).

    Parameters
    ----------
    lanes : int
        ``L``, sign bits per word (power of two).
    beta_w, beta_a : int
        Segment sizes (powers of two, ``2 <= beta_a <= beta_w``).
    act_bits : int
        delta_a code width.
    weight_bits : int
        delta_w code width.
    weight_kind : {"fixed", "log2"}
        delta_w code format (see :class:`hadahw.contract.DeltaFormat`).
    scaling : {"dsp", "shiftadd"}
        How products are built.
    acc_bits : int
        Signed accumulator width (the caller guarantees it cannot overflow).
    levels_per_stage : int
        Logic levels between pipeline registers.
    correction_stage : int
        Earliest stage at which the engine can present ``corr``; the PE delays its own values to
        meet it when its datapath would otherwise need ``corr`` earlier.

    Attributes
    ----------
    datapath : PEDatapath
        Widths and :attr:`PEDatapath.schedule` (the stage at which each input is sampled).

    Members
    -------
    a, mask, w : In(lanes)
        Activation signs, valid-lane mask, weight signs of the word (bit 1 = +1).
    da : In(ArrayLayout(act_bits, S_a))
        delta_a code of each activation group.
    corr : In(ArrayLayout(unsigned, S_w))
        ``sum_{g in h} da_g * n_g`` of each weight group (shared by all rows).
    dw : In(ArrayLayout(weight_bits, S_w))
        delta_w code of each weight group (``beta_w > lanes``: of the segment; read on the
        segment's last word).
    seg_valid, seg_last : In(1)
        ``beta_w > lanes`` only: the word at the segment stage is valid / closes its segment.
    acc_valid, acc_last : In(1)
        A contribution is at the accumulator stage / it is the last of its reduction (the
        accumulator clears after it).
    result : Out(signed(acc_bits))
        Combinational: the accumulator including the contribution now at the accumulator stage
        (its next value when ``acc_valid``); the engine registers it when a reduction ends.
    """

    def __init__(self, **kwargs):
        try:
            self.datapath = PEDatapath(**kwargs)
        except Exception:
            self._MustUse__silence = True  # never built: no "created but never used" warning
            raise
        shapes = self.datapath.input_shapes()
        super().__init__({**{name: In(shape) for name, shape in shapes.items()},
                          "result": Out(signed(self.datapath.acc_bits))})

    @property
    def schedule(self) -> dict:
        return self.datapath.schedule

    def elaborate(self, platform):
        m = Module()
        dp = self.datapath
        result = dp.build(m, {name: getattr(self, name) for name in dp.input_shapes()})
        m.d.comb += self.result.eq(result)
        return m
