"""Energy per inference of the accelerator on an iCE40 UP5K: a small, documented estimate.

Nothing here is measured on this project's hardware: the model turns a logic-cell count, a clock,
a cycle count and a transfer time into joules with constants taken from public measurements of
the same chip.  Read its result as "the right order of magnitude, with a stated range".

The chip
    iCE40 UP5K (Lattice iCE40 UltraPlus family): 5,280 logic cells (LUT4 + carry + flip-flop),
    30 EBR blocks of 4 kbit, 4 SPRAM blocks of 256 kbit, 8 SB_MAC16 DSPs; nominal core supply
    1.2 V (:data:`V_CORE`).

Source of the constants
    tinyvision-ai-inc/ice40_power (a public GitHub repository): per-rail currents of an
    iCE40UP5K-SG48 on Lattice's UltraPlus breakout board, measured with a Joulescope JS110 with
    the core rail at 1.219 V, for a blank design, counters of 32-228 logic cells at 12 MHz, a
    24-bit counter clocked at 6-48 MHz, an 8x8 multiplier built from logic, and PLL outputs.
    The figures below are derived from that table (our arithmetic, rounded):

    * :data:`STATIC_CORE_A` -- 85.6 uA core current of a configured blank design (no clock).
    * :data:`CLOCK_PJ_PER_CYCLE` -- 52 pJ per clock cycle for a running clock, whatever the design
      size: the slope of the core current of the same 28-LC counter clocked at 6, 12, 24 and 48 MHz
      ((2184 - 388.4) uA / 42 MHz x 1.219 V = 52.1 pJ; the 12 MHz external-clock counters, whose
      current extrapolated to 0 LC is ~523 uA above the blank design, give 53 pJ).  It is the
      clock network and the parts every clocked design pays for.
    * :data:`LC_PJ_LOW` -- 0.014 pJ per logic cell per cycle: the slope of the core current over
      the counters' size at 12 MHz ((641.3 - 613.5) uA / 196 LC / 12 MHz x 1.219 V = 0.0144 pJ).
      A counter bit toggles rarely, so this is the low-activity end (a flip-flop clocked, little
      logic switching).
    * :data:`LC_PJ_HIGH` -- 0.20 pJ per logic cell per cycle: the 8x8 multiplier in logic, fed new
      operands every cycle at 12 MHz, over the counter alone ((996 - 645) uA / 180 LC / 12 MHz x
      1.219 V = 0.198 pJ): the high-activity end.
    * :data:`LC_PJ_CENTRAL` -- the central value, the geometric mean of the two (0.053 pJ): the
      accelerator's datapath toggles every cycle while it computes, its control, memories'
      address logic and host link far less; the range is carried as the low/high bounds.
    * :data:`PLL_A` -- 138.6 uA on the PLL supply with the PLL making 16 MHz from 12 MHz (138.9 uA
      at 32 MHz).  The board build makes its clock (30 MHz by default) with the PLL, so ``pll=True`` adds this.
      The same measurements also show ~0.6 mA more *core* current with the PLL than without at a
      similar clock; the design behind those rows is not documented, so that is not modeled.

    Currents are converted at the nominal 1.2 V, per-cycle energies are kept as measured at
    1.219 V (a CV^2 correction would lower them by 3 %, far inside the model's range).

What is not modeled
    EBR, SPRAM and DSP blocks (no per-access or per-MHz figure was found for them: Lattice's
    iCE40 UltraPlus data sheet could not be consulted here, and the measurements above do not
    cover them), the I/O banks, the UART's line drivers, the configuration flash, the host PC,
    and the voltage regulators of a board.  The logic-cell count is the only size input.

The model (:func:`estimate_energy`), for ``N`` logic cells, clock ``f``, ``C`` cycles of compute
(``t_c = C / f``) and ``t_x`` seconds of transfer per inference::

    P_static  = STATIC_CORE_A * V_CORE  (+ PLL_A * V_CORE with pll=True)
    E_compute = P_static * t_c + C * (CLOCK_PJ_PER_CYCLE + N * e_lc)       e_lc = low / central / high
    E_idle    = t_x * (P_static + f * (CLOCK_PJ_PER_CYCLE + N * LC_PJ_LOW)) the clock keeps running while
                                                                           bytes move; idle logic at
                                                                           the low-activity rate
    E_total   = E_compute + E_idle
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

__all__ = ["EnergyEstimate", "estimate_energy", "UP5K_LC", "V_CORE", "STATIC_CORE_A", "PLL_A", "CLOCK_PJ_PER_CYCLE",
           "LC_PJ_LOW", "LC_PJ_HIGH", "LC_PJ_CENTRAL", "METHOD"]

#: Logic cells of an iCE40 UP5K (the model is for that chip: a larger count is no UP5K design).
UP5K_LC = 5280
#: Nominal core supply of the iCE40 UltraPlus (V).
V_CORE = 1.2
#: Core current of a configured, blank UP5K, no clock running (A).
STATIC_CORE_A = 85.6e-6
#: PLL supply current with the PLL running (A).
PLL_A = 138.6e-6
#: Energy per clock cycle of a running clock, independent of the design size (pJ).
CLOCK_PJ_PER_CYCLE = 52.0
#: Energy per logic cell per clock cycle at low (counter) and high (multiplier) toggle activity (pJ).
LC_PJ_LOW = 0.014
LC_PJ_HIGH = 0.20
#: Central value: the geometric mean of the low and high ends (pJ).
LC_PJ_CENTRAL = math.sqrt(LC_PJ_LOW * LC_PJ_HIGH)

METHOD = (f"iCE40 UP5K core-rail model from public measurements (tinyvision-ai-inc/ice40_power): static "
          f"{STATIC_CORE_A * 1e6:g} uA x {V_CORE:g} V (+ PLL {PLL_A * 1e6:g} uA x {V_CORE:g} V when the clock comes "
          f"from the PLL), clock network {CLOCK_PJ_PER_CYCLE:g} pJ/cycle, logic {LC_PJ_CENTRAL:.3f} pJ per logic "
          f"cell per cycle while computing (range {LC_PJ_LOW:g}-{LC_PJ_HIGH:g}: low/high toggle activity), "
          f"{LC_PJ_LOW:g} while idle during transfers; EBR, SPRAM, DSP, I/O and board not modeled; an estimate, "
          f"not a measurement (hadahw.energy)")


@dataclasses.dataclass(frozen=True)
class EnergyEstimate:
    """Energy of one inference (J), its parts and bounds, and the power while computing (mW).

    ``compute_*``: the accelerator's ``cycles`` at ``clock_mhz``; ``transfer_j``: the chip idling
    (clock running) for ``transfer_s``; ``total_* = compute_* + transfer_j``.  ``*_low`` / ``*_high``
    use :data:`LC_PJ_LOW` / :data:`LC_PJ_HIGH` per logic cell per cycle instead of the central
    :data:`LC_PJ_CENTRAL`.  ``method`` says how (:data:`METHOD`).
    """

    lc: int
    clock_mhz: float
    cycles: int
    pll: bool
    compute_s: float
    transfer_s: float
    compute_j: float
    compute_low_j: float
    compute_high_j: float
    transfer_j: float
    total_j: float
    total_low_j: float
    total_high_j: float
    power_mw: float
    power_low_mw: float
    power_high_mw: float
    idle_power_mw: float
    pj_per_lc_cycle: float = LC_PJ_CENTRAL
    pj_per_lc_cycle_low: float = LC_PJ_LOW
    pj_per_lc_cycle_high: float = LC_PJ_HIGH
    method: str = METHOD

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _number(name: str, value, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a {'positive' if positive else 'non-negative'} finite number, not {value!r}")
    return v


def _count(name: str, value, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {type(value).__name__}")
    if value < 0 or (hi is not None and value > hi):
        rng = f"in [0, {hi}]" if hi is not None else "non-negative"
        raise ValueError(f"{name} must be an integer {rng}, not {value}")
    return value


def estimate_energy(resources: Mapping, clock_mhz: float, cycles: int, *, transfer_s: float = 0.0,
                    pll: bool = False) -> EnergyEstimate:
    """Energy of one inference on an iCE40 UP5K (see the module docstring for the model).

    ``resources``: a mapping with ``"lc"``, the logic cells the design uses (an integer in
    0..5,280; e.g. :meth:`hadahw.build.ResourceModel.estimate` or a build's measured count); other
    keys are ignored (EBR, SPRAM and DSP are not modeled).  ``clock_mhz``: the system clock (> 0).
    ``cycles``: clock cycles of compute per inference (>= 0).  ``transfer_s``: seconds per
    inference the chip idles while bytes move (>= 0).  ``pll``: the clock comes from the PLL.
    Raises ValueError (one line, naming the parameter) for anything else.
    """
    if not isinstance(resources, Mapping):
        raise ValueError(f"resources must be a mapping with an 'lc' count, not {type(resources).__name__}")
    if "lc" not in resources:
        raise ValueError(f"resources must have an 'lc' count (logic cells), not only {sorted(resources)}")
    lc = _count("resources['lc']", resources["lc"], UP5K_LC)
    f_hz = _number("clock_mhz", clock_mhz, positive=True) * 1e6
    cycles = _count("cycles", cycles)
    t_x = _number("transfer_s", transfer_s, positive=False)
    if not isinstance(pll, bool):
        raise ValueError(f"pll must be a bool, not {type(pll).__name__}")

    p_static = (STATIC_CORE_A + (PLL_A if pll else 0.0)) * V_CORE      # W
    t_c = cycles / f_hz

    def compute(e_lc: float) -> float:
        return p_static * t_c + cycles * (CLOCK_PJ_PER_CYCLE + lc * e_lc) * 1e-12

    p_idle = p_static + f_hz * (CLOCK_PJ_PER_CYCLE + lc * LC_PJ_LOW) * 1e-12
    e_c, e_lo, e_hi = compute(LC_PJ_CENTRAL), compute(LC_PJ_LOW), compute(LC_PJ_HIGH)
    e_x = p_idle * t_x

    def power_mw(e_lc: float) -> float:  # while computing: independent of the cycle count
        return 1e3 * (p_static + f_hz * (CLOCK_PJ_PER_CYCLE + lc * e_lc) * 1e-12)

    return EnergyEstimate(
        lc=lc, clock_mhz=f_hz / 1e6, cycles=cycles, pll=pll, compute_s=t_c, transfer_s=t_x,
        compute_j=e_c, compute_low_j=e_lo, compute_high_j=e_hi, transfer_j=e_x,
        total_j=e_c + e_x, total_low_j=e_lo + e_x, total_high_j=e_hi + e_x,
        power_mw=power_mw(LC_PJ_CENTRAL), power_low_mw=power_mw(LC_PJ_LOW), power_high_mw=power_mw(LC_PJ_HIGH),
        idle_power_mw=1e3 * p_idle)
