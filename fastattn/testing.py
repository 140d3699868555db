"""Shared numerics rules for tests and ``python -m fastattn verify``.

The rule (FlashAttention's): compare the op against the exact answer ``ref`` (the reference run in
float64) *relative to* what the same textbook math makes of it in the test dtype (``plain``)::

    max|out - ref| <= factor * max|plain - ref| + atol_floor

``factor`` is 2 for forward outputs and 3 for gradients. ``atol_floor`` is FlashAttention's absolute
term for outputs whose plain error happens to be (near) zero: twice the float32 rounding error of
``ref + 0.3 - 0.3``, about one float32 ulp of the largest magnitude: it matters for float32 outputs
only, and is far too small to hide a bug.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FORWARD_FACTOR = 2.0
GRADIENT_FACTOR = 3.0


@dataclass(frozen=True)
class ErrorReport:
    """How one output compares with the exact answer."""

    name: str
    max_error: float  # max |out - ref|
    mean_error: float  # mean |out - ref|
    plain_max_error: float  # max |plain - ref|: the error of the same math in the test dtype
    bound: float  # factor * plain_max_error + atol_floor
    finite: bool  # out has no NaN/inf where ref has none

    @property
    def ok(self) -> bool:
        return self.finite and self.max_error <= self.bound

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        nan = "" if self.finite else " (non-finite values where the reference is finite)"
        return (
            f"{self.name}: max error {self.max_error:.3e} (mean {self.mean_error:.3e}), "
            f"plain-math error {self.plain_max_error:.3e}, bound {self.bound:.3e}: {verdict}{nan}"
        )


def atol_floor(ref: Tensor) -> float:
    """``2 * max|(ref + 0.3 - 0.3) - ref|`` in float32 (FlashAttention's tests), at least 1e-12."""
    if ref.numel() == 0:
        return 1e-12
    ref32 = ref.to(torch.float32)
    return max(2.0 * (ref32 + 0.3 - 0.3 - ref32).abs().max().item(), 1e-12)


def error_report(name: str, out: Tensor, ref: Tensor, plain: Tensor, *, factor: float) -> ErrorReport:
    """Compares ``out`` (the op in the test dtype) with ``ref`` (exact) under the rule above."""
    out64, ref64, plain64 = (t.detach().to(torch.float64) for t in (out, ref, plain))
    if out64.shape != ref64.shape:
        raise AssertionError(f"{name}: shape {tuple(out64.shape)} differs from reference {tuple(ref64.shape)}")
    ref_finite = torch.isfinite(ref64)
    finite = bool(torch.isfinite(out64)[ref_finite].all()) and bool(
        (out64[~ref_finite] == ref64[~ref_finite]).all() if (~ref_finite).any() else True
    )
    # Errors are measured where the reference is finite; non-finite entries must match exactly.
    diff = (out64 - ref64).abs()[ref_finite]
    plain_diff = (plain64 - ref64).abs()[ref_finite]
    diff = torch.nan_to_num(diff, nan=float("inf"))
    max_error = diff.max().item() if diff.numel() else 0.0
    mean_error = diff.mean().item() if diff.numel() else 0.0
    plain_max = plain_diff.max().item() if plain_diff.numel() else 0.0
    bound = factor * plain_max + atol_floor(ref64[ref_finite])
    return ErrorReport(name, max_error, mean_error, plain_max, bound, finite)


def assert_close_to_reference(name: str, out: Tensor, ref: Tensor, plain: Tensor, *, factor: float) -> ErrorReport:
    """Asserts the rule above; the failure message shows max and mean errors and the bound."""
    report = error_report(name, out, ref, plain, factor=factor)
    if not report.ok:
        raise AssertionError(str(report))
    return report
