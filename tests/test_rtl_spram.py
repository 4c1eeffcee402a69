"""The SPRAM build of the weight store (:class:`hadahw.rtl.memories.EntryMemory` with ``spram=True``).

In simulation the store is the ``lib.memory`` model (covered by every core test with
``weight_memory="spram"`` configs); for an iCE40 UP platform it is SB_SPRAM256KA instances, whose
wiring is checked here structurally (the synthesis flow checks that they map and fit).
"""

import re
import types

import pytest
from amaranth.back import rtlil

from hadahw.rtl.memories import EntryMemory

UP5K = types.SimpleNamespace(device="iCE40UP5K")


@pytest.mark.parametrize("nbytes,stride", [(2, 2), (3, 4), (6, 8), (8, 8)])
def test_one_spram_per_two_bytes(nbytes, stride):
    mem = EntryMemory(nbytes=nbytes, depth=16384, stride=stride, spram=True)
    text = rtlil.convert(mem, platform=UP5K)
    assert len(re.findall(r"cell \\SB_SPRAM256KA", text)) == -(-nbytes // 2)


def test_simulation_model_without_platform():
    text = rtlil.convert(EntryMemory(nbytes=2, depth=64, stride=2, spram=True))
    assert "SB_SPRAM256KA" not in text


@pytest.mark.parametrize("kw", [dict(depth=16385), dict(depth=64, core_write=True)])
def test_spram_limits(kw):
    with pytest.raises(ValueError, match="spram needs depth <= 16384 and no core write port"):
        EntryMemory(nbytes=2, stride=2, spram=True, **kw)
