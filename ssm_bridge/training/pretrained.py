"""Shipped checkpoints, loaded offline in one call.

    bundle = ssm_bridge.load_pretrained("shapes-tiny")     # or a checkpoint folder
    bundle.caption(["scene.png", pil_image, uint8_array])  # -> list of captions

A checkpoint folder holds config.json + model.safetensors (the model), tokenizer.json,
preprocess.json (image size, mean, std, fit) and, for scene-world models, scenes.json
(the SceneConfig it was trained on). Shipped ones live in ssm_bridge/checkpoints/; a
training run's folder (runs/NAME) stands for its newest complete checkpoint.

Every file is checked before it is used (sizes, types, and agreement with the model's
config); any problem raises checkpoint.CheckpointError, a ValueError whose one-line
message names the file (CheckpointNotFoundError, also a FileNotFoundError, when a file
or folder is missing).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import MAX_SIZES, VLMConfig, check_types
from ..data import ImageTransform, SceneConfig, Tokenizer
from ..model import EnhancedVLM
from .checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    CheckpointNotFoundError,
    atomic_write,
    read_config,
    read_json,
)
from .trainer import read_metrics

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "checkpoints"


def shipped_names() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.glob("*") if (p / "config.json").is_file())


def resolve(name_or_dir: str | os.PathLike) -> Path:
    """A shipped name ('shapes-tiny'), a checkpoint folder, or a training run's folder (its
    checkpoints/latest) -> the checkpoint folder; CheckpointNotFoundError otherwise."""
    path = Path(name_or_dir)
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / "checkpoints").is_dir():
        return _latest(path)
    if (SHIPPED_DIR / str(name_or_dir) / CONFIG_NAME).is_file():
        return SHIPPED_DIR / str(name_or_dir)
    if path.is_dir():
        raise CheckpointNotFoundError(f"{path} holds no {CONFIG_NAME}: it is not a checkpoint "
                                      "folder (written by save_pretrained or a training run)")
    raise CheckpointNotFoundError(
        f"no checkpoint {str(name_or_dir)!r}: not a folder with {CONFIG_NAME}, nor a shipped "
        f"name (shipped: {shipped_names() or 'none'})"
    )


def _latest(run_dir: Path) -> Path:
    """A run folder's newest complete checkpoint: the one `latest` names, else the newest
    complete one (a killed save can leave `latest` naming an incomplete folder), said on
    stderr; none complete is one CheckpointNotFoundError."""
    from .trainer import find_resumable

    ckpt, note = find_resumable(run_dir)
    if ckpt is None:
        why = note or f"{run_dir / 'checkpoints'} holds none"
        raise CheckpointNotFoundError(f"{run_dir} is a training run without a complete "
                                      f"checkpoint ({why}): train it further or pass a "
                                      "checkpoint folder")
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return ckpt


@dataclass(frozen=True)
class Preprocess:
    """What preprocess.json holds: ImageTransform's arguments."""

    img_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    fit: str = "stretch"


def write_extras(directory: str | os.PathLike, transform: ImageTransform,
                 scene_config: SceneConfig | None) -> None:
    """preprocess.json (and scenes.json) beside a saved model."""
    d = Path(directory)
    pre = Preprocess(transform.img_size, tuple(transform.mean.flatten().tolist()),
                     tuple(transform.std.flatten().tolist()), transform.fit)
    atomic_write(d / "preprocess.json",
                 lambda p: Path(p).write_text(json.dumps(asdict(pre), indent=2)))
    if scene_config is not None:
        atomic_write(d / "scenes.json",
                     lambda p: Path(p).write_text(json.dumps(asdict(scene_config), indent=2)))


def _fields(path: Path, cls: type, what: str) -> dict:
    """The JSON object in `path`, its keys known fields of dataclass `cls` and its values
    of their types; CheckpointError naming the file otherwise."""
    d = read_json(path, what)
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} must hold a JSON object ({what}), got "
                              f"{type(d).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise CheckpointError(f"{path}: unknown field(s) {unknown}; known: {known}")
    try:
        check_types(cls, d, str(path))
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    return d


def read_preprocess(path: Path, config: VLMConfig) -> ImageTransform:
    """preprocess.json -> ImageTransform; its img_size must be the model's (the model takes
    no other size). Without the file: the defaults at the model's size."""
    if not path.is_file():
        return ImageTransform(config.img_size)
    d = _fields(path, Preprocess, "the image preprocessing: img_size, mean, std, fit")
    if d.get("img_size") != config.img_size:
        raise CheckpointError(f"{path}: img_size is {d.get('img_size')!r} but the model takes "
                              f"{config.img_size} x {config.img_size} images; fix the file")
    try:
        return ImageTransform(**d)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


def read_scenes(path: Path) -> SceneConfig | None:
    """scenes.json -> the SceneConfig the model was trained on (None without the file)."""
    if not path.is_file():
        return None
    d = _fields(path, SceneConfig, "the scene world's SceneConfig")
    limit = MAX_SIZES["img_size"]
    if d.get("img_size", 0) > limit:
        raise CheckpointError(f"{path}: img_size={d['img_size']} is over its limit of {limit}")
    try:
        return SceneConfig(**d)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from e


def read_tokenizer(path: Path, config: VLMConfig) -> Tokenizer:
    """tokenizer.json, which must have the model's vocab_size ids."""
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path} not found: a checkpoint for captioning holds "
                                      "its tokenizer (Tokenizer.save)")
    limit = 64 * config.vocab_size + 4096  # JSON of words of up to ~60 characters each
    if path.stat().st_size > limit:
        raise CheckpointError(f"{path} is {path.stat().st_size} bytes, far too big for a "
                              f"vocabulary of {config.vocab_size} words (limit {limit})")
    try:
        tokenizer = Tokenizer.load(path)
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(" ".join(str(e).split())) from e
    if len(tokenizer) != config.vocab_size:
        raise CheckpointError(f"{path} has {len(tokenizer)} ids but the model's vocab_size is "
                              f"{config.vocab_size}: they come from different runs")
    return tokenizer


@dataclass
class Pretrained:
    model: EnhancedVLM
    tokenizer: Tokenizer
    transform: ImageTransform
    scene_config: SceneConfig | None
    path: Path

    @torch.no_grad()
    def caption(self, images, max_length: int | None = None, temperature: float = 0.0,
                **generate_kwargs) -> list[str]:
        """Images (paths, PIL images or uint8 arrays) -> one caption each (greedy default)."""
        device = next(self.model.parameters()).device
        batch = torch.stack([self.transform(im) for im in images]).to(device)
        ids = self.model.generate(batch, max_length=max_length or self.model.config.max_seq_length,
                                  temperature=temperature, **generate_kwargs)
        return [self.tokenizer.decode(row.tolist()) for row in ids]


def load_pretrained(name_or_dir: str | os.PathLike = "shapes-tiny",
                    device: str | torch.device = "cpu") -> Pretrained:
    """Model, tokenizer, image preprocessing (and scene config) of a checkpoint, offline.
    The small files are checked first, then the model (see EnhancedVLM.from_pretrained);
    any problem raises CheckpointError with a one-line message naming the file."""
    path = resolve(name_or_dir)
    config = read_config(path)
    tokenizer = read_tokenizer(path / "tokenizer.json", config)
    transform = read_preprocess(path / "preprocess.json", config)
    scene_config = read_scenes(path / "scenes.json")
    model = EnhancedVLM.from_pretrained(path, map_location=device)
    return Pretrained(model, tokenizer, transform, scene_config, path)


INFERENCE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "preprocess.json",
                   "scenes.json")


def training_record(run_dir: str | os.PathLike, until_step: int | None = None) -> dict:
    """What a run's metrics.jsonl says about its speed: minutes of training (optimizer steps
    only, evaluation excluded) until val exact-match first reached 90/95/98 %, and the end
    (`until_step`: the run up to that step, e.g. the checkpoint shipped from it)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = [r for r in read_metrics(path) if until_step is None or r["step"] <= until_step]
    if not records:
        raise ValueError(f"{path} holds no complete record (missing, empty or torn); "
                         "give the run folder of a training run that logged")
    evals = [r for r in records if r["kind"] == "eval" and "exact_match" in r]
    record = {"steps": records[-1]["step"], "samples": records[-1]["samples"],
              "train_minutes": round(records[-1]["train_seconds"] / 60, 2)}
    for level in (90, 95, 98):
        hit = next((r for r in evals if r["exact_match"] >= level / 100), None)
        record[f"minutes_to_{level}"] = round(hit["train_seconds"] / 60, 2) if hit else None
        record[f"step_to_{level}"] = hit["step"] if hit else None
    record["val_curve"] = [{"step": r["step"], "minutes": round(r["train_seconds"] / 60, 2),
                            "exact_match": r["exact_match"]} for r in evals]
    return record


def export_checkpoint(checkpoint: str | os.PathLike, dest: str | os.PathLike,
                      run_dir: str | os.PathLike | None = None) -> Path:
    """Copy a training checkpoint's inference files (no optimizer state) to `dest`, with
    training_record.json from its run when `run_dir` is given: the run up to the
    checkpoint's step (a run that went on after it does not count)."""
    src, dest = Path(checkpoint), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in INFERENCE_FILES:
        if (src / name).is_file():
            data = (src / name).read_bytes()
            atomic_write(dest / name, lambda p, data=data: Path(p).write_bytes(data))
    if run_dir is not None:
        state = src / "trainer_state.json"
        step = json.loads(state.read_text())["step"] if state.is_file() else None
        rec = json.dumps(training_record(run_dir, until_step=step), indent=2)
        atomic_write(dest / "training_record.json", lambda p: Path(p).write_text(rec))
    return dest
