"""Core memories with a byte-wide host side: :class:`EntryMemory` and :class:`EntryStager`.

The host bus (:mod:`hadahw.rtl.hostbus`) moves bytes; the core's memories hold wide entries (an
engine word, an activation word).  An :class:`EntryMemory` maps entry ``e`` at byte address
``e * stride`` (``stride`` a power of two, at least the entry's bytes, the rest holes) and has
one synchronous read port and one byte-granular write port, each shared between the host (while
the core is idle) and the core (while it runs).  An :class:`EntryStager` turns byte writes into
whole-entry writes for a memory that lives inside another block (the requantizer's parameters).
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory, MemoryData
from amaranth.lib.wiring import In, Out

__all__ = ["EBRReadPort", "EntryMemory", "EntryStager"]


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _check_stride(nbytes: int, stride: int) -> None:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < nbytes or stride & (stride - 1):
        raise ValueError(f"stride must be a power of two >= {nbytes} bytes, not {stride!r}")


class EBRReadPort:
    """A synchronous read port (``addr``, ``en``, ``data``) that Yosys maps with no collision logic.

    Amaranth writes a ``lib.memory`` read port as a synchronous ``$memrd_v2`` whose read-during-
    write behaviour is fixed ("old data": ``COLLISION_X_MASK`` 0), which the iCE40 EBR does not
    have, so ``synth_ice40`` emulates it beside every EBR that is written and read in one clock
    domain (registers on the write data, address and enables and a bypass mux: about 2.5
    flip-flops per data bit).  Built instead as an asynchronous read and a register, Yosys'
    ``memory_dff`` merges the register into the port and, for a memory with the ``no_rw_check``
    attribute, marks a same-address read and write as undefined: no emulation.  Same contract as
    ``read_port()``: ``data`` is the entry at ``addr`` from the cycle after ``en``, held while ``en``
    is low.  The register has no reset (an EBR output cannot be reset; resetting it would also be
    emulated).  Its power-up value (0) is still emulated, by one flip-flop and an AND per data bit
    that usually merges into the reader's logic.  Measured alone (yosys 0.70 ``synth_ice40``, 1x8
    board configuration): the activation memory (40 bits x 1024) 172 LUT4 + 105 flip-flops ->
    160 + 6, the descriptor memory (8 x 512) 33 + 27 -> 19 + 1.  Any ``lib.memory`` that is
    written and read in one domain (the pooling line buffer and the requantizer's parameters
    too) can use it.
    """

    def __init__(self, m: Module, mem: Memory):
        port = mem.read_port(domain="comb")
        self.addr = port.addr
        self.en = Signal()
        self.data = Signal(port.data.shape(), reset_less=True)
        with m.If(self.en):
            m.d.sync += self.data.eq(port.data)


class EntryMemory(wiring.Component):
    """``depth`` entries of ``nbytes`` bytes, byte-addressed by the host, entry-wide for the core.

    Parameters
    ----------
    nbytes : int
        Bytes per entry (the memory is ``8 * nbytes`` bits wide; write granularity 8).
    depth : int
        Entries.
    stride : int
        Byte stride of an entry in the host's address space (power of two >= ``nbytes``).
    core_write : bool
        Whether the core has a write port (``core_we``, ``core_waddr``, ``core_wdata``).
    spram : bool
        Build the storage from iCE40 UP5K SB_SPRAM256KA blocks (16 bits x 16384 each, one per
        two bytes of entry) when elaborated for an iCE40 UP platform; elsewhere (simulation,
        Verilog export without a platform) the ``lib.memory`` model below, which has the same
        port contract.  Not with ``core_write``.

    Attributes
    ----------
    data : MemoryData
        The storage (simulation may read and poke ``data[e]``).
    host_addr_width : int
        Width of ``host_addr``: ``log2(depth * stride)`` rounded up.

    Members
    -------
    core : In(1)
        The ports belong to the core (1) or the host (0).
    host_addr : In(host_addr_width)
        Byte address; lane ``host_addr % stride`` of entry ``host_addr // stride``.
    host_we, host_wdata : In(1), In(8)
        Write the byte (ignored in holes and while ``core``).
    host_re : In(1)
        Read the byte; ``host_rdata`` shows it from the next cycle until the next ``host_re``
        (0 for holes).  Ignored while ``core``.
    host_rdata : Out(8)
    core_re, core_raddr : In(1), In(range(depth))
        Read an entry; ``core_rdata`` shows it from the next cycle and holds it while ``core_re``
        is low (a read enable tied to the reader's progress makes stalls safe).
    core_rdata : Out(8 * nbytes)
    core_we, core_waddr, core_wdata : In (only with ``core_write``)
        Write a whole entry.
    """

    def __init__(self, *, nbytes: int, depth: int, stride: int, core_write: bool = False, spram: bool = False):
        for name, v in (("nbytes", nbytes), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        _check_stride(nbytes, stride)
        if spram and (core_write or depth > 16384):
            self._MustUse__silence = True  # never built: no "created but never used" warning
            raise ValueError(f"spram needs depth <= 16384 and no core write port, not depth={depth}, "
                             f"core_write={core_write}")
        self.nbytes, self.depth, self.stride, self.core_write = nbytes, depth, stride, core_write
        self.spram = spram
        self.data = MemoryData(shape=unsigned(8 * nbytes), depth=depth, init=[])
        self.host_addr_width = max(1, (depth * stride - 1).bit_length())
        members = {
            "core": In(1),
            "host_addr": In(self.host_addr_width),
            "host_we": In(1),
            "host_wdata": In(8),
            "host_re": In(1),
            "host_rdata": Out(8),
            "core_re": In(1),
            "core_raddr": In(range(depth)),
            "core_rdata": Out(8 * nbytes),
        }
        if core_write:
            members.update({"core_we": In(1), "core_waddr": In(range(depth)), "core_wdata": In(8 * nbytes)})
        super().__init__(members)

    def elaborate(self, platform):
        if self.spram and str(getattr(platform, "device", "")).startswith("iCE40UP"):
            return self._elaborate_spram()
        m = Module()
        # A read of the entry written in the same cycle returns an undefined value (the EBR's own
        # behaviour; ``no_rw_check`` with EBRReadPort spares the logic that would emulate one): the
        # host never reads and writes in one cycle, and the core never reads the buffer a layer
        # writes.
        m.submodules.mem = mem = Memory(data=self.data, attrs={"no_rw_check": 1})
        wp = mem.write_port(granularity=8)
        rp = EBRReadPort(m, mem)
        lane_bits = _log2(self.stride)
        entry_bits = max(0, (self.depth - 1).bit_length())
        host_lane = self.host_addr[:lane_bits] if lane_bits else Const(0, 1)
        host_entry = self.host_addr[lane_bits:lane_bits + entry_bits] if entry_bits else Const(0, 1)

        # Read port: the core's while `core`, else the host's.
        m.d.comb += [
            rp.addr.eq(Mux(self.core, self.core_raddr, host_entry)),
            rp.en.eq(Mux(self.core, self.core_re, self.host_re)),
            self.core_rdata.eq(rp.data),
        ]
        # The host's byte: an AND-OR over one-hot lane selects (cheaper than a binary byte mux for
        # wide entries); no lane is selected for a hole.
        if self.nbytes > 1:
            lane_oh = Signal(self.nbytes)
            with m.If(~self.core & self.host_re):
                m.d.sync += lane_oh.eq(Cat(*(host_lane == b for b in range(self.nbytes))))
            bytes_ = [rp.data[8 * b:8 * b + 8] for b in range(self.nbytes)]
            m.d.comb += self.host_rdata.eq(
                Cat(*[Cat(*[lane_oh[b] & bytes_[b][i] for b in range(self.nbytes)]).any() for i in range(8)]))
        else:
            lane_r = Signal(max(1, lane_bits))
            with m.If(~self.core & self.host_re):
                m.d.sync += lane_r.eq(host_lane)
            m.d.comb += self.host_rdata.eq(Mux(lane_r == 0, rp.data, 0) if self.stride > 1 else rp.data)

        # Write port: byte lanes for the host, all lanes for the core.
        host_en = (Const(1, self.nbytes) << host_lane)[:self.nbytes]
        if self.core_write:
            with m.If(self.core):
                m.d.comb += [wp.addr.eq(self.core_waddr), wp.data.eq(self.core_wdata),
                             wp.en.eq(Mux(self.core_we, (1 << self.nbytes) - 1, 0))]
            with m.Else():
                m.d.comb += [wp.addr.eq(host_entry), wp.data.eq(self.host_wdata.replicate(self.nbytes)),
                             wp.en.eq(Mux(self.host_we, host_en, 0))]
        else:
            m.d.comb += [wp.addr.eq(host_entry), wp.data.eq(self.host_wdata.replicate(self.nbytes)),
                         wp.en.eq(Mux(self.host_we & ~self.core, host_en, 0))]
        return m

    def _elaborate_spram(self) -> Module:
        """The same contract on SB_SPRAM256KA blocks (single port: one address, read or write).

        The host writes only while the core is idle and the core never writes, so one address
        mux serves both.  An SPRAM's DATAOUT holds while CHIPSELECT is low but is undefined after
        a write, so the last read word is also kept in a register and shown from the cycle after
        the read on (a read-after-read shows DATAOUT directly).
        """
        m = Module()
        lane_bits = _log2(self.stride)
        entry_bits = max(0, (self.depth - 1).bit_length())
        host_lane = self.host_addr[:lane_bits] if lane_bits else Const(0, 1)
        host_entry = self.host_addr[lane_bits:lane_bits + entry_bits] if entry_bits else Const(0, 1)
        addr = Signal(14)
        write = self.host_we & ~self.core
        read = Mux(self.core, self.core_re, self.host_re)
        m.d.comb += addr.eq(Mux(self.core, self.core_raddr, host_entry))
        byte_en = (Const(1, self.nbytes) << host_lane)[:self.nbytes]
        blocks = -(-self.nbytes // 2)
        dout = []
        for i in range(blocks):
            q = Signal(16, name=f"spram{i}_q")
            lo = byte_en[2 * i]
            hi = byte_en[2 * i + 1] if 2 * i + 1 < self.nbytes else Const(0, 1)
            m.submodules[f"spram{i}"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr, i_DATAIN=self.host_wdata.replicate(2), i_MASKWREN=Cat(lo, lo, hi, hi),
                i_WREN=write, i_CHIPSELECT=read | write, i_CLOCK=ClockSignal(),
                i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=q)
            dout.append(q)
        word = Cat(*dout)[:8 * self.nbytes]
        fresh = Signal()  # DATAOUT is the word read in the previous cycle
        held = Signal(8 * self.nbytes)
        m.d.sync += fresh.eq(read & ~write)
        with m.If(fresh):
            m.d.sync += held.eq(word)
        data = Signal(8 * self.nbytes)
        m.d.comb += [data.eq(Mux(fresh, word, held)), self.core_rdata.eq(data)]
        lane_r = Signal(max(1, lane_bits))
        with m.If(~self.core & self.host_re):
            m.d.sync += lane_r.eq(host_lane)
        padded = Cat(data, Const(0, 8 * (self.stride - self.nbytes))) if self.stride > self.nbytes else data
        m.d.comb += self.host_rdata.eq(padded.word_select(lane_r, 8) if self.stride > 1 else data)
        return m


class EntryStager(wiring.Component):
    """Assembles host byte writes into whole entries for a memory with a word-wide write port.

    A byte for lane ``b < nbytes`` of an entry is kept in a staging register; the byte of lane
    ``nbytes - 1`` commits the entry (``we`` for one cycle, ``addr`` = entry, ``data`` = the
    staged bytes with it).  Write an entry's bytes in address order; bytes in holes are ignored.

    Parameters
    ----------
    nbytes, depth, stride : int
        As for :class:`EntryMemory`.
    width : int
        Bits of ``data`` (the low bits of the staged bytes), at most ``8 * nbytes``.

    Members
    -------
    host_addr, host_we, host_wdata : In
        Byte writes (``host_addr`` relative to the region).
    we : Out(1)
    addr : Out(range(depth))
    data : Out(width)
    """

    def __init__(self, *, nbytes: int, depth: int, stride: int, width: int):
        _check_stride(nbytes, stride)
        if not 1 <= width <= 8 * nbytes:
            raise ValueError(f"width must be in 1..{8 * nbytes}, not {width!r}")
        self.nbytes, self.depth, self.stride, self.width = nbytes, depth, stride, width
        self.host_addr_width = max(1, (depth * stride - 1).bit_length())
        super().__init__({
            "host_addr": In(self.host_addr_width),
            "host_we": In(1),
            "host_wdata": In(8),
            "we": Out(1),
            "addr": Out(range(depth)),
            "data": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        lane_bits = _log2(self.stride)
        entry_bits = max(0, (self.depth - 1).bit_length())
        lane = self.host_addr[:lane_bits] if lane_bits else Const(0, 1)
        entry = self.host_addr[lane_bits:lane_bits + entry_bits] if entry_bits else Const(0, 1)
        staged = [Signal(8, name=f"staged{b}") for b in range(self.nbytes - 1)]
        with m.If(self.host_we):
            for b, reg in enumerate(staged):
                with m.If(lane == b):
                    m.d.sync += reg.eq(self.host_wdata)
        m.d.comb += [
            self.we.eq(self.host_we & (lane == self.nbytes - 1)),
            self.addr.eq(entry),
            self.data.eq(Cat(*staged, self.host_wdata)[:self.width]),
        ]
        return m
