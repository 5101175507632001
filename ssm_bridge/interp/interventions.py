"""Causal interventions on the SSM bridge (or the Mamba decoder, or the Vision Mamba
encoder), as hook lists for `model.hooks`.

    hooks = zero_state(model, patches=[9, 10, 17], layers=[0])    # state = 0 at those patches
    with model.hooks(hooks):
        logits = model(images, tokens)
    res = compare(model, tokenizer, image, hooks)                  # captions and log-probs
    print(res.table())

Every builder returns `fwd_hooks`, a list of (hook name, fn(tensor, name)) pairs.
Positions are PATCH indices 0 .. P-1 (row-major over the g x g grid) or "cls"; a
boolean mask with P or g x g entries works too. Builders convert them to each scan
direction's own order (direction k reads token perm[i] at scan position i, with
perm = `ssm_bridge.core.addressing.direction_perm(name, L)`; token 0 is cls, token 1 + p
patch p: the model's output order). Layers are ints, negative counting from the end
(`addressing.layer_index`).

    reset_state   Ā_t = 0: the state at t forgets the past, h_t = B̄x_t, and the scan
                  continues from it
    zero_state    Ā_t = 0 and B̄x_t = 0: h_t = 0, the scan continues from zero
    skip_tokens   Ā_t = 1 and B̄x_t = 0: h_t = h_{t-1}, the scan passes over the token
                  (Δ_t -> 0): it removes what the token writes, not what came before
    ablate_gate   the gate SiLU(z) set to 0 ("zero"), 1 ("one") or its mean over the
                  image's tokens ("mean"), at every token or at some patches
    patch_state   activation patching of the state between images: the target's scan is
                  set to the source's state h at those positions (Ā_t = 0, B̄x_t = h_source)
    patch_activation  any hook's activation copied from a source cache

The state and gate builders take `stack=` one of STATE_STACKS: "bridge" (default),
"decoder" or "vision". A Mamba decoder (decoder_type="mamba") reads [image tokens ; text],
so the same patch positions name its image tokens, and the edit changes what the decoder's
state carries from them into every word. A decoder hook acts only in calls that hold the
image tokens (a forward, or the first call of a recurrent generation, which scans the
prefix); a decoding step after it holds one text token and is left alone. The Vision Mamba
encoder (vision_type="vim") scans its tokens with the class token in the middle
(ssm_bridge.core.vim); the builders move the output-order positions to that internal order
(`SSMStack.own_tokens`) before each direction's, so "cls" and patch p mean the same tokens
on every stack.

The state hooks are the heavy ones (hook_A_bar, hook_dBx): the direction then runs its
explicit scan (float32, ~1e-6 from the fused kernel), in which the edit propagates.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core import addressing
from ..core.addressing import SSMStack, grid_layout
from ..core.hooks import HookFn, hook_points
from ..core.layers import eval_mode

FwdHooks = list[tuple[str, HookFn]]
GATE_MODES = ("zero", "one", "mean")


# ---------------------------------------------------------------- positions
def token_positions(patches, length: int) -> list[int]:
    """Patch indices (or "cls", or a boolean mask of P or g x g) -> token indices.

    length: L = 1 + P tokens (cls first). Token of patch p is 1 + p, of "cls" 0.
    Raises ValueError for indices outside 0 .. P-1 or a mask of the wrong size.
    """
    prefix, _ = grid_layout(length)
    P = length - prefix
    if _is_bool_mask(patches):
        return _mask_tokens(patches, P, prefix)
    items = [patches] if isinstance(patches, (int, str, np.integer)) else list(patches)
    if not items:
        raise ValueError("no patches given: pass patch indices 0..P-1, 'cls' or a mask")
    tokens = [_one_token(p, P, prefix) for p in items]
    return sorted(set(tokens))


def _is_bool_mask(x) -> bool:
    if isinstance(x, np.ndarray):
        return x.dtype == np.bool_
    return isinstance(x, torch.Tensor) and x.dtype == torch.bool


def _one_token(p, P: int, prefix: int) -> int:
    if isinstance(p, str):
        if p != "cls" or prefix == 0:
            raise ValueError(f"position {p!r}: only 'cls' (on a model with a cls token) or "
                             f"patch indices 0..{P - 1} are valid")
        return 0
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer, torch.Tensor)):
        raise ValueError(f"patch index must be an int in 0..{P - 1} or 'cls', got {p!r}")
    p = int(p)
    if not 0 <= p < P:
        raise ValueError(f"patch index {p} is out of range: this model has {P} patches "
                         f"(0..{P - 1}, row-major over the grid); use 'cls' for the cls token")
    return prefix + p


def _mask_tokens(mask, P: int, prefix: int) -> list[int]:
    flat = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask).flatten()
    if flat.numel() != P:
        raise ValueError(f"a patch mask needs {P} entries (or a grid of them), got shape "
                         f"{tuple(mask.shape)}")
    idx = flat.nonzero()[:, 0].tolist()
    if not idx:
        raise ValueError("the patch mask selects no patch")
    return [prefix + i for i in idx]


def scan_positions(direction: str, tokens: Sequence[int], length: int,
                   device=None) -> torch.Tensor:
    """Token indices -> the positions (len(tokens),) where direction `direction` reads them.

    Direction k reads token perm[i] at scan position i, so token t sits at inverse[t]."""
    return addressing.scan_positions(addressing.direction_perm(direction, length, device), tokens)


# ---------------------------------------------------------------- validation
# where the builders below act on image tokens; the first is the default (the app lists them)
STATE_STACKS = ("bridge", "decoder", "vision")


def _stack(model, stack: str = "bridge") -> SSMStack:
    if stack not in STATE_STACKS:
        raise ValueError(f"interventions act on the image tokens of the SSM stacks "
                         f"{list(STATE_STACKS)}, got {stack!r}")
    return SSMStack.of(model, stack, what="SSM interventions")


def _directions(ref: addressing.SSMLayerRef, directions) -> list[int]:
    """Indices k of the chosen scan directions of a layer (None: all)."""
    if directions is None:
        return list(range(len(ref)))
    chosen = [directions] if isinstance(directions, (int, str)) else list(directions)
    return [ref.direction(d) for d in chosen]


def _length(model) -> int:
    return model.config.num_image_tokens


# ---------------------------------------------------------------- state edits
def _overwrite(pos: torch.Tensor, value, min_length: int = 0) -> HookFn:
    """A hook that sets t[:, pos] = value (a number, or (1 | B, len(pos), ...) tensor) in
    calls whose t holds at least `min_length` tokens (the image tokens; see the docstring)."""
    def fn(t: torch.Tensor, name: str) -> torch.Tensor:
        if t.shape[1] < min_length:  # a decoding step after the image prefix
            return t
        t = t.clone()
        v = value
        if isinstance(v, torch.Tensor):
            v = v.to(t.device, t.dtype)
            if v.shape[0] not in (1, t.shape[0]):
                raise ValueError(f"{name}: the source has batch {v.shape[0]} but the target "
                                 f"{t.shape[0]}; use one source image or as many as targets")
            v = v.expand(t.shape[0], *v.shape[1:])  # (B, len(pos), ...)
        t[:, pos.to(t.device)] = v
        return t
    return fn


def _state_hooks(model, patches, layers, directions, dbx, stack: str,
                 a_bar: float = 0.0) -> FwdHooks:
    """Ā = a_bar (and B̄x = dbx(layer ref, k, pos) unless dbx is None) at the patches'
    scan positions."""
    L = _length(model)
    ssm = _stack(model, stack)
    tokens = ssm.own_tokens(token_positions(patches, L))  # the stack's sequence order
    hooks: FwdHooks = []
    for ref in ssm.select(layers):
        for k in _directions(ref, directions):
            pos = ref.scan_positions(k, tokens, L)  # (n,) in this direction's scan order
            hooks.append((ref.hook("hook_A_bar", k), _overwrite(pos, a_bar, L)))
            if dbx is not None:
                hooks.append((ref.hook("hook_dBx", k), _overwrite(pos, dbx(ref, k, pos), L)))
    return hooks


def reset_state(model, patches, layers=None, directions=None, *,
                stack: str = "bridge") -> FwdHooks:
    """Forget the past at `patches`: Ā_t = 0 there, so h_t = B̄x_t (the token's own input)
    and the scan continues from it. layers: ints (None: all); directions: names or
    indices (None: all); stack: one of STATE_STACKS (the decoder: its image tokens)."""
    return _state_hooks(model, patches, layers, directions, None, stack)


def skip_tokens(model, patches, layers=None, directions=None, *,
                stack: str = "bridge") -> FwdHooks:
    """The scan passes over `patches` as if they were not there: Ā_t = 1 and B̄x_t = 0,
    so h_t = h_{t-1} (what Δ_t -> 0 does). The state neither takes the token in nor
    forgets anything there; only the token's own output keeps its skip term D x_t."""
    return _state_hooks(model, patches, layers, directions, lambda ref, k, pos: 0.0, stack,
                        a_bar=1.0)


def zero_state(model, patches, layers=None, directions=None, *,
               stack: str = "bridge") -> FwdHooks:
    """State = 0 at `patches`: Ā_t = 0 and B̄x_t = 0, h_t = 0, the scan continues from 0."""
    return _state_hooks(model, patches, layers, directions, lambda ref, k, pos: 0.0, stack)


def ablate_gate(model, layers=None, mode: str = "zero", patches=None, *,
                stack: str = "bridge") -> FwdHooks:
    """Replace the gate SiLU(z) (B, L, D) of the chosen layers at `patches` (None: every
    image token, cls included) by 0 ("zero": the block adds nothing there), 1 ("one": the
    SSM output passes ungated) or each channel's mean over the image's L tokens ("mean").
    stack "decoder": the Mamba decoder's gate at its image tokens; "vision": the Vim's."""
    if mode not in GATE_MODES:
        raise ValueError(f"unknown gate ablation mode {mode!r}; choose one of {GATE_MODES}")
    L = _length(model)
    ssm = _stack(model, stack)
    pos = torch.as_tensor(ssm.own_tokens(token_positions(patches, L)) if patches is not None
                          else range(L))  # (n,) in the stack's sequence order

    def fn(t: torch.Tensor, name: str) -> torch.Tensor:
        if t.shape[1] < L:  # a decoding step after the image prefix
            return t
        if mode == "mean":
            value = t[:, :L].mean(dim=1, keepdim=True)  # (B, 1, D) over the image tokens
        else:
            value = 0.0 if mode == "zero" else 1.0
        out = t.clone()
        out[:, pos] = value
        return out

    return [(ref.hook("hook_gate"), fn) for ref in ssm.select(layers)]


# ---------------------------------------------------------------- activation patching
def state_names(model, layers=None, *, stack: str = "bridge") -> list[str]:
    """Names of the heavy state hooks (B, L, D, N) of the chosen layers, every direction."""
    return _stack(model, stack).hook_names(["hook_state"], layers)


def source_states(model, images: torch.Tensor, layers=None, *,
                  stack: str = "bridge") -> Mapping[str, torch.Tensor]:
    """Run `images` (B, 3, H, W) and capture the states h of `stack`: the image path for
    the bridge and the vision encoder; for the decoder, its image prefix and one BOS (the
    states at the image tokens do not depend on the text after them)."""
    if images.dim() == 3:
        images = images[None]  # (1, 3, H, W)
    images = images.to(next(model.parameters()).device)
    tokens = torch.full((images.shape[0], 1), model.config.bos_token_id,
                        device=images.device) if stack == "decoder" else None  # (B, 1)
    names = state_names(model, layers, stack=stack)
    return model.run_with_cache(images, tokens, names_filter=names)[1]


def patch_state(model, source_cache_or_images, patches, layers=None,
                directions=None, *, stack: str = "bridge") -> FwdHooks:
    """Activation patching of the SSM state: at the patches' scan positions the target's
    recurrence is set to the source's state (Ā_t = 0, B̄x_t = h_source_t) and continues
    from it. The source is images (1 | B, 3, H, W) (run here) or a cache holding their
    `hook_state`s (e.g. `source_states`, or run_with_cache(..., heavy=True))."""
    src = source_cache_or_images
    if isinstance(src, torch.Tensor):
        src = source_states(model, src, layers, stack=stack)
    if not isinstance(src, Mapping):
        raise ValueError("source must be images (B, 3, H, W) or a cache (name -> tensor), "
                         f"got {type(src).__name__}")
    for name in state_names(model, layers, stack=stack):
        if name not in src:
            raise ValueError(f"the source cache lacks {name}; build it with "
                             f"source_states(model, images) or run_with_cache(heavy=True)")

    def dbx(ref: addressing.SSMLayerRef, k: int, pos: torch.Tensor) -> torch.Tensor:
        h = src[ref.hook("hook_state", k)]  # (Bs, L, D, N) in scan order
        return h[:, pos.to(h.device)]  # (Bs, n, D, N)

    return _state_hooks(model, patches, layers, directions, dbx, stack)


def _replace(src: torch.Tensor) -> HookFn:
    """A hook that returns `src` (batch 1 is broadcast to the run's batch)."""
    def fn(t: torch.Tensor, name: str) -> torch.Tensor:
        v = src.to(t.device, t.dtype)
        if v.dim() and v.shape[0] == 1 and t.shape[0] != 1:
            v = v.expand(t.shape[0], *v.shape[1:])
        if v.shape != t.shape:
            raise ValueError(f"{name}: the source activation has shape {tuple(v.shape)}, the "
                             f"run {tuple(t.shape)}; patch runs of the same shape")
        return v.clone()
    return fn


def _token_indexed(name: str) -> bool:
    """True for hooks whose dim 1 runs over the L image tokens."""
    if name.endswith(("hook_pattern", "hook_grid")) or ".hook_prefix_attn" in name:
        return False
    return name.startswith(("bridge.", "vision.")) or name == "decoder.hook_image_prefix"


def patch_activation(name_glob: str, source_cache: Mapping[str, torch.Tensor],
                     positions=None, *, model=None) -> FwdHooks:
    """Copy the activation of every cached hook matching `name_glob` from `source_cache`
    into the run (any hook: residual streams, gates, Δ, ...). positions: None (all), or
    patch indices / "cls" / a mask, for hooks indexed by image token on dim 1. Scan-order
    hooks (`dirs.k.hook_*` except hook_out) get them converted to their direction's
    order, which needs `model` (to know the direction's name); so do the Vim encoder's
    hooks (`vision.hook_embed`, `vision.layers.*`), in its internal order."""
    names = [n for n in source_cache if fnmatch.fnmatchcase(n, name_glob)]
    if not names:
        raise ValueError(f"no cached activation matches {name_glob!r}; the cache holds "
                         f"{list(source_cache)[:6]}...")
    hooks: FwdHooks = []
    for name in names:
        src = source_cache[name]
        if positions is None:
            hooks.append((name, _replace(src)))
            continue
        if not _token_indexed(name):
            raise ValueError(f"{name} is not indexed by image token on dim 1; patch it with "
                             f"positions=None")
        pos = _positions_for(name, positions, src.shape[1], model)
        hooks.append((name, _overwrite(pos, src[:, pos.to(src.device)])))
    return hooks


def _positions_for(name: str, positions, length: int, model) -> torch.Tensor:
    """Patch positions -> indices on dim 1 of hook `name`: in the sequence order of the
    stack that holds it (the Vim encoder's, class token mid-sequence), then, for scan
    hooks, in their direction's order."""
    tokens = token_positions(positions, length)
    stack = None if model is None else _holder(model, name)
    if stack is not None:
        tokens = stack.own_tokens(tokens)
    if not addressing.in_scan_order(name):
        return torch.as_tensor(tokens)
    if model is None:
        raise ValueError(f"{name} is in its direction's scan order; pass model=model so that "
                         f"patch positions can be converted to it")
    where = None if stack is None else stack.locate(name)
    if where is None:
        raise ValueError(f"{name} is not a hook of this model's SSM layers "
                         f"({list(addressing.ssm_stacks(model))})")
    return stack[where.layer].scan_positions(where.direction, tokens, length)


def _holder(model, name: str) -> SSMStack | None:
    """The SSM stack whose layers, or the module holding them, hook `name` belongs to
    ('vision.hook_embed' -> the Vim encoder's); None for hooks outside every stack."""
    for stack in addressing.ssm_stacks(model).values():
        owner = stack.owner_path  # "" for a MambaLM's own "layers"
        if stack.locate(name) is not None or (owner and name.startswith(owner + ".")):
            return stack
    return None


# ---------------------------------------------------------------- before / after
@dataclass
class InterventionResult:
    """Greedy captions and teacher-forced log-probs of one image, without and with hooks.

    words[i] is the token predicted at step i of the original caption (the last is
    "<eos>"); logprob_before/after (T,) its log-probability without / with the hooks."""

    caption_before: str
    caption_after: str
    words: list[str]
    logprob_before: torch.Tensor  # (T,)
    logprob_after: torch.Tensor  # (T,)
    ids_before: list[int] = field(default_factory=list)
    ids_after: list[int] = field(default_factory=list)

    @property
    def delta(self) -> torch.Tensor:
        """(T,) log-prob change per word (after - before); negative: the hooks hurt."""
        return self.logprob_after - self.logprob_before

    @property
    def caption_changed(self) -> bool:
        return self.caption_before != self.caption_after

    @property
    def total_delta(self) -> float:
        """Change of the whole caption's log-probability."""
        return float(self.delta.sum())

    def to_rows(self) -> list[dict]:
        """One dict per word: position, word, logprob_before, logprob_after, delta."""
        return [{"position": i, "word": w, "logprob_before": float(b),
                 "logprob_after": float(a), "delta": float(a - b)}
                for i, (w, b, a) in enumerate(zip(self.words, self.logprob_before,
                                                  self.logprob_after))]

    def table(self) -> str:
        """A plain-text table: both captions, then per-word log-probs and their change."""
        lines = [f"before: {self.caption_before}", f"after:  {self.caption_after}",
                 f"{'word':<12}{'logp before':>12}{'logp after':>12}{'delta':>10}"]
        for r in self.to_rows():
            lines.append(f"{r['word']:<12}{r['logprob_before']:>12.3f}"
                         f"{r['logprob_after']:>12.3f}{r['delta']:>10.3f}")
        total_b, total_a = float(self.logprob_before.sum()), float(self.logprob_after.sum())
        lines.append(f"{'(total)':<12}{total_b:>12.3f}{total_a:>12.3f}{total_a - total_b:>10.3f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _caption_ids(tokenizer, caption_ids, fallback: list[int], bos: int) -> list[int]:
    """The caption to score: ids (list / tensor) or text; starts with BOS."""
    if caption_ids is None:
        ids = list(fallback)
    elif isinstance(caption_ids, str):
        ids = tokenizer.encode(caption_ids)
    else:
        ids = [int(i) for i in (caption_ids.tolist() if hasattr(caption_ids, "tolist")
                                else caption_ids)]
    ids = ids if ids and ids[0] == bos else [bos, *ids]
    if len(ids) < 2:
        raise ValueError("the caption to score is empty: give caption_ids with >= 1 token")
    return ids


def _word_logprobs(model, image: torch.Tensor, ids: list[int], fwd_hooks) -> torch.Tensor:
    """Teacher-forced log p(ids[t+1] | image, ids[:t+1]) for each t: (T,)."""
    seq = torch.tensor(ids, device=image.device)[None]  # (1, T + 1)
    with model.hooks(fwd_hooks):
        logits = model(image, seq[:, :-1])  # (1, T, V)
    lp = logits.float().log_softmax(-1)  # (1, T, V)
    return lp[0].gather(-1, seq[0, 1:, None])[:, 0].cpu()  # (T,)


def _greedy(model, image: torch.Tensor, fwd_hooks, max_length: int) -> list[int]:
    with model.hooks(fwd_hooks):
        ids = model.generate(image, max_length=max_length, temperature=0.0, top_k=None,
                             top_p=None)
    return ids[0].tolist()


@torch.no_grad()
def compare(model, tokenizer, image: torch.Tensor, fwd_hooks: FwdHooks, *, caption_ids=None,
            max_length: int | None = None) -> InterventionResult:
    """Greedy captions of `image` (3, H, W) or (1, 3, H, W) without and with `fwd_hooks`,
    and the per-word log-probs of the original caption (`caption_ids`: ids or text;
    default the greedy caption without hooks) teacher-forced without and with them.

    Generation encodes the image once and then runs the decoder one token at a time, so
    hooks on the image path (vision, bridge) act on both measurements; a decoder-side
    hook must accept every step's shapes (or use it in a plain forward instead)."""
    if image.dim() == 3:
        image = image[None]  # (1, 3, H, W)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"compare takes one image (3, H, W) or (1, 3, H, W), got shape "
                         f"{tuple(image.shape)}")
    image = image.to(next(model.parameters()).device)
    max_length = max_length or model.config.max_seq_length
    with eval_mode(model):
        before = _greedy(model, image, [], max_length)
        after = _greedy(model, image, fwd_hooks, max_length)
        ids = _caption_ids(tokenizer, caption_ids, _trim(before, model.config),
                           model.config.bos_token_id)
        lp_before = _word_logprobs(model, image, ids, [])
        lp_after = _word_logprobs(model, image, ids, fwd_hooks)
    words = [tokenizer.decode([i], skip_special=False) for i in ids[1:]]
    return InterventionResult(tokenizer.decode(before), tokenizer.decode(after), words,
                              lp_before, lp_after, before, after)


# ---------------------------------------------------------------- one action (app, explorer)
ACTIONS = {  # what the app's Intervene tab and the notebook explorer offer, in words
    "zero state": "h = 0 at the chosen patches; the scan continues from zero",
    "reset state": "the state forgets its past at the chosen patches (Ā = 0)",
    "skip patches": "the scan passes over the chosen patches (Δ → 0)",
    "patch from scene": "the state at the chosen patches is taken from another image",
    "zero cross-attention": "tanh(attn gate) = 0: the text reads nothing through "
                            "cross-attention (patches and direction unused)",
}
_STATE_BUILDERS = {"zero state": zero_state, "reset state": reset_state,
                   "skip patches": skip_tokens}


@dataclass(frozen=True)
class Action:
    """One intervention as a user chooses it: `kind` (a key of ACTIONS), the patches
    (indices 0..P-1), the layers and scan directions (None: all) of `stack`, and for
    "patch from scene" the source image (3, H, W) or (1, 3, H, W)."""

    kind: str
    patches: tuple = ()
    layers: tuple | None = None
    directions: tuple | None = None
    stack: str = "bridge"
    source: torch.Tensor | None = field(default=None, compare=False)


def available_actions(model) -> list[str]:
    """The ACTIONS this model supports: the state edits need SSM scans over the image
    (a bridge, a Mamba decoder or a Vision Mamba), the gate one needs gated cross-attention
    layers."""
    stacks = addressing.ssm_stacks(model)
    out = [k for k in ACTIONS if k != "zero cross-attention"
           and any(s in stacks for s in STATE_STACKS)]
    return out + (["zero cross-attention"] if cross_gate_names(model) else [])


def cross_gate_names(model, layers=None) -> list[str]:
    """Hook names of the cross-attention gates tanh(attn_gate) of the chosen layers."""
    names = [n for n in hook_points(model) if n.endswith(".hook_attn_gate")]
    if layers is None:
        return names
    return [names[addressing.layer_index(i, len(names), "cross-attention")] for i in layers]


def ablate_cross_gate(model, layers=None) -> FwdHooks:
    """tanh(attn_gate) = 0 in the chosen cross-attention layers (None: all): the text
    stream then reads nothing of the image through them (the prefix, if any, stays)."""
    names = cross_gate_names(model, layers)
    if not names:
        raise ValueError("this model has no gated cross-attention to ablate "
                         "(cross_attn_layers = 0); choose a state action instead")
    return [(n, lambda t, name: torch.zeros_like(t)) for n in names]


def action_hooks(model, action: Action) -> FwdHooks:
    """The hook list that carries out `action` (ValueError names a bad choice)."""
    if action.kind not in ACTIONS:
        raise ValueError(f"unknown action {action.kind!r}; choose one of {list(ACTIONS)}")
    if action.kind == "zero cross-attention":
        return ablate_cross_gate(model)
    if not action.patches:
        raise ValueError(f"{action.kind!r} acts on patches: choose at least one patch")
    where = dict(layers=action.layers, directions=action.directions, stack=action.stack)
    if action.kind == "patch from scene":
        if action.source is None:
            raise ValueError("'patch from scene' needs a source image to take the state from")
        src = action.source if action.source.dim() == 4 else action.source[None]
        return patch_state(model, src, list(action.patches), **where)  # (1, 3, H, W)
    return _STATE_BUILDERS[action.kind](model, list(action.patches), **where)


def intervene(model, tokenizer, image: torch.Tensor, action: Action, *,
              caption_ids=None, max_length: int | None = None) -> InterventionResult:
    """`compare` for one Action: the captions and per-word log-probs without and with it.
    The app's Intervene tab and `ssm_bridge.explore` both call this."""
    return compare(model, tokenizer, image, action_hooks(model, action),
                   caption_ids=caption_ids, max_length=max_length)


def _trim(ids: list[int], config) -> list[int]:
    """Generated ids up to and including the first EOS (padding dropped)."""
    if config.eos_token_id in ids:
        ids = ids[: ids.index(config.eos_token_id) + 1]
    return [i for i in ids if i != config.pad_token_id]


__all__ = [
    "ACTIONS",
    "GATE_MODES",
    "STATE_STACKS",
    "Action",
    "InterventionResult",
    "ablate_cross_gate",
    "ablate_gate",
    "action_hooks",
    "available_actions",
    "compare",
    "cross_gate_names",
    "intervene",
    "patch_activation",
    "patch_state",
    "reset_state",
    "scan_positions",
    "skip_tokens",
    "source_states",
    "state_names",
    "token_positions",
    "zero_state",
]
