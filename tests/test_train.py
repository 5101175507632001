"""The trainer: loss falls, exact resume, atomic checkpoints under kill -9, DDP, overrides."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssm_bridge.training.checkpoint import load_weights
from ssm_bridge.training.train import build
from ssm_bridge.training.train_config import build_train_config, parse_overrides
from ssm_bridge.training.trainer import NonFiniteLossError, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def tiny(tmp_path, **kw):
    return build_train_config("test-tiny", {"out_dir": str(tmp_path / "run"), **kw})


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_trains_logs_plots_and_checkpoints(tmp_path):
    cfg = tiny(tmp_path, max_steps=30, eval_every=15, eval_num=4, grad_accum=2)
    trainer = build(cfg)
    trainer.fit()
    run = Path(cfg.out_dir)
    losses = [r["loss"] for r in records(run, "train")]
    assert losses[-1] < losses[0] * 0.8, losses
    assert len(records(run, "eval")) == 2 and "exact_match" in records(run, "eval")[0]
    assert (run / "loss_curve.png").stat().st_size > 1000
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step-0000030"
    assert {p.name for p in ckpt.iterdir()} >= {"config.json", "model.safetensors",
                                                 "tokenizer.json", "optimizer.safetensors",
                                                 "trainer_state.json", "preprocess.json"}
    assert len(list((run / "checkpoints").glob("step-*"))) == cfg.keep_checkpoints
    from ssm_bridge.training.pretrained import load_pretrained

    bundle = load_pretrained(ckpt)  # any run checkpoint loads like a shipped one
    assert bundle.scene_config.img_size == 32
    (text,) = bundle.caption([torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()])
    assert isinstance(text, str)


def test_resume_matches_uninterrupted_run(tmp_path):
    straight = build(tiny(tmp_path / "a", max_steps=12, save_every=0))
    straight.fit()
    first = build(tiny(tmp_path / "b", max_steps=12, save_every=0))
    for _ in range(5):  # interrupted after 5 steps, having saved
        first.train_step()
    first.save()
    del first
    second = build(tiny(tmp_path / "b", max_steps=12, save_every=0, seed=123))  # seed ignored
    assert second.resume() and second.step == 5
    second.fit()
    for (name, a), b in zip(straight.model.state_dict().items(),
                            second.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_weight_average_is_evaluated_saved_and_resumed_exactly(tmp_path):
    """ema_decay > 0: the checkpoint's model is the average (what loading gives), the raw
    weights ride beside it, and a resumed run matches an uninterrupted one in both."""
    straight = build(tiny(tmp_path / "a", max_steps=12, save_every=0, ema_decay=0.9))
    straight.fit()
    ckpt = latest_checkpoint(tmp_path / "a" / "run")
    assert (ckpt / "train_weights.safetensors").is_file()
    loaded = build(tiny(tmp_path / "c", max_steps=12)).model
    load_weights(loaded, ckpt)
    avg, raw = straight.ema.state_dict(), straight.model.state_dict()
    assert all(torch.equal(loaded.state_dict()[k], avg[k]) for k in avg)
    assert any(not torch.allclose(avg[k], raw[k]) for k in avg)  # an average, not a copy
    first = build(tiny(tmp_path / "b", max_steps=12, save_every=0, ema_decay=0.9))
    for _ in range(5):
        first.train_step()
    first.save()
    del first
    second = build(tiny(tmp_path / "b", max_steps=12, save_every=0, ema_decay=0.9))
    assert second.resume() and second.step == 5
    second.fit()
    for name, a in straight.model.state_dict().items():
        assert torch.equal(a, second.model.state_dict()[name]), name
    for name, a in avg.items():
        assert torch.equal(a, second.ema.state_dict()[name]), name
    # Switching the average off (or on) across a resume keeps the raw weights exact.
    plain = build(tiny(tmp_path / "b", max_steps=12, save_every=0))
    assert plain.resume() and plain.ema is None
    for name, a in straight.model.state_dict().items():
        assert torch.equal(a, plain.model.state_dict()[name]), name
    late = build(tiny(tmp_path / "d", max_steps=12, save_every=0))
    late.fit()
    switched = build(tiny(tmp_path / "d", max_steps=14, save_every=0, ema_decay=0.9))
    assert switched.resume()
    for name, a in switched.model.state_dict().items():
        assert torch.equal(a, switched.ema.state_dict()[name]), name


def test_init_from_starts_from_a_checkpoints_weights_with_a_fresh_schedule(tmp_path, capsys):
    from ssm_bridge.training.train import main

    first = build(tiny(tmp_path / "a", max_steps=6, save_every=0))
    first.fit()
    ckpt = latest_checkpoint(tmp_path / "a" / "run")
    second = build(tiny(tmp_path / "b", max_steps=4, init_from=str(ckpt)))
    assert second.step == 0
    for name, a in first.model.state_dict().items():
        assert torch.equal(a, second.model.state_dict()[name]), name
    other = ["--preset=test-tiny", f"--out_dir={tmp_path / 'c'}", f"--init_from={ckpt}",
             "--model.vision_embed_dim=48"]
    assert main(other) == 2
    assert "does not fit this run's model" in capsys.readouterr().err
    assert main(["--preset=test-tiny", f"--init_from={tmp_path}"]) == 2
    assert "no model.safetensors" in capsys.readouterr().err


def test_prefix_dropout_starts_at_its_step(tmp_path):
    cfg = tiny(tmp_path, max_steps=4, save_every=0, prefix_dropout_start=2,
               model={"image_prefix_dropout": 0.5})
    trainer = build(cfg)
    blanked = []  # per step: how many samples saw only the prefix marker
    marker = trainer.model.decoder.prefix_embed

    def count(t, name):
        blanked.append(int((t == marker.detach()).flatten(1).all(1).sum()))

    with trainer.model.hooks([("decoder.hook_image_prefix", count)]):
        for _ in range(4):
            trainer.train_step()
    assert blanked[:2] == [0, 0] and sum(blanked[2:]) > 0, blanked
    with pytest.raises(ValueError, match="prefix_dropout_start"):
        tiny(tmp_path, prefix_dropout_start=-1)


def test_caption_steps_train_captions_first_then_the_task(tmp_path):
    cfg = tiny(tmp_path, task="mixed", caption_steps=2, batch_size=16, num_train=64)
    trainer = build(cfg)
    data = trainer.train_set
    all_captions = []  # per step: whether every text of its batch is a caption
    for step in range(4):
        _, _, targets = trainer.batch_at(step, 0)
        order = trainer._order(0)[step * 16:(step + 1) * 16]
        texts = [data.example(int(i)) for i in order]
        caps = [data.caption_example(int(i)) for i in order]
        expected = [c if step < 2 else t for c, t in zip(caps, texts)]
        _, _, want = data.collate([data._item(int(i), e) for i, e in zip(order, expected)])
        assert torch.equal(targets, want), step
        all_captions.append(all(e.kind == "caption" for e in expected))
    assert all_captions == [True, True, False, False]
    for bad in ({"task": "caption", "caption_steps": 2}, {"caption_steps": -1}):
        with pytest.raises(ValueError, match="caption_steps"):
            tiny(tmp_path, **bad)


def test_ema_update_follows_its_formula():
    from ssm_bridge.training.trainer import ema_update

    ema, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    ema_update(ema, model, decay=0.999, step=0)  # warm-up: d = min(0.999, 1 / 10)
    torch.testing.assert_close(ema.weight, 0.1 * before + 0.9 * model.weight.detach())
    with pytest.raises(ValueError, match="ema_decay"):
        tiny(Path("/tmp"), ema_decay=1.0)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    trainer = build(tiny(tmp_path))
    trainer.model.decoder.hook_logits.register_forward_hook(
        lambda m, i, out: out * float("nan"))
    with pytest.raises(NonFiniteLossError, match="Lower --lr"):
        trainer.train_step()


_SAVER = """
import sys
sys.path.insert(0, {root!r})
from ssm_bridge.training.train import build
from ssm_bridge.training.train_config import build_train_config
cfg = build_train_config("test-tiny", dict(out_dir={out!r}, model=dict(
    img_size=32, patch_size=8, vision_embed_dim=256, vision_num_layers=4, vision_num_heads=4,
    text_embed_dim=256, text_num_layers=4, text_num_heads=4, max_seq_length=32)))
trainer = build(cfg)
print("ready", flush=True)
while True:
    trainer.step += 1
    trainer.save()
"""


def test_kill_9_during_save_leaves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER.format(root=str(ROOT), out=str(out))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for delay in (0.7, 0.45, 0.9):  # kill at different moments of the save loop
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGSTOP)
            ckpt = latest_checkpoint(out)
            if ckpt is not None:
                assert json.loads((ckpt / "trainer_state.json").read_text())["step"] >= 1
            os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    ckpt = latest_checkpoint(out)
    assert ckpt is not None
    trainer = build(build_train_config("test-tiny", dict(out_dir=str(out), model=dict(
        img_size=32, patch_size=8, vision_embed_dim=256, vision_num_layers=4,
        vision_num_heads=4, text_embed_dim=256, text_num_layers=4, text_num_heads=4,
        max_seq_length=32))))
    load_weights(trainer.model, ckpt)  # complete and consistent
    assert trainer.resume()


def test_ddp_two_cpu_processes_stay_identical_and_learn(tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "ssm_bridge.training.train", "--preset=test-tiny", f"--out_dir={run}",
         "--max_steps=30",
         "--batch_size=4", "--threads=1"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (replicas,) = records(run, "replicas")
    assert replicas["replicas_identical"] is True
    losses = [r["loss"] for r in records(run, "train")]
    assert losses[-1] < losses[0] * 0.8, losses
    assert records(run, "train")[-1]["samples"] == 30 * 4 * 2  # both ranks counted


def test_overrides_are_typed_and_checked():
    o = parse_overrides(["--lr=1e-3", "--max_steps=5", "--progress=false",
                         "--model.ssm_scan_order=cross", "--model.ssm_dt_rank=none",
                         "--scenes.max_objects=2"])
    assert o["lr"] == 1e-3 and o["max_steps"] == 5 and o["progress"] is False
    assert o["model"] == {"ssm_scan_order": "cross", "ssm_dt_rank": None}
    assert o["scenes"] == {"max_objects": 2}
    cfg = build_train_config("shapes-tiny", o)
    assert cfg.model.img_size == 64 and cfg.model.ssm_scan_order == "cross"
    for bad, words in [("--lr=fast", "--lr=fast"), ("--colour=red", "unknown option"),
                       ("--model.wings=2", "unknown option"), ("lr=1", "--key=value"),
                       ("--progress=maybe", "true/false")]:
        with pytest.raises(ValueError, match=words):
            parse_overrides([bad])
    with pytest.raises(ValueError, match="unknown preset"):
        build_train_config("gigantic", {})


from test_data_coco import coco  # noqa: E402,F401  (the tiny COCO-format folder fixture)


def test_trains_on_a_coco_format_folder(coco, tmp_path, capsys):  # noqa: F811
    root, ann, _ = coco
    (root / "images" / "b.png").unlink()  # one missing image: skipped with --skip_bad
    cfg = tiny(tmp_path, data="coco", coco_annotations=str(ann), coco_images=str(root / "images"),
               coco_min_count=1, skip_bad=True, max_steps=30, batch_size=4, eval_num=0)
    trainer = build(cfg)
    assert trainer.train_set.num_skipped == 1
    assert "skipped 1 bad COCO entries" in capsys.readouterr().err
    trainer.fit()
    losses = [r["loss"] for r in records(Path(cfg.out_dir), "train")]
    assert losses[-1] < losses[0] * 0.7, losses
    with pytest.raises(FileNotFoundError, match=r"b\.png"):
        build(tiny(tmp_path / "strict", data="coco", coco_annotations=str(ann),
                   coco_images=str(root / "images"), coco_min_count=1))
