"""Which pixels made the model say a word: input attributions for one caption word.

    target = WordLogit(model, tokens, position=t, target_id=w)   # forward(images) -> (B,)
    attr = attribute(model, images, tokens, t, w, method="ig")   # Attribution
    attr.pixels   (B, H, W)     channel-summed pixel attributions
    attr.patches  (B, g, g)     the same, summed per ViT patch (g = img_size // patch_size)
    attr.raw      (B, 3, H, W)  per-channel attributions (None for GradCAM)

The scalar explained is the logit (or, with score="logprob", the log-probability) that the
model gives `target_id` at text position `position` of the teacher-forced `tokens`
(BOS + caption prefix): logits[:, position, target_id], i.e. the prediction of the token
that follows tokens[:, position].

Methods (captum implementations):
    "ig"            IntegratedGradients from `baseline` to the image (`steps` points)
    "saliency"      |∂score/∂pixel| (Saliency, abs=True)
    "noise_tunnel"  SmoothGrad: NoiseTunnel over IG or Saliency (`nt_base`), `nt_samples`
                    noisy copies with noise std `stdevs`, seeded by `seed`
    "gradient_shap" GradientShap: IG from `nt_samples` noisy baselines drawn at random
                    from the rows of `baseline` (the whole batch's), seeded by `seed`
    "gradcam"       LayerGradCam on `vision.hook_grid` (B, Dv, g, g), ReLU'd: native per
                    patch, upsampled (nearest, each patch a flat block) for `pixels`
    "grad_x_input"  plain Gradient × Input
    "explain"       Gradient × Input inside `ssm_bridge.core.ssm.explain_mode(model)`: the
                    MambaLRP rules change the backward pass only, so the product is an
                    LRP-style relevance (Jafari et al., "MambaLRP", 2024)

Baselines (for "ig", "noise_tunnel" over IG and "gradient_shap") live in the model's
input space, i.e. after normalisation:
    None / "zeros"  all zeros = the normalisation mean colour (mid-grey for the default
                    mean = std = 0.5; a black image would be -mean / std = -1 there)
    "mean"          each image's own per-channel mean colour
    "blur"          each image blurred by a Gaussian of sigma = patch_size / 2
    a float         that constant everywhere (e.g. -1.0: black under mean = std = 0.5)
    a tensor        broadcastable to images (B, 3, H, W); see `make_baseline`
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from captum.attr import (
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from einops import reduce, repeat
from torch import nn

from ..core.checks import check_images, check_tokens
from ..core.hooks import hooks
from ..core.layers import eval_mode
from ..core.ssm import explain_mode

METHODS = ("ig", "saliency", "noise_tunnel", "gradient_shap", "gradcam", "grad_x_input",
           "explain")
SCORES = ("logit", "logprob")
BASELINES = ("zeros", "mean", "blur")
NT_BASES = ("ig", "saliency")

__all__ = [
    "BASELINES", "METHODS", "Attribution", "ExplainComparison", "WordLogit", "attribute",
    "caption_attributions", "compare_explain", "make_baseline",
]


@dataclass
class Attribution:
    """Attributions of one target score for a batch of B images.

    pixels (B, H, W): channel-summed; patches (B, g, g): pixels summed per patch (GradCAM:
    its native map); raw (B, 3, H, W) per channel, None for GradCAM; score (B,): the
    explained logit / log-prob on the images; delta (B,): for "ig" only, captum's
    convergence delta sum(raw) - (score - score(baseline)), else None.
    """

    method: str
    pixels: torch.Tensor
    patches: torch.Tensor
    raw: torch.Tensor | None
    score: torch.Tensor
    delta: torch.Tensor | None = None


# ---------------------------------------------------------------- validation
def _as_batch(value, batch: int, name: str, device: torch.device) -> torch.Tensor:
    """An int or a (1,) / (B,) integer tensor -> a (B,) long tensor."""
    t = torch.as_tensor(value, device=device)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() > 1:
        raise ValueError(f"{name} must be an int or a 1-D integer tensor of length 1 or "
                         f"{batch}, got {value!r}")
    t = t.long().reshape(-1)  # (1,) or (B,)
    if t.numel() not in (1, batch):
        raise ValueError(f"{name} has {t.numel()} entries but the batch holds {batch}; "
                         f"give one per image or a single value")
    return t.expand(batch)  # (B,)


def _check_word(tokens: torch.Tensor, positions: torch.Tensor, target_ids: torch.Tensor,
                vocab_size: int) -> torch.Tensor:
    """Validate (B,) positions and target ids against tokens (B, T); returns positions
    with negative ones counted from the end."""
    T = tokens.shape[1]
    if T == 0:
        raise ValueError("tokens is empty; give at least the BOS token (the caption prefix "
                         "starts with it)")
    bad = (positions < -T) | (positions >= T)
    if bad.any():
        raise ValueError(f"position {positions[bad][0].item()} is out of range for tokens of "
                         f"length {T}: use 0 <= position < {T} (or a negative index)")
    bad = (target_ids < 0) | (target_ids >= vocab_size)
    if bad.any():
        raise ValueError(f"target id {target_ids[bad][0].item()} is outside the vocabulary: "
                         f"ids must be in [0, {vocab_size})")
    return positions % T  # (B,)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; known methods: "
                         f"{', '.join(METHODS)}")


def _check_counts(steps: int, nt_samples: int, stdevs: float) -> None:
    for name, v in (("steps", steps), ("nt_samples", nt_samples)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not isinstance(stdevs, numbers.Real) or not math.isfinite(stdevs) or stdevs < 0:
        raise ValueError(f"stdevs must be a finite number >= 0 (noise std in the normalised "
                         f"input space), got {stdevs!r}")


# ---------------------------------------------------------------- the target
class WordLogit(nn.Module):
    """The scalar to explain: forward(images (B, 3, H, W)) -> (B,) score of `target_id` at
    `position` of the teacher-forced `tokens` (logits[:, position, target_id], or its
    log-softmax with score="logprob").

    tokens: (T,) or (B0, T) with B0 = 1 or B; position / target_id: int or (B0,) tensors.
    forward also takes tokens, positions, target_ids explicitly (each with the images'
    batch size): captum passes them as additional_forward_args and expands them with the
    images when it batches interpolation steps or noise samples.
    """

    def __init__(self, model: nn.Module, tokens: torch.Tensor, position, target_id,
                 score: str = "logit") -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        tokens = torch.as_tensor(tokens)
        tokens = tokens[None] if tokens.dim() == 1 else tokens  # (B0, T)
        check_tokens(tokens, model.config)
        B0 = tokens.shape[0]
        device = tokens.device
        positions = _as_batch(position, B0, "position", device)  # (B0,)
        target_ids = _as_batch(target_id, B0, "target_id", device)  # (B0,)
        positions = _check_word(tokens, positions, target_ids, model.config.vocab_size)
        self.model, self.score = model, score
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("positions", positions, persistent=False)
        self.register_buffer("target_ids", target_ids, persistent=False)

    def batch_args(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens (B, T), positions (B,), target_ids (B,)) for `batch` images."""
        B0 = self.tokens.shape[0]
        if B0 not in (1, batch):
            raise ValueError(f"WordLogit holds {B0} token rows but got {batch} images; give "
                             f"one row per image or a single row")
        return (self.tokens.expand(batch, -1), self.positions.expand(batch),
                self.target_ids.expand(batch))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None = None,
                positions: torch.Tensor | None = None,
                target_ids: torch.Tensor | None = None) -> torch.Tensor:
        B = images.shape[0]
        if tokens is None:
            tokens, positions, target_ids = self.batch_args(B)
        logits = self.model(images, tokens)  # (B, T, V)
        rows = logits[torch.arange(B, device=logits.device), positions].float()  # (B, V)
        if self.score == "logprob":
            rows = rows.log_softmax(-1)  # (B, V)
        return rows.gather(1, target_ids[:, None])[:, 0]  # (B,)


# ---------------------------------------------------------------- baselines
def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """images (B, C, H, W) blurred per channel by a separable Gaussian (reflect padding)."""
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)  # (K,)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()  # (K,)
    C = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, repeat(k, "k -> c 1 1 k", c=C), groups=C)  # (B, C, H+2r, W)
    return F.conv2d(out, repeat(k, "k -> c 1 k 1", c=C), groups=C)  # (B, C, H, W)


def make_baseline(images: torch.Tensor, baseline=None, sigma: float | None = None,
                  patch_size: int = 8) -> torch.Tensor:
    """The reference image(s) (B, 3, H, W) for `baseline` (see the module docstring);
    sigma: the blur's (default patch_size / 2 pixels)."""
    if baseline is None or (isinstance(baseline, str) and baseline == "zeros"):
        return torch.zeros_like(images)
    if isinstance(baseline, str):
        if baseline == "mean":
            return reduce(images, "b c h w -> b c 1 1", "mean").expand_as(images).clone()
        if baseline == "blur":
            return gaussian_blur(images, sigma if sigma is not None else patch_size / 2)
        raise ValueError(f"unknown baseline {baseline!r}; use one of {BASELINES}, a float "
                         "(constant in normalised space) or a tensor like the images")
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        return torch.full_like(images, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(images), images.shape).clone()
        except RuntimeError:
            raise ValueError(f"baseline tensor of shape {tuple(baseline.shape)} does not "
                             f"broadcast to the images {tuple(images.shape)}") from None
    raise ValueError(f"baseline must be None, one of {BASELINES}, a float or a tensor, got "
                     f"{type(baseline).__name__}")


# ---------------------------------------------------------------- helpers
@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch's RNG for the block without changing the caller's RNG streams."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _per_patch(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """pixels (B, H, W) -> (B, g, g) sums over each patch x patch block."""
    return reduce(pixels, "b (gh ph) (gw pw) -> b gh gw", "sum", ph=patch, pw=patch)


def _from_raw(method: str, raw: torch.Tensor, score: torch.Tensor, patch: int,
              delta: torch.Tensor | None = None) -> Attribution:
    pixels = raw.sum(1)  # (B, H, W)
    return Attribution(method, pixels, _per_patch(pixels, patch), raw, score, delta)


def _gradcam_layer(model: nn.Module) -> nn.Module:
    layer = getattr(model.vision, "hook_grid", None)
    if layer is None:
        raise ValueError("GradCAM needs the hook point vision.hook_grid (B, Dv, g, g); this "
                         "model's vision encoder has none")
    return layer


# ---------------------------------------------------------------- methods
def _pixel_method(method: str, target: WordLogit, images: torch.Tensor, args: tuple,
                  base: torch.Tensor, opts: dict):
    """Raw (B, 3, H, W) attributions (and IG's convergence delta, else None)."""
    if method == "ig":
        return IntegratedGradients(target).attribute(
            images, base, additional_forward_args=args, n_steps=opts["steps"],
            internal_batch_size=opts["internal_batch_size"], return_convergence_delta=True)
    if method == "saliency":
        return Saliency(target).attribute(images, additional_forward_args=args, abs=True), None
    if method in ("grad_x_input", "explain"):
        return InputXGradient(target).attribute(images, additional_forward_args=args), None
    with _seeded(opts["seed"], images.device):
        if method == "gradient_shap":
            return GradientShap(target).attribute(
                images, base, n_samples=opts["nt_samples"], stdevs=opts["stdevs"],
                additional_forward_args=args), None
        return _noise_tunnel(target, images, args, base, opts), None


def _noise_tunnel(target: WordLogit, images: torch.Tensor, args: tuple, base: torch.Tensor,
                  opts: dict) -> torch.Tensor:
    if opts["nt_base"] not in NT_BASES:
        raise ValueError(f"nt_base must be one of {NT_BASES}, got {opts['nt_base']!r}")
    common = dict(nt_type="smoothgrad", nt_samples=opts["nt_samples"], stdevs=opts["stdevs"],
                  additional_forward_args=args)
    if opts["nt_base"] == "saliency":
        return NoiseTunnel(Saliency(target)).attribute(images, abs=True, **common)
    return NoiseTunnel(IntegratedGradients(target)).attribute(
        images, baselines=base, n_steps=opts["steps"],
        internal_batch_size=opts["internal_batch_size"], **common)


def _gradcam(target: WordLogit, images: torch.Tensor, args: tuple, score: torch.Tensor,
             patch: int) -> Attribution:
    cam = LayerGradCam(target, _gradcam_layer(target.model)).attribute(
        images, additional_forward_args=args, relu_attributions=True)  # (B, 1, g, g)
    pixels = repeat(cam[:, 0], "b gh gw -> b (gh ph) (gw pw)", ph=patch, pw=patch)  # (B, H, W)
    return Attribution("gradcam", pixels, cam[:, 0], None, score)


def attribute(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor, position,
              target_id, method: str = "ig", *, steps: int = 32, baseline=None,
              nt_samples: int = 8, stdevs: float = 0.1, seed: int = 0, score: str = "logit",
              nt_base: str = "ig", internal_batch_size: int | None = None) -> Attribution:
    """Attribute the score of `target_id` at `position` of `tokens` to the pixels.

    images (B, 3, H, W) normalised as the model expects; tokens (T,) or (1 | B, T), BOS +
    caption prefix; position, target_id: int or (B,) tensors. method: one of METHODS (see
    the module docstring); steps: IG interpolation points; baseline: see the module
    docstring; nt_samples / stdevs: noisy copies and their noise std (normalised units) for
    "noise_tunnel" and "gradient_shap", drawn from `seed` (the caller's RNG is untouched).
    The model runs in eval mode during the call. Returns an Attribution.
    """
    _check_method(method)
    _check_counts(steps, nt_samples, stdevs)
    check_images(images, model.config)
    device = images.device
    target = WordLogit(model, torch.as_tensor(tokens).to(device),
                       torch.as_tensor(position).to(device),
                       torch.as_tensor(target_id).to(device), score=score)
    args = target.batch_args(images.shape[0])  # tokens (B, T), positions (B,), ids (B,)
    patch = model.config.patch_size
    opts = dict(steps=steps, nt_samples=nt_samples, stdevs=float(stdevs), seed=seed,
                nt_base=nt_base, internal_batch_size=internal_batch_size)
    with eval_mode(model):
        with torch.no_grad():
            value = target(images.detach(), *args)  # (B,)
        if method == "gradcam":
            return _gradcam(target, images.detach(), args, value, patch)
        base = make_baseline(images, baseline, patch_size=patch)  # (B, 3, H, W)
        images = images.detach().clone().requires_grad_()  # the caller's tensor untouched
        mode = explain_mode(model) if method == "explain" else contextlib.nullcontext()
        with mode:
            raw, delta = _pixel_method(method, target, images, args, base, opts)
    return _from_raw(method, raw.detach(), value, patch,
                     None if delta is None else delta.detach())


# ---------------------------------------------------------------- explain mode vs plain
@dataclass
class ExplainComparison:
    """Plain Gradient × Input vs explain-mode (MambaLRP) relevance, per image (B,).

    correlation: Pearson correlation of the two raw maps; score: the explained logit
    f(x); reference: f(x) - f(zeros image), the part of the logit the zero baseline
    removes (the text, biases and embeddings stay); ratio_*: sum(pixel relevance) / score
    and ratio_ref_*: sum(pixel relevance) / reference (1 = conserved); bridge_*:
    sum(relevance at bridge.hook_in) / sum(relevance at bridge.hook_out), the conservation
    through the SSM bridge alone, the part of the model explain mode's rules cover.
    """

    plain: Attribution
    explain: Attribution
    correlation: torch.Tensor
    score: torch.Tensor
    reference: torch.Tensor
    ratio_plain: torch.Tensor
    ratio_explain: torch.Tensor
    ratio_ref_plain: torch.Tensor
    ratio_ref_explain: torch.Tensor
    bridge_plain: torch.Tensor
    bridge_explain: torch.Tensor


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise correlation of (B, ...) tensors -> (B,)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()  # (B, n)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)).float()


def _bridge_ratio(target: WordLogit, images: torch.Tensor, explain: bool) -> torch.Tensor:
    """(B,) sum(grad × activation) at bridge.hook_in over the same at bridge.hook_out."""
    seen = {}

    def keep(t, name):
        seen[name] = t  # (B, L, D)

    names = ("bridge.hook_in", "bridge.hook_out")
    mode = explain_mode(target.model) if explain else contextlib.nullcontext()
    # hooks() attaches for this thread only: another thread's forward meanwhile must not
    # overwrite `seen` (issue 14)
    with hooks(target.model, [(n, keep) for n in names]), mode, torch.enable_grad():
        value = target(images)  # (B,)
        grads = torch.autograd.grad(value.sum(), [seen[n] for n in names])
    r_in, r_out = ((g * seen[n]).flatten(1).sum(1).detach()  # (B,)
                   for g, n in zip(grads, names))
    return r_in / r_out


def compare_explain(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor, position,
                    target_id, score: str = "logit") -> ExplainComparison:
    """Gradient × Input with and without `explain_mode` for the same target (see
    ExplainComparison); images (B, 3, H, W)."""
    plain = attribute(model, images, tokens, position, target_id, "grad_x_input", score=score)
    explain = attribute(model, images, tokens, position, target_id, "explain", score=score)
    target = WordLogit(model, torch.as_tensor(tokens).to(images.device),
                       torch.as_tensor(position).to(images.device),
                       torch.as_tensor(target_id).to(images.device), score=score)
    with eval_mode(model):
        with torch.no_grad():
            reference = plain.score - target(torch.zeros_like(images))  # (B,)
        bridge = [_bridge_ratio(target, images.detach(), e) for e in (False, True)]
    sum_plain, sum_explain = plain.pixels.sum((1, 2)), explain.pixels.sum((1, 2))  # (B,)
    return ExplainComparison(
        plain, explain, _pearson(plain.raw, explain.raw), plain.score, reference,
        sum_plain / plain.score, sum_explain / plain.score,
        sum_plain / reference, sum_explain / reference, *bridge)


# ---------------------------------------------------------------- per caption word
def caption_attributions(model: nn.Module, tokenizer, image: torch.Tensor, caption_ids,
                         method: str = "ig", *, include_eos: bool = False,
                         **kwargs) -> list[tuple[str, Attribution]]:
    """One Attribution per word of a caption, each word's prefix teacher-forced.

    image (3, H, W) or (1, 3, H, W), normalised (e.g. `Pretrained.transform(img)`);
    caption_ids: the generated ids (list or 1-D tensor), BOS first (prepended if missing),
    up to EOS (the rest is dropped). Word i is explained as the prediction of caption_ids
    [i + 1] after caption_ids[: i + 1]; all words run as one batch (the decoder is causal,
    so the full caption at position i equals the prefix alone). include_eos: explain the
    EOS prediction too. kwargs go to `attribute`. Returns [(word, Attribution (1, ...))].
    """
    ids = _caption_ids(caption_ids, tokenizer, include_eos)
    image = image[None] if image.dim() == 3 else image  # (1, 3, H, W)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be one image (3, H, W) or (1, 3, H, W), got "
                         f"{tuple(image.shape)}")
    K = len(ids) - 1
    if K == 0:
        return []
    tokens = torch.tensor(ids[:-1], device=image.device)  # (K,)
    attr = attribute(model, image.expand(K, -1, -1, -1), repeat(tokens, "t -> k t", k=K),
                     torch.arange(K, device=image.device), torch.tensor(ids[1:]), method,
                     **kwargs)
    return [(tokenizer.itos[w], _row(attr, k)) for k, w in enumerate(ids[1:])]


def _caption_ids(caption_ids, tokenizer, include_eos: bool) -> list[int]:
    ids = [int(i) for i in (caption_ids.tolist() if hasattr(caption_ids, "tolist")
                            else caption_ids)]
    if not ids or ids[0] != tokenizer.bos_id:
        ids = [tokenizer.bos_id, *ids]
    for stop in (tokenizer.eos_id, tokenizer.pad_id):
        if stop in ids[1:]:
            end = ids.index(stop, 1)
            ids = ids[: end + 1] if stop == tokenizer.eos_id and include_eos else ids[:end]
    return ids


def _row(attr: Attribution, k: int) -> Attribution:
    """Image k of a batched Attribution, keeping a batch dimension of 1."""
    def pick(t):
        return None if t is None else t[k : k + 1]
    return Attribution(attr.method, pick(attr.pixels), pick(attr.patches), pick(attr.raw),
                       pick(attr.score), pick(attr.delta))
