"""Training options that used to be silently wrong: each bad value is one line naming the
field and what it allows, before any work; options that disagreed now agree."""

import dataclasses
import os
import subprocess
import sys
import typing

import pytest
import torch
from test_train import ROOT, tiny

from ssm_bridge.core import layers as layers
from ssm_bridge.training.train import build, main
from ssm_bridge.training.train_config import CHOICES, RANGES, TrainConfig

SMALL = ["--preset=test-tiny", "--num_train=8", "--batch_size=2", "--eval_num=0",
         "--threads=1"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("option, words", [
    ("--precision=fp16", "precision must be one of auto, fp32, bf16, got 'fp16'"),
    ("--precision=BF16", "precision must be one of auto, fp32, bf16, got 'BF16'"),
    ("--grad_accum=0", "grad_accum must be >= 1, got 0"),
    ("--max_steps=-3", "max_steps must be >= 1, got -3"),
    ("--log_every=0", "log_every must be >= 1, got 0"),
    ("--batch_size=0", "batch_size must be >= 1, got 0"),
    ("--device=gpu", "device must be one of auto, cpu, cuda, cuda:N, got 'gpu'"),
    ("--task=captions", "task must be one of caption, vqa, mixed"),
    ("--stop_at_exact_match=0.9", "stop_at_exact_match needs periodic evaluation"),
])
def test_a_bad_option_is_one_line_and_a_nonzero_exit(tmp_path, capsys, option, words):
    assert main([*SMALL, f"--out_dir={tmp_path}", option]) == 2
    assert words in one_error_line(capsys)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing trained


def test_every_closed_set_and_range_is_checked():
    hints = typing.get_type_hints(TrainConfig)
    numeric = {f.name for f in dataclasses.fields(TrainConfig)
               if hints[f.name] in (int, float)} - {"seed"}  # any seed is a seed
    assert numeric <= set(RANGES), numeric - set(RANGES)
    for name in [*RANGES, *CHOICES, "preset"]:
        bad = "nope" if name in CHOICES or name == "preset" else -1
        with pytest.raises(ValueError, match=rf"^{name} must be"):
            TrainConfig(**{name: bad})
    with pytest.raises(ValueError, match="lr must be > 0, got nan"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match=r"batch_size must be an integer, got 2\.5"):
        TrainConfig(batch_size=2.5)
    assert TrainConfig(device="cuda:1").device == "cuda:1"


def test_the_command_prints_one_line_and_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "ssm_bridge.training.train", "--preset=test-tiny",
                          "--precision=fp16"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == ("error: precision must be one of auto, fp32, bf16, "
                                  "got 'fp16'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    assert main([*SMALL, f"--out_dir={tmp_path}", "--device=cuda"]) == 2
    assert "sees no CUDA device here; use --device=cpu" in one_error_line(capsys)


@pytest.mark.parametrize("overrides", [{"model": {"gradient_checkpointing": True}},
                                       {"gradient_checkpointing": True}])
def test_either_gradient_checkpointing_switch_turns_it_on(tmp_path, monkeypatch, overrides):
    calls = []
    real = layers.checkpoint
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    trainer = build(tiny(tmp_path, num_train=8, batch_size=2, eval_num=0, **overrides))
    assert trainer.cfg.gradient_checkpointing and trainer.model.config.gradient_checkpointing
    trainer.train_step()
    assert len(calls) >= 3, calls  # vision, bridge and decoder blocks recompute


def test_resume_with_other_model_values_names_the_fields(tmp_path, capsys):
    run = [*SMALL, f"--out_dir={tmp_path}", "--max_steps=2", "--save_every=2"]
    assert main(run) == 0
    capsys.readouterr()
    assert main([*run, "--resume", "--model.vision_embed_dim=48",
                 "--model.ssm_state_dim=8"]) == 2
    line = one_error_line(capsys)
    assert "cannot resume from" in line and "step-0000002" in line
    assert "vision_embed_dim (32 there, 48 here)" in line
    assert "ssm_state_dim (4 there, 8 here)" in line
    # A setting that changes how, not what, the model computes may differ.
    assert main([*run, "--max_steps=3", "--resume", "--model.gradient_checkpointing=true"]) == 0
