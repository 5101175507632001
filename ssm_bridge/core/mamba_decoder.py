"""The Mamba language decoder of `decoder_type="mamba"` (Cobra-style): Mamba-1 blocks over
[image tokens ; text], decoded recurrently.

    tokens -> embeddings -> gated cross-attention to the media (only if cross_attn_layers > 0)
           -> text_num_layers Mamba-1 blocks over [bridge outputs ; text]   (no positions)
           -> norm_f -> output head (the embeddings unless tie_word_embeddings=False)
           -> logits of the text positions

The blocks are ssm_bridge.mamba.lm's `MambaBlock` (RMSNorm, then `MambaMixer`: the core's
`ScanDirection` read in token order, with Mamba's in_proj, SiLU(z) gate and out_proj), and
the names equal `MambaLM`'s: decoder.embeddings, decoder.layers.{i}.norm,
decoder.layers.{i}.mixer.{in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj},
decoder.norm_f, decoder.lm_head (untied only). So a MambaLM's (or a Hugging Face
MambaForCausalLM's, through ssm_bridge/mamba/hf.py) weights map by name:
`init_from_hf`, whose vocabulary rule is documented there.

Hook points: decoder.hook_text_embed (B, T, H); decoder.cross_layers.{i}.* as in the
transformer decoder; decoder.hook_image_prefix (B, P, H); per block, over the whole
[prefix ; text] sequence of P + T tokens, decoder.layers.{i}.mixer.hook_{conv, delta, B, C,
ssm_out, out, gate} and the heavy hook_{A_bar, dBx, state}, and
decoder.layers.{i}.hook_resid_post (B, P + T, H); decoder.hook_resid_final (B, T, H) after
norm_f at the text positions; decoder.hook_logits (B, T, vocab).

Decoding (`new_cache`, then `forward(media, tokens, cache)`): the first call scans
[prefix ; tokens] once from a zero state and leaves, per layer, the conv window (B, D, K-1)
and the state h (B, D, N); each later call takes one token per row and costs one recurrent
step per layer, the same at every position. Hooks fire in those steps with length-1
tensors (the prefix is not re-run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VLMConfig
from ..mamba import step as mamba_step
from ..mamba.lm import MambaBlock, MambaConfig, MambaLM, MambaState
from .decoder import ImageConditioning
from .hooks import HookPoint
from .layers import maybe_checkpoint
from .transformer import GatedCrossAttentionBlock

# MambaConfig field -> the VLMConfig field that sets it for the decoder (what a Hugging Face
# model's config must match for `init_from_hf`).
HF_SHAPE_FIELDS = {
    "hidden_size": "text_embed_dim", "num_hidden_layers": "text_num_layers",
    "state_size": "decoder_state_dim", "expand": "decoder_expand",
    "conv_kernel": "ssm_conv_kernel", "dt_rank": "decoder_dt_rank",
    "layer_norm_epsilon": "layer_norm_eps",
}


def decoder_mamba_config(c: VLMConfig) -> MambaConfig:
    """The MambaConfig of the decoder's blocks (in/out projections without bias, conv with
    bias, as Hugging Face's defaults and the published Mamba-1 models)."""
    return MambaConfig(
        vocab_size=c.vocab_size, hidden_size=c.text_embed_dim, state_size=c.decoder_state_dim,
        num_hidden_layers=c.text_num_layers, expand=c.decoder_expand,
        conv_kernel=c.ssm_conv_kernel, time_step_rank=c.decoder_dt_rank or "auto",
        layer_norm_epsilon=c.layer_norm_eps, tie_word_embeddings=c.tie_word_embeddings,
        time_step_min=c.ssm_dt_min, time_step_max=c.ssm_dt_max, pad_token_id=c.pad_token_id,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        scan_backend=c.ssm_scan_backend)


def vlm_fields_for(mc: MambaConfig) -> dict[str, Any]:
    """The VLMConfig fields that give the decoder the shape of a Mamba model `mc`."""
    return {ours: getattr(mc, theirs) for theirs, ours in HF_SHAPE_FIELDS.items()}


@dataclass
class MambaDecoderCache:
    """What generation keeps between steps: per layer the conv window and state h (`state`,
    whose position counts image and text tokens) and the image's cross-attention keys and
    values, projected once."""

    state: MambaState
    media_kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    text_len: int = 0  # text positions already decoded


class MambaDecoder(ImageConditioning, nn.Module):
    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        c = self.config = config
        self.mamba_config = mc = decoder_mamba_config(c)
        dim = c.text_embed_dim
        self.embeddings = nn.Embedding(c.vocab_size, dim)
        self.drop = nn.Dropout(c.dropout)
        self.cross_layers = nn.ModuleList(
            GatedCrossAttentionBlock(dim, c.cross_attn_heads, c.cross_attn_kv_heads, c.ffn_dim,
                                     c.dropout, eps=c.layer_norm_eps,
                                     eager=c.attn_impl == "eager")
            for _ in range(c.cross_attn_layers)
        )
        self.layers = nn.ModuleList(MambaBlock(mc) for _ in range(c.text_num_layers))
        self.norm_f = nn.RMSNorm(dim, eps=c.layer_norm_eps)
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(dim, c.vocab_size,
                                                                     bias=False)
        self.gradient_checkpointing = c.gradient_checkpointing
        self.prefix_dropout_on = True  # as LanguageDecoder's (the trainer switches it)
        self.hook_text_embed = HookPoint()  # (B, T, dim)
        self.hook_image_prefix = HookPoint()  # (B, P, dim) what the decoder sees of the image
        self.hook_resid_final = HookPoint()  # (B, T, dim) after norm_f, text positions
        self.hook_logits = HookPoint()  # (B, T, vocab)

    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab, dim): the embeddings when tied, else lm_head's weight."""
        return self.embeddings.weight if self.lm_head is None else self.lm_head.weight

    def new_cache(self, batch: int, max_text_len: int, num_image_tokens: int,
                  device: torch.device, dtype: torch.dtype) -> MambaDecoderCache:
        """A zero decoding state. Its size does not grow with the lengths (they are taken
        for the transformer decoder's signature only)."""
        return MambaDecoderCache(MambaState([layer.mixer.allocate_state(batch, device, dtype)
                                             for layer in self.layers]))

    def forward(self, media: torch.Tensor, tokens: torch.Tensor,
                cache: MambaDecoderCache | None = None) -> torch.Tensor:
        """media: (B, P, dim) bridge outputs; tokens: (B, T) -> logits (B, T, vocab).

        With a cache, the first call runs [prefix ; tokens] and leaves the state; later
        calls take one new token per row (B, 1) and run one recurrent step."""
        T = tokens.shape[1]
        x = self.hook_text_embed(self.drop(self.embeddings(tokens)))  # (B, T, dim)
        x = self._cross_attend(x, media, cache)  # (B, T, dim)
        if cache is None or cache.text_len == 0:
            prefix = self.hook_image_prefix(self._drop_prefix(media))
            x = torch.cat([prefix, x], dim=1)  # (B, P + T, dim)
        elif T != 1:
            raise ValueError(f"a Mamba decoding cache takes one token per call after the "
                             f"first, got {T}; run the whole prompt in the first call")
        state = cache.state if cache is not None else None
        checkpointing = self.gradient_checkpointing and self.training and cache is None
        if state is not None and x.shape[1] == 1:  # a decoding step: fused where unwatched
            x = mamba_step.step_layers(self.layers, x, state.layers)  # (B, 1, dim)
        else:
            for i, layer in enumerate(self.layers):
                layer_state = state.layers[i] if state is not None else None
                x = maybe_checkpoint(layer, x, checkpointing, state=layer_state)
        if cache is not None:
            state.position += x.shape[1]
            cache.text_len += T
        x = self.norm_f(x[:, -T:].to(self.norm_f.weight.dtype))  # (B, T, dim)
        return self.hook_logits(F.linear(self.hook_resid_final(x), self.output_weight))

    # ------------------------------------------------------------ Hugging Face weights
    def init_from_hf(self, source, vocab_map=None) -> dict[str, Any]:
        """Copy a Hugging Face MambaForCausalLM's weights (a folder on disk or an in-memory
        model, read by MambaLM.from_hf: every tensor mapped and checked, nothing downloaded)
        into this decoder. Returns {"tensors": copied, "embedding": rule, "rows": rows set}.

        The blocks and norm_f must have the same shape: a config that differs raises,
        naming the VLMConfig fields to set (see `vlm_fields_for`). Cross-attention layers
        keep their initialisation (zero gates: they start closed).

        Vocabulary rule (the embeddings and an untied output head):
          - vocab_map=None and equal vocabulary sizes: every row is copied; the two
            vocabularies are taken to number the same tokens ("copied").
          - vocab_map=None and different sizes: the rows keep this model's
            initialisation, to be learned with the task ("initialised").
          - vocab_map given: {our id: Hugging Face id, or a list of ids} (or a sequence
            indexed by our id): our row is their row, or the mean of their rows (a word
            their tokenizer splits); ids left out or mapped to None keep their
            initialisation ("mapped").
        A tied decoder needs a tied Hugging Face model (its head would be dropped otherwise);
        an untied one takes its head rows from theirs (their embeddings when tied)."""
        lm = MambaLM.from_hf(source)
        self._check_hf_shape(lm.config)
        state = {k: v for k, v in lm.state_dict().items()
                 if not k.startswith(("embeddings.", "lm_head."))}
        with torch.no_grad():
            result = self.load_state_dict(state, strict=False)
            rule, rows = self._copy_vocab(lm, vocab_map)
        left = [k for k in result.missing_keys
                if not k.startswith(("embeddings.", "lm_head.", "cross_layers."))]
        if left or result.unexpected_keys:  # a bug: the shapes were checked
            raise RuntimeError(f"init_from_hf left {left} and could not place "
                               f"{result.unexpected_keys}")
        return {"tensors": len(state), "embedding": rule, "rows": rows}

    def _check_hf_shape(self, theirs: MambaConfig) -> None:
        ours = self.mamba_config
        wrong = {v: getattr(theirs, k) for k, v in HF_SHAPE_FIELDS.items()
                 if getattr(theirs, k) != getattr(ours, k)}
        if wrong:
            fix = ", ".join(f"{k}={v!r}" for k, v in wrong.items())
            raise ValueError(f"the Hugging Face Mamba has another shape than this decoder; "
                             f"build the VLMConfig with {fix}")
        if theirs.use_bias or not theirs.use_conv_bias:
            raise ValueError(f"the Hugging Face Mamba has use_bias={theirs.use_bias}, "
                             f"use_conv_bias={theirs.use_conv_bias}; the VLM's Mamba decoder "
                             "has projections without bias and a conv with bias only")
        if theirs.tie_word_embeddings is False and ours.tie_word_embeddings:
            raise ValueError("the Hugging Face Mamba has an untied output head; build the "
                             "VLMConfig with tie_word_embeddings=False to keep it")

    def _copy_vocab(self, lm: MambaLM, vocab_map) -> tuple[str, int]:
        """Set the embedding (and untied head) rows by the rule of `init_from_hf`."""
        V, theirs = self.config.vocab_size, lm.config.vocab_size
        if vocab_map is None:
            if V != theirs:
                return "initialised", 0
            vocab_map, rule = range(V), "copied"
        else:
            rule = "mapped"
        pairs = _vocab_pairs(vocab_map, V, theirs)
        for ours, ids in pairs:
            self.embeddings.weight[ours] = lm.embeddings.weight[ids].mean(0)
            if self.lm_head is not None:
                self.lm_head.weight[ours] = lm.output_weight[ids].mean(0)
        return rule, len(pairs)


def _vocab_pairs(vocab_map, ours: int, theirs: int) -> list[tuple[int, list[int]]]:
    """[(our id, [their ids])] from a mapping or a sequence; ValueError on ids out of range."""
    if isinstance(vocab_map, Mapping):
        items = list(vocab_map.items())
    elif isinstance(vocab_map, (Sequence, range)) and not isinstance(vocab_map, str):
        if len(vocab_map) != ours:
            raise ValueError(f"vocab_map as a sequence needs one entry per token id of the VLM "
                             f"({ours}), got {len(vocab_map)}; or pass a dict {{our id: id}}")
        items = list(enumerate(vocab_map))
    else:
        raise ValueError(f"vocab_map must be a dict {{our id: Hugging Face id(s)}} or a "
                         f"sequence, got {type(vocab_map).__name__}")
    pairs = []
    for k, v in items:
        ids = [] if v is None else [v] if isinstance(v, int) else list(v)
        ok_key = isinstance(k, int) and 0 <= k < ours
        if not ok_key or not all(isinstance(i, int) and 0 <= i < theirs for i in ids):
            raise ValueError(f"vocab_map entry {k!r}: {v!r} is out of range: our ids are in "
                             f"[0, {ours}), Hugging Face ids in [0, {theirs})")
        if ids:
            pairs.append((k, ids))
    return pairs
