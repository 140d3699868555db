"""Installs fastattn.

The Triton kernels live in the top-level folder ``kernels/`` and are installed as the subpackage
``fastattn.kernels`` (never as a top-level ``kernels`` module: that name is taken on PyPI).

Install with ``pip install --no-build-isolation -e .``: build isolation would download a second torch.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["fastattn", "fastattn.*"]) + ["fastattn.kernels"]

setup(
    name="fastattn",
    version="0.1.0",
    description="Fused Triton and CUDA kernels for attention, LayerNorm/RMSNorm and sampling",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"fastattn.kernels": "kernels"},
    install_requires=["torch>=2.5", "triton>=3.0", "numpy"],
    extras_require={
        "dev": ["pytest", "pytest-benchmark", "pybind11", "ninja"],
    },
)
