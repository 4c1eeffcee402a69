"""Model-size calculator: FP32 size versus HadaNet-packed size (arXiv:1905.10759, §3.2, §4.1).

Usage::

    python -m hadahw.size --model resnet18 --beta-w 16            # table + "saving: 7.41x"
    python -m hadahw.size --model alexnet --beta-w 16 --json      # one JSON object
    python -m hadahw.size --list-models

Accounting (see ``docs/model-size.md``)
---------------------------------------
* The FP32 baseline is every *parameter* at 32 bits: conv/linear weights and biases and the
  BatchNorm affine ``gamma``/``beta`` -- exactly what ``sum(p.numel() for p in
  model.parameters())`` counts (torchvision AlexNet 61,100,840, ResNet-18 11,689,512).
  BatchNorm running mean/variance are buffers, not parameters: at inference they fold into a
  per-channel scale and shift, so by default they are not counted (``bn_running_stats=True``
  adds them, at FP32, to both sides).
* Binarized: the weight tensor of every conv/linear layer except the first and the last weight
  layer, which stay FP32 when ``first_last_fp`` (the paper's ``beta_w,1 = beta_w,L = 1``: a
  segment of one weight is the weight itself, so it is stored as the FP32 value).
* A binarized layer with ``F`` output filters of fan-in ``K`` (``in/groups * kh * kw``) costs
  ``F * ceil(K / beta_w)`` deltas of ``delta_bits`` bits plus ``F * K`` sign bits.  Sign bits are
  densely packed by default; with ``sign_word_bits=L`` each filter's ``K`` bits are padded to a
  whole number of ``L``-bit words (``F * ceil(K / L) * L`` bits).
* Biases and BatchNorm parameters always stay FP32.
* Every layer's packed blob is rounded up to whole bytes; totals are sums of per-layer bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from hadahw.contract import check_beta, segment_count
from hadahw.models.shapes import MODELS, Layer, get_model

__all__ = ["LayerSize", "SizeReport", "model_size", "layer_size", "asymptotic_saving", "main"]

FP_BITS = 32


@dataclasses.dataclass(frozen=True)
class LayerSize:
    """Size of one layer, FP32 versus packed."""

    name: str
    kind: str
    params: int           #: parameters counted (weights + bias, or BN gamma/beta [+ stats])
    binarized: bool       #: weight tensor stored as sign bits + segment deltas
    fan_in: int           #: K (0 for BN)
    segments: int         #: deltas stored (0 unless binarized)
    sign_bits: int        #: packed sign bits, incl. word padding (0 unless binarized)
    delta_bits_total: int  #: bits of all deltas (0 unless binarized)
    fp_bits: int          #: bits of the parts kept in FP32
    fp32_bytes: int       #: params * 4
    packed_bytes: int     #: ceil((sign_bits + delta_bits + fp_bits) / 8)
    saving: float         #: fp32_bytes / packed_bytes


@dataclasses.dataclass(frozen=True)
class SizeReport:
    """Result of :func:`model_size`."""

    model: str
    beta_w: int
    delta_bits: int
    sign_word_bits: int | None
    first_last_fp: bool
    bn_running_stats: bool
    layers: tuple[LayerSize, ...]
    params: int
    binarized_params: int
    fp32_bytes: int
    packed_bytes: int
    saving: float

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = [dataclasses.asdict(l) for l in self.layers]
        return d

    def format_table(self) -> str:
        """Human-readable per-layer table followed by totals and the overall saving."""
        w = max([len("layer")] + [len(l.name) for l in self.layers])
        head = (f"{'layer':<{w}}  {'kind':<6} {'params':>12}  {'binarized':<9} "
                f"{'fp32 KiB':>12} {'packed KiB':>12} {'saving':>8}")
        lines = [
            f"model {self.model}: beta_w={self.beta_w}, delta_bits={self.delta_bits}, sign bits "
            + (f"padded to {self.sign_word_bits}-bit words per filter" if self.sign_word_bits
               else "densely packed")
            + f", first/last layer {'FP32' if self.first_last_fp else 'binarized'}"
            + (", BN running stats counted" if self.bn_running_stats else ""),
            head,
            "-" * len(head),
        ]
        for l in self.layers:
            lines.append(
                f"{l.name:<{w}}  {l.kind:<6} {l.params:>12,}  {'yes' if l.binarized else 'no':<9} "
                f"{l.fp32_bytes / 1024:>12.2f} {l.packed_bytes / 1024:>12.2f} {l.saving:>7.2f}x")
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<{w}}  {'':<6} {self.params:>12,}  {'':<9} "
            f"{self.fp32_bytes / 1024:>12.2f} {self.packed_bytes / 1024:>12.2f} "
            f"{self.saving:>7.2f}x")
        lines.append(f"fp32: {self.fp32_bytes:,} bytes ({self.fp32_bytes / 2**20:.2f} MiB)")
        lines.append(f"packed: {self.packed_bytes:,} bytes ({self.packed_bytes / 2**20:.2f} MiB)")
        lines.append(f"saving: {self.saving:.2f}x")
        return "\n".join(lines)


def _check_pos_int(value, name: str) -> int:
    # Same rules and message shape as check_beta, for the non-beta integer knobs.
    return check_beta(value, name)


def asymptotic_saving(beta_w: int, delta_bits: int = FP_BITS) -> float:
    """Saving of a large binarized layer without bias: ``32 / (1 + delta_bits / beta_w)``.

    With ``delta_bits = 32`` this is the paper's ``beta * X / (beta + X)``, ``X = 32``.
    """
    return FP_BITS * beta_w / (beta_w + delta_bits)


def layer_size(layer: Layer, binarize: bool, beta_w: int, *, delta_bits: int = FP_BITS,
               sign_word_bits: int | None = None, bn_running_stats: bool = False) -> LayerSize:
    """Size of one layer; ``binarize`` selects HadaNet storage for its weight tensor."""
    binarize = bool(binarize) and layer.has_weight_matrix
    params = layer.params + (layer.buffers if bn_running_stats else 0)
    k = layer.fan_in
    if binarize:
        f = layer.out_channels
        segments = f * segment_count(k, beta_w)
        word = sign_word_bits or 1
        sign_bits = f * segment_count(k, word) * word
        dbits = segments * delta_bits
        fp_bits = FP_BITS * (params - layer.weight_params)
    else:
        segments = sign_bits = dbits = 0
        fp_bits = FP_BITS * params
    fp32_bytes = params * FP_BITS // 8
    packed_bytes = -(-(sign_bits + dbits + fp_bits) // 8)
    saving = fp32_bytes / packed_bytes if packed_bytes else 1.0
    return LayerSize(layer.name, layer.kind, params, binarize, k, segments, sign_bits, dbits,
                     fp_bits, fp32_bytes, packed_bytes, saving)


def model_size(model: str, beta_w: int, *, first_last_fp: bool = True, delta_bits: int = 32,
               sign_word_bits: int | None = None, bn_running_stats: bool = False) -> SizeReport:
    """FP32 and HadaNet-packed size of a reference network from :data:`MODELS`.

    Parameters
    ----------
    model
        A key of :data:`hadahw.models.shapes.MODELS`; otherwise ``ValueError`` listing them.
    beta_w
        Weight segment size (positive integer, validated by :func:`hadahw.contract.check_beta`).
    first_last_fp
        Keep the first and last conv/linear weights in FP32 (paper: ``beta_w,1 = beta_w,L = 1``).
    delta_bits
        Bits per stored delta: 32 = the paper's FP32, 8 = this project's 8-bit codes.
    sign_word_bits
        ``None``: sign bits densely packed.  ``L``: each filter's sign bits padded to ``L``-bit
        words (e.g. 32 or 64, the paper's "bit-packed to an unsigned long int").
    bn_running_stats
        Also count BatchNorm running mean/variance (FP32, both sides).  Default off.
    """
    beta_w = check_beta(beta_w, "beta_w")
    delta_bits = _check_pos_int(delta_bits, "delta_bits")
    if sign_word_bits is not None:
        sign_word_bits = _check_pos_int(sign_word_bits, "sign_word_bits")
    layers = get_model(model)
    widx = [i for i, l in enumerate(layers) if l.has_weight_matrix]
    keep_fp = {widx[0], widx[-1]} if (first_last_fp and widx) else set()
    rows = tuple(
        layer_size(l, l.has_weight_matrix and i not in keep_fp, beta_w, delta_bits=delta_bits,
                   sign_word_bits=sign_word_bits, bn_running_stats=bn_running_stats)
        for i, l in enumerate(layers))
    fp32 = sum(r.fp32_bytes for r in rows)
    packed = sum(r.packed_bytes for r in rows)
    return SizeReport(
        model=model, beta_w=beta_w, delta_bits=delta_bits, sign_word_bits=sign_word_bits,
        first_last_fp=bool(first_last_fp), bn_running_stats=bool(bn_running_stats), layers=rows,
        params=sum(r.params for r in rows),
        binarized_params=sum(l.weight_params for l, r in zip(layers, rows) if r.binarized),
        fp32_bytes=fp32, packed_bytes=packed, saving=fp32 / packed)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _pos_int_type(name: str, allowed: str):
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a positive integer ({allowed}), not {text!r}") from None
        try:
            return check_beta(value, name)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a positive integer ({allowed}), not {text!r}") from None
    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _model_type(text: str) -> str:
    if text not in MODELS:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(MODELS)}, not {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m hadahw.size",
        description="FP32 versus HadaNet-packed model size (sign bits + one delta per beta_w "
                    "weights).")
    p.add_argument("--model", type=_model_type, metavar="{" + ",".join(MODELS) + "}",
                   help="reference network")
    p.add_argument("--beta-w", type=_pos_int_type("--beta-w", "1, 2, 3, ..."), default=16,
                   help="weight segment size beta_w (default 16, the paper's Table 1)")
    p.add_argument("--delta-bits", type=_pos_int_type("--delta-bits", "e.g. 32 or 8"),
                   default=32, help="bits per delta: 32 = paper's FP32 (default), 8 = hardware")
    p.add_argument("--sign-word-bits", type=_pos_int_type("--sign-word-bits", "e.g. 32 or 64"),
                   default=None, help="pad each filter's sign bits to words of this many bits "
                                      "(default: dense packing)")
    p.add_argument("--no-first-last-fp", dest="first_last_fp", action="store_false",
                   help="binarize the first and last weight layer too")
    p.add_argument("--bn-running-stats", action="store_true",
                   help="also count BatchNorm running mean/var (FP32)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list-models", action="store_true", help="print the model names and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_models:
        print("\n".join(MODELS))
        return 0
    if args.model is None:
        parser.error(f"argument --model is required (one of {', '.join(MODELS)})")
    report = model_size(args.model, args.beta_w, first_last_fp=args.first_last_fp,
                        delta_bits=args.delta_bits, sign_word_bits=args.sign_word_bits,
                        bn_running_stats=args.bn_running_stats)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
