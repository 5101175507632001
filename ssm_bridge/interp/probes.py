"""Linear probes: which scene attributes can be read linearly from each bridge layer's
patch tokens?

    feats = collect_patch_features(model, scenes)       # {"input": (n*P, D), "layer_0": ...}
    labels = patch_labels(scene, grid=8)                # {"colour": (P,), "shape": ..., ...}
    probe = train_probe(X, y, seed=0)                    # multinomial logistic regression
    rows = probe_layers(pretrained, n_train=300, n_test=100)

Layers (keys of the feature dicts): "input" = bridge.hook_in (the ViT tokens projected to
the bridge width), "layer_{l}" = bridge.layers.{l}.hook_resid_post (the residual stream
after SSM block l), and optionally "output" = bridge.hook_out (after the final norm and
projection to the decoder width); on either side, "encoder" = vision.hook_grid (the
encoder's final patch grid) and "prefix" = decoder.hook_image_prefix (the image tokens the
decoder is given: the bridge's output, plus the transformer decoder's learned prefix
embedding). "input", "output", "encoder" and "prefix" exist for every bridge type,
the SSM layers for an SSM bridge. Only the P patch tokens are used (cls dropped).

Patch labelling rule: a patch belongs to the object whose visible mask covers the most of
its pixels, if that object covers at least `min_coverage` (default 25 %) of them; otherwise
it is "background". The patch's label for an attribute is that object's colour / shape /
size (or "background").

Probes are multinomial logistic regressions on standardised features (train mean / std),
fitted full-batch with L-BFGS and an L2 penalty; the init is drawn from `seed`, the
rest is deterministic (the loss is convex: the init barely matters).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from tqdm.auto import tqdm

from ..core.addressing import SSMStack
from ..data import ImageTransform, Scene, SceneConfig, make_scene
from ..data.captions import OBJECT_ATTRIBUTES

BACKGROUND = "background"


# ---------------------------------------------------------------- labels
def patch_objects(scene: Scene, grid: int, min_coverage: float = 0.25) -> np.ndarray:
    """Index (P,) of the object covering most of each patch's pixels, -1 where the best
    covers under `min_coverage` of the patch (background). Patches are row-major."""
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    H, W = scene.image.shape[:2]
    if H % grid or W % grid:
        raise ValueError(f"a {H}x{W} scene does not split into a {grid}x{grid} patch grid; "
                         "draw scenes at a multiple of the grid size")
    if not scene.objects:
        return np.full(grid * grid, -1)
    masks = np.stack([o.mask for o in scene.objects]).astype(np.float32)  # (n, H, W)
    cover = reduce(masks, "n (g h) (k w) -> (g k) n", "mean", g=grid, k=grid)  # (P, n)
    best = cover.argmax(axis=1)  # (P,)
    return np.where(cover.max(axis=1) >= min_coverage, best, -1)


def patch_labels(scene: Scene, grid: int,
                 attributes: Sequence[str] = OBJECT_ATTRIBUTES,
                 min_coverage: float = 0.25) -> dict[str, np.ndarray]:
    """attribute -> (P,) labels of the patches (see the module docstring for the rule)."""
    _check_attributes(attributes)
    owner = patch_objects(scene, grid, min_coverage)  # (P,)
    return {a: np.array([getattr(scene.objects[i], a) if i >= 0 else BACKGROUND
                         for i in owner]) for a in attributes}


def _check_attributes(attributes: Sequence[str]) -> None:
    bad = [a for a in attributes if a not in OBJECT_ATTRIBUTES]
    if bad or not attributes:
        raise ValueError(f"attributes must be among {OBJECT_ATTRIBUTES}, "
                         f"got {list(attributes)}")


# ---------------------------------------------------------------- features
def feature_hooks(model, include_output: bool = False) -> dict[str, str]:
    """Probe layer name -> hook name ("input", "layer_0", ..., optionally "output")."""
    names = {"input": "bridge.hook_in"}
    for ref in SSMStack.of(model, "bridge", what="bridge probes"):
        names[f"layer_{ref.index}"] = ref.hook("hook_resid_post")
    if include_output:
        names["output"] = "bridge.hook_out"
    return names


# Where else a patch's tokens can be probed, on either side of the bridge: the encoder's
# final patch grid, and the decoder's image prefix (what the decoder is given). With
# "input" and "output" these work for every bridge type, so a probe can follow an
# attribute from the encoder to the decoder in any variant (docs/ablation.md uses it).
EDGE_HOOKS = {"encoder": "vision.hook_grid", "prefix": "decoder.hook_image_prefix"}


def every_layer(model) -> dict[str, str]:
    """Every probe layer name -> hook name, in the order the image flows: "encoder",
    "input", "layer_{l}" (an SSM bridge's blocks only), "output", "prefix"."""
    try:
        inner = feature_hooks(model, include_output=True)
    except ValueError:  # no SSM bridge: its input and output only
        inner = {"input": "bridge.hook_in", "output": "bridge.hook_out"}
    return {"encoder": EDGE_HOOKS["encoder"], **inner, "prefix": EDGE_HOOKS["prefix"]}


def _choose_layers(model, layers) -> dict[str, str]:
    if layers == "all":
        return feature_hooks(model)
    every = every_layer(model)
    chosen = [layers] if isinstance(layers, str) else list(layers)
    bad = [n for n in chosen if n not in every]
    if bad or not chosen:
        raise ValueError(f"unknown probe layers {bad or chosen}; choose 'all' or among "
                         f"{list(every)}")
    return {n: every[n] for n in chosen}


def _unpack(model, transform=None, scene_config=None):
    """(model, transform, scene_config) from a model or a `Pretrained` bundle."""
    if hasattr(model, "model") and hasattr(model, "transform"):
        transform = transform or model.transform
        scene_config = scene_config or model.scene_config
        model = model.model
    img = model.config.img_size
    return (model, transform or ImageTransform(img),
            scene_config or SceneConfig(img_size=img))


@torch.no_grad()
def collect_patch_features(model, scenes: Sequence[Scene], layers="all", *, transform=None,
                           batch_size: int = 64, progress: bool = False
                           ) -> dict[str, torch.Tensor]:
    """layer name -> (len(scenes) * P, D) float32 patch features (scene-major, then
    row-major patches), from one image-only `run_with_cache` per batch of scenes.

    model: an EnhancedVLM or a `Pretrained` bundle (its transform is then used).
    layers: "all" (input and every SSM layer of an SSM bridge) or names among "encoder",
    "input", "layer_{l}", "output", "prefix" (see `every_layer`; any bridge type)."""
    model, transform, _ = _unpack(model, transform)
    hooks = _choose_layers(model, layers)  # "all" and "layer_{l}": an SSM bridge only
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {n: [] for n in hooks}
    starts = range(0, len(scenes), batch_size)
    for s in tqdm(starts, desc="features", disable=not progress, leave=False):
        images = torch.stack([transform(sc.image) for sc in scenes[s:s + batch_size]])
        # the decoder only runs (and fires its prefix hook) on text: one BOS per image
        text = (torch.full((len(images), 1), model.config.bos_token_id, device=device)
                if "prefix" in hooks else None)
        _, cache = model.run_with_cache(images.to(device), text, list(hooks.values()))
        for name, hook in hooks.items():
            tokens = _patch_tokens(cache[hook], name, model.config.num_patches)  # (b, P, D)
            out[name].append(rearrange(tokens, "b p d -> (b p) d"))  # (b*P, D)
    return {n: torch.cat(v) for n, v in out.items()}


def scene_patch_labels(scenes: Sequence[Scene], grid: int, attributes=OBJECT_ATTRIBUTES,
                       min_coverage: float = 0.25) -> dict[str, np.ndarray]:
    """attribute -> (len(scenes) * P,) labels, aligned with `collect_patch_features`."""
    per = [patch_labels(s, grid, attributes, min_coverage) for s in scenes]
    return {a: np.concatenate([p[a] for p in per]) for a in attributes}


# ---------------------------------------------------------------- probe
@dataclass
class Probe:
    """A fitted linear probe: standardisation, then logits = x W^T + b over `classes`."""

    classes: list
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, K)."""
        Z = (torch.as_tensor(X, dtype=torch.float32) - self.mean) / self.std  # (n, D)
        return Z @ self.weight.T + self.bias

    def predict(self, X: torch.Tensor) -> np.ndarray:
        """(n, D) -> (n,) predicted labels."""
        return np.asarray(self.classes, dtype=object)[self.logits(X).argmax(-1).numpy()]

    def accuracy(self, X: torch.Tensor, y: Sequence) -> float:
        """Fraction of rows whose prediction equals y (unseen labels count as wrong)."""
        y = np.asarray(y, dtype=object)
        if len(y) == 0:
            raise ValueError("accuracy of an empty test set")
        return float(np.mean(self.predict(X) == y))


def train_probe(X: torch.Tensor, y: Sequence, *, seed: int = 0, epochs: int = 300,
                weight_decay: float = 1e-5) -> Probe:
    """Multinomial logistic regression of labels y (n,) on features X (n, D).

    Features are standardised with the training mean / std; the loss is cross-entropy
    plus weight_decay/2 * ||W||^2, minimised full-batch by L-BFGS for up to `epochs`
    iterations from a small random init drawn with `seed`. Deterministic."""
    X = torch.as_tensor(X, dtype=torch.float32)
    y = np.asarray(y, dtype=object)
    if X.dim() != 2 or len(y) != X.shape[0] or len(y) == 0:
        raise ValueError(f"X must be (n, D) and y (n,) with n > 0; got X {tuple(X.shape)} "
                         f"and {len(y)} labels")
    classes = sorted(set(y.tolist()), key=str)
    if len(classes) < 2:
        raise ValueError(f"a probe needs at least 2 classes, got {classes}")
    index = {c: i for i, c in enumerate(classes)}
    target = torch.tensor([index[v] for v in y])  # (n,)
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6)  # (D,) each
    W, b = _fit(((X - mean) / std), target, len(classes), seed, epochs, weight_decay)
    return Probe(classes, mean, std, W, b)


def _fit(Z: torch.Tensor, target: torch.Tensor, K: int, seed: int, epochs: int,
         weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L-BFGS on standardised Z (n, D): -> W (K, D), b (K,)."""
    g = torch.Generator().manual_seed(seed)
    W = (0.01 * torch.randn(K, Z.shape[1], generator=g)).requires_grad_()  # (K, D)
    b = torch.zeros(K, requires_grad=True)  # (K,)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=epochs, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(Z @ W.T + b, target) + 0.5 * weight_decay * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()


def majority_baseline(y_train: Sequence, y_test: Sequence) -> float:
    """Accuracy on y_test of always answering the most frequent training label."""
    top = Counter(np.asarray(y_train, dtype=object).tolist()).most_common(1)[0][0]
    return float(np.mean(np.asarray(y_test, dtype=object) == top))


# ---------------------------------------------------------------- per layer
def _scenes(split: str, n: int, config: SceneConfig) -> list[Scene]:
    return [make_scene(split, i, config) for i in range(n)]


def _patch_tokens(t: torch.Tensor, name: str, num_patches: int) -> torch.Tensor:
    """(b, P, D) float32 patch tokens of a cached hook: a (b, D, g, g) grid in raster
    order, or (b, 1 + P, D) tokens with the cls first (dropped)."""
    if t.dim() == 4:
        return rearrange(t, "b d h w -> b (h w) d").float().cpu()  # (b, P, D)
    if t.shape[1] != 1 + num_patches:
        raise ValueError(f"probe layer {name!r} has {t.shape[1]} tokens, not a cls and the "
                         f"{num_patches} patches a patch probe reads (a resampler's latents "
                         f"are not patches); probe 'encoder' or 'input' instead")
    return t[:, 1:].float().cpu()  # (b, P, D) patches, cls dropped


def probe_layers(model, n_train: int = 300, n_test: int = 100,
                 attributes: Sequence[str] = ("colour", "shape"), seed: int = 0,
                 progress: bool = True, *, layers="all", transform=None, scene_config=None,
                 min_coverage: float = 0.25, epochs: int = 300, weight_decay: float = 1e-5,
                 control: bool = False) -> list[dict]:
    """Probe every layer for every attribute; one row per (layer, attribute):

        layer, attribute, accuracy, majority_baseline, n_test       object patches only
        accuracy_all, majority_baseline_all, n_test_all            every patch, with a
                                                                    "background" class
        control_accuracy (control=True)   object patches, probe trained on shuffled labels

    Train scenes are "train" 0..n_train-1, test scenes "test" 0..n_test-1 (disjoint seeds).
    model: an EnhancedVLM or a `Pretrained` bundle (its transform and scene config)."""
    _check_attributes(attributes)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    model, transform, scene_config = _unpack(model, transform, scene_config)
    grid = model.config.grid_size
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        scenes = _scenes(split, n, scene_config)
        data[split] = (collect_patch_features(model, scenes, layers, transform=transform,
                                              progress=progress),
                       scene_patch_labels(scenes, grid, attributes, min_coverage))
    fit = dict(seed=seed, epochs=epochs, weight_decay=weight_decay)
    jobs = [(name, a) for name in data["train"][0] for a in attributes]
    return [_probe_row(data, name, a, fit, control)
            for name, a in tqdm(jobs, desc="probes", disable=not progress)]


def _probe_row(data: dict, name: str, attribute: str, fit: dict, control: bool) -> dict:
    """Fit and score one (layer, attribute): object patches, then all patches."""
    (Ftr, Ltr), (Fte, Lte) = data["train"], data["test"]
    Xtr, ytr, Xte, yte = Ftr[name], Ltr[attribute], Fte[name], Lte[attribute]
    otr, ote = ytr != BACKGROUND, yte != BACKGROUND  # object patches
    if otr.sum() == 0 or ote.sum() == 0:
        raise ValueError("no object patches to probe: use more scenes or a lower min_coverage")
    probe = train_probe(Xtr[torch.from_numpy(otr)], ytr[otr], **fit)
    probe_all = train_probe(Xtr, ytr, **fit)
    row = {"layer": name, "attribute": attribute,
           "accuracy": probe.accuracy(Xte[torch.from_numpy(ote)], yte[ote]),
           "majority_baseline": majority_baseline(ytr[otr], yte[ote]), "n_test": int(ote.sum()),
           "accuracy_all": probe_all.accuracy(Xte, yte),
           "majority_baseline_all": majority_baseline(ytr, yte), "n_test_all": len(yte)}
    if control:
        shuffled = np.random.default_rng(fit["seed"]).permutation(ytr[otr])
        ctrl = train_probe(Xtr[torch.from_numpy(otr)], shuffled, **fit)
        row["control_accuracy"] = ctrl.accuracy(Xte[torch.from_numpy(ote)], yte[ote])
    return row


def format_rows(rows: list[dict]) -> str:
    """The rows of `probe_layers` as a plain-text table."""
    keys = [k for k in ("layer", "attribute", "accuracy", "majority_baseline", "n_test",
                        "accuracy_all", "majority_baseline_all", "control_accuracy")
            if any(k in r for r in rows)]
    lines = ["  ".join(f"{k:>14}" for k in keys)]
    for r in rows:
        cells = [f"{r[k]:>14.3f}" if isinstance(r.get(k), float) else f"{r.get(k, '')!s:>14}"
                 for k in keys]
        lines.append("  ".join(cells))
    return "\n".join(lines)


__all__ = [
    "BACKGROUND",
    "OBJECT_ATTRIBUTES",
    "Probe",
    "collect_patch_features",
    "feature_hooks",
    "format_rows",
    "majority_baseline",
    "patch_labels",
    "patch_objects",
    "probe_layers",
    "scene_patch_labels",
    "train_probe",
]
