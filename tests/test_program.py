"""hadahw.program: descriptor format, memory map, images (re-read independently), fit checks."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hadahw.contract import DeltaFormat, Requant
from hadahw.golden import QLayer, run_layer
from hadahw.params import AcceleratorConfig
from hadahw.program import (DESCRIPTOR_BYTES, DESCRIPTOR_FIELDS, FLAG_FINAL, FLAG_NARROW, FLAG_PACKED, FLAG_RELU,
                            FLAG_SATURATE, Descriptor, MemoryMap, Program, compile_network, ebr_usage, pack_act, pack_input, predict_cycles,
                            unpack_act, unpack_output)
from hadahw.protocol import Space

from netgen import Spec, random_act, random_network

LOG2_4 = DeltaFormat(bits=4, kind="log2")


def cfg_of(**kw):
    base = dict(rows=3, lanes=8, beta_w=16, beta_a=4, max_reduction=1024, weight_depth=512, act_depth=256,
                param_depth=128, desc_bytes=4 * DESCRIPTOR_BYTES, max_pool_width=8)
    base.update(kw)
    return AcceleratorConfig(**base)


# ---------------------------------------------------------------------------------------------
# Descriptor


def test_descriptor_layout_is_compact_and_documented():
    names = [n for n, _, _ in DESCRIPTOR_FIELDS]
    assert len(names) == len(set(names))
    assert DESCRIPTOR_BYTES == sum(n for _, n, _ in DESCRIPTOR_FIELDS) and DESCRIPTOR_BYTES % 4 == 0
    assert all(doc for _, _, doc in DESCRIPTOR_FIELDS)
    assert [f.name for f in dataclasses.fields(Descriptor)] == names


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_descriptor_round_trip(data):
    values = {name: data.draw(st.integers(0, (1 << (8 * n)) - 1), label=name) for name, n, _ in DESCRIPTOR_FIELDS}
    d = Descriptor(**values)
    raw = d.encode()
    assert len(raw) == DESCRIPTOR_BYTES
    assert Descriptor.decode(raw) == d
    # Little-endian, in field order.
    off = 0
    for name, n, _ in DESCRIPTOR_FIELDS:
        assert int.from_bytes(raw[off:off + n], "little") == values[name]
        off += n


def test_descriptor_errors():
    with pytest.raises(ValueError, match=r"descriptor field stride must be an integer in 0\.\.255, not 256"):
        Descriptor(stride=256).encode()
    with pytest.raises(ValueError, match=r"descriptor field n must be an integer in 0\.\.65535, not -1"):
        Descriptor(n=-1).encode()
    with pytest.raises(ValueError, match=f"a descriptor is {DESCRIPTOR_BYTES} bytes, not 3"):
        Descriptor.decode(b"abc")


# ---------------------------------------------------------------------------------------------
# Memory map


def test_default_memory_map_fits_the_up5k():
    cfg = AcceleratorConfig()
    mm = MemoryMap(cfg)
    assert (mm.weight_entry_bits, mm.weight_entry_bytes, mm.weight_stride) == (8 * 16 + 8 * 8, 24, 32)
    assert (mm.act_entry_bits, mm.act_entry_bytes, mm.act_stride) == (16 + 8 * 8, 10, 16)
    assert (mm.param_entry_bits, mm.param_stride) == (48, 8)
    assert mm.param_base == 256 * 32
    assert mm.space_sizes == {Space.WEIGHTS: 256 * 32 + 256 * 8, Space.ACTS: 512 * 16, Space.DESC: 512}
    assert (mm.output_value_bytes, mm.entries_per_output) == (8, 1)   # y_bits = 47
    usage = ebr_usage(cfg)
    assert usage == {"weights": 12, "acts": 10, "params": 3, "pool": 2, "desc": 1, "total": 28}
    assert usage["total"] + 2 <= 30  # the HostLink's receive and reply buffers take about 2 more


def test_output_value_width_follows_the_requantizer():
    small = AcceleratorConfig(max_reduction=64, act_bits=4, weight_delta=DeltaFormat(bits=4), mult_bits=8,
                              bias_bits=12, lanes=8, beta_a=8)
    assert small.y_bits <= 32
    mm = MemoryMap(small)
    assert mm.output_value_bytes == 4 and mm.act_entry_bytes == 2 and mm.entries_per_output == 2


# ---------------------------------------------------------------------------------------------
# Images, re-read independently


def _reread_weights(prog: Program, layer: QLayer, plan):
    """Check every weight entry of ``plan`` bit by bit against the layer (Python ints, no numpy packing)."""
    cfg, mm = prog.config, prog.memory_map
    lanes, rows = cfg.lanes, cfg.rows
    h, w, c = plan.in_shape
    e = plan.weight_addr
    n_out = layer.out_features
    for g in range(plan.passes):
        t = 0
        for ky in range(plan.kh):
            for kx in range(plan.kw):
                for j in range(-(-c // lanes)):
                    k0 = (ky * plan.kw + kx) * c + j * lanes
                    cnt = min(lanes, c - j * lanes)
                    raw = int.from_bytes(prog.weight_image[e * mm.weight_stride:(e + 1) * mm.weight_stride], "little")
                    assert raw >> mm.weight_entry_bits == 0
                    for r in range(rows):
                        n = g * rows + r
                        word = (raw >> (r * lanes)) & ((1 << lanes) - 1)
                        want = sum(1 << i for i in range(cnt) if n < n_out and layer.weight_signs[n, k0 + i])
                        assert word == want, (plan.index, g, t, r)
                        for grp in range(cfg.weight_groups):
                            code = (raw >> mm.weight_code_offset(r, grp)) & ((1 << cfg.weight_code_bits) - 1)
                            lane0 = grp * cfg.group_w
                            if n < n_out and lane0 < cnt:
                                assert code == layer.weight_delta[n, (k0 + lane0) // cfg.beta_w]
                                # every valid lane of the group is in that segment
                                last = k0 + min(cnt, lane0 + cfg.group_w) - 1
                                assert last // cfg.beta_w == (k0 + lane0) // cfg.beta_w
                            else:
                                assert code == 0
                    e += 1
                    t += 1
    assert e == plan.weight_addr + plan.weight_entries


def _walk(d: Descriptor, cfg: AcceleratorConfig):
    """The sequencer's incremental walk, from descriptor fields only (mod 2**16 arithmetic)."""
    beats = []
    for oy in range(d.out_h):
        for ox in range(d.out_w):
            for g in range(d.passes):
                kpos = 0
                for ky in range(d.kh):
                    for kx in range(d.kw):
                        for j in range(d.wpp):
                            iy, ix = oy * d.stride - d.pad + ky, ox * d.stride - d.pad + kx
                            addr = (d.first_addr + oy * d.row_step + ox * d.col_step + ky * d.row_entries
                                    + kx * d.wpp + j) & 0xFFFF
                            cnt = d.last_count if j == d.wpp - 1 else cfg.lanes
                            kpos = (kpos + cnt) % cfg.beta_w
                            pad = not (0 <= iy < d.in_h and 0 <= ix < d.in_w)
                            last = ky == d.kh - 1 and kx == d.kw - 1 and j == d.wpp - 1
                            beats.append((None if pad else addr, d.weight_addr + g * d.words
                                          + (ky * d.kw + kx) * d.wpp + j, cnt, last, last or kpos == 0))
    return beats


def _direct(plan, cfg):
    """Beats from the layer geometry directly: (act entry or None, weight entry, count, last, seg_end)."""
    h, w, c = plan.in_shape
    lanes = cfg.lanes
    beats = []
    for oy in range(plan.conv_out[0]):
        for ox in range(plan.conv_out[1]):
            for g in range(plan.passes):
                k = 0
                for ky in range(plan.kh):
                    for kx in range(plan.kw):
                        for j in range(plan.wpp):
                            iy, ix = oy * plan.stride - plan.pad + ky, ox * plan.stride - plan.pad + kx
                            cnt = min(lanes, c - j * lanes)
                            k += cnt
                            inside = 0 <= iy < h and 0 <= ix < w
                            last = (ky, kx, j) == (plan.kh - 1, plan.kw - 1, plan.wpp - 1)
                            beats.append((plan.in_addr + (iy * w + ix) * plan.wpp + j if inside else None,
                                          plan.weight_addr + g * plan.words + (ky * plan.kw + kx) * plan.wpp + j,
                                          cnt, last, last or k % cfg.beta_w == 0))
    return beats


NETS = [
    (cfg_of(), Spec((6, 6, 4), ("conv", 8, 3, 1, 1, 2), ("conv", 16, 3, 2, 1, 1), ("linear", 5))),
    (cfg_of(lanes=16, beta_w=4, beta_a=2, weight_delta=LOG2_4), Spec((5, 5, 4), ("conv", 8, 3, 1, 1, 1),
                                                                      ("conv", 12, 3, 2, 0, 1), ("linear", 10))),
    (cfg_of(lanes=8, beta_w=32, beta_a=16, rows=4), Spec((4, 4, 16), ("conv", 32, 3, 1, 1, 2), ("linear", 7))),
    (cfg_of(lanes=8, beta_w=16, beta_a=4), Spec((20,), ("linear", 10), ("linear", 5))),
]


@pytest.mark.parametrize("cfg,spec", NETS, ids=["conv-CltL", "conv-L16-log2", "conv-bw32-ba16", "fc-fc"])
def test_images_reread(cfg, spec):
    rng = np.random.default_rng(3)
    layers, act = random_network(rng, cfg, spec)
    prog = compile_network(layers, cfg)
    mm = prog.memory_map
    assert len(prog.weight_image) == sum(p.weight_entries for p in prog.plans) * mm.weight_stride
    for layer, plan in zip(layers, prog.plans):
        _reread_weights(prog, layer, plan)
        # Descriptor fields re-derived, and the sequencer's incremental walk equals the direct one.
        d = Descriptor.decode(prog.desc_image[plan.index * DESCRIPTOR_BYTES:(plan.index + 1) * DESCRIPTOR_BYTES])
        assert d == plan.descriptor
        assert bool(d.flags & FLAG_FINAL) == (layer.out_beta_a is None)
        assert bool(d.flags & FLAG_RELU) == layer.requant.relu
        assert bool(d.flags & FLAG_SATURATE) == (layer.requant.saturate_bits is not None)
        assert (d.n, d.shift, d.out_bits) == (layer.out_features, layer.requant.shift, layer.requant.saturate_bits or 0)
        assert d.words * d.passes * d.out_h * d.out_w * cfg.lanes >= layer.reduction * layer.out_features * (
            d.out_h * d.out_w) // max(1, cfg.rows) // cfg.rows
        assert _walk(d, cfg) == _direct(plan, cfg)
        # Parameters: M then B, two's complement.
        for ch in range(layer.out_features):
            e = plan.param_addr + ch
            raw = int.from_bytes(prog.param_image[e * mm.param_stride:(e + 1) * mm.param_stride], "little")
            m = raw & ((1 << cfg.mult_bits) - 1)
            b = (raw >> cfg.mult_bits) & ((1 << cfg.bias_bits) - 1)
            m -= (m >> (cfg.mult_bits - 1)) << cfg.mult_bits
            b -= (b >> (cfg.bias_bits - 1)) << cfg.bias_bits
            assert (m, b) == (layer.requant.multiplier[ch], layer.requant.bias[ch])
    # Ping-pong placement: a layer's input and output never overlap, and chain.
    for p, q in zip(prog.plans, prog.plans[1:]):
        assert q.in_addr == p.out_addr and q.in_entries == p.out_entries
    for p in prog.plans:
        lo, hi = sorted([(p.in_addr, p.in_entries), (p.out_addr, p.out_entries)])
        assert lo[0] + lo[1] <= hi[0] and hi[0] + hi[1] <= cfg.act_depth
    assert prog.input_addr == prog.plans[0].in_addr * mm.act_stride
    assert prog.writes()[1] == (Space.WEIGHTS, mm.param_base, prog.param_image)
    assert predict_cycles(prog) > sum(p.pixels * p.passes * p.words for p in prog.plans)


@pytest.mark.parametrize("cfg,shape", [(cfg_of(), (3, 2, 12)), (cfg_of(lanes=16, beta_a=32, beta_w=32), (2, 2, 64)),
                                       (cfg_of(beta_a=4), (10,)), (cfg_of(lanes=8, beta_a=16, beta_w=16), (20,))])
def test_act_packing(cfg, shape):
    rng = np.random.default_rng(len(shape))
    act = random_act(rng, cfg, shape)
    raw = pack_act(act, cfg)
    mm = MemoryMap(cfg)
    layout = shape if len(shape) == 3 else (1, 1, shape[0])
    s, d = unpack_act(raw, layout, cfg)
    assert np.array_equal(s.reshape(-1), act.signs.reshape(-1))
    assert np.array_equal(d.reshape(-1), act.delta_per_element().reshape(-1))
    # Independent bit reading of entry (pixel p, word j).
    c = layout[2]
    wpp = -(-c // cfg.lanes)
    signs = act.signs.reshape(-1, c)
    dpe = act.delta_per_element().reshape(-1, c)
    for p in range(signs.shape[0]):
        for j in range(wpp):
            e = p * wpp + j
            raw_e = int.from_bytes(raw[e * mm.act_stride:(e + 1) * mm.act_stride], "little")
            for i in range(cfg.lanes):
                ch = j * cfg.lanes + i
                assert (raw_e >> i) & 1 == (ch < c and signs[p, ch])
            for grp in range(cfg.act_groups):
                ch = j * cfg.lanes + grp * cfg.group_a
                code = (raw_e >> mm.act_code_offset(grp)) & ((1 << cfg.act_bits) - 1)
                assert code == (dpe[p, ch] if ch < c else 0)
    assert pack_input(act, cfg) == raw


def test_pack_input_checks_formats():
    cfg = cfg_of()
    act = random_act(np.random.default_rng(0), cfg_of(beta_a=8), (16,))
    with pytest.raises(ValueError, match="beta_a=8.*built for beta_a=4"):
        pack_input(act, cfg)
    with pytest.raises(ValueError, match="cannot be laid out"):
        pack_input(random_act(np.random.default_rng(0), cfg, (16,)), cfg, shape=(2, 2, 5))
    with pytest.raises(ValueError, match="past the map's channels"):
        bad = bytearray(pack_act(random_act(np.random.default_rng(0), cfg, (1, 1, 4)), cfg))
        bad[0] |= 0x80
        unpack_act(bytes(bad), (1, 1, 4), cfg)


def test_unpack_output_sign_extends():
    cfg = cfg_of(max_reduction=64, act_bits=4, weight_delta=DeltaFormat(bits=4), mult_bits=8, bias_bits=12,
                 beta_a=8, beta_w=8)
    rng = np.random.default_rng(2)
    layers, _ = random_network(rng, cfg, Spec((8,), ("linear", 3)))
    wide = _with_final_saturation(layers, None)
    prog = compile_network(wide, cfg)
    mm = prog.memory_map
    assert (mm.output_value_bytes, mm.act_entry_bytes, mm.act_stride, mm.entries_per_output) == (4, 2, 2, 2)
    assert (prog.output_spacing, prog.output_value_bytes) == (2, 4)
    assert not prog.descriptors[-1].flags & FLAG_NARROW
    values = [-5, 123456, -(1 << 31)]
    data = b"".join(v.to_bytes(4, "little", signed=True) for v in values)
    assert prog.output_length == len(data)
    assert unpack_output(data, prog).tolist() == values
    with pytest.raises(ValueError, match="the output is 12 bytes, not 4"):
        unpack_output(data[:4], prog)


def _with_final_saturation(layers, bits, relu=False):
    last = layers[-1]
    requant = dataclasses.replace(last.requant, saturate_bits=bits, relu=relu)
    return [*layers[:-1], dataclasses.replace(last, requant=requant)]


@pytest.mark.parametrize("bits,narrow", [(15, True), (8, True), (16, False)])
def test_narrow_final_layer_layout(bits, narrow):
    """A final layer saturating to ``bits`` takes one 16-bit entry per value iff bits + 1 <= 16."""
    cfg = cfg_of(max_reduction=64, act_bits=4, weight_delta=DeltaFormat(bits=4), mult_bits=8, bias_bits=12,
                 beta_a=8, beta_w=8)
    rng = np.random.default_rng(3)
    layers, _ = random_network(rng, cfg, Spec((8,), ("linear", 3)))
    prog = compile_network(_with_final_saturation(layers, bits), cfg)
    assert bool(prog.descriptors[-1].flags & FLAG_NARROW) == narrow
    assert not prog.output_packed and not prog.descriptors[-1].flags & FLAG_PACKED
    assert (prog.output_spacing, prog.output_value_bytes) == ((1, 2) if narrow else (2, 4))
    lim = (1 << bits) - 1
    values = [-lim, lim, -1]
    width = 2 if narrow else 4
    data = b"".join(v.to_bytes(width, "little", signed=True) for v in values)
    assert prog.output_length == len(data) == 3 * prog.output_spacing * 2
    assert unpack_output(data, prog).tolist() == values
    # the writer spends one cycle per entry: the narrow layer is shorter by one cycle per row of
    # its last pass (serializer) and one at the end (writer)
    wide = compile_network(_with_final_saturation(layers, None), cfg)
    if narrow:
        rows = wide.plans[-1].descriptor.last_rows
        assert predict_cycles(wide) - predict_cycles(prog) >= rows


@pytest.mark.parametrize("bits,act_bits,beta_a,size", [
    (7, 8, 2, 1), (3, 8, 2, 1), (8, 8, 2, 2), (15, 8, 2, 2), (16, 8, 2, 0),  # 5-byte entries
    (7, 4, 8, 1), (8, 4, 8, 0),                                              # 2-byte entries: one 2-byte value
])
def test_packed_final_layer_layout(bits, act_bits, beta_a, size):
    """P = act_entry_bytes // s values of s bytes per entry, each pixel from a new entry (module doc)."""
    cfg = cfg_of(max_reduction=128, act_bits=act_bits, weight_delta=DeltaFormat(bits=4), mult_bits=8, bias_bits=12,
                 beta_a=beta_a, beta_w=8)
    assert MemoryMap(cfg).act_entry_bytes == (5 if act_bits == 8 else 2)
    rng = np.random.default_rng(5)
    layers, _ = random_network(rng, cfg, Spec((4, 4, 8), ("conv", 5, 3, 1, 1, 1)))
    prog = compile_network(_with_final_saturation(layers, bits, relu=True), cfg)
    assert prog.output_packed == (size > 0) == bool(prog.descriptors[-1].flags & FLAG_PACKED)
    unpacking = compile_network(_with_final_saturation(layers, bits, relu=True),
                                dataclasses.replace(cfg, pack_outputs=False))
    assert not unpacking.output_packed and not unpacking.descriptors[-1].flags & FLAG_PACKED
    if not size:
        return
    e, stride = prog.memory_map.act_entry_bytes, prog.memory_map.act_stride
    per = e // size
    h, w, n = prog.output_shape
    lim = (1 << bits) - 1
    values = rng.integers(-lim, lim + 1, (h, w, n))
    values.flat[:2] = lim, -lim
    per_pixel = -(-n // per)
    data = bytearray()
    for pixel in values.reshape(-1, n):
        slots = [int(v).to_bytes(size, "little", signed=True) for v in pixel]
        for q in range(per_pixel):
            data += b"".join(slots[q * per:(q + 1) * per]).ljust(stride, b"\0")
    assert prog.output_length == len(data) == h * w * per_pixel * stride
    assert prog.output_value_bytes == size
    assert (unpack_output(bytes(data), prog) == values).all()


# ---------------------------------------------------------------------------------------------
# Fit checks


def _fc(cfg, k, n, *, final=True, rng=None, **rq):
    rng = rng or np.random.default_rng(0)
    fmt = cfg.weight_delta
    requant = Requant(multiplier=rq.get("mult", np.ones(n, np.int64)), bias=rq.get("bias", np.zeros(n, np.int64)),
                      shift=rq.get("shift", 0), saturate_bits=None if final else rq.get("sat", cfg.act_bits))
    return QLayer(kind="linear", weight_signs=rng.random((n, k)) < 0.5,
                  weight_delta=rng.integers(0, fmt.max_code + 1, (n, -(-k // cfg.beta_w))), beta_w=cfg.beta_w,
                  beta_a=cfg.beta_a, in_shape=(k,), requant=requant, weight_format=fmt, act_bits=cfg.act_bits,
                  out_beta_a=None if final else rq.get("out_beta_a", cfg.beta_a))


def _conv(cfg, shape, n, *, kernel=3, stride=1, padding=1, pool=1, final=False, beta_w=None):
    rng = np.random.default_rng(1)
    h, w, c = shape
    k = kernel * kernel * c
    bw = beta_w or cfg.beta_w
    return QLayer(kind="conv2d", weight_signs=rng.random((n, k)) < 0.5,
                  weight_delta=np.ones((n, -(-k // bw)), np.int64), beta_w=bw, beta_a=cfg.beta_a,
                  in_shape=shape, kernel=kernel, stride=stride, padding=padding, pool=pool,
                  requant=Requant.identity(n) if final else Requant(multiplier=np.ones(n, np.int64),
                                                                    bias=np.zeros(n, np.int64),
                                                                    saturate_bits=cfg.act_bits),
                  weight_format=cfg.weight_delta, act_bits=cfg.act_bits, out_beta_a=None if final else cfg.beta_a)


@pytest.mark.parametrize("case,match", [
    ("beta", r"layer 0 \(conv2d\): layer has beta_w=32 but the accelerator is built for beta_w=16"),
    ("reduction", r"layer 0 \(linear\): layer reduces over K=2000 inputs, more than max_reduction=1024"),
    ("straddle", r"layer 0 \(conv2d\): with C=12 input channels on 8 lanes, words straddle beta_w=16 weight "
                 r"segments; C must be a multiple of min\(beta_w, L\)=8 or divide beta_w"),
    ("weights", r"layer 1 \(linear\) needs weight entries 24\.\.43, beyond weight_depth=30"),
    ("acts", r"layer 1 \(conv2d\) needs 72 input \+ 216 output activation entries, more than act_depth=150"),
    ("params", r"layer 1 \(linear\) needs requantizer channels 100\.\.129, beyond param_depth=128"),
    ("mult", r"layer 0 \(linear\): requant multiplier range \[-40000, 1\] does not fit the accelerator's 16-bit"),
    ("bias", r"layer 0 \(linear\): requant bias range \[0, 4294967296\] does not fit the accelerator's 32-bit"),
    ("shift", r"layer 0 \(linear\) has requant shift 40, more than max_shift=31"),
    ("pool", r"layer 0 \(conv2d\) pools 3x3, more than max_pool=2"),
    ("pool-width", r"layer 0 \(conv2d\) pools a conv output 10 wide, more than max_pool_width=8"),
    ("pool-channels", r"layer 0 \(conv2d\) pools 40 channels, more than max_channels=32"),
    ("out-beta", r"layer 0 \(linear\) has out_beta_a=8 but the accelerator is built for beta_a=4"),
    ("sat", r"layer 0 \(linear\) saturates to 6 bits but the next layer needs act_bits=8"),
    ("not-final", r"layer 0 \(linear\): only the last layer may be final"),
    ("chain", r"layer 1 \(linear\) has K=12 inputs but the previous layer produces 10 values"),
    ("chain-conv", r"layer 1 \(conv2d\) expects an input of shape \(4, 4, 8\) but the previous layer produces \(6, 6, 8\)"),
    ("desc", r"2 descriptors need 112 bytes, more than desc_bytes=64"),
    ("field", r"layer 0 \(conv2d\): descriptor field stride=100 does not fit the core's 6-bit register"),
    ("empty", r"a network needs at least one layer"),
])
def test_fit_errors(case, match):
    cfg = cfg_of()
    if case == "beta":
        net = [_conv(cfg, (4, 4, 8), 4, beta_w=32, final=True)]
    elif case == "reduction":
        net = [_fc(cfg, 2000, 4)]
    elif case == "straddle":
        net = [_conv(cfg, (4, 4, 12), 4, final=True)]
    elif case == "weights":
        cfg = cfg_of(weight_depth=30)
        net = [_fc(cfg, 64, 9, final=False), _fc(cfg, 9, 30)]
    elif case == "acts":
        cfg = cfg_of(act_depth=150)
        net = [_conv(cfg, (6, 6, 16), 16, padding=1), _conv(cfg, (6, 6, 16), 2, final=True)]
    elif case == "params":
        net = [_fc(cfg, 16, 100, final=False), _fc(cfg, 100, 30)]
    elif case == "mult":
        net = [_fc(cfg, 16, 2, mult=np.array([-40000, 1]))]
    elif case == "bias":
        net = [_fc(cfg, 16, 2, bias=np.array([0, 1 << 32]))]
    elif case == "shift":
        net = [_fc(cfg, 16, 2, shift=40)]
    elif case == "pool":
        net = [_conv(cfg, (6, 6, 4), 4, pool=3, final=True)]
    elif case == "pool-width":
        net = [_conv(cfg, (10, 10, 4), 4, pool=2, final=True)]
    elif case == "pool-channels":
        net = [_conv(cfg, (4, 4, 4), 40, pool=2, final=True)]
    elif case == "out-beta":
        net = [_fc(cfg, 16, 8, final=False, out_beta_a=8), _fc(cfg_of(beta_a=8), 8, 2)]
    elif case == "sat":
        net = [_fc(cfg, 16, 8, final=False, sat=6), _fc(cfg, 8, 2)]
    elif case == "not-final":
        net = [_fc(cfg, 16, 8), _fc(cfg, 8, 2)]
    elif case == "chain":
        net = [_fc(cfg, 16, 10, final=False), _fc(cfg, 12, 2)]
    elif case == "chain-conv":
        net = [_conv(cfg, (6, 6, 4), 8), _conv(cfg, (4, 4, 8), 2, final=True)]
    elif case == "field":
        cfg = cfg_of(act_depth=16, max_pool=2)  # map dimensions < 2*16: 6-bit registers
        net = [_conv(cfg, (1, 1, 8), 2, kernel=1, stride=100, padding=0, final=True)]
    elif case == "desc":
        cfg = cfg_of(desc_bytes=64)
        net = [_fc(cfg, 16, 8, final=False), _fc(cfg, 8, 2)]
    else:
        net = []
    with pytest.raises(ValueError, match=match):
        compile_network(net, cfg)


def test_compile_type_errors():
    with pytest.raises(TypeError, match="AcceleratorConfig"):
        compile_network([], {"rows": 3})
    with pytest.raises(TypeError, match="layer 0 must be a QLayer"):
        compile_network(["fc"], cfg_of())


def test_channel_alignment_rules():
    """C must be a multiple of min(beta_w, L) or divide beta_w (exactly when no word straddles a segment)."""
    for lanes, bw, c, ok in [(8, 16, 4, True), (8, 4, 12, True), (16, 4, 12, True), (16, 8, 12, False),
                             (16, 32, 8, True), (16, 32, 24, False), (8, 16, 24, True), (8, 8, 24, True),
                             (16, 64, 32, True), (16, 2, 6, True), (16, 32, 48, True), (8, 16, 12, False)]:
        cfg = cfg_of(lanes=lanes, beta_w=bw, beta_a=2)
        net = [_conv(cfg, (3, 3, c), 2, final=True)]
        if ok:
            compile_network(net, cfg)
        else:
            with pytest.raises(ValueError, match="straddle"):
                compile_network(net, cfg)


def test_golden_chain_matches_program_shapes():
    """The compiled input/output shapes are what the golden model consumes and produces."""
    cfg = cfg_of()
    rng = np.random.default_rng(4)
    layers, act = random_network(rng, cfg, Spec((6, 6, 4), ("conv", 8, 3, 1, 1, 2), ("linear", 5)))
    prog = compile_network(layers, cfg)
    assert prog.input_shape == act.shape
    mid = run_layer(layers[0], act)
    assert prog.plans[1].in_shape == mid.shape
    assert prog.output_shape == (5,)
