"""Split-KV attention against a KV cache (flash-decoding), contiguous or paged, in Triton.

Decoding has one query (or a few) per sequence against a long cache: the work is reading K and V, and
a grid of one program per (sequence, key/value head) leaves most of a GPU idle when B · Hkv is small.
So the keys of each (sequence, kv head) are cut into ``num_splits`` parts, one program each:

    program (m-block, split s, sequence b, kv head):  partial O_s = softmax over its keys · V,  lse_s
    merge (sequence b, query head h, query i):       lse = log Σ_s exp(lse_s),  O = Σ_s exp(lse_s - lse) O_s

The merge is exact (the partial softmaxes are rescaled to the common normalizer), so the result does
not depend on the split count beyond float32 rounding. A program serves every query head of its GQA
group from one read of each K/V tile: its rows are (query position, head of the group) pairs.

Keys are counted from each sequence's first position (``cache_leftpad``) to its length; masks and ALiBi
are those of :mod:`kernels.attention` (its helpers), aligned to the sequence's last key. A paged
cache is read through the page table: position p of sequence b is row p % block_size of page
table[b, p // block_size]; a contiguous one through the sequence's cache row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import interpreter
from .attention import LN2, LOG2E, MIN_BLOCK, _cast, _dot, _tile_scores
from .capabilities import MAX_HEAD_DIM
from .layout import last_dim_contiguous

# Keys per tile and rows per program. Decode reads each K/V tile once per group of query heads: 64
# keys x D=128 x 2 bytes = 16 KB per tile and operand, 2 stages of K and V in 64 KB of shared memory.
# Not tuned on a GPU yet. Under the interpreter the cost is the number of tiles, so tiles are large.
_GPU_BLOCK_N, _INTERPRETER_BLOCK_N = 64, 128
MAX_SPLITS = 128  # the merge kernel's BLOCK_S


@triton.jit
def _decode_split_kernel(
    Q,  # (B, Sq, Hq, D), last dim contiguous
    Kc,  # cache of keys: (B_cache, S_cache, Hkv, D), or paged (num_blocks, block_size, Hkv, D); last dim contiguous
    Vc,  # like Kc
    Rows,  # int32 (B,): each sequence's row of a contiguous cache (dummy when PAGED)
    Table,  # int32 (B, max_blocks) page table (dummy unless PAGED)
    Total,  # int32 (B,): positions held after the append
    First,  # int32 (B,): the first position taking part (cache_leftpad)
    Alibi,  # float32 ALiBi slopes (Hq,) or (B, Hq) (dummy without ALIBI)
    OutPart,  # float32 (B, Hq, num_splits, Sq, D) output: each split's normalized partial output
    LsePart,  # float32 (B, Hq, num_splits, Sq) output: each split's lse (natural log; -inf: no key)
    stride_qb,
    stride_qs,
    stride_qh,  # strides of Q
    stride_k0,
    stride_k1,
    stride_kh,  # strides of Kc (batch or page, position or slot, head)
    stride_v0,
    stride_v1,
    stride_vh,  # strides of Vc
    stride_tb,  # Table's batch stride
    stride_ab,  # Alibi's batch stride (0: one slope per head)
    heads_q,  # Hq
    heads_kv,  # Hkv
    group,  # Hq // Hkv
    seq_q,  # Sq
    head_dim,  # D
    page_size,  # block_size of a paged cache
    num_m_blocks,  # cdiv(Sq * group, BLOCK_M)
    num_splits,
    split_size,  # keys per split, a multiple of BLOCK_N
    scale,
    window_left,  # see kernels.attention._visible (unused without BAND)
    window_right,
    softcap,
    BAND: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,
    PAGED: tl.constexpr,
    IEEE: tl.constexpr,  # fp32 dots at ieee precision
    BLOCK_M: tl.constexpr,  # (query, head) rows per program
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two >= 16
):
    pid = tl.program_id(0)
    pid_m = pid % num_m_blocks
    split = pid // num_m_blocks
    bh_kv = tl.program_id(1)
    b = (bh_kv // heads_kv).to(tl.int64)
    h_kv = (bh_kv % heads_kv).to(tl.int64)
    first = tl.load(First + b)
    seq_k = tl.load(Total + b) - first  # keys taking part
    off = seq_k - seq_q  # bottom-right alignment

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (query position, head of the group) pairs
    query = rows // group
    head = h_kv * group + rows % group
    row_ok = query < seq_q
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = Q + b * stride_qb + query[:, None] * stride_qs + head[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d < head_dim)[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    slope = 0.0
    if ALIBI:  # one slope per row: the rows are heads too
        slope = (tl.load(Alibi + b * stride_ab + head, mask=row_ok, other=0.0) * LOG2E)[:, None]

    # This split's keys, narrowed to those the block's queries can see (rows past Sq excluded).
    lo = split * split_size
    hi = tl.minimum(lo + split_size, seq_k)
    if BAND:
        first_query = (pid_m * BLOCK_M) // group
        last_query = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // group, seq_q - 1)
        lo = tl.maximum(lo, ((first_query + off - window_left) // BLOCK_N) * BLOCK_N)
        hi = tl.minimum(hi, last_query + off + window_right + 1)
    if PAGED:
        k_base = Kc + h_kv * stride_kh
        v_base = Vc + h_kv * stride_vh
    else:
        row = tl.load(Rows + b).to(tl.int64)
        k_base = Kc + row * stride_k0 + h_kv * stride_kh
        v_base = Vc + row * stride_v0 + h_kv * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    scoring = (seq_q, seq_k, window_left, window_right, Q, 0, scale, softcap, slope)  # no padding mask
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n  # key indices from the first position
        position = (first + cols).to(tl.int64)
        in_cache = cols < seq_k
        if PAGED:
            page = tl.load(Table + b * stride_tb + position // page_size, mask=in_cache, other=0).to(tl.int64)
            k_rows = k_base + page * stride_k0 + (position % page_size) * stride_k1
            v_rows = v_base + page * stride_v0 + (position % page_size) * stride_v1
        else:
            k_rows = k_base + position * stride_k1
            v_rows = v_base + position * stride_v1
        tile_mask = in_cache[:, None] & (offs_d < head_dim)[None, :]
        k = tl.load(k_rows[:, None] + offs_d[None, :], mask=tile_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
        v = tl.load(v_rows[:, None] + offs_d[None, :], mask=tile_mask, other=0.0)
        qk, s, visible = _tile_scores(q, k, query, cols, scoring, IEEE, SOFTCAP, ALIBI, BAND, False, False)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(_cast(p, v.dtype, IEEE), v, IEEE)
        m_i = m_new

    no_key = l_i == 0.0
    l_safe = tl.where(no_key, 1.0, l_i)
    lse = tl.where(no_key, float("-inf"), (m_i + tl.log2(l_safe)) * LN2)
    part = ((b * heads_q + head) * num_splits + split) * seq_q + query  # (B, Hq, splits, Sq) row
    tl.store(LsePart + part, lse, mask=row_ok)
    out_ptrs = OutPart + part[:, None] * head_dim + offs_d[None, :]
    tl.store(out_ptrs, acc / l_safe[:, None], mask=row_ok[:, None] & (offs_d < head_dim)[None, :])


@triton.jit
def _decode_merge_kernel(
    OutPart,  # float32 (B, Hq, num_splits, Sq, D)
    LsePart,  # float32 (B, Hq, num_splits, Sq)
    Out,  # (B, Sq, Hq, D) output, in q's dtype, contiguous
    Lse,  # float32 (B, Hq, Sq) output
    heads_q,
    seq_q,
    head_dim,
    num_splits,
    IEEE: tl.constexpr,  # see kernels.attention._cast
    BLOCK_S: tl.constexpr,  # splits, padded to a power of two
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)  # (b, h, query)
    query = pid % seq_q
    bh = (pid // seq_q).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    rows = (bh * num_splits + offs_s) * seq_q + query  # this query's row in every split
    lse_s = tl.load(LsePart + rows, mask=offs_s < num_splits, other=float("-inf"))
    top = tl.max(lse_s, 0)
    top_safe = tl.where(top == float("-inf"), 0.0, top)
    weight = tl.exp2((lse_s - top_safe) * LOG2E)  # 0 for splits that saw no key
    total = tl.sum(weight, 0)
    parts = tl.load(
        OutPart + rows[:, None] * head_dim + offs_d[None, :],
        mask=(offs_s < num_splits)[:, None] & (offs_d < head_dim)[None, :],
        other=0.0,
    )
    out = tl.sum(parts * weight[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    b = bh // heads_q
    h = bh % heads_q
    out_row = Out + ((b * seq_q + query) * heads_q + h) * head_dim
    tl.store(out_row + offs_d, _cast(out, Out.dtype.element_ty, IEEE), mask=offs_d < head_dim)
    lse = tl.where(total == 0.0, float("-inf"), top_safe + tl.log2(tl.where(total == 0.0, 1.0, total)) * LN2)
    tl.store(Lse + bh * seq_q + query, lse)


def _block_n(device: torch.device) -> int:
    return _INTERPRETER_BLOCK_N if interpreter.interpreted(device) else _GPU_BLOCK_N


def _block_m(rows: int) -> int:
    """Rows per program: the (query, head) pairs of a group, at least the 16 tl.dot needs, at most 64."""
    return min(64, max(MIN_BLOCK, triton.next_power_of_2(rows)))


def decode_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    rows: Tensor | None,
    block_table: Tensor | None,
    total: Tensor,
    first: Tensor,
    longest: int,
    *,
    scale: float,
    causal: bool,
    window: tuple[int, int] | None,
    softcap: float,
    alibi_slopes: Tensor | None,
    num_splits: int,
) -> tuple[Tensor, Tensor]:
    """Attention of ``q (B, Sq, Hq, D)`` on each sequence's cached keys ``first[b] .. total[b]``.

    ``rows`` (contiguous cache) or ``block_table`` (paged) locate them, and ``longest`` is the most
    keys of one sequence, ``max(total - first)``; the caller has checked that every position and page
    is in range. Returns out ``(B, Sq, Hq, D)`` contiguous in q's dtype and
    float32 lse ``(B, Hq, Sq)``. The keys are cut into ``num_splits`` parts of whole tiles (fewer
    when there are not enough keys for that many).
    """
    batch, seq_q, heads_q, head_dim = q.shape
    heads_kv = k_cache.shape[2]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in 1..{MAX_HEAD_DIM}, got {head_dim}")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads_q, seq_q), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    group = heads_q // heads_kv
    block_n = _block_n(q.device)
    block_m = _block_m(seq_q * group)
    num_m_blocks = triton.cdiv(seq_q * group, block_m)
    num_splits = max(1, min(num_splits, MAX_SPLITS))
    split_size = triton.cdiv(triton.cdiv(max(longest, 1), num_splits), block_n) * block_n
    left, right = window if window is not None else (-1, -1)
    right = 0 if causal else right
    unlimited = seq_q + longest + 1
    band = left >= 0 or right >= 0
    ieee = q.dtype == torch.float32 or (interpreter.interpreted(q.device) and q.dtype == torch.bfloat16)
    out_part = torch.empty((batch, heads_q, num_splits, seq_q, head_dim), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((batch, heads_q, num_splits, seq_q), dtype=torch.float32, device=q.device)
    q = last_dim_contiguous(q)
    alibi = alibi_slopes.to(torch.float32).contiguous() if alibi_slopes is not None else None
    int32 = dict(dtype=torch.int32, device=q.device)
    _decode_split_kernel[(num_m_blocks * num_splits, batch * heads_kv)](
        q,
        k_cache,
        v_cache,
        rows.to(**int32) if rows is not None else total.to(**int32),
        block_table if block_table is not None else total.to(**int32),
        total.to(**int32),
        first.to(**int32),
        alibi if alibi is not None else lse,
        out_part,
        lse_part,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_table.stride(0) if block_table is not None else 0,
        heads_q if alibi is not None and alibi.dim() == 2 else 0,
        heads_q,
        heads_kv,
        group,
        seq_q,
        head_dim,
        k_cache.shape[1],
        num_m_blocks,
        num_splits,
        split_size,
        float(scale),
        left if left >= 0 else unlimited,
        right if right >= 0 else unlimited,
        float(softcap),
        BAND=band,
        SOFTCAP=softcap > 0,
        ALIBI=alibi is not None,
        PAGED=block_table is not None,
        IEEE=ieee,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=max(MIN_BLOCK, triton.next_power_of_2(head_dim)),
    )
    _decode_merge_kernel[(batch * heads_q * seq_q,)](
        out_part,
        lse_part,
        out,
        lse,
        heads_q,
        seq_q,
        head_dim,
        num_splits,
        IEEE=ieee,
        BLOCK_S=triton.next_power_of_2(num_splits),
        BLOCK_D=max(MIN_BLOCK, triton.next_power_of_2(head_dim)),
    )
    return out, lse
