"""DDP under torchrun (2 CPU processes, gloo): an early stop reaches every rank, and each
rank resumes its own RNG state. A deadlock fails the test at its timeout, not CI's."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_train import ROOT

_SCRIPT = """
import json, random, sys
import numpy as np
import torch
import torch.distributed as dist
sys.path.insert(0, {root!r})
from ssm_bridge.training.train import build
from ssm_bridge.training.train_config import build_train_config
from ssm_bridge.training.trainer import end_distributed

out = {out!r}
small = dict(num_train=16, batch_size=2, threads=1, eval_num=2)

# 1. Early stop: only rank 0 evaluates; the evaluation at step 4 reaches the bar.
stopper = build(build_train_config("test-tiny", dict(
    out_dir=out + "/stop", max_steps=40, eval_every=2, save_every=0,
    stop_at_exact_match=0.5, **small)))
stopper.evaluate = lambda model: {{"exact_match": 1.0 if stopper.step >= 4 else 0.0}}
stopper.fit()
rank = dist.get_rank()

# 2. Per-rank RNG: the ranks' states differ (as when dropout masks differ per rank).
cfg = build_train_config("test-tiny", dict(out_dir=out + "/rng", max_steps=4, **small))
first = build(cfg)
torch.manual_seed(100 + rank)
np.random.seed(100 + rank)
random.seed(100 + rank)
first.train_step()
saved = (torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate())
first.save()
torch.manual_seed(0)  # every rank alike again: only the resume can tell them apart
np.random.seed(0)
random.seed(0)
second = build(cfg)
assert second.resume() and second.step == 1
restored = [torch.equal(torch.get_rng_state(), saved[0]),
            bool((np.random.get_state()[1] == saved[1]).all()), random.getstate() == saved[2]]

mine = dict(rank=rank, stop_step=stopper.step, restored=restored)
every = [None] * dist.get_world_size()
dist.all_gather_object(every, mine)
if rank == 0:
    with open(out + "/result.json", "w") as f:
        json.dump(every, f)
del stopper, first, second  # their DDP wrappers hold the group (see end_distributed)
end_distributed()
"""


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own,
    so killing its process group would leave them running)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def torchrun(script_text: str, tmp_path: Path, timeout: float) -> tuple[int, str]:
    """Run a script on 2 CPU ranks under torchrun: (exit status, log). A job still running
    at `timeout` is killed (ranks first) and fails the test."""
    script = tmp_path / "ddp_script.py"
    script.write_text(script_text)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = tmp_path / "torchrun.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=2", str(script)], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [*descendants(proc.pid), proc.pid]:  # the ranks, then torchrun
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"torchrun hung (deadlock?):\n{log.read_text()[-3000:]}") from None
    return proc.returncode, log.read_text()


def test_early_stop_and_rng_resume_under_torchrun(tmp_path):
    code, log = torchrun(_SCRIPT.format(root=str(ROOT), out=str(tmp_path)), tmp_path, 180)
    assert code == 0, log[-3000:]
    every = json.loads((tmp_path / "result.json").read_text())
    assert [r["stop_step"] for r in every] == [4, 4], every  # both ranks stopped together
    assert [r["restored"] for r in every] == [[True, True, True]] * 2, every
    ckpts = tmp_path / "stop" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-0000004"]
    assert {p.name for p in (tmp_path / "rng" / "checkpoints" / "step-0000001").iterdir()} >= {
        "rng-rank0.safetensors", "rng-rank1.safetensors"}


_CRASH = """
import sys, time
sys.path.insert(0, {root!r})
from ssm_bridge.training import trainer as trainer
from ssm_bridge.training.train import main

step = trainer.Trainer.train_step

def crash_on_rank_1(self):
    if self.rank == 1 and self.step == 2:
        open({out!r} + "/raised", "w").write(str(time.time()))
        raise RuntimeError("boom on rank 1")
    return step(self)

trainer.Trainer.train_step = crash_on_rank_1
sys.exit(main(["--preset=test-tiny", "--max_steps=1000", "--num_train=16", "--batch_size=2",
               "--threads=1", "--eval_num=0", "--save_every=0", "--out_dir=" + {out!r}]))
"""


def test_a_rank_that_raises_ends_the_torchrun_job_in_seconds(tmp_path):
    """Rank 1 raises mid-training (outside save()): rank 0's next collective fails on the
    closed connection and torchrun stops the job, long before gloo's 30-minute timeout."""
    code, log = torchrun(_CRASH.format(root=str(ROOT), out=str(tmp_path)), tmp_path, 150)
    ended = time.time()
    assert code != 0 and "boom on rank 1" in log, log[-3000:]
    assert ended - float((tmp_path / "raised").read_text()) < 60, log[-3000:]
