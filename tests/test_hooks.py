"""The hook API: names and shapes, run_with_cache, patching, cleanup, heavy captures,
explain mode and generation traces."""

import threading

import pytest
import torch
from conftest import batch, in_thread, make_model, open_gates, while_paused

from ssm_bridge import explain_mode
from ssm_bridge.core import hooks as hooks_module
from ssm_bridge.core.scan import selective_scan_ref


@pytest.fixture
def setup(tiny_config):
    cfg = tiny_config.replace(ssm_scan_order="bidirectional")
    model = open_gates(make_model(cfg))
    images, tokens = batch(cfg)
    return cfg, model, images, tokens


def no_hooks_left(model) -> bool:
    """Neither torch forward hooks nor this thread's hook-point hooks remain."""
    return (not any(m._forward_hooks for m in model.modules())
            and not hooks_module._thread_hooks() and hooks_module._attached == 0)


def expected_shapes(cfg, B=2, T=6):
    L, g = cfg.num_image_tokens, cfg.img_size // cfg.patch_size
    Dv, D, N, Dt = cfg.vision_embed_dim, cfg.ssm_hidden_dim, cfg.ssm_state_dim, cfg.text_embed_dim
    shapes = {
        "vision.hook_embed": (B, L, Dv),
        "vision.hook_grid": (B, Dv, g, g),
        "bridge.hook_in": (B, L, D),
        "bridge.hook_out": (B, L, Dt),
        "decoder.hook_text_embed": (B, T, Dt),
        "decoder.hook_image_prefix": (B, L, Dt),
        "decoder.hook_logits": (B, T, cfg.vocab_size),
    }
    for i in range(cfg.vision_num_layers):
        shapes[f"vision.blocks.{i}.attn.hook_pattern"] = (B, cfg.vision_num_heads, L, L)
        shapes[f"vision.blocks.{i}.hook_resid_post"] = (B, L, Dv)
    for layer in range(cfg.ssm_num_layers):
        p = f"bridge.layers.{layer}"
        shapes |= {f"{p}.hook_resid_post": (B, L, D), f"{p}.mixer.hook_y": (B, L, D),
                   f"{p}.mixer.hook_gate": (B, L, D)}
        for k in range(2):
            d = f"{p}.mixer.dirs.{k}"
            for name, shape in [("conv", (B, L, D)), ("delta", (B, L, D)), ("B", (B, L, N)),
                                ("C", (B, L, N)), ("ssm_out", (B, L, D)), ("out", (B, L, D)),
                                ("A_bar", (B, L, D, N)), ("dBx", (B, L, D, N)),
                                ("state", (B, L, D, N))]:
                shapes[f"{d}.hook_{name}"] = shape
    for i in range(cfg.cross_attn_layers):
        shapes[f"decoder.cross_layers.{i}.attn.hook_pattern"] = (B, cfg.cross_attn_heads, T, L)
        shapes[f"decoder.cross_layers.{i}.hook_attn_gate"] = ()
        shapes[f"decoder.cross_layers.{i}.hook_ff_gate"] = ()
        shapes[f"decoder.cross_layers.{i}.hook_resid_pre"] = (B, T, Dt)
        shapes[f"decoder.cross_layers.{i}.hook_attn_out"] = (B, T, Dt)
        shapes[f"decoder.cross_layers.{i}.hook_resid_post"] = (B, T, Dt)
    for i in range(cfg.text_num_layers):
        shapes[f"decoder.blocks.{i}.attn.hook_pattern"] = (B, cfg.text_num_heads, L + T, L + T)
        shapes[f"decoder.blocks.{i}.hook_resid_post"] = (B, L + T, Dt)
        shapes[f"decoder.hook_prefix_attn.{i}"] = (B, cfg.text_num_heads, T, L)
    return shapes


def test_every_documented_hook_exists_fires_and_has_its_shape(setup):
    cfg, model, images, tokens = setup
    expected = expected_shapes(cfg)
    assert set(expected) == set(model.hook_names())
    _, cache = model.run_with_cache(images, tokens, heavy=True)
    assert set(cache) == set(expected)
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name


def test_cache_is_light_by_default_and_logits_equal_plain_exactly(setup):
    _, model, images, tokens = setup
    plain = model(images, tokens)
    logits, cache = model.run_with_cache(images, tokens)
    assert torch.equal(logits, plain)
    assert not any(n.endswith(("hook_state", "hook_A_bar", "hook_dBx")) for n in cache)
    assert "bridge.layers.0.mixer.dirs.0.hook_delta" in cache
    # a heavy hook named in full is captured without heavy=True
    _, cache = model.run_with_cache(images, tokens, "bridge.layers.0.mixer.dirs.0.hook_state")
    assert cache.names == ["bridge.layers.0.mixer.dirs.0.hook_state"]


def test_names_filter_forms_and_image_only_runs(setup):
    _, model, images, tokens = setup
    _, c1 = model.run_with_cache(images, tokens, "bridge.layers.*.mixer.hook_gate")
    assert c1.names == ["bridge.layers.0.mixer.hook_gate", "bridge.layers.1.mixer.hook_gate"]
    _, c2 = model.run_with_cache(images, tokens, lambda n: n.endswith("hook_delta"))
    assert len(c2) == 4 and all(n.endswith("hook_delta") for n in c2)
    media, c3 = model.run_with_cache(images, names_filter=["vision.hook_grid", "bridge.hook_out"])
    assert torch.equal(media, model.encode_image(images)) and len(c3) == 2


def test_unknown_name_and_unfired_hook_raise(setup):
    _, model, images, tokens = setup
    with pytest.raises(ValueError, match=r"no hook point matches 'bridge\.nope'"):
        model.run_with_cache(images, tokens, "bridge.nope")
    with pytest.raises(RuntimeError, match=r"never fired at decoder\.hook_logits"):
        with model.hooks([("decoder.hook_logits", lambda t, n: None)]):
            model.encode_image(images)
    assert no_hooks_left(model)


def test_hooks_are_removed_even_after_an_exception(setup):
    _, model, images, tokens = setup

    def boom(t, name):
        raise KeyError("inside the hook")

    with pytest.raises(KeyError):
        with model.hooks([("bridge.*hook_delta", boom)]):
            model(images, tokens)
    assert no_hooks_left(model)
    with pytest.raises(ZeroDivisionError):
        with model.hooks([("decoder.hook_logits", lambda t, n: None)]):
            model(images, tokens)
            raise ZeroDivisionError("after the forward")
    assert no_hooks_left(model)


def test_patching_changes_logits_and_shape_is_checked(setup):
    _, model, images, tokens = setup
    plain = model(images, tokens)
    with model.hooks([("bridge.layers.0.mixer.hook_gate", lambda t, n: torch.zeros_like(t))]):
        ablated = model(images, tokens)
    assert not torch.allclose(plain, ablated, atol=1e-4)
    def only_cls(t, n):  # every query reads the cls token only
        return torch.zeros_like(t).index_fill_(-1, torch.tensor([0]), 1.0)

    with model.hooks([("decoder.cross_layers.0.attn.hook_pattern", only_cls)]):
        patched = model(images, tokens)
    assert (plain - patched).abs().max() > 1e-4
    with pytest.raises(ValueError, match="must return None or a tensor of shape"):
        with model.hooks([("bridge.hook_in", lambda t, n: t[:, :1])]):
            model(images, tokens)
    assert torch.equal(model(images, tokens), plain)


def test_without_gates_and_prefix_logits_ignore_the_image(setup):
    _, model, images, tokens = setup
    other = torch.randn_like(images)
    zero = lambda t, n: torch.zeros_like(t)  # noqa: E731
    hooks = [("decoder.cross_layers.*.hook_*_gate", zero), ("decoder.hook_image_prefix", zero)]
    with model.hooks(hooks):
        a, b = model(images, tokens), model(other, tokens)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(model(images, tokens), model(other, tokens), atol=1e-4)


def test_prefix_attention_is_the_text_to_image_slice(setup):
    cfg, model, images, tokens = setup
    L, T = cfg.num_image_tokens, tokens.shape[1]
    _, cache = model.run_with_cache(images, tokens, ["decoder.blocks.0.attn.hook_pattern",
                                                     "decoder.hook_prefix_attn.0"])
    full = cache["decoder.blocks.0.attn.hook_pattern"]
    assert torch.equal(cache["decoder.hook_prefix_attn.0"], full[..., L:, :L])
    # patching the slice patches the block's pattern
    plain = model(images, tokens)
    with model.hooks([("decoder.hook_prefix_attn.0", lambda t, n: torch.zeros_like(t))]):
        patched = model(images, tokens)
    assert not torch.allclose(plain, patched, atol=1e-5) and T > 0


def test_heavy_state_matches_reference_and_resets_propagate(setup):
    _, model, images, tokens = setup
    d = "bridge.layers.0.mixer.dirs.0"
    _, cache = model.run_with_cache(images, tokens, [f"{d}.hook_{n}" for n in
                                                     ("conv", "delta", "B", "C", "state")])
    direction = model.get_submodule(d)
    A = -torch.exp(direction.A_log)
    _, h_ref = selective_scan_ref(cache[f"{d}.hook_conv"], cache[f"{d}.hook_delta"], A,
                                  cache[f"{d}.hook_B"], cache[f"{d}.hook_C"], direction.D,
                                  return_state=True)
    torch.testing.assert_close(cache[f"{d}.hook_state"], h_ref, rtol=1e-5, atol=1e-6)
    t = 3

    def reset(a_bar, name):
        a_bar = a_bar.clone()
        a_bar[:, t] = 0.0  # forget everything before t
        return a_bar

    with model.hooks([(f"{d}.hook_A_bar", reset)]):
        _, c2 = model.run_with_cache(images, tokens, [f"{d}.hook_state", f"{d}.hook_dBx"])
    h2 = c2[f"{d}.hook_state"]
    torch.testing.assert_close(h2[:, t], c2[f"{d}.hook_dBx"][:, t])
    assert torch.equal(h2[:, :t], cache[f"{d}.hook_state"][:, :t])
    assert not torch.allclose(h2[:, t + 1:], cache[f"{d}.hook_state"][:, t + 1:])


def test_explain_mode_keeps_forward_values_and_changes_gradients(setup):
    _, model, images, tokens = setup
    images = images.clone().requires_grad_(True)
    plain = model(images, tokens)
    (g_plain,) = torch.autograd.grad(plain[:, -1, 5].sum(), images)
    with explain_mode(model):
        assert model.bridge.layers[0].mixer.dirs[0].explain
        explained = model(images, tokens)
        (g_explain,) = torch.autograd.grad(explained[:, -1, 5].sum(), images)
    assert torch.equal(plain, explained)
    assert not torch.allclose(g_plain, g_explain)
    assert not any(getattr(m, "explain", False) for m in model.modules())


def test_generate_traces_per_word(setup):
    cfg, model, images, _ = setup
    ids = model.generate(images, max_length=8, temperature=0)
    ids2, tr = model.generate(images, max_length=8, temperature=0, return_traces=True)
    assert torch.equal(ids, ids2) and tr.start == 1 and tr.steps == ids.shape[1] - 1
    L = cfg.num_image_tokens
    assert tr.cross_attention.shape == (2, tr.steps, cfg.cross_attn_layers, cfg.cross_attn_heads, L)
    assert tr.prefix_attention.shape == (2, tr.steps, cfg.text_num_layers, cfg.text_num_heads, L)
    sums = tr.cross_attention.sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert (tr.prefix_attention.sum(-1) <= 1 + 1e-5).all()
    # the traces equal a teacher-forced forward on the generated ids (query of each step)
    _, cache = model.run_with_cache(images, ids[:, :-1], "decoder.cross_layers.0.attn.hook_pattern")
    torch.testing.assert_close(cache["decoder.cross_layers.0.attn.hook_pattern"].transpose(1, 2),
                               tr.cross_attention[:, :, 0], rtol=1e-4, atol=1e-5)
    logp = model(images, ids[:, :-1]).log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(tr.logprobs, logp, rtol=1e-4, atol=1e-4)
    assert no_hooks_left(model)


def test_generate_traces_without_cross_attention_layers(tiny_config):
    cfg = tiny_config.replace(cross_attn_layers=0)
    model = make_model(cfg)
    images, _ = batch(cfg)
    _, tr = model.generate(images, max_length=5, temperature=0, return_traces=True)
    assert tr.cross_attention.shape == (2, tr.steps, 0, 1, cfg.num_image_tokens)
    assert tr.prefix_attention.shape[:3] == (2, tr.steps, cfg.text_num_layers)


def test_forced_traces_equal_what_generate_records(setup, tiny_config):
    """A caption read teacher-forced gives the traces generate wrote it with (the query
    row of each step), with and without cross-attention; a bad ids shape is one line."""
    from ssm_bridge.core.generation import forced_traces

    for model in (setup[1], make_model(tiny_config.replace(cross_attn_layers=0))):
        images = setup[2]
        ids, tr = model.generate(images, max_length=8, temperature=0, return_traces=True)
        keep = ~(ids[:, 1:-1] == model.config.eos_token_id).cumsum(1).gt(0)  # before EOS
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep], 1)  # (B, steps)
        forced = forced_traces(model, images, ids)
        assert forced.start == 1 and forced.steps == tr.steps
        for name in ("cross_attention", "prefix_attention", "logprobs"):
            a, b = getattr(forced, name), getattr(tr, name)
            assert a.shape == b.shape, name
            torch.testing.assert_close(a[keep], b[keep], rtol=1e-4, atol=1e-5)
        assert no_hooks_left(model)
    with pytest.raises(ValueError, match=r"ids must be \(B=2, S >= 2\)"):
        forced_traces(setup[1], images, ids[0])


# ---------------------------------------------------------------- heavy opt-in, threads
def test_heavy_suffixes_are_the_scan_directions_heavy_hook_points(setup):
    """hooks.HEAVY_SUFFIXES is ScanDirection.HEAVY_HOOKS, and each names a hook point that
    exists (a renamed hook would otherwise silently stop being opt-in)."""
    from ssm_bridge.core.ssm import ScanDirection

    _, model, _, _ = setup
    assert ScanDirection.HEAVY_HOOKS is hooks_module.HEAVY_SUFFIXES
    heavy = [n for n in hooks_module.hook_points(model) if hooks_module.is_heavy(n)]
    assert {n.rsplit(".", 1)[-1] for n in heavy} == set(hooks_module.HEAVY_SUFFIXES)
    assert all(".mixer.dirs." in n for n in heavy)


def test_heavy_hooks_are_opt_in_everywhere(setup):
    _, model, images, tokens = setup
    seen = []
    with model.hooks([("bridge.*", lambda t, n: seen.append(n))]):
        model(images, tokens)
    assert seen and not any(n.endswith(("hook_state", "hook_A_bar", "hook_dBx")) for n in seen)
    seen.clear()
    with model.hooks([("bridge.*", lambda t, n: seen.append(n))], heavy=True):
        model(images, tokens)
    assert any(n.endswith("hook_state") for n in seen)
    seen.clear()
    full = "bridge.layers.0.mixer.dirs.0.hook_state"  # named in full: attached
    with model.hooks([(full, lambda t, n: seen.append(n))]):
        model(images, tokens)
    assert seen == [full]
    with pytest.raises(ValueError, match="heavy=True"):  # a glob of heavy points only
        with model.hooks([("bridge.*.hook_state", lambda t, n: None)]):
            pass


def test_a_hook_never_fires_for_another_threads_forward(setup):
    """Thread A holds a hook that zeroes the logits; thread B's generate and run_with_cache
    run meanwhile and must see none of it, nor A's hook see B's batch."""
    _, model, images, tokens = setup
    plain_ids = model.generate(images, max_length=8, temperature=0)
    _, plain_cache = model.run_with_cache(images, tokens, "bridge.hook_out")
    other = torch.randn_like(images[:1])
    attached, done, seen_by_a = threading.Event(), threading.Event(), []

    def zero(t, name):
        seen_by_a.append(t.shape[0])
        return torch.zeros_like(t)

    def thread_a():
        with model.hooks([("decoder.hook_logits", zero), ("bridge.hook_out", zero)],
                         check_fired=False):
            attached.set()
            assert done.wait(60)
            return model(other, tokens[:1])

    join = in_thread(thread_a)
    assert attached.wait(60)
    try:
        ids = model.generate(images, max_length=8, temperature=0)
        _, cache = model.run_with_cache(images, tokens, "bridge.hook_out")
    finally:
        done.set()
    a_logits = join()
    assert torch.equal(ids, plain_ids)
    assert torch.equal(cache["bridge.hook_out"], plain_cache["bridge.hook_out"])
    assert seen_by_a == [1, 1] and not a_logits.any()  # A's own forward (batch 1) only


def test_concurrent_generate_traces_are_each_their_own(setup):
    """Thread A's generate(return_traces=True) pauses inside its first decoder pass (its
    attention rows recorded, not yet read) while thread B runs a whole traced generate on
    another image; each must get the traces of a call made alone."""
    _, model, images, _ = setup
    inputs = [images[:1], torch.randn_like(images[:1])]
    alone = [model.generate(x, max_length=6, temperature=0, return_traces=True)
             for x in inputs]
    got = while_paused(
        model, lambda: model.generate(inputs[0], max_length=6, temperature=0,
                                      return_traces=True),
        lambda: model.generate(inputs[1], max_length=6, temperature=0, return_traces=True))
    for (ids, tr), (ref_ids, ref) in zip(got, alone):
        assert torch.equal(ids, ref_ids)
        torch.testing.assert_close(tr.cross_attention, ref.cross_attention)
        torch.testing.assert_close(tr.prefix_attention, ref.prefix_attention)


def test_checkpointed_backward_in_another_thread_keeps_the_hooks(setup):
    """Gradient checkpointing re-runs blocks in backward, possibly on another thread
    (autograd's device threads): the recomputation must see the forward's hooks."""
    cfg, model, images, _ = setup
    model = make_model(cfg.replace(gradient_checkpointing=True)).train()
    patch = [("bridge.layers.0.mixer.hook_gate", lambda t, n: t * 0.5)]

    def grads(backward_in_thread: bool, hooked: bool = True):
        model.zero_grad()
        with model.hooks(patch if hooked else []):
            loss = model.encode_image(images).square().sum()  # the bridge's output
            if backward_in_thread:
                in_thread(loss.backward)()
            else:
                loss.backward()
        return torch.cat([p.grad.flatten() for p in model.bridge.parameters()
                          if p.grad is not None])

    same_thread, other_thread = grads(False), grads(True)
    assert (same_thread - grads(False, hooked=False)).norm() > 1e-3 * same_thread.norm()
    torch.testing.assert_close(other_thread, same_thread)
