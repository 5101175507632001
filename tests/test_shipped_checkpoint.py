"""The shipped checkpoints (`shapes-tiny`, `shapes-all-ssm`): small, pickle-free, accurate,
and their cards honest, each against the targets of the issue that asked for it
(tools/model_card.CARDS)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ssm_bridge import load_pretrained
from ssm_bridge.data import make_scene
from ssm_bridge.data.captions import CAPTION_ATTRIBUTES
from ssm_bridge.tools.model_card import CARDS, folder_mb, render
from ssm_bridge.training.evaluate import caption_metrics
from ssm_bridge.training.pretrained import SHIPPED_DIR

NAMES = ["shapes-tiny", "shapes-all-ssm"]
# Floors on the first 200 test scenes that a change must not go below: (exact-match,
# lowest attribute). Measured for the shipped weights: shapes-tiny 98.5 % exact, lowest
# attribute relation 98.97 %; shapes-all-ssm 99.0 %, lowest shape 99.49 % (the 1000-scene
# figures are in each metrics.json).
FIRST_200 = {"shapes-tiny": (0.97, 0.98), "shapes-all-ssm": (0.98, 0.99)}
# Targets a shipped checkpoint misses (its card says "not met") would be held here at the
# measured figure instead, so that a change cannot lose more. None is missed today.
MISSED: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module", params=NAMES)
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def shipped(name):
    return load_pretrained(name)


def test_both_are_shipped():
    assert sorted(NAMES) == sorted(p.name for p in SHIPPED_DIR.iterdir() if p.is_dir())


def test_files_are_small_and_free_of_pickle(name):
    d = SHIPPED_DIR / name
    files = list(d.iterdir())
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20
    names = {f.name for f in files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md",
            "training_record.json", "metrics.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin", ".pkl", ".ckpt"))]
    raw = d.joinpath("model.safetensors").read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and json.loads(raw[8 : 8 + header])  # safetensors: JSON header


@pytest.fixture(scope="module")
def first_200(shipped):
    scenes = [make_scene("test", i, shipped.scene_config) for i in range(200)]
    return caption_metrics(shipped.caption([s.image for s in scenes]), scenes)


def test_exact_match_on_200_test_scenes_does_not_regress(name, first_200):
    exact, attribute = FIRST_200[name]
    assert first_200["exact_match"] >= exact, first_200
    assert min(first_200[a] for a in CAPTION_ATTRIBUTES) >= attribute, first_200


def test_metrics_meet_the_shipped_targets(name):
    """metrics.json (1000 test scenes) and the training record meet the card's targets."""
    goals = {**CARDS[name]["targets"], **MISSED.get(name, {})}
    d = SHIPPED_DIR / name
    test = json.loads((d / "metrics.json").read_text())["test"]
    record = json.loads((d / "training_record.json").read_text())
    assert test["num"] == 1000 and test["exact_match"] >= goals["exact_match"], test
    if "attribute" in goals:
        assert min(test[a] for a in CAPTION_ATTRIBUTES) >= goals["attribute"], test
    if "minutes_to_95" in goals:
        assert record["minutes_to_95"] <= goals["minutes_to_95"], record
    if "train_minutes" in goals:
        assert record["train_minutes"] <= goals["train_minutes"], record
    if "size_mb" in goals:
        assert folder_mb(d) <= goals["size_mb"]


def test_model_card_quotes_the_measured_record(name):
    d = SHIPPED_DIR / name
    record = json.loads((d / "training_record.json").read_text())
    metrics = json.loads((d / "metrics.json").read_text())
    card = (d / "MODEL_CARD.md").read_text()
    scenes = json.loads((d / "scenes.json").read_text())
    command = card.split("```")[1].strip()
    machine = next(line for line in card.splitlines() if line.startswith("- Machine: "))
    size = folder_mb(d) if "size_mb" in CARDS[name]["targets"] else None
    expected = render(name, command, machine.removeprefix("- Machine: "), record, metrics,
                      scenes, size)
    assert card == expected  # the card is exactly what the files say
    assert command.startswith("python -m ssm_bridge.") and "--preset=" in command  # as run
    assert metrics["test"]["num"] == 1000


def test_caption_cli_matches_the_python_api(name, shipped, tmp_path):
    scenes = [make_scene("test", i, shipped.scene_config) for i in range(3)]
    paths = []
    for i, s in enumerate(scenes):
        paths.append(tmp_path / f"scene{i}.png")
        Image.fromarray(s.image).save(paths[-1])
    out = subprocess.run([sys.executable, "-m", "ssm_bridge.cli", "caption",
                          "--checkpoint", name, *map(str, paths)],
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip().splitlines() == shipped.caption([s.image for s in scenes])
