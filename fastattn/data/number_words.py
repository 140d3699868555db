"""A generated translation task: numerals to English words.

``number_to_words(1234) == "one thousand two hundred thirty four"``: American short scale, no "and",
no hyphens, so that every word is one token of the target vocabulary (:data:`WORDS`).
"""

from __future__ import annotations

import torch
from torch import Tensor

ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
SCALES = [(10**9, "billion"), (10**6, "million"), (10**3, "thousand")]
WORDS = ONES + TENS[2:] + ["hundred"] + [name for _, name in reversed(SCALES)]
LIMIT = 10**12  # number_to_words covers 0 <= n < LIMIT


def _below_thousand(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(TENS[n // 10])
        n %= 10
    if n:
        words.append(ONES[n])
    return words


def number_to_words(n: int) -> str:
    """English words for ``0 <= n < 10**12``: 15 → "fifteen", 100 → "one hundred",
    1000000 → "one million", 1234 → "one thousand two hundred thirty four"."""
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < LIMIT:
        raise ValueError(f"number_to_words takes an integer in [0, {LIMIT}), got {n!r}")
    if n == 0:
        return "zero"
    words = []
    for value, name in SCALES:
        if n >= value:
            words += _below_thousand(n // value) + [name]
            n %= value
    return " ".join(words + _below_thousand(n))


class NumberTranslation:
    """Pairs (numeral, words) for ``0 <= n < max_number``, as padded id tensors.

    Source tokens are the characters ``0``–``9``; target tokens are the words of :data:`WORDS`. Both
    vocabularies start with ``[PAD]=0, [BOS]=1, [EOS]=2``. Numbers are drawn with a uniform number of
    digits (then uniform within it), so short numbers are as common as long ones. A fixed held-out
    set of ``num_test`` numbers of at least :data:`MIN_TEST_DIGITS` digits (drawn with ``seed``) is never
    drawn for training; the 100 numbers below 100 are too few to hold any out.
    """

    PAD, BOS, EOS = 0, 1, 2
    SPECIALS = ["[PAD]", "[BOS]", "[EOS]"]
    MIN_TEST_DIGITS = 3

    def __init__(self, max_number: int = 10**6, num_test: int = 1000, seed: int = 0) -> None:
        if not 10 <= max_number <= LIMIT:
            raise ValueError(f"max_number must be in [10, {LIMIT}], got {max_number}")
        self.max_number = max_number
        self.source_vocab = self.SPECIALS + [str(d) for d in range(10)]
        self.target_vocab = self.SPECIALS + WORDS
        self.source_index = {token: i for i, token in enumerate(self.source_vocab)}
        self.target_index = {token: i for i, token in enumerate(self.target_vocab)}
        self.max_source_len = len(str(max_number - 1))
        groups = -(-self.max_source_len // 3)  # groups of three digits; each says at most 4 words + its scale
        self.max_target_len = 5 * groups - 1 + 2  # + [BOS] and [EOS]
        generator = torch.Generator().manual_seed(seed)
        self.test_numbers = self._draw(num_test, generator, exclude=set(), min_digits=self.MIN_TEST_DIGITS, unique=True)
        self._test_set = set(self.test_numbers)

    def _draw(
        self,
        count: int,
        generator: torch.Generator,
        exclude: set[int],
        min_digits: int = 1,
        unique: bool = False,
    ) -> list[int]:
        numbers, drawn = [], set()
        max_digits = len(str(self.max_number - 1))
        while len(numbers) < count:
            digits = int(torch.randint(min(min_digits, max_digits), max_digits + 1, (), generator=generator))
            low, high = (0 if digits == 1 else 10 ** (digits - 1)), min(10**digits, self.max_number)
            n = int(torch.randint(low, high, (), generator=generator))
            if n not in exclude and not (unique and n in drawn):
                numbers.append(n)
                drawn.add(n)
        return numbers

    def encode_source(self, numbers: list[int]) -> Tensor:
        """int64 ``(B, max_source_len)``: the digits, right-padded with [PAD]."""
        rows = [[self.source_index[c] for c in str(n)] for n in numbers]
        return self._pad(rows, self.max_source_len)

    def encode_target(self, numbers: list[int]) -> Tensor:
        """int64 ``(B, max_target_len)``: [BOS] words [EOS], right-padded with [PAD]."""
        rows = [[self.BOS] + [self.target_index[w] for w in number_to_words(n).split()] + [self.EOS] for n in numbers]
        return self._pad(rows, self.max_target_len)

    def decode_target(self, ids) -> str:
        """Words of ``ids`` up to the first [EOS], skipping [BOS] and [PAD]."""
        words = []
        for index in (int(i) for i in ids):
            if index == self.EOS:
                break
            if index not in (self.PAD, self.BOS):
                words.append(self.target_vocab[index])
        return " ".join(words)

    def _pad(self, rows: list[list[int]], length: int) -> Tensor:
        out = torch.full((len(rows), length), self.PAD, dtype=torch.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        return out

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[list[int], Tensor, Tensor]:
        """``(numbers, source, target)`` of ``batch_size`` numbers outside the held-out set."""
        numbers = self._draw(batch_size, generator, exclude=self._test_set)
        return numbers, self.encode_source(numbers), self.encode_target(numbers)
