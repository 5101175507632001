"""The training loop: AdamW, warmup + cosine, clipping, accumulation, bf16 autocast,
gradient checkpointing, DDP, atomic checkpoints and exact resume.

A run folder holds:
    train_config.json   the TrainConfig as given (precision may say "auto"), its model as
                        built (the tokenizer's vocab_size); TrainConfig.from_dict reads it
    run_info.json       what this start resolved: precision and why, device, world size
    metrics.jsonl       one JSON object per log / eval event, one per (kind, step)
    loss_curve.png      redrawn at every evaluation and at the end
    checkpoints/step-XXXXXXX/   model (config.json, model.safetensors), tokenizer.json,
                        optimizer.safetensors, trainer_state.json (step, scheduler),
                        rng-rank{r}.safetensors (each DDP rank's RNG state);
                        with ema_decay > 0, model.safetensors holds the weight average
                        and train_weights.safetensors the raw weights resume needs
    checkpoints/latest  name of the newest complete checkpoint, replaced atomically
A checkpoint is written into .step-XXXXXXX.tmp-PID, every file fsynced, and renamed into
place only when complete; a folder it replaces is first renamed aside. A kill at any
moment thus leaves each visible step-* folder complete, and the next start puts back or
removes what the kill left (`clean_stale`). Resuming reads `latest`, or the newest
complete checkpoint if `latest` names none; the data order is a pure function of (seed,
epoch, step), so a resumed run continues exactly where the uninterrupted one would be.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..model import EnhancedVLM
from .checkpoint import (
    CONFIG_NAME,
    NO_SPACE,
    WEIGHTS_NAME,
    atomic_write,
    fsync_dir,
    naming,
    read_config,
    tensors_to_save,
)
from .precision import resolve_precision
from .train_config import TrainConfig

TRAIN_WEIGHTS = "train_weights.safetensors"  # raw weights beside the EMA (ema_decay > 0)
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
OLD_RNG_NAME = "rng.safetensors"  # checkpoints before per-rank RNG files: rank 0's state
# Files every complete checkpoint holds (trainer_state.json is written last).
CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, "tokenizer.json", OPTIMIZER_NAME, STATE_NAME)
# VLMConfig fields that change how the model computes, not what: they may differ on resume.
RUNTIME_FIELDS = ("gradient_checkpointing", "ssm_scan_backend", "attn_impl")


def rng_name(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


class NonFiniteLossError(RuntimeError):
    pass


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, ...); the previous one is intact."""


# ---------------------------------------------------------------- distributed
def dist_info(backend: str | None = None) -> tuple[int, int]:
    """(rank, world_size), initialising the process group under torchrun (nccl for CUDA
    training, gloo for CPU training)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), dist.get_world_size()


def end_distributed() -> None:
    """Destroy the process group, once the trainers that used it are gone.

    A DDP wrapper still alive holds the group, so destroy_process_group alone leaves gloo's
    threads to be freed at interpreter exit, where gloo can abort the process ("terminate
    called without an active exception", SIGABRT) after a run that succeeded. Drop every
    Trainer first; the collect frees the wrapper's reference cycles now, not at exit."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


# ---------------------------------------------------------------- optimisation
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; norms, biases, A_log, D, gates and positions are left alone."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or getattr(p, "_no_weight_decay", False) or "pos_embed" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine to min_lr_ratio at max_steps."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


# ---------------------------------------------------------------- checkpoints
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"state.{i}.{k}": v.contiguous() for i, s in sd["state"].items()
               for k, v in s.items() if isinstance(v, torch.Tensor)}
    return tensors, {"param_groups": sd["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    np_state = np.random.get_state()  # noqa: NPY002 (the global state is what user code shares)
    tensors = {"torch": torch.get_rng_state(),
               "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    py = random.getstate()
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    name, pos, has_gauss, gauss = meta["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, gauss))  # noqa: NPY002
    version, state, gauss_next = meta["python"]
    random.setstate((version, tuple(state), gauss_next))


def _load_rng(ckpt: Path, rank: int, state: dict) -> None:
    """Restore this rank's RNG; rank 0's where the checkpoint has no file for this rank
    (saved with fewer processes), and the single rng.safetensors of older checkpoints."""
    path = next((ckpt / n for n in (rng_name(rank), rng_name(0)) if (ckpt / n).is_file()), None)
    if path is None:
        _set_rng_state(load_file(ckpt / OLD_RNG_NAME), state["rng"])
        return
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["rng"])
        _set_rng_state({k: f.get_tensor(k) for k in f.keys()}, meta)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model, d = min(decay, (1 + step) / (10 + step)): the
    warm-up keeps the early average from being dominated by the random init."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()],
                             1.0 - d)


# ---------------------------------------------------------------- run folders
def checkpoint_step(path: Path) -> int | None:
    """10 for a folder named step-0000010, else None."""
    prefix, _, digits = path.name.partition("-")
    return int(digits) if prefix == "step" and digits.isdigit() else None


def is_complete(path: Path) -> bool:
    return (path.is_dir() and all((path / n).is_file() for n in CHECKPOINT_FILES)
            and any((path / n).is_file() for n in (rng_name(0), OLD_RNG_NAME)))


def complete_checkpoints(ckpts: Path) -> list[Path]:
    """The complete step-* folders, oldest first."""
    found = [p for p in ckpts.glob("step-*") if checkpoint_step(p) is not None]
    return sorted((p for p in found if is_complete(p)), key=checkpoint_step)


def find_resumable(run_dir: str | os.PathLike) -> tuple[Path | None, str | None]:
    """(checkpoint to resume from or None, a note when `latest` could not be used)."""
    ckpts = Path(run_dir) / "checkpoints"
    pointer = ckpts / "latest"
    named = pointer.read_text().strip() if pointer.is_file() else ""
    if named and Path(named).name == named and is_complete(ckpts / named):
        return ckpts / named, None
    done = complete_checkpoints(ckpts) if ckpts.is_dir() else []
    if not named:
        return (done[-1], f"{pointer} is missing; using {done[-1].name}, the newest complete "
                          "checkpoint") if done else (None, None)
    why = f"{pointer} names {named}, which is incomplete or missing"
    if not done:
        return None, f"{why}, and no other checkpoint is complete"
    return done[-1], f"{why}; using {done[-1].name}, the newest complete checkpoint"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `latest` names, or the newest complete one (saying so on stderr)."""
    path, note = find_resumable(run_dir)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return path


def clean_stale(ckpts: Path) -> None:
    """Undo what a killed save left: a complete checkpoint renamed aside (.NAME.old-PID)
    goes back if nothing took its place; unfinished .NAME.tmp-PID folders, half-deleted
    .NAME.del-PID ones and temp files go."""
    if not ckpts.is_dir():
        return
    for aside in ckpts.glob(".step-*.old-*"):
        final = ckpts / aside.name[1:].rpartition(".old-")[0]
        if not final.exists() and is_complete(aside):
            os.replace(aside, final)
        else:
            shutil.rmtree(aside, ignore_errors=True)
    for stale in [*ckpts.glob(".*.tmp*"), *ckpts.glob(".step-*.del-*")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def no_space_message(run_dir: Path, target: Path | None, verb: str = "write",
                     need: int | None = None) -> str:
    """The one line for a full disk (or quota) while a run writes `target` (a file or a
    checkpoint folder; None: some file of run_dir): where, what is free, what is kept."""
    folder = run_dir if target is None else target.parent
    what = "its files" if target is None else f"{verb} {target.name}"
    present = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(present).free
    needs = "" if need is None else f"{target.name} needs about {need / 1e6:.1f} MB and "
    previous, _ = find_resumable(run_dir)
    kept = f"{previous.name} is intact" if previous else "no earlier checkpoint exists"
    return (f"no space left on the device of {folder} to {what}: {needs}"
            f"{free / 1e6:.1f} MB are free; {kept}. Free space (or lower --keep_checkpoints, "
            f"or move --out_dir), then rerun with --resume")


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records; a line a kill tore mid-write is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict)]


# ---------------------------------------------------------------- the trainer
class Trainer:
    """Runs `cfg` on `train_set` (items: image, tokens, targets; batched by `collate`).

    `evaluate(model) -> dict` is called every `eval_every` steps on rank 0; its
    "exact_match" can stop training early (`stop_at_exact_match`, on every rank).
    """

    def __init__(self, cfg: TrainConfig, model: EnhancedVLM, train_set, collate, tokenizer,
                 evaluate: Callable[[EnhancedVLM], dict] | None = None,
                 extras: Callable[[Path], None] | None = None) -> None:
        self.cfg = cfg
        self.extras = extras  # writes more files (preprocessing, scene config) per checkpoint
        self.device = self._pick_device(cfg.device)
        self.rank, self.world = dist_info("nccl" if self.device.type == "cuda" else "gloo")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", self.rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)  # where nccl's object collectives run
        self.precision, self.precision_reason, warning = resolve_precision(cfg.precision,
                                                                           self.device)
        if warning and self.rank == 0:
            print(f"warning: {warning}", file=sys.stderr)
        self.model = model.to(self.device)
        self.model.set_gradient_checkpointing(cfg.gradient_checkpointing)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model)
                    if self.world > 1 else self.model)
        self.train_set, self.collate, self.tokenizer = train_set, collate, tokenizer
        self.evaluate = evaluate
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                     betas=(cfg.beta1, cfg.beta2),
                                     fused=self.device.type == "cuda" or None)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        # The weight average (ema_decay > 0): evaluated and saved as the checkpoint's model.
        self.ema = (copy.deepcopy(self.model).eval().requires_grad_(False)
                    if cfg.ema_decay > 0 else None)
        self.step = 0
        self.run_dir = Path(cfg.out_dir)
        self.samples_seen = 0
        self.train_seconds = 0.0
        self._epoch_cache: tuple[int, torch.Tensor | None] = (-1, None)
        self._saved_step: int | None = None  # the step this run folder has a checkpoint of
        self._logged: set[tuple[str, int]] = set()  # (kind, step) already in metrics.jsonl
        self._tag = self._broadcast(os.getpid())  # names rank 0's temporary folders

    @staticmethod
    def _pick_device(name: str) -> torch.device:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={name} but torch {torch.__version__} sees no CUDA "
                             "device here; use --device=cpu or --device=auto")
        return torch.device(name)

    # ---- collectives (no-ops in one process) ----
    def _broadcast(self, value: int) -> int:
        """Rank 0's `value` on every rank."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(t, src=0)
        return int(t.item())

    def _all_ok(self, ok: bool) -> bool:
        """True on every rank iff `ok` on every rank."""
        if self.world == 1:
            return ok
        t = torch.tensor([int(ok)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    # ---- data ----
    def batch_at(self, step: int, micro: int):
        """The micro-batch for (step, micro) on this rank: a pure function of the seed."""
        per_step = self.cfg.batch_size * self.cfg.grad_accum * self.world
        n = len(self.train_set)
        start = step * per_step + (micro * self.world + self.rank) * self.cfg.batch_size
        idx = [int(self._order(epoch)[i]) for epoch, i in
               (divmod(pos, n) for pos in range(start, start + self.cfg.batch_size))]
        if step < self.cfg.caption_steps:  # stage 1: the scenes' captions (TrainConfig)
            return self.collate([self.train_set.caption_item(i) for i in idx])
        return self.collate([self.train_set[i] for i in idx])

    def _order(self, epoch: int) -> torch.Tensor:
        if self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, epoch_order(len(self.train_set), self.cfg.seed, epoch))
        return self._epoch_cache[1]

    # ---- one optimizer step ----
    def train_step(self) -> float:
        cfg = self.cfg
        self.ddp.train()
        self.model.decoder.prefix_dropout_on = self.step >= cfg.prefix_dropout_start
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        bf16 = self.precision == "bf16"
        for micro in range(cfg.grad_accum):
            images, tokens, targets = (t.to(self.device) for t in self.batch_at(self.step, micro))
            sync = micro == cfg.grad_accum - 1 or self.world == 1
            ctx = self.ddp.no_sync() if not sync else contextlib.nullcontext()
            with ctx, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                _, loss = self.ddp(images, tokens, targets)
                (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
        if not math.isfinite(total):
            raise NonFiniteLossError(
                f"loss is {total} at step {self.step}: training diverged. Lower --lr (now "
                f"{cfg.lr:g}), keep --grad_clip > 0, or use --precision=fp32; resume from the "
                f"last good checkpoint with --resume"
            )
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            ema_update(self.ema, self.model, self.cfg.ema_decay, self.step)
        self.step += 1
        self.samples_seen += cfg.batch_size * cfg.grad_accum * self.world
        return total

    # ---- the loop ----
    def fit(self) -> dict:
        cfg = self.cfg
        if self.rank == 0:
            self._start_run_folder()
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not cfg.progress or self.rank,
                   desc="train", unit="step", dynamic_ncols=True)
        last_eval: dict = {}
        while self.step < cfg.max_steps:
            t0 = time.perf_counter()
            loss = self.train_step()
            self.train_seconds += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.sched.get_last_lr()[0]:.2e}")
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                self.log(kind="train", loss=loss, lr=self.sched.get_last_lr()[0])
            evaluated = bool(cfg.eval_every) and self.step % cfg.eval_every == 0
            if evaluated:
                last_eval = self.run_eval()
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save()
            # Only rank 0 evaluates: its decision reaches every rank, or the others would
            # train on alone and all would wait in collectives until the timeout.
            if evaluated and cfg.stop_at_exact_match > 0 and self._broadcast(
                    int(cfg.stop_at_exact_match <= last_eval.get("exact_match", 0))):
                break
        bar.close()
        if self.world > 1:
            self.log(kind="replicas", replicas_identical=self.replicas_identical())
        self.save()  # a no-op when the loop has just saved this step
        if self.evaluate is not None and (not cfg.eval_every or self.step % cfg.eval_every):
            last_eval = self.run_eval()
        if self.rank == 0:
            self.plot()
        if self.world > 1:
            dist.barrier()  # no rank leaves while rank 0 still saves and evaluates
        return last_eval

    def _start_run_folder(self) -> None:
        """Config, run info and metrics of this start (rank 0): metrics.jsonl keeps only
        the records up to this step, so a resumed run logs no step twice (and a line a
        kill tore is dropped)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(self.run_dir / "checkpoints")
        self.cfg.save(self.run_dir / "train_config.json")
        info = {"precision": self.cfg.precision, "precision_resolved": self.precision,
                "precision_reason": self.precision_reason, "device": str(self.device),
                "world_size": self.world, "torch": torch.__version__, "start_step": self.step}
        atomic_write(self.run_dir / "run_info.json",
                     lambda p: Path(p).write_text(json.dumps(info, indent=2)))
        if self.cfg.progress:
            print(f"precision {self.precision} ({self.precision_reason}) on {self.device}",
                  file=sys.stderr)
        path = self.run_dir / "metrics.jsonl"
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= self.step]
        if path.is_file():
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(path, lambda p: Path(p).write_text(text))
        self._logged = {(r.get("kind"), r.get("step")) for r in kept}

    @property
    def inference_model(self) -> EnhancedVLM:
        """What evaluation and checkpoints use: the weight average if kept, else the model."""
        return self.ema if self.ema is not None else self.model

    def run_eval(self) -> dict:
        if self.evaluate is None or self.rank != 0:
            return {}
        self.model.eval()
        metrics = self.evaluate(self.inference_model)
        self.log(kind="eval", **metrics)
        self.plot()
        return metrics

    def replicas_identical(self) -> bool:
        """Every rank holds bit-identical parameters (DDP's promise, checked)."""
        flat = torch.cat([p.detach().flatten().float() for p in self.model.parameters()])
        index = torch.arange(len(flat), device=flat.device)
        checksum = torch.stack([flat.sum(), (flat * index % 7919).sum()])
        gathered = [torch.zeros_like(checksum) for _ in range(self.world)]
        dist.all_gather(gathered, checksum)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    # ---- logging ----
    def log(self, **record) -> None:
        """Append a record (rank 0), once per (kind, step): a resumed run that repeats the
        end of the last one (its final evaluation) does not log it twice."""
        key = (record.get("kind"), self.step)
        if self.rank != 0 or key in self._logged:
            return
        self._logged.add(key)
        record = {"step": self.step, "samples": self.samples_seen,
                  "train_seconds": round(self.train_seconds, 3), **record}
        path = self.run_dir / "metrics.jsonl"
        with naming(path), open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        from viz.training import plot_training_curves

        records = read_metrics(self.run_dir / "metrics.jsonl")
        if records:
            fig = plot_training_curves(records)
            atomic_write(self.run_dir / "loss_curve.png",
                         lambda p: fig.savefig(p, dpi=110, format="png"))
            fig.clf()

    # ---- checkpoints ----
    def save(self) -> Path | None:
        """Checkpoint this step; every rank calls it (each sends rank 0 its RNG state).
        Written aside, fsynced and renamed into place complete; a step is saved once; a
        failure raises on every rank. Returns the folder on rank 0."""
        ckpts = self.run_dir / "checkpoints"
        final = ckpts / f"step-{self.step:07d}"
        if self._saved_step != self.step:
            rngs = self._gather_rng()
            error: Exception | None = None
            if self.rank == 0:
                tmp = ckpts / f".{final.name}.tmp-{self._tag}"
                try:
                    self._write_state(tmp, rngs)
                except Exception as e:  # raised below once every rank knows
                    error = e
                    shutil.rmtree(tmp, ignore_errors=True)
            if not self._all_ok(error is None):
                raise self._save_error(error, final)
            if self.rank == 0:
                self._swap_in(tmp, final)
                atomic_write(ckpts / "latest", lambda p: Path(p).write_text(final.name))
                self._prune(ckpts, keep=final)
            self._saved_step = self.step
        return final if self.rank == 0 else None

    def _gather_rng(self) -> list[tuple[dict, dict]] | None:
        """Every rank's RNG state, on rank 0 (None elsewhere)."""
        mine = _rng_state()
        if self.world == 1:
            return [mine]
        gathered = [None] * self.world if self.rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        return gathered

    def _save_error(self, error: Exception | None, final: Path) -> Exception:
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return CheckpointWriteError(self._no_space_message(final))
        return error or CheckpointWriteError(f"rank 0 could not write {final}; see its error")

    def _write_state(self, tmp: Path, rngs: list[tuple[dict, dict]]) -> None:
        """Every file of a checkpoint into `tmp` (rank 0), each fsynced, then the folder."""
        shutil.rmtree(tmp, ignore_errors=True)
        self.inference_model.save_pretrained(tmp)
        if self.ema is not None:
            tensors = tensors_to_save(self.model)
            atomic_write(tmp / TRAIN_WEIGHTS, lambda p: save_file(tensors, p))
        self.tokenizer.save(tmp / "tokenizer.json")
        if self.extras is not None:
            self.extras(tmp)
        opt_tensors, opt_meta = _flatten_optimizer(self.opt)
        atomic_write(tmp / OPTIMIZER_NAME, lambda p: save_file(opt_tensors, p))
        state = {"step": self.step, "samples_seen": self.samples_seen,
                 "train_seconds": self.train_seconds, "scheduler": self.sched.state_dict(),
                 "optimizer": opt_meta, "world_size": self.world,
                 "train_config": self.cfg.to_dict()}
        for rank, (tensors, meta) in enumerate(rngs):
            atomic_write(tmp / rng_name(rank), lambda p, t=tensors, m=meta: save_file(
                t, p, metadata={"rng": json.dumps(m)}))
        atomic_write(tmp / STATE_NAME, lambda p: Path(p).write_text(json.dumps(state)))
        fsync_dir(tmp)

    def _swap_in(self, tmp: Path, final: Path) -> None:
        """Rename the complete `tmp` to `final`. A folder already there (left by an earlier
        run) is renamed aside first and deleted only after: at no moment is it gone
        before its replacement is in place (clean_stale puts it back after a kill)."""
        aside = final.parent / f".{final.name}.old-{self._tag}"
        if final.exists():
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(aside, ignore_errors=True)

    def _no_space_message(self, final: Path) -> str:
        tensors = [*tensors_to_save(self.inference_model).values(),
                   *_flatten_optimizer(self.opt)[0].values()]
        if self.ema is not None:
            tensors += tensors_to_save(self.model).values()
        need = sum(t.numel() * t.element_size() for t in tensors)
        return no_space_message(self.run_dir, final, "save", need)

    def _prune(self, ckpts: Path, keep: Path) -> None:
        """Delete all but the newest keep_checkpoints complete folders, each renamed out of
        view first so that a kill mid-delete leaves no half folder named step-*."""
        done = complete_checkpoints(ckpts)
        for old in done[: max(0, len(done) - self.cfg.keep_checkpoints)]:
            if old != keep:
                doomed = ckpts / f".{old.name}.del-{self._tag}"
                os.replace(old, doomed)
                shutil.rmtree(doomed, ignore_errors=True)

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Restore model, optimizer, scheduler, RNG and step from `path`, or from the
        latest complete checkpoint of the run folder. False when there is none."""
        if path is None:
            if self.rank == 0:
                clean_stale(self.run_dir / "checkpoints")
            if self.world > 1:
                dist.barrier()  # the other ranks look once rank 0 has tidied up
            path, note = find_resumable(self.run_dir)
            if note and self.rank == 0:
                print(f"warning: {note}", file=sys.stderr)
            if path is None:
                return False
        path = Path(path)
        self._check_same_model(path)
        from .checkpoint import load_weights

        averaged = (path / TRAIN_WEIGHTS).is_file()  # saved with ema_decay > 0
        load_weights(self.model, path, TRAIN_WEIGHTS if averaged else WEIGHTS_NAME)
        if self.ema is not None and averaged:
            load_weights(self.ema, path)
        elif self.ema is not None:  # no average saved: one starts from these weights
            self.ema.load_state_dict(self.model.state_dict())
        state = json.loads((path / STATE_NAME).read_text())
        opt = _unflatten_optimizer(load_file(path / OPTIMIZER_NAME), state["optimizer"])
        self.opt.load_state_dict(opt)
        self.sched.load_state_dict(state["scheduler"])
        _load_rng(path, self.rank, state)
        self.step = state["step"]
        # The data order is a function of the run's seed: keep the checkpoint's.
        self.cfg.seed = state["train_config"]["seed"]
        self.samples_seen = state["samples_seen"]
        self.train_seconds = state["train_seconds"]
        if path.parent.resolve() == (self.run_dir / "checkpoints").resolve():
            self._saved_step = self.step  # already on disk: the end of fit need not resave
        return True

    def _check_same_model(self, path: Path) -> None:
        """A checkpoint of another model (other --model.* values) cannot be resumed: one
        ValueError naming the fields that differ."""
        saved = read_config(path).to_dict()
        ours = self.model.config.to_dict()
        differ = [f"{k} ({saved.get(k)!r} there, {v!r} here)" for k, v in ours.items()
                  if k not in RUNTIME_FIELDS and saved.get(k) != v]
        if differ:
            raise ValueError(f"cannot resume from {path}: it was trained with other model "
                             f"settings: {', '.join(differ)}. Use the same preset and "
                             "--model.* values, or a new --out_dir")
