"""Causal tracing (Meng et al. 2022, ROME) on the scene world: where is a word decided?

    pairs = make_pairs(p, "colour", n=100)           # clean / counterfactual scene pairs
    result = trace(p.model, pairs, sites=("bridge_state", "bridge_out", "decoder"))
    result.effect["bridge_state.0"]                  # (L,) normalised indirect effect
    fig = viz.tracing.trace_heatmap(result)          # layer x position

A pair is one test scene and its counterfactual (`data.counterfactual_scene`): the same
random stream with one object's colour, shape, size or position changed, so that the two
captions differ in exactly one word (the colour, shape, size or relation word). The
counterfactual image is run with the clean caption teacher-forced; then, one (site,
position) at a time, the clean run's activation is restored, and the score s of the clean
word comes back by some amount:

    s                 metric="logit_diff" (default): logit(clean word) - logit(counterfactual
                      word); metric="prob": the clean word's probability (ROME's)
    indirect effect   IE = s_restored - s_corrupt, per pair
    total effect      TE = s_clean - s_corrupt
    effect            mean IE / mean TE over the pairs: 1 when the restored site carries
                      all of the difference, 0 when it carries none

The probability saturates: on the shipped model a colour word has p ~ 1 clean and ~ 1e-5
on the counterfactual, and restoring one patch of a several-patch object leaves the rest
saying the other colour, so p barely moves (measured: every single-token effect < 0.01).
The logit difference is linear in the residual stream and shows the graded share of each
position, which is what a layer x position map is for.

Sites (positions are image tokens: 0 the cls token, 1 + p patch p):

    bridge_state.{i}  the state h of bridge layer i at that token, in every scan direction:
                      the recurrence continues from the clean state (interventions.patch_state)
    bridge_out.{i}    bridge layer i's output (its residual stream) at that token
    decoder.{i}       decoder block i's residual stream at that image-prefix token
    cross.{j}         the text stream after cross-attention layer j (every text position;
                      the captions are the same, so all it differs by is what layer j read
                      from the image)

Restorations run batched: the pairs repeated once per position, up to `max_batch` rows
a forward, each block of rows restoring its own position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.addressing import SSMStack
from ..core.bridge_variants import require_ssm_bridge
from ..core.layers import eval_mode
from ..data import counterfactual_scene, make_scene, split_seeds
from . import interventions as iv

SITE_KINDS = ("bridge_state", "bridge_out", "decoder", "cross")
ATTRIBUTES = ("colour", "shape", "size", "position")


@dataclass
class Pair:
    """A clean scene and its counterfactual; the clean caption's ids and the word they
    differ in (ids[position], the clean word; corrupt_id, the counterfactual's)."""

    clean: object
    corrupt: object
    attribute: str
    ids: list[int]
    position: int
    corrupt_id: int


@dataclass
class TraceResult:
    """effect {site: (positions,)}; s_clean, s_corrupt (pairs,) the scores; the pairs'
    attribute and the metric."""

    effect: dict[str, np.ndarray]
    s_clean: np.ndarray
    s_corrupt: np.ndarray
    attribute: str
    metric: str

    @property
    def total_effect(self) -> float:
        return float((self.s_clean - self.s_corrupt).mean())


# ---------------------------------------------------------------- pairs
def make_pairs(pretrained, attribute: str, n: int, *, split: str = "test",
               seed: int = 0, max_tries: int | None = None) -> list[Pair]:
    """n pairs whose captions differ in exactly one word, from scenes 0, 1, ... of
    `split`: the first object's `attribute` gets a value drawn with `seed`; scenes where
    the change breaks the scene rules or changes more than one word are skipped."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {ATTRIBUTES}, got {attribute!r}")
    cfg, tok = pretrained.scene_config, pretrained.tokenizer
    rng = np.random.default_rng(seed)
    pairs: list[Pair] = []
    for index in range(max_tries or 20 * n):
        if len(pairs) == n:
            break
        clean = make_scene(split, index, cfg)
        value = _new_value(clean, attribute, cfg, rng)
        if value is None:  # a position change needs a neighbour to be related to
            continue
        (scene_seed,) = split_seeds(split, 1, start=index)
        try:
            other = counterfactual_scene(scene_seed, 0, attribute, value, cfg)
        except ValueError:
            continue
        a, b = clean.caption.split(), other.caption.split()
        diff = [i for i in range(len(a)) if len(a) == len(b) and a[i] != b[i]]
        if len(diff) == 1:
            ids = tok.encode(clean.caption)
            pairs.append(Pair(clean, other, attribute, ids, diff[0] + 1,
                              tok.encode(other.caption)[diff[0] + 1]))
    if len(pairs) < n:
        raise ValueError(f"found only {len(pairs)} of {n} {attribute} pairs in the first "
                         f"{max_tries or 20 * n} {split} scenes; raise max_tries or lower n")
    return pairs


def _new_value(scene, attribute: str, cfg, rng: np.random.Generator):
    """A new value of the first object's `attribute`; None when there is none to draw."""
    obj = scene.objects[0]
    if attribute == "position":
        return _new_height(scene, cfg, rng)
    choices = {"colour": cfg.colours, "shape": cfg.shapes, "size": ("small", "large")}[attribute]
    choices = [c for c in choices if c != getattr(obj, attribute)]
    return choices[rng.integers(len(choices))]


def _new_height(scene, cfg, rng: np.random.Generator):
    """The first object moved up or down past its right-hand neighbour, x kept. Objects
    are captioned left to right: a sideways move reorders the caption (0 of 16 pairs found
    in 320 scenes), while crossing the neighbour's height flips only the relation word
    (above / below). None for a one-object scene or no room on the other side."""
    if len(scene.objects) < 2:
        return None
    (x, y), (_, y1) = scene.objects[0].centre, scene.objects[1].centre
    lo, hi, gap = 0.2 * cfg.img_size, 0.8 * cfg.img_size, 0.15 * cfg.img_size
    lo, hi = (y1 + gap, hi) if y < y1 else (lo, y1 - gap)  # the other side of the neighbour
    return None if lo >= hi else (float(x), float(rng.uniform(lo, hi)))


def word_role(attribute: str) -> str:
    """The caption word a pair of this attribute differs in."""
    return "relation" if attribute == "position" else attribute


# ---------------------------------------------------------------- tracing
def trace(model, pairs: Sequence[Pair], sites: Sequence[str] = SITE_KINDS, *,
          transform=None, metric: str = "logit_diff", max_batch: int = 256,
          progress: bool = True) -> TraceResult:
    """The normalised indirect effect of restoring each (site, position), see the module
    docstring. `transform` maps a scene image to the model's input (a Pretrained's).
    Restorations of several positions run together, up to `max_batch` rows a forward."""
    bad = [s for s in sites if s not in SITE_KINDS]
    if bad:
        raise ValueError(f"sites must be some of {SITE_KINDS}, got {list(sites)}")
    if max_batch < len(pairs):
        raise ValueError(f"max_batch ({max_batch}) must be at least the number of pairs "
                         f"({len(pairs)})")
    with eval_mode(model), torch.no_grad():
        batch, cache, s_clean, s_corrupt = _prepare(model, pairs, transform, metric)
        total = (s_clean - s_corrupt).mean()
        jobs = list(_restorations(model, sites, cache, max(1, max_batch // len(pairs))))
        effect: dict[str, list[float]] = {}
        for name, n_pos, hooks in tqdm(jobs, desc="tracing", disable=not progress):
            scores = _score(model, batch, "corrupt", hooks, repeat=n_pos)  # (n_pos * N,)
            ie = (scores.view(n_pos, -1) - s_corrupt).mean(1) / total  # (n_pos,)
            effect.setdefault(name, []).extend(ie.tolist())
    arrays = {k: np.array(v) for k, v in effect.items()}
    return TraceResult(arrays, s_clean.numpy(), s_corrupt.numpy(), pairs[0].attribute, metric)


def site_effect(model, pairs: Sequence[Pair], hook_name: str, *, transform=None,
                metric: str = "logit_diff") -> float:
    """The normalised effect of restoring the whole clean activation of `hook_name` (every
    position): 1 for a site every path from the image passes, such as the bridge output."""
    with eval_mode(model), torch.no_grad():
        batch, cache, s_clean, s_corrupt = _prepare(model, pairs, transform, metric,
                                                    [hook_name])
        ie = (_score(model, batch, "corrupt", iv.patch_activation(hook_name, cache))
              - s_corrupt).mean()
    return float(ie / (s_clean - s_corrupt).mean())


METRICS = ("logit_diff", "prob")


def _prepare(model, pairs, transform, metric: str, names=None):
    """(batch, clean cache of `names` (default: every site's), s_clean, s_corrupt)."""
    require_ssm_bridge(model, "causal tracing")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not pairs:
        raise ValueError("no pairs given; build them with make_pairs")
    batch = _batch(model, pairs, transform)
    batch["metric"] = metric
    _, cache = model.run_with_cache(batch["clean"], batch["tokens"],
                                    names_filter=names or _cached_names(model), heavy=True)
    return batch, cache, _score(model, batch, "clean", []), _score(model, batch, "corrupt", [])


def _batch(model, pairs: Sequence[Pair], transform) -> dict:
    """Images (N, 3, H, W), the clean captions padded to one length (N, T), positions and
    clean word ids (N,)."""
    if transform is None:
        raise ValueError("pass transform= (e.g. load_pretrained(...).transform) to turn scene "
                         "images into model inputs")
    T = max(p.position + 1 for p in pairs)
    tokens = torch.full((len(pairs), T), model.config.pad_token_id, dtype=torch.long)
    for r, p in enumerate(pairs):
        ids = p.ids[: p.position + 1]  # the causal decoder never reads the padding after it
        tokens[r, : len(ids)] = torch.tensor(ids)
    device = next(model.parameters()).device
    return {"clean": torch.stack([transform(p.clean.image) for p in pairs]).to(device),
            "corrupt": torch.stack([transform(p.corrupt.image) for p in pairs]).to(device),
            "tokens": tokens.to(device),
            "positions": torch.tensor([p.position for p in pairs], device=device),
            "targets": torch.tensor([p.ids[p.position] for p in pairs], device=device),
            "others": torch.tensor([p.corrupt_id for p in pairs], device=device)}


def _score(model, batch: dict, images: str, hooks, repeat: int = 1) -> torch.Tensor:
    """(repeat * N,) each pair's score (batch["metric"]) of its clean word on
    batch[images], the N pairs repeated `repeat` times (row r is pair r % N)."""
    x, tokens = batch[images], batch["tokens"]
    rows = torch.arange(repeat * x.shape[0], device=x.device)
    pair = rows % x.shape[0]
    with model.hooks(hooks, heavy=True):
        logits = model(x[pair], tokens[pair])  # (R, T, V)
    row = logits[rows, batch["positions"][pair] - 1].float()  # (R, V): the word's query
    if batch["metric"] == "prob":
        return row.softmax(-1)[rows, batch["targets"][pair]].cpu()
    return (row[rows, batch["targets"][pair]] - row[rows, batch["others"][pair]]).cpu()


def _cached_names(model) -> list[str]:
    return (iv.state_names(model) + SSMStack.of(model, "bridge").hook_names(["hook_resid_post"])
            + [_decoder_hook(i) for i in range(len(model.decoder.blocks))]
            + [_cross_hook(j) for j in range(len(model.decoder.cross_layers))])


def _decoder_hook(i: int) -> str:
    return f"decoder.blocks.{i}.hook_resid_post"


def _cross_hook(j: int) -> str:
    return f"decoder.cross_layers.{j}.hook_resid_post"


def _restorations(model, sites, cache, chunk: int):
    """(site name, number of positions n, fwd_hooks) per forward: the hooks restore
    position j of the chunk in rows j*N .. (j+1)*N - 1 (N pairs repeated n times)."""
    L = model.config.num_image_tokens
    bridge = SSMStack.of(model, "bridge")
    for kind in sites:
        if kind == "cross":  # one site per layer: the text stream it wrote
            for j in range(len(model.decoder.cross_layers)):
                yield f"{kind}.{j}", 1, [(_cross_hook(j), _restore_all(cache[_cross_hook(j)]))]
            continue
        layers = range(len(model.decoder.blocks)) if kind == "decoder" else range(len(bridge))
        for i in layers:
            for start in range(0, L, chunk):
                tokens = torch.arange(start, min(start + chunk, L))  # (n,) image tokens
                yield f"{kind}.{i}", len(tokens), _site_hooks(kind, i, tokens, cache, bridge)


def _site_hooks(kind: str, i: int, tokens: torch.Tensor, cache, bridge: SSMStack):
    """Hooks restoring token tokens[j] in the j-th block of rows, at site (kind, i)."""
    if kind == "decoder":
        name = _decoder_hook(i)
        return [(name, _restore_rows(cache[name], tokens))]
    if kind == "bridge_out":
        name = bridge.hook("hook_resid_post", i)
        return [(name, _restore_rows(cache[name], tokens))]
    ref, hooks = bridge[i], []
    for k in range(len(ref.directions)):  # the state h, each direction at its own step
        h = cache[ref.hook("hook_state", k)]  # (N, L, D, N_s) in scan order
        steps = ref.scan_positions(k, tokens.tolist(), h.shape[1])  # (n,)
        hooks += [(ref.hook("hook_A_bar", k), _restore_rows(torch.zeros_like(h), steps)),
                  (ref.hook("hook_dBx", k), _restore_rows(h, steps))]
    return hooks


def _restore_rows(clean: torch.Tensor, positions: torch.Tensor):
    """Hook on a (n * N, L, ...) activation: rows of block j get position positions[j]
    from `clean` (N, L, ...). With Ā = 0 there and B̄x = h_clean, the state h restarts
    from the clean state and the scan continues from it."""
    def fn(x: torch.Tensor, name: str) -> torch.Tensor:
        N = clean.shape[0]
        rows = torch.arange(x.shape[0], device=x.device)  # (n * N,)
        pos = positions.to(x.device).repeat_interleave(N)  # (n * N,)
        x = x.clone()
        x[rows, pos] = clean.to(x)[rows % N, pos]
        return x
    return fn


def _restore_all(clean: torch.Tensor):
    """Hook: the whole activation set to the clean run's."""
    def fn(x: torch.Tensor, name: str) -> torch.Tensor:
        return clean.to(x).clone()
    return fn


def main(argv: list[str] | None = None) -> int:
    """ssm-bridge trace: causal tracing of one word role on a checkpoint."""
    import json
    import sys

    from ..cli import Parser, int_at_least, load_or_exit, writable_file

    p = Parser(prog="ssm-bridge trace", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="shapes-tiny", help="shipped name or folder")
    p.add_argument("--attribute", default="colour", choices=ATTRIBUTES,
                   help="what the counterfactual changes (its word is traced)")
    p.add_argument("--num", type=int_at_least(1), default=20, help="scene pairs")
    p.add_argument("--sites", default=",".join(SITE_KINDS),
                   help=f"comma-separated from {','.join(SITE_KINDS)}")
    p.add_argument("--metric", default="logit_diff", choices=METRICS)
    p.add_argument("--seed", type=int_at_least(0), default=0, help="counterfactual values")
    p.add_argument("--json", type=writable_file, help="write the effects as JSON")
    p.add_argument("--plot", type=writable_file, help="write the heatmap (PNG)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    if not sites or any(s not in SITE_KINDS for s in sites):
        p.error(f"argument --sites: choose from {','.join(SITE_KINDS)}, got {args.sites!r}")
    bundle = load_or_exit(p, args.checkpoint)
    try:
        pairs = make_pairs(bundle, args.attribute, args.num, seed=args.seed)
    except ValueError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    r = trace(bundle.model, pairs, sites, transform=bundle.transform, metric=args.metric,
              progress=not args.no_progress and sys.stderr.isatty())
    print(f"{len(pairs)} {args.attribute} pairs, total effect {r.total_effect:.3f} "
          f"({args.metric})")
    for site, v in r.effect.items():
        top = int(np.argmax(v))
        print(f"{site:<16} max {v[top]:6.3f} at token {top:>3}   sum {v.sum():6.3f}")
    if args.json:
        args.json.write_text(json.dumps({k: v.tolist() for k, v in r.effect.items()}))
    if args.plot:
        from viz.faithfulness import trace_heatmap

        title = f"{word_role(args.attribute)} word ({len(pairs)} {args.attribute} pairs)"
        trace_heatmap(r.effect, title=title).savefig(args.plot, dpi=150)
    return 0
