"""Test set-up: without a GPU, Triton kernels run on CPU tensors through Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported, hence at the top of this file.
Tests take the ``device`` fixture: "cuda" on a GPU machine, else "cpu".
"""

import os

# The interpreter runs many tiny matmuls through numpy: a multi-threaded BLAS makes each of them cost
# over 1 ms instead of about 12 µs on 2 busy cores (the attention tests: 207 s instead of 86 s).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def dropout_seeds(monkeypatch) -> list[int]:
    """Records the dropout seed of every call of the fused attention backends, to rebuild their mask."""
    from fastattn.ops import attention as attention_ops

    seeds: list[int] = []
    draw = attention_ops._dropout_seed

    def recording(dropout_p):
        seeds.append(draw(dropout_p))
        return seeds[-1]

    monkeypatch.setattr(attention_ops, "_dropout_seed", recording)
    return seeds


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if INTERPRETED:
        skip = pytest.mark.skip(reason="large shape: too slow for Triton's interpreter on the CPU (runs on a GPU)")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
