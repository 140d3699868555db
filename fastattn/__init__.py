"""fastattn: fused Triton and CUDA kernels for attention, LayerNorm/RMSNorm and sampling.

    import fastattn
    out = fastattn.attention(q, k, v, causal=True)          # (B, H, N, D), FlashAttention-style

See ``fastattn.backends`` for how a backend is chosen, and ``python -m fastattn --help``.
"""

from . import backends, nn, reference
from .backends import available_backends, use_backend
from .ops.attention import attention, attention_varlen, scaled_dot_product_attention
from .ops.norm import layer_norm, rms_norm
from .ops.sampling import sample
from .patch import patch, patch_sdpa

__version__ = "0.1.0"

__all__ = [
    "attention",
    "attention_varlen",
    "available_backends",
    "backends",
    "layer_norm",
    "nn",
    "patch",
    "patch_sdpa",
    "reference",
    "rms_norm",
    "sample",
    "scaled_dot_product_attention",
    "use_backend",
]
