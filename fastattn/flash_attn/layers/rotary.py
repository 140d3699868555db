"""FlashAttention-2's ``flash_attn.layers.rotary.apply_rotary_emb`` (see :mod:`fastattn.ops.rotary`)."""

from ...ops.rotary import apply_rotary_emb

__all__ = ["apply_rotary_emb"]
