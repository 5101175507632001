"""A word-level tokenizer: small vocabularies for captions and questions.

    tok = Tokenizer.for_scenes()                  # the scene world's whole vocabulary
    tok.encode("What colour is it?")              # [1, ..., 2]: <bos> what colour is it ? <eos>
    tok.decode(tok.encode("What colour is it?"))  # "what colour is it ?"

Text is lowercased and split into words and punctuation marks, each mark its own token;
a word may hold inner apostrophes or hyphens ("man's", "t-shirt"). decode joins tokens with
single spaces, so decode(encode(t)) == Tokenizer.normalize(t) whenever every word of t is
in the vocabulary (others become <unk>).

The special ids match VLMConfig's defaults: <pad>=0, <bos>=1, <eos>=2, plus <unk>=3.
"""

from __future__ import annotations

import json
import operator
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..training.checkpoint import atomic_write
from .scenes import scene_vocabulary

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
FORMAT = "ssm-bridge-tokenizer"
_TOKEN = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*|[^\w\s]|_")  # word, or one punctuation mark


class Tokenizer:
    """Word-level tokenizer over a fixed vocabulary; ids 0-3 are SPECIALS."""

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def __init__(self, words: Iterable[str]) -> None:
        """words: the vocabulary without the specials, in id order (ids start at 4)."""
        words = list(words)
        bad = [w for w in words if not isinstance(w, str) or not w or w != w.strip()
               or any(c.isspace() for c in w)]
        if bad:
            raise ValueError(f"vocabulary words must be non-empty strings without spaces, "
                             f"got {bad[:5]}")
        dupes = sorted({w for w, n in Counter(words).items() if n > 1} | set(SPECIALS) & set(words))
        if dupes:
            raise ValueError(f"vocabulary words must be distinct and not specials {SPECIALS}; "
                             f"repeated: {dupes[:5]}")
        self.itos: list[str] = [*SPECIALS, *words]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    # ---- building ----
    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1,
              max_size: int | None = None) -> Tokenizer:
        """Vocabulary of the words in `texts` seen at least `min_count` times, most frequent
        first (ties alphabetical, so the result is deterministic), at most `max_size` ids
        in all (specials included)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < len(SPECIALS):
            raise ValueError(f"max_size must be >= {len(SPECIALS)} (the specials), got {max_size}")
        counts = Counter(w for t in texts for w in cls.tokenize(t))
        words = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(SPECIALS)]
        return cls(words)

    @classmethod
    def for_scenes(cls, config=None) -> Tokenizer:
        """Every word the scene generator can write for `config` (a SceneConfig), sorted."""
        return cls(scene_vocabulary(config))

    # ---- text <-> ids ----
    @staticmethod
    def tokenize(text: str) -> list[str]:
        """'What colour is it?' -> ['what', 'colour', 'is', 'it', '?']."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return _TOKEN.findall(text.lower())

    @classmethod
    def normalize(cls, text: str) -> str:
        """The text decode(encode(text)) gives back: tokens joined by single spaces."""
        return " ".join(cls.tokenize(text))

    def encode(self, text: str, bos: bool = True, eos: bool = True) -> list[int]:
        ids = [self.stoi.get(w, UNK_ID) for w in self.tokenize(text)]
        return [BOS_ID] * bos + ids + [EOS_ID] * eos

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """ids (a list or a 1-D tensor) -> text. skip_special drops <pad>, <bos> and <eos>
        (not <unk>, which marks a word the vocabulary lacks)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        out = []
        for i in ids:
            try:
                i = operator.index(i)  # ints, numpy ints, 0-d integer tensors
            except TypeError:
                raise ValueError(f"token ids must be integers, got {i!r}") from None
            if not 0 <= i < len(self.itos):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self)})")
            if skip_special and i in (PAD_ID, BOS_ID, EOS_ID):
                continue
            out.append(self.itos[i])
        return " ".join(out)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Tokenizer({len(self)} ids: {' '.join(self.itos[4:12])}{' ...' * (len(self) > 12)})"

    # ---- files ----
    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON (atomically: never a half-written file)."""
        path = Path(path)
        meta = {"format": FORMAT, "version": 1, "vocab": self.itos}
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} not found; write one with "
                                    "Tokenizer.save(path)")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e}); re-save the tokenizer") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tokenizer file (expected a JSON object with "
                             f"format={FORMAT!r}, written by Tokenizer.save)")
        vocab = meta.get("vocab")
        if not isinstance(vocab, list) or tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"{path}: 'vocab' must be a list of words starting with "
                             f"{list(SPECIALS)}; the file is damaged, re-save the tokenizer")
        try:
            return cls(vocab[len(SPECIALS):])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
