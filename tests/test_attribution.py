import pytest
import torch
from conftest import make_model, open_gates, while_paused
from einops import reduce, repeat

from ssm_bridge import VLMConfig
from ssm_bridge.core.ssm import explain_mode
from ssm_bridge.data import Tokenizer
from ssm_bridge.interp.attribution import (
    METHODS,
    WordLogit,
    _bridge_ratio,
    attribute,
    caption_attributions,
    compare_explain,
    make_baseline,
)

POS, WORD = 3, 7  # explain logits[:, 3, 7]: the id 7 predicted after tokens[:, :4]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def config() -> VLMConfig:
    return VLMConfig(img_size=32, patch_size=8, vision_embed_dim=32, vision_num_layers=1,
                     vision_num_heads=2, text_embed_dim=32, text_num_layers=1, text_num_heads=2,
                     max_seq_length=32, ssm_state_dim=4, ssm_hidden_dim=16, ssm_num_layers=2,
                     cross_attn_layers=1, cross_attn_heads=2, dropout=0.0, ssm_dropout=0.0,
                     vocab_size=40)


@pytest.fixture(scope="module")
def model(config):
    return open_gates(make_model(config))


@pytest.fixture(scope="module")
def inputs(config):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=g)  # (B, 3, H, W)
    tokens = torch.randint(4, config.vocab_size, (2, 5), generator=g)  # (B, T)
    tokens[:, 0] = 1  # BOS
    return images, tokens


def score(model, images, tokens, pos=POS, word=WORD):
    return model(images, tokens)[:, pos, word]  # (B,)


def input_grad(model, images, tokens):
    x = images.clone().requires_grad_()
    (grad,) = torch.autograd.grad(score(model, x, tokens).sum(), x)
    return grad  # (B, 3, H, W)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_finite_maps_of_the_right_shapes(model, inputs, method):
    images, tokens = inputs
    a = attribute(model, images, tokens, POS, WORD, method, steps=8, nt_samples=2)
    assert a.method == method
    assert a.pixels.shape == (2, 32, 32) and a.patches.shape == (2, 4, 4)
    assert torch.isfinite(a.pixels).all() and torch.isfinite(a.patches).all()
    assert a.pixels.abs().sum() > 0
    torch.testing.assert_close(a.score, score(model, images, tokens).detach())
    if method == "gradcam":
        assert a.raw is None
    else:
        assert a.raw.shape == (2, 3, 32, 32) and torch.isfinite(a.raw).all()
        torch.testing.assert_close(a.pixels, a.raw.sum(1))
        torch.testing.assert_close(a.patches, reduce(a.pixels, "b (g p) (h q) -> b g h", "sum",
                                                     p=8, q=8))
    assert not images.requires_grad  # the caller's tensor is left alone


@pytest.mark.parametrize("baseline", [None, "blur", "mean", -1.0])
def test_integrated_gradients_are_complete(model, inputs, baseline):
    """sum of IG attributions = f(x) - f(baseline), f computed here without captum."""
    images, tokens = inputs
    with torch.no_grad():
        gaps = (model(images, tokens) - model(make_baseline(images, baseline), tokens))[:, POS]
    words = gaps.abs().argmax(-1)  # (B,) per image, the word the image moves most
    gap = gaps[torch.arange(2), words]  # (B,)
    assert (gap.abs() > 1e-2).all()  # a difference worth explaining
    a = attribute(model, images, tokens, POS, words, "ig", steps=64, baseline=baseline)
    assert ((a.raw.sum((1, 2, 3)) - gap).abs() <= 0.05 * gap.abs()).all()
    assert (a.delta.abs() <= 0.05 * gap.abs()).all()


def test_saliency_is_the_absolute_input_gradient(model, inputs):
    images, tokens = inputs
    a = attribute(model, images, tokens, POS, WORD, "saliency")
    torch.testing.assert_close(a.raw, input_grad(model, images, tokens).abs())


def test_grad_x_input_by_hand_and_explain_mode_changes_it(model, inputs):
    images, tokens = inputs
    plain = attribute(model, images, tokens, POS, WORD, "grad_x_input")
    torch.testing.assert_close(plain.raw, input_grad(model, images, tokens) * images)
    explained = attribute(model, images, tokens, POS, WORD, "explain")
    assert not torch.allclose(plain.raw, explained.raw, atol=1e-7)
    with explain_mode(model):
        by_hand = input_grad(model, images, tokens) * images
    torch.testing.assert_close(explained.raw, by_hand)


def test_explain_mode_keeps_the_forward_output_exactly(model, inputs):
    images, tokens = inputs
    with torch.no_grad():
        plain = model(images, tokens)
        with explain_mode(model):
            explained = model(images, tokens)
    assert torch.equal(plain, explained)


def test_noise_tunnel_is_seeded_and_leaves_the_global_rng_alone(model, inputs):
    images, tokens = inputs
    state = torch.get_rng_state()
    runs = [attribute(model, images, tokens, POS, WORD, "noise_tunnel", steps=4, nt_samples=2,
                      stdevs=0.2, seed=s).raw for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    assert torch.equal(torch.get_rng_state(), state)
    sal = [attribute(model, images, tokens, POS, WORD, "noise_tunnel", nt_base="saliency",
                     nt_samples=2, seed=s).raw for s in (3, 3)]
    assert torch.equal(sal[0], sal[1]) and (sal[0] >= 0).all()


def test_gradcam_matches_a_hand_computed_cam_on_the_vision_grid(model, inputs):
    images, tokens = inputs
    a = attribute(model, images, tokens, POS, WORD, "gradcam")
    assert a.patches.shape == (2, 4, 4) and (a.patches >= 0).all()
    seen = {}

    def keep(module, args, out):
        out.retain_grad()
        seen["grid"] = out  # (B, Dv, g, g)

    handle = model.vision.hook_grid.register_forward_hook(keep)
    try:
        score(model, images, tokens).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    grid = seen["grid"]
    weights = grid.grad.mean((2, 3), keepdim=True)  # (B, Dv, 1, 1)
    cam = torch.relu((weights * grid).sum(1)).detach()  # (B, g, g)
    torch.testing.assert_close(a.patches, cam)
    torch.testing.assert_close(a.pixels, repeat(cam, "b g h -> b (g p) (h q)", p=8, q=8))


def test_word_logit_scores(model, inputs):
    images, tokens = inputs
    logits = model(images, tokens).detach()  # (B, T, V)
    target = WordLogit(model, tokens, -1, torch.tensor([5, 6]), score="logprob")
    expected = logits[:, -1].log_softmax(-1)[torch.arange(2), torch.tensor([5, 6])]
    torch.testing.assert_close(target(images).detach(), expected)
    one_row = WordLogit(model, tokens[0], POS, WORD)  # (T,) tokens serve every image
    with torch.no_grad():
        expected = model(images, tokens[:1].expand(2, -1))[:, POS, WORD]  # (B,)
        torch.testing.assert_close(one_row(images), expected)


def test_compare_explain_reports_consistent_numbers(model, inputs):
    images, tokens = inputs
    r = compare_explain(model, images, tokens, POS, WORD)
    assert r.plain.method == "grad_x_input" and r.explain.method == "explain"
    for t in (r.correlation, r.score, r.reference, r.ratio_plain, r.ratio_explain,
              r.ratio_ref_plain, r.ratio_ref_explain, r.bridge_plain, r.bridge_explain):
        assert t.shape == (2,) and torch.isfinite(t).all()
    assert ((r.correlation >= -1) & (r.correlation <= 1)).all()
    torch.testing.assert_close(r.ratio_explain * r.score, r.explain.raw.sum((1, 2, 3)))
    torch.testing.assert_close(r.ratio_ref_plain * r.reference, r.plain.raw.sum((1, 2, 3)))
    # explain mode's rules cover the bridge: relevance is conserved through it (measured
    # 1.0007 and 1.0002 here; plain gradient x input gives 0.003 and 0.0003)
    assert ((r.bridge_explain - 1).abs() < 0.01).all()
    assert ((r.bridge_explain - 1).abs() < (r.bridge_plain - 1).abs()).all()


def test_bridge_ratio_sees_only_its_own_threads_forward(model, inputs):
    """Thread A's bridge ratio (compare_explain's bridge_*) pauses after its forward passed
    the bridge while thread B runs a forward and a generate on another image: A's ratio and
    B's results must equal those of calls made alone (A's captures are A's own)."""
    images, tokens = inputs
    target = WordLogit(model, tokens, POS, WORD)
    alone = _bridge_ratio(target, images, False)
    other = torch.randn_like(images[:1])

    def thread_b():
        return model(other, tokens[:1]), model.generate(other, max_length=6, temperature=0)

    plain = thread_b()
    ratio, got = while_paused(model, lambda: _bridge_ratio(target, images, False), thread_b)
    assert torch.equal(ratio, alone)
    assert all(torch.equal(g, p) for g, p in zip(got, plain))


def test_caption_attributions_teacher_force_each_prefix(model, inputs):
    images, _ = inputs
    tok = Tokenizer([f"w{i}" for i in range(36)])  # 40 ids, like the model
    ids = [tok.bos_id, 9, 12, 5, tok.eos_id, 0, 0]
    words = caption_attributions(model, tok, images[0], ids, "grad_x_input")
    assert [w for w, _ in words] == ["w5", "w8", "w1"]
    for k, (_, a) in enumerate(words):
        alone = attribute(model, images[:1], torch.tensor([ids[: k + 1]]), k, ids[k + 1],
                          "grad_x_input")
        assert a.pixels.shape == (1, 32, 32)
        torch.testing.assert_close(a.raw, alone.raw, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a.score, alone.score, rtol=1e-4, atol=1e-6)
    with_eos = caption_attributions(model, tok, images[0], ids[1:], "saliency", include_eos=True)
    assert [w for w, _ in with_eos] == ["w5", "w8", "w1", "<eos>"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="lrp"), "known methods: ig, saliency"),
    (dict(position=5), "position 5 is out of range"),
    (dict(position=-6), "out of range"),
    (dict(target_id=40), "target id 40 is outside the vocabulary"),
    (dict(target_id=-1), "outside the vocabulary"),
    (dict(baseline="black"), "unknown baseline 'black'"),
    (dict(baseline=torch.zeros(3, 3)), "does not broadcast"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(stdevs=-0.1), "stdevs must be"),
    (dict(method="noise_tunnel", nt_base="gradcam"), "nt_base must be one of"),
])
def test_bad_inputs_raise_clear_errors(model, inputs, kwargs, match):
    images, tokens = inputs
    args = dict(position=POS, target_id=WORD, method="ig", steps=2) | kwargs
    with pytest.raises(ValueError, match=match):
        attribute(model, images, tokens, **args)


def test_negative_position_counts_from_the_end(model, inputs):
    images, tokens = inputs
    a = attribute(model, images, tokens, -1, WORD, "saliency")
    b = attribute(model, images, tokens, 4, WORD, "saliency")
    assert torch.equal(a.raw, b.raw)
