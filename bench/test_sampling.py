"""Sampling benchmarks as a pytest-benchmark suite: ``pytest bench/ --benchmark-only``.

On a GPU the --quick grid of ``bench.sampling``; on a CPU one row of a 32,000-token vocabulary.
"""

import pytest

from fastattn.bench import sampling
from fastattn.bench.harness import benchmark_case, choose_providers, default_device, default_dtype

DEVICE = default_device()
CASES = [
    case
    for case in sampling.cases(DEVICE, default_dtype(DEVICE))
    if case.quick and (DEVICE.type == "cuda" or case.x == 1)
]
PROVIDERS = choose_providers(sampling.providers(DEVICE), DEVICE)


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label.replace(" ", "-"))
def test_sampling(benchmark, case, provider):
    benchmark_case(benchmark, case, provider, DEVICE)
