"""Throughput bench: the whole accelerator's peak binary-MAC rate beside its sustained rate on real layers.

    python bench/throughput_bench.py [--config PATH] [--report PATH] [--out bench/results]

The accelerator is the configuration ``python -m hadahw.build --beta 16 --board icebreaker``
builds (:func:`hadahw.build.board_build_config`: board defaults, automatic array size), or
``--config`` (a ``config.json`` written by a build).  ``--report`` (that build's ``report.json``;
found by itself when it sits beside ``--config``, as ``python -m hadahw.run`` does) gives the
measured Fmax, target clock and logic cells.  Nothing is synthesised or simulated here: the bench
runs in seconds.

**Peak** (the build report's convention, :data:`hadahw.build.PEAK_GOPS_DEFINITION`)::

    peak GOPS = 2 x bmac_per_cycle x min(Fmax, target clock) / 1000,   bmac_per_cycle = rows x lanes

The design runs at the target clock (a build that met timing has ``Fmax >= target``).  Without a
report the clock is the default the build CLI uses (:data:`hadahw.build.DEFAULT_CLOCK_MHZ`, made by
the board's PLL) and the Fmax is not known here.

**Sustained**, per layer: binary MACs = out_features x reduction x conv output positions (before
pooling; padded taps counted, as the hardware streams them), computed here from the layer's shape
alone; cycles = :func:`hadahw.program.layer_cycles` of the compiled layer
(:func:`hadahw.program.predict_cycles` for a whole program).  The tests check that these predicted
cycles equal the cycles the gateware measures:
``tests/test_rtl_core.py`` (``check_network``: HadaCore in amaranth.sim, ``cycles == predict_cycles``),
``tests/test_sim_core.py`` (the core's Verilog under cocotb/Verilator, ``sim/tb_core.py``),
``tests/test_sim_system.py`` (``test_networks_over_simulated_uart``, ``test_hybrid_digits_over_simulated_uart``:
the whole board design over the simulated UART) and ``tests/test_e2e_digits.py`` (a trained digits
MLP on this very board configuration, ``cycles_measured == cycles_predicted``).  Derived:
bMAC/cycle = bMAC / cycles, utilisation = bMAC/cycle / (rows x lanes), GOPS = 2 x bMAC/cycle x clock.

**Where the cycles go.**  The core streams one weight-store entry (the R x L sign bits and the
delta_w codes of one input word for R output rows) per cycle, pixel -> pass of R rows -> word,
and re-reads every weight for every output pixel (no weight reuse).  :func:`layer_cycles` is
``fetch + set-up + (P*G - 1) * (T + pace) + T + drain`` (P output pixels, G = ceil(N / R) passes,
T = kh * kw * ceil(C / L) words per pass); the bench splits it into

* ideal       = bMAC / (R x L): the cycles at the peak rate;
* lane loss   = P * G * (T * L - K) / L: idle lanes of the last word of each pixel when C is not a
  multiple of L (K = kh * kw * C);
* row loss    = P * (G * R - N) * K / (R * L): idle rows of the last pass when N is not a multiple of R;
* pace        = (P * G - 1) * pace: idle cycles the sequencer inserts after a pass of T words
  when the output serializer needs more (``pace = max(0, spacing * min(R, N) - T)``);
* fetch       = descriptor fetch + set-up (:data:`hadahw.program.FETCH_CYCLES` + ``SETUP_CYCLES``);
* drain       = the rest of ``layer_cycles``: memory read, engine pipeline, serializer of the
  last pass, pooling, requantizer, binarizer/writer -- paid once per layer, since passes overlap.

ideal + lane + row = P * G * T (words streamed) exactly: the bench checks it, which cross-checks
the independent MAC count against the compiled geometry, and that the drain (defined as the rest)
is not negative.  The weight-bandwidth table compares the bits of weight store the array reads per cycle
(R x L sign bits + R x S_w delta_w codes) with what the memories deliver (SPRAM 16 bit/cycle per
block, 4 blocks; EBR 16 bit/cycle per block in its widest port mode).

Layers:

1. The digits MLP and CNN of ``python -m hadahw.train`` (:func:`hadahw.nets.build_model` at the
   configuration's betas), **randomly initialised (torch seed 0), not trained**, lowered with
   :func:`hadahw.lower_net.lower_network_full` (calibrated on the training images) and split
   between host and accelerator by :class:`hadahw.sw.partition.HybridNetwork` exactly as
   ``python -m hadahw.run`` does.  The cycle count depends on the layer shapes only, not on the
   weights.  The first and last layers (beta = 1) run on the host; their MACs are listed, not rated.
2. Representative layers with random weights (seed 0): the largest batch-1 linear layer the
   configured memories hold (compiled alone, final, saturating to ``act_bits`` so it writes one
   entry per value: the same cycles as a hidden layer when N is a multiple of beta_a, as here),
   one size step past it in K and in N to
   show which limit binds (expected to be refused), and 3x3 convs with padding 1 -- stride 1,
   stride 2, stride 1 with 2x2 max-pooling (refused by the compiler when ``max_pool < 2``), a
   16x16 map, one with C = L/2 input channels (partial words) and a larger map -- each
   compiled as a hidden layer followed by a 1x1 conv with one output channel (a sink, so that the
   conv's output stays binarized in the activation memory; only the conv's own cycles are rated).
   Every layer the compiler refuses is listed with the compiler's message.

Writes ``throughput.json`` and ``throughput.md`` into ``--out`` (default ``bench/results``).
Progress on stderr.  Exit status 0; 2 for bad arguments (one ``error:`` line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from hadahw.params import AcceleratorConfig  # noqa: E402
from hadahw.params import load_config as params_load_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_bench import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUILD_ARGS = ("--beta", "16", "--board", "icebreaker")
#: Bits per cycle one iCE40 EBR delivers in its widest port mode (256 x 16; hadahw.program.ebr_blocks).
EBR_PORT_BITS = 16
SEED = 0
#: Keys of throughput.json (the test checks them); see :func:`run` for the contents.
JSON_KEYS = ("meta", "config", "clock", "peak", "weight_bandwidth", "networks", "representative", "skipped",
             "definitions")
#: Keys of every rated layer row.
ROW_KEYS = ("name", "kind", "shape", "where", "bmac", "cycles", "bmac_per_cycle", "utilisation", "gops",
            "words_streamed", "attribution", "weight_bits_per_cycle", "weight_port_busy", "bound")


class UsageError(ValueError):
    """Bad arguments: one line, exit status 2."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Counting (independent of the code under test)


def layer_geometry(layer) -> dict:
    """Reduction length, conv output positions (before pooling) and output features of ``layer``,
    from its shape fields alone (``in_shape``, ``kernel``, ``stride``, ``padding``, weight rows)."""
    n = int(np.shape(layer.weight_signs)[0])
    if layer.kind == "linear":
        (k,) = layer.in_shape
        return {"reduction": int(k), "positions": 1, "out_features": n}
    h, w, c = layer.in_shape
    kk, s, p = layer.kernel, layer.stride, layer.padding
    oh = (h + 2 * p - kk) // s + 1
    ow = (w + 2 * p - kk) // s + 1
    return {"reduction": kk * kk * c, "positions": oh * ow, "out_features": n}


def count_bmacs(layer) -> int:
    """Binary MACs of one inference of ``layer``: out_features x reduction x output positions."""
    g = layer_geometry(layer)
    return g["out_features"] * g["reduction"] * g["positions"]


def shape_text(layer) -> str:
    g = layer_geometry(layer)
    if layer.kind == "linear":
        return f"linear {g['reduction']}->{g['out_features']}"
    h, w, c = layer.in_shape
    txt = f"conv {h}x{w}x{c}->{g['out_features']} {layer.kernel}x{layer.kernel} s{layer.stride} p{layer.padding}"
    return txt + (f" pool{layer.pool}" if layer.pool > 1 else "")


# ---------------------------------------------------------------------------------------------
# Rating one compiled layer


def gops(bmac_per_cycle: float, clock_mhz: float) -> float:
    """GOPS at ``clock_mhz``: 2 operations (xnor + popcount add) per binary MAC."""
    return 2 * bmac_per_cycle * clock_mhz / 1000


def rate_layer(layer, plan, config: AcceleratorConfig, cycles: int, clock_mhz: float, *, name: str,
               where: str = "accelerator") -> dict:
    """The row of one accelerator layer: rate, utilisation and the attribution of its ``cycles``."""
    from hadahw.program import FETCH_CYCLES, SETUP_CYCLES, MemoryMap

    rows, lanes = config.rows, config.lanes
    bmac = count_bmacs(layer)
    g = layer_geometry(layer)
    p, gp, t, n, k = plan.pixels, plan.passes, plan.words, plan.n, g["reduction"]
    words = p * gp * t
    terms = {
        "ideal": bmac / (rows * lanes),
        "lane_loss": p * gp * (t * lanes - k) / lanes,
        "row_loss": p * (gp * rows - n) * k / (rows * lanes),
        "pace": (p * gp - 1) * plan.pace,
        "fetch": FETCH_CYCLES + SETUP_CYCLES,
    }
    terms["drain"] = cycles - words - terms["pace"] - terms["fetch"]  # the rest, by definition
    if abs(terms["ideal"] + terms["lane_loss"] + terms["row_loss"] - words) > 1e-6 * words:
        raise RuntimeError(f"{name}: ideal + lane + row loss is not the {words} words streamed ({terms}): "
                           f"the MAC count and the compiled geometry disagree")
    if terms["drain"] < 0:
        raise RuntimeError(f"{name}: layer_cycles {cycles} is less than the words streamed + fetch ({terms})")
    rate = bmac / cycles
    entry_bits = MemoryMap(config).weight_entry_bits
    losses = {key: v for key, v in terms.items() if key != "ideal"}
    worst = max(losses, key=losses.get)
    return {
        "name": name, "kind": layer.kind, "shape": shape_text(layer), "where": where,
        "in_shape": list(layer.in_shape), "out_features": g["out_features"], "reduction": k,
        "positions": g["positions"], "pool": layer.pool,
        "bmac": bmac, "cycles": int(cycles), "bmac_per_cycle": rate, "utilisation": rate / (rows * lanes),
        "gops": gops(rate, clock_mhz),
        "geometry": {"P": p, "G": gp, "T": t, "N": n, "K": k, "pace": plan.pace, "spacing": plan.spacing,
                     "final": plan.final, "last_rows": plan.descriptor.last_rows, "wpp": plan.wpp},
        "words_streamed": words,
        "attribution": {key: round(v, 3) for key, v in terms.items()},
        "attribution_share": {key: round(v / cycles, 5) for key, v in terms.items()},
        "weight_bits_per_cycle": words * entry_bits / cycles,
        "weight_port_busy": words / cycles,
        "bound": _bound_text(worst, losses[worst], cycles, plan, config),
    }


def _share(value: float, cycles: int) -> str:
    share = 100 * value / cycles
    return f"{share:.1f} %" if share >= 1 else f"{share:.2f} %"


_LOSS_TEXT = {"lane_loss": "partial last words", "row_loss": "partial last passes", "pace": "serializer pacing",
              "fetch": "descriptor fetch + set-up", "drain": "pipeline drain"}


def _bound_text(worst: str, value: float, cycles: int, plan, config: AcceleratorConfig) -> str:
    """The largest loss against the weight-stream bound (one R x L entry per cycle), in words."""
    pct = _share(value, cycles)
    if worst == "lane_loss":
        c = plan.in_shape[2]
        return f"partial last word: C={c} on L={config.lanes}, {plan.wpp * config.lanes - c} lanes idle ({pct})"
    if worst == "row_loss":
        return f"partial last pass: N={plan.n} on R={config.rows}, {plan.descriptor.last_rows} rows busy ({pct})"
    if worst == "pace":
        return f"serializer pacing: T={plan.words} words < {plan.spacing} x min(R, N) ({pct})"
    if worst == "fetch":
        return f"descriptor fetch + set-up ({pct})"
    return f"pipeline drain, once per layer ({pct})"


def host_row(layer, name: str) -> dict:
    return {"name": name, "kind": layer.kind, "shape": shape_text(layer), "where": "host",
            "in_shape": list(layer.in_shape), "beta_w": layer.beta_w, "beta_a": layer.beta_a,
            "macs": count_bmacs(layer)}


def aggregate(rows: list[dict], cycles: int, config: AcceleratorConfig, clock_mhz: float, name: str) -> dict:
    """Totals of the accelerator rows of a program run as a whole (``cycles`` = predict_cycles)."""
    bmac = sum(r["bmac"] for r in rows)
    rate = bmac / cycles
    att = {key: round(sum(r["attribution"][key] for r in rows), 3) for key in rows[0]["attribution"]}
    words = sum(r["words_streamed"] for r in rows)
    worst = max((k for k in att if k != "ideal"), key=att.get)
    return {"name": name, "layers": len(rows), "bmac": bmac, "cycles": int(cycles), "bmac_per_cycle": rate,
            "bound": f"{_LOSS_TEXT[worst]} ({_share(att[worst], cycles)})",
            "utilisation": rate / config.bmac_per_cycle, "gops": gops(rate, clock_mhz), "words_streamed": words,
            "attribution": att, "attribution_share": {k: round(v / cycles, 5) for k, v in att.items()},
            "weight_port_busy": words / cycles}


# ---------------------------------------------------------------------------------------------
# Configuration, clock, resources


def load_config(path: str) -> AcceleratorConfig:
    try:
        return params_load_config(path)
    except ValueError as e:
        raise UsageError(f"--config: {e}") from None


def load_report(path: Path, config: AcceleratorConfig | None) -> tuple[dict | None, str]:
    """``(report, "")`` for a finished build report of ``config`` (any config when None), else ``(None, why)``."""
    try:
        rep = json.loads(path.read_text())
    except OSError as e:
        return None, f"cannot read {str(path)!r} ({e.strerror or e})"
    except ValueError as e:
        return None, f"{str(path)!r} is not JSON ({str(e).splitlines()[0]})"
    if not isinstance(rep, dict) or not isinstance(rep.get("config"), dict):
        return None, f"{str(path)!r} is not a hadahw.build report (no config)"
    if config is not None and rep["config"] != config.to_dict():
        return None, f"{str(path)!r} is the report of another configuration than the one rated"
    if rep.get("status") not in ("ok", "timing_failed") or not rep.get("target_mhz"):
        return None, f"{str(path)!r} is not a finished build (status {rep.get('status')!r})"
    if rep.get("board") not in (None, "icebreaker", "icesugar", "upduino_v3"):
        return None, f"{str(path)!r} is a build for {rep.get('board')!r}, not an iCE40 UP5K board"
    return rep, ""


def default_clock() -> tuple[float, str]:
    """The clock ``python -m hadahw.build --board icebreaker`` runs the design at by default."""
    from hadahw.boards import get_board
    from hadahw.build import DEFAULT_BOARD, DEFAULT_CLOCK_MHZ
    from hadahw.rtl.top import pll_params
    board = get_board(DEFAULT_BOARD)
    if abs(DEFAULT_CLOCK_MHZ - board.clock_mhz) < 1e-9:
        return board.clock_mhz, f"hadahw.build.DEFAULT_CLOCK_MHZ = {DEFAULT_CLOCK_MHZ:g} MHz (board clock, no PLL)"
    f = pll_params(board.clock_mhz, DEFAULT_CLOCK_MHZ).f_out_mhz
    return f, (f"hadahw.build.DEFAULT_CLOCK_MHZ = {DEFAULT_CLOCK_MHZ:g} MHz, the default of python -m hadahw.build "
               f"(PLL from the {board.clock_mhz:g} MHz crystal: {f:.6g} MHz)")


def clock_and_resources(config: AcceleratorConfig, report: dict | None, report_path: str | None) -> dict:
    """Clock for the GOPS figures, Fmax, timing, logic cells, each with where it comes from."""
    from hadahw.build import CALIBRATION_CURRENT, MODEL
    if report is not None:
        target = float(report["target_mhz"])
        fmax = report.get("fmax_mhz")
        used = min(f for f in (fmax, target) if f) if fmax else target
        lc = (report.get("resources") or {}).get("LC", {}).get("used")
        src = f"measured: nextpnr, build report {report_path}"
        return {"mhz": used, "target_mhz": target, "fmax_mhz": fmax, "timing_met": report.get("timing_met"),
                "source": f"min(Fmax, target) of the build report {report_path}",
                "fmax_source": src, "lc": lc, "lc_source": src if lc is not None else "not in the report",
                "lc_available": (report.get("resources") or {}).get("LC", {}).get("available")}
    mhz, why = default_clock()
    from hadahw.boards import UP5K_RESOURCES
    match = [m for cfg, m in CALIBRATION_CURRENT if AcceleratorConfig(**cfg) == config]
    calib = ("hadahw.build.CALIBRATION_CURRENT (a full icebreaker build of this configuration at the default "
             "clock target, seed 1; the gateware of that calibration)")
    fmax = match[0].get("fmax_mhz") if match else None
    if match:
        lc, lc_src = match[0]["lc"], f"measured: {calib}"
    else:
        lc, lc_src = MODEL.lc(config), f"estimated: {MODEL.describe()}"
    return {"mhz": mhz if fmax is None else min(mhz, fmax), "target_mhz": mhz, "fmax_mhz": fmax,
            "timing_met": None if fmax is None else fmax >= mhz,
            "source": f"no build report: {why}",
            "fmax_source": (f"measured post-route: {calib}" if fmax is not None else
                            "not known here (no --report and no calibration build of this configuration); the "
                            "GOPS assume the design meets the target clock"),
            "lc": lc, "lc_source": lc_src, "lc_available": UP5K_RESOURCES["lc"]}


def weight_bandwidth(config: AcceleratorConfig) -> dict:
    """Bits of weight store the array reads per cycle against what the memories deliver."""
    from hadahw.boards import UP5K_RESOURCES
    from hadahw.build import AUTO_LANES, AUTO_MAX_ROWS, MODEL
    from hadahw.params import SPRAM_BLOCKS, SPRAM_WIDTH
    from hadahw.program import MemoryMap, ebr_usage

    mm = MemoryMap(config)
    sign = config.rows * config.lanes
    code = config.rows * config.weight_groups * config.weight_code_bits
    entry = mm.weight_entry_bits
    if config.weight_memory == "spram":
        blocks, port = mm.spram(), mm.spram() * SPRAM_WIDTH
        mem = f"SPRAM x {blocks} ({SPRAM_WIDTH} bit/cycle each)"
    else:
        blocks = mm.ebr()["weights"]
        port = entry  # the inferred EBR store reads one whole entry per cycle (as wide as the blocks side by side)
        mem = f"EBR x {blocks} (one {entry}-bit entry/cycle)"
    frac = sign / entry
    # SPRAM ceiling: the largest array of this beta/format whose entry fits the 4 SPRAMs' 64 bits
    # (AcceleratorConfig refuses weight_memory='spram' beyond that).
    best = 0
    for lanes in AUTO_LANES:
        for rows in range(1, AUTO_MAX_ROWS + 1):
            try:
                c = dataclasses.replace(config, rows=rows, lanes=lanes, weight_memory="spram",
                                        weight_depth=min(config.weight_depth, 16384))
            except ValueError:
                break
            best = max(best, c.bmac_per_cycle)
    usage = ebr_usage(config)
    free_ebr = UP5K_RESOURCES["ebr"] - (usage["total"] - usage["weights"]) - MODEL.ebr_link
    return {
        "weight_entry_bits": entry, "sign_bits": sign, "delta_code_bits": code, "sign_fraction": frac,
        "memory": config.weight_memory, "memory_text": mem, "blocks": blocks, "port_bits_per_cycle": port,
        "needed_bits_per_cycle_at_peak": entry,
        "bound_bmac_per_cycle_this_memory": port * frac,
        "spram_chip_bits_per_cycle": SPRAM_BLOCKS * SPRAM_WIDTH,
        "spram_chip_bound_bmac_per_cycle": SPRAM_BLOCKS * SPRAM_WIDTH * frac,
        "spram_largest_array_bmac_per_cycle": best,
        "ebr_free_for_weights": free_ebr,
        "ebr_free_bits_per_cycle": free_ebr * EBR_PORT_BITS,
        "ebr_free_depth_at_full_width": 256,
        "ebr_bound_bmac_per_cycle": free_ebr * EBR_PORT_BITS * frac,
    }


# ---------------------------------------------------------------------------------------------
# Layers


def _requant(n: int, config: AcceleratorConfig, *, saturate=True):
    from hadahw.contract import Requant
    return Requant(multiplier=np.ones(n, np.int64), bias=np.zeros(n, np.int64), shift=0, relu=True,
                   saturate_bits=config.act_bits if saturate else None)


def random_layer(rng, config: AcceleratorConfig, kind: str, in_shape, n: int, *, kernel=1, stride=1, padding=0,
                 pool=1, final=False, name=""):
    """A QLayer of the given shape with random signs and delta_w codes (requantizer: identity + ReLU,
    saturating to ``act_bits``; ``out_beta_a = beta_a`` unless final)."""
    from hadahw.contract import segment_count
    from hadahw.golden import QLayer
    k = in_shape[0] if kind == "linear" else kernel * kernel * in_shape[2]
    geo = {} if kind == "linear" else dict(kernel=kernel, stride=stride, padding=padding, pool=pool)
    fmt = config.weight_delta
    return QLayer(kind=kind, weight_signs=rng.random((n, k)) < 0.5,
                  weight_delta=rng.integers(0, fmt.max_code + 1, (n, segment_count(k, config.beta_w))),
                  beta_w=config.beta_w, beta_a=config.beta_a, in_shape=tuple(in_shape), weight_format=fmt,
                  act_bits=config.act_bits, requant=_requant(n, config), out_beta_a=None if final else config.beta_a,
                  name=name, **geo)


def largest_linear(config: AcceleratorConfig) -> tuple[int, int]:
    """``(K, N)`` of the largest batch-1 linear layer (K x N bMAC) the memories hold, compiled alone as
    a final layer writing one entry per value: K the largest multiple of min(beta_w, L) within
    max_reduction; N limited by the requantizer parameters, the weight store (ceil(N/R) passes of
    ceil(K/L) entries) and the activation memory (ceil(K/L) input + N output entries)."""
    g = config.group_w
    k = max(g, config.max_reduction // g * g)
    t = -(-k // config.lanes)
    n = min(config.param_depth, config.weight_depth // t * config.rows, config.act_depth - t)
    return k, max(1, n)


def representative_specs(config: AcceleratorConfig) -> list[dict]:
    """The representative layers: ``{"name", "kind", "in_shape", "n", conv geometry..., "sink", "probe"}``."""
    k, n = largest_linear(config)
    specs = [
        {"name": "linear, largest that fits", "kind": "linear", "in_shape": (k,), "n": n},
        {"name": "linear, one step larger in K", "kind": "linear", "in_shape": (k + config.group_w,), "n": n,
         "probe": True},
        {"name": "linear, one step larger in N", "kind": "linear", "in_shape": (k,), "n": n + config.rows,
         "probe": True},
    ]
    conv = dict(kind="conv2d", kernel=3, padding=1, sink=True)
    specs += [
        {"name": "conv 3x3 stride 1", "in_shape": (8, 8, 64), "n": 64, "stride": 1, "pool": 1, **conv},
        {"name": "conv 3x3 stride 2", "in_shape": (8, 8, 64), "n": 64, "stride": 2, "pool": 1, **conv},
    ]
    specs.append({"name": "conv 3x3 stride 1 + max-pool 2", "in_shape": (8, 8, 64), "n": 64, "stride": 1,
                  "pool": 2, **conv})
    specs += [
        {"name": "conv 3x3 stride 1, 16x16 map", "in_shape": (16, 16, 16), "n": 16, "stride": 1, "pool": 1, **conv},
        {"name": "conv 3x3 stride 1, C = L/2 (first-layer-like)", "in_shape": (16, 16, max(2, config.lanes // 2)),
         "n": 16, "stride": 1, "pool": 1, **conv},
        {"name": "conv 3x3 stride 1, 16x16 map, 32 channels", "in_shape": (16, 16, 32), "n": 32, "stride": 1,
         "pool": 1, **conv},
    ]
    return specs


def build_spec(spec: dict, config: AcceleratorConfig, rng):
    """The layers of one representative spec: ``[layer]`` or ``[layer, sink]``."""
    if spec["kind"] == "linear":
        return [random_layer(rng, config, "linear", spec["in_shape"], spec["n"], final=not spec.get("sink"),
                             name=spec["name"])]
    layer = random_layer(rng, config, "conv2d", spec["in_shape"], spec["n"], kernel=spec["kernel"],
                         stride=spec["stride"], padding=spec["padding"], pool=spec["pool"], name=spec["name"])
    oh, ow, n = layer.out_shape
    sink = random_layer(rng, config, "conv2d", (oh, ow, n), 1, final=True, name="sink")
    return [layer, sink]


def representative(config: AcceleratorConfig, clock_mhz: float) -> tuple[list[dict], list[dict]]:
    from hadahw.program import compile_network, layer_cycles
    rng = np.random.default_rng(SEED)
    rows, skipped = [], []
    for spec in representative_specs(config):
        desc = ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("name", "probe", "sink"))
        try:
            layers = build_spec(spec, config, rng)
            prog = compile_network(layers, config)
        except ValueError as e:
            msg = str(e).splitlines()[0]
            skipped.append({"name": spec["name"], "spec": desc, "error": msg, "expected": bool(spec.get("probe"))})
            log(f"  {spec['name']}: SKIPPED, does not compile: {msg}")
            continue
        if spec.get("probe"):
            note = "compiled although it is one step past the computed largest linear layer: the limit search is off"
            skipped.append({"name": spec["name"], "spec": desc, "error": note, "expected": False})
            log(f"  {spec['name']}: WARNING {note}")
        plan = prog.plans[0]
        row = rate_layer(layers[0], plan, config, layer_cycles(plan, config), clock_mhz, name=spec["name"])
        row["compiled_as"] = ("alone, as the program's final layer (one entry per value)" if len(layers) == 1
                              else "hidden layer + a 1x1 conv sink to 1 channel (sink's cycles not counted)")
        rows.append(row)
        log(f"  {spec['name']}: {row['shape']}: {row['bmac']} bMAC in {row['cycles']} cycles, "
            f"{row['bmac_per_cycle']:.2f} bMAC/cycle ({100 * row['utilisation']:.1f} %)")
    return rows, skipped


def digits_networks(config: AcceleratorConfig, clock_mhz: float) -> tuple[list[dict], list[dict]]:
    import torch

    from hadahw.lower_net import lower_network_full
    from hadahw.nets import MODEL_NAMES, build_model
    from hadahw.program import layer_cycles, predict_cycles
    from hadahw.sw.partition import HybridNetwork
    from hadahw.train import load_split

    split = load_split()
    nets, skipped = [], []
    for name in MODEL_NAMES:
        t0 = time.perf_counter()
        torch.manual_seed(SEED)
        try:
            model = build_model(name, config.beta_w, config.beta_a).eval()
            net = lower_network_full(model, split.x_train, act_bits=config.act_bits,
                                     weight_format=config.weight_delta, mult_bits=config.mult_bits)
            hyb = HybridNetwork(net.layers, config)
        except ValueError as e:
            msg = str(e).splitlines()[0]
            skipped.append({"name": name, "spec": f"{name} at beta {config.beta_w}/{config.beta_a}", "error": msg,
                            "expected": False})
            log(f"  {name}: SKIPPED: {msg}")
            continue
        prog = hyb.program
        total = predict_cycles(prog)
        layers = []
        acc_rows = []
        for i, layer in enumerate(net.layers):
            lname = f"{name} layer {i}"
            if hyb.placement[i] == "host":
                layers.append(host_row(layer, lname))
                continue
            plan = prog.plans[i - hyb.start]
            row = rate_layer(hyb.segment[i - hyb.start], plan, config, layer_cycles(plan, config), clock_mhz,
                             name=lname)
            layers.append(row)
            acc_rows.append(row)
        if sum(r["cycles"] for r in acc_rows) != total:
            raise RuntimeError(f"{name}: the layers' cycles do not add up to predict_cycles ({total})")
        seg = aggregate(acc_rows, total, config, clock_mhz, f"{name}: accelerator segment (layers {hyb.start}.."
                                                                f"{hyb.stop - 1})")
        host_macs = sum(r["macs"] for r in layers if r["where"] == "host")
        nets.append({"name": name, "weights": ("randomly initialised (torch seed 0), not trained; lowered with "
                                                "calibration on the training images"),
                     "placement": hyb.placement, "layers": layers, "segment": seg,
                     "network_macs": seg["bmac"] + host_macs, "host_macs": host_macs,
                     "accelerator_mac_share": seg["bmac"] / (seg["bmac"] + host_macs)})
        log(f"  {name}: accelerator layers {hyb.start}..{hyb.stop - 1}: {seg['bmac']} bMAC in {total} cycles, "
            f"{seg['bmac_per_cycle']:.2f} bMAC/cycle ({100 * seg['utilisation']:.1f} %) "
            f"[{time.perf_counter() - t0:.1f} s]")
    return nets, skipped


# ---------------------------------------------------------------------------------------------
# Provenance


def git_info() -> dict:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
        return {"commit": head, "modified": [line[3:] for line in st.splitlines() if line.strip()]}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "modified": None}


DEFINITIONS = {
    "bmac": "out_features x reduction x conv output positions (before pooling; padded taps counted), "
            "computed from the layer's shape by this bench",
    "cycles": "hadahw.program.layer_cycles of the compiled layer (per network: predict_cycles of the program); "
              "equal to the gateware's measured cycles in tests/test_rtl_core.py, tests/test_sim_core.py, "
              "tests/test_sim_system.py and tests/test_e2e_digits.py",
    "bmac_per_cycle": "bmac / cycles",
    "utilisation": "bmac_per_cycle / (rows x lanes)",
    "gops": "2 x bmac_per_cycle x clock.mhz / 1000",
    "peak_gops": "2 x rows x lanes x min(Fmax, target) / 1000 (hadahw.build.PEAK_GOPS_DEFINITION); target alone "
                 "when the Fmax is not known",
    "attribution": "cycles = ideal + lane_loss + row_loss + pace + fetch + drain (see the bench's docstring)",
    "words_streamed": "P x G x T weight-store entries read (one per cycle)",
    "weight_bits_per_cycle": "words_streamed x weight_entry_bits / cycles",
    "weight_port_busy": "words_streamed / cycles",
}


# ---------------------------------------------------------------------------------------------
# Output


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def _att(a: dict) -> str:
    return " | ".join(f"{a[k]:,.1f}".rstrip("0").rstrip(".") if a[k] % 1 else f"{int(a[k]):,}"
                      for k in ("ideal", "lane_loss", "row_loss", "pace", "fetch", "drain"))


_HEAD = ("| layer | shape | bMAC | cycles | bMAC/cycle | util. | GOPS | words streamed | ideal | lane loss | "
         "row loss | pace | fetch | drain | largest loss |")
_RULE = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"


def _row_md(r: dict, label: str | None = None) -> str:
    return (f"| {label or r['name']} | {r.get('shape', '')} | {r['bmac']:,} | {r['cycles']:,} | "
            f"{r['bmac_per_cycle']:.2f} | {_pct(r['utilisation'])} | {r['gops']:.3f} | {r['words_streamed']:,} | "
            f"{_att(r['attribution'])} | {r.get('bound', '')} |")


def _summary_md(r: dict, peak: dict, label: str | None = None) -> str:
    return (f"| {label or r['name']} | {r['shape']} | {r['bmac_per_cycle']:.2f} | {r['gops']:.3f} | "
            f"{peak['gops']:.3f} | {_pct(r['utilisation'])} | {r['bound']} |")


def markdown(res: dict) -> str:
    cfg, clk, peak, wb = res["config"], res["clock"], res["peak"], res["weight_bandwidth"]
    meta = res["meta"]
    wd = cfg["weight_delta"]
    git = meta["git"]
    out = [
        "# Whole-accelerator throughput: peak vs sustained (iCEBreaker, iCE40 UP5K)",
        "",
        f"Configuration: {meta['config_source']}: **{cfg['rows']} rows x {cfg['lanes']} lanes** = "
        f"{peak['bmac_per_cycle']} binary MAC/cycle, beta_w = {cfg['beta_w']}, beta_a = {cfg['beta_a']}, "
        f"delta_w {wd['kind']}{wd['bits']}, act_bits {cfg['act_bits']}, weight store {cfg['weight_memory']} "
        f"({cfg['weight_depth']} entries), act_depth {cfg['act_depth']}, param_depth {cfg['param_depth']}, "
        f"max_reduction {cfg['max_reduction']}, max_pool {cfg['max_pool']} (width {cfg['max_pool_width']}, "
        f"channels {cfg['max_channels']}).",
        "",
        f"Clock for every GOPS figure: **{clk['mhz']:g} MHz** — {clk['source']}. Fmax: "
        + (f"{clk['fmax_mhz']:g} MHz ({clk['fmax_source']}), timing met: {clk['timing_met']}"
           if clk["fmax_mhz"] else clk["fmax_source"])
        + f". Logic cells: {clk['lc']} of {clk['lc_available']} ({clk['lc_source']}).",
        "",
        f"Run {meta['date']} on {meta['machine']['cpu_model']} ({meta['machine']['cores']} CPUs, "
        f"{meta['machine']['platform']}, Python {meta['machine']['python']}); git "
        + (f"{git['commit'][:12]}" + (f" with modified {', '.join(git['modified'])}" if git["modified"] else "")
           if git["commit"] else "not available")
        + f"; `{meta['command']}`, {meta['wall_s']:.1f} s.",
        "",
        "## Peak",
        "",
        f"peak = 2 x {peak['bmac_per_cycle']} bMAC/cycle x {clk['mhz']:g} MHz = **{peak['gops']:.3f} GOPS** "
        f"({peak['bmac_per_cycle']} bMAC/cycle"
        + (f", {1000 * peak['bmac_per_cycle'] / clk['lc']:.2f} bMAC/cycle per 1000 LC" if clk["lc"] else "")
        + "). Derived, not measured: an upper bound reached only when every cycle streams a full word to every row.",
        "",
        "## Peak vs sustained (summary)",
        "",
        f"| layer | shape | sustained bMAC/cycle | sustained GOPS @ {clk['mhz']:g} MHz | peak GOPS | of peak | "
        "largest loss |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for net in res["networks"]:
        for r in net["layers"]:
            if r["where"] != "host":
                out.append(_summary_md(r, peak))
        seg = net["segment"]
        out.append(_summary_md({**seg, "shape": "whole accelerator segment"}, peak,
                               f"**{net['name']}** (layers on the accelerator)"))
    out += [_summary_md(r, peak) for r in res["representative"]]
    out += [
        "",
        "Every layer is bound by the weight stream: one weight-store entry (R x L sign bits) per cycle, so the "
        "sustained rate cannot exceed the array's R x L bMAC/cycle; *largest loss* names what takes the rest.",
        "",
        "## Sustained: digits networks (per layer and whole accelerator segment)",
        "",
    ]
    if not res["networks"]:
        out += ["None of them compiles for this configuration (see the refused layers below).", ""]
    for net in res["networks"]:
        seg = net["segment"]
        out += [f"**{net['name']}** ({net['weights']}); placement {', '.join(net['placement'])}. "
                f"The accelerator runs {_pct(net['accelerator_mac_share'])} of the network's "
                f"{net['network_macs']:,} MACs; the host layers (beta = 1, full precision) are not rated.", "",
                _HEAD, _RULE]
        for r in net["layers"]:
            if r["where"] == "host":
                dashes = " | ".join(["–"] * 11)  # cycles .. drain
                out.append(f"| {r['name']} (host) | {r['shape']} | {r['macs']:,} MAC (full precision) | {dashes} | "
                           f"runs on the host (beta_w = {r['beta_w']}) |")
            else:
                out.append(_row_md(r))
        out += [_row_md({**seg, "shape": f"{seg['layers']} layer(s)"}, f"**{seg['name']}**"), ""]
    out += [
        "## Sustained: representative layers (random weights, seed 0)",
        "",
        _HEAD, _RULE,
        *[_row_md(r) for r in res["representative"]],
        "",
        "Compiled as: " + "; ".join(sorted({f"{r['compiled_as']}" for r in res["representative"]})) + ".",
        "",
    ]
    if res["skipped"]:
        out += ["### Layers the compiler refused (skipped, not rated)", "", "| layer | shape | compiler's message |",
                "|---|---|---|"]
        for s in res["skipped"]:
            tag = " (a probe one step past the largest linear layer: refusal expected)" if s["expected"] else ""
            out.append(f"| {s['name']}{tag} | {s['spec']} | {s['error']} |")
        out.append("")
    out += [
        "## Weight bandwidth",
        "",
        f"| | bits/cycle | bMAC/cycle it can feed (entries {_pct(wb['sign_fraction'])} sign bits) |",
        "|---|---:|---:|",
        f"| array at peak: {wb['sign_bits']} sign bits + {wb['delta_code_bits']} delta_w code bits per entry | "
        f"{wb['needed_bits_per_cycle_at_peak']} | {peak['bmac_per_cycle']} |",
        f"| this build's weight store: {wb['memory_text']} | {wb['port_bits_per_cycle']} | "
        f"{wb['bound_bmac_per_cycle_this_memory']:.0f} |",
        f"| all 4 SPRAMs of the UP5K (4 x 16 bit) | {wb['spram_chip_bits_per_cycle']} | "
        f"{wb['spram_chip_bound_bmac_per_cycle']:.0f} (largest array whose entry fits: "
        f"{wb['spram_largest_array_bmac_per_cycle']}) |",
        f"| EBR left beside the other memories and the link: {wb['ebr_free_for_weights']} x 16 bit "
        f"(only {wb['ebr_free_depth_at_full_width']} entries deep at that width) | {wb['ebr_free_bits_per_cycle']} | "
        f"{wb['ebr_bound_bmac_per_cycle']:.0f} |",
        "",
        f"A weight entry is {_pct(wb['sign_fraction'])} sign bits (the rest are delta_w codes, repeated in every word "
        "of a segment). The core reads one entry per streamed cycle and re-reads every weight for every output "
        "pixel, so conv layers are as weight-stream-bound as batch-1 linear layers; the column *words streamed* "
        "counts those reads and `weight_bits_per_cycle` in the JSON gives the layer's average.",
        "",
        "## Notes",
        "",
        "- **Measured vs derived.** Nothing in this file is measured on hardware or in simulation by this bench. "
        "Cycles are `hadahw.program.layer_cycles` / `predict_cycles`, which the test suite checks equal to the "
        "gateware's measured cycles (tests/test_rtl_core.py `check_network` in amaranth.sim; tests/test_sim_core.py "
        "under Verilator; tests/test_sim_system.py over the simulated UART; tests/test_e2e_digits.py on this board "
        "configuration). bMAC counts are computed here from the layer shapes. GOPS are derived at the clock above; "
        "Fmax and LC come from the source stated above.",
        "- **Attribution** (cycles): ideal = bMAC / (R·L); lane loss = idle lanes of partial words (C not a multiple "
        "of L); row loss = idle rows of the last pass (N not a multiple of R); pace = idle cycles inserted so the "
        "serializer keeps up; fetch = descriptor fetch + set-up; drain = memory read, engine pipeline, output stage, "
        "once per layer (the rest of `layer_cycles`). ideal + lane + row loss = words streamed (checked: the bench's "
        "MAC count against the compiled geometry).",
        "- **Bound.** Every layer is limited by the weight stream (one R×L entry per cycle): the sustained rate can "
        "never exceed the array's R·L, and the gap is the largest loss named in the last column.",
        "- Host I/O (the UART link) is not included: see bench/results/link.md for the per-inference transfer time.",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Main


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"error: {' '.join(str(message).split())}\n")


def parse(argv=None) -> argparse.Namespace:
    ap = _Parser(prog="python bench/throughput_bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None,
                    help="config.json of a build (default: what python -m hadahw.build "
                         f"{' '.join(DEFAULT_BUILD_ARGS)} builds)")
    ap.add_argument("--report", default=None,
                    help="report.json of that build: measured Fmax, clock and LC (default: the report.json beside "
                         "--config, if any)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                    help="output folder (default bench/results)")
    return ap.parse_args(argv)


def resolve(args) -> tuple[AcceleratorConfig, str, dict | None, str | None, str]:
    """``(config, config source, report or None, report path, note)``; UsageError for bad arguments."""
    cfg = load_config(args.config) if args.config else None
    note = ""
    report, rpath = None, None
    if args.report:
        report, why = load_report(Path(args.report), cfg)
        if report is None:
            raise UsageError(f"--report: {why}")
        rpath = str(Path(args.report).resolve())
        if cfg is None:
            cfg = AcceleratorConfig.from_dict(report["config"])
            return cfg, f"the configuration of the build report {rpath}", report, rpath, note
    elif args.config:
        beside = Path(args.config).resolve().parent / "report.json"
        if beside.is_file():
            report, why = load_report(beside, cfg)
            if report is None:
                note = f"report.json beside --config not used: {why}"
            else:
                rpath = str(beside)
    if cfg is not None:
        return cfg, f"--config {args.config}", report, rpath, note
    from hadahw.build import board_build_config
    return (board_build_config(*DEFAULT_BUILD_ARGS),
            f"the default board build (`python -m hadahw.build {' '.join(DEFAULT_BUILD_ARGS)}`, "
            "hadahw.build.board_build_config)", None, None, note)


def run(args) -> dict:
    """Compute everything; returns the JSON object (keys :data:`JSON_KEYS`)."""
    t0 = time.perf_counter()
    cfg, cfg_source, report, rpath, note = resolve(args)
    if note:
        log(f"throughput_bench: {note}")
    clk = clock_and_resources(cfg, report, rpath)
    log(f"throughput_bench: {cfg.rows}x{cfg.lanes}, beta {cfg.beta_w}/{cfg.beta_a}, clock {clk['mhz']:g} MHz "
        f"({clk['source']})")
    peak = {"bmac_per_cycle": cfg.bmac_per_cycle, "gops": gops(cfg.bmac_per_cycle, clk["mhz"]),
            "bmac_per_cycle_per_klc": 1000 * cfg.bmac_per_cycle / clk["lc"] if clk["lc"] else None,
            "report_peak_gops": report.get("peak_gops") if report else None}
    log("throughput_bench: digits networks (untrained, lowered)")
    nets, skipped = digits_networks(cfg, clk["mhz"])
    log("throughput_bench: representative layers")
    reps, skipped2 = representative(cfg, clk["mhz"])
    for r in [r for n in nets for r in n["layers"] if r["where"] != "host"] + reps:
        if r["bmac_per_cycle"] > cfg.bmac_per_cycle:
            raise RuntimeError(f"{r['name']}: sustained {r['bmac_per_cycle']} bMAC/cycle exceeds the peak "
                               f"{cfg.bmac_per_cycle}: the MAC count or the cycle model is wrong")
    wb = weight_bandwidth(cfg)
    command = ("python bench/throughput_bench.py" + (f" --config {args.config}" if args.config else "")
               + (f" --report {args.report}" if args.report else ""))
    return {
        "meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine_info(), "git": git_info(), "command": command,
                 "config_source": cfg_source, "report": rpath, "note": note, "seed": SEED,
                 "wall_s": round(time.perf_counter() - t0, 2)},
        "config": cfg.to_dict(),
        "clock": clk,
        "peak": peak,
        "weight_bandwidth": wb,
        "networks": nets,
        "representative": reps,
        "skipped": skipped + skipped2,
        "definitions": DEFINITIONS,
    }


def main(argv=None) -> int:
    args = parse(argv)
    try:
        res = run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "throughput.md").write_text(markdown(res))
    log(f"throughput_bench: wrote {out / 'throughput.json'} and {out / 'throughput.md'} "
        f"({res['meta']['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
