"""Causal tracing on the shipped checkpoint: pairs, the identity check, and the map."""

import numpy as np
import pytest

from ssm_bridge import load_pretrained
from ssm_bridge.interp import tracing as tr


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained("shapes-tiny")


@pytest.fixture(scope="module")
def colour_pairs(shipped):
    return tr.make_pairs(shipped, "colour", 4)


def test_pairs_differ_in_exactly_the_traced_word(shipped, colour_pairs):
    for p in colour_pairs:
        a, b = p.clean.caption.split(), p.corrupt.caption.split()
        assert [i for i in range(len(a)) if a[i] != b[i]] == [p.position - 1]
        assert a[p.position - 1] in shipped.scene_config.colours
        assert shipped.tokenizer.decode([p.corrupt_id]) == b[p.position - 1]
    again = tr.make_pairs(shipped, "colour", 4)
    assert [p.corrupt_id for p in again] == [p.corrupt_id for p in colour_pairs]  # seeded


def test_position_pairs_flip_one_relation_word_and_keep_the_object_order(shipped):
    """A sideways move reorders the left-to-right caption: before the fix no position
    pair differed in one word (0 of 16 in 320 scenes)."""
    pairs = tr.make_pairs(shipped, "position", 4)
    for p in pairs:
        a, b = p.clean.caption.split(), p.corrupt.caption.split()
        assert [i for i in range(len(a)) if a[i] != b[i]] == [p.position - 1]
        assert {a[p.position - 1], b[p.position - 1]} == {"above", "below"}
        assert p.clean.objects[0].centre[0] == p.corrupt.objects[0].centre[0]


@pytest.mark.parametrize("metric", tr.METRICS)
def test_restoring_the_whole_bridge_output_restores_everything(shipped, colour_pairs, metric):
    # every path from the image to the caption passes the bridge output
    effect = tr.site_effect(shipped.model, colour_pairs, "bridge.hook_out",
                            transform=shipped.transform, metric=metric)
    assert effect == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_bridge_output_trace_points_at_the_changed_object(shipped, colour_pairs):
    pair = colour_pairs[0]
    r = tr.trace(shipped.model, [pair], sites=("bridge_out", "cross"),
                 transform=shipped.transform, max_batch=40, progress=False)
    last = r.effect[f"bridge_out.{len(shipped.model.bridge.layers) - 1}"]  # (65,)
    assert last.shape == (shipped.model.config.num_image_tokens,)
    assert r.effect["cross.0"].shape == (1,) and r.total_effect > 0
    # the image token that restores most of the word is a patch of the changed object
    covered = pair.clean.objects[0].mask.reshape(8, 8, 8, 8).any((1, 3)).ravel()  # (64,)
    assert covered[int(np.argmax(last[1:]))]
    assert last[1:][~covered].max() < last[1:][covered].max() / 2


def test_bad_arguments_are_one_line_errors(shipped, colour_pairs):
    with pytest.raises(ValueError, match="attribute must be one of"):
        tr.make_pairs(shipped, "texture", 2)
    with pytest.raises(ValueError, match="sites must be some of"):
        tr.trace(shipped.model, colour_pairs, sites=("attention",), transform=shipped.transform)
    with pytest.raises(ValueError, match="metric must be one of"):
        tr.site_effect(shipped.model, colour_pairs, "bridge.hook_out",
                       transform=shipped.transform, metric="kl")
    with pytest.raises(ValueError, match="pass transform="):
        tr.site_effect(shipped.model, colour_pairs, "bridge.hook_out")


def test_trace_cli_writes_effects_and_heatmap(tmp_path, capsys):
    from ssm_bridge.cli import main

    out, png = tmp_path / "t.json", tmp_path / "t.png"
    assert main(["trace", "--num", "1", "--sites", "cross,bridge_out", "--json", str(out),
                 "--plot", str(png), "--no-progress"]) == 0
    effects = __import__("json").loads(out.read_text())
    assert set(effects) == {"cross.0", "bridge_out.0", "bridge_out.1"}
    assert len(effects["bridge_out.1"]) == 65 and png.stat().st_size > 1000
    assert "1 colour pairs, total effect" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["trace", "--sites", "attention"])
    assert e.value.code == 2 and "choose from" in capsys.readouterr().err
