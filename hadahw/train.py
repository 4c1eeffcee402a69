"""Training recipe for the digits HadaNets (library + ``python -m hadahw.train``).

Usage::

    python -m hadahw.train --model digits-cnn --beta-w 16 --beta-a 2 --epochs 30 --seed 0 --out cnn.pt
    python -m hadahw.train --model digits-mlp --variant hbwn4 --epochs 30 --out mlp.pt --quiet

Data
    ``sklearn.datasets.load_digits`` (1797 images, 8x8, values 0..16, no download).  Pixels are
    scaled to [0, 1] by ``/ 16`` (no standardisation: ``k/16`` is exact in the integer model's
    8-bit input, exponent -7, so input quantization is lossless).  Fixed stratified split,
    80/20, ``train_test_split(..., test_size=0.2, stratify=y, random_state=0)``: 1437 train,
    360 test.  The CNN sees ``(N, 1, 8, 8)`` maps, the MLP the 64 pixels in row-major order.
Recipe (after the paper's MNIST recipe, Sec. 5.1: Adam, lr 0.005, x0.1 every 15 of 60 epochs,
batch 128, cross-entropy, no augmentation)
    Adam, initial lr 0.005, cross-entropy, batch 128, ``StepLR`` x0.1 every ``epochs // 4`` epochs
    (the paper's 15-of-60 ratio; 30 epochs -> decays after epochs 7, 14, 21, 28), shuffled with a
    seeded generator; ``torch.manual_seed(seed)`` before the model is built, so a run is
    reproducible on one machine.  After the last epoch the BatchNorm running statistics are
    re-estimated in one pass over the training data (:func:`recalibrate_bn`; matters for short
    runs only).  The reported accuracy is the test accuracy after the last epoch (no model
    selection on the test set).
Checkpoint (``torch.save``; read back with :func:`load_checkpoint`, ``weights_only=True``)
    ``{"state_dict": ..., "meta": {...}}``; ``meta`` is JSON-able: model, variant, betas,
    act_all, epochs, lr, lr_step, batch_size, seed, train/test accuracy, loss history, data split.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .nets import MODEL_NAMES, VARIANTS, DigitsNet, build_model, resolve_betas

__all__ = ["Split", "load_split", "train", "fit", "TrainResult", "evaluate", "recalibrate_bn", "save_checkpoint",
           "load_checkpoint", "main", "DEFAULTS"]

#: Default hyper-parameters of the recipe.
DEFAULTS = dict(epochs=30, lr=0.005, batch_size=128, seed=0, lr_gamma=0.1)
SPLIT_SEED = 0
TEST_SIZE = 0.2


@dataclasses.dataclass(frozen=True)
class Split:
    """The fixed digits split: float32 images ``(N, 1, 8, 8)`` in [0, 1] and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    info: dict


_SPLIT_CACHE: dict = {}


def load_split(seed: int = SPLIT_SEED, test_size: float = TEST_SIZE) -> Split:
    """The stratified train/test split of ``load_digits`` (cached per arguments)."""
    key = (seed, test_size)
    if key not in _SPLIT_CACHE:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        x = (data.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
        y = data.target.astype(np.int64)
        idx = np.arange(len(y))
        tr, te = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
        info = {
            "dataset": "sklearn.datasets.load_digits",
            "scaling": "pixel/16 -> [0, 1]",
            "split": "sklearn train_test_split, stratified",
            "test_size": test_size,
            "split_seed": seed,
            "n_train": int(tr.size),
            "n_test": int(te.size),
            "test_indices_sha256": hashlib.sha256(np.sort(te).astype(np.int64).tobytes()).hexdigest(),
        }
        _SPLIT_CACHE[key] = Split(torch.from_numpy(x[tr]), torch.from_numpy(y[tr]),
                                  torch.from_numpy(x[te]), torch.from_numpy(y[te]), info)
    return _SPLIT_CACHE[key]


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Accuracy of ``model`` (switched to eval mode) on ``(x, y)``."""
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(len(y), 1)


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate every BatchNorm's running statistics on ``x`` with the final weights.

    One pass in train mode with ``momentum=None`` (cumulative average over the batches), as
    ``torch.optim.swa_utils.update_bn`` does; the model is left in eval mode.  Short runs need it:
    after 2-3 epochs at lr 0.005 the exponential running averages still lag the weights and an
    eval-mode CNN can sit at chance while its train-mode accuracy is > 95 %.
    """
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    momenta = [b.momentum for b in bns]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
    model.train()
    try:
        for i in range(0, len(x), batch_size):
            if len(x[i:i + batch_size]) > 1:
                model(x[i:i + batch_size])
    finally:
        for b, m in zip(bns, momenta):
            b.momentum = m
        model.eval()


@dataclasses.dataclass
class TrainResult:
    model: DigitsNet
    meta: dict


def _check_pos_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def _check_seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, not {value!r}")
    return int(value)


def _check_lr(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"lr must be a positive finite number, not {value!r}")
    return float(value)


def fit(model_name: str, variant: str | None = None, *, beta_w=None, beta_a=None, act_all: str | None = None,
        epochs: int = DEFAULTS["epochs"], lr: float = DEFAULTS["lr"], batch_size: int = DEFAULTS["batch_size"],
        seed: int = DEFAULTS["seed"], lr_step: int | None = None, lr_gamma: float = DEFAULTS["lr_gamma"],
        train_subset: int | None = None, bn_recalibrate: bool = True, quiet: bool = False,
        split: Split | None = None) -> TrainResult:
    """Train a digits network and return it (eval mode) with its metadata; see the module doc.

    ``variant`` (a key of :data:`hadahw.nets.VARIANTS`) or ``beta_w``/``beta_a`` select the
    betas.  ``train_subset`` trains on the first ``n`` training samples only (fast tests).
    ``bn_recalibrate`` re-estimates the BatchNorm statistics on the training data after the last
    epoch (:func:`recalibrate_bn`).  ``quiet`` (or stderr not being a terminal) disables the tqdm
    bar.

    Raises
    ------
    ValueError
        One line naming the bad parameter.
    """
    if not isinstance(model_name, str) or model_name not in MODEL_NAMES:
        raise ValueError(f"model must be one of {', '.join(MODEL_NAMES)}, not {model_name!r}")
    bw, ba, default_act_all, tag = resolve_betas(variant, beta_w, beta_a)
    act_all = default_act_all if act_all is None else act_all
    epochs = _check_pos_int(epochs, "epochs")
    batch_size = _check_pos_int(batch_size, "batch_size")
    seed = _check_seed(seed)
    lr = _check_lr(lr)
    lr_step = max(1, epochs // 4) if lr_step is None else _check_pos_int(lr_step, "lr_step")
    if isinstance(lr_gamma, bool) or not isinstance(lr_gamma, (int, float)) or not 0 < lr_gamma <= 1:
        raise ValueError(f"lr_gamma must be a number in (0, 1], not {lr_gamma!r}")
    split = load_split() if split is None else split
    x_tr, y_tr = split.x_train, split.y_train
    if train_subset is not None:
        n = _check_pos_int(train_subset, "train_subset")
        x_tr, y_tr = x_tr[:n], y_tr[:n]

    torch.manual_seed(seed)
    model = build_model(model_name, bw, ba, act_all=act_all)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=lr_step, gamma=lr_gamma)
    gen = torch.Generator().manual_seed(seed)

    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    history = []
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc=f"{model_name} {tag}", unit="epoch", disable=disable, leave=False)
    for _ in bar:
        model.train()
        perm = torch.randperm(len(y_tr), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples in training mode
                continue
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(idx)
            count += len(idx)
        sched.step()
        history.append(round(total / max(count, 1), 6))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()
    if bn_recalibrate:
        recalibrate_bn(model, x_tr)
    train_s = time.perf_counter() - t0
    model.eval()
    meta = {
        "model": model_name,
        "variant": tag,
        "beta_w": bw,
        "beta_a": ba,
        "act_all": act_all,
        "epochs": epochs,
        "lr": lr,
        "lr_step": lr_step,
        "lr_gamma": float(lr_gamma),
        "batch_size": batch_size,
        "optimizer": "Adam",
        "loss": "cross_entropy",
        "seed": seed,
        "train_subset": None if train_subset is None else int(len(y_tr)),
        "bn_recalibrate": bool(bn_recalibrate),
        "train_loss": history,
        "train_accuracy": evaluate(model, x_tr, y_tr),
        "test_accuracy": evaluate(model, split.x_test, split.y_test),
        "train_seconds": round(train_s, 3),
        "data": dict(split.info),
        "torch": str(torch.__version__),
    }
    json.dumps(meta)  # must stay JSON-able
    return TrainResult(model, meta)


def save_checkpoint(result: TrainResult, out) -> Path:
    """Write ``{"state_dict", "meta"}`` to ``out`` (parent folders are created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": result.model.state_dict(), "meta": result.meta}, out)
    return out


def load_checkpoint(path) -> tuple[DigitsNet, dict]:
    """Rebuild the model of a checkpoint (eval mode) and return it with its metadata."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    model = build_model(meta["model"], meta["beta_w"], meta["beta_a"], act_all=meta.get("act_all", "tensor"))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, meta


def train(model_name: str, variant: str | None = None, *, beta_w=None, beta_a=None,
          epochs: int = DEFAULTS["epochs"], lr: float = DEFAULTS["lr"], batch_size: int = DEFAULTS["batch_size"],
          seed: int = DEFAULTS["seed"], out=None, **kwargs) -> Path:
    """Train (see :func:`fit`) and save a checkpoint; returns its path.

    ``out`` defaults to ``checkpoints/<model>_<variant>_seed<seed>.pt``.
    """
    result = fit(model_name, variant, beta_w=beta_w, beta_a=beta_a, epochs=epochs, lr=lr,
                 batch_size=batch_size, seed=seed, **kwargs)
    if out is None:
        out = Path("checkpoints") / f"{model_name}_{result.meta['variant']}_seed{result.meta['seed']}.pt"
    return save_checkpoint(result, out)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """One-line errors on stderr, exit status 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _beta_arg(text: str):
    text = text.strip()
    if text == "all":
        return "all"
    try:
        v = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a power of two (1, 2, 4, ...) or 'all', not {text!r}") from None
    if v < 1 or v & (v - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two (1, 2, 4, ...) or 'all', not {text!r}")
    return v


def _int_arg(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return v
    return parse


def _lr_arg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return v


def _choice_arg(choices):
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, not {text!r}")
        return text
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m hadahw.train",
                description="Train a digits HadaNet (Adam, cross-entropy, step lr decay) and save a checkpoint.")
    p.add_argument("--model", required=True, type=_choice_arg(MODEL_NAMES), metavar="{" + ",".join(MODEL_NAMES) + "}")
    p.add_argument("--variant", type=_choice_arg(tuple(VARIANTS)), metavar="{" + ",".join(VARIANTS) + "}",
                   help="named beta pair (excludes --beta-w/--beta-a)")
    p.add_argument("--beta-w", type=_beta_arg, default=None, help="weight segment size (power of two or 'all'; default 16)")
    p.add_argument("--beta-a", type=_beta_arg, default=None, help="activation segment size (default 2)")
    p.add_argument("--epochs", type=_int_arg(1, "a positive integer"), default=DEFAULTS["epochs"])
    p.add_argument("--lr", type=_lr_arg, default=DEFAULTS["lr"], help="initial learning rate (default 0.005)")
    p.add_argument("--lr-step", type=_int_arg(1, "a positive integer"), default=None,
                   help="decay lr x0.1 every N epochs (default epochs // 4)")
    p.add_argument("--batch-size", type=_int_arg(1, "a positive integer"), default=DEFAULTS["batch_size"])
    p.add_argument("--seed", type=_int_arg(0, "a non-negative integer"), default=DEFAULTS["seed"])
    p.add_argument("--train-subset", type=_int_arg(1, "a positive integer"), default=None,
                   help="train on the first N training samples only")
    p.add_argument("--no-bn-recalibrate", dest="bn_recalibrate", action="store_false",
                   help="keep the running BatchNorm statistics of training")
    p.add_argument("--threads", type=_int_arg(1, "a positive integer"), default=None,
                   help="torch CPU threads (default: torch's choice; 1 is often fastest on a busy machine)")
    p.add_argument("--out", default=None, help="checkpoint path (default checkpoints/<model>_<variant>_seed<seed>.pt)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the checkpoint metadata as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.variant is not None and (args.beta_w is not None or args.beta_a is not None):
        parser.error("argument --variant: not allowed with --beta-w/--beta-a")
    try:
        resolve_betas(args.variant, args.beta_w, args.beta_a)
    except ValueError as exc:
        parser.error(f"argument --beta-a: {exc}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = fit(args.model, args.variant, beta_w=args.beta_w, beta_a=args.beta_a, epochs=args.epochs,
                 lr=args.lr, lr_step=args.lr_step, batch_size=args.batch_size, seed=args.seed,
                 train_subset=args.train_subset, bn_recalibrate=args.bn_recalibrate, quiet=args.quiet)
    out = args.out
    if out is None:
        out = Path("checkpoints") / f"{args.model}_{result.meta['variant']}_seed{args.seed}.pt"
    path = save_checkpoint(result, out)
    if args.json:
        print(json.dumps({"checkpoint": str(path), **result.meta}))
    else:
        m = result.meta
        print(f"{m['model']} {m['variant']} (beta_w={m['beta_w']}, beta_a={m['beta_a']}) seed {m['seed']}, "
              f"{m['epochs']} epochs: test accuracy {100 * m['test_accuracy']:.2f}% -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
