"""Run a trained digits HadaNet on the accelerator: ``python -m hadahw.run``.

Usage::

    python -m hadahw.run --model cnn.pt --sim                         # simulated board, 20 test images
    python -m hadahw.run --model cnn.pt --port /dev/ttyUSB1 --images all
    python -m hadahw.run --model mlp.pt --sim --config build/icebreaker-xxxx/config.json --json

Steps: load the checkpoint (:func:`hadahw.train.load_checkpoint`); lower it to the integer
contract (:func:`hadahw.lower_net.lower_network_full`, calibrated on the training images, as
``bench/digits_table.py`` does); split it between host and accelerator
(:class:`hadahw.sw.partition.HybridNetwork`: the full-precision first and last layers, which the
hardware does not support, run on the host with the golden model); connect to the accelerator
(a board on ``--port``, or :class:`hadahw.sim.uart_board.SimulatedBoard` with ``--sim``), load the
segment and run every selected test image.  The accuracy of the float model, of the integer golden
model and of the hardware is printed, with the number of predictions and of output values where
the hardware differs from the golden model (it must not: exit status 1 otherwise), which layers ran
where, the cycles the device measured against :func:`hadahw.program.predict_cycles`, and the
wall time per inference split into transfer and compute.

It also models the board: the latency per inference (compute = measured cycles / clock; transfer =
the bytes of one inference's requests and responses, with a single STATUS poll, at 10 bits per byte
over the UART's baud rate) and the energy per inference (:func:`hadahw.energy.estimate_energy`, an
estimate for the iCE40 UP5K).  Their inputs: the resources, clock and baud rate of the build's
``report.json`` when one for the same configuration sits next to the ``--config`` file (measured by
nextpnr), otherwise the resource model's estimate (:data:`hadahw.build.MODEL`) of the configuration
in use at :data:`hadahw.build.DEFAULT_CLOCK_MHZ` (from the PLL) and ``--baud``.  A configuration
that does not fit the UP5K gets no energy figure (``energy_note`` says why).  :func:`run_checkpoint`
is the function form of the command.

The accelerator configuration: ``--config FILE`` (an ``AcceleratorConfig`` JSON, e.g. the
``config.json`` that ``python -m hadahw.build`` writes; with ``--port`` the board must report the
same); otherwise, with ``--port``, the configuration the board reports; with ``--sim``,
:func:`default_config`: the ``AcceleratorConfig()`` defaults with the network's betas and formats
and memories large enough for it.

Exit status: 0 ok; 1 the hardware differs from the golden model; 2 bad arguments, or a network
that does not fit the accelerator (one ``error: ...`` line); 3 the device or the link failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from hadahw.golden import QLayer
from hadahw.params import AcceleratorConfig
from hadahw.params import load_config as params_load_config
from hadahw.train import _int_arg  # the same integer flag parser as the training CLI

__all__ = ["RunReport", "default_config", "board_figures", "board_model", "TrafficMeter", "run_checkpoint", "main",
           "EXIT_OK", "EXIT_MISMATCH", "EXIT_USAGE", "EXIT_DEVICE", "UART_BITS_PER_BYTE"]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_DEVICE = 3

DEFAULT_BAUD = 1_000_000
#: Test images run by default with --sim (the simulated UART moves ~2 KB/s).
DEFAULT_SIM_IMAGES = 20
#: Bits on the line per byte of the host link: start, 8 data, stop (hadahw.rtl.uart is 8N1).
UART_BITS_PER_BYTE = 10


class UsageError(ValueError):
    """Bad arguments (or a network that does not fit): one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Report


@dataclasses.dataclass
class RunReport:
    """Everything ``python -m hadahw.run`` measured (``--json`` prints :meth:`to_dict`).

    Accuracies are fractions in [0, 1] over :attr:`images` test images; times are seconds of
    wall time, per inference (mean) except :attr:`load_s` (once) and :attr:`wall_s` (the whole
    run).  New measurements are new fields.
    """

    model: str
    variant: str
    checkpoint: str
    target: str                   # "sim" or "port"
    device: str                   # pty of the simulated board, or the serial port
    config: dict                  # the AcceleratorConfig (to_dict)
    seed: int
    images: int
    image_indices: list           # indices into the test split
    layers: list                  # per layer: index, name, kind, in/out shape, betas, "host" | "accelerator"
    float_accuracy: float
    golden_accuracy: float
    hardware_accuracy: float
    prediction_mismatches: int    # hardware argmax != golden argmax
    value_mismatches: int         # output values (logits) where hardware != golden
    values_compared: int
    cycles_predicted: int
    cycles_measured: list         # one per inference
    transfer_s: float
    compute_s: float
    host_s: float                 # the host's layers (golden model), per inference
    load_s: float
    wall_s: float
    link: dict = dataclasses.field(default_factory=dict)  # LinkStats of the session
    # The board model (module docstring): per inference, modeled at hardware["clock_mhz"] / ["baud"].
    bytes_per_inference: dict = dataclasses.field(default_factory=dict)  # {"sent", "received"}, one STATUS poll
    hardware: dict = dataclasses.field(default_factory=dict)  # source, resources, clock_mhz, pll, baud
    latency_s_per_inference: dict = dataclasses.field(default_factory=dict)  # {"compute", "transfer", "total"}
    energy_uj_per_inference: dict | None = None  # {"total", "low", "high", "compute", ..., "method"}
    energy_note: str = ""         # why there is no energy figure ("" when there is one)

    @property
    def ok(self) -> bool:
        return self.prediction_mismatches == 0 and self.value_mismatches == 0

    @property
    def cycles_match(self) -> bool:
        return all(c == self.cycles_predicted for c in self.cycles_measured)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        d["cycles_match"] = self.cycles_match
        return d

    def text(self) -> str:
        """The human-readable summary."""
        c = self.config
        where = ", ".join(f"{l['index']} {l['kind']} {l['where']}" for l in self.layers)
        n = self.images
        cyc = sorted(set(self.cycles_measured))
        cyc_txt = str(cyc[0]) if len(cyc) == 1 else f"{min(cyc)}..{max(cyc)}"
        lines = [
            f"model: {self.model} {self.variant} ({self.checkpoint}); {n} test image(s), seed {self.seed}",
            f"target: {'simulated board' if self.target == 'sim' else 'board'} on {self.device}; accelerator "
            f"{c['rows']}x{c['lanes']}, beta_w={c['beta_w']} beta_a={c['beta_a']}",
            f"layers: {where}",
            f"accuracy: float {100 * self.float_accuracy:.2f} %, integer golden {100 * self.golden_accuracy:.2f} %, "
            f"hardware {100 * self.hardware_accuracy:.2f} %",
            f"hardware vs golden: {self.prediction_mismatches} of {n} predictions and {self.value_mismatches} of "
            f"{self.values_compared} output values differ" + ("" if self.ok else "  <-- MISMATCH"),
            f"cycles per inference: measured {cyc_txt}, predicted {self.cycles_predicted}"
            + ("" if self.cycles_match else "  <-- differ"),
            f"time per inference: transfer {1e3 * self.transfer_s:.1f} ms, compute/wait {1e3 * self.compute_s:.1f} "
            f"ms, host layers {1e3 * self.host_s:.1f} ms; load {self.load_s:.2f} s once; total {self.wall_s:.1f} s",
        ]
        hw, lat, b = self.hardware, self.latency_s_per_inference, self.bytes_per_inference
        if hw and lat:
            lines.append(
                f"hardware latency per inference at {hw['clock_mhz']:g} MHz, {hw['baud']} baud: compute "
                f"{1e3 * lat['compute']:.3f} ms, transfer {1e3 * lat['transfer']:.3f} ms ({b['sent']:.0f} B sent, "
                f"{b['received']:.0f} B received), total {1e3 * lat['total']:.3f} ms (modeled; resources "
                f"{hw['source']}: {hw['resources'].get('lc')} LC)")
        e = self.energy_uj_per_inference
        if e is not None:
            lines.append(
                f"estimated energy per inference: {e['total']:.3g} uJ (range {e['low']:.3g}-{e['high']:.3g}): compute "
                f"{e['compute']:.3g} uJ at {e['power_mw']:.3g} mW + idle during transfer {e['transfer']:.3g} uJ "
                f"(iCE40 UP5K model, hadahw.energy)")
        elif self.energy_note:
            lines.append(f"estimated energy per inference: none ({self.energy_note})")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Configuration


def default_config(layers: Sequence[QLayer]) -> AcceleratorConfig:
    """``AcceleratorConfig()`` defaults, adapted to a network.

    Betas, delta_w format and ``act_bits`` are those of the network's first layer with
    binarized weights (:func:`hadahw.sw.partition.reference_layer`); the memories (``weight_depth``,
    ``act_depth``, ``param_depth``, ``desc_bytes``), ``max_reduction``, ``max_pool``,
    ``max_channels`` and ``max_pool_width`` are the defaults or, where the accelerator's share of
    the network (:func:`hadahw.sw.partition.partition_network`) needs more, that need rounded up
    to a power of two.  Rows and lanes stay at the defaults.  Raises ValueError (one line) when
    no such configuration exists.
    """
    from hadahw.program import DESCRIPTOR_BYTES, compile_network, pow2_ceil
    from hadahw.sw.partition import partition_network, reference_layer

    ref = reference_layer(layers)
    base = AcceleratorConfig(beta_w=ref.beta_w, beta_a=ref.beta_a, weight_delta=ref.weight_format,
                             act_bits=ref.act_bits)
    start, stop = partition_network(layers, base)
    seg = list(layers[start:stop])
    seg[-1] = dataclasses.replace(seg[-1], out_beta_a=None)
    k = pow2_ceil(max(layer.reduction for layer in seg))
    base = dataclasses.replace(base, max_reduction=max(base.max_reduction, k))
    # Compile once with every memory and limit at its maximum and read the needs off the plans
    # (the entry formats depend on rows, lanes, betas and widths only, which stay as in ``base``).
    roomy = dataclasses.replace(base, weight_depth=1 << 16, act_depth=1 << 16, param_depth=1 << 16,
                                desc_bytes=1 << 16, max_channels=1 << 16, max_pool_width=1 << 16, max_pool=255)
    plans = compile_network(seg, roomy).plans
    pooled = [p for p in plans if p.pool > 1]
    need = {
        "weight_depth": pow2_ceil(sum(p.weight_entries for p in plans)),
        "param_depth": pow2_ceil(sum(p.n for p in plans)),
        "act_depth": pow2_ceil(max(p.in_entries + p.out_entries for p in plans)),
        "desc_bytes": pow2_ceil(len(plans) * DESCRIPTOR_BYTES),
        "max_pool": max([p.pool for p in plans]),
        "max_channels": pow2_ceil(max([p.n for p in pooled], default=1)),
        "max_pool_width": pow2_ceil(max([p.conv_out[1] for p in pooled], default=2)),
    }
    return dataclasses.replace(base, **{f: max(getattr(base, f), v) for f, v in need.items()})


def _layer_rows(layers: Sequence[QLayer], placement: Sequence[str]) -> list[dict]:
    return [{"index": i, "name": l.name, "kind": l.kind, "in_shape": list(l.in_shape), "out_shape": list(l.out_shape),
             "beta_w": l.beta_w, "beta_a": l.beta_a, "where": where}
            for i, (l, where) in enumerate(zip(layers, placement))]


# ---------------------------------------------------------------------------------------------
# The board model: resources, clock, latency, energy


def _build_report(config_path: str | None, cfg: AcceleratorConfig) -> tuple[dict | None, str]:
    """``(report, "")`` for a usable ``report.json`` next to ``config_path``, else ``(None, why not)``."""
    if not config_path:
        return None, ""
    path = Path(config_path).resolve().parent / "report.json"
    if not path.is_file():
        return None, ""
    try:
        rep = json.loads(path.read_text())
        lc = rep["resources"]["LC"]["used"]
        usable = (rep.get("config") == cfg.to_dict() and rep.get("status") in ("ok", "timing_failed")
                  and isinstance(lc, int) and rep.get("target_mhz"))
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{path} unreadable"
    if not usable:
        return None, f"{path} is not a finished build of this configuration"
    return rep, ""


def board_figures(cfg: AcceleratorConfig, config_path: str | None = None, baud: int = DEFAULT_BAUD) -> dict:
    """Resources, clock and baud rate the latency and energy are modeled with.

    The measured ones of a ``report.json`` next to ``config_path`` (a ``python -m hadahw.build``
    folder) when it is a finished build of ``cfg``; otherwise :data:`hadahw.build.MODEL`'s estimate
    of ``cfg``, :data:`hadahw.build.DEFAULT_CLOCK_MHZ` and ``baud``.  Returns ``{"source",
    "resources": {"lc", "ebr", "spram", "dsp"}, "clock_mhz", "pll", "baud"}``.
    """
    from hadahw.boards import get_board
    from hadahw.build import DEFAULT_BOARD, DEFAULT_CLOCK_MHZ, MODEL
    rep, why = _build_report(config_path, cfg)
    if rep is not None:
        res = {k.lower(): v.get("used") for k, v in rep["resources"].items() if k in ("LC", "EBR", "SPRAM", "DSP")}
        clock = float(rep["target_mhz"])
        pll = bool((rep.get("clock") or {}).get("pll"))
        baud = int((rep.get("uart") or {}).get("baud") or baud)
        source = f"measured (nextpnr, {Path(config_path).resolve().parent / 'report.json'})"
    else:
        res = MODEL.estimate(cfg)
        clock = DEFAULT_CLOCK_MHZ
        pll = clock != get_board(DEFAULT_BOARD).clock_mhz  # any other clock comes from the PLL
        source = "estimated (hadahw.build.MODEL)" + (f"; {why}" if why else "")
    return {"source": source, "resources": res, "clock_mhz": clock, "pll": pll, "baud": int(baud)}


def board_model(hw: dict, cycles: float, sent: float, received: float) -> tuple[dict, dict | None, str]:
    """``(latency_s, energy_uj or None, note)`` per inference for :func:`board_figures` ``hw``."""
    from hadahw.energy import UP5K_LC, estimate_energy
    compute = cycles / (hw["clock_mhz"] * 1e6)
    transfer = (sent + received) * UART_BITS_PER_BYTE / hw["baud"]
    latency = {"compute": compute, "transfer": transfer, "total": compute + transfer}
    lc = hw["resources"].get("lc")
    if isinstance(lc, int) and lc > UP5K_LC:
        return latency, None, f"{lc} logic cells do not fit the iCE40 UP5K ({UP5K_LC}); the model is for that chip"
    try:
        e = estimate_energy(hw["resources"], hw["clock_mhz"], int(round(cycles)), transfer_s=transfer, pll=hw["pll"])
    except ValueError as exc:
        return latency, None, str(exc)
    uj = {"total": 1e6 * e.total_j, "low": 1e6 * e.total_low_j, "high": 1e6 * e.total_high_j,
          "compute": 1e6 * e.compute_j, "compute_low": 1e6 * e.compute_low_j, "compute_high": 1e6 * e.compute_high_j,
          "transfer": 1e6 * e.transfer_j, "power_mw": e.power_mw, "power_low_mw": e.power_low_mw,
          "power_high_mw": e.power_high_mw, "idle_power_mw": e.idle_power_mw, "lc": e.lc, "pll": e.pll,
          "method": e.method}
    return latency, uj, ""


class TrafficMeter:
    """Bytes on the wire per request of a Link, by command (wraps the instance's ``transact``).

    :meth:`inference` gives the bytes of the requests since :meth:`start` as they would be on a
    board: every request but STATUS, plus the last STATUS (the one that saw the run finished).  The
    polls before it depend on how fast the host polls and the device runs (many on the simulator);
    on a board they overlap the compute time.  Retransmissions are counted (they cost line time).
    """

    def __init__(self, link):
        self.link = link
        self.log: list[tuple[int, int, int]] = []
        inner = link.transact

        def transact(cmd, payload=b""):
            st = link.stats
            s0, r0 = st.bytes_sent, st.bytes_received
            try:
                return inner(cmd, payload)
            finally:
                self.log.append((int(cmd), st.bytes_sent - s0, st.bytes_received - r0))

        link.transact = transact

    def start(self) -> None:
        self.log = []

    def inference(self) -> tuple[int, int]:
        from hadahw.protocol import Command
        polls = [e for e in self.log if e[0] == Command.STATUS]
        kept = [e for e in self.log if e[0] != Command.STATUS] + polls[-1:]
        return sum(e[1] for e in kept), sum(e[2] for e in kept)


# ---------------------------------------------------------------------------------------------
# CLI


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2 (as hadahw.build)
        self.exit(EXIT_USAGE, f"error: {' '.join(str(message).split())}\n")


def _images_arg(text: str):
    t = text.strip()
    if t == "all":
        return "all"
    try:
        v = int(t, 10)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', not {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(
        prog="python -m hadahw.run",
        description="Run a trained digits HadaNet (a hadahw.train checkpoint) on the accelerator -- a board on a "
                    "serial port or the simulated board -- and compare it with the float and integer golden models.",
        epilog="exit status: 0 ok; 1 hardware differs from the golden model; 2 bad arguments or a network that "
               "does not fit the accelerator; 3 device or link failure.")
    p.add_argument("--model", required=True, metavar="CKPT", help="checkpoint written by python -m hadahw.train")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--sim", action="store_true", help="run on the simulated board (Verilator; the first build "
                       "of a configuration takes a minute or more)")
    where.add_argument("--port", metavar="DEV", help="serial port of the board (e.g. /dev/ttyUSB1) or a pyserial URL")
    p.add_argument("--baud", type=_int_arg(1, "a positive integer"), default=DEFAULT_BAUD,
                   help=f"serial baud rate (default {DEFAULT_BAUD}, as python -m hadahw.build --baud); with --sim only "
                        f"the rate the modeled transfer time assumes")
    p.add_argument("--config", metavar="JSON_FILE", help="AcceleratorConfig JSON, e.g. the config.json of a "
                   "python -m hadahw.build output folder (default: the board's own with --port; with --sim the "
                   "defaults sized for the network)")
    p.add_argument("--images", type=_images_arg, default=None, metavar="N|all",
                   help=f"test images to run: a positive integer or 'all' (default {DEFAULT_SIM_IMAGES} with --sim, "
                        f"all with --port)")
    p.add_argument("--seed", type=_int_arg(0, "a non-negative integer"), default=0,
                   help="seed of the choice of test images (default 0)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return p


def _load_config(path: str) -> AcceleratorConfig:
    try:
        return params_load_config(path)
    except ValueError as e:
        raise UsageError(f"--config: {e}") from None


def _load_model(path: str):
    from hadahw.train import load_checkpoint
    if not Path(path).is_file():
        raise UsageError(f"--model: no checkpoint file {path!r} (write one with python -m hadahw.train)")
    try:
        return load_checkpoint(path)
    except Exception as e:  # noqa: BLE001 -- torch raises many kinds for a bad file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"--model: {path!r} is not a hadahw.train checkpoint ({msg})") from None


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_checkpoint(checkpoint, config: AcceleratorConfig | str | Path | None = None, *, images=DEFAULT_SIM_IMAGES,
                   seed: int = 0, port: str | None = None, baud: int = DEFAULT_BAUD) -> RunReport:
    """Function form of ``python -m hadahw.run``: run checkpoint file ``checkpoint`` and return the report.

    On the simulated board unless ``port`` is given.  ``config``: an :class:`AcceleratorConfig`, a
    JSON file as ``--config`` (a ``report.json`` beside it is used as the command does), or None
    (the command's default).  ``images``: a positive integer or ``"all"``.  Raises UsageError
    (ValueError) for bad arguments or a network that does not fit, and the link/device errors of
    :func:`main` (``hadahw.sw.link.LinkError``, ``PipeClosed``, ``SimulationError``).
    """
    if images != "all" and (isinstance(images, bool) or not isinstance(images, int) or images < 1):
        raise UsageError(f"images must be a positive integer or 'all', not {images!r}")
    path = str(config) if isinstance(config, (str, Path)) else None
    args = argparse.Namespace(model=str(checkpoint), sim=port is None, port=port, baud=int(baud), config=path,
                              images=images, seed=int(seed), json=False)
    return run(args, config=config if isinstance(config, AcceleratorConfig) else None)


def run(args: argparse.Namespace, config: AcceleratorConfig | None = None) -> RunReport:
    """Do the work of :func:`main` for parsed ``args``; raises UsageError, link and device errors.

    ``config``, when given, is used instead of ``args.config``'s file.
    """
    import torch

    from hadahw.lower_net import _input_act, golden_predict, lower_network_full
    from hadahw.train import load_split

    t_start = time.perf_counter()
    cfg = config if config is not None else (_load_config(args.config) if args.config else None)
    cfg_flag = "--config" if args.config else ("config" if config is not None else None)
    model, meta = _load_model(args.model)
    split = load_split()
    n_test = len(split.y_test)
    n = args.images if args.images is not None else (DEFAULT_SIM_IMAGES if args.sim else "all")
    if n == "all":
        idx = np.arange(n_test)
    else:
        if n > n_test:
            raise UsageError(f"--images must be at most {n_test} (the test split) or 'all', not {n}")
        idx = np.sort(np.random.default_rng(args.seed).choice(n_test, n, replace=False))
    x = split.x_test[idx]
    y = split.y_test[idx].numpy()

    net = lower_network_full(model, split.x_train)
    layers = net.layers
    if cfg is None and args.sim:
        try:
            cfg = default_config(layers)
        except ValueError as e:
            raise UsageError(f"the default accelerator configuration does not fit the network ({e}); give one with "
                             f"--config") from None
    hyb = None
    if cfg is not None:
        hyb = _hybrid(layers, cfg, cfg_flag)

    with torch.no_grad():
        float_pred = model(x).argmax(1).numpy()
    xs = x.numpy().astype(np.float64)
    golden = golden_predict(layers, net.input_exponent, xs)

    with _device(args, cfg) as (link, device_name):
        from hadahw.sw.accelerator import Accelerator
        from hadahw.sw.link import IncompatibleDevice
        try:
            acc = Accelerator(link, expect_config=cfg)
        except IncompatibleDevice as e:
            if cfg_flag and args.port:  # the board is not the one --config describes
                raise UsageError(f"{cfg_flag}: {e}") from None
            raise
        if hyb is None:  # --port without --config: the board's own configuration
            cfg = acc.config
            hyb = _hybrid(layers, cfg, None, device_name)
        placement = ", ".join(f"{i}:{w}" for i, w in enumerate(hyb.placement))
        _note(f"layers {placement}; loading {len(hyb.program.weight_image) + len(hyb.program.param_image)} bytes")
        acc.load(hyb.program, progress=sys.stderr.isatty())
        cycles, transfer, compute, host, wire = [], [], [], [], []
        hw = np.zeros_like(golden)
        meter = TrafficMeter(link)

        def device(act):
            meter.start()
            res = acc.infer(act)
            wire.append(meter.inference())
            cycles.append(res.cycles)
            transfer.append(res.transfer_s)
            compute.append(res.compute_s)
            return res.output

        from tqdm import tqdm
        for k in tqdm(range(len(xs)), desc="inference", unit="img", disable=not sys.stderr.isatty(), leave=False):
            t0 = time.perf_counter()
            hw[k] = hyb.run(_input_act(layers, net.input_exponent, xs[k]), device)
            host.append(time.perf_counter() - t0 - transfer[-1] - compute[-1])
        stats = dataclasses.asdict(link.stats)

    hw_pred = hw.argmax(1)
    gold_pred = golden.argmax(1)
    board = board_figures(cfg, args.config, args.baud)
    sent, received = (float(v) for v in np.mean(wire, axis=0))
    latency, energy, note = board_model(board, float(np.mean(cycles)), sent, received)
    return RunReport(
        model=meta.get("model", "?"), variant=meta.get("variant", "?"), checkpoint=str(args.model),
        target="sim" if args.sim else "port", device=device_name, config=cfg.to_dict(), seed=args.seed,
        images=len(idx), image_indices=[int(i) for i in idx], layers=_layer_rows(layers, hyb.placement),
        float_accuracy=float((float_pred == y).mean()), golden_accuracy=float((gold_pred == y).mean()),
        hardware_accuracy=float((hw_pred == y).mean()),
        prediction_mismatches=int((hw_pred != gold_pred).sum()), value_mismatches=int((hw != golden).sum()),
        values_compared=int(golden.size), cycles_predicted=int(hyb.program.predict_cycles()),
        cycles_measured=[int(c) for c in cycles], transfer_s=float(np.mean(transfer)),
        compute_s=float(np.mean(compute)), host_s=float(np.mean(host)), load_s=acc.load_s,
        wall_s=time.perf_counter() - t_start, link=stats, bytes_per_inference={"sent": sent, "received": received},
        hardware=board, latency_s_per_inference=latency, energy_uj_per_inference=energy, energy_note=note)


def _hybrid(layers, cfg: AcceleratorConfig, flag: str | None, device_name: str | None = None):
    """HybridNetwork or a UsageError that says whose configuration the network does not fit."""
    from hadahw.sw.partition import HybridNetwork
    try:
        return HybridNetwork(layers, cfg)
    except ValueError as e:
        msg = str(e).splitlines()[0]
    if flag:
        raise UsageError(f"{flag}: the network does not fit this accelerator configuration ({msg})")
    if device_name:
        raise UsageError(f"the network does not fit the accelerator on {device_name} ({msg}); a board built with "
                         f"other memory sizes (python -m hadahw.build --set ...) may fit")
    raise UsageError(f"the default accelerator configuration does not fit the network ({msg}); give one with "
                     f"--config")


@contextlib.contextmanager
def _device(args, cfg: AcceleratorConfig | None):
    """``(Link, description)`` of the board (--port) or of a simulated board (--sim); closes all."""
    from hadahw.sw.link import Link
    from hadahw.sw.transport import SerialPipe
    if args.sim:
        from hadahw.sim.uart_board import SimulatedBoard
        _note("starting the simulated board (the first Verilator build of a configuration takes a minute or more)")
        with SimulatedBoard(cfg) as board:
            _note(f"simulated board ready in {board.start_seconds:.1f} s on {board.port}")
            with board.link() as link:
                yield link, board.port
    else:
        with Link(SerialPipe(args.port, args.baud), timeout=0.5) as link:
            yield link, args.port


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hadahw.sim.uart_board import SimulationError
    from hadahw.sw.link import LinkError
    from hadahw.sw.transport import PipeClosed

    def fail(message: str, status: int) -> int:
        print(f"error: {message}", file=sys.stderr)
        return status

    try:
        report = run(args)
    except UsageError as e:
        return fail(str(e), EXIT_USAGE)
    except (LinkError, PipeClosed, SimulationError) as e:
        return fail(str(e).splitlines()[0], EXIT_DEVICE)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.text())
    return EXIT_OK if report.ok else EXIT_MISMATCH


if __name__ == "__main__":
    sys.exit(main())
