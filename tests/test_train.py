"""Digits networks (hadahw.nets) and the training recipe / CLI (hadahw.train)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hadahw.models.shapes import get_model
from hadahw.nets import VARIANTS, build_model, check_betas, resolve_betas
from hadahw.quant import HadaConv2d, HadaLinear
from hadahw.train import evaluate, fit, load_checkpoint, load_split, main, recalibrate_bn, save_checkpoint, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    # Small models: one thread is faster and steadier on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- data -----------------------------------------------------------------------------------

def test_split_is_fixed_stratified_and_scaled():
    sp = load_split()
    assert (len(sp.y_train), len(sp.y_test)) == (1437, 360)
    assert sp.x_train.shape[1:] == (1, 8, 8) and sp.x_train.dtype == torch.float32
    assert float(sp.x_train.min()) == 0.0 and float(sp.x_train.max()) == 1.0
    # pixel/16: every value is k/16 exactly
    assert torch.equal(sp.x_test * 16, torch.round(sp.x_test * 16))
    counts = np.bincount(sp.y_test.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified 20 % of ~180 per class
    info = sp.info
    assert info["split_seed"] == 0 and info["test_size"] == 0.2
    # Pinned so that a change of split (sklearn version, seed) is noticed.
    assert info["test_indices_sha256"] == "2fbaae31b8c6aad12464a07771b64269876d904bfed86f77a63c8265fa201621"
    assert load_split() is sp


# ---- networks -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_models_follow_the_paper_and_the_contract(name, variant):
    bw, ba, act_all = VARIANTS[variant]
    model = build_model(name, bw, ba, act_all=act_all)
    layers = model.weight_layers()
    # first and last layer at full precision, the rest at the variant's betas
    assert (layers[0].beta_w, layers[0].beta_a) == (1, 1)
    assert (layers[-1].beta_w, layers[-1].beta_a) == (1, 1)
    for l in layers[1:-1]:
        assert l.beta_w == bw
        if isinstance(l, HadaConv2d):
            assert l.act_axis == "channel"
            assert l.beta_a == (l.in_channels if (ba == "all" and act_all == "pixel") else ba)
        else:
            assert l.beta_a == ba
    # only the last layer has a bias (a bias in front of ReLU cannot be folded)
    assert [l.bias is not None for l in layers] == [False] * (len(layers) - 1) + [True]
    out = model.eval()(torch.rand(3, 1, 8, 8))
    assert out.shape == (3, 10)
    # shapes.py entries match the real modules, name by name
    params = dict(model.named_parameters())
    for spec in get_model(name):
        assert params[f"{spec.name}.weight"].numel() == spec.weight_params
        assert (params[f"{spec.name}.bias"].numel() if spec.bias else 0) == spec.bias_params
        assert f"{spec.name}.bias" in params or not spec.bias


def test_cnn_block_order_is_bn_binarize_conv_relu_pool():
    model = build_model("digits-cnn", 16, 2)
    block = model.stages[1]
    assert [type(m) for m in block] == [nn.BatchNorm2d, HadaConv2d, nn.ReLU, nn.MaxPool2d]
    last = model.stages[3]
    assert [type(m) for m in last] == [nn.BatchNorm2d, nn.Flatten, HadaLinear]
    assert model.stages[0][0].in_channels == 1 and not isinstance(model.stages[0][0], nn.BatchNorm2d)


@pytest.mark.parametrize("bw, ba, match", [
    (3, 1, "beta_w"), (16, 6, "beta_a"), (0, 1, "beta_w"), (2, 4, "beta_a must not exceed beta_w"),
    ("foo", 1, "beta_w"), (16, "all", "beta_a='all' needs beta_w='all'"), (True, 1, "beta_w"),
])
def test_bad_betas_raise_one_line_errors(bw, ba, match):
    with pytest.raises(ValueError, match=match) as exc:
        build_model("digits-cnn", bw, ba)
    assert "\n" not in str(exc.value)


def test_beta_a_must_divide_channels_and_bad_names():
    with pytest.raises(ValueError, match="model"):
        build_model("lenet5", 16, 2)
    with pytest.raises(ValueError, match="act_all"):
        build_model("digits-cnn", "all", "all", act_all="row")
    with pytest.raises(ValueError, match="variant"):
        resolve_betas("hada8-8")
    with pytest.raises(ValueError, match="mutually exclusive"):
        resolve_betas("fp", 4, None)
    assert resolve_betas(None, 16, 2)[3] == "hada16-2"
    assert resolve_betas(None, 32, 4)[3] == "bw32-ba4"
    assert check_betas("all", 64) == ("all", 64)


# ---- training -------------------------------------------------------------------------------

def test_training_improves_over_chance_and_is_deterministic():
    sp = load_split()
    # seed 0, 3 epochs, no lr decay, 600 training samples: far above the 10 % of chance
    a = fit("digits-mlp", "hada16-2", epochs=3, lr_step=3, seed=0, train_subset=600, quiet=True)
    assert a.meta["test_accuracy"] > 0.6
    assert a.meta["train_loss"][-1] < a.meta["train_loss"][0]
    assert a.meta["test_accuracy"] == evaluate(a.model, sp.x_test, sp.y_test)
    b = fit("digits-mlp", "hada16-2", epochs=3, lr_step=3, seed=0, train_subset=600, quiet=True)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k
    c = fit("digits-mlp", "hada16-2", epochs=3, lr_step=3, seed=1, train_subset=600, quiet=True)
    assert not torch.equal(a.model.stages[1][1].weight, c.model.stages[1][1].weight)


def test_cnn_trains_in_two_epochs():
    r = fit("digits-cnn", "hada16-2", epochs=2, lr_step=2, seed=0, train_subset=700, quiet=True)
    assert r.meta["test_accuracy"] > 0.6, r.meta
    assert not r.model.training


def test_bn_recalibration_sets_population_statistics():
    torch.manual_seed(0)
    model = build_model("digits-mlp", 16, 2)
    x = load_split().x_train[:512]
    recalibrate_bn(model, x)
    assert not model.training
    bn = model.stages[1][0]
    with torch.no_grad():
        h = model.stages[0](x.reshape(len(x), -1))
    # cumulative average over two equal batches of 256 = the mean over all 512
    torch.testing.assert_close(bn.running_mean, h.mean(0), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1


def test_checkpoint_round_trip(tmp_path):
    path = train("digits-cnn", "hada4-4", epochs=1, seed=3, out=tmp_path / "sub" / "c.pt", train_subset=64,
                 quiet=True)
    assert path == tmp_path / "sub" / "c.pt" and path.exists()
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors + JSON-able meta
    assert set(raw) == {"state_dict", "meta"}
    meta = json.loads(json.dumps(raw["meta"]))
    assert meta == raw["meta"]
    for key, want in [("model", "digits-cnn"), ("variant", "hada4-4"), ("beta_w", 4), ("beta_a", 4), ("epochs", 1),
                      ("seed", 3), ("batch_size", 128), ("optimizer", "Adam")]:
        assert meta[key] == want, key
    assert 0 <= meta["test_accuracy"] <= 1 and meta["data"]["n_test"] == 360
    model, meta2 = load_checkpoint(path)
    assert meta2 == meta and not model.training
    x = load_split().x_test[:16]
    # the reloaded model computes exactly what a fresh fit with the same settings computes
    again = fit("digits-cnn", "hada4-4", epochs=1, seed=3, train_subset=64, quiet=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), again.model(x), rtol=0, atol=0)


def test_save_checkpoint_xnor_meta(tmp_path):
    r = fit("digits-mlp", "xnor", epochs=1, train_subset=32, quiet=True)
    p = save_checkpoint(r, tmp_path / "x.pt")
    model, meta = load_checkpoint(p)
    assert (meta["beta_w"], meta["beta_a"], meta["act_all"]) == ("all", "all", "tensor")


@pytest.mark.parametrize("kwargs, match", [
    (dict(epochs=0), "epochs"), (dict(lr=-1.0), "lr"), (dict(seed=-2), "seed"), (dict(batch_size=0), "batch_size"),
    (dict(lr_step=0), "lr_step"), (dict(train_subset=0), "train_subset"), (dict(lr_gamma=2.0), "lr_gamma"),
])
def test_fit_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit("digits-mlp", "fp", quiet=True, **kwargs)


# ---- CLI ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, name", [
    (["--model", "lenet"], "--model"),
    (["--model", "digits-cnn", "--beta-w", "3"], "--beta-w"),
    (["--model", "digits-cnn", "--beta-a", "0"], "--beta-a"),
    (["--model", "digits-cnn", "--beta-w", "x"], "--beta-w"),
    (["--model", "digits-cnn", "--beta-w", "2", "--beta-a", "4"], "--beta-a"),
    (["--model", "digits-cnn", "--epochs", "0"], "--epochs"),
    (["--model", "digits-cnn", "--epochs", "1.5"], "--epochs"),
    (["--model", "digits-cnn", "--seed", "-1"], "--seed"),
    (["--model", "digits-cnn", "--lr", "-0.1"], "--lr"),
    (["--model", "digits-cnn", "--lr", "nan"], "--lr"),
    (["--model", "digits-cnn", "--batch-size", "0"], "--batch-size"),
    (["--model", "digits-cnn", "--variant", "hada8-8"], "--variant"),
    (["--model", "digits-cnn", "--variant", "fp", "--beta-w", "4"], "--variant"),
    (["--beta-w", "4"], "--model"),
])
def test_cli_errors_exit_2_with_one_line(argv, name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and err.startswith("python -m hadahw.train: error:")


def test_cli_trains_and_writes_checkpoint(tmp_path):
    out = tmp_path / "mlp.pt"
    proc = subprocess.run([sys.executable, "-m", "hadahw.train", "--model", "digits-mlp", "--beta-w", "16",
                           "--beta-a", "2", "--epochs", "1", "--seed", "5", "--train-subset", "128",
                           "--threads", "1", "--out", str(out), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    meta = json.loads(proc.stdout)
    assert meta["checkpoint"] == str(out) and meta["variant"] == "hada16-2" and meta["seed"] == 5
    assert out.exists()
