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
from hadahw.lower_net import golden_predict, lower_network_full
from hadahw.params import AcceleratorConfig
from hadahw.sw.accelerator import Accelerator
from hadahw.sw.devmodel import DevModelPipe
from hadahw.sw.link import Link
from hadahw.train import fit, load_checkpoint, load_split, save_checkpoint

import netgen
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


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``python -m hadahw.run ARGV``, in this process."""
    try:
        code = run_cli.main(list(argv))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


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
def fake_board(monkeypatch, corrupt=None):
    """Replace the device of ``hadahw.run`` by the golden stand-in (records what is loaded)."""
    holder = {"corrupt": corrupt}
    orig_load = Accelerator.load

    def load(self, program, progress=False):
        holder["program"] = program
        return orig_load(self, program, progress)

    @contextlib.contextmanager
    def device(args, cfg):
        link = Link(DevModelPipe(golden_device(CFG, holder)), timeout=0.05)
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
    print(f"hadahw.run --sim: load {rep['load_s']:.1f} s, per inference transfer {rep['transfer_s']:.2f} s, "
          f"compute {rep['compute_s']:.3f} s, {rep['cycles_predicted']} cycles; total {rep['wall_s']:.1f} s")
