"""LayerNorm/RMSNorm benchmarks as a pytest-benchmark suite: ``pytest bench/ --benchmark-only``.

On a GPU the --quick grid of ``bench.norm``; on a CPU the tiny shapes at N=512.
"""

import pytest

from fastattn.bench import norm
from fastattn.bench.harness import benchmark_case, choose_providers, default_device, default_dtype

DEVICE = default_device()
CASES = [
    case
    for case in norm.cases(DEVICE, default_dtype(DEVICE))
    if case.quick and (DEVICE.type == "cuda" or case.x == 512)
]
PROVIDERS = choose_providers(norm.providers(DEVICE), DEVICE)


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op}-{c.mode}-{c.label.replace(' ', '-')}")
def test_norm(benchmark, case, provider):
    benchmark_case(benchmark, case, provider, DEVICE)
