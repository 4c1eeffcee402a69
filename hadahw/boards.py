"""Boards that ``python -m hadahw.build`` targets.

Every FPGA board here carries an iCE40 UP5K (SG48 package) and a 12 MHz clock, and has a UART the
host driver can reach.  Of the UP5K boards that ``amaranth-boards`` defines, the registry includes:

``icebreaker``
    1BitSquared iCEBreaker: FT2232H channel B is the UART (FPGA pins 6 rx / 9 tx), 12 MHz
    crystal on pin 35 (the PLL pad), red/green LEDs, ``iceprog`` programs it.  The reference board.
``icesugar``
    MuseLab iCESugar (v1.5): the iCELink (STM32) USB-serial bridge is the UART (pins 4 rx / 6 tx),
    12 MHz on pin 35, RGB LED, ``icesprog`` programs it.
``upduino_v3``
    tinyVision UPduino v3.x: no UART resource in amaranth-boards and the 12 MHz oscillator is
    connected only when the "OSC" jumper is soldered (to pin 20, not the PLL pad: ``SB_PLL40_CORE``).
    hadahw adds a UART on header pins 2 (FPGA rx) and 4 (FPGA tx) for a 3.3 V USB-serial adapter;
    RGB LED; ``iceprog`` programs it.

and ``asic``: no board -- Verilog of the pin-free core and technology-independent Yosys gate counts
(:func:`hadahw.fpga.yosys_cell_count`).

Left out, and why: ``icebreaker_bitsy`` (its USB goes straight to FPGA pins: it would need a USB
device core, it has no UART), ``upduino_v1``/``upduino_v2`` (v1 has only the internal 48 MHz
oscillator, +-10 %, too imprecise for a UART; v2's oscillator needs a wire to pin 12 -- like the v3
but with an older programmer, add it the same way when needed), ``ice40_up5k_b_evn`` (Lattice's
breakout: its FTDI channel is wired to the SPI flash, not to a UART), ``fomu_*`` (UWG30 package,
USB only).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

__all__ = ["BOARDS", "Board", "UP5K_RESOURCES", "get_board", "board_names"]

#: What an iCE40 UP5K has: logic cells (LUT4 + carry + FF), 4 kbit EBRs, 256 kbit SPRAMs, SB_MAC16 DSPs.
UP5K_RESOURCES = {"lc": 5280, "ebr": 30, "spram": 4, "dsp": 8}


@dataclasses.dataclass(frozen=True)
class Board:
    """One build target.

    Attributes
    ----------
    name : str
        The ``--board`` value.
    description : str
    platform : str or None
        ``"module:Class"`` of the amaranth-boards platform (None for ``asic``).
    device, package : str
        Amaranth device/package names (``iCE40UP5K``, ``SG48``); ``nextpnr_device`` is the
        ``nextpnr-ice40`` flag without dashes (``up5k``).
    clock_mhz : float
        Board clock.
    clock_resource : str or None
        Platform resource of that clock.
    pll_primitive : {"pad", "core"}
        ``SB_PLL40_PAD`` when the clock pin is the PLL's pad, else ``SB_PLL40_CORE``.
    uart : str
        Where the UART is.
    programmer : str
        The tool the platform's ``toolchain_program`` runs (and its environment override).
    resources : dict or None
        Totals of the chip: ``lc``, ``ebr``, ``spram``, ``dsp``.
    extra_resources : callable, optional
        ``f(platform)`` adding resources the platform lacks (a UART on header pins).
    notes : str
    """

    name: str
    description: str
    platform: str | None
    device: str | None = None
    package: str | None = None
    nextpnr_device: str | None = None
    clock_mhz: float | None = None
    clock_resource: str | None = None
    pll_primitive: str = "pad"
    uart: str = ""
    programmer: str = ""
    programmer_env: str = ""
    resources: dict | None = None
    extra_resources: Callable[[Any], None] | None = None
    notes: str = ""

    @property
    def is_fpga(self) -> bool:
        return self.platform is not None

    def make_platform(self):
        """A fresh platform instance (with :attr:`extra_resources` added)."""
        if self.platform is None:
            raise ValueError(f"board {self.name!r} has no FPGA platform")
        module, _, cls = self.platform.partition(":")
        platform = getattr(importlib.import_module(module), cls)()
        if self.extra_resources is not None:
            self.extra_resources(platform)
        return platform

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "platform": self.platform,
            "device": self.device, "package": self.package, "clock_mhz": self.clock_mhz,
            "clock_resource": self.clock_resource, "pll_primitive": self.pll_primitive if self.is_fpga else None,
            "uart": self.uart or None, "programmer": self.programmer or None,
            "resources": dict(self.resources) if self.resources else None, "notes": self.notes or None,
        }


def _upduino_uart(platform) -> None:
    from amaranth.build import Attrs
    from amaranth_boards.resources import UARTResource
    platform.add_resources([UARTResource(0, rx="2", tx="4", attrs=Attrs(IO_STANDARD="SB_LVCMOS", PULLUP=1))])


BOARDS: dict[str, Board] = {b.name: b for b in (
    Board("icebreaker", "1BitSquared iCEBreaker (iCE40UP5K-SG48)", "amaranth_boards.icebreaker:ICEBreakerPlatform",
          device="iCE40UP5K", package="SG48", nextpnr_device="up5k", clock_mhz=12.0, clock_resource="clk12",
          pll_primitive="pad", uart="FT2232H channel B (second USB serial port), FPGA pins 6 rx / 9 tx",
          programmer="iceprog", programmer_env="ICEPROG", resources=dict(UP5K_RESOURCES),
          notes="status LEDs: red = error, green = done (steady) / busy (blinking)"),
    Board("icesugar", "MuseLab iCESugar v1.5 (iCE40UP5K-SG48)", "amaranth_boards.icesugar:ICESugarPlatform",
          device="iCE40UP5K", package="SG48", nextpnr_device="up5k", clock_mhz=12.0, clock_resource="clk12",
          pll_primitive="pad", uart="iCELink USB serial, FPGA pins 4 rx / 6 tx", programmer="icesprog",
          resources=dict(UP5K_RESOURCES), notes="status LEDs: red = error, green = done, blue = busy"),
    Board("upduino_v3", "tinyVision UPduino v3.x (iCE40UP5K-SG48)", "amaranth_boards.upduino_v3:UpduinoV3Platform",
          device="iCE40UP5K", package="SG48", nextpnr_device="up5k", clock_mhz=12.0, clock_resource="clk12",
          pll_primitive="core",
          uart="none on the board: header pins 2 (FPGA rx) and 4 (FPGA tx) for a 3.3 V USB-serial adapter",
          programmer="iceprog", programmer_env="ICEPROG", resources=dict(UP5K_RESOURCES),
          extra_resources=_upduino_uart,
          notes="solder the OSC jumper (12 MHz oscillator to pin 20); status: RGB LED"),
    Board("asic", "no board: Verilog of the pin-free core + Yosys generic gate counts", None,
          notes="technology-independent `synth -flatten; stat`: no timing, no placement"),
)}


def board_names() -> list[str]:
    return list(BOARDS)


def get_board(name: str) -> Board:
    """The board called ``name``; ValueError (listing the boards) otherwise."""
    try:
        return BOARDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"board must be one of {', '.join(BOARDS)}, not {name!r}") from None
