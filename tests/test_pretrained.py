"""load_pretrained on damaged checkpoint folders: every file is checked before use and
every problem is a one-line CheckpointError naming the file."""

import json
import shutil

import pytest
from conftest import make_model

from ssm_bridge import VLMConfig, load_pretrained
from ssm_bridge.data import ImageTransform, SceneConfig, Tokenizer
from ssm_bridge.training.checkpoint import CheckpointError, CheckpointNotFoundError
from ssm_bridge.training.pretrained import training_record, write_extras
from ssm_bridge.training.trainer import CHECKPOINT_FILES, rng_name


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A complete tiny checkpoint folder (model, tokenizer, preprocess.json, scenes.json)."""
    path = tmp_path_factory.mktemp("ckpt")
    scenes = SceneConfig(img_size=32)
    tokenizer = Tokenizer.for_scenes(scenes)
    make_model(VLMConfig.from_preset("tiny", vocab_size=len(tokenizer))).save_pretrained(path)
    tokenizer.save(path / "tokenizer.json")
    write_extras(path, ImageTransform(32), scenes)
    return path


@pytest.fixture
def ckpt(good, tmp_path):
    return shutil.copytree(good, tmp_path / "ckpt")


def test_a_good_folder_loads(ckpt):
    p = load_pretrained(ckpt)
    assert p.transform.img_size == 32 and p.scene_config == SceneConfig(img_size=32)


def edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("name, damage, words", [
    ("preprocess.json", lambda p: p.write_text("{not json"), ["not valid JSON"]),
    ("preprocess.json", lambda p: edit_json(p, img_size=10**5),
     ["img_size is 100000", "32 x 32"]),
    ("preprocess.json", lambda p: edit_json(p, img_size="32"), ["img_size", "an integer"]),
    ("preprocess.json", lambda p: edit_json(p, mean=[0.5, "x", 0.5]), ["mean", "list of 3"]),
    ("preprocess.json", lambda p: edit_json(p, std=[0.5, 0.0, 0.5]), ["std > 0"]),
    ("preprocess.json", lambda p: edit_json(p, resize="fast"), ["unknown field", "resize"]),
    ("preprocess.json", lambda p: p.write_text("[1, 2]"), ["JSON object", "list"]),
    ("preprocess.json", lambda p: p.write_text("[" * 100_000), ["not valid JSON"]),
    ("scenes.json", lambda p: p.write_text("\x00\xff garbage"), ["not valid JSON"]),
    ("scenes.json", lambda p: edit_json(p, min_objects="1"), ["min_objects", "an integer"]),
    ("scenes.json", lambda p: edit_json(p, shapes="circle"), ["shapes", "a list of"]),
    ("scenes.json", lambda p: edit_json(p, img_size=10**5), ["img_size", "limit of 4096"]),
    ("scenes.json", lambda p: edit_json(p, colour="red"), ["unknown field", "colour"]),
    ("scenes.json", lambda p: edit_json(p, max_objects=99), ["max_objects"]),
    ("tokenizer.json", lambda p: p.write_text("{"), ["not valid JSON"]),
    ("tokenizer.json", lambda p: p.write_text(" " * 10**6), ["bytes", "far too big"]),
    ("tokenizer.json", lambda p: p.unlink(), ["not found"]),
])
def test_damaged_extra_files_name_the_file(ckpt, name, damage, words):
    damage(ckpt / name)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(ckpt)
    msg = str(e.value)
    assert name in msg and "\n" not in msg
    for w in words:
        assert w in msg


def test_run_folders_follow_latest_or_say_what_is_missing(ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointNotFoundError, match="without a complete checkpoint"):
        load_pretrained(run)
    step = run / "checkpoints" / "step-0000010"
    shutil.copytree(ckpt, step)
    for name in (*CHECKPOINT_FILES, rng_name(0)):  # what a training save writes beside it
        if not (step / name).exists():
            (step / name).write_text("{}")
    (run / "checkpoints" / "latest").write_text("step-0000010")
    assert load_pretrained(run).path == run / "checkpoints" / "step-0000010"
    (run / "checkpoints" / "latest").write_text("step-0000020")  # a save killed mid-way
    assert load_pretrained(run).path == step  # the newest complete one, and it says so
    assert "latest names step-0000020, which is incomplete" in capsys.readouterr().err
    shutil.rmtree(step)
    with pytest.raises(CheckpointNotFoundError, match=r"step-0000020.*no other checkpoint"):
        load_pretrained(run)


@pytest.mark.parametrize("where", ["nonexistent", "empty"])
def test_missing_checkpoints_are_one_line(tmp_path, where):
    path = tmp_path / where
    if where == "empty":
        path.mkdir()
    with pytest.raises(CheckpointNotFoundError) as e:
        load_pretrained(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_training_record_skips_a_torn_last_line(tmp_path):
    """A kill mid-write leaves half a line at the end of metrics.jsonl: the record is
    read from the complete lines (it raised a JSONDecodeError before)."""
    lines = [{"kind": "train", "step": 10, "samples": 40, "train_seconds": 60.0, "loss": 2.0},
             {"kind": "eval", "step": 10, "samples": 40, "train_seconds": 60.0,
              "exact_match": 0.96},
             {"kind": "train", "step": 20, "samples": 80, "train_seconds": 120.0, "loss": 1.0}]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    (tmp_path / "metrics.jsonl").write_text(text + '{"kind": "train", "step": 3')
    record = training_record(tmp_path)
    assert (record["steps"], record["samples"], record["train_minutes"]) == (20, 80, 2.0)
    assert record["step_to_95"] == 10 and record["step_to_98"] is None
    (tmp_path / "metrics.jsonl").write_text('{"kind": "tra')
    with pytest.raises(ValueError, match="no complete record"):
        training_record(tmp_path)


def test_an_exported_checkpoint_records_its_run_up_to_its_own_step(tmp_path):
    """Shipping step 20 of a run that went on to step 30 must not claim the 30 steps."""
    from ssm_bridge.training.pretrained import export_checkpoint

    lines = [{"kind": "train", "step": s, "samples": 4 * s, "train_seconds": 6.0 * s,
              "loss": 1.0} for s in (10, 20, 30)]
    lines.insert(2, {"kind": "eval", "step": 20, "samples": 80, "train_seconds": 120.0,
                     "exact_match": 0.97})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    ckpt = tmp_path / "checkpoints" / "step-0000020"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 20}))
    dest = export_checkpoint(ckpt, tmp_path / "shipped", tmp_path)
    record = json.loads((dest / "training_record.json").read_text())
    assert (record["steps"], record["train_minutes"], record["step_to_95"]) == (20, 2.0, 20)
    assert training_record(tmp_path)["steps"] == 30
