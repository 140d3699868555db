"""Integrations of fastattn into other libraries, each an optional import:

- :mod:`fastattn.integrations.huggingface`: ``attn_implementation="fastattn"`` for Hugging Face
  transformers models, and swaps of their norm modules (needs ``pip install fastattn[hf]``).
"""
