"""The pin-free interface between :class:`~hadahw.rtl.hostlink.HostLink` and the accelerator core.

The HostLink is the initiator: it writes and reads bytes of the address spaces of
:class:`hadahw.protocol.Space` and starts programs; the core (the target) reports its state.
Every transfer is a :mod:`amaranth.lib.stream` (valid never waits on ready; the target may stall
with ``ready`` for as long as it likes):

``write``     {space, addr, data}  one byte per transfer, in address order within a request
``read_req``  {space, addr}        one byte per transfer
``read_resp`` data (8 bits)        one response per request, in request order
``run``       u32 program address  (in ``Space.DESC``); offered only while ``busy`` is low, and
                                   the target must take it (the HostLink waits for ``ready``)
                                   and show ``busy`` (or ``done``) from the next cycle on
``busy``, ``done``, ``run_status`` (a :class:`~hadahw.protocol.Status`), ``cycles`` (u32): the
state of the current or last run, read by STATUS (``busy`` also refuses WRITE_MEM, READ_MEM and
RUN with BUSY).

The HostLink issues transfers of one request at a time (WRITE_MEM bytes, or READ_MEM requests
while it collects their responses) and never mixes memory traffic with a run in the same
request; it keeps ``read_resp.ready`` high while reading, so a target may pipeline reads.

The HostLink has already range-checked every address against ``space_sizes`` (BAD_ADDRESS), so
``addr`` is always inside the space; the address width is that of the largest space.
:class:`ByteMemoryTarget` is a simple target: one byte-wide memory per space and a fake run.
"""

from __future__ import annotations

import operator
from typing import Mapping, Sequence

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, MemoryData
from amaranth.lib.wiring import In, Out

from hadahw.protocol import Space

__all__ = ["SPACE_BITS", "normalize_space_sizes", "HostBusSignature", "ByteMemoryTarget"]

#: Width of the ``space`` field (the spaces of :class:`hadahw.protocol.Space`).
SPACE_BITS = 2


def normalize_space_sizes(space_sizes) -> tuple[int, ...]:
    """Bytes per :class:`Space`, as a tuple indexed by space.

    ``space_sizes`` is a mapping from Space (or its int value) to bytes, missing spaces being 0,
    or a sequence of one size per space in Space order.
    """
    if isinstance(space_sizes, Mapping):
        unknown = [k for k in space_sizes if k not in set(Space)]
        if unknown:
            raise ValueError(f"space_sizes has keys that are not spaces: {unknown!r}")
        sizes = [space_sizes.get(s, 0) for s in Space]
    elif isinstance(space_sizes, Sequence) and not isinstance(space_sizes, (str, bytes)):
        if len(space_sizes) != len(Space):
            raise ValueError(f"space_sizes must have {len(Space)} entries (one per Space), not {len(space_sizes)}")
        sizes = list(space_sizes)
    else:
        raise TypeError(f"space_sizes must be a mapping or a sequence, not {type(space_sizes).__name__}")
    out = []
    for s, v in zip(Space, sizes):
        if isinstance(v, bool):
            raise TypeError(f"size of space {s.name} must be an integer, not bool")
        try:
            v = operator.index(v)
        except TypeError:
            raise TypeError(f"size of space {s.name} must be an integer, not {type(v).__name__}") from None
        if not 0 <= v < 1 << 32:
            raise ValueError(f"size of space {s.name} must be in [0, 2**32), not {v}")
        out.append(v)
    if max(out) == 0:
        raise ValueError("space_sizes must give at least one space a nonzero size")
    return tuple(out)


class HostBusSignature(wiring.Signature):
    """Signature of the host bus, from the initiator's (HostLink's) side.

    Parameters
    ----------
    space_sizes : mapping or sequence
        Bytes per :class:`~hadahw.protocol.Space` (see :func:`normalize_space_sizes`).
    addr_width : int, optional
        Width of ``addr``; at least enough for the largest space (the default).
    """

    def __init__(self, space_sizes, *, addr_width: int | None = None):
        self.space_sizes = normalize_space_sizes(space_sizes)
        need = max(1, (max(self.space_sizes) - 1).bit_length())
        if addr_width is None:
            addr_width = need
        if isinstance(addr_width, bool) or not isinstance(addr_width, int) or not need <= addr_width <= 32:
            raise ValueError(f"addr_width must be an integer in [{need}, 32] for these spaces, not {addr_width!r}")
        self.addr_width = addr_width
        self.write_layout = data.StructLayout({"space": SPACE_BITS, "addr": addr_width, "data": 8})
        self.read_layout = data.StructLayout({"space": SPACE_BITS, "addr": addr_width})
        super().__init__({
            "write": Out(stream.Signature(self.write_layout)),
            "read_req": Out(stream.Signature(self.read_layout)),
            "read_resp": In(stream.Signature(8)),
            "run": Out(stream.Signature(32)),
            "busy": In(1),
            "done": In(1),
            "run_status": In(8),
            "cycles": In(32),
        })

    def __eq__(self, other):
        return (type(other) is HostBusSignature and self.space_sizes == other.space_sizes
                and self.addr_width == other.addr_width)

    def __hash__(self):
        return hash((HostBusSignature, self.space_sizes, self.addr_width))

    def __repr__(self):
        return f"HostBusSignature({self.space_sizes!r}, addr_width={self.addr_width})"


class ByteMemoryTarget(wiring.Component):
    """A host-bus target: one byte-wide :class:`~amaranth.lib.memory.Memory` per space, fake runs.

    Writes take one cycle; a read answers one cycle after its request is taken.  RUN makes it
    busy for ``run_cycles`` cycles, counting ``cycles``, then done with ``run_status`` 0.  It is
    the stand-in for the accelerator core in tests (its memories are not meant for the UP5K:
    big spaces want SPRAM).

    Parameters
    ----------
    space_sizes : mapping or sequence
        Bytes per space (see :func:`normalize_space_sizes`); a space of size 0 has no memory.
    run_cycles : int
        Length of a fake run (>= 1).
    addr_width : int, optional
        As in :class:`HostBusSignature`.

    Members
    -------
    bus : In(HostBusSignature)
    stall : In(1)
        While high, ``write``, ``read_req`` and ``run`` are not ready (back-pressure for tests).
    run_addr : Out(32)
        Address of the last accepted run.
    runs : Out(16)
        Runs accepted (wrapping).

    Attributes
    ----------
    mem_data : tuple of MemoryData or None
        The storage of each space (for simulation: ``ctx.get(target.mem_data[s][i])``).
    """

    def __init__(self, space_sizes, *, run_cycles: int = 16, addr_width: int | None = None):
        sig = HostBusSignature(space_sizes, addr_width=addr_width)
        if isinstance(run_cycles, bool) or not isinstance(run_cycles, int) or run_cycles < 1:
            raise ValueError(f"run_cycles must be a positive integer, not {run_cycles!r}")
        self.run_cycles = run_cycles
        self.mem_data = tuple(MemoryData(shape=8, depth=size, init=[]) if size else None
                              for size in sig.space_sizes)
        super().__init__({
            "bus": In(sig),
            "stall": In(1),
            "run_addr": Out(32),
            "runs": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        wr, rq, rs, run = bus.write, bus.read_req, bus.read_resp, bus.run

        resp_valid = Signal()
        resp_space = Signal(SPACE_BITS)
        m.d.comb += [
            wr.ready.eq(~self.stall),
            rq.ready.eq(~self.stall & (~resp_valid | rs.ready)),
            rs.valid.eq(resp_valid),
        ]
        take_rd = rq.valid & rq.ready
        with m.If(take_rd):
            m.d.sync += [resp_valid.eq(1), resp_space.eq(rq.payload.space)]
        with m.Elif(rs.ready):
            m.d.sync += resp_valid.eq(0)

        for space, mdata in enumerate(self.mem_data):
            if mdata is None:
                continue
            mem = Memory(data=mdata)
            m.submodules[f"mem_{Space(space).name.lower()}"] = mem
            aw = max(0, (mdata.depth - 1).bit_length())
            wp = mem.write_port()
            rp = mem.read_port()
            m.d.comb += [
                wp.addr.eq(wr.payload.addr[:aw]),
                wp.data.eq(wr.payload.data),
                wp.en.eq(wr.valid & wr.ready & (wr.payload.space == space)),
                rp.addr.eq(rq.payload.addr[:aw]),
                rp.en.eq(take_rd & (rq.payload.space == space)),
            ]
            with m.If(resp_space == space):
                m.d.comb += rs.payload.eq(rp.data)

        # Fake run.
        remaining = Signal(range(self.run_cycles + 1))
        m.d.comb += [
            run.ready.eq(~bus.busy & ~self.stall),
            bus.run_status.eq(0),
        ]
        with m.If(run.valid & run.ready):
            m.d.sync += [
                bus.busy.eq(1), bus.done.eq(0), bus.cycles.eq(0), remaining.eq(self.run_cycles),
                self.run_addr.eq(run.payload), self.runs.eq(self.runs + 1),
            ]
        with m.Elif(bus.busy):
            m.d.sync += [bus.cycles.eq(bus.cycles + 1), remaining.eq(remaining - 1)]
            with m.If(remaining == 1):
                m.d.sync += [bus.busy.eq(0), bus.done.eq(1)]
        return m
