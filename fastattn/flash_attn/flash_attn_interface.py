"""FlashAttention-2's attention functions on fastattn (``flash_attn.flash_attn_interface``'s).

The functions take FlashAttention-2's arguments, defaults and ``(batch, seqlen, heads, head_dim)``
layout (``(total, heads, head_dim)`` for the varlen ones) and return what it returns: ``out`` in that
layout, and with ``return_attn_probs=True`` also ``softmax_lse`` (float32 ``(batch, heads, seqlen_q)``,
``(heads, total_q)`` for varlen) and ``S_dmask``. They run :func:`fastattn.attention` and
:func:`fastattn.attention_varlen`, so each call takes the backend ``auto`` picks.

Deliberate differences from FlashAttention-2:

- any device, float32 as well as float16/bfloat16, every head dim from 1 to the fused backends' limit
  (``fastattn.capabilities``; larger ones on the torch or naive backend);
- ``S_dmask`` (only with ``dropout_p > 0``, else None, as there) is ``(batch, heads, seqlen_q,
  seqlen_k)`` (padded to the longest sequences for varlen), not rounded up to FlashAttention's tiles.
  As there, it holds the unnormalized probabilities ``exp(s - m)``, negative where dropped, with ``m``
  the running row maximum at each block of :func:`_get_block_size_n` keys; our block spans the whole
  row, so ``m`` is the row's maximum and ``S_dmask · exp(m - lse)`` the probabilities. It comes from
  a slow path that forms the whole matrix: it exists for testing;
- ``flash_attn_with_kvcache`` takes any paged block size that is a multiple of 16 (FlashAttention-2:
  256), and contiguous caches as well; ``flash_attn_varlen_func`` with a ``block_table`` gathers the
  pages into a packed copy before attending.
"""

from __future__ import annotations

import torch

from .. import reference
from ..ops.attention import attention, attention_varlen
from ..ops.kvcache import attention_with_kvcache, packed_from_pages


def _features(window_size, softcap, alibi_slopes) -> dict:
    """FlashAttention-2's window, softcap and ALiBi as fastattn.attention's keywords."""
    window = tuple(window_size)
    unlimited = len(window) == 2 and all(not isinstance(side, bool) and side == -1 for side in window)
    return dict(window=None if unlimited else window, softcap=softcap, alibi_slopes=alibi_slopes)


# FlashAttention-2 names the build that runs its AMD Triton kernels with this flag (its tests skip what
# only its CUDA extension checks): ours is neither.
USE_TRITON_ROCM = False


def _get_block_size_n(device, head_dim, is_dropout, is_causal):
    """The keys per block of ``S_dmask``'s running maximum (FlashAttention-2's tests split the scores
    by it to normalize ``S_dmask``): ours is the whole row, so any width beyond every sequence."""
    return 2**31 - 1


def _with_probs(q, k, v, dropout_p, scale, causal, features):
    """(out, lse, S_dmask) for (B, H, N, D) inputs with dropout, through the reference (the slow path
    that forms the probabilities): out is computed from the very keep pattern S_dmask encodes."""
    compute = torch.promote_types(q.dtype, torch.float32)
    q32, k32, v32 = (t.to(compute) for t in (q, k, v))
    options = dict(causal=causal, scale=scale, **features)
    scores = reference.attention_scores(q32, k32, **options)  # (B, H, Nq, Nk), -inf where invisible
    keep = torch.rand(scores.shape, device=q.device) >= dropout_p
    out, lse = reference.attention(q32, k32, v32, dropout_p=dropout_p, dropout_keep=keep, return_lse=True, **options)
    row_max = scores.amax(dim=-1, keepdim=True) if scores.shape[-1] else scores.new_zeros((*scores.shape[:-1], 1))
    unnormalized = torch.exp(scores - torch.where(row_max.isinf(), 0.0, row_max))  # exp(s - m); 0 where invisible
    s_dmask = torch.where(keep, unnormalized, -unnormalized).detach().to(q.dtype)  # negative: dropped
    return out.to(q.dtype), lse.float(), s_dmask


# The keywords every function of FlashAttention-2's API takes, in its order, with its defaults.
COMMON_KEYWORDS = (
    "dropout_p",
    "softmax_scale",
    "causal",
    "window_size",
    "softcap",
    "alibi_slopes",
    "deterministic",
    "return_attn_probs",
)


def _common(arguments: dict) -> dict:
    """The common keywords out of a function's ``locals()``."""
    return {name: arguments[name] for name in COMMON_KEYWORDS}


def _padded(
    q, k, v, *, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs
):
    """q (B, Nq, H, D), k, v (B, Nk, Hk, D): FlashAttention-2's padded call."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, D) views, no copy
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    features = _features(window_size, softcap, alibi_slopes)
    slow = return_attn_probs and dropout_p > 0  # S_dmask wanted: the keep pattern must be the one out was made with
    out, lse = attention(
        q,
        k,
        v,
        causal=causal,
        scale=scale,
        dropout_p=0.0 if slow else dropout_p,
        deterministic=deterministic,
        return_lse=True,
        **features,
    )  # checks every argument
    s_dmask = None
    if slow:
        out, lse, s_dmask = _with_probs(q, k, v, dropout_p, scale, causal, features)
    out = out.transpose(1, 2).contiguous()  # (B, Nq, H, D)
    return (out, lse, s_dmask) if return_attn_probs else out


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_k, headdim), nheads a
    multiple of nheads_k. Returns out (batch, seqlen_q, nheads, headdim), and with
    ``return_attn_probs`` also (softmax_lse, S_dmask). Causal and window masks are aligned to the
    bottom-right corner; ``window_size=(left, right)``, -1 unlimited."""
    return _padded(q, k, v, **_common(locals()))


def flash_attn_qkvpacked_func(
    qkv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """qkv: (batch, seqlen, 3, nheads, headdim); otherwise as :func:`flash_attn_func`."""
    q, k, v = qkv.unbind(dim=2)
    return _padded(q, k, v, **_common(locals()))


def flash_attn_kvpacked_func(
    q,
    kv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """q: (batch, seqlen_q, nheads, headdim); kv: (batch, seqlen_k, 2, nheads_k, headdim)."""
    k, v = kv.unbind(dim=2)
    return _padded(q, k, v, **_common(locals()))


def _varlen(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    *,
    dropout_p,
    softmax_scale,
    causal,
    window_size,
    softcap,
    alibi_slopes,
    deterministic,
    return_attn_probs,
):
    """q (total_q, H, D), k, v (total_k, Hk, D): FlashAttention-2's varlen call."""
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    features = _features(window_size, softcap, alibi_slopes)
    out, lse = attention_varlen(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        causal=causal,
        scale=scale,
        dropout_p=0.0 if return_attn_probs and dropout_p > 0 else dropout_p,
        deterministic=deterministic,
        return_lse=True,
        **features,
    )  # checks every argument; with dropout and S_dmask wanted, only the lse is kept
    if not return_attn_probs:
        return out
    if dropout_p == 0:
        return out, lse, None
    outs, s_dmask = [], q.new_zeros((len(cu_seqlens_q) - 1, q.shape[1], max_seqlen_q, max_seqlen_k))
    for b in range(len(cu_seqlens_q) - 1):
        rows_q = slice(int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]))
        rows_k = slice(int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1]))
        slopes = alibi_slopes[b] if alibi_slopes is not None and alibi_slopes.dim() == 2 else alibi_slopes
        one = (t[rows].transpose(0, 1)[None] for t, rows in ((q, rows_q), (k, rows_k), (v, rows_k)))
        one_out, _, one_probs = _with_probs(*one, dropout_p, scale, causal, {**features, "alibi_slopes": slopes})
        outs.append(one_out[0].transpose(0, 1))
        s_dmask[b, :, : one_probs.shape[2], : one_probs.shape[3]] = one_probs[0]
    return torch.cat(outs), lse, s_dmask


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """q: (total_q, nheads, headdim); k, v: (total_k, nheads_k, headdim); cu_seqlens_q/k int32
    (batch + 1,). Returns out (total_q, nheads, headdim), and with ``return_attn_probs`` also
    (softmax_lse (nheads, total_q), S_dmask). Each sequence attends only within itself. With
    ``block_table`` int32 (batch, max_blocks), k and v are pages (num_blocks, block_size, nheads_k,
    headdim) and sequence b's keys are the first cu_seqlens_k[b + 1] - cu_seqlens_k[b] positions of
    its pages (gathered into a packed copy first)."""
    if block_table is not None:
        k, v = packed_from_pages(k, v, cu_seqlens_k, block_table)
    return _varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **_common(locals()))


def flash_attn_varlen_qkvpacked_func(
    qkv,
    cu_seqlens,
    max_seqlen,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """qkv: (total, 3, nheads, headdim); otherwise as :func:`flash_attn_varlen_func`."""
    q, k, v = qkv.unbind(dim=1)
    return _varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **_common(locals()))


def flash_attn_varlen_kvpacked_func(
    q,
    kv,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """q: (total_q, nheads, headdim); kv: (total_k, 2, nheads_k, headdim)."""
    k, v = kv.unbind(dim=1)
    return _varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **_common(locals()))


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens=None,
    cache_batch_idx=None,
    cache_leftpad=None,
    block_table=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    rotary_interleaved=True,
    alibi_slopes=None,
    num_splits=0,
    return_softmax_lse=False,
):
    """Decoding (and chunked prefill) against a KV cache, FlashAttention-2's semantics.

    q: (batch, seqlen_q, nheads, headdim). k_cache, v_cache: (batch_cache, seqlen_cache, nheads_k,
    headdim), or paged (num_blocks, block_size, nheads_k, headdim) with ``block_table`` int32 (batch,
    max_blocks); the block size any multiple of 16. k, v: (batch, seqlen_new, nheads_k, headdim), written
    into the cache in place after ``cache_seqlens`` (int or int32 (batch,); default: the cache full) and
    attended to with it. rotary_cos, rotary_sin: (seqlen_ro, rotary_dim / 2), applied to the new k at
    its positions and to q (at the positions after the cached ones when causal or windowed, else all at
    the first). cache_batch_idx: the contiguous cache's row of each sequence; cache_leftpad: where each
    sequence's keys start. Masks are aligned to each sequence's last key. ``num_splits`` (0: chosen
    from the shapes) is how many parts the keys are split into; the result does not depend on it.

    Returns out (batch, seqlen_q, nheads, headdim), and with ``return_softmax_lse`` also softmax_lse
    float32 (batch, nheads, seqlen_q).
    """
    if not (isinstance(num_splits, int) and num_splits >= 0):
        raise ValueError(f"num_splits must be an int >= 0 (0: chosen from the shapes), got {num_splits!r}")
    features = _features(window_size, softcap, alibi_slopes)
    return attention_with_kvcache(
        q,
        k_cache,
        v_cache,
        k,
        v,
        rotary_cos=rotary_cos,
        rotary_sin=rotary_sin,
        rotary_interleaved=rotary_interleaved,
        cache_seqlens=cache_seqlens,
        cache_batch_idx=cache_batch_idx,
        cache_leftpad=cache_leftpad,
        block_table=block_table,
        scale=softmax_scale,
        causal=causal,
        num_splits=num_splits,
        return_lse=return_softmax_lse,
        **features,
    )
