"""Every benchmark of fastattn.bench as one pytest-benchmark suite: ``pytest bench/ --benchmark-only``.

On a GPU the --quick grid of each op's benchmark; on a CPU the one tiny shape of each (CPU_SHAPE); and
the GPT train step and generation of ``bench.models`` on both.
"""

import pytest

from fastattn.bench import attention, decode, models, norm, sampling
from fastattn.bench.harness import benchmark_case, choose_providers, default_device, default_dtype

DEVICE = default_device()
# On a CPU, the x (the plots' horizontal axis) of each op's quick grid that runs in seconds: attention
# N=128, decode with a cache of 256, norms at N=512, sampling one row.
CPU_SHAPE = {attention: 128, decode: 256, norm: 512, sampling: 1}


def benchmarks():
    """(case, provider) of every op's quick grid, then the GPT cases, each with its test id."""
    for op, cpu_x in CPU_SHAPE.items():
        providers = choose_providers(op.providers(DEVICE), DEVICE)
        for case in op.cases(DEVICE, default_dtype(DEVICE)):
            if case.quick and (DEVICE.type == "cuda" or case.x == cpu_x):
                yield from (pytest.param(case, p, id=f"{case.op}-{case.mode}-{case.label}-{p.name}") for p in providers)
    gpt, config = models.load(DEVICE)
    providers = choose_providers(models.providers(gpt, config, DEVICE), DEVICE)
    for case in models.cases(config, DEVICE):
        yield from (pytest.param(case, p, id=f"{case.series}-{case.label}-{p.name}") for p in providers)


@pytest.mark.parametrize(("case", "provider"), benchmarks())
def test_benchmark(benchmark, case, provider):
    benchmark_case(benchmark, case, provider, DEVICE)
