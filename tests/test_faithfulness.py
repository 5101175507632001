"""Faithfulness metrics on constructed cases whose answer is known."""

import math

import numpy as np
import pytest
import torch

from ssm_bridge import load_pretrained
from ssm_bridge.config import VLMConfig
from ssm_bridge.data import make_scene
from ssm_bridge.interp import faithfulness as fa
from ssm_bridge.model import EnhancedVLM


def test_ranking_orders_and_seeded_random():
    s = torch.tensor([[0.1, 0.9], [0.5, 0.3]])
    assert fa.patch_ranking(s, "morf").tolist() == [1, 2, 3, 0]
    assert fa.patch_ranking(s, "lerf").tolist() == [0, 3, 2, 1]
    r = fa.patch_ranking(s, "random", seed=3)
    assert r.tolist() == fa.patch_ranking(s, "random", seed=3).tolist()
    assert sorted(r.tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="order must be one of"):
        fa.patch_ranking(s, "best")


def test_perturbed_images_switch_exactly_the_ranked_patches():
    image, base = torch.ones(3, 4, 4), torch.zeros(3, 4, 4)
    ranking = torch.tensor([3, 0, 1, 2])  # 2 x 2 grid of 2-pixel patches
    out = fa.perturbed_images(image, base, ranking, [0, 1, 4])
    assert out[0].eq(1).all() and out[2].eq(0).all()
    assert out[1][:, 2:, 2:].eq(0).all() and out[1].sum() == 3 * 12  # patch 3 only
    ins = fa.perturbed_images(image, base, ranking, [1])
    assert ins.shape == (1, 3, 4, 4)
    ins = fa.perturbed_images(image, base, ranking, [1], insertion=True)
    assert ins[0][:, 2:, 2:].eq(1).all() and ins[0].sum() == 3 * 4


def test_normalised_auc_endpoints_and_unreadable_case():
    f = torch.linspace(0, 1, 5)
    assert fa.normalised_auc(f, torch.full((5,), -1.0), -1.0, -3.0) == pytest.approx(1.0)
    assert fa.normalised_auc(f, torch.full((5,), -3.0), -1.0, -3.0) == pytest.approx(0.0)
    half = torch.tensor([-1.0, -2.0, -2.0, -2.0, -2.0])  # half the drop after one step
    assert fa.normalised_auc(f, half, -1.0, -3.0) == pytest.approx(0.25 * 0.75 + 0.75 * 0.5)
    assert math.isnan(fa.normalised_auc(f, torch.zeros(5), -1.0, -1.5))  # < MIN_DROP


def test_insertion_is_lerf_read_backwards():
    image, base = torch.rand(3, 8, 8), torch.zeros(3, 8, 8)
    ranking = fa.patch_ranking(torch.rand(4, 4), "morf")
    counts = list(range(17))
    inserted = fa.perturbed_images(image, base, ranking, counts, insertion=True)
    deleted = fa.perturbed_images(image, base, ranking.flip(0), counts)  # LeRF order
    assert torch.equal(inserted, deleted.flip(0))


def test_average_precision_and_spearman_known_values():
    truth = torch.tensor([True, False, True, False])
    assert fa.average_precision(torch.tensor([0.9, 0.8, 0.7, 0.1]), truth) == \
        pytest.approx((1 + 2 / 3) / 2)
    assert fa.average_precision(torch.tensor([0.9, 0.1, 0.8, 0.2]), truth) == 1.0
    assert fa.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fa.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert fa.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert math.isnan(fa.spearman([1, 1, 1], [1, 2, 3]))


def test_segmentation_true_mask_beats_random_map():
    mask = np.zeros((64, 64), bool)
    mask[8:32, 16:40] = True
    truth_map = fa.pixel_grid(mask, 8)
    good = fa.segmentation_scores(truth_map, mask)
    rand = fa.segmentation_scores(torch.rand(8, 8, generator=torch.Generator().manual_seed(0)),
                                  mask)
    # bilinear upsampling softens the patch edges, so even the true mask is not exact
    assert min(good.values()) > 0.75, good
    for k in good:
        assert good[k] > rand[k], k
    with pytest.raises(ValueError, match="object and background"):
        fa.segmentation_scores(truth_map, np.zeros((64, 64), bool))


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained("shapes-tiny")


def _colour_word(p, seed):
    """(image, ids, position, mask) for the first object's colour word of a test scene."""
    scene = make_scene("test", seed, p.scene_config)
    ids = torch.tensor(p.tokenizer.encode(scene.caption))
    words = scene.caption.split()
    colour = next(i for i, w in enumerate(words) if w in p.scene_config.colours)
    obj = next(o for o in scene.objects if o.colour == words[colour])
    return p.transform(scene.image), ids, colour + 1, obj.mask


@pytest.mark.slow
def test_true_mask_map_beats_random_map_on_deletion_and_insertion(shipped):
    image, ids, position, mask = _colour_word(shipped, 1)
    truth = fa.pixel_grid(mask, 8)
    rand = torch.rand(8, 8, generator=torch.Generator().manual_seed(0))
    # the image's mean colour as baseline: a blurred object keeps its colour
    c_true = fa.perturbation_curves(shipped.model, image, ids, position, truth, baseline="mean")
    c_rand = fa.perturbation_curves(shipped.model, image, ids, position, rand, baseline="mean")
    assert c_true.logprob["morf"].shape == (fa.FRACTIONS + 1,)
    assert c_true.auc["insertion"] == pytest.approx(c_true.auc["lerf"])
    blur = fa.perturbation_curves(shipped.model, image, ids, position, truth)
    assert math.isnan(blur.auc["morf"])  # blurring leaves the colour: nothing to read
    assert c_true.auc["morf"] < c_rand.auc["morf"]
    assert c_true.auc["insertion"] > c_rand.auc["insertion"]
    assert c_true.delta_af > c_rand.delta_af


def _curves_ref(model, image, ids, position, saliency, baseline, order):
    """One image at a time, every count, no shared endpoints: the readable twin."""
    from ssm_bridge.interp.attribution import WordLogit, make_baseline
    base = make_baseline(image[None], baseline, patch_size=model.config.patch_size)[0]
    P = saliency.numel()
    target = WordLogit(model, ids[: position + 1], position - 1, int(ids[position]),
                       score="logprob")
    ranking = fa.patch_ranking(saliency, order)
    with torch.no_grad():
        return torch.stack([target(fa.perturbed_images(image, base, ranking, [k]))[0]
                            for k in (round(P * s / fa.FRACTIONS)
                                      for s in range(fa.FRACTIONS + 1))])


@pytest.mark.slow
def test_batched_curves_of_many_maps_match_the_one_image_loop(shipped):
    image, ids, position, _ = _colour_word(shipped, 2)
    g = torch.Generator().manual_seed(1)
    maps = [torch.rand(8, 8, generator=g) for _ in range(5)]  # 5 x 2 x 15 + 2 = 152 images
    many = fa.perturbation_curves_many(shipped.model, image, ids, position, maps,
                                       baseline="mean", orders=("morf", "lerf"))
    for m, c in zip(maps, many):
        for order in ("morf", "lerf"):
            ref = _curves_ref(shipped.model, image, ids, position, m, "mean", order)
            torch.testing.assert_close(c.logprob[order], ref, atol=1e-4, rtol=1e-4)
        assert set(c.auc) == {"morf", "lerf", "insertion"}
    one = fa.perturbation_curves(shipped.model, image, ids, position, maps[3], baseline="mean")
    assert one.auc["morf"] == pytest.approx(many[3].auc["morf"], abs=1e-5)
    with pytest.raises(ValueError, match="orders must be some of"):
        fa.perturbation_curves_many(shipped.model, image, ids, position, maps,
                                    orders=("insertion",))


def test_randomisation_flags_a_map_that_ignores_the_model():
    torch.manual_seed(0)
    model = EnhancedVLM(VLMConfig.from_preset("tiny")).eval()
    image = torch.randn(1, 3, model.config.img_size, model.config.img_size,
                        generator=torch.Generator().manual_seed(1))
    g = model.config.img_size // model.config.patch_size

    def ignores_model(m):  # the image's own brightness per patch
        return image[0].mean(0).reshape(g, m.config.patch_size, g, -1).mean((1, 3))

    def reads_weights(m):  # the patch embedding's response: changes when it is re-drawn
        with torch.no_grad():
            return m.vision.patch_embed(image)[0].norm(dim=0).reshape(g, g)

    before = [p.clone() for p in model.parameters()]
    flat = fa.cascading_randomisation(model, ignores_model)
    assert flat[0][0].startswith("decoder")
    assert flat[-1][0].startswith("vision") and fa.flag_unfaithful(flat)
    used = fa.cascading_randomisation(model, reads_weights)
    assert used[-2][1] == pytest.approx(1.0)  # untouched until its own group is re-drawn
    assert used[-1][0] == "vision.patch_embed" and not fa.flag_unfaithful(used)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_faithfulness_cli_rows(tmp_path, capsys):
    import json

    from ssm_bridge.cli import main

    out, png = tmp_path / "f.json", tmp_path / "f.png"
    assert main(["faithfulness", "--num", "2", "--maps", "cross_attention,delta",
                 "--json", str(out), "--no-progress", "--plot", str(png)]) == 0
    saved = json.loads(out.read_text())
    rows = saved["rows"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(saved["fractions"]) == 17
    for kind in ("cross_attention", "delta", "random"):  # a mean curve from 1 to 0
        morf = saved["curves"][kind]["mean"]["morf"]
        assert len(morf) == 17 and morf[0] == pytest.approx(1) and morf[-1] == pytest.approx(0)
    assert [(r["map"], r["baseline"]) for r in rows] == [
        (k, b) for k in ("cross_attention", "delta", "random") for b in ("blur", "mean")]
    for r in rows:
        assert r["n_words"] > 0 and 0 <= r["miou"] <= 1
        assert r["insertion"] == pytest.approx(r["lerf"], nan_ok=True)
    assert "cross_attention" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["faithfulness", "--maps", "attention"])
    assert e.value.code == 2 and "unknown map kinds" in capsys.readouterr().err


def test_faithfulness_plots():
    import viz

    fig = viz.deletion_curves({"a": [torch.zeros(5), torch.ones(5)], "random": [torch.ones(5)]},
                              torch.linspace(0, 1, 5))
    assert len(fig.axes[0].lines) == 2
    fig = viz.morf_lerf_panels({"a": [torch.zeros(5)]}, {"a": [torch.ones(5)]},
                               torch.linspace(0, 1, 5))
    (morf,), (lerf,) = fig.axes[0].lines, fig.axes[1].lines
    assert morf.get_color() == lerf.get_color() and list(lerf.get_ydata()) == [1.0] * 5
    fig = viz.cascade_plot({"a": [("decoder.lm_head", 0.9), ("vision.patch_embed", 0.1)]})
    assert len(fig.axes[0].lines) == 2  # the curve and the zero line
    rows = [{"map": "ig", "mean_ap": 0.5, "delta_af": 0.3, "mean_ap_std": 0.1,
             "delta_af_std": 0.2}, {"map": "random", "mean_ap": 0.06, "delta_af": 0.0}]
    fig = viz.plausible_vs_faithful(rows)
    assert fig.axes[0].texts[0].get_text() == "ig"
    assert any(list(line.get_xdata()) == [0.06, 0.06] for line in fig.axes[0].lines)  # random
    fig = viz.cascade_plot({"a": [("decoder.lm_head", 0.9), ("vision.patch_embed", 0.1)]},
                           shuffled={"a": 0.2})
    assert fig.axes[0].lines[1].get_ydata()[0] == 0.2  # the shuffled-caption point
    assert fig.axes[0].get_xticklabels()[-1].get_text() == "shuffled captions"
    with pytest.raises(ValueError, match="points"):
        viz.deletion_curves({"a": [torch.zeros(3)]}, torch.linspace(0, 1, 5))


def test_scores_are_averaged_per_scene_then_over_scenes():
    from ssm_bridge.interp.faithfulness_study import over_scenes

    mean, std = over_scenes([1.0, 3.0, 10.0, float("nan")], [5, 5, 7, 9])
    assert (mean, std) == (pytest.approx(6.0), pytest.approx(4.0))  # scenes: 2, 10; 9 unread
    assert all(math.isnan(x) for x in over_scenes([float("nan")], [1]))


def test_markdown_tables_one_per_metric_group():
    from ssm_bridge.interp.faithfulness_study import CURVE_KEYS, SEGMENT_KEYS, markdown_tables

    def row(kind, b):
        return {"map": kind, "baseline": b, "n_words": 4, "n_read": 3, "scenes": 2,
                "images": 2, **{k: 0.5 for k in CURVE_KEYS + SEGMENT_KEYS},
                **{f"{k}_std": 0.1 for k in CURVE_KEYS + SEGMENT_KEYS}}

    s = {"rows": [row(k, b) for k in ("ig", "random") for b in ("blur", "mean")]}
    loc = [{"map": "ig", "pointing_game": 0.9, "energy_in_mask": 0.4,
            "random_pointing_game": 0.1, "random_energy": 0.05}]
    text = markdown_tables(s, loc)
    assert text.count("| map |") == 3  # blur, mean, segmentation
    assert "4 words, 3 with readable curves in 2 scenes" in text
    seg = text.split("Segmentation")[1]
    assert "| ig | 0.500 ± 0.100 | 0.500 ± 0.100 | 0.500 ± 0.100 | 0.900 | 0.400 |" in seg
    assert "| random |" in seg and "| 0.100 | 0.050 |" in seg


def test_tied_embeddings_are_re_drawn_with_the_output_head(tiny_config):
    """shapes-tiny's output head is its token embedding: re-drawing the head re-draws the
    embedding, so the first cascade group says so and the embedding has no group of its own
    (it would otherwise seem to be re-drawn twice, the second time to no effect)."""
    from conftest import make_model

    tied = make_model(tiny_config.replace(tie_word_embeddings=True))
    names = [n for n, _ in fa.cascade_groups(tied)]
    assert names[0] == "decoder.lm_head = tok_embed"
    assert not any(n.startswith("decoder.tok_embed") for n in names)
    untied = make_model(tiny_config.replace(tie_word_embeddings=False))
    names = [n for n, _ in fa.cascade_groups(untied)]
    assert names[0] == "decoder.lm_head" and "decoder.tok_embed" in names


@pytest.mark.slow
def test_the_attention_free_models_decoder_kinds_are_scored():
    """The leaderboard covers the SSM-decoder kinds when the model has them."""
    from ssm_bridge.interp.faithfulness_study import format_rows, leaderboard

    rows = leaderboard("shapes-all-ssm", n=2, maps=["hidden_rollout", "decoder_state_norm"],
                       baselines=("mean",), progress=False)
    assert [r["map"] for r in rows] == ["hidden_rollout", "decoder_state_norm", "random"]
    assert all(r["n_words"] > 0 and 0 <= r["miou"] <= 1 for r in rows)
    lines = format_rows(rows).splitlines()
    assert lines[2].split()[:2] == ["decoder_state_norm", "mean"]  # the name has its column
