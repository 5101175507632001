"""Checkpoints: `config.json` + `model.safetensors` in a folder. No pickle anywhere.

Files are written to temporary names and renamed into place, so an interrupted
save never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import VLMConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "ssm-bridge-vlm"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o644 & ~_read_umask()  # mkstemp makes 0600; checkpoints get a normal mode


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (files created or renamed in it) durable. A rename is only
    on disk once its folder is synced; without this a power cut can undo it."""
    if os.name == "nt":  # Windows cannot open a folder for syncing; NTFS journals renames
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync it, rename it over `path`, then sync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def tensors_to_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict minus tied duplicates (safetensors stores each tensor once)."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen and t.numel():
            continue  # tied to an earlier tensor (lm_head <- tok_embed)
        seen[t.data_ptr()] = name
        out[name] = t.detach().contiguous().cpu()
    return out


def save_pretrained(model, directory: str | os.PathLike, extra: dict[str, Any] | None = None):
    d = Path(directory)
    tensors = tensors_to_save(model)
    atomic_write(d / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    meta = {"format": FORMAT, "format_version": 1, "config": model.config.to_dict(),
            **(extra or {})}
    atomic_write(d / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return d


def read_config(directory: str | os.PathLike) -> VLMConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a checkpoint folder holds {CONFIG_NAME} "
                                f"and {WEIGHTS_NAME} (written by save_pretrained)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-save the checkpoint") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise ValueError(f"{path} is not an ssm-bridge config (expected format={FORMAT!r} "
                         "and a 'config' object)")
    try:
        return VLMConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def load_weights(model: torch.nn.Module, directory: str | os.PathLike,
                 name: str = WEIGHTS_NAME) -> None:
    """Load `directory/name` into `model`; any missing, extra or mis-shaped key raises."""
    path = Path(directory) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; save weights with save_pretrained")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); it may be "
                         "truncated or corrupt: re-save or re-download the checkpoint") from e
    expected = {k: v.shape for k, v in tensors_to_save(model).items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k])}"
                   for k in set(expected) & set(tensors) if tensors[k].shape != expected[k])
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not match the model built from {CONFIG_NAME}: "
            f"missing keys {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}, "
            f"shape mismatches {wrong[:10]}"
        )
    model.load_state_dict(tensors, strict=False)
