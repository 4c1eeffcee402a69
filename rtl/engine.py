"""DotEngine: R parallel HadaNet dot products, L lanes per cycle, streamed in and out.

One input beat carries one L-lane word of the reduction for all R rows; one output beat carries
the R accumulators of a finished reduction.  See :class:`DotEngine` for the stream formats and
:mod:`hadahw.rtl.pe` for the arithmetic.

Pipeline (every stage register shares one enable, so back-pressure freezes the whole pipeline and
nothing is lost or duplicated):

* pre-stage: the valid-lane count is decoded into a lane mask and per-activation-group counts
  ``n_g`` (a few LUT levels on the input path);
* stage 0: input registers;
* stages 1..: the PEs' popcount trees and products, registered every ``levels_per_stage`` logic
  levels, beside a shared pipeline computing ``corr_h = sum_{g in h} da_g * n_g``;
* ``acc`` stage: accumulators; a finished reduction's updated accumulators go straight into
  the output register.

The output register is written when a reduction's last contribution passes the accumulator
stage; the pipeline stalls only while such a contribution waits behind a full output register
that is not being read.
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, EnableInserter, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hadahw.params import AcceleratorConfig

from .pe import PE, PEDatapath, act_products
from .pipeline import Stager, adder_tree, fit

__all__ = ["DotEngine", "EngineTiming", "input_layout", "output_layout"]


def input_layout(config: AcceleratorConfig) -> data.StructLayout:
    """Payload of one input beat (one L-lane word of the reduction, all rows)."""
    return data.StructLayout({
        "a": unsigned(config.lanes),
        "count": unsigned(config.count_bits),
        "da": data.ArrayLayout(unsigned(config.act_bits), config.act_groups),
        "w": data.ArrayLayout(unsigned(config.lanes), config.rows),
        "dw": data.ArrayLayout(data.ArrayLayout(unsigned(config.weight_code_bits), config.weight_groups), config.rows),
        "seg_end": unsigned(1),
        "last": unsigned(1),
    })


def output_layout(config: AcceleratorConfig) -> data.ArrayLayout:
    """Payload of one output beat: the R signed accumulators."""
    return data.ArrayLayout(signed(config.acc_bits), config.rows)


def _correction(config: AcceleratorConfig, st: Stager, da, counts) -> list:
    """Shared pipeline ``corr_h = sum_{g in h} da_g * n_g``; ends on a register boundary."""
    terms = act_products(st, [da[g] for g in range(config.act_groups)], counts)
    per_w = config.group_w // config.group_a
    sums = adder_tree(st, [terms[h * per_w:(h + 1) * per_w] for h in range(config.weight_groups)])
    shape = unsigned(config.group_sum_bits)
    return st.barrier([fit(v, shape) for v in sums])


class EngineTiming:
    """Cycle model of a :class:`DotEngine`, computed without building hardware.

    Parameters
    ----------
    config : AcceleratorConfig

    Attributes
    ----------
    schedule : dict[str, int]
        Pipeline stage (cycles after the input register) at which the PEs consume each input; see
        :class:`hadahw.rtl.pe.PEDatapath`.  ``schedule["acc"]`` is the accumulator stage.
    correction_stage : int
        Stage at which the shared correction pipeline delivers ``corr``.
    latency : int
        Cycles from the cycle in which the last word of a reduction is accepted to the cycle in
        which its result is valid on ``o``, when not stalled (input register, ``acc`` stages,
        output register).
    initiation_interval : int
        Cycles per input word when not stalled: 1.
    """

    def __init__(self, config: AcceleratorConfig):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {type(config).__name__}")
        self.config = config
        st = Stager(config.levels_per_stage)
        _correction(config, st, Signal(data.ArrayLayout(unsigned(config.act_bits), config.act_groups)),
                    [Signal(config.popcount_bits) for _ in range(config.act_groups)])
        self.correction_stage = st.stage
        self.pe_kwargs = dict(
            lanes=config.lanes, beta_w=config.beta_w, beta_a=config.beta_a, act_bits=config.act_bits,
            weight_bits=config.weight_delta.bits, weight_kind=config.weight_delta.kind, scaling=config.scaling,
            acc_bits=config.acc_bits, levels_per_stage=config.levels_per_stage,
            correction_stage=self.correction_stage)
        self.schedule = dict(PEDatapath(**self.pe_kwargs).schedule)
        self.initiation_interval = 1

    @property
    def latency(self) -> int:
        # The word enters the input register (stage 0) one cycle after it is accepted, reaches
        # the accumulator stage `acc` cycles later, and the output register one cycle after that.
        return self.schedule["acc"] + 2

    def cycles_for(self, k: int, outputs: int | None = None) -> int:
        """Cycles to compute ``outputs`` dot products of length ``k`` (default: one pass of R rows).

        ``ceil(outputs / R)`` passes of ``ceil(k / L)`` words stream back to back, one word per
        cycle, plus :attr:`latency` for the last result: the number of cycles from the one in which
        the first word is offered to the one in which the last result is valid, inclusive, when
        the input never idles and the output is always ready.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive reduction length, not {k!r}")
        if k > self.config.max_reduction:
            raise ValueError(f"k={k} exceeds max_reduction={self.config.max_reduction}")
        outputs = self.config.rows if outputs is None else outputs
        if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs < 1:
            raise ValueError(f"outputs must be a positive integer, not {outputs!r}")
        passes = math.ceil(outputs / self.config.rows)
        return passes * self.config.words_for(k) + self.latency

    def layer_cycles(self, layer) -> int:
        """:meth:`cycles_for` a linear :class:`hadahw.golden.QLayer` (checked with ``config.fits``)."""
        self.config.fits(layer)
        if layer.kind != "linear":
            raise ValueError("layer_cycles covers linear layers; conv layers need the sequencer's im2col order")
        return self.cycles_for(layer.reduction, layer.out_features)


class DotEngine(wiring.Component):
    """``O[r] = sum_k w[r, k] * a[k]`` in the integer contract for R rows at once.

    Parameters
    ----------
    config : AcceleratorConfig

    Members
    -------
    i : In(stream.Signature(input_layout(config)))
        One beat per L-lane word of the reduction:

        ``a``
            Activation sign bits of the word (bit ``k % L`` is element ``k``; 1 = +1).
        ``count``
            Valid lanes in this word, ``0..L`` (lanes ``count..L-1`` are ignored, whatever they
            hold).  Any word may be partial (a conv over ``C < L`` channels has one partial word
            per pixel), provided the valid lanes of every weight group lie in one weight segment.
        ``da``
            delta_a code of each of the word's ``S_a = L / min(beta_a, L)`` activation groups;
            when ``beta_a > L`` the segment's code repeats over its ``beta_a / L`` words.  Codes
            of groups wholly past the valid lanes are ignored.
        ``w``
            The R weight sign words (rows beyond the layer's N: any signs with zero delta_w).
        ``dw``
            The R x ``S_w`` delta_w codes, ``S_w = L / min(beta_w, L)``; when ``beta_w > L`` the
            segment's code repeats over its words (the engine reads it on the segment's last word).
        ``seg_end``
            The word closes a weight segment: the reduction index after its last valid lane is a
            multiple of ``beta_w``.  Read only when ``beta_w > L`` (where a segment spans several
            words); ``last`` always closes a segment as well.  The producer computes it because
            only it knows how many lanes each word holds.
        ``last``
            Last word of the reduction.
    o : Out(stream.Signature(output_layout(config)))
        The R accumulators (``acc_bits`` wide, signed), once per reduction.

    Attributes
    ----------
    timing : EngineTiming
        Latency and cycle model; :attr:`latency`, :attr:`initiation_interval`, :meth:`cycles_for`
        and :meth:`layer_cycles` forward to it.
    """

    def __init__(self, config: AcceleratorConfig):
        try:
            self.timing = EngineTiming(config)
        except Exception:
            self._MustUse__silence = True  # never built: no "created but never used" warning
            raise
        self.config = config
        super().__init__({
            "i": In(stream.Signature(input_layout(config))),
            "o": Out(stream.Signature(output_layout(config))),
        })

    @property
    def schedule(self) -> dict:
        return self.timing.schedule

    @property
    def latency(self) -> int:
        return self.timing.latency

    @property
    def initiation_interval(self) -> int:
        return self.timing.initiation_interval

    def cycles_for(self, k: int, outputs: int | None = None) -> int:
        return self.timing.cycles_for(k, outputs)

    def layer_cycles(self, layer) -> int:
        return self.timing.layer_cycles(layer)

    # Elaboration ----------------------------------------------------------------------------------
    def elaborate(self, platform):
        cfg = self.config
        m = Module()
        p = Module()  # the stallable pipeline: every sync statement here runs only when `en`
        en = Signal()
        done = Signal()  # a reduction's last contribution is at the accumulator stage
        m.submodules.pipe = EnableInserter(en)(p)
        m.d.comb += [
            en.eq(~done | ~self.o.valid | self.o.ready),
            self.i.ready.eq(en),
        ]

        # Pre-stage decode of the valid-lane count.
        pay = self.i.payload
        ga_log = cfg.group_a.bit_length() - 1
        hi, lo = pay.count >> ga_log, pay.count[:ga_log]
        mask_in = Signal(cfg.lanes)
        m.d.comb += mask_in.eq(Cat(pay.count > lane for lane in range(cfg.lanes)))
        counts_in = [Mux(hi > g, cfg.group_a, Mux(hi == g, lo, 0)) for g in range(cfg.act_groups)]
        seg_end_in = Signal()
        span = cfg.words_per_weight_segment
        m.d.comb += seg_end_in.eq(pay.seg_end | pay.last)

        # Stage 0: input registers.  Only the control bits (valid, last, seg_end) have a reset:
        # they qualify the data, whose registers, and the delay lines made from them
        # (Signal.like), need none.
        valid0 = Signal(name="valid0")
        last0, seg_end0 = Signal(name="last0"), Signal(name="seg_end0")
        a0, mask0 = Signal(cfg.lanes, name="a0", reset_less=True), Signal(cfg.lanes, name="mask0", reset_less=True)
        da0 = Signal.like(pay.da, name="da0", reset_less=True)
        w0 = Signal.like(pay.w, name="w0", reset_less=True)
        dw0 = Signal.like(pay.dw, name="dw0", reset_less=True)
        counts0 = [Signal(cfg.popcount_bits, name=f"n{g}_0", reset_less=True) for g in range(cfg.act_groups)]
        p.d.sync += [
            valid0.eq(self.i.valid), last0.eq(pay.last), seg_end0.eq(seg_end_in),
            a0.eq(pay.a), mask0.eq(mask_in), da0.eq(pay.da), w0.eq(pay.w), dw0.eq(pay.dw),
        ]
        p.d.sync += [c0.eq(c) for c0, c in zip(counts0, counts_in)]

        # Shared delay lines (one per signal, tapped at every stage a consumer needs).  They live
        # in their own module so that no tap can end up inside a conditional block of `p`.
        lines = {}
        p.submodules.delays = delays = Module()

        def at(name, value, stage):
            line = lines.setdefault(name, [value])
            while len(line) <= stage:
                reg = Signal.like(line[-1], name=f"{name}_d{len(line)}")
                delays.d.sync += reg.eq(line[-1])
                line.append(reg)
            return line[stage]

        st = Stager(cfg.levels_per_stage, p, name="corr", reset_less=True)
        corr = _correction(cfg, st, da0, counts0)
        assert st.stage == self.timing.correction_stage
        sched = self.schedule
        corr = [at(f"corr{h}", v, sched["corr"] - self.timing.correction_stage) for h, v in enumerate(corr)]

        # Control at the segment and accumulator stages.
        valid_acc = at("valid", valid0, sched["acc"])
        last_acc = at("last", last0, sched["acc"])
        acc_valid = Signal()
        if span > 1:
            seg_valid = at("valid", valid0, sched["seg"])
            seg_end_seg = at("seg_end", seg_end0, sched["seg"])
            m.d.comb += acc_valid.eq(valid_acc & at("seg_end", seg_end0, sched["acc"]))
        else:
            m.d.comb += acc_valid.eq(valid_acc)
        m.d.comb += done.eq(acc_valid & last_acc)

        da_pe = at("da", da0, sched["da"])
        for r in range(cfg.rows):
            pe = PE(**self.timing.pe_kwargs)
            p.submodules[f"pe{r}"] = pe
            m.d.comb += [
                pe.a.eq(a0), pe.mask.eq(mask0), pe.w.eq(w0[r]),
                pe.da.eq(da_pe),
                pe.dw.eq(at(f"dw{r}", dw0[r], sched["dw"])),
                pe.acc_valid.eq(acc_valid), pe.acc_last.eq(last_acc),
            ]
            m.d.comb += [pe.corr[h].eq(v) for h, v in enumerate(corr)]
            if span > 1:
                m.d.comb += [pe.seg_valid.eq(seg_valid), pe.seg_last.eq(seg_end_seg)]
            with p.If(done):
                p.d.sync += self.o.payload[r].eq(pe.result)

        # Output register: written when a result completes, emptied when read.
        with p.If(done):
            p.d.sync += self.o.valid.eq(1)
        with p.Elif(self.o.ready):
            p.d.sync += self.o.valid.eq(0)
        return m
