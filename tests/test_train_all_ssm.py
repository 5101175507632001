"""Training the Mamba-decoder models (cobra-tiny, all-ssm-tiny) at test-tiny size: loss falls,
bf16 autocast, exact resume, a run checkpoint loads with load_pretrained, and torchrun DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train import ROOT, records
from test_train_ddp import torchrun

from ssm_bridge.config import VLMConfig
from ssm_bridge.training.pretrained import load_pretrained
from ssm_bridge.training.train import build, main
from ssm_bridge.training.train_config import TRAIN_PRESETS, build_train_config
from ssm_bridge.training.trainer import latest_checkpoint

# The test-tiny model with the presets' parts (model presets cobra-tiny / all-ssm-tiny).
VARIANTS = {
    "cobra": dict(bridge_type="mlp", decoder_type="mamba", cross_attn_layers=0),
    "all-ssm": dict(vision_type="vim", bridge_type="ssm", decoder_type="mamba",
                    cross_attn_layers=0),
}


def small(tmp_path, variant: str, **kw):
    return build_train_config("test-tiny", {"out_dir": str(tmp_path / "run"),
                                            "model": VARIANTS[variant], **kw})


def test_training_presets_name_their_model_presets():
    for name in ("cobra-tiny", "all-ssm-tiny"):
        cfg = build_train_config(name, {})
        model = cfg.model
        assert model == VLMConfig.from_preset(name) and model.decoder_type == "mamba"
        assert cfg.out_dir == f"runs/{name}" and cfg.precision == "auto"
    assert TRAIN_PRESETS["all-ssm-tiny"]["model"] == "all-ssm-tiny"
    assert build_train_config("all-ssm-tiny", {}).model.vision_type == "vim"


@pytest.mark.parametrize("variant", ["cobra", "all-ssm"])
def test_loss_falls_and_the_run_checkpoint_loads(tmp_path, variant):
    cfg = small(tmp_path, variant, max_steps=30, save_every=30, lr=3e-3)
    trainer = build(cfg)
    trainer.fit()
    losses = [r["loss"] for r in records(Path(cfg.out_dir), "train")]
    assert losses[-1] < losses[0] * 0.8, losses
    bundle = load_pretrained(latest_checkpoint(Path(cfg.out_dir)))
    assert bundle.model.config.decoder_type == "mamba"
    for name, t in trainer.model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[name], t), name
    (text,) = bundle.caption([torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()])
    assert isinstance(text, str)


@pytest.mark.parametrize("variant", ["cobra", "all-ssm"])
def test_resume_matches_an_uninterrupted_run_in_bf16(tmp_path, variant):
    kw = dict(max_steps=6, save_every=0, precision="bf16", num_train=16, batch_size=4)
    straight = build(small(tmp_path / "a", variant, **kw))
    straight.fit()
    first = build(small(tmp_path / "b", variant, **kw))
    for _ in range(3):
        first.train_step()
    first.save()
    del first
    second = build(small(tmp_path / "b", variant, **kw))
    assert second.resume() and second.step == 3
    second.fit()
    for (name, a), b in zip(straight.model.state_dict().items(),
                            second.model.state_dict().values()):
        assert torch.equal(a, b), name
    info = json.loads((tmp_path / "b" / "run" / "run_info.json").read_text())
    assert info["precision_resolved"] == "bf16"


def cli_model_args(variant: str) -> list[str]:
    """VARIANTS[variant] as the command line's --model.KEY=VALUE overrides."""
    return [f"--model.{k}={v}" for k, v in VARIANTS[variant].items()]


@pytest.mark.parametrize("variant", ["cobra", "all-ssm"])
def test_the_cli_trains_and_resumes(tmp_path, capsys, variant):
    out = tmp_path / "cli"
    args = ["--preset=test-tiny", f"--out_dir={out}", "--max_steps=4", "--save_every=2",
            "--num_train=8", "--batch_size=2", *cli_model_args(variant)]
    assert main(args) == 0
    assert main([*args[:2], "--max_steps=6", *args[3:], "--resume"]) == 0
    assert "resumed from step 4" in capsys.readouterr().err
    config = json.loads((latest_checkpoint(out) / "config.json").read_text())["config"]
    assert {k: config[k] for k in VARIANTS[variant]} == VARIANTS[variant]
    assert config["vision_type"] == VARIANTS[variant].get("vision_type", "vit")
    assert main([*args, "--model.decoder_type=rnn"]) == 2
    assert "decoder_type must be one of" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["cobra", "all-ssm"])
def test_ddp_two_cpu_processes_stay_identical(tmp_path, variant):
    run = tmp_path / "ddp"
    args = ["--preset=test-tiny", f"--out_dir={run}", "--max_steps=8", "--num_train=16",
            "--batch_size=2", "--threads=1", *cli_model_args(variant)]
    script = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" \
             f"from ssm_bridge.training.train import main\nsys.exit(main({args!r}))\n"
    code, log = torchrun(script, tmp_path, 180)
    assert code == 0, log[-3000:]
    (replicas,) = records(run, "replicas")
    assert replicas["replicas_identical"] is True
    assert records(run, "train")[-1]["samples"] == 8 * 2 * 2  # both ranks counted
    config = json.loads((latest_checkpoint(run) / "config.json").read_text())["config"]
    assert {k: config[k] for k in VARIANTS[variant]} == VARIANTS[variant]
