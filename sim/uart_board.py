"""A simulated board: the pin-free board design under Verilator, behind a pseudo-terminal.

:class:`SimulatedBoard` builds the Verilog of :class:`hadahw.rtl.top.UARTSystem` (the same UART,
receive FIFO, HostLink and HadaCore as on the FPGA, without clock/PLL and pins; wrapped in
:class:`SimTop` for a power-on reset and fast simulation), runs it under
cocotb with the bench :mod:`hadahw.sim.tb_uart_bridge` in a child process, and hands out the
pseudo-terminal that bench bridges to the UART pins.  The host side is then exactly what talks
to a board: :class:`~hadahw.sw.transport.SerialPipe` (pyserial) on the pty path, a
:class:`~hadahw.sw.link.Link` over it, and the driver on top::

    from hadahw.sim.uart_board import SimulatedBoard

    with SimulatedBoard(config) as board, board.link() as link:
        acc = Accelerator(link, expect_config=config)
        ...

Bit time.  The simulated UART runs at ``divisor`` clock cycles per bit (default
:data:`DEFAULT_DIVISOR` = 4, the receiver's minimum) instead of the board's 30 MHz / 1 Mbaud = 30:
the gateware is the same (``divisor`` is only the reload value of the UART's bit counters), and
fewer cycles per bit make transfers faster to simulate (a 16 KiB load took 7-10 s at 4 against
11-17 s at 8 on a shared 2-core machine).  The host's pyserial baud rate is irrelevant on a pty.

Lifetime.  Entering the context starts the child (``python -m hadahw.sim.uart_board JOB``, its own
process group), which elaborates the design, builds it (the Verilator model is cached in
:func:`hadahw.sim.runner.build_dir_for` ``("uart_system", ...)`` keyed by configuration, divisor
and core; the first build of a configuration takes a minute or more) and starts the simulation;
the context waits for the bench's ready file (``start_timeout``).  Leaving it creates the stop
file, waits up to ``stop_timeout`` seconds for the simulation to end, and otherwise kills the
whole process group; so an exception in the ``with`` body (or in the host) never leaves a
simulation running.  A simulation that failed (the bench's assertions, a crash) raises
:class:`SimulationError` on a normal exit.  One simulation per build folder runs at a time (an
``flock`` on the folder; cocotb writes its results there), so parallel test workers queue.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amaranth.hdl import ClockDomain, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hadahw.params import AcceleratorConfig

__all__ = ["DEFAULT_DIVISOR", "SimTop", "SimulatedBoard", "SimulationError", "TOPLEVEL", "board_build_dir"]

#: Clock cycles per UART bit in simulation (the board uses round(clock / baud), 30 at 30 MHz and
#: 1 Mbaud); see the module docstring.
DEFAULT_DIVISOR = 4
TOPLEVEL = "hadahw_uart_system"
TB_MODULE = "hadahw.sim.tb_uart_bridge"
#: Seconds between checks of the ready file while the child builds and starts.
_POLL_S = 0.05
#: The only signals the bench touches; everything else stays invisible to VPI, which lets
#: Verilator schedule the design's logic normally (see ``run_cocotb(public_ports=...)``).
PUBLIC_PORTS = {"clk": "rw", "rx": "rw", "tx": "rd", "busy": "rd", "done": "rd", "error": "rd", "in_reset": "rd"}
#: C++ optimisation of the model: a simulated board runs millions of cycles, so -O1 (several
#: times faster than the runner's default -O0) pays for its longer compile at once.
OPT_LEVEL = "-O1"


class SimulationError(RuntimeError):
    """The simulated board did not start, or its simulation failed (message: the log's tail)."""


class SimTop(wiring.Component):
    """:class:`~hadahw.rtl.top.UARTSystem` with an internal power-on reset: its only inputs are
    ``clk`` and ``rx``.

    Why: with ``rst`` a top-level input, Verilator puts every register's next-state logic (which
    reads the synchronous reset) into its *input-combinational* region, re-evaluated on every
    input change -- i.e. on both clock edges -- on top of the normal evaluation after the
    rising edge; that made the model several times slower.  A reset from a register, as on the
    board (:class:`~hadahw.rtl.top.BoardTop` also resets from a counter), avoids it.  The design
    under test is otherwise the unchanged ``UARTSystem``.

    Members: ``clk`` (In), ``rx`` (In, idles 1), ``tx``, ``busy``, ``done``, ``error`` (Out) and
    ``in_reset`` (Out: high for the first :data:`RESET_CYCLES` cycles).
    """

    RESET_CYCLES = 8

    def __init__(self, config: AcceleratorConfig, *, divisor: int, core: str = "real"):
        from hadahw.rtl.top import UARTSystem
        self.system = UARTSystem(config, divisor=divisor, core=core)
        super().__init__({
            "clk": In(1),
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "in_reset": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain("sync")
        m.domains.por = por = ClockDomain("por", reset_less=True)
        count = Signal(range(self.RESET_CYCLES + 1), init=self.RESET_CYCLES)
        with m.If(count != 0):
            m.d.por += count.eq(count - 1)
        m.d.comb += [
            sync.clk.eq(self.clk),
            por.clk.eq(self.clk),
            sync.rst.eq(count != 0),
            self.in_reset.eq(count != 0),
        ]
        m.submodules.system = system = self.system
        m.d.comb += [
            system.rx.eq(self.rx),
            self.tx.eq(system.tx),
            self.busy.eq(system.busy),
            self.done.eq(system.done),
            self.error.eq(system.error),
        ]
        return m


def board_build_dir(config: AcceleratorConfig, divisor: int, core: str = "real", *, root=None) -> Path:
    """Build folder of the simulated board for this configuration, divisor and core (cached)."""
    from hadahw.sim.runner import build_dir_for
    key = {"config": json.loads(config.to_json(sort_keys=True)), "divisor": divisor, "core": core,
           "public": PUBLIC_PORTS, "opt": OPT_LEVEL}
    return build_dir_for("uart_system", key, root=root)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


class SimulatedBoard:
    """The board design simulated under cocotb/Verilator, reachable through a pseudo-terminal.

    Parameters
    ----------
    config : AcceleratorConfig
        Configuration of the core (IDENTIFY reports it).
    divisor : int
        Clock cycles per UART bit (>= 4).
    core : {"real", "stub"}
        :data:`hadahw.rtl.top.CORES`.
    sim : str, optional
        Simulator (:func:`hadahw.sim.toolchain.select_simulator`; default Verilator).
    build_root : path, optional
        Root of the build folders (default ``$HADAHW_SIM_BUILD`` or ``./sim_build``).
    start_timeout : float
        Seconds to wait for the simulation to be ready, the build included.
    stop_timeout : float
        Seconds to wait for the simulation to end after the stop request before killing it.
    max_wall_s : float
        The bench stops by itself (and fails) after this many seconds.
    wire_log : path, optional
        Instrumentation, off by default: when the simulation stops, the bench writes the simulated
        time of every byte on ``rx``/``tx`` and of every ``busy`` edge to this file (JSON; format
        in :mod:`hadahw.sim.tb_uart_bridge`, "Wire log").  The file is the caller's: it is
        written when the context is left (also after a failure) and never deleted.

    Attributes (while running)
    --------------------------
    port : str
        Path of the pty slave: what ``SerialPipe`` opens.
    build_dir : Path
    log_path : Path
        The child's output (build and run summary; the simulator's own log is ``test.log`` in
        ``build_dir/<sim>/``).
    start_seconds : float
        Wall time from start to ready (build included).
    pid : int
        Process id of the child, the leader of its process group (the simulator is in it).
    """

    def __init__(self, config: AcceleratorConfig, *, divisor: int = DEFAULT_DIVISOR, core: str = "real",
                 sim: str | None = None, build_root=None, start_timeout: float = 1800.0, stop_timeout: float = 30.0,
                 max_wall_s: float = 3600.0, wire_log=None):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {type(config).__name__}")
        if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 4:
            raise ValueError(f"divisor must be an integer >= 4 (clock cycles per UART bit), not {divisor!r}")
        self.config = config
        self.divisor = divisor
        self.core = core
        self.sim = sim
        self.build_dir = board_build_dir(config, divisor, core, root=build_root)
        self.start_timeout = float(start_timeout)
        self.stop_timeout = float(stop_timeout)
        self.max_wall_s = float(max_wall_s)
        self.wire_log = None if wire_log is None else Path(wire_log).resolve()
        self.port: str | None = None
        self.start_seconds: float | None = None
        self.pid: int | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._tmp: Path | None = None
        self._lock = None
        self._log = None

    # -- lifetime ---------------------------------------------------------------------------------

    def __enter__(self) -> "SimulatedBoard":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(check=exc_type is None)

    def start(self) -> None:
        """Start the simulation and wait until its pty is ready (see the class docstring)."""
        if self._proc is not None:
            raise RuntimeError("the simulated board is already running")
        t0 = time.monotonic()
        try:
            self._take_lock(t0)
            self._spawn()
            self._wait_ready(t0)
        except BaseException:
            self._shutdown(kill=True)
            raise
        self.start_seconds = time.monotonic() - t0

    def _take_lock(self, t0: float) -> None:
        self.build_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.build_dir / ".board.lock", "w")
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() - t0 > self.start_timeout:
                    raise SimulationError(f"another simulation of {self.build_dir} is still running after "
                                          f"{self.start_timeout:g} s") from None
                time.sleep(0.2)

    def _spawn(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="hadahw-board-"))
        job = {
            "config": self.config.to_json(sort_keys=True),
            "divisor": self.divisor,
            "core": self.core,
            "sim": self.sim,
            "build_dir": str(self.build_dir),
            "params": {
                "divisor": self.divisor,
                "ready_file": str(self._tmp / "ready.json"),
                "stop_file": str(self._tmp / "stop"),
                "host_pid": os.getpid(),
                "max_wall_s": self.max_wall_s,
            },
        }
        if self.wire_log is not None:  # only when asked: the default bench records nothing
            job["params"]["wire_log"] = str(self.wire_log)
        job_file = self._tmp / "job.json"
        job_file.write_text(json.dumps(job))
        self.log_path = self._tmp / "board.log"
        self._log = open(self.log_path, "w")
        self._proc = subprocess.Popen([sys.executable, "-m", "hadahw.sim.uart_board", str(job_file)],
                                      stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=os.getcwd())
        self.pid = self._proc.pid

    def _wait_ready(self, t0: float) -> None:
        ready = self._tmp / "ready.json"
        while not ready.exists():
            code = self._proc.poll()
            if code is not None:
                raise SimulationError(f"the simulated board exited (status {code}) before it was ready; "
                                      f"log {self.log_path}:\n{_tail(self.log_path)}")
            if time.monotonic() - t0 > self.start_timeout:
                raise SimulationError(f"the simulated board was not ready after {self.start_timeout:g} s; "
                                      f"log {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(_POLL_S)
        info = json.loads(ready.read_text())
        self.port = info["pty"]

    def close(self, check: bool = True) -> None:
        """Stop the simulation (idempotent).  With ``check``, raise :class:`SimulationError` if it failed."""
        if self._proc is None:
            return
        status, log_text = self._shutdown(kill=False)
        if check and status != 0:
            raise SimulationError(f"the simulated board failed (exit status {status}):\n{log_text}")

    def _shutdown(self, *, kill: bool) -> tuple[int | None, str]:
        """Stop the child (politely unless ``kill``), release everything; (exit status, log tail)."""
        proc, status = self._proc, None
        if proc is not None:
            if not kill and self._tmp is not None:
                (self._tmp / "stop").touch()
                try:
                    status = proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    status = None
            if status is None:
                status = self._kill(proc)
        log_text = _tail(self.log_path) if self.log_path is not None else ""
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        self._proc = None
        self.port = None
        return status, log_text

    @staticmethod
    def _kill(proc: subprocess.Popen) -> int:
        """Terminate the child's process group (it is its own session), then kill it."""
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                return proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return proc.wait()

    # -- host side --------------------------------------------------------------------------------

    def open_pipe(self, baudrate: int = 1_000_000):
        """A :class:`~hadahw.sw.transport.SerialPipe` on the simulated board's pty."""
        from hadahw.sw.transport import SerialPipe
        if self.port is None:
            raise RuntimeError("the simulated board is not running (use it as a context manager)")
        return SerialPipe(self.port, baudrate)

    def link(self, *, timeout: float = 2.0, retries: int = 8, pipe=None, **kwargs):
        """A :class:`~hadahw.sw.link.Link` over :meth:`open_pipe` (or over ``pipe``, e.g. a FaultyPipe).

        ``timeout`` defaults to 2 s: the simulation is about a thousand times slower than the
        board, so a 256-byte frame takes a good fraction of a second of wall time.
        """
        from hadahw.sw.link import Link
        return Link(self.open_pipe() if pipe is None else pipe, timeout=timeout, retries=retries, **kwargs)


# ---------------------------------------------------------------------------------------------
# Child process: python -m hadahw.sim.uart_board JOB.json


def _serve(job_file: str) -> int:
    from hadahw.sim.runner import CocotbTestFailure, SimBuildError, run_cocotb

    job = json.loads(Path(job_file).read_text())
    config = AcceleratorConfig.from_json(job["config"])
    t0 = time.monotonic()
    design = SimTop(config, divisor=int(job["divisor"]), core=job["core"])
    print(f"hadahw.sim.uart_board: elaborated in {time.monotonic() - t0:.1f} s; building/running in "
          f"{job['build_dir']}", flush=True)
    try:
        result = run_cocotb(design, toplevel=TOPLEVEL, test_module=TB_MODULE, build_dir=job["build_dir"],
                            parameters=job["params"], sim=job.get("sim"), seed=0,
                            public_ports=PUBLIC_PORTS, opt_level=OPT_LEVEL)
    except (CocotbTestFailure, SimBuildError) as exc:
        print(f"hadahw.sim.uart_board: {exc}", flush=True)
        return 1
    print(f"hadahw.sim.uart_board: simulation ended normally after {time.monotonic() - t0:.1f} s "
          f"(log {result.test_log})", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m hadahw.sim.uart_board JOB.json (started by SimulatedBoard)", file=sys.stderr)
        sys.exit(2)
    sys.exit(_serve(sys.argv[1]))
