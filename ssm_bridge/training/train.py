"""Train a model: `python -m ssm_bridge.training.train` or `ssm-bridge train`.

    python -m ssm_bridge.training.train --preset=shapes-tiny --out_dir=runs/mine
    python -m ssm_bridge.training.train --preset=shapes-tiny --out_dir=runs/mine --resume
    python -m ssm_bridge.training.train --preset=shapes-tiny --out_dir=runs/ft --init_from=CKPT_DIR
    python -m ssm_bridge.training.train --preset=test-tiny --data=coco \\
        --coco_annotations=ann.json --coco_images=images/
    torchrun --nproc_per_node=2 -m ssm_bridge.training.train --preset=test-tiny  # DDP, gloo

Options are TrainConfig fields as --key=value; model.<field> and scenes.<field> reach
VLMConfig and SceneConfig (see ssm_bridge/training/train_config.py for every field and
training preset; each names a model preset of ssm_bridge/config.py).
--precision=auto (the default) trains in bf16 only where the device computes it natively;
run_info.json in the run folder says what it chose and why. A bad option is one line on
stderr and exit status 2; a diverged loss, a checkpoint that cannot be written or a full
disk (any file of the run), one line and 3.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..data import ImageTransform, SceneCaptions, SceneConfig, Tokenizer, make_scene
from ..model import EnhancedVLM
from .checkpoint import NO_SPACE, load_weights
from .evaluate import caption_metrics, generate_captions
from .pretrained import write_extras
from .train_config import TrainConfig, build_train_config, parse_overrides
from .trainer import (
    CheckpointWriteError,
    NonFiniteLossError,
    Trainer,
    end_distributed,
    find_resumable,
    no_space_message,
)


def scene_eval(model, tokenizer, transform, scenes) -> dict:
    """Greedy exact-match and per-attribute accuracy of captions on fixed val scenes."""
    preds = generate_captions(model, tokenizer, transform, scenes, batch_size=100)
    return caption_metrics(preds, scenes)


def init_weights(model: EnhancedVLM, checkpoint: str) -> None:
    """Start from a checkpoint's weights (its model.safetensors); a config or vocabulary
    that differs from this run's raises, naming the keys."""
    try:
        load_weights(model, checkpoint)
    except FileNotFoundError:
        raise ValueError(f"--init_from={checkpoint}: no model.safetensors there; give a "
                         "checkpoint folder such as runs/NAME/checkpoints/step-0001000") from None
    except ValueError as e:
        raise ValueError(f"--init_from={checkpoint}: the checkpoint does not fit this run's "
                         f"model (same preset and --model.* overrides needed): {e}") from e


@dataclass
class Data:
    """What a run trains on. Built once, it can serve several runs that share their data
    settings (the ablation study's variants and seeds)."""

    train_set: Any
    collate: Callable
    tokenizer: Tokenizer
    transform: ImageTransform
    scene_config: SceneConfig | None  # None: not the scene world (data=coco)
    evaluate: Callable[[EnhancedVLM], dict] | None  # periodic evaluation (data=scenes)


def build_data(cfg: TrainConfig) -> Data:
    """The training set, tokenizer and image transform of `cfg` (and its evaluation)."""
    transform = ImageTransform(cfg.model.img_size)
    if cfg.data == "scenes":
        tokenizer = Tokenizer.for_scenes(cfg.scenes)
        train_set = SceneCaptions("train", cfg.num_train, cfg.scenes, tokenizer, transform,
                                  task=cfg.task, progress=cfg.progress,
                                  workers=cfg.draw_workers, shuffle_text_seed=(
                                      cfg.seed if cfg.shuffle_captions else None))
        evaluate = None
        if cfg.eval_num:
            val = [make_scene("val", i, cfg.scenes) for i in range(cfg.eval_num)]
            evaluate = partial(scene_eval, tokenizer=tokenizer, transform=transform, scenes=val)
        return Data(train_set, train_set.collate, tokenizer, transform, cfg.scenes, evaluate)
    if cfg.data == "coco":
        return _coco_data(cfg, transform)
    raise ValueError(f"--data must be 'scenes' or 'coco', got {cfg.data!r}")


def _coco_data(cfg: TrainConfig, transform: ImageTransform) -> Data:
    from ..data import CocoCaptions, build_tokenizer_from_coco, collate

    if cfg.shuffle_captions:
        raise ValueError("--shuffle_captions=true trains on the scene world only; drop it or "
                         "use --data=scenes")
    if not (cfg.coco_annotations or cfg.coco_karpathy) or not cfg.coco_images:
        raise ValueError("--data=coco needs --coco_images=DIR and --coco_annotations=FILE "
                         "(or --coco_karpathy=FILE)")
    karpathy = cfg.coco_karpathy or None
    annotations = cfg.coco_annotations or None
    tokenizer = build_tokenizer_from_coco(annotations, karpathy_json=karpathy,
                                          min_count=cfg.coco_min_count)
    train_set = CocoCaptions(annotations, cfg.coco_images, tokenizer, transform,
                             split="train" if karpathy else None, karpathy_json=karpathy,
                             skip_bad=cfg.skip_bad)
    if train_set.num_skipped:
        print(f"skipped {train_set.num_skipped} bad COCO entries (--skip_bad)",
              file=sys.stderr)
    return Data(train_set, partial(collate, pad_id=tokenizer.pad_id), tokenizer, transform,
                None, None)


def build_model(cfg: TrainConfig, tokenizer: Tokenizer) -> EnhancedVLM:
    """cfg.model with the tokenizer's vocabulary, initialised from cfg.seed (or from the
    weights of cfg.init_from)."""
    torch.manual_seed(cfg.seed)
    model = EnhancedVLM(cfg.model.replace(vocab_size=len(tokenizer)))
    if cfg.init_from:
        init_weights(model, cfg.init_from)
    return model


def build(cfg: TrainConfig, data: Data | None = None) -> Trainer:
    """Data (unless given), tokenizer, model and trainer for `cfg`. The trainer's config
    holds the model's config as built (the tokenizer's vocab_size)."""
    data = build_data(cfg) if data is None else data
    model = build_model(cfg, data.tokenizer)
    return Trainer(dataclasses.replace(cfg, model=model.config), model, data.train_set,
                   data.collate, data.tokenizer, data.evaluate,
                   extras=partial(write_extras, transform=data.transform,
                                  scene_config=data.scene_config))


def start(trainer: Trainer, resume: bool) -> bool:
    """Resume (--resume) or start from scratch, saying which on rank 0; False (after one
    line on stderr) when the run folder's checkpoint cannot be resumed by this run."""
    say = print if trainer.rank == 0 else (lambda *a, **k: None)
    ckpts = trainer.run_dir / "checkpoints"
    if resume:
        try:
            resumed = trainer.resume()
        except ValueError as e:  # another model's checkpoint
            say(f"error: {e}", file=sys.stderr)
            return False
        say(f"resumed from step {trainer.step}" if resumed else
            f"no complete checkpoint in {ckpts}, starting from scratch", file=sys.stderr)
    elif find_resumable(trainer.run_dir)[0] is not None:
        say(f"warning: {ckpts} holds checkpoints of an earlier run; this one starts from "
            "scratch and replaces them (add --resume to continue it)", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    resume = "--resume" in argv
    argv = [a for a in argv if a != "--resume"]
    preset = "shapes-tiny"
    for a in list(argv):
        if a.startswith("--preset="):
            preset = a.split("=", 1)[1]
            argv.remove(a)
    try:
        cfg = build_train_config(preset, parse_overrides(argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return train(cfg, resume)
    finally:  # train() has returned, so its trainer, which holds the process group, is gone
        end_distributed()


def train(cfg: TrainConfig, resume: bool) -> int:
    """Build, start (or resume) and fit; report a failure as one line. The exit status."""
    try:
        trainer = build(cfg)
    except ValueError as e:  # bad data paths, an --init_from that does not fit, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if not start(trainer, resume):
            return 2
        metrics = trainer.fit()
    except (NonFiniteLossError, CheckpointWriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except OSError as e:  # a full disk outside a save (metrics, run_info, the plot, ...)
        if e.errno not in NO_SPACE:
            raise
        target = Path(e.filename) if e.filename else None
        print(f"error: {no_space_message(trainer.run_dir, target)}", file=sys.stderr)
        return 3
    if metrics and trainer.rank == 0:
        print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
