"""bench/throughput_bench.py: the MAC count, the cycle attribution and the output it rests on.

* the binary-MAC count equals counts worked out by hand for tiny layers;
* on a tiny compiled program the per-layer cycles are :func:`hadahw.program.layer_cycles`, add up
  to :func:`hadahw.program.predict_cycles`, and the attribution terms add up to them;
* a default run writes the documented JSON keys, every sustained rate is at most the peak;
* a bad ``--config`` path is one ``error:`` line and exit status 2; a build report is used for the
  clock (min(Fmax, target)) and refused when it is another configuration's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hadahw.build import board_build_config
from hadahw.params import AcceleratorConfig
from hadahw.program import compile_network, layer_cycles, predict_cycles

_PATH = Path(__file__).resolve().parent.parent / "bench" / "throughput_bench.py"
_spec = importlib.util.spec_from_file_location("throughput_bench", _PATH)
tb = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("throughput_bench", tb)
_spec.loader.exec_module(tb)

#: A small array where partial words (C = 4 on 8 lanes) and partial passes (N = 4 on 3 rows) occur.
TINY = AcceleratorConfig(rows=3, lanes=8, beta_w=16, beta_a=2, max_reduction=256, weight_depth=256, act_depth=256,
                         param_depth=64, desc_bytes=256, max_channels=16, max_pool_width=8)


def tiny_layers():
    rng = np.random.default_rng(1)
    conv = tb.random_layer(rng, TINY, "conv2d", (5, 5, 4), 4, kernel=3, stride=2, padding=1, name="conv")
    fc = tb.random_layer(rng, TINY, "linear", (36,), 3, final=True, name="fc")
    return conv, fc


def test_bmac_count_hand_computed():
    conv, fc = tiny_layers()
    # conv 5x5x4 -> 4, 3x3, stride 2, pad 1: output 3x3 (= (5 + 2 - 3) // 2 + 1), reduction 3*3*4 = 36:
    # 4 * 36 * 9 = 1296.  linear 36 -> 3: 108.
    assert tb.count_bmacs(conv) == 1296
    assert tb.count_bmacs(fc) == 108
    rng = np.random.default_rng(0)
    nopad = tb.random_layer(rng, TINY, "conv2d", (5, 5, 4), 4, kernel=3, stride=2, padding=0)
    assert tb.count_bmacs(nopad) == 4 * 36 * 4  # output 2x2
    pooled = tb.random_layer(rng, TINY, "conv2d", (4, 4, 8), 2, kernel=3, stride=1, padding=1, pool=2)
    assert tb.count_bmacs(pooled) == 2 * 72 * 16  # pooling does not change the conv's 4x4 positions


def test_cycles_and_attribution_on_a_tiny_program():
    layers = tiny_layers()
    prog = compile_network(layers, TINY)
    rows = [tb.rate_layer(layer, plan, TINY, layer_cycles(plan, TINY), 18.0, name=layer.name)
            for layer, plan in zip(layers, prog.plans)]
    assert sum(r["cycles"] for r in rows) == predict_cycles(prog)
    conv = rows[0]
    # 9 output pixels x ceil(4 / 3) = 2 passes x 3*3*ceil(4 / 8) = 9 words.
    assert conv["words_streamed"] == 9 * 2 * 9
    att = conv["attribution"]
    assert att["lane_loss"] > 0 and att["row_loss"] > 0
    assert att["ideal"] == pytest.approx(1296 / 24)
    for r in rows:
        assert sum(r["attribution"].values()) == pytest.approx(r["cycles"])
        assert r["bmac_per_cycle"] <= TINY.bmac_per_cycle
        assert r["utilisation"] == pytest.approx(r["bmac_per_cycle"] / 24)
        assert r["gops"] == pytest.approx(2 * r["bmac_per_cycle"] * 18.0 / 1000)
    total = tb.aggregate(rows, predict_cycles(prog), TINY, 18.0, "tiny")
    assert total["bmac"] == 1296 + 108 and total["cycles"] == predict_cycles(prog)


def test_largest_linear_fits_and_one_step_more_does_not():
    cfg = board_build_config(*tb.DEFAULT_BUILD_ARGS)
    k, n = tb.largest_linear(cfg)
    rng = np.random.default_rng(0)
    compile_network([tb.random_layer(rng, cfg, "linear", (k,), n, final=True)], cfg)
    for kk, nn in ((k + cfg.group_w, n), (k, n + cfg.rows)):
        with pytest.raises(ValueError):
            compile_network([tb.random_layer(rng, cfg, "linear", (kk,), nn, final=True)], cfg)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput")
    assert tb.main(["--out", str(out)]) == 0
    return json.loads((out / "throughput.json").read_text()), (out / "throughput.md").read_text()


def test_default_run_json(default_run):
    res, md = default_run
    assert set(res) == {"meta", "config", "clock", "peak", "weight_bandwidth", "networks", "representative",
                        "skipped", "definitions"}
    cfg = board_build_config(*tb.DEFAULT_BUILD_ARGS)
    assert res["config"] == cfg.to_dict()
    assert res["peak"]["bmac_per_cycle"] == cfg.rows * cfg.lanes
    assert res["peak"]["gops"] == pytest.approx(2 * cfg.rows * cfg.lanes * res["clock"]["mhz"] / 1000)
    assert {n["name"] for n in res["networks"]} == {"digits-mlp", "digits-cnn"}
    row_keys = {"name", "kind", "shape", "where", "bmac", "cycles", "bmac_per_cycle", "utilisation", "gops",
                "words_streamed", "attribution", "weight_bits_per_cycle", "weight_port_busy", "bound"}
    rated = [r for n in res["networks"] for r in n["layers"] if r["where"] == "accelerator"] + res["representative"]
    assert len(rated) >= 6
    for r in rated:
        assert row_keys <= set(r)
        assert 0 < r["bmac_per_cycle"] <= res["peak"]["bmac_per_cycle"]
        assert r["gops"] <= res["peak"]["gops"]
        assert sum(r["attribution"].values()) == pytest.approx(r["cycles"])
    for n in res["networks"]:
        acc = [r for r in n["layers"] if r["where"] == "accelerator"]
        assert n["segment"]["cycles"] == sum(r["cycles"] for r in acc)
    # digits-mlp's binarized layer is 256 -> 256; the CNN's are 8x8x32 -> 64 and 4x4x64 -> 64 (3x3, pad 1).
    mlp = next(n for n in res["networks"] if n["name"] == "digits-mlp")
    assert [r["bmac"] for r in mlp["layers"] if r["where"] == "accelerator"] == [256 * 256]
    cnn = next(n for n in res["networks"] if n["name"] == "digits-cnn")
    assert [r["bmac"] for r in cnn["layers"] if r["where"] == "accelerator"] == [64 * 288 * 64, 64 * 576 * 16]
    # The probes past the largest linear layer are refused with the compiler's message, not dropped.
    probes = [s for s in res["skipped"] if s["expected"]]
    assert len(probes) == 2 and all(s["error"] for s in probes)
    assert "max_reduction" in probes[0]["error"]
    assert "Peak vs sustained" in md and f"{res['peak']['gops']:.3f} GOPS" in md


def test_bad_config_path_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(_PATH), "--config", str(tmp_path / "missing.json"), "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --config:"), proc.stderr
    assert not (tmp_path / "throughput.json").exists()


def _report(cfg: AcceleratorConfig, **kw) -> dict:
    rep = {"board": "icebreaker", "config": cfg.to_dict(), "status": "ok", "target_mhz": 18.0, "fmax_mhz": 22.4,
           "timing_met": True, "resources": {"LC": {"used": 4501, "available": 5280}}}
    rep.update(kw)
    return rep


def test_build_report_gives_the_clock(tmp_path, capsys):
    cfg = board_build_config(*tb.DEFAULT_BUILD_ARGS)
    (tmp_path / "config.json").write_text(cfg.to_json())
    (tmp_path / "report.json").write_text(json.dumps(_report(cfg)))
    args = tb.parse(["--config", str(tmp_path / "config.json")])
    got, _, rep, rpath, _ = tb.resolve(args)  # the report beside --config is found
    assert got == cfg and rpath == str((tmp_path / "report.json").resolve())
    clk = tb.clock_and_resources(got, rep, rpath)
    assert (clk["mhz"], clk["fmax_mhz"], clk["lc"]) == (18.0, 22.4, 4501)
    # Timing not met: the rate is taken at the Fmax (min(Fmax, target), the build report's convention).
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(_report(cfg, fmax_mhz=16.5, timing_met=False, status="timing_failed")))
    got, _, rep, rpath, _ = tb.resolve(tb.parse(["--report", str(slow)]))
    assert got == cfg and tb.clock_and_resources(got, rep, rpath)["mhz"] == 16.5
    # Another configuration's report: refused, one line, exit status 2.
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_report(dataclasses.replace(cfg, rows=1))))
    assert tb.main(["--config", str(tmp_path / "config.json"), "--report", str(other), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --report:")
