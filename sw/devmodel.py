"""Reference model of the DEVICE side of the HostLink protocol (:mod:`hadahw.protocol`).

:class:`DevModel` is what the gateware must do, in plain Python: it receives a byte stream,
decodes frames (COBS, length, CRC), executes commands against a small memory / register model and
returns the response bytes.  It is the peer of :class:`hadahw.sw.link.Link` in tests, either
synchronously (:class:`DevModelPipe`) or in a thread serving any :class:`BytePipe`
(:meth:`DevModel.serve`, e.g. the master side of a pseudo-terminal).

Behaviour (the contract the gateware shares):

* A frame that fails COBS, size or CRC checks is counted (BAD_FRAME, BAD_LENGTH, BAD_CRC) and
  answered with NAK (status, received code) under the received ``seq`` if at least two bytes of it
  were decoded; nothing is executed.
* A valid frame whose ``seq`` and CRC equal those of the last executed frame is a retransmission:
  the stored response is sent again, nothing is executed, DUPLICATE is counted.
* Any other valid frame is executed and its response stored.  A ``seq`` other than last+1 counts
  OUT_OF_ORDER.  Command-level errors (unknown command, bad space/address/alignment/arguments,
  busy) are NAKs and are stored like any response.
* RUN marks the device BUSY; the model finishes the run after ``run_polls`` STATUS requests,
  reporting ``run_cycles`` cycles.  While BUSY, WRITE_MEM, READ_MEM and RUN are refused (BUSY).

``executed`` counts executions per :class:`Command` and ``write_log`` lists every executed
WRITE_MEM as ``(seq, space, address, length)``: instrumentation for tests, not part of the
protocol.
"""

from __future__ import annotations

import collections
import json
import threading
from typing import Callable, Mapping

from hadahw.protocol import (
    COUNTER_MAX,
    MAX_PAYLOAD,
    NAK_CODE,
    Command,
    DevCounter,
    DeviceInfo,
    DeviceStatus,
    Frame,
    FrameDecoder,
    FrameFault,
    PayloadError,
    ProtocolError,
    Space,
    Status,
    ack_code,
    check_empty,
    check_entry_layout,
    crc16,
    encode_frame,
    pack_identify,
    pack_nak,
    pack_status,
    pack_write_ack,
    strip_holes,
    unpack_read_mem,
    unpack_run,
    unpack_write_mem,
)
from hadahw.sw.transport import BytePipe, PipeClosed

__all__ = ["DevModel", "DevModelPipe", "DEFAULT_SIZES"]

#: Default space sizes in bytes: weights (SPRAM 128 KiB), activations, descriptors.
DEFAULT_SIZES = {Space.WEIGHTS: 128 * 1024, Space.ACTS: 32 * 1024, Space.DESC: 4 * 1024}

_COUNTER_FOR_STATUS = {
    Status.BAD_CRC: DevCounter.BAD_CRC,
    Status.BAD_FRAME: DevCounter.BAD_FRAME,
    Status.BAD_LENGTH: DevCounter.BAD_LENGTH,
    Status.UNKNOWN_CMD: DevCounter.UNKNOWN_CMD,
    Status.BAD_SPACE: DevCounter.BAD_ARG,
    Status.BAD_ADDRESS: DevCounter.BAD_ARG,
    Status.BAD_ALIGN: DevCounter.BAD_ARG,
    Status.BAD_ARG: DevCounter.BAD_ARG,
}


class _Nak(Exception):
    def __init__(self, status: Status):
        self.status = status


class DevModel:
    """The device end of the link, with memories sized by ``sizes``.

    Parameters
    ----------
    sizes : mapping of Space to int, optional
        Bytes in each space (default :data:`DEFAULT_SIZES`).
    max_payload : int
        Receive buffer: the longest payload accepted and the longest READ_MEM answered.
    align : int
        Power of two dividing every WRITE_MEM / READ_MEM address and length.
    config : str or mapping
        Accelerator configuration reported by IDENTIFY (a mapping is dumped as compact JSON).
    run_polls, run_cycles : int
        A RUN stays BUSY for ``run_polls`` STATUS requests and reports ``run_cycles`` cycles.
    executor : callable, optional
        ``executor(model, address) -> cycles`` called on RUN (e.g. the golden model); an exception
        ends the run with ``run_status = RUN_FAULT``.
    nak_on_error : bool
        Answer damaged frames with a transport NAK (otherwise drop them silently).
    compact : mapping of Space to (entry_bytes, stride), optional
        Spaces that take compact transfers (:data:`hadahw.protocol.COMPACT`) and their entry layout.
    """

    def __init__(self, *, sizes: Mapping[Space, int] | None = None, max_payload: int = MAX_PAYLOAD, align: int = 1,
                 config: str | Mapping = "{}", run_polls: int = 2, run_cycles: int = 1000,
                 executor: Callable[["DevModel", int], int] | None = None, nak_on_error: bool = True,
                 compact: Mapping[Space, tuple[int, int]] | None = None):
        sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
        self.compact = {Space(k): check_entry_layout(*v) for k, v in (compact or {}).items()}
        if not isinstance(config, str):
            config = json.dumps(config, separators=(",", ":"), sort_keys=True)
        self.info = DeviceInfo(max_payload=max_payload, align=align,
                               sizes=tuple(int(sizes.get(s, 0)) for s in Space), config=config)
        self._identify = pack_identify(self.info)  # checks that the config fits
        if run_polls < 1:
            raise ValueError(f"run_polls must be >= 1, not {run_polls}")
        self.mem = {s: bytearray(self.info.size(s)) for s in Space}
        self.run_polls = run_polls
        self.run_cycles = run_cycles
        self.executor = executor
        self.nak_on_error = nak_on_error
        self._decoder = FrameDecoder(max_payload=max_payload)
        self._lock = threading.Lock()
        self.counters = [0] * len(DevCounter)
        self.executed: collections.Counter = collections.Counter()
        self.write_log: list[tuple[int, Space, int, int]] = []
        self.frames_sent = 0
        self._last: tuple[int, int, bytes] | None = None  # (seq, crc, response wire bytes)
        self.busy = False
        self.done = False
        self.run_status = Status.OK
        self.cycles = 0
        self.run_address: int | None = None
        self._polls_left = 0

    # -- byte stream ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Consume received bytes; return the bytes to transmit in answer."""
        out = bytearray()
        with self._lock:
            for event in self._decoder.feed(data):
                if isinstance(event, FrameFault):
                    out += self._on_fault(event)
                else:
                    out += self._on_frame(event)
        return bytes(out)

    def serve(self, pipe: BytePipe, stop: threading.Event, *, poll: float = 0.01) -> None:
        """Answer frames from ``pipe`` until ``stop`` is set or the pipe closes."""
        while not stop.is_set():
            try:
                data = pipe.read(4096, poll)
                if data:
                    reply = self.feed(data)
                    if reply:
                        pipe.write(reply)
            except PipeClosed:
                return

    def serve_in_thread(self, pipe: BytePipe) -> "_Server":
        """Start :meth:`serve` in a daemon thread; the result stops it (also as a context manager)."""
        return _Server(self, pipe)

    # -- frame handling ------------------------------------------------------------------------

    def _count(self, which: DevCounter) -> None:
        self.counters[which] = min(self.counters[which] + 1, COUNTER_MAX)

    def _send(self, code: int, seq: int, payload: bytes) -> bytes:
        self.frames_sent += 1
        return encode_frame(code, seq, payload)

    def _on_fault(self, fault: FrameFault) -> bytes:
        self._count(_COUNTER_FOR_STATUS[fault.error.status])
        if not self.nak_on_error or fault.seq is None:
            return b""
        return self._send(NAK_CODE, fault.seq, pack_nak(fault.error.status, fault.code))

    def _on_frame(self, frame: Frame) -> bytes:
        self._count(DevCounter.FRAMES_OK)
        crc = crc16(bytes((frame.code, frame.seq, len(frame.payload) & 0xFF, len(frame.payload) >> 8)) + frame.payload)
        if self._last is not None:
            last_seq, last_crc, last_reply = self._last
            if frame.seq == last_seq and crc == last_crc:
                self._count(DevCounter.DUPLICATE)
                self.frames_sent += 1
                return last_reply
            if frame.seq != (last_seq + 1) & 0xFF:
                self._count(DevCounter.OUT_OF_ORDER)
        reset = False
        try:
            cmd = Command(frame.code)
        except ValueError:
            cmd = None
        try:
            if cmd is None:
                raise _Nak(Status.UNKNOWN_CMD)
            payload = self._execute(cmd, frame.seq, frame.payload)
            reset = cmd is Command.RESET_COUNTERS
            reply = self._send(ack_code(cmd), frame.seq, payload)
        except _Nak as nak:
            if nak.status in _COUNTER_FOR_STATUS:
                self._count(_COUNTER_FOR_STATUS[nak.status])
            reply = self._send(NAK_CODE, frame.seq, pack_nak(nak.status, frame.code))
        if reset:
            self.counters = [0] * len(DevCounter)
        self._last = (frame.seq, crc, reply)
        return reply

    def _check_range(self, space: Space, address: int, length: int) -> None:
        align = self.info.align
        if address % align or length % align:
            raise _Nak(Status.BAD_ALIGN)
        if address + length > self.info.size(space):
            raise _Nak(Status.BAD_ADDRESS)

    def _execute(self, cmd: Command, seq: int, payload: bytes) -> bytes:
        try:
            if cmd is Command.IDENTIFY:
                check_empty("IDENTIFY", payload)
                self.executed[cmd] += 1
                return self._identify
            if cmd is Command.STATUS:
                check_empty("STATUS", payload)
                self.executed[cmd] += 1
                self._advance_run()
                return pack_status(self.status())
            if cmd is Command.RESET_COUNTERS:
                check_empty("RESET_COUNTERS", payload)
                self.executed[cmd] += 1
                return b""
            if cmd is Command.WRITE_MEM:
                space, address, data, compact = unpack_write_mem(payload)
                if compact and space not in self.compact:
                    raise _Nak(Status.BAD_SPACE)
                if compact:  # the alignment rules of a plain write, entry-aligned, whole entries in range
                    entry, stride = self.compact[space]
                    if (address | len(data)) % self.info.align or address % stride:
                        raise _Nak(Status.BAD_ALIGN)
                    if address + -(-len(data) // entry) * stride > self.info.size(space):
                        raise _Nak(Status.BAD_ADDRESS)
                else:
                    self._check_range(space, address, len(data))
                if self.busy:
                    raise _Nak(Status.BUSY)
                self.executed[cmd] += 1
                if compact:
                    for k in range(0, len(data), entry):
                        a = address + k // entry * stride
                        part = data[k:k + entry]
                        self.mem[space][a:a + len(part)] = part
                else:
                    self.mem[space][address:address + len(data)] = data
                self.write_log.append((seq, space, address, len(data)))
                return pack_write_ack(space, address, len(data), compact=compact)
            if cmd is Command.READ_MEM:
                space, address, length, compact = unpack_read_mem(payload)
                if compact and space not in self.compact:
                    raise _Nak(Status.BAD_SPACE)
                if length > self.info.max_payload:
                    raise _Nak(Status.BAD_ARG)
                if compact and (address | length) % self.compact[space][1]:
                    raise _Nak(Status.BAD_ALIGN)
                self._check_range(space, address, length)
                if self.busy:
                    raise _Nak(Status.BUSY)
                self.executed[cmd] += 1
                data = bytes(self.mem[space][address:address + length])
                if compact:
                    data = strip_holes(data, *self.compact[space])
                return data
            if cmd is Command.RUN:
                address = unpack_run(payload)
                if address >= self.info.size(Space.DESC):
                    raise _Nak(Status.BAD_ADDRESS)
                if self.busy:
                    raise _Nak(Status.BUSY)
                self.executed[cmd] += 1
                self._start_run(address)
                return b""
        except PayloadError as exc:
            raise _Nak(exc.status) from None
        except ProtocolError:  # pragma: no cover - payload helpers raise PayloadError only
            raise _Nak(Status.BAD_ARG) from None
        raise _Nak(Status.UNKNOWN_CMD)  # pragma: no cover - every Command is handled above

    # -- accelerator model ---------------------------------------------------------------------

    def _start_run(self, address: int) -> None:
        self.run_address = address
        self.busy, self.done, self.run_status = True, False, Status.OK
        self.cycles = 0
        self._polls_left = self.run_polls
        self._run_total = self.run_cycles
        if self.executor is not None:
            try:
                self._run_total = int(self.executor(self, address))
            except Exception:  # the model reports a fault, like the hardware would
                self.run_status = Status.RUN_FAULT
                self._run_total = 0

    def _advance_run(self) -> None:
        if not self.busy:
            return
        self._polls_left -= 1
        self.cycles = self._run_total * (self.run_polls - self._polls_left) // self.run_polls
        if self._polls_left <= 0:
            self.busy, self.done = False, True

    def status(self) -> DeviceStatus:
        """The STATUS the device would report now (without advancing a run)."""
        return DeviceStatus(busy=self.busy, done=self.done, run_status=self.run_status, cycles=self.cycles,
                            counters=tuple(self.counters))

    def counter(self, which: DevCounter) -> int:
        return self.counters[which]


class _Server:
    def __init__(self, model: DevModel, pipe: BytePipe):
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=model.serve, args=(pipe, self.stop_event), daemon=True,
                                       name="DevModel.serve")
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class DevModelPipe(BytePipe):
    """A :class:`BytePipe` whose other end is a :class:`DevModel`, run synchronously.

    ``write`` feeds the model at once and queues its answer; ``read`` returns queued bytes
    without waiting (``b""`` when none), so a lost frame times out immediately: tests with many
    faults stay fast and deterministic.
    """

    def __init__(self, model: DevModel):
        self.model = model
        self._rx = bytearray()
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise PipeClosed("write on a closed DevModelPipe")
        self._rx += self.model.feed(data)

    def read(self, n: int, timeout: float) -> bytes:
        if self._closed:
            raise PipeClosed("read on a closed DevModelPipe")
        data = bytes(self._rx[:n])
        del self._rx[:n]
        return data

    def close(self) -> None:
        self._closed = True
