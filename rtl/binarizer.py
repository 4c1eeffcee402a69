"""On-chip binarizer: sign bits and delta_a codes of the next layer's input, per beta_a segment.

Bit-exact with :func:`hadahw.contract.binarize_int`: for the requantized values ``y`` of one
pixel (or one vector) in channel order, segment ``j`` covers channels
``[j*beta_a, min((j+1)*beta_a, C))`` and yields

* sign bits ``y >= 0`` (bit 1 = +1, sign(0) = +1), and
* ``delta_a = floor((sum|y| + n_j // 2) / n_j)``.

Full segments (``n_j == beta_a``, a power of two) divide by a shift.  A short final segment
(``C`` not a multiple of ``beta_a``: only a linear layer's outputs) is divided by a sequential
restoring division, the algorithm of :class:`RestoringDivider` (exact for every dividend below
``2**dividend_width`` and every divisor >= 1), run in place on the binarizer's segment register;
it takes ``sum_width`` cycles and runs at most once per pixel.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Binarizer", "RestoringDivider", "binarizer_config_layout"]


def _ubits(n: int) -> int:
    return max(1, int(n).bit_length())


def _log2_exact(n: int, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"{name} must be a power of two, not {n!r}")
    return n.bit_length() - 1


class RestoringDivider(wiring.Component):
    """Sequential unsigned restoring divider: ``quotient = dividend // divisor``, exact.

    One division at a time: ``dividend_width`` step cycles after the input beat is accepted the
    result beat becomes valid; a new input is accepted once the result has been taken.
    A zero divisor gives an all-ones quotient.

    Parameters
    ----------
    dividend_width, divisor_width : int
        Unsigned operand widths.  The quotient has ``dividend_width`` bits, the remainder
        ``divisor_width`` bits.

    Members
    -------
    i_stream : In(stream.Signature(StructLayout))
        ``dividend``, ``divisor``.
    o_stream : Out(stream.Signature(StructLayout))
        ``quotient``, ``remainder``.
    """

    def __init__(self, *, dividend_width: int, divisor_width: int):
        # As amaranth does: no 'created but never used' warning for an object whose
        # arguments were rejected; re-armed once they are valid.
        self._MustUse__silence = True
        for name, v in (("dividend_width", dividend_width), ("divisor_width", divisor_width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        self.dividend_width = dividend_width
        self.divisor_width = divisor_width
        #: Cycles from input accepted to result valid.
        self.latency = dividend_width + 1
        del self._MustUse__silence
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout({
                "dividend": unsigned(dividend_width), "divisor": unsigned(divisor_width)}))),
            "o_stream": Out(stream.Signature(data.StructLayout({
                "quotient": unsigned(dividend_width), "remainder": unsigned(divisor_width)}))),
        })

    def elaborate(self, platform):
        m = Module()
        w, dw = self.dividend_width, self.divisor_width
        busy = Signal()
        done = Signal()
        count = Signal(range(w + 1))
        dq = Signal(unsigned(w))          # dividend bits shift out at the top, quotient bits in at the bottom
        rem = Signal(unsigned(dw))
        divisor = Signal(unsigned(dw))

        m.d.comb += [self.i_stream.ready.eq(~busy & ~done), self.o_stream.valid.eq(done),
                     self.o_stream.payload.quotient.eq(dq), self.o_stream.payload.remainder.eq(rem)]

        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [dq.eq(self.i_stream.payload.dividend), divisor.eq(self.i_stream.payload.divisor),
                         rem.eq(0), count.eq(w), busy.eq(1)]
        with m.If(busy):
            trial = Signal(unsigned(dw + 1))
            m.d.comb += trial.eq(Const(0, dw + 1) | (rem << 1) | dq[-1])
            take = trial >= divisor
            m.d.sync += [rem.eq(Mux(take, trial - divisor, trial)[:dw]),
                         dq.eq((dq << 1)[:w] | take),
                         count.eq(count - 1)]
            with m.If(count == 1):
                m.d.sync += [busy.eq(0), done.eq(1)]
        with m.If(done & self.o_stream.ready):
            m.d.sync += done.eq(0)
        return m


def binarizer_config_layout(*, max_beta_a: int = 64) -> data.StructLayout:
    """Run-time configuration of a :class:`Binarizer`: ``log2_beta_a`` (0..log2(max_beta_a))."""
    return data.StructLayout({"log2_beta_a": unsigned(_ubits(_log2_exact(max_beta_a, "max_beta_a")))})


class Binarizer(wiring.Component):
    """Streaming binarizer, one value per input beat, one segment per output beat.

    Parameters
    ----------
    y_bits : int
        Magnitude bits of the input: ``|y| <= 2**y_bits - 1`` (the requantizer's ``out_bits``
        with saturation on).  ``y`` is ``signed(y_bits + 1)``; ``delta`` is ``unsigned(y_bits)``.
    max_beta_a : int
        Largest segment size (power of two, default 64): sizes ``signs`` and the sum.

    Attributes
    ----------
    sum_width : int
        ``y_bits + log2(max_beta_a)``: width of a segment's ``sum|y|`` and the divider dividend.
    latency : int
        Cycles from the input beat that ends a full segment to its output beat being valid.
    short_latency : int
        The same for a short final segment (the divider runs).

    Members
    -------
    i_stream : In(stream.Signature(StructLayout))
        ``y`` (signed ``y_bits + 1``), ``first``, ``last``: the values of one pixel/vector in
        channel order, ``last`` on its final channel (``first`` on channel 0 is passed on; segments
        are delimited by counting and by ``last``).
    o_stream : Out(stream.Signature(StructLayout))
        One beat per segment ``j``: ``signs`` (``max_beta_a`` bits, bit ``k`` = sign of channel
        ``j*beta_a + k``, LSB first, bits ``>= n_j`` zero), ``delta`` (the delta_a code),
        ``length`` (``n_j``), ``first`` (segment 0 of the pixel), ``last`` (final segment).
    config : In(:func:`binarizer_config_layout`)
        ``log2_beta_a``; change only between pixels.

    Notes
    -----
    Initiation interval 1 for full segments (any ``beta_a``, including 1).  A short final segment
    blocks the input for ``short_latency`` cycles while the divider runs.  The input is accepted
    while stage B is empty or its beat is being taken, so ``i_stream.ready`` depends on
    ``o_stream.ready`` combinationally but never on ``i_stream.valid``.
    Yosys ``synth_ice40`` (flattened, nextpnr packing) of the core's ``y_bits=8, max_beta_a=2``:
    97 SB_LUT4, 39 DFF, 110 logic cells, no MAC or EBR (was 115, 50, 140); a larger
    ``max_beta_a`` adds two ``max_beta_a``-bit sign registers.
    """

    latency = 1

    def __init__(self, *, y_bits: int, max_beta_a: int = 64):
        # As amaranth does: no 'created but never used' warning for an object whose
        # arguments were rejected; re-armed once they are valid.
        self._MustUse__silence = True
        if isinstance(y_bits, bool) or not isinstance(y_bits, int) or not 1 <= y_bits <= 32:
            raise ValueError(f"y_bits must be an integer in 1..32, not {y_bits!r}")
        self.log2_max_beta = _log2_exact(max_beta_a, "max_beta_a")
        self.y_bits = y_bits
        self.max_beta_a = max_beta_a
        self.sum_width = y_bits + self.log2_max_beta
        self.length_width = _ubits(max_beta_a)
        self.short_latency = self.sum_width + 2
        self.out_layout = data.StructLayout({
            "signs": unsigned(max_beta_a), "delta": unsigned(y_bits),
            "length": unsigned(self.length_width), "first": unsigned(1), "last": unsigned(1)})
        del self._MustUse__silence
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout({
                "y": signed(y_bits + 1), "first": unsigned(1), "last": unsigned(1)}))),
            "o_stream": Out(stream.Signature(self.out_layout)),
            "config": In(binarizer_config_layout(max_beta_a=max_beta_a)),
        })

    def elaborate(self, platform):
        m = Module()
        nb, sw, lw = self.max_beta_a, self.sum_width, self.length_width
        log2b = self.config.log2_beta_a

        # Stage A: accumulation of the current segment.
        cnt = Signal(unsigned(lw))
        sum_acc = Signal(unsigned(sw))
        signs_acc = Signal(unsigned(nb))
        first_acc = Signal()

        # Stage B: a completed segment waiting for its delta.  ``b_div`` holds the rounded sum
        # ``sum + n // 2`` (n = beta_a for a full segment, whose delta is then a shift); for a short
        # segment a restoring division (:class:`RestoringDivider`'s algorithm, ``sum_width``
        # steps) runs in place on it, its quotient bits shifting in at the bottom.
        b_valid = Signal()
        b_signs = Signal(unsigned(nb), reset_less=True)
        b_div = Signal(unsigned(sw), reset_less=True)
        b_len = Signal(unsigned(lw), reset_less=True)
        b_full = Signal()
        b_first = Signal(reset_less=True)
        b_last = Signal(reset_less=True)
        busy = Signal()                     # dividing
        done = Signal()                     # b_div holds the quotient
        steps = Signal(range(sw + 1))
        rem = Signal(unsigned(lw))

        out = self.o_stream.payload
        m.d.comb += [
            self.o_stream.valid.eq(b_valid & (b_full | done)),
            out.signs.eq(b_signs), out.length.eq(b_len), out.first.eq(b_first), out.last.eq(b_last),
            out.delta.eq(Mux(b_full, b_div >> log2b, b_div)),
        ]
        with m.If(b_valid & ~b_full & ~busy & ~done):
            m.d.sync += [busy.eq(1), steps.eq(sw), rem.eq(0)]
        with m.If(busy):
            trial = Signal(unsigned(lw + 1))
            m.d.comb += trial.eq(Cat(b_div[-1], rem))
            take = trial >= b_len
            m.d.sync += [rem.eq(Mux(take, trial - b_len, trial)[:lw]),
                         b_div.eq(Cat(take, b_div[:-1])),
                         steps.eq(steps - 1)]
            with m.If(steps == 1):
                m.d.sync += [busy.eq(0), done.eq(1)]

        b_free = ~b_valid | (self.o_stream.valid & self.o_stream.ready)
        m.d.comb += self.i_stream.ready.eq(b_free)
        with m.If(b_free):
            m.d.sync += [b_valid.eq(0), done.eq(0)]

        # sum + |y| = sum + (y ^ sign) + sign: one adder, the sign entering as its carry.
        y = self.i_stream.payload.y
        neg = y[-1]
        ones = Cat(*(y[i] ^ neg for i in range(self.y_bits)))
        signs_next = signs_acc | Mux(neg, 0, Const(1, nb) << cnt)[:nb]
        sum_next = (Cat(neg, sum_acc) + Cat(neg, ones))[1:sw + 1]
        first_next = Mux(cnt == 0, self.i_stream.payload.first, first_acc)
        length = (cnt + 1)[:lw]
        full = length == (Const(1, lw + 1) << log2b)
        with m.If(self.i_stream.valid & self.i_stream.ready):
            with m.If(full | self.i_stream.payload.last):
                m.d.sync += [b_valid.eq(1), b_signs.eq(signs_next), b_div.eq(sum_next + (length >> 1)),
                             b_len.eq(length), b_full.eq(full), b_first.eq(first_next),
                             b_last.eq(self.i_stream.payload.last),
                             cnt.eq(0), sum_acc.eq(0), signs_acc.eq(0), first_acc.eq(0)]
            with m.Else():
                m.d.sync += [cnt.eq(cnt + 1), sum_acc.eq(sum_next), signs_acc.eq(signs_next),
                             first_acc.eq(first_next)]
        return m
