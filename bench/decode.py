"""Decoding against a KV cache: achieved bandwidth (bytes of K and V read per second) of every provider.

One new query per sequence against a full cache, Hq/Hkv = 32/8 (GQA), D = 128, bfloat16, B in
{1, 8, 64}, cache lengths 1k..32k, the cache contiguous or paged (blocks of 16 and 256 positions).
Decoding is memory-bound: each step must read every cached key and value once, so the measure is
those bytes over the time, against the device's copy bandwidth (the ceiling on plots). Without a GPU:
tiny shapes (Hq/Hkv = 8/2, D = 64, float32), timed on the CPU.

Providers: ours (``flash_attn_with_kvcache``'s op with ``backend="cuda" | "triton"``: the split-KV
kernels, the checks of the arguments included); PyTorch's ``scaled_dot_product_attention`` on the
contiguous cache (it reads no page table); ``naive`` (``fastattn.reference.attention``); and, when
installed, flash-attn's ``flash_attn_with_kvcache`` (its paged cache takes blocks of 256 only).

    python -m fastattn bench decode [--quick] [--plot decode.png]
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from fastattn import reference
from fastattn.ops.kvcache import attention_with_kvcache

from .harness import Case, Provider, Skip, ours_provider, peer_provider

TITLE = "decode"
HEADS_Q, HEADS_KV, HEAD_DIM = 32, 8, 128
BATCHES = (1, 8, 64)
CACHE_LENGTHS = (1024, 4096, 16384, 32768)
LAYOUTS = ("contiguous", "paged 16", "paged 256")
QUICK_CACHE_LENGTHS = (4096, 32768)
TINY = dict(heads_q=8, heads_kv=2, head_dim=64, batches=(1, 4), lengths=(256, 1024), layouts=("contiguous", "paged 16"))


def _case(batch, length, layout, heads_q, heads_kv, head_dim, dtype, device, quick) -> Case:
    block_size = int(layout.split()[1]) if layout.startswith("paged") else None

    def make_inputs() -> dict:
        q = torch.randn(batch, 1, heads_q, head_dim, device=device, dtype=dtype)
        inputs = {"q": q, "cache_seqlens": torch.full((batch,), length, dtype=torch.int32, device=device)}
        if block_size is None:
            shape = (batch, length, heads_kv, head_dim)
            inputs["block_table"] = None
        else:
            pages = batch * length // block_size
            shape = (pages, block_size, heads_kv, head_dim)
            order = torch.randperm(pages, device=device).to(torch.int32)  # pages scattered through the pool
            inputs["block_table"] = order.reshape(batch, length // block_size)
        inputs["k_cache"] = torch.randn(shape, device=device, dtype=dtype)
        inputs["v_cache"] = torch.randn(shape, device=device, dtype=dtype)
        return inputs

    element = torch.empty((), dtype=dtype).element_size()
    kv_bytes = 2 * batch * length * heads_kv * head_dim * element
    return Case(
        op="decode",
        mode="fwd",
        dtype=str(dtype).removeprefix("torch."),
        label=f"B={batch} cache={length} {layout} H={heads_q}/{heads_kv} D={head_dim}",
        params={"batch": batch, "length": length, "layout": layout, "block_size": block_size},
        x_name="cache length",
        x=length,
        series=f"B={batch} {layout}",
        unit="GB/s",
        work=float(kv_bytes),
        make_inputs=make_inputs,
        input_bytes=kv_bytes,
        quick=quick,
    )


def cases(device: torch.device, dtype: torch.dtype) -> list[Case]:
    if device.type != "cuda":
        shape = (TINY["heads_q"], TINY["heads_kv"], TINY["head_dim"])
        return [
            _case(batch, length, layout, *shape, dtype, device, True)
            for layout in TINY["layouts"]
            for batch in TINY["batches"]
            for length in TINY["lengths"]
        ]
    return [
        _case(batch, length, layout, HEADS_Q, HEADS_KV, HEAD_DIM, dtype, device, length in QUICK_CACHE_LENGTHS)
        for layout in LAYOUTS
        for batch in BATCHES
        for length in CACHE_LENGTHS
    ]


def _ours(name: str) -> Provider:
    def build(case, inputs):
        arguments = {key: inputs[key] for key in ("cache_seqlens", "block_table")}
        q, k_cache, v_cache = inputs["q"], inputs["k_cache"], inputs["v_cache"]
        return lambda: attention_with_kvcache(q, k_cache, v_cache, causal=True, backend=name, **arguments)

    description = f"fastattn.ops.kvcache.attention_with_kvcache(backend={name!r}) (flash_attn_with_kvcache)"
    return ours_provider(name, description, build, "attention")


def _contiguous(case: Case, inputs: dict, who: str) -> tuple:
    """(q, k, v) as (B, H, N, D) views of a contiguous cache; a paged one is skipped."""
    if case.params["block_size"] is not None:
        raise Skip(f"{who} reads no paged cache (see the contiguous rows)")
    q = inputs["q"].transpose(1, 2)  # (B, Hq, 1, D)
    return q, inputs["k_cache"].transpose(1, 2), inputs["v_cache"].transpose(1, 2)


def _sdpa() -> Provider:
    def build(case, inputs):
        q, k, v = _contiguous(case, inputs, "scaled_dot_product_attention")
        return lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    return Provider("torch", "pytorch", "F.scaled_dot_product_attention(enable_gqa=True)", build)


def _naive() -> Provider:
    def build(case, inputs):
        q, k, v = _contiguous(case, inputs, "the textbook attention")
        return lambda: reference.attention(q, k, v)

    return Provider("naive", "pytorch", "fastattn.reference.attention", build)


def _flash_attn() -> Provider:
    def build(module, case, inputs):
        if case.params["block_size"] not in (None, 256):
            raise Skip("its paged cache takes blocks of 256 positions only")
        arguments = {key: inputs[key] for key in ("cache_seqlens", "block_table")}
        q, k_cache, v_cache = inputs["q"], inputs["k_cache"], inputs["v_cache"]
        return lambda: module.flash_attn_with_kvcache(q, k_cache, v_cache, causal=True, **arguments)

    return peer_provider("flash-attn", "flash-attn", "flash_attn", "flash_attn.flash_attn_with_kvcache", build)


def providers(device: torch.device) -> list[Provider]:
    return [_ours("cuda"), _ours("triton"), _sdpa(), _naive(), _flash_attn()]


if __name__ == "__main__":
    from .cli import main

    sys.exit(main([TITLE, *sys.argv[1:]]))
