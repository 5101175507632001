"""The kit's SSM tools on MambaLM: hidden attention rebuilds every layer's scan and equals the
loop formula; per-token Δ / gate / state norm match the hooks; resets and state patches cut
or replace the past exactly where the maths says, in a forward and while decoding; probes."""

from __future__ import annotations

import pytest
import torch
from mambautil import random_ids, tiny_mamba

from ssm_bridge.interp.implicit_attention import (
    SCAN_HOOKS,
    hidden_attention_ref,
    rebuild_error,
    scan_activations,
)
from ssm_bridge.mamba import tools as mt

K = 4  # conv_kernel of the tiny models: the conv window reads K-1 tokens back


def test_hidden_attention_rebuilds_every_layer():
    model = tiny_mamba(num_hidden_layers=3)
    ids = random_ids(2, 15)
    errors = mt.verify(model, ids, strict=True)
    assert sorted(errors) == [0, 1, 2] and max(errors.values()) < 1e-6
    layers = mt.token_attention(model, ids, layers=[0, -1])
    assert [la.layer for la in layers] == [0, 2]
    la = layers[1]
    assert la.alpha_patch.shape == (2, 32, 15, 15) and la.alpha_abs.shape == (2, 15, 15)
    assert torch.equal(la.alpha_patch.triu(1), torch.zeros_like(la.alpha_patch))  # causal
    _, cache = model.run_with_cache(ids, mt.attention_hook_names(model, [2]))
    mixer = model.layers[2].mixer
    ref = hidden_attention_ref(cache["layers.2.mixer.hook_delta"], -torch.exp(mixer.A_log),
                               cache["layers.2.mixer.hook_B"], cache["layers.2.mixer.hook_C"])
    torch.testing.assert_close(la.alpha_patch.double(), ref, rtol=1e-4, atol=1e-6)


def test_verify_catches_a_wrong_matrix():
    """The check can fail: with D's skip dropped from the rebuild it reports the gap."""
    model = tiny_mamba()
    ids = random_ids(1, 9)
    with torch.no_grad():
        model.layers[1].mixer.D.add_(1.0)
        good = mt.verify(model, ids)
        saved = model.layers[1].mixer.D.clone()
        _, cache = model.run_with_cache(ids, mt.attention_hook_names(model, ssm_out=True))
        model.layers[1].mixer.D.zero_()  # the rebuild now uses the wrong skip weight
        act = scan_activations(cache, "layers.1.mixer", (*SCAN_HOOKS, "hook_ssm_out"))
        bad = rebuild_error(act, model.layers[1].mixer)
        model.layers[1].mixer.D.copy_(saved)
    assert good[1] < 1e-6 and bad > 1e-2
    with pytest.raises(ValueError, match=r"lacks layers\.0\.mixer\.hook_conv"):
        mt.from_cache({}, model, 0)


def test_token_stats_match_the_hooks():
    model = tiny_mamba()
    ids = random_ids(2, 11)
    stats = mt.token_stats(model, ids)
    _, cache = model.run_with_cache(ids, heavy=True)
    for i in range(2):
        p = f"layers.{i}.mixer."
        torch.testing.assert_close(stats["delta"][:, i], cache[p + "hook_delta"].mean(-1))
        torch.testing.assert_close(stats["gate"][:, i], cache[p + "hook_gate"].mean(-1))
        torch.testing.assert_close(stats["state_norm"][:, i],
                                   cache[p + "hook_state"].flatten(2).norm(dim=-1))
    assert stats["delta"].shape == (2, 2, 11) and (stats["delta"] > 0).all()


@pytest.mark.parametrize("builder", [mt.reset_state, mt.zero_state])
def test_reset_cuts_the_past(builder):
    """One layer, reset at t: tokens before t-K+1 (out of the conv window) no longer reach
    any logit from t on; without the reset they do."""
    model = tiny_mamba(num_hidden_layers=1)
    t = 8
    a = random_ids(1, 14, seed=0)
    b = a.clone()
    b[0, : t - K + 1] = random_ids(1, t - K + 1, seed=5)[0]
    with torch.no_grad():
        assert (model(a)[0, t:] - model(b)[0, t:]).abs().max() > 1e-3
        with model.hooks(builder(model, [t])):
            la, lb = model(a), model(b)
    torch.testing.assert_close(la[0, t:], lb[0, t:], rtol=1e-5, atol=1e-5)
    assert (la[0, :t] - lb[0, :t]).abs().max() > 1e-3  # before t nothing changed


def test_patch_state_carries_the_source():
    """One layer, texts that differ only before t-K+1: with the state at t patched from the
    source, the target's logits from t on are the source's."""
    model = tiny_mamba(num_hidden_layers=1)
    t = 9
    target = random_ids(1, 15, seed=1)
    source = target.clone()
    source[0, :3] = (source[0, :3] + 1) % 37
    with torch.no_grad():
        want = model(source)[0, t:]
        assert (model(target)[0, t:] - want).abs().max() > 1e-3
        with model.hooks(mt.patch_state(model, source, [t])):
            got = model(target)[0, t:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_interventions_act_while_decoding():
    """Hooks placed at tokens inside the prompt and inside the generated part act at those
    tokens during generate: the logits recorded while decoding are a hooked forward's."""
    model = tiny_mamba()
    prompt, source = random_ids(1, 4), random_ids(1, 20, seed=9)
    _, plain = model.generate(prompt, 10, temperature=0, record="hook_logits")
    for hooks in (mt.reset_state(model, [2, 7]), mt.patch_state(model, source, [3, 9])):
        with model.hooks(hooks):
            ids, rec = model.generate(prompt, 10, temperature=0, record="hook_logits")
            with torch.no_grad():
                forward = model(ids[:, :-1])
        torch.testing.assert_close(rec["hook_logits"], forward, rtol=1e-4, atol=1e-5)
        assert (rec["hook_logits"][:, 3] - plain["hook_logits"][:, 3]).abs().max() > 1e-3


def test_probes_read_the_current_token():
    model = tiny_mamba(vocab_size=11)  # 11 tokens in 16 dims: any labelling is linear
    train, test = random_ids(8, 12, seed=0, vocab=11), random_ids(4, 12, seed=1, vocab=11)
    rows = mt.probe_layers(model, train, (train % 3).numpy(), test, (test % 3).numpy())
    assert [r["layer"] for r in rows] == ["embed", "layer_0", "layer_1", "final"]
    embed = rows[0]
    assert embed["accuracy"] == 1.0 and embed["n_test"] == 48
    assert embed["majority_baseline"] < 0.6
    feats = mt.layer_features(model, test, positions=[0, 5])
    assert feats["layer_1"].shape == (8, 16)
    with pytest.raises(ValueError, match="one per sequence and position"):
        mt.probe_layers(model, train, (train % 3).numpy()[:, :5], test, (test % 3).numpy())


@pytest.mark.parametrize("call,message", [
    (lambda m: mt.reset_state(m, [-1]), "positions >= 0"),
    (lambda m: mt.reset_state(m, [1], layers=[2]), r"layer 2 is out of range.*2 layers"),
    (lambda m: mt.patch_state(m, random_ids(1, 3), [5]), "past the source's 3 tokens"),
    (lambda m: mt.patch_state(m, {}, [1]), r"lacks layers\.0\.mixer\.hook_state"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_mamba())


def test_the_decoding_position_is_per_thread():
    """A thread decoding at position 7 never moves the position another thread's
    intervention hooks read (it was one attribute shared by every thread)."""
    import threading

    model = tiny_mamba()
    state = model.new_state(1)
    inside, seen = threading.Event(), []

    def hold(x, name):
        inside.set()
        release.wait(timeout=30)  # keep thread A inside its call while B reads

    release = threading.Event()
    with torch.no_grad():
        model(random_ids(1, 7), state)  # state now at position 7

        def decode():
            with model.hooks([("layers.0.mixer.hook_delta", hold)]):
                model(random_ids(1, 1), state)

        worker = threading.Thread(target=decode)
        worker.start()
        assert inside.wait(timeout=30)
        seen.append(model.token_offset)  # this thread: no call in flight, position 0
        release.set()
        worker.join(timeout=30)
    assert seen == [0]
