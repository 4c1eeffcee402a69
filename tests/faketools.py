"""Stand-in yosys / nextpnr / icepack for flow tests: fast, and their results set by environment.

``FAKE_FMAX="1:25,2:31"`` is nextpnr's Fmax per placer seed, its LC count is ``1000 + seed``;
``FAKE_YOSYS_CONFLICT=1`` makes yosys print the netlist warning the build treats as a failure;
every placement appends its seed to ``FAKE_PNR_LOG``.
"""

import sys

import pytest

FAKE_TOOL = r'''
import json, os, sys
tool, args = sys.argv[1], sys.argv[2:]
if tool == "yosys":
    print("Yosys 0.0 (fake)") if "-V" in args else None
    if os.environ.get("FAKE_YOSYS_CONFLICT") and "-V" not in args:
        print("Warning: Driver-driver conflict for \\dut.p [0] between cell $mul.O and constant 1'0 in top: "
              "Resolved using constant.")
elif tool == "nextpnr":
    if "--version" in args:
        print("nextpnr-ice40 -- Next Generation Place and Route (Version fake)")
        sys.exit(0)
    seed = int(args[args.index("--seed") + 1])
    with open(os.environ["FAKE_PNR_LOG"], "a") as f:
        f.write(f"{seed}\n")
    fmax = dict(kv.split(":") for kv in os.environ["FAKE_FMAX"].split(","))[str(seed)]
    report = {"fmax": {"clk$SB_IO_IN_$glb_clk": {"achieved": float(fmax), "constraint": 30.0}},
              "utilization": {"ICESTORM_LC": {"used": 1000 + seed, "available": 5280}}}
    with open(args[args.index("--report") + 1], "w") as f:
        json.dump(report, f)
    with open(args[args.index("--asc") + 1], "w") as f:
        f.write(f"seed {seed}\n")
elif tool == "icepack":
    with open(args[1], "wb") as f:
        f.write(open(args[0], "rb").read())
'''


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    script = tmp_path / "fake_tool.py"
    script.write_text(FAKE_TOOL)
    for var, name in (("YOSYS", "yosys"), ("NEXTPNR_ICE40", "nextpnr"), ("ICEPACK", "icepack")):
        monkeypatch.setenv(var, f"{sys.executable} {script} {name}")
    log = tmp_path / "pnr_seeds.txt"
    monkeypatch.setenv("FAKE_PNR_LOG", str(log))
    return lambda: [int(s) for s in log.read_text().split()] if log.exists() else []
