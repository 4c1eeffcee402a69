"""Benchmark: xHBNN packed kernel vs float32 matmul (torch and NumPy BLAS), after HadaNets Fig. 5.

    python bench/xhbnn_bench.py [--sizes 256 512 1024 2048 4096] [--beta 16] [--threads N] [--repeat R]

Square products: activations A (M x M) times weights W (M x M), reduction K = M, i.e.
``O = A @ W.T`` with both operands stored along K, at beta_a = beta_w = --beta.  The float
baselines multiply the same dequantized values (``±delta``) as float32 matrices: ``torch.matmul``
and NumPy's ``@`` (OpenBLAS), with the same thread count as the numba kernel.

Timing: best wall-clock time over --repeat rounds after warm-up calls (so numba JIT compilation
and BLAS start-up are excluded); the kernels are timed round-robin, each round after a short sleep
and an untimed call, with a burst of back-to-back runs for fast kernels (see :func:`best_times`),
which matters on a small shared machine.  The xHBNN time is one :func:`hadahw.xhbnn.xhbnn_matmul` call on
already-packed signs and decoded deltas (it includes the call's own lane re-layout, a few
O(M*K/16) copies, and writing the int64 output); sign packing (:func:`hadahw.xhbnn.pack_bits` of
both operands) is timed separately.  GOPS-equivalent is ``2*M**3 / t`` for every kernel, so the
ratio is a plain speed-up.

Checks: the xHBNN result is compared with the exact product (float64 BLAS is exact here:
|O| <= K*255*255 < 2**53) on all rows for M <= 1024 and 64 random rows above; the float32 result's
largest absolute error against the exact one is reported too.

Writes bench/results/xhbnn.json (with machine info) and bench/results/xhbnn.md.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096], help="matrix sizes M")
    ap.add_argument("--beta", type=int, default=16, help="beta_a = beta_w (power of two)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for all kernels")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per kernel (best is reported)")
    ap.add_argument("--pause", type=float, default=0.3,
                    help="seconds of sleep before each timed run (lets other thread pools go idle)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--delta-max", type=int, default=255, help="deltas are uniform in 0..delta-max")
    ap.add_argument("--out", default=None, help="output directory (default: bench/results next to this file)")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repeat < 1 or any(m < 1 for m in args.sizes):
        ap.error("--threads, --repeat and --sizes must be positive")
    return args


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    # BLAS pools read these at load time: set them before NumPy / torch are imported.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hadahw.xhbnn import pack_bits, xhbnn_matmul  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def best_times(kernels: dict, repeat: int, pause: float, burst_s: float = 0.2) -> dict:
    """Best wall time (and process CPU time) of every kernel over ``repeat`` rounds.

    Each kernel is warmed up (two calls).  The rounds are interleaved (kernel 1, 2, 3, 1, 2, 3,
    ...) so that slow drifts in background load hit every kernel alike.  In a round, a kernel gets a
    ``pause`` of sleep first, so that the spin-waiting worker threads of the previous kernel's
    thread pool (OpenMP, OpenBLAS) have gone idle and do not steal cores, then one untimed call
    so that its own pool is awake (thread wake-up latency is not the kernel's cost), then a burst
    of back-to-back timed calls (1 for slow kernels, up to 20 for fast ones, about ``burst_s``
    seconds), each timed on its own.
    """
    res = {}
    for name, fn in kernels.items():  # two warm-up calls; the second one's time sizes the burst
        fn()
        t0 = time.perf_counter()
        out = fn()
        warm = time.perf_counter() - t0
        res[name] = {"times": [], "cpu": [], "out": out, "burst": max(1, min(20, int(burst_s / max(warm, 1e-6))))}
    for _ in range(repeat):
        for name, fn in kernels.items():
            time.sleep(pause)
            fn()
            for _ in range(res[name]["burst"]):
                c0, t0 = time.process_time(), time.perf_counter()
                res[name]["out"] = fn()
                t1, c1 = time.perf_counter(), time.process_time()
                res[name]["times"].append(t1 - t0)
                res[name]["cpu"].append(c1 - c0)
    for r in res.values():
        r["best"] = min(r["times"])
        r["best_cpu"] = min(r["cpu"])
    return res


def machine_info(threads: int) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        info["loadavg_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - informational only
        pass
    try:
        import threadpoolctl

        info["blas_pools"] = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads")}
            for p in threadpoolctl.threadpool_info()
        ]
    except ImportError:
        pass
    return info


def bench_size(m: int, beta: int, repeat: int, rng: np.random.Generator, delta_max: int,
               pause: float) -> dict:
    k = m
    seg = -(-k // beta)
    a_signs = rng.random((m, k)) < 0.5
    w_signs = rng.random((m, k)) < 0.5
    a_delta = rng.integers(0, delta_max + 1, (m, seg), dtype=np.int64)
    w_delta = rng.integers(0, delta_max + 1, (m, seg), dtype=np.int64)

    # Dequantized operands for the float baselines (values ±delta, exact in float32).
    def expand(signs, delta):
        return np.where(signs, 1.0, -1.0) * np.repeat(delta, beta, axis=1)[:, :k]

    a64, w64 = expand(a_signs, a_delta), expand(w_signs, w_delta)
    a32 = np.ascontiguousarray(a64, dtype=np.float32)
    wt32 = np.ascontiguousarray(w64.T, dtype=np.float32)  # (K, N): plain M x M @ M x M
    ta, tw = torch.from_numpy(a32), torch.from_numpy(wt32)

    a_bits, w_bits = pack_bits(a_signs), pack_bits(w_signs)
    res = best_times({
        "pack": lambda: (pack_bits(a_signs), pack_bits(w_signs)),
        "xhbnn": lambda: xhbnn_matmul(a_bits, a_delta, w_bits, w_delta, k=k, beta_a=beta, beta_w=beta),
        "torch": lambda: torch.matmul(ta, tw),
        "numpy": lambda: a32 @ wt32,
    }, repeat, pause)
    t_pack = res["pack"]["best"]
    t_x, times_x, o = res["xhbnn"]["best"], res["xhbnn"]["times"], res["xhbnn"]["out"]
    t_torch, times_torch, o_torch = res["torch"]["best"], res["torch"]["times"], res["torch"]["out"]
    t_np, times_np = res["numpy"]["best"], res["numpy"]["times"]
    cpu = {name: res[name]["best_cpu"] for name in ("xhbnn", "torch", "numpy")}

    # Exactness check (float64 sums of these integers are exact: |O| < 2**53).
    if m <= 1024:
        rows = np.arange(m)
    else:
        rows = np.sort(rng.choice(m, 64, replace=False))
    exact = (a64[rows] @ w64.T).astype(np.int64)
    exact_ok = bool(np.array_equal(o[rows], exact))
    f32_err = float(np.abs(o_torch.numpy()[rows].astype(np.float64) - exact).max())

    gops = lambda t: 2.0 * m**3 / t / 1e9  # noqa: E731
    return {
        "M": m,
        "beta_a": beta,
        "beta_w": beta,
        "t_xhbnn_s": t_x,
        "t_torch_f32_s": t_torch,
        "t_numpy_f32_s": t_np,
        "t_pack_s": t_pack,
        "timed_runs": {name: len(res[name]["times"]) for name in ("xhbnn", "torch", "numpy", "pack")},
        "times_xhbnn_s": times_x,
        "times_torch_f32_s": times_torch,
        "times_numpy_f32_s": times_np,
        "gops_eq_xhbnn": gops(t_x),
        "gops_torch_f32": gops(t_torch),
        "gops_numpy_f32": gops(t_np),
        "speedup_vs_torch": t_torch / t_x,
        "speedup_vs_numpy": t_np / t_x,
        "cpu_s": cpu,
        "speedup_vs_torch_cpu_time": cpu["torch"] / cpu["xhbnn"],
        "speedup_vs_numpy_cpu_time": cpu["numpy"] / cpu["xhbnn"],
        "exact_check_rows": int(rows.size),
        "exact": exact_ok,
        "float32_max_abs_err": f32_err,
        "max_abs_O": int(np.abs(exact).max()),
    }


def markdown(info: dict, rows: list[dict], beta: int, repeat: int) -> str:
    lines = [
        f"# xHBNN vs float32 matmul (beta_a = beta_w = {beta})",
        "",
        f"Machine: {info['cpu_model']}, {info['cores']} cores, {info['threads']} threads for every kernel; "
        f"{info['platform']}; numpy {info['numpy']}, torch {info['torch']}, numba {info['numba']}; {info['date']}."
        + (f" Load average at start: {', '.join(f'{v:.2f}' for v in info['loadavg_at_start'])}."
           if "loadavg_at_start" in info else ""),
        "",
        f"Square M x M by M x M products (K = M), best time over {repeat} round-robin rounds (each: sleep, one "
        "untimed call, then 1-20 timed calls) after warm-up. "
        "GOPS-eq = 2*M^3 / t. "
        "Speed-up = float time / xHBNN time. xHBNN time excludes sign packing (own column) and JIT "
        "compilation; it includes the call's lane re-layout and the int64 output.",
        "",
        "| M | xHBNN ms | xHBNN GOPS-eq | torch f32 ms | torch GFLOPS | numpy f32 ms | numpy GFLOPS "
        "| speed-up vs torch | speed-up vs numpy | packing ms | exact |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['M']} | {r['t_xhbnn_s'] * 1e3:.2f} | {r['gops_eq_xhbnn']:.1f} | {r['t_torch_f32_s'] * 1e3:.2f} "
            f"| {r['gops_torch_f32']:.1f} | {r['t_numpy_f32_s'] * 1e3:.2f} | {r['gops_numpy_f32']:.1f} "
            f"| {r['speedup_vs_torch']:.2f}x | {r['speedup_vs_numpy']:.2f}x | {r['t_pack_s'] * 1e3:.2f} "
            f"| {'yes' if r['exact'] else 'NO'} ({r['exact_check_rows']} rows) |")
    lines += [
        "",
        "Process CPU time of the fastest run (core-seconds summed over all threads, so less sensitive to other "
        "tenants on a shared machine than wall time, though it counts spin-waiting worker threads):",
        "",
        "| M | xHBNN cpu-s | torch cpu-s | numpy cpu-s | speed-up vs torch (cpu) | speed-up vs numpy (cpu) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["cpu_s"]
        lines.append(f"| {r['M']} | {c['xhbnn']:.4f} | {c['torch']:.4f} | {c['numpy']:.4f} "
                     f"| {r['speedup_vs_torch_cpu_time']:.2f}x | {r['speedup_vs_numpy_cpu_time']:.2f}x |")
    lines += [
        "",
        "`exact`: xHBNN output equals the exact integer product on the checked rows. float32 keeps a "
        "24-bit mantissa, so its result is approximate once |O| exceeds 2^24 (largest float32 error: "
        + ", ".join(f"M={r['M']}: {r['float32_max_abs_err']:.0f}" for r in rows) + ").",
        "",
    ]
    return "\n".join(lines)


def main(args) -> int:
    if args.beta < 1 or args.beta & (args.beta - 1):
        log(f"--beta must be a power of two, not {args.beta}")
        return 2
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(args.threads)
    except ImportError:
        pass
    info = machine_info(args.threads)
    log(f"{info['cpu_model']}: {info['cores']} cores, {args.threads} threads; beta={args.beta}, repeat={args.repeat}")
    rng = np.random.default_rng(args.seed)
    rows = []
    for m in args.sizes:
        t0 = time.perf_counter()
        r = bench_size(m, args.beta, args.repeat, rng, args.delta_max, args.pause)
        rows.append(r)
        log(f"M={m:5d}: xHBNN {r['t_xhbnn_s'] * 1e3:9.2f} ms ({r['gops_eq_xhbnn']:6.1f} GOPS-eq)  "
            f"torch {r['t_torch_f32_s'] * 1e3:9.2f} ms ({r['gops_torch_f32']:6.1f})  "
            f"numpy {r['t_numpy_f32_s'] * 1e3:9.2f} ms ({r['gops_numpy_f32']:6.1f})  "
            f"speed-up {r['speedup_vs_torch']:.2f}x / {r['speedup_vs_numpy']:.2f}x  "
            f"pack {r['t_pack_s'] * 1e3:.2f} ms  exact={r['exact']}  [{time.perf_counter() - t0:.1f} s]")
    out_dir = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "xhbnn_vs_float32_matmul",
        "args": {"sizes": args.sizes, "beta": args.beta, "threads": args.threads, "repeat": args.repeat,
                 "seed": args.seed, "delta_max": args.delta_max, "pause": args.pause},
        "machine": info,
        "results": rows,
    }
    try:
        info["loadavg_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    (out_dir / "xhbnn.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "xhbnn.md").write_text(markdown(info, rows, args.beta, args.repeat))
    log(f"wrote {out_dir / 'xhbnn.json'} and {out_dir / 'xhbnn.md'}")
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(ARGS))
