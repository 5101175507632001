"""Shipped checkpoints, loaded offline in one call.

    bundle = ssm_bridge.load_pretrained("shapes-tiny")     # or a checkpoint folder
    bundle.caption(["scene.png", pil_image, uint8_array])  # -> list of captions

A checkpoint folder holds config.json + model.safetensors (the model), tokenizer.json,
preprocess.json (image size, mean, std, fit) and, for scene-world models, scenes.json
(the SceneConfig it was trained on). Shipped ones live in ssm_bridge/checkpoints/.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .checkpoint import atomic_write
from .data import ImageTransform, SceneConfig, Tokenizer
from .model import EnhancedVLM

SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"


def shipped_names() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.glob("*") if (p / "config.json").is_file())


def resolve(name_or_dir: str | os.PathLike) -> Path:
    """A shipped name ('shapes-tiny') or a folder -> the checkpoint folder."""
    path = Path(name_or_dir)
    if (path / "config.json").is_file():
        return path
    if (SHIPPED_DIR / str(name_or_dir) / "config.json").is_file():
        return SHIPPED_DIR / str(name_or_dir)
    raise FileNotFoundError(
        f"no checkpoint {str(name_or_dir)!r}: not a folder with config.json, nor a shipped "
        f"name (shipped: {shipped_names() or 'none'})"
    )


def write_extras(directory: str | os.PathLike, transform: ImageTransform,
                 scene_config: SceneConfig | None) -> None:
    """preprocess.json (and scenes.json) beside a saved model."""
    d = Path(directory)
    pre = {"img_size": transform.img_size, "mean": transform.mean.flatten().tolist(),
           "std": transform.std.flatten().tolist(), "fit": transform.fit}
    atomic_write(d / "preprocess.json", lambda p: Path(p).write_text(json.dumps(pre, indent=2)))
    if scene_config is not None:
        atomic_write(d / "scenes.json",
                     lambda p: Path(p).write_text(json.dumps(asdict(scene_config), indent=2)))


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
    """Model, tokenizer, image preprocessing (and scene config) of a checkpoint, offline."""
    path = resolve(name_or_dir)
    model = EnhancedVLM.from_pretrained(path, map_location=device)
    tokenizer = Tokenizer.load(path / "tokenizer.json")
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(f"{path / 'tokenizer.json'} has {len(tokenizer)} ids but the model's "
                         f"vocab_size is {model.config.vocab_size}: they come from different runs")
    pre_path = path / "preprocess.json"
    pre = json.loads(pre_path.read_text()) if pre_path.is_file() else {
        "img_size": model.config.img_size}
    transform = ImageTransform(**pre)
    scenes_path = path / "scenes.json"
    scene_config = (SceneConfig(**json.loads(scenes_path.read_text()))
                    if scenes_path.is_file() else None)
    return Pretrained(model, tokenizer, transform, scene_config, path)


INFERENCE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "preprocess.json",
                   "scenes.json")


def training_record(run_dir: str | os.PathLike) -> dict:
    """What a run's metrics.jsonl says about its speed: minutes of training (optimizer steps
    only, evaluation excluded) until val exact-match first reached 90/95/98 %, and the end."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line]
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
    training_record.json from its run when `run_dir` is given."""
    src, dest = Path(checkpoint), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in INFERENCE_FILES:
        if (src / name).is_file():
            data = (src / name).read_bytes()
            atomic_write(dest / name, lambda p, data=data: Path(p).write_bytes(data))
    if run_dir is not None:
        rec = json.dumps(training_record(run_dir), indent=2)
        atomic_write(dest / "training_record.json", lambda p: Path(p).write_text(rec))
    return dest
