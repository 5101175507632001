"""Torch datasets of (image, tokens, targets) for captioning and visual question answering.

Every item is a triple:
    image    (3, H, W) float32, normalised by the ImageTransform
    tokens   (T,) long: [BOS] + prompt + answer            (the model's input)
    targets  (T,) long: the next id at each position, -100 where nothing is learned

For a caption the prompt is empty: tokens = [BOS] w1 .. wn, targets = w1 .. wn [EOS].
For a question, tokens = [BOS] q1 .. qm ? a1 .. ak and targets = -100 .. -100 a1 .. ak [EOS]:
the question (it ends with "?") is only read, the answer and EOS are learned. At test time
prompt the model with [BOS] + question ids: model.generate(images, prompt=ids).

    ds = SceneCaptions("train", 20_000, task="mixed")      # pre-renders with a progress bar
    loader = DataLoader(ds, batch_size=64, shuffle=True, collate_fn=ds.collate)
"""

from __future__ import annotations

import functools
import multiprocessing
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .scenes import Scene, SceneConfig, make_scene
from .tokenizer import Tokenizer
from .transforms import ImageTransform

TASKS = ("caption", "vqa", "mixed")
IGNORE = -100  # targets the loss skips (F.cross_entropy's default ignore_index)


def encode_example(tokenizer: Tokenizer, answer: str, prompt: str | None = None,
                   max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, targets) for `answer` after an optional `prompt` (see the module docstring).

    max_tokens cuts both to that length (the end, EOS included, is lost if it is too long)."""
    prompt_ids = tokenizer.encode(prompt, bos=False, eos=False) if prompt else []
    ids = [tokenizer.bos_id, *prompt_ids, *tokenizer.encode(answer, bos=False, eos=True)]
    tokens = torch.tensor(ids[:-1], dtype=torch.long)
    targets = torch.tensor(ids[1:], dtype=torch.long)
    targets[: len(prompt_ids)] = IGNORE  # positions whose next token is still the prompt
    if max_tokens is not None:
        tokens, targets = tokens[:max_tokens], targets[:max_tokens]
    return tokens, targets


def collate(batch, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[(image, tokens, targets), ...] -> images (B, 3, H, W), tokens (B, T) padded with
    pad_id, targets (B, T) padded with -100 (T: the longest sequence in the batch)."""
    images, tokens, targets = zip(*batch)
    T = max(len(t) for t in tokens)
    tok = torch.full((len(batch), T), pad_id, dtype=torch.long)
    tgt = torch.full((len(batch), T), IGNORE, dtype=torch.long)
    for i, (t, g) in enumerate(zip(tokens, targets)):
        tok[i, : len(t)] = t
        tgt[i, : len(g)] = g
    return torch.stack(images), tok, tgt


@dataclass
class SceneExample:
    """The text side of one SceneCaptions item, for evaluation and display."""

    prompt: str  # "" for captions, else the question
    answer: str  # the caption or the answer
    kind: str  # "caption" or a QA kind ("colour", "shape", ...)
    seed: int  # the scene's seed


def choose_example(scene: Scene, task: str, caption_fraction: float = 0.5) -> SceneExample:
    """The caption or one question of `scene`, chosen deterministically from its seed.
    Questions: a kind at random among those the scene has, then one of that kind."""
    rng = np.random.default_rng([scene.seed, 2])
    if task == "caption" or not scene.qa or (task == "mixed" and rng.random() < caption_fraction):
        return SceneExample("", scene.caption, "caption", scene.seed)
    kinds = sorted({k for _, _, k in scene.qa})
    kind = kinds[rng.integers(len(kinds))]
    options = [(q, a) for q, a, k in scene.qa if k == kind]
    q, a = options[rng.integers(len(options))]
    return SceneExample(q, a, kind, scene.seed)


def _draw_scenes(job) -> tuple[np.ndarray, list[SceneExample], list[SceneExample]]:
    """Scenes start .. stop - 1 of a split: (pixels (n, H, W, 3) uint8, their examples,
    their captions as examples)."""
    split, start, stop, config, task, caption_fraction = job
    pixels = np.empty((stop - start, config.img_size, config.img_size, 3), np.uint8)
    examples, captions = [], []
    for k, index in enumerate(range(start, stop)):
        scene = make_scene(split, index, config)
        pixels[k] = scene.image
        examples.append(choose_example(scene, task, caption_fraction))
        captions.append(choose_example(scene, "caption"))
    return pixels, examples, captions


class SceneCaptions(Dataset):
    """Scenes `seed_offset` .. `seed_offset + num - 1` of a split as training items.

    task: "caption" (the canonical caption), "vqa" (one question per scene, its kind
    drawn uniformly among the scene's) or "mixed" (caption or question, half each).
    prerender=True draws every scene once at construction into one uint8 tensor
    (num * H * W * 3 bytes: 12 KB a scene at 64 px) so that training is not bound by
    drawing (`workers` > 0 processes share the drawing; the result is the same);
    prerender=False draws each item when it is read (for DataLoader workers).
    shuffle_text_seed: None, or a seed: item i then pairs its image with the text of item
    perm[i] of a seeded permutation (Adebayo et al.'s data randomisation: a model trained
    so learns the captions' language but nothing that ties them to the image).
    """

    def __init__(self, split: str, num: int, scene_config: SceneConfig | None = None,
                 tokenizer: Tokenizer | None = None, transform: ImageTransform | None = None,
                 task: str = "caption", seed_offset: int = 0, prerender: bool = True,
                 progress: bool = True, caption_fraction: float = 0.5,
                 max_tokens: int | None = None, workers: int = 0,
                 shuffle_text_seed: int | None = None) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if not isinstance(num, int) or num < 1:
            raise ValueError(f"num must be a positive integer, got {num!r}")
        self.split, self.num, self.task, self.seed_offset = split, num, task, seed_offset
        self.config = scene_config or SceneConfig()
        self.tokenizer = tokenizer or Tokenizer.for_scenes(self.config)
        self.transform = transform or ImageTransform(self.config.img_size)
        self.caption_fraction, self.max_tokens = caption_fraction, max_tokens
        make_scene(split, seed_offset + num - 1, self.config)  # bad split/range: fail now
        self.text_of = (torch.arange(num) if shuffle_text_seed is None else torch.randperm(
            num, generator=torch.Generator().manual_seed(shuffle_text_seed)))  # (num,)
        self.images: torch.Tensor | None = None  # (num, H, W, 3) uint8 once pre-rendered
        self.examples: list[SceneExample] | None = None
        self.captions: list[SceneExample] | None = None  # every scene's caption (caption_item)
        if prerender:
            self._prerender(progress, workers)

    def _prerender(self, progress: bool, workers: int) -> None:
        S = self.config.img_size
        images = torch.empty((self.num, S, S, 3), dtype=torch.uint8)
        examples: list[SceneExample] = []
        captions: list[SceneExample] = []
        step = 256  # scenes per job
        jobs = [(self.split, self.seed_offset + a, self.seed_offset + min(a + step, self.num),
                 self.config, self.task, self.caption_fraction)
                for a in range(0, self.num, step)]
        bar = tqdm(total=self.num, desc=f"drawing {self.split} scenes", unit="scene",
                   disable=None if progress else True)
        with bar, (multiprocessing.Pool(workers) if workers > 0 else nullcontext()) as pool:
            chunks = pool.imap(_draw_scenes, jobs) if pool else map(_draw_scenes, jobs)
            for pixels, exs, caps in chunks:  # in order: the result never depends on workers
                images[len(examples):len(examples) + len(exs)] = torch.from_numpy(pixels)
                examples += exs
                captions += caps
                bar.update(len(exs))
        self.images, self.examples, self.captions = images, examples, captions

    def __len__(self) -> int:
        return self.num

    def scene(self, i: int) -> Scene:
        """The full Scene (ground truth included) behind item i."""
        if not 0 <= i < self.num:
            raise IndexError(f"index {i} out of range for {self.num} scenes")
        return make_scene(self.split, self.seed_offset + i, self.config)

    def example(self, i: int) -> SceneExample:
        """The text of item i: prompt, answer, kind, seed."""
        j = int(self.text_of[i])
        if self.examples is not None:
            return self.examples[j]
        return choose_example(self.scene(j), self.task, self.caption_fraction)

    def caption_example(self, i: int) -> SceneExample:
        """The caption of item i's scene, whatever the task (TrainConfig.caption_steps)."""
        j = int(self.text_of[i])
        if self.captions is not None:
            return self.captions[j]
        return choose_example(self.scene(j), "caption")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._item(i, self.example(i))

    def caption_item(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Item i with its scene's caption as the text (image, tokens, targets)."""
        return self._item(i, self.caption_example(i))

    def _item(self, i: int, ex: SceneExample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.images is not None:
            pixels = self.images[i]
            image = (self.transform.normalize(pixels) if pixels.shape[0] ==
                     self.transform.img_size else self.transform(pixels.numpy()))
        else:
            image = self.transform(self.scene(i).image)
        tokens, targets = encode_example(self.tokenizer, ex.answer, ex.prompt or None,
                                         self.max_tokens)
        return image, tokens, targets

    @property
    def collate(self):
        """collate() with this dataset's pad id, for DataLoader(collate_fn=...)."""
        return functools.partial(collate, pad_id=self.tokenizer.pad_id)


def render_batch(split: str, indices, config: SceneConfig | None = None,
                 transform: ImageTransform | None = None) -> tuple[torch.Tensor, list[Scene]]:
    """Scenes `indices` of `split` -> (images (B, 3, H, W) float, the Scenes)."""
    config = config or SceneConfig()
    transform = transform or ImageTransform(config.img_size)
    scenes = [make_scene(split, int(i), config) for i in indices]
    return transform.batch(np.stack([s.image for s in scenes])), scenes
