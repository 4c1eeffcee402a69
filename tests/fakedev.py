"""A software stand-in for the accelerator core behind the protocol's device model (tests only).

:func:`golden_device` is a :class:`hadahw.sw.devmodel.DevModel` whose RUN decodes the input the
host wrote (at the program's input address, in the activation format), runs the golden model on
the compiled layers and writes the result in the core's output format, so the host side
(``Accelerator``, ``hadahw.run``) can be tested end to end without a simulator.
"""

from __future__ import annotations

import numpy as np

from hadahw.golden import QAct, run_network
from hadahw.params import AcceleratorConfig
from hadahw.program import MemoryMap, Program, unpack_act
from hadahw.protocol import Space
from hadahw.rtl.top import config_json
from hadahw.sw.devmodel import DevModel

__all__ = ["encode_output", "golden_device"]


def encode_output(values: np.ndarray, prog: Program) -> bytes:
    """The core's final-layer format (hadahw.program docstring); the inverse of unpack_output."""
    mm, k = prog.memory_map, prog.output_spacing
    out = bytearray()
    if prog.output_packed:  # P values of s bytes per entry, each pixel from a new entry
        size = prog.output_value_bytes
        per = mm.act_entry_bytes // size
        values = np.asarray(values, np.int64)
        for pixel in values.reshape(-1, values.shape[-1]):
            slots = [int(v).to_bytes(size, "little", signed=True) for v in pixel]
            for q in range(0, len(slots), per):
                out += b"".join(slots[q:q + per]).ljust(mm.act_stride, b"\0")
        return bytes(out)
    for v in np.asarray(values, np.int64).reshape(-1):
        raw = int(v).to_bytes(prog.output_value_bytes, "little", signed=True)
        raw = raw.ljust(k * mm.act_entry_bytes, b"\0")
        for e in range(k):
            out += raw[e * mm.act_entry_bytes:(e + 1) * mm.act_entry_bytes].ljust(mm.act_stride, b"\0")
    return bytes(out)


def golden_device(cfg: AcceleratorConfig, holder: dict, **kw) -> DevModel:
    """A DevModel whose RUN runs ``holder["program"]`` through the golden model on the written input.

    ``holder["corrupt"]`` (optional, callable): applied to the golden output before it is written
    (a faulty core).  ``holder["runs"]`` counts the runs.
    """

    def executor(model: DevModel, address: int) -> int:
        prog: Program = holder["program"]
        assert address == prog.desc_addr
        assert bytes(model.mem[Space.DESC][:len(prog.desc_image)]) == prog.desc_image
        raw = bytes(model.mem[Space.ACTS][prog.input_addr:prog.input_addr + prog.input_length])
        signs, codes = unpack_act(raw, prog.input_shape, cfg)
        act = QAct(signs=signs, delta=codes[..., ::cfg.beta_a], beta_a=cfg.beta_a, bits=cfg.act_bits)
        y = run_network(prog.layers, act)
        if holder.get("corrupt") is not None:
            y = holder["corrupt"](y)
        blob = encode_output(y, prog)
        model.mem[Space.ACTS][prog.output_addr:prog.output_addr + len(blob)] = blob
        holder["runs"] = holder.get("runs", 0) + 1
        return prog.predict_cycles()

    mm = MemoryMap(cfg)
    kw.setdefault("compact", mm.compact_spaces)
    return DevModel(sizes=mm.space_sizes, max_payload=256, config=config_json(cfg).decode(), executor=executor, **kw)
