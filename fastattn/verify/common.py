"""What one verify check reports, shared by the per-op check modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..testing import ErrorReport


@dataclass(frozen=True)
class Row:
    """One line of the verify table: one op, backend, dtype and case, with its worst output."""

    op: str
    backend: str
    dtype: str
    case: str  # shape class and features, e.g. "B=2 Hq=4 Hkv=2 Nq=97 Nk=200 D=59 causal"
    ok: bool
    max_error: float  # the worst max |out - ref| over the outputs checked (nan when not numeric)
    bound: float  # the bound that output had to meet
    detail: str  # which output was worst, or what failed

    @classmethod
    def from_reports(cls, op: str, backend: str, dtype: str, case: str, reports: list[ErrorReport]) -> Row:
        """The row of a check made of error-ratio comparisons: it fails if any output fails."""
        worst = max(reports, key=lambda r: (not r.ok, r.max_error / r.bound if r.bound else 0.0))
        return cls(op, backend, dtype, case, all(r.ok for r in reports), worst.max_error, worst.bound, str(worst))

    def as_dict(self) -> dict:
        return {
            "op": self.op,
            "backend": self.backend,
            "dtype": self.dtype,
            "case": self.case,
            "ok": self.ok,
            "max_error": self.max_error,
            "bound": self.bound,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Case:
    """One verify case of one op: ``run(backend, device)`` computes it on that backend and returns its
    row. A backend that cannot serve the case raises ``NotImplementedError`` (the row is then marked
    "n/a" with the reason, not failed); any other exception is a failure."""

    op: str
    dtype: torch.dtype
    name: str
    run: Callable[[str, torch.device], Row]
