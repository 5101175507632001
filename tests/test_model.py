"""Architecture: attention paths, the bridge, cross-attention gates, checkpointing, autocast."""

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, make_model, open_gates

from ssm_bridge import EnhancedSSMBridge, SSMLayer, VLMConfig
from ssm_bridge.config import SCAN_ORDERS
from ssm_bridge.core import scan
from ssm_bridge.core.attention import attend
from ssm_bridge.core.layers import silu
from ssm_bridge.core.ssm import DIRECTIONS, direction_perm, grid_layout


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_and_eager_attention_agree(groups, causal):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 7, 8, generator=g)
    k, v = torch.randn(2, 2, 4 // groups, 7, 8, generator=g)
    mask = torch.rand(1, 1, 7, 7, generator=g) > 0.3
    mask[..., 0] = True  # no fully masked row
    for m in (None, mask):
        fused, none = attend(q, k, v, mask=m, is_causal=causal and m is None)
        eager, pattern = attend(q, k, v, mask=m, is_causal=causal and m is None, eager=True)
        assert none is None and pattern.shape == (2, 4, 7, 7)
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 7))


def test_model_eager_equals_sdpa(tiny_config):
    images, tokens = batch(tiny_config)
    sdpa = open_gates(make_model(tiny_config))
    eager = open_gates(make_model(tiny_config.replace(attn_impl="eager")))
    torch.testing.assert_close(sdpa(images, tokens), eager(images, tokens), rtol=1e-5,
                               atol=1e-5)


def test_hooking_a_pattern_keeps_outputs_exactly(tiny_config):
    model = open_gates(make_model(tiny_config))
    images, tokens = batch(tiny_config)
    plain = model(images, tokens)
    seen = {}
    hp = model.decoder.cross_layers[0].attn.hook_pattern
    handle = hp.register_forward_hook(lambda m, i, o: seen.setdefault("p", o))
    try:
        hooked = model(images, tokens)
    finally:
        handle.remove()
    assert seen["p"].shape == (2, tiny_config.cross_attn_heads, 6, tiny_config.num_image_tokens)
    assert torch.equal(plain, hooked)  # the pattern is computed beside the fused kernel


def test_head_dim_for_widths_heads_do_not_divide():
    """1024 wide with 12 heads (the original's Advanced Configuration) -> 12 x 85."""
    cfg = VLMConfig.from_preset("tiny", text_embed_dim=40, text_num_heads=6, vision_embed_dim=20,
                                vision_num_heads=3, cross_attn_heads=3)
    model = make_model(cfg)
    attn = model.decoder.blocks[0].attn
    assert attn.head_dim == 6 and attn.q_proj.out_features == 36 and attn.o_proj.out_features == 40
    images, tokens = batch(cfg)
    assert model(images, tokens).shape == (2, 6, cfg.vocab_size)


def test_cross_attention_is_residual_and_gated(tiny_config):
    model = make_model(tiny_config)
    layer = model.decoder.cross_layers[0]
    assert layer.attn_gate.item() == 0 and layer.ff_gate.item() == 0
    x, media = torch.randn(2, 5, 32), torch.randn(2, 17, 32)
    torch.testing.assert_close(layer(x, media), x)  # closed gates: exactly the text
    with torch.no_grad():
        layer.attn_gate.fill_(0.5)
    out = layer(x, media)
    assert not torch.allclose(out, x)
    # the text is kept (residual), not overwritten: the change is the gated branch alone
    branch = torch.tanh(torch.tensor(0.5)) * layer.attn(layer.norm1(x), media, media)
    torch.testing.assert_close(out, x + branch)


def test_delta_starts_in_dt_range():
    cfg = VLMConfig.from_preset("tiny", ssm_dt_min=0.01, ssm_dt_max=0.05)
    model = make_model(cfg)
    for d in model.bridge.layers[0].mixer.dirs:
        dt = F.softplus(d.dt_proj.bias)
        assert (dt >= 0.01 - 1e-6).all() and (dt <= 0.05 + 1e-6).all()
        torch.testing.assert_close(d.A_log.exp()[0], torch.arange(1.0, cfg.ssm_state_dim + 1))


def test_delta_is_input_dependent():
    layer = SSMLayer(16, 4).eval()
    seen = []
    h = layer.dirs[0].hook_delta.register_forward_hook(lambda m, i, o: seen.append(o))
    layer(torch.randn(1, 9, 16))
    layer(torch.randn(1, 9, 16))
    h.remove()
    assert seen[0].shape == (1, 9, 16) and (seen[0] > 0).all()
    assert not torch.allclose(seen[0], seen[1]), "Δ must depend on the input (selectivity)"


def test_scan_orders_are_permutations():
    assert grid_layout(197) == (1, 14) and grid_layout(196) == (0, 14) and grid_layout(20) == (0, 0)
    for name in ["row", "col", "row_rev", "col_rev"]:
        p = direction_perm(name, 10)  # cls + 3x3
        assert p[0] == 0 and sorted(p.tolist()) == list(range(10))
    assert direction_perm("col", 10).tolist() == [0, 1, 4, 7, 2, 5, 8, 3, 6, 9]
    assert direction_perm("row_rev", 10).tolist() == [0, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    with pytest.raises(ValueError, match="square patch grid"):
        SSMLayer(8, 4, scan_order="cross")(torch.randn(1, 20, 8))


@pytest.mark.parametrize("order", SCAN_ORDERS)
def test_every_scan_order_builds_its_directions(order):
    assert SCAN_ORDERS == tuple(DIRECTIONS)  # one registry: config's
    layer = SSMLayer(8, 4, scan_order=order)
    assert tuple(layer.direction_names) == DIRECTIONS[order] and len(layer.dirs) == len(
        DIRECTIONS[order])
    for name in DIRECTIONS[order]:
        assert sorted(direction_perm(name, 10).tolist()) == list(range(10))


@pytest.mark.parametrize("order, n", [("raster", 1), ("bidirectional", 2), ("cross", 4)])
def test_each_direction_output_is_reachable_and_sums(order, n):
    torch.manual_seed(0)
    layer = SSMLayer(8, 4, scan_order=order).eval()
    outs, total = [], []
    hs = [d.hook_out.register_forward_hook(lambda m, i, o: outs.append(o)) for d in layer.dirs]
    hs.append(layer.hook_y.register_forward_hook(lambda m, i, o: total.append(o)))
    x = torch.randn(2, 17, 8)
    layer(x)
    for h in hs:
        h.remove()
    assert len(outs) == n
    torch.testing.assert_close(sum(outs), total[0])


def test_scan_direction_matters_for_reversed_orders():
    """A reversed scan reads the last patch first: the first patch's output then depends on
    later patches, which a raster scan can never do."""
    torch.manual_seed(0)
    x = torch.randn(1, 10, 8)
    x2 = x.clone()
    x2[:, -1] += 1.0
    raster, bi = SSMLayer(8, 4).eval(), SSMLayer(8, 4, scan_order="bidirectional").eval()
    torch.testing.assert_close(raster(x)[:, :9], raster(x2)[:, :9])
    assert not torch.allclose(bi(x)[:, 1], bi(x2)[:, 1])


@pytest.mark.parametrize("kernel, bias", [(4, True), (3, False), (1, True)])
def test_causal_conv_is_a_causal_conv1d(kernel, bias):
    """The depthwise causal conv (K multiply-adds in (B, L, D) layout) equals torch's conv1d
    with K-1 zeros of left padding, values and gradients; with a carried window the same
    conv continues the sequence; SiLU of it in one C++ pass gives the same values and
    gradients (explain mode's included)."""
    torch.manual_seed(0)
    d = SSMLayer(6, 4, conv_kernel=kernel).dirs[0]
    if not bias:
        d.conv1d.bias = None
    x = torch.randn(2, 9, 6, requires_grad=True)
    out = d.causal_conv(x)
    ref = F.conv1d(x.transpose(1, 2), d.conv1d.weight, d.conv1d.bias, padding=kernel - 1,
                   groups=6)[..., :9].transpose(1, 2)  # (2, 9, 6)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    w = torch.randn_like(out)
    got = torch.autograd.grad((out * w).sum(), [x, *d.conv1d.parameters()])
    want = torch.autograd.grad((ref * w).sum(), [x, *d.conv1d.parameters()])
    for g, g_ref in zip(got, want):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
    state = {"conv": torch.zeros(2, 6, kernel - 1)}
    parts = [d.causal_conv(x[:, s:e], state) for s, e in [(0, 4), (4, 5), (5, 9)]]
    torch.testing.assert_close(torch.cat(parts, 1), ref, rtol=1e-6, atol=1e-6)
    # SiLU and the conv in one C++ pass where it builds, on a strided view like in_proj's
    # half, with the same values and gradients (explain mode's too)
    xz = torch.cat([x, -x], dim=-1)
    for explain in (False, True):
        d.explain = explain
        fused = d.conv_silu(xz[..., :6])
        if scan.load_extension() is not None:
            assert fused.grad_fn.name().endswith("_ConvSiLUBackward")
        want_out = silu(d.causal_conv(xz[..., :6]), explain)
        torch.testing.assert_close(fused, want_out, rtol=1e-6, atol=1e-6)
        got = torch.autograd.grad((fused * w).sum(), [x, *d.conv1d.parameters()])
        want = torch.autograd.grad((want_out * w).sum(), [x, *d.conv1d.parameters()])
        for g, g_ref in zip(got, want):
            torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_recurrent_step_matches_forward():
    torch.manual_seed(0)
    layer = SSMLayer(8, 4, conv_kernel=3).eval()
    x = torch.randn(2, 11, 8)
    full = layer(x)
    state = layer.allocate_state(2)
    steps = torch.stack([layer.step(x[:, t], state) for t in range(11)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="raster"):
        SSMLayer(8, 4, scan_order="cross").step(x[:, 0], state)


@pytest.mark.parametrize("order", ["raster", "bidirectional", "cross"])
def test_model_runs_every_scan_order(tiny_config, order):
    model = make_model(tiny_config.replace(ssm_scan_order=order))
    images, tokens = batch(tiny_config)
    logits, loss = model.train()(images, tokens, tokens)
    loss.backward()
    assert torch.isfinite(logits).all()
    assert len(model.bridge.layers[0].mixer.dirs) == {"raster": 1, "bidirectional": 2,
                                                      "cross": 4}[order]


def test_bridge_from_config_widths(tiny_config):
    b = EnhancedSSMBridge.from_config(tiny_config)
    assert b.in_proj.in_features == tiny_config.vision_embed_dim
    assert b.in_proj.out_features == tiny_config.ssm_hidden_dim
    assert b.out_proj.out_features == tiny_config.text_embed_dim
    assert b.layers[0].mixer.dirs[0].A_log.shape == (tiny_config.ssm_hidden_dim,
                                                    tiny_config.ssm_state_dim)


def test_gradient_checkpointing_same_loss_and_grads(tiny_config):
    images, tokens = batch(tiny_config)
    grads = []
    for ckpt in (False, True):
        model = open_gates(make_model(tiny_config.replace(gradient_checkpointing=ckpt))).train()
        _, loss = model(images, tokens, tokens)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_cpu(tiny_config):
    model = open_gates(make_model(tiny_config))
    images, tokens = batch(tiny_config)
    ref = model(images, tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(images, tokens, tokens)
    loss.backward()
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    assert (logits.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_generate_matches_cpu(tiny_config):
    model = open_gates(make_model(tiny_config))
    images, tokens = batch(tiny_config)
    ref = model(images, tokens)
    cuda = model.cuda()
    torch.testing.assert_close(cuda(images.cuda(), tokens.cuda()).cpu(), ref, rtol=1e-3,
                               atol=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = cuda.generate(images.cuda(), max_length=8, temperature=0)
    assert out.shape[0] == 2


def test_image_prefix_dropout_blanks_whole_prefixes_in_training_only(tiny_config):
    model = make_model(tiny_config.replace(image_prefix_dropout=0.5))
    images, tokens = batch(tiny_config, B=16)
    seen = []
    with model.hooks([("decoder.hook_image_prefix", lambda t, n: seen.append(t))]):
        model.train()
        torch.manual_seed(0)
        model(images, tokens)
        model.eval()
        model(images, tokens)
    prefix_only = model.decoder.prefix_embed.detach()  # what a blanked prefix holds
    blank = [(p == prefix_only).all().item() for p in seen[0]]
    assert 0 < sum(blank) < 16  # some samples blanked, some not
    assert not any((p == prefix_only).all().item() for p in seen[1])  # eval: never
    with pytest.raises(ValueError, match="image_prefix_dropout"):
        tiny_config.replace(image_prefix_dropout=1.0)


def test_conv_stem_depth_adds_stride_one_convs_and_keeps_depth_one_keys(tiny_config):
    base = make_model(tiny_config.replace(vision_stem="conv"))
    deep = make_model(tiny_config.replace(vision_stem="conv", vision_stem_depth=2))
    convs = [m for m in deep.vision.patch_embed if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 1, 2, 1, 2, 1, 1]  # 3 halvings, then 1x1
    # depth 1 is the stem shipped checkpoints were trained with: same parameter names
    names = [n for n, _ in base.vision.patch_embed.named_parameters()]
    assert names == [f"{i}.{w}" for i in (0, 2, 4, 6) for w in ("weight", "bias")]
    images, tokens = batch(tiny_config)
    assert deep(images, tokens).shape == base(images, tokens).shape
    with pytest.raises(ValueError, match="vision_stem_depth"):
        tiny_config.replace(vision_stem_depth=0)
