"""The `ssm-bridge` command: caption (bad files reported, the rest captioned) and eval."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from ssm_bridge.cli import main
from ssm_bridge.data import make_scene
from ssm_bridge.data.captions import CAPTION_ATTRIBUTES
from ssm_bridge.training.evaluate import caption_metrics, parse_caption
from ssm_bridge.training.train import build
from ssm_bridge.training.train_config import build_train_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    trainer = build(build_train_config("test-tiny", {"out_dir": str(run), "max_steps": 3,
                                                     "eval_num": 0}))
    trainer.fit()
    return trainer.save()


def test_caption_reports_bad_files_and_carries_on(checkpoint, tmp_path, capsys):
    good = tmp_path / "scene.png"
    Image.fromarray(make_scene("test", 0).image).save(good)
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)).save(grey16)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    missing = tmp_path / "missing.png"
    code = main(["caption", str(good), str(bad), str(missing), str(grey16),
                 "--checkpoint", str(checkpoint)])
    out, err = capsys.readouterr()
    assert code == 1
    assert len(out.strip().splitlines()) == 2  # one caption per readable image
    assert "notes.png" in err and "missing.png" in err and "scene.png" not in err


def test_eval_prints_a_table_and_writes_json(checkpoint, tmp_path, capsys):
    path = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--num", "6", "--json",
                 str(path)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(path.read_text())
    for key in ["exact_match", "colour", "shape", "size", "relation", "count", "bleu4",
                "cider", "vqa"]:
        assert key in metrics and key in out
    assert metrics["num"] == 6


def test_usage_errors(capsys):
    assert main([]) == 2
    assert main(["fly"]) == 2
    assert main(["--help"]) == 0


def test_caption_metrics_and_parser():
    p = parse_caption("a small red circle left of a large blue square above a green")
    assert p.objects == [("small", "red", "circle"), ("large", "blue", "square"),
                         ("green", "", "")]
    assert p.relations == ["left of", "above"]
    scenes = [make_scene("test", i) for i in range(4)]
    perfect = caption_metrics([s.caption for s in scenes], scenes)
    assert all(v == 1.0 for v in perfect.values())
    assert set(perfect) == {"exact_match", *CAPTION_ATTRIBUTES}  # what the model card lists
    wrong = [s.caption.replace("small", "large", 1) if "small" in s.caption
             else s.caption.replace("large", "small", 1) for s in scenes]
    m = caption_metrics(wrong, scenes)
    assert m["exact_match"] == 0 and m["size"] < 1 and m["colour"] == 1 and m["count"] == 1


# ---------------------------------------------------------------- bad checkpoints, bad fields
def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of one command; argparse's exits count as statuses."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def damaged(checkpoint, tmp_path, kind):
    """A copy of `checkpoint` with one kind of damage; returns the path to pass."""
    if kind == "nonexistent":
        return tmp_path / "nonexistent"
    path = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    if kind == "nan_weights":
        weights = path / "model.safetensors"
        tensors = load_file(weights)
        tensors["decoder.tok_embed.weight"][3, 0] = float("nan")
        save_file(tensors, weights)
    elif kind == "no_weights":  # the last save of a run was killed
        (path / "model.safetensors").unlink()
    elif kind == "dangling_latest":  # a run folder whose `latest` names a missing folder
        run = tmp_path / "run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "latest").write_text("step-0000099")
        return run
    return path


@pytest.mark.parametrize("kind", ["nonexistent", "nan_weights", "no_weights",
                                  "dangling_latest"])
@pytest.mark.parametrize("command", ["caption", "eval", "interpret", "train"])
def test_checkpoint_problems_are_one_line_and_exit_2(checkpoint, tmp_path, capsys, kind,
                                                      command):
    path = str(damaged(checkpoint, tmp_path, kind))
    image = tmp_path / "scene.png"
    Image.fromarray(make_scene("test", 0).image).save(image)
    argv = {"caption": ["caption", str(image), "--checkpoint", path],
            "eval": ["eval", "--checkpoint", path, "--num", "2"],
            "interpret": ["interpret", "--checkpoint", path, "--num", "2"],
            "train": ["train", "--preset=test-tiny", f"--init_from={path}", "--num_train=8",
                      f"--out_dir={tmp_path / 'out'}", "--eval_num=0"]}[command]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "error" in err


@pytest.mark.parametrize("argv, words", [
    (["eval", "--num", "0"], ["--num", ">= 1", "'0'"]),
    (["eval", "--num", "-5"], ["--num", ">= 1"]),
    (["eval", "--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["eval", "--split", "dev"], ["--split", "comp_test"]),
    (["eval", "--json", "/nonexistent-dir/m.json"], ["--json", "does not exist"]),
    (["eval", "--json", "."], ["--json", "is a folder"]),
    (["interpret", "--num", "0"], ["--num", ">= 1"]),
    (["interpret", "--split", "dev"], ["--split", "comp_test"]),
    (["interpret", "--maps", "nope"], ["--maps", "cross_attention"]),
    (["interpret", "--csv", "/nonexistent-dir/t.csv"], ["--csv", "does not exist"]),
    (["caption", "x.png", "--temperature", "-1"], ["--temperature", ">= 0"]),
    (["caption", "x.png", "--temperature", "nan"], ["--temperature", "finite"]),
])
def test_bad_fields_are_named_with_their_allowed_values(argv, words, capsys):
    """Checked before any checkpoint is loaded or any scene evaluated."""
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err
