"""The old name of :mod:`fastattn.models.decoding` (it shared its name with the models' ``generate``
method): importing it warns, and gives that module's names."""

import warnings

from .decoding import KVCache, decode_one_token, generate, make_caches, prefill, sequence_seeds

__all__ = ["KVCache", "decode_one_token", "generate", "make_caches", "prefill", "sequence_seeds"]

warnings.warn("fastattn.models.generate is now fastattn.models.decoding", DeprecationWarning, stacklevel=2)
