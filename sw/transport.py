"""Byte pipes: what the HostLink driver talks through.

The link layer (:mod:`hadahw.sw.link`) is written against :class:`BytePipe` only, so the same
driver runs over a serial port (:class:`SerialPipe`), a file descriptor such as a pseudo-terminal
(:class:`FdPipe`), an in-memory pair for tests (:func:`pipe_pair`) or a simulator, optionally
through a :class:`FaultyPipe` that corrupts the traffic on purpose.

Contract of :meth:`BytePipe.read`: return between 1 and ``n`` bytes as soon as any are available,
or ``b""`` once ``timeout`` seconds have passed without data (``timeout=0`` polls).  An empty
result always means "nothing arrived in time", never end-of-file: a pipe whose other end is gone
raises :class:`PipeClosed`.
"""

from __future__ import annotations

import abc
import collections
import os
import select
import threading
import time

import numpy as np

__all__ = [
    "BytePipe",
    "PipeClosed",
    "SerialPipe",
    "FdPipe",
    "MemoryPipe",
    "pipe_pair",
    "FaultyPipe",
    "FAULT_KINDS",
]


class PipeClosed(ConnectionError):
    """The pipe, or its other end, was closed."""


class BytePipe(abc.ABC):
    """A bidirectional byte stream with a read timeout."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send all of ``data``."""

    @abc.abstractmethod
    def read(self, n: int, timeout: float) -> bytes:
        """Up to ``n`` (>= 1) bytes; ``b""`` if none arrived within ``timeout`` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the pipe; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_read_args(n: int, timeout: float) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, not {timeout}")


class SerialPipe(BytePipe):
    """A serial port through pyserial (``serial.serial_for_url``: a device path or a URL).

    Parameters
    ----------
    port : str
        ``/dev/ttyUSB1``, ``COM5``, ``loop://``, ``socket://host:port``, ...
    baudrate : int
        1_000_000 to 3_000_000 for the iCEBreaker's FT2232H.
    poll_interval : float
        Granularity of :meth:`read` timeouts.  The port's own timeout is set once to this value,
        so reads never reconfigure the port.
    **kwargs
        Passed on to pyserial (``rtscts``, ``exclusive``, ...).
    """

    def __init__(self, port: str, baudrate: int = 1_000_000, *, poll_interval: float = 0.005, **kwargs):
        import serial  # imported here so the rest of the package does not need pyserial

        if not isinstance(port, str) or not port:
            raise ValueError(f"port must be a non-empty string, not {port!r}")
        if isinstance(baudrate, bool) or not isinstance(baudrate, int) or baudrate <= 0:
            raise ValueError(f"baudrate must be a positive integer, not {baudrate!r}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, not {poll_interval}")
        self._poll = poll_interval
        try:
            self._ser = serial.serial_for_url(port, baudrate=baudrate, timeout=poll_interval, **kwargs)
        except serial.SerialException as exc:
            raise PipeClosed(f"cannot open serial port {port!r}: {exc}") from None
        self._ser.reset_input_buffer()
        self._serial_exc = serial.SerialException

    @property
    def serial(self):
        """The underlying ``serial.Serial``."""
        return self._ser

    def write(self, data: bytes) -> None:
        try:
            self._ser.write(data)  # blocks until the kernel has taken every byte
        except self._serial_exc as exc:
            raise PipeClosed(f"serial write failed: {exc}") from None

    def read(self, n: int, timeout: float) -> bytes:
        _check_read_args(n, timeout)
        deadline = time.monotonic() + timeout
        try:
            while True:
                waiting = self._ser.in_waiting
                if waiting:
                    return self._ser.read(min(n, waiting))
                if timeout == 0:
                    return b""
                data = self._ser.read(1)  # blocks at most poll_interval
                if data:
                    more = min(n - 1, self._ser.in_waiting)
                    return data + self._ser.read(more) if more else data
                if time.monotonic() >= deadline:
                    return b""
        except self._serial_exc as exc:
            raise PipeClosed(f"serial read failed: {exc}") from None

    def close(self) -> None:
        self._ser.close()


class FdPipe(BytePipe):
    """A raw file descriptor (e.g. the master side of a pseudo-terminal).

    The descriptor should be in raw mode (``tty.setraw``).  ``close()`` closes it only if
    ``owns_fd`` is true.
    """

    def __init__(self, fd: int, *, owns_fd: bool = False):
        self._fd = fd
        self._owns = owns_fd
        self._closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(bytes(data))
        while view:
            if self._closed:
                raise PipeClosed("write on a closed FdPipe")
            try:
                _, ready, _ = select.select([], [self._fd], [], 0.1)
                if ready:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                raise PipeClosed(f"write failed: {exc}") from None

    def read(self, n: int, timeout: float) -> bytes:
        _check_read_args(n, timeout)
        if self._closed:
            raise PipeClosed("read on a closed FdPipe")
        try:
            ready, _, _ = select.select([self._fd], [], [], timeout)
            if not ready:
                return b""
            data = os.read(self._fd, n)
        except OSError as exc:  # EIO on a pty master once the slave is closed
            raise PipeClosed(f"read failed: {exc}") from None
        if not data:
            raise PipeClosed("end of file")
        return data

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._owns:
                os.close(self._fd)


class _Channel:
    """One direction of an in-memory pipe."""

    def __init__(self):
        self.buf = bytearray()
        self.cond = threading.Condition()
        self.closed = False


class MemoryPipe(BytePipe):
    """One end of an in-memory, thread-safe pipe pair; see :func:`pipe_pair`."""

    def __init__(self, rx: _Channel, tx: _Channel):
        self._rx = rx
        self._tx = tx

    def write(self, data: bytes) -> None:
        with self._tx.cond:
            if self._tx.closed:
                raise PipeClosed("the other end of the pipe is closed")
            self._tx.buf += data
            self._tx.cond.notify_all()

    def read(self, n: int, timeout: float) -> bytes:
        _check_read_args(n, timeout)
        ch = self._rx
        with ch.cond:
            if not ch.buf:
                if ch.closed:
                    raise PipeClosed("the pipe is closed")
                ch.cond.wait_for(lambda: ch.buf or ch.closed, timeout)
            if not ch.buf:
                if ch.closed:
                    raise PipeClosed("the pipe is closed")
                return b""
            data = bytes(ch.buf[:n])
            del ch.buf[:n]
            return data

    def close(self) -> None:
        for ch in (self._rx, self._tx):
            with ch.cond:
                ch.closed = True
                ch.cond.notify_all()


def pipe_pair() -> tuple[MemoryPipe, MemoryPipe]:
    """Two connected in-memory pipes: bytes written to one are read from the other."""
    a2b, b2a = _Channel(), _Channel()
    return MemoryPipe(b2a, a2b), MemoryPipe(a2b, b2a)


#: Fault kinds of :class:`FaultyPipe`, in the order they are drawn.
FAULT_KINDS = ("flip", "drop", "dup", "insert")


class FaultyPipe(BytePipe):
    """Wraps a pipe and corrupts bytes written (``"tx"``) and read (``"rx"``) at given rates.

    Each byte suffers at most one fault, drawn with probability ``flip + drop + dup + insert``:
    ``flip`` inverts one random bit, ``drop`` loses the byte, ``dup`` sends it twice and
    ``insert`` puts 1..``burst`` random bytes (0x00 included) before it.  The RNG is
    ``numpy.random.default_rng(seed)``, so a run is reproducible.  ``counts[direction][kind]``
    records what was done.

    Parameters
    ----------
    inner : BytePipe
    seed : int
    flip, drop, dup, insert : float
        Per-byte probabilities; their sum must be at most 1.
    directions : {"both", "tx", "rx"}
    burst : int
        Longest run of inserted garbage.
    """

    def __init__(self, inner: BytePipe, *, seed: int, flip: float = 0.0, drop: float = 0.0, dup: float = 0.0,
                 insert: float = 0.0, directions: str = "both", burst: int = 1):
        rates = {"flip": flip, "drop": drop, "dup": dup, "insert": insert}
        for name, r in rates.items():
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {r}")
        if sum(rates.values()) > 1.0 + 1e-12:
            raise ValueError(f"flip + drop + dup + insert must be at most 1, not {sum(rates.values())}")
        if directions not in ("both", "tx", "rx"):
            raise ValueError(f"directions must be 'both', 'tx' or 'rx', not {directions!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, not {burst}")
        self.inner = inner
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._edges = np.cumsum([rates[k] for k in FAULT_KINDS])
        self._total = float(self._edges[-1])
        self._dirs = {"tx", "rx"} if directions == "both" else {directions}
        self._burst = burst
        self.counts = {d: collections.Counter({k: 0 for k in FAULT_KINDS}) for d in ("tx", "rx")}
        self.bytes_seen = {"tx": 0, "rx": 0}
        self._pending = b""  # corrupted rx bytes beyond what the last read asked for

    def faults(self, direction: str | None = None) -> int:
        """Number of faults injected in ``direction`` ("tx", "rx" or both if None)."""
        dirs = ("tx", "rx") if direction is None else (direction,)
        return sum(sum(self.counts[d].values()) for d in dirs)

    def _corrupt(self, data: bytes, direction: str) -> bytes:
        self.bytes_seen[direction] += len(data)
        if direction not in self._dirs or self._total == 0.0 or not data:
            return data
        r = self._rng.random(len(data))
        hits = np.flatnonzero(r < self._total)
        if hits.size == 0:
            return data
        kinds = np.searchsorted(self._edges, r[hits], side="right")
        out = bytearray()
        prev = 0
        count = self.counts[direction]
        for i, k in zip(hits.tolist(), kinds.tolist()):
            out += data[prev:i]
            prev = i + 1
            b = data[i]
            kind = FAULT_KINDS[min(k, 3)]
            count[kind] += 1
            if kind == "flip":
                out.append(b ^ (1 << int(self._rng.integers(8))))
            elif kind == "drop":
                pass
            elif kind == "dup":
                out += bytes((b, b))
            else:
                n = int(self._rng.integers(1, self._burst + 1))
                out += self._rng.integers(0, 256, n, dtype=np.uint8).tobytes()
                out.append(b)
        out += data[prev:]
        return bytes(out)

    def write(self, data: bytes) -> None:
        data = self._corrupt(bytes(data), "tx")
        if data:
            self.inner.write(data)

    def read(self, n: int, timeout: float) -> bytes:
        _check_read_args(n, timeout)
        if self._pending:
            data, self._pending = self._pending[:n], self._pending[n:]
            return data
        deadline = time.monotonic() + timeout
        while True:
            data = self.inner.read(n, max(0.0, deadline - time.monotonic()))
            if not data:
                return b""
            data = self._corrupt(data, "rx")
            if data:  # everything dropped: keep waiting, an empty result would mean a timeout
                data, self._pending = data[:n], data[n:]
                return data
            if time.monotonic() >= deadline:
                return b""

    def close(self) -> None:
        self.inner.close()
