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
(arithmetic modulo 2**16).  A padding position reads nothing and is sent as a word with no valid
lane (``count = 0``).  ``seg_end`` (the word closes a weight segment) comes from a running
reduction index modulo ``beta_w``.  Loop ends are ``counter + 1 == field`` on the counter's own
incrementer, and the word's input coordinates are the window origin plus the kernel position.
The descriptor is checked while it is fetched, byte by byte (dropped bits, zero counts, array
limits).  Synthesised alone for the 1x8 board configuration (yosys 0.70 ``synth_ice40``,
``bench/breakdown_bench.py``): 695 LUT4, 297 SB_CARRY, 427 flip-flops, from 897/303/437 before
this organisation.

Pipeline: stage A (counters, addresses) -> synchronous memory reads -> stage B (read data and the
beat's flags) -> engine.  Stage A advances, and the memories read, only when stage B is empty or
the engine takes its beat, so back-pressure loses or repeats nothing.
"""

from __future__ import annotations

import enum

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hadahw.params import AcceleratorConfig
from hadahw.program import (DESCRIPTOR_BYTES, DESCRIPTOR_FIELDS, FLAG_FINAL, IGNORED_FIELDS, WRAPPING_FIELDS,
                             descriptor_field_bits)

from .engine import input_layout
from .layouts import act_entry_layout, descriptor_layout, weight_entry_layout

__all__ = ["Sequencer", "flag_bit"]


def flag_bit(flags, flag: int):
    """The bit of a descriptor's ``flags`` field that holds ``flag`` (one of ``hadahw.program.FLAG_*``)."""
    assert flag > 0 and flag & (flag - 1) == 0, "a flag is a single bit"
    return flags[flag.bit_length() - 1]


class _State(enum.IntEnum):
    IDLE = 0
    FETCH = 1
    SETUP = 2
    COMPUTE = 3
    DRAIN = 4
    FAIL = 5  # RUN address out of range: one busy cycle, then a fault


#: Descriptor fields that count something (loop bounds, sizes): a zero one is a fault.
NONZERO_FIELDS = ("in_h", "in_w", "kh", "kw", "stride", "pool", "out_h", "out_w", "n", "wpp", "last_count",
                  "passes", "last_rows", "out_pixels")


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
        # DESC read address: RUN's address, then one up per descriptor byte read, so that after a
        # fetch it is the next descriptor's address (no base + offset adder).
        raddr = Signal(range(cfg.desc_bytes + 1))
        fcnt = Signal(range(nd + 1))
        bad = Signal()  # the descriptor being fetched failed a check (see _capture)
        final = flag_bit(d.flags, FLAG_FINAL)

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
        cw = max(fw["in_h"], fw["in_w"]) + 2
        iy0, ix0, iy, ix = (Signal(signed(cw), name=n) for n in ("iy0", "ix0", "iy", "ix"))
        orow, org, krow, aaddr = (Signal(fw["first_addr"], name=n) for n in ("orow", "org", "krow", "aaddr"))
        waddr = Signal(fw["weight_addr"])
        wait = Signal(fw["pace"])
        wait_zero = Signal()     # wait == 0, a register for the same reason as the `last_x` flags
        kpos_bits = max(1, cfg.beta_w.bit_length() - 1)
        kpos = Signal(kpos_bits)

        # Terminal counts are registers, `last_x` <=> `x == field - 1`, set when x is loaded (from
        # `x + 2 == field`): the loop-end flags feed the enables and next-value muxes of every
        # counter and address register, so they must not wait for an incrementer and a compare
        # (that chain was the board build's longest path).
        def step(counter):
            inc = Signal.like(counter, name=f"{counter.name}_inc")
            m.d.comb += inc.eq(counter + 1)      # x runs 0 .. field - 1, so x + 1 fits x's width
            return inc, Signal(name=f"last_{counter.name}")

        j_inc, last_j = step(j)
        kx_inc, last_kx = step(kx)
        ky_inc, last_ky = step(ky)
        g_inc, last_g = step(g)
        ox_inc, last_ox = step(ox)
        oy_inc, last_oy = step(oy)
        last_row = Signal()  # the word closes a kernel row
        last_t = Signal()    # ... a pass
        last_px = Signal()   # ... an output pixel (its last pass)
        new_row = Signal()   # ... an output row
        m.d.comb += [last_row.eq(last_j & last_kx), last_t.eq(last_row & last_ky), last_px.eq(last_t & last_g),
                     new_row.eq(last_px & last_ox)]
        count = Signal(range(lanes + 1))
        m.d.comb += count.eq(Mux(last_j, d.last_count, lanes))
        kpos_next = (kpos + count)[:kpos_bits]
        # Padding: a coordinate outside 0 .. size - 1; a negative one is >= 2**(cw-1) as unsigned,
        # above any map size, so one unsigned comparison per axis covers both edges.
        pad = (iy.as_unsigned() >= d.in_h) | (ix.as_unsigned() >= d.in_w)
        a_valid = (state == _State.COMPUTE) & wait_zero

        # ---- stage B: memory data and the beat ---------------------------------------------
        b_valid, b_last, b_seg_end = Signal(), Signal(), Signal()
        b_count = Signal(range(lanes + 1))
        advance = ~b_valid | self.beat.ready
        beat = self.beat.payload
        # A padding position is a word with no valid lane (count 0): the engine ignores its signs
        # and delta codes, so the stale memory data needs no masking.
        m.d.comb += [
            self.beat.valid.eq(b_valid),
            beat.a.eq(self.act_rdata.a),
            beat.da.eq(self.act_rdata.da),
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
            m.d.sync += [b_valid.eq(a_valid), b_last.eq(last_t), b_count.eq(Mux(pad, 0, count)),
                         b_seg_end.eq(last_t | (kpos_next == 0) if cfg.beta_w > lanes else last_t)]

        # ---- stage A updates ----------------------------------------------------------------
        # `setup` (re)starts every counter for the layer; `adv` is a word issued.  Each register
        # has one next value, chosen by the loop level the word closes (a flat mux chain shared
        # by the address registers), instead of one assignment per branch of the loop nest.
        # After the layer's last word the registers take don't-care values (the next layer's
        # set-up overwrites them all).
        setup = Signal()
        adv = Signal()
        m.d.comb += adv.eq(advance & a_valid)

        def counter(reg, inc, last, field, enable):
            with m.If(setup | enable):
                m.d.sync += [reg.eq(Mux(setup | last, 0, inc)),
                             last.eq(Mux(setup | last, field == 1, (reg + 2) == field))]

        counter(j, j_inc, last_j, d.wpp, adv)
        counter(kx, kx_inc, last_kx, d.kw, adv & last_j)
        counter(ky, ky_inc, last_ky, d.kh, adv & last_row)
        counter(g, g_inc, last_g, d.passes, adv & last_t)
        counter(ox, ox_inc, last_ox, d.out_w, adv & last_px)
        counter(oy, oy_inc, last_oy, d.out_h, adv & new_row)
        with m.If(setup | adv):
            m.d.sync += [waddr.eq(Mux(setup | last_px, d.weight_addr, waddr + 1)),
                         kpos.eq(Mux(setup | last_t, 0, kpos_next))]
        with m.If(setup):
            m.d.sync += [wait.eq(0), wait_zero.eq(1)]
        with m.Elif(~wait_zero):
            m.d.sync += [wait.eq(wait - 1), wait_zero.eq(wait == 1)]
        with m.Elif(adv & last_t):
            layer_end = new_row & last_oy
            m.d.sync += [wait.eq(Mux(layer_end, 0, d.pace)), wait_zero.eq(layer_end | (d.pace == 0))]

        # Input coordinates: the window origin (iy0, ix0) moves by `stride` per output pixel; x
        # restarts at -pad on a new output row (and at set-up).  The word's own coordinates are
        # origin + kernel position: an adder each, cheaper than two more registers with their
        # increment and reload muxes.
        npad = Signal(signed(cw))
        m.d.comb += [npad.eq(-d.pad), ix.eq(ix0 + kx), iy.eq(iy0 + ky)]
        with m.If(setup | (adv & last_px)):
            m.d.sync += ix0.eq(Mux(setup | new_row, npad, ix0 + d.stride))
        with m.If(setup | (adv & new_row)):
            m.d.sync += iy0.eq(Mux(setup, npad, iy0 + d.stride))

        # Activation addresses: the word's entry `aaddr`, its kernel row's first entry `krow`, its
        # window's `org`, its output row's `orow`.
        orow_new, org_new, krow_new = (Signal.like(orow, name=n) for n in ("orow_new", "org_new", "krow_new"))
        m.d.comb += [
            orow_new.eq(Mux(setup, d.first_addr, orow + d.row_step)),
            org_new.eq(Mux(setup | new_row, orow_new, Mux(last_px, org + d.col_step, org))),
            krow_new.eq(Mux(setup | last_ky, org_new, krow + d.row_entries)),
        ]
        with m.If(setup | adv):
            m.d.sync += aaddr.eq(Mux(setup | last_row, krow_new, aaddr + 1))
        with m.If(setup | (adv & last_row)):
            m.d.sync += krow.eq(krow_new)
        with m.If(setup | (adv & last_t)):
            m.d.sync += org.eq(org_new)
        with m.If(setup | (adv & new_row)):
            m.d.sync += orow.eq(orow_new)

        # ---- control -------------------------------------------------------------------------
        # Checks of the fetched descriptor (zero counts, dropped bits, limits of the array) are
        # accumulated into `bad` byte by byte while fetching (_capture), so set-up reads one
        # register: set-up feeds every counter's reload, and the comparisons in front of it were
        # the board build's longest path at 30 MHz.
        m.d.comb += [self.desc_raddr.eq(raddr), self.layer_start.eq(0), self.finished.eq(0),
                     self.fault.eq(0), setup.eq(0)]
        with m.Switch(state):
            with m.Case(_State.IDLE):
                with m.If(self.run.valid):
                    m.d.sync += [raddr.eq(self.run.payload), fcnt.eq(0), bad.eq(0)]
                    with m.If(self.run.payload > cfg.desc_bytes - nd):
                        # Out of range: fail at once (one busy cycle).
                        m.d.sync += state.eq(_State.FAIL)
                    with m.Else():
                        m.d.sync += state.eq(_State.FETCH)
            with m.Case(_State.FETCH):
                with m.If(fcnt < nd):
                    m.d.comb += self.desc_re.eq(1)
                    m.d.sync += raddr.eq(raddr + 1)
                self._capture(m, fcnt, bad, fcnt < nd)
                m.d.sync += fcnt.eq(fcnt + 1)
                with m.If(fcnt == nd):
                    m.d.sync += state.eq(_State.SETUP)
            with m.Case(_State.SETUP):
                with m.If(bad):
                    m.d.comb += [self.finished.eq(1), self.fault.eq(1)]
                    m.d.sync += state.eq(_State.IDLE)
                with m.Else():
                    m.d.comb += [self.layer_start.eq(1), setup.eq(1)]
                    m.d.sync += state.eq(_State.COMPUTE)
            with m.Case(_State.COMPUTE):
                with m.If(adv & new_row & last_oy):
                    m.d.sync += state.eq(_State.DRAIN)
            with m.Case(_State.DRAIN):
                with m.If(self.layer_done):
                    with m.If(final):
                        m.d.comb += self.finished.eq(1)
                        m.d.sync += state.eq(_State.IDLE)
                    # `raddr` is the next descriptor's address: is there room for one?
                    with m.Elif(raddr > cfg.desc_bytes - nd):
                        m.d.comb += [self.finished.eq(1), self.fault.eq(1)]
                        m.d.sync += state.eq(_State.IDLE)
                    with m.Else():
                        m.d.sync += [fcnt.eq(0), bad.eq(0), state.eq(_State.FETCH)]
            with m.Case(_State.FAIL):  # RUN address out of range
                m.d.comb += [self.finished.eq(1), self.fault.eq(1)]
                m.d.sync += state.eq(_State.IDLE)
        return m

    def _capture(self, m: Module, fcnt: Signal, bad: Signal, fetching) -> None:
        """Descriptor byte ``fcnt - 1`` (on ``desc_rdata``) into the bits of its field that are kept.

        The byte also feeds the descriptor checks, which set ``bad``: a dropped bit must be zero
        (except in wrapping address fields and in fields the core ignores), and a count field
        must not be zero.  A two-byte count is zero when both bytes are: the low byte's
        ``lo_zero`` flag (one register shared by all fields, which are fetched in turn) waits for
        the high byte.  Comparing whole bytes is enough: a field whose kept bits are zero but
        whose dropped bits are not is bad anyway.

        What each byte position checks is a constant table, looked up with ``fcnt`` one cycle
        ahead and registered (``fetching``: the lookup is for a byte being read), so the check
        is a few gates after the memory's output instead of a decode of ``fcnt`` followed by a
        chain of per-field comparisons (that was the board build's longest path at 30 MHz).
        """
        d, byte = self.desc, self.desc_rdata
        widths = descriptor_field_bits(self.config)
        # Per byte index: (mask of bits that must be zero, a one-byte count, the low byte of a
        # two-byte count, the high byte of one).
        table = []
        for name, size, _ in DESCRIPTOR_FIELDS:
            width, counted = widths[name], name in NONZERO_FIELDS
            for b in range(size):
                keep = max(0, min(8, width - 8 * b))
                checked = keep < 8 and name not in WRAPPING_FIELDS + IGNORED_FIELDS
                table.append((0xFF & ~((1 << keep) - 1) if checked else 0,
                              counted and size == 1, counted and size > 1 and b < size - 1,
                              counted and size > 1 and b == size - 1))
        assert all(size <= 2 for name, size, _ in DESCRIPTOR_FIELDS if name in NONZERO_FIELDS)
        zmask, single, lo, hi = Signal(8), Signal(), Signal(), Signal()
        with m.If(fetching):
            with m.Switch(fcnt):
                for index, (mask_bits, is_single, is_lo, is_hi) in enumerate(table):
                    if mask_bits or is_single or is_lo or is_hi:
                        with m.Case(index):
                            m.d.sync += [zmask.eq(mask_bits), single.eq(is_single), lo.eq(is_lo), hi.eq(is_hi)]
                with m.Default():
                    m.d.sync += [zmask.eq(0), single.eq(0), lo.eq(0), hi.eq(0)]
        with m.Else():
            m.d.sync += [zmask.eq(0), single.eq(0), lo.eq(0), hi.eq(0)]

        byte_zero = byte == 0
        lo_zero = Signal()
        with m.If(lo):
            m.d.sync += lo_zero.eq(byte_zero)
        with m.If(((byte & zmask) != 0) | (byte_zero & (single | (hi & lo_zero)))):
            m.d.sync += bad.eq(1)

        # Limits that depend on the array, checked when a field's last byte arrives (its other
        # kept bits are in the register by then; its dropped bits are checked above).
        cfg = self.config
        limits = {"last_count": lambda v: v > cfg.lanes, "last_rows": lambda v: v > cfg.rows,
                  "pool": lambda v: v > cfg.max_pool,
                  "log2_out_beta_a": lambda v: ~flag_bit(d.flags, FLAG_FINAL) & (v != cfg.beta_a.bit_length() - 1)}
        offset = 0
        with m.Switch(fcnt):
            for name, size, _ in DESCRIPTOR_FIELDS:
                width = widths[name]
                for b in range(size):
                    keep = max(0, min(8, width - 8 * b))
                    last = b == size - 1
                    if keep or (last and name in limits):
                        with m.Case(offset + b + 1):
                            if keep:
                                m.d.sync += getattr(d, name)[8 * b:8 * b + keep].eq(byte[:keep])
                            if last and name in limits:
                                value = Cat(getattr(d, name)[:min(width, 8 * b)], byte[:keep]) if b else byte[:keep]
                                with m.If(limits[name](value)):
                                    m.d.sync += bad.eq(1)
                offset += size
