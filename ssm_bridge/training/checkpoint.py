"""Checkpoints: `config.json` + `model.safetensors` in a folder. No pickle anywhere.

Files are written to temporary names and renamed into place, so an interrupted
save never leaves a half-written file under the real name.

Loading checks before it allocates: config.json's fields are type- and bounds-checked
(config.MAX_SIZES), then the safetensors header (names, shapes, dtypes) is checked against
a model built on the meta device, and only then is the model built and the data read;
NaN or Inf weights are refused. Every problem is a `CheckpointError` (a ValueError) with
a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..config import VLMConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "ssm-bridge-vlm"
MAX_JSON_BYTES = 16 * 2**20  # config, preprocess and scene files are a few KB
_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
              torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
              torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_FLOAT_ST_DTYPES = ("F64", "F32", "F16", "BF16")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, damaged, hostile, or not matching its
    own config. The message is one line naming the file and what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint folder or one of its files does not exist."""


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


# A full disk or an exhausted quota: train stops on either with one line, not a traceback.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def naming(path: Path):
    """Re-raise a full disk while writing `path` as an OSError naming it (a failed write()
    or close() names no file, and a temporary file's name is not the one to report)."""
    try:
        yield
    except OSError as e:
        if e.errno in NO_SPACE and e.filename != str(path):
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync it, rename it over `path`, then sync the folder."""
    path = Path(path)
    with naming(path):
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


def _unique_entries(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict's parameters and buffers, each tied one once under its first name
    (lm_head.weight is tok_embed.weight). Works on a model built on the meta device."""
    seen: set[int] = set()
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


def tensors_to_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict minus tied duplicates (safetensors stores each tensor once)."""
    return {k: t.detach().contiguous().cpu() for k, t in _unique_entries(model).items()}


def save_pretrained(model, directory: str | os.PathLike, extra: dict[str, Any] | None = None):
    d = Path(directory)
    tensors = tensors_to_save(model)
    atomic_write(d / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    meta = {"format": FORMAT, "format_version": 1, "config": model.config.to_dict(),
            **(extra or {})}
    atomic_write(d / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return d


def read_json(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A checkpoint's JSON file, parsed; CheckpointError naming the file when it is
    missing, unreadable, over `max_bytes` (checked before reading) or not JSON."""
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path} not found: {what}")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise CheckpointError(f"{path} is {size} bytes, over the {max_bytes}-byte limit "
                                  f"for this file: it is not a checkpoint's {path.name}")
        return json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({_one_line(e)}); re-save the "
                              "checkpoint") from e
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({_one_line(e)})") from e


def read_config(directory: str | os.PathLike) -> VLMConfig:
    """The VLMConfig of a checkpoint folder, every field type- and bounds-checked
    (config.MAX_SIZES) so that nothing is built from a damaged or hostile file."""
    path = Path(directory) / CONFIG_NAME
    meta = read_json(path, f"a checkpoint folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                           "(written by save_pretrained)")
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT
            or not isinstance(meta.get("config"), dict)):
        raise CheckpointError(f"{path} is not an ssm-bridge config (expected format={FORMAT!r} "
                              "and a 'config' object)")
    try:
        return VLMConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {_one_line(e)}") from e


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype such as "F32", shape) from a weights file's header,
    without reading tensor data. safetensors caps the header at 100 MB and checks that
    the offsets cover the file exactly, so the shapes are bounded by the file's size."""
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path} not found; save weights with save_pretrained "
                                      "(a run killed while saving leaves no such file: use "
                                      "an earlier checkpoint)")
    try:
        with safe_open(path, "pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape()))
                    for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_one_line(e)}); "
                              "it may be truncated or corrupt: re-save or re-download the "
                              "checkpoint") from e


def check_weights(model: torch.nn.Module, directory: str | os.PathLike,
                  name: str = WEIGHTS_NAME) -> None:
    """Check `directory/name`'s header against `model` (names, shapes, dtypes) without
    loading any data; `model` may live on the meta device. CheckpointError on a missing,
    extra or mis-shaped tensor, or a dtype that cannot be cast safely (see load_weights)."""
    path = Path(directory) / name
    header = read_header(path)
    expected = _unique_entries(model)
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    common = sorted(set(expected) & set(header))
    wrong = [f"{k}: file {header[k][1]} vs model {tuple(expected[k].shape)}"
             for k in common if header[k][1] != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not match the model built from {CONFIG_NAME}: "
            f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}, "
            f"shape mismatches {_few(wrong)}")
    bad = [f"{k} is {header[k][0]}" for k in common
           if not _castable(header[k][0], expected[k].dtype)]
    if bad:
        raise CheckpointError(
            f"{path} holds tensors of a type the model cannot take safely: {_few(bad)}. "
            "Weights must be floating point (F16, BF16 and F32 widen exactly; F64 is "
            "narrowed only when every value fits float32); re-save the checkpoint")


def load_weights(model: torch.nn.Module, directory: str | os.PathLike,
                 name: str = WEIGHTS_NAME) -> None:
    """Load `directory/name` into `model`, all or nothing. CheckpointError (before any
    tensor data is read) on a missing, extra or mis-shaped key or a dtype that cannot be
    cast safely: integer or boolean data where the model holds floats is refused; float16
    and bfloat16 widen exactly to float32; float64 is narrowed only when every value is
    within float32's range. CheckpointError (before the model changes) on NaN or Inf."""
    check_weights(model, directory, name)
    path = Path(directory) / name
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_one_line(e)}); "
                              "it may be truncated or corrupt: re-save or re-download the "
                              "checkpoint") from e
    expected = _unique_entries(model)
    for k, t in tensors.items():
        tensors[k] = _finite_as(t, expected[k].dtype, k, path)
    model.load_state_dict(tensors, strict=False)


def _castable(file_dtype: str, want: torch.dtype) -> bool:
    if not want.is_floating_point:
        return file_dtype == _ST_DTYPES.get(want)
    return file_dtype in _FLOAT_ST_DTYPES


def _finite_as(t: torch.Tensor, want: torch.dtype, name: str, path: Path) -> torch.Tensor:
    """`t` as `want`; CheckpointError when it holds NaN or Inf, or values that overflow."""
    if not t.is_floating_point():
        return t
    if not torch.isfinite(t).all():
        raise CheckpointError(f"{path}: {name} holds NaN or infinite values; the weights are "
                              "damaged (a diverged run?): use an earlier checkpoint")
    out = t.to(want)
    if not torch.isfinite(out).all():
        raise CheckpointError(f"{path}: {name} holds {t.dtype} values beyond the range of "
                              f"{want}; the weights are damaged")
    return out


def _few(items: list[str], n: int = 10) -> str:
    return f"{items[:n]}{'...' if len(items) > n else ''}"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
