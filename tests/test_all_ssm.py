"""The attention-free parts of EnhancedVLM: the Mamba decoder (decoder_type="mamba"), Vision
Mamba (vision_type="vim"), their presets, hooks, checkpoints and recurrent generation."""

from __future__ import annotations

import pytest
import torch
from conftest import batch, make_model
from mambautil import perturb

from ssm_bridge.config import PRESETS
from ssm_bridge.core.addressing import SSMStack, ssm_stacks
from ssm_bridge.model import EnhancedVLM, VLMConfig

ALL_SSM = dict(vision_type="vim", decoder_type="mamba", bridge_type="ssm", cross_attn_layers=0)


def tiny(**kw) -> VLMConfig:
    return VLMConfig.from_preset("tiny", **{**ALL_SSM, **kw})


def mixing(config: VLMConfig, seed: int = 0) -> EnhancedVLM:
    """A model whose decoder scan mixes tokens for real (Δ near 1: see mambautil.perturb)."""
    model = make_model(config, seed)
    perturb(model.decoder, seed)
    return model


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


# ---------------------------------------------------------------- config and presets
def test_cross_attention_default_follows_the_decoder_type():
    assert VLMConfig().cross_attn_layers == 2
    assert VLMConfig(decoder_type="mamba").cross_attn_layers == 0
    assert VLMConfig(decoder_type="mamba", cross_attn_layers=1).cross_attn_layers == 1
    c = VLMConfig.from_preset("all-ssm-tiny")
    assert VLMConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("kwargs, words", [
    (dict(decoder_type="rnn"), ["decoder_type", "'transformer', 'mamba'"]),
    (dict(vision_type="swin"), ["vision_type", "'vit', 'vim'"]),
    (dict(decoder_expand=0), ["decoder_expand", "positive"]),
    (dict(vim_state_dim=0), ["vim_state_dim", "positive"]),
    (dict(decoder_dt_rank=0), ["decoder_dt_rank", ">= 1"]),
    (dict(decoder_state_dim=4096), ["decoder_state_dim", "limit of 1024"]),
    (dict(vim_expand=2.0), ["vim_expand", "an integer"]),
    (dict(cross_attn_layers=-1), ["cross_attn_layers", ">= 0"]),
])
def test_new_fields_are_validated_in_one_line(kwargs, words):
    with pytest.raises(ValueError) as e:
        VLMConfig(**kwargs)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_presets_build_their_parts_and_all_ssm_has_no_attention():
    from ssm_bridge.core.attention import CrossModalAttention, MultiQueryAttention

    sizes = {}
    for name in ("cobra-tiny", "all-ssm-tiny"):
        with torch.device("meta"):
            model = EnhancedVLM(VLMConfig.from_preset(name, vocab_size=40))
        sizes[name] = model.num_parameters()
        assert type(model.decoder).__name__ == "MambaDecoder"
        assert not model.decoder.cross_layers
    cobra = VLMConfig.from_preset("cobra-tiny")
    assert (cobra.vision_type, cobra.bridge_type) == ("vit", "mlp")
    with torch.device("meta"):
        all_ssm = EnhancedVLM(VLMConfig.from_preset("all-ssm-tiny", vocab_size=40))
    assert type(all_ssm.vision).__name__ == "VisionMamba" and all_ssm.config.bridge_type == "ssm"
    attention = (CrossModalAttention, MultiQueryAttention)
    assert not [n for n, m in all_ssm.named_modules() if isinstance(m, attention)]
    assert not [n for n in all_ssm.hook_names() if "pattern" in n or "attn" in n]
    assert sizes["all-ssm-tiny"] * 4 <= 20e6  # fp32 weights within 20 MB
    assert PRESETS["all-ssm-tiny"]["img_size"] == 64


# ---------------------------------------------------------------- Mamba decoder
@pytest.mark.parametrize("cross", [0, 1])
def test_recurrent_decoding_equals_the_full_forward(cross):
    cfg = tiny(cross_attn_layers=cross)
    model = mixing(cfg)
    if cross:
        with torch.no_grad():
            model.decoder.cross_layers[0].attn_gate.fill_(1.0)
    images, tokens = batch(cfg, T=9)
    with torch.no_grad():
        full = model(images, tokens)  # (B, T, V)
        media = model.encode_image(images)
        cache = model.decoder.new_cache(2, 32, media.shape[1], media.device, media.dtype)
        steps = [model.decoder(media, tokens[:, :3], cache=cache)]  # prefix + a 3-token prompt
        steps += [model.decoder(media, tokens[:, t:t + 1], cache=cache) for t in range(3, 9)]
    stepped = torch.cat(steps, 1)
    assert stepped.shape == full.shape
    assert (stepped - full).abs().max() <= 1e-4 * full.abs().max()
    assert cache.text_len == 9 and cache.state.position == cfg.num_image_tokens + 9
    # the scan really carries information: a different image changes the last logits
    other = model(images.flip(0), tokens)
    assert not torch.allclose(other[:, -1], full[:, -1], atol=1e-3)


def test_a_cache_past_its_first_call_takes_one_token():
    cfg = tiny()
    model = mixing(cfg)
    images, tokens = batch(cfg)
    media = model.encode_image(images)
    cache = model.decoder.new_cache(2, 32, media.shape[1], media.device, media.dtype)
    model.decoder(media, tokens[:, :2], cache=cache)
    with pytest.raises(ValueError, match="one token per call"):
        model.decoder(media, tokens[:, 2:4], cache=cache)


@pytest.mark.parametrize("prompt", [None, [5, 7]])
def test_greedy_generation_is_the_argmax_of_the_full_forward(prompt):
    cfg = tiny()
    model = mixing(cfg)
    images, _ = batch(cfg)
    out = model.generate(images, max_length=12, temperature=0, prompt=prompt)
    start = 1 if prompt is None else 3
    assert out.shape[1] > start and (out[:, 0] == cfg.bos_token_id).all()
    logits = model(images, out[:, :-1])
    for b in range(2):
        for t in range(start - 1, out.shape[1] - 1):
            if t >= start and out[b, t].item() in (cfg.eos_token_id, cfg.pad_token_id):
                break
            assert out[b, t + 1] == logits[b, t].argmax(), (b, t)
    assert torch.equal(out, model.generate(images, max_length=12, temperature=0, prompt=prompt,
                                           use_cache=False))


def test_sampling_is_seeded_and_traces_give_the_full_forwards_logprobs():
    cfg = tiny(cross_attn_layers=1)
    model = mixing(cfg)
    images, _ = batch(cfg)
    a = model.generate(images, max_length=10, temperature=0.8, top_k=50, top_p=0.9, seed=3)
    b = model.generate(images, max_length=10, temperature=0.8, top_k=50, top_p=0.9, seed=3)
    assert torch.equal(a, b)
    ids, tr = model.generate(images, max_length=10, temperature=0, return_traces=True)
    L = cfg.num_image_tokens
    assert tr.cross_attention.shape == (2, tr.steps, 1, cfg.cross_attn_heads, L)
    assert tr.prefix_attention.shape == (2, tr.steps, 0, 1, L)  # no attention to the prefix
    logp = model(images, ids[:, :-1]).log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    done = torch.zeros_like(logp, dtype=torch.bool)  # steps after a row's EOS are padding
    done[:, 1:] = (ids[:, 1:-1] == cfg.eos_token_id).cumsum(1) > 0
    torch.testing.assert_close(tr.logprobs[~done], logp[~done], rtol=1e-4, atol=1e-4)


def test_decoding_cost_does_not_grow_with_the_text():
    model = mixing(tiny())
    cache = model.decoder.new_cache(2, 1000, 17, torch.device("cpu"), torch.float32)
    assert sum(t.numel() for s in cache.state.layers for t in s.values()) == sum(
        t.numel() for s in model.decoder.new_cache(2, 10, 17, "cpu", torch.float32).state.layers
        for t in s.values())


# ---------------------------------------------------------------- Vision Mamba
def test_vim_output_layout_and_middle_class_token():
    cfg = tiny()
    model = make_model(cfg)
    vim = model.vision
    images, _ = batch(cfg)
    P, m = cfg.num_patches, cfg.num_patches // 2
    assert vim.cls_position == m
    assert vim.output_order.tolist() == [m, *range(m), *range(m + 1, P + 1)]
    with model.hooks([("vision.hook_embed", lambda t, n: store.setdefault("embed", t))]):
        store: dict = {}
        out = vim(images)
    assert out.shape == (2, 1 + P, cfg.vision_embed_dim)
    # internally the class token sits at m
    torch.testing.assert_close(store["embed"][:, m], (vim.cls_token + vim.pos_embed[:, m])[0]
                               .expand(2, -1))
    # hook_grid fires on the patches (output order) and can patch them
    grid = {}
    with model.hooks([("vision.hook_grid", lambda t, n: grid.setdefault("g", t * 0))]):
        patched = vim(images)
    g = cfg.grid_size
    assert grid["g"].shape == (2, cfg.vision_embed_dim, g, g)
    assert torch.equal(patched[:, 0], out[:, 0]) and (patched[:, 1:] == 0).all()


def test_vim_scans_the_whole_sequence_forward_and_backward():
    """The backward direction reads the internal sequence exactly reversed (class token in
    place, not first): changing the first internal token moves the backward scan's output
    only there, and the forward scan's output everywhere from there on."""
    cfg = tiny()
    model = make_model(cfg)
    perturb(model.vision)  # Δ near 1: the scans carry tokens far
    images, _ = batch(cfg)
    names = [SSMStack.of(model, "vision").hook("hook_out", 0, k) for k in (0, 1)]
    outs = []
    noise = torch.randn(cfg.vision_embed_dim, generator=torch.Generator().manual_seed(0))
    for delta in (0.0, 1.0):
        def bump(t, name, delta=delta):
            t = t.clone()
            t[:, 0] += delta * noise
            return t

        hooks = [("vision.hook_embed", bump)]
        with model.hooks(hooks):
            _, cache = model.run_with_cache(images, None, names)
        outs.append([cache[n] for n in names])
    fwd = (outs[1][0] - outs[0][0]).abs().amax((0, 2))  # (L,) change per internal position
    bwd = (outs[1][1] - outs[0][1]).abs().amax((0, 2))
    assert fwd[0] > 0 and (fwd[1:] > 0).all()
    assert bwd[0] > 0 and (bwd[1:] == 0).all()


def test_vim_matches_a_handmade_bidirectional_reference():
    """A Vim block's mixer: one in_proj, the forward scan over the sequence, the backward
    scan over it reversed (then put back), summed, gated, projected."""
    cfg = tiny()
    vim = make_model(cfg).vision
    x = torch.randn(2, cfg.num_image_tokens, cfg.vision_embed_dim)
    mixer = vim.layers[0].mixer
    xs, z = mixer.in_proj(x).chunk(2, dim=-1)
    fwd = mixer.dirs[0](xs)
    bwd = mixer.dirs[1](xs.flip(1)).flip(1)
    expected = mixer.out_proj((fwd + bwd) * torch.nn.functional.silu(z))
    torch.testing.assert_close(mixer(x), expected)


# ---------------------------------------------------------------- hooks
def test_every_ssm_stack_has_hook_points_named_as_mambalm():
    cfg = tiny(text_num_layers=2, vision_num_layers=1)
    model = mixing(cfg)
    images, tokens = batch(cfg)
    stacks = ssm_stacks(model)
    assert list(stacks) == ["vision", "bridge", "decoder"]
    assert [r.mixer_path for r in stacks["decoder"]] == ["decoder.layers.0.mixer",
                                                         "decoder.layers.1.mixer"]
    assert [r.mixer_path for r in stacks["vision"]] == ["vision.layers.0.mixer"]
    dec, vis = stacks["decoder"], stacks["vision"]
    L, T = cfg.num_image_tokens, tokens.shape[1]
    D, N = cfg.decoder_expand * cfg.text_embed_dim, cfg.decoder_state_dim
    Dv, Nv = cfg.vim_expand * cfg.vision_embed_dim, cfg.vim_state_dim
    expected = {
        dec.hook("hook_delta", 1): (2, L + T, D),
        dec.hook("hook_state", 1): (2, L + T, D, N),
        dec.hook("hook_gate", 0): (2, L + T, D),
        "decoder.layers.0.hook_resid_post": (2, L + T, cfg.text_embed_dim),
        "decoder.hook_image_prefix": (2, L, cfg.text_embed_dim),
        "decoder.hook_resid_final": (2, T, cfg.text_embed_dim),
        vis.hook("hook_delta", 0, 1): (2, L, Dv),
        vis.hook("hook_B", 0, 0): (2, L, Nv),
        vis.hook("hook_gate", 0): (2, L, Dv),
        "vision.layers.0.hook_resid_post": (2, L, cfg.vision_embed_dim),
        "bridge.layers.0.mixer.dirs.0.hook_delta": (2, L, cfg.ssm_hidden_dim),
    }
    assert "decoder.layers.1.mixer.hook_delta" in expected
    assert "vision.layers.0.mixer.dirs.1.hook_delta" in expected
    plain = model(images, tokens)
    logits, cache = model.run_with_cache(images, tokens, list(expected), heavy=True)
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)
    # patching the decoder's state path changes the logits; hooks fire while generating
    with model.hooks([(dec.hook("hook_delta", 0), lambda t, n: t * 0)]):
        assert not torch.allclose(model(images, tokens), plain)
    seen = []
    with model.hooks([(dec.hook("hook_delta", 0),
                       lambda t, n: seen.append(t.shape[1]))]):
        out = model.generate(images, max_length=6, temperature=0)
    assert seen[0] == L + 1 and set(seen[1:]) == {1} and len(seen) == out.shape[1] - 1


def test_ssm_stack_names_its_errors():
    dec = SSMStack.of(make_model(tiny()), "decoder")
    with pytest.raises(ValueError, match="the Mamba decoder"):
        dec.hook("hook_delta", 5)
    with pytest.raises(ValueError, match="direction"):
        dec[0].direction(1)


# ---------------------------------------------------------------- training paths
def test_bf16_autocast_and_gradient_checkpointing():
    cfg = tiny()
    model = mixing(cfg).train()
    images, tokens = batch(cfg)
    _, loss = model(images, tokens, tokens)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    model.zero_grad()
    model.set_gradient_checkpointing(True)
    _, loss2 = model(images, tokens, tokens)
    loss2.backward()
    assert torch.allclose(loss, loss2)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, bf = model(images, tokens, tokens)
    assert torch.isfinite(bf) and abs(bf.item() - loss.item()) < 0.1


def test_checkpoint_round_trip(tmp_path):
    model = mixing(tiny(cross_attn_layers=1, tie_word_embeddings=False))
    images, tokens = batch(model.config)
    model.save_pretrained(tmp_path)
    loaded = EnhancedVLM.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert torch.equal(loaded(images, tokens), model(images, tokens))
    assert torch.equal(loaded.generate(images, max_length=8, temperature=0),
                       model.generate(images, max_length=8, temperature=0))
