# amaranth: UnusedElaboratable=no
"""bench/table_array_bench.py: derived figures from a (stand-in) tool result, and its failure rows.

The real tools run in the bench itself (a minute); here ``synth_ice40`` is replaced so that the
arithmetic (bMAC/cycle, LC per bMAC, peak GOPS, wrapper subtraction) and the Markdown are
checked against numbers worked out by hand.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

from hadahw.fpga import DesignDoesNotFit

_PATH = Path(__file__).resolve().parent.parent / "bench" / "table_array_bench.py"
sys.path.insert(0, str(_PATH.parent))
_spec = importlib.util.spec_from_file_location("table_array_bench", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_point_figures_derive_from_the_tool_result(monkeypatch, tmp_path):
    row, text, overhead = bench.convert("popcount", 8, 16, 2)
    assert "module top" in text and row["tables"] == 4 and row["bmac_per_cycle"] == 128
    fmax = {1: 50.0, 2: 38.0, 3: 60.0}  # per placer seed

    def fake(*a, seed, **k):
        return SimpleNamespace(lc=400, lc_available=5280, ebr=4, spram=0, dsp=0, fmax=fmax[seed],
                               timing_met=fmax[seed] >= 40.0)
    monkeypatch.setattr(bench, "synth_ice40", fake)
    out = bench.run_point(row, text, overhead, freq=40.0, seeds=[1, 2, 3], workroot=tmp_path)
    assert out["status"] == "ok"
    m, e = out["measured"], out["estimated"]
    assert m["peak_gops_at_median_fmax"] == 12.8  # 2 * 128 * 50 MHz (the median of 38, 50, 60)
    assert (m["fmax_mhz_min"], m["fmax_mhz_max"], m["timing_met_every_seed"]) == (38.0, 60.0, False)
    assert m["lc_per_bmac"] == 3.125         # 400 / 128
    assert e["array_lc"] == 400 - overhead and overhead > 0
    md = bench.markdown({"scope": bench.SCOPE, "target_mhz": 40.0, "seeds": [1, 2, 3], "jobs": 1, "wall_s": 1.0,
                         "versions": {}, "machine": {"cpu_model": "x", "cores": 2, "date": "d"}}, [out])
    assert "| 8x16 lps2 | – | 4 | 400 | 8 | 50.0 (38.0–60.0) | no | 2 | 128 | 3.12 | 12.8 |" in md
    dot, text, _ = bench.convert("hadanet", 4, 32, 2, 16, 8)
    assert dot["delta_products_per_cycle"] == 4 * (32 // 8 + 32 // 16) and dot["label"] == "dot 4x32 b16/8 lps2"


def test_a_point_that_does_not_fit_is_reported_not_raised(monkeypatch, tmp_path):
    row, text, overhead = bench.convert("popcount", 4, 8, 2)

    def too_big(*a, **k):
        raise DesignDoesNotFit("ICESTORM_LC 6000/5280", step="nextpnr", log=None, utilisation={})
    monkeypatch.setattr(bench, "synth_ice40", too_big)
    out = bench.run_point(row, text, overhead, freq=40.0, seeds=[1], workroot=tmp_path)
    assert out["status"] == "does not fit" and "6000/5280" in out["message"]
