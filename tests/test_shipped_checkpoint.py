"""The shipped `shapes-tiny` checkpoint: small, pickle-free, accurate, and its card honest."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ssm_bridge import load_pretrained
from ssm_bridge.data import make_scene
from ssm_bridge.data.captions import CAPTION_ATTRIBUTES
from ssm_bridge.tools.model_card import render
from ssm_bridge.training.evaluate import caption_metrics
from ssm_bridge.training.pretrained import SHIPPED_DIR

DIR = SHIPPED_DIR / "shapes-tiny"


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained("shapes-tiny")


def test_files_are_small_and_free_of_pickle():
    files = list(DIR.iterdir())
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20
    names = {f.name for f in files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md",
            "training_record.json", "metrics.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin", ".pkl", ".ckpt"))]
    raw = DIR.joinpath("model.safetensors").read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and json.loads(raw[8 : 8 + header])  # safetensors: JSON header


@pytest.fixture(scope="module")
def first_200(shipped):
    scenes = [make_scene("test", i, shipped.scene_config) for i in range(200)]
    return caption_metrics(shipped.caption([s.image for s in scenes]), scenes)


def test_exact_match_on_200_test_scenes_meets_the_target(first_200):
    """The issue's CI check: >= 95 % exact-match on the first 200 test scenes."""
    assert first_200["exact_match"] >= 0.95, first_200


def test_exact_match_on_200_test_scenes_does_not_regress(first_200):
    # measured for the shipped checkpoint: 98.5 % (197 / 200), lowest attribute relation at
    # 98.97 %; 98.5 % on 1000 (metrics.json)
    assert first_200["exact_match"] >= 0.97, first_200
    assert min(first_200[a] for a in CAPTION_ATTRIBUTES) >= 0.98


def test_metrics_meet_the_shipped_targets():
    """metrics.json (1000 test scenes) and the training record meet the card's targets."""
    from ssm_bridge.tools.model_card import TARGETS

    test = json.loads((DIR / "metrics.json").read_text())["test"]
    record = json.loads((DIR / "training_record.json").read_text())
    assert test["num"] == 1000 and test["exact_match"] >= TARGETS["exact_match"], test
    assert min(test[a] for a in CAPTION_ATTRIBUTES) >= TARGETS["attribute"], test
    assert record["minutes_to_95"] <= TARGETS["minutes_to_95"], record


def test_model_card_quotes_the_measured_record():
    record = json.loads((DIR / "training_record.json").read_text())
    metrics = json.loads((DIR / "metrics.json").read_text())
    card = (DIR / "MODEL_CARD.md").read_text()
    scenes = json.loads((DIR / "scenes.json").read_text())
    command = card.split("```")[1].strip()
    machine = next(line for line in card.splitlines() if line.startswith("- Machine: "))
    expected = render(DIR.name, command, machine.removeprefix("- Machine: "), record, metrics,
                      scenes)
    assert card == expected  # the card is exactly what the files say
    assert command.startswith("python -m ssm_bridge.train --preset=shapes-tiny")  # as run
    assert metrics["test"]["num"] == 1000


def test_caption_cli_matches_the_python_api(shipped, tmp_path):
    scenes = [make_scene("test", i, shipped.scene_config) for i in range(3)]
    paths = []
    for i, s in enumerate(scenes):
        paths.append(tmp_path / f"scene{i}.png")
        Image.fromarray(s.image).save(paths[-1])
    out = subprocess.run([sys.executable, "-m", "ssm_bridge.cli", "caption", *map(str, paths)],
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip().splitlines() == shipped.caption([s.image for s in scenes])
