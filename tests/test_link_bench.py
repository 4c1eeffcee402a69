"""bench/link_bench.py: the byte counting and the wire-log arithmetic its figures rest on.

* :class:`CountingPipe` around a real ``Link`` + ``DevModel`` attributes to each transaction
  exactly the bytes of one request frame and one reply frame: the counts equal a frame length
  computed here from first principles (header, CRC-16/CCITT-FALSE via ``binascii``, COBS length
  from the zero-free runs), not with :mod:`hadahw.protocol`'s framing;
* :func:`analyse_sim` recovers a known turnaround, reply gap and busy time from a synthetic
  wire log, and refuses a log that does not match the host's bytes.
"""

from __future__ import annotations

import binascii
import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from hadahw.protocol import Command, Space
from hadahw.sw.devmodel import DevModel, DevModelPipe
from hadahw.sw.link import Link

_PATH = Path(__file__).resolve().parent.parent / "bench" / "link_bench.py"
_spec = importlib.util.spec_from_file_location("link_bench", _PATH)
link_bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("link_bench", link_bench)
_spec.loader.exec_module(link_bench)


def cobs_len(raw: bytes) -> int:
    """COBS length of ``raw`` (minimal form): one code byte per block; a block ends at each zero
    and after 254 non-zero bytes, and a data-final run that fills its last block needs no more."""
    runs = raw.split(b"\x00")
    n = len(raw) + 1 + sum(len(r) // 254 for r in runs)
    if runs[-1] and len(runs[-1]) % 254 == 0:
        n -= 1
    return n


def wire_len(code: int, seq: int, payload: bytes) -> int:
    body = struct.pack("<BBH", code, seq, len(payload)) + payload
    raw = body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")  # CRC-16/CCITT-FALSE
    return 2 + cobs_len(raw)  # two 0x00 delimiters


def test_cobs_len_reference():
    # Spot values worked out by hand: the formula the test rests on.
    assert cobs_len(b"") == 1
    assert cobs_len(b"\x00") == 2
    assert cobs_len(b"\x11" * 253) == 254
    assert cobs_len(b"\x11" * 254) == 255      # one full block, no empty block after it
    assert cobs_len(b"\x11" * 255) == 257
    assert cobs_len(b"\x11" * 254 + b"\x00") == 257  # full block, then the code of the empty block


@pytest.mark.parametrize("pattern", ["zeros", "ones", "random"])
def test_counting_pipe_matches_frame_lengths(pattern):
    rng = np.random.default_rng(3)
    model = DevModel(max_payload=1024)
    pipe = link_bench.CountingPipe(DevModelPipe(model))
    link = Link(pipe, start_seq=200)  # seq wraps through 0 below (a zero byte in the header)
    link.connect()
    chunk = link.max_payload - 5
    for n in (1, 100, 249, 250, 253, 254, 600, chunk):
        data = {"zeros": bytes(n), "ones": b"\xff" * n, "random": rng.integers(0, 256, n, dtype=np.uint8).tobytes()}[
            pattern]
        for space, addr in ((Space.ACTS, 8), (Space.WEIGHTS, 0x10203)):
            link.write_mem(space, addr, data)
            seq = link.seq
            req = struct.pack("<BI", space, addr) + data
            ack = struct.pack("<BIH", space, addr, n)
            assert pipe.last() == (wire_len(Command.WRITE_MEM, seq, req), wire_len(0x80 | Command.WRITE_MEM, seq, ack))
            assert link.read_mem(space, addr, n) == data
            seq = link.seq
            assert pipe.last() == (wire_len(Command.READ_MEM, seq, struct.pack("<BIH", space, addr, n)),
                                   wire_len(0x80 | Command.READ_MEM, seq, data))
    # Every byte is attributed to exactly one transaction.
    total_req = sum(len(req) for _, req, _ in pipe.transactions)
    total_rep = sum(len(rep) for _, _, rep in pipe.transactions)
    assert (total_req, total_rep) == (link.stats.bytes_sent, link.stats.bytes_received)
    assert link.stats.requests == len(pipe.transactions)


def _synthetic(turn_cycles: float, gap_after: int | None, *, busy=(300, 5000), tamper=False):
    """A recorded RUN transaction and a wire log with a known timing (10 ns clock, divisor 6)."""
    model = DevModel(run_polls=1)
    pipe = link_bench.CountingPipe(DevModelPipe(model))
    link = Link(pipe, start_seq=0)
    pipe.phase = "x"
    link.run(0)
    (phase, req, rep), = pipe.transactions
    P, D = 10_000, 6
    bit = D * P
    rx, t = [], 1_000 * P + P // 2  # rx moves on falling edges
    for b in req:
        rx.append([t, t + 10 * bit, b])
        t += 10 * bit
    end = t
    tx, t = [], end + round(turn_cycles * P)
    for i, b in enumerate(bytes(rep)):
        tx.append([t, b ^ 1 if tamper and i == 1 else b])
        t += 10 * bit + (7 * P if i == gap_after else 0)
    busy_log = [[0, 0], [end + busy[0] * P, 1], [end + (busy[0] + busy[1]) * P, 0]]
    sim = {"transactions": pipe.transactions,
           "wire": {"period_ps": P, "divisor": D, "rx": rx, "tx": tx, "busy": busy_log}}
    return sim


def test_analyse_sim_recovers_timing():
    an = link_bench.analyse_sim(_synthetic(123.5, None), 18e6)
    (t,) = an["transactions"]
    assert (t["cmd"], t["turnaround"], t["reply_gap"], t["request_gap"]) == ("RUN", 123.5, 0, 0)
    assert (t["busy_start"], t["busy_cycles"]) == (300, 5000)
    assert an["baud"] == 3_000_000

    (t,) = link_bench.analyse_sim(_synthetic(40, 2), 18e6)["transactions"]
    assert (t["turnaround"], t["reply_gap"]) == (40, 7)


def test_analyse_sim_rejects_a_log_that_is_not_the_hosts_traffic():
    with pytest.raises(RuntimeError, match="does not match"):
        link_bench.analyse_sim(_synthetic(50, None, tamper=True), 18e6)
