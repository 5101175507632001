"""Localisation metrics on hand-made maps and masks, words matched to scene objects, and
the issue's target: on the shipped checkpoint, cross-attention and integrated gradients
point at the named object at least twice as often as a random map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssm_bridge.cli import main as cli_main
from ssm_bridge.data import SceneConfig, make_scene
from ssm_bridge.interp import localization as loc
from ssm_bridge.interp.interpret import format_table, localisation_table, main

pytestmark = pytest.mark.usefixtures("one_thread")


def block_mask(cells, g: int = 4, size: int = 32) -> np.ndarray:
    """(size, size) bool mask covering the listed (row, col) patches of a g x g grid."""
    mask = np.zeros((size, size), bool)
    p = size // g
    for r, c in cells:
        mask[r * p:(r + 1) * p, c * p:(c + 1) * p] = True
    return mask


def peak(r: int, c: int, g: int = 4) -> torch.Tensor:
    m = torch.zeros(g, g)
    m[r, c] = 1.0
    return m


def test_pointing_game_hits_inside_and_misses_outside():
    mask = block_mask([(1, 2)])
    assert loc.pointing_game(peak(1, 2), mask)
    assert not loc.pointing_game(peak(2, 1), mask)
    one_pixel = np.zeros((32, 32), bool)
    one_pixel[15, 23] = True  # the last pixel of patch (1, 2): overlap is enough
    assert loc.pointing_game(peak(1, 2), one_pixel)
    assert not loc.pointing_game(peak(1, 1), one_pixel)


def test_flat_map_never_points():
    mask = block_mask([(0, 0)])
    assert not loc.pointing_game(torch.zeros(4, 4), mask)
    assert not loc.pointing_game(torch.full((4, 4), float("nan")), mask)


def test_energy_of_uniform_map_is_mask_area_fraction():
    mask = block_mask([(0, 0), (3, 1), (2, 2)])
    assert loc.energy_in_mask(torch.ones(4, 4), mask) == pytest.approx(3 / 16)
    odd = np.zeros((32, 32), bool)
    odd[3:20, 5:9] = True  # not aligned to patches
    assert loc.energy_in_mask(torch.full((4, 4), 2.0), odd) == pytest.approx(odd.mean())


def test_energy_clips_negative_values_and_counts_mass():
    mask = block_mask([(1, 1)])
    m = -torch.ones(4, 4)
    m[1, 1] = 0.5
    assert loc.energy_in_mask(m, mask) == pytest.approx(1.0)
    m[0, 0] = 1.5
    assert loc.energy_in_mask(m, mask) == pytest.approx(0.25)
    assert loc.energy_in_mask(-torch.ones(4, 4), mask) == 0.0


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="2-D grid"):
        loc.pointing_game(torch.zeros(1, 4, 4), block_mask([(0, 0)]))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        loc.energy_in_mask(torch.zeros(4, 4), np.zeros((1, 32, 32), bool))


def test_random_baseline_is_seeded_and_near_coverage():
    masks = [block_mask([(i % 4, (3 * i) % 4)]) for i in range(400)]
    a = loc.random_scores(masks, (4, 4), seed=3)
    assert a == loc.random_scores(masks, (4, 4), seed=3)
    assert a != loc.random_scores(masks, (4, 4), seed=4)
    assert a["pointing_game"] == pytest.approx(1 / 16, abs=0.04)  # one patch of 16
    assert a["energy_in_mask"] == pytest.approx(1 / 16, abs=0.01)


@pytest.mark.parametrize("index", range(12))
def test_object_words_on_real_scene_captions(index):
    scene = make_scene("test", index, SceneConfig())
    words = scene.caption.split()
    pairs = loc.object_words(scene, words)
    assert [j for _, j in pairs] == list(range(len(scene.objects)))
    assert [words[i] for i, _ in pairs] == [o.shape for o in scene.objects]
    assert loc.object_words(scene.caption, words) == pairs
    colours = loc.object_words(scene, words, role="colour")
    assert [words[i] for i, _ in colours] == [o.colour for o in scene.objects]


def test_object_words_skips_captions_whose_objects_differ():
    scene = make_scene("test", 1, SceneConfig())
    words = scene.caption.split()
    wrong = [w if w != scene.objects[0].colour else "nocolour" for w in words]
    assert loc.object_words(scene, wrong) is None
    assert loc.object_words(scene, words[:-1]) is None  # truncated
    assert loc.object_words(scene, [*words, "left", "of", "a"]) is None
    assert loc.object_words(scene, ["circle"]) is None
    with pytest.raises(ValueError, match="role"):
        loc.object_words(scene, words, role="noun")


def test_match_phrases_names_objects_of_any_caption():
    """Right or wrong, each generated phrase is matched to the object it names by its
    attributes, not by its place; a phrase sharing nothing names no object."""
    scene = make_scene("test", 0)
    assert scene.caption == "a large blue square above a small red diamond"
    exact = loc.match_phrases(scene, scene.caption.split())
    assert [(m.obj, m.exact) for m in exact] == [(0, True), (1, True)]
    wrong = loc.match_phrases(scene, "a large red square above a small red diamond".split())
    assert wrong[0].obj == 0 and wrong[0].agree == (True, False, True)
    swapped = loc.match_phrases(scene, "a small red diamond below a large blue square".split())
    assert [m.obj for m in swapped] == [1, 0] and all(m.exact for m in swapped)
    stray = loc.match_phrases(scene, "a small red diamond below a small green circle".split())
    assert stray[0].obj == 1 and stray[1].obj is None  # object 0 shares none of them
    short = loc.match_phrases(scene, "a large blue".split())
    assert short[0].phrase == ("large", "blue", "") and short[0].agree == (True, True, False)
    words = "a large red square above a small red diamond".split()
    assert loc.word_match(scene, words, 2)[1] == "colour"
    assert loc.word_match(scene, words, 4) is None  # "above"


def test_parse_objects_reads_every_relation():
    words = "a small red circle left of a large blue square above a small green star".split()
    objs = loc.parse_objects(words)
    assert [(o["shape"], o["shape_at"]) for o in objs] == [("circle", 3), ("square", 9),
                                                           ("star", 14)]
    assert loc.parse_objects("a small red circle right of".split()) is None
    assert loc.parse_objects("an small red circle".split()) is None  # the grammar's article: a


# ---------------------------------------------------------------- the shipped checkpoint
@pytest.fixture(scope="module")
def shipped_rows():
    from ssm_bridge import load_pretrained

    return localisation_table(load_pretrained("shapes-tiny"), n=100, split="test",
                              maps=("cross_attention", "ig"), seed=0, progress=False)


@pytest.mark.parametrize("kind", ["cross_attention", "ig"])
def test_shipped_maps_point_twice_as_often_as_random(shipped_rows, kind):
    """The issue's target: pointing game >= 2x the random map's, over 100 test scenes.
    Measured (`ssm-bridge interpret --num 100`): cross-attention 0.295 against 0.126 for a
    random map (2.35x), IG 0.865 (6.9x)."""
    row = next(r for r in shipped_rows if r["map"] == kind)
    assert row["n"] >= 100 and row["images"] + row["skipped"] == 100
    assert row["pointing_game"] >= 2 * row["random_pointing_game"], format_table(shipped_rows)


def test_cli_writes_json_and_csv(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["--num", "2", "--maps", "cross_attention,gate", "--json", str(out),
                 "--csv", str(tmp_path / "rows.csv"), "--no-progress"]) == 0
    rows = json.loads(out.read_text())
    assert [r["map"] for r in rows] == ["cross_attention", "gate"]
    assert "pointing" in capsys.readouterr().out
    assert (tmp_path / "rows.csv").read_text().startswith("map,pointing_game")
    with pytest.raises(SystemExit) as bad:  # one line from the argument parser, exit 2
        main(["--num", "1", "--maps", "nope", "--no-progress"])
    assert bad.value.code == 2 and "unknown map kinds ['nope']" in capsys.readouterr().err
    png = tmp_path / "bars.png"
    assert cli_main(["interpret", "--num", "1", "--maps", "implicit", "--plot", str(png),
                     "--no-progress"]) == 0
    assert png.stat().st_size > 0
