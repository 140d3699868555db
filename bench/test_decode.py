"""Decode benchmarks as a pytest-benchmark suite: ``pytest bench/ --benchmark-only``.

On a GPU the --quick grid of ``bench.decode``; on a CPU the tiny shapes with a cache of 256.
"""

import pytest

from fastattn.bench import decode
from fastattn.bench.harness import benchmark_case, choose_providers, default_device, default_dtype

DEVICE = default_device()
CASES = [
    case
    for case in decode.cases(DEVICE, default_dtype(DEVICE))
    if case.quick and (DEVICE.type == "cuda" or case.x == 256)
]
PROVIDERS = choose_providers(decode.providers(DEVICE), DEVICE)


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.mode}-{c.label.replace(' ', '-')}")
def test_decode(benchmark, case, provider):
    benchmark_case(benchmark, case, provider, DEVICE)
