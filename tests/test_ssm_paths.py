"""Words traced to pixels through selective scans (ssm_bridge.interp.ssm_paths): the Mamba
decoder's hidden attention onto the image prefix, its rollout back through the SSM bridge and
the Vision Mamba encoder, the decoder's selectivity, and the rebuild check of every scan."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from mambautil import perturb

from ssm_bridge.core.addressing import SSMStack
from ssm_bridge.interp import implicit_attention as ia
from ssm_bridge.interp import ssm_paths
from ssm_bridge.model import VLMConfig

ALL_SSM = dict(vision_type="vim", decoder_type="mamba", bridge_type="ssm", cross_attn_layers=0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


def mixing_model(seed: int = 0, **kw):
    """A tiny all-SSM model whose three stacks' scans mix tokens for real (mambautil.perturb)."""
    model = make_model(VLMConfig.from_preset("tiny", **{**ALL_SSM, **kw}), seed)
    for part in (model.vision, model.bridge, model.decoder):
        perturb(part, seed)
    return model


@pytest.fixture(scope="module")
def setup():
    model = mixing_model()
    g = torch.Generator().manual_seed(1)
    c = model.config
    image = torch.randn(1, c.in_channels, c.img_size, c.img_size, generator=g)
    ids = torch.cat([torch.tensor([c.bos_token_id]), torch.randint(3, c.vocab_size, (5,),
                                                                   generator=g)])  # (6,)
    return model, image, ids


def test_alpha_rebuilds_every_scan_of_every_stack_on_the_path(setup):
    model, image, ids = setup
    errors = ssm_paths.verify(model, image, ids, strict=True)
    stacks = {s for s, _, _ in errors}
    assert stacks == {"decoder", "bridge", "vision"}
    assert len(errors) == (len(model.decoder.layers) + 2 * len(model.vision.layers)
                           + len(model.bridge.layers) * len(SSMStack.of(model, "bridge")[0]))
    assert max(errors.values()) < 1e-5  # the float32 scan against float64 α


def test_verify_fails_when_alpha_is_wrong(setup, monkeypatch):
    model, image, ids = setup
    real = ia.direction_alpha
    monkeypatch.setattr(ia, "direction_alpha",
                        lambda act, d, dtype, **kw: 1.01 * real(act, d, dtype, **kw))
    with pytest.raises(RuntimeError, match="does not rebuild"):
        ssm_paths.verify(model, image, ids, strict=True)


def test_per_layer_hidden_attention_is_the_decoder_alpha_row_of_the_query(setup):
    model, image, ids = setup
    P = model.config.num_image_tokens
    cache = ssm_paths.capture(model, image, ids)
    maps = ssm_paths.path_maps(model, image, ids, [1, 3, 5], cache)
    assert maps.queries == [P, P + 2, P + 4]
    assert maps.hidden_attention.shape == (3, len(model.decoder.layers), P)
    stack = SSMStack.of(model, "decoder")
    for layer in range(len(stack)):
        alpha = ia.stack_attention(cache, stack[layer], dtype=torch.float64).alpha_abs[0]
        torch.testing.assert_close(maps.hidden_attention[:, layer],
                                   alpha[maps.queries, :P].float(), rtol=1e-5, atol=1e-7)
    assert (maps.hidden_attention > 0).all()  # every image token reaches every word


def test_rollout_goes_back_through_bridge_and_vim_in_output_order(setup):
    model, image, ids = setup
    P = model.config.num_image_tokens
    cache = ssm_paths.capture(model, image, ids)
    maps = ssm_paths.path_maps(model, image, ids, [2], cache)
    decoder = ia.rollout([ia.stack_attention(cache, ref, dtype=torch.float64,
                                             chunked=True).alpha_abs
                          for ref in SSMStack.of(model, "decoder")])[0]  # (P + T, P + T)
    vim = SSMStack.of(model, "vision")
    internal = ia.rollout([ia.stack_attention(cache, ref, dtype=torch.float64).alpha_abs
                           for ref in vim])[0]  # (P, P), class token mid-sequence
    m = model.vision.cls_position
    out = ssm_paths.stack_rollout(cache, vim)[0]
    assert torch.allclose(out[0, 0], internal[m, m]) and torch.allclose(out[0, 1:], torch.cat(
        [internal[m, :m], internal[m, m + 1:]]))  # cls first, then the patches in raster
    bridge = ssm_paths.stack_rollout(cache, SSMStack.of(model, "bridge"))[0]
    expected = decoder[maps.queries, :P] @ bridge @ out  # (1, P)
    torch.testing.assert_close(maps.hidden_rollout, expected.float())
    assert torch.allclose(out.sum(-1), torch.ones(P, dtype=out.dtype))


def test_an_mlp_bridge_and_a_vit_count_as_the_identity():
    model = mixing_model(vision_type="vit", bridge_type="mlp")
    c = model.config
    image = torch.randn(1, c.in_channels, c.img_size, c.img_size)
    ids = torch.tensor([c.bos_token_id, 5, 6, 7])
    maps = ssm_paths.path_maps(model, image, ids, [3])
    cache = ssm_paths.capture(model, image, ids)
    R = ia.rollout([ia.stack_attention(cache, ref, dtype=torch.float64, chunked=True).alpha_abs
                    for ref in SSMStack.of(model, "decoder")])[0]
    P = c.num_image_tokens
    torch.testing.assert_close(maps.hidden_rollout[0], R[P + 2, :P].float())


def test_selectivity_matches_the_hooks_and_the_recurrent_state(setup):
    model, image, ids = setup
    P = model.config.num_image_tokens
    cache = ssm_paths.capture(model, image, ids)
    sel = ssm_paths.path_maps(model, image, ids, [1], cache).selectivity
    L = P + len(ids) - 1
    stack = SSMStack.of(model, "decoder")
    for name in ssm_paths.SELECTIVITY:
        assert getattr(sel, name).shape == (len(stack), L)
    torch.testing.assert_close(sel.gate[0], cache[stack.hook("hook_gate", 0)][0].mean(-1))
    assert sel.image_part("delta").shape == (len(stack), P)
    # |h| after the last token equals the state a recurrent decoding is left with
    with torch.no_grad():
        media = model.encode_image(image)
        dec_cache = model.decoder.new_cache(1, 8, P, image.device, torch.float32)
        model.decoder(media, ids[None, :-1], dec_cache)
    for i, layer_state in enumerate(dec_cache.state.layers):
        assert sel.state_norm[i, -1] == pytest.approx(layer_state["ssm"].norm().item(), rel=1e-4)


def test_a_transformer_decoder_gets_one_line_that_names_the_maps_it_has():
    model = make_model(VLMConfig.from_preset("tiny"))
    with pytest.raises(ValueError) as e:
        ssm_paths.hook_names(model)
    assert "\n" not in str(e.value)
    assert "'transformer'" in str(e.value) and "cross_attention" in str(e.value)


# ---------------------------------------------------------------- decoder interventions
def decoder_states(model, image, tokens, hooks, layer=0):
    """hook_state (1, P + T, D, N) of one decoder layer under hooks."""
    name = SSMStack.of(model, "decoder").hook("hook_state", layer)
    with model.hooks(hooks):
        _, cache = model.run_with_cache(image, tokens, names_filter=[name])
    return cache[name]


def test_decoder_state_edits_act_at_the_image_tokens(setup):
    from ssm_bridge.interp.interventions import reset_state, zero_state

    model, image, ids = setup
    tokens = ids[None, :-1]
    h0 = decoder_states(model, image, tokens, [])
    h = decoder_states(model, image, tokens, zero_state(model, [3], layers=[0], stack="decoder"))
    assert torch.equal(h[:, :4], h0[:, :4])  # cls and patches 0-2 come before
    assert h[:, 4].abs().max() == 0 and (h[:, 5:] - h0[:, 5:]).abs().max() > 1e-4
    h = decoder_states(model, image, tokens, reset_state(model, "cls", layers=[0],
                                                         stack="decoder"))
    assert torch.equal(h, h0)  # the first token has no past to forget


def test_decoder_patch_state_carries_the_source_image_into_the_words(setup):
    from ssm_bridge.interp.interventions import patch_state

    model, image, ids = setup
    P, tokens = model.config.num_image_tokens, ids[None, :-1]
    other = torch.randn(image.shape, generator=torch.Generator().manual_seed(7))
    hooks = patch_state(model, other, [*range(P - 1), "cls"], stack="decoder")
    src = decoder_states(model, other, tokens, [], layer=-1)
    h = decoder_states(model, image, tokens, hooks, layer=-1)
    torch.testing.assert_close(h[:, :P], src[:, :P])


def test_decoder_hooks_act_alike_in_a_forward_and_a_recurrent_generation(setup):
    from ssm_bridge.interp.interventions import ablate_gate, zero_state

    model, image, _ = setup
    for hooks in (zero_state(model, range(16), stack="decoder"),
                  ablate_gate(model, mode="mean", stack="decoder")):
        with model.hooks(hooks):
            ids = model.generate(image, max_length=8, temperature=0.0, top_k=None, top_p=None)
            logits = model(image, ids[:, :-1])  # (1, T, vocab)
        made = (ids[0, 1:] != model.config.pad_token_id).sum()  # steps up to EOS
        assert made > 1
        assert torch.equal(logits.argmax(-1)[0, :made], ids[0, 1:1 + made]), hooks[0][0]


def test_interventions_name_their_stacks(setup):
    from ssm_bridge.interp.interventions import STATE_STACKS, reset_state

    model = setup[0]
    assert reset_state(model, [0], stack="vision")  # the Vim encoder's scans
    with pytest.raises(ValueError) as e:
        reset_state(model, [0], stack="encoder")
    assert "\n" not in str(e.value) and "'encoder'" in str(e.value)
    assert all(repr(s) in str(e.value) for s in STATE_STACKS)
    vit = make_model(VLMConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match="decoder"):
        reset_state(vit, [0], stack="decoder")
    with pytest.raises(ValueError, match="'vision'"):
        reset_state(vit, [0], stack="vision")  # a ViT has no scans to edit


# ---------------------------------------------------------------- vision (Vim) interventions
def vim_states(model, image, hooks, layer=0):
    """hook_state (1, L, D, N) of the Vim layer's forward and backward scan, each in its own
    scan order (forward: the internal order, class token at m; backward: it reversed)."""
    vim = SSMStack.of(model, "vision")
    names = [vim.hook("hook_state", layer, k) for k in (0, 1)]
    with model.hooks(hooks):
        _, cache = model.run_with_cache(image, None, names_filter=names)
    return [cache[n] for n in names]


def vim_internal(model, p) -> int:
    """Where patch p (or "cls") sits inside the Vim, computed by hand from vim.py's layout
    [patches 0 .. m-1, cls, patches m .. P-1]."""
    m = model.vision.cls_position
    return m if p == "cls" else p if p < m else p + 1


def test_vision_zero_state_edits_the_patch_in_both_scans(setup):
    from ssm_bridge.interp.interventions import zero_state

    model, image, _ = setup
    L, m = model.config.num_image_tokens, model.vision.cls_position
    h0 = vim_states(model, image, [])
    for p in (0, m - 1, m, L - 2, "cls"):  # around the class token, and both ends
        hs = vim_states(model, image, zero_state(model, [p], stack="vision"))
        i = vim_internal(model, p)
        for h, clean, pos in zip(hs, h0, (i, L - 1 - i)):  # backward: read in reverse
            zeros = (h[0].flatten(1).abs().amax(-1) == 0).nonzero()[:, 0]  # (n,) scan steps
            assert zeros.tolist() == [pos], (p, pos)
            assert torch.equal(h[:, :pos], clean[:, :pos])  # read before the edit
            if pos + 1 < L:  # the scan goes on from 0
                assert (h[:, pos + 1:] - clean[:, pos + 1:]).abs().max() > 1e-4


def test_vision_gate_ablation_leaves_the_patch_token_its_embedding(setup):
    """Gate 0 at patch p in every layer: the blocks add nothing there, so the encoder's output
    at token 1 + p (output order) is the final norm of the embedding at p's internal index."""
    from ssm_bridge.core.layers import layer_norm
    from ssm_bridge.interp.interventions import ablate_gate

    model, image, _ = setup
    for p, t in ((3, 4), (model.vision.cls_position, 1 + model.vision.cls_position),
                 ("cls", 0)):
        with torch.no_grad(), model.hooks(ablate_gate(model, patches=[p], stack="vision")):
            _, cache = model.run_with_cache(image, None, names_filter=["vision.hook_embed"])
            out = model.vision(image)  # (1, L, dim) cls first
        embed = cache["vision.hook_embed"][:, vim_internal(model, p)]  # (1, dim)
        torch.testing.assert_close(out[:, t], layer_norm(model.vision.norm, embed))
        assert (out[:, t] - model.vision(image)[:, t]).abs().max() > 1e-3


def test_vision_patch_state_takes_the_source_state_there(setup):
    from ssm_bridge.interp.interventions import patch_state, source_states

    model, image, _ = setup
    L = model.config.num_image_tokens
    other = torch.randn(image.shape, generator=torch.Generator().manual_seed(7))
    src = vim_states(model, other, [])
    assert set(source_states(model, other, stack="vision")) == set(
        SSMStack.of(model, "vision").hook_names(["hook_state"]))
    for p in (model.vision.cls_position, "cls"):
        i = vim_internal(model, p)
        clean = vim_states(model, image, [])
        hs = vim_states(model, image, patch_state(model, other, [p], stack="vision"))
        for h, c, s, pos in zip(hs, clean, src, (i, L - 1 - i)):
            torch.testing.assert_close(h[:, pos], s[:, pos])
            assert (c[:, pos] - s[:, pos]).abs().max() > 1e-3  # the two images differ there
            assert torch.equal(h[:, :pos], c[:, :pos])


def test_vision_patch_activation_lands_on_the_internal_token(setup):
    from ssm_bridge.interp.interventions import patch_activation

    model, image, _ = setup
    name = "vision.layers.0.hook_resid_post"  # (1, L, dim) internal order
    other = torch.randn(image.shape, generator=torch.Generator().manual_seed(7))
    _, src = model.run_with_cache(other, None, names_filter=[name])
    _, tgt = model.run_with_cache(image, None, names_filter=[name])
    for p in (0, "cls"):  # output tokens 1 and 0, internal 0 and m
        with model.hooks(patch_activation(name, src, positions=[p], model=model)):
            _, out = model.run_with_cache(image, None, names_filter=[name])
        changed = (out[name] != tgt[name]).any(-1)[0].nonzero()[:, 0].tolist()
        assert changed == [vim_internal(model, p)]


def test_vision_edits_through_compare_and_actions(setup):
    from ssm_bridge.data import Tokenizer
    from ssm_bridge.interp.interventions import (
        Action,
        available_actions,
        compare,
        intervene,
        zero_state,
    )

    # the all-SSM model, and a Vim with an MLP bridge and a Transformer decoder, whose
    # encoder is its only scan
    only_vim = mixing_model(decoder_type="transformer", bridge_type="mlp", cross_attn_layers=1)
    for model in (setup[0], only_vim):
        c = model.config
        image = torch.randn(c.in_channels, c.img_size, c.img_size,
                            generator=torch.Generator().manual_seed(3))
        assert "zero state" in available_actions(model)
        tok = Tokenizer([f"w{i}" for i in range(c.vocab_size - 4)])
        every = (*range(c.num_patches), "cls")
        res = compare(model, tok, image, zero_state(model, every, stack="vision"), max_length=6)
        assert len(res.words) == len(res.delta) == len(res.to_rows()) > 0
        assert res.delta.abs().max() > 1e-4  # the words read the edited encoder
        via = intervene(model, tok, image, Action("zero state", every, stack="vision"),
                        max_length=6)
        assert via.words == res.words and torch.equal(via.logprob_after, res.logprob_after)


# ---------------------------------------------------------------- maps and the CLI
def test_analyse_gives_an_all_ssm_model_the_kinds_its_parts_allow(setup):
    from ssm_bridge.interp.maps import ATTRIBUTION_KINDS, analyse, model_kinds, word_map, word_maps

    model, image, _ = setup
    a = analyse(model, image, max_length=8)
    n, g, layers = a.n_words, model.config.grid_size, len(model.decoder.layers)
    assert n > 0 and a.kinds == model_kinds(model)
    assert {"hidden_attention", "hidden_rollout", "decoder_delta", "delta"} <= set(a.kinds)
    assert not {"cross_attention", "prefix_attention", "implicit"} & set(a.kinds)
    assert a.hidden_attention_layers.shape == (n, layers, g, g)
    for kind in set(a.kinds) - set(ATTRIBUTION_KINDS):
        assert word_maps(a, kind).shape == (n, g, g), kind
    path = ssm_paths.path_maps(model, image, a.ids, a.word_index)
    torch.testing.assert_close(a.hidden_rollout, path.hidden_rollout[:, 1:].reshape(n, g, g))
    torch.testing.assert_close(word_map(a, 0, "decoder_gate", layer=-1),
                               path.selectivity.gate[-1, 1:g * g + 1].reshape(g, g))
    with pytest.raises(ValueError, match=r"no 'cross_attention' maps.*hidden_rollout"):
        word_map(a, 0, "cross_attention")
    with pytest.raises(ValueError, match="the Mamba decoder has 2 layers"):
        word_map(a, 0, "decoder_delta", layer=5)


def test_a_transformer_model_keeps_its_kinds():
    from ssm_bridge.interp.maps import MAP_KINDS, model_kinds

    kinds = model_kinds(make_model(VLMConfig.from_preset("tiny")))
    scan_kinds = ("hidden_", "decoder_", "vision_")  # need a Mamba decoder or a Vim
    assert kinds == tuple(k for k in MAP_KINDS if not k.startswith(scan_kinds))


def test_localisation_table_scores_every_kind_the_model_has():
    from ssm_bridge.interp.interpret import localisation_table
    from ssm_bridge.interp.maps import model_kinds

    model = mixing_model(img_size=64, patch_size=16, vocab_size=48)
    rows = localisation_table(model, n=2, maps=None, progress=False)
    assert [r["map"] for r in rows] == list(model_kinds(model))
    with pytest.raises(ValueError, match="no \\['cross_attention'\\] maps"):
        localisation_table(model, n=1, maps=["cross_attention"], progress=False)


def test_vim_encoder_maps_are_in_the_output_order(setup):
    from ssm_bridge.interp.maps import analyse, word_map

    model, image, _ = setup
    a = analyse(model, image, max_length=4)
    vim, g = SSMStack.of(model, "vision"), model.config.grid_size
    assert sorted(a.vision_delta) == list(range(len(vim)))
    names = [vim.hook("hook_delta", 0, k) for k in (0, 1)] + [vim.hook("hook_gate", 0)]
    _, cache = model.run_with_cache(image, None, names_filter=names)
    forward = cache[names[0]][0].mean(-1)  # (1 + P,) internal order, read forwards
    backward = cache[names[1]][0].mean(-1).flip(0)  # read backwards: flip to internal
    internal = (forward + backward) / 2
    m = model.vision.cls_position
    patches = torch.cat([internal[:m], internal[m + 1:]])  # (P,) raster order, cls left out
    torch.testing.assert_close(word_map(a, 0, "vision_delta", layer=0), patches.reshape(g, g))
    gate = cache[names[2]][0].mean(-1)
    torch.testing.assert_close(a.vision_gate[0],
                               torch.cat([gate[:m], gate[m + 1:]]).reshape(g, g))


# ---------------------------------------------------------------- the app
def test_app_tabs_show_the_scans_of_an_all_ssm_model(tmp_path):
    pytest.importorskip("gradio")
    from ssm_bridge.app import support
    from ssm_bridge.app.ui import intro
    from ssm_bridge.data import ImageTransform, SceneConfig, Tokenizer
    from ssm_bridge.training.pretrained import Pretrained

    scenes = SceneConfig(img_size=64)
    tok = Tokenizer.for_scenes(scenes)
    model = mixing_model(img_size=64, patch_size=16, vocab_size=len(tok), max_seq_length=12)
    bundle = Pretrained(model, tok, ImageTransform(img_size=64), scenes, tmp_path)
    titles = support.tab_titles(model)
    assert [titles[t] for t in support.SCAN_TABS] == list(support.SCAN_TABS.values())
    assert "Vision Mamba" in intro(model.config) and "no attention" in intro(model.config)
    analyser = support.Analyser(bundle)
    pixels, scene = support.scene_pixels(3, scenes)
    view = analyser.analyse(pixels, support.Decoding(max_length=12), scene)
    assert view.analysis.n_words > 0
    for tab in support.TABS:
        fig = support.tab_figure(analyser, view, tab, word=0)
        assert fig is not None or tab in ("attribution", "truth"), tab
    panels = support.selectivity_maps(view.analysis)
    assert {"bridge 0 Δ", "Vim 0 gate", "decoder 1 Δ"} <= set(panels)
    assert "reads the image through its scans" in support.word_info(view, 0)
