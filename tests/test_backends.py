"""Backend listing, selection, use_backend, FASTATTN_BACKEND and the errors that list every reason."""

import json
import os
import subprocess
import sys
import threading

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


def test_use_backend_holds_for_its_own_thread_only():
    """Two threads inside use_backend blocks at the same time each see their own choice, before and
    after the other leaves its block; a third thread, in none, sees the default."""
    both_inside, first_left = threading.Barrier(2), threading.Event()
    seen: dict[str, list[str]] = {"torch": [], "naive": []}

    def choose(name: str) -> None:
        with fastattn.use_backend(name):
            both_inside.wait(timeout=30)
            seen[name].append(backends.default_backend())
            if name == "torch":
                first_left.set()
                return
            first_left.wait(timeout=30)  # the torch thread has left its block by now
            seen[name].append(backends.default_backend())

    threads = [threading.Thread(target=choose, args=(name,)) for name in ("torch", "naive")]
    for thread in threads:
        thread.start()
    outside: list[str] = []
    bystander = threading.Thread(target=lambda: outside.append(backends.default_backend()))
    bystander.start()
    for thread in (*threads, bystander):
        thread.join(timeout=60)
    assert seen == {"torch": ["torch"], "naive": ["naive", "naive"]}, seen
    assert outside == [backends.default_backend()] == ["auto"]


# Stand-ins for a broken Triton, put first on PYTHONPATH of a subprocess: one whose import fails, one
# that imports but cannot compile anything, and (through sitecustomize) none at all.
BROKEN_TRITONS = {
    "import fails": {"triton/__init__.py": "raise RuntimeError('this triton build is broken')\n"},
    "compile fails": {
        "triton/__init__.py": (
            "def cdiv(a, b):\n    return -(-a // b)\n\n\n"
            "class _Kernel:\n    def __init__(self, fn):\n        self.fn = fn\n\n"
            "    def __getitem__(self, grid):\n        raise RuntimeError('ptxas: this triton cannot compile')\n\n\n"
            "def jit(fn):\n    return _Kernel(fn)\n"
        ),
        "triton/language/__init__.py": "class constexpr:\n    pass\n",
    },
    "missing": {"sitecustomize.py": "import sys\n\nsys.modules['triton'] = None\n"},
}
BROKEN_TRITON_REASON = {
    "import fails": "triton does not work here: RuntimeError: this triton build is broken",
    "compile fails": "triton does not work here: RuntimeError: ptxas: this triton cannot compile",
    "missing": "triton is not installed",
}


@pytest.mark.parametrize("broken", list(BROKEN_TRITONS))
def test_a_broken_or_missing_triton_is_reported_and_passed_over(broken, tmp_path):
    for path, text in BROKEN_TRITONS[broken].items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    environment = {**os.environ, "PYTHONPATH": str(tmp_path), "TRITON_INTERPRET": "1", "FASTATTN_BACKEND": "auto"}

    def run(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *arguments], env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=600
        )

    env = run("-m", "fastattn", "env")
    assert env.returncode == 0, env.stderr
    backend_lines = env.stdout.split("backends (in the order auto tries them):")[1].splitlines()
    triton_line = next(line for line in backend_lines if line.strip().startswith("triton "))
    assert BROKEN_TRITON_REASON[broken] in triton_line, env.stdout

    code = (
        "import torch, fastattn\n"
        "assert 'triton' not in fastattn.available_backends(), fastattn.available_backends()\n"
        "q = torch.randn(1, 2, 5, 8)\n"
        "out = fastattn.attention(q, q, q, causal=True)\n"
        "torch.testing.assert_close(out, fastattn.attention(q, q, q, causal=True, backend='naive'))\n"
        "y = fastattn.layer_norm(torch.randn(3, 8), (8,))\n"
        "token = fastattn.sample(torch.randn(2, 11), top_k=3, seed=1)\n"
        "try:\n"
        "    fastattn.attention(q, q, q, backend='triton')\n"
        "except NotImplementedError as error:\n"
        "    print(error)\n"
    )
    ops = run("-c", code)
    assert ops.returncode == 0, ops.stderr
    assert BROKEN_TRITON_REASON[broken] in ops.stdout, ops.stdout

    report = tmp_path / "verify.json"
    verify = run("-m", "fastattn", "verify", "--op", "norm", "--json", str(report))
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    rows = json.loads(report.read_text())["rows"]
    assert rows and {row["backend"] for row in rows} == {"torch", "naive"}

    bench = run("-m", "fastattn", "bench", "norm", "--quick", "--no-progress", "--json", str(tmp_path / "b.json"))
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
