"""python -m hadahw.dse: the sweep reports what the build CLI and the simulated board say.

* estimates: a point fits exactly when ``python -m hadahw.build`` (without --skip-fit-check)
  accepts it; peak = 2 x rows x lanes x clock; pairs with beta_a > beta_w are not swept;
* networks: cycles and wire bytes per inference equal what ``bench/link_bench.py`` measured on the
  Verilator simulation of the board (its JSON), and the sustained rate follows from the layers'
  MACs counted from the PyTorch model;
* synthesis: only points that fit are built, on a Dask LocalCluster, with stand-in tools; their
  measured figures replace the estimate; a tool failure is exit status 1 with the reports written;
* Pareto marks exactly the non-dominated points; bad arguments are one line and exit status 2.
"""

import json
from pathlib import Path

import pytest

from hadahw import dse
from hadahw.build import DoesNotFit, board_build_config
from hadahw.params import AcceleratorConfig

from cliutil import run_main
from faketools import fake_tools  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    return run_main(dse.main, capsys, *argv)


def test_estimates_agree_with_the_build_cli(tmp_path, capsys):
    argv = ["--rows", "1,2", "--lanes", "8,16", "--beta-w", "8,16", "--beta-a", "2,16", "--model", "none",
            "--out", str(tmp_path), "--json", "--quiet"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    rows = json.loads(out)["points"]
    # (8, 16) is skipped: beta_a must not exceed beta_w.
    assert {(r["point"]["beta_w"], r["point"]["beta_a"]) for r in rows} == {(8, 2), (16, 2), (16, 16)}
    assert len(rows) == 3 * 4
    for r in rows:
        p = r["point"]
        build_argv = ["--board", "icebreaker", "--beta-w", str(p["beta_w"]), "--beta-a", str(p["beta_a"]),
                      "--rows", str(p["rows"]), "--lanes", str(p["lanes"])]
        try:
            cfg = board_build_config(*build_argv)
            accepted = True
        except DoesNotFit:
            cfg = board_build_config(*build_argv, "--skip-fit-check")
            accepted = False
        assert r["fits"] == accepted, r["label"]
        assert AcceleratorConfig.from_dict(r["config"]) == cfg
        assert r["peak_gops"] == pytest.approx(2 * p["rows"] * p["lanes"] * 30.0 / 1000)
    assert any(r["fits"] for r in rows) and not all(r["fits"] for r in rows)
    assert (tmp_path / "dse.md").read_text().count("\n| ") == 1 + len(rows)  # header + one line per point


def test_network_figures_equal_the_simulated_board():
    """Cycles and wire bytes of one inference as measured by bench/link_bench.py (Verilator, at the pins)."""
    bench = json.loads((ROOT / "bench" / "results" / "link.json").read_text())
    cfg = AcceleratorConfig.from_dict(bench["settings"]["config"])
    clock = bench["settings"]["clock_hz"] / 1e6
    point = dse.GridPoint(beta_w=cfg.beta_w, beta_a=cfg.beta_a, rows=cfg.rows, lanes=cfg.lanes, scaling=cfg.scaling,
                          clock_mhz=clock)
    row = dse.estimate_point(point, "icebreaker", 1_000_000)
    assert AcceleratorConfig.from_dict(row["config"]) == cfg  # the bench ran the board's default configuration
    for entry in bench["latency"]:
        measured = next(d for d in entry["per_divisor"] if d["baud"] == 1_000_000)
        got = dse.network_figures(row, entry["model"])
        assert got["cycles"] == entry["run"]["status_cycles"][0], entry["model"]
        phases = ("input", "run", "status", "output")
        assert got["wire_bytes"] == {"sent": sum(measured[k]["req_bytes"] for k in phases),
                                     "received": sum(measured[k]["rep_bytes"] for k in phases)}, entry["model"]
        lat = got["latency_ms"]
        assert lat["compute"] == pytest.approx(1e3 * got["cycles"] / (clock * 1e6))
        wire = got["wire_bytes"]["sent"] + got["wire_bytes"]["received"]
        assert lat["transfer"] == pytest.approx(1e3 * wire * 10 / 1_000_000)
        assert got["energy_uj"]["low"] <= got["energy_uj"]["total"] <= got["energy_uj"]["high"]


def test_sustained_rate_counts_the_models_macs():
    import torch

    from hadahw.nets import build_model
    point = dse.GridPoint(beta_w=16, beta_a=2, rows=2, lanes=8, scaling="dsp", clock_mhz=30.0)
    row = dse.estimate_point(point, "icebreaker", 1_000_000)
    got = dse.network_figures(row, "digits-mlp")
    assert got["accelerator_layers"] == [1, 2]  # the hidden layer; first and last stay on the host
    linears = [m for m in build_model("digits-mlp").modules() if isinstance(m, torch.nn.Linear)]
    assert got["bmacs"] == linears[1].weight.numel()  # batch 1: one MAC per weight
    assert got["sustained_gops"] == pytest.approx(2 * got["bmacs"] * 30e6 / got["cycles"] / 1e9)
    assert got["sustained_gops"] <= row["peak_gops"]


def test_pareto_marks_exactly_the_non_dominated_points():
    rows = [dse.estimate_point(dse.GridPoint(beta_w=16, beta_a=ba, rows=r, lanes=lanes, scaling="dsp", clock_mhz=30),
                               "icebreaker", 1_000_000)
            for ba in (2, 16) for r in (1, 2, 4) for lanes in (8, 16)]
    front = dse.pareto(rows)
    usable = [r for r in rows if r["fits"]]
    assert front and set(map(id, front)) == {id(r) for r in rows if r["pareto"]}

    def beats(a, b):
        ga, gb, la, lb = a["peak_gops"], b["peak_gops"], a["estimate"]["lc"], b["estimate"]["lc"]
        return ga >= gb and la <= lb and (ga > gb or la < lb)
    for r in rows:
        assert r["pareto"] == (r["fits"] and not any(beats(o, r) for o in usable)), r["label"]


def test_synthesis_runs_on_dask_for_the_points_that_fit(tmp_path, capsys, monkeypatch, fake_tools):
    monkeypatch.setenv("FAKE_FMAX", "1:31")
    out = tmp_path / "dse"
    code, stdout, err = run_cli(capsys, "--rows", "1,2", "--lanes", "8,16", "--model", "digits-mlp", "--synth",
                                "--workers", "1", "--seed", "1", "--out", str(out), "--plot", "--json", "--quiet")
    assert code == 0, err
    rows = json.loads(stdout)["points"]
    fitting = [r for r in rows if r["fits"]]
    assert 0 < len(fitting) < len(rows)
    assert fake_tools() == [1] * len(fitting)  # one placement per fitting point, none for the others
    for r in rows:
        s = r.get("synth")
        if not r["fits"]:
            assert s is None
            continue
        assert s["status"] == "built" and s["resources"]["lc"] == 1001 and s["fmax_mhz"] == 31.0 and s["timing_met"]
        assert s["peak_gops"] == pytest.approx(r["peak_gops"])  # met at 30 MHz: peak at the clock
        assert (out / s["report"]).is_file()
        energy = r["networks"]["digits-mlp"]["energy_uj"]["total"]
        est_energy = dse.network_figures(r, "digits-mlp")["energy_uj"]["total"]
        assert energy < est_energy  # the energy model now sees 1,001 measured LC, not the ~4,800 estimated
    assert all(r["pareto"] == (r["fits"] and r["peak_gops"] == max(f["peak_gops"] for f in fitting)) for r in rows)
    md = (out / "dse.md").read_text()
    assert "LC meas." in md and "not built" in md
    assert (out / "dse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_synthesis_is_exit_1_with_the_reports_written(tmp_path, capsys, monkeypatch, fake_tools):
    monkeypatch.setenv("FAKE_FMAX", "1:31")
    monkeypatch.setenv("FAKE_YOSYS_CONFLICT", "1")
    out = tmp_path / "dse"
    code, stdout, err = run_cli(capsys, "--rows", "1", "--lanes", "8", "--model", "none", "--synth", "--workers", "1",
                                "--out", str(out), "--json", "--quiet")
    assert code == 1
    (row,) = json.loads(stdout)["points"]
    assert row["synth"]["status"] == "tool_failure" and "Driver-driver conflict" in row["synth"]["reason"]
    assert not row["pareto"]
    assert "tool_failure" in (out / "dse.md").read_text()


@pytest.mark.parametrize("argv, name", [
    (["--rows", "0"], "--rows"),
    (["--rows", "1,x"], "--rows"),
    (["--lanes", "12"], "--lanes"),
    (["--beta-w", "3"], "--beta-w"),
    (["--beta-a", "128"], "--beta-a"),
    (["--scaling", "lut"], "--scaling"),
    (["--model", "resnet"], "--model"),
    (["--clock-mhz", "-5"], "--clock-mhz"),
    (["--clock-mhz", "500"], "--clock-mhz"),
    (["--board", "asic"], "--board"),
    (["--workers", "0"], "--workers"),
    (["--baud", "0"], "--baud"),
    (["--beta-w", "4", "--beta-a", "8"], "--beta-a"),
    (["--set", "nonsense=1"], "--set: unknown accelerator configuration keys ['nonsense']"),
    (["--set", "act_bits=99"], "act_bits must be an integer in 1..16"),
])
def test_bad_arguments_are_one_line_naming_the_parameter(tmp_path, capsys, argv, name):
    code, out, err = run_cli(capsys, *argv, "--model", "none", "--quiet", "--out", str(tmp_path / "o"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], err
    assert not (tmp_path / "o").exists()  # nothing written
