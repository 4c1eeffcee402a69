"""Output-stage requantizer: ReLU, per-channel affine with a rounding shift, saturation.

Bit-exact with :class:`hadahw.contract.Requant` (``activate`` then ``scale``)::

    o' = max(o, 0) if relu else o
    v  = o' * M[c] + B[c]
    y  = v                                   if S == 0
         floor((v + 2**(S-1)) / 2**S)        otherwise (arithmetic, round half up)
    y  = clip(y, -(2**out_bits - 1), 2**out_bits - 1)   if saturate

The rounding shift is computed as ``t = (2*v) >> S``, then ``y = (t + 1) >> 1``, which equals
``(v + 2**(S-1)) >> S`` for every integer ``v`` and ``S >= 1`` and ``v`` for ``S == 0``: no
full-width rounding constant and no special case for ``S == 0``, so a shift of up to 62 costs only
barrel-shifter levels and one increment.  Saturation tests ``t`` (whose one's-complement magnitude
``u = t ^ sign`` leaves the range exactly when ``u >= 2**(out_bits+1) - 1``) with masked
reductions instead of two full-width comparisons.

ReLU commutes with max-pooling (both are monotone), so a layer that pools may run
:class:`~hadahw.rtl.pool.MaxPool` on the raw accumulators and apply ReLU here.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hadahw.program import ebr_blocks

from .memories import EBRReadPort

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
        ``shift``, ``relu``, ``saturate``, ``out_bits``; hold them stable while data is in flight
        (``out_bits`` takes effect one cycle after it is set: set it before the first beat).
    param_addr, param_data, param_we : In
        Write port of the parameter memory: ``param_data`` has fields ``mult`` and ``bias``;
        written on a cycle with ``param_we`` high.  Load parameters while the stream is idle.

    Notes
    -----
    Pipeline: stage 0 ReLU + multiplier read, 1 product (in the SB_MAC16 output registers) + bias
    read, 2 ``+ B``, 3 ``(2v) >> S``, 4 round + saturate (output register).  Every stage loads
    together when the output register is empty or the sink takes it (no bubble collapsing: a
    short enable path instead).  ``M`` and ``B`` live in two memories when that costs no extra
    EBR, so each is read in the stage that uses it; a parameter write meets no read that matters
    (load while idle), so the memories need no read-during-write logic.  An ``out_bits`` above
    ``max_out_bits`` saturates as ``max_out_bits``.
    Yosys ``synth_ice40 -dsp`` (pass ``synth_opts="-dsp"`` to the Amaranth iCE40 platform; without
    it the product is built from LUTs), flattened, with nextpnr's packing, for the core's
    ``acc_width=29, mult_width=16, bias_width=32, channels=256, max_shift=31``: 2 SB_MAC16,
    3 EBR, 453 SB_LUT4, 223 DFF, 541 logic cells (was 642 SB_LUT4, 406 DFF, 916 cells).
    Estimates from synthesis only, not place-and-route.
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
        aw, mw, bw, w = self.acc_width, self.mult_width, self.bias_width, self.y_width

        # Pipeline control: one enable for every stage, "the output register is empty or the sink
        # takes it".  Bubbles do not collapse (a stalled sink stops the whole pipeline), but the
        # enable is one LUT from registers: the per-stage ready ripple (``~valid[k] | ready[k+1]``)
        # that collapses bubbles was the board build's longest path at 30 MHz, and Yosys rebuilds
        # the ripple from any flat form of it.
        valid = [Signal(name=f"s{k}_valid") for k in range(nst)]
        advance = Signal()
        m.d.comb += advance.eq(~valid[nst - 1] | self.o_stream.ready)
        with m.If(advance):
            m.d.sync += [v.eq(p) for v, p in zip(valid, [self.i_stream.valid] + valid[:-1])]
        m.d.comb += [self.i_stream.ready.eq(advance), self.o_stream.valid.eq(valid[nst - 1])]

        # Side band (channel, first, last) travels along every stage.  Data registers need no
        # reset (the valid bits qualify them), which lets them pack with the logic in front.
        side = self.i_stream.payload
        side_regs = []
        for k in range(nst):
            r = Signal(data.StructLayout({"channel": unsigned(self.channel_width),
                                          "first": unsigned(1), "last": unsigned(1)}),
                       name=f"s{k}_side", reset_less=True)
            src = side_regs[-1] if side_regs else side
            with m.If(advance):
                m.d.sync += [r.channel.eq(src.channel), r.first.eq(src.first), r.last.eq(src.last)]
            side_regs.append(r)

        # Parameter memory, written from outside.  The multiplier is read at stage 0 (with the
        # accepted beat's channel), the bias at stage 1 (with the same channel one stage on), so
        # each read port's output register is the pipeline register of its value.  When splitting
        # the entry into two memories would cost an extra EBR, one memory holds both and the bias
        # is copied into a stage-1 register instead.  A read that meets a write to its own entry
        # is undefined on the EBR (``no_rw_check``); parameters are loaded while no beat is in
        # flight, so no read that matters can meet one.
        attrs = {"no_rw_check": 1}
        split = ebr_blocks(mw, self.channels) + ebr_blocks(bw, self.channels) <= \
            ebr_blocks(mw + bw, self.channels)
        if split:
            m.submodules.mults = mmem = Memory(shape=signed(mw), depth=self.channels, init=[], attrs=attrs)
            m.submodules.biases = bmem = Memory(shape=signed(bw), depth=self.channels, init=[], attrs=attrs)
            mwp, mrp = mmem.write_port(), EBRReadPort(m, mmem)
            bwp, brp = bmem.write_port(), EBRReadPort(m, bmem)
            m.d.comb += [
                mwp.addr.eq(self.param_addr), mwp.data.eq(self.param_data.mult), mwp.en.eq(self.param_we),
                bwp.addr.eq(self.param_addr), bwp.data.eq(self.param_data.bias), bwp.en.eq(self.param_we),
                mrp.addr.eq(self.i_stream.payload.channel), mrp.en.eq(advance),
                brp.addr.eq(side_regs[0].channel), brp.en.eq(advance),
            ]
            mult0, bias1 = mrp.data, brp.data
        else:
            m.submodules.params = mem = Memory(shape=self.param_layout, depth=self.channels, init=[], attrs=attrs)
            wp, rp = mem.write_port(), EBRReadPort(m, mem)
            m.d.comb += [wp.addr.eq(self.param_addr), wp.data.eq(self.param_data), wp.en.eq(self.param_we),
                         rp.addr.eq(self.i_stream.payload.channel), rp.en.eq(advance)]
            mult0 = rp.data.mult
            bias1 = Signal(signed(bw), reset_less=True)
            with m.If(advance):
                m.d.sync += bias1.eq(rp.data.bias)

        # Stage 0: ReLU.
        acc0 = Signal(signed(aw), reset_less=True)
        a = self.i_stream.payload.acc
        with m.If(advance):
            m.d.sync += acc0.eq(Mux(cfg.relu & a[-1], 0, a))

        # Stage 1: registered product (SB_MAC16 output register).
        prod1 = Signal(signed(aw + mw), reset_less=True)
        with m.If(advance):
            m.d.sync += prod1.eq(acc0 * mult0)

        # Stage 2: v = o*M + B.
        v2 = Signal(signed(w), reset_less=True)
        with m.If(advance):
            m.d.sync += v2.eq(prod1 + bias1)

        # Stage 3: t = (2v) >> S (arithmetic), so that y = (t + 1) >> 1 for every S, including 0
        # ((2v + 1) >> 1 == v): t[1:] = v >> S and t[0] is the rounding bit v[S-1] (0 for S == 0).
        t3 = Signal(signed(w + 1), reset_less=True)
        with m.If(advance):
            x = Cat(Const(0, 1), v2).as_signed()
            for j in reversed(range(len(cfg.shift))):
                x = Mux(cfg.shift[j], x >> (1 << j), x)
            m.d.sync += t3.eq(x)

        # Stage 4: rounding half up, y = t[1:] + t[0], then saturation; this is the output register.
        # With n = out_bits and u = t ^ sign(t) (t's one's-complement magnitude), y leaves
        # [-(2**n - 1), 2**n - 1] exactly when u >= 2**(n+1) - 1: some bit of u at n+1 or above is
        # set, or bits 0..n of u are all ones.  The test reads t, beside the rounding carry chain
        # rather than behind it.  ``below`` (bit i: i < n) masks the positions that depend on n;
        # the forced value, 2**n - 1 (y >= 0) or -(2**n - 1) (y < 0), has bit 0 set and bit i >= 1
        # equal to sign ^ (i < n).
        nmax = self.max_out_bits
        y = Signal(signed(w))
        m.d.comb += y.eq(t3[1:].as_signed() + t3[0])
        # `below` is decoded into a register: config is stable while beats are in flight and a
        # beat takes four cycles to get here, and the decode in front of the saturation test was
        # the board build's longest path at 30 MHz.
        below = Signal(nmax + 1)                     # bit nmax stays 0
        with m.Switch(cfg.out_bits):              # out_bits > max_out_bits: as max_out_bits (any
            for n in range(1 << len(cfg.out_bits)):  # value would do; this one is the cheapest)
                with m.Case(n):
                    m.d.sync += below.eq((1 << min(n, nmax)) - 1)
        st = t3[-1]
        u = Cat(*(t3[i] ^ st for i in range(w + 1)))
        top = min(nmax + 1, w)                       # u[i] for i >= top: always "at or above n+1"
        mid = range(2, top)                          # i >= n+1 here exactly when not below[i-1]
        ovf = (u[top:w].any()
               | Cat(*(u[i] & ~below[i - 1] for i in mid)).any()
               | Cat(u[0], u[1], *(u[i] | ~below[i - 1] for i in mid)).all())
        force = cfg.saturate & ovf
        y4 = Signal(signed(w), reset_less=True)
        with m.If(advance):
            forced = Cat(Const(1, 1), *((st ^ below[i]) if i < nmax else st for i in range(1, w)))
            m.d.sync += y4.eq(Mux(force, forced, y))

        out = self.o_stream.payload
        last_side = side_regs[-1]
        m.d.comb += [out.channel.eq(last_side.channel), out.first.eq(last_side.first),
                     out.last.eq(last_side.last), out.y.eq(y4)]
        return m
