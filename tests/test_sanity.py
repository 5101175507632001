"""Sanity checks over every map kind: the cascade, data randomisation, their summary and
command line, and the shuffled-caption training set they need."""

import json

import pytest
import torch

from ssm_bridge import load_pretrained
from ssm_bridge.data.datasets import SceneCaptions
from ssm_bridge.interp import faithfulness as fa
from ssm_bridge.interp import sanity

MAPS = ["cross_attention", "delta", "saliency"]


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained("shapes-tiny")


@pytest.fixture(scope="module")
def cascade_result(shipped):
    return sanity.cascade(shipped, n=3, maps=MAPS, progress=False)


def test_cascade_steps_reach_every_group_and_leave_the_model(shipped):
    before = {k: v.clone() for k, v in shipped.model.state_dict().items()}
    names = []
    for name, work in fa.cascade_steps(shipped.model, seed=0):
        names.append(name)
        assert work is not shipped.model
    assert names == [n for n, _ in fa.cascade_groups(shipped.model)]
    assert all(torch.equal(before[k], v) for k, v in shipped.model.state_dict().items())


@pytest.mark.slow
def test_cascade_moves_each_map_only_once_its_layers_are_random(cascade_result):
    c = cascade_result
    groups = c["groups"]
    assert c["images"] >= 2 and set(c["rho"]) == set(MAPS)
    first_bridge = next(i for i, g in enumerate(groups) if g.startswith("bridge"))
    for i in range(first_bridge):  # decoder groups only: the bridge's Δ is untouched
        assert all(r == pytest.approx(1.0) for r in c["rho"]["delta"][i])
    assert sanity._stats(c["rho"]["delta"][-1])[0] < 0.9  # moved once the bridge is re-drawn
    # saliency reads the whole model: it decorrelates already in the decoder groups
    assert sanity._stats(c["rho"]["saliency"][first_bridge - 1])[0] < 0.9
    n_words = len(c["rho"]["saliency"][0])
    assert all(len(per_group) == n_words for per_group in c["rho"]["cross_attention"])


@pytest.mark.slow
def test_data_randomisation_is_one_for_the_same_model_and_lower_for_a_random_one(shipped):
    same = sanity.data_randomisation(shipped, shipped, n=2, maps=["cross_attention"],
                                     progress=False)
    assert all(r == pytest.approx(1.0, abs=1e-5) for r in same["rho"]["cross_attention"])
    fresh = type(shipped.model)(shipped.model.config)  # untrained, same vocabulary
    torch.manual_seed(0)
    other = sanity.data_randomisation(shipped, fresh, n=2, maps=["cross_attention"],
                                      progress=False)
    assert sanity._stats(other["rho"]["cross_attention"])[0] < 0.9


def test_data_randomisation_refuses_another_vocabulary(shipped):
    other = type(shipped.model)(shipped.model.config.replace(vocab_size=7))
    with pytest.raises(ValueError, match="share the trained model's vocabulary"):
        sanity.data_randomisation(shipped, other, n=1, maps=["delta"], progress=False)


@pytest.mark.slow
def test_summary_rows_flag_and_text(cascade_result):
    shuffled = {"rho": {k: [0.1, 0.3] for k in MAPS}, "maps": MAPS}
    rows = sanity.summarise(cascade_result, shuffled)
    assert [r["map"] for r in rows] == MAPS
    for r in rows:
        assert r["flagged"] == (abs(r["rho_full"]) >= fa.FLAG_RHO)
        assert r["rho_shuffled"] == pytest.approx(0.2)
        assert f"rho_{cascade_result['groups'][0]}" in r
    text = sanity.format_rows(rows)
    assert text.splitlines()[0].split() == ["map", "rho_full", "flagged", "rho_shuffled"]
    assert len(text.splitlines()) == 1 + len(MAPS)
    curves = sanity.cascade_curves(cascade_result)
    assert [g for g, _ in curves["delta"]] == cascade_result["groups"]
    with pytest.raises(ValueError, match="give a cascade result"):
        sanity.summarise()


@pytest.mark.slow
def test_sanity_cli_writes_rows_json_and_plot(tmp_path, capsys):
    from ssm_bridge.cli import main

    out, png = tmp_path / "s.json", tmp_path / "s.png"
    assert main(["sanity", "--num", "2", "--maps", "delta,cross_attention", "--shuffled",
                 "shapes-tiny", "--json", str(out), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[0] == "map" and len(printed) == 3
    saved = json.loads(out.read_text())
    assert {r["map"] for r in saved["rows"]} == {"delta", "cross_attention"}
    assert all(r["rho_shuffled"] == pytest.approx(1.0) for r in saved["rows"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sanity_cli_bad_settings_are_one_line(capsys):
    from ssm_bridge.cli import main

    with pytest.raises(SystemExit) as e:
        main(["sanity", "--no-cascade"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "give --shuffled" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main(["sanity", "--num", "1", "--shuffled", "/no/such/folder"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and len(err.splitlines()) == 1


def test_shuffled_captions_pair_each_image_with_another_scenes_text():
    plain = SceneCaptions("train", 24, progress=False)
    shuffled = SceneCaptions("train", 24, progress=False, shuffle_text_seed=5)
    again = SceneCaptions("train", 24, progress=False, shuffle_text_seed=5)
    texts = [plain.example(i).answer for i in range(24)]
    moved = [shuffled.example(i).answer for i in range(24)]
    assert sorted(moved) == sorted(texts) and moved != texts  # a permutation of the texts
    assert moved == [again.example(i).answer for i in range(24)]  # seeded
    assert torch.equal(shuffled[3][0], plain[3][0])  # images stay where they were
    j = int(shuffled.text_of[3])
    assert torch.equal(shuffled[3][1], plain[j][1])  # ... with item j's caption


def test_shuffle_captions_is_refused_for_coco(tmp_path):
    from ssm_bridge.training.train import build_data
    from ssm_bridge.training.train_config import TrainConfig

    cfg = TrainConfig(data="coco", shuffle_captions=True)
    with pytest.raises(ValueError, match="scene world only"):
        build_data(cfg)
