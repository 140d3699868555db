"""How every kernel of fastattn, Triton and CUDA alike, reads a tensor: through its strides, each row
(the last dimension) one contiguous run, so that a transposed (B, N, H, D) view costs no copy.

Imports no Triton, so that the op layer's CUDA path can use it too.
"""

from torch import Tensor


def last_dim_contiguous(t: Tensor) -> Tensor:
    """``t`` itself when its last dimension is contiguous (or has at most one element), else a
    contiguous copy."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()
