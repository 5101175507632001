"""`TrainConfig`: a training run, as named presets plus `--key=value` overrides (no exec).

    python -m ssm_bridge.training.train --preset=shapes-tiny --lr=2e-3 --model.ssm_scan_order=cross

Keys are TrainConfig fields; `model.<field>` sets a VLMConfig field and
`scenes.<field>` a SceneConfig field. Values are parsed by the field's type.
A training preset (TRAIN_PRESETS) names a model preset of `config.PRESETS` and gives its
own training fields (and scene fields, if any); the command line's values go on top.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import VLMConfig, check_types
from ..data.scenes import SceneConfig


@dataclass
class TrainConfig:
    preset: str = "shapes-tiny"
    out_dir: str = "runs/shapes-tiny"
    seed: int = 0  # model init, data order, dropout: one seed makes a run repeatable
    # ---- data ----
    data: str = "scenes"  # scenes | coco
    task: str = "caption"  # caption | vqa | mixed (scenes only)
    # task=mixed or vqa: the first caption_steps steps train on each scene's caption only,
    # then on the task (LLaVA's stage 1 aligns image and text on captions before the
    # instructions). Half-caption batches let some runs model the answers' grammar and
    # never read the image (docs/ablation.md, "Session 14"). 0: the task from step 0.
    caption_steps: int = 0
    num_train: int = 50_000  # training scenes, pre-rendered once (scenes only)
    draw_workers: int = 0  # processes drawing the training scenes (0 = this one)
    # Sanity check (Adebayo et al.'s data randomisation): train each image on another
    # scene's caption, by a permutation drawn from `seed`. Scenes only.
    shuffle_captions: bool = False
    coco_annotations: str = ""  # COCO-format annotation JSON (data=coco)
    coco_images: str = ""  # image folder (data=coco)
    coco_karpathy: str = ""  # optional Karpathy split file (data=coco)
    skip_bad: bool = False  # skip unreadable COCO entries instead of failing
    coco_min_count: int = 5  # words rarer than this in the captions become <unk>
    # ---- optimisation ----
    batch_size: int = 64  # per process, per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int = 2000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.05  # not applied to norms, biases, A_log, D, gates
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # >0: also keep an exponential moving average of the weights (decay per step, warmed up
    # as min(decay, (1 + step) / (10 + step))); evaluation and each checkpoint's
    # model.safetensors use the average, which smooths the last steps' noise away.
    ema_decay: float = 0.0
    # The step from which model.image_prefix_dropout applies (0 = from the first step).
    # Blanking the prefix before the model has learned to read the image stalls learning;
    # switched on once the prefix path has learned, it moves the model onto its
    # cross-attention without costing accuracy (docs/training-notes.md).
    prefix_dropout_start: int = 0
    # auto | fp32 | bf16 (autocast on CPU and CUDA). "auto" picks bf16 only where the device
    # computes it natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX) and fp32 elsewhere:
    # emulated bf16 on an AVX2 CPU made the shapes-tiny step 19x slower (training/precision.py)
    precision: str = "auto"
    # Recompute blocks in backward to save memory; --model.gradient_checkpointing=true turns
    # it on as well (either switch does; neither can turn the other off).
    gradient_checkpointing: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch threads per process; 0 = torch's default
    # ---- bookkeeping ----
    log_every: int = 10
    eval_every: int = 250  # 0 disables periodic evaluation
    eval_num: int = 200  # val scenes per periodic evaluation (greedy exact-match)
    save_every: int = 250
    keep_checkpoints: int = 2
    stop_at_exact_match: float = 0.0  # >0: stop once val exact-match reaches it
    # A checkpoint folder whose weights start this run (fine-tuning): the model config and
    # vocabulary must match; optimizer, schedule and step start fresh (unlike --resume).
    init_from: str = ""
    progress: bool = True  # tqdm bar
    # The model to train. Its vocab_size is a placeholder: the model is built with the
    # tokenizer's (train.build_model), as the vocabulary comes from the data.
    model: VLMConfig = field(default_factory=VLMConfig)
    # The scene world (data=scenes); None: SceneConfig's defaults at the model's img_size.
    scenes: SceneConfig | None = None

    def __post_init__(self) -> None:
        if self.scenes is None and isinstance(self.model, VLMConfig):
            self.scenes = scene_config(self.model, {})
        _validate(self)
        # Either switch turns checkpointing on, so that the model's is never undone.
        on = self.gradient_checkpointing or self.model.gradient_checkpointing
        self.gradient_checkpointing = on
        if self.model.gradient_checkpointing != on:
            self.model = self.model.replace(gradient_checkpointing=on)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """The TrainConfig that `to_dict()` (train_config.json, a checkpoint's
        trainer_state.json, an ablation run's result.json) was written from. Fields added
        since are at their defaults. It also reads the form written before `model` and
        `scenes` were typed, which held only the fields given (the preset's and the
        command line's): the others were the VLMConfig / SceneConfig defaults, with the
        scenes at the model's img_size, and are read so."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields are "
                             f"{sorted(known)}")
        top = {k: v for k, v in d.items() if k not in ("model", "scenes")}
        model = VLMConfig.from_dict(_mapping(d.get("model", {}), "model"))
        scenes = _mapping(d.get("scenes", {}), "scenes")
        return cls(**top, model=model, scenes=scene_config(model, scenes))

    def save(self, path) -> None:
        from .checkpoint import atomic_write

        atomic_write(path, lambda p: open(p, "w").write(json.dumps(self.to_dict(), indent=2)))


# The fields with a closed set of values, and the ranges of the numeric ones.
CHOICES: dict[str, tuple[str, ...]] = {
    "data": ("scenes", "coco"), "task": ("caption", "vqa", "mixed"),
    "precision": ("auto", "fp32", "bf16"), "device": ("auto", "cpu", "cuda", "cuda:N"),
}
_AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
_AT_LEAST_0 = (lambda v: v >= 0, ">= 0 (0 disables)")
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_train": _AT_LEAST_1, "coco_min_count": _AT_LEAST_1, "batch_size": _AT_LEAST_1,
    "grad_accum": _AT_LEAST_1, "max_steps": _AT_LEAST_1, "log_every": _AT_LEAST_1,
    "keep_checkpoints": _AT_LEAST_1,
    "draw_workers": (lambda v: v >= 0, ">= 0 (0 = draw in this process)"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"), "weight_decay": (lambda v: v >= 0, ">= 0"),
    "prefix_dropout_start": (lambda v: v >= 0, ">= 0"),
    "caption_steps": (lambda v: v >= 0, ">= 0 (0 = the task from the first step)"),
    "threads": (lambda v: v >= 0, ">= 0 (0 = torch's default)"),
    "grad_clip": _AT_LEAST_0, "eval_every": _AT_LEAST_0, "eval_num": _AT_LEAST_0,
    "save_every": _AT_LEAST_0,
    "lr": (lambda v: v > 0, "> 0"), "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"), "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0 disables, 0.999 is typical)"),
    "stop_at_exact_match": (lambda v: 0 <= v <= 1, "in [0, 1] (0 disables)"),
}


def _validate(cfg: TrainConfig) -> None:
    """Types, closed sets and ranges of every field: one ValueError naming the field."""
    for name, typ in _field_types(TrainConfig).items():
        value = getattr(cfg, name)
        if not _has_type(value, typ):
            raise ValueError(f"{name} must be {_kind(typ)}, got {value!r}")
    if cfg.preset not in TRAIN_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(TRAIN_PRESETS)}, got {cfg.preset!r}")
    for name, allowed in CHOICES.items():
        value = getattr(cfg, name)
        if value not in allowed and not (name == "device" and _is_cuda_index(value)):
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    for name, (check, allowed) in RANGES.items():
        if not check(getattr(cfg, name)):
            raise ValueError(f"{name} must be {allowed}, got {getattr(cfg, name)!r}")
    if cfg.caption_steps and not (cfg.data == "scenes" and cfg.task != "caption"):
        raise ValueError(f"caption_steps={cfg.caption_steps} trains captions before the task, "
                         f"so it needs data=scenes and task=mixed or vqa, got data={cfg.data!r}, "
                         f"task={cfg.task!r}; drop caption_steps or change the task")
    if cfg.stop_at_exact_match and not (cfg.data == "scenes" and cfg.eval_every
                                        and cfg.eval_num):
        raise ValueError("stop_at_exact_match needs periodic evaluation (data=scenes, "
                         f"eval_every > 0, eval_num > 0), got data={cfg.data!r}, "
                         f"eval_every={cfg.eval_every}, eval_num={cfg.eval_num}")


def _has_type(value: Any, typ: Any) -> bool:
    if typ is bool:
        return isinstance(value, bool)
    if typ in (int, float, str):  # a float field takes an int too; True is no number
        accepted = (int, float) if typ is float else typ
        return isinstance(value, accepted) and not isinstance(value, bool)
    return isinstance(value, _config_class(typ))


def _config_class(typ: Any) -> type:
    """VLMConfig or SceneConfig, from a field annotated `X` or `X | None`."""
    return next(a for a in (typ, *typing.get_args(typ)) if dataclasses.is_dataclass(a))


def _kind(typ: Any) -> str:
    names = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}
    if typ in names:
        return names[typ]
    cls = _config_class(typ).__name__
    return f"a {cls} (build_train_config makes one from a preset, TrainConfig.from_dict from " \
           "a dict)"


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a JSON object of its fields, got {value!r}")
    return value


def scene_config(model: VLMConfig, fields: Mapping[str, Any]) -> SceneConfig:
    """The scene world of a run of `model`: SceneConfig's defaults at the model's img_size
    (the size the images are used at), then `fields`; one ValueError for a bad field."""
    known = {f.name for f in dataclasses.fields(SceneConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown SceneConfig field(s) {unknown}; known fields are "
                         f"{sorted(known)}")
    check_types(SceneConfig, fields, "SceneConfig")
    return SceneConfig(**{"img_size": model.img_size, **fields})


def _is_cuda_index(device: str) -> bool:
    kind, _, index = device.partition(":")
    return kind == "cuda" and index.isdigit()


# Training presets: `model` names the model preset (config.PRESETS), `scenes` (optional)
# sets SceneConfig fields, every other key a TrainConfig field. A new model trains like
# shapes-tiny with one entry: "NAME": dict(SHAPES_TINY_TRAINING, model="NAME").
# shapes-tiny (the shipped checkpoint) trains in ~35 min on 2 cores (1.6 drawing the
# scenes, 33 training; docs/training-notes.md has the runs behind each choice). Batch 32
# learns ~2x more per sample than 64 early on; precision "auto" picks bf16 only where the
# CPU computes it natively (1.2x faster there, 19x slower emulated on AVX2); 200 000
# scenes are seen ~2.4 times each (40 000 seen 7 times left a 3-point gap between training
# and test scenes); the weight average smooths the last steps' noise. The model's
# image-prefix dropout from the start stalls learning; over the last third it moves the
# decoder onto its cross-attention.
SHAPES_TINY_TRAINING: dict[str, Any] = dict(
    num_train=200_000, draw_workers=2, batch_size=32, warmup_steps=200, max_steps=15_000,
    precision="auto", ema_decay=0.998, prefix_dropout_start=10_000, eval_every=250,
    eval_num=200, save_every=1000, keep_checkpoints=3,
)
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "shapes-tiny": dict(SHAPES_TINY_TRAINING, model="shapes-tiny"),
    # The Mamba-decoder models (config.PRESETS of the same names): shapes-tiny's data and
    # optimiser, no image-prefix dropout. cobra-tiny: 6000 steps (shapes-tiny passed 97 % at
    # 5500). all-ssm-tiny: 9000 steps, 1.44 passes over the scenes; its 6000-step schedule
    # stopped at 96.9 % test exact-match, wrong on small objects' shapes and sizes, and 9000
    # gave 98.4 % (shapes-all-ssm) in 42 training minutes at 0.28 s a step, fp32, on the
    # 2-core AVX2 CPU (docs/training-notes.md).
    "cobra-tiny": dict(SHAPES_TINY_TRAINING, model="cobra-tiny", max_steps=6000,
                       prefix_dropout_start=0),
    "all-ssm-tiny": dict(SHAPES_TINY_TRAINING, model="all-ssm-tiny", max_steps=9000,
                         prefix_dropout_start=0),
    # Tests: seconds on 2 cores.
    "test-tiny": dict(
        model="test-tiny", num_train=64, batch_size=8, max_steps=20, warmup_steps=2, lr=3e-3,
        log_every=5, eval_every=0, save_every=10, eval_num=8, progress=False,
    ),
}


def _parse_value(raw: str, typ: Any) -> Any:
    """Parse a command-line string as `typ` (bool, int, float, str, Optional[...])."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        return _parse_value(raw, args[0])
    if typ is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {raw!r}")
    if typ in (int, float, str):
        return typ(raw)
    return json.loads(raw)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """['--lr=1e-3', '--model.img_size=32'] -> {'lr': 1e-3, 'model': {'img_size': 32}}."""
    nested = {"model": _field_types(VLMConfig), "scenes": _field_types(SceneConfig)}
    top = _field_types(TrainConfig)
    out: dict[str, Any] = {"model": {}, "scenes": {}}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"expected --key=value, got {arg!r}")
        key, raw = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        group, _, sub = key.partition(".")
        types_ = nested.get(group) if sub else top
        name = sub or key
        if types_ is None or name not in types_ or (not sub and name in nested):
            known = sorted(top) + [f"{g}.<field>" for g in nested]
            raise ValueError(f"unknown option --{key}; known: {', '.join(known)}")
        try:
            value = _parse_value(raw, types_[name])
        except ValueError as e:
            raise ValueError(f"--{key}={raw}: {e}") from e
        if sub:
            out[group][name] = value
        else:
            out[name] = value
    return out


def build_train_config(preset: str, overrides: dict[str, Any]) -> TrainConfig:
    """The training preset `preset`, its model preset and scene fields, then `overrides`
    (as parse_overrides returns them: TrainConfig fields, and dicts of VLMConfig and
    SceneConfig fields under "model" and "scenes")."""
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(TRAIN_PRESETS)}")
    base = TRAIN_PRESETS[preset]
    model_overrides = overrides.get("model", {})
    if "vocab_size" in model_overrides:  # would be replaced by the tokenizer's
        raise ValueError("model.vocab_size is the tokenizer's (the words of the training "
                         "data); leave it out")
    model = VLMConfig.from_preset(base["model"], **model_overrides)
    scenes = scene_config(model, {**base.get("scenes", {}), **overrides.get("scenes", {})})
    top = {k: v for k, v in {**base, **overrides}.items() if k not in ("model", "scenes")}
    top.setdefault("out_dir", f"runs/{preset}")
    return TrainConfig(**{**top, "preset": preset}, model=model, scenes=scenes)
