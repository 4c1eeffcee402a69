"""Sequencer: runs a program of layer descriptors, feeding the engine one word per cycle.

For each layer: fetch the descriptor (one byte per cycle from the DESC memory), check it, then
walk the layer in the core's loop order

    for each output pixel (oy, ox), raster order
        for each pass g of R output rows
            for each word t = (ky, kx, j), j < wpp
                one engine beat: activation entry (iy*W + ix)*wpp + j  (or padding)
                                 weight entry     weight_addr + g*T + t
            then `pace` idle cycles

and wait until the writer has stored the layer's last output; then the next descriptor, until one
flagged final.

Address generation is incremental (no multipliers): within a kernel row the activation entries
of consecutive words are consecutive; a kernel row steps by ``row_entries``, an output column by
``col_step``, an output row by ``row_step``, all precomputed by :func:`hadahw.program.compile_network`
(arithmetic modulo 2**16; a padding position reads nothing).  ``seg_end`` (the word closes a weight
segment) comes from a running reduction index modulo ``beta_w``.

Pipeline: stage A (counters, addresses) -> synchronous memory reads -> stage B (read data and the
beat's flags) -> engine.  Stage A advances, and the memories read, only when stage B is empty or
the engine takes its beat, so back-pressure loses or repeats nothing.
"""

from __future__ import annotations

import enum

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hadahw.params import AcceleratorConfig
from hadahw.program import (DESCRIPTOR_BYTES, DESCRIPTOR_FIELDS, FLAG_FINAL, IGNORED_FIELDS, WRAPPING_FIELDS,
                             descriptor_field_bits)

from .engine import input_layout
from .layouts import act_entry_layout, descriptor_layout, weight_entry_layout

__all__ = ["Sequencer"]


class _State(enum.IntEnum):
    IDLE = 0
    FETCH = 1
    SETUP = 2
    COMPUTE = 3
    DRAIN = 4


class Sequencer(wiring.Component):
    """Program control and the engine's input stream.

    Parameters
    ----------
    config : AcceleratorConfig

    Members
    -------
    run : In(stream.Signature(32))
        Start a program at this DESC byte address; taken only while idle.
    busy : Out(1)
        A program is running (from the cycle after ``run`` is taken).
    finished : Out(1)
        One-cycle pulse when the program ends (the last cycle of ``busy``).
    fault : Out(1)
        With ``finished``: the program stopped on a bad descriptor or address.
    desc : Out(descriptor_layout(config))
        The current layer's descriptor, stable from ``layer_start`` to the layer's end; each
        field only as wide as :func:`hadahw.program.descriptor_field_bits` (a descriptor with a
        non-zero dropped bit faults, like one with a zero count).
    layer_start : Out(1)
        One-cycle pulse before a layer's first beat (resets the output stage).
    layer_done : In(1)
        The writer has stored the current layer's last output.
    desc_re, desc_raddr, desc_rdata : DESC memory read port (byte wide).
    act_re, act_raddr, act_rdata : activation memory read port (``act_entry_layout``).
    w_re, w_raddr, w_rdata : weight store read port (``weight_entry_layout``).
    beat : Out(stream.Signature(input_layout(config)))
        The engine's input.
    """

    def __init__(self, config: AcceleratorConfig):
        self.config = config
        super().__init__({
            "run": In(stream.Signature(32)),
            "busy": Out(1),
            "finished": Out(1),
            "fault": Out(1),
            "desc": Out(descriptor_layout(config)),
            "layer_start": Out(1),
            "layer_done": In(1),
            "desc_re": Out(1),
            "desc_raddr": Out(range(config.desc_bytes)),
            "desc_rdata": In(8),
            "act_re": Out(1),
            "act_raddr": Out(range(config.act_depth)),
            "act_rdata": In(act_entry_layout(config)),
            "w_re": Out(1),
            "w_raddr": Out(range(config.weight_depth)),
            "w_rdata": In(weight_entry_layout(config)),
            "beat": Out(stream.Signature(input_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        d = self.desc
        lanes, rows = cfg.lanes, cfg.rows
        nd = DESCRIPTOR_BYTES

        state = Signal(_State)
        ptr = Signal(range(cfg.desc_bytes + nd + 1))   # current descriptor's DESC address
        fcnt = Signal(range(nd + 1))
        final = d.flags[0]
        assert FLAG_FINAL == 1

        m.d.comb += [self.busy.eq(state != _State.IDLE), self.run.ready.eq(state == _State.IDLE)]

        # ---- stage A: loop counters and addresses -------------------------------------------
        # Each counter as wide as the descriptor field it runs to; input coordinates range over
        # -pad .. in_h + pad - 1, so two more bits (sign, padding) than a map dimension.  Address
        # arithmetic is modulo 2**width (see hadahw.program.WRAPPING_FIELDS).
        fw = descriptor_field_bits(cfg)
        oy, ox = Signal(fw["out_h"], name="oy"), Signal(fw["out_w"], name="ox")
        g = Signal(fw["passes"], name="g")
        ky, kx = Signal(fw["kh"], name="ky"), Signal(fw["kw"], name="kx")
        j = Signal(fw["wpp"], name="j")
        iy0, ix0, iy, ix = (Signal(signed(max(fw["in_h"], fw["in_w"]) + 2), name=n)
                            for n in ("iy0", "ix0", "iy", "ix"))
        orow, org, krow, aaddr = (Signal(fw["first_addr"], name=n) for n in ("orow", "org", "krow", "aaddr"))
        waddr = Signal(fw["weight_addr"])
        wait = Signal(fw["pace"])
        overflow = Signal()  # the descriptor being fetched has a non-zero bit the register drops
        kpos_bits = max(1, cfg.beta_w.bit_length() - 1)
        kpos = Signal(kpos_bits)

        last_j = j == d.wpp - 1
        last_kx = kx == d.kw - 1
        last_ky = ky == d.kh - 1
        last_t = last_j & last_kx & last_ky
        last_g = g == d.passes - 1
        last_ox = ox == d.out_w - 1
        last_oy = oy == d.out_h - 1
        count = Signal(range(lanes + 1))
        m.d.comb += count.eq(Mux(last_j, d.last_count, lanes))
        kpos_next = (kpos + count)[:kpos_bits]
        pad = ~((iy >= 0) & (iy < d.in_h) & (ix >= 0) & (ix < d.in_w))
        a_valid = (state == _State.COMPUTE) & (wait == 0)

        # ---- stage B: memory data and the beat ---------------------------------------------
        b_valid, b_pad, b_last, b_seg_end = Signal(), Signal(), Signal(), Signal()
        b_count = Signal(range(lanes + 1))
        advance = ~b_valid | self.beat.ready
        beat = self.beat.payload
        m.d.comb += [
            self.beat.valid.eq(b_valid),
            beat.a.eq(Mux(b_pad, (1 << lanes) - 1, self.act_rdata.a)),
            beat.da.eq(Mux(b_pad, 0, self.act_rdata.da)),
            beat.w.eq(self.w_rdata.w),
            beat.dw.eq(self.w_rdata.dw),
            beat.count.eq(b_count),
            beat.last.eq(b_last),
            beat.seg_end.eq(b_seg_end),
            self.act_raddr.eq(aaddr),
            self.act_re.eq(advance & a_valid & ~pad),
            self.w_raddr.eq(waddr),
            self.w_re.eq(advance & a_valid),
        ]
        with m.If(advance):
            m.d.sync += [b_valid.eq(a_valid), b_pad.eq(pad), b_last.eq(last_t), b_count.eq(count),
                         b_seg_end.eq(last_t | (kpos_next == 0) if cfg.beta_w > lanes else last_t)]

        # ---- descriptor checks --------------------------------------------------------------
        zero = Const(0)
        bad = zero
        for name in ("in_h", "in_w", "kh", "kw", "stride", "pool", "out_h", "out_w", "n", "wpp",
                     "last_count", "passes", "last_rows", "out_pixels"):
            bad = bad | (getattr(d, name) == 0)
        bad = bad | (d.last_count > lanes) | (d.last_rows > rows) | (d.pool > cfg.max_pool)
        bad = bad | (~final & (d.log2_out_beta_a != cfg.beta_a.bit_length() - 1)) | overflow

        # ---- control -------------------------------------------------------------------------
        m.d.comb += [self.desc_raddr.eq(ptr + fcnt), self.layer_start.eq(0), self.finished.eq(0),
                     self.fault.eq(0)]
        with m.Switch(state):
            with m.Case(_State.IDLE):
                with m.If(self.run.valid):
                    m.d.sync += [ptr.eq(self.run.payload), fcnt.eq(0), overflow.eq(0)]
                    with m.If(self.run.payload > cfg.desc_bytes - nd):
                        # Out of range: fail at once (one busy cycle).
                        m.d.sync += [state.eq(_State.DRAIN), ptr.eq(cfg.desc_bytes)]
                    with m.Else():
                        m.d.sync += state.eq(_State.FETCH)
            with m.Case(_State.FETCH):
                m.d.comb += self.desc_re.eq(fcnt < nd)
                self._capture(m, fcnt, overflow)
                m.d.sync += fcnt.eq(fcnt + 1)
                with m.If(fcnt == nd):
                    m.d.sync += state.eq(_State.SETUP)
            with m.Case(_State.SETUP):
                with m.If(bad):
                    m.d.comb += [self.finished.eq(1), self.fault.eq(1)]
                    m.d.sync += state.eq(_State.IDLE)
                with m.Else():
                    m.d.comb += self.layer_start.eq(1)
                    m.d.sync += [
                        state.eq(_State.COMPUTE),
                        oy.eq(0), ox.eq(0), g.eq(0), ky.eq(0), kx.eq(0), j.eq(0), wait.eq(0), kpos.eq(0),
                        iy0.eq(-d.pad), ix0.eq(-d.pad), iy.eq(-d.pad), ix.eq(-d.pad),
                        orow.eq(d.first_addr), org.eq(d.first_addr), krow.eq(d.first_addr),
                        aaddr.eq(d.first_addr), waddr.eq(d.weight_addr),
                    ]
            with m.Case(_State.COMPUTE):
                with m.If(wait != 0):
                    m.d.sync += wait.eq(wait - 1)
                with m.Elif(advance):
                    with m.If(~last_t):
                        m.d.sync += [waddr.eq(waddr + 1), kpos.eq(kpos_next)]
                    with m.If(~last_j):
                        m.d.sync += [j.eq(j + 1), aaddr.eq(aaddr + 1)]
                    with m.Elif(~last_kx):
                        m.d.sync += [j.eq(0), kx.eq(kx + 1), ix.eq(ix + 1), aaddr.eq(aaddr + 1)]
                    with m.Elif(~last_ky):
                        m.d.sync += [j.eq(0), kx.eq(0), ky.eq(ky + 1), iy.eq(iy + 1), ix.eq(ix0),
                                     krow.eq(krow + d.row_entries), aaddr.eq(krow + d.row_entries)]
                    with m.Else():  # end of a pass
                        m.d.sync += [j.eq(0), kx.eq(0), ky.eq(0), kpos.eq(0), wait.eq(d.pace)]
                        with m.If(~last_g):
                            m.d.sync += [g.eq(g + 1), iy.eq(iy0), ix.eq(ix0), krow.eq(org), aaddr.eq(org),
                                         waddr.eq(waddr + 1)]
                        with m.Else():
                            m.d.sync += [g.eq(0), waddr.eq(d.weight_addr)]
                            with m.If(~last_ox):
                                m.d.sync += [ox.eq(ox + 1), ix0.eq(ix0 + d.stride), ix.eq(ix0 + d.stride),
                                             iy.eq(iy0), org.eq(org + d.col_step), krow.eq(org + d.col_step),
                                             aaddr.eq(org + d.col_step)]
                            with m.Elif(~last_oy):
                                m.d.sync += [ox.eq(0), oy.eq(oy + 1), iy0.eq(iy0 + d.stride),
                                             iy.eq(iy0 + d.stride), ix0.eq(-d.pad), ix.eq(-d.pad),
                                             orow.eq(orow + d.row_step), org.eq(orow + d.row_step),
                                             krow.eq(orow + d.row_step), aaddr.eq(orow + d.row_step)]
                            with m.Else():
                                m.d.sync += [state.eq(_State.DRAIN), wait.eq(0)]
            with m.Case(_State.DRAIN):
                with m.If(ptr >= cfg.desc_bytes):  # RUN address out of range
                    m.d.comb += [self.finished.eq(1), self.fault.eq(1)]
                    m.d.sync += state.eq(_State.IDLE)
                with m.Elif(self.layer_done):
                    with m.If(final):
                        m.d.comb += self.finished.eq(1)
                        m.d.sync += state.eq(_State.IDLE)
                    with m.Elif(ptr + 2 * nd > cfg.desc_bytes):  # no room for another descriptor
                        m.d.comb += [self.finished.eq(1), self.fault.eq(1)]
                        m.d.sync += state.eq(_State.IDLE)
                    with m.Else():
                        m.d.sync += [ptr.eq(ptr + nd), fcnt.eq(0), overflow.eq(0), state.eq(_State.FETCH)]
        return m

    def _capture(self, m: Module, fcnt: Signal, overflow: Signal) -> None:
        """Descriptor byte ``fcnt - 1`` (on ``desc_rdata``) into the bits of its field that are kept.

        A byte's dropped bits must be zero (else ``overflow``), except in wrapping address fields
        and in fields the core ignores.
        """
        d, byte = self.desc, self.desc_rdata
        widths = descriptor_field_bits(self.config)
        offset = 0
        with m.Switch(fcnt):
            for name, size, _ in DESCRIPTOR_FIELDS:
                width = widths[name]
                for b in range(size):
                    keep = max(0, min(8, width - 8 * b))
                    checked = keep < 8 and name not in WRAPPING_FIELDS + IGNORED_FIELDS
                    if keep or checked:
                        with m.Case(offset + b + 1):
                            if keep:
                                m.d.sync += getattr(d, name)[8 * b:8 * b + keep].eq(byte[:keep])
                            if checked:
                                with m.If(byte[keep:] != 0):
                                    m.d.sync += overflow.eq(1)
                offset += size
