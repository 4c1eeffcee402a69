"""Host side of the HostLink protocol (:mod:`hadahw.protocol`): reliable requests over a byte pipe.

:class:`Link` sends one request at a time and waits for its response (stop-and-wait).  It
retransmits the identical frame when no valid response arrives within ``timeout`` seconds or the
device answers with a transport NAK (damaged frame), at most ``retries`` times; it discards
garbage, damaged frames and stale or duplicate responses (a response whose ``seq`` or code does
not match the request in flight).  The device executes a retransmitted request only once (it
replays its stored response), so every request takes effect exactly once however often it is sent.

Errors
------
:class:`LinkTimeout`
    No valid response after ``retries + 1`` attempts (bounded time: about
    ``(retries + 1) * timeout`` seconds).
:class:`LinkError`
    The request failed for another reason (e.g. every attempt was NAKed as damaged), or the
    device's answer does not fit the request (wrong length, wrong echo): the link never returns
    data it cannot vouch for.
:class:`DeviceError`
    The device refused the request (``status``: a :class:`~hadahw.protocol.Status`).
:class:`IncompatibleDevice`
    IDENTIFY shows a device that does not speak this protocol or has another configuration.
Arguments a caller gets wrong raise ``ValueError``/``TypeError`` naming the parameter, before
anything is sent.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import secrets
import time
from typing import Mapping

from tqdm import tqdm

from hadahw.protocol import (
    MAGIC,
    MAX_PAYLOAD,
    MIN_DEVICE_PAYLOAD,
    NAK_CODE,
    PROTOCOL_VERSION,
    TRANSPORT_ERRORS,
    WRITE_HEADER_BYTES,
    Command,
    CrcError,
    DeviceInfo,
    DeviceStatus,
    Frame,
    FrameDecoder,
    FrameFault,
    FramingError,
    LengthError,
    PayloadError,
    Space,
    Status,
    ack_code,
    check_entry_layout,
    compact_length,
    encode_frame,
    pack_read_mem,
    pack_run,
    pack_write_mem,
    unpack_identify,
    unpack_nak,
    unpack_status,
    unpack_write_ack,
)
from hadahw.sw.transport import BytePipe

__all__ = ["Link", "LinkStats", "LinkError", "LinkTimeout", "DeviceError", "IncompatibleDevice"]


class LinkError(RuntimeError):
    """A request could not be completed reliably."""


class LinkTimeout(LinkError):
    """No valid response arrived after every allowed attempt."""


class DeviceError(LinkError):
    """The device answered a request with a NAK; ``status`` says why."""

    def __init__(self, cmd: Command, status: Status | int, detail: str = ""):
        self.cmd = cmd
        self.status = status
        name = status.name if isinstance(status, Status) else f"status {status}"
        super().__init__(f"device refused {cmd.name}: {name}{detail}")


class IncompatibleDevice(LinkError):
    """The device is not a hadahw device of a compatible protocol version or configuration."""


@dataclasses.dataclass
class LinkStats:
    """What the link has seen; counts since construction."""

    requests: int = 0
    frames_sent: int = 0
    retransmits: int = 0
    timeouts: int = 0
    transport_naks: int = 0  # NAKs BAD_CRC / BAD_FRAME / BAD_LENGTH for the request in flight
    rx_bad_crc: int = 0
    rx_bad_frame: int = 0
    rx_bad_length: int = 0
    stale: int = 0  # valid frames that were not the awaited response (duplicates, late answers)
    bytes_sent: int = 0
    bytes_received: int = 0

    @property
    def rx_errors(self) -> int:
        """Damaged frames received (CRC, COBS/short, length)."""
        return self.rx_bad_crc + self.rx_bad_frame + self.rx_bad_length


def _index(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {v}")
    return v


def _as_bytes(name: str, value) -> bytes:
    if isinstance(value, str) or not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes-like, not {type(value).__name__}")
    return bytes(value)


def _command(cmd) -> Command:
    if isinstance(cmd, bool) or not isinstance(cmd, int):
        raise TypeError(f"cmd must be a Command, not {type(cmd).__name__}")
    try:
        return Command(cmd)
    except ValueError:
        names = ", ".join(c.name for c in Command)
        raise ValueError(f"cmd must be a Command ({names}), not 0x{cmd:02X}") from None


def _space(space) -> Space:
    if isinstance(space, bool) or not isinstance(space, int):
        raise TypeError(f"space must be a Space, not {type(space).__name__}")
    try:
        return Space(space)
    except ValueError:
        names = ", ".join(s.name for s in Space)
        raise ValueError(f"space must be one of {names}, not {space!r}") from None


class Link:
    """Reliable request/response over a :class:`~hadahw.sw.transport.BytePipe`.

    Parameters
    ----------
    pipe : BytePipe
    timeout : float
        Seconds to wait for a response before resending.  Allow for two frame times at the baud
        rate (a 1 KiB frame takes ~10 ms at 1 Mbaud) plus USB latency.
    retries : int
        Resends after the first attempt, per request.
    progress : bool
        Show a tqdm progress bar for :meth:`write_mem` / :meth:`read_mem`.
    max_payload : int, optional
        Cap on the payload per frame (smaller frames suit a noisy line); the device's own limit,
        learnt by :meth:`connect`, also applies.  Before :meth:`connect` the cap is
        ``MAX_PAYLOAD``.
    start_seq : int, optional
        First sequence number (random by default, so a new session does not collide with the
        device's memory of the last one).

    A Link is not thread-safe: one request is in flight at a time, by design.
    """

    def __init__(self, pipe: BytePipe, *, timeout: float = 0.5, retries: int = 8, progress: bool = False,
                 max_payload: int | None = None, start_seq: int | None = None):
        if not isinstance(pipe, BytePipe):
            raise TypeError(f"pipe must be a BytePipe, not {type(pipe).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.pipe = pipe
        self.timeout = float(timeout)
        self.retries = _index("retries", retries, 0, 1000)
        self.progress = bool(progress)
        self._cap = MAX_PAYLOAD if max_payload is None else _index("max_payload", max_payload,
                                                                     MIN_DEVICE_PAYLOAD, MAX_PAYLOAD)
        self.max_payload = self._cap
        seq = secrets.randbelow(256) if start_seq is None else _index("start_seq", start_seq, 0, 255)
        self._seq = (seq - 1) & 0xFF
        self._decoder = FrameDecoder(max_payload=MAX_PAYLOAD)
        self.info: DeviceInfo | None = None
        self.stats = LinkStats()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.pipe.close()

    @property
    def seq(self) -> int:
        """Sequence number of the last request sent."""
        return self._seq

    # -- core ----------------------------------------------------------------------------------

    def transact(self, cmd: Command, payload: bytes = b"") -> bytes:
        """Send one request and return the payload of its ACK.

        Raises :class:`DeviceError` on a NAK, :class:`LinkTimeout` / :class:`LinkError` when no
        trustworthy answer arrives, ``ValueError``/``TypeError`` for bad arguments.
        """
        cmd = _command(cmd)
        payload = _as_bytes("payload", payload)
        if len(payload) > self.max_payload:
            raise ValueError(f"payload is {len(payload)} bytes; the limit is {self.max_payload} (max_payload)")
        self._seq = seq = (self._seq + 1) & 0xFF
        frame = encode_frame(cmd, seq, payload)
        self.stats.requests += 1
        last = "no answer"
        only_timeouts = True
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retransmits += 1
            self.pipe.write(frame)
            self.stats.frames_sent += 1
            self.stats.bytes_sent += len(frame)
            answer = self._await(cmd, seq)
            if answer is None:
                self.stats.timeouts += 1
                continue
            if answer.code != NAK_CODE:
                return answer.payload
            try:
                status, _code = unpack_nak(answer.payload)
            except PayloadError as exc:
                raise LinkError(f"{cmd.name}: malformed NAK from the device ({exc})") from None
            if status in TRANSPORT_ERRORS:
                self.stats.transport_naks += 1
                only_timeouts = False
                last = f"NAK {status.name}"
                continue
            if _code != cmd:
                raise LinkError(f"{cmd.name}: the device's NAK {status!r} echoes code 0x{_code:02X}")
            raise DeviceError(cmd, status)
        attempts = self.retries + 1
        if only_timeouts:
            raise LinkTimeout(f"{cmd.name} (seq {seq}): no valid answer after {attempts} attempt(s) "
                              f"of {self.timeout:g} s each")
        raise LinkError(f"{cmd.name} (seq {seq}): failed after {attempts} attempt(s); last answer: {last} "
                        f"(the line is too noisy, or the payload exceeds the device's max_payload)")

    def _await(self, cmd: Command, seq: int) -> Frame | None:
        """The response to (cmd, seq), or None after ``timeout`` seconds without one."""
        deadline = time.monotonic() + self.timeout
        want = (ack_code(cmd), NAK_CODE)
        stats = self.stats
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            data = self.pipe.read(4096, remaining)
            if not data:
                return None
            stats.bytes_received += len(data)
            found = None
            for event in list(self._decoder.feed(data)):
                if isinstance(event, FrameFault):
                    if isinstance(event.error, CrcError):
                        stats.rx_bad_crc += 1
                    elif isinstance(event.error, LengthError):
                        stats.rx_bad_length += 1
                    else:
                        assert isinstance(event.error, FramingError)
                        stats.rx_bad_frame += 1
                elif event.seq == seq and event.code in want and (found is None or found.code == NAK_CODE):
                    # An ACK beats a transport NAK in the same chunk (the NAK was for a damaged copy).
                    if found is not None:
                        stats.stale += 1
                    found = event
                else:
                    stats.stale += 1
            if found is not None:
                return found

    # -- commands ------------------------------------------------------------------------------

    def identify(self) -> DeviceInfo:
        """IDENTIFY, parsed (not checked; see :meth:`connect`)."""
        payload = self.transact(Command.IDENTIFY)
        try:
            return unpack_identify(payload)
        except PayloadError as exc:
            raise IncompatibleDevice(str(exc)) from None

    def connect(self, expect_config: Mapping | None = None) -> DeviceInfo:
        """IDENTIFY, check the protocol version (and ``expect_config`` keys), adopt the limits."""
        info = self.identify()
        if info.version[0] != PROTOCOL_VERSION[0]:
            raise IncompatibleDevice(f"device speaks protocol {info.version[0]}.{info.version[1]}, "
                                     f"this host {PROTOCOL_VERSION[0]}.x ({MAGIC.decode()})")
        if expect_config:
            try:
                cfg = info.config_dict()
            except PayloadError as exc:
                raise IncompatibleDevice(str(exc)) from None
            for key, value in expect_config.items():
                if key not in cfg:
                    raise IncompatibleDevice(f"device configuration has no {key!r} (expected {value!r})")
                if cfg[key] != value:
                    raise IncompatibleDevice(f"device configuration has {key} = {cfg[key]!r}, expected {value!r}")
        self.info = info
        self.max_payload = min(self._cap, info.max_payload)
        return info

    def _require_info(self) -> DeviceInfo:
        return self.info if self.info is not None else self.connect()

    def _check_range(self, space: Space, address, length: int, what: str) -> tuple[DeviceInfo, int]:
        info = self._require_info()
        address = _index("address", address, 0, (1 << 32) - 1)
        size = info.size(space)
        if address + length > size:
            raise ValueError(f"address range [0x{address:X}, 0x{address + length:X}) exceeds the {space.name} "
                             f"space ({size} bytes)")
        if address % info.align:
            raise ValueError(f"address 0x{address:X} is not a multiple of the device alignment {info.align}")
        if length % info.align:
            raise ValueError(f"{what} {length} is not a multiple of the device alignment {info.align}")
        return info, address

    def write_mem(self, space: Space, address: int, data: bytes, *, entry: tuple[int, int] | None = None) -> None:
        """Write ``data`` at ``address`` of ``space``, split into frames.

        ``entry=(entry_bytes, stride)``: a compact write (protocol 1.1, the space holds entries of
        ``entry_bytes`` at that stride): ``address`` is a multiple of ``stride`` and ``data``
        fills the first ``entry_bytes`` of consecutive entries (the holes are not written).
        """
        space = _space(space)
        data = _as_bytes("data", data)
        used, stride = None, 1
        if entry is not None:
            info = self._require_info()
            used, stride = self._entry_layout(info, entry)
            extent = -(-len(data) // used) * stride
            info, address = self._check_range(space, address, extent, "extent")
            if address % stride or len(data) % info.align:
                raise ValueError(f"a compact write needs an address that is a multiple of the stride {stride} and "
                                 f"data whose length is a multiple of the alignment {info.align}, not 0x{address:X} "
                                 f"and {len(data)}")
            # whole entries per frame (each frame starts at an entry)
            step = used * info.align // math.gcd(used, info.align)
        else:
            info, address = self._check_range(space, address, len(data), "len(data)")
            step = info.align
        chunk = (self.max_payload - WRITE_HEADER_BYTES) // step * step
        with tqdm(total=len(data), unit="B", unit_scale=True, unit_divisor=1024, disable=not self.progress,
                  desc=f"write {space.name}", leave=False) as bar:
            for off in range(0, len(data), chunk):
                part = data[off:off + chunk]
                at = address + (off if used is None else off // used * stride)
                reply = self.transact(Command.WRITE_MEM, pack_write_mem(space, at, part, compact=used is not None))
                try:
                    echo = unpack_write_ack(reply)
                except PayloadError as exc:
                    raise LinkError(f"WRITE_MEM: malformed ACK ({exc})") from None
                if echo != (space, at, len(part), used is not None):
                    raise LinkError(f"WRITE_MEM of {len(part)} bytes at {space.name}:0x{at:X} was "
                                    f"acknowledged as {echo[2]} bytes at {echo[0].name}:0x{echo[1]:X}")
                bar.update(len(part))

    @staticmethod
    def _entry_layout(info: DeviceInfo, entry) -> tuple[int, int]:
        """``entry`` validated for a compact transfer with a device of ``info``."""
        try:
            used, stride = check_entry_layout(*entry)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"entry: {exc}") from None
        if info.version < (1, 1):
            raise ValueError(f"compact transfers need protocol 1.1; the device speaks "
                             f"{info.version[0]}.{info.version[1]}")
        return used, stride

    def read_mem(self, space: Space, address: int, length: int, *, entry: tuple[int, int] | None = None) -> bytes:
        """Read ``length`` bytes at ``address`` of ``space``, split into frames.

        ``entry=(entry_bytes, stride)``: a compact read (protocol 1.1, the space holds entries of
        ``entry_bytes`` at that stride): ``address`` and ``length`` are multiples of ``stride``
        and only the first ``entry_bytes`` of each entry come back, ``length // stride *
        entry_bytes`` bytes in all.
        """
        space = _space(space)
        length = _index("length", length, 0, (1 << 32) - 1)
        info, address = self._check_range(space, address, length, "length")
        stride, used = 1, None
        if entry is not None:
            used, stride = self._entry_layout(info, entry)
            if (address | length) % stride:
                raise ValueError(f"a compact read needs address and length that are multiples of the stride "
                                 f"{stride}, not 0x{address:X} and {length}")
        step = max(info.align, stride)
        chunk = self.max_payload // step * step
        out = bytearray()
        with tqdm(total=length, unit="B", unit_scale=True, unit_divisor=1024, disable=not self.progress,
                  desc=f"read {space.name}", leave=False) as bar:
            for off in range(0, length, chunk):
                n = min(chunk, length - off)
                want = n if used is None else compact_length(n, used, stride)
                part = self.transact(Command.READ_MEM, pack_read_mem(space, address + off, n, compact=used is not None))
                if len(part) != want:
                    raise LinkError(f"READ_MEM of {want} bytes at {space.name}:0x{address + off:X} returned "
                                    f"{len(part)} bytes")
                out += part
                bar.update(n)
        return bytes(out)

    def run(self, address: int) -> None:
        """Start the program at ``address`` of the descriptor space; returns at once."""
        address = _index("address", address, 0, (1 << 32) - 1)
        if self.info is not None and address >= self.info.size(Space.DESC):
            raise ValueError(f"address 0x{address:X} is outside the DESC space ({self.info.size(Space.DESC)} bytes)")
        self._expect_empty(Command.RUN, self.transact(Command.RUN, pack_run(address)))

    def status(self) -> DeviceStatus:
        """STATUS: busy/done, cycle counter and the device's error counters."""
        payload = self.transact(Command.STATUS)
        try:
            return unpack_status(payload)
        except PayloadError as exc:
            raise LinkError(f"STATUS: malformed answer ({exc})") from None

    def reset_counters(self) -> None:
        self._expect_empty(Command.RESET_COUNTERS, self.transact(Command.RESET_COUNTERS))

    def wait_idle(self, timeout: float = 10.0, interval: float = 0.001) -> DeviceStatus:
        """Poll STATUS until the device is not busy; LinkTimeout after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if not st.busy:
                return st
            if time.monotonic() >= deadline:
                raise LinkTimeout(f"device still busy after {timeout:g} s")
            time.sleep(interval)

    @staticmethod
    def _expect_empty(cmd: Command, payload: bytes) -> None:
        if payload:
            raise LinkError(f"{cmd.name}: expected an empty ACK, got {len(payload)} bytes")
