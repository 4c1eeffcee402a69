"""hadahw.energy: the UP5K energy estimate -- hand-computed cases, monotonicity, bounds, bad input.

The constants below are written out from the measurements the module cites
(tinyvision-ai-inc/ice40_power, our rounding), not imported from it, so a changed constant fails here.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hadahw.energy import EnergyEstimate, estimate_energy

V = 1.2              # V, nominal core supply
I_STATIC = 85.6e-6   # A, blank design
I_PLL = 138.6e-6     # A, PLL supply
E_CLK = 52e-12       # J per cycle, clock network
E_LO, E_HI = 0.014e-12, 0.20e-12  # J per logic cell per cycle


def test_hand_computed_case():
    # 1,000 LC at 10 MHz for 10,000 cycles (1 ms), 2 ms of transfer, no PLL.
    e = estimate_energy({"lc": 1000}, 10.0, 10_000, transfer_s=2e-3)
    e_mid = math.sqrt(0.014 * 0.20) * 1e-12                          # 0.0529 pJ
    p_static = I_STATIC * V                                          # 102.72 uW
    compute = p_static * 1e-3 + 10_000 * (E_CLK + 1000 * e_mid)      # 0.10272 + 0.52 + 0.52915 uJ
    idle = 2e-3 * (p_static + 10e6 * (E_CLK + 1000 * E_LO))          # 2 ms at 0.10272 + 0.52 + 0.14 mW
    assert e.compute_j == pytest.approx(compute, rel=1e-12)
    assert e.compute_j == pytest.approx(1.15187e-6, rel=1e-5)        # the sum above, by hand
    assert e.transfer_j == pytest.approx(idle, rel=1e-12)
    assert e.transfer_j == pytest.approx(1.52544e-6, rel=1e-6)       # 2 ms x 0.76272 mW
    assert e.total_j == pytest.approx(compute + idle, rel=1e-12)
    assert e.compute_low_j == pytest.approx(p_static * 1e-3 + 10_000 * (E_CLK + 1000 * E_LO), rel=1e-12)
    assert e.compute_high_j == pytest.approx(p_static * 1e-3 + 10_000 * (E_CLK + 1000 * E_HI), rel=1e-12)
    assert e.compute_high_j == pytest.approx(2.62272e-6, rel=1e-6)   # 0.10272 + 0.52 + 2.0 uJ
    assert e.power_mw == pytest.approx(compute / 1e-3 * 1e3, rel=1e-12)
    assert e.idle_power_mw == pytest.approx(0.76272, rel=1e-6)
    assert e.compute_s == pytest.approx(1e-3) and e.transfer_s == 2e-3
    assert (e.lc, e.cycles, e.clock_mhz, e.pll) == (1000, 10_000, 10.0, False)
    assert "ice40_power" in e.method and "not modeled" in e.method


def test_pll_adds_its_supply_current_all_the_time():
    a = estimate_energy({"lc": 3000}, 18.0, 36_000, transfer_s=1e-3)
    b = estimate_energy({"lc": 3000}, 18.0, 36_000, transfer_s=1e-3, pll=True)
    t = 36_000 / 18e6 + 1e-3
    assert b.total_j - a.total_j == pytest.approx(I_PLL * V * t, rel=1e-9)
    assert b.power_mw - a.power_mw == pytest.approx(I_PLL * V * 1e3, rel=1e-9)


def test_zero_cycles_is_idle_over_the_transfer_only():
    e = estimate_energy({"lc": 2000}, 18.0, 0, transfer_s=0.5e-3)
    assert e.compute_j == e.compute_low_j == e.compute_high_j == 0.0
    assert e.total_j == e.total_low_j == e.total_high_j == e.transfer_j
    assert e.transfer_j == pytest.approx(0.5e-3 * (I_STATIC * V + 18e6 * (E_CLK + 2000 * E_LO)), rel=1e-12)
    # and nothing at all without cycles or transfer
    assert estimate_energy({"lc": 2000}, 18.0, 0).total_j == 0.0


def test_resources_other_than_lc_are_ignored():
    a = estimate_energy({"lc": 4664}, 18.0, 5000)
    b = estimate_energy({"lc": 4664, "ebr": 15, "spram": 4, "dsp": 3}, 18.0, 5000)
    assert a == b


@settings(max_examples=60, deadline=None)
@given(lc=st.integers(0, 5279), cycles=st.integers(0, 10**7), mhz=st.floats(1, 100),
       t=st.floats(0, 1), pll=st.booleans())
def test_monotone_and_bracketed(lc, cycles, mhz, t, pll):
    e = estimate_energy({"lc": lc}, mhz, cycles, transfer_s=t, pll=pll)
    assert isinstance(e, EnergyEstimate)
    assert e.compute_low_j <= e.compute_j <= e.compute_high_j
    assert e.total_low_j <= e.total_j <= e.total_high_j
    assert e.power_low_mw <= e.power_mw <= e.power_high_mw
    more_cycles = estimate_energy({"lc": lc}, mhz, cycles + 1, transfer_s=t, pll=pll)
    more_lc = estimate_energy({"lc": lc + 1}, mhz, cycles, transfer_s=t, pll=pll)
    more_time = estimate_energy({"lc": lc}, mhz, cycles, transfer_s=t + 1e-3, pll=pll)
    assert more_cycles.total_j > e.total_j and more_cycles.compute_low_j > e.compute_low_j
    assert more_lc.total_j >= e.total_j and more_lc.power_mw > e.power_mw
    if cycles:
        assert more_lc.compute_j > e.compute_j
    assert more_time.total_j > e.total_j and more_time.compute_j == e.compute_j
    # power while computing does not depend on how long
    assert more_cycles.power_mw == pytest.approx(e.power_mw, rel=1e-12)


def test_bounds_are_strict_for_a_real_design():
    e = estimate_energy({"lc": 4664}, 18.0, 20_000, transfer_s=1e-3, pll=True)
    assert e.total_low_j < e.total_j < e.total_high_j
    # the central value is the geometric mean of the per-LC ends, so it sits closer to the low end
    assert e.pj_per_lc_cycle == pytest.approx(math.sqrt(0.014 * 0.2))
    assert (e.pj_per_lc_cycle_low, e.pj_per_lc_cycle_high) == (0.014, 0.2)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(resources={"lc": -1}), r"resources\['lc'\] must be an integer in \[0, 5280\], not -1"),
    (dict(resources={"lc": 5281}), r"resources\['lc'\] must be an integer in \[0, 5280\], not 5281"),
    (dict(resources={"lc": 10.5}), r"resources\['lc'\] must be an integer, not float"),
    (dict(resources={"lc": True}), r"resources\['lc'\] must be an integer, not bool"),
    (dict(resources={"ebr": 3}), r"resources must have an 'lc' count"),
    (dict(resources=[4664]), r"resources must be a mapping"),
    (dict(clock_mhz=0), r"clock_mhz must be a positive finite number, not 0"),
    (dict(clock_mhz=-18.0), r"clock_mhz must be a positive finite number"),
    (dict(clock_mhz=float("nan")), r"clock_mhz must be a positive finite number"),
    (dict(clock_mhz="18"), r"clock_mhz must be a number, not str"),
    (dict(cycles=-1), r"cycles must be an integer non-negative, not -1"),
    (dict(cycles=1.5), r"cycles must be an integer, not float"),
    (dict(transfer_s=-1e-3), r"transfer_s must be a non-negative finite number"),
    (dict(transfer_s=float("inf")), r"transfer_s must be a non-negative finite number"),
    (dict(pll=1), r"pll must be a bool, not int"),
])
def test_bad_input_names_the_parameter(kwargs, pattern):
    args = dict(resources={"lc": 100}, clock_mhz=18.0, cycles=100)
    extra = {k: kwargs.pop(k) for k in ("transfer_s", "pll") if k in kwargs}
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern) as info:
        estimate_energy(args["resources"], args["clock_mhz"], args["cycles"], **extra)
    assert "\n" not in str(info.value)
