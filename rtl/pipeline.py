"""Pipeline construction helpers: register placement by logic level, adder trees, exact widths.

A datapath is written once, as a sequence of logic levels over a *tree* (nested lists/tuples) of
live Amaranth values.  A :class:`Stager` counts the levels and inserts a register bank every
``levels_per_stage`` levels, so the same code yields a shallow or a deep pipeline.  Run with
``module=None`` it only counts (a *dry run*): components use that in ``__init__`` to learn, before
elaboration, at which stage each input is consumed and how long the pipeline is.

All registers go to the ``sync`` domain without an enable; a whole pipeline is stalled by wrapping
its module in :class:`amaranth.hdl.EnableInserter`.  A :class:`Stager` made with ``reset_less``
builds registers without a reset, for data that a valid bit qualifies (Yosys folds only reset-less
registers into an iCE40 SB_MAC16's own input and output registers).
"""

from __future__ import annotations

from amaranth.hdl import Mux, Shape, Signal, Value, signed, unsigned

__all__ = ["Stager", "adder_tree", "select_terms", "fit", "unsigned_for", "signed_for"]


def unsigned_for(bound: int) -> Shape:
    """Shape holding every integer in ``[0, bound]``."""
    return unsigned(max(1, int(bound).bit_length()))


def signed_for(bound: int) -> Shape:
    """Shape holding every integer in ``[-bound, bound]``."""
    return signed(int(bound).bit_length() + 1)


def fit(value, shape: Shape) -> Value:
    """Truncate ``value`` to ``shape``; the caller guarantees the value is in range (exact bounds)."""
    value = Value.cast(value)
    shape = Shape.cast(shape)
    if len(value) <= shape.width:
        return value  # already narrow enough; arithmetic keeps its value
    v = value[:shape.width]
    return v.as_signed() if shape.signed else v


def _map(tree, fn):
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map(t, fn) for t in tree)
    return fn(tree)


class Stager:
    """Counts logic levels and registers the live values every ``levels_per_stage`` levels.

    Parameters
    ----------
    levels_per_stage : int
        Levels between register banks.
    module : Module or None
        Where registers go; ``None`` for a dry run (values pass through unregistered).
    name : str
        Prefix of register names.
    reset_less : bool
        Registers without a reset (power-up value 0; a later reset leaves them as they are).

    Attributes
    ----------
    stage : int
        Register banks passed so far: a value produced now belongs to pipeline stage ``stage``
        (stage 0 is fed directly by the component's stage-0 inputs).
    level : int
        Logic levels since the last register bank.
    """

    def __init__(self, levels_per_stage: int, module=None, *, name: str = "p", reset_less: bool = False):
        if levels_per_stage < 1:
            raise ValueError(f"levels_per_stage must be >= 1, not {levels_per_stage}")
        self.levels_per_stage = levels_per_stage
        self.module = module
        self.name = name
        self.reset_less = reset_less
        self.stage = 0
        self.level = 0
        self._count = 0

    def step(self, tree):
        """Account for one logic level that produced ``tree``; register it when the stage is full."""
        self.level += 1
        if self.level >= self.levels_per_stage:
            return self.register(tree)
        return tree

    def barrier(self, tree):
        """Register ``tree`` unless it is already at a stage boundary."""
        return self.register(tree) if self.level else tree

    def pad_to(self, stage: int, tree):
        """Register ``tree`` (repeatedly) until the stager reaches ``stage``."""
        while self.stage < stage:
            tree = self.register(tree)
        return tree

    def register(self, tree):
        """Insert a register bank for every value of ``tree`` unconditionally."""
        self.stage += 1
        self.level = 0
        if self.module is None:
            return tree
        return _map(tree, self._reg)

    def _reg(self, value):
        value = Value.cast(value)
        reg = Signal(value.shape(), name=f"{self.name}{self.stage}_{self._count}", reset_less=self.reset_less)
        self._count += 1
        self.module.d.sync += reg.eq(value)
        return reg


def adder_tree(st: Stager, groups: list[list]) -> list:
    """Sum each list in ``groups`` with a balanced tree, all groups in lockstep.

    Takes ``ceil(log2(max(len)))`` levels (none when every group has one term), each accounted
    with ``st.step``.  Returns one sum per group (natural Amaranth widths; callers :func:`fit`).
    """
    groups = [list(g) for g in groups]
    while any(len(g) > 1 for g in groups):
        groups = [[g[i] + g[i + 1] if i + 1 < len(g) else g[i] for i in range(0, len(g), 2)] for g in groups]
        groups = st.step(groups)
    return [g[0] for g in groups]


def select_terms(x, y) -> list:
    """Partial products of ``x * y`` for unsigned ``y``: ``x << b`` where bit ``b`` of ``y`` is set."""
    x, y = Value.cast(x), Value.cast(y)
    return [Mux(y[b], x << b, 0) for b in range(len(y))]
