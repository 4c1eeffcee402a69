"""Host-link benchmark: payload throughput and per-inference latency, split into transfer and compute.

    python bench/link_bench.py [--bauds 1000000 3000000] [--models digits-mlp digits-cnn]
                               [--inferences 2] [--epochs 5] [--checkpoint MODEL=CKPT ...]
                               [--host-repeats 200] [--out bench/results]

Three measurements, combined by arithmetic that the Markdown spells out:

1. **Protocol efficiency** (exact, pure Python).  The real :class:`hadahw.sw.link.Link` talks to
   :class:`hadahw.sw.devmodel.DevModel` (configured as the board's HostLink: same spaces,
   ``max_payload``, IDENTIFY config) through :class:`CountingPipe`; the wire bytes each way are
   counted per transaction (WRITE_MEM / READ_MEM at several sizes, RUN, STATUS, IDENTIFY).
2. **Gateware timing** (measured in simulation, in clock cycles).  The board design
   (:class:`hadahw.rtl.top.UARTSystem`: UART, FIFO, HostLink, HadaCore) runs under Verilator
   (:class:`hadahw.sim.uart_board.SimulatedBoard`) at the *board's* UART divisor
   (``round(clock / baud)``: 30 at 30 MHz and 1 Mbaud, 10 at 3 Mbaud), with the bench's wire log
   on: the simulated time of every byte on ``rx``/``tx`` and of every edge of the core's ``busy``.
   Per transaction: the turnaround (end of the request's last stop bit to the reply's first start
   bit), the reply's span on the wire against ``bytes x 10 x divisor`` (gaps between reply
   bytes), and per RUN the busy time against STATUS's cycle count and
   :func:`hadahw.program.predict_cycles`.  The same simulation runs a weight load and inferences
   of trained digits HadaNets (outputs checked against the golden model).  Host-side gaps in
   simulation are wall-clock artefacts (the simulator is ~1000x slower than the board) and are
   never used.
3. **Host software overhead** (wall time, this machine).  The same Link over a real
   pseudo-terminal (pyserial ``SerialPipe`` on the slave) with a DevModel serving the master in a
   separate process; medians of ``--host-repeats`` transactions, plus the in-process costs of the
   Link and of the DevModel alone.

Derived: the link-bound time of a transaction at baud ``B`` (divisor ``D``, clock ``f``)::

    t = ((request wire bytes + reply wire bytes) * 10 * D + turnaround cycles) / f

(8N1: 10 bit times per byte; a host that sends each request as soon as the previous reply ended,
no USB or software latency); payload throughput = payload bytes / t, against the line rate
``B / 10`` bytes/s.  Per inference: input WRITE_MEMs + RUN + STATUS polls back to back until one
reports the run finished + output READ_MEMs, with the run's busy time as measured.

Writes ``link.json`` (every number, settings, date, machine, versions) and ``link.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from hadahw.protocol import (  # noqa: E402
    NAK_CODE,
    WRITE_HEADER_BYTES,
    Command,
    Space,
    ack_code,
    decode_frame,
    unpack_read_mem,
    unpack_write_mem,
)
from hadahw.sw.transport import BytePipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: Payload sizes of the WRITE_MEM / READ_MEM sweeps (the largest chunk is added per device).
SWEEP_SIZES = (1, 16, 64, 128)
BITS_PER_BYTE = 10  # 8N1: start + 8 data + stop


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Pipes that count and record


class CountingPipe(BytePipe):
    """Wraps a :class:`BytePipe` and keeps every byte that crosses it.

    Each :meth:`write` call is one request frame for a :class:`~hadahw.sw.link.Link` on a clean
    line (stop-and-wait, no retransmission), so ``transactions`` is the list of
    ``[phase, request bytes, reply bytes]``: the reply is everything read until the next write.
    ``phase`` is the label current at the write (set it with :attr:`phase`).
    """

    def __init__(self, inner: BytePipe):
        self.inner = inner
        self.phase = ""
        self.transactions: list[list] = []

    def write(self, data: bytes) -> None:
        self.transactions.append([self.phase, bytes(data), bytearray()])
        self.inner.write(data)

    def read(self, n: int, timeout: float) -> bytes:
        data = self.inner.read(n, timeout)
        if data:
            if not self.transactions:
                raise RuntimeError(f"{len(data)} bytes arrived before any request")
            self.transactions[-1][2] += data
        return data

    def close(self) -> None:
        self.inner.close()

    def last(self) -> tuple[int, int]:
        """``(request bytes, reply bytes)`` of the last transaction."""
        _, req, rep = self.transactions[-1]
        return len(req), len(rep)


@dataclasses.dataclass
class Txn:
    """One request/response as seen on the wire (decoded from the recorded bytes)."""

    phase: str
    cmd: str
    space: str | None          # WRITE_MEM / READ_MEM
    payload: int               # data bytes moved: WRITE_MEM data, READ_MEM length, else request payload
    req_bytes: int             # wire bytes host -> device (delimiters included)
    rep_bytes: int             # wire bytes device -> host
    rep_payload: int           # payload of the reply

    @property
    def key(self) -> str:
        return f"{self.cmd} {self.space}" if self.space else self.cmd


def decode_txn(phase: str, req: bytes, rep: bytes) -> Txn:
    """Decode one recorded transaction; raises if the reply is not the request's ACK."""
    f_req = decode_frame(req)
    f_rep = decode_frame(bytes(rep))
    cmd = Command(f_req.code)
    if f_rep.code == NAK_CODE or f_rep.code != ack_code(cmd) or f_rep.seq != f_req.seq:
        raise RuntimeError(f"{cmd.name}: unexpected reply code 0x{f_rep.code:02X} seq {f_rep.seq}")
    space, payload = None, len(f_req.payload)
    if cmd == Command.WRITE_MEM:
        w = unpack_write_mem(f_req.payload)
        space, payload = w.space.name + (" compact" if w.compact else ""), len(w.data)
    elif cmd == Command.READ_MEM:
        r = unpack_read_mem(f_req.payload)
        # a compact read's payload is what it returns (the used bytes of each entry)
        space, payload = r.space.name + (" compact" if r.compact else ""), len(f_rep.payload)
    return Txn(phase, cmd.name, space, payload, len(req), len(rep), len(f_rep.payload))


# ---------------------------------------------------------------------------------------------
# Device description shared by the model and the simulation


def board_config(layers=None):
    """The default board build's configuration (``python -m hadahw.build --board icebreaker``: board
    defaults, automatic size), for the network's betas, delta format and activation bits when
    ``layers`` are given (:func:`hadahw.build.network_board_config`)."""
    from hadahw.build import board_build_config, network_board_config
    if layers is None:
        return board_build_config("--board", "icebreaker", "--beta", "16")
    return network_board_config(layers)


def device_params(cfg) -> dict:
    """What the board's HostLink reports: spaces, max_payload, IDENTIFY config (from the gateware's
    own constructor defaults, not restated here)."""
    import inspect

    from hadahw.program import MemoryMap
    from hadahw.rtl.top import UARTSystem, config_json
    max_payload = inspect.signature(UARTSystem.__init__).parameters["max_payload"].default
    mm = MemoryMap(cfg)
    sizes = {Space(s): int(v) for s, v in mm.space_sizes.items()}
    return {"sizes": sizes, "max_payload": int(max_payload), "config": config_json(cfg).decode(),
            "compact": dict(mm.compact_spaces)}


def make_devmodel(dev: dict, **kw):
    from hadahw.sw.devmodel import DevModel
    return DevModel(sizes=dev["sizes"], max_payload=dev["max_payload"], config=dev["config"], compact=dev["compact"],
                    **kw)


# ---------------------------------------------------------------------------------------------
# The transaction sweep (run against the DevModel and the simulated board alike)


def sweep(link, pipe: CountingPipe, chunk: int, read_max: int, *, entry=None, seed: int = 0,
          repeats: int = 2) -> None:
    """WRITE_MEM (random data) and READ_MEM at each sweep size to WEIGHTS and ACTS, then STATUS.

    ``chunk``: the largest WRITE_MEM data per frame; ``read_max``: the largest READ_MEM.  With
    ``entry`` (ACTS's compact layout), also compact transfers of 1, 4, 16 and the most entries a
    frame holds.
    """
    rng = np.random.default_rng(seed)
    pipe.phase = "sweep"
    for space in (Space.WEIGHTS, Space.ACTS):
        for n in sorted({*SWEEP_SIZES, chunk}):
            for _ in range(repeats):
                link.write_mem(space, 0, rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        for n in sorted({*SWEEP_SIZES, read_max}):
            for _ in range(repeats):
                link.read_mem(space, 0, n)
    if entry is not None:
        used, stride = entry
        for k in sorted({1, 4, 16, chunk // used}):
            for _ in range(repeats):
                link.write_mem(Space.ACTS, 0, rng.integers(0, 256, k * used, dtype=np.uint8).tobytes(), entry=entry)
        for k in sorted({1, 4, 16, read_max // stride}):
            for _ in range(repeats):
                link.read_mem(Space.ACTS, 0, k * stride, entry=entry)
    for _ in range(repeats):
        link.status()


def protocol_efficiency(dev: dict) -> dict:
    """Part 1: wire bytes per transaction, Link against DevModel (exact, no timing)."""
    from hadahw.sw.devmodel import DevModelPipe
    from hadahw.sw.link import Link

    model = make_devmodel(dev, run_polls=1)
    pipe = CountingPipe(DevModelPipe(model))
    link = Link(pipe, start_seq=0)
    pipe.phase = "connect"
    info = link.connect()
    chunk = link.max_payload - WRITE_HEADER_BYTES
    sweep(link, pipe, chunk, link.max_payload, entry=dev["compact"].get(Space.ACTS))
    # Extremes of COBS: data without zero bytes (one code byte per 254) and all zeros.  A WRITE_MEM
    # frame of this device never holds 254 bytes without a zero (its header and address fields hold
    # one, and data + CRC are at most 253 bytes); a 256-byte READ_MEM reply can.
    for name, byte in (("0x00", 0), ("0xFF", 0xFF)):
        pipe.phase = f"pattern {name}"
        link.write_mem(Space.ACTS, 0, bytes([byte]) * link.max_payload)  # two frames
        link.read_mem(Space.ACTS, 0, link.max_payload)
    pipe.phase = "run"
    link.run(0)
    link.status()
    rows = {}
    for phase, req, rep in pipe.transactions:
        t = decode_txn(phase, req, rep)
        if phase.startswith("pattern") and t.payload not in (chunk, link.max_payload):
            continue  # the second, short frame of a pattern write
        if phase.startswith("pattern"):
            data = phase.removeprefix("pattern ")
        else:
            data = "random" if t.cmd in ("WRITE_MEM", "READ_MEM") else ""
        r = rows.setdefault((data, t.key, t.payload),
                            {"cmd": t.cmd, "space": t.space, "payload": t.payload, "data": data,
                             "req_bytes": set(), "rep_bytes": set(), "rep_payload": t.rep_payload})
        r["req_bytes"].add(t.req_bytes)
        r["rep_bytes"].add(t.rep_bytes)
    out = []
    for r in rows.values():
        r["req_bytes"], r["rep_bytes"] = sorted(r["req_bytes"]), sorted(r["rep_bytes"])
        out.append(r)
    return {"max_payload": info.max_payload, "write_chunk": chunk, "read_chunk": link.max_payload,
            "identify_payload": len(decode_frame(bytes(pipe.transactions[0][2])).payload), "rows": out}


# ---------------------------------------------------------------------------------------------
# Networks


def load_networks(models, checkpoints: dict, epochs: int) -> dict:
    """Trained digits HadaNets (beta_w=16, beta_a=2), lowered; ``{name: dict}``."""
    from hadahw.lower_net import lower_network_full
    from hadahw.train import fit, load_checkpoint, load_split

    split = load_split()
    nets = {}
    for name in models:
        t0 = time.perf_counter()
        if name in checkpoints:
            model, meta = load_checkpoint(checkpoints[name])
            source = checkpoints[name]
        else:
            res = fit(name, beta_w=16, beta_a=2, epochs=epochs, seed=0, quiet=True, split=split)
            model, meta = res.model, res.meta
            source = f"trained here: {epochs} epochs, seed 0"
        net = lower_network_full(model, split.x_train)
        nets[name] = {"net": net, "meta": meta, "source": source, "split": split}
        log(f"{name}: {source}, test accuracy {meta.get('test_accuracy', float('nan')):.3f} "
            f"({time.perf_counter() - t0:.1f} s)")
    return nets


# ---------------------------------------------------------------------------------------------
# Part 2: the simulated board


def simulate(cfg, dev: dict, divisor: int, nets: dict, inferences: int, workdir: Path) -> dict:
    """Run the sweep, then per network a load and ``inferences`` inferences, on the simulated board
    at ``divisor`` with the wire log on.  Returns the recorded transactions, the wire log and the
    host-side facts (cycles reported, predicted)."""
    from hadahw.lower_net import _input_act, golden_predict
    from hadahw.sim.uart_board import SimulatedBoard
    from hadahw.sw.accelerator import Accelerator
    from hadahw.sw.partition import HybridNetwork

    wire = workdir / f"wire-{divisor}.json"
    runs = []
    t0 = time.perf_counter()
    with SimulatedBoard(cfg, divisor=divisor, wire_log=wire) as board:
        log(f"divisor {divisor}: simulated board ready in {board.start_seconds:.1f} s")
        pipe = CountingPipe(board.open_pipe())
        # Generous timeout: the simulation is slow; a retransmission would spoil the attribution.
        with board.link(pipe=pipe, timeout=30.0, retries=1, start_seq=0) as link:
            pipe.phase = "connect"
            acc = Accelerator(link, expect_config=cfg, run_timeout=600.0)
            if acc.info.max_payload != dev["max_payload"]:
                raise RuntimeError(f"device max_payload {acc.info.max_payload} != {dev['max_payload']}")
            chunk = link.max_payload - WRITE_HEADER_BYTES
            sweep(link, pipe, chunk, link.max_payload, entry=dev["compact"].get(Space.ACTS))
            log(f"divisor {divisor}: sweep done ({time.perf_counter() - t0:.1f} s)")
            for name, nd in nets.items():
                net = nd["net"]
                hyb = HybridNetwork(net.layers, cfg)
                prog = hyb.program
                pipe.phase = f"{name} load"
                t1 = time.perf_counter()
                acc.load(prog)
                log(f"divisor {divisor}: {name} loaded in {time.perf_counter() - t1:.1f} s")
                x = nd["split"].x_test[:inferences].numpy().astype(np.float64)
                want = golden_predict(net.layers, net.input_exponent, x)
                cycles = []

                def device(act):
                    pipe.phase = f"{name} infer"
                    res = acc.infer(act)
                    cycles.append(int(res.cycles))
                    return res.output

                got = np.stack([hyb.run(_input_act(net.layers, net.input_exponent, s), device) for s in x])
                if not np.array_equal(got, want):
                    raise RuntimeError(f"{name}: the simulated hardware differs from the golden model")
                runs.append({"model": name, "placement": hyb.placement, "predicted_cycles": int(prog.predict_cycles()),
                             "status_cycles": cycles, "weight_bytes": len(prog.weight_image),
                             "param_bytes": len(prog.param_image), "desc_bytes": len(prog.desc_image),
                             "input_bytes": prog.input_length, "output_bytes": prog.output_length,
                             "output_values": int(np.prod(prog.output_shape)),
                             "output_value_bytes": prog.output_value_bytes,
                             "entries_per_output": prog.output_spacing,
                             "act_entry_bytes": prog.memory_map.act_entry_bytes,
                             "act_stride": prog.memory_map.act_stride})
                log(f"divisor {divisor}: {name} {inferences} inference(s) equal to the golden model "
                    f"({time.perf_counter() - t0:.1f} s so far)")
            if link.stats.retransmits or link.stats.rx_errors:
                raise RuntimeError(f"the simulated line was not clean: {link.stats}")
            stats = dataclasses.asdict(link.stats)
    wall = time.perf_counter() - t0
    wl = json.loads(wire.read_text())
    return {"divisor": divisor, "transactions": pipe.transactions, "wire": wl, "runs": runs, "link_stats": stats,
            "wall_s": wall}


def crosscheck(sim: dict, dev: dict) -> dict:
    """Feed the simulation's requests of the connect and sweep phases to a fresh DevModel and
    compare its replies with the gateware's (both links start at seq 0).

    Expected: identical, except READ_MEM of ACTS where the core's activation entries are narrower
    than their stride (the padding bytes read back as 0, the DevModel is plain memory): counted as
    ``padding_only`` when the frames have the same length and every differing byte is 0 on the
    gateware's side.  ``other`` must be 0.
    """
    model = make_devmodel(dev, run_polls=1)
    n = same = padding = other = 0
    for phase, req, rep in sim["transactions"]:
        if phase not in ("connect", "sweep"):
            break
        n += 1
        want, got = model.feed(req), bytes(rep)
        if want == got:
            same += 1
            continue
        a, b = decode_frame(want), decode_frame(got)
        t = decode_txn(phase, req, got)
        if (t.cmd == "READ_MEM" and t.space == "ACTS" and len(a.payload) == len(b.payload)
                and all(x == y or y == 0 for x, y in zip(a.payload, b.payload))):
            padding += 1
        else:
            other += 1
    return {"transactions": n, "identical": same, "padding_only": padding, "other": other}


def analyse_sim(sim: dict, clock_hz: float) -> dict:
    """Per-transaction timing from the wire log; checks the log against the host's own bytes."""
    wl = sim["wire"]
    P, D = wl["period_ps"], wl["divisor"]
    byte_cyc = BITS_PER_BYTE * D
    rx, tx = wl["rx"], wl["tx"]
    sent = b"".join(req for _, req, _ in sim["transactions"])
    got = b"".join(bytes(rep) for _, _, rep in sim["transactions"])
    # The log must be exactly the host's traffic, byte for byte, or nothing below means anything.
    if bytes(v for _, _, v in rx) != sent or bytes(v for _, v in tx) != got:
        raise RuntimeError(f"divisor {D}: the wire log does not match the host's bytes "
                           f"({len(rx)}/{len(sent)} rx, {len(tx)}/{len(got)} tx)")
    txns, i, j = [], 0, 0
    for phase, req, rep in sim["transactions"]:
        t = decode_txn(phase, req, bytes(rep))
        r = rx[i:i + len(req)]
        s = tx[j:j + len(rep)]
        i += len(req)
        j += len(rep)
        turn = (s[0][0] - r[-1][1]) / P
        if turn <= 0:
            raise RuntimeError(f"{t.key}: reply started {-turn} cycles before the request ended")
        span = (s[-1][0] - s[0][0]) / P + byte_cyc
        req_span = (r[-1][1] - r[0][0]) / P
        d = dataclasses.asdict(t)
        d.update(turnaround=turn, reply_gap=span - len(rep) * byte_cyc, request_gap=req_span - len(req) * byte_cyc,
                 req_end_ps=r[-1][1], rep_start_ps=s[0][0], rep_end_ps=s[-1][0] + byte_cyc * P)
        txns.append(d)
    # Busy pulses: one per RUN, in order.
    edges = wl["busy"]
    pulses = []
    for (t_a, l_a), (t_b, l_b) in zip(edges, edges[1:]):
        if l_a == 0 and l_b == 1:
            pulses.append([t_b, None])
        elif l_a == 1 and l_b == 0 and pulses and pulses[-1][1] is None:
            pulses[-1][1] = t_b
    runs = [t for t in txns if t["cmd"] == "RUN"]
    if len(pulses) != len(runs) or any(p[1] is None for p in pulses):
        raise RuntimeError(f"divisor {D}: {len(pulses)} busy pulses for {len(runs)} RUNs")
    for t, (rise, fall) in zip(runs, pulses):
        t["busy_start"] = (rise - t["req_end_ps"]) / P   # cycles from the RUN request's end
        t["busy_cycles"] = (fall - rise) / P
    for t in txns:
        del t["req_end_ps"], t["rep_start_ps"], t["rep_end_ps"]
    return {"divisor": D, "period_ps": P, "baud": round(clock_hz / D), "transactions": txns}


# ---------------------------------------------------------------------------------------------
# Derived figures


def txn_cycles(req: int, rep: int, turn: float, D: int) -> float:
    """Link-bound cycles of one transaction: both frames on the wire plus the turnaround."""
    return (req + rep) * BITS_PER_BYTE * D + turn


def summarise_turnaround(an: dict) -> list[dict]:
    """Per (command, space, payload): wire bytes and turnaround/gaps over the sweep's repeats and
    every other transaction of that kind."""
    groups: dict = {}
    for t in an["transactions"]:
        g = groups.setdefault((t["cmd"], t["space"] or "", t["payload"]), [])
        g.append(t)
    rows = []
    for (cmd, space, payload), g in sorted(groups.items()):
        rows.append({"cmd": cmd, "space": space or None, "payload": payload, "count": len(g),
                     "req_bytes": sorted({t["req_bytes"] for t in g}), "rep_bytes": sorted({t["rep_bytes"] for t in g}),
                     "turnaround_min": min(t["turnaround"] for t in g),
                     "turnaround_max": max(t["turnaround"] for t in g),
                     "reply_gap_max": max(t["reply_gap"] for t in g)})
    return rows


def throughput(an: dict, clock_hz: float) -> list[dict]:
    """Payload throughput of back-to-back WRITE_MEM / READ_MEM at each sweep size (sweep phase)."""
    D = an["divisor"]
    baud = clock_hz / D
    line = baud / BITS_PER_BYTE
    groups: dict = {}
    for t in an["transactions"]:
        if t["phase"] == "sweep" and t["cmd"] in ("WRITE_MEM", "READ_MEM"):
            groups.setdefault((t["cmd"], t["space"], t["payload"]), []).append(t)
    rows = []
    for (cmd, space, n), g in sorted(groups.items()):
        cyc = statistics.mean(txn_cycles(t["req_bytes"], t["rep_bytes"], t["turnaround"], D) for t in g)
        wire_only = statistics.mean((t["req_bytes"] + t["rep_bytes"]) * BITS_PER_BYTE * D for t in g)
        bps = n / (cyc / clock_hz)
        rows.append({"cmd": cmd, "space": space, "payload": n, "cycles": cyc, "seconds": cyc / clock_hz,
                     "payload_Bps": bps, "line_fraction": bps / line,
                     "wire_bound_fraction": n * BITS_PER_BYTE * D / wire_only,  # payload / wire bytes
                     "turnaround_fraction": statistics.mean(t["turnaround"] for t in g) / cyc})
    return rows


def phase_time(txns, D, clock_hz) -> dict:
    cyc = sum(txn_cycles(t["req_bytes"], t["rep_bytes"], t["turnaround"], D) for t in txns)
    return {"transactions": len(txns), "payload": sum(t["payload"] for t in txns),
            "req_bytes": sum(t["req_bytes"] for t in txns), "rep_bytes": sum(t["rep_bytes"] for t in txns),
            "turnaround_cycles": sum(t["turnaround"] for t in txns), "cycles": cyc, "seconds": cyc / clock_hz}


def inference_latency(an: dict, model: str, run: dict, clock_hz: float) -> dict:
    """Link-bound latency of one inference at this divisor (see the module doc), from the first
    inference's measured transactions; the weight load once."""
    D = an["divisor"]
    byte_cyc = BITS_PER_BYTE * D
    txns = [t for t in an["transactions"] if t["phase"] == f"{model} infer"]
    load = [t for t in an["transactions"] if t["phase"] == f"{model} load"]
    # Split the inferences at their RUNs: WRITE_MEM ACTS before, STATUS, READ_MEM after.
    per, cur = [], []
    for t in txns:
        if t["cmd"] == "WRITE_MEM" and cur and cur[-1]["cmd"] != "WRITE_MEM":
            per.append(cur)
            cur = []
        cur.append(t)
    per.append(cur)
    first = per[0]
    inp = [t for t in first if t["cmd"] == "WRITE_MEM"]
    run_t = [t for t in first if t["cmd"] == "RUN"]
    stat = [t for t in first if t["cmd"] == "STATUS"]
    out = [t for t in first if t["cmd"] == "READ_MEM"]
    assert len(run_t) == 1 and stat and inp and out, [t["cmd"] for t in first]
    run_t = run_t[0]
    # Timeline in cycles from the end of the RUN request (the host sends each request the moment
    # the previous reply's stop bit ends).  The device samples busy for a STATUS no earlier than
    # the end of its request: assumed exactly then, which may cost one poll more than the board.
    s = stat[-1]
    t_status = txn_cycles(s["req_bytes"], s["rep_bytes"], s["turnaround"], D)
    ack_end = run_t["turnaround"] + run_t["rep_bytes"] * byte_cyc
    busy_end = run_t["busy_start"] + run_t["busy_cycles"]
    k = 0
    while ack_end + k * t_status + s["req_bytes"] * byte_cyc < busy_end:
        k += 1
    wait = (k + 1) * t_status
    t_in, t_out = phase_time(inp, D, clock_hz), phase_time(out, D, clock_hz)
    t_run = phase_time([run_t], D, clock_hz)
    total = t_in["cycles"] + t_run["cycles"] + wait + t_out["cycles"]
    compute = run_t["busy_cycles"]
    transfer_serial = t_in["cycles"] + t_run["cycles"] + t_status + t_out["cycles"]
    return {
        "divisor": D, "baud": round(clock_hz / D),
        "input": t_in, "run": t_run, "output": t_out,
        "status": {"cycles": t_status, "seconds": t_status / clock_hz, "req_bytes": s["req_bytes"],
                   "rep_bytes": s["rep_bytes"], "turnaround": s["turnaround"]},
        "polls": k + 1, "wait_cycles": wait, "wait_seconds": wait / clock_hz,
        "busy_start_cycles": run_t["busy_start"], "compute_cycles": compute, "compute_seconds": compute / clock_hz,
        "total_cycles": total, "total_seconds": total / clock_hz,
        "transfer_serial_cycles": transfer_serial, "transfer_serial_seconds": transfer_serial / clock_hz,
        "not_overlapped_cycles": total - compute, "not_overlapped_seconds": (total - compute) / clock_hz,
        "load": phase_time(load, D, clock_hz),
        "predicted_cycles": run["predicted_cycles"], "status_cycles": run["status_cycles"],
        "busy_cycles_all": [t["busy_cycles"] for p in per for t in p if t["cmd"] == "RUN"],
        # (command, payload) of the transfer transactions: input, RUN, the one STATUS that reports
        # the run finished, output (the polls during the run overlap the compute).
        "kinds": [(t["cmd"], t["payload"]) for t in inp + [run_t]] + [("STATUS", 0)]
                 + [(t["cmd"], t["payload"]) for t in out],
    }


def host_cost(host: dict, dev: dict, cmd: str, payload: int) -> float:
    """Host-software seconds of one transaction on this machine: the pty round trip minus the
    DevModel's own time (part 3), linear in the payload between the 1-byte and the largest
    WRITE_MEM / READ_MEM measured."""
    def est(name):
        return host["pty"][name]["median_s"] - host["devmodel"][name]["median_s"]
    if cmd in ("STATUS", "RUN"):
        return est(cmd)
    hi = dev["max_payload"] - WRITE_HEADER_BYTES if cmd == "WRITE_MEM" else dev["max_payload"]
    lo_t, hi_t = est(f"{cmd} 1 B"), est(f"{cmd} {hi} B")
    return lo_t + (hi_t - lo_t) * (payload - 1) / (hi - 1)


# ---------------------------------------------------------------------------------------------
# Part 3: host software overhead over a pseudo-terminal

_SERVER = r"""
import json, sys, threading
from hadahw.protocol import Space
from hadahw.sw.devmodel import DevModel
from hadahw.sw.transport import FdPipe
fd, dev = int(sys.argv[1]), json.loads(sys.argv[2])
model = DevModel(sizes={Space[k]: v for k, v in dev["sizes"].items()}, max_payload=dev["max_payload"],
                 config=dev["config"], run_polls=1)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
model.serve(FdPipe(fd), stop, poll=0.05)
"""


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def host_overhead(dev: dict, repeats: int) -> dict:
    """Part 3: wall time per transaction over a pty (DevModel in another process), and in-process."""
    from hadahw.sw.devmodel import DevModelPipe
    from hadahw.sw.link import Link
    from hadahw.sw.transport import SerialPipe

    chunk = dev["max_payload"] - WRITE_HEADER_BYTES
    data = np.random.default_rng(1).integers(0, 256, chunk, dtype=np.uint8).tobytes()
    ops = {
        "STATUS": lambda link: link.status(),
        "RUN": lambda link: (link.run(0), link.status()),  # RUN then the STATUS that ends the model's run
        "WRITE_MEM 1 B": lambda link: link.write_mem(Space.ACTS, 0, data[:1]),
        f"WRITE_MEM {chunk} B": lambda link: link.write_mem(Space.ACTS, 0, data),
        "READ_MEM 1 B": lambda link: link.read_mem(Space.ACTS, 0, 1),
        f"READ_MEM {dev['max_payload']} B": lambda link: link.read_mem(Space.ACTS, 0, dev["max_payload"]),
    }

    def time_ops(link) -> dict:
        res = {}
        for name, op in ops.items():
            for _ in range(min(20, repeats)):  # warm-up
                op(link)
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                op(link)
                ts.append(time.perf_counter() - t0)
            if name == "RUN":  # two transactions; the STATUS's own median is measured above
                ts = [t - res["STATUS"]["median_s"] for t in ts]
            res[name] = {"median_s": statistics.median(ts), "p10_s": _pct(ts, 10), "p90_s": _pct(ts, 90),
                         "repeats": repeats}
        return res

    # (a) pty: pyserial on the slave, DevModel in a child process on the master (as a board would be
    # another device: no GIL shared with the host).
    master, slave = os.openpty()
    tty.setraw(slave)
    dev_json = json.dumps({"sizes": {s.name: v for s, v in dev["sizes"].items()}, "max_payload": dev["max_payload"],
                           "config": dev["config"]})
    child = subprocess.Popen([sys.executable, "-c", _SERVER, str(master), dev_json], stdin=subprocess.PIPE,
                             pass_fds=(master,), cwd=str(ROOT))
    try:
        with Link(SerialPipe(os.ttyname(slave), 1_000_000), timeout=2.0, retries=2, start_seq=0) as link:
            link.connect()
            pty_res = time_ops(link)
            if link.stats.retransmits:
                raise RuntimeError(f"retransmissions over the pty: {link.stats}")
    finally:
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        os.close(master)
        os.close(slave)

    # (b) in process, no OS I/O: Link + DevModel on DevModelPipe.
    model = make_devmodel(dev, run_polls=1)
    link = Link(DevModelPipe(model), start_seq=0)
    link.connect()
    inproc = time_ops(link)

    # (c) the DevModel alone: feed one request frame, get the reply.
    from hadahw.protocol import encode_frame, pack_read_mem, pack_write_mem
    model2 = make_devmodel(dev, run_polls=1)
    frames = {
        "STATUS": [encode_frame(Command.STATUS, 0)],
        "RUN": [encode_frame(Command.RUN, 0, (0).to_bytes(4, "little")), encode_frame(Command.STATUS, 0)],
        "WRITE_MEM 1 B": [encode_frame(Command.WRITE_MEM, 0, pack_write_mem(Space.ACTS, 0, data[:1]))],
        f"WRITE_MEM {chunk} B": [encode_frame(Command.WRITE_MEM, 0, pack_write_mem(Space.ACTS, 0, data))],
        "READ_MEM 1 B": [encode_frame(Command.READ_MEM, 0, pack_read_mem(Space.ACTS, 0, 1))],
        f"READ_MEM {dev['max_payload']} B": [encode_frame(Command.READ_MEM, 0,
                                                          pack_read_mem(Space.ACTS, 0, dev["max_payload"]))],
    }
    model_res = {}
    for name, fs in frames.items():
        # Two sequence numbers in turn: each frame differs from the last executed one, so the model
        # executes it (a repeat of the same seq and CRC would be answered from its replay store).
        variants = [[_reseq(f, 2 * i + k) for i, f in enumerate(fs)] for k in (0, 1)]
        ts = []
        for r in range(repeats):
            batch = variants[r % 2]
            t0 = time.perf_counter()
            for f in batch:
                model2.feed(f)
            ts.append(time.perf_counter() - t0)
        model_res[name] = {"median_s": statistics.median(ts), "repeats": repeats}
    return {"pty": pty_res, "in_process": inproc, "devmodel": model_res}


def _reseq(frame: bytes, seq: int) -> bytes:
    """The same request with another sequence number (re-encoded)."""
    from hadahw.protocol import encode_frame
    f = decode_frame(frame)
    return encode_frame(f.code, seq, f.payload)


# ---------------------------------------------------------------------------------------------
# Report


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg": list(os.getloadavg())}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("amaranth", "cocotb", "verilator", "pyserial", "numpy", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        out["git"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                    text=True, check=True).stdout.strip()
        # Tracked files modified in the work tree (the simulation builds what is there, not HEAD).
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
        out["modified"] = [line[3:] for line in st.splitlines() if line.strip()]
    except (OSError, subprocess.CalledProcessError):
        out["git"] = None
    return out


def _us(s: float) -> str:
    return f"{s * 1e6:,.1f}"


def _ms(s: float) -> str:
    return f"{s * 1e3:,.2f}"


def _bytes_txt(v) -> str:
    return "/".join(str(x) for x in v)



def _merged(rows) -> list[str]:
    """Markdown rows from ``(cmd, space, sort key, cells[, extra])`` tuples: rows of one command whose
    cells are equal for several spaces become one row naming them all."""
    groups: dict = {}
    for cmd, space, order, cells, *extra in rows:
        g = groups.setdefault((cmd, order, tuple(cells), tuple(extra)), [])
        if space:
            g.append(space)
    rank = {name: i for i, name in enumerate(["IDENTIFY", "WRITE_MEM", "RUN", "STATUS", "READ_MEM"])}
    out = []
    for (cmd, order, cells, extra), spaces in sorted(groups.items(), key=lambda kv: (rank.get(kv[0][0], 9),
                                                                                     kv[0][1], kv[1])):
        name = cmd + (" " + "/".join(sorted(spaces, key=lambda x: (Space[x.split()[0]], x))) if spaces else "")
        out.append(f"| {name} | " + " | ".join((*cells, *extra)) + " |")
    return out


def render_md(r: dict) -> str:
    s = r["settings"]
    f = s["clock_hz"]
    L = []
    L.append("# Host link: throughput and inference latency")
    L.append("")
    L.append(f"Generated by `{' '.join(['python bench/link_bench.py', *s['argv']])}` on {r['date']} "
             f"(git {r['versions']['git']}); {r['machine']['cpu']}, {r['machine']['cpus']} CPUs, "
             f"{r['machine']['platform']}, Python {r['machine']['python']}, amaranth {r['versions']['amaranth']}, "
             f"cocotb {r['versions']['cocotb']}, verilator {r['versions']['verilator']}, pyserial "
             f"{r['versions']['pyserial']}. Wall time {r['wall_s']:.0f} s."
             + (f" Tracked files modified in the work tree when it ran: {', '.join(r['versions']['modified'])}."
                if r["versions"].get("modified") else ""))
    L.append("")
    cfg = s["config"]
    L.append(f"Board design: `UARTSystem` (UART, 32-byte RX FIFO, HostLink with max_payload "
             f"{s['device_max_payload']}, HadaCore {cfg['rows']}x{cfg['lanes']}, beta_w={cfg['beta_w']}, "
             f"beta_a={cfg['beta_a']}, weights in {cfg['weight_memory'].upper()}), clock f = {f / 1e6:g} MHz "
             f"(`hadahw.build` default). UART 8N1, divisor D = round(f / B): "
             + ", ".join(f"{b / 1e6:g} Mbaud -> D = {d}" for b, d in zip(s["bauds"], s["divisors"])) + ".")
    L.append("")
    L.append("## Summary")
    L.append("")
    divs = s["divisors"]
    for b, d in zip(s["bauds"], divs):
        tp = {(t["cmd"], t["space"], t["payload"]): t for t in r["sim"][str(d)]["throughput"]}
        w = tp[("WRITE_MEM", "WEIGHTS", r["protocol"]["write_chunk"])]
        rd = tp[("READ_MEM", "ACTS", r["protocol"]["read_chunk"])]
        L.append(f"- {b / 1e6:g} Mbaud (line rate {b / 10 / 1e3:g} kB/s): bulk write {w['payload_Bps'] / 1e3:,.1f} kB/s "
                 f"({100 * w['line_fraction']:.1f} %), bulk read {rd['payload_Bps'] / 1e3:,.1f} kB/s "
                 f"({100 * rd['line_fraction']:.1f} %) of payload, link-bound.")
    for m in r["latency"]:
        parts = []
        for b, p in zip(s["bauds"], m["per_divisor"]):
            parts.append(f"{b / 1e6:g} Mbaud: {_ms(p['total_seconds'])} ms end to end = compute "
                         f"{_ms(p['compute_seconds'])} ms + link {_ms(p['not_overlapped_seconds'])} ms "
                         f"(weight load once {_ms(p['load']['seconds'])} ms)")
        L.append(f"- {m['model']}, one inference, link-bound: " + "; ".join(parts) + ".")
    L.append("")
    L.append("## Formulas")
    L.append("")
    L.append("- Wire bytes of a frame with a raw frame of `R = 6 + N` bytes (header 4, payload N, CRC 2): "
             "`2 + COBS(R)`, where `R + 1 <= COBS(R) <= R + 1 + floor(R / 254)` (2 delimiters; COBS adds one code "
             "byte, plus one per 254 bytes without a zero).")
    L.append("- Link-bound time of one transaction at baud B (divisor D, clock f): "
             "`t = ((request wire bytes + reply wire bytes) * 10 * D + turnaround cycles) / f` "
             "(8N1 = 10 bit times per byte; stop-and-wait; the host sends the next request the moment the "
             "reply's last stop bit ends).")
    L.append("- Payload throughput = payload bytes / t; line rate = B / 10 bytes/s (one direction). "
             "Wire bound = the same without the turnaround: payload / ((request + reply wire bytes) * 10 / B).")
    L.append("- Turnaround = cycles from the end of the request's last stop bit (on `rx`) to the falling edge of the "
             "reply's first start bit (on `tx`). Reply gap = reply span on `tx` - reply bytes * 10 * D "
             "(0 = the UART transmitter never idles inside a reply).")
    L.append("")

    # Part 1
    p1 = r["protocol"]
    L.append("## 1. Protocol efficiency (exact: real `Link` against `DevModel`, bytes counted)")
    L.append("")
    L.append(f"Device max_payload {p1['max_payload']} (IDENTIFY): WRITE_MEM carries at most {p1['write_chunk']} data "
             f"bytes per frame (5 bytes of space + address), READ_MEM returns at most {p1['read_chunk']}. Data random "
             "unless stated; 0x00 / 0xFF are the COBS extremes (only a READ_MEM reply can hold 254 bytes without a "
             "zero, which costs one more byte). Rows that are the same for several spaces are merged.")
    L.append("")
    B0 = s["bauds"][0]
    L.append("| transaction | data | payload B | request wire B | reply wire B | wire B per payload B | "
             f"wire-bound payload at {B0 / 1e6:g} Mbaud | of line rate |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for row in p1["rows"]:
        data_cmd = row["cmd"] in ("WRITE_MEM", "READ_MEM")
        pay = row["payload"]
        wire = max(row["req_bytes"]) + max(row["rep_bytes"])
        bps = pay / (wire * BITS_PER_BYTE / B0) if data_cmd else 0
        cells = (row["data"] or "-", str(pay), _bytes_txt(row["req_bytes"]), _bytes_txt(row["rep_bytes"]),
                 f"{wire / pay:.3f}" if data_cmd else "-", f"{bps / 1e3:,.1f} kB/s" if data_cmd else "-",
                 f"{100 * bps / (B0 / 10):.1f} %" if data_cmd else "-")
        rows.append((row["cmd"], row["space"], (row["data"] != "random", pay), cells))
    L.extend(_merged(rows))
    L.append("")
    L.append("For commands without data the payload column is the request payload (RUN: the descriptor address).")
    L.append("")

    # Part 2
    L.append("## 2. Gateware turnaround (measured in simulation, clock cycles)")
    L.append("")
    L.append("Verilator simulation of the board design at the board's divisors, the real host driver on the "
             "simulated UART's pty. Every byte's simulated time is logged at the pins (and checked to be exactly the "
             "host's bytes). Turnaround min-max over all transactions of the kind (sweep repeats, the weight loads, "
             "the inferences); n = how many at each divisor.")
    L.append("")
    L.append("| transaction | payload B | request wire B | reply wire B | " + " | ".join(
        f"turnaround D={d}" for d in divs) + " | " + " | ".join(f"reply gaps D={d}" for d in divs) + " | n |")
    L.append("|---|---:|---:|---:|" + "---:|" * (2 * len(divs)) + "---:|")
    tables = {d: {(t["cmd"], t["space"], t["payload"]): t for t in r["sim"][str(d)]["turnaround"]} for d in divs}
    rows = []
    for k in set().union(*[set(t) for t in tables.values()]):
        any_t = next(tables[d][k] for d in divs if k in tables[d])
        turn = []
        for d in divs:
            t = tables[d].get(k)
            if t is None:
                turn.append("-")
            elif t["turnaround_min"] == t["turnaround_max"]:
                turn.append(f"{t['turnaround_min']:g}")
            else:
                turn.append(f"{t['turnaround_min']:g}-{t['turnaround_max']:g}")
        gaps = [f"{tables[d][k]['reply_gap_max']:g}" if k in tables[d] else "-" for d in divs]
        n = "/".join(str(tables[d][k]["count"]) if k in tables[d] else "0" for d in divs)
        cells = (str(k[2]), _bytes_txt(any_t["req_bytes"]), _bytes_txt(any_t["rep_bytes"]), *turn, *gaps)
        rows.append((k[0], k[1], k[2], cells, n))
    L.extend(_merged(rows))
    L.append("")
    sc = r["divisor_scaling"]
    if sc:
        L.append(f"Divisor dependence: over the {sc['compared']} transaction kinds measured at both D={sc['d_hi']} and "
                 f"D={sc['d_lo']}, turnaround(D={sc['d_hi']}) - turnaround(D={sc['d_lo']}) = "
                 f"{', '.join(f'{v:g}' for v in sc['differences'])} cycles; "
                 f"the receiver's mid-stop-bit sampling alone predicts {sc['predicted']:g} "
                 "(the UART hands the last byte over about half a bit before the stop bit ends; everything after "
                 "it - FIFO, HostLink checks, execution, reply encoding - is in clock cycles and independent of D).")
        L.append("")
    for d in divs:
        fits = r["sim"][str(d)]["fits"]
        if fits:
            L.append(f"Turnaround vs payload N at D={d} (least squares over the sweep): " + "; ".join(
                f"{k}: {v['a']:.1f} + {v['b']:.3f} N cycles (max residual {v['max_residual']:.1f})"
                for k, v in fits.items()) + ".")
            L.append("")

    # Part 3
    L.append("## 3. Payload throughput (link-bound, from 1 + 2)")
    L.append("")
    L.append("Back-to-back transactions of one size, t from the formula above with the measured turnaround at the "
             "board's divisor for that baud rate; no host or USB latency (see 5). Turnaround share = turnaround / t.")
    L.append("")
    L.append("| transaction | payload B | " + " | ".join(
        f"{b / 1e6:g} Mbaud: kB/s | % of line | turnaround share" for b in s["bauds"]) + " |")
    L.append("|---|---:|" + "---:|---:|---:|" * len(s["bauds"]))
    tps = {d: {(t["cmd"], t["space"], t["payload"]): t for t in r["sim"][str(d)]["throughput"]} for d in divs}
    rows = []
    for k in set().union(*[set(t) for t in tps.values()]):
        cells = [str(k[2])]
        for d in divs:
            t = tps[d].get(k)
            cells += (["-"] * 3 if t is None else
                      [f"{t['payload_Bps'] / 1e3:,.1f}", f"{100 * t['line_fraction']:.1f} %",
                       f"{100 * t['turnaround_fraction']:.1f} %"])
        rows.append((k[0], k[1], k[2], tuple(cells)))
    L.extend(_merged(rows))
    L.append("")
    L.append("Line rate: " + ", ".join(f"{b / 1e6:g} Mbaud = {b / 10 / 1e3:g} kB/s" for b in s["bauds"]) + ".")
    L.append("")

    # Part 4
    L.append("## 4. One inference: transfer and compute (link-bound)")
    L.append("")
    L.append("Per model: the accelerator segment of the hybrid network (first and last layer on the host). "
             "Transactions and bytes of the first inference as the driver (`Accelerator.infer`) sends them; "
             "times from the formula with each transaction's measured turnaround; compute = cycles the core's "
             "`busy` was high in the simulation. Wait = STATUS polls sent back to back from the end of RUN's "
             "reply until one reports the run finished (the run starts before RUN's reply is sent, so the "
             "compute overlaps it and the polls); the device is assumed to sample busy at the end of each STATUS "
             "request (it does so a few cycles later, so this may count one poll too many).")
    L.append("")
    for m in r["latency"]:
        name = m["model"]
        run = m["run"]
        L.append(f"### {name}")
        L.append("")
        L.append(f"Layers {', '.join(f'{i}:{w}' for i, w in enumerate(run['placement']))}; "
                 f"{m['source']}; test accuracy {m['test_accuracy']:.3f}. "
                 f"Input {run['input_bytes']} B, output {run['output_bytes']} B "
                 f"({run['output_values']} values of {run['output_value_bytes']} B = "
                 f"{run['output_values'] * run['output_value_bytes']} B, each value in {run['entries_per_output']} "
                 f"activation entries of {run['act_entry_bytes']} B at a {run['act_stride']}-byte stride; "
                 + (f"both move as compact transfers, {run['act_entry_bytes']} of every {run['act_stride']} bytes). "
                    if run['act_entry_bytes'] < run['act_stride'] else "no holes). ") +
                 f"Compute: predicted {run['predicted_cycles']} cycles (`predict_cycles`), STATUS "
                 f"reported {sorted(set(run['status_cycles']))}, busy high "
                 f"{sorted(set(m['per_divisor'][0]['busy_cycles_all']))} cycles.")
        L.append("")
        L.append("| phase | transactions | payload B | wire B h->d | wire B d->h | " + " | ".join(
            f"{b / 1e6:g} Mbaud (us)" for b in s["bauds"]) + " |")
        L.append("|---|---:|---:|---:|---:|" + "---:|" * len(s["bauds"]))
        pd = m["per_divisor"]
        for label, key in (("input (WRITE_MEM ACTS)", "input"), ("RUN", "run"), ("output (READ_MEM ACTS)", "output")):
            t = pd[0][key]
            L.append(f"| {label} | {t['transactions']} | {t['payload']} | {t['req_bytes']} | {t['rep_bytes']} | "
                     + " | ".join(_us(p[key]["seconds"]) for p in pd) + " |")
        st = pd[0]["status"]
        L.append(f"| one STATUS poll | 1 | 0 | {st['req_bytes']} | {st['rep_bytes']} | "
                 + " | ".join(_us(p["status"]["seconds"]) for p in pd) + " |")
        L.append("| wait for done: polls x STATUS | " + "/".join(str(p["polls"]) for p in pd)
                 + " | | | | " + " | ".join(_us(p["wait_seconds"]) for p in pd) + " |")
        L.append("| **compute** (busy, part of the wait) | | | | | "
                 + " | ".join(f"**{_us(p['compute_seconds'])}**" for p in pd) + " |")
        L.append("| **transfer** (input + RUN + 1 STATUS + output) | | | | | "
                 + " | ".join(f"**{_us(p['transfer_serial_seconds'])}**" for p in pd) + " |")
        L.append("| **end to end** (input + RUN + wait + output) | | | | | "
                 + " | ".join(f"**{_us(p['total_seconds'])}**" for p in pd) + " |")
        L.append("| host software for the transfer transactions, this machine (estimate from 5; not in the rows "
                 "above) | "
                 + "/".join(str(len(p["kinds"])) for p in pd) + " | | | | "
                 + " | ".join(_us(p["host_seconds"]) for p in pd) + " |")
        L.append("| weight load, once (WEIGHTS + params + descriptors) | " + str(pd[0]["load"]["transactions"])
                 + f" | {pd[0]['load']['payload']} | {pd[0]['load']['req_bytes']} | {pd[0]['load']['rep_bytes']} | "
                 + " | ".join(_us(p["load"]["seconds"]) for p in pd) + " |")
        L.append("")
        L.append(f"Inferences per second, link-bound: " + ", ".join(
            f"{b / 1e6:g} Mbaud {1 / p['total_seconds']:,.0f}/s" for b, p in zip(s["bauds"], pd))
            + f"; compute share of the end-to-end time: " + ", ".join(
            f"{100 * p['compute_seconds'] / p['total_seconds']:.1f} %" for p in pd) + ".")
        L.append("")

    # Part 5
    h = r["host"]
    L.append("## 5. Host software overhead per transaction (wall time, this machine; separate from 1-4)")
    L.append("")
    L.append(f"The same `Link` over a real pseudo-terminal: pyserial `SerialPipe` on the slave, a `DevModel` serving "
             f"the master in a separate Python process (no baud-rate limit on a pty). Median (p10-p90) of "
             f"{h['repeats']} transactions each after 20 warm-up ones, on a shared, noisy {r['machine']['cpus']}-CPU "
             f"machine (load average at start {', '.join(f'{x:.2f}' for x in r['machine']['loadavg'])}). "
             "In-process = Link + DevModel through a `DevModelPipe` (no OS I/O); DevModel = its `feed()` alone. "
             "Host estimate = pty - DevModel: the host's Python (framing, CRC, COBS, pyserial, pty wake-ups).")
    L.append("")
    L.append("| transaction | pty round trip us | in-process us | DevModel us | host estimate us |")
    L.append("|---|---:|---:|---:|---:|")
    for name, v in h["pty"].items():
        L.append(f"| {name} | {_us(v['median_s'])} ({_us(v['p10_s'])}-{_us(v['p90_s'])}) | "
                 f"{_us(h['in_process'][name]['median_s'])} | {_us(h['devmodel'][name]['median_s'])} | "
                 f"{_us(v['median_s'] - h['devmodel'][name]['median_s'])} |")
    L.append("")
    L.append("RUN: the RUN transaction alone (the median of the STATUS that ends the model's run is subtracted).")
    L.append("")

    L.append("## Measured vs derived, assumptions")
    L.append("")
    for line in r["notes"]:
        L.append(f"- {line}")
    L.append("")
    return "\n".join(L)


def fit_turnaround(an: dict) -> dict:
    """Least-squares ``turnaround = a + b * payload`` per (WRITE_MEM|READ_MEM, space) over the sweep."""
    fits = {}
    for cmd in ("WRITE_MEM", "READ_MEM"):
        for space in ("WEIGHTS", "ACTS", "ACTS compact"):
            pts = [(t["payload"], t["turnaround"]) for t in an["transactions"]
                   if t["phase"] == "sweep" and t["cmd"] == cmd and t["space"] == space]
            if len({p for p, _ in pts}) < 2:
                continue
            x = np.array([p for p, _ in pts], float)
            y = np.array([v for _, v in pts], float)
            b, a = np.polyfit(x, y, 1)
            fits[f"{cmd} {space}"] = {"a": float(a), "b": float(b),
                                      "max_residual": float(np.max(np.abs(y - (a + b * x))))}
    return fits


def divisor_scaling(analyses: dict) -> dict | None:
    """Turnaround differences between the largest and smallest divisor, per transaction kind."""
    if len(analyses) < 2:
        return None
    d_hi, d_lo = max(analyses), min(analyses)

    def table(an):
        g = {}
        for t in an["transactions"]:
            g.setdefault((t["cmd"], t["space"], t["payload"]), set()).add(t["turnaround"])
        return g
    hi, lo = table(analyses[d_hi]), table(analyses[d_lo])
    diffs = sorted({round(a - b, 3) for k in hi.keys() & lo.keys() for a in hi[k] for b in lo[k]})
    # UARTRx: valid the cycle after the middle of the stop bit, counted from the start-bit edge
    # with div // 2 - 1 + 1 cycles to the middle of the start bit: it hands the byte over
    # D - D // 2 cycles (about half a bit) before the stop bit ends.
    predicted = -((d_hi - d_hi // 2) - (d_lo - d_lo // 2))
    return {"d_hi": d_hi, "d_lo": d_lo, "compared": len(hi.keys() & lo.keys()), "differences": diffs,
            "predicted": predicted}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bauds", type=int, nargs="+", default=[1_000_000, 3_000_000],
                    help="baud rates; each is simulated at the board's divisor round(clock/baud) (default 1 and 3 Mbaud)")
    ap.add_argument("--clock-mhz", type=float, default=None, help="system clock (default: hadahw.build's)")
    ap.add_argument("--models", nargs="+", default=["digits-mlp", "digits-cnn"], choices=["digits-mlp", "digits-cnn"])
    ap.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=CKPT",
                    help="use this hadahw.train checkpoint (beta_w=16, beta_a=2) instead of training here")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs when no checkpoint is given (default 5)")
    ap.add_argument("--inferences", type=int, default=2, help="inferences per model and divisor (default 2)")
    ap.add_argument("--host-repeats", type=int, default=200, help="pty transactions per kind (default 200)")
    ap.add_argument("--keep-transactions", action="store_true",
                    help="also write every simulated transaction's record to link.json (large)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    if args.inferences < 1 or args.host_repeats < 1 or args.epochs < 1:
        ap.error("--inferences, --host-repeats and --epochs must be positive")
    checkpoints = {}
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        if not sep or name not in ("digits-mlp", "digits-cnn") or not Path(path).is_file():
            ap.error(f"--checkpoint wants MODEL=CKPT with an existing file, not {item!r}")
        checkpoints[name] = path

    from hadahw.build import DEFAULT_CLOCK_MHZ
    from hadahw.rtl.top import uart_divisor

    t_start = time.perf_counter()
    clock_hz = (args.clock_mhz or DEFAULT_CLOCK_MHZ) * 1e6
    divisors = []
    for b in args.bauds:
        try:
            d, err = uart_divisor(clock_hz, b)  # the build's own check
        except ValueError as e:
            ap.error(f"--bauds: {e}")
        divisors.append(d)
    machine = machine_info()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    nets = load_networks(args.models, checkpoints, args.epochs)
    cfgs = {board_config(nd["net"].layers) for nd in nets.values()}
    if len(cfgs) != 1:
        raise SystemExit("the models need different accelerator configurations; run them separately")
    cfg = cfgs.pop()
    dev = device_params(cfg)

    log("part 1: protocol efficiency (Link + DevModel)")
    proto = protocol_efficiency(dev)

    log("part 3 first (no simulator running): host overhead over a pty")
    host = host_overhead(dev, args.host_repeats)
    host["repeats"] = args.host_repeats

    sims, analyses = {}, {}
    with tempfile.TemporaryDirectory(prefix="link-bench-") as tmp:
        for d in divisors:
            log(f"part 2: simulated board at divisor {d}")
            sim = simulate(cfg, dev, d, nets, args.inferences, Path(tmp))
            an = analyse_sim(sim, clock_hz)
            an["sim_wall_s"] = sim["wall_s"]
            an["runs"] = sim["runs"]
            sims[d], analyses[d] = sim, an

    xcheck = {str(d): crosscheck(sim, dev) for d, sim in sims.items()}

    result_sim = {}
    for d, an in analyses.items():
        result_sim[str(d)] = {
            "baud": an["baud"], "divisor": d, "period_ps": an["period_ps"], "wall_s": an["sim_wall_s"],
            "turnaround": summarise_turnaround(an), "throughput": throughput(an, clock_hz),
            "fits": fit_turnaround(an),
        }
        if args.keep_transactions:
            result_sim[str(d)]["transactions"] = an["transactions"]
    latency = []
    for name, nd in nets.items():
        per = []
        for d in divisors:
            run = next(r for r in analyses[d]["runs"] if r["model"] == name)
            per.append(inference_latency(analyses[d], name, run, clock_hz))
        run0 = next(r for r in analyses[divisors[0]]["runs"] if r["model"] == name)
        for p in per:
            p["host_seconds"] = sum(host_cost(host, dev, c, n) for c, n in p["kinds"])
            if not all(c == p["predicted_cycles"] for c in p["status_cycles"]):
                raise RuntimeError(f"{name}: STATUS cycles {p['status_cycles']} != predicted {p['predicted_cycles']}")
        latency.append({"model": name, "source": nd["source"], "test_accuracy": nd["meta"].get("test_accuracy"),
                        "run": run0, "per_divisor": per})

    busy_exact = all(c == p["predicted_cycles"] for m in latency for p in m["per_divisor"]
                     for c in p["busy_cycles_all"])
    xc = "; ".join(f"D={d}: {v['identical']} of {v['transactions']} identical, {v['padding_only']} differ only in "
                   f"ACTS padding bytes, {v['other']} otherwise" for d, v in xcheck.items())
    if any(v["other"] for v in xcheck.values()):
        log(f"WARNING: the gateware's replies differ from the DevModel's: {xc}")
    notes = [
        "Measured exactly (pure Python): wire bytes per transaction (part 1), by the real Link against the "
        "DevModel. Parts 2-4 count the bytes the simulated gateware actually exchanged with the same Link (the "
        "pin-level log is checked byte for byte against the host's traffic). Cross-check of the gateware's "
        f"replies in the sweep against a DevModel fed the same requests: {xc} (the core's activation entries are "
        "narrower than their stride; the padding reads back as 0).",
        "Measured in simulation (clock cycles, at the board's divisor for each baud rate): turnaround and reply "
        "gaps per transaction, the run's busy time; STATUS's cycle count equals `predict_cycles` for every "
        "inference (checked), the core's busy output was high for "
        + ("exactly that many cycles" if busy_exact else "a different number of cycles (see part 4)")
        + ", and every output equals the golden model (checked).",
        f"Derived: seconds = cycles / f at f = {clock_hz / 1e6:g} MHz (the build's clock; the simulation's "
        "10 ns period is "
        "irrelevant, only cycle counts are used) and the link-bound times and throughputs from the formula. "
        "Host gaps inside the simulation are never used (the simulator is far slower than the board).",
        "Assumed: the host sends each request the moment the previous reply ended and bytes back to back "
        "(the FT2232H does at these rates), with no USB or software latency: real figures are lower by the "
        "host overhead per transaction (part 5, this machine) plus USB latency, which is not measured here "
        "(on Linux the ftdi_sio latency timer, default 16 ms, can hold back a short reply; "
        "set it to 1 ms with /sys/bus/usb-serial/devices/ttyUSBn/latency_timer).",
        "Assumed: the host's bytes arrive in phase with the device clock as in the simulation (rx moved on "
        "falling clock edges); on the board the phase is random, so turnarounds vary by about one cycle.",
        "Not included: `Accelerator.infer` sleeps `poll_interval` (1 ms by default) between STATUS polls; the "
        "link-bound wait assumes back-to-back polls.",
        "Wire bytes per inference follow from the program's buffers: the whole input buffer is written and the "
        "whole output buffer read, as compact transfers (protocol 1.1: the used bytes of each activation entry, "
        "not the stride's holes); a buffer just over a frame's worth costs one more (short) transaction.",
    ]
    report = {
        "date": date, "machine": machine, "versions": versions(), "wall_s": time.perf_counter() - t_start,
        "settings": {"argv": sys.argv[1:] if argv is None else list(argv), "clock_hz": clock_hz,
                     "bauds": args.bauds, "divisors": divisors, "config": cfg.to_dict(),
                     "device_max_payload": dev["max_payload"], "inferences": args.inferences,
                     "models": args.models, "sweep_sizes": list(SWEEP_SIZES)},
        "protocol": proto, "sim": result_sim, "divisor_scaling": divisor_scaling(analyses),
        "latency": latency, "host": host, "devmodel_crosscheck": xcheck, "notes": notes,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "link.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "link.md").write_text(render_md(report))
    log(f"wrote {out / 'link.json'} and {out / 'link.md'} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
