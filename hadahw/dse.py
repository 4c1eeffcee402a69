"""Design-space exploration: ``python -m hadahw.dse --rows 1,2,4 --lanes 8,16 --beta-a 2,4``.

Sweeps the accelerator configurations of one FPGA board over a grid (betas, rows x lanes, delta_w
scaling, clock) and reports, per point, what a user picks a design by:

* **resources** -- the build's resource estimate (:data:`hadahw.build.MODEL`, a linear model
  fitted to measured builds) and whether it fits the chip; with ``--synth``, the measured
  post-route figures of a real ``python -m hadahw.build`` of the point (Yosys, nextpnr, icepack),
  Fmax and whether timing was met;
* **peak** -- ``2 x rows x lanes x clock`` (binary MACs; at ``min(Fmax, clock)`` when measured);
* **per network** (the digits MLP and CNN by default, lowered at the point's betas) -- the
  layers the accelerator runs, cycles per inference (:func:`hadahw.program.predict_cycles`, which
  the simulations check equal to the measured cycles), the bytes one inference puts on the wire
  (the real host driver's requests against the device model, :mod:`hadahw.sw.devmodel`),
  latency = compute + transfer at the baud rate, sustained GOPS of the accelerator's layers and
  the energy estimate of :mod:`hadahw.energy`.

The networks are randomly initialised (seed 0) and calibrated on the digits training images:
cycles and bytes depend on the layer shapes and on the final layer's output width, which follows
the calibration (a trained network's may differ by a byte per output value).

Synthesis runs go to a Dask cluster: a ``LocalCluster`` of ``--workers`` processes on this
machine, or the scheduler at ``--scheduler`` (``tcp://host:8786``) whose workers have hadahw
installed and share ``--out``'s file system.  Builds are cached per point (the build's own cache),
so a repeated sweep only builds what changed.

Outputs (``--out``, default ``dse/``): ``dse.json`` (every figure, with how it was obtained),
``dse.md`` (a table, the Pareto front of peak GOPS against logic cells marked), with ``--plot``
``dse.png``, and with ``--synth`` the builds under ``builds/``.  Exit status: 0 done; 1 a synthesis failed (the reports are still
written, the point marked); 2 bad arguments (one ``error: ...`` line naming the parameter).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["GridPoint", "estimate_point", "network_figures", "synth_points", "pareto", "main", "NETWORKS"]

#: Networks ``--model`` accepts (:func:`hadahw.nets.build_model`).
NETWORKS = ("digits-mlp", "digits-cnn")
_BETAS_W = (2, 4, 8, 16, 32, 64)
_BETAS_A = (1, 2, 4, 8, 16, 32, 64)
_LANES = (8, 16, 32, 64, 128, 256)
_SCALINGS = ("dsp", "shiftadd")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    """A bad command-line value (one line, naming the parameter)."""


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One configuration of the sweep; :meth:`argv` is its ``python -m hadahw.build`` command line."""

    beta_w: int
    beta_a: int
    rows: int
    lanes: int
    scaling: str
    clock_mhz: float

    def argv(self, board: str, baud: int, sets: Sequence[str] = ()) -> list[str]:
        return ["--board", board, "--beta-w", str(self.beta_w), "--beta-a", str(self.beta_a), "--rows", str(self.rows),
                "--lanes", str(self.lanes), "--scaling", self.scaling, "--clock-mhz", f"{self.clock_mhz:g}",
                "--baud", str(baud), *itertools.chain.from_iterable(("--set", s) for s in sets)]

    @property
    def label(self) -> str:
        return f"{self.rows}x{self.lanes} b{self.beta_w}/{self.beta_a} {self.scaling} {self.clock_mhz:g}MHz"


# ---------------------------------------------------------------------------------------------
# Estimates


def estimate_point(point: GridPoint, board: str, baud: int, sets: Sequence[str] = ()) -> dict[str, Any]:
    """The estimate row of ``point``: configuration, resources, fit, peak (no tool runs).

    ``status`` is ``"invalid"`` (with ``reason``) when ``python -m hadahw.build`` refuses the
    configuration itself; a UsageError about the clock, baud rate or ``--set`` (the same for every
    point) propagates.
    """
    from hadahw.build import MODEL, UsageError as BuildUsage, achieved_mhz, build_options, fit_check

    row: dict[str, Any] = {"point": dataclasses.asdict(point), "label": point.label}
    try:
        opts = build_options(*point.argv(board, baud, sets), "--skip-fit-check")
    except BuildUsage as e:
        msg = str(e)
        if msg.startswith(("--clock-mhz", "--baud", "--set", "--board")):
            raise UsageError(msg) from None
        return {**row, "status": "invalid", "reason": msg}
    cfg = opts.config
    est = MODEL.estimate(cfg)
    over = fit_check(est, opts.board)
    clock = achieved_mhz(opts)
    return {**row, "status": "estimated", "config": cfg.to_dict(), "clock_mhz": clock,
            "pll": abs(clock - opts.board.clock_mhz) > 1e-9, "baud": baud, "estimate": est,
            "fits": not over, "over": over, "bmac_per_cycle": cfg.bmac_per_cycle,
            "peak_gops": 2 * cfg.bmac_per_cycle * clock / 1000}


_NETS: dict[tuple[str, int, int], list] = {}


def lowered_network(name: str, beta_w: int, beta_a: int) -> list:
    """``name`` (a :data:`NETWORKS` entry) at ``(beta_w, beta_a)``: seed-0 weights, calibrated on
    256 digits training images, lowered to the integer contract (cached)."""
    key = (name, beta_w, beta_a)
    if key not in _NETS:
        import torch

        from hadahw.lower_net import lower_network
        from hadahw.nets import build_model
        from hadahw.train import load_split

        torch.manual_seed(0)
        model = build_model(name, beta_w, beta_a).eval()
        layers, _ = lower_network(model, load_split().x_train[:256])
        _NETS[key] = layers
    return _NETS[key]


def inference_wire_bytes(program, config) -> tuple[int, int]:
    """``(host -> device, device -> host)`` wire bytes of one inference of ``program``.

    The real driver (:class:`~hadahw.sw.accelerator.Accelerator`: WRITE_MEM input, RUN, STATUS
    until done, READ_MEM output) against the device model with the board's receive buffer and
    entry layouts, counted as on a board (the STATUS that saw the run finished, not the polls
    before it); the input is all +1 with delta 0 (other data adds at most one byte per 254).
    """
    import numpy as np

    from hadahw.contract import segment_count
    from hadahw.golden import QAct
    from hadahw.rtl.top import LINK_MAX_PAYLOAD
    from hadahw.run import TrafficMeter
    from hadahw.sw.accelerator import Accelerator
    from hadahw.sw.devmodel import DevModel, DevModelPipe
    from hadahw.sw.link import Link

    mm = program.memory_map
    model = DevModel(sizes=mm.space_sizes, max_payload=LINK_MAX_PAYLOAD, config=config.to_dict(), run_polls=1,
                     compact=mm.compact_spaces)
    link = Link(DevModelPipe(model))
    acc = Accelerator(link, expect_config=config)
    acc.load(program)
    first = program.layers[0]
    shape = tuple(first.in_shape)
    act = QAct(signs=np.ones(shape, bool), delta=np.zeros(shape[:-1] + (segment_count(shape[-1], first.beta_a),),
                                                          np.int64), beta_a=first.beta_a, bits=first.act_bits)
    meter = TrafficMeter(link)
    meter.start()
    acc.infer(act)
    return meter.inference()


def network_figures(row: dict[str, Any], name: str, resources: dict | None = None) -> dict[str, Any]:
    """Per-inference figures of network ``name`` on the configuration of estimate ``row``.

    ``resources`` (measured) replace the estimate in the energy model.  ``fits`` is False, with
    ``reason``, when no layer of the network runs on the accelerator or its share does not fit the
    configuration's memories.
    """
    import math

    from hadahw.params import AcceleratorConfig
    from hadahw.run import board_model
    from hadahw.sw.partition import HybridNetwork

    cfg = AcceleratorConfig.from_dict(row["config"])
    layers = lowered_network(name, cfg.beta_w, cfg.beta_a)
    try:
        hyb = HybridNetwork(layers, cfg)
    except ValueError as e:
        return {"fits": False, "reason": str(e).splitlines()[0]}
    cycles = hyb.program.predict_cycles()
    sent, received = inference_wire_bytes(hyb.program, cfg)
    hw = {"resources": resources or row["estimate"], "clock_mhz": row["clock_mhz"], "pll": row["pll"],
          "baud": row["baud"]}
    latency, energy, note = board_model(hw, cycles, sent, received)
    macs = sum(math.prod(layer.out_shape) * layer.reduction for layer in hyb.segment)
    return {"fits": True, "accelerator_layers": [hyb.start, hyb.stop], "cycles": cycles, "bmacs": macs,
            "sustained_gops": 2 * macs / latency["compute"] / 1e9, "wire_bytes": {"sent": sent, "received": received},
            "latency_ms": {k: 1e3 * v for k, v in latency.items()},
            "energy_uj": None if energy is None else {k: energy[k] for k in ("total", "low", "high")},
            "energy_note": note}


# ---------------------------------------------------------------------------------------------
# Synthesis on a Dask cluster


def _synth_task(argv: list[str]) -> dict[str, Any]:
    """Run one ``python -m hadahw.build ARGV`` (in a Dask worker); the report's figures or the failure."""
    from hadahw.build import BuildError, DoesNotFit, build, build_options
    try:
        code, rep = build(build_options(*argv))
    except DoesNotFit as e:  # (the message's pointer to the report is left out: reports stay in the folder)
        return {"status": "no_fit", "reason": str(e).splitlines()[0].split("; report ")[0]}
    except BuildError as e:
        return {"status": "tool_failure", "reason": str(e).splitlines()[0]}
    res = {k.lower(): v.get("used") for k, v in rep["resources"].items()}
    return {"status": "built", "exit": code, "resources": res, "fmax_mhz": rep.get("fmax_mhz"),
            "timing_met": rep.get("timing_met"), "peak_gops": rep.get("peak_gops"), "seed": rep.get("seed"),
            "cached": rep.get("cached", False), "build_seconds": (rep.get("build_seconds") or {}).get("total"),
            "report": str(Path(argv[argv.index("--out") + 1]) / "report.json")}


def synth_points(rows: list[dict], board: str, baud: int, sets: Sequence[str], out: Path, *, workers: int,
                 scheduler: str | None, seed: int | None, progress: bool) -> None:
    """Build every fitting row's point on a Dask cluster; each row gets a ``synth`` entry."""
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    todo = [r for r in rows if r["status"] == "estimated" and r["fits"]]
    if not todo:
        return
    if scheduler:
        client, cluster = Client(scheduler), None
    else:
        # One single-threaded process per worker: elaboration is Python, the tools are subprocesses.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=workers > 1,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = {}
        for r in todo:
            p = GridPoint(**r["point"])
            argv = [*p.argv(board, baud, sets), "--quiet", "--out", str(out / "builds" / _slug(p))]
            if seed is not None:
                argv += ["--seed", str(seed)]
            futures[client.submit(_synth_task, argv, pure=False)] = r
        bar = progress and sys.stderr.isatty()
        for n, fut in enumerate(tqdm(as_completed(futures), total=len(futures), desc="synth", unit="build",
                                     disable=not bar), 1):
            row = futures[fut]
            row["synth"] = s = fut.result()
            if "report" in s:
                s["report"] = os.path.relpath(s["report"], out)  # relative to the output folder
            if progress and not bar:  # a line per build in logs
                what = (f"{s['resources']['lc']} LC, {s['fmax_mhz']:.1f} MHz" if s["status"] == "built"
                        else s["reason"])
                print(f"hadahw.dse: [{n}/{len(futures)}] {row['label']}: {s['status']} ({what})", file=sys.stderr,
                      flush=True)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _slug(p: GridPoint) -> str:
    return f"r{p.rows}-l{p.lanes}-bw{p.beta_w}-ba{p.beta_a}-{p.scaling}-{p.clock_mhz:g}mhz"


# ---------------------------------------------------------------------------------------------
# Summaries


def _lc(row: dict) -> int:
    s = row.get("synth") or {}
    return s["resources"]["lc"] if s.get("status") == "built" else row["estimate"]["lc"]


def _usable(row: dict) -> bool:
    """Fits the chip: measured when built, else estimated (a failed build does not count)."""
    if row["status"] != "estimated" or not row["fits"]:
        return False
    s = row.get("synth")
    return s is None or s["status"] == "built"


def _peak(row: dict) -> float:
    s = row.get("synth") or {}
    return s["peak_gops"] if s.get("status") == "built" else row["peak_gops"]


def pareto(rows: list[dict]) -> list[dict]:
    """Usable rows not dominated in (more peak GOPS, fewer logic cells); marks ``row["pareto"]``."""
    usable = [r for r in rows if _usable(r)]
    front = []
    for r in rows:
        r["pareto"] = False
    for r in usable:
        dominated = any(_peak(o) >= _peak(r) and _lc(o) <= _lc(r) and (_peak(o) > _peak(r) or _lc(o) < _lc(r))
                        for o in usable)
        if not dominated:
            r["pareto"] = True
            front.append(r)
    return sorted(front, key=_lc)


def _fmt(v, nd=2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(meta: dict, rows: list[dict]) -> str:
    nets = meta["networks"]
    synth = meta["synth"]
    L = [f"# Design-space exploration: {meta['board']} ({meta['device']})", "",
         f"Generated by `python -m hadahw.dse {' '.join(meta['argv'])}` on {meta['date']} ({meta['machine']}); "
         f"{len(rows)} points, {meta['wall_s']:.0f} s.", "",
         f"- Resources: {meta['resource_model']}" + ("; **measured** post-route figures where a build ran "
                                                     f"(`--synth`, {meta['workers']})." if synth else "."),
         "- Peak GOPS = 2 x rows x lanes x clock (binary MACs), at min(Fmax, clock) when measured.",
         f"- Networks: {', '.join(nets) or 'none'}; {meta['network_note']}",
         f"- Latency = compute (predicted cycles / clock) + transfer (wire bytes x 10 bits / {meta['baud']:,} baud, "
         "no turnaround or host time); energy: hadahw.energy (estimate, low-high range in dse.json).",
         "- Pareto: not beaten in both peak GOPS and logic cells by another point that fits.", ""]
    head = ["R x L", "beta w/a", "scaling", "MHz", "LC est.", "EBR", "DSP", "fits"]
    if synth:
        head += ["LC meas.", "Fmax", "timing"]
    head += ["peak GOPS"]
    for n in nets:
        head += [f"{n} cycles", f"{n} ms (compute + transfer)", f"{n} µJ"]
    head += ["Pareto"]
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(rows, key=lambda r: (not _usable(r), -_peak(r) if r["status"] == "estimated" else 0,
                                        _lc(r) if r["status"] == "estimated" else 0))
    for r in order:
        p = r["point"]
        cells = [f"{p['rows']} x {p['lanes']}", f"{p['beta_w']}/{p['beta_a']}", p["scaling"], f"{p['clock_mhz']:g}"]
        if r["status"] == "invalid":
            L.append("| " + " | ".join(cells + [f"invalid: {r['reason']}"] + [""] * (len(head) - len(cells) - 1))
                     + " |")
            continue
        e = r["estimate"]
        cells += [_fmt(e["lc"]), _fmt(e["ebr"]), _fmt(e["dsp"]), "yes" if r["fits"] else "no: " + ", ".join(r["over"])]
        if synth:
            s = r.get("synth")
            if s is None:
                cells += ["not built", "", ""]
            elif s["status"] != "built":
                cells += [f"{s['status']}: {s['reason']}", "", ""]
            else:
                cells += [_fmt(s["resources"]["lc"]), _fmt(s["fmax_mhz"]), "met" if s["timing_met"] else "not met"]
        cells.append(_fmt(_peak(r)))
        for n in nets:
            f = r["networks"].get(n)
            if not f["fits"]:
                cells += [f"does not fit: {f['reason']}", "", ""]
                continue
            lat = f["latency_ms"]
            cells += [_fmt(f["cycles"]), f"{lat['total']:.2f} ({lat['compute']:.2f} + {lat['transfer']:.2f})",
                      _fmt(f["energy_uj"]["total"], 0) if f["energy_uj"] else "–"]
        cells.append("**yes**" if r.get("pareto") else "")
        L.append("| " + " | ".join(cells) + " |")
    return "\n".join(L) + "\n"


def plot(rows: list[dict], path: Path, chip_lc: int) -> None:
    """Peak GOPS against logic cells, fitting points filled, the Pareto front joined."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    est = [r for r in rows if r["status"] == "estimated"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for usable, style in ((True, dict(marker="o")), (False, dict(marker="x", color="grey"))):
        pts = [r for r in est if _usable(r) == usable]
        ax.scatter([_lc(r) for r in pts], [_peak(r) for r in pts], label="fits" if usable else "does not fit", **style)
    front = [r for r in est if r.get("pareto")]
    front.sort(key=_lc)
    ax.plot([_lc(r) for r in front], [_peak(r) for r in front], "-", color="tab:red", label="Pareto front")
    for r in front:
        ax.annotate(r["label"], (_lc(r), _peak(r)), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axvline(chip_lc, color="k", linestyle=":", label=f"chip ({chip_lc} LC)")
    ax.set_xlabel("logic cells (measured where built, else estimated)")
    ax.set_ylabel("peak GOPS")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# CLI


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message}\n")


def _list(kind, allowed, what: str):
    """argparse type: a comma-separated list of ``kind`` values in ``allowed`` (None: positive)."""
    def parse(text: str):
        out = []
        for item in text.split(","):
            item = item.strip()
            try:
                v = kind(item)
            except ValueError:
                v = None
            if v is None or (v not in allowed if allowed is not None else not v > 0):
                raise argparse.ArgumentTypeError(f"{item!r} is not {what} (give a comma-separated list)")
            out.append(v)
        return list(dict.fromkeys(out))
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = _ArgumentParser(prog="python -m hadahw.dse", description=__doc__.split("\n\n")[0].split(": ")[0] + ": sweep "
                         "accelerator configurations, estimate (or build) each, report resources, peak and per-network "
                         "latency/energy.")
    ap.add_argument("--board", default="icebreaker", help="FPGA board (default icebreaker)")
    ap.add_argument("--beta-w", type=_list(int, _BETAS_W, "one of 2, 4, 8, 16, 32, 64"), default=[16], metavar="LIST",
                    help="weight segment sizes (default 16)")
    ap.add_argument("--beta-a", type=_list(int, _BETAS_A, "one of 1, 2, 4, 8, 16, 32, 64"), default=[2], metavar="LIST",
                    help="activation segment sizes (default 2; pairs with beta_a > beta_w are skipped)")
    ap.add_argument("--rows", type=_list(int, range(1, 1025), "an integer in 1..1024"), default=[1, 2, 4],
                    metavar="LIST", help="array rows (default 1,2,4)")
    ap.add_argument("--lanes", type=_list(int, _LANES, "one of 8, 16, 32, 64, 128, 256"), default=[8, 16, 32], metavar="LIST",
                    help="array lanes, powers of two in 8..256 (default 8,16,32)")
    ap.add_argument("--scaling", type=_list(str, _SCALINGS, "one of dsp, shiftadd"), default=["dsp"], metavar="LIST",
                    help="delta_w products: dsp, shiftadd (default dsp)")
    ap.add_argument("--clock-mhz", type=_list(float, None, "a positive number of MHz"), default=[30.0],
                    metavar="LIST", help="system clocks (default 30)")
    ap.add_argument("--baud", type=int, default=1_000_000, help="UART baud rate (default 1000000)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any other AcceleratorConfig field, for every point (as python -m hadahw.build)")
    ap.add_argument("--model", type=_list(str, (*NETWORKS, "none"), f"one of {', '.join(NETWORKS)}, none"), default=list(NETWORKS), metavar="LIST",
                    help=f"networks to run per point: {', '.join(NETWORKS)} or none (default both)")
    ap.add_argument("--synth", action="store_true",
                    help="also build every point that the estimate fits (Yosys + nextpnr; about a minute each)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="Dask LocalCluster worker processes for --synth (default min(2, CPUs))")
    ap.add_argument("--scheduler", metavar="ADDR", help="a running Dask scheduler (tcp://host:8786) instead")
    ap.add_argument("--seed", type=int, help="nextpnr placer seed for every build (default: the build's retries)")
    ap.add_argument("--out", type=Path, default=Path("dse"), help="output folder (default dse/)")
    ap.add_argument("--plot", action="store_true", help="also write dse.png (peak GOPS vs logic cells)")
    ap.add_argument("--json", action="store_true", help="print dse.json to stdout")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return ap


def _grid(args) -> list[GridPoint]:
    return [GridPoint(beta_w=bw, beta_a=ba, rows=r, lanes=lanes, scaling=s, clock_mhz=f)
            for bw, ba, r, lanes, s, f in itertools.product(args.beta_w, args.beta_a, args.rows, args.lanes,
                                                              args.scaling, args.clock_mhz) if ba <= bw]


def run(args: argparse.Namespace, argv: Sequence[str]) -> tuple[int, dict]:
    from tqdm import tqdm

    from hadahw.boards import BOARDS, get_board
    from hadahw.build import MODEL

    if args.board not in BOARDS or not get_board(args.board).is_fpga:
        fpga = [n for n, b in BOARDS.items() if b.is_fpga]
        raise UsageError(f"--board must be an FPGA board, one of {', '.join(fpga)}, not {args.board!r}")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    if args.baud <= 0:
        raise UsageError(f"--baud must be a positive integer, not {args.baud}")
    points = _grid(args)
    if not points:
        raise UsageError("--beta-a: every beta_a given exceeds every beta_w (segments must nest); nothing to sweep")
    nets = [] if "none" in args.model else list(args.model)
    t0 = time.perf_counter()
    rows = [estimate_point(p, args.board, args.baud, args.set) for p in points]
    if all(r["status"] == "invalid" for r in rows):
        raise UsageError(f"no point of the grid is a valid configuration (e.g. {rows[0]['label']}: {rows[0]['reason']})")
    show = not args.quiet
    for r in tqdm([r for r in rows if r["status"] == "estimated"], desc="networks", unit="point",
                  disable=not (show and sys.stderr.isatty())):
        r["networks"] = {n: network_figures(r, n) for n in nets}
    if args.synth:
        synth_points(rows, args.board, args.baud, args.set, args.out.resolve(), workers=args.workers,
                     scheduler=args.scheduler, seed=args.seed, progress=show)
        for r in rows:
            s = r.get("synth")
            if s and s["status"] == "built":
                r["networks"] = {n: network_figures(r, n, resources=s["resources"]) for n in nets}
    front = pareto(rows)
    board = get_board(args.board)
    meta = {
        "argv": list(argv), "board": board.name, "device": board.device, "baud": args.baud, "networks": nets,
        "set": list(args.set), "synth": bool(args.synth),
        "workers": (f"Dask scheduler {args.scheduler}" if args.scheduler else
                    f"Dask LocalCluster, {args.workers} worker(s)"),
        "resource_model": MODEL.describe(),
        "network_note": "seed-0 weights calibrated on 256 digits training images (cycles and bytes depend on "
                        "the shapes and the final layer's output width)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "wall_s": time.perf_counter() - t0,
        "pareto": [r["label"] for r in front],
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "points": rows}
    (out / "dse.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "dse.md").write_text(markdown(meta, rows))
    if args.plot:
        plot(rows, out / "dse.png", board.resources["lc"])
    failed = [r for r in rows if (r.get("synth") or {}).get("status") == "tool_failure"]
    return (EXIT_FAILURE if failed else EXIT_OK), result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        code, result = run(args, argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=1))
    if not args.quiet:
        m = result["meta"]
        print(f"hadahw.dse: {len(result['points'])} points in {m['wall_s']:.0f} s; Pareto front: "
              f"{'; '.join(m['pareto']) or 'none fits'}; wrote {args.out / 'dse.md'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
