"""MambaLM benchmarks at the shape of state-spaces/mamba-130m-hf (24 layers, width 768,
vocabulary 50280; random weights, fp32), each measured side by side in one run:

    mamba_decode              batch 1, 200 greedy tokens, one recurrent step each:
        mamba_decode_flatness       median ms/token over tokens 181-200 / over tokens 1-20
        mamba_decode_ms_per_token   median over all 200, beside the weight-streaming bound
                                    (parameter bytes / memory read bandwidth measured here,
                                    before each round: the ratio is the rounds' median)
    mamba_lm_forward_vs_hf    batch 4, 256 tokens: transformers' MambaForCausalLM forward
                              time / ours, same weights, same CPU, interleaved rounds (the
                              median of the rounds' ratios)

    python benchmarks/run.py --only mamba_decode,mamba_lm_forward_vs_hf
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssm_bridge.mamba.lm import MambaConfig, MambaLM

BANDWIDTH_BYTES = 2**29  # 512 MiB: far past every cache, about the 130M model's weights


def entry(value: float, unit: str, target: float | None = None, lower: bool = False) -> dict:
    out = {"value": float(value), "unit": unit, "target": target}
    if lower:
        out["lower_is_better"] = True
    return out


def read_bandwidth_gbs(repeats: int = 5) -> float:
    """Memory read bandwidth, GB/s: a sum over a 512 MiB float32 tensor (a pure streaming
    read, as decoding reads each weight once per token), best of `repeats` after a warm-up."""
    a = torch.ones(BANDWIDTH_BYTES // 4)
    a.sum()
    best = min(_seconds(a.sum) for _ in range(repeats))
    return BANDWIDTH_BYTES / best / 1e9


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def decode_step_times(model: MambaLM, tokens: int = 200, seed: int = 0) -> list[float]:
    """Seconds of each of `tokens` greedy decoding steps at batch 1 (what generate does per
    token: one recurrent step, then the argmax), after a one-token prompt."""
    state = model.new_state(1)
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, model.config.vocab_size, (1,), generator=g)
    times = []
    with torch.inference_mode():
        model(tok[:, None], state)
        for _ in range(tokens):
            t0 = time.perf_counter()
            tok = model.step(tok, state).argmax(-1)  # (1,)
            times.append(time.perf_counter() - t0)
    return times


def mamba_decode(quick: bool, config: MambaConfig | None = None) -> dict:
    """Each round measures the read bandwidth, then decodes 200 tokens, so that a round's
    ms/token and its bound come from the same minute of a shared machine (measured hours
    apart, a load change alone moved the ratio 2x); the ratio is the median over rounds."""
    model = MambaLM(config or MambaConfig.mamba_130m(), seed=0).eval()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    decode_step_times(model, tokens=10)  # warm-up: allocator, kernels, caches
    rounds, bandwidths = [], []
    for _ in range(1 if quick else 3):
        bandwidths.append(read_bandwidth_gbs())
        rounds.append(decode_step_times(model))
    first = [t for r in rounds for t in r[:20]]  # tokens 1-20
    last = [t for r in rounds for t in r[180:200]]  # tokens 181-200
    ms = statistics.median(t for r in rounds for t in r) * 1e3
    bandwidth = statistics.median(bandwidths)
    bound_s = [param_bytes / (bw * 1e9) for bw in bandwidths]  # per round
    ratios = [statistics.median(r) / b for r, b in zip(rounds, bound_s)]
    return {
        "mamba_decode_flatness": entry(statistics.median(last) / statistics.median(first),
                                       "ratio", 1.1, lower=True),
        "mamba_decode_ms_per_token": entry(ms, "ms"),
        "mamba_decode_weight_bound_ms": entry(param_bytes / (bandwidth * 1e9) * 1e3, "ms"),
        "mamba_decode_vs_bound": entry(statistics.median(ratios), "x", 1.5, lower=True),
        "memory_read_gbs": entry(bandwidth, "GB/s"),
    }


def mamba_lm_forward_vs_hf(quick: bool, config: MambaConfig | None = None,
                           batch: int = 4, length: int = 256) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the reference is built, never fetched
    try:
        import transformers
    except ImportError:
        raise RuntimeError("mamba_lm_forward_vs_hf needs transformers (the dev extra: "
                           "pip install -e '.[dev]')") from None
    from ssm_bridge.mamba.hf import config_to_hf

    c = config or MambaConfig.mamba_130m()
    hf_cfg = {k: v for k, v in config_to_hf(c).items() if k not in ("model_type", "architectures")}
    torch.manual_seed(0)
    ref = transformers.MambaForCausalLM(transformers.MambaConfig(**hf_cfg)).eval()
    ours = MambaLM.from_hf(ref)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, c.vocab_size, (batch, length), generator=g)
    times: dict[str, list[float]] = {"ours": [], "hf": []}
    with torch.inference_mode():
        a, b = ours(ids), ref(ids).logits  # warm-up, and the two must agree
        rel = ((a - b).abs().max() / b.abs().max()).item()
        if rel > 1e-3:
            raise RuntimeError(f"MambaLM and transformers disagree: max |diff| / max |logit| "
                               f"= {rel:.1e}")
        del a, b
        for _ in range(1 if quick else 3):  # interleaved: a round's pair shares the load
            times["ours"].append(_seconds(lambda: ours(ids)))
            times["hf"].append(_seconds(lambda: ref(ids)))
    t_ours, t_hf = statistics.median(times["ours"]), statistics.median(times["hf"])
    ratio = statistics.median(h / o for h, o in zip(times["hf"], times["ours"]))
    return {
        "mamba_lm_forward_vs_hf": entry(ratio, "x", 3.0),
        "mamba_lm_forward_ms": entry(t_ours * 1e3, "ms"),
        "mamba_lm_forward_hf_ms": entry(t_hf * 1e3, "ms"),
        "mamba_lm_forward_max_rel_diff": entry(rel, "of max |logit|"),
    }


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(mamba_decode(quick))
    print(mamba_lm_forward_vs_hf(quick))
