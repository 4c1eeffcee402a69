"""Output-stage requantizer: ReLU, per-channel affine with a rounding shift, saturation.

Bit-exact with :class:`hadahw.contract.Requant` (``activate`` then ``scale``)::

    o' = max(o, 0) if relu else o
    v  = o' * M[c] + B[c]
    y  = v                                   if S == 0
         floor((v + 2**(S-1)) / 2**S)        otherwise (arithmetic, round half up)
    y  = clip(y, -(2**out_bits - 1), 2**out_bits - 1)   if saturate

The rounding shift is computed as ``((v >> (S-1)) + 1) >> 1``, which equals
``(v + 2**(S-1)) >> S`` for every integer ``v`` and ``S >= 1`` without a full-width rounding
constant, so a shift of up to 62 costs only barrel-shifter levels, not adder width.

ReLU commutes with max-pooling (both are monotone), so a layer that pools may run
:class:`~hadahw.rtl.pool.MaxPool` on the raw accumulators and apply ReLU here.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["Requantizer", "requant_config_layout"]


def _ubits(n: int) -> int:
    """Bits of an unsigned field holding ``0..n`` (at least 1)."""
    return max(1, int(n).bit_length())


def requant_config_layout(*, max_shift: int = 62, max_out_bits: int = 16) -> data.StructLayout:
    """Run-time configuration of a :class:`Requantizer` (quasi-static: change only while idle).

    Fields: ``shift`` (0..max_shift), ``relu`` (1 bit), ``saturate`` (1 bit),
    ``out_bits`` (1..max_out_bits; saturation limit ``2**out_bits - 1``).
    """
    return data.StructLayout({
        "shift": unsigned(_ubits(max_shift)),
        "relu": unsigned(1),
        "saturate": unsigned(1),
        "out_bits": unsigned(_ubits(max_out_bits)),
    })


class Requantizer(wiring.Component):
    """Pipelined per-channel requantizer (initiation interval 1, 5 cycles latency).

    Parameters
    ----------
    acc_width : int
        Width of the signed accumulator input ``o``.
    channels : int
        Depth of the per-channel parameter memory (largest ``N`` of any layer).
    mult_width : int
        Width of the signed multiplier ``M``.  ``acc_width <= 16`` and ``mult_width <= 16`` map the
        product onto one iCE40 ``SB_MAC16``; wider operands need Yosys to split the product over
        several ``SB_MAC16`` (``ceil(acc_width/16) * ceil(mult_width/16)`` of them) or LUTs.
    bias_width : int, optional
        Width of the signed bias ``B``; default ``acc_width + mult_width``.
    max_shift : int
        Largest run-time shift ``S`` (at most 62, the contract's limit); sizes ``config.shift``.
    max_out_bits : int
        Largest run-time ``config.out_bits`` (the contract allows 1..16).

    Attributes
    ----------
    y_width : int
        Width of the signed output ``y``: ``max(acc_width + mult_width, bias_width) + 1``, the full
        unsaturated result.  When saturating to ``out_bits`` the low ``out_bits + 1`` bits of ``y``
        hold the whole value.
    latency : int
        Cycles from an accepted input to its output beat being valid, without back-pressure.

    Members
    -------
    i_stream : In(stream.Signature(StructLayout))
        ``channel`` (unsigned), ``acc`` (signed ``acc_width``), ``first``, ``last``.
        ``first``/``last`` are side-band flags (pixel boundaries) passed through unchanged.
    o_stream : Out(stream.Signature(StructLayout))
        ``channel``, ``y`` (signed ``y_width``), ``first``, ``last``.
    config : In(:func:`requant_config_layout`)
        ``shift``, ``relu``, ``saturate``, ``out_bits``; hold them stable while data is in flight.
    param_addr, param_data, param_we : In
        Write port of the parameter memory: ``param_data`` has fields ``mult`` and ``bias``;
        written on a cycle with ``param_we`` high.  Load parameters while the stream is idle.

    Notes
    -----
    Pipeline: stage 0 ReLU + parameter read, 1 product (registered), 2 ``+ B``, 3 ``>> (S-1)``,
    4 round + saturate (output register).  Every stage loads when it is empty or its successor
    loads, so bubbles collapse and a stalled sink stops only the stages behind it.
    Yosys ``synth_ice40 -dsp`` (pass ``synth_opts="-dsp"`` to the Amaranth iCE40 platform; without
    it the product is built from LUTs) measured for ``acc_width=16, channels=64, bias_width=24,
    max_shift=31``: 1 SB_MAC16, 437 SB_LUT4, 305 DFF, 3 EBR (1,229 LUT4 and no MAC without
    ``-dsp``); ``acc_width=24``: 2 SB_MAC16, 530 SB_LUT4.  Estimates from synthesis only, not
    place-and-route.
    """

    latency = 5

    def __init__(self, *, acc_width: int, channels: int, mult_width: int = 16,
                 bias_width: int | None = None, max_shift: int = 62, max_out_bits: int = 16):
        # As amaranth does: no 'created but never used' warning for an object whose
        # arguments were rejected; re-armed once they are valid.
        self._MustUse__silence = True
        for name, v in (("acc_width", acc_width), ("channels", channels), ("mult_width", mult_width),
                        ("max_out_bits", max_out_bits)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        if bias_width is None:
            bias_width = acc_width + mult_width
        if isinstance(bias_width, bool) or not isinstance(bias_width, int) or bias_width < 1:
            raise ValueError(f"bias_width must be a positive integer, not {bias_width!r}")
        if isinstance(max_shift, bool) or not isinstance(max_shift, int) or not 0 <= max_shift <= 62:
            raise ValueError(f"max_shift must be an integer in 0..62, not {max_shift!r}")
        self.acc_width = acc_width
        self.channels = channels
        self.mult_width = mult_width
        self.bias_width = bias_width
        self.max_shift = max_shift
        self.max_out_bits = max_out_bits
        self.channel_width = _ubits(channels - 1)
        self.y_width = max(acc_width + mult_width, bias_width) + 1

        self.param_layout = data.StructLayout({"mult": signed(mult_width), "bias": signed(bias_width)})
        self.in_layout = data.StructLayout({
            "channel": unsigned(self.channel_width), "acc": signed(acc_width),
            "first": unsigned(1), "last": unsigned(1)})
        self.out_layout = data.StructLayout({
            "channel": unsigned(self.channel_width), "y": signed(self.y_width),
            "first": unsigned(1), "last": unsigned(1)})
        del self._MustUse__silence
        super().__init__({
            "i_stream": In(stream.Signature(self.in_layout)),
            "o_stream": Out(stream.Signature(self.out_layout)),
            "config": In(requant_config_layout(max_shift=max_shift, max_out_bits=max_out_bits)),
            "param_addr": In(self.channel_width),
            "param_data": In(self.param_layout),
            "param_we": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        nst = self.latency

        # Parameter memory: written from outside, read at the channel of the accepted beat.
        m.submodules.params = mem = Memory(shape=self.param_layout, depth=self.channels, init=[])
        wp = mem.write_port()
        rp = mem.read_port()
        m.d.comb += [wp.addr.eq(self.param_addr), wp.data.eq(self.param_data), wp.en.eq(self.param_we)]

        # Pipeline control: stage k loads when it is empty or stage k+1 (or the sink) takes its beat.
        valid = [Signal(name=f"s{k}_valid") for k in range(nst)]
        ready = [Signal(name=f"s{k}_ready") for k in range(nst)]
        m.d.comb += ready[nst - 1].eq(~valid[nst - 1] | self.o_stream.ready)
        for k in range(nst - 1):
            m.d.comb += ready[k].eq(~valid[k] | ready[k + 1])
        prev = [self.i_stream.valid] + valid[:-1]
        for k in range(nst):
            with m.If(ready[k]):
                m.d.sync += valid[k].eq(prev[k])
        m.d.comb += [self.i_stream.ready.eq(ready[0]), self.o_stream.valid.eq(valid[nst - 1])]

        # Side band (channel, first, last) travels along every stage.
        side = self.i_stream.payload
        side_regs = []
        for k in range(nst):
            r = Signal(data.StructLayout({"channel": unsigned(self.channel_width),
                                          "first": unsigned(1), "last": unsigned(1)}), name=f"s{k}_side")
            src = side_regs[-1] if side_regs else side
            with m.If(ready[k]):
                m.d.sync += [r.channel.eq(src.channel), r.first.eq(src.first), r.last.eq(src.last)]
            side_regs.append(r)

        # Stage 0: ReLU, accumulator register; parameter memory read (same-cycle latency).
        m.d.comb += [rp.addr.eq(self.i_stream.payload.channel), rp.en.eq(ready[0])]
        acc0 = Signal(signed(self.acc_width))
        a = self.i_stream.payload.acc
        with m.If(ready[0]):
            m.d.sync += acc0.eq(Mux(cfg.relu & a[-1], 0, a))

        # Stage 1: registered product (SB_MAC16 output register); bias carried along.
        prod1 = Signal(signed(self.acc_width + self.mult_width))
        bias1 = Signal(signed(self.bias_width))
        with m.If(ready[1]):
            m.d.sync += [prod1.eq(acc0 * rp.data.mult), bias1.eq(rp.data.bias)]

        # Stage 2: v = o*M + B.
        w = self.y_width
        v2 = Signal(signed(w))
        with m.If(ready[2]):
            m.d.sync += v2.eq(prod1 + bias1)

        # Stage 3: t = v >> (S-1) for S >= 1 (arithmetic), v for S == 0.
        t3 = Signal(signed(w))
        s_is0_3 = Signal()
        shift_m1 = Mux(cfg.shift == 0, 0, cfg.shift - 1)[:len(cfg.shift)]
        with m.If(ready[3]):
            m.d.sync += [t3.eq(v2 >> shift_m1), s_is0_3.eq(cfg.shift == 0)]

        # Stage 4: rounding half up, then saturation; this is the output register.
        rounded = Signal(signed(w))
        m.d.comb += rounded.eq(Mux(s_is0_3, t3, (t3 + 1) >> 1))
        lim = Signal(unsigned(self.max_out_bits + 1))
        m.d.comb += lim.eq((Const(1, unsigned(self.max_out_bits + 1)) << cfg.out_bits) - 1)
        y4 = Signal(signed(w))
        sat = Signal(signed(w))
        with m.If(cfg.saturate & (rounded > lim)):
            m.d.comb += sat.eq(lim)
        with m.Elif(cfg.saturate & (rounded < -lim)):
            m.d.comb += sat.eq(-lim)
        with m.Else():
            m.d.comb += sat.eq(rounded)
        with m.If(ready[4]):
            m.d.sync += y4.eq(sat)

        out = self.o_stream.payload
        last_side = side_regs[-1]
        m.d.comb += [out.channel.eq(last_side.channel), out.first.eq(last_side.first),
                     out.last.eq(last_side.last), out.y.eq(y4)]
        return m
