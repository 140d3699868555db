"""Installs fastattn, and builds its CUDA extension ``fastattn._C`` when it can.

The Triton kernels live in the top-level folder ``kernels/`` and the benchmarks in ``bench/``; they are
installed as the subpackages ``fastattn.kernels`` and ``fastattn.bench`` (``fastattn/kernels`` and
``fastattn/bench`` are links to them), never as top-level modules: neither folder has an ``__init__.py``,
so that from a checkout's root they never hide installed packages of those names (Hugging Face's
``kernels``, which transformers imports). The wheel holds ``fastattn`` and nothing else.

Install with ``pip install --no-build-isolation -e .``: build isolation would download a second torch.

The extension (the sources under ``csrc/``) is built with ninja whenever torch is a CUDA build and
nvcc is found; no GPU is needed to build it. Without them the package installs as pure Python and
the ``cuda`` backend reports why (``python -m fastattn env``). Switches, through the environment:

    FASTATTN_SKIP_CUDA_BUILD=1   build no extension
    FASTATTN_CUDA_ARCHS="80;90"  compute capabilities to compile for (default 80;90; "90a" is accepted)
    MAX_JOBS=N                   parallel compile jobs (default: from the cores and the memory)
    NVCC_THREADS=N               threads of one nvcc call, one per architecture (default 1)
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
DEFAULT_ARCHS = "80;90"
# Memory per parallel compile job: one job peaks at ~0.6 GiB (g++ on a host file including ATen headers;
# nvcc on a kernel file ~0.2 GiB), so 2 GiB leaves a wide margin.
GIB_PER_JOB = 2


# nvcc's flags for every kernel file, the architectures and --threads aside (bench/static_resources.py
# compiles with them too).
NVCC_FLAGS = [
    "-O3",
    "-std=c++20",
    "--expt-relaxed-constexpr",
    "-lineinfo",
    # torch builds with these; our kernels use __half/__nv_bfloat16 operators and conversions
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_HALF2_OPERATORS__",
]


def kernel_sources() -> list[str]:
    """The extension's CUDA files (the kernels; the .cpp files hold the bindings)."""
    return sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))


def include_dirs(cuda_version: str) -> list[str]:
    """csrc/, and the headers a minimal toolkit may lack (cusparse.h, included by ATen's CUDA headers)
    from the nvidia wheels of CUDA ``cuda_version``."""
    dirs = [CSRC]
    try:
        import nvidia
    except ImportError:
        return dirs
    for root in nvidia.__path__:
        wheel_include = os.path.join(root, f"cu{cuda_version.split('.')[0]}", "include")
        if os.path.isdir(wheel_include):
            dirs.append(wheel_include)
    return dirs


def _log(message: str) -> None:
    print(f"fastattn setup: {message}", file=sys.stderr)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "on", "yes")


def _find_cuda_home() -> str | None:
    """CUDA_HOME, else the toolkit that holds the nvcc on PATH, else /usr/local/cuda.

    Left unset, torch guesses the toolkit from nvcc's path and may settle on /usr/local, where the
    libraries are not: the link then fails. So we decide here, before torch.utils.cpp_extension is
    imported (it reads CUDA_HOME at import time).
    """
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        has_runtime = glob.glob(os.path.join(home, "lib*", "libcudart.so*"))
        if os.path.isdir(os.path.join(home, "include")) and has_runtime:
            return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def _nvcc_version(cuda_home: str) -> str | None:
    """The release of nvcc ("13.0"), or None when it cannot be run."""
    try:
        output = subprocess.run(
            [os.path.join(cuda_home, "bin", "nvcc"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", output)
    return match.group(1) if match else None


def _max_jobs() -> str:
    """MAX_JOBS when set, else the cores, capped so that every job has GIB_PER_JOB of memory."""
    if os.environ.get("MAX_JOBS"):
        return os.environ["MAX_JOBS"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gib = GIB_PER_JOB * cores
    return str(max(1, min(cores, int(memory_gib // GIB_PER_JOB))))


def _gencode_flags(archs: str) -> list[str]:
    """-gencode for each capability in "80;90" (machine code for each; PTX of the newest as well, so
    newer GPUs can JIT it).

    The default builds sm_90, not the architecture-specific sm_90a: the kernels use mma.sync m16n8k16
    (csrc/attention/mma.cuh), which sm_90 runs, and no wgmma, TMA or setmaxnreg, which only sm_90a code
    may use. wgmma would need the tiles rewritten around warpgroups (64-row slices per 4 warps, operands
    in shared memory), so sm_90a alone buys nothing yet, and its machine code would run on no GPU
    but the H100/H200 (no PTX for later ones from it). "90a" is accepted for when such kernels exist."""
    flags = []
    names = [a.strip().replace(".", "") for a in archs.replace(",", ";").split(";") if a.strip()]
    if not names:
        raise ValueError(f"FASTATTN_CUDA_ARCHS={archs!r} names no architecture")
    for name in names:
        if not name.rstrip("a").isdigit():
            raise ValueError(f"FASTATTN_CUDA_ARCHS: {name!r} is not a compute capability like 80 or 90")
    newest = max(names, key=lambda n: int(n.rstrip("a")))
    for name in names:
        flags.append(f"-gencode=arch=compute_{name},code=sm_{name}")
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def _cuda_extension():
    """(ext_modules, cmdclass) for fastattn._C, or ([], {}) with the reason logged."""
    if _truthy("FASTATTN_SKIP_CUDA_BUILD"):
        _log("FASTATTN_SKIP_CUDA_BUILD is set: installing without the CUDA extension")
        return [], {}
    cuda_home = _find_cuda_home()
    if cuda_home is None:
        _log("nvcc not found (set CUDA_HOME): installing without the CUDA extension")
        return [], {}
    os.environ["CUDA_HOME"] = cuda_home  # the toolkit found above, also when CUDA_HOME named none
    try:
        import torch
    except ImportError:
        _log("torch is not installed (install it first; use --no-build-isolation): no CUDA extension")
        return [], {}
    if torch.version.cuda is None:
        _log(f"torch {torch.__version__} is a CPU-only build: installing without the CUDA extension")
        return [], {}
    nvcc_version = _nvcc_version(cuda_home)
    if nvcc_version is None:
        _log(f"{cuda_home}/bin/nvcc does not run: installing without the CUDA extension")
        return [], {}
    if nvcc_version.split(".")[0] != torch.version.cuda.split(".")[0]:
        # torch refuses to build with a different major version; say so instead of failing the install
        _log(
            f"nvcc {nvcc_version} ({cuda_home}) does not match torch's CUDA {torch.version.cuda}: installing "
            "without the CUDA extension (set CUDA_HOME to a matching toolkit)"
        )
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    os.environ["MAX_JOBS"] = _max_jobs()
    sources = sorted(glob.glob(os.path.join(CSRC, "**", "*.cpp"), recursive=True)) + kernel_sources()
    nvcc_threads = os.environ.get("NVCC_THREADS", "1")
    nvcc_flags = NVCC_FLAGS + [f"--threads={nvcc_threads}"]
    nvcc_flags += _gencode_flags(os.environ.get("FASTATTN_CUDA_ARCHS", DEFAULT_ARCHS))
    _log(
        f"building fastattn._C with CUDA_HOME={os.environ['CUDA_HOME']}, MAX_JOBS={os.environ['MAX_JOBS']}, "
        f"{len(sources)} sources, flags {' '.join(f for f in nvcc_flags if f.startswith('-gencode'))}"
    )
    extension = CUDAExtension(
        name="fastattn._C",
        sources=[os.path.relpath(s, ROOT) for s in sources],
        include_dirs=include_dirs(torch.version.cuda),
        extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": nvcc_flags},
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # as pip and setuptools run it; bench/static_resources.py imports the helpers
    # kernels/ and bench/ have no __init__.py (see above), so find_packages does not see them: named here.
    packages = find_packages(include=["fastattn", "fastattn.*"]) + ["fastattn.kernels", "fastattn.bench"]
    ext_modules, cmdclass = _cuda_extension()

    setup(
        name="fastattn",
        version="0.1.0",
        description="Fused Triton and CUDA kernels for attention, LayerNorm/RMSNorm and sampling",
        long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
        long_description_content_type="text/markdown",
        python_requires=">=3.10",
        packages=packages,
        package_data={"fastattn.data": ["*.txt", "*.npz", "README.md"]},  # the shipped data sets
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        # The core: torch, Triton where torch's own wheels bring it, numpy for the shipped digits. The rest
        # is optional, and the command that needs a missing extra says which one to install.
        install_requires=["torch>=2.5", "triton>=3.0; platform_system == 'Linux'", "numpy"],
        extras_require={
            "plot": ["matplotlib"],  # bench --plot, train vae's PNG
            "progress": ["tqdm"],  # progress bars
            "hf": ["transformers"],
            "dev": [  # the test suite (the browser test of the attention graph: playwright) and the lint
                "pytest",
                "pytest-benchmark",
                "pybind11",
                "ninja",
                "ruff",
                "playwright",
                "matplotlib",
                "tqdm",
                "transformers",
            ],
        },
    )
