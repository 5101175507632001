"""Autoregressive decoding: the image is encoded once per call, then each token costs
one decoder step against the KV cache. `use_cache=False` recomputes the whole
model every step, as the original package did (kept as the benchmark baseline
and as the test oracle for the cache)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from einops import rearrange

from .checks import check_images, check_sampling
from .layers import eval_mode

if TYPE_CHECKING:
    from ..model import EnhancedVLM


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


@dataclass
class GenerationTraces:
    """What the decoder looked at for each generated token (step s made tokens[:, start + s]).

    cross_attention: (B, steps, cross_layers, H, L) each cross-attention layer's pattern
        for the query that produced the token, over the L = 1 + P image tokens (cls first).
    prefix_attention: (B, steps, blocks, H, L) each decoder block's attention from that
        query to the image prefix (the rest of its row goes to earlier text); blocks = 0
        for the Mamba decoder, which has no attention.
    logprobs: (B, steps) log-probability of the chosen token under the model (before
        temperature and filtering). Steps after a row's EOS are padding.
    """

    tokens: torch.Tensor  # (B, start + steps)
    start: int
    cross_attention: torch.Tensor
    prefix_attention: torch.Tensor
    logprobs: torch.Tensor

    @property
    def steps(self) -> int:
        return self.logprobs.shape[1]


@dataclass
class _Recorder:
    """Collects the last query row of each watched pattern per decoder call."""

    cross_names: list[str]
    prefix_names: list[str]
    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    cross: list[torch.Tensor] = field(default_factory=list)
    prefix: list[torch.Tensor] = field(default_factory=list)
    logprobs: list[torch.Tensor] = field(default_factory=list)

    empty: torch.Tensor | None = None  # (B, 0, 1, L): no layers, L image tokens

    def fwd_hooks(self):
        def keep(t: torch.Tensor, name: str) -> None:
            self.rows[name] = t[..., -1, :].detach().float()  # (B, H, L)

        def prefix(t: torch.Tensor, name: str) -> None:  # t: (B, L, dim)
            self.empty = t.new_zeros(t.shape[0], 0, 1, t.shape[1], dtype=torch.float32)

        return ([(n, keep) for n in self.cross_names + self.prefix_names]
                + [("decoder.hook_image_prefix", prefix)])

    def on_logits(self) -> None:
        self.cross.append(self._stack(self.cross_names))
        self.prefix.append(self._stack(self.prefix_names))

    def _stack(self, names: list[str]) -> torch.Tensor:
        """(B, layers, H, L) rows of `names`; (B, 0, 1, L) when there are none (no cross-
        attention layers; a Mamba decoder has no attention to the prefix)."""
        if not names:
            return self.empty
        return torch.stack([self.rows[n] for n in names], 1)

    def on_token(self, logits: torch.Tensor, nxt: torch.Tensor) -> None:
        lp = logits.float().log_softmax(-1).gather(-1, nxt[:, None])[:, 0]  # (B,)
        self.logprobs.append(lp)

    def traces(self, seq: torch.Tensor, start: int) -> GenerationTraces:
        return GenerationTraces(seq, start, torch.stack(self.cross, 1),
                                torch.stack(self.prefix, 1), torch.stack(self.logprobs, 1))


@torch.no_grad()
def generate(model: EnhancedVLM, images: torch.Tensor, max_length: int | None = None,
             temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = 0.9, *,
             prompt=None, seed: int | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True, return_traces: bool = False):
    """Caption `images` (B, C, H, W): LongTensor (B, <= max_length) of ids.

    max_length defaults to the original package's 50, or the model's max_seq_length
    when that is shorter.

    Each row starts with BOS (then the prompt, if given) and stops at its EOS;
    rows that finish early are padded with pad_token_id, and decoding stops when
    every row is done. temperature=0 is greedy; otherwise logits / temperature
    are cut to the top_k ids and the top_p nucleus (None disables either) and
    sampled with `generator` (or a fresh one seeded with `seed`).
    prompt: ids to continue from (a question, say): a list, (S,) or (B, S) tensor.
    use_cache=False re-runs the full model per token (the original's method).
    return_traces=True returns (ids, GenerationTraces): per generated token, the
    cross-attention and decoder-to-image attention of the query that produced it.
    """
    c = model.config
    if max_length is None:  # the original's 50, within what the model was built for
        max_length = min(50, c.max_seq_length)
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
    args = (model, images, seq, max_length, temperature, top_k, top_p, generator, use_cache)
    with eval_mode(model):
        if not return_traces:
            return _decode(*args)
        rec = _recorder(model)
        with model.hooks(rec.fwd_hooks()):
            out = _decode(*args, recorder=rec)
        return out, rec.traces(out, seq.shape[1])


def _recorder(model: EnhancedVLM) -> _Recorder:
    prefix_hooks = getattr(model.decoder, "hook_prefix_attn", ())  # none in a Mamba
    return _Recorder([f"decoder.cross_layers.{i}.attn.hook_pattern"
                      for i in range(len(model.decoder.cross_layers))],
                     [f"decoder.hook_prefix_attn.{i}" for i in range(len(prefix_hooks))])


@torch.no_grad()
def forced_traces(model: EnhancedVLM, images: torch.Tensor, ids: torch.Tensor
                  ) -> GenerationTraces:
    """The traces `generate` records had it written `ids` (B, S), BOS first: one
    teacher-forced forward. Attention is causal, so row s of each pattern is the query
    that wrote ids[:, s + 1] (what generate without a cache keeps). For analyses of a
    fixed caption: a re-initialised model in a sanity check, say, reads the caption the
    trained model wrote."""
    check_images(images, model.config)
    ids = torch.as_tensor(ids, dtype=torch.long, device=images.device)
    if ids.dim() != 2 or ids.shape[0] != images.shape[0] or ids.shape[1] < 2:
        raise ValueError(f"ids must be (B={images.shape[0]}, S >= 2) with BOS first, got "
                         f"shape {tuple(ids.shape)}")
    rec = _recorder(model)
    full: dict[str, torch.Tensor] = {}

    def keep(t: torch.Tensor, name: str) -> None:
        full[name] = t.detach().float()  # (B, H, S - 1, L)

    with eval_mode(model), model.hooks([(n, keep) for n in rec.cross_names + rec.prefix_names]):
        logits = model(images, ids[:, :-1])  # (B, S - 1, V)
    B, steps, L = ids.shape[0], ids.shape[1] - 1, model.config.num_media_tokens

    def stacked(names: list[str]) -> torch.Tensor:  # (B, steps, layers, H, L)
        if not names:
            return torch.zeros(B, steps, 0, 1, L)
        return rearrange(torch.stack([full[n] for n in names], 1),
                         "b layers h s l -> b s layers h l")

    logprobs = logits.float().log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, S-1)
    return GenerationTraces(ids, 1, stacked(rec.cross_names), stacked(rec.prefix_names),
                            logprobs)


def _decode(model, images, seq, max_length, temperature, top_k, top_p, generator, use_cache,
            recorder: _Recorder | None = None):
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
        if recorder is not None:
            recorder.on_logits()
            recorder.on_token(logits, nxt)
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
