"""Model-size calculator (hadahw.size) and reference layer shapes (hadahw.models.shapes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hadahw.models.shapes import MODELS, get_model, weight_layers
from hadahw.size import asymptotic_saving, model_size

REPO = Path(__file__).resolve().parents[1]


# ---- shapes ------------------------------------------------------------------------------

# Public parameter counts (torchvision model cards, BVLC reference AlexNet), independent of us.
@pytest.mark.parametrize("model, params", [
    ("alexnet", 61_100_840),
    ("resnet18", 11_689_512),
    ("vgg16", 138_357_544),
    ("alexnet-caffe", 60_965_224),
    ("lenet5", 61_706),
])
def test_param_totals_match_known_counts(model, params):
    assert sum(l.params for l in get_model(model)) == params
    assert model_size(model, 16).params == params


def test_registry_has_required_models():
    for name in ("alexnet", "resnet18", "lenet5", "vgg16", "digits-mlp", "digits-cnn"):
        assert name in MODELS
        assert weight_layers(MODELS[name]())


def test_resnet18_structure():
    layers = get_model("resnet18")
    names = [l.name for l in layers]
    assert [n for n in names if "downsample.0" in n] == [
        "layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    assert sum(l.kind == "bn" for l in layers) == 20
    assert sum(l.kind == "conv" for l in layers) == 20
    w = weight_layers(layers)
    assert (w[0].name, w[-1].name) == ("conv1", "fc")
    assert not any(l.bias for l in w[:-1])


def test_digits_placeholders_shapes():
    assert [(l.in_channels, l.out_channels) for l in get_model("digits-mlp")] == [
        (64, 256), (256, 256), (256, 10)]
    cnn = get_model("digits-cnn")
    assert [(l.kind, l.in_channels, l.out_channels) for l in cnn] == [
        ("conv", 1, 32), ("conv", 32, 64), ("conv", 64, 64), ("linear", 64 * 2 * 2, 10)]


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="alexnet.*resnet18"):
        model_size("foo", 16)


@pytest.mark.parametrize("beta", [0, -3, 2.5, True, "16", None])
def test_bad_beta_rejected(beta):
    with pytest.raises(ValueError, match="beta_w"):
        model_size("alexnet", beta)


# ---- paper reproduction --------------------------------------------------------------------

@pytest.mark.parametrize("model, paper", [("alexnet", 6.51), ("resnet18", 7.43)])
def test_table1_within_1_percent(model, paper):
    r = model_size(model, 16, first_last_fp=True, delta_bits=32)
    assert r.saving == pytest.approx(paper, rel=0.01)


def test_table1_exact_figures():
    # Pin the accounting (see docs/model-size.md) so a change to it is noticed.
    assert round(model_size("alexnet", 16).saving, 4) == 6.4516
    assert round(model_size("resnet18", 16).saving, 4) == 7.4077


# ---- accounting ----------------------------------------------------------------------------

def test_first_last_fp_and_bias_bn_fp32():
    r = model_size("resnet18", 16)
    wrows = [row for row in r.layers if row.kind in ("conv", "linear")]
    assert not wrows[0].binarized and not wrows[-1].binarized
    assert all(row.binarized for row in wrows[1:-1])
    for row in r.layers:
        if not row.binarized:
            assert row.packed_bytes == row.fp32_bytes
    r_all = model_size("resnet18", 16, first_last_fp=False)
    assert all(row.binarized for row in r_all.layers if row.kind in ("conv", "linear"))
    assert r_all.saving > r.saving


def test_layer_bits_exact():
    # lenet5 conv2: 16 filters, K = 6*5*5 = 150 -> ceil(150/16) = 10 segments (last holds 6).
    row = next(l for l in model_size("lenet5", 16).layers if l.name == "conv2")
    assert (row.fan_in, row.segments, row.sign_bits) == (150, 160, 2400)
    assert row.packed_bytes * 8 == 2400 + 160 * 32 + 16 * 32  # signs + deltas + fp32 bias
    row8 = next(l for l in model_size("lenet5", 16, delta_bits=8).layers if l.name == "conv2")
    assert row8.packed_bytes * 8 == 2400 + 160 * 8 + 16 * 32
    # Sign bits padded per filter to 32-bit words: 150 -> 160 bits.
    roww = next(l for l in model_size("lenet5", 16, sign_word_bits=32).layers
                if l.name == "conv2")
    assert roww.sign_bits == 16 * 160


def test_beta_1_costs_more_than_fp32():
    r = model_size("resnet18", 1, delta_bits=32)
    for row in r.layers:
        if row.binarized:
            assert row.saving < 1
            # no biases in ResNet-18's binarized convs: exactly 33 bits per weight
            assert row.packed_bytes * 8 == row.params * 33
    assert r.saving < 1
    assert r.saving == pytest.approx(1, abs=0.04)


@pytest.mark.parametrize("model", ["alexnet", "resnet18", "lenet5", "digits-cnn"])
def test_saving_monotonic_in_beta(model):
    savings = [model_size(model, b).saving for b in range(1, 129)]
    assert all(b >= a for a, b in zip(savings, savings[1:]))
    pow2 = [model_size(model, b).saving for b in (1, 2, 4, 8, 16, 32)]
    assert all(b > a for a, b in zip(pow2, pow2[1:]))


@pytest.mark.parametrize("delta_bits", [32, 8])
@pytest.mark.parametrize("beta", [2, 4, 8, 16, 32, 64])
def test_large_layer_saving_approaches_formula(beta, delta_bits):
    limit = asymptotic_saving(beta, delta_bits)
    if delta_bits == 32:
        assert limit == pytest.approx(beta * 32 / (beta + 32))
    r = model_size("alexnet", beta, delta_bits=delta_bits)
    fc6 = next(l for l in r.layers if l.name == "classifier.1")
    # weight tensor alone (K = 9216 is a multiple of beta): exactly the formula
    assert 32 * 37_748_736 / (fc6.sign_bits + fc6.delta_bits_total) == pytest.approx(limit)
    # with its 4096 FP32 biases the whole layer stays within 1 %
    assert fc6.saving == pytest.approx(limit, rel=0.01)
    for row in r.layers:  # short segments and FP32 biases only ever cost more
        if row.binarized:
            assert row.saving <= limit + 1e-12


def test_bn_running_stats_option():
    a = model_size("resnet18", 16)
    b = model_size("resnet18", 16, bn_running_stats=True)
    assert b.params == a.params + 2 * 4800
    assert b.fp32_bytes - a.fp32_bytes == b.packed_bytes - a.packed_bytes == 4 * 2 * 4800
    assert model_size("alexnet", 16, bn_running_stats=True).saving == model_size(
        "alexnet", 16).saving


def test_totals_are_sums():
    r = model_size("vgg16", 8, delta_bits=8)
    assert r.fp32_bytes == 4 * r.params == sum(l.fp32_bytes for l in r.layers)
    assert r.packed_bytes == sum(l.packed_bytes for l in r.layers)
    assert r.saving == r.fp32_bytes / r.packed_bytes


# ---- CLI -----------------------------------------------------------------------------------

BAD_INPUT = [
    (("--model", "alexnet", "--beta-w", "0"), "--beta-w"),
    (("--model", "alexnet", "--beta-w", "-3"), "--beta-w"),
    (("--model", "alexnet", "--beta-w", "2.5"), "--beta-w"),
    (("--model", "foo", "--beta-w", "16"), "--model"),
    (("--beta-w", "16"), "--model"),
    (("--model", "alexnet", "--delta-bits", "0"), "--delta-bits"),
]
TEXT = ("--model", "resnet18", "--beta-w", "16")
JSON = ("--model", "alexnet", "--beta-w", "16", "--delta-bits", "32", "--json")
ALLBIN = ("--model", "lenet5", "--beta-w", "8", "--no-first-last-fp", "--json")
LIST = ("--list-models",)


@pytest.fixture(scope="module")
def cli():
    """Run every CLI invocation of this module as a subprocess, all at once (interpreter start-up
    dominates), and map argument tuples to ``(returncode, stdout, stderr)``."""
    runs = [TEXT, JSON, ALLBIN, LIST] + [args for args, _ in BAD_INPUT]
    procs = {args: subprocess.Popen([sys.executable, "-m", "hadahw.size", *args], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in runs}
    out = {}
    for args, p in procs.items():
        stdout, stderr = p.communicate(timeout=60)
        out[args] = (p.returncode, stdout, stderr)
    return out


def test_cli_text(cli):
    rc, out, err = cli[TEXT]
    assert rc == 0, err
    assert "saving: 7.41x" in out
    assert "layer4.1.conv2" in out and "KiB" in out


def test_cli_json(cli):
    rc, out, err = cli[JSON]
    assert rc == 0, err
    d = json.loads(out)  # exactly one JSON object
    assert isinstance(d, dict)
    for key in ("model", "beta_w", "fp32_bytes", "packed_bytes", "saving", "layers"):
        assert key in d
    assert d["model"] == "alexnet" and d["beta_w"] == 16
    assert d["saving"] == pytest.approx(model_size("alexnet", 16).saving)
    assert len(d["layers"]) == 8


def test_cli_no_first_last_fp(cli):
    rc, out, err = cli[ALLBIN]
    assert rc == 0, err
    d = json.loads(out)
    assert d["first_last_fp"] is False
    assert all(l["binarized"] for l in d["layers"])


def test_cli_list_models(cli):
    rc, out, _ = cli[LIST]
    assert rc == 0
    assert out.split() == list(MODELS)


@pytest.mark.parametrize("args, param", BAD_INPUT)
def test_cli_bad_input(cli, args, param):
    rc, out, err = cli[args]
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert param in lines[0]
    assert "Traceback" not in err
    if param == "--model":
        assert "resnet18" in lines[0]
