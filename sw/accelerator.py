"""The user-facing driver: load a compiled network into an accelerator and run inferences.

:class:`Accelerator` sits on a :class:`~hadahw.sw.link.Link` (a board's serial port, or the
simulated board of :mod:`hadahw.sim.uart_board`) and speaks in terms of
:class:`~hadahw.program.Program` and :class:`~hadahw.golden.QAct`::

    acc = Accelerator(link, expect_config=config)   # IDENTIFY + compatibility checks
    acc.load(compile_network(layers, acc.config))   # weights, requantizer parameters, program
    result = acc.infer(act)                         # input -> RUN -> wait -> output
    result.output, result.cycles, result.transfer_s, result.compute_s

Errors: :class:`~hadahw.sw.link.IncompatibleDevice` when the device is not a hadahw accelerator
of this protocol or not of the expected configuration; ``ValueError`` (one line) for a program
compiled for another configuration or an input of the wrong shape; :class:`RunError` when a run
ends with a fault or does not end in time; the link's own errors (:class:`~hadahw.sw.link.LinkError`
and subclasses) when the line fails.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Mapping

import numpy as np

from hadahw.golden import QAct
from hadahw.params import AcceleratorConfig
from hadahw.program import MemoryMap, Program
from hadahw.protocol import Space, Status, fill_holes, strip_holes
from hadahw.sw.link import IncompatibleDevice, Link, LinkError

__all__ = ["Accelerator", "Inference", "RunError", "config_differences"]


class RunError(LinkError):
    """A run ended with a fault status, or did not end within the timeout."""


@dataclasses.dataclass(frozen=True)
class Inference:
    """One inference on the device.

    Attributes
    ----------
    output : np.ndarray
        The final layer's values (int64, :attr:`Program.output_shape`).
    cycles : int
        Clock cycles of the run as the device measured them (STATUS), to compare with
        :func:`hadahw.program.predict_cycles`.
    transfer_s : float
        Wall time writing the input and reading the output back.
    compute_s : float
        Wall time from sending RUN until STATUS reported the device idle (the run itself plus
        the polling latency; on a board dominated by the link's round trips).
    """

    output: np.ndarray
    cycles: int
    transfer_s: float
    compute_s: float

    @property
    def total_s(self) -> float:
        return self.transfer_s + self.compute_s


def config_differences(a: AcceleratorConfig, b: AcceleratorConfig) -> list[str]:
    """``["field: a vs b", ...]`` for every field where two configurations differ."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} vs {db[k]!r}" for k in da if da[k] != db[k]]


class Accelerator:
    """A connected hadahw accelerator.

    Parameters
    ----------
    link : Link
        Connected or not; the constructor runs IDENTIFY (``link.connect()``).
    expect_config : AcceleratorConfig or mapping, optional
        The configuration the device must have: every field of an ``AcceleratorConfig``, or
        just the keys of a mapping (e.g. ``{"beta_w": 16}``).
    run_timeout : float
        Seconds a run may take (wall time, polling STATUS) before :class:`RunError`.
    poll_interval : float
        Seconds between STATUS polls while a run is in progress.

    Attributes
    ----------
    config : AcceleratorConfig
        What the device reported.
    info : hadahw.protocol.DeviceInfo
    program : Program or None
        The program loaded last.
    act_entry : (entry_bytes, stride) or None
        The activation entry layout the input is written and the output read with, as compact
        transfers that skip the entries' holes (a protocol 1.1 device and entries narrower than
        their stride), else None (plain transfers).
    load_s : float
        Wall time of the last :meth:`load`.

    Raises
    ------
    IncompatibleDevice
        Wrong protocol major version, a configuration that is not a valid
        ``AcceleratorConfig``, one that differs from ``expect_config``, or address spaces whose
        sizes disagree with the configuration's memory map.
    """

    def __init__(self, link: Link, expect_config: AcceleratorConfig | Mapping | None = None, *,
                 run_timeout: float = 60.0, poll_interval: float = 0.001):
        if not isinstance(link, Link):
            raise TypeError(f"link must be a hadahw.sw.link.Link, not {type(link).__name__}")
        self.link = link
        self.run_timeout = float(run_timeout)
        self.poll_interval = float(poll_interval)
        self.info = link.connect()  # checks magic and protocol version
        try:
            self.config = AcceleratorConfig.from_json(self.info.config)
        except ValueError as exc:
            raise IncompatibleDevice(f"the device's configuration is not an accelerator configuration "
                                     f"({str(exc).splitlines()[0]})") from None
        if isinstance(expect_config, AcceleratorConfig):
            diff = config_differences(self.config, expect_config)
            if diff:
                raise IncompatibleDevice(f"the device has another configuration than expected (device vs expected: "
                                         f"{'; '.join(diff)})")
        elif expect_config:
            have = self.config.to_dict()
            for key, value in expect_config.items():
                if key not in have:
                    raise IncompatibleDevice(f"expected configuration key {key!r} is not an accelerator field")
                if have[key] != value:
                    raise IncompatibleDevice(f"the device has {key} = {have[key]!r}, expected {value!r}")
        mm = MemoryMap(self.config)
        for space in Space:
            want, got = mm.space_sizes.get(space, 0), self.info.size(space)
            if want != got:
                raise IncompatibleDevice(f"the device's {space.name} space is {got} bytes, but its configuration "
                                         f"implies {want}")
        self.program: Program | None = None
        self.load_s = 0.0
        # Protocol 1.1 devices skip the holes of the activation entries when asked (compact transfers).
        self.act_entry = mm.compact_spaces.get(Space.ACTS) if self.info.version >= (1, 1) else None

    def load(self, program: Program, progress: bool = False) -> None:
        """Write the program's images (weights, requantizer parameters, descriptors).

        ``progress`` shows a tqdm bar per image (the weights take seconds on a board at 1 Mbaud
        only for large networks, and minutes in simulation).
        """
        if not isinstance(program, Program):
            raise TypeError(f"program must be a hadahw.program.Program, not {type(program).__name__}")
        if program.config != self.config:
            diff = config_differences(program.config, self.config)
            raise ValueError(f"the program was compiled for another accelerator configuration (program vs device: "
                             f"{'; '.join(diff)})")
        t0 = time.perf_counter()
        saved = self.link.progress
        self.link.progress = bool(progress)
        try:
            self.program = None  # a partial load leaves nothing runnable
            for space, address, data in program.writes():
                self.link.write_mem(space, address, data)
        finally:
            self.link.progress = saved
        self.program = program
        self.load_s = time.perf_counter() - t0

    def infer(self, act: QAct) -> Inference:
        """Run the loaded program on ``act`` (the first layer's input) and return the output.

        Raises RuntimeError if nothing is loaded, ValueError if ``act`` does not fit the input
        buffer, :class:`RunError` for a run fault or timeout.
        """
        prog = self.program
        if prog is None:
            raise RuntimeError("no program is loaded: call load() first")
        data = prog.pack_input(act)  # ValueError for a wrong shape / beta / bits
        link = self.link
        t0 = time.perf_counter()
        entry = self.act_entry
        if entry is not None:  # the used bytes of each entry only
            data = strip_holes(data, *entry)
        link.write_mem(Space.ACTS, prog.input_addr, data, entry=entry)
        t1 = time.perf_counter()
        link.run(prog.desc_addr)
        st = self._wait()
        t2 = time.perf_counter()
        raw = link.read_mem(Space.ACTS, prog.output_addr, prog.output_length, entry=entry)
        t3 = time.perf_counter()
        if entry is not None:  # back to the strided layout, holes as 0
            raw = fill_holes(raw, *entry)
        return Inference(output=prog.unpack_output(raw), cycles=int(st.cycles), transfer_s=(t1 - t0) + (t3 - t2),
                         compute_s=t2 - t1)

    def _wait(self):
        deadline = time.monotonic() + self.run_timeout
        while True:
            st = self.link.status()
            if not st.busy:
                break
            if time.monotonic() >= deadline:
                raise RunError(f"the run did not finish within {self.run_timeout:g} s (cycles so far: {st.cycles})")
            time.sleep(self.poll_interval)
        if not st.done:
            raise RunError("the device is idle but reports no finished run (was it reset?)")
        if st.run_status != Status.OK:
            name = st.run_status.name if isinstance(st.run_status, Status) else f"status {st.run_status}"
            raise RunError(f"the run ended with {name} after {st.cycles} cycles")
        return st
