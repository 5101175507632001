"""Selective-scan speed: the default fast path vs the readable reference loop.

    python benchmarks/bench_scan.py [--quick]

Forward + backward at B=8, L=197 (a 14x14 patch grid + cls), D=256, N=64, float32. Both
are measured in the same run, in alternating blocks (a warm-up, then timed repeats), and
each gets the median of its repeats: a stall of the machine then touches few samples.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssm_bridge.core.scan import selective_scan, selective_scan_ref

SHAPE = dict(batch=8, length=197, dim=256, state=64)


def make_inputs(batch: int, length: int, dim: int, state: int, seed: int = 0) -> list:
    """Realistic ranges: Δ = softplus(randn - 3) (near Mamba's dt init), A = -(1..N)
    (S4D-real init)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=g)
    delta = F.softplus(torch.randn(batch, length, dim, generator=g) - 3)
    A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1)  # (D, N)
    B = torch.randn(batch, length, state, generator=g)
    C = torch.randn(batch, length, state, generator=g)
    D = torch.ones(dim)
    return [t.requires_grad_() for t in (x, delta, A, B, C, D)]


def fwd_bwd_times(fn, inputs: list, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of forward + backward (loss = sum of y), `repeats` times after `warmup`."""
    times = []
    for i in range(warmup + repeats):
        for t in inputs:
            t.grad = None
        t0 = time.perf_counter()
        fn(*inputs).sum().backward()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def scan_speedup(quick: bool = False) -> dict:
    """Reference time / default (backend="auto") time, forward + backward; and the latter."""
    inputs = make_inputs(**SHAPE)
    rounds, n_fast, n_ref = (2, 3, 2) if quick else (3, 7, 3)
    fast, ref = [], []
    for _ in range(rounds):
        fast += fwd_bwd_times(selective_scan, inputs, n_fast)
        ref += fwd_bwd_times(selective_scan_ref, inputs, n_ref)
    t_fast, t_ref = statistics.median(fast), statistics.median(ref)
    return {
        "scan_speedup": {"value": t_ref / t_fast, "unit": "x", "target": 5.0},
        "scan_fwd_bwd_ms": {"value": t_fast * 1e3, "unit": "ms", "target": None},
    }


if __name__ == "__main__":
    print(scan_speedup(quick="--quick" in sys.argv))
