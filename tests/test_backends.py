"""Backend listing, selection, use_backend, FASTATTN_BACKEND and the errors that list every reason."""

import subprocess
import sys

import pytest
import torch

import fastattn
from fastattn import backends


def test_available_backends_lists_what_runs_here():
    names = fastattn.available_backends()
    assert names[-2:] == ["torch", "naive"]
    assert ("triton" in names) == (torch.cuda.is_available() or backends.triton_interpreting())
    for name in names:
        assert backends.platform_reasons(name) == []
    for name in set(backends.BACKENDS) - set(names):
        assert backends.platform_reasons(name), f"{name} is unavailable but gives no reason"


def test_cuda_reason_names_the_import_error():
    if backends.EXTENSION_ERROR is None:
        pytest.skip("the extension is built here")
    (reason,) = backends.platform_reasons("cuda")
    assert reason.startswith("extension not built: ") and "fastattn._C" in reason


def test_auto_takes_the_first_backend_that_can():
    assert backends.select("op", "auto", lambda name: [] if name in ("torch", "naive") else ["no"]) == "torch"
    assert backends.select("op", "auto", lambda name: [] if name == "naive" else ["no"]) == "naive"


def test_explicit_backend_that_cannot_lists_every_reason():
    reasons = {"cuda": ["not built"], "triton": ["needs a GPU"], "torch": [], "naive": []}
    with pytest.raises(NotImplementedError) as error:
        backends.select("attention", "triton", lambda name: reasons[name])
    message = str(error.value)
    assert "backend 'triton' cannot serve" in message
    assert "cuda: not built" in message and "triton: needs a GPU" in message and "torch: can serve it" in message


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.select("op", "cudnn", lambda name: [])
    with pytest.raises(ValueError, match="backend must be one of"):
        with fastattn.use_backend("tpu"):
            pass


def test_use_backend_sets_and_restores_the_default():
    assert backends.default_backend() == "auto"
    with fastattn.use_backend("naive"):
        assert backends.select("op", "auto", lambda name: []) == "naive"
        with fastattn.use_backend("torch"):
            assert backends.select("op", "auto", lambda name: []) == "torch"
        assert backends.default_backend() == "naive"
        # An explicit backend wins over the default.
        assert backends.select("op", "torch", lambda name: []) == "torch"
    assert backends.default_backend() == "auto"


def test_use_backend_restores_after_an_exception():
    with pytest.raises(RuntimeError):
        with fastattn.use_backend("naive"):
            raise RuntimeError("inside")
    assert backends.default_backend() == "auto"


def test_environment_variable_sets_the_process_default(monkeypatch):
    monkeypatch.setenv("FASTATTN_BACKEND", "naive")
    assert backends.select("op", "auto", lambda name: []) == "naive"
    monkeypatch.setenv("FASTATTN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FASTATTN_BACKEND must be one of"):
        backends.select("op", "auto", lambda name: [])


def test_environment_variable_reaches_the_ops():
    code = (
        "import torch, fastattn\n"
        "q = torch.randn(1, 1, 4, 8)\n"
        "try:\n"
        "    fastattn.attention(q, q, q)\n"
        "except NotImplementedError as e:\n"
        "    print(str(e).splitlines()[0])\n"
    )
    env = {"FASTATTN_BACKEND": "cuda", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    if backends.platform_reasons("cuda"):
        assert "backend 'cuda' cannot serve" in result.stdout
