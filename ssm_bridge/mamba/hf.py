"""Hugging Face interop for `MambaLM`: load a transformers `MambaForCausalLM`.

    model = MambaLM.from_hf("path/to/mamba-130m-hf")    # folder: config.json + *.safetensors
    model = MambaLM.from_hf(hf_model)                     # an in-memory transformers model

Nothing is downloaded: a folder must already be on disk (e.g. fetched once with
`hf download state-spaces/mamba-130m-hf --local-dir DIR`). Weights are read from
safetensors only, never from pickle files.

Tensor names (transformers -> MambaLM), every one mapped and shape-checked against the
config before anything is allocated; an unmapped, missing or misshapen tensor is an error:

    backbone.embeddings.weight (older files: backbone.embedding.weight)  embeddings.weight
    backbone.layers.{i}.norm.weight                                      layers.{i}.norm.weight
    backbone.layers.{i}.mixer.{in_proj, conv1d, x_proj, dt_proj, out_proj}.{weight, bias},
    backbone.layers.{i}.mixer.{A_log, D}                                 layers.{i}.mixer.(same)
    backbone.norm_f.weight                                               norm_f.weight
    lm_head.weight        lm_head.weight when untied; when tied (the default) it must equal
                          the embeddings, which serve as the output head

config.json: the fields of `MambaConfig` are read by name; `intermediate_size`, when
present, must equal expand * hidden_size. The other keys (initialisation, caching, kernel
choices, metadata) do not change the forward pass and are ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..training.checkpoint import atomic_write
from .lm import MambaConfig

if TYPE_CHECKING:
    from .lm import MambaLM

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
MODEL_TYPE = "mamba"
ARCHITECTURE = "MambaForCausalLM"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


class _Tensors:
    """Shapes of the stored tensors by name (read without loading them) and a reader."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], read: Callable[[str], torch.Tensor],
                 close: Callable[[], None] = lambda: None) -> None:
        self.shapes, self.read, self.close = shapes, read, close


# ---------------------------------------------------------------- entry point
def load_hf(cls: type[MambaLM], source, *, dtype: torch.dtype = torch.float32,
            scan_backend: str = "auto") -> MambaLM:
    """`MambaLM.from_hf`: see the module docstring."""
    if isinstance(source, (str, os.PathLike)):
        where = f"'{source}'"
        config_dict, tensors = _read_folder(Path(source))
    elif isinstance(source, nn.Module) and hasattr(source, "config"):
        where = f"the in-memory {type(source).__name__}"
        config_dict = source.config.to_dict()
        _check_model_type(config_dict, where)
        state = source.state_dict()
        tensors = _Tensors({k: tuple(v.shape) for k, v in state.items()}, state.__getitem__)
    else:
        raise TypeError(f"MambaLM.from_hf takes a folder path or a transformers "
                        f"MambaForCausalLM, got {type(source).__name__}")
    try:
        config = config_from_hf(config_dict, where, scan_backend=scan_backend)
        with torch.device("meta"):  # shapes to check against, nothing allocated
            model = cls(config).to(dtype)
        plan, tied_head = _plan(model, tensors.shapes, where)
        model.to_empty(device="cpu")
        model.load_state_dict({ours: tensors.read(k).to(dtype) for ours, k in plan.items()},
                              strict=True)
        if tied_head is not None and not torch.equal(tensors.read(tied_head).to(dtype),
                                                     model.embeddings.weight):
            raise ValueError(f"{where}: {tied_head} differs from the embeddings, yet the config "
                             "ties them (tie_word_embeddings=true); fix config.json")
    finally:
        tensors.close()
    return model.eval()


# ---------------------------------------------------------------- config
def _check_model_type(d: dict, where: str) -> None:
    kind, archs = d.get("model_type"), d.get("architectures") or []
    if kind != MODEL_TYPE:
        held = f"a '{kind}' model" if kind else "no model_type"
        if archs:
            held += f" ({', '.join(map(str, archs))})"
        raise ValueError(f"{where} holds {held}, not Mamba-1: MambaLM.from_hf loads "
                         f"transformers' {ARCHITECTURE} (model_type '{MODEL_TYPE}') only")


def config_from_hf(d: dict, where: str = "config", *, scan_backend: str = "auto") -> MambaConfig:
    """MambaConfig from a transformers config dict (config.json, or config.to_dict())."""
    _check_model_type(d, where)
    names = {f.name for f in dataclasses.fields(MambaConfig)} - {"scan_backend"}
    kwargs = {k: d[k] for k in names if k in d}
    try:
        config = MambaConfig(**kwargs, scan_backend=scan_backend)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: config does not describe a usable Mamba: {e}") from None
    inter = d.get("intermediate_size")
    if inter is not None and inter != config.intermediate_size:
        raise ValueError(f"{where}: intermediate_size={inter} but expand * hidden_size = "
                         f"{config.intermediate_size}; the config contradicts itself")
    return config


def config_to_hf(config: MambaConfig) -> dict:
    """The transformers config dict of a MambaConfig (without the kit-only scan_backend)."""
    d = {k: v for k, v in config.to_dict().items() if k != "scan_backend"}
    return {**d, "model_type": MODEL_TYPE, "architectures": [ARCHITECTURE],
            "intermediate_size": config.intermediate_size, "time_step_rank": config.dt_rank}


# ---------------------------------------------------------------- folders
def _read_folder(path: Path) -> tuple[dict, _Tensors]:
    """config dict and the tensors of a transformers model folder (headers only)."""
    if not path.exists():
        raise FileNotFoundError(f"no such folder: '{path}'; MambaLM.from_hf loads a "
                                f"{ARCHITECTURE} folder already on disk (config.json + "
                                "*.safetensors) and never downloads one")
    if not path.is_dir():
        raise ValueError(f"'{path}' is a file; pass the folder holding config.json and the "
                         "*.safetensors weights")
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise ValueError(f"'{path}' has no {CONFIG_NAME}: not a Hugging Face model folder")
    try:
        config = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"'{cfg_file}' is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"'{cfg_file}' must hold a JSON object, got {type(config).__name__}")
    _check_model_type(config, f"'{path}'")
    return config, _open_weights(path, _weight_files(path))


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"'{index}' is not a safetensors index ({e!r})") from None
        files = [path / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise ValueError(f"'{index}' lists shards that are not in the folder: {absent}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted({p.name for pat in PICKLE_PATTERNS for p in path.glob(pat)})
    if pickles:
        raise ValueError(f"'{path}' holds only pickle weights ({', '.join(pickles)}); this kit "
                         "never loads pickle: save the model with safetensors first "
                         "(transformers: model.save_pretrained(dir))")
    raise ValueError(f"'{path}' has no *.safetensors weights")


def _open_weights(path: Path, files: list[Path]) -> _Tensors:
    """Shapes from each file's header; tensors are read (memory-mapped) only on demand."""
    stack = contextlib.ExitStack()
    handles, shapes = {}, {}
    try:
        for f in files:
            h = stack.enter_context(safe_open(str(f), framework="pt"))
            for k in h.keys():
                if k in handles:
                    raise ValueError(f"'{path}': tensor {k} is stored twice ({handles[k][0]} "
                                     f"and {f.name})")
                handles[k] = (f.name, h)
                shapes[k] = tuple(h.get_slice(k).get_shape())
    except (SafetensorError, OSError) as e:
        stack.close()
        raise ValueError(f"'{path}': cannot read the safetensors weights ({e})") from None
    except ValueError:
        stack.close()
        raise
    return _Tensors(shapes, lambda k: handles[k][1].get_tensor(k), stack.close)


# ---------------------------------------------------------------- mapping
def our_name(hf_name: str) -> str:
    """The MambaLM parameter name of a transformers tensor name (see the module docstring)."""
    name = hf_name.removeprefix("backbone.")
    return "embeddings.weight" if name == "embedding.weight" else name


def hf_name(ours: str) -> str:
    """The transformers tensor name of a MambaLM parameter (the inverse of `our_name`)."""
    return ours if ours.startswith("lm_head.") else f"backbone.{ours}"


def save_hf(model: MambaLM, path) -> Path:
    """Write `model` as a transformers MambaForCausalLM folder: config.json and
    model.safetensors (a tied head is not stored, as transformers does). Each file is
    written under a temporary name and renamed into place."""
    path = Path(path)
    tensors = {hf_name(k): v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path / "model.safetensors",
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(config_to_hf(model.config), indent=2)
    atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return path


def _plan(model: MambaLM, shapes: dict[str, tuple[int, ...]], where: str):
    """({our name: stored name}, stored name of a tied head to compare, or None). Raises on
    any stored tensor without a place, any parameter without a tensor, any shape mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    plan: dict[str, str] = {}
    tied_head, unmapped, wrong = None, [], []
    for k, shape in shapes.items():
        ours = our_name(k)
        if ours == "lm_head.weight" and model.lm_head is None:
            tied_head, ours = k, "embeddings.weight"
        elif ours not in expected or ours in plan:
            unmapped.append(k)
            continue
        else:
            plan[ours] = k
        if shape != expected[ours]:
            wrong.append(f"{k} {shape} (expected {expected[ours]})")
    if unmapped:
        raise ValueError(f"{where}: {len(unmapped)} stored tensor(s) have no place in MambaLM: "
                         f"{_few(unmapped)}; is this a Mamba-1 {ARCHITECTURE}?")
    missing = [k for k in expected if k not in plan]
    if missing:
        raise ValueError(f"{where}: the weights lack {len(missing)} tensor(s) the config needs: "
                         f"{_few(missing)}")
    if wrong:
        raise ValueError(f"{where}: tensor shapes do not match config.json: {_few(wrong)}")
    return plan, tied_head


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
