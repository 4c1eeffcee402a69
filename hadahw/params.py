"""Accelerator configuration: the one parameter set every generator, test and estimator reads.

:class:`AcceleratorConfig` is a frozen, keyword-only dataclass.  It is validated on construction
(one-sentence :class:`ValueError` messages that name the parameter), exposes the derived widths of
the datapath as properties, and round-trips through JSON.  The widths follow the numeric contract
in :mod:`hadahw.contract`; every bound below is exact, so no register can overflow.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

from .contract import DeltaFormat, acc_bits, signed_bits

__all__ = ["AcceleratorConfig", "load_config", "SCALING_MODES", "WEIGHT_MEMORIES", "SPRAM_WIDTH", "SPRAM_DEPTH", "SPRAM_BLOCKS"]

#: How the delta_w product is built: ``"dsp"`` writes ``*`` (``synth_ice40 -dsp`` infers SB_MAC16),
#: ``"shiftadd"`` sums shifted partial products in logic.  The delta_a product is always shift-add.
SCALING_MODES = ("dsp", "shiftadd")

#: Where the weight store lives: ``"ebr"`` (inferred block RAM, 4 kbit each, any width) or
#: ``"spram"`` (the UP5K's 256 kbit single-port SB_SPRAM256KA, 16 bits x 16384, up to 4 side by side).
WEIGHT_MEMORIES = ("ebr", "spram")
SPRAM_WIDTH, SPRAM_DEPTH, SPRAM_BLOCKS = 16, 16384, 4

_MAX_ACC_BITS = 62  # results travel through int64 on the host side


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class AcceleratorConfig:
    """Parameters of the dot-product engine (and, later, of the whole accelerator).

    Parameters
    ----------
    rows : int
        ``R``: output channels computed in parallel, one processing element (PE) each; 1..1024.
    lanes : int
        ``L``: sign bits each PE consumes per cycle; a power of two in 8..256.
    beta_w, beta_a : int
        Weight and activation segment sizes: powers of two, ``beta_w`` in 2..64, ``beta_a`` in
        1..64, ``beta_a <= beta_w``.  ``beta_a = 1`` gives every activation its own delta_a code
        (sign-magnitude activations, the paper's HBWN): the engine's delta_a product becomes an
        AND per lane, and an activation entry holds L codes.
    weight_delta : DeltaFormat
        Code format of delta_w (``fixed`` or ``log2``); ``log2`` makes the delta_w product a shift.
    act_bits : int
        Bits of a delta_a code (always ``fixed``), 1..16.
    scaling : {"dsp", "shiftadd"}
        How the delta_w product is built (see :data:`SCALING_MODES`); ignored when
        ``weight_delta.kind == "log2"`` (always a shift).  The delta_a product multiplies by a
        popcount of at most 7 bits and is always shift-add.
    max_reduction : int
        Largest reduction length ``K`` the engine supports; sizes the accumulators.
    levels_per_stage : int
        Logic levels (LUT or adder levels) between pipeline registers, 1..8.  Smaller means a
        higher Fmax, a longer latency and more flip-flops.
    weight_depth : int
        Entries of the weight store (one entry: the R sign words and R x S_w delta_w codes of one
        input word of one pass), 1..65536.
    weight_memory : {"ebr", "spram"}
        :data:`WEIGHT_MEMORIES`.  ``"spram"`` puts the weight store in SB_SPRAM256KA blocks (one
        per 16 bits of entry, at most 4, so ``R*L + R*S_w*weight_bits <= 64``;
        ``weight_depth <= 16384``); simulation uses an equivalent block-RAM model.
    act_depth : int
        Entries of the activation memory that holds every layer's input and output (one entry:
        L sign bits and S_a delta_a codes of one word of one pixel), 1..65536.
    param_depth : int
        Requantizer parameter entries ``(M, B)``, one per output channel of every layer, 1..65536.
    desc_bytes : int
        Bytes of the descriptor memory (the DESC space), 64..65536.
    max_channels : int
        Largest channel count of a layer that max-pools (sizes the pool line buffer), 1..65536.
    max_pool_width : int
        Largest conv output width (before pooling) of a layer that max-pools, 2..65536.
    max_pool : int
        Largest pooling window, 1..255 (1: no pooling hardware).
    mult_bits, bias_bits : int
        Signed widths of the requantizer's per-channel multiplier ``M`` and bias ``B``, 2..32 and
        2..64.
    max_shift : int
        Largest requantizer shift, 0..62.
    pack_outputs : bool
        Gateware that packs a final layer's values two (2-byte) or five (1-byte) to a 40-bit
        activation entry when they saturate to 15 bits or fewer (``hadahw.program.FLAG_PACKED``),
        so the host reads half or a fifth of the bytes; about 120 logic cells on the UP5K.

    Notes
    -----
    The defaults (8 rows x 16 lanes, beta_w = 16, beta_a = 2 -- the paper's best trade-off --,
    8-bit fixed delta_w on the UP5K's 8 SB_MAC16) are an engine that fits an iCE40 UP5K on its own
    (``bench/synth_bench.py``); the whole board system (core, host link) fits only much smaller
    arrays, which ``python -m hadahw.build`` sizes automatically (2 x 8 with the board defaults,
    :data:`hadahw.build.SPRAM_BOARD_DEFAULTS`).  The memory sizes default to what the UP5K's 30 EBR
    hold beside a HostLink (see :func:`hadahw.program.ebr_usage`): 256 weight entries,
    512 activation entries, 256 requantizer channels, 512 descriptor bytes.
    """

    rows: int = 8
    lanes: int = 16
    beta_w: int = 16
    beta_a: int = 2
    weight_delta: DeltaFormat = DeltaFormat()
    act_bits: int = 8
    scaling: Literal["dsp", "shiftadd"] = "dsp"
    max_reduction: int = 4096
    levels_per_stage: int = 2
    weight_depth: int = 256
    weight_memory: Literal["ebr", "spram"] = "ebr"
    act_depth: int = 512
    param_depth: int = 256
    desc_bytes: int = 512
    max_channels: int = 32
    max_pool_width: int = 16
    max_pool: int = 2
    mult_bits: int = 16
    bias_bits: int = 32
    max_shift: int = 31
    pack_outputs: bool = True

    def __post_init__(self):
        if not _is_int(self.rows) or not 1 <= self.rows <= 1024:
            raise ValueError(f"rows must be an integer in 1..1024, not {self.rows!r}")
        if not _is_int(self.lanes) or not _is_pow2(self.lanes) or not 8 <= self.lanes <= 256:
            raise ValueError(f"lanes must be a power of two in 8..256, not {self.lanes!r}")
        for name, lo in (("beta_w", 2), ("beta_a", 1)):
            beta = getattr(self, name)
            if not _is_int(beta) or not _is_pow2(beta) or not lo <= beta <= 64:
                raise ValueError(f"{name} must be a power of two in {lo}..64, not {beta!r}")
        if self.beta_a > self.beta_w:
            raise ValueError(f"beta_a must not exceed beta_w (segments must nest), not beta_a={self.beta_a} > "
                             f"beta_w={self.beta_w}")
        if not isinstance(self.weight_delta, DeltaFormat):
            raise ValueError(f"weight_delta must be a hadahw.contract.DeltaFormat, not {self.weight_delta!r}")
        if not _is_int(self.act_bits) or not 1 <= self.act_bits <= 16:
            raise ValueError(f"act_bits must be an integer in 1..16, not {self.act_bits!r}")
        if self.scaling not in SCALING_MODES:
            raise ValueError(f"scaling must be 'dsp' or 'shiftadd', not {self.scaling!r}")
        if not _is_int(self.max_reduction) or self.max_reduction < 1:
            raise ValueError(f"max_reduction must be a positive integer, not {self.max_reduction!r}")
        if not _is_int(self.levels_per_stage) or not 1 <= self.levels_per_stage <= 8:
            raise ValueError(f"levels_per_stage must be an integer in 1..8, not {self.levels_per_stage!r}")
        for name, lo, hi in (("weight_depth", 1, 1 << 16), ("act_depth", 1, 1 << 16), ("param_depth", 1, 1 << 16),
                             ("desc_bytes", 64, 1 << 16), ("max_channels", 1, 1 << 16),
                             ("max_pool_width", 2, 1 << 16), ("max_pool", 1, 255), ("mult_bits", 2, 32),
                             ("bias_bits", 2, 64), ("max_shift", 0, 62)):
            v = getattr(self, name)
            if not _is_int(v) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {v!r}")
        if not isinstance(self.pack_outputs, bool):
            raise ValueError(f"pack_outputs must be true or false, not {self.pack_outputs!r}")
        if self.weight_memory not in WEIGHT_MEMORIES:
            raise ValueError(f"weight_memory must be 'ebr' or 'spram', not {self.weight_memory!r}")
        if self.weight_memory == "spram":
            bits = self.rows * self.lanes + self.rows * self.weight_groups * self.weight_code_bits
            if bits > SPRAM_WIDTH * SPRAM_BLOCKS:
                raise ValueError(f"weight_memory='spram' holds entries of at most {SPRAM_WIDTH * SPRAM_BLOCKS} bits, "
                                 f"but rows={self.rows} x lanes={self.lanes} needs {bits}; use fewer rows/lanes or "
                                 f"weight_memory='ebr'")
            if self.weight_depth > SPRAM_DEPTH:
                raise ValueError(f"weight_depth must be at most {SPRAM_DEPTH} with weight_memory='spram', not "
                                 f"{self.weight_depth}")
        if self.acc_bits > _MAX_ACC_BITS:
            raise ValueError(f"max_reduction={self.max_reduction} needs {self.acc_bits} accumulator bits with these "
                             f"delta formats, more than {_MAX_ACC_BITS}; reduce max_reduction or the delta bits")

    # Value ranges -------------------------------------------------------------------------------
    @property
    def da_max(self) -> int:
        """Largest delta_a value (code)."""
        return (1 << self.act_bits) - 1

    @property
    def dw_max(self) -> int:
        """Largest decoded delta_w value."""
        return self.weight_delta.max_value

    # Geometry of one L-lane word ----------------------------------------------------------------
    @property
    def group_a(self) -> int:
        """Lanes per activation group inside a word: ``min(beta_a, lanes)``."""
        return min(self.beta_a, self.lanes)

    @property
    def group_w(self) -> int:
        """Lanes per weight group inside a word: ``min(beta_w, lanes)``."""
        return min(self.beta_w, self.lanes)

    @property
    def act_groups(self) -> int:
        """``S_a``: delta_a codes per input word."""
        return self.lanes // self.group_a

    @property
    def weight_groups(self) -> int:
        """``S_w``: delta_w codes per row per input word."""
        return self.lanes // self.group_w

    @property
    def words_per_act_segment(self) -> int:
        """Words over which one delta_a code repeats (1 when ``beta_a <= lanes``)."""
        return max(1, self.beta_a // self.lanes)

    @property
    def words_per_weight_segment(self) -> int:
        """Words spanned by one weight segment (1 when ``beta_w <= lanes``)."""
        return max(1, self.beta_w // self.lanes)

    @property
    def bmac_per_cycle(self) -> int:
        """Binary multiply-accumulates per cycle: ``rows * lanes``."""
        return self.rows * self.lanes

    def words_for(self, k: int) -> int:
        """Input words (beats) of one reduction of length ``k``: ``ceil(k / lanes)``."""
        return -(-k // self.lanes)

    # Derived widths (exact bounds) ---------------------------------------------------------------
    @property
    def count_bits(self) -> int:
        """Width of the valid-lane count of a word (0..lanes)."""
        return self.lanes.bit_length()

    @property
    def weight_code_bits(self) -> int:
        return self.weight_delta.bits

    @property
    def popcount_bits(self) -> int:
        """Width of one activation group's popcount (0..group_a)."""
        return self.group_a.bit_length()

    @property
    def act_term_bits(self) -> int:
        """Unsigned width of ``delta_a * popcount`` of one activation group."""
        return (self.da_max * self.group_a).bit_length()

    @property
    def group_sum_bits(self) -> int:
        """Unsigned width of ``sum delta_a * popcount`` (and of its correction ``sum delta_a * n``) over a weight group."""
        return (self.da_max * self.group_w).bit_length()

    @property
    def segment_sum_bits(self) -> int:
        """Signed width of ``sum_j delta_a_j * p_j`` over a whole weight segment (before delta_w)."""
        return signed_bits(self.da_max * self.beta_w)

    @property
    def product_bits(self) -> int:
        """Signed width of one delta_w product (a weight segment's contribution)."""
        return signed_bits(self.dw_max * self.da_max * self.beta_w)

    @property
    def word_sum_bits(self) -> int:
        """Signed width of one word's contribution to the accumulator."""
        return signed_bits(self.dw_max * self.da_max * self.lanes)

    @property
    def acc_bound(self) -> int:
        """Largest ``|O|`` for ``K = max_reduction``: ``max_reduction * dw_max * da_max``."""
        return self.max_reduction * self.dw_max * self.da_max

    @property
    def acc_bits(self) -> int:
        """Signed accumulator width, :func:`hadahw.contract.acc_bits` of ``max_reduction``."""
        return acc_bits(self.max_reduction, self.dw_max, self.da_max)

    @property
    def y_bits(self) -> int:
        """Signed width of a requantized value before saturation: ``max(acc + M, B) + 1`` bits."""
        return max(self.acc_bits + self.mult_bits, self.bias_bits) + 1

    # Layers ---------------------------------------------------------------------------------------
    def fits(self, layer) -> None:
        """Check that ``layer`` (a :class:`hadahw.golden.QLayer`) can run on this configuration.

        Raises
        ------
        ValueError
            Naming the first mismatch: segment sizes, delta formats, or a reduction longer than
            ``max_reduction``.
        """
        name = f"layer {layer.name!r}" if getattr(layer, "name", "") else "layer"
        if layer.beta_w != self.beta_w:
            raise ValueError(f"{name} has beta_w={layer.beta_w} but the accelerator is built for beta_w={self.beta_w}")
        if layer.beta_a != self.beta_a:
            raise ValueError(f"{name} has beta_a={layer.beta_a} but the accelerator is built for beta_a={self.beta_a}")
        if layer.weight_format != self.weight_delta:
            raise ValueError(f"{name} has weight format {layer.weight_format} but the accelerator is built for "
                             f"{self.weight_delta}")
        if layer.act_bits != self.act_bits:
            raise ValueError(f"{name} has act_bits={layer.act_bits} but the accelerator is built for "
                             f"act_bits={self.act_bits}")
        if layer.reduction > self.max_reduction:
            raise ValueError(f"{name} reduces over K={layer.reduction} inputs, more than max_reduction="
                             f"{self.max_reduction} that sizes the accumulators")

    # Serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["weight_delta"] = self.weight_delta.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AcceleratorConfig":
        if not isinstance(d, dict):
            raise ValueError(f"an accelerator configuration must be a JSON object, not {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown accelerator configuration keys {unknown}; known keys are {sorted(known)}")
        d = dict(d)
        if "weight_delta" in d:
            wd = d["weight_delta"]
            if not isinstance(wd, dict) or set(wd) - {"bits", "kind"}:
                raise ValueError(f"weight_delta must be an object with keys 'bits' and 'kind', not {wd!r}")
            d["weight_delta"] = DeltaFormat(**wd)
        return cls(**d)

    def to_json(self, **kwargs) -> str:
        """JSON text of the configuration (``json.dumps`` keyword arguments pass through)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "AcceleratorConfig":
        """Inverse of :meth:`to_json`; raises ValueError for bad JSON, unknown keys or bad values."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"accelerator configuration is not valid JSON: {e}") from None
        return cls.from_dict(d)


def load_config(path) -> AcceleratorConfig:
    """The :class:`AcceleratorConfig` in the JSON file ``path`` (e.g. a build's ``config.json``).

    Raises a one-line ValueError naming the file when it cannot be read or does not hold a valid
    configuration.
    """
    from pathlib import Path
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"cannot read {str(path)!r} ({e.strerror or e})") from None
    try:
        return AcceleratorConfig.from_json(text)
    except ValueError as e:
        raise ValueError(f"{str(path)!r} is not an accelerator configuration: {str(e).splitlines()[0]}") from None
