"""Sequencer alone: which descriptors start a layer and which fault, against a reference predicate.

The sequencer checks a descriptor while it fetches it (dropped bits, zero counts) and at set-up
(limits of the array); the reference below restates the contract on the decoded fields, written
independently of the gateware: a field's bits beyond the core's register width must be zero
(except in wrapping and ignored fields), no count may be zero (in the bits the register keeps),
``last_count <= L``, ``last_rows <= R``, ``pool <= max_pool``, and a non-final layer's
``log2_out_beta_a`` must be ``log2(beta_a)``.  Each case mutates one or two fields of a valid
descriptor (zero, one, all ones in the kept bits, the first dropped bit, a low byte of zero with
a high byte set, random), runs it, and resets the sequencer.  The whole-core tests
(``test_rtl_core.py``) cover the loops and the fault paths of RUN addresses.
"""

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, ResetInserter, Signal
from amaranth.sim import Simulator

from hadahw.params import AcceleratorConfig
from hadahw.program import (DESCRIPTOR_BYTES, DESCRIPTOR_FIELDS, FLAG_FINAL, IGNORED_FIELDS, WRAPPING_FIELDS,
                            Descriptor, descriptor_field_bits)
from hadahw.rtl.memories import EntryMemory
from hadahw.rtl.sequencer import Sequencer

#: Fields that count something: zero is a fault (stated here independently of the gateware).
COUNTS = ("in_h", "in_w", "kh", "kw", "stride", "pool", "out_h", "out_w", "n", "wpp", "last_count", "passes",
          "last_rows", "out_pixels")


def reference_faults(desc, cfg: AcceleratorConfig) -> bool:
    widths = descriptor_field_bits(cfg)
    kept = {name: getattr(desc, name) & ((1 << widths[name]) - 1) for name, _, _ in DESCRIPTOR_FIELDS}
    for name, _, _ in DESCRIPTOR_FIELDS:
        if name not in WRAPPING_FIELDS + IGNORED_FIELDS and getattr(desc, name) >> widths[name]:
            return True
    if any(kept[name] == 0 for name in COUNTS):
        return True
    if kept["last_count"] > cfg.lanes or kept["last_rows"] > cfg.rows or kept["pool"] > cfg.max_pool:
        return True
    return not kept["flags"] & FLAG_FINAL and kept["log2_out_beta_a"] != cfg.beta_a.bit_length() - 1


def valid_descriptor(cfg: AcceleratorConfig, final: bool) -> dict:
    fields = {name: 0 for name, _, _ in DESCRIPTOR_FIELDS}
    fields.update({name: 1 for name in COUNTS})
    fields.update(flags=FLAG_FINAL if final else 0, log2_out_beta_a=0 if final else cfg.beta_a.bit_length() - 1,
                  in_c=3, words=1, in_addr=5, first_addr=0xFFFF)  # ignored / wrapping fields: any value
    return fields


def mutations(rng, cfg: AcceleratorConfig, n: int) -> list:
    widths = descriptor_field_bits(cfg)
    sizes = {name: size for name, size, _ in DESCRIPTOR_FIELDS}
    cases = []
    for i in range(n):
        fields = valid_descriptor(cfg, final=bool(i % 3))
        for name in rng.choice([name for name, _, _ in DESCRIPTOR_FIELDS], size=1 + i % 2, replace=False):
            w, top = widths[name], (1 << 8 * sizes[name]) - 1
            choices = [0, 1, (1 << w) - 1 if w else 0, min(top, 1 << w), int(rng.integers(0, top + 1))]
            if sizes[name] > 1:
                choices.append(1 << (8 * int(rng.integers(1, sizes[name]))))  # low byte 0, a high byte set
            fields[name] = int(rng.choice(choices)) & top
        cases.append(Descriptor(**fields))
    # Both sides of each limit of the array, in a final and a non-final layer.
    limits = {"last_count": cfg.lanes, "last_rows": cfg.rows, "pool": cfg.max_pool,
              "log2_out_beta_a": cfg.beta_a.bit_length() - 1}
    for name, limit in limits.items():
        for value in (limit - 1, limit, limit + 1):
            for final in (False, True):
                cases.append(Descriptor(**{**valid_descriptor(cfg, final), name: max(value, 0)}))
    return cases


class _Bench(Elaboratable):
    """The sequencer, its DESC memory, and a reset the testbench drives."""

    def __init__(self, cfg):
        self.seq = Sequencer(cfg)
        self.desc = EntryMemory(nbytes=1, depth=cfg.desc_bytes, stride=1)
        self.rst = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.seq = seq = self.seq
        m.submodules.desc = desc = self.desc
        m.d.comb += [desc.core.eq(1), desc.core_re.eq(seq.desc_re), desc.core_raddr.eq(seq.desc_raddr),
                     seq.desc_rdata.eq(desc.core_rdata), seq.layer_done.eq(1), seq.beat.ready.eq(1)]
        return ResetInserter(self.rst)(m)


@pytest.mark.parametrize("cfg", [
    AcceleratorConfig(rows=2, lanes=8, beta_w=8, beta_a=2, act_depth=64, weight_depth=64, param_depth=16,
                      desc_bytes=2 * DESCRIPTOR_BYTES, max_channels=8, max_pool_width=4),
    AcceleratorConfig(rows=1, lanes=8, beta_w=16, beta_a=2, weight_memory="spram", weight_depth=16384,
                      act_depth=1024, max_reduction=1024, max_channels=64, max_pool_width=8),
], ids=["small", "board"])
def test_descriptor_checks_match_reference(cfg):
    rng = np.random.default_rng(3)
    cases = mutations(rng, cfg, 120)
    want = [reference_faults(d, cfg) for d in cases]
    assert 20 < sum(want) < len(want) - 20, "the cases should mix good and bad descriptors"
    bench = _Bench(cfg)
    seq = bench.seq
    got = []

    async def testbench(ctx):
        for desc in cases:
            for i, b in enumerate(desc.encode()):
                ctx.set(bench.desc.data[i], b)
            ctx.set(seq.run.payload, 0)
            ctx.set(seq.run.valid, 1)
            await ctx.tick()
            ctx.set(seq.run.valid, 0)
            for _ in range(DESCRIPTOR_BYTES + 4):
                if ctx.get(seq.finished) or ctx.get(seq.layer_start):
                    break
                await ctx.tick()
            else:
                raise AssertionError("neither a fault nor a layer start after the fetch")
            got.append(bool(ctx.get(seq.finished) and ctx.get(seq.fault)))
            ctx.set(bench.rst, 1)
            await ctx.tick()
            ctx.set(bench.rst, 0)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    bad = [(str(d), w, g) for d, w, g in zip(cases, want, got) if w != g]
    assert not bad, f"{len(bad)} descriptors judged wrongly, e.g. {bad[0]}"
