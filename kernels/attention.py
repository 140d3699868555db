"""Fused attention (FlashAttention-2 style) in Triton: forward, backward and the dropout mask.

Notation, per (batch b, query head h; key/value head h // (Hq / Hkv)):

    S = scale · Q Kᵀ                       (Nq, Nk) scores; invisible entries are -inf
    P = softmax(S)  (row-wise)              lse_i = log Σ_j exp(S_ij) over visible keys
    O = (P ∘ Z / (1 - p)) V                 Z: the dropout keep-mask (all ones when p = 0)

Forward: one program per BLOCK_M query rows walks the key blocks with the online softmax, in base 2
(``exp2`` with LOG2E folded into the scale): running max m_i, running sum l_i (of P before dropout),
and the accumulator rescaled by exp2(m_old - m_new) whenever the max grows; O = acc / l_i at the end
and lse = (m_i + log2 l_i) · ln 2. The (Nq, Nk) matrix is never stored, forward or backward.

Backward (FlashAttention-2's recomputation; P is rebuilt from lse):

    delta_i = Σ_d dO_id O_id - dlse_i                 (preprocess; dlse = upstream gradient of lse)
    dV  = (P ∘ Z / (1 - p))ᵀ dO
    dP  = (dO Vᵀ) ∘ Z / (1 - p)
    dS  = P ∘ (dP - delta)                            (-dlse: ∂lse_i/∂S_ij = P_ij)
    dQ  = scale · dS K,   dK = scale · dSᵀ Q

One program per BLOCK_N keys of one key/value head loops over the query blocks of every query head
of its group (GQA/MQA never copies K/V) and writes dK, dV once. dQ either comes from a second kernel
(one program per BLOCK_M query rows, looping over key blocks: ``deterministic=True``, bitwise
reproducible) or is accumulated with fp32 atomics inside the dK/dV loop (faster, but the order of the
additions varies run to run).

Visibility: query i sees key j iff j < Nk, key_padding_mask[b, j] (when given) and, when causal,
j <= i + (Nk - Nq) (bottom-right aligned). A row that sees no key gets O = 0, lse = -inf and zero
gradients: its running max stays -inf and is replaced by 0 before exponentiating, so exp2 never
sees -inf - (-inf).

Dropout stream: Z_ij = [u >= p] with u the first 32-bit word of Philox-4x32-10 (``tl.philox``) keyed
by the 64-bit ``seed`` with the 128-bit counter (c0, c1, c2, c3) = (j, i, b · Hq + h, 0), mapped to
[0, 1) by ``tl.uint_to_uniform_float``. Every index has its own 32-bit counter word, so no offset is
ever formed by multiplying sizes together ((b·Hq + h)·Nq·Nk would pass 2^31 at modest sizes) and
nothing overflows for any Nq, Nk and B · Hq below 2^31; each entry depends on (seed, b, h, i, j) only,
so the backward and :func:`dropout_keep_mask` regenerate exactly the forward's mask.

Numerics: scores, softmax statistics and accumulators are fp32. fp16/bf16 inputs use tensor-core dots
(P and dS are rounded to the input dtype before their dots, as in FlashAttention); fp32 inputs use
``input_precision="ieee"`` (never tf32). Strides are runtime arguments; batch/head offsets and the
first row of each block are int64, so tensors beyond 2^31 elements are addressed safely.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import interpreter

LOG2E = tl.constexpr(1.4426950408889634)  # 1/ln 2
LN2 = tl.constexpr(0.6931471805599453)  # ln 2
MAX_HEAD_DIM = 256  # largest head dim the kernels serve (BLOCK_D = 256)
MIN_BLOCK = 16  # tl.dot needs every block dimension >= 16
PREPROCESS_ROWS = 64  # rows per program of the (memory-bound, one pass) delta preprocess


# --------------------------------------------------------------------------------------- helpers
@triton.jit
def _cast(x, dtype: tl.constexpr, IEEE: tl.constexpr):
    """float32 ``x`` rounded to ``dtype`` (to nearest, ties to even). Triton's interpreter truncates
    float32 to bfloat16 instead of rounding, which doubles the rounding error of P and dS; there (and
    only there is IEEE set for bfloat16 inputs) the rounding is done on the bits first."""
    if IEEE and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round the low 16 bits away
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b with fp32 accumulation. IEEE: fp32 operands at full fp32 precision (no tf32)."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _load_tile(
    head,  # pointer to row 0 of one head's (n_rows, head_dim) matrix (int64 batch/head offset applied)
    start,  # first row of the tile
    n_rows,  # rows of the matrix
    stride_row,  # elements between rows (the head dim is contiguous)
    offs_r,  # arange(0, rows of the tile)
    offs_d,  # arange(0, BLOCK_D)
    head_dim,  # D
):
    """(len(offs_r), BLOCK_D) tile of rows start + offs_r, zeros outside the matrix."""
    mask = ((start + offs_r) < n_rows)[:, None] & (offs_d < head_dim)[None, :]
    block = head + tl.cast(start, tl.int64) * stride_row  # int64: start * stride may pass 2^31
    return tl.load(block + offs_r[:, None] * stride_row + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _store_tile(
    head,  # pointer to row 0 of one head's (n_rows, head_dim) matrix
    start,  # first row of the tile
    n_rows,  # rows of the matrix
    stride_row,  # elements between rows
    offs_r,  # arange(0, rows of the tile)
    offs_d,  # arange(0, BLOCK_D)
    head_dim,  # D
    value,  # (len(offs_r), BLOCK_D) float32 tile, cast to the matrix's dtype
    IEEE: tl.constexpr,  # fp32 dots at ieee precision (see _cast)
):
    mask = ((start + offs_r) < n_rows)[:, None] & (offs_d < head_dim)[None, :]
    block = head + tl.cast(start, tl.int64) * stride_row
    ptrs = block + offs_r[:, None] * stride_row + offs_d[None, :]
    tl.store(ptrs, _cast(value, head.dtype.element_ty, IEEE), mask=mask)


@triton.jit
def _visible(
    rows,  # query indices, int32, broadcastable against cols
    cols,  # key indices, int32
    seq_q,  # Nq
    seq_k,  # Nk
    kpm_row,  # pointer to key_padding_mask[b, 0] (uint8; unused without HAS_KPM)
    stride_mn,  # key_padding_mask stride along keys
    CAUSAL: tl.constexpr,  # bottom-right causal mask
    HAS_KPM: tl.constexpr,  # a key_padding_mask is given
):
    """Bool tile: query ``rows`` may attend to key ``cols``."""
    visible = (rows < seq_q) & (cols < seq_k)
    if CAUSAL:
        visible = visible & (cols <= rows + (seq_k - seq_q))
    if HAS_KPM:
        takes_part = tl.load(kpm_row + cols * stride_mn, mask=cols < seq_k, other=0)
        visible = visible & (takes_part != 0)
    return visible


@triton.jit
def _dropout_keep(
    seed,  # 64-bit Philox key
    bh,  # b * Hq + h
    rows,  # query indices, int32, broadcastable against cols
    cols,  # key indices, int32
    dropout_p,  # probability of dropping
):
    """Bool tile: Z[b, h, rows, cols] (see the module docstring for the stream layout)."""
    zero = (rows + cols) * 0
    c0 = (cols + zero).to(tl.uint32)
    c1 = (rows + zero).to(tl.uint32)
    c2 = (zero + bh).to(tl.uint32)
    c3 = zero.to(tl.uint32)
    word, _, _, _ = tl.philox(seed, c0, c1, c2, c3)
    return tl.uint_to_uniform_float(word) >= dropout_p


# --------------------------------------------------------------------------------------- forward
@triton.jit
def _attn_fwd_kernel(
    Q,  # (B, Hq, Nq, D), last dim contiguous
    K,  # (B, Hkv, Nk, D), last dim contiguous
    V,  # (B, Hkv, Nk, D), last dim contiguous
    Out,  # (B, Hq, Nq, D) output, last dim contiguous
    Lse,  # (B, Hq, Nq) float32 output, contiguous
    Kpm,  # (B, Nk) uint8 key_padding_mask, 1 = key takes part (dummy without HAS_KPM)
    stride_qb,
    stride_qh,
    stride_qm,  # strides of Q (elements)
    stride_kb,
    stride_kh,
    stride_kn,  # strides of K
    stride_vb,
    stride_vh,
    stride_vn,  # strides of V
    stride_ob,
    stride_oh,
    stride_om,  # strides of Out
    stride_mb,
    stride_mn,  # strides of Kpm
    heads_q,  # Hq
    group,  # Hq // Hkv: query heads per key/value head
    seq_q,  # Nq
    seq_k,  # Nk
    head_dim,  # D
    num_m_blocks,  # cdiv(Nq, BLOCK_M)
    scale,  # softmax scale (natural-log units)
    dropout_p,  # probability of dropping a probability (0 without DROPOUT)
    seed,  # Philox key of the dropout stream
    CAUSAL: tl.constexpr,  # bottom-right causal mask
    HAS_KPM: tl.constexpr,  # Kpm is given
    DROPOUT: tl.constexpr,  # dropout_p > 0
    IEEE: tl.constexpr,  # fp32 dots at ieee precision
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per iteration
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two >= 16
):
    pid = tl.program_id(0)
    pid_m = pid % num_m_blocks  # query blocks of one head are neighbours: they share K/V in L2
    bh = pid // num_m_blocks
    b = (bh // heads_q).to(tl.int64)
    h = (bh % heads_q).to(tl.int64)
    h_kv = h // group
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    q = _load_tile(
        Q + b * stride_qb + h * stride_qh, start_m, seq_q, stride_qm, tl.arange(0, BLOCK_M), offs_d, head_dim
    )  # (BLOCK_M, BLOCK_D)
    k_head = K + b * stride_kb + h_kv * stride_kh
    v_head = V + b * stride_vb + h_kv * stride_vh
    kpm_row = Kpm + b * stride_mb

    qk_scale = scale * LOG2E
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max of S (base 2)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running Σ exp2(S - m_i), before dropout
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # running Σ exp2(S - m_i) Z V

    end_n = seq_k
    if CAUSAL:
        end_n = tl.minimum(seq_k, start_m + BLOCK_M + seq_k - seq_q)  # later keys: invisible to the block
    for start_n in range(0, end_n, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(k_head, start_n, seq_k, stride_kn, offs_n, offs_d, head_dim)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(v_head, start_n, seq_k, stride_vn, offs_n, offs_d, head_dim)  # (BLOCK_N, BLOCK_D)
        s = _dot(q, tl.trans(k), IEEE) * qk_scale  # (BLOCK_M, BLOCK_N), base-2 scores
        visible = _visible(offs_m[:, None], cols[None, :], seq_q, seq_k, kpm_row, stride_mn, CAUSAL, HAS_KPM)
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no visible key yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            keep = _dropout_keep(seed, bh, offs_m[:, None], cols[None, :], dropout_p)
            p = tl.where(keep, p, 0.0)
        acc = acc * alpha[:, None] + _dot(_cast(p, v.dtype, IEEE), v, IEEE)
        m_i = m_new

    no_key = l_i == 0.0
    l_safe = tl.where(no_key, 1.0, l_i)
    if DROPOUT:
        acc = acc * tl.where(dropout_p < 1.0, 1.0 / (1.0 - dropout_p), 0.0)  # p = 1 drops everything
    lse = tl.where(no_key, float("-inf"), (m_i + tl.log2(l_safe)) * LN2)
    _store_tile(
        Out + b * stride_ob + h * stride_oh,
        start_m,
        seq_q,
        stride_om,
        tl.arange(0, BLOCK_M),
        offs_d,
        head_dim,
        acc / l_safe[:, None],
        IEEE,
    )
    tl.store(Lse + bh.to(tl.int64) * seq_q + offs_m, lse, mask=offs_m < seq_q)


# -------------------------------------------------------------------------------------- backward
@triton.jit
def _attn_bwd_preprocess_kernel(
    Out,  # (B, Hq, Nq, D) forward output, last dim contiguous
    DO,  # (B, Hq, Nq, D) upstream gradient of Out, last dim contiguous
    Dlse,  # (B, Hq, Nq) float32 upstream gradient of lse, contiguous (dummy without HAS_DLSE)
    Delta,  # (B, Hq, Nq) float32 output, contiguous
    stride_ob,
    stride_oh,
    stride_om,  # strides of Out
    stride_dob,
    stride_doh,
    stride_dom,  # strides of DO
    heads_q,  # Hq
    seq_q,  # Nq
    head_dim,  # D
    num_m_blocks,  # cdiv(Nq, BLOCK_M)
    HAS_DLSE: tl.constexpr,  # Dlse is given
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two >= 16
):
    pid = tl.program_id(0)
    pid_m = pid % num_m_blocks
    bh = pid // num_m_blocks
    b = (bh // heads_q).to(tl.int64)
    h = (bh % heads_q).to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)

    local_m = tl.arange(0, BLOCK_M)
    o_head = Out + b * stride_ob + h * stride_oh
    do_head = DO + b * stride_dob + h * stride_doh
    o = _load_tile(o_head, start_m, seq_q, stride_om, local_m, offs_d, head_dim)  # (BLOCK_M, BLOCK_D)
    do = _load_tile(do_head, start_m, seq_q, stride_dom, local_m, offs_d, head_dim)  # (BLOCK_M, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(Dlse + bh.to(tl.int64) * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)
    tl.store(Delta + bh.to(tl.int64) * seq_q + offs_m, delta, mask=offs_m < seq_q)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,  # (B, Hq, Nq, D), last dim contiguous
    K,  # (B, Hkv, Nk, D), last dim contiguous
    V,  # (B, Hkv, Nk, D), last dim contiguous
    DO,  # (B, Hq, Nq, D) upstream gradient of Out, last dim contiguous
    Lse,  # (B, Hq, Nq) float32 forward lse, contiguous
    Delta,  # (B, Hq, Nq) float32 rowsum(dO * O) - dlse, contiguous
    DK,  # (B, Hkv, Nk, D) output, last dim contiguous
    DV,  # (B, Hkv, Nk, D) output, last dim contiguous
    DQacc,  # (B, Hq, Nq, D) float32 contiguous, zero-filled: dQ accumulated atomically (DQ_ATOMIC only)
    Kpm,  # (B, Nk) uint8 key_padding_mask (dummy without HAS_KPM)
    stride_qb,
    stride_qh,
    stride_qm,  # strides of Q
    stride_kb,
    stride_kh,
    stride_kn,  # strides of K
    stride_vb,
    stride_vh,
    stride_vn,  # strides of V
    stride_dob,
    stride_doh,
    stride_dom,  # strides of DO
    stride_dkb,
    stride_dkh,
    stride_dkn,  # strides of DK
    stride_dvb,
    stride_dvh,
    stride_dvn,  # strides of DV
    stride_mb,
    stride_mn,  # strides of Kpm
    heads_q,  # Hq
    heads_kv,  # Hkv
    group,  # Hq // Hkv
    seq_q,  # Nq
    seq_k,  # Nk
    head_dim,  # D
    num_n_blocks,  # cdiv(Nk, BLOCK_N)
    scale,  # softmax scale
    dropout_p,  # probability of dropping (0 without DROPOUT)
    seed,  # Philox key of the dropout stream
    CAUSAL: tl.constexpr,  # bottom-right causal mask
    HAS_KPM: tl.constexpr,  # Kpm is given
    DROPOUT: tl.constexpr,  # dropout_p > 0
    DQ_ATOMIC: tl.constexpr,  # also accumulate dQ into DQacc with atomics
    IEEE: tl.constexpr,  # fp32 dots at ieee precision
    BLOCK_M: tl.constexpr,  # query rows per iteration
    BLOCK_N: tl.constexpr,  # keys per program
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two >= 16
):
    pid = tl.program_id(0)
    pid_n = pid % num_n_blocks
    bh_kv = pid // num_n_blocks
    b = (bh_kv // heads_kv).to(tl.int64)
    h_kv = (bh_kv % heads_kv).to(tl.int64)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)

    k = _load_tile(
        K + b * stride_kb + h_kv * stride_kh, start_n, seq_k, stride_kn, tl.arange(0, BLOCK_N), offs_d, head_dim
    )  # (BLOCK_N, BLOCK_D)
    v = _load_tile(
        V + b * stride_vb + h_kv * stride_vh, start_n, seq_k, stride_vn, tl.arange(0, BLOCK_N), offs_d, head_dim
    )  # (BLOCK_N, BLOCK_D)
    kpm_row = Kpm + b * stride_mb

    qk_scale = scale * LOG2E
    keep_scale = tl.where(dropout_p < 1.0, 1.0 / (1.0 - dropout_p), 0.0)  # p = 1 drops everything
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    start_q = 0
    if CAUSAL:  # key j is visible to queries i >= j - (Nk - Nq) only
        start_q = (tl.maximum(start_n - (seq_k - seq_q), 0) // BLOCK_M) * BLOCK_M
    for g in range(0, group):  # the query heads that read this key/value head, in a fixed order
        h = h_kv * group + g
        bh = b * heads_q + h
        q_head = Q + b * stride_qb + h * stride_qh
        do_head = DO + b * stride_dob + h * stride_doh
        for start_m in range(start_q, seq_q, BLOCK_M):
            rows = start_m + offs_m
            q = _load_tile(q_head, start_m, seq_q, stride_qm, offs_m, offs_d, head_dim)  # (BLOCK_M, BLOCK_D)
            do = _load_tile(do_head, start_m, seq_q, stride_dom, offs_m, offs_d, head_dim)  # like q
            lse = tl.load(Lse + bh * seq_q + rows, mask=rows < seq_q, other=0.0) * LOG2E
            delta = tl.load(Delta + bh * seq_q + rows, mask=rows < seq_q, other=0.0)

            s_t = _dot(k, tl.trans(q), IEEE) * qk_scale  # (BLOCK_N, BLOCK_M): Sᵀ in base 2
            visible = _visible(rows[None, :], offs_n[:, None], seq_q, seq_k, kpm_row, stride_mn, CAUSAL, HAS_KPM)
            p_t = tl.exp2(tl.where(visible, s_t - lse[None, :], float("-inf")))  # Pᵀ
            dp_t = _dot(v, tl.trans(do), IEEE)  # (dO Vᵀ)ᵀ
            if DROPOUT:
                keep_t = _dropout_keep(seed, bh, rows[None, :], offs_n[:, None], dropout_p)
                dv += _dot(_cast(tl.where(keep_t, p_t * keep_scale, 0.0), do.dtype, IEEE), do, IEEE)
                dp_t = tl.where(keep_t, dp_t * keep_scale, 0.0)
            else:
                dv += _dot(_cast(p_t, do.dtype, IEEE), do, IEEE)
            # a select, not p_t * (...): a NaN/inf dO or dlse on a row that sees no key stays out of dK
            ds_t = _cast(tl.where(visible, p_t * (dp_t - delta[None, :]), 0.0), q.dtype, IEEE)  # dSᵀ
            dk += _dot(ds_t, q, IEEE)
            if DQ_ATOMIC:
                dq = _dot(tl.trans(ds_t), k, IEEE) * scale  # (BLOCK_M, BLOCK_D)
                dq_block = DQacc + (bh * seq_q + start_m) * head_dim
                mask = (rows < seq_q)[:, None] & (offs_d < head_dim)[None, :]
                tl.atomic_add(dq_block + offs_m[:, None] * head_dim + offs_d[None, :], dq, mask=mask)

    local_n = tl.arange(0, BLOCK_N)
    dk_head = DK + b * stride_dkb + h_kv * stride_dkh
    dv_head = DV + b * stride_dvb + h_kv * stride_dvh
    _store_tile(dk_head, start_n, seq_k, stride_dkn, local_n, offs_d, head_dim, dk * scale, IEEE)
    _store_tile(dv_head, start_n, seq_k, stride_dvn, local_n, offs_d, head_dim, dv, IEEE)


@triton.jit
def _attn_bwd_dq_kernel(
    Q,  # (B, Hq, Nq, D), last dim contiguous
    K,  # (B, Hkv, Nk, D), last dim contiguous
    V,  # (B, Hkv, Nk, D), last dim contiguous
    DO,  # (B, Hq, Nq, D) upstream gradient of Out, last dim contiguous
    Lse,  # (B, Hq, Nq) float32 forward lse, contiguous
    Delta,  # (B, Hq, Nq) float32 rowsum(dO * O) - dlse, contiguous
    DQ,  # (B, Hq, Nq, D) output, last dim contiguous
    Kpm,  # (B, Nk) uint8 key_padding_mask (dummy without HAS_KPM)
    stride_qb,
    stride_qh,
    stride_qm,  # strides of Q
    stride_kb,
    stride_kh,
    stride_kn,  # strides of K
    stride_vb,
    stride_vh,
    stride_vn,  # strides of V
    stride_dob,
    stride_doh,
    stride_dom,  # strides of DO
    stride_dqb,
    stride_dqh,
    stride_dqm,  # strides of DQ
    stride_mb,
    stride_mn,  # strides of Kpm
    heads_q,  # Hq
    group,  # Hq // Hkv
    seq_q,  # Nq
    seq_k,  # Nk
    head_dim,  # D
    num_m_blocks,  # cdiv(Nq, BLOCK_M)
    scale,  # softmax scale
    dropout_p,  # probability of dropping (0 without DROPOUT)
    seed,  # Philox key of the dropout stream
    CAUSAL: tl.constexpr,  # bottom-right causal mask
    HAS_KPM: tl.constexpr,  # Kpm is given
    DROPOUT: tl.constexpr,  # dropout_p > 0
    IEEE: tl.constexpr,  # fp32 dots at ieee precision
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per iteration
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two >= 16
):
    pid = tl.program_id(0)
    pid_m = pid % num_m_blocks
    bh = pid // num_m_blocks
    b = (bh // heads_q).to(tl.int64)
    h = (bh % heads_q).to(tl.int64)
    h_kv = h // group
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    local_m = tl.arange(0, BLOCK_M)
    q_head = Q + b * stride_qb + h * stride_qh
    do_head = DO + b * stride_dob + h * stride_doh
    q = _load_tile(q_head, start_m, seq_q, stride_qm, local_m, offs_d, head_dim)  # (BLOCK_M, BLOCK_D)
    do = _load_tile(do_head, start_m, seq_q, stride_dom, local_m, offs_d, head_dim)  # (BLOCK_M, BLOCK_D)
    lse = tl.load(Lse + bh.to(tl.int64) * seq_q + offs_m, mask=offs_m < seq_q, other=0.0) * LOG2E
    delta = tl.load(Delta + bh.to(tl.int64) * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)
    k_head = K + b * stride_kb + h_kv * stride_kh
    v_head = V + b * stride_vb + h_kv * stride_vh
    kpm_row = Kpm + b * stride_mb

    qk_scale = scale * LOG2E
    keep_scale = tl.where(dropout_p < 1.0, 1.0 / (1.0 - dropout_p), 0.0)  # p = 1 drops everything
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    end_n = seq_k
    if CAUSAL:
        end_n = tl.minimum(seq_k, start_m + BLOCK_M + seq_k - seq_q)
    for start_n in range(0, end_n, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(k_head, start_n, seq_k, stride_kn, offs_n, offs_d, head_dim)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(v_head, start_n, seq_k, stride_vn, offs_n, offs_d, head_dim)  # (BLOCK_N, BLOCK_D)
        s = _dot(q, tl.trans(k), IEEE) * qk_scale  # (BLOCK_M, BLOCK_N)
        visible = _visible(offs_m[:, None], cols[None, :], seq_q, seq_k, kpm_row, stride_mn, CAUSAL, HAS_KPM)
        p = tl.exp2(tl.where(visible, s - lse[:, None], float("-inf")))  # rows with lse = -inf see nothing
        dp = _dot(do, tl.trans(v), IEEE)
        if DROPOUT:
            keep = _dropout_keep(seed, bh, offs_m[:, None], cols[None, :], dropout_p)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = _cast(tl.where(visible, p * (dp - delta[:, None]), 0.0), k.dtype, IEEE)  # a select, as in dSᵀ
        dq += _dot(ds, k, IEEE)

    dq_head = DQ + b * stride_dqb + h * stride_dqh
    _store_tile(dq_head, start_m, seq_q, stride_dqm, local_m, offs_d, head_dim, dq * scale, IEEE)


# ----------------------------------------------------------------------------------- dropout mask
@triton.jit
def _dropout_mask_kernel(
    Mask,  # (B, Hq, Nq, Nk) uint8 output, contiguous
    seq_q,  # Nq
    seq_k,  # Nk
    num_m_blocks,  # cdiv(Nq, BLOCK_M)
    num_n_blocks,  # cdiv(Nk, BLOCK_N)
    dropout_p,  # probability of dropping
    seed,  # Philox key of the dropout stream
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per program
):
    pid = tl.program_id(0)
    pid_n = pid % num_n_blocks
    pid_m = (pid // num_n_blocks) % num_m_blocks
    bh = pid // (num_n_blocks * num_m_blocks)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _dropout_keep(seed, bh, rows[:, None], cols[None, :], dropout_p)
    offsets = (bh.to(tl.int64) * seq_q + rows[:, None].to(tl.int64)) * seq_k + cols[None, :]
    tl.store(Mask + offsets, keep.to(tl.uint8), mask=(rows < seq_q)[:, None] & (cols < seq_k)[None, :])


# -------------------------------------------------------------------------------------- launchers
class _Config(NamedTuple):
    block_m: int  # query rows per tile
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int


# GPU tiles, keyed by (kernel, fp32 inputs, head dim up to). Not tuned on a GPU yet (the session that
# wrote them had none): the shapes are FlashAttention-2's and the Triton tutorial's, sized so that the
# shared memory of an A100 (164 KB) holds them. Forward, fp16 D = 128: Q 128x128 (32 KB) + K, V 64x128
# x 3 stages (96 KB). dK/dV keeps K, V, dK, dV (4 x BLOCK_N x D) resident and streams small query tiles;
# dQ keeps Q, dO, dQ resident and streams small key tiles. fp32 tiles take twice the bytes, so they
# halve a dimension; D = 256 halves again. Retune with bench/ on the target GPU.
_GPU_CONFIGS = {
    ("fwd", False, 64): _Config(128, 64, 4, 3),
    ("fwd", False, 128): _Config(128, 64, 8, 3),
    ("fwd", False, 256): _Config(64, 32, 4, 2),
    ("fwd", True, 128): _Config(64, 32, 4, 2),
    ("fwd", True, 256): _Config(32, 32, 4, 1),
    ("dkdv", False, 64): _Config(32, 128, 8, 3),
    ("dkdv", False, 128): _Config(32, 64, 8, 3),
    ("dkdv", False, 256): _Config(16, 32, 8, 2),
    ("dkdv", True, 128): _Config(16, 64, 8, 2),
    ("dkdv", True, 256): _Config(16, 32, 8, 1),
    ("dq", False, 64): _Config(128, 32, 4, 3),
    ("dq", False, 128): _Config(128, 32, 8, 3),
    ("dq", False, 256): _Config(64, 32, 8, 2),
    ("dq", True, 128): _Config(64, 32, 8, 2),
    ("dq", True, 256): _Config(32, 32, 8, 1),
}
# Triton's interpreter (CPU tensors) runs every program and every loop iteration as Python over numpy
# tiles, so the cost is the number of tiles more than their size, and it never autotunes. Forward plus
# both backward paths at Nq=200, Nk=1025, D=111 (single-threaded OpenBLAS, CPU seconds): 32x32 tiles
# 6.7 s, 64x64 2.7 s, 128x128 1.1 s, 256x256 0.8 s. 128 keeps several tiles per sequence in the tests
# (N = 200, 1025), so the online rescaling and the partial and skipped blocks still run on the CPU.
_INTERPRETER_CONFIG = _Config(128, 128, 1, 1)


def _config(kernel: str, device: torch.device, head_dim: int, dtype: torch.dtype) -> _Config:
    """Tiles for ``kernel`` in {"fwd", "dkdv", "dq"} on ``device`` for this head dim and dtype."""
    if interpreter.interpreted(device):
        return _INTERPRETER_CONFIG
    fp32 = dtype == torch.float32
    up_to = next(d for d in (64, 128, 256) if head_dim <= d and (kernel, fp32, d) in _GPU_CONFIGS)
    return _GPU_CONFIGS[(kernel, fp32, up_to)]


def _block_d(head_dim: int) -> int:
    return max(MIN_BLOCK, triton.next_power_of_2(head_dim))


def _ieee(t: Tensor) -> bool:
    """fp32 dots at ieee precision: for fp32 inputs, and for bf16 under the interpreter (its numpy dot
    cannot read bf16; fp32 products of bf16 values are exact, as on tensor cores)."""
    return t.dtype == torch.float32 or (interpreter.interpreted(t.device) and t.dtype == torch.bfloat16)


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _padding_mask(key_padding_mask: Tensor | None, like: Tensor) -> tuple[Tensor, int, int]:
    """(uint8 view or dummy pointer, stride along batch, stride along keys)."""
    if key_padding_mask is None:
        return like, 0, 0
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool, got {key_padding_mask.dtype}")
    mask = key_padding_mask.view(torch.uint8)
    return mask, mask.stride(0), mask.stride(1)


def _check(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-d (B, H, N, D), got {q.dim()}, {k.dim()}, {v.dim()} dims")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q, k, v must share one of fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    batch, heads_q, _, head_dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(
            f"k, v must be (B, Hkv, Nk, D) matching q {tuple(q.shape)}, got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    heads_kv = k.shape[1]
    if (heads_q % heads_kv if heads_kv else heads_q) != 0:
        raise ValueError(f"Hq ({heads_q}) must be a multiple of Hkv ({heads_kv})")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in 1..{MAX_HEAD_DIM}, got {head_dim}")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, k.shape[2]):
        raise ValueError(
            f"key_padding_mask must be (B, Nk) = {(batch, k.shape[2])}, got {tuple(key_padding_mask.shape)}"
        )


def attention_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Forward attention. q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D); any strides.

    Returns ``out`` contiguous (B, Hq, Nq, D) in q.dtype and ``lse`` contiguous float32 (B, Hq, Nq),
    the natural log of Σ exp(scale · q·k) over the visible keys (before dropout). Rows that see no key
    give out = 0 and lse = -inf. Dropout keeps each probability with probability 1 - dropout_p, from the
    Philox stream keyed by ``seed`` described in the module docstring.
    """
    _check(q, k, v, key_padding_mask)
    batch, heads_q, seq_q, head_dim = q.shape
    heads_kv, seq_k = k.shape[1], k.shape[2]
    out = torch.empty((batch, heads_q, seq_q, head_dim), dtype=q.dtype, device=q.device)  # (B, Hq, Nq, D)
    lse = torch.empty((batch, heads_q, seq_q), dtype=torch.float32, device=q.device)  # (B, Hq, Nq)
    if out.numel() == 0:
        return out, lse
    if seq_k == 0:
        return out.zero_(), lse.fill_(float("-inf"))

    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    kpm, stride_mb, stride_mn = _padding_mask(key_padding_mask, q)
    cfg = _config("fwd", q.device, head_dim, q.dtype)
    num_m_blocks = triton.cdiv(seq_q, cfg.block_m)
    _attn_fwd_kernel[(num_m_blocks * batch * heads_q,)](
        q,
        k,
        v,
        out,
        lse,
        kpm,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        stride_mb,
        stride_mn,
        heads_q,
        heads_q // heads_kv,
        seq_q,
        seq_k,
        head_dim,
        num_m_blocks,
        float(scale),
        float(dropout_p),
        int(seed),
        CAUSAL=bool(causal),
        HAS_KPM=key_padding_mask is not None,
        DROPOUT=dropout_p > 0.0,
        IEEE=_ieee(q),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=_block_d(head_dim),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out, lse


def attention_bwd(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dlse: Tensor | None,
    key_padding_mask: Tensor | None,
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: int,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward attention: (dq, dk, dv) shaped like (q, k, v), contiguous.

    ``lse`` is the forward's; ``dlse`` (float32 (B, Hq, Nq) or None) the upstream gradient of lse.
    dK/dV of a key/value head sum over its group of query heads inside the kernel. With
    ``deterministic=True`` dQ comes from its own kernel and every gradient is bitwise reproducible;
    otherwise dQ is accumulated with fp32 atomics inside the dK/dV pass.
    """
    _check(q, k, v, key_padding_mask)
    batch, heads_q, seq_q, head_dim = q.shape
    heads_kv, seq_k = k.shape[1], k.shape[2]
    dk = torch.empty((batch, heads_kv, seq_k, head_dim), dtype=k.dtype, device=k.device)  # (B, Hkv, Nk, D)
    dv = torch.empty((batch, heads_kv, seq_k, head_dim), dtype=v.dtype, device=v.device)  # (B, Hkv, Nk, D)
    if batch * heads_q * seq_q == 0 or seq_k == 0:
        return q.new_zeros(q.shape), dk.zero_(), dv.zero_()

    do, q, k, v, out = (_last_dim_contiguous(t) for t in (do, q, k, v, out))
    lse = lse.to(torch.float32).contiguous()
    kpm, stride_mb, stride_mn = _padding_mask(key_padding_mask, q)
    block_d = _block_d(head_dim)
    ieee = _ieee(q)
    common = dict(
        CAUSAL=bool(causal), HAS_KPM=key_padding_mask is not None, DROPOUT=dropout_p > 0.0, IEEE=ieee, BLOCK_D=block_d
    )

    delta = torch.empty((batch, heads_q, seq_q), dtype=torch.float32, device=q.device)  # (B, Hq, Nq)
    if dlse is not None:
        dlse = dlse.to(torch.float32).contiguous()
    pre_blocks = triton.cdiv(seq_q, PREPROCESS_ROWS)
    _attn_bwd_preprocess_kernel[(pre_blocks * batch * heads_q,)](
        out,
        do,
        dlse if dlse is not None else delta,
        delta,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        do.stride(0),
        do.stride(1),
        do.stride(2),
        heads_q,
        seq_q,
        head_dim,
        pre_blocks,
        HAS_DLSE=dlse is not None,
        BLOCK_M=PREPROCESS_ROWS,
        BLOCK_D=block_d,
    )

    dq_acc = None if deterministic else torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    cfg = _config("dkdv", q.device, head_dim, q.dtype)
    num_n_blocks = triton.cdiv(seq_k, cfg.block_n)
    _attn_bwd_dkdv_kernel[(num_n_blocks * batch * heads_kv,)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk,
        dv,
        dq_acc if dq_acc is not None else delta,
        kpm,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        do.stride(0),
        do.stride(1),
        do.stride(2),
        dk.stride(0),
        dk.stride(1),
        dk.stride(2),
        dv.stride(0),
        dv.stride(1),
        dv.stride(2),
        stride_mb,
        stride_mn,
        heads_q,
        heads_kv,
        heads_q // heads_kv,
        seq_q,
        seq_k,
        head_dim,
        num_n_blocks,
        float(scale),
        float(dropout_p),
        int(seed),
        DQ_ATOMIC=not deterministic,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **common,
    )
    if dq_acc is not None:
        return dq_acc.to(q.dtype), dk, dv

    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (B, Hq, Nq, D)
    cfg = _config("dq", q.device, head_dim, q.dtype)
    num_m_blocks = triton.cdiv(seq_q, cfg.block_m)
    _attn_bwd_dq_kernel[(num_m_blocks * batch * heads_q,)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dq,
        kpm,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        do.stride(0),
        do.stride(1),
        do.stride(2),
        dq.stride(0),
        dq.stride(1),
        dq.stride(2),
        stride_mb,
        stride_mn,
        heads_q,
        heads_q // heads_kv,
        seq_q,
        seq_k,
        head_dim,
        num_m_blocks,
        float(scale),
        float(dropout_p),
        int(seed),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **common,
    )
    return dq, dk, dv


def dropout_keep_mask(
    batch: int, heads: int, nq: int, nk: int, dropout_p: float, seed: int, device: torch.device | str
) -> Tensor:
    """Bool (B, Hq, Nq, Nk): the keep-mask Z the kernels apply for these arguments (True = kept).

    Generated by the same Philox stream as the forward and backward kernels; for tests.
    """
    mask = torch.empty((batch, heads, nq, nk), dtype=torch.uint8, device=device)  # (B, Hq, Nq, Nk)
    if mask.numel() == 0:
        return mask.view(torch.bool)
    block_m, block_n = _INTERPRETER_CONFIG[:2] if interpreter.interpreted(device) else (64, 64)
    num_m_blocks, num_n_blocks = triton.cdiv(nq, block_m), triton.cdiv(nk, block_n)
    _dropout_mask_kernel[(num_m_blocks * num_n_blocks * batch * heads,)](
        mask,
        nq,
        nk,
        num_m_blocks,
        num_n_blocks,
        float(dropout_p),
        int(seed),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
    )
    return mask.view(torch.bool)
