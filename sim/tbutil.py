"""Helpers for code that runs *inside* the simulator (cocotb testbench modules).

Kept free of heavy imports: it is imported by every testbench in the simulator's Python.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["TB_PARAMS_ENV", "tb_params", "bit", "uint"]

TB_PARAMS_ENV = "HADAHW_TB_PARAMS"
"""Environment variable through which :func:`hadahw.sim.runner.run_cocotb` hands the
``parameters`` dict (as JSON) to the testbench."""


def tb_params() -> dict[str, Any]:
    """The ``parameters`` dict given to :func:`~hadahw.sim.runner.run_cocotb` (``{}`` if none)."""
    raw = os.environ.get(TB_PARAMS_ENV, "")
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{TB_PARAMS_ENV} must hold a JSON object, got {type(value).__name__}")
    return value


def bit(handle) -> bool:
    """Value of a 1-bit signal; X/Z fails the test instead of reading as 0."""
    text = str(handle.value)
    if text not in ("0", "1"):
        raise AssertionError(f"{handle!r} is {text!r}, not 0/1")
    return text == "1"


def uint(handle) -> int:
    """Unsigned value of a signal."""
    return handle.value.to_unsigned()
