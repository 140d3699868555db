"""fastattn: fused Triton and CUDA kernels for attention, LayerNorm/RMSNorm and sampling.

    import fastattn
    out = fastattn.attention(q, k, v, causal=True)          # (B, H, N, D), FlashAttention-style

See ``fastattn.backends`` for how a backend is chosen, and ``python -m fastattn --help``.
"""

from . import backends, reference
from .backends import available_backends, use_backend
from .ops.attention import attention, scaled_dot_product_attention

__version__ = "0.1.0"

__all__ = [
    "attention",
    "available_backends",
    "backends",
    "reference",
    "scaled_dot_product_attention",
    "use_backend",
]
