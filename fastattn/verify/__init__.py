"""``python -m fastattn verify``: every op on every available backend against the float64 reference.

Each op has a module here with ``cases(device, full) -> list[Case]``; this runner runs every case on
every backend that can run on this machine, collects one :class:`Row` per (case, backend), and prints
the table. ``full=False`` is the small set that the Triton interpreter gets through on a CPU in about
a minute; ``full=True`` is the grid for a GPU.
"""

from __future__ import annotations

import importlib
import json
import math
import platform
from collections.abc import Iterable

import torch

from .. import backends
from .common import Case, Row

OPS = ("attention", "norm", "sampling")
# The rows of the torch backend are PyTorch's own kernels, shown for comparison under the same rule:
# one over the bound is reported, not counted as a failure of fastattn (PyTorch's float32 SDPA backward
# on the CPU exceeds the 3x gradient bound by about 7% on some shapes).
COMPARISON_BACKENDS = ("torch",)


def all_cases(device: torch.device, full: bool, ops: Iterable[str] = OPS) -> list[Case]:
    cases: list[Case] = []
    for op in ops:
        module = importlib.import_module(f"{__name__}.{op}")
        cases.extend(module.cases(device, full))
    return cases


def run_case(case: Case, backend: str, device: torch.device) -> Row | None:
    """The case's row on ``backend``; None when the backend cannot serve it (not a failure)."""
    try:
        return case.run(backend, device)
    except NotImplementedError:
        return None
    except Exception as error:  # a crash is a failed check, shown in the table, never hidden
        return Row(
            case.op,
            backend,
            _dtype_name(case.dtype),
            case.name,
            False,
            float("nan"),
            float("nan"),
            f"{type(error).__name__}: {error}",
        )


def run(
    device: torch.device,
    *,
    full: bool,
    ops: Iterable[str] = OPS,
    backend_names: Iterable[str] | None = None,
    progress: bool = True,
) -> list[Row]:
    names = list(backend_names) if backend_names is not None else backends.available_backends()
    cases = all_cases(device, full, ops)
    jobs = [(case, name) for case in cases for name in names]
    from ..progress import progress_bar

    rows = []
    # The bar counts the rows of the table: a backend that cannot serve a case gives none, and leaves the total.
    with progress_bar(total=len(jobs), desc="verify", unit="check", leave=False, disable=not progress) as bar:
        for case, name in jobs:
            row = run_case(case, name, device)
            if row is None:
                bar.total -= 1
                bar.refresh()
                continue
            rows.append(row)
            bar.update()
    return rows


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _over_in_comparison(row: Row) -> bool:
    """A comparison backend's result over the bound (a crash there still counts as a failure)."""
    return not row.ok and row.backend in COMPARISON_BACKENDS and math.isfinite(row.max_error)


def failures(rows: list[Row]) -> list[Row]:
    """The rows that fail fastattn's checks."""
    return [r for r in rows if not r.ok and not _over_in_comparison(r)]


def _verdict(row: Row) -> str:
    if row.ok:
        return "ok"
    return "over (PyTorch's kernel)" if _over_in_comparison(row) else "FAIL"


def format_table(rows: list[Row]) -> str:
    header = ("op", "backend", "dtype", "case", "max error", "bound", "result")
    lines = [(r.op, r.backend, r.dtype, r.case, f"{r.max_error:.2e}", f"{r.bound:.2e}", _verdict(r)) for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    failed = failures(rows)
    over = [r for r in rows if _over_in_comparison(r)]
    out.append("")
    out.append(f"{len(rows) - len(failed) - len(over)} passed, {len(failed)} failed")
    for r in over:
        out.append(
            f"over the bound in PyTorch's own kernel (not counted) {r.op} [{r.backend}, {r.dtype}, {r.case}]: "
            f"{r.detail}"
        )
    for r in failed:
        out.append(f"FAIL {r.op} [{r.backend}, {r.dtype}, {r.case}]: {r.detail}")
    return "\n".join(out)


def environment() -> dict:
    """Versions and device, for the JSON report."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": backends.triton_version(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_json(path: str, rows: list[Row], *, device: torch.device, full: bool) -> None:
    report = {
        "environment": environment(),
        "device": str(device),
        "full": full,
        "rows": [row.as_dict() for row in rows],
    }
    with open(path, "w", encoding="utf-8") as file:
        json.dump(report, file, indent=1)
