"""ActWriter: assembles a layer's outputs into activation-memory entries.

Outputs arrive pixel by pixel in raster order, channels in order, so the entries are written at
consecutive addresses from the layer's ``out_addr`` (the layout of :mod:`hadahw.program`):

* a binarized layer gets one :class:`~hadahw.rtl.binarizer.Binarizer` beat per ``beta_a``
  segment.  With ``beta_a <= L`` the ``L / beta_a`` segments of a word are gathered in a word
  register and the word is written when full or at the pixel's last segment (one cycle per
  segment).  With ``beta_a > L`` a segment is captured and written as ``ceil(n_j / L)`` words,
  one per cycle, each with the segment's code.
* the final layer gets requantized values; each is written, sign-extended to
  ``output_value_bytes`` bytes, over ``entries_per_output`` entries, one per cycle from the cycle
  it arrives, straight from the input (the source holds it; it is taken with its last entry);
  with ``narrow`` (:data:`hadahw.program.FLAG_NARROW`: the values are saturated narrow enough)
  each value is sign-extended into a single entry instead; with ``pack_bytes`` = 1 or 2
  (:data:`hadahw.program.FLAG_PACKED`: they fit that many bytes) the values' low bytes are
  gathered ``act_entry_bytes // pack_bytes`` to an entry, which is written when full or at the
  pixel's last value.

``done`` rises once the layer's ``out_pixels``-th pixel has been written (for the final layer one
cycle after its last entry); ``start`` clears it.  Full-segment beats are taken every cycle;
multi-entry beats as their last entry is written, so a producer that spaces them by their entry
count (the core does) never waits.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hadahw.params import AcceleratorConfig
from hadahw.program import MemoryMap, descriptor_field_bits

from .layouts import act_entry_layout

__all__ = ["ActWriter"]


class ActWriter(wiring.Component):
    """Writes binarized segments or final values into the activation memory.

    Parameters
    ----------
    config : AcceleratorConfig
    segment_layout : Layout
        Payload of ``seg`` (the binarizer's output layout: ``signs``, ``delta``, ``length``,
        ``first``, ``last``).

    Members
    -------
    seg : In(stream.Signature(segment_layout))
        Segments of a binarized layer.
    val : In(stream.Signature({y, last}))
        Values of the final layer (``y`` signed ``config.y_bits``).
    final : In(1)
        Which input the layer uses.
    narrow : In(1)
        Final layer: one entry per value (``FLAG_NARROW``) instead of ``entries_per_output``.
    pack_bytes : In(2)
        Final layer, with ``narrow``: 0 (not packed), or bytes per packed value (``FLAG_PACKED``;
        ignored when ``config.pack_outputs`` is false).
    out_addr : In(16)
        Entry of the layer's first output word (loaded on ``start``).
    out_pixels : In(16)
        Output pixels of the layer (below ``2**descriptor_field_bits(config)["out_pixels"]``, what
        the core's descriptor register holds; higher bits are ignored).
    start : In(1)
        Layer start: load the address, clear the pixel count and ``done``.
    done : Out(1)
    we, waddr, wdata : Out
        Entry write (``wdata`` is the whole entry, ``8 * act_entry_bytes`` bits).
    """

    def __init__(self, config: AcceleratorConfig, segment_layout):
        self.config = config
        self.mm = MemoryMap(config)
        super().__init__({
            "seg": In(stream.Signature(segment_layout)),
            "val": In(stream.Signature(data.StructLayout({"y": signed(config.y_bits), "last": unsigned(1)}))),
            "final": In(1),
            "narrow": In(1),
            "pack_bytes": In(2),
            "out_addr": In(16),
            "out_pixels": In(16),
            "start": In(1),
            "done": Out(1),
            "we": Out(1),
            "waddr": Out(range(config.act_depth)),
            "wdata": Out(8 * self.mm.act_entry_bytes),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, mm = self.config, self.mm
        lanes, beta_a = cfg.lanes, cfg.beta_a
        entry = act_entry_layout(cfg)

        # Only as wide as the core's descriptor register fields (hadahw.program.descriptor_field_bits).
        addr = Signal(len(self.waddr))
        pixels = Signal(max(1, descriptor_field_bits(cfg)["out_pixels"]))
        pixel_end = Signal()       # this cycle's write completes a pixel
        m.d.comb += self.waddr.eq(addr)
        done_r = Signal()
        m.d.comb += self.done.eq(done_r)

        # --- binarized segments ---------------------------------------------------------------
        seg_we, seg_data, seg_pixel_end = Signal(), Signal(entry), Signal()
        seg = self.seg.payload
        if beta_a <= lanes:
            per_word = lanes // beta_a
            q = Signal(range(per_word))
            word = Signal(entry)
            new = Signal(entry)
            m.d.comb += self.seg.ready.eq(1)
            take = self.seg.valid & ~self.final
            m.d.comb += [new.a.eq(word.a | (seg.signs[:beta_a] << (q * beta_a))[:lanes])]
            for k in range(per_word):
                m.d.comb += new.da[k].eq(Mux(q == k, seg.delta[:cfg.act_bits], word.da[k]))
            full = (q == per_word - 1) | seg.last
            m.d.comb += [seg_we.eq(take & full), seg_data.eq(new), seg_pixel_end.eq(take & seg.last)]
            with m.If(self.start):
                m.d.sync += [q.eq(0), word.eq(0)]
            with m.Elif(take):
                with m.If(full):
                    m.d.sync += [q.eq(0), word.eq(0)]
                with m.Else():
                    m.d.sync += [q.eq(q + 1), word.eq(new)]
        else:
            span = beta_a // lanes
            busy = Signal()
            idx = Signal(range(span))
            nwords = Signal(range(span + 1))
            signs = Signal(beta_a)
            delta = Signal(cfg.act_bits)
            last = Signal()
            at_end = busy & (idx == nwords - 1)
            m.d.comb += self.seg.ready.eq(~busy | at_end)
            take = self.seg.valid & self.seg.ready & ~self.final
            m.d.comb += [
                seg_we.eq(busy),
                seg_data.a.eq(signs.word_select(idx, lanes)),
                seg_data.da[0].eq(delta),
                seg_pixel_end.eq(at_end & last),
            ]
            with m.If(self.start):
                m.d.sync += busy.eq(0)
            with m.Else():
                with m.If(busy):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(at_end):
                        m.d.sync += busy.eq(0)
                with m.If(take):
                    m.d.sync += [busy.eq(1), idx.eq(0), signs.eq(seg.signs[:beta_a]),
                                 delta.eq(seg.delta[:cfg.act_bits]), last.eq(seg.last),
                                 nwords.eq((seg.length + lanes - 1) >> (lanes.bit_length() - 1))]

        # --- final values ---------------------------------------------------------------------
        # A value's entries are written straight from the input, one per cycle from the cycle it
        # arrives; it is taken with its last entry (the source holds it until then), so no copy
        # of it is kept.  The pixel count (and ``done``) follows one cycle after the last entry,
        # the timing of a writer that takes a value on arrival and writes it in the next cycles.
        k = mm.entries_per_output
        ebits = 8 * mm.act_entry_bytes
        vbits = 8 * mm.output_value_bytes
        y = self.val.payload.y
        ext = Cat(Cat(y, y[-1].replicate(max(0, vbits - len(y))))[:vbits], Const(0, max(0, k * ebits - vbits)))
        v_we = self.val.valid & self.final
        v_pixel_end = Signal()             # a pixel's last value has its last entry written
        if k > 1:
            vidx = Signal(range(k))         # entry of the presented value written this cycle
            v_last_entry = (vidx == k - 1) | self.narrow   # narrow: entry 0 is y sign-extended
            m.d.comb += [self.val.ready.eq(v_last_entry),
                         v_pixel_end.eq(v_we & v_last_entry & self.val.payload.last)]
            with m.If(self.start):
                m.d.sync += vidx.eq(0)
            with m.Elif(v_we):
                m.d.sync += vidx.eq(Mux(v_last_entry, 0, vidx + 1))
            v_data = ext.word_select(vidx, ebits)
        else:
            m.d.comb += [self.val.ready.eq(1), v_pixel_end.eq(v_we & self.val.payload.last)]
            v_data = ext[:ebits]
        v_pixel_end_r = Signal()
        m.d.sync += v_pixel_end_r.eq(v_pixel_end & ~self.start)

        # Packed values: slot `slot` of the entry gathered in `pk` takes the value's low byte(s); the
        # entry is written in the cycle its last slot is filled (full, or the pixel's last value),
        # so the timing of `done` is that of narrow values.
        # Only built with ``config.pack_outputs`` (the compiler packs nothing without it).
        nb = mm.act_entry_bytes
        pk_new = Signal(8 * nb)
        pk_full = Signal()
        packing_layer = Signal()
        if cfg.pack_outputs:
            pack1, pack2 = self.pack_bytes == 1, self.pack_bytes == 2
            pk = Signal(8 * nb)
            slot = Signal(range(nb))
            m.d.comb += [packing_layer.eq(self.final & (self.pack_bytes != 0)),
                         pk_full.eq(Mux(pack2, slot == nb // 2 - 1, slot == nb - 1) | self.val.payload.last),
                         pk_new.eq(pk)]
            for b in range(nb):
                with m.If(pack1 & (slot == b)):
                    m.d.comb += pk_new.word_select(b, 8).eq(y[:8])
                if b < nb // 2 * 2:
                    with m.If(pack2 & (slot == b // 2)):
                        m.d.comb += pk_new.word_select(b, 8).eq(y.word_select(b % 2, 8))
            with m.If(self.start):
                m.d.sync += [slot.eq(0), pk.eq(0)]
            with m.Elif(v_we & packing_layer):
                with m.If(pk_full):
                    m.d.sync += [slot.eq(0), pk.eq(0)]
                with m.Else():
                    m.d.sync += [slot.eq(slot + 1), pk.eq(pk_new)]

        # --- write port and progress ---------------------------------------------------------
        with m.If(packing_layer):
            m.d.comb += [self.we.eq(v_we & pk_full), self.wdata.eq(pk_new), pixel_end.eq(v_pixel_end_r)]
        with m.Elif(self.final):
            m.d.comb += [self.we.eq(v_we), self.wdata.eq(v_data), pixel_end.eq(v_pixel_end_r)]
        with m.Else():
            m.d.comb += [self.we.eq(seg_we), self.wdata.eq(seg_data.as_value()), pixel_end.eq(seg_pixel_end)]

        with m.If(self.start):
            m.d.sync += [addr.eq(self.out_addr), pixels.eq(0), done_r.eq(0)]
        with m.Else():
            with m.If(self.we):
                m.d.sync += addr.eq(addr + 1)
            with m.If(pixel_end):
                m.d.sync += pixels.eq(pixels + 1)
                with m.If((pixels + 1)[:len(pixels)] == self.out_pixels[:len(pixels)]):
                    m.d.sync += done_r.eq(1)
        return m
