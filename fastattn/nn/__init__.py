"""Modules (``fastattn.nn``): drop-in replacements for ``torch.nn`` modules, calling the fused ops."""

from .attention import MultiheadAttention
from .norm import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "MultiheadAttention", "RMSNorm"]
