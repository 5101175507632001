"""Per-word maps for a captioned image: where the model looked for each word it wrote.

    a = analyse(model, image, tokenizer=tok)       # caption greedily, collect every map
    a.words, a.caption                             # ['a', 'small', 'red', 'circle', ...]
    a.cross_attention[i]                           # (g, g) for word i
    word_map(a, i, "ig", model)                    # (g, g), computed on demand and cached

Word i is a.ids[a.word_index[i]]; every per-word map belongs to the query that produced
it, i.e. the decoder position a.word_index[i] - 1. Maps are on the ViT patch grid (g x g,
row-major, the cls token dropped) and follow MAP_KINDS:

    cross_attention   gated cross-attention of that query over the bridge outputs, mean
                      over heads and cross layers (per layer: cross_attention_layers)
    prefix_attention  decoder blocks' attention from that query to the image prefix, mean
                      over heads and blocks
    implicit          the word's cross-attention row over the L bridge outputs (cls
                      included) @ the rollout of the bridge's hidden attention (L x L,
                      patch order): how that attention reaches the bridge's input patches
                      through the SSM (see ssm_bridge.interp.implicit_attention; α here comes
                      from `implicit_attention.from_cache(chunked=True)`, ~15x faster)
    hidden_attention  (Mamba decoder) the decoder's hidden attention from that query onto
                      the image prefix, mean over decoder layers (per layer:
                      hidden_attention_layers; see ssm_bridge.interp.ssm_paths)
    hidden_rollout    (Mamba decoder) that flow rolled out through the decoder's layers and
                      back through the SSM bridge and the Vision Mamba encoder to the patches
    delta, gate,      word-independent bridge maps per layer: Δ (mean over channels and
    state_norm        directions, patch order), SiLU(z) gate (mean over channels), |h| of
                      direction 0 per token (heavy hook_state); word_map averages layers
    vision_delta,     (Vision Mamba encoder) the same three per encoder layer (Δ over both
    vision_gate,      directions), in the encoder's output order
    vision_state_norm
    decoder_delta,    (Mamba decoder) the same three read at the decoder's image-prefix
    decoder_gate,     tokens: which image tokens open the decoder's state. Their values at
    decoder_state_norm  the text tokens are in a.decoder_selectivity (ssm_paths.Selectivity)
    ig, gradcam,      input attributions of the word's logit (ssm_bridge.interp.attribution) with
    saliency          the caption prefix ids[:word_index] teacher-forced, summed per patch

A model has the kinds its parts allow (`model_kinds`): cross-attention kinds need gated
cross-attention layers, prefix_attention a transformer decoder, the bridge kinds an SSM
bridge, hidden_* and decoder_* a Mamba decoder. The others are None in the analysis, and
asking for one is a ValueError naming the kinds the model has.

Beside the maps, a.gated_update (n_words, cross_layers) says how much each cross layer adds
at that query: |tanh(attn_gate) * CrossAttention(text, media)| / |text stream|. A gate near
0 can still pass a large update when the branch it scales has grown (`gated_update`).

One `analyse` runs generation (with traces), one teacher-forced pass over the caption for
the gated updates and one image-only pass with the bridge hooks it needs; attribution kinds
cost extra backward passes and run only when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from einops import rearrange, reduce

from ..core.addressing import SSMStack, layer_index, ssm_stacks
from ..core.generation import forced_traces
from ..core.layers import eval_mode
from . import attribution as attr_mod
from . import implicit_attention as ia
from . import ssm_paths

ATTENTION_KINDS = ("cross_attention", "prefix_attention", "implicit", "hidden_attention",
                   "hidden_rollout")
BRIDGE_KINDS = ("delta", "gate", "state_norm")
VISION_KINDS = tuple(f"vision_{k}" for k in BRIDGE_KINDS)
DECODER_KINDS = tuple(f"decoder_{k}" for k in ssm_paths.SELECTIVITY)
ATTRIBUTION_KINDS = ("ig", "gradcam", "saliency")
MAP_KINDS = (*ATTENTION_KINDS, *BRIDGE_KINDS, *VISION_KINDS, *DECODER_KINDS, *ATTRIBUTION_KINDS)
LAYERED_KINDS = {**dict.fromkeys(BRIDGE_KINDS, "the bridge"),
                 **dict.fromkeys(VISION_KINDS, "the Vision Mamba encoder"),
                 **dict.fromkeys(DECODER_KINDS, "the Mamba decoder")}
# Attribution settings used by word_map (IG: 16 interpolation points, the zero baseline).
ATTRIBUTION_DEFAULTS = {"ig": {"steps": 16}, "gradcam": {}, "saliency": {}}

__all__ = ["ATTRIBUTION_DEFAULTS", "MAP_KINDS", "CaptionAnalysis", "analyse", "attribute_words",
           "gated_update", "model_kinds", "word_map", "word_maps"]


@dataclass
class CaptionAnalysis:
    """Everything `analyse` found for one image and its generated caption.

    ids (S,): BOS, prompt, generated ids (EOS included when generated);
    words / word_index: the generated words (no BOS/EOS/PAD) and their positions in ids;
    logprobs (n_words,); image (3, H, W) the model input; grid_side g.
    Per word: cross_attention, prefix_attention, implicit, hidden_attention, hidden_rollout
    (n_words, g, g); cross_attention_layers (n_words, cross_layers, g, g),
    cross_attention_heads (n_words, cross_layers, heads, g, g) and hidden_attention_layers
    (n_words, decoder layers, g, g). Per bridge layer: delta, gate, state_norm
    {layer: (g, g)}; implicit_rollout (L, L) with L = 1 + g². Per Vision Mamba encoder
    layer: vision_delta, vision_gate, vision_state_norm {layer: (g, g)}. Per Mamba decoder
    layer: decoder_delta, decoder_gate, decoder_state_norm {layer: (g, g)} and
    decoder_selectivity (every token of [prefix ; text]). A kind the model's parts do not
    have is None (`model_kinds`). gates: the tanh cross-attention gates by name
    ("cross 0 attn", "cross 0 ff"); gated_update (n_words, cross_layers) what each cross
    layer adds at the word's query, relative to the text stream (see `gated_update`).
    attributions: on-demand cache {kind: {word i: (g, g)}} filled by word_map / word_maps.
    """

    ids: torch.Tensor
    words: list[str]
    word_index: list[int]
    grid_side: int
    image: torch.Tensor
    caption: str
    logprobs: torch.Tensor
    gates: dict[str, float]
    gated_update: torch.Tensor
    cross_attention: torch.Tensor | None = None
    cross_attention_layers: torch.Tensor | None = None
    cross_attention_heads: torch.Tensor | None = None
    prefix_attention: torch.Tensor | None = None
    implicit: torch.Tensor | None = None
    implicit_rollout: torch.Tensor | None = None
    delta: dict[int, torch.Tensor] | None = None
    gate: dict[int, torch.Tensor] | None = None
    state_norm: dict[int, torch.Tensor] | None = None
    vision_delta: dict[int, torch.Tensor] | None = None
    vision_gate: dict[int, torch.Tensor] | None = None
    vision_state_norm: dict[int, torch.Tensor] | None = None
    hidden_attention: torch.Tensor | None = None
    hidden_attention_layers: torch.Tensor | None = None
    hidden_rollout: torch.Tensor | None = None
    decoder_delta: dict[int, torch.Tensor] | None = None
    decoder_gate: dict[int, torch.Tensor] | None = None
    decoder_state_norm: dict[int, torch.Tensor] | None = None
    decoder_selectivity: ssm_paths.Selectivity | None = None
    attributions: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def n_words(self) -> int:
        return len(self.words)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The map kinds this analysis has (attribution kinds always: computed on demand)."""
        return tuple(k for k in MAP_KINDS
                     if k in ATTRIBUTION_KINDS or getattr(self, k) is not None)


def model_kinds(model) -> tuple[str, ...]:
    """The map kinds `model`'s parts allow, in MAP_KINDS' order (see the module docstring)."""
    c = model.config
    stacks = ssm_stacks(model)
    has = {"cross_attention": c.cross_attn_layers > 0, "implicit": c.cross_attn_layers > 0
           and "bridge" in stacks, "prefix_attention": c.decoder_type == "transformer",
           **dict.fromkeys(BRIDGE_KINDS, "bridge" in stacks),
           **dict.fromkeys(VISION_KINDS, "vision" in stacks),
           **dict.fromkeys(("hidden_attention", "hidden_rollout", *DECODER_KINDS),
                           c.decoder_type == "mamba")}
    return tuple(k for k in MAP_KINDS if has.get(k, True))


# ---------------------------------------------------------------- analyse
def analyse(model, image: torch.Tensor, *, tokenizer=None, max_length: int | None = None,
            temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
            seed: int | None = None, prompt=None, ids=None) -> CaptionAnalysis:
    """Caption one image (3, H, W) or (1, 3, H, W), normalised as the model expects, and
    collect every per-word and bridge map its parts allow (see the module docstring).
    Greedy by default; max_length defaults to config.max_seq_length. Words are decoded with
    `tokenizer` (else shown as ids). ids: a caption (S,) to read instead of generating one
    (teacher-forced, BOS first; generation.forced_traces), e.g. another model's."""
    image = _one_image(image, model)  # (1, 3, H, W)
    _check_grid(model)
    kinds = model_kinds(model)
    with eval_mode(model):
        if ids is None:
            ids, traces = model.generate(
                image, max_length=max_length or model.config.max_seq_length,
                temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, prompt=prompt,
                return_traces=True)
        else:
            ids = torch.as_tensor(ids, dtype=torch.long, device=image.device)[None]  # (1, S)
            traces = forced_traces(model, image, ids)
        updates = gated_update(model, image, ids[:, :-1])  # (1, cross_layers, S - 1)
        image_path = _image_path_maps(model, image, kinds)
        ids = ids[0]  # (S,)
        steps = _word_steps(ids, traces.start, model.config)
        word_index = [traces.start + s for s in steps]
        g = model.config.grid_size
        decoder = _decoder_maps(model, image, ids, word_index, g) if "hidden_rollout" in kinds \
            else {}
    words = _words(ids, steps, traces.start, tokenizer)
    return CaptionAnalysis(
        ids=ids, words=words, word_index=word_index, grid_side=g, image=image[0],
        caption=" ".join(words), logprobs=traces.logprobs[0, steps].float(),
        gates=_gates(model),
        gated_update=updates[0, :, [i - 1 for i in word_index]].T.float(),
        **_attention_maps(traces, steps, image_path.pop("rollout", None), g, kinds),
        **image_path, **decoder)


def _check_grid(model) -> None:
    """Per-word maps live on the patch grid: the decoder's image tokens must be cls + g²."""
    c = model.config
    if c.num_media_tokens != c.num_image_tokens:
        raise ValueError(f"per-word maps need the image tokens on the patch grid (cls + "
                         f"{c.grid_size}x{c.grid_size} = {c.num_image_tokens}); this model has "
                         f"bridge_type={c.bridge_type!r}, which gives the decoder "
                         f"{c.num_media_tokens} tokens. Use a bridge that keeps one token per "
                         "patch")


def _attention_maps(traces, steps: list[int], rollout, g: int, kinds) -> dict:
    """The decoder's attention kinds per word (cross, prefix, implicit) that `kinds` has."""
    out = {}
    if "cross_attention" in kinds:
        heads = traces.cross_attention[0, steps].float()  # (n, cross_layers, H, L)
        cross_rows = _mean_heads(heads)  # (n, cross_layers, L)
        out.update(cross_attention=_grid(cross_rows.mean(1), g),
                   cross_attention_layers=_grid(cross_rows, g),
                   cross_attention_heads=_grid(heads, g))
        if "implicit" in kinds:  # the cross-attention row pushed through the bridge's SSM
            out.update(implicit=_grid(cross_rows.mean(1) @ rollout, g), implicit_rollout=rollout)
    if "prefix_attention" in kinds:
        prefix_rows = _mean_heads(traces.prefix_attention[0, steps]).mean(1)  # (n, L)
        out["prefix_attention"] = _grid(prefix_rows, g)
    return out


def _decoder_maps(model, image: torch.Tensor, ids: torch.Tensor, word_index: list[int],
                  g: int) -> dict:
    """The Mamba decoder's kinds from one teacher-forced pass (ssm_paths.path_maps)."""
    path = ssm_paths.path_maps(model, image, ids, word_index)
    sel = path.selectivity
    out = {f"decoder_{k}": dict(enumerate(_grid(sel.image_part(k), g)))  # {layer: (g, g)}
           for k in ssm_paths.SELECTIVITY}
    return {**out, "decoder_selectivity": sel,
            "hidden_attention_layers": _grid(path.hidden_attention, g),  # (n, layers, g, g)
            "hidden_attention": _grid(path.hidden_attention.mean(1), g),
            "hidden_rollout": _grid(path.hidden_rollout, g)}


def _one_image(image: torch.Tensor, model) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a tensor (3, H, W) or (1, 3, H, W), got "
                         f"{type(image).__name__}; convert with Pretrained.transform(img)")
    if image.dim() == 3:
        image = image[None]  # (1, 3, H, W)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"analyse takes one image (3, H, W) or (1, 3, H, W), got "
                         f"{tuple(image.shape)}; loop over a batch")
    return image.to(next(model.parameters()).device)


def _word_steps(ids: torch.Tensor, start: int, config) -> list[int]:
    """Generation steps s (token ids[start + s]) that wrote a word: up to EOS/PAD, no BOS."""
    steps = []
    for s, tok in enumerate(ids[start:].tolist()):
        if tok in (config.eos_token_id, config.pad_token_id):
            break
        if tok != config.bos_token_id:
            steps.append(s)
    return steps


def _words(ids: torch.Tensor, steps: list[int], start: int, tokenizer) -> list[str]:
    toks = [int(ids[start + s]) for s in steps]
    return [tokenizer.itos[t] if tokenizer is not None else str(t) for t in toks]


def _mean_heads(pattern: torch.Tensor) -> torch.Tensor:
    """(n, layers, H, L) -> (n, layers, L), float."""
    return reduce(pattern.float(), "n layers h l -> n layers l", "mean")


def _grid(rows: torch.Tensor, g: int) -> torch.Tensor:
    """(..., L) with L = 1 + g² (cls first) -> (..., g, g), cls dropped."""
    return rearrange(rows[..., 1:], "... (r c) -> ... r c", r=g)  # (..., g, g)


def gated_update(model, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """How much each gated cross-attention layer adds to the text stream, teacher-forced:
    |tanh(attn_gate) * CrossAttention(text, media)| / |text stream entering the layer|.

    images (B, 3, H, W), tokens (B, T) -> (B, cross_layers, T). The gate alone says how
    strongly the branch is scaled, not how large the update is: training can grow the
    branch's output instead of its gate."""
    layers = model.decoder.cross_layers
    if not len(layers):
        return torch.zeros(tokens.shape[0], 0, tokens.shape[1])
    names = [f"decoder.cross_layers.{i}.hook_{k}" for i in range(len(layers))
             for k in ("resid_pre", "attn_out")]
    with torch.no_grad():
        _, cache = model.run_with_cache(images, tokens, names_filter=names)
    rows = []
    for i, layer in enumerate(layers):
        update = layer.attn_gate.detach().tanh() * cache[names[2 * i + 1]]  # (B, T, dim)
        stream = cache[names[2 * i]].norm(dim=-1).clamp_min(1e-12)  # (B, T)
        rows.append(update.norm(dim=-1) / stream)
    return torch.stack(rows, dim=1).float()  # (B, cross_layers, T)


def _gates(model) -> dict[str, float]:
    out = {}
    for i, layer in enumerate(model.decoder.cross_layers):
        out[f"cross {i} attn"] = float(layer.attn_gate.detach().tanh())
        out[f"cross {i} ff"] = float(layer.ff_gate.detach().tanh())
    return out


# ---------------------------------------------------------------- bridge and encoder maps
GRID_STACKS = {"bridge": "", "vision": "vision_"}  # image-path stack -> prefix of its kinds


def _grid_names(stack: SSMStack) -> list[str]:
    """Hooks for Δ per direction, the gate and direction 0's state of every layer."""
    names = stack.hook_names(["hook_delta"])
    for ref in stack:
        names += [ref.hook("hook_gate"), ref.hook("hook_state", 0)]
    return names


def _image_path_maps(model, image: torch.Tensor, kinds) -> dict:
    """One image-only pass: per-layer Δ, gate and |h| grids of the SSM bridge and of a
    Vision Mamba encoder (kinds prefixed "vision_"), and the bridge's hidden-attention
    rollout ("rollout", (L, L))."""
    stacks = {n: s for n, s in ssm_stacks(model).items()
              if n in GRID_STACKS and f"{GRID_STACKS[n]}delta" in kinds}
    if not stacks:
        return {}
    names = [n for s in stacks.values() for n in _grid_names(s)]
    if "bridge" in stacks:
        names += stacks["bridge"].hook_names(ia.SCAN_HOOKS)
    _, cache = model.run_with_cache(image, None, names_filter=sorted(set(names)))
    side = model.config.grid_size
    out = {}
    for name, stack in stacks.items():
        order = stack.output_order  # the Vim encoder's: class token mid-sequence
        for kind, grid in (("delta", _delta_grid), ("gate", _gate_grid),
                           ("state_norm", _state_grid)):
            out[GRID_STACKS[name] + kind] = {ref.index: grid(cache, ref, side, order)
                                             for ref in stack}
    if "bridge" in stacks:
        alphas = [ia.stack_attention(cache, ref, dtype=torch.float64, chunked=True).alpha_abs
                  for ref in stacks["bridge"]]  # each (1, L, L)
        out["rollout"] = ia.rollout(alphas)[0].float()  # (L, L)
    return out


def _token_grid(values: torch.Tensor, side: int, order: torch.Tensor | None) -> torch.Tensor:
    """(L,) per token (cls first, or in `order`'s source order) -> (g, g) float, cls
    dropped; order: output[i] = values[order[i]] (VisionMamba.output_order)."""
    if order is not None:
        values = values[order.to(values.device)]  # (L,) cls first
    return rearrange(values[1:].float(), "(r c) -> r c", r=side)  # (g, g)


def _delta_grid(cache, ref, side: int, order=None) -> torch.Tensor:
    per_dir = [ref.to_token_order(cache[ref.hook("hook_delta", k)][0].mean(-1), k, dim=0)  # (L,)
               for k in range(len(ref))]
    return _token_grid(torch.stack(per_dir).mean(0), side, order)  # (g, g)


def _gate_grid(cache, ref, side: int, order=None) -> torch.Tensor:
    return _token_grid(cache[ref.hook("hook_gate")][0].mean(-1), side, order)  # (g, g)


def _state_grid(cache, ref, side: int, order=None) -> torch.Tensor:
    h = cache[ref.hook("hook_state", 0)][0]  # (L, D, N) scan order
    norms = h.float().flatten(1).norm(dim=1)  # (L,)
    return _token_grid(ref.to_token_order(norms, 0, dim=0), side, order)  # (g, g)


# ---------------------------------------------------------------- maps per word
def _check_kind(kind: str) -> None:
    if kind not in MAP_KINDS:
        raise ValueError(f"unknown map kind {kind!r}; choose one of {', '.join(MAP_KINDS)}")


def _available(analysis: CaptionAnalysis, kind: str):
    """analysis.<kind>, or one ValueError naming the kinds this model has."""
    maps = getattr(analysis, kind)
    if maps is None:
        raise ValueError(f"this model has no {kind!r} maps (its parts do not allow them); "
                         f"it has {', '.join(analysis.kinds)}")
    return maps


def _check_words(analysis: CaptionAnalysis, words: Sequence[int]) -> list[int]:
    out = []
    for w in words:
        if isinstance(w, bool) or not isinstance(w, int) or not -analysis.n_words <= w < \
                analysis.n_words:
            raise ValueError(f"word index {w!r} is out of range: the caption has "
                             f"{analysis.n_words} words ({analysis.caption!r})")
        out.append(w % analysis.n_words)
    return out


def _layer_map(per_layer: dict[int, torch.Tensor], layer: int | None,
               where: str = "the bridge") -> torch.Tensor:
    """The map of one layer of `where` (None: the mean over layers)."""
    if layer is None:
        return torch.stack(list(per_layer.values())).mean(0)  # (g, g) mean over layers
    return per_layer[layer_index(layer, len(per_layer), where)]


def word_maps(analysis: CaptionAnalysis, kind: str, model=None,
              words: Sequence[int] | None = None, *, layer: int | None = None) -> torch.Tensor:
    """Maps (len(words), g, g) of `kind` (one of MAP_KINDS) for the given word indices
    (default: every word). Bridge and decoder kinds are word-independent: each word gets the
    map of layer `layer` (None: the mean over layers). Attribution kinds need `model`; the
    missing words run as one batch and are cached in analysis.attributions."""
    _check_kind(kind)
    words = _check_words(analysis, range(analysis.n_words) if words is None else words)
    g = analysis.grid_side
    if not words:
        return torch.zeros(0, g, g)
    if kind in ATTENTION_KINDS:
        return _available(analysis, kind)[words]  # (k, g, g)
    if kind in LAYERED_KINDS:
        one = _layer_map(_available(analysis, kind), layer, LAYERED_KINDS[kind])  # (g, g)
        return one.expand(len(words), g, g).clone()  # (k, g, g)
    cached = _attribute_missing(analysis, kind, model, words)
    return torch.stack([cached[w] for w in words])  # (k, g, g)


def word_map(analysis: CaptionAnalysis, word_i: int, kind: str, model=None, *,
             layer: int | None = None) -> torch.Tensor:
    """The (g, g) map of `kind` for word `word_i` (see word_maps)."""
    return word_maps(analysis, kind, model, [word_i], layer=layer)[0]


def _attribute_missing(analysis: CaptionAnalysis, kind: str, model,
                       words: list[int]) -> dict[int, torch.Tensor]:
    """Fill analysis.attributions[kind] for `words` not yet there (one batched call)."""
    if model is None:
        raise ValueError(f"map kind {kind!r} is an attribution computed on demand; pass the "
                         f"model: word_map(analysis, i, {kind!r}, model)")
    cached = analysis.attributions.setdefault(kind, {})
    todo = sorted({w for w in words if w not in cached})
    if todo:
        patches = attribute_words(model, analysis, todo, kind)  # (k, g, g)
        cached.update({w: p for w, p in zip(todo, patches)})
    return cached


def attribute_words(model, analysis: CaptionAnalysis, words: Sequence[int],
                    kind: str = "ig", **kwargs) -> torch.Tensor:
    """Attributions (len(words), g, g) of each word's logit to the image patches, the
    caption prefix teacher-forced, all words as one batch (not cached). kwargs go to
    ssm_bridge.interp.attribution.attribute (defaults: ATTRIBUTION_DEFAULTS[kind])."""
    if kind not in ATTRIBUTION_KINDS:
        raise ValueError(f"kind must be one of {ATTRIBUTION_KINDS}, got {kind!r}")
    words = _check_words(analysis, words)
    positions = [analysis.word_index[w] for w in words]
    K = len(words)
    device = next(model.parameters()).device
    tokens = analysis.ids[: max(positions)].to(device)  # (T,): causal, so one prefix serves all
    image = analysis.image.to(device)
    opts = {**ATTRIBUTION_DEFAULTS[kind], **kwargs}
    result = attr_mod.attribute(
        model, image.expand(K, -1, -1, -1), tokens.expand(K, -1),  # (K, 3, H, W), (K, T)
        torch.tensor([p - 1 for p in positions], device=device),
        analysis.ids[positions].to(device), kind, **opts)
    return result.patches.detach().float()  # (K, g, g)
