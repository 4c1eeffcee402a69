"""Shared amaranth.sim plumbing for the gateware tests."""

from amaranth.sim import Simulator


def run_sim(dut, *testbenches, period: float = 1e-6):
    """Simulate ``dut`` with one clock until every testbench has returned."""
    sim = Simulator(dut)
    sim.add_clock(period)
    for tb in testbenches:
        sim.add_testbench(tb)
    sim.run()
