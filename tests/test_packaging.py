"""What fastattn adds to an environment: one importable name, ``fastattn``, and nothing that hides
another package, neither once installed nor from the root of a checkout (where ``python -m`` and
``python -c`` put the current directory first on ``sys.path``)."""

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Folders of the checkout that are not sources: left out of the copy the wheel is built from.
NOT_SOURCES = (".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "results", "runs")


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_hugging_face_kernels_import_from_the_repository_root():
    """transformers imports Hugging Face's ``kernels`` package; run from the root of a checkout (the
    directory first on sys.path), it must find that one, never our kernels/ folder, and our Triton
    backend must still load."""
    code = """
import transformers, fastattn
from transformers.integrations import hub_kernels
import kernels
import fastattn.kernels.attention, fastattn.kernels.norm, fastattn.kernels.sampling
print(kernels.__file__)
print(fastattn.kernels.attention.__file__)
print(",".join(fastattn.available_backends()))
"""
    result = run_python(code, ROOT, TRITON_INTERPRET="1")
    assert result.returncode == 0, f"import from {ROOT} failed:\n{result.stderr}"
    hub_kernels_file, attention_file, available = result.stdout.split()
    assert Path(hub_kernels_file).resolve().parent != ROOT / "kernels", (
        f"`import kernels` found our folder ({hub_kernels_file}) instead of Hugging Face's package"
    )
    assert Path(attention_file).resolve() == ROOT / "kernels" / "attention.py"
    assert "triton" in available.split(","), f"triton is not among the available backends: {available}"


def test_no_top_level_package_in_the_checkout_root_but_fastattn():
    """A regular package (a folder with __init__.py) at the root would win over any installed package of
    its name for every `python -m` run there."""
    packages = sorted(path.parent.name for path in ROOT.glob("*/__init__.py"))
    assert packages == ["fastattn"], f"regular packages at the root of the checkout: {packages}"


def test_the_wheel_adds_only_fastattn(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        env={**os.environ, "FASTATTN_SKIP_CUDA_BUILD": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    (wheel,) = wheels.glob("fastattn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    metadata = {name for name in top_level if name.endswith(".dist-info")}
    assert top_level - metadata == {"fastattn"} and len(metadata) == 1, (
        f"the wheel installs these top-level names: {sorted(top_level)}"
    )
    for module in ("kernels/attention.py", "kernels/norm.py", "kernels/sampling.py", "bench/harness.py"):
        assert f"fastattn/{module}" in names, f"fastattn/{module} is missing from the wheel"
    assert "fastattn/data/tinyshakespeare.txt" in names, "the shipped data set is missing from the wheel"

    # Installed from the wheel (and imported away from the checkout), the subpackages load.
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    code = "import fastattn.kernels.attention as a, fastattn.bench.harness; print(a.__file__)"
    result = run_python(code, tmp_path, PYTHONPATH=str(target), TRITON_INTERPRET="1")
    assert result.returncode == 0, f"importing the installed wheel failed:\n{result.stderr}"
    assert Path(result.stdout.strip()).resolve() == (target / "fastattn" / "kernels" / "attention.py").resolve()


def test_layers_import_only_downwards():
    """The command line (fastattn/__main__.py) uses the bench package, kernels/ knows nothing of the
    ops above it, and nothing imports the command line: no import cycle between the layers."""
    import ast

    def imported_modules(path: Path, package: str) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(part for part in (base, node.module) if part)
                names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        return names

    forbidden = {
        "bench": ("fastattn.__main__",),
        "kernels": ("fastattn.__main__", "fastattn.bench", "fastattn.ops", "fastattn.nn", "fastattn.models"),
    }
    wrong = []
    for folder, prefixes in forbidden.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            package = f"fastattn.{folder}"
            for name in imported_modules(path, package):
                if name.startswith(prefixes):
                    wrong.append(f"{folder}/{path.name} imports {name}")
    for path in sorted((ROOT / "fastattn").rglob("*.py")):
        if path.name != "__main__.py" and "fastattn.__main__" in imported_modules(path, "fastattn"):
            wrong.append(f"{path.relative_to(ROOT)} imports the command line")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)
