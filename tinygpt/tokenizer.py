"""Character-level tokenizer built from the training corpus and saved with the model (`tokenizer.json`)."""

from __future__ import annotations

import json
from pathlib import Path


class CharTokenizer:
    """Maps each distinct character of the corpus to an id (sorted by code point, so it is deterministic).

    Characters unseen in the corpus cannot be encoded; `encode` raises a ValueError naming them, and callers
    decide whether that is a user error (inference answers 400) or a bug.
    """

    def __init__(self, chars: list[str]) -> None:
        if not chars:
            raise ValueError("a tokenizer needs at least one character")
        if len(set(chars)) != len(chars):
            raise ValueError("tokenizer characters must be distinct")
        self.chars = list(chars)
        self._stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown_chars(self, text: str) -> list[str]:
        """The distinct characters of `text` this tokenizer cannot encode, in order of appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self._stoi))

    def encode(self, text: str) -> list[int]:
        try:
            return [self._stoi[ch] for ch in text]
        except KeyError:
            unknown = "".join(self.unknown_chars(text))
            raise ValueError(f"characters not in the vocabulary: {unknown!r}") from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        data = json.loads(text)
        if data.get("type") != "char":
            raise ValueError(f"unsupported tokenizer type {data.get('type')!r}; expected 'char'")
        return cls(data["chars"])

    def save(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> CharTokenizer:
        return cls.from_json(path.read_text(encoding="utf-8"))
