"""Streaming non-overlapping max-pool over a conv output map (raster order, channels innermost).

The input is the accumulator map ``O[y, x, c]`` of one conv layer, **one value per beat**, in
raster order: rows ``y``, then columns ``x``, then channels ``c`` fastest (HWC, as the
accelerator stores activations).  The output is ``max_{dy,dx < w} O[w*py+dy, w*px+dx, c]`` in
the same order, one value per beat, each beat tagged with its channel index and the pixel's
``first``/``last`` flags, so the beat stream feeds :class:`~hadahw.rtl.requant.Requantizer`
directly.  With ``window == 1`` the block is a pass-through that only adds channel/first/last.

ReLU commutes with the max (both monotone), so pooling raw accumulators and applying ReLU in the
requantizer equals :func:`hadahw.golden.max_pool` of ``Requant.activate(O)``; pooling values that
are already post-ReLU works the same.

A line buffer of ``(max_width // 2) * max_channels`` entries (``acc_width`` bits each) holds the
running maximum of every pooled column and channel of the current window row band; it is
read-modify-written once per beat (with one channel, the next beat reads the entry the previous
one is writing: that maximum is forwarded from the output register), so the initiation interval
is 1.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hadahw.program import ebr_blocks

from .memories import EBRReadPort

__all__ = ["MaxPool", "pool_config_layout"]


def _ubits(n: int) -> int:
    return max(1, int(n).bit_length())


def pool_config_layout(*, max_width: int, max_channels: int, max_window: int) -> data.StructLayout:
    """Run-time configuration of a :class:`MaxPool` (quasi-static: change only between frames).

    Fields: ``width`` (conv output width, 1..max_width, a multiple of ``window``), ``channels``
    (1..max_channels), ``window`` (1..max_window).  The frame height must be a multiple of
    ``window``; the block keeps no height counter and is back in its initial state after a frame.
    """
    return data.StructLayout({
        "width": unsigned(_ubits(max_width)),
        "channels": unsigned(_ubits(max_channels)),
        "window": unsigned(_ubits(max_window)),
    })


class MaxPool(wiring.Component):
    """Non-overlapping ``window x window`` max-pool, II = 1, latency 2 cycles.

    Parameters
    ----------
    acc_width : int
        Width of the signed values.
    max_width : int
        Largest conv output width (columns) of any layer.
    max_channels : int
        Largest channel count.
    max_window : int
        Largest pooling window (2 covers the usual 2x2/2 pool; 1 gives a pass-through only).

    Attributes
    ----------
    depth : int
        Line-buffer entries: ``(max_width // 2) * max_channels`` (1 when ``max_window == 1``), or
        ``(max_width // 2) * 2**ceil(log2(max_channels))`` when that needs no more EBR (then
        :attr:`pow2_addr` is set: entry ``(px, c)`` sits at ``px * 2**channel_bits + c``, so the
        address is the counters themselves).
    latency : int
        Cycles from the accepted beat that completes a window to the output beat being valid.

    Members
    -------
    i_stream : In(stream.Signature(StructLayout))
        ``value`` (signed ``acc_width``).
    o_stream : Out(stream.Signature(StructLayout))
        ``channel`` (unsigned), ``value`` (signed ``acc_width``), ``first`` (channel 0 of a pooled
        pixel), ``last`` (channel ``channels - 1``).
    config : In(:func:`pool_config_layout`)

    Notes
    -----
    While the output register holds a beat the sink has not taken, a beat that completes a window
    waits in stage 1, and so does one whose successor would read the entry it writes (one
    channel): the output register also forwards that running maximum.  Other beats go on.
    Yosys ``synth_ice40`` (flattened, nextpnr packing) of the core's ``acc_width=29, max_width=16,
    max_channels=32, max_window=2``: 115 SB_LUT4, 94 DFF, 225 logic cells, 2 EBR (was 141,
    141, 295).
    """

    latency = 2

    def __init__(self, *, acc_width: int, max_width: int, max_channels: int, max_window: int = 2):
        # As amaranth does: no 'created but never used' warning for an object whose
        # arguments were rejected; re-armed once they are valid.
        self._MustUse__silence = True
        for name, v in (("acc_width", acc_width), ("max_width", max_width),
                        ("max_channels", max_channels), ("max_window", max_window)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        self.acc_width = acc_width
        self.max_width = max_width
        self.max_channels = max_channels
        self.max_window = max_window
        self.depth = (max_width // 2) * max_channels if max_window >= 2 else 1
        self.depth = max(1, self.depth)
        self.channel_width = _ubits(max_channels - 1)
        # Entry (px, c) at px * 2**channel_width + c (no address arithmetic) when those
        # addresses fit the EBRs that ``depth`` entries need anyway.
        pow2_depth = max(1, max_width // 2) << self.channel_width if max_window >= 2 else 1
        self.pow2_addr = max_window >= 2 and ebr_blocks(acc_width, pow2_depth) <= ebr_blocks(acc_width, self.depth)
        if self.pow2_addr:
            self.depth = pow2_depth
        self.addr_width = _ubits(self.depth - 1)
        self.out_layout = data.StructLayout({
            "channel": unsigned(self.channel_width), "value": signed(acc_width),
            "first": unsigned(1), "last": unsigned(1)})
        del self._MustUse__silence
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout({"value": signed(acc_width)}))),
            "o_stream": Out(stream.Signature(self.out_layout)),
            "config": In(pool_config_layout(max_width=max_width, max_channels=max_channels,
                                            max_window=max_window)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        # Position counters of the next input beat.
        c = Signal(unsigned(self.channel_width))         # channel
        k = Signal(range(max(2, self.max_window)))       # column within the window
        r = Signal(range(max(2, self.max_window)))       # row within the window
        x = Signal(range(max(2, self.max_width)))        # column
        if self.pow2_addr:
            px = Signal(range(max(2, self.max_width // 2)))  # pooled column
            addr = Cat(c, px)[:self.addr_width]
        else:
            addr = Signal(unsigned(self.addr_width))     # px * channels + c (< depth)
            base = Signal(unsigned(self.addr_width))     # px * channels

        # Wrap tests against the incremented counters (which the counters load anyway), not
        # against ``config - 1``.
        c_inc, k_inc, r_inc, x_inc = c + 1, k + 1, r + 1, x + 1
        c_wrap = c_inc == cfg.channels
        k_wrap = k_inc == cfg.window
        r_wrap = r_inc == cfg.window
        x_wrap = x_inc == cfg.width

        # Stage 1 registers (beat whose line-buffer entry is being read).
        s1_valid = Signal()
        s1_value = Signal(signed(self.acc_width), reset_less=True)
        s1_addr = Signal(unsigned(self.addr_width), reset_less=True)
        s1_start = Signal()      # first beat of its window: ignore the line buffer
        s1_emit = Signal()       # last beat of its window: produce an output
        s1_fwd = Signal()        # its line-buffer entry is the one the previous beat wrote
        s1_chan = Signal(unsigned(self.channel_width), reset_less=True)
        s1_first = Signal(reset_less=True)
        s1_last = Signal(reset_less=True)

        # ``held`` is the output register's value and also forwards a running maximum: the one
        # case where a beat reads the entry its predecessor writes in the same cycle (one channel,
        # the next column of a window) takes the predecessor's maximum from ``held``.  Such a
        # predecessor leaves stage 1 only when the output register is free, like a beat that
        # completes a window.  The line buffer's read port is not transparent; every other read
        # of a written entry comes cycles after the write, so a read meeting a write (undefined on
        # the EBR, ``no_rw_check``) is never used.
        m.submodules.line = mem = Memory(shape=signed(self.acc_width), depth=self.depth, init=[],
                                         attrs={"no_rw_check": 1})
        wp = mem.write_port()
        rp = EBRReadPort(m, mem)          # no read-during-write emulation (see no_rw_check above)
        out = self.o_stream.payload
        held = out.value

        # (With window 1 every beat starts and ends its window: the line buffer is never used.)
        rd_addr = addr
        # The next beat reads the entry the stage-1 beat writes exactly when there is one channel
        # and it stays in the same pooled column (the window's next column, or the next window row
        # when the map is one window wide).  That is known when the stage-1 beat is accepted, so
        # it is registered there (``s1_same``) rather than compared address to address here: the
        # comparison sat on the ready path, the board build's longest at 30 MHz.
        s1_same = Signal()
        fwd_next = ~s1_emit & s1_same                    # the next beat would forward
        mx = Signal(signed(self.acc_width))
        o_valid = Signal()
        o_free = ~o_valid | self.o_stream.ready
        s1_done = ~(s1_emit | fwd_next) | o_free
        s1_ready = ~s1_valid | s1_done
        accept = self.i_stream.valid & s1_ready
        m.d.comb += [self.i_stream.ready.eq(s1_ready), self.o_stream.valid.eq(o_valid)]
        m.d.comb += [rp.addr.eq(rd_addr), rp.en.eq(s1_ready)]

        with m.If(s1_ready):
            m.d.sync += [
                s1_valid.eq(self.i_stream.valid),
                s1_value.eq(self.i_stream.payload.value),
                s1_addr.eq(rd_addr),
                s1_start.eq((r == 0) & (k == 0)),
                s1_emit.eq(r_wrap & k_wrap),
                s1_fwd.eq(s1_valid & fwd_next),
                s1_same.eq((cfg.channels == 1) & (~k_wrap | (x_wrap & (cfg.width == cfg.window)))),
                s1_chan.eq(c),
                s1_first.eq(c == 0),
                s1_last.eq(c_wrap),
            ]

        with m.If(accept):
            with m.If(~c_wrap):
                m.d.sync += c.eq(c_inc)
                if not self.pow2_addr:
                    m.d.sync += addr.eq(addr + 1)
            with m.Else():
                m.d.sync += c.eq(0)
                with m.If(x_wrap):
                    m.d.sync += [x.eq(0), k.eq(0), r.eq(Mux(r_wrap, 0, r_inc))]
                    m.d.sync += px.eq(0) if self.pow2_addr else [addr.eq(0), base.eq(0)]
                with m.Else():
                    m.d.sync += x.eq(x_inc)
                    with m.If(k_wrap):
                        m.d.sync += k.eq(0)
                        m.d.sync += px.eq(px + 1) if self.pow2_addr else [addr.eq(addr + 1), base.eq(addr + 1)]
                    with m.Else():
                        m.d.sync += k.eq(k_inc)
                        if not self.pow2_addr:
                            m.d.sync += addr.eq(base)

        # Stage 1: running maximum; write back unless the window is complete.
        # A window's first beat compares with the most negative value: max(v, min) == v.
        prev = Mux(s1_start, Const(-1 << (self.acc_width - 1), signed(self.acc_width)),
                   Mux(s1_fwd, held, rp.data))
        m.d.comb += mx.eq(Mux(s1_value > prev, s1_value, prev))
        m.d.comb += [wp.addr.eq(s1_addr), wp.data.eq(mx), wp.en.eq(s1_valid & ~s1_emit)]

        # Output register (``held``): a completed window, or a maximum to forward.
        with m.If(o_free):
            m.d.sync += o_valid.eq(s1_valid & s1_emit)
        with m.If(s1_valid & s1_ready & (s1_emit | fwd_next)):
            m.d.sync += held.eq(mx)
        with m.If(s1_valid & s1_emit & o_free):
            m.d.sync += [out.channel.eq(s1_chan), out.first.eq(s1_first), out.last.eq(s1_last)]
        return m
