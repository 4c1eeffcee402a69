"""Board top: crystal -> PLL -> reset, UART pins, HostLink and the accelerator core.

Two layers, so that everything but the pins can be simulated:

:class:`UARTSystem` (pin-free)
    ``rx`` -> :class:`~hadahw.rtl.uart.UARTRx` -> ``SyncFIFOBuffered`` (the HostLink holds its
    input not-ready while it executes a frame) -> :class:`~hadahw.rtl.hostlink.HostLink` <-> host
    bus <-> :class:`~hadahw.rtl.core.HadaCore`; HostLink -> :class:`~hadahw.rtl.uart.UARTTx` ->
    ``tx``.  IDENTIFY reports the configuration as compact JSON
    (``config.to_json(separators=(",", ":"), sort_keys=True)``, which
    :meth:`AcceleratorConfig.from_json` reads back) and the core's memory map.
:class:`BoardTop` (for an Amaranth platform)
    The board clock (12 MHz crystal) through an iCE40 PLL (``SB_PLL40_PAD`` when the clock pin is
    the PLL pad, else ``SB_PLL40_CORE``; no PLL when the requested clock equals the crystal), a
    power-on/lock reset held for 15 us of the PLL clock after lock (iCE40 EBRs read as zero for
    ~3 us after configuration), the ``uart`` resource, and status LEDs where the board has them.

PLL parameters follow IceStorm's ``icepll`` (SIMPLE feedback): the first (DIVR, DIVF, DIVQ) in
``icepll``'s search order whose output is nearest the request, with
F_PFD = F_IN / (DIVR + 1) in [10, 133] MHz, F_VCO = F_PFD * (DIVF + 1) in [533, 1066] MHz,
F_OUT = F_VCO / 2**DIVQ, DIVQ in 1..6, DIVF in 0..127, and FILTER_RANGE from F_PFD.
"""

from __future__ import annotations

import dataclasses

from amaranth.hdl import ClockDomain, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import Out, In

from hadahw.params import AcceleratorConfig
from hadahw.protocol import Space, Status

from .hostbus import ByteMemoryTarget
from .hostlink import HostLink
from .uart import UARTRx, UARTTx

__all__ = [
    "BAUD_TOLERANCE",
    "BoardTop",
    "CORES",
    "CoreUnavailable",
    "LINK_MAX_PAYLOAD",
    "PLLParams",
    "STUB_SPACE_SIZES",
    "UARTSystem",
    "config_json",
    "pll_params",
    "uart_divisor",
]

#: Largest relative baud-rate error accepted (the 8N1 receiver samples mid-bit; 2 % leaves margin
#: for the other end's own error over 10 bits).
BAUD_TOLERANCE = 0.02

#: ``"real"``: :class:`~hadahw.rtl.core.HadaCore`; ``"stub"``: a
#: :class:`~hadahw.rtl.hostbus.ByteMemoryTarget` stand-in (link bring-up only; it computes nothing).
CORES = ("real", "stub")

#: The board system's HostLink receive buffer and longest READ_MEM (IDENTIFY reports it): with 256
#: its reply memory is one EBR.
LINK_MAX_PAYLOAD = 256

#: Space sizes of the stub target (small enough for the UP5K's EBR beside the link).
STUB_SPACE_SIZES = {Space.WEIGHTS: 2048, Space.ACTS: 2048, Space.DESC: 512}

#: PLL output range icepll accepts (MHz).
PLL_OUT_RANGE = (16.0, 275.0)
#: Largest relative difference between the requested and the achieved PLL frequency accepted.
PLL_TOLERANCE = 0.01


class CoreUnavailable(RuntimeError):
    """The real core cannot be built (not importable, or its constructor does not take a config)."""


# ---------------------------------------------------------------------------------------------
# Clocking arithmetic


@dataclasses.dataclass(frozen=True)
class PLLParams:
    """One iCE40 PLL setting (SIMPLE feedback), as ``icepll`` prints it.

    Attributes
    ----------
    divr, divf, divq, filter_range : int
        The ``SB_PLL40_*`` parameters ``DIVR``, ``DIVF``, ``DIVQ``, ``FILTER_RANGE``.
    f_in_mhz, f_req_mhz, f_out_mhz, f_pfd_mhz, f_vco_mhz : float
        Input, requested, achieved output, phase-detector and VCO frequencies.
    """

    divr: int
    divf: int
    divq: int
    filter_range: int
    f_in_mhz: float
    f_req_mhz: float
    f_out_mhz: float
    f_pfd_mhz: float
    f_vco_mhz: float

    @property
    def error(self) -> float:
        """Relative difference of the achieved from the requested output frequency."""
        return abs(self.f_out_mhz - self.f_req_mhz) / self.f_req_mhz

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def pll_params(f_in_mhz: float, f_out_mhz: float) -> PLLParams:
    """The PLL setting nearest ``f_out_mhz`` from ``f_in_mhz``, searched like IceStorm's ``icepll``.

    Raises
    ------
    ValueError
        Input outside 10..133 MHz, output outside 16..275 MHz, or no setting found.
    """
    for name, v in (("input frequency", f_in_mhz), ("clock", f_out_mhz)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ValueError(f"PLL {name} must be a number of MHz, not {v!r}")
    if not 10 <= f_in_mhz <= 133:
        raise ValueError(f"PLL input frequency must be in 10..133 MHz, not {f_in_mhz:g}")
    lo, hi = PLL_OUT_RANGE
    if not lo <= f_out_mhz <= hi:
        raise ValueError(f"clock must be in {lo:g}..{hi:g} MHz for the iCE40 PLL (or equal to the "
                         f"{f_in_mhz:g} MHz board clock, no PLL), not {f_out_mhz:g}")
    best = None
    for divr in range(16):
        f_pfd = f_in_mhz / (divr + 1)
        if not 10 <= f_pfd <= 133:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533 <= f_vco <= 1066:
                continue
            for divq in range(1, 7):
                fout = f_vco / 2 ** divq
                # Strictly nearer only: the first setting in icepll's order wins ties.
                if best is None or abs(fout - f_out_mhz) < abs(best[0] - f_out_mhz):
                    best = (fout, divr, divf, divq)
    if best is None:  # cannot happen for inputs in 10..133 MHz
        raise ValueError(f"no PLL setting makes {f_out_mhz:g} MHz from {f_in_mhz:g} MHz")
    fout, divr, divf, divq = best
    f_pfd = f_in_mhz / (divr + 1)
    filter_range = (1 if f_pfd < 17 else 2 if f_pfd < 26 else 3 if f_pfd < 44 else 4 if f_pfd < 66
                    else 5 if f_pfd < 101 else 6)
    return PLLParams(divr=divr, divf=divf, divq=divq, filter_range=filter_range, f_in_mhz=float(f_in_mhz),
                     f_req_mhz=float(f_out_mhz), f_out_mhz=fout, f_pfd_mhz=f_pfd, f_vco_mhz=f_pfd * (divf + 1))


def uart_divisor(clock_hz: float, baud: int, *, tolerance: float = BAUD_TOLERANCE) -> tuple[int, float]:
    """``(divisor, relative error)`` for ``baud`` at ``clock_hz``: ``divisor = round(clock / baud)``.

    Raises
    ------
    ValueError
        ``baud`` not a positive integer, a divisor below 4 (the receiver's minimum), or an
        error above ``tolerance``; the message lists the nearest usable rates.
    """
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"baud must be a positive integer, not {baud!r}")
    divisor = round(clock_hz / baud)
    if divisor < 4:
        raise ValueError(f"baud {baud} is too fast for a {clock_hz / 1e6:g} MHz clock (the receiver needs at least "
                         f"4 clock cycles per bit: at most {int(clock_hz // 4)} baud)")
    error = abs(clock_hz / divisor - baud) / baud
    if error > tolerance:
        near = sorted({int(round(clock_hz / d)) for d in (divisor - 1, divisor, divisor + 1) if d >= 4})
        raise ValueError(f"baud {baud} is {100 * error:.1f}% off at {clock_hz / 1e6:g} MHz (divisor {divisor}; at most "
                         f"{100 * tolerance:g}% allowed); rates nearby: {', '.join(map(str, near))}")
    return divisor, error


def config_json(config: AcceleratorConfig) -> bytes:
    """What IDENTIFY reports: the configuration as compact, key-sorted JSON (UTF-8)."""
    return config.to_json(separators=(",", ":"), sort_keys=True).encode()


def _make_core(config: AcceleratorConfig, core: str):
    """``(target component, space sizes, compact-read layouts)`` for ``core`` in :data:`CORES`."""
    if core == "stub":
        target = ByteMemoryTarget(STUB_SPACE_SIZES)
        return target, dict(STUB_SPACE_SIZES), {}
    if core != "real":
        raise ValueError(f"core must be one of {', '.join(CORES)}, not {core!r}")
    try:
        from .core import HadaCore
    except Exception as e:  # noqa: BLE001 -- any import-time failure of a module under construction
        raise CoreUnavailable(f"hadahw.rtl.core.HadaCore cannot be imported ({type(e).__name__}: {e})") from None
    try:
        target = HadaCore(config)
        sizes = dict(target.memory_map.space_sizes)
    except TypeError as e:
        raise CoreUnavailable(f"HadaCore(config) failed ({e})") from None
    return target, sizes, dict(target.memory_map.compact_spaces)


# ---------------------------------------------------------------------------------------------
# Pin-free system


class UARTSystem(wiring.Component):
    """UART <-> HostLink <-> core, pin-free (one ``sync`` domain).

    Parameters
    ----------
    config : AcceleratorConfig
    divisor : int
        Clock cycles per UART bit (>= 4).
    core : {"real", "stub"}
        :data:`CORES`.
    fifo_depth : int
        Receive FIFO (bytes) between the UART receiver and the HostLink.
    max_payload : int
        HostLink receive buffer and longest READ_MEM (see :class:`HostLink`).

    Members
    -------
    rx : In(1)
        UART line from the host (idles high).
    tx : Out(1)
        UART line to the host.
    busy, done, error : Out(1)
        A program runs; the last program finished; it finished with a status other than OK.

    Attributes
    ----------
    link : HostLink
    target : wiring.Component
        The core (or the stub).
    space_sizes : dict
        Bytes per :class:`~hadahw.protocol.Space`, as IDENTIFY reports them.
    """

    def __init__(self, config: AcceleratorConfig, *, divisor: int, core: str = "real", fifo_depth: int = 32,
                 max_payload: int = LINK_MAX_PAYLOAD):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {type(config).__name__}")
        if isinstance(fifo_depth, bool) or not isinstance(fifo_depth, int) or fifo_depth < 2:
            raise ValueError(f"fifo_depth must be an integer >= 2, not {fifo_depth!r}")
        self.config = config
        self.core = core
        self.fifo_depth = fifo_depth
        self.target, self.space_sizes, compact = _make_core(config, core)
        try:
            self.link = HostLink(max_payload=max_payload, space_sizes=self.space_sizes,
                                 config_json=config_json(config), align=1, compact=compact)
        except Exception:
            self.target._MustUse__silence = True  # never built: no "created but never used" warning
            raise
        self.uart_rx = UARTRx(divisor=divisor)
        self.uart_tx = UARTTx(divisor=divisor)
        self.divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = rx = self.uart_rx
        m.submodules.uart_tx = tx = self.uart_tx
        m.submodules.rx_fifo = fifo = SyncFIFOBuffered(width=8, depth=self.fifo_depth)
        m.submodules.link = link = self.link
        m.submodules.core = target = self.target
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx)]
        wiring.connect(m, rx.o, fifo.w_stream)
        wiring.connect(m, fifo.r_stream, link.i)
        wiring.connect(m, link.o, tx.i)
        wiring.connect(m, link.bus, target.bus)
        bus = target.bus
        m.d.comb += [
            self.busy.eq(bus.busy),
            self.done.eq(bus.done),
            self.error.eq(bus.done & (bus.run_status != Status.OK)),
        ]
        return m


# ---------------------------------------------------------------------------------------------
# Board top


class BoardTop(Elaboratable):
    """The accelerator on an iCE40 board: clock, reset, UART pins and status LEDs.

    Parameters
    ----------
    config : AcceleratorConfig
    clock_mhz : float
        Requested system clock.  Equal to the board clock (``board_clock_mhz``, 12 MHz on the
        supported boards): no PLL; otherwise the nearest PLL frequency (:func:`pll_params`),
        which must be within 1 % of the request.
    baud : int
        UART rate; ``round(clock / baud)`` cycles per bit, at most 2 % off (:func:`uart_divisor`).
    core : {"real", "stub"}
        See :data:`CORES`.
    board_clock_mhz : float
        Frequency of the board clock resource.
    clock_resource : str, optional
        Platform resource of the board clock (default: the platform's ``default_clk``).
    pll_primitive : {"pad", "core"}
        ``"pad"`` (``SB_PLL40_PAD``, the clock pin is the PLL's input pad: pin 35 of the SG48)
        or ``"core"`` (``SB_PLL40_CORE`` fed from the buffered clock input).
    uart_resource : str
        Platform resource with ``rx`` and ``tx`` (requested as number 0).
    fifo_depth : int

    Attributes
    ----------
    pll : PLLParams or None
    clock_hz : float
        The achieved system clock.
    divisor : int
    baud_error : float
    system : UARTSystem or None
        Built in ``elaborate``.
    leds : dict
        Filled in ``elaborate``: which status is on which LED resource.
    """

    def __init__(self, config: AcceleratorConfig, *, clock_mhz: float, baud: int, core: str = "real",
                 board_clock_mhz: float = 12.0, clock_resource: str | None = None, pll_primitive: str = "pad",
                 uart_resource: str = "uart", fifo_depth: int = 32):
        if pll_primitive not in ("pad", "core"):
            raise ValueError(f"pll_primitive must be 'pad' or 'core', not {pll_primitive!r}")
        if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) or not clock_mhz > 0:
            raise ValueError(f"clock must be a positive number of MHz, not {clock_mhz!r}")
        self.config = config
        self.clock_mhz = float(clock_mhz)
        self.board_clock_mhz = float(board_clock_mhz)
        if abs(self.clock_mhz - self.board_clock_mhz) < 1e-9:
            self.pll = None
            self.clock_hz = self.board_clock_mhz * 1e6
        else:
            self.pll = pll_params(self.board_clock_mhz, self.clock_mhz)
            if self.pll.error > PLL_TOLERANCE:
                raise ValueError(f"clock {self.clock_mhz:g} MHz: the nearest the PLL makes from {self.board_clock_mhz:g} MHz "
                                 f"is {self.pll.f_out_mhz:.4g} MHz ({100 * self.pll.error:.1f}% off, at most "
                                 f"{100 * PLL_TOLERANCE:g}% allowed)")
            self.clock_hz = self.pll.f_out_mhz * 1e6
        self.baud = baud
        self.divisor, self.baud_error = uart_divisor(self.clock_hz, baud)
        self.core = core
        self.clock_resource = clock_resource
        self.pll_primitive = pll_primitive
        self.uart_resource = uart_resource
        self.fifo_depth = fifo_depth
        self.system: UARTSystem | None = None  # built in elaborate (so that an unused BoardTop leaves nothing unused)
        self.leds: dict[str, str] = {}

    @property
    def clock_mhz_achieved(self) -> float:
        return self.clock_hz / 1e6

    def _clock(self, m: Module, platform):
        """``(clock signal, locked signal)`` of the system clock."""
        name = self.clock_resource or platform.default_clk
        if self.pll is None:
            port = platform.request(name, 0, dir="-")
            m.submodules.clk_buf = buf = io.Buffer("i", port)
            return buf.i, Const(1)
        p = self.pll
        clk = Signal(name="pll_clk")
        locked = Signal(name="pll_locked")
        params = dict(p_FEEDBACK_PATH="SIMPLE", p_DIVR=p.divr, p_DIVF=p.divf, p_DIVQ=p.divq,
                      p_FILTER_RANGE=p.filter_range, i_RESETB=1, i_BYPASS=0, o_LOCK=locked)
        if self.pll_primitive == "pad":
            port = platform.request(name, 0, dir="-")
            m.submodules.pll = Instance("SB_PLL40_PAD", i_PACKAGEPIN=port.io, o_PLLOUTGLOBAL=clk, **params)
        else:
            port = platform.request(name, 0, dir="-")
            m.submodules.clk_buf = buf = io.Buffer("i", port)
            m.submodules.pll = Instance("SB_PLL40_CORE", i_REFERENCECLK=buf.i, o_PLLOUTGLOBAL=clk, **params)
        return clk, locked

    def _request_leds(self, m: Module, platform) -> dict:
        """Status name -> LED output signal, for the LEDs this board has."""
        from amaranth.build import ResourceError

        def try_request(name, dir):
            try:
                return platform.request(name, 0, dir=dir)
            except (ResourceError, LookupError):
                return None

        ports = {}
        names = {key for key in getattr(platform, "resources", {})}
        if ("led_r", 0) not in names:
            rgb = try_request("rgb_led", {"r": "-", "g": "-", "b": "-"})
            if rgb is not None:
                ports = {"led_r": rgb.r, "led_g": rgb.g, "led_b": rgb.b}
        if not ports:
            for name in ("led_r", "led_g", "led_b"):
                port = try_request(name, "-")
                if port is not None:
                    ports[name] = port
        found = {}
        for name, port in ports.items():
            m.submodules[f"{name}_buf"] = buf = io.Buffer("o", port)
            found[name] = buf.o
        return found

    def elaborate(self, platform):
        m = Module()
        if platform is None:
            raise TypeError("BoardTop needs a platform (simulate UARTSystem instead)")

        clk, locked = self._clock(m, platform)
        # Reset: held until the PLL locked and 15 us more (iCE40 EBRs read 0 for ~3 us after
        # configuration); `locked` is synchronised first, the counter runs on the system clock, so
        # the reset is released synchronously.
        m.domains.sync = cd_sync = ClockDomain("sync")
        m.domains.por = cd_por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += [cd_sync.clk.eq(clk), cd_por.clk.eq(clk)]
        # No clock constraint here: nextpnr derives the PLL output's from the board clock's (and
        # the build passes --freq as well); a constraint on an Amaranth signal name may not survive
        # synthesis under that name.
        delay = max(16, int(15e-6 * self.clock_hz))
        locked_s = Signal()
        m.submodules.lock_sync = FFSynchronizer(locked, locked_s, o_domain="por")
        timer = Signal(range(delay + 1))
        with m.If(~locked_s):
            m.d.por += timer.eq(0)
        with m.Elif(timer != delay):
            m.d.por += timer.eq(timer + 1)
        m.d.comb += cd_sync.rst.eq(timer != delay)

        self.system = sysm = UARTSystem(self.config, divisor=self.divisor, core=self.core,
                                        fifo_depth=self.fifo_depth)
        m.submodules.system = sysm
        uart = platform.request(self.uart_resource, 0, dir={"rx": "-", "tx": "-"})
        m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [sysm.rx.eq(rx_buf.i), tx_buf.o.eq(sysm.tx)]

        # Status LEDs: red = error, green = done (steady) or busy (blinking at 1-2 Hz without a blue
        # LED), blue = busy.
        leds = self._request_leds(m, platform)
        blink = Signal(max(1, int(self.clock_hz / 3).bit_length()))
        if "led_g" in leds and "led_b" not in leds:
            m.d.sync += blink.eq(blink + 1)
        self.leds = {}
        if "led_r" in leds:
            m.d.comb += leds["led_r"].eq(sysm.error)
            self.leds["error"] = "led_r"
        if "led_b" in leds:
            m.d.comb += leds["led_b"].eq(sysm.busy)
            self.leds["busy"] = "led_b"
            if "led_g" in leds:
                m.d.comb += leds["led_g"].eq(sysm.done)
                self.leds["done"] = "led_g"
        elif "led_g" in leds:
            m.d.comb += leds["led_g"].eq(sysm.done | (sysm.busy & blink[-1]))
            self.leds["done"] = "led_g (steady)"
            self.leds["busy"] = "led_g (blinking)"
        return m
