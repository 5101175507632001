"""COCO-style caption datasets: the official annotation JSON and/or Karpathy's split file.

    tok = build_tokenizer_from_coco("annotations/captions_train2014.json", min_count=5)
    ds = CocoCaptions("annotations/captions_train2014.json", "train2014", tok,
                      ImageTransform(224))
    ds = CocoCaptions(None, "coco", tok, tf, split=("train", "restval"),
                      karpathy_json="dataset_coco.json")   # the usual 113k training images

One item per caption: (image (3, S, S) float, tokens (T,), targets (T,)) exactly as
SceneCaptions gives for captions.

Files read:
    annotation JSON  {"images": [{"id", "file_name"}, ...],
                      "annotations": [{"image_id", "caption"}, ...]}
    Karpathy JSON    {"images": [{"filename", "filepath"?, "cocoid"?,
                                  "split": "train" | "val" | "test" | "restval",
                                  "sentences": [{"raw"}, ...]}, ...]}
With only a Karpathy file, images, splits and captions all come from it. With both, the
Karpathy file chooses the images (by file name) of `split` and the captions come from the
annotation JSON. An image is looked for at image_dir / filepath / file_name, then at
image_dir / file_name.

Damage is reported, never guessed around: malformed JSON, a malformed entry, or a
missing image file raises ValueError / FileNotFoundError naming the file and the entry.
With skip_bad=True bad entries are skipped instead and counted (`num_skipped`, reasons in
`skipped`). Files that exist but do not decode are found when read, or at construction
with verify_images=True (which decodes every image once: slow for a big folder).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .datasets import collate, encode_example
from .tokenizer import Tokenizer
from .transforms import ImageTransform, open_image

KARPATHY_SPLITS = ("train", "val", "test", "restval")


@dataclass
class CocoRecord:
    """One caption of one image, before its file is looked for."""

    image_id: int | str
    file_name: str
    filepath: str  # sub-folder from the Karpathy file, "" if none
    caption: str
    where: str  # e.g. "captions.json, annotations[12] (image id 42)": for error messages


@dataclass
class CocoSample:
    path: Path
    caption: str
    image_id: int | str


def read_json(path: str | os.PathLike) -> object:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file {path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-download or fix the file") from e


class _Reporter:
    """Raises on a bad entry, or records and skips it when skip_bad."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad, self.skipped = skip_bad, []

    def bad(self, message: str, error=ValueError) -> None:
        if not self.skip_bad:
            raise error(message + " (pass skip_bad=True to skip bad entries)")
        self.skipped.append(message)


def _list_field(path: Path, data: object, key: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path}: expected a JSON object with a list {key!r}; is this a "
                         "COCO captions file?")
    return data[key]


def _annotation_records(path: Path, report: _Reporter) -> list[CocoRecord]:
    data = read_json(path)
    files: dict = {}
    for i, entry in enumerate(_list_field(path, data, "images")):
        ok = isinstance(entry, dict) and isinstance(entry.get("id"), (int, str)) \
            and isinstance(entry.get("file_name"), str) and entry["file_name"]
        if not ok:
            report.bad(f"{path}: images[{i}] needs an 'id' and a 'file_name', got {entry!r:.200}")
        elif entry["id"] in files:
            report.bad(f"{path}: images[{i}] repeats image id {entry['id']!r}")
        else:
            files[entry["id"]] = entry["file_name"]
    records = []
    for i, ann in enumerate(_list_field(path, data, "annotations")):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        where = f"{path}, annotations[{i}] (image id {image_id!r})"
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) \
                or not ann["caption"].strip():
            report.bad(f"{where}: needs a non-empty 'caption' string, got {ann!r:.200}")
        elif image_id not in files:
            report.bad(f"{where}: image id not found in 'images'")
        else:
            records.append(CocoRecord(image_id, files[image_id], "", ann["caption"], where))
    return records


def _karpathy_records(path: Path, report: _Reporter, splits: set[str] | None) -> list[CocoRecord]:
    records = []
    for i, entry in enumerate(_list_field(path, read_json(path), "images")):
        name = entry.get("filename") if isinstance(entry, dict) else None
        where = f"{path}, images[{i}] ({name!r})"
        sentences = entry.get("sentences") if isinstance(entry, dict) else None
        ok = isinstance(name, str) and name and entry.get("split") in KARPATHY_SPLITS \
            and isinstance(entry.get("filepath", ""), str) and isinstance(sentences, list) \
            and all(isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences)
        if not ok:
            report.bad(f"{where}: needs 'filename', 'split' in {KARPATHY_SPLITS} and "
                       f"'sentences' [{{'raw': ...}}], got {entry!r:.200}")
            continue
        if splits is not None and entry["split"] not in splits:
            continue
        image_id = entry.get("cocoid", entry.get("imgid", i))
        for s in sentences:
            if s["raw"].strip():
                records.append(CocoRecord(image_id, name, entry.get("filepath", ""),
                                          s["raw"], where))
    return records


def _splits(split: str | Sequence[str] | None) -> set[str] | None:
    if split is None:
        return None
    names = {split} if isinstance(split, str) else set(split)
    unknown = sorted(names - set(KARPATHY_SPLITS))
    if unknown or not names:
        raise ValueError(f"split names must be among {KARPATHY_SPLITS}, got {split!r}")
    return names


def read_coco_records(annotation_json=None, karpathy_json=None,
                      split: str | Sequence[str] | None = None,
                      skip_bad: bool = False) -> tuple[list[CocoRecord], list[str]]:
    """The captions of the chosen images (see the module docstring) and the reasons of
    any skipped entries."""
    if annotation_json is None and karpathy_json is None:
        raise ValueError("give annotation_json, karpathy_json, or both")
    if split is not None and karpathy_json is None:
        raise ValueError(f"split={split!r} needs karpathy_json (the official annotation "
                         "files are already one split each: load the one you want)")
    report = _Reporter(skip_bad)
    splits = _splits(split)
    kp = _karpathy_records(Path(karpathy_json), report, splits) if karpathy_json else None
    if annotation_json is None:
        return kp, report.skipped
    records = _annotation_records(Path(annotation_json), report)
    if kp is not None:
        folders = {os.path.basename(r.file_name): r.filepath for r in kp}
        records = [r for r in records if os.path.basename(r.file_name) in folders]
        for r in records:
            r.filepath = folders[os.path.basename(r.file_name)]
    return records, report.skipped


def build_tokenizer_from_coco(annotation_json=None, karpathy_json=None,
                              split: str | Sequence[str] | None = None, min_count: int = 5,
                              max_size: int | None = None) -> Tokenizer:
    """A Tokenizer over the captions of a COCO annotation and/or Karpathy file; words seen
    fewer than `min_count` times become <unk> (5 is the usual choice for COCO)."""
    records, _ = read_coco_records(annotation_json, karpathy_json, split)
    return Tokenizer.build((r.caption for r in records), min_count=min_count, max_size=max_size)


class CocoCaptions(Dataset):
    """One item per (image, caption) pair of a COCO-format dataset (module docstring)."""

    def __init__(self, annotation_json, image_dir, tokenizer: Tokenizer,
                 transform: ImageTransform, split: str | Sequence[str] | None = None,
                 karpathy_json=None, skip_bad: bool = False, max_tokens: int | None = None,
                 verify_images: bool = False) -> None:
        self.image_dir, self.tokenizer, self.transform = Path(image_dir), tokenizer, transform
        self.max_tokens = max_tokens
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.image_dir} not found")
        records, skipped = read_coco_records(annotation_json, karpathy_json, split, skip_bad)
        report = _Reporter(skip_bad)
        report.skipped = skipped
        found: dict[tuple[str, str], Path | None] = {}
        self.samples: list[CocoSample] = []
        for r in records:
            key = (r.filepath, r.file_name)
            if key not in found:
                found[key] = self._find(r, report, verify_images)
            if found[key] is not None:
                self.samples.append(CocoSample(found[key], r.caption, r.image_id))
        self.skipped: list[str] = report.skipped
        if not self.samples:
            raise ValueError(f"no usable (image, caption) pairs in {annotation_json or ''} "
                             f"{karpathy_json or ''} for split={split!r}"
                             + (f"; {len(self.skipped)} entries were skipped, the first: "
                                f"{self.skipped[0]}" if self.skipped else ""))

    def _find(self, r: CocoRecord, report: _Reporter, verify: bool) -> Path | None:
        candidates = [self.image_dir / r.filepath / r.file_name, self.image_dir / r.file_name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            report.bad(f"image file {candidates[0]} not found ({r.where})", FileNotFoundError)
            return None
        if verify:
            try:
                open_image(path)
            except ValueError as e:
                report.bad(f"{e} ({r.where})")
                return None
        return path

    @property
    def num_skipped(self) -> int:
        """Bad entries skipped (skip_bad=True): a missing image file counts once."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.samples[i]
        try:
            image = self.transform(s.path)
        except ValueError as e:
            raise ValueError(f"{e} (image id {s.image_id!r}, item {i})") from e
        tokens, targets = encode_example(self.tokenizer, s.caption, None, self.max_tokens)
        return image, tokens, targets

    @property
    def collate(self):
        """collate() with this dataset's pad id, for DataLoader(collate_fn=...)."""
        return functools.partial(collate, pad_id=self.tokenizer.pad_id)
