# amaranth: UnusedElaboratable=no
"""HostLink gateware against the protocol's reference device (:class:`hadahw.sw.devmodel.DevModel`).

Most tests drive the HostLink's byte streams directly (no UART) with random input gaps, random
back-pressure on the output stream and random stalls of the host bus, feed the same bytes to a
DevModel and require the same reply bytes: ACK payloads, NAK statuses, sequence numbers and the
counters that STATUS reports.  One test goes through four UARTs at the bit level; one runs the real
host driver (:class:`hadahw.sw.link.Link`) against the simulated device.
"""

import json
import random

import pytest
from amaranth.back import verilog
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hadahw import protocol as P
from hadahw.protocol import Command, DevCounter, Space, Status
from hadahw.rtl.cobs import CobsDecoder, CobsEncoder, CobsWriter
from hadahw.rtl.hostbus import ByteMemoryTarget, HostBusSignature
from hadahw.rtl.hostlink import STATUS_PAYLOAD_BYTES, HostLink
from hadahw.rtl.uart import UARTRx, UARTTx
from hadahw.sw.devmodel import DevModel
from hadahw.sw.link import DeviceError, Link
from hadahw.sw.transport import BytePipe, FaultyPipe
from simutil import run_sim

SIZES = {Space.WEIGHTS: 1024, Space.ACTS: 512, Space.DESC: 256}
CONFIG = json.dumps({"beta_w": 16, "beta_a": 2, "board": "icebreaker"}, separators=(",", ":"), sort_keys=True)
RUN_CYCLES = 40


# Harness ---------------------------------------------------------------------------------------------

class Bench(Elaboratable):
    """HostLink + ByteMemoryTarget, optionally with UARTs on both sides (host and device)."""

    def __init__(self, *, max_payload=256, align=1, uart_divisor=None, run_cycles=RUN_CYCLES, compact=None):
        self.link = HostLink(max_payload=max_payload, space_sizes=SIZES, config_json=CONFIG.encode(), align=align,
                             compact=compact)
        self.target = ByteMemoryTarget(SIZES, run_cycles=run_cycles)
        self.uart_divisor = uart_divisor
        if uart_divisor is not None:
            self.host_tx = UARTTx(divisor=uart_divisor)
            self.dev_rx = UARTRx(divisor=uart_divisor)
            self.dev_tx = UARTTx(divisor=uart_divisor)
            self.host_rx = UARTRx(divisor=uart_divisor)

    def model(self) -> DevModel:
        return DevModel(sizes=SIZES, max_payload=self.link.max_payload, align=self.link.align, config=CONFIG,
                        run_cycles=RUN_CYCLES, compact=self.link.compact)

    @property
    def inp(self):
        return self.host_tx.i if self.uart_divisor else self.link.i

    @property
    def out(self):
        return self.host_rx.o if self.uart_divisor else self.link.o

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = self.link
        m.submodules.target = self.target
        wiring.connect(m, self.link.bus, self.target.bus)
        if self.uart_divisor is not None:
            m.submodules += [self.host_tx, self.dev_rx, self.dev_tx, self.host_rx]
            wiring.connect(m, self.dev_rx.o, self.link.i)
            wiring.connect(m, self.link.o, self.dev_tx.i)
            m.d.comb += [self.dev_rx.rx.eq(self.host_tx.tx), self.host_rx.rx.eq(self.dev_tx.tx)]
        return m


class Toggler:
    """A random 0/1 that holds its value for random runs (back-pressure with bursts)."""

    def __init__(self, rng, p_on, mean_run=3):
        self.rng, self.p, self.mean = rng, p_on, mean_run
        self.left, self.val = 0, True

    def step(self) -> bool:
        if self.left == 0:
            self.val = self.rng.random() < self.p
            self.left = 1 + int(self.rng.expovariate(1 / self.mean))
        self.left -= 1
        return self.val


def run_bench(bench, data: bytes, expect_len: int, *, seed=0, p_in=0.9, p_out=0.9, p_stall=0.0, tail=60,
              max_cycles=60_000, stop_and_wait=False, post=None, count_writes=False):
    """Feed ``data`` to the bench's input stream, return the bytes it sends (and extras).

    Runs until ``expect_len`` bytes came out and ``tail`` more cycles passed.  With
    ``stop_and_wait`` the next frame is only sent once a reply frame has come back for each frame
    sent so far (what a real host does).  ``post(ctx)`` runs at the end, inside the simulation.
    """
    rng = random.Random(seed)
    out = bytearray()
    result = {"cycles": 0, "writes": 0, "post": None}
    frames = _split_frames(data) if stop_and_wait else [data]
    inp, outp, stall = bench.inp, bench.out, bench.target.stall
    wr = bench.link.bus.write

    async def testbench(ctx):
        t_in, t_out, t_stall = Toggler(rng, p_in), Toggler(rng, p_out), Toggler(rng, p_stall)
        cur = {}

        def put(sig, v):
            if cur.get(id(sig)) != v:
                cur[id(sig)] = v
                ctx.set(sig, v)

        pos = 0
        fi = 0
        sent_frames = 0
        extra = 0
        buf = frames[0] if frames else b""
        seen_frames = 0
        was_nonzero = False
        while extra < tail:
            if pos == len(buf) and fi + 1 < len(frames) and (not stop_and_wait or seen_frames >= sent_frames):
                fi += 1
                buf, pos = frames[fi], 0
            v = pos < len(buf) and t_in.step()
            put(inp.valid, v)
            if v:
                put(inp.payload, buf[pos])
            put(outp.ready, t_out.step())
            put(stall, t_stall.step())
            if count_writes:
                _, _, i_rdy, o_val, o_rdy, o_pay, w_val, w_rdy = await ctx.tick().sample(
                    inp.ready, outp.valid, outp.ready, outp.payload, wr.valid, wr.ready)
                result["writes"] += w_val and w_rdy
            else:
                _, _, i_rdy, o_val, o_rdy, o_pay = await ctx.tick().sample(
                    inp.ready, outp.valid, outp.ready, outp.payload)
            result["cycles"] += 1
            if v and i_rdy:
                pos += 1
                if pos == len(buf):
                    sent_frames += 1
            if o_val and o_rdy:
                out.append(o_pay)
                if o_pay == 0 and was_nonzero:
                    seen_frames += 1
                was_nonzero = o_pay != 0
            if len(out) >= expect_len and pos == len(buf) and fi + 1 >= len(frames):
                extra += 1
            assert result["cycles"] < max_cycles, f"timeout: {len(out)} of {expect_len} bytes after {max_cycles} cycles"
        put(inp.valid, 0)
        if post is not None:
            result["post"] = post(ctx)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return bytes(out), result


def _split_frames(data: bytes) -> list[bytes]:
    """Split a byte string after each delimiter that ends a nonempty frame."""
    out, start, nonzero = [], 0, False
    for i, b in enumerate(data):
        if b == 0 and nonzero:
            out.append(data[start:i + 1])
            start = i + 1
        nonzero = b != 0
    if start < len(data):
        out.append(data[start:])
    return out


def frame(cmd, seq, payload=b""):
    return P.encode_frame(cmd, seq, payload)


def raw_wire(raw: bytes) -> bytes:
    return b"\x00" + P.cobs_encode(raw) + b"\x00"


def replies(data: bytes) -> list:
    """Decode a device's output into frames (faults would fail the test)."""
    events = list(P.FrameDecoder(max_payload=P.MAX_PAYLOAD).feed(data))
    assert all(isinstance(e, P.Frame) for e in events), events
    return events


def mem_dump(target, spaces=tuple(Space)):
    def post(ctx):
        return {s: bytes(ctx.get(target.mem_data[s][i]) for i in range(SIZES[s])) for s in spaces}
    return post


def check_same_as_model(bench, data, *, model=None, **kw):
    """Run ``data`` through the gateware and the model; require identical output."""
    model = model or bench.model()
    expect = model.feed(data)
    got, res = run_bench(bench, data, len(expect), **kw)
    if got != expect:
        exp_frames = replies(expect)
        got_frames = list(P.FrameDecoder().feed(got))
        for i, (e, g) in enumerate(zip(exp_frames, got_frames)):
            assert g == e, f"reply {i}: got {g}, expected {e}"
        assert got == expect, f"{len(got_frames)} replies, expected {len(exp_frames)}"
    return model, res, got


def status_of(reply: P.Frame) -> P.DeviceStatus:
    assert reply.code == P.ack_code(Command.STATUS), reply
    return P.unpack_status(reply.payload)


# COBS blocks ------------------------------------------------------------------------------------------

class EncoderBench(Elaboratable):
    def __init__(self, max_length):
        self.enc = CobsEncoder(max_length=max_length)
        self.mem = Memory(shape=8, depth=max_length + 2, init=[])

    def elaborate(self, platform):
        m = Module()
        m.submodules.enc = self.enc
        m.submodules.mem = self.mem
        rp = self.mem.read_port()
        m.d.comb += [rp.addr.eq(self.enc.rd_addr), rp.en.eq(self.enc.rd_en), self.enc.rd_data.eq(rp.data)]
        return m


def _cobs_cases(rng):
    nz = lambda n: bytes(rng.randrange(1, 256) for _ in range(n))  # noqa: E731
    cases = [b"\x00", b"\x11", b"\x00\x00", nz(253), nz(254), nz(255), nz(254) + b"\x00", b"\x00" + nz(254),
             nz(508), nz(254) + b"\x00" + nz(3), nz(100) + b"\x00\x00" + nz(200) + b"\x00"]
    cases += [bytes(rng.choice((0, rng.randrange(1, 256))) for _ in range(rng.randrange(1, 40))) for _ in range(6)]
    return cases


def _assert_framed(cases, got):
    """Each ``got`` is its raw ``cases`` entry as the protocol frames it: 0x00, COBS, 0x00."""
    assert len(got) == len(cases)
    for raw, wire in zip(cases, got):
        assert wire == b"\x00" + P.cobs_encode(raw) + b"\x00", raw.hex()


def test_cobs_encoder_matches_protocol():
    rng = random.Random(7)
    cases = _cobs_cases(rng)
    bench = EncoderBench(max(map(len, cases)))
    enc = bench.enc
    got = []

    async def testbench(ctx):
        t_out = Toggler(rng, 0.7)
        for raw in cases:
            for i, b in enumerate(raw):
                ctx.set(bench.mem.data[i], b)
            assert ctx.get(enc.idle)
            ctx.set(enc.length, len(raw))
            ctx.set(enc.start, 1)
            await ctx.tick()
            ctx.set(enc.start, 0)
            out = bytearray()
            while True:
                ctx.set(enc.o.ready, t_out.step())
                _, _, valid, ready, payload, idle = await ctx.tick().sample(
                    enc.o.valid, enc.o.ready, enc.o.payload, enc.idle)
                if valid and ready:
                    out.append(payload)
                if idle:
                    break
            got.append(bytes(out))

    run_sim(bench, testbench)
    _assert_framed(cases, got)


def test_cobs_decoder_matches_protocol():
    rng = random.Random(8)
    frames = [P.cobs_encode(raw) for raw in _cobs_cases(rng)[:8]]
    stream = b"\x00\x00".join(frames) + b"\x00" + b"\x05\x01\x02\x00" + b"\x01\x00\x00"  # + truncated, empty
    dec = CobsDecoder()
    tokens = []

    async def testbench(ctx):
        t_out = Toggler(rng, 0.6)
        pos = 0
        while pos < len(stream):
            ctx.set(dec.i.valid, 1)
            ctx.set(dec.i.payload, stream[pos])
            ctx.set(dec.o.ready, t_out.step())
            _, _, i_rdy, o_val, o_rdy, tok = await ctx.tick().sample(
                dec.i.ready, dec.o.valid, dec.o.ready, dec.o.payload)
            if o_val and o_rdy:
                tokens.append((tok.end, tok.truncated, tok.data))
            pos += i_rdy

    run_sim(dec, testbench)
    # Rebuild frames from tokens and compare with the software decoder.
    decoded, cur = [], bytearray()
    for end, truncated, d in tokens:
        if end:
            decoded.append((bytes(cur), bool(truncated)))
            cur.clear()
        else:
            cur.append(d)
    expect = [(P.cobs_decode(f), False) for f in frames] + [(b"\x01\x02", True), (b"", False)]
    assert decoded == expect


class WriterBench(Elaboratable):
    def __init__(self, depth):
        self.wr = CobsWriter(depth=depth)
        self.mem = Memory(shape=8, depth=depth, init=[])

    def elaborate(self, platform):
        m = Module()
        m.submodules.wr = self.wr
        m.submodules.mem = self.mem
        wp = self.mem.write_port()
        m.d.comb += [wp.addr.eq(self.wr.wr_addr), wp.data.eq(self.wr.wr_data), wp.en.eq(self.wr.wr_en)]
        return m


def test_cobs_writer_matches_protocol():
    """In-place encoding, bytes offered with random gaps (only while ready), at several bases."""
    rng = random.Random(16)
    cases = _cobs_cases(rng)
    cases += [bytes(rng.randrange(1, 256) for _ in range(n)) + tail
              for n in (253, 254, 255, 507, 508, 509) for tail in (b"", b"\x00", b"\x07")]
    depth = 2 + P.cobs_max_len(max(map(len, cases))) + 40
    bench = WriterBench(depth)
    wr = bench.wr
    got = []

    async def testbench(ctx):
        for n, raw in enumerate(cases):
            base = (n * 7) % 40
            for i in range(depth):
                ctx.set(bench.mem.data[i], 0)
            ctx.set(wr.base, base)
            ctx.set(wr.start, 1)
            await ctx.tick()
            ctx.set(wr.start, 0)
            pos = 0
            while pos < len(raw):
                go = rng.random() < 0.6 and ctx.get(wr.ready)
                ctx.set(wr.take, go)
                ctx.set(wr.data, raw[pos] if go else rng.randrange(256))
                await ctx.tick()
                pos += go
            ctx.set(wr.take, 0)
            ctx.set(wr.finish, 1)
            while True:
                done = ctx.get(wr.done)
                await ctx.tick()
                if done:
                    break
            ctx.set(wr.finish, 0)
            mem = bytes(ctx.get(bench.mem.data[i]) for i in range(depth))
            end = mem.index(0, base + 1)
            got.append(mem[base:end + 1])

    run_sim(bench, testbench)
    _assert_framed(cases, got)


# HostLink vs DevModel --------------------------------------------------------------------------------

def test_identify_and_status():
    bench = Bench()
    data = frame(Command.IDENTIFY, 1) + frame(Command.STATUS, 2) + frame(Command.RESET_COUNTERS, 3) + \
        frame(Command.STATUS, 4)
    _, _, got = check_same_as_model(bench, data, seed=1)
    r = replies(got)
    info = P.unpack_identify(r[0].payload)
    assert info.config == CONFIG and info.max_payload == 256 and info.sizes == (1024, 512, 256)
    assert status_of(r[1]).counters == (2,) + (0,) * (len(DevCounter) - 1)
    assert status_of(r[3]).counters == (1,) + (0,) * (len(DevCounter) - 1)


def test_write_read_roundtrip_and_memory():
    bench = Bench()
    rng = random.Random(2)
    data = bytearray()
    seq = 10
    for space, addr, n in [(Space.WEIGHTS, 0, 251), (Space.WEIGHTS, 1000, 24), (Space.ACTS, 7, 1),
                           (Space.DESC, 128, 128), (Space.ACTS, 300, 200)]:
        payload = bytes(rng.randrange(256) for _ in range(n))
        data += frame(Command.WRITE_MEM, seq, P.pack_write_mem(space, addr, payload))
        seq += 1
    for space, addr, n in [(Space.WEIGHTS, 0, 256), (Space.WEIGHTS, 1016, 8), (Space.DESC, 120, 140),
                           (Space.ACTS, 6, 3)]:
        data += frame(Command.READ_MEM, seq, P.pack_read_mem(space, addr, n))
        seq += 1
    model, res, _ = check_same_as_model(bench, bytes(data), seed=2, post=mem_dump(bench.target))
    for s in Space:
        assert res["post"][s] == bytes(model.mem[s]), s.name


@pytest.mark.parametrize("layout, align, seed", [((5, 8), 1, 30), ((3, 4), 2, 31), ((9, 16), 1, 32), ((1, 2), 1, 33)])
def test_compact_reads(layout, align, seed):
    """Compact reads of ACTS (entries of E bytes at stride S): the used bytes only, and every refusal."""
    used, stride = layout
    bench = Bench(compact={Space.ACTS: layout}, align=align)
    rng = random.Random(seed)
    acts = bytes(rng.randrange(256) for _ in range(SIZES[Space.ACTS]))
    C = P.COMPACT
    data = bytearray()
    for seq, off in enumerate(range(0, len(acts), 250)):
        data += frame(Command.WRITE_MEM, seq, P.pack_write_mem(Space.ACTS, off, acts[off:off + 250]))
    good = [(0, 256), (stride, stride), (3 * stride, 5 * stride), (512 - 4 * stride, 4 * stride)]
    for n, (addr, length) in enumerate(good):
        data += frame(Command.READ_MEM, 10 + n, P.pack_read_mem(Space.ACTS, addr, length, compact=True))
    data += b"".join([
        frame(Command.READ_MEM, 20, P.pack_read_mem(Space.ACTS, stride - align, stride, compact=True)),  # BAD_ALIGN
        frame(Command.READ_MEM, 21, P.pack_read_mem(Space.ACTS, 0, stride + stride // 2, compact=True)),  # BAD_ALIGN
        frame(Command.READ_MEM, 22, P.pack_read_mem(Space.WEIGHTS, 0, stride, compact=True)),  # BAD_SPACE
        frame(Command.READ_MEM, 23, P.pack_read_mem(Space.ACTS, 512, stride, compact=True)),  # BAD_ADDRESS
        frame(Command.READ_MEM, 24, P.pack_read_mem(Space.ACTS, 0, 256 + stride, compact=True)),  # BAD_ARG
        frame(Command.READ_MEM, 25, bytes([Space.ACTS | C]) + bytes(4) + b"\x00\x00"),  # BAD_ARG (length 0)
        frame(Command.WRITE_MEM, 26, bytes([Space.WEIGHTS | C]) + bytes(4) + bytes(4)),  # BAD_SPACE (no layout)
        frame(Command.READ_MEM, 27, P.pack_read_mem(Space.ACTS, stride, 2 * stride)),  # a plain read still works
        frame(Command.STATUS, 28),
    ])
    _, _, got = check_same_as_model(bench, bytes(data), seed=seed)
    r = replies(got)
    reads = r[-(len(good) + 9):]
    for (addr, length), reply in zip(good, reads):  # against the written bytes, not the model
        assert reply.code == P.ack_code(Command.READ_MEM), reply
        assert reply.payload == b"".join(acts[i:i + used] for i in range(addr, addr + length, stride))
    statuses = [P.unpack_nak(x.payload)[0] for x in reads[len(good):len(good) + 7]]
    assert statuses == [Status.BAD_ALIGN, Status.BAD_ALIGN, Status.BAD_SPACE, Status.BAD_ADDRESS, Status.BAD_ARG,
                        Status.BAD_ARG, Status.BAD_SPACE]
    assert reads[-2].payload == acts[stride:3 * stride]


@pytest.mark.parametrize("layout, align, seed", [((5, 8), 1, 40), ((3, 4), 2, 41), ((9, 16), 1, 42)])
def test_compact_writes(layout, align, seed):
    """Compact writes fill the used bytes of consecutive entries and leave the holes; every refusal."""
    used, stride = layout
    bench = Bench(compact={Space.ACTS: layout}, align=align)
    rng = random.Random(seed)
    size = SIZES[Space.ACTS]
    expect = bytearray(rng.randrange(256) for _ in range(size))  # plain writes first, then compact ones
    data = bytearray()
    for seq, off in enumerate(range(0, size, 250)):
        data += frame(Command.WRITE_MEM, seq, P.pack_write_mem(Space.ACTS, off, bytes(expect[off:off + 250])))
    n_last = (size // stride) * used  # every entry, at address 0: exactly in range when it fits a frame
    writes = [(0, used * 3), (stride * 5, used * 7 + align), (size - 2 * stride, 2 * used),
              (stride, min(250 // align * align, n_last))]
    seq = 10
    for addr, n in writes:
        n -= n % align
        blob = bytes(rng.randrange(256) for _ in range(n))
        data += frame(Command.WRITE_MEM, seq, P.pack_write_mem(Space.ACTS, addr, blob, compact=True))
        seq += 1
        for k in range(0, n, used):  # independent of the model: the used bytes of each entry
            a = addr + k // used * stride
            part = blob[k:k + used]
            expect[a:a + len(part)] = part
    over = used + 1 + (-(used + 1)) % align  # one entry's bytes and more, aligned: two entries
    refused = [
        (P.pack_write_mem(Space.ACTS, stride // 2, bytes(used), compact=True), Status.BAD_ALIGN),
        (P.pack_write_mem(Space.ACTS, stride + 1, bytes(align), compact=True), Status.BAD_ALIGN),
        (P.pack_write_mem(Space.ACTS, 2 * stride - align, bytes(align), compact=True), Status.BAD_ALIGN),
        (P.pack_write_mem(Space.ACTS, size - stride, bytes(over), compact=True), Status.BAD_ADDRESS),
        (P.pack_write_mem(Space.ACTS, size, bytes(align), compact=True), Status.BAD_ADDRESS),
        (P.pack_write_mem(Space.DESC, 0, bytes(used), compact=True), Status.BAD_SPACE),
    ]
    for payload, _ in refused:
        data += frame(Command.WRITE_MEM, seq, payload)
        seq += 1
    for off in range(0, size, 256):
        data += frame(Command.READ_MEM, seq, P.pack_read_mem(Space.ACTS, off, 256))
        seq += 1
    model, res, got = check_same_as_model(bench, bytes(data), seed=seed, post=mem_dump(bench.target, (Space.ACTS,)))
    assert res["post"][Space.ACTS] == bytes(expect) == bytes(model.mem[Space.ACTS])
    r = replies(got)
    acks = r[-(len(refused) + size // 256 + len(writes)):]
    for (addr, _), ack in zip(writes, acks):
        echo = P.unpack_write_ack(ack.payload)
        assert echo.space == Space.ACTS and echo.address == addr and echo.compact
    assert [P.unpack_nak(x.payload)[0] for x in acks[len(writes):len(writes) + len(refused)]] == [s for _, s in refused]


def test_compact_transfers_of_a_link_without_a_layout_are_bad_space():
    bench = Bench()
    data = frame(Command.READ_MEM, 1, P.pack_read_mem(Space.ACTS, 0, 8, compact=True)) + \
        frame(Command.WRITE_MEM, 2, P.pack_write_mem(Space.ACTS, 0, bytes(8), compact=True))
    _, _, got = check_same_as_model(bench, data, seed=34)
    assert [P.unpack_nak(x.payload)[0] for x in replies(got)] == [Status.BAD_SPACE] * 2


def test_max_payload_1024():
    """The protocol's largest frames: full WRITE_MEM and READ_MEM, one byte too many, IDENTIFY."""
    bench = Bench(max_payload=P.MAX_PAYLOAD)
    rng = random.Random(13)
    blob = bytes(rng.randrange(256) for _ in range(P.MAX_PAYLOAD - P.WRITE_HEADER_BYTES))
    too_long = P.encode_raw_frame(Command.WRITE_MEM, 3, P.pack_write_mem(0, 0, blob + b"\x01"), max_payload=2048)
    data = b"".join([
        frame(Command.WRITE_MEM, 1, P.pack_write_mem(Space.WEIGHTS, 5, blob)),
        frame(Command.READ_MEM, 2, P.pack_read_mem(Space.WEIGHTS, 0, P.MAX_PAYLOAD)),
        raw_wire(too_long),                                            # BAD_LENGTH
        frame(Command.READ_MEM, 4, P.pack_read_mem(Space.WEIGHTS, 0, P.MAX_PAYLOAD + 1)),  # BAD_ARG
        frame(Command.IDENTIFY, 5),
        frame(Command.STATUS, 6),
    ])
    model, res, _ = check_same_as_model(bench, data, seed=13, post=mem_dump(bench.target, (Space.WEIGHTS,)))
    assert res["post"][Space.WEIGHTS] == bytes(model.mem[Space.WEIGHTS])


def test_transport_errors_and_counters():
    bench = Bench()
    good = frame(Command.WRITE_MEM, 20, P.pack_write_mem(Space.ACTS, 4, b"\x01\x00\x02\x00"))
    flipped = bytearray(good)
    flipped[6] ^= 0x04
    assert 0 not in flipped[1:-1]
    raw = P.encode_raw_frame(Command.STATUS, 21)
    body = bytes((Command.READ_MEM, 22, 3, 0, 1, 2))  # length field 3, payload 2 bytes
    bad_len = body + P.crc16(body).to_bytes(2, "big")
    oversize = raw_wire(P.encode_raw_frame(Command.WRITE_MEM, 23, P.pack_write_mem(0, 0, bytes(range(1, 252)) * 2)))
    data = b"".join([
        bytes(flipped),                           # BAD_CRC, NAK seq 20
        good,                                     # executed
        b"\x00\x07\x11\x22\x33\x00",             # COBS block truncated: BAD_FRAME, NAK seq 0x22
        b"\x00\x03\x05\x00",                      # truncated after 1 decoded byte: BAD_FRAME, no NAK
        raw_wire(raw[:4]),                        # 4 bytes: BAD_FRAME with NAK
        raw_wire(raw[:1]),                        # 1 byte: BAD_FRAME, no NAK
        b"\x00\x00\x00",                          # empty frames: ignored
        raw_wire(bad_len),                        # BAD_LENGTH
        oversize,                                 # BAD_LENGTH, discarded to the delimiter
        b"\x13\x37\xFF\x01\x02",                  # garbage up to the next delimiter
        frame(Command.STATUS, 24),
        b"\xAA\x00\x55\x66",                      # garbage with a zero in it
        frame(Command.READ_MEM, 25, P.pack_read_mem(Space.ACTS, 4, 4)),
        frame(Command.STATUS, 26),
    ])
    model, _, _ = check_same_as_model(bench, data, seed=3)
    c = model.counters
    assert c[DevCounter.BAD_CRC] >= 1 and c[DevCounter.BAD_FRAME] >= 3 and c[DevCounter.BAD_LENGTH] >= 2


def test_command_errors():
    bench = Bench(max_payload=64, align=4)
    data = b"".join([
        frame(0x07, 1),                                                # UNKNOWN_CMD
        frame(0x7F, 2, b"\x01\x02"),                                   # UNKNOWN_CMD
        frame(Command.IDENTIFY, 3, b"\x00"),                           # BAD_ARG (payload size)
        frame(Command.WRITE_MEM, 4, bytes(5)),                         # BAD_ARG (no data)
        frame(Command.WRITE_MEM, 5, b"\x03" + bytes(4) + bytes(4)),    # BAD_SPACE
        frame(Command.WRITE_MEM, 6, b"\xFF" + bytes(4) + bytes(4)),    # BAD_SPACE
        frame(Command.WRITE_MEM, 7, P.pack_write_mem(Space.ACTS, 2, bytes(4))),      # BAD_ALIGN (address)
        frame(Command.WRITE_MEM, 8, P.pack_write_mem(Space.ACTS, 4, bytes(3))),      # BAD_ALIGN (length)
        frame(Command.WRITE_MEM, 9, P.pack_write_mem(Space.DESC, 252, bytes(8))),    # BAD_ADDRESS
        frame(Command.WRITE_MEM, 10, P.pack_write_mem(Space.DESC, 0xFFFFFFFC, bytes(8))),  # BAD_ADDRESS (wrap)
        frame(Command.WRITE_MEM, 11, P.pack_write_mem(Space.DESC, 248, bytes(range(1, 9)))),  # OK, at the end
        frame(Command.READ_MEM, 12, P.pack_read_mem(Space.DESC, 248, 8) + b"\x00"),  # BAD_ARG (size)
        frame(Command.READ_MEM, 13, b"\x04" + bytes(4) + b"\x00\x00"),               # BAD_SPACE before len 0
        frame(Command.READ_MEM, 14, b"\x01" + bytes(4) + b"\x00\x00"),               # BAD_ARG (length 0)
        frame(Command.READ_MEM, 15, P.pack_read_mem(Space.ACTS, 0, 68)),             # BAD_ARG (> max_payload)
        frame(Command.READ_MEM, 16, P.pack_read_mem(Space.ACTS, 1, 4)),              # BAD_ALIGN
        frame(Command.READ_MEM, 17, P.pack_read_mem(Space.ACTS, 512, 4)),            # BAD_ADDRESS
        frame(Command.READ_MEM, 18, P.pack_read_mem(Space.DESC, 248, 8)),            # OK
        frame(Command.READ_MEM, 19, P.pack_read_mem(Space.WEIGHTS, 960, 64)),        # OK, max length
        frame(Command.RUN, 20, b"\x00\x00"),                           # BAD_ARG
        frame(Command.RUN, 21, P.pack_run(256)),                       # BAD_ADDRESS
        frame(Command.STATUS, 22, b"\x01"),                            # BAD_ARG
        frame(Command.RESET_COUNTERS, 23, b"\x01"),                    # BAD_ARG
        frame(Command.STATUS, 40),                                     # OUT_OF_ORDER, counters
        frame(Command.RESET_COUNTERS, 41),
        frame(Command.STATUS, 42),
    ])
    model, _, _ = check_same_as_model(bench, data, seed=4)
    assert model.counters[DevCounter.FRAMES_OK] == 1  # the last STATUS only


def test_duplicates_replay_without_executing():
    bench = Bench()
    w1 = frame(Command.WRITE_MEM, 50, P.pack_write_mem(Space.WEIGHTS, 16, bytes(range(1, 33))))
    st = frame(Command.STATUS, 51)
    rd = frame(Command.READ_MEM, 52, P.pack_read_mem(Space.WEIGHTS, 16, 32))
    w2 = frame(Command.WRITE_MEM, 53, P.pack_write_mem(Space.WEIGHTS, 16, bytes(32)))
    damaged = bytearray(w2)
    damaged[10] ^= 0x80
    unk = frame(0x33, 54)
    w3 = frame(Command.WRITE_MEM, 53, P.pack_write_mem(Space.WEIGHTS, 16, bytes(range(32))))  # same seq, new CRC
    data = b"".join([w1, w1, st, st, st, rd, rd, bytes(damaged), w2, w2, w3, w3, unk, unk, frame(Command.STATUS, 7)])
    model, res, _ = check_same_as_model(bench, data, seed=5, count_writes=True,
                                        post=mem_dump(bench.target, (Space.WEIGHTS,)))
    assert model.executed[Command.WRITE_MEM] == 3
    assert res["writes"] == 3 * 32  # each write reached the bus once
    assert res["post"][Space.WEIGHTS][16:48] == bytes(range(32))
    assert model.counters[DevCounter.DUPLICATE] == 7


def test_counters_saturate():
    bench = Bench()
    model = bench.model()
    preset = {DevCounter.FRAMES_OK: 0xFFFD, DevCounter.BAD_CRC: 0xFFFF, DevCounter.UNKNOWN_CMD: 0xFFFE}
    for c, v in preset.items():
        model.counters[c] = v
    bad = bytearray(frame(Command.STATUS, 1))
    bad[3] ^= 0x10
    data = b"".join([bytes(bad), frame(0x70, 2), frame(0x70, 3), frame(0x71, 4), frame(Command.STATUS, 5)])
    expect = model.feed(data)

    rng = random.Random(14)
    out = bytearray()

    async def testbench(ctx):
        for c, v in preset.items():
            ctx.set(bench.link.counters[c], v)
        ctx.set(bench.link.o.ready, 1)
        pos = 0
        while len(out) < len(expect) or pos < len(data):
            v = pos < len(data) and rng.random() < 0.9
            ctx.set(bench.link.i.valid, v)
            ctx.set(bench.link.i.payload, data[pos] if v else 0)
            _, _, i_rdy, o_val, o_pay = await ctx.tick().sample(bench.link.i.ready, bench.link.o.valid,
                                                                 bench.link.o.payload)
            pos += v and i_rdy
            if o_val:
                out.append(o_pay)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert bytes(out) == expect
    st = status_of(replies(expect)[-1])
    assert st.counter(DevCounter.FRAMES_OK) == 0xFFFF and st.counter(DevCounter.UNKNOWN_CMD) == 0xFFFF
    assert st.counter(DevCounter.BAD_CRC) == 0xFFFF


def test_backpressure_everywhere():
    """Heavy back-pressure on the output, long bus stalls, sparse input: same bytes as the model."""
    bench = Bench()
    rng = random.Random(6)
    data = bytearray()
    for seq, (space, addr, n) in enumerate([(Space.ACTS, 0, 200), (Space.WEIGHTS, 512, 64), (Space.DESC, 0, 17)]):
        payload = bytes(rng.randrange(256) for _ in range(n))
        data += frame(Command.WRITE_MEM, seq, P.pack_write_mem(space, addr, payload))
    data += frame(Command.READ_MEM, 3, P.pack_read_mem(Space.ACTS, 0, 200))
    data += frame(Command.READ_MEM, 4, P.pack_read_mem(Space.WEIGHTS, 500, 80))
    data += frame(Command.STATUS, 5)
    model, res, _ = check_same_as_model(bench, bytes(data), seed=6, p_in=0.5, p_out=0.3, p_stall=0.6,
                                        post=mem_dump(bench.target))
    for s in Space:
        assert res["post"][s] == bytes(model.mem[s])


def test_run_busy_done():
    bench = Bench(run_cycles=1000)
    data = b"".join([
        frame(Command.RUN, 1, P.pack_run(16)),
        frame(Command.STATUS, 2),
        frame(Command.WRITE_MEM, 3, P.pack_write_mem(Space.ACTS, 0, b"\x01")),    # BUSY unless done
        frame(Command.RUN, 4, P.pack_run(0)),                                    # BUSY unless done
        frame(Command.RUN, 5, P.pack_run(1000)),                                 # BAD_ADDRESS first
    ])
    got, _ = run_bench(bench, data, 0, tail=400, seed=7, p_out=1.0)
    r = replies(got)
    assert [f.seq for f in r] == [1, 2, 3, 4, 5]
    assert r[0] == P.Frame(P.ack_code(Command.RUN), 1, b"")
    st = status_of(r[1])
    assert st.busy and not st.done and st.run_status == Status.OK and 0 < st.cycles < 1000
    assert r[2] == P.Frame(P.NAK_CODE, 3, P.pack_nak(Status.BUSY, Command.WRITE_MEM))
    assert r[3] == P.Frame(P.NAK_CODE, 4, P.pack_nak(Status.BUSY, Command.RUN))
    assert r[4] == P.Frame(P.NAK_CODE, 5, P.pack_nak(Status.BAD_ADDRESS, Command.RUN))
    # Long after (a fresh simulation): done, the run's cycle count; a new RUN is accepted.
    bench = Bench()
    data2 = frame(Command.RUN, 1, P.pack_run(16)) + b"\x00" * 120 + frame(Command.STATUS, 2) + \
        frame(Command.RUN, 3, P.pack_run(0)) + frame(Command.STATUS, 4)
    got, _ = run_bench(bench, data2, 0, tail=300, seed=8, p_in=0.3)
    r = replies(got)
    st = status_of(r[1])
    assert not st.busy and st.done and st.cycles == RUN_CYCLES, st
    assert r[2] == P.Frame(P.ack_code(Command.RUN), 3, b"")
    st = status_of(r[3])
    assert st.busy and not st.done
    assert st.counter(DevCounter.FRAMES_OK) == 4 and st.counter(DevCounter.OUT_OF_ORDER) == 0


class ConfigBench(Bench):
    """Bench with another IDENTIFY configuration (the model reports the same)."""

    def __init__(self, config: str, **kw):
        super().__init__(**kw)
        self.config = config
        self.link = HostLink(max_payload=self.link.max_payload, space_sizes=SIZES, config_json=config.encode())

    def model(self) -> DevModel:
        return DevModel(sizes=SIZES, max_payload=self.link.max_payload, config=self.config, run_cycles=RUN_CYCLES)


def _nonzero_crc_seq(code, payload, start):
    """The first seq from ``start`` whose reply CRC has two nonzero bytes."""
    for seq in range(start, start + 256):
        raw = P.encode_raw_frame(code, seq & 0xFF, payload)
        if raw[-2] and raw[-1]:
            return seq & 0xFF
    raise AssertionError("no such seq")


def test_full_cobs_blocks_in_replies():
    """Replies with runs of 254+ nonzero bytes: full COBS blocks inside a frame, on its CRC, at its end.

    READ_MEM of n nonzero bytes (the length's high byte is 0, so the last COBS block starts with the
    data): n = 252 fills a block exactly with the CRC (minimal form: no final empty block), n = 253
    puts the 254th byte on CRC[15:8], n = 254 on the last data byte; longer runs span blocks; a long
    IDENTIFY payload without zeros does the same from the copy of the configuration.
    """
    config = json.dumps({"note": "x" * 600, "beta_w": 16}, separators=(",", ":"))
    bench = ConfigBench(config)
    rng = random.Random(17)
    blob = bytes(rng.randrange(1, 256) for _ in range(512))
    data = bytearray()
    data += frame(Command.WRITE_MEM, 1, P.pack_write_mem(Space.WEIGHTS, 0, blob[:251]))
    data += frame(Command.WRITE_MEM, 2, P.pack_write_mem(Space.WEIGHTS, 251, blob[251:502]))
    seq = 3
    expect_full_end = []
    for n in (252, 253, 254, 255, 250, 256):
        seq = _nonzero_crc_seq(P.ack_code(Command.READ_MEM), blob[:n], seq)
        data += frame(Command.READ_MEM, seq, P.pack_read_mem(Space.WEIGHTS, 0, n))
        if n == 252:
            enc = P.cobs_encode(P.encode_raw_frame(P.ack_code(Command.READ_MEM), seq, blob[:n]))
            expect_full_end.append(enc[-255] == 0xFF)  # the frame ends with a full block
        seq += 1
    data += frame(Command.IDENTIFY, seq) + frame(Command.IDENTIFY, seq)  # the second one is replayed
    assert expect_full_end == [True]
    model, _, _ = check_same_as_model(bench, bytes(data), seed=17, p_out=0.7)
    assert model.counters[DevCounter.DUPLICATE] == 1


def test_uart_end_to_end():
    """Host UART -> device UART -> HostLink -> device UART -> host UART, bit level, stop-and-wait."""
    bench = Bench(uart_divisor=4)
    data = b"".join([
        frame(Command.IDENTIFY, 200),
        frame(Command.WRITE_MEM, 201, P.pack_write_mem(Space.ACTS, 32, bytes(range(0, 48, 3)))),
        frame(Command.READ_MEM, 202, P.pack_read_mem(Space.ACTS, 30, 20)),
        frame(Command.STATUS, 203),
    ])
    check_same_as_model(bench, data, seed=9, p_in=1.0, p_out=1.0, stop_and_wait=True, tail=50, max_cycles=40_000)


# The real host driver against the simulated device ---------------------------------------------------

class SimPipe(BytePipe):
    """A BytePipe whose far end is the simulated HostLink: reads advance the simulation.

    A background testbench moves bytes between Python buffers and the HostLink's streams; ``read``
    runs the simulation until the device has sent something, or ``budget`` cycles have passed
    without (a timeout for the Link, however long that took in wall time).
    """

    PERIOD = 1e-6

    def __init__(self, bench, *, budget=4000, chunk=16):
        self.bench = bench
        self.to_dev = bytearray()
        self.from_dev = bytearray()
        self.budget = budget
        self.chunk = chunk
        self.cycle = 0
        self.sim = Simulator(bench)
        self.sim.add_clock(self.PERIOD)
        self.sim.add_testbench(self._pump, background=True)
        self.closed = False

    async def _pump(self, ctx):
        inp, out = self.bench.link.i, self.bench.link.o
        ctx.set(out.ready, 1)
        valid = False
        while True:
            if self.to_dev and not valid:
                ctx.set(inp.payload, self.to_dev[0])
                ctx.set(inp.valid, 1)
                valid = True
            _, _, i_rdy, o_val, o_pay = await ctx.tick().sample(inp.ready, out.valid, out.payload)
            if valid and i_rdy:
                del self.to_dev[0]
                valid = False
                ctx.set(inp.valid, 0)
            if o_val:
                self.from_dev.append(o_pay)

    def write(self, data):
        self.to_dev += data

    def read(self, n, timeout):
        waited = 0
        while not self.from_dev and waited < self.budget:
            self.cycle += self.chunk
            waited += self.chunk
            self.sim.run_until(self.cycle * self.PERIOD)
        data = bytes(self.from_dev[:n])
        del self.from_dev[:n]
        return data

    def close(self):
        self.closed = True


def test_host_link_driver_against_gateware():
    bench = Bench()
    pipe = SimPipe(bench)
    link = Link(pipe, timeout=60.0, retries=3, start_seq=0)
    info = link.connect(expect_config={"beta_w": 16})
    assert info.max_payload == 256 and info.sizes == (1024, 512, 256)
    rng = random.Random(10)
    blob = bytes(rng.randrange(256) for _ in range(600))
    link.write_mem(Space.WEIGHTS, 100, blob)
    assert link.read_mem(Space.WEIGHTS, 100, 600) == blob
    with pytest.raises(DeviceError) as exc:
        link.transact(Command.READ_MEM, P.pack_read_mem(Space.ACTS, 510, 4))
    assert exc.value.status == Status.BAD_ADDRESS
    link.run(8)
    st = link.wait_idle(timeout=30.0)
    assert st.done and st.cycles == RUN_CYCLES
    assert st.counter(DevCounter.BAD_ARG) == 1 and st.counter(DevCounter.FRAMES_OK) == link.stats.requests
    link.reset_counters()
    assert link.status().counters == (1,) + (0,) * (len(DevCounter) - 1)
    assert link.stats.retransmits == 0


def test_host_link_driver_through_faulty_line():
    """Bit flips, drops and garbage on both directions: the driver recovers, data arrives once."""
    bench = Bench()
    inner = SimPipe(bench, budget=1500)
    pipe = FaultyPipe(inner, seed=11, flip=0.004, drop=0.002, insert=0.002, burst=3)
    link = Link(pipe, timeout=60.0, retries=12, start_seq=100)
    link.connect()
    rng = random.Random(12)
    blob = bytes(rng.randrange(256) for _ in range(400))
    link.write_mem(Space.ACTS, 64, blob)
    assert link.read_mem(Space.ACTS, 64, 400) == blob
    assert pipe.faults() > 0
    assert link.stats.retransmits > 0


# Export and parameters -------------------------------------------------------------------------------

def test_verilog_export():
    link = HostLink(max_payload=256, space_sizes=SIZES, config_json=CONFIG.encode())
    text = verilog.convert(link, name="hostlink")
    assert "module hostlink" in text


def test_parameters():
    link = HostLink(max_payload=64, space_sizes=[128 * 1024, 4096, 0], config_json=b'{"x":1}', align=2)
    assert P.unpack_identify(link.identify_payload) == P.DeviceInfo(max_payload=64, align=2,
                                                                    sizes=(128 * 1024, 4096, 0), config='{"x":1}')
    assert link.bus.signature == HostBusSignature([128 * 1024, 4096, 0])
    assert link.bus.signature.addr_width == 17
    assert link.reply_buffer_bytes == 64 and STATUS_PAYLOAD_BYTES == 24
    with pytest.raises(ValueError, match="max_payload"):
        HostLink(max_payload=32, space_sizes=SIZES)
    with pytest.raises(ValueError, match="align"):
        HostLink(space_sizes=SIZES, align=3)
    with pytest.raises(TypeError, match="config_json"):
        HostLink(space_sizes=SIZES, config_json="{}")
    with pytest.raises(ValueError, match="space_sizes"):
        HostLink(space_sizes=[1, 2])
    with pytest.raises(ValueError, match="IDENTIFY"):
        HostLink(space_sizes=SIZES, config_json=b'"' + b"x" * 1100 + b'"')
