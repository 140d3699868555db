"""``LayerNorm`` and ``RMSNorm`` modules: ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm`` with the fused
kernels behind them and a fused residual add.

They subclass torch's modules, so the constructor arguments, parameters, ``state_dict`` keys,
``reset_parameters`` and ``repr`` are torch's own: a state dict saved from one loads into the other.
The one extra constructor argument, ``backend``, comes after torch's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import backends
from ..ops.norm import layer_norm, rms_norm


class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` on :func:`fastattn.layer_norm`.

    ``forward(x)`` returns ``y``; ``forward(x, residual)`` computes ``s = x + residual`` and returns
    ``(y, s)`` with ``y = LayerNorm(s)`` in one pass (``residual_in_fp32=True``: ``s`` in float32).
    """

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
        backend: str = "auto",
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        self.backend = backends.parse(backend)

    def forward(self, x: Tensor, residual: Tensor | None = None, *, residual_in_fp32: bool = False):
        return layer_norm(
            x,
            self.normalized_shape,
            self.weight,
            self.bias,
            self.eps,
            residual=residual,
            residual_in_fp32=residual_in_fp32,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


class RMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` on :func:`fastattn.rms_norm` (``eps=None``: ``torch.finfo(x.dtype).eps``).

    ``forward(x)`` returns ``y``; ``forward(x, residual)`` computes ``s = x + residual`` and returns
    ``(y, s)`` with ``y = RMSNorm(s)`` in one pass (``residual_in_fp32=True``: ``s`` in float32).
    """

    def __init__(
        self,
        normalized_shape,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
        backend: str = "auto",
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, device, dtype)
        self.backend = backends.parse(backend)

    def forward(self, x: Tensor, residual: Tensor | None = None, *, residual_in_fp32: bool = False):
        return rms_norm(
            x,
            self.normalized_shape,
            self.weight,
            self.eps,
            residual=residual,
            residual_in_fp32=residual_in_fp32,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"
