"""Attention: forward and backward TFLOP/s of every provider, side by side.

Standard grid (DESIGN.md §5): hidden size 2048 (H = 2048 / D heads) and 16,384 tokens per batch
(B = 16384 / N), N in 512 .. 16384, D in {64, 128, 256}, causal and not, forward and backward,
bfloat16; ``--quick`` keeps N in {1024, 4096, 16384} and D in {64, 128}. Without a GPU: tiny shapes
(B=1, H=8, D=64, N in 64 .. 256, float32), timed on the CPU.

Then the features real models use, at the shapes of the models known for them (bfloat16, forward
and backward): Mistral's 4k sliding window at 16k tokens, Gemma 2's softcap and gpt-oss's sinks at
4k, and a realistic mix of sequence lengths packed (``attention_varlen``) against the same batch
padded to its longest sequence (``key_padding_mask``); their work counts the real tokens' pairs only.
Without a GPU: the same features at tiny shapes.

Providers: ours (``fastattn.attention(backend="cuda" | "triton")``); PyTorch's
``scaled_dot_product_attention`` pinned to each of its backends (flash, efficient, cudnn, math) with
``torch.nn.attention.sdpa_kernel``; ``naive`` (``fastattn.reference.attention``) and
``torch.compile`` of it; and, when installed, flash-attn (2 and 3), xformers and flashinfer.

    python -m fastattn bench attention [--quick] [--plot attention.png]
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

import fastattn
from fastattn import capabilities, reference

from . import metrics
from .harness import Case, Provider, Skip, backward_call, ours_provider, peer_provider, reference_provider

TITLE = "attention"
HIDDEN = 2048
TOKENS = 16384
SEQUENCE_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_SEQUENCE_LENGTHS = (1024, 4096, 16384)
QUICK_HEAD_DIMS = (64, 128)
TINY_SEQUENCE_LENGTHS = (64, 128, 256)
TINY_HEADS, TINY_HEAD_DIM = 8, 64
SCORES_MEMORY_FRACTION = 0.5  # providers that store the N×N scores skip shapes needing more of the GPU
SCORE_COPIES = {"fwd": 4, "bwd": 8}  # scores, masked scores, exp, probabilities (and their gradients)
FLASHINFER_WORKSPACE_BYTES = 128 * 2**20  # the size flashinfer's own examples allocate


def head_dims() -> tuple[int, ...]:
    """The standard grid's head dims: 64, 128 and the widest our fused backends both serve (256)."""
    widest = capabilities.fused_max_head_dim()
    return tuple(d for d in (64, 128) if d < widest) + (widest,)


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
    """The standard grid on a GPU (the --quick part marked), tiny shapes on a CPU; then the features."""
    return _standard_cases(device, dtype) + feature_cases(device, dtype)


def _standard_cases(device: torch.device, dtype: torch.dtype) -> list[Case]:
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
        for d in head_dims()
        for causal in (False, True)
        for n in SEQUENCE_LENGTHS
    ]


# ------------------------------------------------------------------------------- model features
# The packed mix: lengths drawn once (seeded) from a log-normal around 1k tokens (median e^7 ≈ 1100,
# as in instruction-tuning sets), clipped to 32..8192, until 16k tokens: about 12 sequences.
PACKED_TOKENS = 16384
TINY_PACKED_LENGTHS = (100, 30, 7, 1, 118)


def _packed_lengths(tokens: int) -> list[int]:
    generator = torch.Generator().manual_seed(0)
    lengths = []
    while sum(lengths) < tokens:
        draw = float(torch.empty(()).log_normal_(7.0, 0.9, generator=generator))
        lengths.append(min(max(int(draw), 32), 8192, tokens - sum(lengths)))
    return lengths


def _feature_case(feature, batch, heads, heads_kv, n, head_dim, mode, dtype, device, **options) -> Case:
    """A case of one model feature: ``options`` are window, softcap, sinks (bool) or lengths."""
    lengths = options.get("lengths")
    window = options.get("window")

    def make_inputs() -> dict:
        grad = mode == "bwd"
        if lengths is None:
            q_shape, kv_shape = (batch, heads, n, head_dim), (batch, heads_kv, n, head_dim)
        elif feature == "packed":
            q_shape, kv_shape = (sum(lengths), heads, head_dim), (sum(lengths), heads_kv, head_dim)
        else:  # padded: (B, H, longest, D), a key padding mask
            q_shape, kv_shape = (
                (len(lengths), heads, max(lengths), head_dim),
                (len(lengths), heads_kv, max(lengths), head_dim),
            )
        inputs = {"q": torch.randn(q_shape, device=device, dtype=dtype, requires_grad=grad)}
        for name in "kv":
            inputs[name] = torch.randn(kv_shape, device=device, dtype=dtype, requires_grad=grad)
        if grad:
            inputs["dout"] = torch.randn(q_shape, device=device, dtype=dtype)
        if options.get("sinks"):
            inputs["sinks"] = torch.randn(heads, device=device, dtype=torch.float32, requires_grad=grad)
        if lengths is not None:
            counts = torch.tensor(lengths, device=device)
            inputs["cu_seqlens"] = torch.nn.functional.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
            inputs["key_padding_mask"] = torch.arange(max(lengths), device=device)[None, :] < counts[:, None]
        return inputs

    element = torch.empty((), dtype=dtype).element_size()
    sequences = lengths or [n] * batch
    work = sum(metrics.attention_flops(1, heads, m, m, head_dim, True, mode, window) for m in sequences)
    detail = {
        "window": f" window={window}",
        "softcap": f" softcap={options.get('softcap')}",
        "sinks": " sinks",
        "packed": f" {len(sequences)} sequences packed",
        "padded": f" {len(sequences)} sequences padded to {max(sequences)}",
    }[feature]
    shape = f"B={batch} " if lengths is None else ""
    return Case(
        op="attention",
        mode=mode,
        dtype=str(dtype).removeprefix("torch."),
        label=f"{shape}H={heads}/{heads_kv} N={n} D={head_dim} causal{detail}",
        params={
            "batch": len(sequences),
            "heads": heads,
            "nq": max(sequences),
            "nk": max(sequences),
            "head_dim": head_dim,
            "causal": True,
            "feature": feature,
            **options,
        },
        x_name="N",
        x=n,
        series=f"{mode} {feature}",
        unit="TFLOP/s",
        work=work,
        make_inputs=make_inputs,
        input_bytes=(4 if mode == "bwd" else 3) * sum(sequences) * heads * head_dim * element,
        quick=True,
    )


def feature_cases(device: torch.device, dtype: torch.dtype) -> list[Case]:
    """The model features: at the models' shapes on a GPU, tiny ones on a CPU."""
    if device.type != "cuda":
        lengths = list(TINY_PACKED_LENGTHS)
        shapes = [
            ("window", 1, 8, 2, 256, 64, dict(window=(63, 0))),
            ("softcap", 1, 8, 8, 128, 64, dict(softcap=20.0)),
            ("sinks", 1, 8, 2, 128, 64, dict(sinks=True)),
            ("packed", 1, 8, 2, sum(lengths), 64, dict(lengths=lengths)),
            ("padded", 1, 8, 2, sum(lengths), 64, dict(lengths=lengths)),
        ]
    else:
        lengths = _packed_lengths(PACKED_TOKENS)
        shapes = [
            ("window", 1, 32, 8, 16384, 128, dict(window=(4095, 0))),  # Mistral 7B: 4k window, GQA 32/8
            ("softcap", 4, 16, 8, 4096, 256, dict(softcap=50.0)),  # Gemma 2 9B: D = 256, softcap 50
            ("sinks", 4, 64, 8, 4096, 64, dict(sinks=True)),  # gpt-oss: 64 heads of 64, 8 kv heads
            ("packed", 1, 16, 16, PACKED_TOKENS, 128, dict(lengths=lengths)),
            ("padded", 1, 16, 16, PACKED_TOKENS, 128, dict(lengths=lengths)),
        ]
    return [
        _feature_case(feature, batch, heads, heads_kv, n, d, mode, dtype, device, **options)
        for mode in ("fwd", "bwd")
        for feature, batch, heads, heads_kv, n, d, options in shapes
    ]


def _feature(case: Case) -> str | None:
    return case.params.get("feature")


def _attention_keywords(case: Case, inputs: dict) -> dict:
    """fastattn.attention's (and fastattn.reference.attention's) keywords for a padded case."""
    p = case.params
    keywords = {"causal": p["causal"]}
    if p.get("window"):
        keywords["window"] = p["window"]
    if p.get("softcap"):
        keywords["softcap"] = p["softcap"]
    if "sinks" in inputs:
        keywords["sinks"] = inputs["sinks"]
    if _feature(case) == "padded":
        keywords["key_padding_mask"] = inputs["key_padding_mask"]
    return keywords


def _packed_call(case: Case, inputs: dict, function) -> Callable[[], torch.Tensor]:
    """``function(q, k, v, cu, cu, longest, longest, causal=True)`` for a packed case."""
    cu, longest = inputs["cu_seqlens"], case.params["nq"]
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    return lambda: function(q, k, v, cu, cu, longest, longest, causal=True)


def _without_longest(function, q, k, v, cu_q, cu_k, longest_q, longest_k, **options):
    """``function(q, k, v, cu_q, cu_k, **options)``: the textbook takes no longest lengths."""
    return function(q, k, v, cu_q, cu_k, **options)


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
        if _feature(case) == "packed":
            return _in_mode(
                case, inputs, _packed_call(case, inputs, functools.partial(fastattn.attention_varlen, backend=name))
            )
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        keywords = _attention_keywords(case, inputs)
        return _in_mode(case, inputs, lambda: fastattn.attention(q, k, v, backend=name, **keywords))

    return ours_provider(name, f"fastattn.attention(backend={name!r})", build, "attention")


def _sdpa(label: str, backend) -> Provider:
    from torch.nn.attention import sdpa_kernel

    def build(case, inputs):
        feature = _feature(case)
        if feature in ("softcap", "sinks", "packed"):
            raise Skip(f"scaled_dot_product_attention has no {feature}" + (" layout" if feature == "packed" else ""))
        if label == "math":
            _check_scores_fit(case, inputs)
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        gqa = q.shape[1] != k.shape[1]
        if feature is None:
            causal = case.params["causal"]
            return _in_mode(
                case, inputs, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
            )
        # a window or padding: a boolean mask, built once, outside the timing
        keywords = _attention_keywords(case, inputs)
        mask = reference.attention_visibility(
            q.shape[0],
            q.shape[2],
            k.shape[2],
            causal=True,
            key_padding_mask=keywords.get("key_padding_mask"),
            device=q.device,
            window=keywords.get("window"),
        )
        return _in_mode(case, inputs, lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa))

    return Provider(
        f"torch-{label}",
        "pytorch",
        f"F.scaled_dot_product_attention under sdpa_kernel({backend.name})",
        build,
        context=lambda: sdpa_kernel(backend),
    )


def _naive(compiled: bool) -> Provider:
    def build(function, case, inputs):
        _check_scores_fit(case, inputs)
        if _feature(case) == "packed":
            textbook = functools.partial(_without_longest, reference.attention_varlen)
            return _in_mode(case, inputs, _packed_call(case, inputs, textbook))
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        keywords = _attention_keywords(case, inputs)
        return _in_mode(case, inputs, lambda: function(q, k, v, **keywords))

    return reference_provider("naive", "fastattn.reference.attention", build, compiled, reference.attention)


def _flash_attn(module_name: str, package: str) -> Provider:
    def build(module, case, inputs):
        feature, p = _feature(case), case.params
        if feature in ("sinks", "padded"):
            raise Skip("no sinks" if feature == "sinks" else "takes padded batches unpadded: see the packed case")
        if feature == "packed":
            return _in_mode(case, inputs, _packed_call(case, inputs, module.flash_attn_varlen_func))
        q, k, v = (inputs[name].transpose(1, 2) for name in "qkv")  # (B, N, H, D) views: no copy
        keywords = {"causal": p["causal"]}
        if feature == "window":
            keywords["window_size"] = p["window"]
        elif feature == "softcap":
            keywords["softcap"] = p["softcap"]

        def forward():
            result = module.flash_attn_func(q, k, v, **keywords)
            out = result[0] if isinstance(result, tuple) else result  # some versions also return lse
            return out.transpose(1, 2)

        return _in_mode(case, inputs, forward)

    return peer_provider(package, package, module_name, f"{module_name}.flash_attn_func", build)


def _xformers() -> Provider:
    def build(ops, case, inputs):
        if _feature(case) is not None:
            raise Skip(f"not timed with {_feature(case)}")
        q, k, v = (inputs[name].transpose(1, 2) for name in "qkv")  # (B, N, H, D) views: no copy
        bias = ops.LowerTriangularMask() if case.params["causal"] else None
        return _in_mode(case, inputs, lambda: ops.memory_efficient_attention(q, k, v, attn_bias=bias).transpose(1, 2))

    return peer_provider("xformers", "xformers", "xformers.ops", "xformers.ops.memory_efficient_attention", build)


def _flashinfer() -> Provider:
    def build(flashinfer, case, inputs):
        if _feature(case) is not None:
            raise Skip(f"not timed with {_feature(case)}")
        if case.mode != "fwd":
            raise Skip("flashinfer has no attention backward")
        p = case.params
        q, k, v = (inputs[name].transpose(1, 2).reshape(-1, p["heads"], p["head_dim"]) for name in "qkv")
        workspace = torch.empty(FLASHINFER_WORKSPACE_BYTES, dtype=torch.uint8, device=q.device)
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD")
        starts = torch.arange(p["batch"] + 1, dtype=torch.int32, device=q.device) * p["nq"]
        wrapper.plan(starts, starts, p["heads"], p["heads"], p["head_dim"], causal=p["causal"], q_data_type=q.dtype)
        return lambda: wrapper.run(q, k, v)

    description = "flashinfer.BatchPrefillWithRaggedKVCacheWrapper (forward only)"
    return peer_provider("flashinfer", "flashinfer", "flashinfer", description, build)


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
