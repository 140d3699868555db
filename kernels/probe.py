"""A tiny kernel that shows whether Triton works here at all.

``fastattn.backends`` runs :func:`copy` once per process before it offers the triton backend: a Triton
that imports but cannot compile or launch (a broken install, a toolchain that does not match the GPU)
is then reported with its error and passed over, instead of failing every op on its first call.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

PROBE_BLOCK = 16  # the smallest block every backend compiles


@triton.jit
def _copy_kernel(
    src,  # (n,) input
    dst,  # (n,) output
    n,  # elements
    BLOCK: tl.constexpr,  # elements per program
):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offsets, tl.load(src + offsets, mask=offsets < n), mask=offsets < n)


def copy(x: Tensor) -> Tensor:
    """A copy of the contiguous 1-d ``x``, made by a Triton kernel."""
    out = x.new_empty(x.shape)
    _copy_kernel[(triton.cdiv(x.numel(), PROBE_BLOCK),)](x, out, x.numel(), BLOCK=PROBE_BLOCK)
    return out
