"""Shared amaranth.sim plumbing for the gateware tests."""

from amaranth.sim import Simulator


def run_sim(dut, *testbenches, period: float = 1e-6):
    """Simulate ``dut`` with one clock until every testbench has returned."""
    sim = Simulator(dut)
    sim.add_clock(period)
    for tb in testbenches:
        sim.add_testbench(tb)
    sim.run()


def drive(stream, beats, rng, *, p_idle=0.3, before=None):
    """Testbench sending ``beats`` (dicts) with random idle cycles; ``before`` runs first."""
    async def tb(ctx):
        if before is not None:
            await before(ctx)
        for beat in beats:
            while rng.random() < p_idle:
                await ctx.tick()
            ctx.set(stream.valid, 1)
            ctx.set(stream.payload, beat)
            await ctx.tick().until(stream.ready)
            ctx.set(stream.valid, 0)
    return tb


def collect(stream, count, rng, out, *, p_stall=0.3, max_cycles=200_000):
    """Testbench taking ``count`` beats with random back-pressure; checks valid/payload hold."""
    names = list(stream.payload.shape().members.keys())
    fields = [stream.payload[n] for n in names]

    async def tb(ctx):
        held = None
        cycles = 0
        while len(out) < count:
            ready = bool(rng.random() >= p_stall)
            ctx.set(stream.ready, ready)
            _, _, valid, *vals = await ctx.tick().sample(stream.valid, *fields)
            beat = dict(zip(names, vals))
            if held is not None:
                assert valid, "valid dropped before the beat was taken"
                assert beat == held, f"payload changed while stalled: {held} -> {beat}"
            if valid and ready:
                out.append(beat)
                held = None
            elif valid:
                held = beat
            cycles += 1
            assert cycles < max_cycles, f"timeout after {cycles} cycles with {len(out)}/{count} beats"
        ctx.set(stream.ready, 0)
    return tb
