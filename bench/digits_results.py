"""Digits results, after the paper's Table 2: accuracy, memory, and the accelerator's latency and energy.

    python bench/digits_results.py [--epochs 30] [--seeds 0] [--models digits-mlp digits-cnn]
                                   [--variants fp hbwn4 hbwn8 hada4-4 hada16-2 xnor xnor-hw]
                                   [--images 50|all] [--out bench/results] [--skip-hw] [--threads 1]

For every model, variant and seed: train with the recipe of :mod:`hadahw.train` (seeded), save the
checkpoint (``--cache``), and on the fixed 360-image test split measure the float accuracy and the
integer golden accuracy (default lowering, :func:`bench.digits_table.golden_stats`); memory as in
``bench/digits_table.py`` (:func:`bench.digits_table.size_ratios`: packed/FP32 by ``hadahw.size``;
``lowered``: bytes of the lowered integer model over the FP32 parameter bytes).

Hardware: when the network has layers the accelerator supports (binarized weights, ``beta_w``
in 2..64, ``beta_a`` in 1..64), the checkpoint runs on the simulated board exactly as ``python -m hadahw.run --sim``
(:func:`hadahw.run.run_checkpoint`), on the board build's configuration -- what ``python -m hadahw.build --board icebreaker`` builds
for the network's betas (board defaults, automatic size), with the delta_w format and activation
bits of the network's binarized layers (:func:`hadahw.build.network_board_config`) -- over ``--images`` test
images (chosen with seed 0, the same for every variant).  Recorded: hardware accuracy on those
images, predictions and output values that differ from the golden model, measured vs predicted
cycles, the modeled latency (compute = cycles at the build's default clock; transfer = the inference's bytes at 1 Mbaud,
8N1) and the estimated energy per inference (:mod:`hadahw.energy`; resources estimated by
:data:`hadahw.build.MODEL` for the configuration).  The full-precision (``fp``) variant runs
entirely on the host ("host only"); the weight-binarized ``hbwn*`` variants (``beta_a = 1``) run
their hidden layers on a ``--beta-a 1`` build; ``xnor`` has betas the
hardware does not take (``beta_w`` = the whole reduction > 64) and, for the CNN, no integer lowering.

Writes ``digits_results.json`` (every run, per seed, with its settings) and ``digits_results.md`` into
``--out`` after every run (a run cut short leaves the finished rows).  Exit status 0, 2 for bad
arguments (one ``error:`` line); a hardware run that fails or differs from the golden model is
recorded in its row, not fatal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from digits_table import golden_stats, group_rows, log, pct, per_seed_table, size_ratios  # noqa: E402
from hadahw import energy  # noqa: E402
from hadahw.build import (DEFAULT_BAUD, DEFAULT_CLOCK_MHZ, MODEL, board_build_config,  # noqa: E402
                          network_board_config)
from hadahw.lower_net import lower_network_full, weight_bytes  # noqa: E402
from hadahw.nets import MODEL_NAMES, VARIANTS  # noqa: E402
from hadahw.train import DEFAULTS, fit, load_split, save_checkpoint  # noqa: E402

DEFAULT_VARIANTS = ["fp", "hbwn4", "hbwn8", "hada4-4", "hada16-2", "xnor", "xnor-hw"]
DEFAULT_IMAGES = 50
#: Seed of the choice of test images for the hardware runs (python -m hadahw.run --seed).
IMAGE_SEED = 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"error: {' '.join(str(message).split())}\n")


def _positive(what: str):
    def parse(text: str) -> int:
        try:
            v = int(text.strip(), 10)
        except ValueError:
            v = 0
        if v < 1:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return v
    return parse


def _seed(text: str) -> int:
    try:
        v = int(text.strip(), 10)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, not {text!r}")
    return v


def _images(text: str):
    t = text.strip()
    if t == "all":
        return "all"
    return _positive("a positive integer or 'all'")(t)


def parse(argv=None) -> argparse.Namespace:
    ap = _Parser(prog="python bench/digits_results.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=_positive("a positive integer"), default=30, help="training epochs (default 30)")
    ap.add_argument("--seeds", type=_seed, nargs="+", default=[0], help="training seeds (default 0)")
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES, metavar="MODEL",
                    help=f"models, of {', '.join(MODEL_NAMES)} (default: both)")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS), metavar="VARIANT",
                    help=f"variants, of {', '.join(VARIANTS)} (default: {' '.join(DEFAULT_VARIANTS)})")
    ap.add_argument("--images", type=_images, default=DEFAULT_IMAGES, metavar="N|all",
                    help=f"test images per hardware run: a positive integer or 'all' = 360 (default {DEFAULT_IMAGES})")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                    help="output folder (default bench/results)")
    ap.add_argument("--cache", default=None, help="folder for the checkpoints (default: a temporary folder)")
    ap.add_argument("--skip-hw", action="store_true", help="no simulated-board runs (accuracy and memory only)")
    ap.add_argument("--threads", type=_positive("a positive integer"), default=1,
                    help="torch threads (default 1)")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# One model x variant x seed


def hardware_run(ckpt: Path, layers, images, skip: bool) -> dict:
    """``{"status": ...}`` and, for ``"ran"``, the measurements of the simulated-board run."""
    if layers is None:
        return {"status": "float only", "detail": "no integer lowering"}
    if all(layer.beta_w == 1 for layer in layers):
        return {"status": "host only", "detail": "beta_w = 1 everywhere: no layer for the accelerator"}
    try:
        cfg = network_board_config(layers)
    except ValueError as e:
        return {"status": "not supported", "detail": str(e).splitlines()[0]}
    if skip:
        return {"status": "skipped", "detail": "--skip-hw", "config": cfg.to_dict()}
    from hadahw.run import UsageError, run_checkpoint
    from hadahw.sim.uart_board import SimulationError
    from hadahw.sw.link import LinkError
    from hadahw.sw.transport import PipeClosed
    t0 = time.perf_counter()
    try:
        rep = run_checkpoint(ckpt, cfg, images=images, seed=IMAGE_SEED)
    except UsageError as e:
        return {"status": "does not fit", "detail": str(e), "config": cfg.to_dict()}
    except (LinkError, PipeClosed, SimulationError) as e:
        return {"status": "failed", "detail": str(e).splitlines()[0], "config": cfg.to_dict()}
    d = rep.to_dict()
    keep = ("images", "image_indices", "hardware_accuracy", "golden_accuracy", "float_accuracy",
            "prediction_mismatches", "value_mismatches", "values_compared", "cycles_predicted", "cycles_measured",
            "cycles_match", "ok", "layers", "config", "bytes_per_inference", "hardware", "latency_s_per_inference",
            "energy_uj_per_inference", "energy_note", "transfer_s", "compute_s", "load_s", "wall_s", "link")
    out = {"status": "ran", **{k: d[k] for k in keep}}
    out["sim_wall_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def run_one(model_name: str, variant: str, seed: int, epochs: int, split, cache: Path, images, skip_hw: bool) -> dict:
    t0 = time.perf_counter()
    res = fit(model_name, variant, epochs=epochs, seed=seed, quiet=True, split=split)
    t_train = time.perf_counter() - t0
    model, meta = res.model, res.meta
    ckpt = save_checkpoint(res, cache / f"{model_name}-{variant}-seed{seed}-ep{epochs}.pt")
    y = split.y_test.numpy()
    with torch.no_grad():
        lf = model(split.x_test).double().numpy()
    row = {"model": model_name, "variant": variant, "beta_w": meta["beta_w"], "beta_a": meta["beta_a"],
           "act_all": meta["act_all"], "seed": seed, "epochs": epochs,
           "float_accuracy": float((lf.argmax(1) == y).mean()), "train_accuracy": meta["train_accuracy"],
           "train_seconds": round(t_train, 1), **size_ratios(model_name, meta["beta_w"])}
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    try:
        net = lower_network_full(model, split.x_train)
    except ValueError as exc:
        net = None
        row.update(golden=None, lowering_error=str(exc).splitlines()[0])
    if net is not None:
        row["golden"] = golden_stats(net, lf, split.x_test, y)
        wb = weight_bytes(net.layers)
        row.update(lowered_bytes=wb["total"], fp32_bytes=fp32_bytes, lowered_ratio=wb["total"] / fp32_bytes,
                   betas=[[layer.beta_w, layer.beta_a] for layer in net.layers])
    row["hw"] = hardware_run(ckpt, None if net is None else net.layers, images, skip_hw)
    return row


# ---------------------------------------------------------------------------------------------
# Output


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _beta_text(r0: dict, which: str) -> str:
    b = r0[which]
    if b != "all":
        return str(b)
    if which == "beta_w":
        return f"all ({r0['size_beta_w']})"
    if r0["model"] == "digits-cnn":
        return "all (C·H·W)" if r0["act_all"] == "tensor" else "all (pixel = C)"
    return "all (256)"


def _hw_cells(rs: list[dict]) -> list[str]:
    """The hardware columns of a group of seeds (means over the seeds that ran)."""
    ran = [r["hw"] for r in rs if r["hw"]["status"] == "ran"]
    n_cols = 8
    if not ran:
        h = rs[0]["hw"]
        what = {"host only": "host only", "float only": "– (float only)", "skipped": "skipped (--skip-hw)"}.get(
            h["status"], f"{h['status']}: {h.get('detail', '')}")
        return [what] + ["–"] * (n_cols - 1)
    n = ran[0]["images"]
    acc = _mean([h["hardware_accuracy"] for h in ran])
    pred = sum(h["prediction_mismatches"] for h in ran)
    vals = sum(h["value_mismatches"] for h in ran)
    comp = sum(h["values_compared"] for h in ran)
    meas = sorted({c for h in ran for c in h["cycles_measured"]})
    predicted = sorted({h["cycles_predicted"] for h in ran})
    cyc = (f"{meas[0]:,} / {predicted[0]:,}" if len(meas) == 1 and meas == predicted
           else f"{min(meas):,}–{max(meas):,} / {', '.join(f'{p:,}' for p in predicted)}")
    lat = [h["latency_s_per_inference"] for h in ran]
    e = [h["energy_uj_per_inference"] for h in ran]
    lat_txt = (f"{1e3 * _mean([x['compute'] for x in lat]):.2f} + {1e3 * _mean([x['transfer'] for x in lat]):.2f} = "
               f"{1e3 * _mean([x['total'] for x in lat]):.2f}")
    if all(x is not None for x in e):
        e_txt = (f"{_mean([x['total'] for x in e]):.3g} ({_mean([x['low'] for x in e]):.3g}–"
                 f"{_mean([x['high'] for x in e]):.3g})")
        ec_txt = f"{_mean([x['compute'] for x in e]):.3g}"
        p_txt = f"{_mean([x['power_mw'] for x in e]):.2g}"
    else:
        e_txt, ec_txt, p_txt = "–", "–", "–"
    return [f"{pct(acc)} ({n})", f"{pred} / {vals} of {comp}", cyc, lat_txt, e_txt, ec_txt, p_txt,
            f"{ran[0]['hardware']['resources']['lc']:,}"]


def _arrays(rows: list[dict]) -> str:
    """The arrays the hardware runs used, by betas: ``"2 × 8 (β 16/2, 4/4), 1 × 8 (β 4/1, 8/1)"``."""
    by_array: dict[str, list[str]] = {}
    for r in rows:
        c = r["hw"].get("config")
        if r["hw"].get("status") == "ran" and c:
            betas = f"{c['beta_w']}/{c['beta_a']}"
            seen = by_array.setdefault(f"{c['rows']} × {c['lanes']}", [])
            if betas not in seen:
                seen.append(betas)
    return ", ".join(f"{a} (β {', '.join(b)})" for a, b in by_array.items())


def _transfer_share(rows: list[dict]) -> str:
    """A sentence on the transfer's share of the modeled latency and energy ("" without hardware runs)."""
    ran = [r["hw"] for r in rows if r["hw"]["status"] == "ran" and r["hw"]["energy_uj_per_inference"]]
    if not ran:
        return ""
    lat = [h["latency_s_per_inference"]["transfer"] / h["latency_s_per_inference"]["total"] for h in ran]
    en = [h["energy_uj_per_inference"]["transfer"] / h["energy_uj_per_inference"]["total"] for h in ran]
    return (f" Over the runs, the UART transfer is {100 * min(lat):.0f}–{100 * max(lat):.0f} % of the modeled "
            f"latency and the idle chip during it {100 * min(en):.0f}–{100 * max(en):.0f} % of the energy.")


def markdown(rows: list[dict], meta: dict) -> str:
    seeds = meta["seeds"]
    e = meta["energy_model"]
    lines = [
        "# Digits results: accuracy, memory, and the accelerator's latency and energy (after Table 2)",
        "",
        f"`{meta['command']}` ({meta['date']}, {meta['machine']}, Python {meta['python']}, torch {meta['torch']}; "
        f"total {meta['total_seconds']:.0f} s{'' if meta['complete'] else '; INCOMPLETE: rows still missing'}).",
        "",
        f"Training: `hadahw.train` recipe (Adam, lr {meta['lr']}, x0.1 every {max(1, meta['epochs'] // 4)} epochs, batch "
        f"{meta['batch_size']}), **{meta['epochs']} epochs, seed(s) {', '.join(map(str, seeds))}**; first and last "
        f"layer at β = 1. Data: `sklearn` digits, {meta['data']['n_train']} train / {meta['data']['n_test']} test "
        f"images. Lowering as `bench/digits_table.py` (calibration on the training images, 8-bit codes).",
        "",
        f"Hardware: the simulated board (`python -m hadahw.run --sim`: the board's UART, HostLink and HadaCore under "
        f"Verilator) on the configuration `python -m hadahw.build --board icebreaker --beta-w BW --beta-a BA` builds "
        f"for each variant's betas ({_arrays(rows) or meta['board_arrays']}: the automatic array size for those "
        f"betas; SPRAM weight store); "
        f"**{meta['images']} test image(s)** per run (chosen with seed {IMAGE_SEED}, the same for every variant). "
        f"The first and last layers (β = 1) run on the host with the golden model; the binarized middle on the "
        f"accelerator. Latency and energy are modeled for the iCE40 UP5K at {meta['clock_mhz']:g} MHz and "
        f"{meta['baud']:,} baud, not measured on a board.",
        "",
        "Columns: **float** / **golden** = test accuracy (%, all 360 images) of the PyTorch model and of the integer "
        "golden model; **size.py δ32** = packed / FP32 weights by `hadahw.size` (first/last FP32, 32-bit deltas: the "
        "paper's accounting); **lowered** = bytes of the lowered integer model / FP32 bytes of all parameters; "
        "**hw acc (n)** = hardware accuracy (%) on the n images run; **hw ≠ golden** = predictions / output values "
        "where the hardware differs from the golden model; **cycles** = measured / predicted cycles per inference; "
        "**latency ms** = compute (cycles / clock) + transfer (the inference's bytes at the baud rate, 8N1, one "
        "STATUS poll) = total; **energy µJ** = estimated energy per inference, compute and the idle chip during "
        "the transfer (low–high range); **compute µJ** = its compute part; **mW** = power while computing; "
        "**LC** = logic cells of the configuration (resource-model estimate). Values are means over the seeds.",
        "",
        "| model | variant | β_w | β_a | float | golden | size.py δ32 | lowered | hw acc (n) | hw ≠ golden "
        "| cycles meas. / pred. | latency ms | energy µJ (range) | compute µJ | mW | LC |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups = group_rows(rows)
    for (model, variant), rs in groups.items():
        r0 = rs[0]
        fa = _mean([r["float_accuracy"] for r in rs])
        ga = _mean([None if r.get("golden") is None else r["golden"]["accuracy"] for r in rs])
        low = _mean([r.get("lowered_ratio") for r in rs])
        lines.append("| " + " | ".join([
            model, variant, _beta_text(r0, "beta_w"), _beta_text(r0, "beta_a"), pct(fa), pct(ga),
            f"{r0['size_ratio_delta32']:.3f}", "–" if low is None else f"{low:.3f}", *_hw_cells(rs)]) + " |")
    lines += [
        "",
        "How the energy is estimated (`hadahw.energy`). There is no board here, so nothing is measured: the "
        f"estimate combines the configuration's logic-cell count (the resource model's estimate), the measured "
        f"cycles and the modeled transfer time with per-rail current measurements of an iCE40UP5K published in "
        f"tinyvision-ai-inc/ice40_power: {e['static_ua']:g} µA core current of a blank device at {e['v_core']:g} V "
        f"(static), {e['pll_ua']:g} µA on the PLL supply (the {DEFAULT_CLOCK_MHZ:g} MHz clock comes from the PLL), "
        f"{e['clock_pj']:g} pJ per cycle for a running clock network (slope of a small design's current over "
        f"6–48 MHz), and per logic cell per cycle {e['lc_pj_low']:g} pJ (counters: low toggle activity) to "
        f"{e['lc_pj_high']:g} pJ (a multiplier in logic: high activity), central value their geometric mean "
        f"{e['lc_pj_central']:.3f} pJ; the range in the table is that per-cell range. While bytes move the chip "
        f"idles with its clock running (logic at the low rate). EBR, SPRAM, DSP, I/O and the board are not "
        f"modeled (no per-access figure for them was available). Treat the figures as order-of-magnitude "
        f"estimates.{_transfer_share(rows)}",
        "",
        "The host-only variant (`fp`) has no accelerator part; `hbwn*` (β_a = 1) runs on a `--beta-a 1` build of "
        "its β_w; `xnor` (β = the whole reduction) "
        "is outside the hardware's β range (2..64), and the CNN's `xnor` has no integer lowering (see "
        "`bench/results/digits.md`). Per-seed values, the configurations, the bytes per inference and the energy "
        "bounds are in `digits_results.json`.",
    ]
    if len(seeds) > 1:
        def cell(r):
            g, h = r.get("golden"), r["hw"]
            hw = pct(h["hardware_accuracy"]) if h["status"] == "ran" else "–"
            return f"{pct(r['float_accuracy'])} / {pct(None if g is None else g['accuracy'])} / {hw}"
        lines += ["", *per_seed_table(groups, seeds, ": float / golden / hw", cell)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    split = load_split()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None
    if args.cache:
        cache = Path(args.cache)
        cache.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="digits_results-")
        cache = Path(tmp.name)
    t0 = time.perf_counter()
    command = "python bench/digits_results.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    tasks = [(m, v, s) for m in args.models for v in args.variants for s in args.seeds]
    # The board build for the betas of every requested variant the hardware takes (binarized weights).
    hw_betas = sorted({VARIANTS[v][:2] for v in args.variants
                       if all(isinstance(b, int) for b in VARIANTS[v][:2]) and 2 <= VARIANTS[v][0] <= 64})
    boards = {f"{bw}/{ba}": board_build_config("--board", "icebreaker", "--beta-w", str(bw), "--beta-a", str(ba))
              for bw, ba in hw_betas}
    meta = {"command": command.strip(), "epochs": args.epochs, "seeds": args.seeds, "models": args.models,
            "variants": args.variants, "images": args.images, "image_seed": IMAGE_SEED, "skip_hw": args.skip_hw,
            "threads": args.threads, "lr": DEFAULTS["lr"], "batch_size": DEFAULTS["batch_size"], "data": split.info,
            "clock_mhz": DEFAULT_CLOCK_MHZ, "baud": DEFAULT_BAUD,
            "board_config": {k: c.to_dict() for k, c in boards.items()},
            "board_arrays": ", ".join(sorted({f"{c.rows} × {c.lanes}" for c in boards.values()})),
            "resource_model": MODEL.describe(),
            "energy_model": {"method": energy.METHOD, "v_core": energy.V_CORE, "static_ua": energy.STATIC_CORE_A * 1e6,
                             "pll_ua": energy.PLL_A * 1e6, "clock_pj": energy.CLOCK_PJ_PER_CYCLE,
                             "lc_pj_low": energy.LC_PJ_LOW, "lc_pj_high": energy.LC_PJ_HIGH,
                             "lc_pj_central": energy.LC_PJ_CENTRAL},
            "machine": f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(), "torch": str(torch.__version__), "numpy": np.__version__}
    rows: list[dict] = []

    def write(complete: bool) -> None:
        meta.update(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    total_seconds=round(time.perf_counter() - t0, 1), complete=complete)
        (out / "digits_results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        (out / "digits_results.md").write_text(markdown(rows, meta))

    try:
        for i, (m, v, s) in enumerate(tasks, 1):
            r = run_one(m, v, s, args.epochs, split, cache, args.images, args.skip_hw)
            rows.append(r)
            h = r["hw"]
            hw_txt = (f"hw {pct(h['hardware_accuracy'])} on {h['images']}, {h['prediction_mismatches']}/"
                      f"{h['value_mismatches']} mismatches, {h['sim_wall_seconds']:.0f}s sim"
                      if h["status"] == "ran" else h["status"])
            g = r.get("golden")
            log(f"[{i}/{len(tasks)}] {m:10s} {v:9s} seed {s}: float {pct(r['float_accuracy'])} golden "
                f"{pct(None if g is None else g['accuracy'])}; {hw_txt} ({r['train_seconds']:.0f}s train, "
                f"{time.perf_counter() - t0:.0f}s total)")
            write(complete=i == len(tasks))
    finally:
        if tmp is not None:
            tmp.cleanup()
    log(f"wrote {out / 'digits_results.json'} and {out / 'digits_results.md'} in {meta['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
