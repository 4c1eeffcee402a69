"""AcceleratorConfig: validation messages, derived widths, JSON round-trip, fits()."""

import dataclasses
import json

import numpy as np
import pytest

from hadahw.contract import DeltaFormat, Requant, acc_bits, signed_bits
from hadahw.golden import QLayer
from hadahw.params import AcceleratorConfig

BETAS = [2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("kw,match", [
    (dict(rows=0), r"rows must be an integer in 1\.\.1024, not 0"),
    (dict(pack_outputs=1), r"pack_outputs must be true or false, not 1"),
    (dict(rows=2.0), r"rows must be an integer"),
    (dict(rows=True), r"rows must be an integer"),
    (dict(lanes=12), r"lanes must be a power of two in 8\.\.256, not 12"),
    (dict(lanes=4), r"lanes must be a power of two in 8\.\.256, not 4"),
    (dict(lanes=512), r"lanes must be a power of two in 8\.\.256, not 512"),
    (dict(beta_w=12), r"beta_w must be a power of two in 2\.\.64, not 12"),
    (dict(beta_w=128), r"beta_w must be a power of two in 2\.\.64, not 128"),
    (dict(beta_w=1, beta_a=1), r"beta_w must be a power of two in 2\.\.64, not 1"),
    (dict(beta_a=0), r"beta_a must be a power of two in 1\.\.64, not 0"),
    (dict(beta_a=3), r"beta_a must be a power of two in 1\.\.64, not 3"),
    (dict(beta_a="2"), r"beta_a must be a power of two in 1\.\.64, not '2'"),
    (dict(beta_w=4, beta_a=8), r"beta_a must not exceed beta_w .*beta_a=8 > beta_w=4"),
    (dict(weight_delta="fixed"), r"weight_delta must be a hadahw\.contract\.DeltaFormat"),
    (dict(act_bits=0), r"act_bits must be an integer in 1\.\.16, not 0"),
    (dict(act_bits=17), r"act_bits must be an integer in 1\.\.16, not 17"),
    (dict(scaling="lut"), r"scaling must be 'dsp' or 'shiftadd', not 'lut'"),
    (dict(max_reduction=0), r"max_reduction must be a positive integer, not 0"),
    (dict(levels_per_stage=0), r"levels_per_stage must be an integer in 1\.\.8, not 0"),
    (dict(max_reduction=1 << 50), r"max_reduction=\d+ needs 67 accumulator bits"),
    (dict(weight_delta=DeltaFormat(bits=5, kind="log2"), act_bits=16, max_reduction=1 << 20),
     r"accumulator bits .* more than 62"),
    (dict(weight_memory="bram"), r"weight_memory must be 'ebr' or 'spram', not 'bram'"),
    (dict(weight_memory="spram"), r"weight_memory='spram' holds entries of at most 64 bits, but rows=8 x lanes=16 "
                                  r"needs 192"),
    (dict(rows=1, lanes=8, weight_memory="spram", weight_depth=16385),
     r"weight_depth must be at most 16384 with weight_memory='spram', not 16385"),
])
def test_validation_names_the_parameter(kw, match):
    with pytest.raises(ValueError, match=match):
        AcceleratorConfig(**kw)


def test_frozen_and_keyword_only():
    cfg = AcceleratorConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rows = 3
    with pytest.raises(TypeError):
        AcceleratorConfig(8, 64)


@pytest.mark.parametrize("beta_w,beta_a", [(bw, ba) for bw in BETAS for ba in BETAS if ba <= bw])
@pytest.mark.parametrize("lanes", [8, 64, 256])
def test_geometry(beta_w, beta_a, lanes):
    cfg = AcceleratorConfig(lanes=lanes, beta_w=beta_w, beta_a=beta_a, rows=3)
    assert cfg.group_a * cfg.act_groups == lanes == cfg.group_w * cfg.weight_groups
    assert cfg.words_per_weight_segment * lanes == max(beta_w, lanes)
    assert cfg.words_per_act_segment * lanes == max(beta_a, lanes)
    assert cfg.bmac_per_cycle == 3 * lanes
    assert cfg.popcount_bits == (beta_a if beta_a < lanes else lanes).bit_length()
    assert cfg.count_bits == lanes.bit_length()
    assert [cfg.words_for(k) for k in (1, lanes, lanes + 1)] == [1, 1, 2]


@pytest.mark.parametrize("fmt", [DeltaFormat(), DeltaFormat(bits=4), DeltaFormat(bits=3, kind="log2"),
                                 DeltaFormat(bits=5, kind="log2"), DeltaFormat(bits=1)])
@pytest.mark.parametrize("k", [1, 63, 4096, 100_000])
@pytest.mark.parametrize("act_bits", [1, 8, 12])
def test_widths_are_exact_bounds(fmt, k, act_bits):
    cfg = AcceleratorConfig(weight_delta=fmt, max_reduction=k, act_bits=act_bits, beta_w=32, beta_a=4, lanes=16)
    da, dw = (1 << act_bits) - 1, fmt.max_value
    assert cfg.da_max == da and cfg.dw_max == dw
    assert cfg.acc_bits == acc_bits(k, dw, da)
    assert cfg.acc_bound == k * dw * da
    assert -(1 << (cfg.acc_bits - 1)) <= -cfg.acc_bound and cfg.acc_bound < 1 << (cfg.acc_bits - 1)
    assert cfg.acc_bound >= 1 << (cfg.acc_bits - 2)  # and not one bit wider than needed
    assert cfg.act_term_bits == (da * 4).bit_length()
    assert cfg.group_sum_bits == (da * 16).bit_length()
    assert cfg.segment_sum_bits == signed_bits(da * 32)
    assert cfg.product_bits == signed_bits(dw * da * 32)
    assert cfg.word_sum_bits == signed_bits(dw * da * 16)


def test_acc_bits_agrees_with_layer():
    cfg = AcceleratorConfig(max_reduction=300, weight_delta=DeltaFormat(bits=4, kind="log2"))
    assert cfg.acc_bits == _layer(cfg, k=300).acc_bits


@pytest.mark.parametrize("cfg", [
    AcceleratorConfig(),
    AcceleratorConfig(rows=3, lanes=8, beta_w=64, beta_a=64, weight_delta=DeltaFormat(bits=4, kind="log2"),
                      act_bits=5, scaling="dsp", max_reduction=77, levels_per_stage=3),
])
def test_json_round_trip(cfg):
    text = cfg.to_json()
    assert json.loads(text)["weight_delta"] == {"bits": cfg.weight_delta.bits, "kind": cfg.weight_delta.kind}
    back = AcceleratorConfig.from_json(text)
    assert back == cfg and hash(back) == hash(cfg)
    assert AcceleratorConfig.from_json(cfg.to_json(indent=2, sort_keys=True)) == cfg
    assert AcceleratorConfig.from_dict(cfg.to_dict()) == cfg


def test_json_partial_uses_defaults():
    assert AcceleratorConfig.from_json('{"rows": 4}') == AcceleratorConfig(rows=4)


@pytest.mark.parametrize("text,match", [
    ("{", r"not valid JSON"),
    ("[1, 2]", r"must be a JSON object, not list"),
    ('{"rowz": 4}', r"unknown accelerator configuration keys \['rowz'\]"),
    ('{"weight_delta": "log2"}', r"weight_delta must be an object with keys 'bits' and 'kind'"),
    ('{"weight_delta": {"bits": 9, "kind": "log2"}}', r"log2 delta bits must be in 1\.\.5"),
    ('{"beta_w": 12}', r"beta_w must be a power of two in 2\.\.64, not 12"),
])
def test_from_json_errors(text, match):
    with pytest.raises(ValueError, match=match):
        AcceleratorConfig.from_json(text)


def _layer(cfg, *, k=100, n=3, beta_w=None, beta_a=None, fmt=None, act_bits=None, name=""):
    beta_w = beta_w or cfg.beta_w
    fmt = fmt or cfg.weight_delta
    return QLayer(kind="linear", weight_signs=np.ones((n, k), bool),
                  weight_delta=np.ones((n, -(-k // beta_w)), np.int64), beta_w=beta_w, beta_a=beta_a or cfg.beta_a,
                  in_shape=(k,), requant=Requant.identity(n), weight_format=fmt,
                  act_bits=act_bits or cfg.act_bits, name=name)


def test_fits():
    cfg = AcceleratorConfig(beta_w=16, beta_a=2, max_reduction=256)
    cfg.fits(_layer(cfg, k=256))
    cfg.fits(_layer(cfg, k=1))
    with pytest.raises(ValueError, match=r"layer 'fc1' reduces over K=257 inputs, more than max_reduction=256"):
        cfg.fits(_layer(cfg, k=257, name="fc1"))
    with pytest.raises(ValueError, match=r"beta_w=8 but the accelerator is built for beta_w=16"):
        cfg.fits(_layer(cfg, beta_w=8))
    with pytest.raises(ValueError, match=r"beta_a=4 but the accelerator is built for beta_a=2"):
        cfg.fits(_layer(cfg, beta_a=4))
    with pytest.raises(ValueError, match=r"weight format .*log2.* built for .*fixed"):
        cfg.fits(_layer(cfg, fmt=DeltaFormat(bits=4, kind="log2")))
    with pytest.raises(ValueError, match=r"act_bits=6 but the accelerator is built for act_bits=8"):
        cfg.fits(_layer(cfg, act_bits=6))


def test_fits_conv_uses_im2col_reduction():
    cfg = AcceleratorConfig(beta_w=16, beta_a=4, max_reduction=3 * 3 * 8)
    conv = QLayer(kind="conv2d", weight_signs=np.ones((2, 72), bool), weight_delta=np.ones((2, 5), np.int64),
                  beta_w=16, beta_a=4, in_shape=(5, 5, 8), kernel=3, padding=1, requant=Requant.identity(2))
    cfg.fits(conv)
    with pytest.raises(ValueError, match="K=72"):
        dataclasses.replace(cfg, max_reduction=71).fits(conv)


@pytest.mark.parametrize("rows,lanes,blocks", [(1, 8, 1), (2, 8, 2), (1, 16, 2), (4, 8, 4), (1, 32, 3)])
def test_spram_weight_store_sizes(rows, lanes, blocks):
    """One SB_SPRAM256KA per 16 bits of weight entry (R*L sign bits + R*S_w 8-bit codes), no EBR."""
    from hadahw.program import MemoryMap, ebr_usage
    cfg = AcceleratorConfig(rows=rows, lanes=lanes, weight_memory="spram", weight_depth=16384)
    assert MemoryMap(cfg).spram() == blocks == -(-(rows * lanes + rows * cfg.weight_groups * 8) // 16)
    assert ebr_usage(cfg)["weights"] == 0
    assert MemoryMap(dataclasses.replace(cfg, weight_memory="ebr", weight_depth=256)).spram() == 0
