"""HadaCore: the pin-free accelerator core that runs a whole network from on-chip memories.

The host (a :class:`~hadahw.rtl.hostlink.HostLink`) fills the memories over the host bus with
the images of :func:`hadahw.program.compile_network` and the packed input, starts RUN(addr), polls
``busy``/``done``, and reads the output buffer back; nothing is recomputed on the host.

Datapath::

    DESC ──► Sequencer ──► (weight store, activation memory) ──► DotEngine (R x L)
                                                                    │ R accumulators per pass
             Serializer ◄───────────────────────────────────────────┘
                 │ one channel per beat
                 ├─► MaxPool (layers that pool) ─┐
                 └───────────────────────────────┴─► Requantizer ─┬─► Binarizer ─► ActWriter ─► activation memory
                                                                  └──(final layer)────► ActWriter (wide values)

Memory map, descriptor format and timing: :mod:`hadahw.program`.  All memories are EBR-sized
``lib.memory`` instances (:func:`hadahw.program.ebr_usage`).

Host bus behaviour: writes take one cycle; a read answers on the cycle after its request is
taken; both, and RUN, are held off (``ready`` low) while a program runs.  RUN makes ``busy`` high
from the next cycle; ``cycles`` counts the cycles ``busy`` is high; at the end ``done`` rises and
``run_status`` is ``Status.OK`` or ``Status.RUN_FAULT`` (a descriptor with a zero or
out-of-range field, or a RUN address with no room for a descriptor).  Reads of the
requantizer-parameter region return 0 (it is write-only).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, connect

from hadahw.params import AcceleratorConfig
from hadahw.program import FLAG_FINAL, FLAG_NARROW, FLAG_PACKED, FLAG_RELU, FLAG_SATURATE, MemoryMap
from hadahw.protocol import Space, Status

from .binarizer import Binarizer
from .engine import DotEngine
from .hostbus import SPACE_BITS, HostBusSignature
from .memories import EntryMemory, EntryStager
from .pool import MaxPool
from .requant import Requantizer
from .sequencer import Sequencer, flag_bit
from .serializer import Serializer, value_layout
from .streams import SkidBuffer
from .writer import ActWriter

__all__ = ["HadaCore"]


class HadaCore(wiring.Component):
    """The accelerator core, host side on a :class:`~hadahw.rtl.hostbus.HostBusSignature`.

    Parameters
    ----------
    config : AcceleratorConfig

    Attributes
    ----------
    memory_map : MemoryMap
        Sizes and layouts (``memory_map.space_sizes`` is what the host bus decodes).
    weights, acts, desc : EntryMemory
        The memories (simulation may read or poke ``core.weights.data[e]``).
    engine : DotEngine
    sequencer : Sequencer

    Members
    -------
    bus : In(HostBusSignature(memory_map.space_sizes))
    """

    def __init__(self, config: AcceleratorConfig):
        if not isinstance(config, AcceleratorConfig):
            self._MustUse__silence = True  # never built: no "created but never used" warning
            raise TypeError(f"config must be an AcceleratorConfig, not {type(config).__name__}")
        self.config = config
        self.memory_map = mm = MemoryMap(config)
        self.weights = EntryMemory(nbytes=mm.weight_entry_bytes, depth=config.weight_depth, stride=mm.weight_stride,
                                   spram=config.weight_memory == "spram")
        self.acts = EntryMemory(nbytes=mm.act_entry_bytes, depth=config.act_depth, stride=mm.act_stride,
                                core_write=True)
        self.desc = EntryMemory(nbytes=1, depth=config.desc_bytes, stride=1)
        self.engine = DotEngine(config)
        self.sequencer = Sequencer(config)
        self.writer = None  # built in elaborate (needs the binarizer's layout)
        super().__init__({"bus": In(HostBusSignature(mm.space_sizes))})

    def elaborate(self, platform):
        m = Module()
        cfg, mm = self.config, self.memory_map
        bus = self.bus
        m.submodules.weights = weights = self.weights
        m.submodules.acts = acts = self.acts
        m.submodules.desc = desc = self.desc
        m.submodules.params = stager = EntryStager(nbytes=mm.param_entry_bytes, depth=cfg.param_depth,
                                                   stride=mm.param_stride, width=mm.param_entry_bits)
        m.submodules.seq = seq = self.sequencer
        m.submodules.engine = engine = self.engine
        m.submodules.ser = ser = Serializer(cfg, max_spacing=mm.entries_per_output)
        # Register slices cut the stream's ready chain, which would otherwise run from the writer
        # back through the requantizer, pool, serializer, engine and sequencer into the memories'
        # read enables in one cycle (Fmax); each costs one cycle of latency per layer.  This one
        # sits between the serializer and the pool/requantizer, the other after the requantizer.
        m.submodules.slice = vals = SkidBuffer(value_layout(cfg))
        # max_pool == 1: a pass-through MaxPool with a one-entry line buffer (never selected).
        m.submodules.pool = pool = MaxPool(acc_width=cfg.acc_bits, max_width=cfg.max_pool_width,
                                           max_channels=cfg.max_channels, max_window=cfg.max_pool)
        m.submodules.rq = rq = Requantizer(acc_width=cfg.acc_bits, channels=cfg.param_depth,
                                           mult_width=cfg.mult_bits, bias_width=cfg.bias_bits,
                                           max_shift=cfg.max_shift, max_out_bits=16)
        m.submodules.bin = binz = Binarizer(y_bits=cfg.act_bits, max_beta_a=cfg.beta_a)
        m.submodules.writer = writer = self.writer = ActWriter(cfg, binz.out_layout)
        assert rq.y_width == cfg.y_bits

        busy = seq.busy
        d = seq.desc
        final, relu, saturate, narrow, packed = (flag_bit(d.flags, f) for f in (FLAG_FINAL, FLAG_RELU, FLAG_SATURATE,
                                                                                  FLAG_NARROW, FLAG_PACKED))
        pooling = d.pool != 1

        # ---- host bus: writes ---------------------------------------------------------------
        wr, rq_bus, rs, run = bus.write, bus.read_req, bus.read_resp, bus.run
        m.d.comb += wr.ready.eq(~busy)
        w_take = wr.valid & ~busy
        in_params = wr.payload.addr >= mm.param_base
        m.d.comb += [
            weights.host_addr.eq(wr.payload.addr), weights.host_wdata.eq(wr.payload.data),
            weights.host_we.eq(w_take & (wr.payload.space == Space.WEIGHTS) & ~in_params),
            stager.host_addr.eq(wr.payload.addr - mm.param_base), stager.host_wdata.eq(wr.payload.data),
            stager.host_we.eq(w_take & (wr.payload.space == Space.WEIGHTS) & in_params),
            acts.host_wdata.eq(wr.payload.data),
            acts.host_we.eq(w_take & (wr.payload.space == Space.ACTS)),
            desc.host_wdata.eq(wr.payload.data),
            desc.host_we.eq(w_take & (wr.payload.space == Space.DESC)),
            rq.param_we.eq(stager.we), rq.param_addr.eq(stager.addr),
            rq.param_data.as_value().eq(stager.data),
        ]

        # ---- host bus: reads ----------------------------------------------------------------
        resp_valid = Signal()
        resp_space = Signal(SPACE_BITS)
        resp_params = Signal()
        # A write takes the host port first; a read waits for a cycle without one.
        m.d.comb += [rq_bus.ready.eq(~busy & ~wr.valid & (~resp_valid | rs.ready)), rs.valid.eq(resp_valid)]
        r_take = rq_bus.valid & rq_bus.ready
        r_space, r_addr = rq_bus.payload.space, rq_bus.payload.addr
        r_params = r_addr >= mm.param_base
        with m.If(r_take):
            m.d.sync += [resp_valid.eq(1), resp_space.eq(r_space), resp_params.eq(r_params)]
        with m.Elif(rs.ready):
            m.d.sync += resp_valid.eq(0)
        m.d.comb += [
            weights.host_re.eq(r_take & (r_space == Space.WEIGHTS) & ~r_params),
            acts.host_re.eq(r_take & (r_space == Space.ACTS)),
            desc.host_re.eq(r_take & (r_space == Space.DESC)),
        ]
        for mem in (weights, acts, desc):
            m.d.comb += mem.host_addr.eq(Mux(wr.valid, wr.payload.addr, r_addr))
        with m.Switch(resp_space):
            with m.Case(Space.WEIGHTS):
                m.d.comb += rs.payload.eq(Mux(resp_params, 0, weights.host_rdata))
            with m.Case(Space.ACTS):
                m.d.comb += rs.payload.eq(acts.host_rdata)
            with m.Case(Space.DESC):
                m.d.comb += rs.payload.eq(desc.host_rdata)

        # ---- run control and status -----------------------------------------------------------
        m.d.comb += [
            seq.run.valid.eq(run.valid & ~resp_valid),
            seq.run.payload.eq(run.payload),
            run.ready.eq(seq.run.ready & ~resp_valid),
            bus.busy.eq(busy),
        ]
        with m.If(run.valid & run.ready):
            m.d.sync += [bus.done.eq(0), bus.cycles.eq(0), bus.run_status.eq(Status.OK)]
        with m.Elif(busy):
            m.d.sync += bus.cycles.eq(bus.cycles + 1)
        with m.If(seq.finished):
            m.d.sync += [bus.done.eq(1), bus.run_status.eq(Mux(seq.fault, Status.RUN_FAULT, Status.OK))]

        # ---- memories <-> sequencer ----------------------------------------------------------
        for mem in (weights, acts, desc):
            m.d.comb += mem.core.eq(busy)
        m.d.comb += [
            desc.core_re.eq(seq.desc_re), desc.core_raddr.eq(seq.desc_raddr), seq.desc_rdata.eq(desc.core_rdata),
            acts.core_re.eq(seq.act_re), acts.core_raddr.eq(seq.act_raddr),
            seq.act_rdata.as_value().eq(acts.core_rdata),
            weights.core_re.eq(seq.w_re), weights.core_raddr.eq(seq.w_raddr),
            seq.w_rdata.as_value().eq(weights.core_rdata),
        ]
        connect(m, seq.beat, engine.i)

        # ---- output stage --------------------------------------------------------------------
        start = seq.layer_start
        m.d.comb += [
            ser.passes.eq(d.passes), ser.last_rows.eq(d.last_rows),
            ser.spacing.eq(Mux(final & ~narrow, mm.entries_per_output, 1)), ser.start.eq(start),
        ]
        connect(m, engine.o, ser.i)
        connect(m, ser.o, vals.i)
        m.d.comb += [
            pool.config.width.eq(d.out_w), pool.config.channels.eq(d.n), pool.config.window.eq(d.pool),
            rq.config.shift.eq(d.shift), rq.config.relu.eq(relu), rq.config.saturate.eq(saturate),
            rq.config.out_bits.eq(d.out_bits),
            binz.config.log2_beta_a.eq(d.log2_out_beta_a),
        ]
        # Serializer -> slice -> MaxPool (pooling layers) or straight on -> Requantizer.
        m.d.comb += [
            pool.i_stream.payload.value.eq(vals.o.payload.value),
            pool.i_stream.valid.eq(vals.o.valid & pooling),
            vals.o.ready.eq(Mux(pooling, pool.i_stream.ready, rq.i_stream.ready)),
            pool.o_stream.ready.eq(rq.i_stream.ready),
        ]
        def feed_requantizer(src):
            p = src.payload
            return [rq.i_stream.valid.eq(src.valid), rq.i_stream.payload.acc.eq(p.value),
                    rq.i_stream.payload.channel.eq(d.param_addr + p.channel),
                    rq.i_stream.payload.first.eq(p.first), rq.i_stream.payload.last.eq(p.last)]

        with m.If(pooling):
            m.d.comb += feed_requantizer(pool.o_stream)
        with m.Else():
            m.d.comb += feed_requantizer(vals.o)
        # Requantizer -> slice -> Binarizer -> writer, or (final layer) -> writer.  This slice cuts
        # the ready chain again, between the binarizer/writer and the requantizer's stages.
        m.submodules.yslice = ys = SkidBuffer(data.StructLayout({
            "y": signed(rq.y_width), "first": unsigned(1), "last": unsigned(1)}))
        m.d.comb += [
            ys.i.valid.eq(rq.o_stream.valid), rq.o_stream.ready.eq(ys.i.ready),
            ys.i.payload.y.eq(rq.o_stream.payload.y), ys.i.payload.first.eq(rq.o_stream.payload.first),
            ys.i.payload.last.eq(rq.o_stream.payload.last),
        ]
        y = ys.o.payload.y
        m.d.comb += [
            binz.i_stream.valid.eq(ys.o.valid & ~final),
            binz.i_stream.payload.y.eq(y[:cfg.act_bits + 1]),
            binz.i_stream.payload.first.eq(ys.o.payload.first),
            binz.i_stream.payload.last.eq(ys.o.payload.last),
            writer.val.valid.eq(ys.o.valid & final),
            writer.val.payload.y.eq(y),
            writer.val.payload.last.eq(ys.o.payload.last),
            ys.o.ready.eq(Mux(final, writer.val.ready, binz.i_stream.ready)),
        ]
        connect(m, binz.o_stream, writer.seg)
        m.d.comb += [
            writer.final.eq(final), writer.narrow.eq(narrow),
            writer.pack_bytes.eq(Mux(packed, Mux(d.out_bits > 7, 2, 1), 0)),
            writer.out_addr.eq(d.out_addr),
            writer.out_pixels.eq(d.out_pixels),
            writer.start.eq(start), seq.layer_done.eq(writer.done),
            acts.core_we.eq(writer.we), acts.core_waddr.eq(writer.waddr), acts.core_wdata.eq(writer.wdata),
        ]
        return m
