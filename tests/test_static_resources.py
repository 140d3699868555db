"""Every GPU kernel of the package compiles for sm_80 and sm_90 as the launchers would launch it, spills
no register and fits the shared memory of every GPU it is picked for; checked by the compilers alone
(``bench/static_resources.py``, which also writes the report of these numbers).

Triton's interpreter, which runs the kernels in the rest of the suite on a machine without a GPU,
accepts code that the GPU compiler rejects (a global annotated ``NAME: tl.constexpr = ...`` is one);
so the Triton kernels are compiled for real, with Triton's own compiler and ptxas, in subprocesses
that run ``bench/triton_aot.py`` without the interpreter (see there for what is compiled). The CUDA
kernels are compiled by nvcc with setup.py's flags, where the extension is built. On 2 cores: about
2.5 to 3 minutes for Triton (both architectures side by side), 40 s for CUDA.
"""

from __future__ import annotations

import pytest
import torch
from test_cuda_extension import _why_not_built
from triton.runtime.errors import OutOfResources

from fastattn import backends
from fastattn.bench import static_resources
from fastattn.kernels import attention

KERNELS = {"fwd": "_attn_fwd_kernel", "dkdv": "_attn_bwd_dkdv_kernel", "dq": "_attn_bwd_dq_kernel"}


@pytest.fixture(scope="module")
def triton_report():
    return static_resources.triton_rows(sorted(static_resources.ARCHS))


def test_every_triton_kernel_compiles_for_sm80_and_sm90(triton_report):
    rows, defined = triton_report
    for arch in static_resources.ARCHS:
        compiled = [row for row in rows if row.arch == arch]
        missing = sorted(set(defined) - {row.kernel for row in compiled})
        assert not missing, f"sm_{arch}: kernels no launch compiled: {missing}"
        # Every constexpr switch of every kernel compiled both ways.
        for kernel in defined:
            variants = [row.switches for row in compiled if row.kernel == kernel]
            one_way = sorted({name for v in variants for name in v if len({w.get(name) for w in variants}) < 2})
            assert not one_way, f"sm_{arch}: {kernel} compiled with only one value of {one_way}"


def test_every_attention_table_entry_is_picked_where_it_fits(triton_report):
    """Each entry of the GPU table, in every dtype it serves: sm_80 and sm_90 launch its first candidate
    with every set of features, the GPUs of 99 KiB (sm_86/sm_89) one of its candidates."""
    rows, _ = triton_report
    for (kind, fp32, dropout, up_to), candidates in attention._GPU_CONFIGS.items():
        for dtype in ("float32",) if fp32 else ("float16", "bfloat16"):
            for arch, limits in static_resources.RUNS_ON.items():
                for limit in limits:
                    picked = {
                        attention._Config(*(row.config[name] for name in ("BLOCK_M", "BLOCK_N", "warps", "stages")))
                        for row in rows
                        if row.arch == arch
                        and row.kernel == KERNELS[kind]
                        and row.dtype == dtype
                        and row.config["BLOCK_D"] == up_to  # the problems take the largest head dim of each bucket
                        and row.switches["DROPOUT"] == dropout
                        and limit.name in row.picked_on
                    }
                    where = f"{kind} {dtype} dropout={dropout} on {limit.name}"
                    if limit.optin_shared > static_resources.SM86.optin_shared:
                        assert picked == {candidates[0]}, f"{where}: launched {picked}, not {candidates[0]}"
                    else:
                        assert picked and picked <= set(candidates), f"{where}: launched {picked}"


def test_triton_kernels_do_not_spill_and_fit_where_picked(triton_report):
    rows, _ = triton_report
    assert not static_resources.problems(rows), "\n".join(static_resources.problems(rows))


def test_cuda_kernels_do_not_spill_and_fit():
    why = static_resources.cuda_unavailable()
    if why is not None:
        if _why_not_built() is not None or backends.EXTENSION_ERROR is None:
            pytest.skip(f"the CUDA kernels cannot be compiled here: {why}")
        pytest.fail(f"the CUDA extension should be built here but: {why}")
    rows, _ = static_resources.cuda_rows(sorted(static_resources.ARCHS), jobs=2)
    for arch in static_resources.ARCHS:
        kernels = {row.kernel for row in rows if row.arch == arch}
        for name in ("attn::attn_fwd_kernel", "attn::attn_bwd_dkdv_kernel", "attn::attn_bwd_dq_kernel"):
            assert name in kernels, f"sm_{arch}: {name} was not compiled"
    assert not static_resources.problems(rows), "\n".join(static_resources.problems(rows))


# ----------------------------------------------------------------- the launcher's choice of tiles
def _launch_with_limit(limit: int, shared: dict):
    """A stand-in for a launch on a GPU of ``limit`` bytes of shared memory per block: it raises what
    Triton raises when a kernel of shared[config] bytes is loaded there, and records what it launched."""
    launched = []

    def launch(config):
        if shared[config] > limit:
            raise OutOfResources(shared[config], limit, "shared memory")
        launched.append(config)

    return launch, launched


@pytest.fixture
def gpu_table(monkeypatch):
    """The launchers' choice as for a GPU, on CPU tensors."""
    monkeypatch.setattr(attention.interpreter, "interpreted", lambda device: False)
    return attention._GPU_CONFIGS


def test_launcher_takes_the_first_candidate_that_fits(gpu_table):
    q = torch.empty(1, 1, 1, 256, dtype=torch.float16)
    first, second = gpu_table[("dq", False, False, 256)]  # for sm_80/sm_90, and for sm_86/sm_89
    shared = {first: 104_000, second: 68_000}
    for limit, expected in ((232448, first), (166912, first), (101376, second)):
        launch, launched = _launch_with_limit(limit, shared)
        attention._launch_fitting("dq", q, False, launch)
        assert launched == [expected], f"limit {limit}: launched {launched}, expected {expected}"


def test_launcher_says_what_each_candidate_needs_when_none_fits(gpu_table):
    q = torch.empty(1, 1, 1, 256, dtype=torch.float16)
    candidates = gpu_table[("dq", False, False, 256)]
    launch, launched = _launch_with_limit(48 * 1024, {config: 60_000 for config in candidates})
    with pytest.raises(RuntimeError, match="no tile configuration .* dq kernel .* 49152 bytes .* 60000 bytes"):
        attention._launch_fitting("dq", q, False, launch)
    assert not launched


def test_launcher_passes_on_other_errors(gpu_table):
    q = torch.empty(1, 1, 1, 64, dtype=torch.float16)

    def launch(config):
        raise OutOfResources(2048, 1024, "threads")

    with pytest.raises(OutOfResources, match="threads"):
        attention._launch_fitting("fwd", q, False, launch)
