"""Verify cases for sampling: the kept set against ``reference.filter_logits``, and the draws against the
exact renormalized probabilities.

- Kept set: the fused kernel's kept set (``fastattn.kernels.sampling.filter_mask``) must equal the
  reference's exactly (``max_error`` = the number of tokens on which they differ, bound 0). Inputs mix
  random logits, logits with many ties and rows at the edges of every filter.
- Distribution: ``n`` draws of one row of logits (``n`` rows with distinct seeds) are compared with the
  exact probabilities (``softmax(reference.filter_logits(...))`` in float64) by Pearson's chi-square
  test over the kept tokens; a case fails when the statistic exceeds the critical value of p-value
  ``P_VALUE_THRESHOLD`` (a correct sampler fails with that probability), or when a filtered token is
  drawn at all.

The tests use the same functions (:func:`kept_set_mismatches`, :func:`draw_test`).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor

from .. import backends, capabilities, reference
from ..ops.sampling import _backend_reasons, row_parameters, sample
from .common import Case, Row

P_VALUE_THRESHOLD = 1e-6  # a correct sampler fails one distribution case in a million
DRAW_ELEMENTS_PER_CALL = 1 << 22  # draws are made in batches of at most this many logits (memory)


@dataclasses.dataclass(frozen=True)
class Filters:
    """Sampling parameters: numbers, None, or (B,) tensors (built on the case's device)."""

    temperature: object = 1.0
    top_k: object = None
    top_p: object = None
    min_p: object = None

    def options(self) -> dict:
        """The keyword arguments of :func:`fastattn.sample` (and ``row_parameters``) they stand for."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def on(self, device) -> Filters:
        values = (getattr(self, field.name) for field in dataclasses.fields(self))
        return Filters(*(v.to(device) if isinstance(v, Tensor) else v for v in values))

    def __str__(self) -> str:
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            off = 1.0 if field.name == "temperature" else None
            if isinstance(value, Tensor):
                parts.append(f"{field.name}=per-row")
            elif value != off:
                parts.append(f"{field.name}={value:g}")
        return " ".join(parts) or "plain"


# ------------------------------------------------------------------------------------- kept sets
def kept_set(backend: str, logits: Tensor, filters: Filters) -> Tensor:
    """Bool (B, V): the tokens ``backend`` may draw from. Raises NotImplementedError for a backend that
    exposes no kept set (the reference backends are the oracle itself)."""
    if backend not in backends.FUSED:
        raise NotImplementedError(f"{backend}: no kept-set hook (torch and naive are the reference itself)")
    reasons = _backend_reasons(backend, logits)
    if reasons:
        raise NotImplementedError(f"{backend}: " + "; ".join(reasons))
    params = row_parameters(logits, **filters.options())
    if backend == "cuda":
        from .. import _C

        seeds = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
        return _C.sample(logits.contiguous(), *params, seeds, draw=False, return_logprobs=False, write_mask=True)[2]
    from ..kernels import sampling as kernels  # imported on first use: triton reads TRITON_INTERPRET then

    return kernels.filter_mask(logits, *params)


def reference_kept_set(logits: Tensor, filters: Filters) -> Tensor:
    params = row_parameters(logits, **filters.options())
    return reference.filter_logits(logits, *params) > -torch.inf


def kept_set_mismatches(backend: str, logits: Tensor, filters: Filters) -> tuple[int, str]:
    """(number of tokens whose kept/removed status differs from the reference, a description)."""
    got = kept_set(backend, logits, filters)
    want = reference_kept_set(logits, filters)
    differ = got != want
    count = int(differ.sum())
    if count == 0:
        return 0, f"kept sets equal ({int(want.sum())} of {want.numel()} tokens kept)"
    rows = differ.any(dim=-1).nonzero().flatten().tolist()
    return count, (
        f"{count} tokens differ in rows {rows[:8]}; row {rows[0]}: kernel keeps {int(got[rows[0]].sum())}, "
        f"reference {int(want[rows[0]].sum())}"
    )


def tied_logits(batch: int, vocab: int, generator: torch.Generator, levels: int = 7) -> Tensor:
    """Logits taking a handful of values (many ties at every threshold)."""
    return torch.randint(-levels // 2, levels // 2 + 1, (batch, vocab), generator=generator).float() * 0.75


def edge_logits(vocab: int, generator: torch.Generator) -> Tensor:
    """Rows at the edges: random, one finite logit, all equal, +inf entries, a NaN, all -inf, -0.0 and
    0.0 mixed, huge magnitudes."""
    rows = torch.randn(8, vocab, generator=generator)
    rows[1] = -torch.inf
    rows[1, vocab // 2] = 1.5
    rows[2] = 0.25
    rows[3, :: max(1, vocab // 3)] = torch.inf
    rows[4, vocab // 3] = torch.nan
    rows[5] = -torch.inf
    rows[6] = torch.where(torch.arange(vocab) % 2 == 0, torch.tensor(-0.0), torch.tensor(0.0))
    rows[6, 0] = -1.0
    rows[7] = rows[7] * 1e30
    return rows


# ---------------------------------------------------------------------------------- distribution
def chi_square(counts: Tensor, probs: Tensor) -> tuple[float, int, float]:
    """Pearson's chi-square of ``counts`` against ``probs`` (over the entries with probs > 0):
    (statistic, degrees of freedom, p-value). The p-value is the regularized upper incomplete gamma
    function Q(dof / 2, statistic / 2)."""
    support = probs > 0
    counts, probs = counts[support].to(torch.float64), probs[support].to(torch.float64)
    expected = probs * counts.sum()
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = max(int(support.sum()) - 1, 1)
    p_value = torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic / 2)
    return float(statistic), dof, float(p_value)


@functools.cache
def critical_value(dof: int, p_value: float = P_VALUE_THRESHOLD) -> float:
    """The chi-square statistic whose p-value is ``p_value`` (bisection on Q(dof / 2, x / 2))."""
    low, high = 0.0, 10.0 * dof + 200.0
    for _ in range(200):
        middle = (low + high) / 2
        q = float(
            torch.special.gammaincc(
                torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(middle / 2, dtype=torch.float64)
            )
        )
        low, high = (middle, high) if q > p_value else (low, middle)
    return high


@dataclasses.dataclass(frozen=True)
class DrawTest:
    """The outcome of :func:`draw_test`."""

    draws: int
    statistic: float
    dof: int
    p_value: float
    critical: float  # the statistic at p-value P_VALUE_THRESHOLD
    filtered_draws: int  # draws of tokens the filters removed (must be 0)
    total_variation: float  # ½ Σ |empirical - exact|

    @property
    def ok(self) -> bool:
        return self.filtered_draws == 0 and self.statistic <= self.critical

    def __str__(self) -> str:
        return (
            f"{self.draws} draws: chi-square {self.statistic:.1f} on {self.dof} dof (p = {self.p_value:.2e}, "
            f"fails above {self.critical:.1f}), TV {self.total_variation:.2e}, "
            f"{self.filtered_draws} filtered tokens drawn"
        )


def exact_probabilities(row: Tensor, filters: Filters) -> Tensor:
    """float64 (V,): the renormalized softmax over the kept set of one row (uniform over +inf entries)."""
    filtered = reference.filter_logits(row.unsqueeze(0), **filters.options())[0].to(torch.float64)
    posinf = filtered == torch.inf
    if posinf.any():
        return posinf.to(torch.float64) / posinf.sum()
    return torch.softmax(filtered, dim=-1)


def draw_test(backend: str, row: Tensor, filters: Filters, draws: int, first_seed: int = 0) -> DrawTest:
    """Draws ``draws`` tokens from one row of logits (a batch of copies with seeds first_seed, +1, ...) on
    ``backend`` and tests them against :func:`exact_probabilities`."""
    vocab = row.shape[-1]
    rows_per_call = max(1, DRAW_ELEMENTS_PER_CALL // vocab)
    tokens = []
    for start in range(first_seed, first_seed + draws, rows_per_call):
        count = min(rows_per_call, first_seed + draws - start)
        seeds = torch.arange(start, start + count, dtype=torch.int64, device=row.device)
        batch = row.reshape(1, vocab).expand(count, vocab)  # a row stride of 0: no copies
        tokens.append(sample(batch, **filters.options(), seed=seeds, backend=backend).cpu())
    tokens = torch.cat(tokens)
    probs = exact_probabilities(row, filters).cpu()
    counts = torch.bincount(tokens[tokens >= 0], minlength=vocab).to(torch.float64)
    statistic, dof, p_value = chi_square(counts, probs)
    filtered = int(counts[probs == 0].sum()) + int((tokens < 0).sum())  # token -1: nothing drawn at all
    tv = float((counts / draws - probs).abs().sum() / 2)
    return DrawTest(draws, statistic, dof, p_value, critical_value(dof), filtered, tv)


# ------------------------------------------------------------------------------------------ cases
def _mask_case(name: str, dtype: torch.dtype, make) -> Case:
    def run(backend: str, device: torch.device) -> Row:
        logits, filters = make()
        logits = logits.to(device=device, dtype=dtype)
        mismatches, detail = kept_set_mismatches(backend, logits, filters.on(device))
        return Row(
            "sample", backend, str(dtype).removeprefix("torch."), name, mismatches == 0, float(mismatches), 0.0, detail
        )

    return Case("sample", dtype, name, run)


def _draw_case(name: str, dtype: torch.dtype, make_row, filters: Filters, draws: int) -> Case:
    def run(backend: str, device: torch.device) -> Row:
        result = draw_test(backend, make_row().to(device=device, dtype=dtype), filters.on(device), draws)
        return Row(
            "sample",
            backend,
            str(dtype).removeprefix("torch."),
            name,
            result.ok,
            result.statistic,
            result.critical,
            str(result),
        )

    return Case("sample", dtype, name, run)


def _mask_inputs(kind: str, batch: int, vocab: int, seed: int):
    """The logits and filters of one kept-set case, made when the case runs (GPU sizes are large)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(batch, vocab, generator=generator) * 3, Filters(0.8, 50, 0.9)
    if kind == "per-row":
        filters = Filters(
            temperature=torch.rand(batch, generator=generator) * 1.5,
            top_k=torch.randint(1, 100, (batch,), generator=generator),
            top_p=torch.rand(batch, generator=generator).clamp(min=0.05),
            min_p=torch.rand(batch, generator=generator) * 0.2,
        )
        return torch.randn(batch, vocab, generator=generator) * 3, filters
    if kind == "ties":
        return tied_logits(batch, vocab, generator), Filters(1.0, 10, 0.7, 0.1)
    if kind == "edges":
        return edge_logits(vocab, generator), Filters(1.0, 3, 0.5)
    return edge_logits(vocab, generator), Filters(min_p=1.0)


MASK_KINDS = {
    "random": "random top_k=50 top_p=0.9",
    "per-row": "random per-row filters",
    "ties": "ties top_k=10 top_p=0.7 min_p=0.1",
    "edges": "edges top_k=3 top_p=0.5",
    "edges-min_p": "edges min_p=1",
}


def cases(device: torch.device, full: bool) -> list[Case]:
    """Kept-set cases per dtype, and distribution cases. Small (``full=False``, seconds under the
    interpreter): V = 300, B = 8, 2·10^4 draws at V = 24. GPU sizes (``full=True``): V in {32000, 128256},
    B = 64, 10^6 draws at V = 4096 (top-k 64 added where no top-k is set, so that every kept token
    expects at least a few draws, as the chi-square approximation needs)."""
    vocabs = (32000, 128256) if full else (300,)
    batch = 64 if full else 8
    result: list[Case] = []
    for dtype in capabilities.fused_dtypes("sampling"):
        for vocab in vocabs:
            for index, (kind, label) in enumerate(MASK_KINDS.items()):
                rows = 8 if kind.startswith("edges") else batch
                name = f"kept set B={rows} V={vocab} {label}"
                make = lambda k=kind, v=vocab, i=index: _mask_inputs(k, batch, v, i)
                result.append(_mask_case(name, dtype, make))
    draws, draw_vocab = (10**6, 4096) if full else (20000, 24)
    for filters in (Filters(), Filters(0.7, 12), Filters(1.0, None, 0.8, 0.05)):
        if full and filters.top_k is None:
            filters = dataclasses.replace(filters, top_k=64)
        make_row = lambda v=draw_vocab: torch.randn(v, generator=torch.Generator().manual_seed(v)) * 2
        result.append(_draw_case(f"draws V={draw_vocab} {filters}", torch.float32, make_row, filters, draws))
    return result
