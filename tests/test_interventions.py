"""Interventions on the SSM bridge: state resets / zeroing in scan order, gate ablation,
state and activation patching, and before / after comparisons."""

import pytest
import torch
from conftest import batch, make_model, open_gates

from ssm_bridge.data import Tokenizer
from ssm_bridge.interp.interventions import (
    ablate_gate,
    compare,
    patch_activation,
    patch_state,
    reset_state,
    scan_positions,
    skip_tokens,
    token_positions,
    zero_state,
)


def awake(model):
    """Make the untrained SSM's state matter: larger Δ, B and C (the init makes the state
    contribution ~1e-4 of the skip term) and a louder mixer."""
    with torch.no_grad():
        for layer in model.bridge.layers:
            for d in layer.mixer.dirs:
                d.dt_proj.bias.fill_(0.5)
                d.x_proj.weight.mul_(50)
            layer.mixer.out_proj.weight.mul_(10)
    return model


@pytest.fixture(scope="module")
def bidir():
    from ssm_bridge import VLMConfig
    cfg = VLMConfig.from_preset("tiny").replace(ssm_scan_order="bidirectional")
    model = awake(open_gates(make_model(cfg)))
    images, tokens = batch(cfg, B=1, T=5)
    return model, images, tokens


@pytest.fixture(scope="module")
def cross():
    from ssm_bridge import VLMConfig
    cfg = VLMConfig.from_preset("tiny").replace(ssm_scan_order="cross", ssm_num_layers=1)
    model = awake(open_gates(make_model(cfg)))
    images, tokens = batch(cfg, B=1, T=5)
    return model, images, tokens


def heavy(model, images, hooks, layer=0, k=1):
    """hook_state and hook_dBx (B, L, D, N) of one direction, in scan order, under hooks."""
    p = f"bridge.layers.{layer}.mixer.dirs.{k}"
    with model.hooks(hooks):
        _, cache = model.run_with_cache(images, None, [f"{p}.hook_state", f"{p}.hook_dBx"])
    return cache[f"{p}.hook_state"], cache[f"{p}.hook_dBx"]


def test_reset_changes_the_state_at_the_patch_and_not_before(bidir):
    model, images, _ = bidir
    h0, _ = heavy(model, images, [])
    h1, dbx = heavy(model, images, reset_state(model, [5], layers=[0]))
    (pos,) = scan_positions("row_rev", token_positions([5], 17), 17).tolist()
    assert pos == 1 + 15 - 5  # row_rev reads cls, then patches 15, 14, ...
    assert torch.equal(h1[:, :pos], h0[:, :pos])
    assert torch.allclose(h1[:, pos], dbx[:, pos])  # h_t = B̄x_t: the past is forgotten
    assert (h1[:, pos] - h0[:, pos]).abs().max() > 1e-3


def test_zero_state_is_zero_there_and_restarts_from_zero(bidir):
    model, images, _ = bidir
    h, dbx = heavy(model, images, zero_state(model, [5], layers=[0]))
    pos = 1 + 15 - 5
    assert h[:, pos].abs().max() == 0
    assert torch.allclose(h[:, pos + 1], dbx[:, pos + 1])  # h_{t+1} = Ā·0 + B̄x_{t+1}


def test_skip_tokens_carries_the_state_over_the_token(bidir):
    """Ā_t = 1, B̄x_t = 0: h_t = h_{t-1}, and the scan goes on from it as if the token
    were not there."""
    model, images, _ = bidir
    h0, _ = heavy(model, images, [])
    h, _ = heavy(model, images, skip_tokens(model, [5], layers=[0]))
    pos = 1 + 15 - 5
    assert torch.equal(h[:, :pos], h0[:, :pos])
    assert torch.equal(h[:, pos], h[:, pos - 1])  # carried over unchanged
    assert (h[:, pos] - h0[:, pos]).abs().max() > 1e-3


def test_positions_follow_each_direction_of_a_cross_scan(cross):
    model, images, _ = cross
    patches = [1, 4]  # (row 0, col 1) and (row 1, col 0) of the 4 x 4 grid
    expect = {"row": [2, 5], "col": [5, 2], "row_rev": [15, 12], "col_rev": [12, 15]}
    hooks = zero_state(model, patches, layers=[0])
    for k, name in enumerate(model.bridge.layers[0].mixer.direction_names):
        got = scan_positions(name, token_positions(patches, 17), 17).tolist()
        assert got == expect[name], name
        h, _ = heavy(model, images, hooks, k=k)
        zero = (h.abs().amax(dim=(0, 2, 3)) == 0).nonzero()[:, 0].tolist()  # (L,) -> idx
        assert zero == sorted(expect[name]), name


def test_ablate_gate_modes(bidir):
    model, images, _ = bidir
    name = "bridge.layers.1.mixer.hook_gate"
    for mode, check in [("one", lambda g: torch.equal(g, torch.ones_like(g))),
                        ("zero", lambda g: g.abs().max() == 0),
                        ("mean", lambda g: torch.allclose(g, g[:, :1].expand_as(g)))]:
        with model.hooks(ablate_gate(model, layers=[1], mode=mode)):
            _, cache = model.run_with_cache(images, None, name)
        assert check(cache[name]), mode
    _, plain = model.run_with_cache(images, None, name)
    with model.hooks(ablate_gate(model, layers=1, mode="zero", patches=[0, "cls"])):
        _, cache = model.run_with_cache(images, None, name)
    assert cache[name][:, :2].abs().max() == 0
    assert torch.equal(cache[name][:, 2:], plain[name][:, 2:])


def test_bad_inputs_raise_clear_errors(bidir):
    model, _, _ = bidir
    with pytest.raises(ValueError, match=r"out of range.*16 patches"):
        zero_state(model, [16])
    with pytest.raises(ValueError, match="unknown gate ablation mode"):
        ablate_gate(model, mode="half")
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        reset_state(model, [0], layers=[2])
    with pytest.raises(ValueError, match="unknown scan direction 'col'"):
        reset_state(model, [0], directions=["col"])
    with pytest.raises(ValueError, match="no patches"):
        reset_state(model, [])
    with pytest.raises(ValueError, match="'cls'"):
        reset_state(model, ["token"])
    with pytest.raises(ValueError, match="int"):
        reset_state(model, [True])


def test_patch_state_same_source_is_a_no_op_and_another_changes_logits(bidir):
    model, images, tokens = bidir
    other, _ = batch(model.config, B=1, seed=1)
    plain = model(images, tokens)
    with model.hooks(patch_state(model, images, [3, 7, "cls"])):
        same = model(images, tokens)
    with model.hooks(patch_state(model, other, [3, 7])):
        changed = model(images, tokens)
    assert (same - plain).abs().max() < 1e-5
    assert (changed - plain).abs().max() > 1e-4


def test_patch_activation_copies_the_source_residual(bidir):
    model, images, _ = bidir
    other, _ = batch(model.config, B=1, seed=1)
    names = ["bridge.layers.0.hook_resid_post", "bridge.hook_out"]
    _, src = model.run_with_cache(other, None, names)
    _, tgt = model.run_with_cache(images, None, names)
    with model.hooks(patch_activation("bridge.layers.0.hook_resid_post", src)):
        _, out = model.run_with_cache(images, None, "bridge.hook_out")
    assert torch.allclose(out["bridge.hook_out"], src["bridge.hook_out"], atol=1e-6)
    hooks = patch_activation("bridge.layers.0.hook_resid_post", src, positions=[2])
    with model.hooks(hooks):
        _, out = model.run_with_cache(images, None, "bridge.layers.0.hook_resid_post")
    r = out["bridge.layers.0.hook_resid_post"]  # (1, L, D)
    assert torch.equal(r[:, 3], src["bridge.layers.0.hook_resid_post"][:, 3])
    keep = [i for i in range(17) if i != 3]
    assert torch.equal(r[:, keep], tgt["bridge.layers.0.hook_resid_post"][:, keep])


def test_compare_without_hooks_has_zero_deltas_and_agrees_with_a_forward(bidir):
    model, images, _ = bidir
    tok = Tokenizer([f"w{i}" for i in range(model.config.vocab_size - 4)])
    res = compare(model, tok, images[0], [], max_length=4)
    assert res.caption_before == res.caption_after
    assert torch.equal(res.delta, torch.zeros_like(res.delta))
    ids = torch.tensor(res.ids_before)[None]  # (1, 4): BOS + 3 greedy tokens
    lp = model(images, ids[:, :-1]).log_softmax(-1)[0].gather(-1, ids[0, 1:, None])[:, 0]
    assert torch.allclose(res.logprob_before, lp, atol=1e-5)
    assert res.words == [tok.decode([i], skip_special=False) for i in res.ids_before[1:]]
    hooked = compare(model, tok, images, zero_state(model, list(range(16))),
                     caption_ids=res.ids_before, max_length=4)
    assert torch.equal(hooked.logprob_before, res.logprob_before)
    assert hooked.delta.abs().max() > 0
    rows = hooked.to_rows()
    assert len(rows) == 3 and rows[0]["delta"] == pytest.approx(float(hooked.delta[0]))
    assert "(total)" in hooked.table() and hooked.caption_before in hooked.table()


def test_patch_activation_converts_patches_to_a_scan_order_hook(cross):
    model, images, _ = cross
    other, _ = batch(model.config, B=1, seed=1)
    name = "bridge.layers.0.mixer.dirs.1.hook_delta"  # the "col" direction, (B, L, D)
    _, src = model.run_with_cache(other, None, name)
    _, tgt = model.run_with_cache(images, None, name)
    with pytest.raises(ValueError, match="model=model"):
        patch_activation(name, src, positions=[1])
    with model.hooks(patch_activation(name, src, positions=[1], model=model)):
        _, out = model.run_with_cache(images, None, name)
    changed = (out[name] != tgt[name]).any(-1)[0].nonzero()[:, 0].tolist()
    assert changed == [5]  # patch 1 = (row 0, col 1): read 5th after cls column-major
    assert torch.equal(out[name][:, 5], src[name][:, 5])


# ---------------------------------------------------------------- one Action (app, explorer)
def test_each_action_equals_its_builder(bidir):
    from ssm_bridge.interp.interventions import Action, action_hooks, available_actions

    model, images, tokens = bidir
    builders = {"zero state": zero_state, "reset state": reset_state,
                "skip patches": skip_tokens}
    assert set(builders) < set(available_actions(model))
    for kind, build in builders.items():
        a = Action(kind, patches=(3, 9), layers=(0,), directions=("row_rev",))
        with model.hooks(action_hooks(model, a)):
            got = model(images, tokens)[0]
        with model.hooks(build(model, [3, 9], [0], ["row_rev"])):
            want = model(images, tokens)[0]
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_cross_attention_action_closes_the_gates(bidir):
    from ssm_bridge.interp.interventions import Action, action_hooks

    model, images, tokens = bidir
    with model.hooks(action_hooks(model, Action("zero cross-attention"))):
        ablated = model(images, tokens)[0]
    saved = [(c.attn_gate.detach().clone()) for c in model.decoder.cross_layers]
    try:
        with torch.no_grad():
            for c in model.decoder.cross_layers:
                c.attn_gate.zero_()
        closed = model(images, tokens)[0]
    finally:
        with torch.no_grad():
            for c, g in zip(model.decoder.cross_layers, saved):
                c.attn_gate.copy_(g)
    torch.testing.assert_close(ablated, closed)
    assert not torch.allclose(ablated, model(images, tokens)[0])


def test_intervene_reports_the_action_and_bad_choices_are_named(bidir):
    from ssm_bridge import VLMConfig
    from ssm_bridge.interp.interventions import Action, available_actions, intervene

    model, images, _ = bidir
    tok = Tokenizer([f"w{i}" for i in range(model.config.vocab_size - 4)])
    res = intervene(model, tok, images[0], Action("zero state", patches=tuple(range(16))),
                    max_length=4)
    ref = compare(model, tok, images[0], zero_state(model, list(range(16))), max_length=4)
    torch.testing.assert_close(res.logprob_after, ref.logprob_after)
    assert res.caption_after == ref.caption_after
    with pytest.raises(ValueError, match="choose at least one patch"):
        intervene(model, tok, images[0], Action("zero state"))
    with pytest.raises(ValueError, match="unknown action"):
        intervene(model, tok, images[0], Action("melt", patches=(1,)))
    with pytest.raises(ValueError, match="needs a source image"):
        intervene(model, tok, images[0], Action("patch from scene", patches=(1,)))
    no_cross = make_model(VLMConfig.from_preset("tiny").replace(cross_attn_layers=0))
    assert "zero cross-attention" not in available_actions(no_cross)


def test_patch_action_from_the_image_itself_changes_nothing(bidir):
    from ssm_bridge.interp.interventions import Action, action_hooks

    model, images, tokens = bidir
    a = Action("patch from scene", patches=tuple(range(16)), source=images[0])
    with model.hooks(action_hooks(model, a)):
        patched = model(images, tokens)[0]
    torch.testing.assert_close(patched, model(images, tokens)[0], atol=1e-5, rtol=1e-4)
