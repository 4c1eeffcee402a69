"""HadaCore as Verilog (Verilator by default, ``HADAHW_SIM=icarus``) against the golden model, in cocotb.

Each test builds one core configuration (build reused through :func:`build_dir_for`), compiles
random networks from :mod:`netgen` (seeded; the seeds are in the test id), computes the golden
output (:func:`hadahw.golden.run_network`) and the predicted cycles
(:func:`hadahw.program.predict_cycles`) and hands images and expectations to the cocotb bench
:mod:`hadahw.sim.tb_core`, which loads everything byte by byte over the host bus, runs, reads back
and compares for equality. The larger matrix is marked ``slow`` (``pytest --runslow``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hadahw.contract import DeltaFormat
from hadahw.golden import run_network
from hadahw.params import AcceleratorConfig
from hadahw.program import compile_network, predict_cycles
from hadahw.protocol import Space, Status
from hadahw.rtl.core import HadaCore
from hadahw.sim import toolchain
from hadahw.sim.runner import build_dir_for, run_cocotb

import netgen
from netgen import Spec, random_network

TB = "hadahw.sim.tb_core"
TOP = "hada_core"

FIXED4 = DeltaFormat(bits=4)
LOG2_4 = DeltaFormat(bits=4, kind="log2")
LOG2_5 = DeltaFormat(bits=5, kind="log2")


#: Smaller memories than netgen's defaults keep the Verilator models quick to build.
SIM_DEPTHS = dict(weight_depth=128, act_depth=128, param_depth=32)


def config_kwargs(**kw) -> dict:
    return netgen.config_kwargs(**{**SIM_DEPTHS, **kw})


def build_key(kw: dict) -> dict:
    """JSON-able identity of a configuration (for the build folder)."""
    return {k: (repr(v) if isinstance(v, DeltaFormat) else v) for k, v in kw.items()}


def make_case(cfg: AcceleratorConfig, spec: Spec, seed: int, name: str, final_saturate: int | None = None) -> dict:
    """A case for sim/tb_core.py; ``final_saturate`` forces the final layer's saturation (e.g. to pack it)."""
    rng = np.random.default_rng(seed)
    layers, act = random_network(rng, cfg, spec)
    if final_saturate is not None:
        last = layers[-1]
        layers[-1] = dataclasses.replace(last, requant=dataclasses.replace(last.requant, saturate_bits=final_saturate))
    prog = compile_network(layers, cfg)
    mm = prog.memory_map
    want = run_network(layers, act)
    # The bench's decoder must agree with the compiler's on what the golden bytes mean.
    assert prog.unpack_output(bytes(prog.output_length)).shape == want.shape
    writes = [(int(space), addr, blob.hex()) for space, addr, blob in prog.writes()]
    writes.append((int(Space.ACTS), prog.input_addr, prog.pack_input(act).hex()))
    return {
        "name": name,
        "writes": writes,
        "run_addr": prog.desc_addr,
        "output_addr": prog.output_addr,
        "output_length": prog.output_length,
        "act_stride": mm.act_stride,
        "act_entry_bytes": mm.act_entry_bytes,
        "entries_per_output": prog.output_spacing,       # 1 for a narrow final layer
        "output_value_bytes": prog.output_value_bytes,
        "packed_values_per_pixel": int(prog.output_shape[-1]) if prog.output_packed else 0,
        "expected": [int(v) for v in np.asarray(want).reshape(-1)],
        "cycles": int(predict_cycles(prog)),
    }


def check_core(name: str, kw: dict, cases: list[tuple[Spec, int]], *, sim: str | None = None, seed: int = 1):
    cfg = AcceleratorConfig(**kw)
    params = {
        "spaces": {s.name: int(s) for s in Space},
        "status_ok": int(Status.OK),
        "cases": [make_case(cfg, spec, s, f"{name}-case{i}-seed{s}", *sat)
                  for i, (spec, s, *sat) in enumerate(cases)],
    }
    build = build_dir_for(f"core_{name}", build_key(kw))
    result = run_cocotb(HadaCore(cfg), toplevel=TOP, test_module=TB, build_dir=build, parameters=params,
                        sim=sim, seed=seed)
    assert [t.name for t in result.tests] == [f"{TB}.core_runs_networks"]
    assert not result.failed, result.failed
    return result


CONV2 = lambda c0, hw, n1, n2: Spec((hw, hw, c0), ("conv", n1, 3, 1, 1, 2), ("linear", n2))

#: (id, config kwargs, [(spec, seed), ...]): one build per config, every case in one simulation.
DEFAULT_CONFIGS = [
    ("R4-L16-bw8-ba4-fixed8-dsp", config_kwargs(lanes=16, rows=4, bw=8, ba=4),
     [(CONV2(16, 4, 16, 6), 10),
      (Spec((20,), ("linear", 10), ("linear", 5)), 11),
      (Spec((6, 6, 4), ("conv", 8, 3, 1, 1, 2), ("conv", 16, 3, 2, 1, 1), ("linear", 5)), 12),
      (Spec((20,), ("linear", 10), ("linear", 13)), 13, 8)]),             # final values packed 2 bytes each
    ("R2-L8-bw16gtL-ba4-log2-shiftadd",
     config_kwargs(lanes=8, rows=2, bw=16, ba=4, fmt=LOG2_4, scaling="shiftadd", weight_depth=256),
     [(Spec((32,), ("linear", 12), ("linear", 3)), 20),
      (CONV2(8, 4, 8, 4), 21),
      (Spec((5, 5, 8), ("conv", 8, 3, 1, 1, 1), ("conv", 16, 3, 2, 0, 1), ("linear", 7)), 22),
      (Spec((4, 4, 8), ("conv", 8, 3, 1, 1, 1), ("conv", 9, 3, 2, 1, 1)), 23, 6)]),  # packed 1 byte, 2x2 pixels
]


def _ids(configs):
    return [f"{name}-seeds{'_'.join(str(case[1]) for case in cases)}" for name, _, cases in configs]


@pytest.mark.parametrize("name,kw,cases", DEFAULT_CONFIGS, ids=_ids(DEFAULT_CONFIGS))
def test_core_verilog_runs_networks_like_golden(name, kw, cases):
    check_core(name, kw, cases)


def test_core_verilog_icarus():
    """The same bench on Icarus (optional simulator), one small network."""
    if not toolchain.simulator_available("icarus"):
        pytest.skip("optional simulator Icarus Verilog not installed (apt-get install iverilog); "
                    "Verilator runs the same bench in test_core_verilog_runs_networks_like_golden")
    name, kw, cases = DEFAULT_CONFIGS[1]
    check_core(name, kw, cases[:1], sim="icarus")


SLOW_CONFIGS = [
    ("R3-L8-bw16gtL-ba16gtL-fixed8-dsp", config_kwargs(lanes=8, rows=3, bw=16, ba=16, weight_depth=256, param_depth=64),
     [(Spec((4, 4, 16), ("conv", 16, 3, 1, 1, 2), ("conv", 16, 3, 2, 1, 1), ("linear", 5)), 30),
      (Spec((40,), ("linear", 20), ("linear", 3)), 31)]),
    ("R4-L8-bw8-ba4-fixed4-act4", config_kwargs(lanes=8, rows=4, bw=8, ba=4, fmt=FIXED4, act_bits=4, mult_bits=8,
                                                 bias_bits=12, weight_depth=256),
     [(Spec((5, 5, 8), ("conv", 8, 3, 1, 1, 1), ("conv", 16, 3, 2, 0, 1), ("linear", 7)), 40),
      (Spec((24,), ("linear", 9), ("linear", 4)), 41)]),
    ("R4-L16-bw32gtL-ba8-log2x5", config_kwargs(lanes=16, rows=4, bw=32, ba=8, fmt=LOG2_5, weight_depth=256),
     [(Spec((4, 4, 8), ("conv", 16, 3, 1, 1, 2), ("linear", 6)), 50),
      (Spec((48,), ("linear", 17), ("linear", 5)), 51)]),
    # beta_a = 1 (HBWN); the default run covers it through the whole board (test_e2e_digits).
    ("R2-L8-bw4-ba1-fixed8-dsp", config_kwargs(lanes=8, rows=2, bw=4, ba=1, weight_depth=256),
     [(Spec((4, 4, 8), ("conv", 8, 3, 1, 1, 2), ("conv", 12, 3, 2, 1, 1), ("linear", 5)), 60),
      (Spec((37,), ("linear", 20), ("linear", 4)), 61)]),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,kw,cases", SLOW_CONFIGS, ids=_ids(SLOW_CONFIGS))
def test_core_verilog_runs_networks_like_golden_full(name, kw, cases):
    check_core(name, kw, cases)
