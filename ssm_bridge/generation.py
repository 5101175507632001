"""Autoregressive decoding: the image is encoded once per call, then each token costs
one decoder step against the KV cache. `use_cache=False` recomputes the whole
model every step, as the original package did (kept as the benchmark baseline
and as the test oracle for the cache)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .checks import check_images, check_sampling

if TYPE_CHECKING:
    from .model import EnhancedVLM


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. logits: (B, V)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)  # (B, V)
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # keeps the token that crosses top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # (B, V) back in vocab order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                top_p: float | None, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,). temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def start_sequence(model: EnhancedVLM, batch: int, prompt, device) -> torch.Tensor:
    """[BOS] + prompt as (B, S) ids; prompt: None, a list of ids, (S,) or (B, S) tensor."""
    c = model.config
    bos = torch.full((batch, 1), c.bos_token_id, dtype=torch.long, device=device)
    if prompt is None:
        return bos
    prompt = torch.as_tensor(prompt, dtype=torch.long, device=device)
    if prompt.dim() == 1:
        prompt = prompt.expand(batch, -1)  # (B, S)
    if prompt.dim() != 2 or prompt.shape[0] != batch:
        raise ValueError(
            f"prompt must be a list of ids, a (S,) tensor or a (batch={batch}, S) tensor; "
            f"got shape {tuple(prompt.shape)}"
        )
    if prompt.numel() and ((prompt < 0) | (prompt >= c.vocab_size)).any():
        raise ValueError(f"prompt holds ids outside the vocabulary [0, {c.vocab_size})")
    if prompt.shape[1] and (prompt[:, 0] == c.bos_token_id).all():
        return prompt
    return torch.cat([bos, prompt], dim=1)  # (B, 1 + S)


@torch.no_grad()
def generate(model: EnhancedVLM, images: torch.Tensor, max_length: int = 50,
             temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = 0.9, *,
             prompt=None, seed: int | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Caption `images` (B, C, H, W): LongTensor (B, <= max_length) of ids.

    Each row starts with BOS (then the prompt, if given) and stops at its EOS;
    rows that finish early are padded with pad_token_id, and decoding stops when
    every row is done. temperature=0 is greedy; otherwise logits / temperature
    are cut to the top_k ids and the top_p nucleus (None disables either) and
    sampled with `generator` (or a fresh one seeded with `seed`).
    prompt: ids to continue from (a question, say): a list, (S,) or (B, S) tensor.
    use_cache=False re-runs the full model per token (the original's method).
    """
    c = model.config
    check_images(images, c)
    check_sampling(c, max_length, temperature, top_k, top_p)
    if generator is None and seed is not None:
        generator = torch.Generator(device=images.device).manual_seed(seed)
    B = images.shape[0]
    seq = start_sequence(model, B, prompt, images.device)  # (B, S)
    if seq.shape[1] >= max_length:
        raise ValueError(
            f"max_length={max_length} leaves no room to generate after BOS and a prompt of "
            f"{seq.shape[1]} tokens; raise max_length"
        )
    was_training = model.training
    model.eval()
    try:
        return _decode(model, images, seq, max_length, temperature, top_k, top_p, generator,
                       use_cache)
    finally:
        model.train(was_training)


def _decode(model, images, seq, max_length, temperature, top_k, top_p, generator, use_cache):
    c = model.config
    B = seq.shape[0]
    if use_cache:
        media = model.encode_image(images)  # (B, P, dim): once per call
        cache = model.decoder.new_cache(B, max_length, media.shape[1], media.device,
                                        media.dtype)
        logits = model.decoder(media, seq, cache=cache)[:, -1]  # (B, V) prefill
    else:
        logits = model(images, seq)[:, -1]  # (B, V)
    finished = torch.zeros(B, dtype=torch.bool, device=seq.device)
    while seq.shape[1] < max_length:
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        nxt = nxt.masked_fill(finished, c.pad_token_id)
        seq = torch.cat([seq, nxt[:, None]], dim=1)  # (B, S + 1)
        finished |= nxt == c.eos_token_id
        if finished.all() or seq.shape[1] == max_length:
            break
        if use_cache:
            logits = model.decoder(media, nxt[:, None], cache=cache)[:, -1]  # (B, V)
        else:
            logits = model(images, seq)[:, -1]  # (B, V): the whole model again
    return seq
