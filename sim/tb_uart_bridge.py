"""cocotb bench: the pin-free board design behind a pseudo-terminal, for the real host driver.

DUT: :class:`hadahw.sim.uart_board.SimTop` (:class:`hadahw.rtl.top.UARTSystem` with a power-on
reset) as Verilog; ports ``clk``, ``rx``, ``tx``, ``busy``, ``done``, ``error``, ``in_reset``.  The
bench opens a pseudo-terminal, publishes the path of its slave side in a *ready file*, and
bridges the pty master to the UART pins at the bit level:

* bytes read from the pty master (non-blocking, polled once per byte time while the line is
  idle) are driven onto ``rx`` as 8N1 frames, ``divisor`` clock cycles per bit, back to back;
* ``tx`` is decoded as a UART receiver does: from the falling edge of the start bit, the line
  is sampled in the middle of each of the ten bits (on a falling clock edge, as ``tx`` is a
  register that changes after rising edges); a frame whose start bit is not low there is a
  glitch and ignored, one whose stop bit is not high is counted as a framing error and dropped.
  Each good byte is written to the pty master at once.

The host then opens the slave path with :class:`hadahw.sw.transport.SerialPipe` (pyserial) as it
would a board's serial port.

Speed: Python runs per bit, never per clock cycle.  ``rx`` is driven with one ``Timer`` per run of
equal bits; ``tx`` is watched with a value-change trigger (one wake-up per transition) and the
mid-bit levels are read off the recorded transition times (the level at a sample time is the
level after the last transition before it: exactly what sampling the line would give).  The
clock is cocotb's C++ clock.

The slave descriptor stays open in the bench for the whole run, so the host may open and close
the port freely.  The bench ends (the test passes) when the *stop file* appears; it also ends,
failing, when the host process (``host_pid``) is gone or after ``max_wall_s`` seconds of wall
time, so a leaked simulation cannot run on or pass silently.  While nothing moves (no host bytes,
``tx`` idle and the core not busy for :data:`IDLE_POLLS` byte times) the bench blocks on the pty
for up to :data:`IDLE_SLEEP_S` of wall time per byte time instead of spinning the simulator.

Parameters (:func:`hadahw.sim.tbutil.tb_params`): ``divisor`` (cycles per bit, >= 4),
``ready_file``, ``stop_file``, ``host_pid``, ``max_wall_s`` (default 3600), ``period_ns``
(clock period, default 10), ``wire_log`` (optional path, off by default).

Wire log (instrumentation for ``bench/link_bench.py``).  With ``wire_log`` set, the bench records
the simulated time of every byte crossing the pins and of every edge of ``busy``, and writes them
as one JSON object to that path when it stops (before its final checks, so a failed run leaves its
log too)::

    {"period_ps": P, "divisor": D,
     "rx": [[start_ps, end_ps, byte], ...],   # host -> device: start-bit edge, end of the stop bit
     "tx": [[start_ps, byte], ...],           # device -> host: start-bit edge (good bytes only)
     "busy": [[t_ps, level], ...]}            # every change of the core's busy output

``rx`` times are when the bench drove the line (falling clock edges), ``tx`` times when the
design's registered ``tx`` changed (rising clock edges).  Without ``wire_log`` nothing is recorded.
"""

from __future__ import annotations

import errno
import json
import os
import select
import time
import tty

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, FallingEdge, Timer, ValueChange

from hadahw.sim.tbutil import bit as _bit, tb_params

#: Byte times without traffic (either direction) and without a running program before the bench
#: starts to block on the pty instead of advancing simulated time as fast as it can.
IDLE_POLLS = 256
#: Longest wall-clock wait on the pty per idle byte time (seconds).
IDLE_SLEEP_S = 0.002
#: Stop conditions are checked every this many idle polls (a stat() and a kill(0)).
CHECK_EVERY = 64


def _publish(path: str, info: dict) -> None:
    """Write ``info`` as JSON to ``path`` atomically (the host polls for the file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def _host_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _now_ps() -> int:
    return round(get_sim_time(unit="ps"))


class _Bridge:
    """Byte queues between the pty master and the UART pins; the tx decoder; counters.

    ``first_ps``: time from the start bit's falling edge to the first sample (middle of the start
    bit, moved to a falling clock edge); ``bit_ps``: bit time.
    """

    def __init__(self, master: int, *, bit_ps: int, first_ps: int, log):
        self.master = master
        self.bit_ps = bit_ps
        self.first_ps = first_ps
        self.log = log
        self.inbox = bytearray()    # host -> device, not yet on rx
        self.outbox = bytearray()   # device -> host, not yet accepted by the pty
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.tx_framing_errors = 0
        self.tx_glitches = 0
        self._start: int | None = None        # falling edge that began the current tx frame
        self._frame_start = 0                 # the same, of the frame being decoded
        self._edges: list[tuple[int, int]] = []  # (time, level after it) inside the frame
        self.tx_log: list[list[int]] | None = None  # [start_ps, byte] per good tx byte (wire log only)

    # -- pty ----------------------------------------------------------------------------------

    def poll(self, wait: float = 0.0) -> None:
        """Move what is available between the pty and the queues (never blocks beyond ``wait``)."""
        if self.outbox:
            try:
                n = os.write(self.master, self.outbox)
                del self.outbox[:n]
            except BlockingIOError:
                pass
        if wait > 0 and not self.outbox:
            select.select([self.master], [], [], wait)
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            data = b""
        except OSError as exc:  # EIO would mean no slave is open: cannot happen, we hold one
            if exc.errno != errno.EIO:
                raise
            data = b""
        self.inbox += data

    # -- tx decoder ---------------------------------------------------------------------------

    @property
    def tx_active(self) -> bool:
        return self._start is not None

    def _stop_sample(self) -> int:
        return self._start + self.first_ps + 9 * self.bit_ps

    def tx_edge(self, t: int, level: int) -> None:
        """``tx`` changed to ``level`` at time ``t``."""
        if self._start is not None and t > self._stop_sample():
            self._finish()  # the edge belongs to the next frame
        if self._start is None:
            if level == 0:  # a start bit begins (rising edges while idle change nothing)
                self._start = t
                self._edges = [(t, 0)]
        else:
            self._edges.append((t, level))

    def tx_flush(self, t: int) -> None:
        """Decode the current frame if its stop bit has been sampled by time ``t``."""
        if self._start is not None and t > self._stop_sample():
            self._finish()

    def _finish(self) -> None:
        bits = []
        k = 0
        edges = self._edges
        for i in range(10):
            ts = self._start + self.first_ps + i * self.bit_ps
            while k + 1 < len(edges) and edges[k + 1][0] <= ts:
                k += 1
            bits.append(edges[k][1])
        self._frame_start, self._start = self._start, None
        if bits[0]:
            self.tx_glitches += 1
            return
        value = sum(b << i for i, b in enumerate(bits[1:9]))
        if not bits[9]:
            self.tx_framing_errors += 1
            self.log.warning("tb_uart_bridge: tx byte 0x%02X without a stop bit (dropped)", value)
            return
        self.outbox.append(value)
        self.tx_bytes += 1
        if self.tx_log is not None:
            self.tx_log.append([self._frame_start, value])
        self.poll()


async def _watch_tx(dut, bridge: _Bridge) -> None:
    change = ValueChange(dut.tx)
    while True:
        await change
        bridge.tx_edge(_now_ps(), int(_bit(dut.tx)))


async def _watch_busy(dut, log: list) -> None:
    """Append ``[t_ps, level]`` to ``log`` at every change of ``busy`` (wire log only)."""
    change = ValueChange(dut.busy)
    while True:
        await change
        log.append([_now_ps(), int(_bit(dut.busy))])


def _write_wire_log(path: str, *, period_ps: int, divisor: int, rx: list, tx: list, busy: list) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"period_ps": period_ps, "divisor": divisor, "rx": rx, "tx": tx, "busy": busy}, f,
                  separators=(",", ":"))
    os.replace(tmp, path)


@cocotb.test()
async def uart_bridge(dut):
    """Serve the DUT on a pseudo-terminal until the host asks to stop (stop file)."""
    params = tb_params()
    divisor = int(params["divisor"])
    ready_file = str(params["ready_file"])
    stop_file = str(params["stop_file"])
    host_pid = int(params["host_pid"])
    max_wall = float(params.get("max_wall_s", 3600.0))
    wire_log = params.get("wire_log")  # path or None: see "Wire log" in the module docstring
    period_ps = int(params.get("period_ns", 10)) * 1000
    assert divisor >= 4 and period_ps % 2000 == 0, (divisor, period_ps)
    bit_ps = divisor * period_ps
    half = period_ps // 2
    # tx changes right after rising clock edges (t = k * period); sample on a falling edge at or
    # after the middle of the start bit.
    mid = bit_ps // 2
    first_ps = mid if mid % period_ps == half else mid + half

    master, slave = os.openpty()
    tty.setraw(slave)   # no echo, no line editing, 8 bits: before the host opens the port
    os.set_blocking(master, False)
    bridge = _Bridge(master, bit_ps=bit_ps, first_ps=first_ps, log=dut._log)
    t_start = time.monotonic()

    Clock(dut.clk, period_ps, unit="ps", impl="gpi").start()  # rising edges at 0, period, ...
    dut.rx.value = 1
    await ClockCycles(dut.clk, 2)
    while _bit(dut.in_reset):  # the design resets itself (hadahw.sim.uart_board.SimTop)
        await ClockCycles(dut.clk, 1)
    await FallingEdge(dut.clk)  # from here on every wait is whole bit times: rx moves on falling edges
    await Timer(bit_ps * 2, unit="ps")  # line idle for two bit times after reset

    rx_log: list[list[int]] | None = None
    busy_log: list[list[int]] = []
    if wire_log:
        rx_log, bridge.tx_log = [], []
        busy_log.append([_now_ps(), int(_bit(dut.busy))])
        cocotb.start_soon(_watch_busy(dut, busy_log))
    cocotb.start_soon(_watch_tx(dut, bridge))
    _publish(ready_file, {"pty": os.ttyname(slave), "pid": os.getpid(), "divisor": divisor,
                          "period_ps": period_ps})
    dut._log.info("tb_uart_bridge: serving on %s (divisor %d)", os.ttyname(slave), divisor)

    run_t = {n: Timer(n * bit_ps, unit="ps") for n in range(1, 11)}
    byte_t = run_t[10]
    idle = 0
    reason = None
    while True:
        if bridge.inbox:
            # One 8N1 frame, LSB first: start 0, data, stop 1; one wait per run of equal bits.
            value = bridge.inbox.pop(0)
            frame = (value << 1) | 0x200
            t_byte = _now_ps()
            i = 0
            while i < 10:
                level = (frame >> i) & 1
                run = 1
                while i + run < 10 and (frame >> (i + run)) & 1 == level:
                    run += 1
                dut.rx.value = level
                await run_t[run]
                i += run
            bridge.rx_bytes += 1
            if rx_log is not None:
                rx_log.append([t_byte, _now_ps(), value])
            idle = 0
            bridge.tx_flush(_now_ps())
            if not bridge.inbox:
                bridge.poll()
            continue
        bridge.tx_flush(_now_ps())
        quiet = not bridge.tx_active and not bridge.outbox and not _bit(dut.busy)
        idle = idle + 1 if quiet else 0
        bridge.poll(IDLE_SLEEP_S if idle > IDLE_POLLS else 0.0)
        if idle and idle % CHECK_EVERY == 0 or idle > IDLE_POLLS:
            if os.path.exists(stop_file):
                break
            if not _host_alive(host_pid):
                reason = f"host process {host_pid} is gone"
                break
            if time.monotonic() - t_start > max_wall:
                reason = f"ran longer than max_wall_s={max_wall:g} s"
                break
        if not bridge.inbox:
            await byte_t

    dut._log.info("tb_uart_bridge: stopped after %.1f s wall, %d cycles: %d bytes host->device, %d bytes "
                  "device->host, %d tx framing errors, %d tx glitches", time.monotonic() - t_start,
                  _now_ps() // period_ps, bridge.rx_bytes, bridge.tx_bytes, bridge.tx_framing_errors,
                  bridge.tx_glitches)
    os.close(master)
    os.close(slave)
    if wire_log:
        _write_wire_log(wire_log, period_ps=period_ps, divisor=divisor, rx=rx_log, tx=bridge.tx_log,
                        busy=busy_log)
    assert reason is None, f"tb_uart_bridge stopped without the stop file: {reason}"
    assert bridge.tx_framing_errors == 0 and bridge.tx_glitches == 0, \
        f"{bridge.tx_framing_errors} tx bytes without a stop bit, {bridge.tx_glitches} glitches on tx"
