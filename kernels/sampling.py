"""Fused, sort-free sampling from softmax(logits / T) with top-k, top-p and min-p, in Triton.

For one row of V logits x (the semantics of ``fastattn.reference.filter_logits``, point by point):

    z_i  = float32(x_i) / T                       IEEE division (``div_rn``); T == 0: greedy, z = x
    m    = max_i z_i,   e_i = exp(z_i - m)         e in float64
    t_k  = the k-th largest z                      top-k keeps z >= t_k (ties kept)
    F(t) = Σ_{z_i >= max(t, t_k)} e_i              the top-k mass at or above t
    t_p  = the largest z with F(z) >= p · F(t_k)   top-p keeps z >= t_p
    kept = { i : z_i >= max(t_k, t_p),  e_i >= min_p,  z_i > -inf }
    token = argmax_{i in kept} float32((z_i - m) + g_i)   g_i Gumbel noise; lowest index on ties

Why the top-p threshold is that: a token with value v is kept iff the mass strictly above v,
M(>v) = F(next larger value), is < p · Z_k. M(>v) grows as v falls, so the kept values are those down to
the largest v whose inclusive mass F(v) reaches p · Z_k (the token that crosses p), and every token tied
with it (same v) is kept with it. Both thresholds are "the largest element value t with W(z >= t) >=
target", for a weight W non-increasing in t: W = count and target = k for top-k, W = F and target =
p · Z_k for top-p.

Selection without sorting. Floats are compared through their ordered integer key (the float32 bits, with
the magnitude bits flipped for negatives, so int32 order = float order; -0.0 is made +0.0 first): every
threshold is one of the row's own values, so the kept set is decided by exact integer comparisons and
ties are kept by construction. Each search keeps a bracket [lo, hi) of keys with W(>= lo) >= target >
W(>= hi), lo a key of the row (it starts at the row's smallest key, or at t_k for top-p; hi at key(m) +
1). A pass over the row measures, at PIVOTS keys spread evenly over (lo, hi), the weight W at or above
each pivot, the smallest key at or above it and the largest key below it (one (ROWS, BLOCK_V, PIVOTS)
compare per chunk). The bracket then becomes the bucket between the last pivot that reaches the target
and the first that does not, snapped to the keys that actually occur in it: at least PIVOTS times
narrower, and once it holds a single key, that key is the threshold. Any float32 bracket closes within
ceil(32 / log2(PIVOTS)) = 8 passes; with the snapping, random float32 or bfloat16 logits at V = 32000 or
128256 take 4-5 passes for top-k = 50, 4-6 for top-p = 0.9 alone and 2 more for top-p after top-k (a
simulation of the same steps). The top-k counts are exact (int32 in a chunk, summed in float64); the
top-p masses are float64 sums of float64 exponentials, as in the reference, so the two agree except when
a cumulative mass lies within float64 rounding (~1e-16 relative) of p · Z_k. Chunks holding no key above
the bracket's floor skip the compare. Passes over the logits: one for m, argmax, NaN/inf counts and the
smallest key; the top-k passes (only when k < V); the top-p passes (only when p < 1); one to draw. Plain
temperature sampling reads the row twice.

The draw is exact Gumbel-max (argmax of log-probability plus independent Gumbel noise is distributed as
the softmax): the draw's distribution is the renormalized softmax over the kept set, up to float32
rounding of (z - m) + g. The random stream, reproducible bit for bit by a CUDA kernel:

    key     (k0, k1) = (seed mod 2^32, (seed >> 32) mod 2^32)   of the row's int64 seed (two's complement)
    counter (c0, c1, c2, c3) = (i mod 2^32, i >> 32, 0, 0)       i = the token index (int64)
    (r0, r1, r2, r3) = Philox4x32-10(counter, key)              Random123's philox4x32, 10 rounds
                                                                (= triton.language.randint4x(seed, i))
    j = r0 · 2^20 + (r1 >> 12)                                  52 random bits (uint64)
    u = (2j + 1) · 2^-53                                        float64, exact, in (0, 1)
    E = -log(u)                                                 float64 log (libdevice __nv_log on CUDA)
    g = -log(float32(E))                                        float32 log (libdevice __nv_logf on CUDA)

r2 and r3 are unused. A row's draw depends only on its seed and its logits, never on the batch size,
the row's position or the tile sizes. With 52 bits g lies in [-3.6, 36.7], so only tokens whose
probability is below e^-40 (~4e-18) of the most likely one's can never be drawn.

Special rows: greedy rows (T == 0) take the first maximal logit; rows with a NaN or with every logit
-inf give token -1 (log-prob NaN); rows with +inf logits (also from overflow of x / T) draw uniformly
among their +inf entries (log-prob -log(count)); their finite tokens have probability 0.

Layout: one program handles ROWS rows (ROWS = 1 for long rows on a GPU; many short rows per program
under the interpreter, whose cost is per program and per operation) and streams each row in chunks of
BLOCK_V; row offsets are int64 (row · stride), so logits beyond 2^31 elements are addressed safely.

Split rows (``splits`` > 1): at small batch one program a row leaves most SMs idle while it streams the
whole row on every pass (at B = 1 and V = 128k, ~10 passes on one SM; each top-p pass costs a float64
exp per token, ~128k x 20 FP64 operations at 64 a clock on an H100 SM, ~25 µs). Every pass is a
reduction over the row followed by a tiny decision on a few per-row values, so the split path cuts each
row into ``splits`` slices of whole chunks, one program each, and runs each pass as one launch over (row
blocks, splits): the programs write per-slice partials (counts or float64 masses at the pivots, up and
down, in a workspace); the next launch's programs each sum the partials of their row in split order (the
same bracket in every program), narrow the bracket, and measure their slice at the new pivots. Launches:
one for the statistics (max, argmax, smallest key, NaN and +inf counts), SEARCH_STEPS = 8 for top-k and
8 for top-p (enough for any float32 bracket, see SEARCH_STEPS; a program whose row's bracket has closed
reads nothing), one for min-p and the draw over each slice, one to merge the slices' best scores (the
lowest token on equal scores, as one program's first maximum). A fixed sequence of 19 launches with no
host synchronization: CUDA-graph capturable (without a graph, their launch latency, ~19 x 3 µs, is the
floor of this path; the split rows of ``python -m fastattn bench sampling`` measure both). The thresholds are the
same keys (the unique largest key meeting each target), so the kept set and the tokens are the single
program's; the top-p masses are summed in another order, which could change a decision only where a
cumulative mass lies within float64 rounding of p · Z_k (as between the Triton and CUDA kernels), and
log-probs agree to float32 rounding of the kept mass. ``split_count`` picks the number of slices per row
from the batch, the vocabulary and the SM count.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import interpreter
from .layout import last_dim_contiguous

PIVOTS = 16  # keys tested per search pass: the bracket shrinks ~17× a pass, 8 passes for any float32 key
KEY_FLOOR = tl.constexpr(-(2**31))  # below every float32 key (key(-inf) = -2139095041): masked-off elements
KEY_CEIL = tl.constexpr(2**31 - 1)  # above every bracket end (key(+inf) + 1 = 2139095041)
UNIFORM_SCALE = tl.constexpr(2.0**-53)  # u = (2j + 1) · 2^-53 for a 52-bit j
# Tile sizes. The pivot compare makes a (ROWS, BLOCK_V, PIVOTS) tile: at 512 elements a chunk and 8 warps
# that is 32 compares per thread. Under TRITON_INTERPRET=1 every program and every operation costs
# Python overhead while numpy handles big tiles cheaply, hence big tiles and many rows a program.
# (Register arithmetic; to be tuned with the benchmark on an H100.) ptxas -v through Triton 3.8
# (bench/static_resources.py): 60-128 registers, 16-32 warps per SM; on sm_90 ptxas holds the 512-element
# tiles at 128 registers (2 programs per SM) and spills 8-52 bytes. 4 warps (168 registers, 4 bytes) or
# 256-element tiles (none on sm_90, 8-20 bytes on sm_80) only move the spill (ACCEPTED_SPILLS there).
GPU_TILE = 512  # ROWS · BLOCK_V on a GPU
GPU_NUM_WARPS = 8
INTERPRETER_TILE = 65536  # ROWS · BLOCK_V under the interpreter
MIN_BLOCK_V = 2  # smallest chunk, so V = 1 still gets a well-formed tile
# The split path (see the module docstring). Each search closes within 8 passes of 16 pivots: a bracket
# of w <= 2^32 keys is at most ceil((w - 1) / 16) wide after a pass, 2^32 -> 2^28 -> ... -> 2^4 -> 1.
SEARCH_STEPS = 8
# Every program reads all its row's partials at each step: 32 splits x 16 pivots x 16 bytes = 8 KB a
# program, L2-resident (128 splits would read 4 MB a step, 8x the 512 KB of a 128k float32 row). A split
# of >= 4096 tokens is >= 8 chunks of GPU_TILE, so the per-program work still outweighs that read.
MAX_SPLITS = 32
MIN_SPLIT_TOKENS = 4096


# ------------------------------------------------------------------------------------------ helpers
@triton.jit
def _ordered_key(z):
    """int32 key with the order of the float32 values (no NaN; -0.0 already made +0.0)."""
    bits = z.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _load_scaled(
    logits_ptr,  # (B, V) logits: row offsets are added to it
    row_offsets,  # (ROWS,) int64: row · stride_row
    cols,  # (BLOCK_V,) token indices of the chunk
    in_bounds,  # (ROWS, BLOCK_V) rows < B and cols < V
    temperature,  # (ROWS,) float32
    greedy,  # (ROWS,) T == 0
):
    """z = float32(x) / T (x itself for greedy rows), -0.0 made +0.0; 0 outside ``in_bounds``."""
    x = tl.load(logits_ptr + row_offsets[:, None] + cols[None, :], mask=in_bounds, other=0.0).to(tl.float32)
    divisor = tl.where(greedy, 1.0, temperature)
    z = tl.where(greedy[:, None], x, tl.math.div_rn(x, divisor[:, None]))
    return tl.where(z == 0.0, 0.0, z)


@triton.jit
def _pivots(
    lo,  # (ROWS,) int32 bracket floor: W(>= lo) reaches the target
    hi,  # (ROWS,) int32 bracket ceiling: W(>= hi) does not
    PIVOTS: tl.constexpr,  # keys per pass
):
    """(ROWS, PIVOTS) int32 keys spread over [lo + 1, hi - 1] (all of them when there are <= PIVOTS)."""
    step = tl.arange(0, PIVOTS).to(tl.int64)
    width = hi.to(tl.int64) - lo.to(tl.int64) - 1  # keys strictly inside the bracket
    return (lo.to(tl.int64)[:, None] + 1 + (width[:, None] * step[None, :]) // PIVOTS).to(tl.int32)


@triton.jit
def _snap(
    key,  # (ROWS, BLOCK_V) int32 keys of a chunk (KEY_FLOOR outside the row)
    pivots,  # (ROWS, PIVOTS) int32
    up,  # (ROWS, PIVOTS) int32 running min key >= pivot
    down,  # (ROWS, PIVOTS) int32 running max key < pivot
):
    """The chunk's (ROWS, BLOCK_V, PIVOTS) compare, and ``up`` / ``down`` updated with its keys."""
    above = key[:, :, None] >= pivots[:, None, :]
    up = tl.minimum(up, tl.min(tl.where(above, key[:, :, None], KEY_CEIL), 1))
    down = tl.maximum(down, tl.max(tl.where(above, KEY_FLOOR, key[:, :, None]), 1))
    return above, up, down


@triton.jit
def _narrow(
    lo,  # (ROWS,) int32 bracket floor, a key of the row
    hi,  # (ROWS,) int32 bracket ceiling
    reached,  # (ROWS, PIVOTS) W(>= pivot) >= target: true on a prefix of the pivots (W is monotone)
    up,  # (ROWS, PIVOTS) int32 smallest key >= pivot
    down,  # (ROWS, PIVOTS) int32 largest key < pivot among keys > lo (KEY_FLOOR if none)
):
    """The bracket after a pass, snapped to the row's keys: from the smallest key at or above the last
    pivot that reaches the target, to one past the largest key below the first pivot that does not.
    Once it holds a single key, that key is the threshold, and the row is left alone while other rows of
    the program search on: a bracket set without measuring (top-p off: [t_k, t_k + 1)) must not move
    when float rounding makes the mass above t_k equal Z_k."""
    new_lo = tl.maximum(lo, tl.max(tl.where(reached, up, KEY_FLOOR), 1))
    new_hi = tl.minimum(hi, tl.min(tl.where(reached, KEY_CEIL, tl.maximum(down, lo[:, None]) + 1), 1))
    searching = hi.to(tl.int64) - lo.to(tl.int64) > 1
    return tl.where(searching, new_lo, lo), tl.where(searching, new_hi, hi)


@triton.jit
def _gumbel(
    seed,  # (ROWS,) int64 Philox keys
    cols,  # (BLOCK_V,) int32 token indices
    ROWS: tl.constexpr,  # rows of the tile
):
    """(ROWS, BLOCK_V) float32 Gumbel noise of the stream documented at the top of this file."""
    index = tl.broadcast_to(cols[None, :].to(tl.int64), (ROWS, cols.shape[0]))
    keys = tl.broadcast_to(seed[:, None], (ROWS, cols.shape[0]))
    r0, r1, _, _ = tl.randint4x(keys, index)
    j = (r0.to(tl.uint64) << 20) | (r1 >> 12).to(tl.uint64)  # 52 bits
    u = (j * 2 + 1).to(tl.float64) * UNIFORM_SCALE  # exact, in (0, 1)
    exponential = -tl.log(u)
    return -tl.log(exponential.to(tl.float32))


# ------------------------------------------------------------------------------------------- passes
# One pass over the tokens [begin, end) of ROWS rows each: the single-row kernel runs them on whole rows,
# the split kernels on one slice of a row per program, so both paths share every line that touches logits.
# A pass takes what it reads as one tuple, ``span`` = (logits_ptr, row_offsets (ROWS,) int64, row_ok (ROWS,)
# rows < B, temperature (ROWS,) float32, greedy (ROWS,) T == 0, begin: the slice's first token, end: one past
# its last, <= V); Triton unpacks tuples at compile time, so this is the same code as passing each on its own.
@triton.jit
def _stats_pass(
    span,  # see above
    vocab,  # V: the index sentinel
    ROWS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """(max z, its first index, smallest key, NaN count, +inf count) of each row's slice."""
    logits_ptr, row_offsets, row_ok, temperature, greedy, begin, end = span
    chunk = tl.arange(0, BLOCK_V)
    z_max = tl.full((ROWS,), -float("inf"), tl.float32)
    arg_max = tl.zeros((ROWS,), tl.int32)
    key_min = tl.full((ROWS,), KEY_CEIL, tl.int32)
    n_nan = tl.zeros((ROWS,), tl.int32)
    n_posinf = tl.zeros((ROWS,), tl.int32)
    for start in range(begin, end, BLOCK_V):
        cols = start + chunk
        in_bounds = row_ok[:, None] & (cols < end)[None, :]
        z = _load_scaled(logits_ptr, row_offsets, cols, in_bounds, temperature, greedy)
        is_nan = z != z
        n_nan += tl.sum((is_nan & in_bounds).to(tl.int32), 1)
        n_posinf += tl.sum(((z == float("inf")) & in_bounds).to(tl.int32), 1)
        numbers = in_bounds & ~is_nan
        z_num = tl.where(numbers, z, -float("inf"))
        chunk_max = tl.max(z_num, 1)
        chunk_arg = tl.min(tl.where(numbers & (z_num == chunk_max[:, None]), cols[None, :], vocab), 1)
        arg_max = tl.where(chunk_max > z_max, chunk_arg, arg_max)  # strict: the first maximum wins
        z_max = tl.maximum(z_max, chunk_max)
        key_min = tl.minimum(key_min, tl.min(tl.where(numbers, _ordered_key(z), KEY_CEIL), 1))
    return z_max, arg_max, key_min, n_nan, n_posinf


@triton.jit
def _row_flags(z_max, n_nan, n_posinf, row_ok, greedy):
    """(valid, has_posinf, searched, key_max, z_shift) of the rows' statistics: searched rows need
    thresholds; z_shift is m for them and 0 elsewhere (no inf - inf)."""
    valid = row_ok & (n_nan == 0) & (z_max > -float("inf"))
    has_posinf = n_posinf > 0
    searched = valid & ~greedy & ~has_posinf
    return valid, has_posinf, searched, _ordered_key(z_max), tl.where(searched, z_max, 0.0)


@triton.jit
def _top_k_bracket(searched, key_min, key_max, top_k, vocab):
    """The top-k search's first bracket. Off (k = V): closed at the smallest key. Rows not searched get
    the empty bracket [0, 1)."""
    lo = tl.where(searched, key_min, 0)
    return lo, tl.where(searched & (top_k < vocab), key_max + 1, lo + 1)


@triton.jit
def _search_pass(
    span,  # see _stats_pass
    lo,  # (ROWS,) int32 bracket floor
    hi,  # (ROWS,) int32 bracket ceiling
    floor,  # (ROWS,) int32 smallest key measured: lo + 1 (keys <= lo reach no pivot), or t_k in top-p's first pass
    z_shift64,  # (ROWS,) float64 m (MASS)
    ROWS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    PIVOTS: tl.constexpr,
    MASS: tl.constexpr,  # weigh each token by its float64 exp(z - m) (top-p), else by 1 (top-k)
):
    """A search pass: (the weight at or above each pivot (ROWS, PIVOTS), the weight at or above ``floor``
    (ROWS,), up, down), weights in float64 (counts below 2^31 are exact); rows whose bracket is closed
    read nothing."""
    logits_ptr, row_offsets, row_ok, temperature, greedy, begin, end = span
    chunk = tl.arange(0, BLOCK_V)
    pivots = _pivots(lo, hi, PIVOTS)
    weights = tl.zeros((ROWS, PIVOTS), tl.float64)
    floor_weight = tl.zeros((ROWS,), tl.float64)
    up = tl.full((ROWS, PIVOTS), KEY_CEIL, tl.int32)
    down = tl.full((ROWS, PIVOTS), KEY_FLOOR, tl.int32)
    active = hi.to(tl.int64) - lo.to(tl.int64) > 1
    for start in range(begin, end, BLOCK_V):
        cols = start + chunk
        in_bounds = (row_ok & active)[:, None] & (cols < end)[None, :]
        z = _load_scaled(logits_ptr, row_offsets, cols, in_bounds, temperature, greedy)
        key = _ordered_key(z)
        key = tl.where(in_bounds & (key >= floor[:, None]), key, KEY_FLOOR)
        if tl.max(key) > KEY_FLOOR:
            above, up, down = _snap(key, pivots, up, down)  # (ROWS, BLOCK_V, PIVOTS)
            if MASS:
                e = tl.where(key > KEY_FLOOR, tl.exp(z.to(tl.float64) - z_shift64[:, None]), 0.0)
                floor_weight += tl.sum(e, 1)
                weights += tl.sum(tl.where(above, e[:, :, None], 0.0), 1)
            else:  # int32 within the chunk, then float64
                floor_weight += tl.sum((key > KEY_FLOOR).to(tl.int32), 1).to(tl.float64)
                weights += tl.sum(above.to(tl.int32), 1).to(tl.float64)
    return weights, floor_weight, up, down


@triton.jit
def _draw_pass(
    span,  # see _stats_pass
    vocab,
    rows,  # (ROWS,) row indices (for the mask)
    # (ROWS,) each: valid: no NaN and a finite or +inf maximum; has_posinf: draws among its +inf entries;
    # arg_max: the greedy rows' token (for the mask); threshold: int32 key max(t_k, t_p); min_p: float64;
    # z_shift: float32 m; seed: int64
    choice,  # (valid, has_posinf, arg_max, threshold, min_p, z_shift, seed)
    mask_ptr,  # (B, V) int8 out (WRITE_MASK)
    ROWS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    DRAW: tl.constexpr,
    RETURN_LOGPROBS: tl.constexpr,
    WRITE_MASK: tl.constexpr,
):
    """min-p, then Gumbel-max over the kept tokens of the slice: (best score, its first token (-1: none),
    the token's z - m, Σ_kept exp(z - m)); the kept set to ``mask_ptr``."""
    logits_ptr, row_offsets, row_ok, temperature, greedy, begin, end = span
    valid, has_posinf, arg_max, threshold, min_p, z_shift, seed = choice
    chunk = tl.arange(0, BLOCK_V)
    z_shift64 = z_shift.to(tl.float64)
    drawn = valid & ~greedy
    best = tl.full((ROWS,), -float("inf"), tl.float32)
    token = tl.full((ROWS,), -1, tl.int32)
    best_d = tl.zeros((ROWS,), tl.float32)  # log(prob / max prob) of the token
    kept_sum = tl.zeros((ROWS,), tl.float32)
    for start in range(begin, end, BLOCK_V):
        cols = start + chunk
        in_bounds = row_ok[:, None] & (cols < end)[None, :]
        z = _load_scaled(logits_ptr, row_offsets, cols, in_bounds, temperature, greedy)
        key = _ordered_key(z)
        candidate = tl.where(has_posinf[:, None], z == float("inf"), (key >= threshold[:, None]) & (z > -float("inf")))
        candidate = candidate & in_bounds & drawn[:, None]
        kept = candidate & False
        if tl.max(candidate.to(tl.int32)) > 0:
            ratio = tl.exp(tl.where(candidate, z.to(tl.float64) - z_shift64[:, None], 0.0))  # prob / max prob
            kept = candidate & (has_posinf[:, None] | (ratio >= min_p[:, None]))
            d = tl.where(has_posinf[:, None], 0.0, z - z_shift[:, None])
            if DRAW:
                score = tl.where(kept, d + _gumbel(seed, cols, ROWS), -float("inf"))
                chunk_best = tl.max(score, 1)
                chunk_arg = tl.min(tl.where(kept & (score == chunk_best[:, None]), cols[None, :], vocab), 1)
                chunk_d = tl.sum(tl.where(cols[None, :] == chunk_arg[:, None], d, 0.0), 1)
                better = chunk_best > best  # strict: the first maximum wins
                token = tl.where(better, chunk_arg, token)
                best_d = tl.where(better, chunk_d, best_d)
                best = tl.maximum(best, chunk_best)
            if RETURN_LOGPROBS:
                kept_sum += tl.sum(tl.where(kept, tl.exp(d), 0.0), 1)
        if WRITE_MASK:
            kept = kept | (greedy[:, None] & valid[:, None] & (cols[None, :] == arg_max[:, None]))
            mask_offsets = rows.to(tl.int64)[:, None] * vocab + cols[None, :]
            tl.store(mask_ptr + mask_offsets, kept.to(tl.int8), mask=in_bounds)
    return best, token, best_d, kept_sum


@triton.jit
def _store_draw(
    token_ptr,
    logprob_ptr,
    rows,
    row_ok,
    greedy,
    valid,
    arg_max,
    token,
    best_d,
    kept_sum,
    RETURN_LOGPROBS: tl.constexpr,
):
    """The rows' tokens (greedy: the first argmax; -1 for invalid rows) and log-probs (0 for greedy rows,
    NaN for invalid ones)."""
    token = tl.where(greedy, arg_max, token)
    token = tl.where(valid, token, -1)
    tl.store(token_ptr + rows, token.to(tl.int64), mask=row_ok)
    if RETURN_LOGPROBS:
        logprob = tl.where(greedy, 0.0, best_d - tl.log(tl.where(kept_sum > 0.0, kept_sum, 1.0)))
        logprob = tl.where(valid, logprob, float("nan"))
        tl.store(logprob_ptr + rows, logprob, mask=row_ok)


# ------------------------------------------------------------------------------- one row, one program
@triton.jit
def _sample_kernel(
    logits_ptr,  # (B, V) float16 / bfloat16 / float32, last dimension contiguous
    stride_row,  # elements between two rows of logits
    temperature_ptr,  # (B,) float32 >= 0; 0 = greedy
    top_k_ptr,  # (B,) int32 in [1, V]; V = off
    top_p_ptr,  # (B,) float64 in (0, 1]; 1 = off
    min_p_ptr,  # (B,) float64 in [0, 1]; 0 = off
    seed_ptr,  # (B,) int64 per-row Philox keys
    token_ptr,  # (B,) int64 out: the drawn token, -1 for rows with a NaN or no finite logit (DRAW)
    logprob_ptr,  # (B,) float32 out: log-prob of the token under the kept distribution (RETURN_LOGPROBS)
    mask_ptr,  # (B, V) int8 out, contiguous: 1 for kept tokens (WRITE_MASK)
    n_rows,  # B
    vocab,  # V
    ROWS: tl.constexpr,  # rows per program
    BLOCK_V: tl.constexpr,  # tokens per chunk
    PIVOTS: tl.constexpr,  # keys tested per search pass
    DRAW: tl.constexpr,  # draw the tokens
    RETURN_LOGPROBS: tl.constexpr,  # write logprob_ptr
    WRITE_MASK: tl.constexpr,  # write the kept set to mask_ptr (for tests)
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    row_offsets = rows.to(tl.int64) * stride_row
    temperature = tl.load(temperature_ptr + rows, mask=row_ok, other=1.0)
    greedy = temperature == 0.0
    top_k = tl.load(top_k_ptr + rows, mask=row_ok, other=1)
    top_p = tl.load(top_p_ptr + rows, mask=row_ok, other=1.0)

    span = (logits_ptr, row_offsets, row_ok, temperature, greedy, 0, vocab)  # whole rows

    z_max, arg_max, key_min, n_nan, n_posinf = _stats_pass(span, vocab, ROWS, BLOCK_V)
    valid, has_posinf, searched, key_max, z_shift = _row_flags(z_max, n_nan, n_posinf, row_ok, greedy)
    z_shift64 = z_shift.to(tl.float64)

    # Top-k: the largest key t with count(key >= t) >= k.
    lo, hi = _top_k_bracket(searched, key_min, key_max, top_k, vocab)
    while tl.max(hi.to(tl.int64) - lo.to(tl.int64), 0) > 1:
        counts, _, up, down = _search_pass(span, lo, hi, lo + 1, z_shift64, ROWS, BLOCK_V, PIVOTS, False)
        lo, hi = _narrow(lo, hi, counts >= top_k[:, None], up, down)
    key_k = lo

    # Top-p: the largest key t with F(t) >= p · F(t_k), F the float64 mass of the top-k set at or above t.
    hi = tl.where(searched & (top_p < 1.0), key_max + 1, key_k + 1)
    target = tl.full((ROWS,), -1.0, tl.float64)  # p · Z_k, measured in the first pass
    while tl.max(hi.to(tl.int64) - lo.to(tl.int64), 0) > 1:
        floor = tl.where(target < 0.0, key_k, lo + 1)  # the first pass also measures Z_k
        masses, mass_k, up, down = _search_pass(span, lo, hi, floor, z_shift64, ROWS, BLOCK_V, PIVOTS, True)
        target = tl.where(target < 0.0, top_p * mass_k, target)
        lo, hi = _narrow(lo, hi, masses >= target[:, None], up, down)

    # Last pass: min-p, then Gumbel-max over the kept set (the threshold is max(t_k, t_p): the top-p
    # search starts at t_k); the kept set's mass for the log-prob.
    min_p = tl.load(min_p_ptr + rows, mask=row_ok, other=0.0)
    seed = tl.load(seed_ptr + rows, mask=row_ok, other=0)
    choice = (valid, has_posinf, arg_max, lo, min_p, z_shift, seed)
    best, token, best_d, kept_sum = _draw_pass(
        span, vocab, rows, choice, mask_ptr, ROWS, BLOCK_V, DRAW, RETURN_LOGPROBS, WRITE_MASK
    )
    if DRAW:
        _store_draw(
            token_ptr, logprob_ptr, rows, row_ok, greedy, valid, arg_max, token, best_d, kept_sum, RETURN_LOGPROBS
        )


# ------------------------------------------------------------------------------ one row, many programs
# The split path's workspace, per row r and split s (parity q = step mod 2 double-buffers what one launch
# reads while it writes the next):
#   stats_z (B, S) float32 max z; stats_i (B, S, 4) int32 first argmax, smallest key, NaN and +inf counts
#   weights (2, B, S, PIVOTS + 1) float64: counts or masses at each pivot, and the mass at or above the floor
#   bounds (2, B, S, 2 · PIVOTS) int32: up, then down
#   bracket (2, B, 2) int32 lo, hi; target (2, B) float64 p · Z_k (-1: not measured yet)
#   draw_f (B, S, 3) float32 best score, its z - m, kept mass; draw_i (B, S) int32 its token
NO_PASS = tl.constexpr(0)  # what a launch's previous step measured: nothing (the first step),
COUNT_PASS = tl.constexpr(1)  # top-k counts,
MASS_PASS = tl.constexpr(2)  # top-p masses


@triton.jit
def _split_coordinates(logits_ptr, n_rows, vocab, split_len, stride_row, temperature_ptr, ROWS: tl.constexpr):
    """(rows, row_ok, greedy, split, the span of _stats_pass) of this program's slice."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    split = tl.program_id(1)
    begin = split * split_len
    end = tl.minimum(begin + split_len, vocab)
    temperature = tl.load(temperature_ptr + rows, mask=row_ok, other=1.0)
    row_offsets = rows.to(tl.int64) * stride_row
    greedy = temperature == 0.0
    return rows, row_ok, greedy, split, (logits_ptr, row_offsets, row_ok, temperature, greedy, begin, end)


@triton.jit
def _row_stats(stats_z_ptr, stats_i_ptr, rows, row_ok, vocab, SPLITS: tl.constexpr):
    """The rows' (max z, first argmax, smallest key, NaN count, +inf count) from their splits' statistics.
    The splits hold ascending slices, so the lowest index among the splits holding the max is the first."""
    slot = rows[:, None] * SPLITS + tl.arange(0, SPLITS)[None, :]  # (ROWS, SPLITS)
    ok = row_ok[:, None]
    z = tl.load(stats_z_ptr + slot, mask=ok, other=-float("inf"))
    z_max = tl.max(z, 1)
    arg = tl.load(stats_i_ptr + slot * 4, mask=ok, other=0)
    arg_max = tl.min(tl.where(z == z_max[:, None], arg, vocab), 1)
    key_min = tl.min(tl.load(stats_i_ptr + slot * 4 + 1, mask=ok, other=KEY_CEIL), 1)
    n_nan = tl.sum(tl.load(stats_i_ptr + slot * 4 + 2, mask=ok, other=0), 1)
    n_posinf = tl.sum(tl.load(stats_i_ptr + slot * 4 + 3, mask=ok, other=0), 1)
    return z_max, arg_max, key_min, n_nan, n_posinf


@triton.jit
def _advance(
    workspace,  # (weights_ptr, bounds_ptr, bracket_ptr, target_ptr): see _split_search_kernel
    rows,
    row_ok,
    n_rows,
    parity,  # the previous step's buffers
    top_k,  # (ROWS,) int32
    top_p,  # (ROWS,) float64
    SPLITS: tl.constexpr,
    PIVOTS: tl.constexpr,
    PREVIOUS: tl.constexpr,  # COUNT_PASS or MASS_PASS
):
    """(lo, hi, target): the previous step's bracket narrowed by its splits' partials, summed in split
    order (every program of a launch computes the same bracket)."""
    weights_ptr, bounds_ptr, bracket_ptr, target_ptr = workspace
    state = parity * n_rows + rows  # (ROWS,)
    lo = tl.load(bracket_ptr + state * 2, mask=row_ok, other=0)
    hi = tl.load(bracket_ptr + state * 2 + 1, mask=row_ok, other=1)
    target = tl.load(target_ptr + state, mask=row_ok, other=-1.0)
    part = state[:, None] * SPLITS + tl.arange(0, SPLITS)[None, :]  # (ROWS, SPLITS)
    pivot = tl.arange(0, PIVOTS)[None, None, :]
    ok = row_ok[:, None, None]
    weights = tl.sum(tl.load(weights_ptr + part[:, :, None] * (PIVOTS + 1) + pivot, mask=ok, other=0.0), 1)
    bounds = bounds_ptr + part[:, :, None] * (2 * PIVOTS) + pivot
    up = tl.min(tl.load(bounds, mask=ok, other=KEY_CEIL), 1)
    down = tl.max(tl.load(bounds + PIVOTS, mask=ok, other=KEY_FLOOR), 1)
    if PREVIOUS == COUNT_PASS:
        reached = weights >= top_k[:, None].to(tl.float64)  # counts < 2^31: exact in float64
    else:
        floor_mass = tl.sum(tl.load(weights_ptr + part * (PIVOTS + 1) + PIVOTS, mask=row_ok[:, None], other=0.0), 1)
        target = tl.where(target < 0.0, top_p * floor_mass, target)
        reached = weights >= target[:, None]
    lo, hi = _narrow(lo, hi, reached, up, down)
    return lo, hi, target


@triton.jit
def _split_stats_kernel(
    logits_ptr,
    stride_row,
    temperature_ptr,
    stats_z_ptr,  # (B, SPLITS) float32 out
    stats_i_ptr,  # (B, SPLITS, 4) int32 out
    n_rows,
    vocab,
    split_len,  # tokens per split, a multiple of BLOCK_V
    SPLITS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows, row_ok, greedy, split, span = _split_coordinates(
        logits_ptr, n_rows, vocab, split_len, stride_row, temperature_ptr, ROWS
    )
    z_max, arg_max, key_min, n_nan, n_posinf = _stats_pass(span, vocab, ROWS, BLOCK_V)
    slot = rows * SPLITS + split
    tl.store(stats_z_ptr + slot, z_max, mask=row_ok)
    tl.store(stats_i_ptr + slot * 4, arg_max, mask=row_ok)
    tl.store(stats_i_ptr + slot * 4 + 1, key_min, mask=row_ok)
    tl.store(stats_i_ptr + slot * 4 + 2, n_nan, mask=row_ok)
    tl.store(stats_i_ptr + slot * 4 + 3, n_posinf, mask=row_ok)


@triton.jit
def _split_search_kernel(
    logits_ptr,
    stride_row,
    temperature_ptr,
    top_k_ptr,
    top_p_ptr,
    stats_z_ptr,
    stats_i_ptr,
    weights_ptr,  # (2, B, SPLITS, PIVOTS + 1) float64: read at parity 1 - step % 2, written at step % 2
    bounds_ptr,  # (2, B, SPLITS, 2 · PIVOTS) int32: likewise
    bracket_ptr,  # (2, B, 2) int32: likewise, written by split 0
    target_ptr,  # (2, B) float64: likewise
    n_rows,
    vocab,
    split_len,
    step,  # 0 .. 2 · SEARCH_STEPS - 1
    SPLITS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    PIVOTS: tl.constexpr,
    PREVIOUS: tl.constexpr,  # what the previous step measured (NO_PASS at step 0)
    MEASURE: tl.constexpr,  # COUNT_PASS (top-k) or MASS_PASS (top-p)
):
    """One search step: narrow the bracket with the previous step's partials, then measure this split's
    slice at the new pivots. The first top-p step (PREVIOUS = COUNT_PASS, MEASURE = MASS_PASS) closes
    top-k (t_k = lo) and opens the top-p bracket at t_k, measuring Z_k with it."""
    rows, row_ok, greedy, split, span = _split_coordinates(
        logits_ptr, n_rows, vocab, split_len, stride_row, temperature_ptr, ROWS
    )
    top_k = tl.load(top_k_ptr + rows, mask=row_ok, other=1)
    top_p = tl.load(top_p_ptr + rows, mask=row_ok, other=1.0)
    z_max, arg_max, key_min, n_nan, n_posinf = _row_stats(stats_z_ptr, stats_i_ptr, rows, row_ok, vocab, SPLITS)
    valid, has_posinf, searched, key_max, z_shift = _row_flags(z_max, n_nan, n_posinf, row_ok, greedy)
    if PREVIOUS == NO_PASS:
        lo, hi = _top_k_bracket(searched, key_min, key_max, top_k, vocab)
        target = tl.full((ROWS,), -1.0, tl.float64)
    else:
        workspace = (weights_ptr, bounds_ptr, bracket_ptr, target_ptr)
        lo, hi, target = _advance(workspace, rows, row_ok, n_rows, 1 - step % 2, top_k, top_p, SPLITS, PIVOTS, PREVIOUS)
    part = (step % 2 * n_rows + rows) * SPLITS + split  # (ROWS,)
    if MEASURE == MASS_PASS:
        if PREVIOUS == COUNT_PASS:  # top-k is done: t_k = lo
            hi = tl.where(searched & (top_p < 1.0), key_max + 1, lo + 1)
            target = tl.full((ROWS,), -1.0, tl.float64)
        floor = tl.where(target < 0.0, lo, lo + 1)  # the first top-p pass also measures Z_k = F(t_k)
    else:
        floor = lo + 1
    weights, floor_weight, up, down = _search_pass(
        span, lo, hi, floor, z_shift.to(tl.float64), ROWS, BLOCK_V, PIVOTS, MEASURE == MASS_PASS
    )
    pivot = tl.arange(0, PIVOTS)[None, :]
    ok = row_ok[:, None]
    tl.store(weights_ptr + part[:, None] * (PIVOTS + 1) + pivot, weights, mask=ok)
    tl.store(weights_ptr + part * (PIVOTS + 1) + PIVOTS, floor_weight, mask=row_ok)
    tl.store(bounds_ptr + part[:, None] * (2 * PIVOTS) + pivot, up, mask=ok)
    tl.store(bounds_ptr + part[:, None] * (2 * PIVOTS) + PIVOTS + pivot, down, mask=ok)
    state = step % 2 * n_rows + rows
    first = row_ok & (split == 0)
    tl.store(bracket_ptr + state * 2, lo, mask=first)
    tl.store(bracket_ptr + state * 2 + 1, hi, mask=first)
    tl.store(target_ptr + state, target, mask=first)


@triton.jit
def _split_draw_kernel(
    logits_ptr,
    stride_row,
    temperature_ptr,
    top_k_ptr,
    top_p_ptr,
    min_p_ptr,
    seed_ptr,
    stats_z_ptr,
    stats_i_ptr,
    weights_ptr,
    bounds_ptr,
    bracket_ptr,
    target_ptr,
    draw_f_ptr,  # (B, SPLITS, 3) float32 out: best score, its z - m, kept mass
    draw_i_ptr,  # (B, SPLITS) int32 out: the best score's token, -1 if none
    mask_ptr,  # (B, V) int8 out (WRITE_MASK)
    n_rows,
    vocab,
    split_len,
    parity,  # the last search step's buffers
    SPLITS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    PIVOTS: tl.constexpr,
    DRAW: tl.constexpr,
    RETURN_LOGPROBS: tl.constexpr,
    WRITE_MASK: tl.constexpr,
):
    """The threshold from the last top-p step, then this split's draw (and kept set)."""
    rows, row_ok, greedy, split, span = _split_coordinates(
        logits_ptr, n_rows, vocab, split_len, stride_row, temperature_ptr, ROWS
    )
    top_k = tl.load(top_k_ptr + rows, mask=row_ok, other=1)
    top_p = tl.load(top_p_ptr + rows, mask=row_ok, other=1.0)
    min_p = tl.load(min_p_ptr + rows, mask=row_ok, other=0.0)
    seed = tl.load(seed_ptr + rows, mask=row_ok, other=0)
    z_max, arg_max, key_min, n_nan, n_posinf = _row_stats(stats_z_ptr, stats_i_ptr, rows, row_ok, vocab, SPLITS)
    valid, has_posinf, searched, key_max, z_shift = _row_flags(z_max, n_nan, n_posinf, row_ok, greedy)
    workspace = (weights_ptr, bounds_ptr, bracket_ptr, target_ptr)
    threshold, _, _ = _advance(workspace, rows, row_ok, n_rows, parity, top_k, top_p, SPLITS, PIVOTS, MASS_PASS)
    choice = (valid, has_posinf, arg_max, threshold, min_p, z_shift, seed)
    best, token, best_d, kept_sum = _draw_pass(
        span, vocab, rows, choice, mask_ptr, ROWS, BLOCK_V, DRAW, RETURN_LOGPROBS, WRITE_MASK
    )
    slot = rows * SPLITS + split
    tl.store(draw_f_ptr + slot * 3, best, mask=row_ok)
    tl.store(draw_f_ptr + slot * 3 + 1, best_d, mask=row_ok)
    tl.store(draw_f_ptr + slot * 3 + 2, kept_sum, mask=row_ok)
    tl.store(draw_i_ptr + slot, token, mask=row_ok)


@triton.jit
def _split_merge_kernel(
    temperature_ptr,
    stats_z_ptr,
    stats_i_ptr,
    draw_f_ptr,
    draw_i_ptr,
    token_ptr,  # (B,) int64 out
    logprob_ptr,  # (B,) float32 out (RETURN_LOGPROBS)
    n_rows,
    vocab,
    SPLITS: tl.constexpr,
    ROWS: tl.constexpr,
    RETURN_LOGPROBS: tl.constexpr,
):
    """Each row's token: the best score over its splits, the lowest token on equal scores (the splits
    hold ascending slices, so this is the single-program draw's first maximum)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    greedy = tl.load(temperature_ptr + rows, mask=row_ok, other=1.0) == 0.0
    z_max, arg_max, key_min, n_nan, n_posinf = _row_stats(stats_z_ptr, stats_i_ptr, rows, row_ok, vocab, SPLITS)
    valid, has_posinf, searched, key_max, z_shift = _row_flags(z_max, n_nan, n_posinf, row_ok, greedy)
    slot = rows[:, None] * SPLITS + tl.arange(0, SPLITS)[None, :]  # (ROWS, SPLITS)
    ok = row_ok[:, None]
    scores = tl.load(draw_f_ptr + slot * 3, mask=ok, other=-float("inf"))
    tokens = tl.load(draw_i_ptr + slot, mask=ok, other=-1)
    best = tl.max(scores, 1)
    winner = (scores == best[:, None]) & (tokens >= 0)
    token = tl.min(tl.where(winner, tokens, vocab), 1)
    winner = winner & (tokens == token[:, None])
    token = tl.where(token < vocab, token, -1)
    best_d = tl.sum(tl.where(winner, tl.load(draw_f_ptr + slot * 3 + 1, mask=ok, other=0.0), 0.0), 1)
    kept_sum = tl.sum(tl.load(draw_f_ptr + slot * 3 + 2, mask=ok, other=0.0), 1)
    _store_draw(token_ptr, logprob_ptr, rows, row_ok, greedy, valid, arg_max, token, best_d, kept_sum, RETURN_LOGPROBS)


# ----------------------------------------------------------------------------------------- launchers
def _tiles(batch: int, vocab: int, device: torch.device) -> tuple[int, int, int]:
    """(ROWS, BLOCK_V, num_warps) for a (batch, vocab) problem."""
    interpreted = interpreter.interpreted(device)
    tile = INTERPRETER_TILE if interpreted else GPU_TILE
    block_v = max(MIN_BLOCK_V, min(triton.next_power_of_2(vocab), tile))
    rows = max(1, min(tile // block_v, triton.next_power_of_2(max(batch, 1))))
    return rows, block_v, (1 if interpreted else GPU_NUM_WARPS)


def split_count(batch: int, vocab: int, sm_count: int) -> int:
    """Programs per row on a GPU with ``sm_count`` SMs: the largest power of two <= min(MAX_SPLITS,
    sm_count // batch, vocab // MIN_SPLIT_TOKENS), and 1 (the single-program kernel) below 2."""
    most = min(MAX_SPLITS, sm_count // max(batch, 1), vocab // MIN_SPLIT_TOKENS)
    return 1 if most < 2 else 1 << (most.bit_length() - 1)


def _check_splits(splits: int) -> None:
    if not isinstance(splits, int) or isinstance(splits, bool) or splits < 1 or splits & (splits - 1):
        raise ValueError(f"splits must be a power of two >= 1 (or None: chosen per device), got {splits!r}")


def _launch(logits, temperature, top_k, top_p, min_p, seeds, splits, *, return_logprobs=False, write_mask=False):
    """(tokens, logprobs, mask) of sample(), or with ``write_mask`` the kept set of filter_mask() instead of a draw."""
    draw = not write_mask
    logits = last_dim_contiguous(logits)
    batch, vocab = logits.shape
    device = logits.device
    tokens = torch.empty(batch if draw else 0, dtype=torch.int64, device=device)
    logprobs = torch.empty(batch if return_logprobs else 0, dtype=torch.float32, device=device)
    mask = torch.empty((batch, vocab) if write_mask else (0,), dtype=torch.int8, device=device)
    if batch == 0:
        return tokens, logprobs, mask.bool()
    if splits is None:
        # The interpreter's cost is per program and per operation: one program a row is its fastest.
        interpreted = interpreter.interpreted(device)
        splits = (
            1
            if interpreted
            else split_count(batch, vocab, torch.cuda.get_device_properties(device).multi_processor_count)
        )
    _check_splits(splits)
    rows = (
        logits,
        temperature.to(torch.float32).contiguous(),
        top_k.clamp(1, vocab).to(torch.int32).contiguous(),
        top_p.to(torch.float64).contiguous(),
        min_p.to(torch.float64).contiguous(),
        seeds.to(torch.int64).contiguous(),
    )
    # Outputs not asked for are never written: any tensor will do in their place.
    outputs = (tokens if draw else logprobs, logprobs if return_logprobs else rows[1], mask if write_mask else rows[1])
    flags = {"DRAW": draw, "RETURN_LOGPROBS": return_logprobs, "WRITE_MASK": write_mask}
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        if splits == 1:
            rows_per_program, block_v, num_warps = _tiles(batch, vocab, device)
            _sample_kernel[(triton.cdiv(batch, rows_per_program),)](
                logits,
                logits.stride(0),
                *rows[1:],
                *outputs,
                batch,
                vocab,
                ROWS=rows_per_program,
                BLOCK_V=block_v,
                PIVOTS=PIVOTS,
                **flags,
                num_warps=num_warps,
            )
        else:
            _launch_split(rows, outputs, splits, flags)
    return tokens, logprobs, mask.bool()


def _launch_split(rows, outputs, splits: int, flags: dict) -> None:
    """The split path: one launch for the statistics, SEARCH_STEPS for each search, one for the draw and
    one to merge; a fixed sequence with no host synchronization (steps whose brackets have closed read
    nothing), so it can be captured in a CUDA graph."""
    logits, temperature, top_k, top_p, min_p, seeds = rows
    token_out, logprob_out, mask_out = outputs
    batch, vocab = logits.shape
    rows_per_program, block_v, num_warps = _tiles(batch, triton.cdiv(vocab, splits), logits.device)
    split_len = triton.cdiv(triton.cdiv(vocab, splits), block_v) * block_v
    grid = (triton.cdiv(batch, rows_per_program), splits)

    def workspace(dtype, *shape):
        return torch.empty(shape, dtype=dtype, device=logits.device)

    stats = (workspace(torch.float32, batch, splits), workspace(torch.int32, batch, splits, 4))
    search = (
        workspace(torch.float64, 2, batch, splits, PIVOTS + 1),
        workspace(torch.int32, 2, batch, splits, 2 * PIVOTS),
        workspace(torch.int32, 2, batch, 2),
        workspace(torch.float64, 2, batch),
    )
    draws = (workspace(torch.float32, batch, splits, 3), workspace(torch.int32, batch, splits))
    tiles = {"SPLITS": splits, "ROWS": rows_per_program, "BLOCK_V": block_v, "num_warps": num_warps}
    row = (logits, logits.stride(0), temperature)
    _split_stats_kernel[grid](*row, *stats, batch, vocab, split_len, **tiles)
    previous = NO_PASS.value  # constexpr globals for the kernels, ints for the launch
    for step in range(2 * SEARCH_STEPS):
        measure = (COUNT_PASS if step < SEARCH_STEPS else MASS_PASS).value
        _split_search_kernel[grid](
            *row,
            top_k,
            top_p,
            *stats,
            *search,
            batch,
            vocab,
            split_len,
            step,
            PIVOTS=PIVOTS,
            PREVIOUS=previous,
            MEASURE=measure,
            **tiles,
        )
        previous = measure
    _split_draw_kernel[grid](
        *row,
        top_k,
        top_p,
        min_p,
        seeds,
        *stats,
        *search,
        *draws,
        mask_out,
        batch,
        vocab,
        split_len,
        (2 * SEARCH_STEPS - 1) % 2,
        PIVOTS=PIVOTS,
        **flags,
        **tiles,
    )
    if flags["DRAW"]:
        _split_merge_kernel[(grid[0],)](
            temperature,
            *stats,
            *draws,
            token_out,
            logprob_out,
            batch,
            vocab,
            SPLITS=splits,
            ROWS=rows_per_program,
            RETURN_LOGPROBS=flags["RETURN_LOGPROBS"],
            num_warps=1,
        )


def sample(
    logits: Tensor,  # (B, V) float16 / bfloat16 / float32
    temperature: Tensor,  # (B,) float32, 0 = greedy
    top_k: Tensor,  # (B,) integer, >= 1; >= V = off
    top_p: Tensor,  # (B,) float64 in (0, 1]; 1 = off
    min_p: Tensor,  # (B,) float64 in [0, 1]; 0 = off
    seeds: Tensor,  # (B,) int64
    return_logprobs: bool,
    splits: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Draws one token per row; returns (tokens int64 (B,), logprobs float32 (B,), or (0,) when not asked).
    ``splits``: programs per row, a power of two (None: ``split_count`` for the device); every value
    draws the same tokens."""
    tokens, logprobs, _ = _launch(
        logits, temperature, top_k, top_p, min_p, seeds, splits, return_logprobs=return_logprobs
    )
    return tokens, logprobs


def filter_mask(
    logits: Tensor,  # (B, V) float16 / bfloat16 / float32
    temperature: Tensor,  # (B,) float32, 0 = greedy
    top_k: Tensor,  # (B,) integer, >= 1; >= V = off
    top_p: Tensor,  # (B,) float64 in (0, 1]; 1 = off
    min_p: Tensor,  # (B,) float64 in [0, 1]; 0 = off
    splits: int | None = None,
) -> Tensor:
    """The kernel's kept set, bool (B, V): what ``reference.filter_logits(...) > -inf`` must equal."""
    seeds = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    _, _, mask = _launch(logits, temperature, top_k, top_p, min_p, seeds, splits, write_mask=True)
    return mask
