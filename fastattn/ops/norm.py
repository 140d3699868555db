"""LayerNorm and RMSNorm with a fused residual add: input checks, backend choice, the custom ops of the
fused kernels, and their autograd.

Layers (DESIGN.md §2): ``fastattn.layer_norm`` / ``fastattn.rms_norm`` check the inputs once and pick
the backend once; the Triton backend is a pair of ``torch.library`` custom ops (with fake
implementations, so ``torch.compile`` can trace them) whose backward is registered with
``register_autograd``; the ``torch`` and ``naive`` backends are plain PyTorch, differentiated by
autograd itself.

The fused ops see the normalized dimensions flattened into one (``(..., N)``, a view when the strides
allow) and the weight and bias as ``(N,)``; reshaping back is autograd's business.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends, capabilities, reference
from ..backends import Backend
from ..kernels.layout import last_dim_contiguous  # plain torch: imports no Triton
from . import refuse_double_backward


# ------------------------------------------------------------------------------------ input checks
def _normalized_shape(op: str, normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
        return (normalized_shape,)
    if isinstance(normalized_shape, (Sequence, torch.Size)) and not isinstance(normalized_shape, str):
        shape = tuple(normalized_shape)
        if all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape):
            if not shape:
                raise ValueError(f"{op}: normalized_shape must have at least one dimension, got ()")
            return shape
    raise TypeError(
        f"{op}: normalized_shape must be an int or a sequence of non-negative ints, got {normalized_shape!r}"
    )


def _check_operand(op, name, tensor, expected, device) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {tensor.dtype}")
    if tensor.shape != expected:
        raise ValueError(f"{op}: {name} must have shape {list(expected)}, got {list(tensor.shape)}")
    if tensor.device != device:
        raise ValueError(f"{op}: {name} must be on x's device {device}, got {tensor.device}")


def _check_inputs(op, x, normalized_shape, weight, bias, residual, eps, residual_in_fp32) -> tuple[int, ...]:
    """Raises a clear exception for inputs no backend could serve correctly; returns the
    normalized shape as a tuple."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating-point tensor, got {x.dtype}")
    shape = _normalized_shape(op, normalized_shape)
    if x.shape[x.dim() - len(shape) :] != shape or x.dim() < len(shape):
        raise ValueError(
            f"{op}: the trailing dimensions of x must equal normalized_shape {list(shape)}, "
            f"got x of shape {list(x.shape)}"
        )
    for name, tensor, expected in (("weight", weight, shape), ("bias", bias, shape), ("residual", residual, x.shape)):
        if tensor is not None:
            _check_operand(op, name, tensor, expected, x.device)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{op}: eps must be a number, got {type(eps).__name__}")
    if not math.isfinite(eps):
        raise ValueError(f"{op}: eps must be a finite number, got {eps!r}")
    if not isinstance(residual_in_fp32, bool):
        raise TypeError(f"{op}: residual_in_fp32 must be a bool, got {residual_in_fp32!r}")
    return shape


def _backend_reasons(name, x, shape, weight, bias, residual) -> list[str]:
    """Why backend ``name`` cannot serve this norm call (empty: it can)."""
    reasons = backends.device_reasons(name, x.device)
    operands = (("x", x), ("weight", weight), ("bias", bias), ("residual", residual))
    reasons += capabilities.reasons(
        "norm", name, dtypes=[(label, tensor.dtype) for label, tensor in operands if tensor is not None]
    )
    if name in backends.FUSED and math.prod(shape) == 0:
        reasons.append("normalized_shape has no elements")
    return reasons


# --------------------------------------------------------------------------- the Triton custom ops
# Both fused backends share one schema per op.
# The forward: x, residual (..., N); weight, bias (N,). Returns (y, s, mean, rstd); s is empty without a
# residual, mean is empty for RMSNorm (see ``fastattn.kernels.norm.norm_fwd``).
_FORWARD_SCHEMA = (
    "(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps, bool rms, bool residual_in_fp32) "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)
# The backward returns (dx, dresidual, dw, db); dresidual is empty unless the residual's dtype differs
# from x's (it equals dx), dw/db are empty without weight/bias.
_BACKWARD_SCHEMA = (
    "(Tensor dy, Tensor? ds, Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, Tensor mean, "
    "Tensor rstd, bool rms) -> (Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("fastattn::norm_fwd_triton", mutates_args=(), schema=_FORWARD_SCHEMA)
def _norm_fwd_triton(x, residual, weight, bias, eps, rms, residual_in_fp32):
    from ..kernels import norm as kernels  # imported on first use: triton reads TRITON_INTERPRET then

    return kernels.norm_fwd(x, residual, weight, bias, eps, rms=rms, residual_in_fp32=residual_in_fp32)


@torch.library.custom_op("fastattn::norm_bwd_triton", mutates_args=(), schema=_BACKWARD_SCHEMA)
def _norm_bwd_triton(dy, ds, x, residual, weight, bias, mean, rstd, rms):
    from ..kernels import norm as kernels

    return kernels.norm_bwd(dy, ds, x, residual, weight, bias, mean, rstd, rms=rms)


def _norm_setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, rms, residual_in_fp32 = inputs
    _, _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    # The backward recomputes s = x + residual in float32 (exactly the forward's unrounded sum).
    ctx.save_for_backward(x, residual, weight, bias, mean, rstd)
    ctx.rms = rms
    # Unused outputs (s, often) then get None instead of a tensor of zeros.
    ctx.set_materialize_grads(False)


# ------------------------------------------------ fakes and autograd, shared by the two fused backends
def _norm_fwd_fake(x, residual, weight, bias, eps, rms, residual_in_fp32):
    y = x.new_empty(x.shape)
    s = x.new_empty((0,))
    if residual is not None:
        s = x.new_empty(x.shape, dtype=reference.residual_dtype(x.dtype, residual_in_fp32))
    mean = x.new_empty((0,) if rms else x.shape[:-1], dtype=torch.float32)
    rstd = x.new_empty(x.shape[:-1], dtype=torch.float32)
    return y, s, mean, rstd


def _norm_bwd_fake(dy, ds, x, residual, weight, bias, mean, rstd, rms):
    separate = residual is not None and residual.dtype != x.dtype
    dx = x.new_empty(x.shape)
    dr = residual.new_empty(residual.shape) if separate else x.new_empty((0,))
    dw = weight.new_empty(weight.shape) if weight is not None else x.new_empty((0,))
    db = bias.new_empty(bias.shape) if bias is not None else x.new_empty((0,))
    return dx, dr, dw, db


def _register_fakes_and_autograd(forward, backward) -> None:
    """The fake implementations of a backend's forward and backward ops, and the forward's autograd
    formula calling that backend's backward op."""
    forward.register_fake(_norm_fwd_fake)
    backward.register_fake(_norm_bwd_fake)

    def norm_backward(ctx, dy, ds, dmean, drstd):
        x, residual, weight, bias, mean, rstd = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(x)
        dx, dresidual, dw, db = backward(
            dy, ds if residual is not None else None, x, residual, weight, bias, mean, rstd, ctx.rms
        )
        if residual is None:
            dresidual = None
        elif residual.dtype == x.dtype:
            dresidual = dx  # the same values in the same dtype: one tensor for both
        return (
            dx,
            dresidual,
            dw if weight is not None else None,
            db if bias is not None else None,
            None,
            None,
            None,
        )

    forward.register_autograd(norm_backward, setup_context=_norm_setup_context)
    refuse_double_backward(backward, "layer_norm / rms_norm")


_register_fakes_and_autograd(_norm_fwd_triton, _norm_bwd_triton)


# ----------------------------------------------------------------------------- the CUDA custom ops
def _cuda_rows(t: Tensor | None, n: int) -> Tensor | None:
    """``t`` as (rows, n) with a contiguous last dimension (a view when the strides allow)."""
    if t is None:
        return None
    return last_dim_contiguous(t.reshape(-1, n))


@torch.library.custom_op("fastattn::norm_fwd_cuda", mutates_args=(), schema=_FORWARD_SCHEMA)
def _norm_fwd_cuda(x, residual, weight, bias, eps, rms, residual_in_fp32):
    """The CUDA C++ kernels (csrc/norm) behind the Triton op's signature and outputs."""
    from .. import _C

    n = x.shape[-1]
    y, s, mean, rstd = _C.norm_fwd(
        _cuda_rows(x, n),
        _cuda_rows(residual, n),
        weight.contiguous() if weight is not None else None,
        bias.contiguous() if bias is not None else None,
        eps,
        rms,
        residual_in_fp32,
    )
    return (
        y.reshape(x.shape),
        s.reshape(x.shape) if s is not None else x.new_empty((0,)),
        mean.reshape(x.shape[:-1]) if mean is not None else x.new_empty((0,), dtype=torch.float32),
        rstd.reshape(x.shape[:-1]),
    )


@torch.library.custom_op("fastattn::norm_bwd_cuda", mutates_args=(), schema=_BACKWARD_SCHEMA)
def _norm_bwd_cuda(dy, ds, x, residual, weight, bias, mean, rstd, rms):
    """As ``_norm_bwd_triton``; dW/dB are reduced in a fixed order (bitwise reproducible)."""
    from .. import _C

    n = x.shape[-1]
    separate = residual is not None and residual.dtype != x.dtype
    dx, dresidual, dw, db = _C.norm_bwd(
        _cuda_rows(dy, n),
        _cuda_rows(x, n),
        _cuda_rows(residual, n),
        weight.contiguous() if weight is not None else None,
        bias.dtype if bias is not None else None,
        None if rms else mean.reshape(-1).contiguous(),
        rstd.reshape(-1).contiguous(),
        _cuda_rows(ds, n),
        rms,
        separate,
    )
    return (  # empty outputs are distinct tensors: a custom op's outputs must not alias
        dx.reshape(x.shape),
        dresidual.reshape(x.shape) if separate else x.new_empty((0,)),
        dw if weight is not None else x.new_empty((0,)),
        db if bias is not None else x.new_empty((0,)),
    )


_register_fakes_and_autograd(_norm_fwd_cuda, _norm_bwd_cuda)


# ------------------------------------------------------------------------- the backends, as calls
def _norm_fused(forward, x, shape, weight, bias, eps, residual, residual_in_fp32, rms):
    """Calls ``forward``, the fused forward op of the cuda or triton backend, on rows ``(..., N)``."""
    n = math.prod(shape)
    rows = x.shape[: x.dim() - len(shape)] + (n,)  # (..., N)
    y, s, _, _ = forward(
        x.reshape(rows),
        residual.reshape(rows) if residual is not None else None,
        weight.reshape(n) if weight is not None else None,
        bias.reshape(n) if bias is not None else None,
        float(eps),
        rms,
        residual_in_fp32,
    )
    y = y.reshape(x.shape)
    return y if residual is None else (y, s.reshape(x.shape))


def _norm_torch(x, shape, weight, bias, eps, residual, residual_in_fp32, rms):
    """``torch.nn.functional.layer_norm`` / ``rms_norm``, fed so the results have the contract's
    dtypes: with a residual, s is formed and normalized in float32 (the rounded s is only returned);
    mixed parameter dtypes are computed in float32; y is returned in x's dtype."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    stored = None
    if residual is not None:
        x_in = x.to(compute) + residual.to(compute)
        stored = x_in.to(reference.residual_dtype(x.dtype, residual_in_fp32))
    else:
        x_in = x
    if (weight is not None and weight.dtype != x_in.dtype) or (bias is not None and bias.dtype != x_in.dtype):
        x_in = x_in.to(compute)
        weight = weight.to(compute) if weight is not None else None
        bias = bias.to(compute) if bias is not None else None
    if rms:
        y = F.rms_norm(x_in, shape, weight, eps)
    else:
        y = F.layer_norm(x_in, shape, weight, bias, eps)
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return y if residual is None else (y, stored)


def _norm_naive(x, shape, weight, bias, eps, residual, residual_in_fp32, rms):
    options = dict(residual=residual, residual_in_fp32=residual_in_fp32)
    if rms:
        return reference.rms_norm(x, shape, weight, eps, **options)
    return reference.layer_norm(x, shape, weight, bias, eps, **options)


_IMPLEMENTATIONS = {
    Backend.CUDA: functools.partial(_norm_fused, _norm_fwd_cuda),
    Backend.TRITON: functools.partial(_norm_fused, _norm_fwd_triton),
    Backend.TORCH: _norm_torch,
    Backend.NAIVE: _norm_naive,
}


def _norm(op, x, normalized_shape, weight, bias, eps, residual, residual_in_fp32, backend, rms):
    shape = _check_inputs(op, x, normalized_shape, weight, bias, residual, eps, residual_in_fp32)
    name = backends.select(op, backend, lambda candidate: _backend_reasons(candidate, x, shape, weight, bias, residual))
    return _IMPLEMENTATIONS[name](x, shape, weight, bias, eps, residual, residual_in_fp32, rms)


# ------------------------------------------------------------------------------ the functional API
def layer_norm(
    x: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    residual: Tensor | None = None,
    residual_in_fp32: bool = False,
    backend: str = "auto",
):
    """Layer normalization over the trailing ``normalized_shape``, fused with an optional residual add.

    With ``s = x + residual`` (or ``s = x``), per row of the trailing ``N = prod(normalized_shape)``
    elements::

        y = (s - mean(s)) / sqrt(var(s) + eps) * weight + bias       (var: biased, divide by N)

    the "Add & Norm" of a Transformer in one pass when ``residual`` is given.

    Args:
        x: ``(..., *normalized_shape)``, float16, bfloat16 or float32 on the fused backends (any float
            dtype on ``torch``/``naive``). Any strides; rows whose last dimension is contiguous are
            read in place.
        normalized_shape: an int or a sequence of ints: the trailing dimensions to normalize over.
            Any size from 1 up (65,536 and beyond).
        weight, bias: ``normalized_shape``, or None; in x's dtype or float32 (any of fp16/bf16/fp32 on
            the fused backends).
        eps: added to the variance.
        residual: x's shape, or None. When given, ``s = x + residual`` is formed in float32 and
            normalized, and ``(y, s)`` is returned.
        residual_in_fp32: return ``s`` in float32 instead of x's dtype.
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"torch"`` or ``"naive"`` (see
            :mod:`fastattn.backends`).

    Returns:
        ``y`` (x's shape and dtype), or ``(y, s)`` with a residual. Statistics are float32;
        differentiable in x, residual, weight and bias; the fused backends reduce dW/dB
        deterministically (bitwise identical run to run).
    """
    return _norm("layer_norm", x, normalized_shape, weight, bias, eps, residual, residual_in_fp32, backend, rms=False)


def rms_norm(
    x: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    eps: float | None = 1e-6,
    *,
    residual: Tensor | None = None,
    residual_in_fp32: bool = False,
    backend: str = "auto",
):
    """Root-mean-square normalization over the trailing ``normalized_shape``, fused with an optional
    residual add.

    With ``s = x + residual`` (or ``s = x``), per row of the trailing ``N = prod(normalized_shape)``
    elements::

        y = s / sqrt(mean(s²) + eps) * weight

    The arguments are those of :func:`layer_norm`, without ``bias``, and ``eps`` (added to the mean
    square) may be None: ``torch.finfo(x.dtype).eps``, as in ``torch.nn.functional.rms_norm``.

    Returns:
        ``y`` (x's shape and dtype), or ``(y, s)`` with a residual. Statistics are float32;
        differentiable in x, residual and weight; the fused backends reduce dW deterministically.
    """
    if eps is None and isinstance(x, Tensor) and x.is_floating_point():
        eps = torch.finfo(x.dtype).eps
    return _norm("rms_norm", x, normalized_shape, weight, None, eps, residual, residual_in_fp32, backend, rms=True)
