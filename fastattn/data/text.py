"""Tiny Shakespeare and a character-level tokenizer."""

from __future__ import annotations

from importlib import resources

import torch
from torch import Tensor


def tiny_shakespeare() -> str:
    """The tiny Shakespeare corpus (1,115,394 characters, 65 distinct ones) as one string."""
    return resources.files(__package__).joinpath("tinyshakespeare.txt").read_text(encoding="utf-8")


class CharTokenizer:
    """Maps characters to ids and back: special tokens first (in the order given), then the sorted
    characters of ``text``.

    >>> tokenizer = CharTokenizer("abca", specials=["[PAD]"])
    >>> tokenizer.encode("cab").tolist()
    [3, 1, 2]
    """

    def __init__(self, text: str, specials: list[str] | tuple[str, ...] = ()) -> None:
        self.specials = list(specials)
        self.chars = sorted(set(text))
        self.itos = self.specials + self.chars
        self.stoi = {token: index for index, token in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> Tensor:
        """int64 ids ``(len(text),)``; raises ``KeyError`` for a character outside the vocabulary."""
        return torch.tensor([self.stoi[char] for char in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        """The characters of ``ids`` (a tensor or a list of ints) joined; special tokens are written out."""
        return "".join(self.itos[int(index)] for index in ids)
