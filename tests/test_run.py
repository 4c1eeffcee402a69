"""``python -m hadahw.run``: argument errors, the report, and one run on the simulated board.

The checkpoint is trained here (``hadahw.train.fit``, one epoch on a subset: an imperfect model,
so the accuracies are not all 100 %).  The accuracies the CLI reports are checked against the
models recomputed here, on the image indices it reports.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from hadahw import run as run_cli
from hadahw.build import DEFAULT_CLOCK_MHZ, MODEL
from hadahw.lower_net import golden_predict, lower_network_full
from hadahw.params import AcceleratorConfig
from hadahw.protocol import Command, Space, encode_frame
from hadahw.sw.accelerator import Accelerator
from hadahw.sw.devmodel import DevModelPipe
from hadahw.sw.link import Link
from hadahw.train import fit, load_checkpoint, load_split, save_checkpoint

import netgen
from cliutil import run_main
from fakedev import golden_device

CFG = AcceleratorConfig(**netgen.SYSTEM_CONFIG_KW)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    result = fit("digits-mlp", "hada16-2", epochs=1, seed=0, train_subset=256, quiet=True)
    ckpt = save_checkpoint(result, d / "mlp.pt")
    cfg = d / "config.json"
    cfg.write_text(CFG.to_json(indent=2, sort_keys=True))  # as python -m hadahw.build writes it
    return {"ckpt": str(ckpt), "config": str(cfg), "dir": d}


def cli(capsys, *argv):
    return run_main(run_cli.main, capsys, *argv)


def expected_accuracies(ckpt: str, indices) -> dict:
    """Float and golden accuracy on the given test images, computed independently of the CLI."""
    model, _ = load_checkpoint(ckpt)
    split = load_split()
    net = lower_network_full(model, split.x_train)
    x, y = split.x_test[indices], split.y_test[indices].numpy()
    with torch.no_grad():
        flt = model(x).argmax(1).numpy()
    gold = golden_predict(net.layers, net.input_exponent, x.numpy().astype(np.float64)).argmax(1)
    return {"float_accuracy": float((flt == y).mean()), "golden_accuracy": float((gold == y).mean())}


# ---------------------------------------------------------------------------------------------
# Argument errors: one line, exit status 2, no traceback


def _usage_cases(f):
    return [
        ([], r"the following arguments are required: --model"),
        (["--model", f["ckpt"]], r"one of the arguments --sim --port is required"),
        (["--model", f["ckpt"], "--sim", "--port", "/dev/null"], r"argument --port: not allowed with argument --sim"),
        (["--model", f["ckpt"], "--sim", "--images", "0"], r"argument --images: must be a positive integer or 'all', "
                                                           r"not '0'"),
        (["--model", f["ckpt"], "--sim", "--images", "some"], r"argument --images: must be a positive integer or "
                                                              r"'all', not 'some'"),
        (["--model", f["ckpt"], "--sim", "--seed", "-1"], r"argument --seed: must be a non-negative integer, not '-1'"),
        (["--model", f["ckpt"], "--port", "x", "--baud", "0"], r"argument --baud: must be a positive integer, not '0'"),
        (["--model", str(f["dir"] / "none.pt"), "--sim"], r"--model: no checkpoint file .*none\.pt"),
        (["--model", f["config"], "--sim"], r"--model: .*config\.json' is not a hadahw\.train checkpoint"),
        (["--model", f["ckpt"], "--sim", "--config", str(f["dir"] / "none.json")], r"--config: cannot read "),
        (["--model", f["ckpt"], "--sim", "--config", f["bad_config"]],
         r"--config: .* is not an accelerator configuration: unknown accelerator configuration keys \['pe'\]"),
        (["--model", f["ckpt"], "--sim", "--images", "361"], r"--images must be at most 360 \(the test split\) or "
                                                             r"'all', not 361"),
        (["--model", f["ckpt"], "--sim", "--config", f["small_config"]],
         r"--config: the network does not fit this accelerator configuration \(accelerator segment \(network layers "
         r"1\.\.1\): .*weight_depth=256"),
    ]


def test_argument_errors(files, capsys):
    f = dict(files)
    bad = f["dir"] / "bad.json"
    bad.write_text(json.dumps({**CFG.to_dict(), "pe": 4}))
    small = f["dir"] / "small.json"
    small.write_text(AcceleratorConfig(**{**netgen.SYSTEM_CONFIG_KW, "weight_depth": 256}).to_json())
    f["bad_config"], f["small_config"] = str(bad), str(small)
    for argv, pattern in _usage_cases(f):
        code, out, err = cli(capsys, *argv)
        assert code == run_cli.EXIT_USAGE, (argv, code, err)
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert re.search(pattern, lines[0]), (argv, lines[0])


def test_usage_error_from_the_command_line(files):
    """The real entry point: one line on stderr, status 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "hadahw.run", "--model", files["ckpt"], "--sim", "--images", "-3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "error: argument --images: must be a positive integer or 'all', not '-3'\n"


def test_port_that_does_not_exist(files, capsys):
    code, out, err = cli(capsys, "--model", files["ckpt"], "--port", str(files["dir"] / "ttyNONE"), "--images", "2")
    assert code == run_cli.EXIT_DEVICE and out == ""
    assert err.startswith("error: cannot open serial port") and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The report, against a software stand-in of the core (no simulator)


@contextlib.contextmanager
def fake_board(monkeypatch, corrupt=None, **kw):
    """Replace the device of ``hadahw.run`` by the golden stand-in (records what is loaded).

    ``kw`` go to the stand-in's DevModel (e.g. ``run_polls``: STATUS polls a run stays busy for).
    """
    holder = {"corrupt": corrupt}
    orig_load = Accelerator.load

    def load(self, program, progress=False):
        holder["program"] = program
        return orig_load(self, program, progress)

    @contextlib.contextmanager
    def device(args, cfg):
        link = Link(DevModelPipe(golden_device(CFG, holder, **kw)), timeout=0.05)
        yield link, "fake"

    monkeypatch.setattr(Accelerator, "load", load)
    monkeypatch.setattr(run_cli, "_device", device)
    yield holder


def test_report_against_golden_stand_in(files, capsys, monkeypatch):
    with fake_board(monkeypatch) as holder:
        code, out, err = cli(capsys, "--model", files["ckpt"], "--port", "fake", "--images", "12", "--seed", "3",
                             "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert holder["runs"] == 12 and rep["images"] == 12 and len(rep["image_indices"]) == 12
    assert rep["config"] == CFG.to_dict()  # --port without --config: the device's own
    assert [l["where"] for l in rep["layers"]] == ["host", "accelerator", "host"]
    assert rep["ok"] and rep["prediction_mismatches"] == 0 and rep["value_mismatches"] == 0
    assert rep["values_compared"] == 12 * 10
    assert rep["cycles_measured"] == [rep["cycles_predicted"]] * 12 and rep["cycles_match"]
    want = expected_accuracies(files["ckpt"], rep["image_indices"])
    assert rep["float_accuracy"] == want["float_accuracy"]
    assert rep["golden_accuracy"] == want["golden_accuracy"] == rep["hardware_accuracy"]
    # the same seed picks the same images; another seed others
    with fake_board(monkeypatch):
        _, out2, _ = cli(capsys, "--model", files["ckpt"], "--port", "fake", "--images", "12", "--seed", "4", "--json")
    assert json.loads(out2)["image_indices"] != rep["image_indices"]
    # the board model: no report.json, so the resource model's estimate at the build's default clock and --baud
    hw = rep["hardware"]
    assert hw["source"].startswith("estimated") and hw["clock_mhz"] == DEFAULT_CLOCK_MHZ and hw["baud"] == 1_000_000
    assert hw["resources"] == MODEL.estimate(CFG) and hw["pll"] is True
    lat, b = rep["latency_s_per_inference"], rep["bytes_per_inference"]
    assert lat["compute"] == pytest.approx(rep["cycles_predicted"] / (DEFAULT_CLOCK_MHZ * 1e6), rel=1e-12)
    assert lat["transfer"] == pytest.approx((b["sent"] + b["received"]) * 10 / 1e6, rel=1e-12)
    assert lat["total"] == pytest.approx(lat["compute"] + lat["transfer"], rel=1e-12)
    # the input goes out and the 10 logits come back (wide values: 10 x entries_per_output entries)
    prog = holder["program"]
    used, stride = prog.memory_map.compact_spaces[Space.ACTS]  # the output is read compact: no holes
    assert b["sent"] > prog.input_length and prog.output_length > b["received"] > prog.output_length // stride * used
    # the 4x16 test configuration is larger than a UP5K: no energy figure, and the report says why
    assert hw["resources"]["lc"] > 5280
    assert rep["energy_uj_per_inference"] is None and "do not fit the iCE40 UP5K" in rep["energy_note"]


def test_transfer_bytes_exclude_extra_status_polls(files, capsys, monkeypatch):
    """The modeled transfer counts one STATUS poll per inference, however long the device stays busy."""
    reps = {}
    for polls in (1, 4):
        with fake_board(monkeypatch, run_polls=polls):
            code, out, err = cli(capsys, "--model", files["ckpt"], "--port", "fake", "--images", "5", "--json")
        assert code == 0, err
        reps[polls] = json.loads(out)
    assert reps[1]["bytes_per_inference"] == reps[4]["bytes_per_inference"]
    # ... while the link really carried 3 more STATUS requests per inference
    status_request = len(encode_frame(Command.STATUS, 0, b""))
    assert reps[4]["link"]["bytes_sent"] - reps[1]["link"]["bytes_sent"] == 5 * 3 * status_request
    extra_rx = reps[4]["link"]["bytes_received"] - reps[1]["link"]["bytes_received"]
    assert extra_rx > 0 and extra_rx % (5 * 3) == 0
    # with a single poll the modeled bytes are the inferences' share of the session (the rest: IDENTIFY, load)
    one = reps[1]
    assert 0 < 5 * one["bytes_per_inference"]["sent"] < one["link"]["bytes_sent"]
    assert 0 < 5 * one["bytes_per_inference"]["received"] < one["link"]["bytes_received"]


def _write_build(folder, cfg: AcceleratorConfig, **over) -> str:
    """A finished build folder as python -m hadahw.build leaves it (config.json + report.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(cfg.to_json(indent=2, sort_keys=True))
    report = {"board": "icebreaker", "config": cfg.to_dict(), "status": "ok", "target_mhz": 12.0,
              "fmax_mhz": 20.5, "clock": {"requested_mhz": 12.0, "achieved_mhz": 12.0, "pll": None},
              "uart": {"baud": 115200, "divisor": 104, "error": 0.0016},
              "resources": {"LC": {"used": 3000, "available": 5280, "estimated": 3100},
                            "EBR": {"used": 12, "available": 30, "estimated": 12},
                            "SPRAM": {"used": 0, "available": 4, "estimated": 0},
                            "DSP": {"used": 3, "available": 8, "estimated": 3},
                            "IO": {"used": 4, "available": None}, "PLL": {"used": 0, "available": None}}}
    report.update(over)
    (folder / "report.json").write_text(json.dumps(report))
    return str(folder / "config.json")


def test_energy_from_a_build_report(files, capsys, monkeypatch):
    """A report.json beside --config supplies measured LC, clock (no PLL) and baud; the energy follows."""
    cfg_path = _write_build(files["dir"] / "build-ok", CFG)
    with fake_board(monkeypatch):
        code, out, err = cli(capsys, "--model", files["ckpt"], "--port", "fake", "--config", cfg_path, "--images",
                             "4", "--json")
    assert code == 0, err
    rep = json.loads(out)
    hw = rep["hardware"]
    assert hw["source"].startswith("measured") and "report.json" in hw["source"]
    assert hw["resources"] == {"lc": 3000, "ebr": 12, "spram": 0, "dsp": 3}
    assert (hw["clock_mhz"], hw["pll"], hw["baud"]) == (12.0, False, 115200)
    b, cyc = rep["bytes_per_inference"], rep["cycles_predicted"]
    t_c, t_x = cyc / 12e6, (b["sent"] + b["received"]) * 10 / 115200
    assert rep["latency_s_per_inference"]["transfer"] == pytest.approx(t_x, rel=1e-12)
    # by hand, from the constants hadahw.energy cites: 85.6 uA x 1.2 V static, 52 pJ/cycle clock,
    # sqrt(0.014 x 0.2) pJ per LC per cycle computing, 0.014 idle
    p_static = 85.6e-6 * 1.2
    compute = p_static * t_c + cyc * (52e-12 + 3000 * (0.014 * 0.2) ** 0.5 * 1e-12)
    idle = t_x * (p_static + 12e6 * (52e-12 + 3000 * 0.014e-12))
    e = rep["energy_uj_per_inference"]
    assert e["compute"] == pytest.approx(1e6 * compute, rel=1e-9)
    assert e["transfer"] == pytest.approx(1e6 * idle, rel=1e-9)
    assert e["total"] == pytest.approx(1e6 * (compute + idle), rel=1e-9)
    assert e["low"] < e["total"] < e["high"] and rep["energy_note"] == ""
    # the human report carries both lines
    with fake_board(monkeypatch):
        code, out, err = cli(capsys, "--model", files["ckpt"], "--port", "fake", "--config", cfg_path, "--images", "2")
    assert code == 0, err
    assert re.search(r"^hardware latency per inference at 12 MHz, 115200 baud: compute [\d.]+ ms, transfer", out, re.M)
    assert re.search(r"^estimated energy per inference: [\d.e+-]+ uJ \(range [\d.e+-]+-[\d.e+-]+\)", out, re.M)


def test_build_report_of_another_configuration_is_ignored(files, capsys, monkeypatch):
    other = AcceleratorConfig(**{**netgen.SYSTEM_CONFIG_KW, "act_depth": 4096})
    cfg_path = _write_build(files["dir"] / "build-other", CFG, config=other.to_dict())
    with fake_board(monkeypatch):
        code, out, err = cli(capsys, "--model", files["ckpt"], "--port", "fake", "--config", cfg_path, "--images",
                             "2", "--json")
    assert code == 0, err
    hw = json.loads(out)["hardware"]
    assert hw["source"].startswith("estimated") and "not a finished build of this configuration" in hw["source"]
    assert hw["clock_mhz"] == DEFAULT_CLOCK_MHZ and hw["resources"] == MODEL.estimate(CFG)


def test_run_checkpoint_function(files, monkeypatch):
    with fake_board(monkeypatch) as holder:
        rep = run_cli.run_checkpoint(files["ckpt"], CFG, images=3, seed=1, port="fake")
    assert isinstance(rep, run_cli.RunReport) and rep.ok and rep.images == 3 and holder["runs"] == 3
    assert rep.config == CFG.to_dict() and rep.target == "port"
    for bad in (0, -2, "some", True):
        with pytest.raises(ValueError, match=r"images must be a positive integer or 'all'"):
            run_cli.run_checkpoint(files["ckpt"], CFG, images=bad, port="fake")


def test_mismatch_exits_1(files, capsys, monkeypatch):
    def corrupt(y):
        y = y.copy()
        y[0] += 1  # one value of the accelerator's output is off by one
        return y

    with fake_board(monkeypatch, corrupt=corrupt):
        code, out, err = cli(capsys, "--model", files["ckpt"], "--port", "fake", "--images", "3")
    assert code == run_cli.EXIT_MISMATCH, (out, err)
    assert "<-- MISMATCH" in out and "hardware vs golden:" in out


# ---------------------------------------------------------------------------------------------
# The simulated board


def test_sim_run(files, capsys):
    code, out, err = cli(capsys, "--model", files["ckpt"], "--sim", "--config", files["config"], "--images", "3",
                         "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["target"] == "sim" and rep["device"].startswith("/dev/")
    assert rep["ok"] and rep["prediction_mismatches"] == 0 and rep["value_mismatches"] == 0
    assert [l["where"] for l in rep["layers"]] == ["host", "accelerator", "host"]
    assert rep["cycles_measured"] == [rep["cycles_predicted"]] * 3
    want = expected_accuracies(files["ckpt"], rep["image_indices"])
    assert rep["golden_accuracy"] == want["golden_accuracy"] == rep["hardware_accuracy"]
    assert rep["transfer_s"] > 0 and rep["compute_s"] > 0 and rep["load_s"] > 0
    # the board model rides along (no report.json beside the config: the estimate at the default clock, 1 Mbaud)
    lat, b = rep["latency_s_per_inference"], rep["bytes_per_inference"]
    assert lat["compute"] == pytest.approx(rep["cycles_predicted"] / (DEFAULT_CLOCK_MHZ * 1e6), rel=1e-12)
    assert lat["transfer"] == pytest.approx((b["sent"] + b["received"]) * 10 / 1e6, rel=1e-12)
    assert set(rep) >= {"hardware", "energy_uj_per_inference", "energy_note"}
    print(f"hadahw.run --sim: load {rep['load_s']:.1f} s, per inference transfer {rep['transfer_s']:.2f} s, "
          f"compute {rep['compute_s']:.3f} s, {rep['cycles_predicted']} cycles; total {rep['wall_s']:.1f} s")
