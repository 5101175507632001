"""Benchmarks of the attention-free VLM (issue 17), each measured side by side in one run:

    long_decode_ratio   ms per token at token 500 over ms per token at token 20, batch 1,
                        for the Mamba decoder (one recurrent step per token: flat) and the
                        transformer decoder with its KV cache (attention over a growing
                        cache), side by side at shapes-tiny's decoder width and depth, and
                        again 512 wide with 8 full heads (WIDE: at 128 wide with one KV
                        head a step is mostly fixed overhead, which hides the cache's
                        growth); random weights
    all_ssm_caption_ms  a greedy caption of one test scene by shapes-all-ssm, beside
                        shapes-tiny's (the shipped checkpoints; median of 20)

    python benchmarks/run.py --only long_decode_ratio,all_ssm_caption_ms
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssm_bridge.model import EnhancedVLM, VLMConfig

POSITIONS = (20, 500)  # tokens after the image prefix at which a step is timed
WINDOW = 20  # steps timed around each position, centred on it (their median)


def entry(value: float, unit: str, target: float | None = None, lower: bool = False) -> dict:
    out = {"value": float(value), "unit": unit, "target": target}
    if lower:
        out["lower_is_better"] = True
    return out


WIDE = {"text_embed_dim": 512, "text_num_heads": 8, "text_kv_heads": 8}  # MHA, 512 wide


def decoder_model(decoder_type: str, seed: int = 0, positions: tuple[int, int] = POSITIONS,
                  window: int = WINDOW, **width) -> EnhancedVLM:
    """shapes-tiny with the given decoder (and `width` overrides, e.g. WIDE), long enough
    for `positions` and the `window` around them (random weights)."""
    length = max(positions) + window // 2 + 2
    torch.manual_seed(seed)
    config = VLMConfig.from_preset("shapes-tiny", decoder_type=decoder_type,
                                   max_seq_length=length, vocab_size=32, **width)
    return EnhancedVLM(config).eval()


def step_ms(model: EnhancedVLM, seed: int = 0, positions: tuple[int, int] = POSITIONS,
            window: int = WINDOW) -> dict[int, float]:
    """{position: median ms of the `window` decoding steps centred on position}:
    the decoder alone, one token per call after the image prefix and BOS. The whole decode
    runs twice and the second is timed: in a first one the early steps also pay for the
    allocator growing its pools (Mamba at 512 wide measured 0.7-0.8x 'slower at 20')."""
    _decode_times(model, seed, positions, window)
    return _decode_times(model, seed, positions, window)


@torch.inference_mode()
def _decode_times(model: EnhancedVLM, seed: int, positions: tuple[int, int],
                  window: int) -> dict[int, float]:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, c.in_channels, c.img_size, c.img_size, generator=g)
    media = model.encode_image(image)  # (1, P, dim)
    cache = model.decoder.new_cache(1, c.max_seq_length, media.shape[1], media.device,
                                    media.dtype)
    token = torch.full((1, 1), c.bos_token_id)
    model.decoder(media, token, cache)  # the prefix and BOS
    times: dict[int, list[float]] = {p: [] for p in positions}
    for position in range(1, max(positions) + window // 2):
        t0 = time.perf_counter()
        logits = model.decoder(media, token, cache)  # (1, 1, vocab)
        token = logits[:, -1:].argmax(-1)  # (1, 1)
        dt = time.perf_counter() - t0
        for p in positions:
            if p - window // 2 <= position < p + window // 2:
                times[p].append(dt * 1e3)
    return {p: statistics.median(t) for p, t in times.items()}


def long_decode_ratio(quick: bool, positions: tuple[int, int] = POSITIONS,
                      window: int = WINDOW) -> dict:
    """ms/token at token 500 over token 20, Mamba and transformer decoders side by side
    (interleaved rounds; the median of each decoder's rounds). positions and window: the
    tokens timed and the steps around each (smaller ones for a quick test of the code,
    which then names its late position in the ms/token keys)."""
    early, late_at = positions
    if early - window // 2 < 1 or early + window // 2 > late_at - window // 2:
        raise ValueError(f"the windows of {window} steps around positions {positions} must "
                         "start after token 0 and not overlap")
    models = {f"{name}{suffix}": decoder_model(name, positions=positions, window=window,
                                               **width)
              for suffix, width in (("", {}), ("_w512", WIDE))
              for name in ("mamba", "transformer")}
    rounds = 1 if quick else 5  # 1 ms steps at shapes-tiny size: OS noise needs rounds
    ratios: dict[str, list[float]] = {name: [] for name in models}
    late: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            ms = step_ms(model, positions=positions, window=window)
            ratios[name].append(ms[late_at] / ms[early])
            late[name].append(ms[late_at])
    out = {}
    for name in models:
        out[f"long_decode_ratio_{name}"] = entry(
            statistics.median(ratios[name]), "x",
            1.1 if name.startswith("mamba") else None, lower=True)
        out[f"decode_ms_per_token_at_{late_at}_{name}"] = entry(
            statistics.median(late[name]), "ms")
    return out


def all_ssm_caption_ms(quick: bool) -> dict:
    """Greedy caption of one test scene, shapes-all-ssm beside shapes-tiny (interleaved)."""
    from ssm_bridge.data import make_scene
    from ssm_bridge.training.pretrained import load_pretrained, shipped_names

    if "shapes-all-ssm" not in shipped_names():
        raise RuntimeError("shapes-all-ssm is not shipped in this checkout")
    bundles = {name: load_pretrained(name) for name in ("shapes-all-ssm", "shapes-tiny")}
    times: dict[str, list[float]] = {name: [] for name in bundles}
    reps = 5 if quick else 20
    with torch.inference_mode():
        for i in range(reps + 1):
            for name, b in bundles.items():
                image = b.transform(make_scene("test", i, b.scene_config).image)[None]
                t0 = time.perf_counter()
                b.model.generate(image, max_length=b.model.config.max_seq_length,
                                 temperature=0.0)
                if i:  # the first round warms up
                    times[name].append((time.perf_counter() - t0) * 1e3)
    return {f"caption_ms_{name.replace('-', '_')}": entry(statistics.median(t), "ms")
            for name, t in times.items()}
