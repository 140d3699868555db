"""Small data sets shipped with the package (no downloads), and their loaders.

- :func:`tiny_shakespeare`: about 1.1 MB of Shakespeare's plays as one string (char-level language
  modelling), with :class:`CharTokenizer`;
- :func:`load_digits`: the 1797 8×8 handwritten digits of scikit-learn, as uint8 images in 0..16;
- :func:`number_to_words` and :class:`NumberTranslation`: a generated translation task, numerals to
  English words (``"1234"`` → ``"one thousand two hundred thirty four"``).

Origins and licences: ``fastattn/data/README.md``.
"""

from .digits import load_digits
from .number_words import NumberTranslation, number_to_words
from .text import CharTokenizer, tiny_shakespeare

__all__ = ["CharTokenizer", "NumberTranslation", "load_digits", "number_to_words", "tiny_shakespeare"]
