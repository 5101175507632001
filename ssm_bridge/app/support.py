"""What the Gradio app (app.py) does besides laying out widgets, testable without a server.

    analyser = Analyser(load_pretrained("shapes-tiny"))
    pixels = analyser.prepare(read_upload("photo.jpg", max_bytes=10 * 2**20))  # (64, 64, 3)
    analyser.caption(pixels, Decoding())                   # 'a small red circle ...'
    view = analyser.analyse(pixels, Decoding())            # View: CaptionAnalysis + caches
    fig = tab_figure(analyser, view, "cross", word=2)      # a matplotlib Figure per tab

Uploads are checked before they are decoded: empty files, files over the size limit,
formats outside SAFE_FORMATS (PIL would run Ghostscript on EPS), images declaring more
than `max_pixels` pixels (decompression bombs: a few KB of PNG that inflate to GBs) and
truncated or corrupt data each raise an `UploadError` whose message says what to do.
Model calls run one at a time under the analyser's lock (hooks are per thread, but
explain_mode and train/eval switch the shared model itself), without autograd except for
attributions.
"""

from __future__ import annotations

import colorsys
import html
import math
import os
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

import viz

from ..core.addressing import SSMLayerRef, SSMStack, inverse_perm, ssm_stacks
from ..data import PALETTE, SHAPES, SceneConfig, generate_scene
from ..data.captions import PHRASE_ORDER
from ..interp.localization import (
    energy_in_mask,
    match_phrases,
    pointing_game,
    random_scores,
    word_match,
)
from ..interp.maps import ATTRIBUTION_KINDS, CaptionAnalysis, analyse, model_kinds, word_map
from ..interp.ood import OODScore
from .serve import DEFAULT_MAX_UPLOAD_MB, MB  # the command line states the limit too

DEFAULT_MAX_PIXELS = 40_000_000  # a 7,300 x 5,500 photo; bombs declare far more
SAFE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "PPM", "TGA", "ICO")
DECODINGS = ("greedy", "sampling")
CROSS_VIEWS = ("mean", "per layer", "per head")  # what the cross-attention tab can show
TABS = {  # tab id -> title, in the order the app shows them
    "cross": "Cross-attention", "prefix": "Decoder → image", "bridge": "Δ / gate (all words)",
    "state": "State (all words)", "implicit": "Implicit", "attribution": "Attribution",
    "truth": "Ground truth", "scrubber": "Scan scrubber (all words)",
}
# The tabs whose figure is the same for every word (the image path, before the decoder):
# their titles say so, and a word click leaves them as they are.
WORD_FREE_TABS = ("bridge", "state", "scrubber")
# A Mamba decoder's words read the image through its scans, not attention: its word tabs
# show the hidden attention instead (ssm_bridge.interp.ssm_paths) under these titles.
SCAN_TABS = {"cross": "Word → image (scans)", "prefix": "Decoder scans per layer",
             "implicit": "Scan rollout"}
WORD_TAB_KINDS = {"cross": "cross_attention", "prefix": "prefix_attention",
                  "implicit": "implicit"}  # the attention kind each word tab needs
PANEL_PX = 640  # a figure is drawn about this wide: the map column of a 1024 px page
DPI_RANGE = (100, 200)  # ... within these dpi, so a one-panel map is not a thumbnail
SELECTIVITY_NOTE = (
    "Δ: the scan's step size at each patch (mean over channels; no unit). A large Δ takes "
    "the patch into the state and forgets the past (Ā = exp(ΔA)). gate: SiLU(z), the "
    "factor the SSM output is multiplied by (0: closed). The same for every word.")
TOP_K = 5  # alternatives shown for the selected word
LOCALISED_KINDS = ("cross_attention", "prefix_attention", "implicit", "hidden_attention",
                   "hidden_rollout")
RANDOM_MAPS = 100  # random maps averaged for the localisation baseline
STACK_LABELS = {"vision": "Vim", "bridge": "bridge", "decoder": "decoder"}  # in titles, menus
# The stacks whose scans read the image tokens (cls + the patch grid), which the State and
# Scrubber tabs draw on the grid; the bridge first: its first scan is the one shown first.
IMAGE_SCAN_STACKS = ("bridge", "vision")


class UploadError(ValueError):
    """An upload the app cannot caption; the message is shown to the user as is."""


# ---------------------------------------------------------------- inputs
def read_upload(path: str | os.PathLike | None, max_bytes: float = DEFAULT_MAX_UPLOAD_MB * MB,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An uploaded file -> a decoded PIL image (EXIF orientation applied), or UploadError."""
    if path is None:
        raise UploadError("No image yet: upload an image file (PNG, JPEG, GIF, BMP, TIFF, WebP).")
    path = Path(path)
    if not path.is_file():
        raise UploadError("The upload did not arrive; please upload the file again.")
    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"{path.name} is empty (0 bytes): upload an image file.")
    if size > max_bytes:
        raise UploadError(f"{path.name} is {size / MB:.1f} MB, over the upload limit of "
                          f"{max_bytes / MB:g} MB: shrink or compress it and try again.")
    try:
        with Image.open(path, formats=SAFE_FORMATS) as img:
            check_pixels(img.size, max_pixels, path.name)
            img.load()
            return ImageOps.exif_transpose(img)  # a decoded copy, upright
    except UploadError:
        raise
    except Image.DecompressionBombError as e:
        raise UploadError(_bomb_message(path.name, max_pixels, str(e))) from e
    except UnidentifiedImageError as e:
        raise UploadError(f"{path.name} is not an image this app can read (or it is "
                          "corrupt): upload a PNG, JPEG, GIF, BMP, TIFF or WebP image.") from e
    except Exception as e:  # truncated data, bad chunks, decoder errors: the file is broken
        raise UploadError(f"{path.name} could not be decoded ({type(e).__name__}): the file "
                          "is truncated or corrupt. Re-save or re-export it.") from e


def check_pixels(size: tuple[int, int], max_pixels: int, name: str = "the image") -> None:
    """UploadError when an image declares more than `max_pixels` pixels (before decoding)."""
    w, h = size
    if w * h > max_pixels:
        raise UploadError(_bomb_message(name, max_pixels, f"{w} x {h} pixels"))


def _bomb_message(name: str, max_pixels: int, detail: str) -> str:
    return (f"{name} is too large to decode ({detail}; the limit is {max_pixels / 1e6:g} "
            "megapixels): it may be a decompression bomb. Downscale it and try again.")


def sketch_image(value) -> np.ndarray:
    """A gr.Sketchpad value (numpy type) -> its composite (H, W, 3 or 4) uint8; UploadError
    when nothing is drawn."""
    composite = value.get("composite") if isinstance(value, dict) else value
    if composite is None:
        raise UploadError("The sketchpad is empty: draw a few coloured shapes first.")
    arr = np.asarray(composite)
    if arr.ndim == 3 and arr.shape[2] == 4:
        drawn = arr[..., 3] > 0  # (H, W) touched by the brush
    else:
        drawn = np.ones(arr.shape[:2], dtype=bool)
    rgb = arr[..., :3] if arr.ndim == 3 else arr[..., None]
    if not drawn.any() or (rgb[drawn] >= 250).all():
        raise UploadError("The sketchpad is empty: draw a few coloured shapes first.")
    return arr


def brush_colours() -> list[str]:
    """The scene world's colours as hex strings (each HSV box's centre), for the sketchpad."""
    out = []
    for (h0, h1), (s0, s1), (v0, v1) in PALETTE.values():
        rgb = colorsys.hsv_to_rgb(((h0 + h1) / 2 % 360) / 360, (s0 + s1) / 2, (v0 + v1) / 2)
        out.append("#" + "".join(f"{round(c * 255):02x}" for c in rgb))
    return out


def scene_pixels(seed: int, config: SceneConfig | None) -> tuple[np.ndarray, object]:
    """The generated scene of `seed` (its image (H, W, 3) uint8 and the Scene)."""
    seed = int(seed)
    if seed < 0:
        raise UploadError(f"scene seeds are integers >= 0, got {seed}")
    scene = generate_scene(seed, config)
    return scene.image, scene


@dataclass(frozen=True)
class Decoding:
    """The app's decoding controls; `generate_kwargs` checks them and maps 0 / 1 to 'off'."""

    mode: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    max_length: int = 32
    seed: int = 0

    def generate_kwargs(self, max_seq_length: int) -> dict:
        if self.mode not in DECODINGS:
            raise UploadError(f"decoding must be one of {DECODINGS}, got {self.mode!r}")
        max_length = _whole("max length", self.max_length, 2, max_seq_length,
                            "tokens, BOS included")
        kw = {"max_length": max_length}
        if self.mode == "greedy":
            return {**kw, "temperature": 0.0}
        temperature, top_p = _number("temperature", self.temperature), _number("top-p",
                                                                              self.top_p)
        if not temperature > 0:
            raise UploadError(f"sampling needs a temperature > 0, got {self.temperature}; "
                              "choose greedy decoding for temperature 0")
        if not 0 < top_p <= 1:
            raise UploadError(f"top-p must be in (0, 1] (1 = off), got {self.top_p}")
        top_k = _whole("top-k", self.top_k, 0, None, "0 = off")
        return {**kw, "temperature": temperature, "top_k": top_k or None,
                "top_p": None if top_p >= 1 else top_p,
                "seed": _whole("sampling seed", self.seed, 0, 2**63 - 1, "it seeds the sampler")}


def _number(field: str, value) -> float:
    """float(value), or an UploadError naming `field` (None, text, NaN, infinity)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x):
        raise UploadError(f"{field} must be a finite number, got {value!r}")
    return x


def _whole(field: str, value, lo: int, hi: int | None, note: str) -> int:
    """An integer in [lo, hi], or an UploadError naming `field` and the range."""
    x = _number(field, value)
    if x != int(x) or x < lo or (hi is not None and x > hi):
        span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise UploadError(f"{field} must be a whole number in {span} ({note}), got {value!r}")
    return int(x)


def tab_titles(model) -> dict[str, str]:
    """TABS for `model`: a word tab whose attention kind the model lacks shows the decoder's
    scans instead (SCAN_TABS)."""
    kinds = model_kinds(model)
    return {t: SCAN_TABS[t] if t in WORD_TAB_KINDS and WORD_TAB_KINDS[t] not in kinds
            else title for t, title in TABS.items()}


def layer_direction_choices(model, stack: str | None) -> tuple[list[int], list[str]]:
    """Layers and scan directions of SSM stack `stack` (none for a model without it)."""
    stacks = ssm_stacks(model)
    if stack not in stacks:
        return [], []
    s = stacks[stack]
    return list(range(len(s))), list(s[0].direction_names)


def scan_choices(model) -> tuple[list[int], list[str]]:
    """The bridge's layers and scan directions (the notebook explorer's menus)."""
    return layer_direction_choices(model, "bridge")


def image_layers(model) -> dict[str, SSMLayerRef]:
    """Every layer of the image-path stacks by label, bridge first: {"bridge 0": layer,
    "Vim 0": layer, ...}."""
    stacks = ssm_stacks(model)
    return {f"{STACK_LABELS[name]} {ref.index}": ref
            for name in IMAGE_SCAN_STACKS if name in stacks for ref in stacks[name]}


def scan_address(model, layer: int | str = 0, direction: int | str = 0
                 ) -> tuple[SSMLayerRef, int]:
    """(layer, direction index) of a scan the State and Scrubber tabs show: `layer` a bridge
    layer index or a label of `image_layers`, `direction` an index or a name."""
    if isinstance(layer, str):
        layers = image_layers(model)
        if layer not in layers:
            raise UploadError(f"unknown layer {layer!r}; choose one of {list(layers)}")
        ref = layers[layer]
    else:
        ref = SSMStack.of(model, "bridge", what="the scan tabs")[layer]
    return ref, ref.direction(direction)


def scan_directions(model, layer: int | str | None) -> list[str]:
    """The scan directions of a layer choice: a labelled layer's own (the Vim's run both
    ways, the bridge's maybe one way), else the bridge's ([] without an SSM bridge)."""
    if isinstance(layer, str):
        return list(scan_address(model, layer)[0].direction_names)
    return scan_choices(model)[1]


def scan_menus(model) -> tuple[list, list[str]]:
    """The State and Scrubber tabs' layer menu and the directions of its first layer: the
    bridge's layers by index for a model without a Vim encoder (scan_choices); with one,
    every image-path layer named with its stack ("bridge 0", "Vim 1")."""
    if "vision" not in ssm_stacks(model):
        return scan_choices(model)
    layers = list(image_layers(model))
    return layers, scan_directions(model, layers[0])


def grid_perm(ref: SSMLayerRef, direction: int, length: int) -> torch.Tensor:
    """(L,) the token read at each scan step, numbered in the model's output order (cls 0,
    patch p at 1 + p) as the figures' patch grids are: the Vim encoder scans its own order,
    class token mid-sequence, which `stack.output_order` maps to the output's."""
    perm = ref.perm(direction, length)  # (L,) in the stack's own order
    order = ref.stack.output_order
    return perm if order is None else inverse_perm(order.to(perm.device))[perm]


def layer_title(ref: SSMLayerRef) -> str:
    """How figure titles name a layer: the bridge's as they always have ("layer 0"),
    another stack's with its label ("Vim layer 1")."""
    stack = ref.stack.name
    return f"layer {ref.index}" if stack == "bridge" else f"{STACK_LABELS[stack]} layer {ref.index}"


# ---------------------------------------------------------------- model calls
@dataclass
class ScanData:
    """One scan direction of a bridge or Vim layer, for the scrubber and the state tab
    (scan order)."""

    name: str
    perm: np.ndarray  # (L,) token read at each step, in output order (grid_perm)
    state: np.ndarray  # (L, D, N) h
    proj: np.ndarray  # (L, 2) h on its first two principal components
    delta: np.ndarray  # (L,) Δ, mean over channels
    gate: np.ndarray  # (L,) SiLU(z), mean over channels
    layer: str = ""  # how titles name the layer: "layer 0" (the bridge), "Vim layer 1"


@dataclass
class View:
    """One analysed image: the analysis, the pixels shown, the scene (if generated) and the
    lazily computed scan data {(stack, layer, direction): ScanData}."""

    analysis: CaptionAnalysis
    pixels: np.ndarray  # (S, S, 3) uint8, the model input
    scene: object | None = None
    scans: dict = field(default_factory=dict, repr=False)
    baselines: dict = field(default_factory=dict, repr=False)  # object j -> random scores
    # per word, the model's top next words at the query that wrote it: [(word, p), ...]
    alternatives: list = field(default_factory=list, repr=False)
    ood: float | None = None  # interp.ood score: above 1, unlike the training scenes


_OOD_FITS: dict[str, OODScore] = {}  # checkpoint folder -> its fitted OOD score
_OOD_LOCK = threading.Lock()  # guards _OOD_FITS: one fit per checkpoint at a time


class Analyser:
    """The pretrained bundle behind a lock: caption, analyse, attribute, scan data."""

    def __init__(self, pretrained, fit_ood: bool = True) -> None:
        self.p = pretrained
        self.model = pretrained.model.eval()
        self.lock = threading.Lock()
        self.device = next(self.model.parameters()).device
        self._ood: OODScore | None = None
        self._ood_error: BaseException | None = None
        # Fitting the OOD score reads ~770 scenes (seconds): it starts now, in the
        # background, so that the first caption does not wait for all of it.
        self._ood_fit = threading.Thread(target=self._fit_ood, daemon=True)
        self._ood_wanted = fit_ood and pretrained.scene_config is not None
        if self._ood_wanted:
            self._ood_fit.start()

    def _fit_ood(self) -> None:
        key = str(Path(self.p.path).resolve())  # a checkpoint's score is fitted once
        try:
            # the model lock is taken per batch of scenes inside fit: a caption asked for
            # while the score is fitted waits for one batch, not for all ~770 scenes
            with _OOD_LOCK:
                if key not in _OOD_FITS:
                    _OOD_FITS[key] = OODScore.fit(self.model, self.p.transform,
                                                  self.p.scene_config, lock=self.lock)
                self._ood = _OOD_FITS[key]
        except BaseException as e:  # re-raised by ood_score, in the thread that asks
            self._ood_error = e

    def ood_score(self, pixels: np.ndarray) -> float | None:
        """The image's interp.ood score (waits for the fit); None for a model without a
        scene world to compare with (or built with fit_ood=False)."""
        if not self._ood_wanted:
            return None
        self._ood_fit.join()
        if self._ood_error is not None:
            raise RuntimeError("fitting the OOD score failed") from self._ood_error
        with self.lock:
            return float(self._ood.score(self.model, self._tensor(pixels))[0])

    @property
    def max_seq_length(self) -> int:
        return self.model.config.max_seq_length

    def prepare(self, image) -> np.ndarray:
        """PIL image or array (any mode / size) -> the model's (S, S, 3) uint8 input."""
        try:
            return self.p.transform.to_array(image)
        except ValueError as e:
            raise UploadError(f"cannot use this image: {e}") from e

    def _tensor(self, pixels: np.ndarray) -> torch.Tensor:
        return self.p.transform(pixels)[None].to(self.device)  # (1, 3, S, S)

    def caption(self, pixels: np.ndarray, decoding: Decoding) -> str:
        kw = decoding.generate_kwargs(self.max_seq_length)
        with self.lock, torch.no_grad():
            ids = self.model.generate(self._tensor(pixels), **kw)  # (1, T)
        return self.p.tokenizer.decode(ids[0].tolist())

    def analyse(self, pixels: np.ndarray, decoding: Decoding, scene=None) -> View:
        kw = decoding.generate_kwargs(self.max_seq_length)
        with self.lock, torch.no_grad():  # no inference_mode: attributions reuse these tensors
            a = analyse(self.model, self._tensor(pixels)[0], tokenizer=self.p.tokenizer, **kw)
            top = self._alternatives(a)
        return View(a, pixels, scene, alternatives=top, ood=self.ood_score(pixels))

    def _alternatives(self, a: CaptionAnalysis, k: int = TOP_K) -> list:
        """Per generated word, the k most probable next words where it was written (one
        teacher-forced pass over the caption)."""
        if not a.n_words:
            return []
        ids = a.ids.to(self.device)[None]  # (1, S)
        logits = self.model(a.image[None].to(self.device), ids[:, :-1])  # (1, S - 1, V)
        probs = logits[0].float().softmax(-1)  # (S - 1, V)
        out = []
        for at in a.word_index:  # ids[at] was predicted at position at - 1
            p, i = probs[at - 1].topk(k)
            out.append([(self.p.tokenizer.decode([int(t)], skip_special=False), float(q))
                        for q, t in zip(p, i)])
        return out

    def attribution(self, view: View, word: int, kind: str) -> torch.Tensor:
        """(g, g) attribution of word `word` by `kind` (cached in the analysis)."""
        if kind not in ATTRIBUTION_KINDS:
            raise UploadError(f"attribution method must be one of {ATTRIBUTION_KINDS}, "
                              f"got {kind!r}")
        with self.lock, torch.enable_grad():
            return word_map(view.analysis, word, kind, self.model)

    def scan(self, view: View, layer: int | str, direction: int | str = 0) -> ScanData:
        """Scan data of (layer, direction) (`scan_address`), computed once per view."""
        ref, k = scan_address(self.model, layer, direction)
        key = (ref.stack.name, ref.index, k)
        if key not in view.scans:
            view.scans[key] = self._scan(view.analysis.image, ref, k)
        return view.scans[key]

    def _scan(self, image: torch.Tensor, ref: SSMLayerRef, k: int) -> ScanData:
        names = [ref.hook("hook_state", k), ref.hook("hook_delta", k), ref.hook("hook_gate")]
        with self.lock, torch.no_grad():
            _, cache = self.model.run_with_cache(image[None], None, names_filter=names)
        h = cache[names[0]][0].float().cpu()  # (L, D, N) scan order
        gate = ref.to_scan_order(cache[names[2]][0].float().cpu().mean(-1), k, dim=0)  # (L,)
        return ScanData(ref.direction_names[k], grid_perm(ref, k, h.shape[0]).numpy(),
                        h.numpy(), viz.state_pca(h)[0],
                        cache[names[1]][0].float().cpu().mean(-1).numpy(), gate.numpy(),
                        layer_title(ref))


# ---------------------------------------------------------------- words and ground truth
def default_word(words: list[str]) -> int:
    """The word selected after captioning: the first shape noun, else the first word that is
    not an article (0 for an empty caption)."""
    for pick in (lambda w: w in SHAPES, lambda w: w not in ("a", "an", "the")):
        hit = next((i for i, w in enumerate(words) if pick(w)), None)
        if hit is not None:
            return hit
    return 0


def word_spans(words: list[str], selected: int | None) -> list[tuple[str, str | None]]:
    """HighlightedText value: one span per word (index = word index), the selected one
    labelled 'selected'."""
    return [(w + " ", "selected" if i == selected else None) for i, w in enumerate(words)]


def ood_warning(score: float | None) -> str:
    """A markdown warning line when the image is unlike the training scenes, else ''."""
    if score is None or score <= 1.0:
        return ""
    return (f"⚠️ **This image is unlike the scenes the model was trained on** (out-of-"
            f"distribution score {score:.1f}; 99 % of validation scenes score at most 1): the "
            "caption is a guess, however confident its log p.\n\n")


def word_info(view: View, word: int) -> str:
    """Markdown for the selected word: its log-probability, the model's top next words
    where it was written, and per cross layer the tanh gates and the gated update
    relative to the text stream."""
    a = view.analysis
    warning = ood_warning(view.ood)
    if not a.n_words:
        return warning + "*The model wrote no words for this image.*"
    lines = [warning + f"word {word + 1}/{a.n_words}: **{html.escape(a.words[word])}**, "
             f"log p = {float(a.logprobs[word]):.3f}", ""]
    if view.alternatives:
        lines += ["| next word (top 5) | p |", "|---|---|"]
        lines += [f"| {html.escape(w)} | {p:.3f} |" for w, p in view.alternatives[word]]
        lines.append("")
    if not a.gates:
        lines.append("No cross-attention: the decoder reads the image through its scans.")
        return "\n".join(lines)
    lines += ["| cross layer | tanh(gate) attention | tanh(gate) feed-forward | "
              "gated update / text stream |", "|---|---|---|---|"]
    for i, u in enumerate(a.gated_update[word]):
        lines.append(f"| {i} | {a.gates.get(f'cross {i} attn', float('nan')):.2f} | "
                     f"{a.gates.get(f'cross {i} ff', float('nan')):.2f} | {float(u):.2f} |")
    return "\n".join(lines)


def word_object(scene, words: list[str], word: int) -> int | None:
    """The ground-truth object (index in scene.objects) that the phrase holding `word`
    names, right or wrong (localization.match_phrases); None for a relation word or a
    phrase that names no object."""
    found = word_match(scene, words, word)
    return None if found is None else found[0].obj


def localisation_rows(view: View, word: int) -> list[dict]:
    """Pointing game and energy-in-mask of each map of `word` against its object's mask,
    with the random-map baseline; [] when the word names no ground-truth object."""
    a = view.analysis
    j = None if view.scene is None else word_object(view.scene, a.words, word)
    if j is None:
        return []
    mask = view.scene.objects[j].mask  # (H, W) bool
    maps = {k: getattr(a, k)[word] for k in LOCALISED_KINDS if getattr(a, k) is not None}
    maps.update({k: done[word] for k, done in a.attributions.items() if word in done})
    rows = [{"map": k, "pointing_game": pointing_game(m, mask),
             "energy_in_mask": energy_in_mask(m, mask)} for k, m in maps.items()]
    if j not in view.baselines:
        view.baselines[j] = random_scores([mask] * RANDOM_MAPS, (a.grid_side,) * 2, seed=0)
    rows.append({"map": f"random (mean of {RANDOM_MAPS})", **view.baselines[j]})
    return rows


# ---------------------------------------------------------------- figures
def _overlay(view: View, grid, title: str, label: str):
    return viz.overlay(view.pixels, grid, title=title, label=label)


def tab_figure(analyser: Analyser, view: View, tab: str, word: int = 0,
               layer: int | str = 0, direction: int = 0, step: int = 0, method: str = "ig",
               heads: str = "mean"):
    """The figure of tab `tab` (a TABS key) for word `word`; None for the attribution tab
    until that attribution is computed, and for the ground-truth tab without a scene.
    layer, direction: the State and Scrubber tabs' scan (`scan_address`). heads: the
    cross-attention tab's view, one of CROSS_VIEWS."""
    if heads not in CROSS_VIEWS:
        raise ValueError(f"cross-attention view must be one of {CROSS_VIEWS}, got {heads!r}")
    fig = _tab_figure(analyser, view, tab, word, layer, direction, step, method, heads)
    if fig is not None:
        set_dpi(fig, figure_dpi(fig))
    return fig


def figure_dpi(fig) -> float:
    """The dpi that draws `fig` about PANEL_PX wide (within DPI_RANGE)."""
    return float(np.clip(PANEL_PX / fig.get_figwidth(), *DPI_RANGE))


def set_dpi(fig, dpi: float) -> None:
    """Draw and save `fig` at `dpi`. gradio's Plot calls savefig(dpi="figure"), which uses
    the dpi the figure was created with (matplotlib keeps it as `_original_dpi`, for
    HiDPI screens), not set_dpi's: so set both, or the PNG stays 100 dpi, a thumbnail."""
    fig.set_dpi(dpi)
    fig._original_dpi = dpi


def _tab_figure(analyser, view, tab, word, layer, direction, step, method, heads):
    a, w = view.analysis, min(max(int(word), 0), max(view.analysis.n_words - 1, 0))
    if tab in ("cross", "prefix", "implicit", "attribution", "truth") and a.n_words == 0:
        return None
    quoted = f"'{a.words[w]}'" if a.n_words else ""
    if tab in WORD_TAB_KINDS:
        if getattr(a, WORD_TAB_KINDS[tab]) is None:
            return _scan_figure(view, tab, w, quoted)
        if tab == "cross" and heads != "mean":
            return _cross_panels(view, w, quoted, heads)
        return _attention_figure(view, tab, w, quoted)
    if tab == "bridge":
        return selectivity_figure(view)
    if tab == "state":
        s = analyser.scan(view, layer, direction)
        return viz.state_trajectory(s.state, a.grid_side, scan_perm=s.perm, image=view.pixels,
                                    title=f"{s.layer} state ({s.name} scan)")
    if tab == "scrubber":
        s = analyser.scan(view, layer, direction)
        step = min(max(int(step), 0), len(s.perm) - 1)
        return viz.scan_scrubber_frame(view.pixels, s.perm, step, a.grid_side,
                                       state_proj=s.proj, delta=s.delta, gate=s.gate)
    if tab == "attribution":
        if method not in a.attributions or w not in a.attributions[method]:
            return None
        return viz.attribution_overlay(view.pixels, a.attributions[method][w],
                                       f"{method} of {quoted}")
    if tab == "truth":
        return truth_figure(view, w)
    raise ValueError(f"unknown tab {tab!r}; choose one of {list(TABS)}")


def _cross_panels(view: View, w: int, quoted: str, heads: str):
    """Word w's cross-attention per layer (mean over heads) or per (layer, head)."""
    a = view.analysis
    if heads == "per layer":
        items = [(f"layer {i}", m) for i, m in enumerate(a.cross_attention_layers[w])]
    else:
        items = [(f"layer {i} head {h}", m) for i, per_head in
                 enumerate(a.cross_attention_heads[w]) for h, m in enumerate(per_head)]
    fig = viz.map_panels(items, view.pixels, ncols=min(len(items), 4), shared_scale=True)[0]
    fig.suptitle(f"cross-attention of the query that wrote {quoted}, {heads}")
    return fig


def _attention_figure(view: View, tab: str, w: int, quoted: str):
    """Every per-word map says whose it is: the decoder query (the position before the
    word) that wrote it, not the word's own token."""
    a, query = view.analysis, f"the query that wrote {quoted}"
    if tab == "cross":
        return _overlay(view, a.cross_attention[w], f"cross-attention of {query}",
                        "attention")
    if tab == "prefix":
        return _overlay(view, a.prefix_attention[w], f"decoder attention to the image "
                        f"prefix, {query}", "attention")
    fig = viz.map_panels([("cross-attention", a.cross_attention[w]),
                          ("through the SSM (implicit)", a.implicit[w])],
                         view.pixels, ncols=2, shared_scale=False)[0]
    fig.suptitle(query, fontsize=viz.style.TITLE_SIZE)
    return fig


def _scan_figure(view: View, tab: str, w: int, quoted: str):
    """The word tabs of a Mamba decoder: its hidden attention (ssm_paths), of the decoder
    query that wrote the word."""
    a, query = view.analysis, f"the query that wrote {quoted}"
    if tab == "cross":
        return _overlay(view, a.hidden_rollout[w], f"{query} → image through the scans",
                        "flow")
    if tab == "prefix":
        layers = a.hidden_attention_layers[w]  # (layers, g, g)
        fig = viz.map_panels([(f"decoder layer {i}", m) for i, m in enumerate(layers)],
                             view.pixels, ncols=min(len(layers), 3), shared_scale=False)[0]
    else:
        fig = viz.map_panels([("decoder hidden attention", a.hidden_attention[w]),
                              ("rolled out to the patches", a.hidden_rollout[w])],
                             view.pixels, ncols=2, shared_scale=False)[0]
    fig.suptitle(query, fontsize=viz.style.TITLE_SIZE)
    return fig


def selectivity_maps(a: CaptionAnalysis) -> dict:
    """{panel title: (g, g)}: Δ and gate per layer of every SSM stack the model has."""
    maps = {}
    for stack, prefix in (("bridge", ""), ("vision", "vision_"), ("decoder", "decoder_")):
        deltas, gates = getattr(a, f"{prefix}delta"), getattr(a, f"{prefix}gate")
        label = STACK_LABELS[stack]
        for i in deltas or {}:
            maps[f"{label} {i} Δ"], maps[f"{label} {i} gate"] = deltas[i], gates[i]
    return maps


def selectivity_figure(view: View):
    """The Δ and gate maps of every SSM stack, each with its unit, and what they mean."""
    maps = selectivity_maps(view.analysis)
    labels = ["Δ (step size)" if t.endswith("Δ") else "gate SiLU(z)" for t in maps]
    fig = viz.map_panels(list(maps.items()), view.pixels, ncols=2, shared_scale=False,
                         label=labels)[0]
    width = int(fig.get_figwidth() * 72 / (viz.style.LABEL_SIZE * 0.55))
    fig.supxlabel(textwrap.fill(SELECTIVITY_NOTE, width), fontsize=viz.style.LABEL_SIZE)
    return fig


def word_image_map(a: CaptionAnalysis, word: int) -> tuple[str, torch.Tensor]:
    """(name, (g, g)) of how the word reads the image: cross-attention, else the scans'."""
    if a.cross_attention is not None:
        return "cross-attention", a.cross_attention[word]
    return "scan rollout", a.hidden_rollout[word]


def truth_figure(view: View, word: int):
    """Every object's mask, numbered as in the ground-truth table, beside the selected
    word's map (None without a scene). Drawn whatever the caption got wrong."""
    if view.scene is None:
        return None
    a, objects = view.analysis, view.scene.objects
    labels = sum((j + 1) * o.mask.astype(np.float32) for j, o in enumerate(objects))
    items = [("objects: " + ", ".join(f"{j + 1} {o.describe()}" for j, o in enumerate(objects)),
              labels)]
    if a.n_words:
        name, m = word_image_map(a, word)
        items.append((f"{name} of '{a.words[word]}'", m))
    return viz.map_panels(items, view.pixels, ncols=2, shared_scale=False)[0]


def _tick(ok: bool) -> str:
    return "✓" if ok else "✗"


def phrase_table(view: View) -> list[str]:
    """Markdown rows: each generated object phrase, the object it names and which of its
    words are right; then the objects no phrase names."""
    matches = match_phrases(view.scene, view.analysis.words)
    objects = view.scene.objects
    rows = ["| phrase | names object | size | colour | shape |", "|---|---|---|---|---|"]
    for m in matches:
        named = "none" if m.obj is None else f"{m.obj + 1} ({objects[m.obj].describe()})"
        ticks = " | ".join(_tick(ok) if m.obj is not None else "–" for ok in m.agree)
        rows.append(f"| a {' '.join(w for w in m.phrase if w)} | {named} | {ticks} |")
    missed = [j for j in range(len(objects)) if j not in {m.obj for m in matches}]
    if missed:
        rows += ["", "**not mentioned:** " + ", ".join(
            f"{j + 1} ({objects[j].describe()})" for j in missed)]
    return rows


def word_verdict(view: View, word: int) -> str:
    """What the selected word names, and whether it is right."""
    a = view.analysis
    found = word_match(view.scene, a.words, word)
    w = f"**'{a.words[word]}'**"
    if found is None:
        return f"{w} is a relation word: it names no object."
    m, role = found
    if m.obj is None:
        return f"{w} is in a phrase that names no object of the scene."
    obj = view.scene.objects[m.obj]
    if role == "article":
        return f"{w} starts the phrase naming object {m.obj + 1}."
    ok = m.agree[PHRASE_ORDER.index(role)]
    truth = getattr(obj, role)
    return (f"{w} is the {role} of object {m.obj + 1}: "
            + ("right." if ok else f"**wrong** (it is {truth})."))


def truth_markdown(view: View | None, word: int) -> str:
    """Ground truth beside the prediction, the phrase-by-phrase match, the selected word's
    verdict and its localisation scores against the object it names."""
    if view is None:
        return ""
    if view.scene is None:
        return "*Ground truth exists for generated scenes only (the Scenes tab).*"
    a, truth = view.analysis, view.scene.caption
    verdict = "exact match" if a.caption == truth else "differs"
    lines = [f"**ground truth:** {truth}  \n**prediction:** {a.caption} ({verdict})", ""]
    if not a.n_words:
        return "\n".join(lines)
    lines += [*phrase_table(view), "", word_verdict(view, word), ""]
    rows = localisation_rows(view, word)
    if rows:
        lines += ["| map | pointing game | energy in mask |", "|---|---|---|"]
        lines += [f"| {r['map']} | {float(r['pointing_game']):.2f} | "
                  f"{r['energy_in_mask']:.2f} |" for r in rows]
    return "\n".join(lines)
