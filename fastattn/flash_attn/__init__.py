"""FlashAttention-2's Python API on fastattn: code written for ``flash_attn`` runs by changing its import.

    import fastattn.flash_attn as flash_attn
    from fastattn.flash_attn import flash_attn_func, flash_attn_varlen_func
    from fastattn.flash_attn.bert_padding import pad_input, unpad_input

The functions take FlashAttention-2's arguments, defaults and ``(batch, seqlen, heads, head_dim)``
layout and return what it returns, on any device and backend (see ``flash_attn_interface`` for where
they differ and why).
"""

from .flash_attn_interface import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)

__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
]
