"""Tests of the host link (hadahw.sw.link) against the device model over in-memory, faulty and
pseudo-terminal pipes."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import tty

import numpy as np
import pytest

from hadahw.protocol import (
    MAX_PAYLOAD,
    NAK_CODE,
    WRITE_HEADER_BYTES,
    Command,
    DevCounter,
    DeviceInfo,
    Frame,
    FrameDecoder,
    Space,
    Status,
    ack_code,
    decode_frame,
    encode_frame,
    pack_identify,
    pack_read_mem,
    pack_run,
    pack_write_mem,
    unpack_nak,
)
from hadahw.sw.devmodel import DevModel, DevModelPipe
from hadahw.sw.link import DeviceError, IncompatibleDevice, Link, LinkError, LinkTimeout
from hadahw.sw.transport import BytePipe, FaultyPipe, FdPipe, PipeClosed, SerialPipe, pipe_pair

CONFIG = {"rows": 4, "cols": 4, "lanes": 16, "beta_w": 16, "beta_a": 2}


def blob(seed: int, n: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    data[:: 97] = 0  # plenty of zeros for COBS to stuff
    return data.tobytes()


def sync_link(dev: DevModel | None = None, **kw) -> tuple[Link, DevModel]:
    dev = dev or DevModel(config=CONFIG)
    kw.setdefault("timeout", 0.05)
    kw.setdefault("retries", 3)
    kw.setdefault("start_seq", 0)
    return Link(DevModelPipe(dev), **kw), dev


# ---------------------------------------------------------------------------------------------
# Clean channel


def test_identify_and_connect():
    link, dev = sync_link(DevModel(config=CONFIG, max_payload=512, align=2))
    info = link.connect(expect_config={"rows": 4, "beta_w": 16})
    assert info.version == (1, 1) and info.max_payload == 512 and info.align == 2
    assert info.config_dict() == CONFIG
    assert info.size(Space.WEIGHTS) == len(dev.mem[Space.WEIGHTS])
    assert link.max_payload == 512
    with pytest.raises(IncompatibleDevice, match="rows = 4, expected 8"):
        link.connect(expect_config={"rows": 8})
    with pytest.raises(IncompatibleDevice, match="has no 'pe'"):
        link.connect(expect_config={"pe": 1})


def test_incompatible_version():
    dev = DevModel()
    dev._identify = pack_identify(DeviceInfo(version=(2, 0)))
    link, _ = sync_link(dev)
    with pytest.raises(IncompatibleDevice, match="device speaks protocol 2.0, this host 1.x"):
        link.connect()


@pytest.mark.parametrize("seed,n,max_payload", [(1, 10_000, None), (2, 3 * MAX_PAYLOAD + 17, 256), (3, 1, 64)],
                         ids=lambda v: f"{v}")
def test_write_read_back_large_blob(seed, n, max_payload):
    link, dev = sync_link(max_payload=max_payload)
    data = blob(seed, n)
    link.write_mem(Space.WEIGHTS, 300, data)
    assert bytes(dev.mem[Space.WEIGHTS][300:300 + n]) == data
    assert link.read_mem(Space.WEIGHTS, 300, n) == data
    chunk = link.max_payload - WRITE_HEADER_BYTES
    assert dev.executed[Command.WRITE_MEM] == -(-n // chunk)
    assert dev.executed[Command.READ_MEM] == -(-n // link.max_payload)
    assert link.stats.retransmits == 0 and link.stats.rx_errors == 0


@pytest.mark.parametrize("layout, max_payload, n_entries", [((5, 8), 256, 128), ((3, 4), 64, 50), ((9, 16), 1024, 7)])
def test_compact_read_returns_the_used_bytes_of_each_entry(layout, max_payload, n_entries):
    used, stride = layout
    dev = DevModel(config=CONFIG, max_payload=max_payload, compact={Space.ACTS: layout})
    link, _ = sync_link(dev)
    data = blob(5, dev.info.size(Space.ACTS))
    link.write_mem(Space.ACTS, 0, data)
    addr = 3 * stride
    got = link.read_mem(Space.ACTS, addr, n_entries * stride, entry=layout)
    assert got == b"".join(data[a:a + used] for a in range(addr, addr + n_entries * stride, stride))
    # frames of whole entries, each at most max_payload bytes of the space
    assert dev.executed[Command.READ_MEM] == -(-n_entries * stride // (max_payload // stride * stride))


@pytest.mark.parametrize("layout, max_payload, n", [((5, 8), 256, 640), ((3, 4), 64, 100), ((9, 16), 1024, 7)])
def test_compact_write_fills_the_used_bytes_of_each_entry(layout, max_payload, n):
    used, stride = layout
    dev = DevModel(config=CONFIG, max_payload=max_payload, compact={Space.ACTS: layout})
    link, _ = sync_link(dev)
    before = blob(6, dev.info.size(Space.ACTS))
    link.write_mem(Space.ACTS, 0, before)
    data = blob(7, n)
    addr = 2 * stride
    link.write_mem(Space.ACTS, addr, data, entry=layout)
    want = bytearray(before)
    for k in range(0, n, used):  # entry by entry; the last one may be partial
        a = addr + k // used * stride
        want[a:a + len(data[k:k + used])] = data[k:k + used]
    assert bytes(dev.mem[Space.ACTS]) == bytes(want)
    assert link.read_mem(Space.ACTS, addr, -(-n // used) * stride, entry=layout)[:n] == data


def test_compact_read_errors_are_caught_before_sending():
    dev = DevModel(config=CONFIG, compact={Space.ACTS: (5, 8)})
    link, _ = sync_link(dev)
    link.connect()
    with pytest.raises(ValueError, match="multiples of the stride 8, not 0x4 and 16"):
        link.read_mem(Space.ACTS, 4, 16, entry=(5, 8))
    with pytest.raises(ValueError, match="multiples of the stride 8, not 0x0 and 12"):
        link.read_mem(Space.ACTS, 0, 12, entry=(5, 8))
    with pytest.raises(ValueError, match="^entry: a compact entry layout needs a power-of-two stride"):
        link.read_mem(Space.ACTS, 0, 12, entry=(5, 6))
    assert dev.executed[Command.READ_MEM] == 0
    with pytest.raises(ValueError, match="a compact write needs an address that is a multiple of the stride 8"):
        link.write_mem(Space.ACTS, 4, bytes(5), entry=(5, 8))
    with pytest.raises(ValueError, match="exceeds the ACTS space"):  # 2 entries from the last one
        link.write_mem(Space.ACTS, dev.info.size(Space.ACTS) - 8, bytes(6), entry=(5, 8))
    assert dev.executed[Command.WRITE_MEM] == 0
    with pytest.raises(DeviceError, match="BAD_SPACE"):  # the device has no layout for WEIGHTS
        link.read_mem(Space.WEIGHTS, 0, 16, entry=(5, 8))
    old = DevModel(config=CONFIG, compact={Space.ACTS: (5, 8)})
    old._identify = pack_identify(dataclasses.replace(old.info, version=(1, 0)))
    link, _ = sync_link(old)
    with pytest.raises(ValueError, match="compact transfers need protocol 1.1; the device speaks 1.0"):
        link.read_mem(Space.ACTS, 0, 16, entry=(5, 8))


def test_progress_bar(capsys):
    link, _ = sync_link(progress=True)
    data = blob(4, 5000)
    link.write_mem(Space.ACTS, 0, data)
    assert link.read_mem(Space.ACTS, 0, 5000) == data
    err = capsys.readouterr().err
    assert "write ACTS" in err and "read ACTS" in err


def test_threaded_pipe_pair():
    host, device = pipe_pair()
    dev = DevModel(config=CONFIG)
    with dev.serve_in_thread(device):
        link = Link(host, timeout=1.0, retries=2, start_seq=250)  # seq wraps past 255
        link.connect()
        data = blob(5, 8 * 1024)
        link.write_mem(Space.WEIGHTS, 0, data)
        assert link.read_mem(Space.WEIGHTS, 0, len(data)) == data
        assert link.seq < 250
        link.close()


def test_run_status_and_counters():
    link, dev = sync_link(DevModel(run_polls=3, run_cycles=900))
    link.connect()
    link.write_mem(Space.DESC, 0, b"\x01\x02\x03\x04")
    link.run(0)
    with pytest.raises(DeviceError, match="device refused RUN: BUSY") as ei:
        link.run(0)
    assert ei.value.status is Status.BUSY
    with pytest.raises(DeviceError, match="BUSY"):
        link.write_mem(Space.ACTS, 0, b"x")
    st = link.status()
    assert st.busy and not st.done and st.cycles == 300
    st = link.wait_idle()
    assert not st.busy and st.done and st.cycles == 900 and st.run_status is Status.OK
    assert dev.run_address == 0 and dev.executed[Command.RUN] == 1
    assert st.counter(DevCounter.FRAMES_OK) > 0
    link.reset_counters()
    assert link.status().counters == (1,) + (0,) * 7  # the STATUS frame itself


def test_run_fault_is_reported():
    def executor(model, address):
        raise RuntimeError("descriptor invalid")

    link, _ = sync_link(DevModel(executor=executor))
    link.run(0)
    st = link.wait_idle()
    assert st.run_status is Status.RUN_FAULT


# ---------------------------------------------------------------------------------------------
# Device model: idempotence, counters, replay


def _feed_frames(dev: DevModel, wire: bytes) -> list[Frame]:
    return [e for e in FrameDecoder().feed(dev.feed(wire))]


def test_retransmission_is_replayed_not_reexecuted():
    dev = DevModel()
    req = encode_frame(Command.WRITE_MEM, 5, pack_write_mem(Space.ACTS, 0, b"abc"))
    first = dev.feed(req)
    again = dev.feed(req)
    assert first == again
    assert dev.executed[Command.WRITE_MEM] == 1 and len(dev.write_log) == 1
    assert dev.counter(DevCounter.DUPLICATE) == 1
    # Same seq, different content (a host that restarted): executed, counted out of order.
    other = encode_frame(Command.WRITE_MEM, 5, pack_write_mem(Space.ACTS, 0, b"xyz"))
    (resp,) = _feed_frames(dev, other)
    assert resp.code == ack_code(Command.WRITE_MEM) and dev.mem[Space.ACTS][:3] == b"xyz"
    assert dev.executed[Command.WRITE_MEM] == 2 and dev.counter(DevCounter.OUT_OF_ORDER) == 1
    # seq + 1 is in order.
    _feed_frames(dev, encode_frame(Command.STATUS, 6))
    assert dev.counter(DevCounter.OUT_OF_ORDER) == 1


def test_device_naks_and_counts_bad_frames():
    dev = DevModel()
    good = encode_frame(Command.STATUS, 9)
    bad = bytearray(good)
    bad[3] ^= 0x01
    (nak,) = _feed_frames(dev, bytes(bad))
    assert nak.code == NAK_CODE and unpack_nak(nak.payload)[0] is Status.BAD_CRC
    (nak,) = _feed_frames(dev, encode_frame(0x55, 10))
    assert nak.seq == 10 and unpack_nak(nak.payload) == (Status.UNKNOWN_CMD, 0x55)
    (nak,) = _feed_frames(dev, encode_frame(Command.RUN, 11, b"\x00"))
    assert unpack_nak(nak.payload) == (Status.BAD_ARG, Command.RUN)
    (nak,) = _feed_frames(dev, encode_frame(Command.WRITE_MEM, 12, b"\x03" + bytes(4) + b"x"))
    assert unpack_nak(nak.payload)[0] is Status.BAD_SPACE
    (nak,) = _feed_frames(dev, b"\x00\x05\x01\x02\x03\x04\x00")  # COBS ok, too short
    assert unpack_nak(nak.payload)[0] is Status.BAD_FRAME
    long = encode_frame(Command.WRITE_MEM, 13, bytes(MAX_PAYLOAD), max_payload=MAX_PAYLOAD)
    small = DevModel(max_payload=64)
    (nak,) = _feed_frames(small, long)
    assert nak.seq == 13 and unpack_nak(nak.payload)[0] is Status.BAD_LENGTH
    assert small.counter(DevCounter.BAD_LENGTH) == 1
    assert dev.feed(b"\x00\x00\x00") == b""  # empty frames are ignored
    c = dev.counters
    assert (c[DevCounter.BAD_CRC], c[DevCounter.UNKNOWN_CMD], c[DevCounter.BAD_ARG], c[DevCounter.BAD_FRAME]) == (1, 1, 2, 1)
    silent = DevModel(nak_on_error=False)
    assert silent.feed(bytes(bad)) == b"" and silent.counter(DevCounter.BAD_CRC) == 1


class LaggyPipe(BytePipe):
    """Delivers each device answer only on the second read after it was produced, so the host
    times out, retransmits, and then receives the late original and the replay together."""

    def __init__(self, inner: BytePipe):
        self.inner = inner
        self._skip = False

    def write(self, data):
        self.inner.write(data)
        self._skip = not self._skip

    def read(self, n, timeout):
        if self._skip:
            return b""
        return self.inner.read(n, timeout)

    def close(self):
        self.inner.close()


def test_late_and_duplicate_responses_are_suppressed():
    dev = DevModel()
    link = Link(LaggyPipe(DevModelPipe(dev)), timeout=0.05, retries=3, start_seq=0)
    data = blob(6, 4000)
    link.write_mem(Space.ACTS, 0, data)
    assert link.read_mem(Space.ACTS, 0, len(data)) == data
    n = link.stats.requests
    assert link.stats.timeouts == n and link.stats.retransmits == n
    assert link.stats.stale == n  # the replay of each answer was discarded
    assert dev.counter(DevCounter.DUPLICATE) == n
    assert dev.executed[Command.WRITE_MEM] == len(dev.write_log) == -(-len(data) // (MAX_PAYLOAD - 5))


# ---------------------------------------------------------------------------------------------
# Fault injection

FAULT_CASES = [  # (seed, total per-byte fault rate, frame payload cap)
    (11, 0.0005, None),
    (12, 0.002, 512),
    (13, 0.005, 256),
    (14, 0.01, 128),
    (15, 0.02, 64),
]


@pytest.mark.parametrize("seed,rate,max_payload", FAULT_CASES,
                         ids=[f"seed{s}-rate{r}-mp{m or MAX_PAYLOAD}" for s, r, m in FAULT_CASES])
def test_faults_both_directions(seed, rate, max_payload):
    dev = DevModel(config=CONFIG, sizes={Space.WEIGHTS: 16384, Space.ACTS: 4096, Space.DESC: 256})
    pipe = FaultyPipe(DevModelPipe(dev), seed=seed, flip=rate / 4, drop=rate / 4, dup=rate / 4, insert=rate / 4,
                      burst=3)
    link = Link(pipe, timeout=0.05, retries=200, start_seq=seed, max_payload=max_payload)
    info = link.connect()
    assert info.config_dict() == CONFIG
    data = blob(seed, 12_000)
    link.write_mem(Space.WEIGHTS, 1000, data)
    link.write_mem(Space.ACTS, 0, data[:4096])
    link.run(16)
    st = link.wait_idle()
    assert st.done and st.run_status is Status.OK
    assert link.read_mem(Space.WEIGHTS, 1000, len(data)) == data
    assert link.read_mem(Space.ACTS, 0, 4096) == data[:4096]
    assert bytes(dev.mem[Space.WEIGHTS][1000:1000 + len(data)]) == data

    # Every write took effect exactly once, whatever was resent.
    chunk = link.max_payload - WRITE_HEADER_BYTES
    n_writes = -(-len(data) // chunk) + -(-4096 // chunk)
    assert dev.executed[Command.WRITE_MEM] == len(dev.write_log) == n_writes
    assert len({(s, a) for _, s, a, _ in dev.write_log}) == n_writes
    assert dev.executed[Command.RUN] == 1

    # The faults happened and were detected on the side that received them.
    assert pipe.faults("tx") > 0 and pipe.faults("rx") > 0
    c = link.status().counters
    dev_detected = c[DevCounter.BAD_CRC] + c[DevCounter.BAD_FRAME] + c[DevCounter.BAD_LENGTH]
    assert dev_detected > 0
    assert link.stats.rx_errors > 0
    assert link.stats.retransmits == link.stats.timeouts + link.stats.transport_naks > 0
    # Some answers were lost after the request had been executed: the retransmission was replayed.
    assert c[DevCounter.DUPLICATE] > 0


def test_faults_threaded_real_timeouts():
    host, device = pipe_pair()
    dev = DevModel()
    faulty = FaultyPipe(host, seed=21, flip=0.001, drop=0.001, dup=0.001, insert=0.001)
    with dev.serve_in_thread(device):
        link = Link(faulty, timeout=0.05, retries=100, start_seq=0, max_payload=256)
        data = blob(21, 6000)
        link.write_mem(Space.WEIGHTS, 0, data)
        assert link.read_mem(Space.WEIGHTS, 0, len(data)) == data
        assert dev.executed[Command.WRITE_MEM] == -(-6000 // (256 - 5))
        assert faulty.faults() > 0 and link.stats.retransmits > 0
        link.close()


@pytest.mark.parametrize("threaded", [False, True], ids=["sync", "thread"])
def test_total_loss_times_out_after_retries(threaded):
    retries, timeout = 3, 0.04
    if threaded:
        host, device = pipe_pair()
        dev = DevModel()
        server = dev.serve_in_thread(device)
    else:
        host, dev, server = DevModelPipe(DevModel()), None, None
    pipe = FaultyPipe(host, seed=31, drop=1.0)
    link = Link(pipe, timeout=timeout, retries=retries, start_seq=0)
    t0 = time.monotonic()
    with pytest.raises(LinkTimeout, match=r"IDENTIFY \(seq 0\): no valid answer after 4 attempt\(s\) of 0.04 s"):
        link.identify()
    elapsed = time.monotonic() - t0
    assert link.stats.frames_sent == retries + 1 and link.stats.timeouts == retries + 1
    assert elapsed < (retries + 1) * timeout + 1.0
    if threaded:
        assert elapsed >= (retries + 1) * timeout * 0.9
        server.stop()


def test_lost_answers_do_not_repeat_writes():
    # Every answer is lost: the host gives up, but the device executed the write exactly once.
    dev = DevModel()
    pipe = FaultyPipe(DevModelPipe(dev), seed=32, drop=1.0, directions="rx")
    link = Link(pipe, timeout=0.02, retries=5, start_seq=0)
    with pytest.raises(LinkTimeout):
        link.transact(Command.WRITE_MEM, pack_write_mem(Space.ACTS, 8, b"once"))
    assert dev.executed[Command.WRITE_MEM] == 1 and dev.counter(DevCounter.DUPLICATE) == 5
    assert dev.mem[Space.ACTS][8:12] == b"once"


def test_persistent_transport_naks_raise_link_error():
    # A device with a smaller buffer than the host assumes (no connect()): every frame overflows.
    link, dev = sync_link(DevModel(max_payload=64), retries=2)
    with pytest.raises(LinkError, match=r"WRITE_MEM \(seq 0\): failed after 3 attempt\(s\); last answer: NAK BAD_LENGTH"):
        link.transact(Command.WRITE_MEM, pack_write_mem(Space.ACTS, 0, bytes(200)))
    assert dev.executed[Command.WRITE_MEM] == 0 and dev.counter(DevCounter.BAD_LENGTH) == 3


# ---------------------------------------------------------------------------------------------
# A real serial port: pyserial on a pseudo-terminal


def test_serial_port_over_pty():
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    dev = DevModel(config=CONFIG)
    server = dev.serve_in_thread(FdPipe(master))
    try:
        with Link(SerialPipe(os.ttyname(slave), baudrate=3_000_000), timeout=1.0, retries=3) as link:
            assert link.connect().config_dict() == CONFIG
            data = blob(41, 6 * 1024)
            link.write_mem(Space.WEIGHTS, 64, data)
            assert link.read_mem(Space.WEIGHTS, 64, len(data)) == data
            assert link.stats.retransmits == 0
    finally:
        server.stop()
        os.close(slave)
        os.close(master)
    assert not server.thread.is_alive()


def test_serial_pipe_bad_port():
    with pytest.raises(PipeClosed, match="cannot open serial port '/dev/nonexistent-hadahw'"):
        SerialPipe("/dev/nonexistent-hadahw", 1_000_000)
    with pytest.raises(ValueError, match="baudrate must be a positive integer"):
        SerialPipe("loop://", 0)


def test_serial_pipe_loop_url():
    pipe = SerialPipe("loop://", 115200)
    pipe.write(b"hello")
    got = b""
    while len(got) < 5:
        chunk = pipe.read(5, 0.5)
        assert chunk
        got += chunk
    assert got == b"hello" and pipe.read(10, 0.01) == b""
    pipe.close()


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors, before anything is sent; never wrong data


def test_bad_arguments_name_the_parameter():
    link, dev = sync_link(DevModel(align=4, sizes={Space.WEIGHTS: 1024, Space.ACTS: 256, Space.DESC: 64}))
    with pytest.raises(ValueError, match=r"cmd must be a Command \(IDENTIFY, .*\), not 0x55"):
        link.transact(0x55)
    with pytest.raises(TypeError, match="cmd must be a Command, not str"):
        link.transact("IDENTIFY")
    with pytest.raises(ValueError, match=r"payload is 1025 bytes; the limit is 1024 \(max_payload\)"):
        link.transact(Command.WRITE_MEM, bytes(1025))
    with pytest.raises(TypeError, match="payload must be bytes-like, not str"):
        link.transact(Command.WRITE_MEM, "abc")
    with pytest.raises(ValueError, match=r"space must be one of WEIGHTS, ACTS, DESC, not 9"):
        link.write_mem(9, 0, b"abcd")
    with pytest.raises(ValueError, match=r"address range \[0x3FC, 0x404\) exceeds the WEIGHTS space \(1024 bytes\)"):
        link.write_mem(Space.WEIGHTS, 1020, bytes(8))
    with pytest.raises(ValueError, match=r"address must be in \[0, 4294967295\], not -4"):
        link.read_mem(Space.ACTS, -4, 4)
    with pytest.raises(ValueError, match="address 0x2 is not a multiple of the device alignment 4"):
        link.read_mem(Space.ACTS, 2, 4)
    with pytest.raises(ValueError, match="len\\(data\\) 3 is not a multiple of the device alignment 4"):
        link.write_mem(Space.ACTS, 0, b"abc")
    with pytest.raises(ValueError, match="address 0x40 is outside the DESC space"):
        link.run(64)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        Link(DevModelPipe(dev), timeout=0)
    with pytest.raises(ValueError, match=r"max_payload must be in \[64, 1024\], not 8"):
        Link(DevModelPipe(dev), max_payload=8)
    with pytest.raises(TypeError, match="pipe must be a BytePipe"):
        Link(object())
    assert dev.executed[Command.WRITE_MEM] == dev.executed[Command.READ_MEM] == 0
    assert link.stats.requests == 1  # only the IDENTIFY of connect() went out


def test_device_refusals_raise_device_error():
    link, dev = sync_link(DevModel(align=4, sizes={Space.WEIGHTS: 1024, Space.ACTS: 256, Space.DESC: 64}))
    for payload, status in [
        (pack_read_mem(Space.WEIGHTS, 1020, 8), Status.BAD_ADDRESS),
        (pack_read_mem(Space.WEIGHTS, 2, 4), Status.BAD_ALIGN),
        (pack_read_mem(Space.WEIGHTS, 0, 1028), Status.BAD_ARG),
        (b"\x07" + bytes(4) + b"\x04\x00", Status.BAD_SPACE),
    ]:
        with pytest.raises(DeviceError, match=f"device refused READ_MEM: {status.name}") as ei:
            link.transact(Command.READ_MEM, payload)
        assert ei.value.status is status and ei.value.cmd is Command.READ_MEM
    with pytest.raises(DeviceError, match="device refused RUN: BAD_ADDRESS"):
        link.transact(Command.RUN, pack_run(64))
    with pytest.raises(DeviceError, match="device refused IDENTIFY: BAD_ARG"):
        link.transact(Command.IDENTIFY, b"\x00")
    assert dev.counter(DevCounter.BAD_ARG) == 6


class _LyingDevice(DevModel):
    """Answers READ_MEM with one byte too few and WRITE_MEM with a wrong echo."""

    def _execute(self, cmd, seq, payload):
        out = super()._execute(cmd, seq, payload)
        if cmd is Command.READ_MEM:
            return out[:-1]
        if cmd is Command.WRITE_MEM:
            return bytes([out[0], (out[1] + 1) & 0xFF]) + out[2:]
        return out


def test_link_never_returns_wrong_data_silently():
    link, _ = sync_link(_LyingDevice())
    with pytest.raises(LinkError, match=r"READ_MEM of 16 bytes at ACTS:0x0 returned 15 bytes"):
        link.read_mem(Space.ACTS, 0, 16)
    with pytest.raises(LinkError, match=r"WRITE_MEM of 4 bytes at ACTS:0x10 was acknowledged as 4 bytes at ACTS:0x11"):
        link.write_mem(Space.ACTS, 16, b"abcd")


def test_wire_example_matches_docs():
    # The byte-level example in the report: WRITE_MEM seq 7, ACTS @ 0x10, data 61 62 63 00.
    wire = encode_frame(Command.WRITE_MEM, 7, pack_write_mem(Space.ACTS, 0x10, b"abc\x00"))
    assert wire.hex(" ") == "00 04 02 07 09 03 01 10 01 01 04 61 62 63 03 82 c5 00"
    assert decode_frame(wire) == Frame(Command.WRITE_MEM, 7, b"\x01\x10\x00\x00\x00abc\x00")


def test_serve_stops_on_closed_pipe():
    host, device = pipe_pair()
    stop = threading.Event()
    t = threading.Thread(target=DevModel().serve, args=(device, stop), daemon=True)
    t.start()
    host.close()
    t.join(2.0)
    assert not t.is_alive()
