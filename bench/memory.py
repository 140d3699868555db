"""Peak GPU memory of attention forward + backward against the sequence length: it must grow linearly.

FlashAttention-style kernels never store the (N, N) score matrix, so the memory a forward + backward
needs beyond its inputs (out, lse, dq, dk, dv and the kernels' workspace) grows like N; a kernel that
stores the scores grows like N². Measured with ``torch.cuda.max_memory_allocated`` for B=1, H=16,
D=64, bfloat16, N = 1k .. 16k, on each of our backends that runs here. The check: going from N=1k
to N=16k (16×) may multiply the peak by at most 16 × 1.5 = 24 (quadratic growth would give 256).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import torch

import fastattn

from .harness import ours_unavailable

TITLE = "memory"
BATCH, HEADS, HEAD_DIM = 1, 16, 64
SEQUENCE_LENGTHS = (1024, 2048, 4096, 8192, 16384)
LINEAR_SLACK = 1.5  # allocator rounding and fixed workspaces make small N look relatively large


@dataclass(frozen=True)
class MemoryScaling:
    backend: str
    sequence_lengths: list[int]
    peak_bytes: list[int]  # max_memory_allocated during forward + backward, minus the inputs
    ratio: float  # peak at the largest N over peak at the smallest
    linear_ratio: float  # what exactly linear growth would give
    limit: float
    ok: bool
    detail: str = ""  # what went wrong, when the measurement itself failed

    def as_dict(self) -> dict:
        return asdict(self)


def peak_bytes(n: int, backend: str, device: torch.device) -> int:
    """Memory that one forward + backward at sequence length ``n`` allocates beyond its inputs."""
    shape = (BATCH, HEADS, n, HEAD_DIM)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn(shape, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fastattn.attention(q, k, v, backend=backend).backward(dout)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del q, k, v, dout
    torch.cuda.empty_cache()
    return peak


def run(device: torch.device) -> tuple[list[MemoryScaling], list[str]]:
    """The scaling of each of our backends that runs here, and notes on those that cannot."""
    if device.type != "cuda":
        return [], ["skipped: no GPU (peak GPU memory needs one)"]
    results, notes = [], []
    for backend in fastattn.backends.FUSED:
        why = ours_unavailable(backend, "attention")
        if why is not None:
            notes.append(f"{backend}: not measured: {why}")
            continue
        try:
            peaks = [peak_bytes(n, backend, device) for n in SEQUENCE_LENGTHS]
        except NotImplementedError as error:
            notes.append(f"{backend}: not measured: {str(error).splitlines()[0]}")
            continue
        except Exception as error:  # a crash fails the check; the message goes into the report
            results.append(
                MemoryScaling(
                    backend,
                    list(SEQUENCE_LENGTHS),
                    [],
                    float("nan"),
                    0.0,
                    0.0,
                    False,
                    f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                )
            )
            continue
        linear = SEQUENCE_LENGTHS[-1] / SEQUENCE_LENGTHS[0]
        ratio = peaks[-1] / max(peaks[0], 1)
        limit = linear * LINEAR_SLACK
        results.append(MemoryScaling(backend, list(SEQUENCE_LENGTHS), peaks, ratio, linear, limit, ratio <= limit))
    if not results and not notes:
        notes.append("no backend of ours runs here")
    return results, notes


def format_table(results: list[MemoryScaling], notes: list[str], markdown: bool = False) -> str:
    from .report import table

    header = ("backend", *(f"N={n}" for n in SEQUENCE_LENGTHS), "ratio", "linear / limit", "result")
    lines = [
        (
            r.backend,
            *(f"{p / 2**20:.0f} MiB" for p in r.peak_bytes),
            f"{r.ratio:.1f}x",
            f"{r.linear_ratio:.0f}x / {r.limit:.0f}x",
            "ok" if r.ok else "FAIL (superlinear)",
        )
        for r in results
        if not r.detail
    ]
    notes = notes + [f"{r.backend}: FAIL: {r.detail}" for r in results if r.detail]
    title = (
        f"peak memory of attention forward + backward beyond its inputs (B={BATCH}, H={HEADS}, D={HEAD_DIM}, bfloat16)"
    )
    return table(title, header, lines, notes, markdown=markdown)


if __name__ == "__main__":
    from .cli import main

    sys.exit(main([TITLE, *sys.argv[1:]]))
