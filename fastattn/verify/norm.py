"""Verify cases for LayerNorm and RMSNorm: y, s and every gradient against the float64 reference.

:func:`reports` is the whole check (the tests use it too): random inputs in the case's dtypes, the op
on the backend, the reference on float64 copies of the same values (exact), and the reference in the
case's dtypes (plain), compared under the error-ratio rule of :mod:`fastattn.testing`.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor

from .. import capabilities, reference
from ..ops.norm import layer_norm, rms_norm
from ..testing import FORWARD_FACTOR, GRADIENT_FACTOR, ErrorReport, error_report
from .common import Case, Row

OPS = ("layer_norm", "rms_norm")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One norm call: shapes, which inputs there are, and their dtypes."""

    op: str  # "layer_norm" or "rms_norm"
    shape: tuple[int, ...]  # x's shape
    normalized_ndim: int = 1  # how many trailing dims are normalized
    dtype: torch.dtype = torch.float32  # x's dtype (and y's)
    weight_dtype: torch.dtype | None = None  # None: no weight
    bias_dtype: torch.dtype | None = None  # None: no bias (always None for RMSNorm)
    residual_dtype: torch.dtype | None = None  # None: no residual
    residual_in_fp32: bool = False
    eps: float = 1e-5

    @property
    def normalized_shape(self) -> tuple[int, ...]:
        return self.shape[len(self.shape) - self.normalized_ndim :]

    def __str__(self) -> str:
        parts = [f"x{tuple(self.shape)}"]
        if self.normalized_ndim != 1:
            parts.append(f"normalized{tuple(self.normalized_shape)}")

        def name(dtype):
            return str(dtype).removeprefix("torch.")

        for label, dtype in (("w", self.weight_dtype), ("b", self.bias_dtype), ("res", self.residual_dtype)):
            if dtype is not None:
                parts.append(label if dtype == self.dtype else f"{label}:{name(dtype)}")
        if self.residual_dtype is not None and self.residual_in_fp32:
            parts.append("res_fp32")
        return " ".join(parts)


def make_inputs(problem: Problem, device, seed: int = 0) -> dict[str, Tensor | None]:
    """x, residual, weight, bias and the upstream gradients dy, ds, in the problem's dtypes (a fixed
    seed per problem); None for the inputs the problem has not."""
    generator = torch.Generator().manual_seed(seed)

    def randn(shape, dtype, scale=1.0, offset=0.0):
        if dtype is None:
            return None
        values = torch.randn(shape, generator=generator, dtype=torch.float32) * scale + offset
        return values.to(device=device, dtype=dtype)

    shape, normalized = problem.shape, problem.normalized_shape
    s_dtype = problem.dtype
    if problem.residual_dtype is not None and problem.residual_in_fp32:
        s_dtype = torch.float32
    return {
        "x": randn(shape, problem.dtype, offset=0.5),  # an offset, so the mean matters
        "residual": randn(shape, problem.residual_dtype),
        "weight": randn(normalized, problem.weight_dtype, scale=0.5, offset=1.0),
        "bias": randn(normalized, problem.bias_dtype),
        "dy": randn(shape, problem.dtype),
        "ds": randn(shape, s_dtype if problem.residual_dtype is not None else None),
    }


GRAD_NAMES = ("x", "residual", "weight", "bias")


def forward_backward(fn, problem: Problem, inputs: dict, dtype: torch.dtype | None = None):
    """Runs ``fn(x, normalized_shape, weight, bias, residual=...)`` on ``inputs`` (cast to ``dtype``
    when given) and backpropagates dy (and ds); returns {"y", "s", "dx", "dresidual", "dweight",
    "dbias"} with None for what the problem has not."""

    def leaf(t):
        if t is None:
            return None
        return (t.to(dtype) if dtype is not None else t).detach().requires_grad_()

    leaves = {name: leaf(inputs[name]) for name in GRAD_NAMES}
    result = fn(leaves["x"], problem.normalized_shape, leaves["weight"], leaves["bias"], leaves["residual"])
    y, s = result if isinstance(result, tuple) else (result, None)
    outputs, grads = [y], [inputs["dy"].to(y.dtype)]
    if s is not None:
        outputs.append(s)
        grads.append(inputs["ds"].to(s.dtype))
    wanted = [name for name in GRAD_NAMES if leaves[name] is not None]
    gradients = torch.autograd.grad(outputs, [leaves[name] for name in wanted], grads)
    found = dict(zip(wanted, gradients, strict=True))
    return {
        "y": y.detach(),
        "s": s.detach() if s is not None else None,
        **{f"d{name}": found.get(name) for name in GRAD_NAMES},
    }


def norm_fn(problem: Problem, backend: str | None):
    """The problem's op as ``fn(x, shape, weight, bias, residual)``: fastattn's on ``backend``, or the
    reference when backend is None."""
    eps, options = problem.eps, dict(residual_in_fp32=problem.residual_in_fp32)
    if backend is not None:
        options["backend"] = backend
    if problem.op == "layer_norm":
        fn = reference.layer_norm if backend is None else layer_norm
        return lambda x, shape, w, b, r: fn(x, shape, w, b, eps, residual=r, **options)
    fn = reference.rms_norm if backend is None else rms_norm
    return lambda x, shape, w, b, r: fn(x, shape, w, eps, residual=r, **options)


def rounding_floors(problem: Problem, inputs: dict) -> dict[str, float]:
    """Floors for the bounds of the gradients: the error float32 arithmetic cannot avoid, from exact
    (float64) intermediates, at the largest element.

    The error-ratio bound measures the plain math's error by its max, which is a good estimate when
    many elements are ill-conditioned alike and a poor one otherwise: its max is then a few draws of a
    heavy-tailed error and can land far below its typical size, which the bound alone would demand of
    us. Two places need the floor:

    - dx (and dresidual): ``rstd · (g - x̂ · c1 - c2)`` cancels terms far larger than the result when
      the row is short (hidden size 1 or 3: for RMSNorm with N = 1 it is ``rstd · g · (1 - x̂²)``). The
      floor is three float32 roundings of the largest term, ``rstd · (|g| + |x̂ · c1| + |c2|)``.
    - dweight and dbias: sums over all rows, accumulated in float32 by the kernels and the plain math
      alike; with a handful of elements (N = 1 or 3) the plain error is one or three draws of that
      random walk. The floor is one float32 rounding of the sum of the terms' magnitudes,
      ``Σ_rows |dy · x̂|`` and ``Σ_rows |dy|``.

    Both are ~1e-7 relative to the terms: far below what a wrong term or a missing row would make."""
    x, dy = inputs["x"].double(), inputs["dy"].double()
    s = x + inputs["residual"].double() if inputs["residual"] is not None else x
    dims = tuple(range(x.dim() - problem.normalized_ndim, x.dim()))
    rows = tuple(range(x.dim() - problem.normalized_ndim))
    centred = s - s.mean(dims, keepdim=True) if problem.op == "layer_norm" else s
    rstd = torch.rsqrt((centred * centred).mean(dims, keepdim=True) + problem.eps)
    xhat = centred * rstd
    g = dy * inputs["weight"].double() if inputs["weight"] is not None else dy
    c1 = (g * xhat).mean(dims, keepdim=True)
    c2 = g.mean(dims, keepdim=True) if problem.op == "layer_norm" else torch.zeros_like(c1)
    unit = torch.finfo(torch.float32).eps / 2  # float32 unit roundoff
    dx = GRADIENT_FACTOR * unit * (rstd * (g.abs() + (xhat * c1).abs() + c2.abs())).max().item()
    return {
        "dx": dx,
        "dresidual": dx,
        "dweight": unit * (dy * xhat).abs().sum(rows).max().item(),
        "dbias": unit * dy.abs().sum(rows).max().item(),
    }


def reports(problem: Problem, backend: str, device, seed: int = 0) -> list[ErrorReport]:
    """Every output of ``problem`` on ``backend`` under the error-ratio rule: y and s (factor 2),
    dx, dresidual, dweight, dbias (factor 3), with the floors of :func:`rounding_floors`."""
    inputs = make_inputs(problem, device, seed)
    return compare(problem, inputs, forward_backward(norm_fn(problem, backend), problem, inputs))


def compare(problem: Problem, inputs: dict, ours: dict) -> list[ErrorReport]:
    """The reports of :func:`reports` for outputs ``ours`` (as :func:`forward_backward` gives them)
    computed by any means from ``inputs``."""
    floors = rounding_floors(problem, inputs)
    exact = forward_backward(norm_fn(problem, None), problem, inputs, torch.float64)
    plain = forward_backward(norm_fn(problem, None), problem, inputs)
    result = []
    for name in ("y", "s", "dx", "dresidual", "dweight", "dbias"):
        if exact[name] is None:
            continue
        if ours[name] is None or ours[name].dtype != plain[name].dtype:
            got = None if ours[name] is None else ours[name].dtype
            raise AssertionError(f"{name}: dtype {got}, expected {plain[name].dtype}")
        factor = FORWARD_FACTOR if name in ("y", "s") else GRADIENT_FACTOR
        report = error_report(name, ours[name], exact[name], plain[name], factor=factor)
        if floors.get(name, 0.0) > report.bound:
            report = dataclasses.replace(report, bound=floors[name])
        result.append(report)
    return result


def check(problem: Problem, backend: str, device) -> Row:
    dtype = str(problem.dtype).removeprefix("torch.")
    return Row.from_reports(problem.op, backend, dtype, str(problem), reports(problem, backend, device))


def full_problem(
    op: str, shape: tuple[int, ...], dtype: torch.dtype, *, param_dtype=None, residual_dtype=None, **fields
) -> Problem:
    """Every input present: weight (and bias for LayerNorm) and a residual, in x's dtype unless
    ``param_dtype`` / ``residual_dtype`` say otherwise; ``fields``: the other fields of :class:`Problem`."""
    param_dtype = param_dtype or dtype
    return Problem(
        op,
        shape,
        dtype=dtype,
        weight_dtype=param_dtype,
        bias_dtype=param_dtype if op == "layer_norm" else None,
        residual_dtype=residual_dtype or dtype,
        **{"eps": 1e-5 if op == "layer_norm" else 1e-6, **fields},
    )


MIXED = dict(param_dtype=torch.float32, residual_dtype=torch.float32, residual_in_fp32=True)  # a float32 stream


def _grid(op: str, full: bool) -> list[Problem]:
    dtypes = capabilities.fused_dtypes("norm")
    if not full:  # seconds under the interpreter; every kernel path once
        return [full_problem(op, (4, 100), dtype) for dtype in dtypes] + [
            full_problem(op, (3, 1023), torch.bfloat16, **MIXED),
            full_problem(op, (2, 20000), torch.float16),  # the looped path
        ]
    found = []
    for rows, hidden in FULL_SIZES:
        for dtype in dtypes:
            found.append(Problem(op, (rows, hidden), dtype=dtype, eps=1e-5 if op == "layer_norm" else 1e-6))
            found.append(full_problem(op, (rows, hidden), dtype))
            if dtype != torch.float32:
                found.append(full_problem(op, (rows, hidden), dtype, **MIXED))
    found.append(dataclasses.replace(full_problem(op, (4, 64, 2, 384), torch.bfloat16), normalized_ndim=2))
    return found


# (rows, hidden): every path of the kernels (row path, looped path, and the sizes where the forward
# keeps the row in registers but the backward loops) and the awkward sizes.
FULL_SIZES = (
    (64, 1),
    (64, 3),
    (512, 100),
    (256, 1023),
    (256, 1024),
    (128, 4097),
    (128, 8192),
    (64, 12288),
    (64, 16384),
    (32, 65536),
    (16, 70000),
    (16, 131072),
)


def cases(device: torch.device, full: bool) -> list[Case]:
    return [
        Case(op, problem.dtype, str(problem), functools.partial(check, problem))
        for op in OPS
        for problem in _grid(op, full)
    ]
