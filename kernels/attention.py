"""Fused attention (FlashAttention-2 style) in Triton: forward, backward and the dropout mask.

Notation, per (batch b, query head h; key/value head h // (Hq / Hkv)), off = Nk - Nq:

    S_ij = scale · q_i·k_j                  scores; with softcap c > 0, S = c · tanh(S / c); with ALiBi,
                                            S_ij -= slope_bh · |i + off - j|; invisible entries -inf
    P = softmax(S)  (row-wise)              lse_i = log (Σ_j exp(S_ij) + exp(sink_h)) over visible keys
    O = (P ∘ Z / (1 - p)) V                 Z: the dropout keep-mask (all ones when p = 0)

The sink (``sinks``, gpt-oss) is one more logit per head in every row's denominator, with no value:
it only lowers the probabilities of the keys. Without sinks its exp() term is absent.

Forward: one program per BLOCK_M query rows walks the key blocks with the online softmax, in base 2
(``exp2`` with LOG2E folded into the scale): running max m_i, running sum l_i (of P before dropout),
and the accumulator rescaled by exp2(m_old - m_new) whenever the max grows; O = acc / l_i at the end
and lse = (m_i + log2 l_i) · ln 2. A sink starts the row at m_i = sink, l_i = 1. The (Nq, Nk) matrix
is never stored, forward or backward.

Backward (FlashAttention-2's recomputation; P is rebuilt from lse):

    delta_i = Σ_d dO_id O_id - dlse_i                 (preprocess; dlse = upstream gradient of lse)
    dV  = (P ∘ Z / (1 - p))ᵀ dO
    dP  = (dO Vᵀ) ∘ Z / (1 - p)
    dS  = P ∘ (dP - delta)                            (-dlse: ∂lse_i/∂S_ij = P_ij)
    dS ← dS ∘ (1 - tanh²)                             (softcap: the derivative of c · tanh(x / c))
    dQ  = scale · dS K,   dK = scale · dSᵀ Q
    dsink_h = -Σ_(b,i) exp(sink_h - lse_i) · delta_i   (the sink's probability times (0 - delta))

One program per BLOCK_N keys of one key/value head loops over the query blocks of every query head
of its group (GQA/MQA never copies K/V) and writes dK, dV once. dQ either comes from a second kernel
(one program per BLOCK_M query rows, looping over key blocks: ``deterministic=True``, bitwise
reproducible) or is accumulated with fp32 atomics inside the dK/dV loop (faster, but the order of the
additions varies run to run). The preprocess also sums each block's share of dsink, in a fixed order.

Visibility: query i sees key j iff j < Nk, key_padding_mask[b, j] (when given) and, with a band
(causal, or ``window=(left, right)``), i + off - left <= j <= i + off + right (bottom-right aligned;
causal is right = 0; an unlimited side is passed as Nq + Nk, which no distance reaches). A row that
sees no key gets O = 0, lse = -inf (the sink's logit with sinks) and zero gradients: its running max
stays -inf and is replaced by 0 before exponentiating, so exp2 never sees -inf - (-inf).

Work follows the band: a query block [m0, m0 + BLOCK_M) can only see keys in
[m0 + off - left, m0 + BLOCK_M - 1 + off + right], so the forward and dQ loops start at the key block
holding the first of them and stop after the last; the dK/dV loop over query blocks is bounded the
same way from its keys' side ([n0 - off - right, n0 + BLOCK_N - 1 - off + left]). With a 4k window at
16k keys that is 4k/16k = 1/4 of the key blocks, plus at most one partial block at each edge.

Packed sequences (varlen): q, k, v are (total, H, D) with ``cu_seqlens`` offsets; the grid covers
``max_seqlen`` rows for every sequence, and each program reads its sequence's first row and length
from ``cu_seqlens`` (blocks past the end return at once). Batch strides are then 0, masks and ALiBi
are aligned to each sequence's own corner, and the lse is FlashAttention-2's (Hq, total_q).

Dropout stream: Z_ij = [u >= p] with u the first 32-bit word of Philox-4x32-10 (``tl.philox``) keyed
by the 64-bit ``seed`` with the 128-bit counter (c0, c1, c2, c3) = (j, i, b · Hq + h, 0), mapped to
[0, 1) by ``tl.uint_to_uniform_float`` (i, j are indices within the sequence, b the sequence). Every
index has its own 32-bit counter word, so no offset is ever formed by multiplying sizes together
((b·Hq + h)·Nq·Nk would pass 2^31 at modest sizes) and nothing overflows for any Nq, Nk and B · Hq
below 2^31; each entry depends on (seed, b, h, i, j) only, so the backward and
:func:`dropout_keep_mask` regenerate exactly the forward's mask.

Numerics: scores, softmax statistics and accumulators are fp32. fp16/bf16 inputs use tensor-core dots
(P and dS are rounded to the input dtype before their dots, as in FlashAttention); fp32 inputs use
``input_precision="ieee"`` (never tf32). Strides are runtime arguments; batch/head offsets and the
first row of each block are int64, so tensors beyond 2^31 elements are addressed safely.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.errors import OutOfResources

from . import interpreter
from .capabilities import MAX_HEAD_DIM
from .layout import last_dim_contiguous

LOG2E = tl.constexpr(1.4426950408889634)  # 1/ln 2
LN2 = tl.constexpr(0.6931471805599453)  # ln 2
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
def _load_tiles(
    head_a,  # pointers to row 0 of one head of two matrices with the same rows (K and V, Q and dO, O and dO)
    head_b,
    start,  # first row of the tiles
    n_rows,  # rows of the matrices
    stride_a,  # elements between rows of each
    stride_b,
    offs_r,  # arange(0, rows of the tiles)
    offs_d,  # arange(0, BLOCK_D)
    head_dim,  # D
):
    """The two (len(offs_r), BLOCK_D) tiles of rows start + offs_r: see _load_tile."""
    a = _load_tile(head_a, start, n_rows, stride_a, offs_r, offs_d, head_dim)
    b = _load_tile(head_b, start, n_rows, stride_b, offs_r, offs_d, head_dim)
    return a, b


@triton.jit
def _sequence(
    CuSeqlens,  # (B + 1,) int32 offsets of the packed sequences (unused without VARLEN)
    b,  # sequence (batch) index, int64
    length,  # its length without VARLEN: Nq or Nk
    VARLEN: tl.constexpr,  # packed sequences
):
    """(first row of sequence ``b`` in its tensor, int64; the sequence's length)."""
    first = 0
    if VARLEN:
        first = tl.load(CuSeqlens + b).to(tl.int64)
        length = tl.load(CuSeqlens + b + 1) - first.to(tl.int32)
    return first, length


@triton.jit
def _program_tile(
    num_blocks,  # row tiles per head: cdiv(rows, BLOCK)
    heads,  # heads of the tensor whose rows are tiled
    BLOCK: tl.constexpr,  # rows per tile
):
    """This program's tile of the 1-D grid: (its first row, b * heads + h, b, h with b and h int64). The
    row tiles of one head are neighbours in the grid, so they share K/V (or Q, dO) in L2."""
    pid = tl.program_id(0)
    bh = pid // num_blocks
    return (pid % num_blocks) * BLOCK, bh, (bh // heads).to(tl.int64), (bh % heads).to(tl.int64)


@triton.jit
def _sequences(CuSeqlensQ, CuSeqlensK, b, seq_q, seq_k, VARLEN: tl.constexpr):
    """(first query row, Nq, first key row, Nk) of sequence ``b``: see _sequence."""
    first_q, seq_q = _sequence(CuSeqlensQ, b, seq_q, VARLEN)
    first_k, seq_k = _sequence(CuSeqlensK, b, seq_k, VARLEN)
    return first_q, seq_q, first_k, seq_k


@triton.jit
def _query_program(
    num_m_blocks,  # cdiv(Nq, BLOCK_M)
    heads_q,  # Hq
    group,  # Hq // Hkv
    CuSeqlensQ,  # see _sequence
    CuSeqlensK,
    seq_q,  # Nq (packed: the longest query sequence)
    seq_k,  # Nk (packed: the longest key sequence)
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """The tile of a forward or dQ program, BLOCK_M query rows of one (sequence, query head): (start_m,
    b * Hq + h, b, h, its key/value head, then the sequence's as _sequences gives them). The kernels make
    their offsets after their early return: made before it, they cost registers (ptxas)."""
    start_m, bh, b, h = _program_tile(num_m_blocks, heads_q, BLOCK_M)
    h_kv = h // group
    first_q, seq_q, first_k, seq_k = _sequences(CuSeqlensQ, CuSeqlensK, b, seq_q, seq_k, VARLEN)
    return start_m, bh, b, h, h_kv, first_q, seq_q, first_k, seq_k


@triton.jit
def _visible(
    rows,  # query indices, int32, broadcastable against cols
    cols,  # key indices, int32
    seq_q,  # Nq
    seq_k,  # Nk
    window_left,  # keys visible before the diagonal (>= 0; Nq + Nk: unlimited)
    window_right,  # keys visible after it (0 when causal)
    kpm_row,  # pointer to key_padding_mask[b, 0] (uint8; unused without HAS_KPM)
    stride_mn,  # key_padding_mask stride along keys
    BAND: tl.constexpr,  # a causal mask or sliding window limits the keys around the diagonal
    HAS_KPM: tl.constexpr,  # a key_padding_mask is given
):
    """Bool tile: query ``rows`` may attend to key ``cols``."""
    visible = (rows < seq_q) & (cols < seq_k)
    if BAND:
        diagonal = rows + (seq_k - seq_q)  # the key aligned with each query (bottom-right corner)
        visible = visible & (cols >= diagonal - window_left) & (cols <= diagonal + window_right)
    if HAS_KPM:
        takes_part = tl.load(kpm_row + cols * stride_mn, mask=cols < seq_k, other=0)
        visible = visible & (takes_part != 0)
    return visible


@triton.jit
def _key_range(
    start_m, seq_q, seq_k, window_left, window_right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BAND: tl.constexpr
):
    """[lo, hi) of the keys queries [start_m, start_m + BLOCK_M) can see, lo a multiple of BLOCK_N:
    row i sees j in [i + off - left, i + off + right], so the block's first row bounds lo and its last
    row bounds hi; the key blocks outside are never loaded."""
    lo = 0
    hi = seq_k
    if BAND:
        off = seq_k - seq_q
        lo = (tl.maximum(start_m + off - window_left, 0) // BLOCK_N) * BLOCK_N
        hi = tl.minimum(start_m + BLOCK_M + off + window_right, seq_k)
    return lo, hi


@triton.jit
def _query_range(
    start_n, seq_q, seq_k, window_left, window_right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BAND: tl.constexpr
):
    """[lo, hi) of the queries that can see keys [start_n, start_n + BLOCK_N), lo a multiple of BLOCK_M:
    key j is seen by rows i in [j - off - right, j - off + left]."""
    lo = 0
    hi = seq_q
    if BAND:
        off = seq_k - seq_q
        lo = (tl.maximum(start_n - off - window_right, 0) // BLOCK_M) * BLOCK_M
        hi = tl.minimum(start_n + BLOCK_N - off + window_left, seq_q)
    return lo, hi


@triton.jit
def _tanh(x):
    """tanh in fp32 within 1.4 ulp, the same code on every target and in the interpreter (which has
    no libdevice): below |x| = 0.625 an odd polynomial (Cephes' tanhf coefficients); above, 1 - 2 /
    (e^2|x| + 1), exactly ±1 once e^2|x| overflows. The exp form alone is off by up to 2500 ulp near
    0.1 (1 - 2/(e^2x + 1) cancels), enough to fail float32 softcap against the textbook's torch.tanh."""
    z = x * x
    polynomial = -5.70498872745e-3 * z + 2.06390887954e-2
    polynomial = ((polynomial * z - 5.37397155531e-2) * z + 1.33314422036e-1) * z - 3.33332819422e-1
    small = x + x * z * polynomial
    large = 1.0 - 2.0 / (tl.exp2(tl.abs(x) * (2.0 * LOG2E)) + 1.0)
    return tl.where(tl.abs(x) < 0.625, small, tl.where(x < 0, -large, large))


@triton.jit
def _scores(
    qk,  # (rows, cols) fp32 dot products q·k
    rows,  # query indices, broadcastable against cols
    cols,  # key indices
    off,  # Nk - Nq
    scale,  # softmax scale
    softcap,  # cap c > 0 (unused without SOFTCAP)
    slope,  # ALiBi slope of the head times LOG2E (unused without ALIBI)
    SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,
):
    """Base-2 scores: scale · qk, capped to c · tanh(scale · qk / c), minus slope · |i + off - j|."""
    if SOFTCAP:
        s = _tanh(qk * (scale / softcap)) * (softcap * LOG2E)
    else:
        s = qk * (scale * LOG2E)
    if ALIBI:
        s -= slope * tl.abs(rows + off - cols).to(tl.float32)
    return s


# _tile_scores takes what every tile of a program is scored with as one tuple, ``scoring`` = (Nq, Nk,
# window_left, window_right, kpm_row, stride_mn, scale, softcap, slope): _visible's and _scores' arguments.
# Triton unpacks tuples at compile time, so this is the same code as passing each on its own.
@triton.jit
def _tile_scores(
    a,  # (len(rows), BLOCK_D) tile: qk = a · bᵀ (q and k; k and q for the transposed tile)
    b,  # (len(cols), BLOCK_D) tile
    rows,  # query indices (1-D)
    cols,  # key indices (1-D)
    scoring,  # see above
    IEEE: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,
    BAND: tl.constexpr,
    HAS_KPM: tl.constexpr,
    TRANSPOSED: tl.constexpr,  # a = k, b = q: the (keys, queries) tile of dK/dV
):
    """(qk, the base-2 scores of _scores, the visibility of _visible) of one tile."""
    seq_q, seq_k, window_left, window_right, kpm_row, stride_mn, scale, softcap, slope = scoring
    qk = _dot(a, tl.trans(b), IEEE)
    if TRANSPOSED:  # broadcast after the dot, not before: the order of the ops moves ptxas's registers
        rows, cols = rows[None, :], cols[:, None]
    else:
        rows, cols = rows[:, None], cols[None, :]
    s = _scores(qk, rows, cols, seq_k - seq_q, scale, softcap, slope, SOFTCAP, ALIBI)
    visible = _visible(rows, cols, seq_q, seq_k, window_left, window_right, kpm_row, stride_mn, BAND, HAS_KPM)
    return qk, s, visible


@triton.jit
def _softcap_grad(qk, scale, softcap):
    """d(c · tanh(x / c))/dx at x = scale · qk: 1 - tanh²."""
    cap = _tanh(qk * (scale / softcap))
    return 1.0 - cap * cap


@triton.jit
def _score_grad(p, dp, delta, visible, qk, scale, softcap, SOFTCAP: tl.constexpr):
    """dS = P ∘ (dP - delta) (1 - tanh² with softcap) of a tile, or of a transposed one with delta a row.
    A select, not p * (...): a NaN/inf dO or dlse on a row that sees no key stays out of the gradients."""
    ds = tl.where(visible, p * (dp - delta), 0.0)
    if SOFTCAP:
        ds = ds * _softcap_grad(qk, scale, softcap)
    return ds


@triton.jit
def _alibi_slope(Alibi, b, h, stride_ab, ALIBI: tl.constexpr):
    """The ALiBi slope of (b, h) times LOG2E (0 without ALIBI)."""
    slope = 0.0
    if ALIBI:
        slope = tl.load(Alibi + b * stride_ab + h) * LOG2E
    return slope


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
    Q,  # (B, Hq, Nq, D), last dim contiguous; packed: (total_q, Hq, D) seen with a batch stride of 0
    K,  # (B, Hkv, Nk, D), last dim contiguous; packed: (total_k, Hkv, D)
    V,  # like K
    Out,  # like Q, output
    Lse,  # float32 output: (B, Hq, Nq), or packed (Hq, total_q)
    Kpm,  # (B, Nk) uint8 key_padding_mask, 1 = key takes part (dummy without HAS_KPM)
    CuSeqlensQ,  # (B + 1,) int32 query offsets (dummy without VARLEN)
    CuSeqlensK,  # (B + 1,) int32 key offsets (dummy without VARLEN)
    Alibi,  # float32 ALiBi slopes, (Hq,) or (B, Hq) contiguous (dummy without ALIBI)
    Sinks,  # (Hq,) sink logits, contiguous (dummy without SINKS)
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
    stride_lb,
    stride_lh,  # strides of Lse along batch and heads (rows are contiguous)
    stride_mb,
    stride_mn,  # strides of Kpm
    stride_ab,  # stride of Alibi along batch (0: one slope per head)
    heads_q,  # Hq
    group,  # Hq // Hkv: query heads per key/value head
    seq_q,  # Nq (packed: the longest query sequence)
    seq_k,  # Nk (packed: the longest key sequence)
    head_dim,  # D
    num_m_blocks,  # cdiv(Nq, BLOCK_M)
    scale,  # softmax scale (natural-log units)
    window_left,  # see _visible (unused without BAND)
    window_right,
    softcap,  # c > 0 (unused without SOFTCAP)
    dropout_p,  # probability of dropping a probability (0 without DROPOUT)
    seed,  # Philox key of the dropout stream
    BAND: tl.constexpr,  # causal mask or sliding window
    SOFTCAP: tl.constexpr,  # scores capped by c · tanh(s / c)
    ALIBI: tl.constexpr,  # ALiBi bias
    SINKS: tl.constexpr,  # a sink logit per head in the denominator
    VARLEN: tl.constexpr,  # packed sequences, offsets in CuSeqlensQ/K
    HAS_KPM: tl.constexpr,  # Kpm is given
    DROPOUT: tl.constexpr,  # dropout_p > 0
    IEEE: tl.constexpr,  # fp32 dots at ieee precision
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per iteration
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two >= 16
):
    start_m, bh, b, h, h_kv, first_q, seq_q, first_k, seq_k = _query_program(
        num_m_blocks, heads_q, group, CuSeqlensQ, CuSeqlensK, seq_q, seq_k, VARLEN, BLOCK_M
    )
    if start_m >= seq_q:  # a packed sequence shorter than the longest
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    q_head = Q + b * stride_qb + h * stride_qh + first_q * stride_qm
    q = _load_tile(q_head, start_m, seq_q, stride_qm, tl.arange(0, BLOCK_M), offs_d, head_dim)  # (BLOCK_M, BLOCK_D)
    k_head = K + b * stride_kb + h_kv * stride_kh + first_k * stride_kn
    v_head = V + b * stride_vb + h_kv * stride_vh + first_k * stride_vn
    kpm_row = Kpm + b * stride_mb
    slope = _alibi_slope(Alibi, b, h, stride_ab, ALIBI)
    scoring = (seq_q, seq_k, window_left, window_right, kpm_row, stride_mn, scale, softcap, slope)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max of S (base 2)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running Σ exp2(S - m_i), before dropout
    if SINKS:  # the sink is the row's first score: m = sink, l = exp2(sink - m) = 1
        sink = tl.load(Sinks + h).to(tl.float32) * LOG2E
        m_i = tl.zeros([BLOCK_M], tl.float32) + sink
        l_i += 1.0  # a sink of -inf works too: the first visible key's alpha = exp2(-inf) clears it
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # running Σ exp2(S - m_i) Z V

    lo, hi = _key_range(start_m, seq_q, seq_k, window_left, window_right, BLOCK_M, BLOCK_N, BAND)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k, v = _load_tiles(k_head, v_head, start_n, seq_k, stride_kn, stride_vn, offs_n, offs_d, head_dim)
        qk, s, visible = _tile_scores(q, k, offs_m, cols, scoring, IEEE, SOFTCAP, ALIBI, BAND, HAS_KPM, False)
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
    o_head = Out + b * stride_ob + h * stride_oh + first_q * stride_om
    _store_tile(o_head, start_m, seq_q, stride_om, tl.arange(0, BLOCK_M), offs_d, head_dim, acc / l_safe[:, None], IEEE)
    tl.store(Lse + b * stride_lb + h * stride_lh + first_q + offs_m, lse, mask=offs_m < seq_q)


# -------------------------------------------------------------------------------------- backward
@triton.jit
def _attn_bwd_preprocess_kernel(
    Out,  # (B, Hq, Nq, D) forward output, last dim contiguous (packed: B = 1, Nq = total_q)
    DO,  # (B, Hq, Nq, D) upstream gradient of Out, last dim contiguous
    Dlse,  # (B, Hq, Nq) float32 upstream gradient of lse, contiguous (dummy without HAS_DLSE)
    Lse,  # (B, Hq, Nq) float32 forward lse, contiguous (read with SINKS only)
    Sinks,  # (Hq,) sink logits (dummy without SINKS)
    Delta,  # (B, Hq, Nq) float32 output, contiguous
    DsinkPartial,  # (B * Hq * num_m_blocks,) float32 output: each program's share of dsink (SINKS only)
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
    SINKS: tl.constexpr,  # also the sinks' gradient
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two >= 16
):
    start_m, bh, b, h = _program_tile(num_m_blocks, heads_q, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)

    local_m = tl.arange(0, BLOCK_M)
    o_head = Out + b * stride_ob + h * stride_oh
    do_head = DO + b * stride_dob + h * stride_doh
    o, do = _load_tiles(o_head, do_head, start_m, seq_q, stride_om, stride_dom, local_m, offs_d, head_dim)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    rows = bh.to(tl.int64) * seq_q + offs_m
    if HAS_DLSE:
        delta -= tl.load(Dlse + rows, mask=offs_m < seq_q, other=0.0)
    tl.store(Delta + rows, delta, mask=offs_m < seq_q)
    if SINKS:  # the sink's probability exp(sink - lse) times its dP - delta = -delta (it has no value)
        lse = tl.load(Lse + rows, mask=offs_m < seq_q, other=float("inf"))  # rows past the end: weight 0
        sink = tl.load(Sinks + h).to(tl.float32)
        weight = tl.where(lse == float("-inf"), 0.0, tl.exp2((sink - lse) * LOG2E))  # sink = lse = -inf: 0
        tl.store(DsinkPartial + tl.program_id(0), -tl.sum(weight * delta, 0))


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,  # (B, Hq, Nq, D), last dim contiguous; packed: (total_q, Hq, D) with a batch stride of 0
    K,  # (B, Hkv, Nk, D), last dim contiguous; packed: (total_k, Hkv, D)
    V,  # like K
    DO,  # like Q: upstream gradient of Out
    Lse,  # float32 forward lse: (B, Hq, Nq), or packed (Hq, total_q)
    Delta,  # float32 rowsum(dO * O) - dlse, laid out like Lse
    DK,  # like K, output
    DV,  # like V, output
    DQacc,  # float32 zero-filled, rows laid out like Lse, D per row: dQ accumulated atomically (DQ_ATOMIC only)
    Kpm,  # (B, Nk) uint8 key_padding_mask (dummy without HAS_KPM)
    CuSeqlensQ,  # (B + 1,) int32 query offsets (dummy without VARLEN)
    CuSeqlensK,  # (B + 1,) int32 key offsets (dummy without VARLEN)
    Alibi,  # float32 ALiBi slopes (dummy without ALIBI)
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
    stride_lb,
    stride_lh,  # strides of Lse (and Delta, DQacc rows) along batch and heads
    stride_mb,
    stride_mn,  # strides of Kpm
    stride_ab,  # stride of Alibi along batch (0: one slope per head)
    heads_q,  # Hq
    heads_kv,  # Hkv
    group,  # Hq // Hkv
    seq_q,  # Nq (packed: the longest query sequence)
    seq_k,  # Nk (packed: the longest key sequence)
    head_dim,  # D
    num_n_blocks,  # cdiv(Nk, BLOCK_N)
    scale,  # softmax scale
    window_left,  # see _visible
    window_right,
    softcap,  # c > 0 (unused without SOFTCAP)
    dropout_p,  # probability of dropping (0 without DROPOUT)
    seed,  # Philox key of the dropout stream
    BAND: tl.constexpr,  # causal mask or sliding window
    SOFTCAP: tl.constexpr,  # capped scores
    ALIBI: tl.constexpr,  # ALiBi bias
    VARLEN: tl.constexpr,  # packed sequences
    HAS_KPM: tl.constexpr,  # Kpm is given
    DROPOUT: tl.constexpr,  # dropout_p > 0
    DQ_ATOMIC: tl.constexpr,  # also accumulate dQ into DQacc with atomics
    IEEE: tl.constexpr,  # fp32 dots at ieee precision
    BLOCK_M: tl.constexpr,  # query rows per iteration
    BLOCK_N: tl.constexpr,  # keys per program
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two >= 16
):
    start_n, _, b, h_kv = _program_tile(num_n_blocks, heads_kv, BLOCK_N)
    first_q, seq_q, first_k, seq_k = _sequences(CuSeqlensQ, CuSeqlensK, b, seq_q, seq_k, VARLEN)
    if start_n >= seq_k:  # a packed sequence shorter than the longest
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)

    local_n = tl.arange(0, BLOCK_N)
    k_head = K + b * stride_kb + h_kv * stride_kh + first_k * stride_kn
    v_head = V + b * stride_vb + h_kv * stride_vh + first_k * stride_vn
    k, v = _load_tiles(k_head, v_head, start_n, seq_k, stride_kn, stride_vn, local_n, offs_d, head_dim)
    kpm_row = Kpm + b * stride_mb

    keep_scale = tl.where(dropout_p < 1.0, 1.0 / (1.0 - dropout_p), 0.0)  # p = 1 drops everything
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    lo, hi = _query_range(start_n, seq_q, seq_k, window_left, window_right, BLOCK_M, BLOCK_N, BAND)
    for g in range(0, group):  # the query heads that read this key/value head, in a fixed order
        h = h_kv * group + g
        bh = b * heads_q + h
        row_0 = b * stride_lb + h * stride_lh + first_q  # row 0 of this head in Lse, Delta, DQacc
        q_head = Q + b * stride_qb + h * stride_qh + first_q * stride_qm
        do_head = DO + b * stride_dob + h * stride_doh + first_q * stride_dom
        slope = _alibi_slope(Alibi, b, h, stride_ab, ALIBI)
        scoring = (seq_q, seq_k, window_left, window_right, kpm_row, stride_mn, scale, softcap, slope)
        for start_m in range(lo, hi, BLOCK_M):
            rows = start_m + offs_m
            q, do = _load_tiles(q_head, do_head, start_m, seq_q, stride_qm, stride_dom, offs_m, offs_d, head_dim)
            lse = tl.load(Lse + row_0 + rows, mask=rows < seq_q, other=0.0) * LOG2E
            delta = tl.load(Delta + row_0 + rows, mask=rows < seq_q, other=0.0)

            # (BLOCK_N, BLOCK_M) tiles: qk_t = (Q Kᵀ)ᵀ, s_t = Sᵀ
            qk_t, s_t, visible = _tile_scores(k, q, rows, offs_n, scoring, IEEE, SOFTCAP, ALIBI, BAND, HAS_KPM, True)
            p_t = tl.exp2(tl.where(visible, s_t - lse[None, :], float("-inf")))  # Pᵀ
            dp_t = _dot(v, tl.trans(do), IEEE)  # (dO Vᵀ)ᵀ
            if DROPOUT:
                keep_t = _dropout_keep(seed, bh, rows[None, :], offs_n[:, None], dropout_p)
                dv += _dot(_cast(tl.where(keep_t, p_t * keep_scale, 0.0), do.dtype, IEEE), do, IEEE)
                dp_t = tl.where(keep_t, dp_t * keep_scale, 0.0)
            else:
                dv += _dot(_cast(p_t, do.dtype, IEEE), do, IEEE)
            ds_t = _score_grad(p_t, dp_t, delta[None, :], visible, qk_t, scale, softcap, SOFTCAP)  # dSᵀ
            ds_t = _cast(ds_t, q.dtype, IEEE)
            dk += _dot(ds_t, q, IEEE)
            if DQ_ATOMIC:
                dq = _dot(tl.trans(ds_t), k, IEEE) * scale  # (BLOCK_M, BLOCK_D)
                dq_block = DQacc + (row_0 + start_m) * head_dim
                mask = (rows < seq_q)[:, None] & (offs_d < head_dim)[None, :]
                tl.atomic_add(dq_block + offs_m[:, None] * head_dim + offs_d[None, :], dq, mask=mask)

    dk_head = DK + b * stride_dkb + h_kv * stride_dkh + first_k * stride_dkn
    dv_head = DV + b * stride_dvb + h_kv * stride_dvh + first_k * stride_dvn
    _store_tile(dk_head, start_n, seq_k, stride_dkn, local_n, offs_d, head_dim, dk * scale, IEEE)
    _store_tile(dv_head, start_n, seq_k, stride_dvn, local_n, offs_d, head_dim, dv, IEEE)


@triton.jit
def _attn_bwd_dq_kernel(
    Q,  # (B, Hq, Nq, D), last dim contiguous; packed: (total_q, Hq, D) with a batch stride of 0
    K,  # (B, Hkv, Nk, D), last dim contiguous; packed: (total_k, Hkv, D)
    V,  # like K
    DO,  # like Q: upstream gradient of Out
    Lse,  # float32 forward lse: (B, Hq, Nq), or packed (Hq, total_q)
    Delta,  # float32 rowsum(dO * O) - dlse, laid out like Lse
    DQ,  # like Q, output
    Kpm,  # (B, Nk) uint8 key_padding_mask (dummy without HAS_KPM)
    CuSeqlensQ,  # (B + 1,) int32 query offsets (dummy without VARLEN)
    CuSeqlensK,  # (B + 1,) int32 key offsets (dummy without VARLEN)
    Alibi,  # float32 ALiBi slopes (dummy without ALIBI)
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
    stride_lb,
    stride_lh,  # strides of Lse (and Delta) along batch and heads
    stride_mb,
    stride_mn,  # strides of Kpm
    stride_ab,  # stride of Alibi along batch (0: one slope per head)
    heads_q,  # Hq
    group,  # Hq // Hkv
    seq_q,  # Nq (packed: the longest query sequence)
    seq_k,  # Nk (packed: the longest key sequence)
    head_dim,  # D
    num_m_blocks,  # cdiv(Nq, BLOCK_M)
    scale,  # softmax scale
    window_left,  # see _visible
    window_right,
    softcap,  # c > 0 (unused without SOFTCAP)
    dropout_p,  # probability of dropping (0 without DROPOUT)
    seed,  # Philox key of the dropout stream
    BAND: tl.constexpr,  # causal mask or sliding window
    SOFTCAP: tl.constexpr,  # capped scores
    ALIBI: tl.constexpr,  # ALiBi bias
    VARLEN: tl.constexpr,  # packed sequences
    HAS_KPM: tl.constexpr,  # Kpm is given
    DROPOUT: tl.constexpr,  # dropout_p > 0
    IEEE: tl.constexpr,  # fp32 dots at ieee precision
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per iteration
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two >= 16
):
    start_m, bh, b, h, h_kv, first_q, seq_q, first_k, seq_k = _query_program(
        num_m_blocks, heads_q, group, CuSeqlensQ, CuSeqlensK, seq_q, seq_k, VARLEN, BLOCK_M
    )
    if start_m >= seq_q:  # a packed sequence shorter than the longest
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    local_m = tl.arange(0, BLOCK_M)
    q_head = Q + b * stride_qb + h * stride_qh + first_q * stride_qm
    do_head = DO + b * stride_dob + h * stride_doh + first_q * stride_dom
    q, do = _load_tiles(q_head, do_head, start_m, seq_q, stride_qm, stride_dom, local_m, offs_d, head_dim)
    row_0 = b * stride_lb + h * stride_lh + first_q  # row 0 of this head in Lse and Delta
    lse = tl.load(Lse + row_0 + offs_m, mask=offs_m < seq_q, other=0.0) * LOG2E
    delta = tl.load(Delta + row_0 + offs_m, mask=offs_m < seq_q, other=0.0)
    k_head = K + b * stride_kb + h_kv * stride_kh + first_k * stride_kn
    v_head = V + b * stride_vb + h_kv * stride_vh + first_k * stride_vn
    kpm_row = Kpm + b * stride_mb
    slope = _alibi_slope(Alibi, b, h, stride_ab, ALIBI)
    scoring = (seq_q, seq_k, window_left, window_right, kpm_row, stride_mn, scale, softcap, slope)

    keep_scale = tl.where(dropout_p < 1.0, 1.0 / (1.0 - dropout_p), 0.0)  # p = 1 drops everything
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    lo, hi = _key_range(start_m, seq_q, seq_k, window_left, window_right, BLOCK_M, BLOCK_N, BAND)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k, v = _load_tiles(k_head, v_head, start_n, seq_k, stride_kn, stride_vn, offs_n, offs_d, head_dim)
        qk, s, visible = _tile_scores(q, k, offs_m, cols, scoring, IEEE, SOFTCAP, ALIBI, BAND, HAS_KPM, False)
        p = tl.exp2(tl.where(visible, s - lse[:, None], float("-inf")))  # rows with lse = -inf see nothing
        dp = _dot(do, tl.trans(v), IEEE)
        if DROPOUT:
            keep = _dropout_keep(seed, bh, offs_m[:, None], cols[None, :], dropout_p)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = _score_grad(p, dp, delta[:, None], visible, qk, scale, softcap, SOFTCAP)
        dq += _dot(_cast(ds, k.dtype, IEEE), k, IEEE)

    dq_head = DQ + b * stride_dqb + h * stride_dqh + first_q * stride_dqm
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

    def launch_options(self) -> dict:
        """The tile constexprs and launch options of a kernel launched with this configuration."""
        return dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, num_warps=self.num_warps, num_stages=self.num_stages)


# GPU tiles, keyed by (kernel, fp32 inputs, dropout, head dim up to): the candidates, best first; the
# launcher takes the first whose shared memory fits the device (_launch_fitting). Not timed on a GPU
# yet: the shapes start from FlashAttention-2's and the Triton tutorial's and are chosen by what
# `python bench/static_resources.py` reports of them (ptxas -v through Triton 3.8, for sm_80 and sm_90;
# the report is in bench/results/static/): no spill with every feature on (a band, softcap, ALiBi,
# sinks, a padding mask or packed sequences, dropout for the dropout entries), shared memory within
# sm_80's 163 KiB and sm_90's 227 KiB per block, and the largest tiles that allow both. Beside each
# entry, sm_80 / sm_90: the registers per thread over every dtype and set of features, the shared
# memory per block, and the warps per SM that the registers and shared memory allow (8 for the 16-bit
# tiles: 1 block of 8 warps, bound by registers). Timings on a GPU should replace these reasons.
#
# Dropout has entries of its own: the Philox draws of a tile cost 30-70 registers, which took the
# first tiles (forward D = 64: 128 x 64, 4 warps) to 255 registers and 236-460 bytes of spill. The one
# exception to "no spill" is the dK/dV kernel's atomic dQ (deterministic=False) with dropout, or in
# float32: it holds dK, dV and a dQ tile with its atomic addresses at once, and none of the ~40 tiles
# tried (16-64 keys, 16-32 queries, 4-16 warps, 1-3 stages) compiles without 4-28 bytes spilled on
# one of the two architectures, where ptxas holds the registers at the cap of the block size (255 at
# 8 warps, 128 at 16); the deterministic path spills nothing (ACCEPTED_SPILLS, bench/static_resources.py).
#
# float32 inputs take exact fp32 dots (input_precision="ieee"), which Triton computes with FMAs, not
# tensor cores, holding a row slice of each operand per thread for the whole reduction: registers grow
# with BLOCK_D times the rows and columns a thread owns. The first fp32 tiles (64 x 32 and 32 x 32 with
# 4 warps) spilled 2-20 KB a thread (ptxas fell back to 32 registers: forward D = 128 14-20 KB),
# hence 16-row tiles over 8-16 warps here. tf32x3 (three tf32 tensor-core products a dot) would be
# faster, but it rounds each product to about 2^-21 of its size against fp32's 2^-24: several times
# the error of the float32 reference, of which the numerics rule (DESIGN.md section 4) allows twice,
# and the interpreter that runs these kernels in the tests computes every dot in fp32, so no CPU test
# could see the difference.
_GPU_CONFIGS = {
    ("fwd", False, False, 64): (_Config(128, 64, 8, 3),),  # 150-177 / 128-159 regs, 48 / 64 KiB, 8 / 8-16 warps/SM
    ("fwd", False, True, 64): (_Config(128, 64, 8, 3),),  # 179-246 / 159-243 regs, 48 / 64 KiB, 8 / 8 warps/SM
    ("fwd", False, False, 128): (_Config(128, 64, 8, 3),),  # 210-255 / 181-195 regs, 96 / 128 KiB, 8 / 8 warps/SM
    ("fwd", False, True, 128): (_Config(128, 32, 8, 3),),  # 190-231 / 176-202 regs, 64 / 80 KiB, 8 / 8 warps/SM
    ("fwd", False, False, 256): (_Config(64, 32, 8, 2),),  # 181-242 / 164-195 regs, 68 / 96 KiB, 8 / 8 warps/SM
    ("fwd", False, True, 256): (_Config(64, 32, 8, 2),),  # 242-255 / 198-236 regs, 68 / 98 KiB, 8 / 8 warps/SM
    ("fwd", True, False, 128): (_Config(16, 16, 8, 1),),  # 64 / 64-67 regs, 24 / 24 KiB, 32 / 24-32 warps/SM
    ("fwd", True, True, 128): (_Config(16, 16, 8, 1),),  # 64 / 64 regs, 24 / 24 KiB, 32 / 32 warps/SM
    ("fwd", True, False, 256): (_Config(16, 16, 4, 1),),  # 144-153 / 146-147 regs, 48 / 48 KiB, 12 / 12 warps/SM
    ("fwd", True, True, 256): (_Config(16, 16, 4, 1),),  # 150-157 / 147-150 regs, 48 / 48 KiB, 12 / 12 warps/SM
    ("dkdv", False, False, 64): (_Config(32, 64, 8, 3),),  # 182-209 / 154-210 regs, 40.5 / 56.5 KiB, 8 / 8 warps/SM
    ("dkdv", False, True, 64): (_Config(16, 64, 8, 3),),  # 179-245 / 141-221 regs, 28.2 / 40.2 KiB, 8 / 8 warps/SM
    ("dkdv", False, False, 128): (_Config(16, 64, 8, 3),),  # 173-235 / 158-232 regs, 56.2 / 80.2 KiB, 8 / 8 warps/SM
    # 178-255 / 191-246 regs, 48.1 / 72.1 KiB, 8 / 8 warps/SM; spills <= 4 B
    ("dkdv", False, True, 128): (_Config(16, 64, 8, 2),),
    ("dkdv", False, False, 256): (_Config(16, 32, 8, 2),),  # 166-255 / 147-179 regs, 64.1 / 64.1 KiB, 8 / 8 warps/SM
    # 123-220 / 101-162 regs, 48.1 / 48.1 KiB, 8-16 / 8-16 warps/SM; spills <= 12 B
    ("dkdv", False, True, 256): (_Config(16, 16, 8, 2),),
    ("dkdv", True, False, 128): (_Config(16, 64, 16, 1),),  # 86-128 / 91-112 regs, 84 / 84 KiB, 16 / 16 warps/SM
    # 102-128 / 104-128 regs, 84 / 84 KiB, 16 / 16 warps/SM; spills <= 24 B
    ("dkdv", True, True, 128): (_Config(16, 64, 16, 1),),
    # 80-128 / 84-128 regs, 98 / 98 KiB, 16 / 16 warps/SM; spills <= 4 B
    ("dkdv", True, False, 256): (_Config(16, 32, 16, 1),),
    # 88-128 / 90-128 regs, 98 / 98 KiB, 16 / 16 warps/SM; spills <= 28 B
    ("dkdv", True, True, 256): (_Config(16, 32, 16, 1),),
    ("dq", False, False, 64): (_Config(128, 64, 8, 3),),  # 158-199 / 136-185 regs, 64 / 80 KiB, 8 / 8 warps/SM
    ("dq", False, True, 64): (_Config(128, 64, 8, 3),),  # 187-255 / 168-184 regs, 64 / 80 KiB, 8 / 8 warps/SM
    ("dq", False, False, 128): (_Config(128, 32, 8, 3),),  # 192-198 / 148-186 regs, 96 / 112 KiB, 8 / 8 warps/SM
    ("dq", False, True, 128): (_Config(128, 32, 8, 3),),  # 187-255 / 169-183 regs, 96 / 112 KiB, 8 / 8 warps/SM
    # 181-242 / 182-218 regs, 100 / 128 KiB, 8 / 8 warps/SM; the second, for the 99 KiB of sm_86/sm_89:
    # 128-144 regs, 66 KiB, 8-16 warps/SM (sm_80 code)
    ("dq", False, False, 256): (_Config(64, 32, 8, 2), _Config(32, 32, 8, 2)),
    # 255 / 229-242 regs, 100 / 130 KiB, 8 / 8 warps/SM; the second, for the 99 KiB of sm_86/sm_89:
    # 128-174 regs, 66 KiB, 8-16 warps/SM (sm_80 code)
    ("dq", False, True, 256): (_Config(64, 32, 8, 2), _Config(32, 32, 8, 2)),
    ("dq", True, False, 128): (_Config(64, 16, 8, 1),),  # 115-118 / 116-120 regs, 80 / 80 KiB, 16 / 16 warps/SM
    ("dq", True, True, 128): (_Config(64, 16, 8, 1),),  # 112-118 / 113-128 regs, 80 / 80 KiB, 16 / 16 warps/SM
    ("dq", True, False, 256): (_Config(16, 16, 4, 1),),  # 145-146 / 150-152 regs, 64 / 64 KiB, 8 / 12 warps/SM
    ("dq", True, True, 256): (_Config(16, 16, 4, 1),),  # 146-148 / 148-152 regs, 64 / 64 KiB, 8 / 12 warps/SM
}
# Triton's interpreter (CPU tensors) runs every program and every loop iteration as Python over numpy
# tiles, so the cost is the number of tiles more than their size, and it never autotunes. Forward plus
# both backward paths at Nq=200, Nk=1025, D=111 (single-threaded OpenBLAS, CPU seconds): 32x32 tiles
# 6.7 s, 64x64 2.7 s, 128x128 1.1 s, 256x256 0.8 s. 128 keeps several tiles per sequence in the tests
# (N = 200, 1025), so the online rescaling and the partial and skipped blocks still run on the CPU.
_INTERPRETER_CONFIG = _Config(128, 128, 1, 1)


def _candidates(kernel: str, device: torch.device, head_dim: int, dtype: torch.dtype, dropout: bool):
    """The tile configurations for ``kernel`` in {"fwd", "dkdv", "dq"} on ``device``, best first."""
    if interpreter.interpreted(device):
        return (_INTERPRETER_CONFIG,)
    fp32 = dtype == torch.float32
    up_to = min(d for (k, f, p, d) in _GPU_CONFIGS if (k, f, p) == (kernel, fp32, dropout) and head_dim <= d)
    return _GPU_CONFIGS[(kernel, fp32, dropout, up_to)]


def _launch_fitting(kernel: str, q: Tensor, dropout: bool, launch: Callable[[_Config], None]) -> None:
    """``launch(config)`` with the first candidate of ``kernel``'s table entry whose shared memory fits the
    device, or a RuntimeError that says what each needs.

    Triton compares a compiled kernel's shared memory with the most a block may opt in to on the device
    (``shared_memory_per_block_optin``: 163 KiB on sm_80, 99 KiB on sm_86/sm_89, 227 KiB on sm_90) when it
    loads it, before anything is launched, and raises OutOfResources: so a candidate that does not fit
    costs one caught exception per call, and nothing at all is checked twice where the first fits (every
    first candidate fits sm_80 and sm_90: tests/test_static_resources.py).
    """
    needs = []
    for cfg in _candidates(kernel, q.device, q.shape[-1], q.dtype, dropout):
        try:
            launch(cfg)
            return
        except OutOfResources as error:
            if error.name != "shared memory":
                raise
            needs.append(f"{cfg} needs {error.required} bytes")
            limit = error.limit
    raise RuntimeError(
        f"no tile configuration of the Triton attention {kernel} kernel for {q.dtype} head_dim {q.shape[-1]} fits "
        f"the {limit} bytes of shared memory a block may use on {q.device} ({'; '.join(needs)}); use the cuda or "
        "naive backend there"
    )


def _block_d(head_dim: int) -> int:
    return max(MIN_BLOCK, triton.next_power_of_2(head_dim))


def _ieee(t: Tensor) -> bool:
    """fp32 dots at ieee precision: for fp32 inputs, and for bf16 under the interpreter (its numpy dot
    cannot read bf16; fp32 products of bf16 values are exact, as on tensor cores)."""
    return t.dtype == torch.float32 or (interpreter.interpreted(t.device) and t.dtype == torch.bfloat16)


def _padding_mask(key_padding_mask: Tensor | None, like: Tensor) -> tuple[Tensor, int, int]:
    """(uint8 view or dummy pointer, stride along batch, stride along keys)."""
    if key_padding_mask is None:
        return like, 0, 0
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool, got {key_padding_mask.dtype}")
    mask = key_padding_mask.view(torch.uint8)
    return mask, mask.stride(0), mask.stride(1)


def _check(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, varlen: bool) -> None:
    dims = 3 if varlen else 4
    if q.dim() != dims or k.dim() != dims or v.dim() != dims:
        layout = "(total, H, D) with cu_seqlens" if varlen else "(B, H, N, D)"
        raise ValueError(f"q, k, v must be {dims}-d {layout}, got {q.dim()}, {k.dim()}, {v.dim()} dims")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q, k, v must share one of fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    heads_q, head_dim = q.shape[1], q.shape[-1]
    if k.shape != v.shape or k.shape[-1] != head_dim or (not varlen and k.shape[0] != q.shape[0]):
        raise ValueError(f"k, v must match q {tuple(q.shape)}, got {tuple(k.shape)}, {tuple(v.shape)}")
    heads_kv = k.shape[1]
    if (heads_q % heads_kv if heads_kv else heads_q) != 0:
        raise ValueError(f"Hq ({heads_q}) must be a multiple of Hkv ({heads_kv})")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in 1..{MAX_HEAD_DIM}, got {head_dim}")
    if key_padding_mask is not None and (varlen or tuple(key_padding_mask.shape) != (q.shape[0], k.shape[2])):
        raise ValueError(
            f"key_padding_mask must be (B, Nk) and packed sequences take none, got {key_padding_mask.shape}"
        )


class Features(NamedTuple):
    """What a call computes besides plain softmax attention; the defaults: nothing."""

    window: tuple[int, int] = (-1, -1)  # (left, right) keys around the diagonal; -1: unlimited
    softcap: float = 0.0  # > 0: scores capped to softcap · tanh(s / softcap)
    alibi_slopes: Tensor | None = None  # float32 (Hq,) or (B, Hq)
    sinks: Tensor | None = None  # (Hq,) sink logits
    cu_seqlens_q: Tensor | None = None  # int32 (B + 1,): q, k, v are packed (total, H, D) sequences
    cu_seqlens_k: Tensor | None = None
    max_seqlen_q: int = 0  # the longest packed sequences
    max_seqlen_k: int = 0


NO_FEATURES = Features()


class _Layout(NamedTuple):
    """A call's tensors as the kernels address them: (B, H, N, D) with a batch stride (0 when packed)."""

    batch: int
    seq_q: int  # packed: the longest sequence
    seq_k: int
    varlen: bool

    def strides(self, t: Tensor) -> tuple[int, int, int]:
        """(batch, head, row) strides of q-, k- or o-like ``t``."""
        if self.varlen:
            return 0, t.stride(1), t.stride(0)
        return t.stride(0), t.stride(1), t.stride(2)

    def row_strides(self, heads: int, rows: int) -> tuple[int, int]:
        """(batch, head) strides of the contiguous per-row tensors (lse, delta): (B, H, N) or packed (H, total)."""
        return (0, rows) if self.varlen else (heads * self.seq_q, self.seq_q)


def _layout(q: Tensor, k: Tensor, features: Features) -> _Layout:
    if features.cu_seqlens_q is None:
        return _Layout(q.shape[0], q.shape[2], k.shape[2], False)
    return _Layout(features.cu_seqlens_q.numel() - 1, features.max_seqlen_q, features.max_seqlen_k, True)


class _Call(NamedTuple):
    """What the forward, dK/dV and dQ kernels of one call take alike (a dummy pointer for an absent tensor)."""

    layout: _Layout
    inputs: tuple  # Kpm, CuSeqlensQ, CuSeqlensK, Alibi
    strides: tuple  # the per-row tensors' (Lse, Delta, DQacc) along batch and heads, Kpm's, Alibi's along batch
    sizes: tuple  # Hq // Hkv, Nq, Nk, D
    options: tuple  # scale, window_left, window_right, softcap, dropout_p, seed
    flags: dict  # the constexprs HAS_KPM, DROPOUT, IEEE, BLOCK_D, BAND, SOFTCAP, ALIBI, VARLEN

    def arguments(self, tensors: tuple, strided: tuple, heads: tuple, num_blocks: int, inputs: tuple = ()) -> tuple:
        """A kernel's positional arguments, in the order the three kernels share: its own ``tensors``, the
        call's inputs and its own further ``inputs`` (the forward's sinks), the (batch, head, row) strides of
        ``strided``, the call's strides, ``heads``, the sizes, ``num_blocks`` (its grid's tiles per head) and
        the options."""
        pointers = (*tensors, *self.inputs, *inputs)
        strides = (*(stride for t in strided for stride in self.layout.strides(t)), *self.strides)
        return (*pointers, *strides, *heads, *self.sizes, num_blocks, *self.options)


def _call(
    q: Tensor,
    k: Tensor,
    key_padding_mask: Tensor | None,
    layout: _Layout,
    rows: int,  # rows of a head in the per-row tensors: Nq, or total_q packed
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: int,
    features: Features,
) -> _Call:
    left, right = features.window
    right = 0 if causal else right
    unlimited = layout.seq_q + layout.seq_k  # farther than any key from any diagonal
    alibi = features.alibi_slopes
    if alibi is not None:
        alibi = alibi.to(torch.float32).contiguous()
    kpm, stride_mb, stride_mn = _padding_mask(key_padding_mask, q)
    heads_q, head_dim = q.shape[1], q.shape[-1]
    return _Call(
        layout,
        (
            kpm,
            features.cu_seqlens_q if layout.varlen else q,
            features.cu_seqlens_k if layout.varlen else q,
            alibi if alibi is not None else q,
        ),
        (
            *layout.row_strides(heads_q, rows),
            stride_mb,
            stride_mn,
            alibi.shape[-1] if alibi is not None and alibi.dim() == 2 else 0,  # 0: one slope per head
        ),
        (heads_q // k.shape[1], layout.seq_q, layout.seq_k, head_dim),
        (
            float(scale),
            left if left >= 0 else unlimited,
            right if right >= 0 else unlimited,
            float(features.softcap),
            float(dropout_p),
            int(seed),
        ),
        dict(
            HAS_KPM=key_padding_mask is not None,
            DROPOUT=dropout_p > 0.0,
            IEEE=_ieee(q),
            BLOCK_D=_block_d(head_dim),
            BAND=left >= 0 or right >= 0,
            SOFTCAP=features.softcap > 0,
            ALIBI=alibi is not None,
            VARLEN=layout.varlen,
        ),
    )


def _lse_without_keys(lse: Tensor, sinks: Tensor | None) -> Tensor:
    """``lse`` filled as for rows that see no key: the sink's logit of each head, or -inf."""
    if sinks is None:
        return lse.fill_(float("-inf"))
    heads = (-1, 1) if lse.dim() == 2 else (1, -1, 1)  # packed (Hq, total) or (B, Hq, Nq)
    return lse.copy_(sinks.to(torch.float32).view(heads).expand_as(lse))


def attention_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: int,
    features: Features = NO_FEATURES,
) -> tuple[Tensor, Tensor]:
    """Forward attention. q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D); any strides whose last dim is
    contiguous. With ``features.cu_seqlens_q/k``: packed q (total_q, Hq, D), k, v (total_k, Hkv, D).

    Returns ``out`` contiguous, shaped like q, in q.dtype, and ``lse`` contiguous float32 (B, Hq, Nq)
    (packed: (Hq, total_q)), the natural log of Σ exp(S) over the visible keys (plus exp(sink)) before
    dropout. Rows that see no key give out = 0 and lse = -inf (the sink). Dropout keeps each
    probability with probability 1 - dropout_p, from the Philox stream keyed by ``seed`` described in
    the module docstring.
    """
    layout = _layout(q, k, features)
    _check(q, k, v, key_padding_mask, layout.varlen)
    heads_q = q.shape[1]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # like q, contiguous
    lse_shape = (heads_q, q.shape[0]) if layout.varlen else (layout.batch, heads_q, layout.seq_q)
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    if out.numel() == 0 or layout.seq_q == 0:
        return out, lse
    if k.numel() == 0:
        return out.zero_(), _lse_without_keys(lse, features.sinks)

    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    call = _call(q, k, key_padding_mask, layout, q.shape[0], causal, scale, dropout_p, seed, features)
    sinks = features.sinks.contiguous() if features.sinks is not None else q

    def launch(cfg: _Config) -> None:
        num_m_blocks = triton.cdiv(layout.seq_q, cfg.block_m)
        _attn_fwd_kernel[(num_m_blocks * layout.batch * heads_q,)](
            *call.arguments((q, k, v, out, lse), (q, k, v, out), (heads_q,), num_m_blocks, inputs=(sinks,)),
            **cfg.launch_options(),
            SINKS=features.sinks is not None,
            **call.flags,
        )

    _launch_fitting("fwd", q, dropout_p > 0.0, launch)
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
    features: Features = NO_FEATURES,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Backward attention: (dq, dk, dv, dsinks), dq, dk, dv shaped like (q, k, v), contiguous; dsinks
    float32 (Hq,), or None without sinks.

    ``lse`` is the forward's; ``dlse`` (float32, shaped like lse, or None) the upstream gradient of lse.
    dK/dV of a key/value head sum over its group of query heads inside the kernel. With
    ``deterministic=True`` dQ comes from its own kernel and every gradient is bitwise reproducible;
    otherwise dQ is accumulated with fp32 atomics inside the dK/dV pass.
    """
    layout = _layout(q, k, features)
    _check(q, k, v, key_padding_mask, layout.varlen)
    heads_q, head_dim, heads_kv = q.shape[1], q.shape[-1], k.shape[1]
    has_sinks = features.sinks is not None
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)  # like k, contiguous
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)  # like v, contiguous
    if q.numel() == 0 or layout.seq_q == 0:
        dsinks = torch.zeros(heads_q, device=q.device) if has_sinks else None
        return q.new_zeros(q.shape), dk.zero_(), dv.zero_(), dsinks

    do, q, k, v, out = (last_dim_contiguous(t) for t in (do, q, k, v, out))
    lse = lse.to(torch.float32).contiguous()
    rows = lse.numel() // heads_q  # per head: B·Nq, or total_q packed
    block_d = _block_d(head_dim)

    # delta, and each block's share of dsinks, over every row at once: packed rows need no offsets here
    delta = torch.empty_like(lse)
    if dlse is not None:
        dlse = dlse.to(torch.float32).contiguous()
    flat = _Layout(1, rows, 0, True) if layout.varlen else layout
    pre_batch, pre_rows = (1, rows) if layout.varlen else (layout.batch, layout.seq_q)
    pre_blocks = triton.cdiv(pre_rows, PREPROCESS_ROWS)
    dsink_partial = torch.empty(pre_blocks * pre_batch * heads_q, dtype=torch.float32, device=q.device)
    _attn_bwd_preprocess_kernel[(pre_blocks * pre_batch * heads_q,)](
        out,
        do,
        dlse if dlse is not None else delta,
        lse,
        features.sinks.contiguous() if has_sinks else lse,
        delta,
        dsink_partial,
        *flat.strides(out),
        *flat.strides(do),
        heads_q,
        pre_rows,
        head_dim,
        pre_blocks,
        HAS_DLSE=dlse is not None,
        SINKS=has_sinks,
        BLOCK_M=PREPROCESS_ROWS,
        BLOCK_D=block_d,
    )
    dsinks = dsink_partial.view(pre_batch, heads_q, pre_blocks).sum((0, 2)) if has_sinks else None
    if k.numel() == 0:
        return q.new_zeros(q.shape), dk, dv, dsinks

    call = _call(q, k, key_padding_mask, layout, rows, causal, scale, dropout_p, seed, features)

    # float32 dQ rows laid out like lse's: (B, Hq, Nq, D), or packed (Hq, total_q, D)
    acc_shape = (heads_q, q.shape[0], head_dim) if layout.varlen else q.shape
    dq_acc = None if deterministic else torch.zeros(acc_shape, dtype=torch.float32, device=q.device)

    def launch_dkdv(cfg: _Config) -> None:
        num_n_blocks = triton.cdiv(layout.seq_k, cfg.block_n)
        tensors = (q, k, v, do, lse, delta, dk, dv, dq_acc if dq_acc is not None else delta)
        _attn_bwd_dkdv_kernel[(num_n_blocks * layout.batch * heads_kv,)](
            *call.arguments(tensors, (q, k, v, do, dk, dv), (heads_q, heads_kv), num_n_blocks),
            DQ_ATOMIC=not deterministic,
            **cfg.launch_options(),
            **call.flags,
        )

    _launch_fitting("dkdv", q, dropout_p > 0.0, launch_dkdv)
    if dq_acc is not None:
        dq = dq_acc.transpose(0, 1) if layout.varlen else dq_acc
        return dq.to(q.dtype).contiguous(), dk, dv, dsinks

    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # like q, contiguous

    def launch_dq(cfg: _Config) -> None:
        num_m_blocks = triton.cdiv(layout.seq_q, cfg.block_m)
        _attn_bwd_dq_kernel[(num_m_blocks * layout.batch * heads_q,)](
            *call.arguments((q, k, v, do, lse, delta, dq), (q, k, v, do, dq), (heads_q,), num_m_blocks),
            **cfg.launch_options(),
            **call.flags,
        )

    _launch_fitting("dq", q, dropout_p > 0.0, launch_dq)
    return dq, dk, dv, dsinks


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
