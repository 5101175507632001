"""Is this image like the scene world? An out-of-distribution score on the vision features.

    ood = OODScore.fit(p.model, p.transform, p.scene_config)     # 512 training scenes
    ood.score(p.model, images)        # (B,) 1.0 at the 99th percentile of validation scenes
    ood.is_unusual(p.model, images)   # (B,) bool: score > 1

The model captions anything confidently (a photo gets log p -0.003 per word), so the
caption's own probability cannot say that an image is unlike what the model was trained
on. Its vision encoder's features can. Each image becomes one vector: the encoder's class
token and the mean of its patch tokens, side by side (2 * dim). The training scenes' vectors
are summarised by their mean and a shrunk covariance (Ledoit-Wolf-style, towards its mean
eigenvalue: 512 samples of a 2 * dim vector give a singular sample covariance), and an
image's score is its Mahalanobis distance divided by the 99th percentile of the distances
of 256 validation scenes. So about 1 % of scene-world images score above 1; photographs
and noise score far above it (tests/test_ood.py measures the AUROC).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..core.layers import eval_mode
from ..data import make_scene

SHRINKAGE = 0.1  # weight of the identity (scaled to the mean eigenvalue) in the covariance
QUANTILE = 0.99  # the validation scenes' distance quantile that scores 1.0


def features(model, images: torch.Tensor) -> torch.Tensor:
    """(B, 2 * dim): the vision encoder's class token and mean patch token per image."""
    with eval_mode(model), torch.no_grad():
        tokens = model.vision(images).float()  # (B, 1 + P, dim), cls first
    cls, patches = tokens[:, 0], tokens[:, 1:].mean(1)  # (B, dim) each
    return torch.cat([cls, patches], dim=1).cpu()  # (B, 2 * dim)


def _batched_features(model, images: torch.Tensor, batch: int, lock) -> torch.Tensor:
    """features() of `images` in batches, each under `lock`: a server fitting in the
    background holds its model for one batch at a time, not the whole fit."""
    out = []
    for x in images.split(batch):
        with lock:
            out.append(features(model, x))
    return torch.cat(out)  # (N, 2 * dim)


def _scene_images(transform, scene_config, split: str, n: int) -> torch.Tensor:
    return torch.stack([transform(make_scene(split, i, scene_config).image) for i in range(n)])


@dataclass
class OODScore:
    """Mean (F,), precision (F, F) and the calibration distance (module docstring) of one
    model's features: score images with the model it was fitted on."""

    mean: torch.Tensor
    precision: torch.Tensor
    scale: float

    @classmethod
    def fit(cls, model, transform, scene_config, n_train: int = 512, n_val: int = 256,
            batch: int = 64, lock=None) -> OODScore:
        """Fit on the first n_train training scenes, calibrate on n_val validation scenes
        (drawn by seed: the same every time). `lock` (e.g. the app's model lock) is held
        around each batch's forward only."""
        if n_train < 2 or n_val < 1:
            raise ValueError(f"n_train must be >= 2 and n_val >= 1, got {n_train}, {n_val}")
        lock = lock if lock is not None else contextlib.nullcontext()
        train = _batched_features(model, _scene_images(transform, scene_config, "train",
                                                       n_train), batch, lock)
        mean = train.mean(0)  # (F,)
        centred = (train - mean).double()  # (N, F)
        cov = centred.T @ centred / (len(train) - 1)  # (F, F)
        target = torch.eye(cov.shape[0], dtype=cov.dtype) * cov.diagonal().mean()
        precision = torch.linalg.inv((1 - SHRINKAGE) * cov + SHRINKAGE * target).float()
        scorer = cls(mean, precision, 1.0)
        val = _batched_features(model, _scene_images(transform, scene_config, "val", n_val),
                                batch, lock)
        scorer.scale = float(np.quantile(scorer._distance(val).numpy(), QUANTILE))
        return scorer

    def distance(self, model, images: torch.Tensor) -> torch.Tensor:
        """(B,) Mahalanobis distance of each image's features from the training scenes'."""
        return self._distance(features(model, images))

    def _distance(self, feats: torch.Tensor) -> torch.Tensor:
        d = feats - self.mean  # (B, F)
        return torch.einsum("bf,fg,bg->b", d, self.precision, d).clamp_min(0).sqrt()

    def score(self, model, images: torch.Tensor) -> torch.Tensor:
        """(B,) distance / calibration: about 1 % of scene-world images score above 1."""
        return self.distance(model, images) / self.scale

    def is_unusual(self, model, images: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
        return self.score(model, images) > threshold


def auroc(inside, outside) -> float:
    """Area under the ROC curve of scores that should be higher `outside` than `inside`
    (the probability that a random outside image outscores a random inside one; ties
    count half)."""
    a, b = np.asarray(inside, dtype=np.float64), np.asarray(outside, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("auroc needs at least one inside and one outside score")
    greater = (b[:, None] > a[None, :]).mean()
    ties = (b[:, None] == a[None, :]).mean()
    return float(greater + 0.5 * ties)
