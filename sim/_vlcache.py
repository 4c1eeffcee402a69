"""Share Verilator's compiled run-time library between build folders.

Every Verilator model folder compiles the same run-time library (``verilated.o``,
``verilated_vpi.o``, ... : Verilator's ``VM_GLOBAL_*`` objects), which costs far more compiler
time than a small Amaranth design itself. :func:`hadahw.sim.runner.run_cocotb` runs this module
between ``verilator`` and ``make``::

    python -m hadahw.sim._vlcache restore WORK CACHE [MAKEVAR=VALUE ...]
    make ...
    python -m hadahw.sim._vlcache store WORK CACHE [MAKEVAR=VALUE ...]

An object is keyed by the exact compiler command ``make -n`` prints for it (compiler, every
flag and define, the source path, hence the Verilator install) plus the compiler's
``--version`` line and the Verilator package version, so a cached object is only reused where
make would have run the very same command. Anything unexpected makes it do nothing: make then
simply compiles as usual.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_LIST_RE = re.compile(r"^(VM_GLOBAL_FAST|VM_GLOBAL_SLOW)\s*\+?=\s*\\?\s*$")


def _global_objects(work: Path) -> list[str]:
    names: list[str] = []
    lines = (work / "Vtop_classes.mk").read_text().splitlines()
    i = 0
    while i < len(lines):
        if _LIST_RE.match(lines[i]):
            i += 1
            while i < len(lines) and lines[i].startswith((" ", "\t")):
                name = lines[i].strip().rstrip("\\").strip()
                if name:
                    names.append(name)
                i += 1
        else:
            i += 1
    return names


def _compile_command(work: Path, name: str, make_vars: list[str]) -> str | None:
    out = subprocess.run(
        ["make", "-s", "-n", "-B", "-f", "Vtop.mk", *make_vars, f"{name}.o"],
        cwd=work, capture_output=True, text=True, check=False,
    )
    lines = [ln for ln in out.stdout.splitlines() if f"-o {name}.o" in ln]
    if out.returncode != 0 or len(lines) != 1:
        return None
    return lines[0].strip()


def _compiler_version(command: str) -> str:
    cxx = command.split()[0]
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return "?"
    return (out.stdout.splitlines() or ["?"])[0]


def _key(work: Path, name: str, make_vars: list[str]) -> str | None:
    command = _compile_command(work, name, make_vars)
    if command is None:
        return None
    try:
        from importlib.metadata import version

        vl_version = version("verilator")
    except Exception:  # noqa: BLE001 - no key, no caching
        return None
    text = "\n".join([command, _compiler_version(command), vl_version, sys.platform])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _deps_are_absolute(dep_file: Path) -> bool:
    """The .d file only names files outside the build folder (so the object is portable)."""
    text = dep_file.read_text().replace("\\\n", " ")
    _, _, deps = text.partition(":")
    return all(Path(d).is_absolute() for d in deps.split())


def restore(work: Path, cache: Path, make_vars: list[str]) -> int:
    makefile = work / "Vtop.mk"
    mk_mtime = makefile.stat().st_mtime
    restored = 0
    for name in _global_objects(work):
        obj = work / f"{name}.o"
        if obj.is_file() and obj.stat().st_mtime >= mk_mtime:
            continue  # make will judge it as usual
        key = _key(work, name, make_vars)
        if key is None:
            continue
        cached_obj = cache / key / f"{name}.o"
        cached_dep = cache / key / f"{name}.d"
        if not (cached_obj.is_file() and cached_dep.is_file()):
            continue
        shutil.copyfile(cached_dep, work / f"{name}.d")
        shutil.copyfile(cached_obj, obj)
        os.utime(obj)  # newer than Vtop.mk, which the objects depend on
        restored += 1
    return restored


def store(work: Path, cache: Path, make_vars: list[str]) -> int:
    stored = 0
    for name in _global_objects(work):
        obj, dep = work / f"{name}.o", work / f"{name}.d"
        if not (obj.is_file() and dep.is_file()) or not _deps_are_absolute(dep):
            continue
        key = _key(work, name, make_vars)
        if key is None:
            continue
        target = cache / key
        if (target / f"{name}.o").is_file():
            continue
        target.mkdir(parents=True, exist_ok=True)
        for src in (dep, obj):  # object last: its presence marks a complete entry
            fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{src.name}.")
            os.close(fd)
            shutil.copyfile(src, tmp)
            os.replace(tmp, target / src.name)
        stored += 1
    return stored


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("restore", "store"):
        print("usage: python -m hadahw.sim._vlcache restore|store WORK CACHE [VAR=VALUE ...]", file=sys.stderr)
        return 2
    action, work, cache, make_vars = argv[0], Path(argv[1]), Path(argv[2]), argv[3:]
    try:
        count = (restore if action == "restore" else store)(work, cache, make_vars)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        # Never fail the build over the cache: make compiles whatever is missing.
        print(f"hadahw.sim._vlcache {action}: skipped ({exc})")
        return 0
    print(f"hadahw.sim._vlcache {action}: {count} run-time object(s) {'from' if action == 'restore' else 'into'} {cache}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
