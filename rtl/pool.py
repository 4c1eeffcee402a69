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
read-modify-written once per beat (a transparent read port forwards a write to the same address
issued on the previous beat), so the initiation interval is 1.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

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
        Line-buffer entries: ``(max_width // 2) * max_channels`` (1 when ``max_window == 1``).
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
    Yosys ``synth_ice40`` of ``acc_width=16, max_width=32, max_channels=64, max_window=2``:
    132 SB_LUT4, 112 DFF, 4 EBR (the 16 x 1024 line buffer).
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
        self.addr_width = _ubits(self.depth - 1)
        self.channel_width = _ubits(max_channels - 1)
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
        m.submodules.line = mem = Memory(shape=signed(self.acc_width), depth=self.depth, init=[])
        wp = mem.write_port()
        rp = mem.read_port(transparent_for=(wp,))

        # Position counters of the next input beat.
        c = Signal(unsigned(self.channel_width))         # channel
        k = Signal(range(max(2, self.max_window)))       # column within the window
        r = Signal(range(max(2, self.max_window)))       # row within the window
        x = Signal(range(max(2, self.max_width)))        # column
        addr = Signal(unsigned(self.addr_width + 1))     # px * channels + c
        base = Signal(unsigned(self.addr_width + 1))     # px * channels

        c_wrap = c == cfg.channels - 1
        k_wrap = k == cfg.window - 1
        r_wrap = r == cfg.window - 1
        x_wrap = x == cfg.width - 1
        win1 = cfg.window == 1

        # Stage 1 registers (beat whose line-buffer entry is being read).
        s1_valid = Signal()
        s1_value = Signal(signed(self.acc_width))
        s1_addr = Signal(unsigned(self.addr_width))
        s1_start = Signal()      # first beat of its window: ignore the line buffer
        s1_emit = Signal()       # last beat of its window: produce an output
        s1_chan = Signal(unsigned(self.channel_width))
        s1_first = Signal()
        s1_last = Signal()

        o_valid = Signal()
        o_free = ~o_valid | self.o_stream.ready
        s1_done = ~s1_emit | o_free
        s1_ready = ~s1_valid | s1_done
        accept = self.i_stream.valid & s1_ready
        m.d.comb += [self.i_stream.ready.eq(s1_ready), self.o_stream.valid.eq(o_valid)]

        rd_addr = Mux(win1, 0, addr)[:self.addr_width]
        m.d.comb += [rp.addr.eq(rd_addr), rp.en.eq(s1_ready)]

        with m.If(s1_ready):
            m.d.sync += [
                s1_valid.eq(self.i_stream.valid),
                s1_value.eq(self.i_stream.payload.value),
                s1_addr.eq(rd_addr),
                s1_start.eq((r == 0) & (k == 0)),
                s1_emit.eq(r_wrap & k_wrap),
                s1_chan.eq(c),
                s1_first.eq(c == 0),
                s1_last.eq(c_wrap),
            ]

        with m.If(accept):
            with m.If(~c_wrap):
                m.d.sync += [c.eq(c + 1), addr.eq(addr + 1)]
            with m.Else():
                m.d.sync += c.eq(0)
                with m.If(x_wrap):
                    m.d.sync += [x.eq(0), k.eq(0), addr.eq(0), base.eq(0),
                                 r.eq(Mux(r_wrap, 0, r + 1))]
                with m.Else():
                    m.d.sync += x.eq(x + 1)
                    with m.If(k_wrap):
                        m.d.sync += [k.eq(0), addr.eq(addr + 1), base.eq(addr + 1)]
                    with m.Else():
                        m.d.sync += [k.eq(k + 1), addr.eq(base)]

        # Stage 1: running maximum; write back unless the window is complete.
        mx = Signal(signed(self.acc_width))
        m.d.comb += mx.eq(Mux(s1_start | (s1_value > rp.data), s1_value, rp.data))
        m.d.comb += [wp.addr.eq(s1_addr), wp.data.eq(mx), wp.en.eq(s1_valid & ~s1_emit)]

        # Output register.
        out = self.o_stream.payload
        with m.If(o_free):
            m.d.sync += o_valid.eq(s1_valid & s1_emit)
        with m.If(s1_valid & s1_emit & o_free):
            m.d.sync += [out.value.eq(mx), out.channel.eq(s1_chan), out.first.eq(s1_first),
                         out.last.eq(s1_last)]
        return m
