"""Whether the kernels of a call run compiled for a GPU or through Triton's interpreter.

Every choice a launcher makes differently for the two (tile sizes, and the workarounds for the
interpreter's numpy arithmetic: bfloat16 outputs written in float32, ieee dots for bfloat16) asks
:func:`interpreted` and nothing else, so that the choices made for a GPU can also be made, and
compiled ahead of time, on a machine without one (bench/triton_aot.py).
"""

from __future__ import annotations

import torch


def interpreted(device: torch.device | str) -> bool:
    """True when kernels on tensors of ``device`` run through Triton's interpreter (CPU tensors)."""
    return torch.device(device).type != "cuda"
