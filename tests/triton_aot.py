"""Compiles the package's Triton kernels ahead of time for a GPU architecture, with no GPU present.

    python tests/triton_aot.py ARCH            (ARCH: 80, 90, ...; TRITON_INTERPRET must be unset)

The real launchers are called on small CPU tensors with the interpreter switch of
``fastattn.kernels.interpreter`` turned off, so they choose what they would choose for a GPU (tiles,
warps, stages, output dtypes, the constexpr flags); each launch is compiled for ``GPUTarget("cuda",
ARCH, 32)`` by Triton's own binder (the same signature and specialization as on a GPU) instead of
being run. The problems below reach every tile configuration of the attention kernels' table, both
paths (row in registers, looped) of each norm kernel at its largest and smallest tiles, the split-KV
decode kernels on paged and contiguous caches, the sampling kernels' vocabulary and batched tiles and split rows,
every dtype and every constexpr flag of every kernel, each at least once. The last line printed is a
JSON object: the kernels the package defines, and the compiled variants.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import NamedTuple

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
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


compiled: list[dict] = []


def compile_instead_of_launch(self, *args, grid, warmup, **kwargs):
    constexprs = {name: value for name, value in kwargs.items() if name not in ("num_warps", "num_stages")}
    try:
        kernel = JITFunction_run(self, *args, grid=grid, warmup=True, **kwargs)
    except Exception as error:
        raise RuntimeError(f"{self.fn.__name__} with {kwargs} does not compile: {error}") from error
    compiled.append(
        {
            "kernel": self.fn.__name__,
            "constexprs": {name: value for name, value in constexprs.items() if not hasattr(value, "dtype")},
            "dtypes": sorted({str(arg.dtype).removeprefix("torch.") for arg in args if isinstance(arg, torch.Tensor)}),
            "num_warps": kernel.metadata.num_warps,
            "num_stages": kernel.metadata.num_stages,
            "shared_bytes": kernel.metadata.shared,
        }
    )
    return kernel


JITFunction_run = JITFunction.run


def attention_problems():
    from fastattn.kernels import attention

    # (head_dim, dtype): each bucket of the launcher's GPU table at its largest head dim (the most shared
    # memory), in float16 and bfloat16 taking turns, plus head dims that are not powers of two.
    shapes = [(16, torch.float16), (64, torch.bfloat16), (96, torch.float16), (128, torch.bfloat16)]
    shapes += [(128, torch.float16), (256, torch.bfloat16), (256, torch.float16)]
    shapes += [(40, torch.float32), (128, torch.float32), (256, torch.float32)]
    for index, (head_dim, dtype) in enumerate(shapes):
        causal, padded, dropout = index % 2 == 0, index % 3 == 0, index % 4 == 1
        q = torch.randn(1, 2, 33, head_dim, dtype=dtype)
        k = torch.randn(1, 1, 47, head_dim, dtype=dtype)
        v = torch.randn(1, 1, 47, head_dim, dtype=dtype)
        mask = torch.ones(1, 47, dtype=torch.bool) if padded else None
        scale, dropout_p = head_dim**-0.5, 0.1 if dropout else 0.0
        features = attention.Features(  # each feature on in some problems and off in others
            window=(5, 3) if index % 5 == 1 else (-1, -1),
            softcap=30.0 if index % 3 == 1 else 0.0,
            alibi_slopes=torch.rand(2) if index % 4 == 2 else None,
            sinks=torch.randn(2) if index % 3 == 2 else None,
        )
        out, lse = attention.attention_fwd(q, k, v, mask, causal, scale, dropout_p, 7, features)
        dlse = torch.zeros_like(lse) if index % 2 == 0 else None
        for deterministic in (False, True):
            do = torch.randn_like(out)
            attention.attention_bwd(
                do, q, k, v, out, lse, dlse, mask, causal, scale, dropout_p, 7, deterministic, features
            )
    # packed sequences, with and without the other features
    cu_seqlens = torch.tensor([0, 5, 33], dtype=torch.int32)
    for dtype, sinks in ((torch.bfloat16, torch.randn(2)), (torch.float32, None)):
        q, k, v = torch.randn(33, 2, 64, dtype=dtype), torch.randn(33, 1, 64, dtype=dtype), torch.randn(33, 1, 64)
        packed = attention.Features(
            sinks=sinks, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=28, max_seqlen_k=28
        )
        out, lse = attention.attention_fwd(q, k, v.to(dtype), None, True, 0.125, 0.0, 7, packed)
        for deterministic in (False, True):
            attention.attention_bwd(
                torch.randn_like(out),
                q,
                k,
                v.to(dtype),
                out,
                lse,
                None,
                None,
                True,
                0.125,
                0.0,
                7,
                deterministic,
                packed,
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
    NormProblem(2, 65536, torch.bfloat16, False, torch.float32, torch.float32),  # both loop
    NormProblem(1, 32768, torch.float32, True, None, None),
]


def norm_problems():
    from fastattn.kernels import layer_norm

    for problem in NORM_PROBLEMS:
        x = torch.randn(problem.rows, problem.hidden, dtype=problem.dtype)
        residual = None if problem.residual_dtype is None else torch.randn_like(x, dtype=problem.residual_dtype)
        weight = None if problem.param_dtype is None else torch.randn(problem.hidden, dtype=problem.param_dtype)
        bias = None if problem.rms or weight is None else torch.randn_like(weight)
        y, s, mean, rstd = layer_norm.norm_fwd(
            x, residual, weight, bias, 1e-5, rms=problem.rms, residual_in_fp32=residual is not None
        )
        for ds in (None, torch.randn_like(s)) if residual is not None else (None,):
            layer_norm.norm_bwd(torch.randn_like(y), ds, x, residual, weight, bias, mean, rstd, rms=problem.rms)


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


def main(arch: int) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("TRITON_INTERPRET must be unset: the interpreter's kernels cannot be compiled", file=sys.stderr)
        return 2
    driver.set_active(CompileOnlyDriver(arch))
    JITFunction.run = compile_instead_of_launch
    from fastattn.kernels import interpreter

    interpreter.interpreted = lambda device: False  # choose as for a GPU
    for problems in (attention_problems, decode_problems, norm_problems, sampling_problems, probe_problems):
        try:
            problems()
        except Exception:
            print(f"sm_{arch}: {problems.__name__} failed after compiling {len(compiled)} variants:", file=sys.stderr)
            traceback.print_exc()
            return 1
    print(json.dumps({"defined": defined_kernels(), "compiled": compiled}))
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
