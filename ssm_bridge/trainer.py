"""The training loop: AdamW, warmup + cosine, clipping, accumulation, bf16 autocast,
gradient checkpointing, DDP, atomic checkpoints and exact resume.

A run folder holds:
    train_config.json   the resolved TrainConfig
    metrics.jsonl       one JSON object per log / eval event
    loss_curve.png      redrawn at every evaluation and at the end
    checkpoints/step-XXXXXXX/   model (config.json, model.safetensors), tokenizer.json,
                        optimizer.safetensors, trainer_state.json (step, scheduler, RNG);
                        with ema_decay > 0, model.safetensors holds the weight average
                        and train_weights.safetensors the raw weights resume needs
    checkpoints/latest  name of the newest complete checkpoint, replaced atomically
Resuming reads `latest`; the data order is a pure function of (seed, epoch, step), so a
resumed run continues exactly where the uninterrupted one would be.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .checkpoint import WEIGHTS_NAME, atomic_write, tensors_to_save
from .model import EnhancedVLM
from .train_config import TrainConfig

TRAIN_WEIGHTS = "train_weights.safetensors"  # raw weights beside the EMA (ema_decay > 0)


class NonFiniteLossError(RuntimeError):
    pass


# ---------------------------------------------------------------- distributed
def dist_info() -> tuple[int, int]:
    """(rank, world_size), initialising the process group under torchrun."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


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


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model, d = min(decay, (1 + step) / (10 + step)): the
    warm-up keeps the early average from being dominated by the random init."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()],
                             1.0 - d)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is incomplete or missing")
    return path


# ---------------------------------------------------------------- the trainer
class Trainer:
    """Runs `cfg` on `train_set` (items: image, tokens, targets; batched by `collate`).

    `evaluate(model) -> dict` is called every `eval_every` steps on rank 0; its
    "exact_match" can stop training early (`stop_at_exact_match`).
    """

    def __init__(self, cfg: TrainConfig, model: EnhancedVLM, train_set, collate, tokenizer,
                 evaluate: Callable[[EnhancedVLM], dict] | None = None,
                 extras: Callable[[Path], None] | None = None) -> None:
        self.cfg = cfg
        self.extras = extras  # writes more files (preprocessing, scene config) per checkpoint
        self.rank, self.world = dist_info()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto"
            else cfg.device
        )
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", self.rank % torch.cuda.device_count())
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

    # ---- data ----
    def batch_at(self, step: int, micro: int):
        """The micro-batch for (step, micro) on this rank: a pure function of the seed."""
        per_step = self.cfg.batch_size * self.cfg.grad_accum * self.world
        n = len(self.train_set)
        start = step * per_step + (micro * self.world + self.rank) * self.cfg.batch_size
        idx = [int(self._order(epoch)[i]) for epoch, i in
               (divmod(pos, n) for pos in range(start, start + self.cfg.batch_size))]
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
        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        for micro in range(cfg.grad_accum):
            images, tokens, targets = (t.to(self.device) for t in self.batch_at(self.step, micro))
            sync = micro == cfg.grad_accum - 1 or self.world == 1
            ctx = self.ddp.no_sync() if not sync else contextlib.nullcontext()
            with ctx, torch.autocast(self.device.type, dtype=dtype,
                                     enabled=cfg.precision == "bf16"):
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
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "train_config.json")
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
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                last_eval = self.run_eval()
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save()
            if 0 < cfg.stop_at_exact_match <= last_eval.get("exact_match", 0):
                break
        bar.close()
        if self.world > 1:
            self.log(kind="replicas", replicas_identical=self.replicas_identical())
        self.save()
        if self.evaluate is not None and (not cfg.eval_every or self.step % cfg.eval_every):
            last_eval = self.run_eval()
        if self.rank == 0:
            self.plot()
        if self.world > 1:
            dist.barrier()  # no rank leaves while rank 0 still saves and evaluates
        return last_eval

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
        checksum = torch.stack([flat.sum(), (flat * torch.arange(len(flat)) % 7919).sum()])
        gathered = [torch.zeros_like(checksum) for _ in range(self.world)]
        dist.all_gather(gathered, checksum)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    # ---- logging ----
    def log(self, **record) -> None:
        if self.rank != 0:
            return
        record = {"step": self.step, "samples": self.samples_seen,
                  "train_seconds": round(self.train_seconds, 3), **record}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        from viz.training import plot_training_curves

        path = self.run_dir / "metrics.jsonl"
        if path.is_file():
            records = [json.loads(line) for line in path.read_text().splitlines() if line]
            fig = plot_training_curves(records)
            atomic_write(self.run_dir / "loss_curve.png",
                         lambda p: fig.savefig(p, dpi=110, format="png"))
            fig.clf()

    # ---- checkpoints ----
    def save(self) -> Path | None:
        if self.rank != 0:
            return None
        ckpts = self.run_dir / "checkpoints"
        name = f"step-{self.step:07d}"
        tmp = ckpts / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.inference_model.save_pretrained(tmp)
        if self.ema is not None:
            save_file(tensors_to_save(self.model), tmp / TRAIN_WEIGHTS)
        self.tokenizer.save(tmp / "tokenizer.json")
        if self.extras is not None:
            self.extras(tmp)
        opt_tensors, opt_meta = _flatten_optimizer(self.opt)
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        rng_tensors, rng_meta = _rng_state()
        save_file(rng_tensors, tmp / "rng.safetensors")
        state = {"step": self.step, "samples_seen": self.samples_seen,
                 "train_seconds": self.train_seconds, "scheduler": self.sched.state_dict(),
                 "optimizer": opt_meta, "rng": rng_meta, "train_config": self.cfg.to_dict()}
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        final = ckpts / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # the folder appears complete or not at all
        atomic_write(ckpts / "latest", lambda p: Path(p).write_text(name))
        self._prune(ckpts, keep=final)
        return final

    def _prune(self, ckpts: Path, keep: Path) -> None:
        done = sorted(p for p in ckpts.glob("step-*") if p.is_dir())
        for old in done[: max(0, len(done) - self.cfg.keep_checkpoints)]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Restore model, optimizer, scheduler, RNG and step from `path` or the latest."""
        path = Path(path) if path else latest_checkpoint(self.run_dir)
        if path is None:
            return False
        from .checkpoint import load_weights

        averaged = (path / TRAIN_WEIGHTS).is_file()  # saved with ema_decay > 0
        load_weights(self.model, path, TRAIN_WEIGHTS if averaged else WEIGHTS_NAME)
        if self.ema is not None and averaged:
            load_weights(self.ema, path)
        elif self.ema is not None:  # no average saved: one starts from these weights
            self.ema.load_state_dict(self.model.state_dict())
        state = json.loads((path / "trainer_state.json").read_text())
        opt = _unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["optimizer"])
        self.opt.load_state_dict(opt)
        self.sched.load_state_dict(state["scheduler"])
        _set_rng_state(load_file(path / "rng.safetensors"), state["rng"])
        self.step = state["step"]
        # The data order is a function of the run's seed: keep the checkpoint's.
        self.cfg.seed = state["train_config"]["seed"]
        self.samples_seen = state["samples_seen"]
        self.train_seconds = state["train_seconds"]
        return True
