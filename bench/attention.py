"""Attention: forward and backward TFLOP/s of every provider, side by side.

Standard grid (DESIGN.md §5): hidden size 2048 (H = 2048 / D heads) and 16,384 tokens per batch
(B = 16384 / N), N in 512 .. 16384, D in {64, 128, 256}, causal and not, forward and backward,
bfloat16; ``--quick`` keeps N in {1024, 4096, 16384} and D in {64, 128}. Without a GPU: tiny shapes
(B=1, H=8, D=64, N in 64 .. 256, float32), timed on the CPU.

Providers: ours (``fastattn.attention(backend="cuda" | "triton")``); PyTorch's
``scaled_dot_product_attention`` pinned to each of its backends (flash, efficient, cudnn, math) with
``torch.nn.attention.sdpa_kernel``; ``naive`` (``fastattn.reference.attention``) and
``torch.compile`` of it; and, when installed, flash-attn (2 and 3), xformers and flashinfer.

    python -m fastattn bench attention [--quick] [--plot attention.png]
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

import fastattn
from fastattn import reference

from . import metrics
from .harness import Case, Provider, Skip, backward_call, compile_context, ours_unavailable, peer_module, torch_compiled

TITLE = "attention"
HIDDEN = 2048
TOKENS = 16384
SEQUENCE_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128, 256)
QUICK_SEQUENCE_LENGTHS = (1024, 4096, 16384)
QUICK_HEAD_DIMS = (64, 128)
TINY_SEQUENCE_LENGTHS = (64, 128, 256)
TINY_HEADS, TINY_HEAD_DIM = 8, 64
SCORES_MEMORY_FRACTION = 0.5  # providers that store the N×N scores skip shapes needing more of the GPU
SCORE_COPIES = {"fwd": 4, "bwd": 8}  # scores, masked scores, exp, probabilities (and their gradients)
FLASHINFER_WORKSPACE_BYTES = 128 * 2**20  # the size flashinfer's own examples allocate


def _case(batch, heads, n, head_dim, causal, mode, dtype, device, quick) -> Case:
    def make_inputs() -> dict:
        grad = mode == "bwd"
        shape = (batch, heads, n, head_dim)
        inputs = {name: torch.randn(shape, device=device, dtype=dtype, requires_grad=grad) for name in "qkv"}
        if grad:
            inputs["dout"] = torch.randn(shape, device=device, dtype=dtype)
        return inputs

    element = torch.empty((), dtype=dtype).element_size()
    mask = " causal" if causal else ""
    return Case(
        op="attention",
        mode=mode,
        dtype=str(dtype).removeprefix("torch."),
        label=f"B={batch} H={heads} N={n} D={head_dim}{mask}",
        params={"batch": batch, "heads": heads, "nq": n, "nk": n, "head_dim": head_dim, "causal": causal},
        x_name="N",
        x=n,
        series=f"{mode} D={head_dim}{mask}",
        unit="TFLOP/s",
        work=metrics.attention_flops(batch, heads, n, n, head_dim, causal, mode),
        make_inputs=make_inputs,
        input_bytes=(4 if mode == "bwd" else 3) * batch * heads * n * head_dim * element,
        quick=quick,
    )


def cases(device: torch.device, dtype: torch.dtype) -> list[Case]:
    """The standard grid on a GPU (the --quick part marked), tiny shapes on a CPU."""
    if device.type != "cuda":
        return [
            _case(1, TINY_HEADS, n, TINY_HEAD_DIM, causal, mode, dtype, device, True)
            for mode in ("fwd", "bwd")
            for causal in (False, True)
            for n in TINY_SEQUENCE_LENGTHS
        ]
    return [
        _case(
            TOKENS // n,
            HIDDEN // d,
            n,
            d,
            causal,
            mode,
            dtype,
            device,
            n in QUICK_SEQUENCE_LENGTHS and d in QUICK_HEAD_DIMS,
        )
        for mode in ("fwd", "bwd")
        for d in HEAD_DIMS
        for causal in (False, True)
        for n in SEQUENCE_LENGTHS
    ]


def _in_mode(case: Case, inputs: dict, forward: Callable[[], torch.Tensor]) -> Callable[[], object]:
    """The forward itself, or the backward of one forward (its graph kept for repeated runs)."""
    return forward if case.mode == "fwd" else backward_call(forward(), inputs["dout"])


def _check_scores_fit(case: Case, inputs: dict) -> None:
    """Providers that store the (Nq, Nk) scores of every head skip shapes that cannot fit."""
    q = inputs["q"]
    if q.device.type != "cuda":
        return
    p = case.params
    needed = p["batch"] * p["heads"] * p["nq"] * p["nk"] * q.element_size() * SCORE_COPIES[case.mode]
    available = torch.cuda.get_device_properties(q.device).total_memory * SCORES_MEMORY_FRACTION
    if needed > available:
        raise Skip(f"stores the {p['nq']}x{p['nk']} scores of every head: about {needed / 2**30:.0f} GiB")


def _ours(name: str) -> Provider:
    def build(case, inputs):
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        causal = case.params["causal"]
        return _in_mode(case, inputs, lambda: fastattn.attention(q, k, v, causal=causal, backend=name))

    return Provider(
        name,
        "ours",
        f"fastattn.attention(backend={name!r})",
        build,
        unavailable=ours_unavailable(name, "attention"),
        errors_mean_unsupported=False,
    )


def _sdpa(label: str, backend) -> Provider:
    from torch.nn.attention import sdpa_kernel

    def build(case, inputs):
        if label == "math":
            _check_scores_fit(case, inputs)
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        causal = case.params["causal"]
        return _in_mode(case, inputs, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))

    return Provider(
        f"torch-{label}",
        "pytorch",
        f"F.scaled_dot_product_attention under sdpa_kernel({backend.name})",
        build,
        context=lambda: sdpa_kernel(backend),
    )


def _naive(compiled: bool) -> Provider:
    function, unavailable = torch_compiled(reference.attention) if compiled else (reference.attention, None)

    def build(case, inputs):
        _check_scores_fit(case, inputs)
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        causal = case.params["causal"]
        return _in_mode(case, inputs, lambda: function(q, k, v, causal=causal))

    if not compiled:
        return Provider("naive", "pytorch", "fastattn.reference.attention", build)
    return Provider(
        "torch.compile",
        "pytorch",
        "torch.compile(fastattn.reference.attention)",
        build,
        unavailable=unavailable,
        context=compile_context,
        cpu_opt_in=True,
    )


def _flash_attn(module_name: str, package: str) -> Provider:
    module, why = peer_module(module_name, package)

    def build(case, inputs):
        q, k, v = (inputs[name].transpose(1, 2) for name in "qkv")  # (B, N, H, D) views: no copy
        causal = case.params["causal"]

        def forward():
            result = module.flash_attn_func(q, k, v, causal=causal)
            out = result[0] if isinstance(result, tuple) else result  # some versions also return lse
            return out.transpose(1, 2)

        return _in_mode(case, inputs, forward)

    return Provider(package, "peer", f"{module_name}.flash_attn_func", build, unavailable=why)


def _xformers() -> Provider:
    ops, why = peer_module("xformers.ops", "xformers")

    def build(case, inputs):
        q, k, v = (inputs[name].transpose(1, 2) for name in "qkv")  # (B, N, H, D) views: no copy
        bias = ops.LowerTriangularMask() if case.params["causal"] else None
        return _in_mode(case, inputs, lambda: ops.memory_efficient_attention(q, k, v, attn_bias=bias).transpose(1, 2))

    return Provider("xformers", "peer", "xformers.ops.memory_efficient_attention", build, unavailable=why)


def _flashinfer() -> Provider:
    flashinfer, why = peer_module("flashinfer", "flashinfer")

    def build(case, inputs):
        if case.mode != "fwd":
            raise Skip("flashinfer has no attention backward")
        p = case.params
        q, k, v = (inputs[name].transpose(1, 2).reshape(-1, p["heads"], p["head_dim"]) for name in "qkv")
        workspace = torch.empty(FLASHINFER_WORKSPACE_BYTES, dtype=torch.uint8, device=q.device)
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD")
        starts = torch.arange(p["batch"] + 1, dtype=torch.int32, device=q.device) * p["nq"]
        wrapper.plan(starts, starts, p["heads"], p["heads"], p["head_dim"], causal=p["causal"], q_data_type=q.dtype)
        return lambda: wrapper.run(q, k, v)

    return Provider(
        "flashinfer",
        "peer",
        "flashinfer.BatchPrefillWithRaggedKVCacheWrapper (forward only)",
        build,
        unavailable=why,
    )


def providers(device: torch.device) -> list[Provider]:
    from torch.nn.attention import SDPBackend

    sdpa = [
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("math", SDPBackend.MATH),
    ]
    return [
        _ours("cuda"),
        _ours("triton"),
        *(_sdpa(label, backend) for label, backend in sdpa),
        _naive(compiled=False),
        _naive(compiled=True),
        _flash_attn("flash_attn", "flash-attn"),
        _flash_attn("flash_attn_interface", "flash-attn-3"),
        _xformers(),
        _flashinfer(),
    ]


if __name__ == "__main__":
    from .cli import main

    sys.exit(main([TITLE, *sys.argv[1:]]))
