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


class _Fused:
    """What fastattn's norm modules add to torch's: a ``backend`` and a forward through the fused op,
    with an optional residual (``_normalize`` is the op, with the module's parameters)."""

    def forward(self, x: Tensor, residual: Tensor | None = None, *, residual_in_fp32: bool = False):
        return self._normalize(x, residual=residual, residual_in_fp32=residual_in_fp32, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


class LayerNorm(_Fused, torch.nn.LayerNorm):
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

    @classmethod
    def configured_like(cls, module: torch.nn.LayerNorm, **options) -> LayerNorm:
        """A new module with ``module``'s configuration and fresh parameters; ``options``: the other
        constructor arguments (``device``, ``dtype``, ``backend``)."""
        affine, bias = module.elementwise_affine, module.bias is not None
        return cls(module.normalized_shape, module.eps, affine, bias, **options)

    def _normalize(self, x: Tensor, **options):
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, **options)


class RMSNorm(_Fused, torch.nn.RMSNorm):
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

    @classmethod
    def configured_like(cls, module: torch.nn.RMSNorm, **options) -> RMSNorm:
        """A new module with ``module``'s configuration and fresh parameters; ``options``: the other
        constructor arguments (``device``, ``dtype``, ``backend``)."""
        return cls(module.normalized_shape, module.eps, module.elementwise_affine, **options)

    def _normalize(self, x: Tensor, **options):
        return rms_norm(x, self.normalized_shape, self.weight, self.eps, **options)
