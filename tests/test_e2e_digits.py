"""End to end on real data: trained digits HadaNets on the simulated board equal the golden model.

The board is the default board build's configuration (what ``python -m hadahw.build --beta 16
--board icebreaker`` builds: SPRAM weight store, automatic array size), simulated whole (UART, HostLink, HadaCore under Verilator) and
driven by ``python -m hadahw.run``'s function form over a pseudo-terminal.  By default a short
MLP training and a handful of test images; ``--runslow`` runs both digits networks, trained with
the recipe's 30 epochs, over all 360 test images.  Seeds are fixed (training seed 0, image choice
seed 0).
"""

from __future__ import annotations

import numpy as np
import pytest

from hadahw import run as run_cli
from hadahw.build import board_build_config
from hadahw.lower_net import golden_predict, lower_network_full
from hadahw.train import fit, load_checkpoint, load_split, save_checkpoint

BOARD_CONFIG = board_build_config("--beta", "16", "--board", "icebreaker")


def _golden_accuracy(ckpt, indices) -> float:
    """Integer golden model's accuracy on test images ``indices``, computed here, not by hadahw.run."""
    model, _ = load_checkpoint(ckpt)
    split = load_split()
    net = lower_network_full(model, split.x_train)
    x, y = split.x_test[indices], split.y_test[indices].numpy()
    gold = golden_predict(net.layers, net.input_exponent, x.numpy().astype(np.float64)).argmax(1)
    return float((gold == y).mean())


def _check(rep, ckpt, n_images):
    assert rep.ok
    assert rep.images == n_images and len(rep.image_indices) == n_images
    assert rep.prediction_mismatches == 0 and rep.value_mismatches == 0
    assert rep.cycles_measured == [rep.cycles_predicted] * n_images
    assert rep.hardware_accuracy == rep.golden_accuracy == pytest.approx(_golden_accuracy(ckpt, rep.image_indices))


def test_trained_mlp_subset_on_the_board_configuration(tmp_path):
    result = fit("digits-mlp", "hada16-2", epochs=5, seed=0, quiet=True)
    ckpt = save_checkpoint(result, tmp_path / "mlp.pt")
    rep = run_cli.run_checkpoint(ckpt, BOARD_CONFIG, images=6, seed=0)
    _check(rep, ckpt, 6)
    assert [layer["where"] for layer in rep.layers] == ["host", "accelerator", "host"]


def test_trained_hbwn_mlp_subset_on_a_beta_a_1_build(tmp_path):
    """HBWN (binarized weights, full-precision activations: beta_a = 1) on what
    ``python -m hadahw.build --beta 4 --beta-a 1 --board icebreaker`` builds."""
    config = board_build_config("--beta", "4", "--beta-a", "1", "--board", "icebreaker")
    assert (config.beta_w, config.beta_a) == (4, 1)
    result = fit("digits-mlp", "hbwn4", epochs=3, seed=0, quiet=True)
    ckpt = save_checkpoint(result, tmp_path / "hbwn.pt")
    rep = run_cli.run_checkpoint(ckpt, config, images=4, seed=0)
    _check(rep, ckpt, 4)
    assert [layer["where"] for layer in rep.layers] == ["host", "accelerator", "host"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["digits-mlp", "digits-cnn"])
def test_whole_test_set_on_the_board_configuration(model, tmp_path):
    result = fit(model, "hada16-2", epochs=30, seed=0, quiet=True)
    ckpt = save_checkpoint(result, tmp_path / f"{model}.pt")
    rep = run_cli.run_checkpoint(ckpt, BOARD_CONFIG, images="all", seed=0)
    _check(rep, ckpt, 360)
