"""Compiles the package's Triton kernels ahead of time for a GPU architecture, with no GPU present.

    python bench/triton_aot.py ARCH LIMIT [LIMIT ...]   (ARCH: 80, 90, ...; TRITON_INTERPRET must be unset)

The real launchers are called on small CPU tensors with the interpreter switch of
``fastattn.kernels.interpreter`` turned off, so they choose what they would choose for a GPU (tiles,
warps, stages, output dtypes, the constexpr flags); each launch is compiled for ``GPUTarget("cuda",
ARCH, 32)`` by Triton's own binder (the same signature and specialization as on a GPU) instead of
being run. No launcher uses triton.autotune (each chooses from fixed tables), so these launches reach
every configuration there is. The attention launchers pick the first tile configuration of their
table whose shared memory fits the device; here the device's limit is each LIMIT in turn (the most
shared memory a block may use, in bytes, on each GPU that runs ARCH's code: bench/static_resources.py
passes sm_80's and sm_86's for 80), so the configurations kept for GPUs of less shared memory are
compiled too, and every candidate a launcher tried on the way is recorded as well.

Registers and spills are what ptxas reports when Triton runs it (``ptxas -v``, its log captured per
compiled kernel): the same ptxas, options and PTX as on a GPU, at no extra cost. The problems below
reach every entry of the attention table at the largest head dim of its bucket, in every dtype it
serves, plain and with every feature that costs registers (a band, softcap, ALiBi, sinks, a padding
mask or packed sequences, dropout), both backward paths; both paths (row in registers, looped) of
each norm kernel at its largest and smallest tiles, the split-KV decode kernels on paged and
contiguous caches, the sampling kernels' vocabulary and batched tiles and split rows; every constexpr
flag of every kernel at least once each way. The last line printed is a JSON object: the kernels the
package defines, and the compiled variants.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from typing import NamedTuple

import torch
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.runtime.driver import driver
from triton.runtime.errors import OutOfResources
from triton.runtime.jit import JITFunction


class CompileOnlyDriver:
    """What Triton's launch path asks of the active driver, answered for a GPU that is not there."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


compiled: dict[str, dict] = {}  # by the compiled kernel's hash, in the order first compiled
ptxas_logs: dict[str, str] = {}  # ptxas -v's report of each kernel, by its hash
shared_memory_limit = 0  # the limit the attention launchers see now (bytes)


def capture_ptxas_log(self, src, metadata, opt, capability):
    """CUDABackend.make_cubin with ptxas' -v report kept (Triton prints it when asked, else drops it)."""
    knobs.nvidia.dump_ptxas_log = True
    with contextlib.redirect_stdout(io.StringIO()) as log:
        cubin = make_cubin(self, src, metadata, opt, capability)
    ptxas_logs[metadata["hash"]] = log.getvalue()
    return cubin


def compile_instead_of_launch(self, *args, grid, warmup, **kwargs):
    constexprs = {name: value for name, value in kwargs.items() if name not in ("num_warps", "num_stages")}
    try:
        kernel = JITFunction_run(self, *args, grid=grid, warmup=True, **kwargs)
    except Exception as error:
        raise RuntimeError(f"{self.fn.__name__} with {kwargs} does not compile: {error}") from error
    variant = compiled.setdefault(
        kernel.hash,
        {
            "kernel": self.fn.__name__,
            "constexprs": {name: value for name, value in constexprs.items() if not hasattr(value, "dtype")},
            "dtype": next(str(arg.dtype).removeprefix("torch.") for arg in args if isinstance(arg, torch.Tensor)),
            "num_warps": kernel.metadata.num_warps,
            "num_stages": kernel.metadata.num_stages,
            "shared_bytes": kernel.metadata.shared,
            "ptxas": ptxas_logs[kernel.hash],
            "launched_under": [],  # the shared-memory limits under which a launcher picked it
        },
    )
    if warmup:
        return kernel
    if kernel.metadata.shared > shared_memory_limit:  # what Triton checks when it loads the kernel to launch it
        raise OutOfResources(kernel.metadata.shared, shared_memory_limit, "shared memory")
    if shared_memory_limit not in variant["launched_under"]:
        variant["launched_under"].append(shared_memory_limit)
    return kernel


JITFunction_run = JITFunction.run
make_cubin = CUDABackend.make_cubin


class AttentionFeatures(NamedTuple):
    """One set of the attention kernels' switches; each problem is run with each set."""

    name: str
    full: bool  # a band (causal and a window), softcap, ALiBi, sinks and an upstream dlse
    packed: bool  # packed sequences (else a padding mask when full)
    dropout: bool


ATTENTION_FEATURES = [
    AttentionFeatures("plain", False, False, False),
    AttentionFeatures("dropout", False, False, True),
    AttentionFeatures("all, padding mask", True, False, False),
    AttentionFeatures("all, padding mask, dropout", True, False, True),
    AttentionFeatures("all, packed, dropout", True, True, True),
]


def attention_problems():
    from fastattn.kernels import attention

    seq_q, seq_k, heads_q, heads_kv = 33, 47, 2, 1
    cu_seqlens = torch.tensor([0, 5, seq_q], dtype=torch.int32)  # packed: keys as many as queries
    buckets = sorted({(fp32, up_to) for _, fp32, _, up_to in attention._GPU_CONFIGS})
    for fp32, head_dim in buckets:  # the largest head dim of each bucket: the most registers and shared memory
        for dtype in (torch.float32,) if fp32 else (torch.float16, torch.bfloat16):
            for features in ATTENTION_FEATURES:
                nk = seq_q if features.packed else seq_k
                shape_q = (seq_q, heads_q, head_dim) if features.packed else (1, heads_q, seq_q, head_dim)
                shape_k = (nk, heads_kv, head_dim) if features.packed else (1, heads_kv, nk, head_dim)
                q, k, v = torch.randn(shape_q, dtype=dtype), torch.randn(shape_k, dtype=dtype), torch.randn(shape_k)
                v = v.to(dtype)
                mask = torch.ones(1, nk, dtype=torch.bool) if features.full and not features.packed else None
                packed = dict(cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=28, max_seqlen_k=28)
                extra = attention.Features(
                    window=(5, 3) if features.full else (-1, -1),
                    softcap=30.0 if features.full else 0.0,
                    alibi_slopes=torch.rand(heads_q) if features.full else None,
                    sinks=torch.randn(heads_q) if features.full else None,
                    **(packed if features.packed else {}),
                )
                causal, scale, dropout_p = features.full, head_dim**-0.5, 0.1 if features.dropout else 0.0
                out, lse = attention.attention_fwd(q, k, v, mask, causal, scale, dropout_p, 7, extra)
                dlse = torch.zeros_like(lse) if features.full else None
                for deterministic in (False, True):
                    do = torch.randn_like(out)
                    attention.attention_bwd(
                        do, q, k, v, out, lse, dlse, mask, causal, scale, dropout_p, 7, deterministic, extra
                    )
    attention.dropout_keep_mask(1, 2, 33, 47, 0.1, 7, "cpu")


def decode_problems():
    from fastattn.kernels import decode

    # (dtype, paged, causal/window, softcap, ALiBi): each flag on in some problems and off in others
    for dtype, paged, window, softcap, alibi in (
        (torch.bfloat16, True, (64, 0), 30.0, False),
        (torch.float16, False, None, 0.0, True),
        (torch.float32, True, None, 0.0, False),
    ):
        q = torch.randn(2, 1, 8, 128, dtype=dtype)
        if paged:
            cache = torch.randn(8, 16, 2, 128, dtype=dtype)
            rows, table = None, torch.arange(8, dtype=torch.int32).reshape(2, 4)
        else:
            cache = torch.randn(2, 64, 2, 128, dtype=dtype)
            rows, table = torch.arange(2), None
        decode.decode_attention(
            q,
            cache,
            cache,
            rows,
            table,
            torch.tensor([64, 30]),
            torch.zeros(2, dtype=torch.int64),
            64,
            scale=128**-0.5,
            causal=window is not None,
            window=window,
            softcap=softcap,
            alibi_slopes=torch.rand(8) if alibi else None,
            num_splits=2,
        )


class NormProblem(NamedTuple):
    rows: int
    hidden: int  # up to 4096 both passes keep the row in registers; 16384 only the forward; beyond, both loop
    dtype: torch.dtype
    rms: bool
    residual_dtype: torch.dtype | None  # None: no residual
    param_dtype: torch.dtype | None  # None: no weight (and no bias)


NORM_PROBLEMS = [
    NormProblem(64, 1, torch.float16, False, torch.float32, torch.float32),  # the smallest tile
    NormProblem(8, 512, torch.bfloat16, True, None, None),
    NormProblem(4, 4096, torch.float32, False, torch.float32, torch.float32),  # the largest backward row tile
    NormProblem(2, 16384, torch.float16, True, None, None),  # the largest forward row tile; backward loops
    NormProblem(2, 16384, torch.float16, False, torch.float32, torch.float32),  # ... its most registers
    NormProblem(2, 65536, torch.bfloat16, False, torch.float32, torch.float32),  # both loop
    NormProblem(1, 32768, torch.float32, True, None, None),
]


def norm_problems():
    from fastattn.kernels import norm

    for problem in NORM_PROBLEMS:
        x = torch.randn(problem.rows, problem.hidden, dtype=problem.dtype)
        residual = None if problem.residual_dtype is None else torch.randn_like(x, dtype=problem.residual_dtype)
        weight = None if problem.param_dtype is None else torch.randn(problem.hidden, dtype=problem.param_dtype)
        bias = None if problem.rms or weight is None else torch.randn_like(weight)
        y, s, mean, rstd = norm.norm_fwd(
            x, residual, weight, bias, 1e-5, rms=problem.rms, residual_in_fp32=residual is not None
        )
        for ds in (None, torch.randn_like(s)) if residual is not None else (None,):
            norm.norm_bwd(torch.randn_like(y), ds, x, residual, weight, bias, mean, rstd, rms=problem.rms)


def sampling_problems():
    from fastattn.kernels import sampling

    # (batch, vocab, dtype, programs a row): one row of a large vocabulary per program, several rows of a
    # small one, V = 1, and rows split over several programs (as at batch 1 on a GPU).
    for batch, vocab, dtype, splits in [
        (2, 32000, torch.bfloat16, 1),
        (64, 100, torch.float16, 1),
        (1, 1, torch.float32, 1),
        (1, 128256, torch.float32, 16),
    ]:
        logits = torch.randn(batch, vocab, dtype=dtype)
        temperature = torch.full((batch,), 0.7)
        top_k = torch.full((batch,), 50)
        top_p = torch.full((batch,), 0.9, dtype=torch.float64)
        min_p = torch.zeros(batch, dtype=torch.float64)
        seeds = torch.arange(batch)
        for return_logprobs in (False, True):
            sampling.sample(logits, temperature, top_k, top_p, min_p, seeds, return_logprobs, splits=splits)
        sampling.filter_mask(logits, temperature, top_k, top_p, min_p, splits=splits)


def probe_problems():
    from fastattn.kernels import probe

    probe.copy(torch.arange(37, dtype=torch.float32))


def defined_kernels() -> list[str]:
    """Every kernel the package launches: the @triton.jit functions named ``*_kernel`` (the others are
    device functions, compiled into the kernels that call them)."""
    import importlib
    import pkgutil

    import fastattn.kernels

    names = []
    for module_info in pkgutil.iter_modules(fastattn.kernels.__path__):
        module = importlib.import_module(f"fastattn.kernels.{module_info.name}")
        names += [name for name, value in vars(module).items() if isinstance(value, JITFunction)]
    return sorted(name for name in names if name.endswith("_kernel"))


def main(arch: int, limits: list[int]) -> int:
    global shared_memory_limit
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("TRITON_INTERPRET must be unset: the interpreter's kernels cannot be compiled", file=sys.stderr)
        return 2
    driver.set_active(CompileOnlyDriver(arch))
    JITFunction.run = compile_instead_of_launch
    CUDABackend.make_cubin = capture_ptxas_log
    knobs.compilation.always_compile = True  # a kernel found in Triton's cache would come without ptxas' report
    from fastattn.kernels import interpreter

    interpreter.interpreted = lambda device: False  # choose as for a GPU
    for shared_memory_limit in limits:
        for problems in (attention_problems, decode_problems, norm_problems, sampling_problems, probe_problems):
            try:
                problems()
            except Exception:
                where = f"sm_{arch} with {shared_memory_limit} bytes of shared memory"
                print(f"{where}: {problems.__name__} failed after compiling {len(compiled)} variants:", file=sys.stderr)
                traceback.print_exc()
                return 1
    print(json.dumps({"arch": arch, "defined": defined_kernels(), "compiled": list(compiled.values())}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.split("\n\n")[1])
    sys.exit(main(int(sys.argv[1]), [int(limit) for limit in sys.argv[2:]]))
