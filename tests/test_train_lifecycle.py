"""Checkpoint lifecycle: a kill at any point of a save, a full disk, torn metrics, stale
temporary folders and a broken `latest` all leave a run that resumes exactly."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_train import tiny

from ssm_bridge.training import train_config as train_config_module
from ssm_bridge.training import trainer as trainer_module
from ssm_bridge.training.checkpoint import load_weights
from ssm_bridge.training.train import build, main
from ssm_bridge.training.trainer import Trainer, latest_checkpoint, read_metrics

# Small and quick: 6 steps of 4 samples, a checkpoint at step 3 and at the end; dropout
# makes the result depend on the restored RNG state too.
RUN = dict(max_steps=6, save_every=3, keep_checkpoints=2, num_train=16, batch_size=4,
           log_every=1, eval_num=0, model={"dropout": 0.1})
ARGV = ["--preset=test-tiny", "--max_steps=6", "--save_every=3", "--num_train=16",
        "--batch_size=4", "--log_every=1", "--eval_num=0", "--threads=1", "--model.dropout=0.1"]


PLOT = Trainer.plot


@pytest.fixture
def no_plot(monkeypatch):
    """Drawing the loss curve (~0.3 s a run) is not what these tests are about."""
    monkeypatch.setattr(Trainer, "plot", lambda self: None)


class Killed(BaseException):
    """A SIGKILL, simulated: no `except Exception` of the trainer catches it, so nothing
    after the kill point runs (finally blocks aside, which a kill skips too)."""


def arm_kill(monkeypatch, kill_at: int | None) -> list[str]:
    """Make the kill_at-th rename or folder delete inside a save() at the last step raise
    Killed before it happens (None: count them only). Returns the events seen."""
    events: list[str] = []
    armed = [False]
    real_replace, real_rmtree, real_save = os.replace, shutil.rmtree, Trainer.save

    def hit(what: str) -> None:
        if armed[0]:
            events.append(what)
            if len(events) - 1 == kill_at:
                raise Killed(what)

    def replace(src, dst):
        hit(f"rename {Path(src).parent.name}/{Path(src).name} -> {Path(dst).name}")
        real_replace(src, dst)

    def rmtree(path, *a, **kw):
        hit(f"delete {Path(path).name}")
        real_rmtree(path, *a, **kw)

    def save(self):
        armed[0] = self.step == self.cfg.max_steps
        try:
            return real_save(self)
        finally:
            armed[0] = False

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    monkeypatch.setattr(Trainer, "save", save)
    return events


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, why) -> None:
    sb = b.state_dict()
    for name, t in a.state_dict().items():
        assert torch.equal(t, sb[name]), (why, name)


def assert_clean_finished_run(run: Path, step: int) -> None:
    ckpt = latest_checkpoint(run)
    assert ckpt.name == f"step-{step:07d}"
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    keys = [(r["kind"], r["step"]) for r in read_metrics(run / "metrics.jsonl")]
    assert len(keys) == len(set(keys)), keys  # no step logged twice
    assert [s for k, s in keys if k == "train"] == list(range(1, step + 1))


@pytest.mark.slow
@pytest.mark.parametrize("earlier_step_6", [False, True])
def test_a_kill_anywhere_in_the_final_save_resumes_exactly(tmp_path, monkeypatch, no_plot,
                                                           earlier_step_6):
    """A run resumed from step 3 is killed at the renames and deletes of its final save;
    --resume then finishes bit-identical to an uninterrupted run. Before the fix the final
    step was saved twice, the second save deleted the complete folder before renaming the
    new one in, and a kill there left `latest` naming a folder without weights: resume
    crashed. With `earlier_step_6`, a complete step-6 folder of an earlier attempt (killed
    after its rename, before `latest` moved) is in the way: it is renamed aside, not
    deleted, until the new one is in place."""
    straight = build(tiny(tmp_path / "straight", **RUN))
    straight.fit()
    cfg = {**RUN, "keep_checkpoints": 1}  # the final save also deletes step 3

    def attempt(name: str) -> Path:
        run = tmp_path / name / "run"
        shutil.copytree(tmp_path / "straight" / "run", run)
        (run / "checkpoints" / "latest").write_text("step-0000003")
        if not earlier_step_6:
            shutil.rmtree(run / "checkpoints" / "step-0000006")
        again = build(tiny(run.parent, **cfg))
        assert again.resume() and again.step == 3
        try:
            again.fit()
        except Killed:
            pass
        return run

    with monkeypatch.context() as m:
        events = arm_kill(m, None)
        attempt("count")
    # Kills between the file writes into the temporary folder are alike: try the first
    # and the last of them, and every rename and delete after.
    inside = [k for k, e in enumerate(events) if ".tmp-" in e.partition("/")[0]]
    points = [k for k in range(len(events)) if k not in inside[1:-1]]
    aside = f"rename checkpoints/step-0000006 -> .step-0000006.old-{os.getpid()}"
    if earlier_step_6:  # the rest is as without it
        points = [k for k in points if k >= events.index(aside)]
    assert len(points) >= 4 and (aside in events) == earlier_step_6, events
    for k in points:
        with monkeypatch.context() as m:
            arm_kill(m, k)
            run = attempt(f"kill{k}")
        resumed = build(tiny(run.parent, **cfg))
        assert resumed.resume(), events[k]
        resumed.fit()
        assert_same_weights(straight.model, resumed.model, events[k])
        assert_clean_finished_run(run, 6)


def test_the_last_step_is_saved_once_also_after_an_early_stop(tmp_path, monkeypatch, no_plot):
    writes = []
    real_write = trainer_module.EnhancedVLM.save_pretrained
    monkeypatch.setattr(trainer_module.EnhancedVLM, "save_pretrained",
                        lambda self, d, **kw: writes.append(Path(d).name) or real_write(self, d))
    build(tiny(tmp_path / "a", **RUN)).fit()
    assert len(writes) == 2, writes  # step 3 and step 6, each once
    early = build(tiny(tmp_path / "b", **{**RUN, "eval_every": 3, "eval_num": 2,
                                          "stop_at_exact_match": 0.5}))
    early.evaluate = lambda model: {"exact_match": 1.0}
    writes.clear()
    early.fit()  # stops at the first evaluation, a save step
    assert early.step == 3 and len(writes) == 1, writes


def test_every_checkpoint_file_and_its_folder_are_fsynced_before_the_rename(tmp_path,
                                                                            monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name synced file descriptors")
    trainer = build(tiny(tmp_path, **{**RUN, "ema_decay": 0.9}))
    trainer.train_step()
    synced, renames = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        renames.append((Path(src), Path(dst), len(synced)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    final = trainer.save()
    ((tmp, _, n_before),) = [r for r in renames if r[1] == final]
    before = synced[:n_before]
    names = {p.name for p in final.iterdir()}
    assert {"optimizer.safetensors", "trainer_state.json", "train_weights.safetensors"} <= names
    for name in names:  # atomic_write syncs each file under a temporary name in the folder
        assert any(p.parent == tmp and p.name.startswith(f".{name}.") for p in before), name
    assert tmp in before  # and the folder itself, so that its entries survive a power cut
    assert final.parent in synced[n_before:]  # the rename too


def test_latest_naming_an_incomplete_folder_falls_back_and_says_so(tmp_path, capsys, no_plot):
    run = tmp_path / "run"
    assert main([*ARGV, f"--out_dir={run}"]) == 0
    (run / "checkpoints" / "step-0000006" / "model.safetensors").unlink()  # the old damage
    capsys.readouterr()
    assert latest_checkpoint(run).name == "step-0000003"
    assert ("names step-0000006, which is incomplete or missing; using step-0000003"
            in capsys.readouterr().err)
    assert main([*ARGV, f"--out_dir={run}", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "using step-0000003" in err and "resumed from step 3" in err
    assert_clean_finished_run(run, 6)


def test_stale_temporary_folders_go_and_a_folder_renamed_aside_comes_back(tmp_path, capsys,
                                                                          no_plot):
    run = tmp_path / "run"
    assert main([*ARGV, f"--out_dir={run}", "--max_steps=3"]) == 0
    ckpts = run / "checkpoints"
    (ckpts / ".step-0000006.tmp-999").mkdir()  # a save killed mid-write
    (ckpts / ".step-0000006.tmp-999" / "model.safetensors").write_bytes(b"half")
    (ckpts / ".latest.abc123.tmp").write_text("step-00")  # a pointer update killed
    os.replace(ckpts / "step-0000003", ckpts / ".step-0000003.old-999")  # killed mid-swap
    capsys.readouterr()
    assert main([*ARGV, f"--out_dir={run}", "--resume"]) == 0
    assert "resumed from step 3" in capsys.readouterr().err
    assert_clean_finished_run(run, 6)


def test_resume_before_any_complete_save_says_it_starts_from_scratch(tmp_path, capsys, no_plot):
    run = tmp_path / "run"
    (run / "checkpoints" / ".step-0000003.tmp-999").mkdir(parents=True)  # the first save
    assert main([*ARGV, f"--out_dir={run}", "--max_steps=3", "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"no complete checkpoint in {run / 'checkpoints'}, starting from scratch" in err
    assert latest_checkpoint(run).name == "step-0000003"
    assert not (run / "checkpoints" / ".step-0000003.tmp-999").exists()
    assert main([*ARGV, f"--out_dir={run}", "--max_steps=3"]) == 0  # again, without --resume
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err


def test_a_torn_metrics_line_breaks_nothing_and_resume_drops_later_records(tmp_path, no_plot):
    straight = build(tiny(tmp_path / "straight", **RUN))
    straight.fit()
    run = tmp_path / "run"
    run.mkdir()
    first = build(tiny(run.parent, **RUN))
    for _ in range(5):  # saved at 3, logged up to 5, then killed mid-line
        first.train_step()
        first.log(kind="train", loss=1.0, lr=0.1)
        if first.step == 3:
            first.save()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "samples": 24, "kind": "tra')
    PLOT(first)  # a torn last line does not break the curves
    assert (run / "loss_curve.png").is_file()
    resumed = build(tiny(run.parent, **RUN))
    assert resumed.resume() and resumed.step == 3
    resumed.fit()
    assert_same_weights(straight.model, resumed.model, "resumed")
    assert_clean_finished_run(run, 6)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn line is gone
    want = read_metrics(tmp_path / "straight" / "run" / "metrics.jsonl")
    assert [r["loss"] for r in read_metrics(run / "metrics.jsonl")][3:] == [
        r["loss"] for r in want][3:]


def test_a_full_disk_stops_with_one_line_and_keeps_the_previous_checkpoint(
        tmp_path, monkeypatch, capsys, no_plot):
    run = tmp_path / "run"
    real = trainer_module.save_file
    calls = []

    def full_disk(tensors, path, *args, **kwargs):
        calls.append(path)
        if "optimizer" in str(path) and sum("optimizer" in str(p) for p in calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "save_file", full_disk)
    capsys.readouterr()
    assert main([*ARGV, f"--out_dir={run}"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left"), err
    assert str(run / "checkpoints") in err[0] and " MB are free" in err[0]
    assert "step-0000003 is intact" in err[0]
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-0000003"]
    model = build(tiny(run.parent, **RUN)).model
    load_weights(model, latest_checkpoint(run))
    monkeypatch.setattr(trainer_module, "save_file", real)
    assert main([*ARGV, f"--out_dir={run}", "--resume"]) == 0
    assert_clean_finished_run(run, 6)


class FullFile:
    """An open file on a full disk: every write raises ENOSPC (without a file name, as a
    real write does)."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, text):
        self.f.close()
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("module, name, nth, kept", [
    (trainer_module, "metrics.jsonl", 4, "step-0000003 is intact"),  # the log after step 4
    (train_config_module, "train_config.json", 1, "no earlier checkpoint exists")])
def test_a_full_disk_outside_a_save_stops_with_the_same_one_line(
        tmp_path, monkeypatch, capsys, no_plot, module, name, nth, kept):
    run, opened = tmp_path / "run", []

    def full_open(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        if name in Path(file).name and "r" not in mode:
            opened.append(file)
            if len(opened) == nth:
                return FullFile(f)
        return f

    monkeypatch.setattr(module, "open", full_open, raising=False)
    capsys.readouterr()
    assert main([*ARGV, f"--out_dir={run}"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left"), err
    assert f"{run}" in err[0] and name in err[0] and " MB are free" in err[0]
    assert kept in err[0]
    monkeypatch.undo()
    assert main([*ARGV, f"--out_dir={run}", "--resume"]) == 0
    assert_clean_finished_run(run, 6)


def test_checkpoints_with_one_rng_file_still_resume_exactly(tmp_path, no_plot):
    """Checkpoints before per-rank RNG files held rng.safetensors and the JSON part of
    the state in trainer_state.json."""
    straight = build(tiny(tmp_path / "straight", **RUN))
    straight.fit()
    run = tmp_path / "run"
    first = build(tiny(run.parent, **RUN))
    for _ in range(3):
        first.train_step()
    ckpt = first.save()
    with safe_open(ckpt / "rng-rank0.safetensors", "pt") as f:
        meta = json.loads(f.metadata()["rng"])
    os.replace(ckpt / "rng-rank0.safetensors", ckpt / "rng.safetensors")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, "rng": meta}))
    resumed = build(tiny(run.parent, **RUN))
    assert resumed.resume() and resumed.step == 3
    resumed.fit()
    assert_same_weights(straight.model, resumed.model, "old layout")
