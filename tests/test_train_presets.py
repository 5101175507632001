"""Training presets: every preset, override and ablation run means what it meant on commit
39815e0 (tests/data holds what the code made of them then)."""

import dataclasses
import json
from pathlib import Path

import pytest

from ssm_bridge.tools import ablate
from ssm_bridge.training import train
from ssm_bridge.training.train_config import TrainConfig, build_train_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
BEFORE = json.loads((ROOT / "tests/data/train_presets_39815e0.json").read_text())


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
    assert got == {k: before[k] for k in ("train", "model", "scenes", "params")}


def test_the_published_ablation_budget_resolves_as_before(monkeypatch):
    before = BEFORE["cases"]["ablation-published-ssm-seed0"]
    got = built(ablate.run_config(ablate.Study(), "ssm", 0), monkeypatch)
    assert got == {k: before[k] for k in ("train", "model", "scenes", "params")}


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
