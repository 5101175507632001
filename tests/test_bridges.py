"""Bridge variants (VLMConfig.bridge_type): each trains, generates, saves and loads; hooks
where they apply; the LTI scan ignores its input; the seed's dense-A loop is the recurrence."""

import math

import pytest
import torch
from conftest import batch, make_model, open_gates

from ssm_bridge import EnhancedVLM, VLMConfig
from ssm_bridge.config import BRIDGE_TYPES
from ssm_bridge.core.bridge import EnhancedSSMBridge
from ssm_bridge.core.bridge_variants import (
    BUILDERS,
    SeedSSMLayer,
    build_bridge,
    require_ssm_bridge,
)

LATENTS = 5  # != 1 + P = 17, so the resampler's media length differs from the ViT's


def config(bridge_type: str, **kw) -> VLMConfig:
    return VLMConfig.from_preset("tiny", bridge_type=bridge_type, resampler_latents=LATENTS,
                                 resampler_layers=1, **kw)


def media_len(c: VLMConfig) -> int:
    return LATENTS if c.bridge_type == "resampler" else c.num_image_tokens


def test_every_type_has_a_builder_and_bad_types_say_the_choices():
    assert tuple(BUILDERS) == BRIDGE_TYPES
    with pytest.raises(ValueError, match=r"bridge_type must be one of .*'resampler'"):
        VLMConfig.from_preset("tiny", bridge_type="transformer")
    with pytest.raises(ValueError, match="resampler_latents"):
        VLMConfig.from_preset("tiny", resampler_latents=0)
    assert isinstance(build_bridge(VLMConfig.from_preset("tiny")), EnhancedSSMBridge)


@pytest.mark.parametrize("bridge_type", BRIDGE_TYPES)
def test_variant_forward_backward_generate_save_load(bridge_type, tmp_path):
    c = config(bridge_type)
    model = open_gates(make_model(c))
    images, tokens = batch(c)
    media = model.encode_image(images)
    assert media.shape == (2, media_len(c), c.text_embed_dim)
    model.train()
    logits, loss = model(images, tokens, tokens)
    assert logits.shape == (2, tokens.shape[1], c.vocab_size) and math.isfinite(loss.item())
    loss.backward()
    for name, p in model.bridge.named_parameters():  # every bridge parameter is used
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    ids = model.generate(images, max_length=8, temperature=0)
    assert ids.shape[0] == 2 and ids.shape[1] <= 8 and (ids[:, 0] == c.bos_token_id).all()
    # the KV cache is sized by the bridge's output length: cached == full recompute
    assert torch.equal(ids, model.generate(images, max_length=8, temperature=0,
                                           use_cache=False))
    model.save_pretrained(tmp_path)
    loaded = EnhancedVLM.from_pretrained(tmp_path)
    assert loaded.config.bridge_type == bridge_type
    assert type(loaded.bridge) is type(model.bridge)
    assert torch.equal(loaded(images, tokens), model(images, tokens))


@pytest.mark.parametrize("bridge_type", BRIDGE_TYPES)
def test_variant_learns_a_fixed_batch(bridge_type):
    c = config(bridge_type)
    model = make_model(c).train()
    images, tokens = batch(c, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        _, loss = model(images, tokens, tokens)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses


@pytest.mark.parametrize("bridge_type", BRIDGE_TYPES)
def test_bridge_in_and_out_hooks(bridge_type):
    c = config(bridge_type)
    model = make_model(c)
    images, tokens = batch(c)
    logits, cache = model.run_with_cache(images, tokens, names_filter="bridge.hook_*")
    assert torch.equal(logits, model(images, tokens))
    assert cache["bridge.hook_out"].shape == (2, media_len(c), c.text_embed_dim)
    in_width = {"linear": c.vision_embed_dim, "mlp": c.text_embed_dim,
                "resampler": c.text_embed_dim}.get(bridge_type, c.ssm_hidden_dim)
    assert cache["bridge.hook_in"].shape == (2, c.num_image_tokens, in_width)


@pytest.mark.parametrize("bridge_type", ["ssm", "ssm_lti"])
def test_ssm_hook_names_are_the_same_for_both_ssm_bridges(bridge_type):
    c = config(bridge_type, ssm_scan_order="bidirectional")
    model = make_model(c)
    images, tokens = batch(c)
    _, cache = model.run_with_cache(images, tokens, names_filter="bridge.layers.*")
    for layer in range(c.ssm_num_layers):
        for k in range(2):
            pre = f"bridge.layers.{layer}.mixer.dirs.{k}."
            assert cache[pre + "hook_delta"].shape == (2, 17, c.ssm_hidden_dim)
            assert cache[pre + "hook_B"].shape == (2, 17, c.ssm_state_dim)
            assert cache[pre + "hook_out"].shape == (2, 17, c.ssm_hidden_dim)
    # the heavy path (Ā, B̄x, h materialised) gives the same logits to float rounding
    heavy, cache = model.run_with_cache(images, tokens, names_filter="bridge.*", heavy=True)
    assert cache["bridge.layers.0.mixer.dirs.0.hook_state"].shape == (2, 17, 16, 4)
    torch.testing.assert_close(heavy, model(images, tokens), rtol=1e-4, atol=1e-5)
    require_ssm_bridge(model)  # no error: the SSM tools apply


def test_lti_delta_b_c_ignore_the_input_and_selective_ones_do_not():
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    names = ["bridge.layers.*.mixer.dirs.*.hook_delta", "bridge.layers.*.mixer.dirs.*.hook_B",
             "bridge.layers.*.mixer.dirs.*.hook_C"]
    for bridge_type, same in (("ssm_lti", True), ("ssm", False)):
        model = make_model(config(bridge_type, ssm_scan_order="cross"))
        _, cache = model.run_with_cache(images, names_filter=names)
        assert len(cache) == 2 * 4 * 3  # layers x directions x (Δ, B, C)
        for name, t in cache.items():
            assert torch.equal(t[0], t[1]) == same, name  # image 0 vs image 1
            if same:  # ... and constant over positions too
                assert torch.equal(t[0], t[0, :1].expand_as(t[0])), name
    lti = make_model(config("ssm_lti"))
    keys = set(lti.state_dict())
    assert not any("x_proj" in k or "dt_proj" in k for k in keys)
    assert "bridge.layers.0.mixer.dirs.0.dt_bias" in keys


def test_seed_ssm_is_the_dense_recurrence():
    torch.manual_seed(0)
    D, N, L = 3, 2, 5
    layer = SeedSSMLayer(D, N)
    A = torch.tensor([[-1.0, 0.4], [-0.3, -2.0]])  # dense: the states mix
    with torch.no_grad():
        layer.A.copy_(A)
        layer.log_dt.fill_(math.log(0.5))
    x = torch.randn(2, L, D)
    dt = 0.5
    A_bar = torch.linalg.matrix_exp(dt * A)
    B_bar = torch.linalg.solve(A, (A_bar - torch.eye(N)) @ layer.B.detach())  # A⁻¹(Ā - I)B
    with torch.no_grad():
        y = layer(x)
        for b in range(2):
            h = [0.0] * N
            for t in range(L):
                u = [float(B_bar[n] @ x[b, t]) for n in range(N)]
                h = [sum(float(A_bar[n, m]) * h[m] for m in range(N)) + u[n] for n in range(N)]
                for d in range(D):
                    want = sum(float(layer.C[d, n]) * h[n] for n in range(N))
                    want += float(layer.D[d]) * float(x[b, t, d])
                    assert abs(float(y[b, t, d]) - want) < 1e-5


def test_seed_ssm_diagonal_a_matches_the_closed_form_zoh():
    layer = SeedSSMLayer(4, 3)
    with torch.no_grad():
        layer.A.copy_(torch.diag(torch.tensor([-1.0, -2.0, -0.5])))
        layer.log_dt.fill_(math.log(0.1))
    A_bar, B_bar = layer.discretise()
    a = torch.tensor([-1.0, -2.0, -0.5])
    torch.testing.assert_close(A_bar, torch.diag(torch.exp(0.1 * a)))
    torch.testing.assert_close(B_bar, ((torch.exp(0.1 * a) - 1) / a)[:, None] * layer.B.detach())


def test_seed_and_resampler_hooks_where_they_apply():
    c = config("seed_ssm")
    model = make_model(c)
    images, tokens = batch(c)
    _, cache = model.run_with_cache(images, tokens, names_filter=[
        "bridge.layers.*.hook_resid_post", "bridge.layers.0.mixer.hook_state"])
    assert cache["bridge.layers.0.mixer.hook_state"].shape == (2, 17, c.ssm_state_dim)
    assert cache["bridge.layers.1.hook_resid_post"].shape == (2, 17, c.ssm_hidden_dim)
    c = config("resampler")
    model = make_model(c)
    _, cache = model.run_with_cache(images, tokens, names_filter="bridge.layers.0.attn.*")
    pattern = cache["bridge.layers.0.attn.hook_pattern"]
    assert pattern.shape == (2, c.cross_attn_heads, LATENTS, 17 + LATENTS)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, c.cross_attn_heads, LATENTS))
    # cross-attention to the media sees the resampler's latents, not 1 + P tokens
    _, cache = model.run_with_cache(images, tokens, names_filter="decoder.cross_layers.0.*")
    assert cache["decoder.cross_layers.0.attn.hook_pattern"].shape[-1] == LATENTS
    with pytest.raises(ValueError, match="bridge_type='resampler'"):
        require_ssm_bridge(model, "implicit attention")


def test_resampler_output_length_does_not_depend_on_the_image_size():
    c = config("resampler", img_size=48)
    model = make_model(c)
    images, _ = batch(c)
    assert model.encode_image(images).shape == (2, LATENTS, c.text_embed_dim)
    ids, traces = model.generate(images, max_length=6, temperature=0, return_traces=True)
    assert ids.shape[1] <= 6 and traces.cross_attention.shape[-1] == LATENTS


@pytest.mark.parametrize("bridge_type", ["seed_ssm", "resampler"])
def test_gradient_checkpointing_gives_the_same_gradients(bridge_type):
    c = config(bridge_type)
    images, tokens = batch(c)
    grads = []
    for ckpt in (False, True):
        model = make_model(c).train().set_gradient_checkpointing(ckpt)
        _, loss = model(images, tokens, tokens)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.bridge.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_implicit_attention_rebuilds_the_lti_scan():
    from ssm_bridge.interp.implicit_attention import verify

    model = make_model(config("ssm_lti", ssm_scan_order="bidirectional"))
    errors = verify(model, batch(model.config)[0][:1], strict=True)
    assert len(errors) == 2 * 2 and max(errors.values()) < 1e-4


@pytest.mark.parametrize("kind", ["mlp", "linear", "resampler", "seed_ssm"])
def test_ssm_only_tools_say_so_for_other_bridges(kind):
    from ssm_bridge.interp import implicit_attention as implicit_attention
    from ssm_bridge.interp import interventions, maps

    cfg = VLMConfig.from_preset("tiny", bridge_type=kind)
    model = EnhancedVLM(cfg).eval()
    images = torch.randn(1, 3, cfg.img_size, cfg.img_size)
    for call in (lambda: implicit_attention.capture_bridge(model, images),
                 lambda: interventions.zero_state(model, [0])):
        with pytest.raises(ValueError, match=f"bridge_type='{kind}'"):
            call()
    # per-word maps need no SSM bridge, only one image token per patch
    if kind == "resampler":
        with pytest.raises(ValueError, match=r"bridge_type='resampler'.*one token per patch"):
            maps.analyse(model, images[0])
        return
    a = maps.analyse(model, images[0])
    assert a.delta is None and "delta" not in a.kinds and "cross_attention" in a.kinds
