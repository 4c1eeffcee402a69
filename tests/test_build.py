# amaranth: UnusedElaboratable=no
"""The board top and ``python -m hadahw.build``.

Fast by default: argument errors (exit status 2, one line naming the parameter), ``--list-boards``,
PLL and UART divisor arithmetic (against icepll's published settings and a brute-force search),
the fit check, elaboration of the board top for every board (no tools), IDENTIFY over the UART
pins in simulation, and ``--board asic`` on a tiny configuration (Yosys generic synthesis, cached on
the second run).  One real iCEBreaker build (synth, place and route, pack) is ``slow`` (``--runslow``).
"""

import json
import math
import subprocess
import sys

import pytest
from amaranth.sim import Simulator

from hadahw import build as B
from hadahw.boards import BOARDS, UP5K_RESOURCES, get_board
from hadahw.params import AcceleratorConfig
from hadahw.protocol import Command, decode_frame, encode_frame, unpack_identify
from hadahw.rtl.top import (BoardTop, UARTSystem, config_json, pll_params, uart_divisor)
from hadahw.rtl.uart import UARTRx, UARTTx

from cliutil import run_main
from faketools import fake_tools  # noqa: F401  (fixture)

#: Memory sizes small enough for fast elaboration and synthesis (not a useful accelerator).
TINY_SET = ["--set", "weight_depth=16", "--set", "act_depth=16", "--set", "param_depth=16", "--set", "desc_bytes=64",
            "--set", "max_channels=8", "--set", "max_pool_width=4", "--set", "max_reduction=64"]
TINY = dict(rows=1, lanes=8, weight_depth=16, act_depth=16, param_depth=16, desc_bytes=64, max_channels=8,
            max_pool_width=4, max_reduction=64)


def run_cli(capsys, *argv):
    return run_main(B.main, capsys, *argv)


# ---------------------------------------------------------------------------------------------
# CLI argument errors


@pytest.mark.parametrize("argv, name", [
    (["--board", "nexys"], "--board"),
    (["--beta", "12"], "--beta"),
    (["--beta-w", "3"], "--beta-w"),
    (["--beta-w", "4", "--beta-a", "8"], "--beta-a"),
    (["--beta", "2", "--beta-a", "4"], "--beta-a"),
    (["--beta-a", "0"], "--beta-a"),
    (["--beta-a", "3"], "--beta-a"),
    (["--clock-mhz", "300"], "--clock-mhz"),
    (["--clock-mhz", "5"], "--clock-mhz"),
    (["--clock-mhz", "-1"], "--clock-mhz"),
    (["--clock-mhz", "30", "--baud", "1400000"], "--baud"),
    (["--clock-mhz", "12", "--baud", "2500000"], "--baud"),
    (["--clock-mhz", "12", "--baud", "6000000"], "--baud"),
    (["--baud", "0"], "--baud"),
    (["--scaling", "lut"], "--scaling"),
    (["--lanes", "12"], "--lanes"),
    (["--rows", "0"], "--rows"),
    (["--weight-delta", "fixed99"], "--weight-delta"),
    (["--weight-delta", "float"], "--weight-delta"),
    (["--core", "fake"], "--core"),
    (["--set", "nonsense"], "--set"),
    (["--set", "rows=4"], "--set rows"),
    (["--set", "colour=4"], "--set: unknown accelerator configuration keys ['colour']"),
    (["--board", "asic", "--program"], "--program"),
    (["--beta", "sixteen"], "--beta"),
    (["--frobnicate"], "--frobnicate"),
])
def test_argument_errors(capsys, argv, name):
    code, out, err = run_cli(capsys, *argv)
    assert code == B.EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and name in lines[0], lines[0]
    assert out == ""


def test_argparse_errors_exit_2_one_line():
    for argv in (["--frobnicate"], ["--beta", "sixteen"]):
        proc = subprocess.run([sys.executable, "-m", "hadahw.build", *argv], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:"), proc.stderr
        assert "Traceback" not in proc.stderr


def test_list_boards(capsys):
    code, out, err = run_cli(capsys, "--list-boards")
    assert code == 0
    for name in BOARDS:
        assert name in out
    assert "5280 LC, 30 EBR, 4 SPRAM, 8 DSP" in out
    assert "FT2232H" in out


def test_help_documents_beta_and_exit_statuses(capsys):
    with pytest.raises(SystemExit) as e:
        B.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "beta_a" in out and "defaults to 2" in out
    assert "3 built but timing not met" in out and "4 does not fit" in out


def test_board_registry():
    assert get_board("icebreaker").resources == UP5K_RESOURCES == {"lc": 5280, "ebr": 30, "spram": 4, "dsp": 8}
    for b in BOARDS.values():
        if b.is_fpga:
            assert b.device == "iCE40UP5K" and b.package == "SG48" and b.clock_mhz == 12.0
            assert b.uart and b.programmer
            assert "uart" in {r[0] for r in b.make_platform().resources}
    assert not get_board("asic").is_fpga
    with pytest.raises(ValueError, match="board must be one of icebreaker"):
        get_board("nope")


# ---------------------------------------------------------------------------------------------
# Clocking arithmetic


@pytest.mark.parametrize("f_out, expect, achieved", [
    (36, (0, 47, 4, 1), 36.0),     # icepll -i 12 -o 36
    (48, (0, 63, 4, 1), 48.0),     # icepll -i 12 -o 48 (the icestorm examples' 48 MHz PLL)
    (30, (0, 79, 5, 1), 30.0),     # icepll -i 12 -o 30
    (25, (0, 66, 5, 1), 25.125),   # icepll -i 12 -o 25: the well-known 25.125 MHz "VGA" setting
    # 16 MHz needs VCO = 16 * 2**DIVQ = 12 * (DIVF + 1) in 533..1066: 1024 = 12 * 85.33 is not a
    # multiple of 12, so the nearest is 12 * 85 / 64 = 15.9375 (DIVF=84, DIVQ=6).
    (16, (0, 84, 6, 1), 15.9375),
])
def test_pll_params_match_icepll(f_out, expect, achieved):
    p = pll_params(12, f_out)
    assert (p.divr, p.divf, p.divq, p.filter_range) == expect
    assert p.f_out_mhz == pytest.approx(achieved)
    assert p.f_pfd_mhz == 12.0 and p.f_vco_mhz == pytest.approx(12.0 * (p.divf + 1))


def _brute_force_nearest(f_in, f_out):
    """Independent derivation: every legal SIMPLE-feedback setting, nearest output."""
    best = math.inf
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not 10 <= pfd <= 133:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if 533 <= vco <= 1066:
                for divq in range(1, 7):
                    best = min(best, abs(vco / 2 ** divq - f_out))
    return best


@pytest.mark.parametrize("f_out", [16, 17.5, 20, 24, 27, 33.333, 40, 42, 50, 60, 66, 80, 100, 120, 133, 200, 275])
def test_pll_params_are_legal_and_nearest(f_out):
    p = pll_params(12, f_out)
    assert 10 <= p.f_pfd_mhz <= 133 and 533 <= p.f_vco_mhz <= 1066
    assert 0 <= p.divr <= 15 and 0 <= p.divf <= 127 and 1 <= p.divq <= 6
    assert p.f_out_mhz == pytest.approx(p.f_vco_mhz / 2 ** p.divq)
    assert abs(p.f_out_mhz - f_out) == pytest.approx(_brute_force_nearest(12, f_out))
    expect_filter = next(i + 1 for i, lim in enumerate((17, 26, 44, 66, 101, math.inf)) if p.f_pfd_mhz < lim)
    assert p.filter_range == expect_filter


@pytest.mark.parametrize("f_out", [5, 15.9, 276, 1000])
def test_pll_params_out_of_range(f_out):
    with pytest.raises(ValueError, match="16..275 MHz"):
        pll_params(12, f_out)


def test_uart_divisor():
    assert uart_divisor(30e6, 1_000_000) == (30, 0.0)
    assert uart_divisor(12e6, 3_000_000) == (4, 0.0)
    d, err = uart_divisor(30e6, 115_200)
    assert d == 260 and err < 0.002
    with pytest.raises(ValueError, match=r"off .* rates nearby"):
        uart_divisor(30e6, 1_400_000)
    with pytest.raises(ValueError, match="at least 4 clock cycles"):
        uart_divisor(12e6, 6_000_000)


def test_board_top_rejects_bad_clock_and_baud():
    cfg = AcceleratorConfig(**TINY)
    with pytest.raises(ValueError, match="16..275"):
        BoardTop(cfg, clock_mhz=300, baud=1_000_000, core="stub")
    with pytest.raises(ValueError, match="baud"):
        BoardTop(cfg, clock_mhz=30, baud=1_400_000, core="stub")
    top = BoardTop(cfg, clock_mhz=12, baud=3_000_000, core="stub")
    assert top.pll is None and top.divisor == 4
    top = BoardTop(cfg, clock_mhz=36, baud=3_000_000, core="stub")
    assert (top.pll.divr, top.pll.divf, top.pll.divq) == (0, 47, 4) and top.divisor == 12


# ---------------------------------------------------------------------------------------------
# Resource estimate and fit check


def test_fit_check_refuses_too_big_array(capsys):
    code, out, err = run_cli(capsys, "--rows", "64", "--lanes", "64")
    assert code == B.EXIT_NO_FIT
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 64x64") and "estimated not to fit" in lines[0]
    assert "LC" in lines[0] and "(estimate" in lines[0]


def test_fit_check_function():
    board = get_board("icebreaker")
    assert B.fit_check({"lc": 5000, "ebr": 30, "spram": 0, "dsp": 8}, board) == []
    over = B.fit_check({"lc": 6000, "ebr": 31, "spram": 0, "dsp": 9}, board)
    assert over == ["LC 6000/5280 (114%)", "EBR 31/30 (103%)", "DSP 9/8 (112%)"]


def test_estimate_grows_with_the_array():
    m = B.MODEL
    small = m.estimate(AcceleratorConfig(rows=1, lanes=8))
    big = m.estimate(AcceleratorConfig(rows=8, lanes=16))
    assert all(big[k] >= small[k] for k in ("lc", "ebr", "dsp")) and big["lc"] > small["lc"]
    # DSPs: one delta_w product per row and weight group, plus the requantizer's multiplier.
    assert m.dsp(AcceleratorConfig(rows=8, lanes=16)) == 8 + 2
    assert m.dsp(AcceleratorConfig(rows=8, lanes=16, scaling="shiftadd")) == 2


def test_auto_size_fills_the_estimate():
    board = get_board("icebreaker")
    roomy = dataclasses_replace_resources(board, lc=50_000, ebr=300, dsp=80)
    base = AcceleratorConfig(rows=1, lanes=8)
    cfg = B.auto_size(base, roomy)
    est = B.MODEL.estimate(cfg)
    assert est["lc"] <= 0.9 * 50_000 and est["ebr"] <= 300 and est["dsp"] <= 80
    # nothing bigger (in binary MACs per cycle) fits
    for lanes in B.AUTO_LANES:
        bigger = [r for r in range(1, B.AUTO_MAX_ROWS + 1) if r * lanes > cfg.bmac_per_cycle]
        for r in bigger[:1]:
            e = B.MODEL.estimate(AcceleratorConfig(rows=r, lanes=lanes))
            assert e["lc"] > 0.9 * 50_000 or e["ebr"] > 300 or e["dsp"] > 80
    tiny = dataclasses_replace_resources(board, lc=100, ebr=1, dsp=0)
    with pytest.raises(B.DoesNotFit, match="no array size fits"):
        B.auto_size(base, tiny)


def dataclasses_replace_resources(board, **res):
    import dataclasses
    return dataclasses.replace(board, resources={**board.resources, "spram": 4, **res})


# ---------------------------------------------------------------------------------------------
# Board top elaboration (no tools)


@pytest.mark.parametrize("board_name, clock", [("icebreaker", 30), ("icebreaker", 12), ("icesugar", 36),
                                               ("upduino_v3", 24)])
def test_board_top_elaborates(tmp_path, board_name, clock):
    board = get_board(board_name)
    top = BoardTop(AcceleratorConfig(**TINY), clock_mhz=clock, baud=1_000_000, core="stub",
                   clock_resource=board.clock_resource, pll_primitive=board.pll_primitive)
    plan = board.make_platform().build(top, name="t", build_dir=str(tmp_path), do_build=False)
    files = dict(plan.files)
    pcf = files["t.pcf"]
    il = files["t.il"]
    assert "set_io uart_0__rx__io" in pcf and "set_io uart_0__tx__io" in pcf
    assert "set_frequency clk12_0__io 12.0" in pcf  # nextpnr derives the PLL output's constraint
    if clock == 12:
        assert "SB_PLL40" not in il
    else:
        prim = "SB_PLL40_PAD" if board.pll_primitive == "pad" else "SB_PLL40_CORE"
        assert prim in il
    assert top.leds.get("error") and top.leds.get("done") and top.leds.get("busy")


def test_board_top_with_real_core_elaborates(tmp_path):
    top = BoardTop(AcceleratorConfig(**TINY), clock_mhz=30, baud=1_000_000)
    plan = get_board("icebreaker").make_platform().build(top, name="t", build_dir=str(tmp_path), do_build=False)
    assert top.system.core == "real" and type(top.system.target).__name__ == "HadaCore"
    assert "SB_PLL40_PAD" in dict(plan.files)["t.il"]


# ---------------------------------------------------------------------------------------------
# IDENTIFY over the UART pins (simulation of the pin-free system)


def test_identify_over_uart_reports_config():
    cfg = AcceleratorConfig(**TINY)
    divisor = 4
    dut = UARTSystem(cfg, divisor=divisor, core="stub", fifo_depth=16)
    host_tx, host_rx = UARTTx(divisor=divisor), UARTRx(divisor=divisor)
    from amaranth.hdl import Module
    m = Module()
    m.submodules.dut, m.submodules.htx, m.submodules.hrx = dut, host_tx, host_rx
    m.d.comb += [dut.rx.eq(host_tx.tx), host_rx.rx.eq(dut.tx)]
    request = encode_frame(Command.IDENTIFY, 1)
    got = bytearray()

    async def testbench(ctx):
        ctx.set(host_rx.o.ready, 1)
        pos = 0
        zeros = 0
        for _ in range(40_000):
            if pos < len(request):
                ctx.set(host_tx.i.valid, 1)
                ctx.set(host_tx.i.payload, request[pos])
            else:
                ctx.set(host_tx.i.valid, 0)
            _, _, t_rdy, r_val, r_data = await ctx.tick().sample(host_tx.i.ready, host_rx.o.valid,
                                                                 host_rx.o.payload)
            if pos < len(request) and t_rdy:
                pos += 1
            if r_val:
                got.append(r_data)
                if r_data == 0:
                    zeros += 1
                    if zeros == 2:
                        return

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    frame = decode_frame(bytes(got))
    info = unpack_identify(frame.payload)
    assert info.config == config_json(cfg).decode()
    assert AcceleratorConfig.from_json(info.config) == cfg
    assert info.config_dict() == json.loads(cfg.to_json())


# ---------------------------------------------------------------------------------------------
# Programming


def test_program_without_programmer_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("ICEPROG", "iceprog-not-installed")
    opts = B.BuildOptions(board=get_board("icebreaker"), config=AcceleratorConfig(), clock_mhz=30, baud=1_000_000,
                          core="real", seed=1, out=tmp_path)
    with pytest.raises(B.BuildError, match="no programmer found: install iceprog-not-installed or openFPGALoader"):
        B.program_board(opts)
    # the CLI checks before building: exit status 5, one line
    code = B.main(["--board", "icebreaker", "--rows", "1", "--lanes", "8", "--skip-fit-check", "--program",
                   "--out", str(tmp_path / "never")])
    assert code == B.EXIT_PROGRAM and not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------------------------
# asic target (Yosys generic synthesis of a tiny core), and the cache


def test_asic_verilog_and_gate_counts(tmp_path, capsys, monkeypatch):
    out = tmp_path / "asic"
    argv = ["--board", "asic", "--rows", "1", "--lanes", "8", *TINY_SET, "--out", str(out), "--json"]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["board"] == "asic" and report["core"] == "real" and report["status"] == "ok"
    assert report["bmac_per_cycle"] == 8
    assert report["gate_count"]["cells"] > 100 and report["gate_count"]["flip_flops"] > 0
    assert "module hada_core" in (out / "hada_core.v").read_text()
    assert json.loads((out / "config.json").read_text())["rows"] == 1
    assert (out / "report.md").is_file() and (out / "gates.json").is_file()
    assert report["cached"] is False
    # same inputs: cached (Yosys not run again); --force: rebuilt (a stand-in for Yosys, to stay fast)
    from hadahw import fpga
    calls = []

    def fake_count(verilog, top, **kw):
        calls.append(top)
        return dict(report["gate_count"], workdir=str(kw.get("workdir")))

    monkeypatch.setattr(fpga, "yosys_cell_count", fake_count)
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0 and json.loads(stdout)["cached"] is True and "cached" in err and calls == []
    code, stdout, err = run_cli(capsys, *argv, "--force")
    assert code == 0 and json.loads(stdout)["cached"] is False and calls == ["hada_core"]
    # the clock is an input of the report (peak GOPS at an assumed clock): not cached
    code, stdout, err = run_cli(capsys, *argv, "--clock-mhz", "100")
    rep = json.loads(stdout)
    assert code == 0 and rep["cached"] is False and len(calls) == 2
    assert rep["peak_gops"] == pytest.approx(2 * 8 * 100 / 1000)


# ---------------------------------------------------------------------------------------------
# One real iCEBreaker build (slow: synthesis, place and route, pack)

REPORT_KEYS = {"board", "config", "resources", "fmax_mhz", "target_mhz", "timing_met", "bmac_per_cycle", "peak_gops",
               "peak_gops_definition", "build_seconds", "tool_versions", "core", "status", "inputs"}


@pytest.mark.slow
def test_icebreaker_build_small_config(tmp_path, capsys):
    out = tmp_path / "ice"
    # Small enough to fit beside the HostLink today (measured 4,890 LC, 19.4 MHz): narrow requantizer, no
    # pooling, 4-bit delta_a, tiny memories.
    lean = ["--set", "act_bits=4", "--set", "mult_bits=8", "--set", "bias_bits=16", "--set", "max_shift=15",
            "--set", "max_pool=1"]
    argv = ["--board", "icebreaker", "--rows", "1", "--lanes", "8", *TINY_SET, *lean, "--clock-mhz", "16",
            "--out", str(out), "--json"]
    code, stdout, err = run_cli(capsys, *argv)
    assert code in (B.EXIT_OK, B.EXIT_TIMING), err
    report = json.loads(stdout)
    assert REPORT_KEYS <= set(report)
    assert (out / "hadahw.bin").stat().st_size > 100_000
    assert (out / "hadahw.v").is_file() and (out / "report.md").is_file()
    res = report["resources"]
    assert res["LC"]["available"] == 5280 and 0 < res["LC"]["used"] <= 5280 and res["LC"]["estimated"] > 0
    assert res["EBR"]["available"] == 30 and res["DSP"]["available"] == 8 and res["SPRAM"]["available"] == 4
    assert report["core"] == "real" and report["fmax_mhz"] > 0
    assert report["timing_met"] == (report["fmax_mhz"] >= report["target_mhz"])
    assert report["peak_gops"] == pytest.approx(
        2 * report["bmac_per_cycle"] * min(report["fmax_mhz"], report["target_mhz"]) / 1000, abs=1e-3)
    assert set(report["build_seconds"]) >= {"elaborate", "synth", "pnr", "pack", "total"}
    # a second run is cached
    code2, stdout2, _ = run_cli(capsys, *argv)
    assert code2 == code and json.loads(stdout2)["cached"] is True


@pytest.mark.parametrize("beta_w,beta_a", [(16, 2), (4, 1)])
def test_network_board_config_takes_the_first_binarized_layers_formats(beta_w, beta_a):
    """The CLI's build for the network's betas, with that layer's delta_w format and act_bits."""
    import dataclasses

    from netgen import lowered_digits
    net, _ = lowered_digits("digits-mlp", 0, beta_w=beta_w, beta_a=beta_a)
    ref = net.layers[1]
    layers = [net.layers[0], dataclasses.replace(ref, act_bits=6), net.layers[2]]
    cfg = B.network_board_config(layers)
    want = B.board_build_config("--board", "icebreaker", "--beta-w", str(beta_w), "--beta-a", str(beta_a))
    assert cfg == dataclasses.replace(want, weight_delta=ref.weight_format, act_bits=6)
    with pytest.raises(ValueError, match=r"no layer of the network has binarized weights"):
        B.network_board_config([net.layers[0], net.layers[2]])


# ---------------------------------------------------------------------------------------------
# Placer seeds: the whole flow against stand-in tools whose Fmax depends on the seed

STUB_ARGV = ["--board", "icebreaker", "--core", "stub", "--clock-mhz", "30", "--json", "--quiet"]


def test_a_netlist_yosys_had_to_guess_is_a_tool_failure(tmp_path, capsys, monkeypatch, fake_tools):
    monkeypatch.setenv("FAKE_FMAX", "1:31")
    monkeypatch.setenv("FAKE_YOSYS_CONFLICT", "1")
    code, _, err = run_cli(capsys, *STUB_ARGV, "--out", str(tmp_path / "out"))
    assert code == B.EXIT_FAILURE
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: synth produced a netlist that does not implement the design: Warning: "
                           "Driver-driver conflict"), line
    assert fake_tools() == []                      # nothing was placed
    assert not (tmp_path / "out" / "hadahw.bin").exists()


@pytest.mark.parametrize("fmax, argv, code, seeds", [
    ("1:31", [], B.EXIT_OK, [1]),                                   # met at once: one placement
    ("1:25,2:31,3:40", [], B.EXIT_OK, [1, 2]),                      # the first seed that meets is kept
    ("1:25,2:26,3:27", [], B.EXIT_TIMING, [1, 2, 3]),               # SEED_TRIES seeds, then exit 3
    ("1:25,2:31", ["--seed", "1"], B.EXIT_TIMING, [1]),             # an explicit seed is tried alone
    ("5:25,6:31", ["--seed", "5"], B.EXIT_TIMING, [5]),
])
def test_placement_retries_seeds_until_timing_is_met(tmp_path, capsys, monkeypatch, fake_tools, fmax, argv, code,
                                                     seeds):
    monkeypatch.setenv("FAKE_FMAX", fmax)
    got, stdout, err = run_cli(capsys, *STUB_ARGV, "--out", str(tmp_path / "out"), *argv)
    assert got == code, err
    assert fake_tools() == seeds                   # nextpnr ran once per seed (synthesis once: not counted)
    report = json.loads(stdout)
    table = dict(kv.split(":") for kv in fmax.split(","))
    assert [a["seed"] for a in report["seed_attempts"]] == seeds
    assert [a["fmax_mhz"] for a in report["seed_attempts"]] == [float(table[str(s)]) for s in seeds]
    assert report["seed"] == seeds[-1] and report["fmax_mhz"] == float(table[str(seeds[-1])])
    assert report["resources"]["LC"]["used"] == 1000 + seeds[-1]   # the report of the placement kept
    assert (tmp_path / "out" / "hadahw.bin").read_text() == f"seed {seeds[-1]}\n"
    assert report["timing_met"] == (code == B.EXIT_OK)
    if code == B.EXIT_TIMING:
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: timing not met") and ", ".join(map(str, seeds)) in line
    md = (tmp_path / "out" / "report.md").read_text()
    assert ("placer seeds tried" in md) == (len(seeds) > 1)
