"""Per-word maps (ssm_bridge.interp.maps): every map has its documented shape and belongs to the
query that produced its word, the bridge maps are in patch order, the fast hidden
attention equals the reference, attribution kinds run on demand and are cached."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, open_gates

from ssm_bridge import VLMConfig
from ssm_bridge.core.ssm import direction_perm
from ssm_bridge.data import Tokenizer
from ssm_bridge.interp import implicit_attention as ia
from ssm_bridge.interp.attribution import attribute
from ssm_bridge.interp.maps import (
    MAP_KINDS,
    analyse,
    attribute_words,
    gated_update,
    model_kinds,
    word_map,
    word_maps,
)

TOK = Tokenizer.for_scenes()
G = 4  # 32 px images, 8 px patches
L = 1 + G * G


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(order: str = "raster", seed: int = 0):
    """Tiny model with open gates, a bridge that mixes for real (Δ ~ 1, B, C = O(1)) and
    an untied head whose special-token rows are 0, so greedy captions run to max_length
    (another word's logit is > 0) instead of echoing BOS."""
    cfg = VLMConfig.from_preset("tiny", vocab_size=len(TOK), ssm_scan_order=order,
                                tie_word_embeddings=False)
    model = open_gates(make_model(cfg, seed))
    with torch.no_grad():
        model.decoder.lm_head.weight[:4] = 0
        for block in model.bridge.layers:
            for d in block.mixer.dirs:
                d.dt_proj.bias.fill_(0.5)
                d.x_proj.weight.mul_(25)
    return model


def image(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed))  # (3, H, W)


@pytest.fixture(scope="module")
def model():
    return tiny("cross")


@pytest.fixture(scope="module")
def analysis(model):
    a = analyse(model, image(), tokenizer=TOK, max_length=10)
    assert a.n_words == 9  # BOS + 9 words fill max_length
    return a


def test_gated_update_is_the_gated_branch_over_the_stream(analysis, model):
    a = analysis
    tokens = a.ids[None, :-1]  # (1, S - 1)
    block = model.decoder.cross_layers[0]
    seen = {}  # the block's input and its cross-attention output, with plain torch hooks
    handles = [block.register_forward_pre_hook(lambda m, args: seen.update(x=args[0])),
               block.attn.register_forward_hook(lambda m, args, out: seen.update(y=out))]
    with torch.no_grad():
        model(a.image[None], tokens)
    for h in handles:
        h.remove()
    gate = block.attn_gate.detach().tanh()
    want = (gate * seen["y"]).norm(dim=-1) / seen["x"].norm(dim=-1)  # (1, S - 1)
    got = gated_update(model, a.image[None], tokens)
    assert got.shape == (1, 1, tokens.shape[1])
    torch.testing.assert_close(got[:, 0], want)
    # per word: the query that produced it, as for every map
    assert a.gated_update.shape == (a.n_words, 1)
    torch.testing.assert_close(a.gated_update[:, 0], want[0, [i - 1 for i in a.word_index]])
    shut = tiny("cross")
    with torch.no_grad():
        shut.decoder.cross_layers[0].attn_gate.fill_(0.0)
    assert gated_update(shut, a.image[None], tokens).abs().max() == 0  # a shut gate adds 0


def test_shapes_of_every_map(analysis, model):
    a, n = analysis, analysis.n_words
    assert a.grid_side == G and a.image.shape == (3, 32, 32)
    assert a.cross_attention.shape == (n, G, G) == a.prefix_attention.shape == a.implicit.shape
    assert a.cross_attention_layers.shape == (n, len(model.decoder.cross_layers), G, G)
    assert a.implicit_rollout.shape == (L, L) and a.logprobs.shape == (n,)
    for kind in ("delta", "gate", "state_norm"):
        per_layer = getattr(a, kind)
        assert sorted(per_layer) == [0, 1]
        assert all(m.shape == (G, G) and torch.isfinite(m).all() for m in per_layer.values())
    assert set(a.gates) == {"cross 0 attn", "cross 0 ff"}
    assert a.gates["cross 0 attn"] == pytest.approx(torch.tanh(torch.tensor(1.0)).item())
    assert a.kinds == model_kinds(model) == tuple(
        k for k in MAP_KINDS if not k.startswith(("hidden_", "decoder_", "vision_")))
    for kind in a.kinds:
        assert word_map(a, 1, kind, model).shape == (G, G)
        assert word_maps(a, kind, model).shape == (n, G, G)


def test_words_and_word_index_match_ids(analysis):
    a = analysis
    assert a.ids[0] == TOK.bos_id
    assert len(a.words) == len(a.word_index) == a.n_words
    assert [TOK.itos[int(a.ids[i])] for i in a.word_index] == a.words
    assert a.word_index == list(range(1, 1 + a.n_words))  # no prompt: right after BOS
    assert a.caption == " ".join(a.words) == TOK.decode(a.ids)
    assert not set(a.ids[a.word_index].tolist()) & {TOK.bos_id, TOK.eos_id, TOK.pad_id}
    assert (a.logprobs <= 0).all()


def test_prompt_words_are_not_generated_words(model):
    prompt = TOK.encode("a small", bos=False, eos=False)
    a = analyse(model, image(), tokenizer=TOK, max_length=10, prompt=prompt)
    assert a.ids[1:3].tolist() == prompt
    assert a.word_index[0] == 3 and [TOK.itos[int(a.ids[i])] for i in a.word_index] == a.words


def test_attention_rows_are_distributions_without_cls(analysis):
    for maps in (analysis.cross_attention, analysis.prefix_attention):
        sums = maps.sum((1, 2))
        assert (maps >= 0).all() and (sums <= 1 + 1e-5).all() and (sums > 0).all()
    assert torch.allclose(analysis.cross_attention, analysis.cross_attention_layers.mean(1))


def test_cross_attention_belongs_to_the_query_that_wrote_the_word(model, analysis):
    """A teacher-forced pass over the caption gives the same rows at position index - 1."""
    a = analysis
    name = "decoder.cross_layers.0.attn.hook_pattern"
    _, cache = model.run_with_cache(a.image[None], a.ids[None], names_filter=[name])
    rows = cache[name][0].mean(0)[[i - 1 for i in a.word_index], 1:]  # (n, P)
    assert torch.allclose(a.cross_attention.flatten(1), rows, atol=1e-5)


def test_implicit_is_cross_attention_through_the_bridge_rollout(model, analysis):
    a = analysis
    layers = ia.bridge_attention(model, a.image[None], dtype=torch.float64)
    rollout = ia.rollout([la.alpha_abs for la in layers])[0].float()  # (L, L)
    assert torch.allclose(a.implicit_rollout, rollout, atol=1e-5)
    name = "decoder.cross_layers.0.attn.hook_pattern"
    _, cache = model.run_with_cache(a.image[None], a.ids[None], names_filter=[name])
    rows = cache[name][0].mean(0)[[i - 1 for i in a.word_index]]  # (n, L) cls included
    assert torch.allclose(a.implicit.flatten(1), (rows @ rollout)[:, 1:], atol=1e-5)


def test_delta_map_is_in_patch_order():
    """Patch every direction's Δ (scan order) to the patch index of the token it holds:
    mapped back to patch order and averaged, the map must read 0, 1, 2, ... row-major."""
    model = tiny("cross")
    names = model.bridge.layers[0].mixer.direction_names

    def patch_index(t, name):
        k = int(name.split(".dirs.")[1].split(".")[0])
        perm = direction_perm(names[k], t.shape[1])  # (L,) patch index of scan position i
        return perm.to(t)[None, :, None].expand_as(t).clone()  # (B, L, D)

    with model.hooks([("bridge.layers.0.mixer.dirs.*.hook_delta", patch_index)]):
        a = analyse(model, image(), tokenizer=TOK, max_length=4)
    assert torch.equal(a.delta[0], torch.arange(1, L, dtype=torch.float32).reshape(G, G))


def test_gate_and_state_maps_match_the_hooks(model, analysis):
    a = analysis
    names = ["bridge.layers.1.mixer.hook_gate", "bridge.layers.1.mixer.dirs.0.hook_state"]
    _, cache = model.run_with_cache(a.image[None], None, names_filter=names)
    gate = cache[names[0]][0].mean(-1)[1:].reshape(G, G)  # hook_gate is in patch order
    assert torch.allclose(a.gate[1], gate)
    h = cache[names[1]][0]  # (L, D, N): direction 0 reads row-major, like patch order
    assert torch.allclose(a.state_norm[1], h.flatten(1).norm(dim=1)[1:].reshape(G, G))


def test_bridge_maps_average_layers_by_default(analysis):
    mean = (analysis.delta[0] + analysis.delta[1]) / 2
    assert torch.allclose(word_map(analysis, 0, "delta"), mean)
    assert torch.equal(word_map(analysis, 2, "gate", layer=1), analysis.gate[1])
    assert torch.equal(word_map(analysis, 2, "gate", layer=-1), analysis.gate[1])
    with pytest.raises(ValueError, match="layer 5"):
        word_map(analysis, 0, "gate", layer=5)


def test_attributions_on_demand_and_cached(model):
    a = analyse(model, image(1), tokenizer=TOK, max_length=8)
    with pytest.raises(ValueError, match="pass the model"):
        word_map(a, 0, "ig")
    assert "ig" not in a.attributions
    m = word_map(a, 1, "ig", model)
    assert set(a.attributions["ig"]) == {1} and torch.equal(a.attributions["ig"][1], m)
    pos = a.word_index[1]
    direct = attribute(model, a.image[None], a.ids[:pos], pos - 1, int(a.ids[pos]), "ig",
                       steps=16)
    assert torch.allclose(m, direct.patches[0], atol=1e-5)
    both = word_maps(a, "saliency", model, [0, 2])  # one batch for both words
    alone = attribute_words(model, a, [2], "saliency")[0]
    assert torch.allclose(both[1], alone, atol=1e-5)
    assert set(a.attributions["saliency"]) == {0, 2}


def test_bad_kind_and_word_raise_value_errors(analysis):
    with pytest.raises(ValueError, match=r"cross_attention.*gradcam.*saliency"):
        word_map(analysis, 0, "attention")
    with pytest.raises(ValueError, match="out of range"):
        word_map(analysis, analysis.n_words, "cross_attention")


def test_analyse_takes_one_image(model):
    with pytest.raises(ValueError, match="one image"):
        analyse(model, torch.randn(2, 3, 32, 32))
