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

Selection without sorting. Floats are compared through their ordered integer key (the float32 bits,
with the magnitude bits flipped for negatives, so int32 order = float order; -0.0 is made +0.0 first):
every threshold is one of the row's own values, so the kept set is decided by exact integer comparisons
and ties are kept by construction. Each search keeps a bracket [lo, hi) of keys with W(>= lo) >= target
> W(>= hi), lo a key of the row (it starts at the row's smallest key, or at t_k for top-p; hi at
key(m) + 1). A pass over the row measures, at PIVOTS keys spread evenly over (lo, hi), the weight W at
or above each pivot, the smallest key at or above it and the largest key below it (one
(ROWS, BLOCK_V, PIVOTS) compare per chunk). The bracket then becomes the bucket between the last pivot
that reaches the target and the first that does not, snapped to the keys that actually occur in it: at
least PIVOTS times narrower, and once it holds a single key, that key is the threshold. Any float32
bracket closes within ceil(32 / log2(PIVOTS)) = 8 passes; with the snapping, random float32 or bfloat16
logits at V = 32000 or 128256 take 4-5 passes for top-k = 50, 4-6 for top-p = 0.9 alone and 2 more for
top-p after top-k (a simulation of the same steps). The top-k counts are int32, exact; the top-p masses
are float64 sums of float64 exponentials, as in the reference, so the two agree except when a
cumulative mass lies within float64 rounding (~1e-16 relative) of p · Z_k. Chunks holding no key above
the bracket's floor skip the compare. Passes over the logits: one for m, argmax, NaN/inf counts and the
smallest key; the top-k passes (only when k < V); the top-p passes (only when p < 1); one to draw.
Plain temperature sampling reads the row twice.

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

Split-V (not built): at B = 1 one program on one SM streams the whole row per pass; for V = 128k and
~10 passes that is of the order of 100 µs, above the 50 µs target. Every pass is a reduction over the
row followed by a tiny decision on a few per-row values (bracket, best score), so a split-V path maps
onto it directly: a (B, SPLITS) grid per pass writing partial counts / masses / best scores per split,
and the decision step run at the start of the next launch.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import interpreter

PIVOTS = 16  # keys tested per search pass: the bracket shrinks ~17× a pass, 8 passes for any float32 key
KEY_FLOOR = tl.constexpr(-(2**31))  # below every float32 key (key(-inf) = -2139095041): masked-off elements
KEY_CEIL = tl.constexpr(2**31 - 1)  # above every bracket end (key(+inf) + 1 = 2139095041)
UNIFORM_SCALE = tl.constexpr(2.0**-53)  # u = (2j + 1) · 2^-53 for a 52-bit j
# Tile sizes. The pivot compare makes a (ROWS, BLOCK_V, PIVOTS) tile: at 512 elements a chunk and 8 warps
# that is 32 compares per thread. Under TRITON_INTERPRET=1 every program and every operation costs
# Python overhead while numpy handles big tiles cheaply, hence big tiles and many rows a program.
# (Register arithmetic; to be tuned with the benchmark on an H100.)
GPU_TILE = 512  # ROWS · BLOCK_V on a GPU
GPU_NUM_WARPS = 8
INTERPRETER_TILE = 65536  # ROWS · BLOCK_V under the interpreter
MIN_BLOCK_V = 2  # smallest chunk, so V = 1 still gets a well-formed tile


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


# ------------------------------------------------------------------------------------------- kernel
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
    min_p = tl.load(min_p_ptr + rows, mask=row_ok, other=0.0)
    chunk = tl.arange(0, BLOCK_V)

    # Pass 1: max and first argmax of z, NaN and +inf counts, smallest key.
    z_max = tl.full((ROWS,), -float("inf"), tl.float32)
    arg_max = tl.zeros((ROWS,), tl.int32)
    key_min = tl.full((ROWS,), KEY_CEIL, tl.int32)
    n_nan = tl.zeros((ROWS,), tl.int32)
    n_posinf = tl.zeros((ROWS,), tl.int32)
    for start in range(0, vocab, BLOCK_V):
        cols = start + chunk
        in_bounds = row_ok[:, None] & (cols < vocab)[None, :]
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
    valid = row_ok & (n_nan == 0) & (z_max > -float("inf"))
    has_posinf = n_posinf > 0
    searched = valid & ~greedy & ~has_posinf  # rows whose kept set needs thresholds
    key_max = _ordered_key(z_max)
    z_shift = tl.where(searched, z_max, 0.0)  # m for the rows that use it; no inf - inf elsewhere
    z_shift64 = z_shift.to(tl.float64)
    seed = tl.load(seed_ptr + rows, mask=row_ok, other=0)

    # Top-k: the largest key t with count(key >= t) >= k. Off (k = V): the smallest key. Rows not
    # searched get the empty bracket [0, 1).
    lo = tl.where(searched, key_min, 0)
    hi = tl.where(searched & (top_k < vocab), key_max + 1, lo + 1)
    while tl.max(hi.to(tl.int64) - lo.to(tl.int64), 0) > 1:
        pivots = _pivots(lo, hi, PIVOTS)
        counts = tl.zeros((ROWS, PIVOTS), tl.int32)
        up = tl.full((ROWS, PIVOTS), KEY_CEIL, tl.int32)
        down = tl.full((ROWS, PIVOTS), KEY_FLOOR, tl.int32)
        active = hi.to(tl.int64) - lo.to(tl.int64) > 1
        for start in range(0, vocab, BLOCK_V):
            cols = start + chunk
            in_bounds = (row_ok & active)[:, None] & (cols < vocab)[None, :]
            z = _load_scaled(logits_ptr, row_offsets, cols, in_bounds, temperature, greedy)
            key = _ordered_key(z)
            key = tl.where(in_bounds & (key > lo[:, None]), key, KEY_FLOOR)  # keys <= lo reach no pivot
            if tl.max(key) > KEY_FLOOR:
                above, up, down = _snap(key, pivots, up, down)  # (ROWS, BLOCK_V, PIVOTS)
                counts += tl.sum(above.to(tl.int32), 1)
        lo, hi = _narrow(lo, hi, counts >= top_k[:, None], up, down)
    key_k = lo

    # Top-p: the largest key t with F(t) >= p · F(t_k), F the float64 mass of the top-k set at or above t.
    hi = tl.where(searched & (top_p < 1.0), key_max + 1, key_k + 1)
    target = tl.full((ROWS,), -1.0, tl.float64)  # p · Z_k, measured in the first pass
    while tl.max(hi.to(tl.int64) - lo.to(tl.int64), 0) > 1:
        pivots = _pivots(lo, hi, PIVOTS)
        masses = tl.zeros((ROWS, PIVOTS), tl.float64)
        mass_k = tl.zeros((ROWS,), tl.float64)  # F(t_k) = Z_k (used from the first pass only)
        up = tl.full((ROWS, PIVOTS), KEY_CEIL, tl.int32)
        down = tl.full((ROWS, PIVOTS), KEY_FLOOR, tl.int32)
        floor = tl.where(target < 0.0, key_k, lo + 1)  # the first pass also measures Z_k
        active = hi.to(tl.int64) - lo.to(tl.int64) > 1
        for start in range(0, vocab, BLOCK_V):
            cols = start + chunk
            in_bounds = (row_ok & active)[:, None] & (cols < vocab)[None, :]
            z = _load_scaled(logits_ptr, row_offsets, cols, in_bounds, temperature, greedy)
            key = _ordered_key(z)
            key = tl.where(in_bounds & (key >= floor[:, None]), key, KEY_FLOOR)
            if tl.max(key) > KEY_FLOOR:
                e = tl.where(key > KEY_FLOOR, tl.exp(z.to(tl.float64) - z_shift64[:, None]), 0.0)
                mass_k += tl.sum(e, 1)
                above, up, down = _snap(key, pivots, up, down)  # (ROWS, BLOCK_V, PIVOTS)
                masses += tl.sum(tl.where(above, e[:, :, None], 0.0), 1)
        target = tl.where(target < 0.0, top_p * mass_k, target)
        lo, hi = _narrow(lo, hi, masses >= target[:, None], up, down)
    threshold = lo  # max(t_k, t_p): the top-p search starts at t_k

    # Last pass: min-p, then Gumbel-max over the kept set; the kept set's mass for the log-prob.
    drawn = valid & ~greedy
    best = tl.full((ROWS,), -float("inf"), tl.float32)
    token = tl.full((ROWS,), -1, tl.int32)
    best_d = tl.zeros((ROWS,), tl.float32)  # log(prob / max prob) of the token
    kept_sum = tl.zeros((ROWS,), tl.float32)  # Σ_kept exp(z - m)
    for start in range(0, vocab, BLOCK_V):
        cols = start + chunk
        in_bounds = row_ok[:, None] & (cols < vocab)[None, :]
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

    if DRAW:
        token = tl.where(greedy, arg_max, token)
        token = tl.where(valid, token, -1)
        tl.store(token_ptr + rows, token.to(tl.int64), mask=row_ok)
        if RETURN_LOGPROBS:
            logprob = tl.where(greedy, 0.0, best_d - tl.log(tl.where(kept_sum > 0.0, kept_sum, 1.0)))
            logprob = tl.where(valid, logprob, float("nan"))
            tl.store(logprob_ptr + rows, logprob, mask=row_ok)


# ----------------------------------------------------------------------------------------- launchers
def _tiles(batch: int, vocab: int, device: torch.device) -> tuple[int, int, int]:
    """(ROWS, BLOCK_V, num_warps) for a (batch, vocab) problem."""
    interpreted = interpreter.interpreted(device)
    tile = INTERPRETER_TILE if interpreted else GPU_TILE
    block_v = max(MIN_BLOCK_V, min(triton.next_power_of_2(vocab), tile))
    rows = max(1, min(tile // block_v, triton.next_power_of_2(max(batch, 1))))
    return rows, block_v, (1 if interpreted else GPU_NUM_WARPS)


def _launch(logits, temperature, top_k, top_p, min_p, seeds, *, draw, return_logprobs, write_mask):
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    batch, vocab = logits.shape
    device = logits.device
    tokens = torch.empty(batch if draw else 0, dtype=torch.int64, device=device)
    logprobs = torch.empty(batch if return_logprobs else 0, dtype=torch.float32, device=device)
    mask = torch.empty((batch, vocab) if write_mask else (0,), dtype=torch.int8, device=device)
    if batch == 0:
        return tokens, logprobs, mask.bool()
    temperature = temperature.to(torch.float32).contiguous()
    top_k = top_k.clamp(1, vocab).to(torch.int32).contiguous()
    rows, block_v, num_warps = _tiles(batch, vocab, device)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _sample_kernel[(triton.cdiv(batch, rows),)](
            logits,
            logits.stride(0),
            temperature,
            top_k,
            top_p.to(torch.float64).contiguous(),
            min_p.to(torch.float64).contiguous(),
            seeds.to(torch.int64).contiguous(),
            tokens if draw else logprobs,  # outputs not asked for are never written: any tensor will do
            logprobs if return_logprobs else temperature,
            mask if write_mask else temperature,
            batch,
            vocab,
            ROWS=rows,
            BLOCK_V=block_v,
            PIVOTS=PIVOTS,
            DRAW=draw,
            RETURN_LOGPROBS=return_logprobs,
            WRITE_MASK=write_mask,
            num_warps=num_warps,
        )
    return tokens, logprobs, mask.bool()


def sample(
    logits: Tensor,  # (B, V) float16 / bfloat16 / float32
    temperature: Tensor,  # (B,) float32, 0 = greedy
    top_k: Tensor,  # (B,) integer, >= 1; >= V = off
    top_p: Tensor,  # (B,) float64 in (0, 1]; 1 = off
    min_p: Tensor,  # (B,) float64 in [0, 1]; 0 = off
    seeds: Tensor,  # (B,) int64
    return_logprobs: bool,
) -> tuple[Tensor, Tensor]:
    """Draws one token per row; returns (tokens int64 (B,), logprobs float32 (B,), or (0,) when not asked)."""
    tokens, logprobs, _ = _launch(
        logits,
        temperature,
        top_k,
        top_p,
        min_p,
        seeds,
        draw=True,
        return_logprobs=return_logprobs,
        write_mask=False,
    )
    return tokens, logprobs


def filter_mask(
    logits: Tensor,  # (B, V) float16 / bfloat16 / float32
    temperature: Tensor,  # (B,) float32, 0 = greedy
    top_k: Tensor,  # (B,) integer, >= 1; >= V = off
    top_p: Tensor,  # (B,) float64 in (0, 1]; 1 = off
    min_p: Tensor,  # (B,) float64 in [0, 1]; 0 = off
) -> Tensor:
    """The kernel's kept set, bool (B, V): what ``reference.filter_logits(...) > -inf`` must equal."""
    seeds = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    _, _, mask = _launch(
        logits, temperature, top_k, top_p, min_p, seeds, draw=False, return_logprobs=False, write_mask=True
    )
    return mask
