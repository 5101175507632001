"""Training presets and the typed TrainConfig: a training preset names its model preset,
`TrainConfig.model` / `.scenes` are a VLMConfig and a SceneConfig, and every preset, run
folder and ablation run means what it meant before (tests/data holds what the code made of
them on commit 39815e0, before the change)."""

import dataclasses
import json
from pathlib import Path

import pytest
from test_train_options import one_error_line

from ssm_bridge.config import PRESETS, VLMConfig
from ssm_bridge.data import Tokenizer
from ssm_bridge.tools import ablate
from ssm_bridge.training import train
from ssm_bridge.training.checkpoint import read_config
from ssm_bridge.training.train_config import (
    TRAIN_PRESETS,
    TrainConfig,
    build_train_config,
    parse_overrides,
)
from ssm_bridge.training.trainer import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BEFORE = json.loads((ROOT / "tests/data/train_presets_39815e0.json").read_text())
SMALL = ["--preset=test-tiny", "--num_train=8", "--batch_size=2", "--eval_num=0",
         "--threads=1"]


def config_of(argv: list[str]) -> TrainConfig:
    """The TrainConfig the command line `argv` makes (as train.main reads it)."""
    (preset,) = [a.split("=", 1)[1] for a in argv if a.startswith("--preset=")]
    return build_train_config(preset, parse_overrides([a for a in argv
                                                       if not a.startswith("--preset=")]))


def built(cfg: TrainConfig, monkeypatch) -> dict:
    """What train.build makes of `cfg`, without drawing its training scenes: the TrainConfig's
    own fields, the model's config and parameter count, and the scene config drawn with."""
    seen = {}

    class Scenes:  # stands in for SceneCaptions: records the scene config
        def __init__(self, split, n, scene_config, *args, **kwargs):
            seen["scenes"] = dataclasses.asdict(scene_config)
            self.collate = None

    def trainer(cfg, model, *args, **kwargs):
        seen.update(model=model.config.to_dict(), params=model.num_parameters())

    monkeypatch.setattr(train, "SceneCaptions", Scenes)
    monkeypatch.setattr(train, "make_scene", lambda *args, **kwargs: None)
    monkeypatch.setattr(train, "Trainer", trainer)
    train.build(cfg)
    top = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "scenes")}
    return json.loads(json.dumps({"train": top, **seen}))


@pytest.mark.parametrize("case", [c for c in BEFORE["cases"] if not c.startswith("ablation")])
def test_presets_and_overrides_resolve_as_before(case, monkeypatch):
    before = BEFORE["cases"][case]
    got = built(config_of(before["argv"]), monkeypatch)
    assert same_as_before(got, before)


def test_the_published_ablation_budget_resolves_as_before(monkeypatch):
    before = BEFORE["cases"]["ablation-published-ssm-seed0"]
    got = built(ablate.run_config(ablate.Study(watch=0), "ssm", 0), monkeypatch)
    assert same_as_before(got, before)
    # The watch (val captions while training, on by default since) changes only fields
    # the budget leaves out, so the published runs still match.
    watched = ablate.run_config(ablate.Study(), "ssm", 0).to_dict()
    plain = ablate.run_config(ablate.Study(watch=0), "ssm", 0).to_dict()
    differ = {k for k in watched if watched[k] != plain[k]}
    assert differ and differ <= set(ablate.NEUTRAL)


def same_as_before(got: dict, before: dict) -> bool:
    """Equal on every field the fixture holds; VLMConfig and TrainConfig fields added since
    (the decoder and vision types, shuffle_captions, ...) must hold their defaults, which
    build the model and its training as before."""
    defaults = {"model": VLMConfig().to_dict(), "train": TrainConfig().to_dict()}
    for part in ("model", "train"):
        default = json.loads(json.dumps(defaults[part]))
        added = {k: v for k, v in got[part].items() if k not in before[part]}
        assert added == {k: default[k] for k in added}, added
        got = {**got, part: {k: v for k, v in got[part].items() if k in before[part]}}
    assert got == {k: before[k] for k in ("train", "model", "scenes", "params")}
    return True


def test_an_ablation_run_builds_the_same_model_and_data_as_before():
    """ablate builds through train.build_data / train.build: same settings, same initial
    weights and first batch as its own copy of them made."""
    study = ablate.Study(variants=["mlp"], seeds=[1], steps=2, preset="test-tiny",
                         overrides={"num_train": 8, "scenes": {"max_objects": 2,
                                                               "min_objects": 1}})
    cfg = ablate.run_config(study, "mlp", 1)
    trainer = ablate.make_trainer(cfg, ablate.prepare_data(cfg, progress=False))
    images, tokens, targets = trainer.batch_at(0, 0)
    before = BEFORE["ablation_tiny_run"]
    weights = sum(float(t.double().sum()) for t in trainer.model.state_dict().values())
    assert trainer.model.num_parameters() == before["params"]
    assert weights == pytest.approx(before["weights_sum"], abs=1e-4)
    assert float(images.double().sum()) == pytest.approx(before["images_sum"], abs=1e-3)
    assert tokens.tolist() == before["tokens"] and targets.tolist() == before["targets"]
    assert trainer.cfg.model == trainer.model.config  # the config as built: real vocab_size


def test_each_training_preset_names_a_model_preset():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, preset in TRAIN_PRESETS.items():
        assert preset["model"] in PRESETS, name
        assert set(preset) - {"model", "scenes"} <= fields, name
        cfg = build_train_config(name, {})
        assert cfg.model == VLMConfig.from_preset(preset["model"])
        assert cfg.scenes.img_size == cfg.model.img_size
    # The shipped checkpoint is the shapes-tiny model preset with the scene vocabulary.
    cfg = build_train_config("shapes-tiny", {})
    shipped = read_config(ROOT / "ssm_bridge/checkpoints/shapes-tiny")
    assert shipped == cfg.model.replace(vocab_size=len(Tokenizer.for_scenes(cfg.scenes)))


@pytest.mark.parametrize("preset", ["shapes-tiny", "test-tiny"])
def test_a_config_saved_in_the_old_dict_form_loads_as_the_same_config(preset):
    """train_config.json before the typed config held only the model and scene fields
    given; read back, the rest are at their defaults, as they were then."""
    assert TrainConfig.from_dict(BEFORE["saved_form"][preset]) == build_train_config(preset, {})
    cfg = build_train_config(preset, {"model": {"ssm_scan_order": "cross"}})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_resume_continues_a_run_folder_saved_in_the_old_dict_form(tmp_path, capsys):
    run = [*SMALL, f"--out_dir={tmp_path}", "--max_steps=2", "--save_every=2"]
    assert train.main(run) == 0
    new = json.loads((tmp_path / "train_config.json").read_text())
    assert new["model"]["vocab_size"] == len(Tokenizer.for_scenes(config_of(run).scenes))
    old_form = BEFORE["saved_form"]["test-tiny"]
    old = {**new, "model": old_form["model"], "scenes": old_form["scenes"]}
    (tmp_path / "train_config.json").write_text(json.dumps(old))
    state_path = latest_checkpoint(tmp_path) / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "train_config": old}))
    # The same run, but for vocab_size: the old form left it out (it is the tokenizer's).
    read = TrainConfig.from_dict(old)
    vocab = new["model"]["vocab_size"]
    assert dataclasses.replace(read, model=read.model.replace(vocab_size=vocab)) == \
        TrainConfig.from_dict(new)
    capsys.readouterr()
    assert train.main([*run, "--max_steps=3", "--resume"]) == 0
    assert "resumed from step 2" in capsys.readouterr().err
    assert latest_checkpoint(tmp_path).name == "step-0000003"
    rewritten = json.loads((tmp_path / "train_config.json").read_text())
    assert TrainConfig.from_dict(rewritten).model.vocab_size == vocab


@pytest.mark.parametrize("option, words", [
    ("--scenes.max_objects=0", "SceneConfig: need 1 <= min_objects <= max_objects"),
    ('--scenes.shapes="circle"', "SceneConfig: shapes must be a list of (a string)"),
    ('--scenes.shapes=["blob"]', "SceneConfig: shapes must be distinct names"),
    ("--model.img_size=33", "img_size (33) must be a multiple of patch_size (8)"),
    ("--model.vocab_size=99", "model.vocab_size is the tokenizer's"),
])
def test_a_bad_model_or_scene_value_is_one_line(tmp_path, capsys, option, words):
    assert train.main([*SMALL, f"--out_dir={tmp_path}", option]) == 2
    assert words in one_error_line(capsys)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing trained


def test_a_config_that_is_not_typed_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"^model must be a VLMConfig .*got \{'img_size'"):
        TrainConfig(model={"img_size": 32})
    for d, words in [({"model": {"wings": 2}}, "unknown VLMConfig field"),
                     ({"scenes": {"wings": 2}}, "unknown SceneConfig field"),
                     ({"colour": "red"}, "unknown TrainConfig field"),
                     ({"model": [1]}, "model must be a JSON object")]:
        with pytest.raises(ValueError, match=words):
            TrainConfig.from_dict(d)
