"""Digits results table: float HadaNet vs integer golden model, per variant (after Table 2).

    python bench/digits_table.py [--epochs 30] [--seeds 0 1] [--models digits-cnn digits-mlp]
                                 [--variants fp hbwn4 ...] [--threads 1] [--out bench/results]

For every model, variant and seed: train with the recipe of :mod:`hadahw.train` (Adam, lr 0.005,
x0.1 every epochs//4 epochs, batch 128, BatchNorm statistics re-estimated after training), lower
with :func:`hadahw.lower_net.lower_network_full` using the training images as calibration data,
and evaluate on the fixed 360-image test split:

* float accuracy (the PyTorch HadaNet in eval mode);
* integer-golden accuracy with the default lowering (activation range = 99.99th percentile,
  sign-exact rounding in front of binarized layers) and with the plain one (range = maximum,
  the contract's round-half-up everywhere), and the argmax agreement of the default one with the
  float model;
* the largest and mean |logit error| of the default lowering relative to the largest |float logit|.

Memory
    ``size.py``: :func:`hadahw.size.model_size` on the layer shapes of
    :mod:`hadahw.models.shapes` (first and last layer FP32, biases FP32, BatchNorm not counted),
    packed / FP32, with 32-bit deltas (the paper's accounting) and with the hardware's 8-bit
    codes.  ``beta_w = "all"`` is counted as one delta per filter; the ``fp`` variant is 1.
    ``lowered``: bytes of the integer model itself (:func:`hadahw.lower_net.weight_bytes`: sign
    bits, 8-bit delta codes, and a 32-bit multiplier and bias per output channel for the folded
    BatchNorm/bias, *every* layer including the first and last) over the FP32 bytes of all float
    parameters (weights, last bias, BatchNorm gamma/beta).

Writes ``digits.json`` (every run, with its settings) and ``digits.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hadahw.lower_net import LoweredNet, lower_network_full, weight_bytes  # noqa: E402
from hadahw.models.shapes import get_model, weight_layers  # noqa: E402
from hadahw.nets import MODEL_NAMES, VARIANTS  # noqa: E402
from hadahw.size import model_size  # noqa: E402
from hadahw.train import DEFAULTS, fit, load_split  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30, help="training epochs per run (default 30)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    ap.add_argument("--models", nargs="+", default=["digits-cnn", "digits-mlp"], choices=MODEL_NAMES)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="runs in parallel, one process each (default: 2, or 1 on a 1-CPU machine)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or args.jobs < 1 or any(s < 0 for s in args.seeds):
        ap.error("--epochs, --threads and --jobs must be positive, --seeds non-negative")
    return args


def size_ratios(model: str, beta_w) -> dict:
    """Packed/FP32 of hadahw.size for the variant's beta_w (1.0 for full precision)."""
    if beta_w == 1:
        return {"size_ratio_delta32": 1.0, "size_ratio_delta8": 1.0, "size_beta_w": 1}
    layers = weight_layers(get_model(model))
    bw = max(l.fan_in for l in layers[1:-1]) if beta_w == "all" else beta_w
    r32 = model_size(model, bw, delta_bits=32)
    r8 = model_size(model, bw, delta_bits=8)
    return {"size_ratio_delta32": r32.packed_bytes / r32.fp32_bytes,
            "size_ratio_delta8": r8.packed_bytes / r8.fp32_bytes, "size_beta_w": bw}


def golden_stats(net: LoweredNet, lf: np.ndarray, x, y) -> dict:
    lr = net.logits(x)
    err = np.abs(lr - lf)
    scale = float(np.abs(lf).max())
    return {"accuracy": float((lr.argmax(1) == y).mean()),
            "agreement": float((lr.argmax(1) == lf.argmax(1)).mean()),
            "logit_err_max_rel": float(err.max() / scale), "logit_err_mean_rel": float(err.mean() / scale),
            "act_exponents": net.act_exponents, "logit_exponent": net.logit_exponent}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_one(model_name: str, variant: str, seed: int, epochs: int, split=None) -> dict:
    split = load_split() if split is None else split
    t0 = time.perf_counter()
    res = fit(model_name, variant, epochs=epochs, seed=seed, quiet=True, split=split)
    t_train = time.perf_counter() - t0
    model, meta = res.model, res.meta
    y = split.y_test.numpy()
    with torch.no_grad():
        lf = model(split.x_test).double().numpy()
    row = {"model": model_name, "variant": variant, "beta_w": meta["beta_w"], "beta_a": meta["beta_a"],
           "act_all": meta["act_all"], "seed": seed, "epochs": epochs,
           "float_accuracy": float((lf.argmax(1) == y).mean()), "train_accuracy": meta["train_accuracy"],
           "train_seconds": round(t_train, 1), **size_ratios(model_name, meta["beta_w"])}
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    t1 = time.perf_counter()
    try:
        net = lower_network_full(model, split.x_train)
    except ValueError as exc:
        row.update(golden=None, golden_plain=None, lowering_error=str(exc))
        return row
    plain = lower_network_full(model, split.x_train, calib_percentile=100, sign_exact=False)
    row["golden"] = golden_stats(net, lf, split.x_test, y)
    row["golden_plain"] = golden_stats(plain, lf, split.x_test, y)
    row["golden_seconds"] = round(time.perf_counter() - t1, 1)
    wb = weight_bytes(net.layers)
    row.update(lowered_bytes=wb["total"], fp32_bytes=fp32_bytes, lowered_ratio=wb["total"] / fp32_bytes,
               betas=[[l.beta_w, l.beta_a] for l in net.layers])
    return row


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def group_rows(rows: list[dict]) -> dict:
    """Rows by ``(model, variant)``, in first-seen order (one row per seed)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["variant"]), []).append(r)
    return groups


def per_seed_table(groups: dict, seeds, what: str, cell) -> list[str]:
    """Markdown lines of a table with one row per ``(model, variant)`` and ``cell(row)`` per seed.

    ``what`` names the cells in the header (``"seed 0<what>"``).
    """
    lines = ["| model | variant | " + " | ".join(f"seed {s}{what}" for s in seeds) + " |",
             "|---|---|" + "---:|" * len(seeds)]
    for (model, variant), rs in groups.items():
        lines.append(f"| {model} | {variant} | " + " | ".join(cell(r) for r in rs) + " |")
    return lines


def markdown(rows: list[dict], meta: dict) -> str:
    seeds = meta["seeds"]
    lines = [
        "# Digits: float HadaNet vs integer golden model",
        "",
        f"`python bench/digits_table.py --epochs {meta['epochs']} --seeds {' '.join(map(str, seeds))}` "
        f"({meta['date']}, {meta['machine']}, torch {meta['torch']}, {meta['jobs']} parallel run(s) of "
        f"{meta['threads']} thread(s), "
        f"total {meta['total_seconds']:.0f} s).",
        "",
        f"Data: `sklearn.datasets.load_digits`, pixels/16, stratified 80/20 split (random_state=0): "
        f"{meta['data']['n_train']} train / {meta['data']['n_test']} test images (one test image = "
        f"{100 / meta['data']['n_test']:.2f} %). Training: Adam, lr {meta['lr']}, x0.1 every "
        f"{max(1, meta['epochs'] // 4)} epochs, batch {meta['batch_size']}, {meta['epochs']} epochs, "
        f"seed(s) {', '.join(map(str, seeds))}; BatchNorm statistics re-estimated after training. "
        "First and last layer at beta = 1. Lowering: calibration on the training images; 8-bit "
        "activation and weight delta codes.",
        "",
        "Columns: **float** / **golden** = test accuracy (%) of the PyTorch model and of the integer golden "
        "model (default lowering: 99.99th-percentile activation range, sign-exact rounding); **Δ** = golden − "
        "float (points); **agree** = argmax agreement golden vs float (%); **golden, plain** = max-range "
        "calibration and round-half-up everywhere; **logit err** = max / mean |golden − float logit| over the "
        "test set, relative to the largest |float logit|; **size.py** = packed / FP32 weights by "
        "`hadahw.size` (first/last FP32, deltas of 32 or 8 bits); **lowered** = bytes of the lowered integer "
        "model (signs, 8-bit deltas, 32-bit requant multiplier+bias per channel, all layers) / FP32 bytes of "
        "all float parameters. Values are means over the seeds.",
        "",
        "| model | variant | β_w | β_a | float | golden | Δ | agree | golden, plain | logit err max / mean "
        "| size.py δ32 | size.py δ8 | lowered | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups = group_rows(rows)
    for (model, variant), rs in groups.items():
        r0 = rs[0]
        fa = float(np.mean([r["float_accuracy"] for r in rs]))
        if r0.get("golden") is None:
            ga = gp = agree = d = None
            err = "float-only"
        else:
            ga = float(np.mean([r["golden"]["accuracy"] for r in rs]))
            gp = float(np.mean([r["golden_plain"]["accuracy"] for r in rs]))
            agree = float(np.mean([r["golden"]["agreement"] for r in rs]))
            d = ga - fa
            err = (f"{np.mean([r['golden']['logit_err_max_rel'] for r in rs]):.3f} / "
                   f"{np.mean([r['golden']['logit_err_mean_rel'] for r in rs]):.4f}")
        bw = r0["beta_w"] if r0["beta_w"] != "all" else f"all ({r0['size_beta_w']})"
        ba = r0["beta_a"]
        if ba == "all" and model == "digits-cnn":
            ba = "all (C·H·W)" if r0["act_all"] == "tensor" else "all (pixel = C)"
        elif ba == "all":
            ba = "all (256)"
        lowered = "–" if r0.get("golden") is None else f"{np.mean([r['lowered_ratio'] for r in rs]):.3f}"
        lines.append(
            f"| {model} | {variant} | {bw} | {ba} | {pct(fa)} | {pct(ga)} | "
            f"{'–' if d is None else f'{100 * d:+.2f}'} | {pct(agree)} | {pct(gp)} | {err} | "
            f"{r0['size_ratio_delta32']:.3f} | {r0['size_ratio_delta8']:.3f} | {lowered} | "
            f"{np.mean([r['train_seconds'] for r in rs]):.0f} |")
    lines += ["", "Per-seed accuracies (float / golden) are in `digits.json`."]
    if len(seeds) > 1:
        def cell(r):
            g = r.get("golden")
            return f"{pct(r['float_accuracy'])} / {pct(None if g is None else g['accuracy'])}"
        lines += ["", *per_seed_table(groups, seeds, "", cell)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    split = load_split()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tasks = [(m, v, seed, args.epochs) for m in args.models for v in args.variants for seed in args.seeds]
    # In the given order: the CNNs (the longest runs) first by default, so parallel workers finish together.

    def report(r):
        g = r.get("golden")
        log(f"{r['model']:10s} {r['variant']:9s} seed {r['seed']}: float {pct(r['float_accuracy'])} "
            f"golden {pct(None if g is None else g['accuracy'])} "
            f"agree {pct(None if g is None else g['agreement'])} "
            f"({r['train_seconds']:.0f}s train, {time.perf_counter() - t0:.0f}s total)")

    if args.jobs == 1:
        rows = []
        for t in tasks:
            rows.append(run_one(*t, split=split))
            report(rows[-1])
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                    initargs=(args.threads,)) as pool:
            futures = [pool.submit(run_one, *t) for t in tasks]
            for f in cf.as_completed(futures):
                report(f.result())
            rows = [f.result() for f in futures]
    meta = {"epochs": args.epochs, "seeds": args.seeds, "threads": args.threads, "jobs": args.jobs,
            "lr": DEFAULTS["lr"],
            "batch_size": DEFAULTS["batch_size"], "data": split.info,
            "lowering": {"act_bits": 8, "weight_delta": "8-bit fixed", "calib_percentile": 99.99,
                         "sign_exact": True, "plain": {"calib_percentile": 100, "sign_exact": False},
                         "calibration_data": "training images"},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
            "torch": str(torch.__version__), "numpy": np.__version__,
            "total_seconds": round(time.perf_counter() - t0, 1)}
    (out / "digits.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / "digits.md").write_text(markdown(rows, meta))
    log(f"wrote {out / 'digits.json'} and {out / 'digits.md'} in {meta['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
