"""Every Triton kernel of the package compiles ahead of time for sm_80 and sm_90, as the launchers would
launch it on those GPUs, and fits their shared memory.

Triton's interpreter, which runs the kernels in the rest of the suite on a machine without a GPU,
accepts code that the GPU compiler rejects (a global annotated ``NAME: tl.constexpr = ...`` is one); so
this test compiles for real, with Triton's own compiler and ptxas, in subprocesses that run
``tests/triton_aot.py`` without the interpreter (see there for what is compiled).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from fastattn.kernels import attention

AOT_SCRIPT = Path(__file__).resolve().parent / "triton_aot.py"
# The most shared memory one block may opt in to: A100 (sm_80) 163 KiB, H100/H200 (sm_90) 227 KiB.
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def compile_for_every_architecture(tmp_path: Path) -> dict[int, dict]:
    """Runs the compiler for each architecture side by side (one process each) and returns its report."""
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    processes = {}
    for arch in SHARED_MEMORY_LIMIT:
        cache = tmp_path / f"triton-cache-sm{arch}"  # empty: every variant is really compiled
        processes[arch] = subprocess.Popen(
            [sys.executable, str(AOT_SCRIPT), str(arch)],
            env={**environment, "TRITON_CACHE_DIR": str(cache)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    reports = {}
    for arch, process in processes.items():
        stdout, stderr = process.communicate(timeout=1800)
        assert process.returncode == 0, f"compiling for sm_{arch} failed:\n{stderr[-6000:]}"
        reports[arch] = json.loads(stdout.splitlines()[-1])
    return reports


def test_every_kernel_compiles_for_sm80_and_sm90(tmp_path):
    for arch, report in compile_for_every_architecture(tmp_path).items():
        compiled = report["compiled"]
        missing = sorted(set(report["defined"]) - {variant["kernel"] for variant in compiled})
        assert not missing, f"sm_{arch}: kernels no launch compiled: {missing}"

        too_large = [v for v in compiled if v["shared_bytes"] > SHARED_MEMORY_LIMIT[arch]]
        assert not too_large, f"sm_{arch}: more shared memory than {SHARED_MEMORY_LIMIT[arch]} bytes: {too_large}"

        # Every constexpr switch of every kernel compiled both ways.
        for kernel in report["defined"]:
            variants = [v["constexprs"] for v in compiled if v["kernel"] == kernel]
            switches = {name for variant in variants for name, value in variant.items() if isinstance(value, bool)}
            one_way = sorted(name for name in switches if len({variant[name] for variant in variants}) < 2)
            assert not one_way, f"sm_{arch}: {kernel} compiled with only one value of {one_way}"

        # Every tile configuration of the attention launcher's GPU table, for 16-bit and 32-bit inputs.
        for (kind, fp32, _), config in attention._GPU_CONFIGS.items():
            kernel = {"fwd": "_attn_fwd_kernel", "dkdv": "_attn_bwd_dkdv_kernel", "dq": "_attn_bwd_dq_kernel"}[kind]
            hits = [
                v
                for v in compiled
                if v["kernel"] == kernel
                and (v["constexprs"]["BLOCK_M"], v["constexprs"]["BLOCK_N"], v["num_warps"], v["num_stages"])
                == tuple(config)
                and v["constexprs"]["IEEE"] == fp32
            ]
            assert hits, f"sm_{arch}: {kernel} never compiled with {config} for {'fp32' if fp32 else '16-bit'} inputs"
