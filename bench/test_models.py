"""GPT train step and generation as a pytest-benchmark suite: ``pytest bench/ --benchmark-only``.

Skipped, with the import error, while ``fastattn.models`` is not available.
"""

import pytest

from fastattn.bench import models
from fastattn.bench.harness import benchmark_case, choose_providers, default_device

DEVICE = default_device()
try:
    GPT, CONFIG = models.load(DEVICE)
    MISSING = None
except Exception as error:  # reported as the skip reason
    GPT, CONFIG, MISSING = (
        None,
        None,
        f"fastattn.models is not available yet ({type(error).__name__}: {error})",
    )
CASES = models.cases(CONFIG, DEVICE) if MISSING is None else []
PROVIDERS = choose_providers(models.providers(GPT, CONFIG, DEVICE), DEVICE) if MISSING is None else []


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.series}-{c.label.replace(' ', '-')}")
def test_gpt(benchmark, case, provider):
    benchmark_case(benchmark, case, provider, DEVICE)
