"""The cost of fastattn's dispatch layer: each op with ``backend="torch"`` against the PyTorch call that
backend makes, on small CPU tensors, where the host-side checks and the backend choice weigh most.

The acceptance limit is 5%. The inputs are small on purpose: one layer of a small model on a
minibatch of 8 sequences: attention on B=8, H=8, N=128, D=64; the norms on the same activations,
(8, 128, 512) = (B, N, H·D); sampling on 8 rows of a 32,000-token vocabulary. The dispatch costs
2-4 µs a call whatever the size, so on one sequence (B=1), where F.layer_norm takes about 20 µs on
one CPU thread, the norms' overhead is 15-25%.

Method: on one CPU thread (the dispatch is single-threaded host code, and on a busy machine the time
of a multi-threaded op depends on the load of the other cores: see ``bench.harness.cpu_threads``),
the two calls run in alternating blocks of about 2 ms (ours, then PyTorch's, then PyTorch's, then
ours, ...) for a fixed time. Each side's cost is its fastest block (timeit's rule: the slower blocks
measure the other processes on the machine, not the code), and the overhead is
(ours / PyTorch's) - 1 of those. The JSON also keeps the median over block pairs of that ratio: on a
quiet machine the two agree.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import fastattn
from fastattn import reference

from .harness import cpu_threads

TITLE = "overhead"
LIMIT = 0.05  # the acceptance limit: at most 5% over calling PyTorch directly
BLOCK_US = 2000  # a block of calls lasts about 2 ms: long against the clock's resolution, short against load drifts
MAX_CALLS_PER_BLOCK = 100
MIN_BLOCK_PAIRS = 10
BUDGET_S = 2.0  # per op: several hundred block pairs for calls of 10-300 µs
BATCH, HEADS, SEQUENCE, HEAD_DIM = 8, 8, 128, 64
VOCAB = 32000


@dataclass(frozen=True)
class Overhead:
    op: str
    inputs: str
    ours: str
    direct: str
    ours_us: float  # the fastest block's time per call through fastattn
    direct_us: float  # the fastest block's time per call of the PyTorch function itself
    overhead: float  # ours_us / direct_us - 1
    median_ratio_overhead: float  # the median over block pairs of (ours / direct) - 1
    block_pairs: int
    ok: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _block_us(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def compare(ours, direct, budget_s: float = BUDGET_S) -> tuple[float, float, float, int]:
    """(ours µs, direct µs, median-ratio overhead, block pairs) from alternating blocks of calls; the
    times are those of each side's fastest block."""
    single_us = min(_block_us(direct, 1) for _ in range(3))  # also the warm-up
    _block_us(ours, 3)
    calls = max(1, min(MAX_CALLS_PER_BLOCK, round(BLOCK_US / single_us)))
    ours_us, direct_us, ratios = [], [], []
    end = time.perf_counter() + budget_s
    while len(ratios) < MIN_BLOCK_PAIRS or time.perf_counter() < end:
        if len(ratios) % 2:  # alternate who goes first, so a drift in load favours neither
            b, a = _block_us(direct, calls), _block_us(ours, calls)
        else:
            a, b = _block_us(ours, calls), _block_us(direct, calls)
        ours_us.append(a)
        direct_us.append(b)
        ratios.append(a / b)
    return min(ours_us), min(direct_us), statistics.median(ratios) - 1, len(ratios)


def _pairs():
    """(op, inputs, ours, direct, the call through fastattn, the PyTorch call it makes)."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(BATCH, HEADS, SEQUENCE, HEAD_DIM, generator=generator) for _ in range(3))
    hidden = HEADS * HEAD_DIM
    x = torch.randn(BATCH, SEQUENCE, hidden, generator=generator)
    weight, bias = torch.randn(hidden, generator=generator), torch.randn(hidden, generator=generator)
    logits = torch.randn(BATCH, VOCAB, generator=generator) * 4
    attention_inputs = f"q, k, v ({BATCH}, {HEADS}, {SEQUENCE}, {HEAD_DIM}) float32"
    norm_inputs = f"x ({BATCH}, {SEQUENCE}, {hidden}) float32"
    pairs = [
        (
            "attention",
            attention_inputs,
            'fastattn.attention(q, k, v, backend="torch")',
            "F.scaled_dot_product_attention(q, k, v)",
            lambda: fastattn.attention(q, k, v, backend="torch"),
            lambda: F.scaled_dot_product_attention(q, k, v),
        ),
        (
            "attention causal",
            attention_inputs,
            'fastattn.attention(q, k, v, causal=True, backend="torch")',
            "F.scaled_dot_product_attention(q, k, v, is_causal=True)",
            lambda: fastattn.attention(q, k, v, causal=True, backend="torch"),
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        ),
    ]
    if hasattr(fastattn, "layer_norm"):
        pairs.append(
            (
                "layer_norm",
                norm_inputs,
                'fastattn.layer_norm(x, (N,), w, b, backend="torch")',
                "F.layer_norm(x, (N,), w, b)",
                lambda: fastattn.layer_norm(x, (hidden,), weight, bias, backend="torch"),
                lambda: F.layer_norm(x, (hidden,), weight, bias),
            )
        )
    if hasattr(fastattn, "rms_norm"):
        pairs.append(
            (
                "rms_norm",
                norm_inputs,
                'fastattn.rms_norm(x, (N,), w, backend="torch")',
                "F.rms_norm(x, (N,), w, eps=1e-6)",
                lambda: fastattn.rms_norm(x, (hidden,), weight, backend="torch"),
                lambda: F.rms_norm(x, (hidden,), weight, 1e-6),
            )
        )
    if hasattr(fastattn, "sample"):
        pairs.append(
            (
                "sample",
                f"logits ({BATCH}, {VOCAB}) float32, top_k=50, top_p=0.9",
                'fastattn.sample(logits, top_k=50, top_p=0.9, backend="torch")',
                "fastattn.reference.sample(logits, top_k=50, top_p=0.9)",
                lambda: fastattn.sample(logits, top_k=50, top_p=0.9, backend="torch"),
                lambda: reference.sample(logits, top_k=50, top_p=0.9),
            )
        )
    return pairs


def run(budget_s: float = BUDGET_S, progress: bool = True) -> tuple[list[Overhead], list[str]]:
    """The overhead of every op that exists, and notes on those that do not yet."""
    from fastattn.progress import progress_bar

    pairs = _pairs()
    notes = [
        f"fastattn.{name} is not available in this build: not measured"
        for name in ("layer_norm", "rms_norm", "sample")
        if not hasattr(fastattn, name)
    ]
    results = []
    with cpu_threads(1):
        for op, inputs, ours_text, direct_text, ours, direct in progress_bar(
            pairs, desc=TITLE, leave=False, disable=not progress, file=sys.stderr
        ):
            ours_us, direct_us, median_ratio, count = compare(ours, direct, budget_s)
            overhead = ours_us / direct_us - 1
            results.append(
                Overhead(
                    op,
                    inputs,
                    ours_text,
                    direct_text,
                    ours_us,
                    direct_us,
                    overhead,
                    median_ratio,
                    count,
                    overhead <= LIMIT,
                )
            )
    return results, notes


def format_table(results: list[Overhead], notes: list[str], markdown: bool = False) -> str:
    from .report import table

    header = (
        "op",
        "inputs (CPU)",
        "through fastattn",
        "PyTorch directly",
        "overhead",
        f"≤ {LIMIT:.0%}",
    )
    lines = [
        (
            r.op,
            r.inputs,
            f"{r.ours_us:.1f} µs",
            f"{r.direct_us:.1f} µs",
            f"{r.overhead:+.1%} ({r.ours_us - r.direct_us:+.1f} µs)",
            "ok" if r.ok else "OVER",
        )
        for r in results
    ]
    title = (
        f'dispatch overhead of backend="torch" against the PyTorch call it makes '
        f"(one CPU thread; fastest of alternating ~{BLOCK_US / 1000:.0f} ms blocks of calls)"
    )
    return table(title, header, lines, notes, markdown=markdown)


if __name__ == "__main__":
    from .cli import main

    sys.exit(main([TITLE, *sys.argv[1:]]))
