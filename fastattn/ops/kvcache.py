"""Attention against a KV cache, contiguous or paged: the checks, the in-place append, the rotary
embedding, and the attention over each sequence's cached keys (FlashAttention-2's
``flash_attn_with_kvcache`` semantics; ``fastattn.flash_attn`` maps its arguments here).

A cache is either contiguous, ``(B_cache, S_cache, Hkv, D)`` with sequence ``b`` in row
``cache_batch_idx[b]``, or paged, ``(num_blocks, block_size, Hkv, D)`` with position ``p`` of sequence
``b`` at ``[block_table[b, p // block_size], p % block_size]``. Sequence ``b`` holds positions
``cache_leftpad[b] .. cache_seqlens[b]`` before the call and as many more as the new ``k`` brings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import backends, capabilities
from ..backends import Backend
from ..kernels.layout import last_dim_contiguous  # plain torch: imports no Triton
from .attention import attention, checked_features, used_features
from .rotary import apply_rotary_emb

PAGE_MULTIPLE = 16  # block sizes the paged cache takes: multiples of 16 (the kernels' smallest tile)
MAX_SPLITS = 128  # the most parts the split-KV kernels cut a sequence's keys into
SPLIT_TILE = 64  # keys per tile of the split-KV kernels on a GPU (the CUDA kernel's 32 divides it)
ROWS_PER_PROGRAM = 16  # (query, head) rows of one split-KV program (CUDA; Triton's at least as many)


class CacheBoundsError(ValueError, RuntimeError):
    """Lengths, offsets or pages that would make a kernel read or write outside the cache. A
    ``ValueError``, and a ``RuntimeError`` as FlashAttention-2 raises for the same inputs."""


@dataclass(frozen=True)
class CacheLayout:
    """Where each sequence's keys live, checked: lengths before and after the append, first positions."""

    paged: bool
    capacity: int  # positions one sequence can hold
    lengths: Tensor  # int64 (B,): cached positions before the call (cache_seqlens)
    total: Tensor  # int64 (B,): after appending the new keys
    first: Tensor  # int64 (B,): first position taking part (cache_leftpad)
    rows: Tensor | None  # int64 (B,): the contiguous cache's row of each sequence
    block_table: Tensor | None  # int64 (B, max_blocks): the pages of each sequence
    longest: int  # the most keys one sequence attends to (total - first), read on the host with the checks


def _as_lengths(name: str, value, batch: int, device, default: int) -> Tensor:
    """An int or ``(B,)`` integer tensor as int64 ``(B,)``; ``default`` where None."""
    if value is None:
        return torch.full((batch,), default, dtype=torch.int64, device=device)
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.full((batch,), value, dtype=torch.int64, device=device)
    if not isinstance(value, Tensor) or value.dtype.is_floating_point or value.dim() != 1 or len(value) != batch:
        got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"{name} must be an int or an integer tensor of shape (batch,) = ({batch},), got {got}")
    if value.device != device:
        raise ValueError(f"{name} must be on {device}, got {value.device}")
    return value.to(torch.int64)


def check_cache(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k: Tensor | None,
    v: Tensor | None,
    cache_seqlens,
    cache_batch_idx: Tensor | None,
    cache_leftpad: Tensor | None,
    block_table: Tensor | None,
) -> CacheLayout:
    """Raises a clear error for anything a kernel would read out of bounds; else the cache's layout.
    Reads the lengths and the page table on the host (a synchronization)."""
    for name, tensor in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(tensor, Tensor) or tensor.dim() != 4 or not tensor.is_floating_point():
            raise ValueError(f"{name} must be a 4-D floating-point tensor, got {getattr(tensor, 'shape', tensor)}")
    batch, new_q, heads_q, head_dim = q.shape
    if k_cache.shape != v_cache.shape or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(
            f"k_cache and v_cache must have one shape and q's dtype {q.dtype}, got "
            f"{tuple(k_cache.shape)} {k_cache.dtype} and {tuple(v_cache.shape)} {v_cache.dtype}"
        )
    heads_kv = k_cache.shape[2]
    if k_cache.shape[3] != head_dim or heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(
            f"k_cache (.., Hkv, D) = {tuple(k_cache.shape)} must have q's head_dim {head_dim} and Hkv dividing "
            f"q's {heads_q} heads"
        )
    if (k is None) != (v is None):
        raise ValueError("k and v (the new keys and values) must be given together")
    new_k = 0
    if k is not None:
        if k.shape != v.shape or k.dim() != 4 or k.shape[0] != batch or k.shape[2:] != k_cache.shape[2:]:
            raise ValueError(
                f"k and v must be (batch, seqlen_new, Hkv, D) = ({batch}, ., {heads_kv}, {head_dim}), "
                f"got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise TypeError(f"k and v must have q's dtype {q.dtype}, got {k.dtype} and {v.dtype}")
        new_k = k.shape[1]
    device = q.device
    for name, tensor in (("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v)):
        if tensor is not None and tensor.device != device:
            raise ValueError(f"{name} must be on q's device {device}, got {tensor.device}")

    paged = block_table is not None
    if paged:
        if not isinstance(block_table, Tensor) or block_table.dtype != torch.int32 or block_table.dim() != 2:
            raise TypeError(
                "block_table must be an int32 (batch, max_blocks) tensor, "
                f"got {getattr(block_table, 'dtype', block_table)}"
            )
        if block_table.shape[0] != batch or block_table.device != device:
            raise ValueError(
                f"block_table must be ({batch}, max_blocks) on {device}, "
                f"got {tuple(block_table.shape)} on {block_table.device}"
            )
        block_size = k_cache.shape[1]
        if block_size % PAGE_MULTIPLE:
            raise ValueError(
                f"the paged cache's block size (k_cache.shape[1]) must be a multiple of {PAGE_MULTIPLE}, "
                f"got {block_size}"
            )
        if cache_batch_idx is not None or cache_leftpad is not None:
            raise ValueError(
                "cache_batch_idx and cache_leftpad apply to a contiguous cache, not a paged one (block_table)"
            )
        capacity = block_table.shape[1] * block_size
    else:
        capacity = k_cache.shape[1]
    lengths = _as_lengths("cache_seqlens", cache_seqlens, batch, device, capacity - new_k)
    first = _as_lengths("cache_leftpad", cache_leftpad, batch, device, 0)
    total = lengths + new_k
    lengths_host, first_host = lengths.tolist(), first.tolist()
    for b, (length, start) in enumerate(zip(lengths_host, first_host, strict=True)):
        if not 0 <= start <= length or length + new_k > capacity:
            room = "block_table's max_blocks x block_size" if paged else "cache's"
            raise CacheBoundsError(
                f"sequence {b}: cache_leftpad {start} and cache_seqlens {length} (+ {new_k} new) must satisfy "
                f"0 <= leftpad <= seqlens and seqlens + new <= the {room} {capacity} positions"
            )
    rows = None
    if not paged:
        rows = _as_lengths("cache_batch_idx", cache_batch_idx, batch, device, 0)
        if cache_batch_idx is None:
            rows = torch.arange(batch, device=device)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= k_cache.shape[0]):
            raise CacheBoundsError(
                f"cache_batch_idx must index the cache's {k_cache.shape[0]} rows, got {rows.tolist()}"
            )
    table = None
    if paged:
        table = block_table.to(torch.int64)
        _check_pages(table, total, k_cache.shape[1], k_cache.shape[0], f"the cache's {k_cache.shape[0]} blocks")
    longest = max((length + new_k - start for length, start in zip(lengths_host, first_host, strict=True)), default=0)
    return CacheLayout(paged, capacity, lengths, total, first, rows, table, longest)


def _check_pages(table: Tensor, lengths: Tensor, block_size: int, num_blocks: int, blocks: str) -> None:
    """Raises unless every page holding one of a sequence's ``lengths`` positions is in 0..num_blocks - 1
    (unused entries of the table may hold anything); ``blocks`` names them in the message."""
    used = (torch.arange(table.shape[1], device=table.device)[None, :] * block_size) < lengths[:, None]
    pages = table[used]
    if pages.numel() and (int(pages.min()) < 0 or int(pages.max()) >= num_blocks):
        raise CacheBoundsError(
            f"block_table must point into {blocks} wherever a sequence has positions, "
            f"got pages {int(pages.min())}..{int(pages.max())}"
        )


def packed_from_pages(k_cache: Tensor, v_cache: Tensor, cu_seqlens_k: Tensor, block_table: Tensor):
    """The keys and values of packed sequences held in pages, packed ``(total_k, Hkv, D)``: sequence
    ``b`` has ``cu_seqlens_k[b + 1] - cu_seqlens_k[b]`` positions in the pages of ``block_table[b]``
    (FlashAttention-2's varlen call with a ``block_table``). Checked like :func:`check_cache`."""
    if not isinstance(block_table, Tensor) or block_table.dtype != torch.int32 or block_table.dim() != 2:
        got = getattr(block_table, "dtype", block_table)
        raise TypeError(f"block_table must be an int32 (batch, max_blocks) tensor, got {got}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[1] % PAGE_MULTIPLE:
        raise ValueError(
            f"with a block_table, k and v must be pages (num_blocks, block_size, Hkv, D) of one shape with a block "
            f"size a multiple of {PAGE_MULTIPLE}, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    batch, block_size = block_table.shape[0], k_cache.shape[1]
    if not isinstance(cu_seqlens_k, Tensor) or cu_seqlens_k.dim() != 1 or len(cu_seqlens_k) != batch + 1:
        raise ValueError(f"cu_seqlens_k must be (batch + 1,) = ({batch + 1},) with a block_table")
    lengths = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).to(torch.int64)  # keys per sequence
    capacity = block_table.shape[1] * block_size
    for b, length in enumerate(lengths.tolist()):
        if not 0 <= length <= capacity:
            raise CacheBoundsError(
                f"sequence {b} has {length} keys; the block_table's max_blocks x block_size holds {capacity}"
            )
    table = block_table.long()
    _check_pages(table, lengths, block_size, k_cache.shape[0], f"the {k_cache.shape[0]} blocks of k and v")
    sequence = torch.repeat_interleave(torch.arange(batch, device=table.device), lengths)  # (total_k,)
    position = torch.arange(len(sequence), device=table.device) - cu_seqlens_k[sequence].long()
    page, slot = table[sequence, position // block_size], position % block_size
    return k_cache[page, slot], v_cache[page, slot]


def cache_slots(layout: CacheLayout, positions: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """(first index, second index) into the cache of ``positions`` (B, n) of each sequence."""
    if layout.paged:
        page = layout.block_table.gather(1, (positions // block_size).clamp_max(layout.block_table.shape[1] - 1))
        return page, positions % block_size
    return layout.rows[:, None].expand_as(positions), positions


def append(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor, layout: CacheLayout) -> None:
    """Writes the new keys and values into the cache, in place, after each sequence's cached ones."""
    positions = layout.lengths[:, None] + torch.arange(k.shape[1], device=k.device)[None, :]  # (B, n)
    first, second = cache_slots(layout, positions, k_cache.shape[1])
    k_cache[first, second] = k
    v_cache[first, second] = v


def gather(k_cache: Tensor, v_cache: Tensor, layout: CacheLayout) -> tuple[Tensor, Tensor, Tensor]:
    """Each sequence's keys and values ``(B, Hkv, N, D)``, right-aligned (its last key in the last
    column, so that bottom-right masks and ALiBi distances hold for every row), and the bool
    ``(B, N)`` mask of the columns that hold a key."""
    width = layout.longest
    positions = layout.total[:, None] - width + torch.arange(width, device=layout.total.device)[None, :]  # (B, N)
    holds_key = positions >= layout.first[:, None]
    first, second = cache_slots(layout, positions.clamp_min(0), k_cache.shape[1])
    keys = k_cache[first, second].transpose(1, 2)  # (B, Hkv, N, D)
    values = v_cache[first, second].transpose(1, 2)
    return keys, values, holds_key


def attention_with_kvcache(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k: Tensor | None = None,
    v: Tensor | None = None,
    *,
    rotary_cos: Tensor | None = None,
    rotary_sin: Tensor | None = None,
    rotary_interleaved: bool = True,
    cache_seqlens=None,
    cache_batch_idx: Tensor | None = None,
    cache_leftpad: Tensor | None = None,
    block_table: Tensor | None = None,
    scale: float | None = None,
    causal: bool = False,
    window: tuple[int, int] | None = None,
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    num_splits: int = 0,
    return_lse: bool = False,
    backend: str = "auto",
):
    """Attention of ``q (B, Sq, Hq, D)`` against each sequence's cached keys (and the new ``k``, ``v`` ``(B, Sn, Hkv,
    D)``, appended in place first). Returns ``out (B, Sq, Hq, D)``, or with ``return_lse`` ``(out, lse)``, lse
    float32 ``(B, Hq, Sq)``. Masks are aligned to each sequence's last key (bottom-right). With ``rotary_cos``,
    ``rotary_sin`` ``(seqlen_rotary, rotary_dim / 2)``, the new keys are rotated at their positions in the cache
    (``cache_seqlens ..``, left padding included, as FlashAttention-2 does) and q at the positions after the
    cached ones (causal or windowed), or all at the first of them. ``num_splits``: the split-KV kernel's split
    count (0: chosen from the shapes); ``backend``: as in :func:`fastattn.attention` (``torch`` and ``naive``
    attend to each sequence's keys gathered)."""
    layout = check_cache(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, cache_leftpad, block_table)
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    # Checked before the cache is written: a call that raises leaves it as it was.
    features = checked_features(q.transpose(1, 2), causal, window, softcap, alibi_slopes, None)
    window = features.get("window")  # two ints (the sides may come as integer tensors), None when unlimited
    used = used_features(features, return_lse=return_lse) | ({"paged"} if layout.paged else set())
    name = backends.select("flash_attn_with_kvcache", backend, lambda candidate: _reasons(candidate, q, used))
    if rotary_cos is not None:
        start = layout.lengths  # the new tokens' first position in the cache (FlashAttention-2: leftpad included)
        if k is not None:
            k = apply_rotary_emb(k, rotary_cos, rotary_sin, interleaved=rotary_interleaved, seqlen_offsets=start)
        if causal or window is not None:
            q = apply_rotary_emb(q, rotary_cos, rotary_sin, interleaved=rotary_interleaved, seqlen_offsets=start)
        else:  # every query at the first new position: each one as a sequence of length 1
            batch, new_q = q.shape[:2]
            one_each = q.reshape(batch * new_q, 1, *q.shape[2:])
            offsets = start.repeat_interleave(new_q)
            q = apply_rotary_emb(
                one_each, rotary_cos, rotary_sin, interleaved=rotary_interleaved, seqlen_offsets=offsets
            )
            q = q.reshape(batch, new_q, *q.shape[2:])
    if k is not None:
        append(k_cache, v_cache, k, v, layout)
    if name in backends.FUSED:
        out, lse = _split_kv(
            name, q, k_cache, v_cache, layout, scale, causal, window, softcap, alibi_slopes, num_splits
        )
        return (out, lse) if return_lse else out
    keys, values, holds_key = gather(k_cache, v_cache, layout)
    result = attention(
        q.transpose(1, 2),
        keys,
        values,
        causal=causal,
        scale=scale,
        key_padding_mask=holds_key,
        window=window,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        return_lse=return_lse,
        backend=name,
    )
    return (result[0].transpose(1, 2), result[1]) if return_lse else result.transpose(1, 2)


def _split_kv(name, q, k_cache, v_cache, layout, scale, causal, window, softcap, alibi_slopes, num_splits):
    """The fused split-KV kernels of backend ``name``: (out, lse)."""
    batch, seq_q, heads_q, _ = q.shape
    heads_kv = k_cache.shape[2]
    longest = layout.longest
    row_blocks = -(-seq_q * (heads_q // heads_kv) // ROWS_PER_PROGRAM)
    if num_splits == 0:
        num_splits = num_splits_for(batch * heads_kv * row_blocks, longest, _multiprocessors(q.device))
    num_splits = max(1, min(num_splits, MAX_SPLITS, 65535 // max(row_blocks, 1)))  # the CUDA grid's limit
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    table = layout.block_table.to(torch.int32).contiguous() if layout.paged else None
    rows = None if layout.paged else layout.rows.to(torch.int32)
    if name == Backend.TRITON:
        from ..kernels import decode  # imported on first use: triton reads TRITON_INTERPRET then

        return decode.decode_attention(
            q,
            k_cache,
            v_cache,
            rows,
            table,
            layout.total,
            layout.first,
            layout.longest,
            scale=scale,
            causal=causal,
            window=window,
            softcap=softcap,
            alibi_slopes=alibi_slopes,
            num_splits=num_splits,
        )
    from .. import _C

    left, right = window if window is not None else (-1, -1)
    split_size = -(-max(longest, 1) // num_splits)
    split_size = -(-split_size // 32) * 32  # whole 32-key tiles
    alibi = alibi_slopes.to(torch.float32).contiguous() if alibi_slopes is not None else None
    out, lse = _C.attention_decode(
        last_dim_contiguous(q),
        k_cache,
        v_cache,
        rows,
        table,
        layout.total.to(torch.int32),
        layout.first.to(torch.int32),
        longest,
        scale,
        causal,
        left,
        right,
        float(softcap),
        alibi,
        num_splits,
        split_size,
    )
    return out, lse


def num_splits_for(programs: int, longest: int, multiprocessors: int) -> int:
    """The split count when the caller leaves it to us (``num_splits=0``).

    The model: decoding is memory-bound; each program streams its keys at about one SM's share of the
    bandwidth, and an SM needs 2 resident programs to hide the latency of its loads, so a grid of
    ``programs`` (sequence, kv head, row block) programs reaches full bandwidth from 2 programs per SM
    on. Splitting multiplies the programs, at the price of writing and merging one partial output per
    split (``Sq · Hq · D · 4`` bytes each, against ``Nk · Hkv · D · 2 · 2`` bytes of K and V read):
    small while every split keeps at least 2 tiles of keys, which also bounds the count. Examples on
    132 SMs (H100): B = 1, Hkv = 8, 32k keys -> 33 splits; B = 64 (512 programs) -> 1; 100 keys -> 1.
    """
    wanted = -(-2 * multiprocessors // max(programs, 1))  # ceil: programs * splits >= 2 per SM
    most = max(1, longest // (2 * SPLIT_TILE))
    return max(1, min(wanted, most, MAX_SPLITS))


def _multiprocessors(device: torch.device) -> int:
    """SMs of a GPU; 1 elsewhere (the CPU and Triton's interpreter run one program at a time there:
    splitting would only add work)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _reasons(name: str, q: Tensor, used: set[str]) -> list[str]:
    """Why backend ``name`` cannot serve a KV-cache call using the ``used`` features; the torch and
    naive backends run fastattn.attention on each sequence's keys gathered."""
    reasons = backends.device_reasons(name, q.device)
    reasons += capabilities.reasons("kvcache", name, dtypes=[("", q.dtype)], head_dim=q.shape[-1], features=used)
    if name == Backend.CUDA and not reasons:  # the kernel's shared memory is known for the served shapes only
        reasons += capabilities.cuda_shared_memory_reasons(q.dtype, q.shape[-1], ("decode",), q.device)
    return reasons
