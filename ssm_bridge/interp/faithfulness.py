"""Is a map faithful? Tests that ask whether the model *uses* what a per-word map shows.

    curves = perturbation_curves(model, image, ids, position, saliency)   # one word
    curves.delta_af, curves.auc["morf"], curves.auc["insertion"]
    seg = segmentation_scores(saliency, mask)          # pixel accuracy, mIoU, mAP
    rho = cascading_randomisation(model, map_fn)       # [(group, Spearman ρ), ...]

Glossary (a map is a (g, g) saliency over the ViT patch grid; a patch is img_size / g px):

    MoRF / LeRF    delete patches Most / Least Relevant First: the patches are ranked by the
                   map and replaced by a baseline image (blurred, or the dataset mean) in
                   steps of a fixed fraction; a faithful map makes the word's log p fall fast
                   under MoRF and slowly under LeRF.
    insertion      start from the baseline and restore patches most relevant first. With
                   the same baseline this is LeRF read backwards (restoring the top k
                   patches = deleting the P - k least relevant), so its AUC equals LeRF's:
                   it is computed from the LeRF images, not run again.
    random         a random ranking (seeded): the row every map must beat.
    normalised AUC each log-p curve is rescaled to (lp - lp_base) / (lp_clean - lp_base): 1
                   on the clean image, 0 on the full baseline; its area over the fraction
                   (trapezoid) is the share of the baseline's drop still missing, on
                   average: MoRF lower is better, LeRF and insertion higher. When the full
                   baseline lowers log p by less than MIN_DROP nats, the baseline does not
                   remove what the word needs (a blurred red blob is still red) and no
                   ordering can be read: the AUCs are NaN and such words are counted apart.
                   (p / p_clean instead saturates: a word at p ~ 1 stays there until the
                   last patches go, for every map.)
    ΔA^F           A_LeRF - A_MoRF (MambaLRP's faithfulness gap): higher is more faithful.
    segmentation   Chefer et al.'s protocol: bilinear upsampling to the mask, binarised at
                   the map's mean; pixel accuracy, mIoU over {object, background}, and
                   mean_ap (their mAP): the average precision of the continuous map ranking
                   the object's pixels.
    cascade        Adebayo et al.'s model-parameter randomisation: groups of layers are
                   re-initialised from the logits down, one group at a time, and each map is
                   compared with the trained model's by Spearman rank correlation. A map that
                   stays correlated after every group is random does not explain the model.

Every perturbed image of one curve goes through the model in one batched forward, and
the curves of several maps of one word share forwards (perturbation_curves_many).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..core.layers import eval_mode
from .attribution import WordLogit, make_baseline

ORDERS = ("morf", "lerf", "insertion", "random")
RUN_ORDERS = ("morf", "lerf", "random")  # insertion is LeRF reversed (module docstring)
MIN_DROP = 1.0  # nats the full baseline must take off log p for the curves to be read
FRACTIONS = 16  # steps of 1/16 of the patches: 17 images per curve, one forward
# Images per forward: whole curves are batched up to this many. On the 2-core AVX2 EPYC a
# forward of 32-160 scene images costs ~4.2 ms each and one of 320 ~6.2 ms (cache misses).
MAX_BATCH = 64
# The model's parts, from the logits down: the cascade re-initialises them in this order.
CASCADE_PARTS = ("decoder", "bridge", "vision")
# |ρ| with the trained map still this high once every layer is random: the map is flagged
# (it shows the image, not the model). Adebayo et al. read their cascades by eye; 0.5 is
# where a rank correlation is "strong" by the usual convention.
FLAG_RHO = 0.5


@dataclass
class Curves:
    """Perturbation curves of one word: fractions (S,), logprob {order: (S,)}, auc {order},
    and the word's log p on the clean image and on the full baseline."""

    fractions: torch.Tensor
    logprob: dict[str, torch.Tensor]
    auc: dict[str, float]
    clean: float  # log p on the clean image (fraction 0 of a deletion curve)
    base: float  # log p on the full baseline (fraction 1)

    @property
    def delta_af(self) -> float:
        return self.auc["lerf"] - self.auc["morf"]

    def normalised(self, order: str) -> torch.Tensor | None:
        """The curve (S,) as its AUC reads it: (lp - base) / (clean - base); None when
        the full baseline takes less than MIN_DROP nats off the word."""
        if not self.clean - self.base >= MIN_DROP:
            return None
        return (self.logprob[order].double() - self.base) / (self.clean - self.base)


# ---------------------------------------------------------------- perturbation
def patch_ranking(saliency: torch.Tensor, order: str = "morf", seed: int = 0) -> torch.Tensor:
    """Patch indices (P,) of a (g, g) map, row-major: most relevant first ("morf",
    "insertion"), least relevant first ("lerf"), or a seeded random order ("random").
    Ties are broken by a seeded random jitter, so a flat map ranks like a random one."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    flat = torch.as_tensor(saliency, dtype=torch.float64).flatten()  # (P,)
    if not torch.isfinite(flat).all():
        raise ValueError("the map has NaN or infinite values; rank a finite map")
    g = torch.Generator().manual_seed(seed)
    jitter = torch.rand(flat.shape, generator=g, dtype=torch.float64)  # (P,)
    if order == "random":
        return torch.argsort(jitter)
    key = flat * (1 + 1e-12) + jitter * 1e-9 * flat.abs().max().clamp_min(1e-30)
    return torch.argsort(key, descending=order != "lerf")


def perturbed_images(image: torch.Tensor, baseline: torch.Tensor, ranking: torch.Tensor,
                     counts: Sequence[int], insertion: bool = False) -> torch.Tensor:
    """(S, 3, H, W): for each count k, `image` with the first k patches of `ranking`
    replaced by `baseline` (deletion), or `baseline` with them restored (insertion)."""
    g = math.isqrt(ranking.numel())  # the (g, g) grid the ranking indexes, row-major
    S = len(counts)
    chosen = torch.zeros(S, ranking.numel(), dtype=torch.bool)  # (S, P)
    for s, k in enumerate(counts):
        chosen[s, ranking[:k]] = True
    patch = image.shape[-1] // g
    pixels = repeat(chosen.view(S, g, g), "s g1 g2 -> s 1 (g1 p1) (g2 p2)", p1=patch, p2=patch)
    pixels = pixels.to(image.device)  # (S, 1, H, W): True where the patch is switched
    src, dst = (baseline, image) if insertion else (image, baseline)
    return torch.where(pixels, dst[None], src[None])  # (S, 3, H, W)


def perturbation_curves(model: nn.Module, image: torch.Tensor, ids: torch.Tensor,
                        position: int, saliency: torch.Tensor, *, baseline="blur",
                        steps: int = FRACTIONS, seed: int = 0,
                        orders: Sequence[str] = RUN_ORDERS) -> Curves:
    """The word ids[position] (teacher-forced by ids[:position]) under deletion (MoRF, LeRF,
    random) and insertion of the patches ranked by `saliency` (g, g). image (3, H, W) as
    the model takes it; baseline: "blur" (as the attributions' baseline), a tensor (e.g.
    `dataset_mean`), a float, or "mean" (this image's mean colour). `orders`: which of
    RUN_ORDERS to run (insertion comes with "lerf"). Each curve's images go through the
    model in one batched forward."""
    return perturbation_curves_many(model, image, ids, position, [saliency],
                                    baseline=baseline, steps=steps, seed=seed,
                                    orders=orders)[0]


def perturbation_curves_many(model: nn.Module, image: torch.Tensor, ids: torch.Tensor,
                             position: int, maps: Sequence[torch.Tensor], *, baseline="blur",
                             steps: int = FRACTIONS, seed: int = 0,
                             orders: Sequence[str] = RUN_ORDERS) -> list[Curves]:
    """perturbation_curves for several maps of one word, sharing batched forwards. The clean
    and the fully replaced image are the same for every curve, so each goes in once:
    2 + len(maps) * len(orders) * (steps - 1) images in all, whole curves batched up to
    MAX_BATCH images a forward."""
    ids = torch.as_tensor(ids)
    if not 0 < position < ids.numel():
        raise ValueError(f"position must index a word after BOS (1..{ids.numel() - 1}), "
                         f"got {position}")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (a curve needs a point between clean and "
                         f"baseline), got {steps}")
    bad = [o for o in orders if o not in RUN_ORDERS]
    if bad or not orders:
        raise ValueError(f"orders must be some of {RUN_ORDERS}, got {list(orders)}")
    base = make_baseline(image[None], baseline, patch_size=model.config.patch_size)[0]
    P = torch.as_tensor(maps[0]).numel()
    counts = [round(P * s / steps) for s in range(steps + 1)]
    target = WordLogit(model, ids[: position + 1], position - 1, int(ids[position]),
                       score="logprob")
    inner = [perturbed_images(image, base, patch_ranking(m, o, seed), counts[1:-1])
             for m in maps for o in orders]  # each (steps - 1, 3, H, W)
    per_forward = max(1, MAX_BATCH // (steps - 1))  # whole curves per forward
    batches = [torch.cat(inner[i: i + per_forward]) for i in range(0, len(inner), per_forward)]
    with eval_mode(model), torch.no_grad():
        lp = torch.cat([target(torch.stack([image, base])),
                        *(target(b) for b in batches)]).cpu()  # (2 + curves * (steps - 1),)
    clean, full = lp[:2].tolist()
    middle = lp[2:].view(len(maps), len(orders), -1)  # (maps, orders, steps - 1)
    fractions = torch.tensor(counts, dtype=torch.float64) / P
    out = []
    for rows in middle:
        per_order = {o: torch.cat([lp[:1], row, lp[1:2]]) for o, row in zip(orders, rows)}
        if "lerf" in per_order:  # top k restored = P - k LeRF-deleted
            per_order["insertion"] = per_order["lerf"].flip(0)
        auc = {o: normalised_auc(fractions, y, clean, full) for o, y in per_order.items()}
        out.append(Curves(fractions, per_order, auc, clean, full))
    return out


def normalised_auc(fractions: torch.Tensor, logprob: torch.Tensor, clean: float,
                   base: float) -> float:
    """Area under (logprob - base) / (clean - base) over `fractions`; NaN when the full
    baseline takes less than MIN_DROP nats off the word (clean - base < MIN_DROP)."""
    if not clean - base >= MIN_DROP:
        return float("nan")
    y = (logprob.double() - base) / (clean - base)
    return float(torch.trapezoid(y, fractions.double()))


# ---------------------------------------------------------------- segmentation
def segmentation_scores(saliency, mask) -> dict[str, float]:
    """Chefer et al.'s scores of a (g, g) map against a boolean object mask (H, W)."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
    if m.dim() != 2 or not m.any() or m.all():
        raise ValueError(f"mask must be a (H, W) boolean array with object and background "
                         f"pixels, got shape {tuple(m.shape)} with {int(m.sum())} object pixels")
    s = torch.as_tensor(saliency, dtype=torch.float32)
    up = F.interpolate(s[None, None], size=tuple(m.shape), mode="bilinear",
                       align_corners=False)[0, 0]  # (H, W)
    pred = up > up.mean()
    return {"pixel_accuracy": float((pred == m).float().mean()),
            "miou": float(np.mean([_iou(pred, m), _iou(~pred, ~m)])),
            "mean_ap": average_precision(up.flatten(), m.flatten())}


def _iou(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return float((pred & truth).sum() / (pred | truth).sum().clamp_min(1))


def average_precision(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """Average precision of `scores` (N,) ranking the positives of `truth` (N,) first."""
    order = torch.argsort(scores, descending=True, stable=True)
    hits = truth[order].double()  # (N,)
    precision = hits.cumsum(0) / torch.arange(1, hits.numel() + 1, dtype=torch.float64)
    return float((precision * hits).sum() / hits.sum().clamp_min(1))


# ---------------------------------------------------------------- sanity checks
def spearman(a, b) -> float:
    """Spearman's rank correlation of two maps of equal size (average ranks for ties);
    NaN when either map is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64).ravel()), \
        _ranks(np.asarray(b, dtype=np.float64).ravel())
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # first rank of each value
    return (start + (counts + 1) / 2)[inverse]  # average rank, 1-based


def cascade_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The model's layers from the logits down, as (name, modules) groups: each of
    CASCADE_PARTS, its children in reverse order, a ModuleList split into its layers. A
    parameter shared by two modules (tied input and output embeddings) is re-drawn with
    the first group that holds it, whose name says so ("decoder.lm_head = tok_embed"); a
    later group with nothing left of its own is dropped."""
    owners: dict[int, list[str]] = {}  # parameter id -> every module path holding it
    for path, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(path)
    groups, seen = [], set()
    for path, module in _cascade_modules(model):
        params = {id(p) for p in module.parameters()}
        if params <= seen:
            continue
        tied = sorted({o for i in params - seen for o in owners[i]
                       if o != path and not o.startswith(path + ".")})
        seen |= params
        groups.append((path + "".join(f" = {t.split('.', 1)[-1]}" for t in tied), [module]))
    return groups


def _cascade_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for part in CASCADE_PARTS:
        root = getattr(model, part, None)
        if root is None:
            continue
        for name, child in reversed(list(root.named_children())):
            items = list(enumerate(child)) if isinstance(child, nn.ModuleList) else [(None, child)]
            for i, module in reversed(items):
                if any(True for _ in module.parameters()):
                    yield f"{part}.{name}" + ("" if i is None else f".{i}"), module


def randomise_(modules: Sequence[nn.Module], seed: int) -> None:
    """Re-initialise every parameter of `modules` in place: a Gaussian with the trained
    tensor's mean and standard deviation (a scalar: N(0, |value|)), so activations keep
    their scale while the learned structure is gone. Seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                mean, std = (0.0, p.abs().item()) if p.numel() < 2 else \
                    (p.mean().item(), p.std().item())
                noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
                p.copy_((noise * std + mean).to(p))


def cascade_steps(model: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """(group, model) after each group of cascade_groups is re-initialised, cumulatively
    from the logits down, in one copy of `model` (yielded again each step: use it before
    the next). The model itself is left unchanged."""
    work = copy.deepcopy(model)
    for i, (name, _) in enumerate(cascade_groups(model)):
        randomise_(dict(cascade_groups(work))[name], seed + i)
        yield name, work


def cascading_randomisation(model: nn.Module, map_fn: Callable[[nn.Module], torch.Tensor],
                            *, seed: int = 0) -> list[tuple[str, float]]:
    """[(group, ρ)]: Spearman's ρ between map_fn(trained model) and map_fn of the model
    after each cascade step (cascade_steps). The model itself is left unchanged."""
    reference = torch.as_tensor(map_fn(model)).detach().cpu()
    return [(name, spearman(reference, torch.as_tensor(map_fn(work)).detach().cpu()))
            for name, work in cascade_steps(model, seed)]


def flag_unfaithful(cascade: Sequence[tuple[str, float]], threshold: float = FLAG_RHO) -> bool:
    """True when the map stays rank-correlated (|ρ| >= threshold) with the trained map
    after every group is random: it does not explain the model."""
    last = cascade[-1][1] if cascade else float("nan")
    return bool(np.isfinite(last) and abs(last) >= threshold)


def pixel_grid(mask, g: int) -> torch.Tensor:
    """A (H, W) mask -> (g, g) fraction of each patch it covers (for constructed maps)."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    return rearrange(m, "(g1 p1) (g2 p2) -> g1 g2 (p1 p2)", g1=g, g2=g).mean(-1)  # (g, g)
