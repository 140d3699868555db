"""LayerNorm and RMSNorm with a fused residual add, in Triton: forward, backward, and the dW/dB reduction.

Notation, for one row of N elements (s = x + residual, or s = x without a residual):

    LayerNorm:  mean = Σ s / N,  var = Σ (s - mean)² / N,  rstd = 1 / sqrt(var + eps)
                x̂ = (s - mean) · rstd,                    y = x̂ · w + b
    RMSNorm:    rstd = 1 / sqrt(Σ s² / N + eps),          x̂ = s · rstd,   y = x̂ · w

Backward, with g = dy · w (g = dy without a weight) and ds_up the upstream gradient of the returned s:

    LayerNorm:  ds = rstd · (g - x̂ · mean(g · x̂) - mean(g)) + ds_up
    RMSNorm:    ds = rstd · (g - x̂ · mean(g · x̂)) + ds_up
    dx = dresidual = ds,   dw = Σ_rows dy · x̂,   db = Σ_rows dy

Everything is computed in float32 whatever the input dtype; s is formed in float32 and stored rounded
to its own dtype, but the statistics and y use the unrounded sum (and the backward recomputes it from
x and residual, so it sees the very values the forward normalized). The forward saves mean and rstd
(float32, one per row) for the backward.

Two paths per direction:

- row path: the whole row (BLOCK_N = next_power_of_2(N)) sits in registers; the statistics are an
  exact two-pass over registers. Small rows are batched BLOCK_M to a program.
- looped path (rows too long for the registers): the row is streamed in chunks of BLOCK_N.
  Forward: one pass of per-lane Welford updates (running mean and sum of squared deviations per lane,
  merged across lanes with Chan's formula at the end), then one pass that normalizes; the second
  read of a chunk mostly hits L2. Backward, on groups of BLOCK_M rows: one pass for mean(g · x̂) and
  mean(g), one that writes ds.

dW/dB are deterministic: each backward program handles a contiguous range of rows and sums dy · x̂ and
dy of its rows in float32, in registers on the row path (one partial row written at the end), or on
the looped path in its own row of the partial buffer (read, added to and written once per group and
chunk, by that program alone). ``_sum_partials_kernel`` then adds the partial rows column by column in
a fixed order. No atomics, no locks: the same inputs on the same device give the same bits.

Rows may be strided (a runtime row stride; the last dimension is contiguous, else the launcher makes
it so); row offsets are int64, so tensors beyond 2^31 elements are addressed safely.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import interpreter
from .layout import last_dim_contiguous

# Tile sizes. The register numbers are ptxas -v for sm_90a (fp16 x with an fp32 residual and weight
# unless said otherwise); the choices are still to be confirmed with the benchmark on an H100.
# Row path: at most 8 row elements per thread (16 at the forward's largest row), so a whole row sits in
# registers. Forward: 8192 at 32 warps takes 39 registers, 16384 takes 47 to 60 (64 and a 64-byte spill
# for LayerNorm with both a residual and an fp32 s), still cheaper than the looped path's second read;
# a 32768 row would need 32 values per thread of each row-sized tensor against ptxas's cap of 64
# registers for a 32-warp program. The backward holds twice as many row-sized tensors (s, dy, w, x̂,
# g, ds and the dW/dB accumulators): 4096 at 32 warps takes 49 registers, 8192 spills, so it stops there.
FWD_ROW_LIMIT = 16384
BWD_ROW_LIMIT = 4096
ELEMENTS_PER_THREAD = 8  # row path: elements of a tile per thread (num_warps = tile / 256, 4..32)
GPU_FWD_TILE = 4096  # small rows are batched to ~4096 elements a program (8 rows of 512, 4 of 1024, ...)
# Backward tiles of up to 2048 elements run at 8 warps (80 to 128 registers: 2 or 3 programs per SM); a
# 4096 row at 16 warps is capped at 128 registers and uses them all, at 32 warps it needs 49.
GPU_BWD_TILE = 2048
# Looped path: forward chunks of 2048 at 8 warps (66 registers for LayerNorm's Welford pass, 3 programs
# per SM); backward groups of 2 rows x 1024 at 8 warps (64 registers, 4 programs per SM; RMSNorm 127).
# A group of rows shares one read-modify-write of the program's partial dW/dB row (4 x 1024 needs 175
# registers). On sm_80 ptxas keeps the bfloat16 LayerNorm backward with ds at those 64 registers and
# spills 8 bytes for the fourth program per SM (bench/static_resources.py, ACCEPTED_SPILLS).
LOOP_FWD_BLOCK_N = 2048
LOOP_BWD_BLOCK_M = 2
LOOP_BWD_BLOCK_N = 1024
BWD_PROGRAMS_PER_SM = 2  # backward programs per SM: partial rows stay few (2 · SMs · N · 4 bytes each)
MIN_BLOCK_N = 16  # smallest row tile, so N = 1 or 3 still gets a well-formed layout
REDUCE_BLOCK_P = 64  # partial rows per step of the dW/dB reduction
REDUCE_BLOCK_N = 64  # columns per program of the dW/dB reduction (GPU)
# Under TRITON_INTERPRET=1 every program and every loop iteration costs Python overhead while numpy
# handles big tiles cheaply: few programs, big tiles (the row/looped choice stays the GPU's).
INTERPRETER_TILE = 1 << 15
INTERPRETER_LOOP_BLOCK_N = 4096
INTERPRETER_BWD_PROGRAMS = 4  # >1, so the partial-sum reduction is exercised on the CPU too


# --------------------------------------------------------------------------------------- helpers
@triton.jit
def _load_sum(
    x_ptrs,  # pointers into X
    r_ptrs,  # pointers into R (unused without HAS_RESIDUAL)
    mask,  # in-bounds elements
    HAS_RESIDUAL: tl.constexpr,  # s = x + residual instead of s = x
):
    """s = x (+ residual) in float32; 0 outside ``mask``."""
    s = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    return s


# ------------------------------------------------------------------------------ forward kernels
@triton.jit
def _norm_fwd_kernel(
    X,  # (M, N) input rows, last dim contiguous
    R,  # (M, N) residual rows, last dim contiguous (unused without HAS_RESIDUAL)
    W,  # (N,) weight (unused without HAS_WEIGHT)
    B,  # (N,) bias (unused without HAS_BIAS)
    Y,  # (M, N) output, contiguous
    S,  # (M, N) s = x + residual, contiguous (unused without HAS_RESIDUAL)
    Mean,  # (M,) float32 row means (unused when IS_RMS)
    Rstd,  # (M,) float32 row 1 / sqrt(var + eps)
    stride_x,  # row stride of X, in elements
    stride_r,  # row stride of R, in elements
    M,  # rows
    N,  # hidden size
    eps,  # added to the variance (mean square for RMSNorm)
    IS_RMS: tl.constexpr,  # RMSNorm: no mean, no bias
    HAS_RESIDUAL: tl.constexpr,  # add R and store S
    HAS_WEIGHT: tl.constexpr,  # multiply by W
    HAS_BIAS: tl.constexpr,  # add B
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # >= N: the whole row
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    x_ptrs = X + rows[:, None] * stride_x + cols[None, :]
    s = _load_sum(x_ptrs, R + rows[:, None] * stride_r + cols[None, :], mask, HAS_RESIDUAL)
    out = rows[:, None] * N + cols[None, :]
    if HAS_RESIDUAL:
        tl.store(S + out, s.to(S.dtype.element_ty), mask=mask)
    n = tl.cast(N, tl.float32)
    if IS_RMS:
        centred = s
    else:
        mean = tl.div_rn(tl.sum(s, axis=1), n)
        tl.store(Mean + rows, mean, mask=row_ok)
        centred = tl.where(mask, s - mean[:, None], 0.0)
    var = tl.div_rn(tl.sum(centred * centred, axis=1), n)
    rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    tl.store(Rstd + rows, rstd, mask=row_ok)
    y = centred * rstd[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + out, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_fwd_looped_kernel(
    X,  # (M, N) input rows, last dim contiguous
    R,  # (M, N) residual rows, last dim contiguous (unused without HAS_RESIDUAL)
    W,  # (N,) weight (unused without HAS_WEIGHT)
    B,  # (N,) bias (unused without HAS_BIAS)
    Y,  # (M, N) output, contiguous
    S,  # (M, N) s = x + residual, contiguous (unused without HAS_RESIDUAL)
    Mean,  # (M,) float32 row means (unused when IS_RMS)
    Rstd,  # (M,) float32 row 1 / sqrt(var + eps)
    stride_x,  # row stride of X, in elements
    stride_r,  # row stride of R, in elements
    N,  # hidden size
    eps,  # added to the variance (mean square for RMSNorm)
    IS_RMS: tl.constexpr,  # RMSNorm: no mean, no bias
    HAS_RESIDUAL: tl.constexpr,  # add R and store S
    HAS_WEIGHT: tl.constexpr,  # multiply by W
    HAS_BIAS: tl.constexpr,  # add B
    BLOCK_N: tl.constexpr,  # chunk length
):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    r_row = R + row * stride_r
    cols = tl.arange(0, BLOCK_N)
    n = tl.cast(N, tl.float32)
    # Pass 1: statistics, per lane, and s stored on the way (IS_RMS picks the accumulators at compile time).
    if IS_RMS:
        sum_sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    else:
        count = tl.zeros([BLOCK_N], dtype=tl.float32)  # elements seen by each lane
        lane_mean = tl.zeros([BLOCK_N], dtype=tl.float32)
        lane_m2 = tl.zeros([BLOCK_N], dtype=tl.float32)  # Σ (s - lane_mean)² of each lane
    for start in range(0, N, BLOCK_N):
        offs = start + cols
        in_row = offs < N
        s = _load_sum(x_row + offs, r_row + offs, in_row, HAS_RESIDUAL)
        if HAS_RESIDUAL:
            tl.store(S + row * N + offs, s.to(S.dtype.element_ty), mask=in_row)
        if IS_RMS:
            sum_sq += s * s
        else:
            count += in_row.to(tl.float32)
            delta = tl.where(in_row, s - lane_mean, 0.0)
            lane_mean += delta / tl.maximum(count, 1.0)
            lane_m2 += delta * (s - lane_mean)  # 0 where delta is 0
    if IS_RMS:
        mean = 0.0
        var = tl.div_rn(tl.sum(sum_sq, axis=0), n)
    else:
        # Chan et al.: merge the lanes. Lanes that saw nothing have count = mean = m2 = 0.
        mean = tl.div_rn(tl.sum(count * lane_mean, axis=0), n)
        spread = lane_mean - mean
        var = tl.div_rn(tl.sum(lane_m2, axis=0) + tl.sum(count * spread * spread, axis=0), n)
        tl.store(Mean + row, mean)
    rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    tl.store(Rstd + row, rstd)
    # Pass 2: normalize.
    for start in range(0, N, BLOCK_N):
        offs = start + cols
        in_row = offs < N
        s = _load_sum(x_row + offs, r_row + offs, in_row, HAS_RESIDUAL)
        y = (s - mean) * rstd
        if HAS_WEIGHT:
            y = y * tl.load(W + offs, mask=in_row, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y = y + tl.load(B + offs, mask=in_row, other=0.0).to(tl.float32)
        tl.store(Y + row * N + offs, y.to(Y.dtype.element_ty), mask=in_row)


# ----------------------------------------------------------------------------- backward kernels
@triton.jit
def _norm_bwd_kernel(
    DY,  # (M, N) upstream gradient of y, last dim contiguous
    DS,  # (M, N) upstream gradient of the returned s, last dim contiguous (unused without HAS_DS)
    X,  # (M, N) forward input rows, last dim contiguous
    R,  # (M, N) forward residual rows, last dim contiguous (unused without HAS_RESIDUAL)
    W,  # (N,) weight (unused without HAS_WEIGHT)
    Mean,  # (M,) float32 row means from the forward (unused when IS_RMS)
    Rstd,  # (M,) float32 row 1 / sqrt(var + eps) from the forward
    DX,  # (M, N) gradient of x, contiguous
    DR,  # (M, N) gradient of the residual in its own dtype, contiguous (unused without STORE_DR)
    DW,  # (programs, N) float32 partial dW rows, one per program (unused without HAS_WEIGHT)
    DB,  # (programs, N) float32 partial dB rows, one per program (unused without HAS_BIAS)
    stride_dy,  # row stride of DY, in elements
    stride_ds,  # row stride of DS, in elements
    stride_x,  # row stride of X, in elements
    stride_r,  # row stride of R, in elements
    M,  # rows
    N,  # hidden size
    rows_per_program,  # a multiple of BLOCK_M
    IS_RMS: tl.constexpr,  # RMSNorm: no mean
    HAS_DS: tl.constexpr,  # add DS to the gradient of s
    HAS_RESIDUAL: tl.constexpr,  # s = x + residual
    STORE_DR: tl.constexpr,  # write DR (the residual's dtype differs from x's)
    HAS_WEIGHT: tl.constexpr,  # multiply by W in the forward; write a DW partial
    HAS_BIAS: tl.constexpr,  # write a DB partial
    BLOCK_M: tl.constexpr,  # rows per step
    BLOCK_N: tl.constexpr,  # >= N: the whole row
):
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    n = tl.cast(N, tl.float32)
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        mask = row_ok[:, None] & col_ok[None, :]
        s = _load_sum(
            X + rows[:, None] * stride_x + cols[None, :],
            R + rows[:, None] * stride_r + cols[None, :],
            mask,
            HAS_RESIDUAL,
        )
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        if IS_RMS:
            xhat = s * rstd[:, None]
        else:
            mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
            xhat = tl.where(mask, (s - mean[:, None]) * rstd[:, None], 0.0)
        g = dy
        if HAS_WEIGHT:
            g = dy * w[None, :]
        c1 = tl.div_rn(tl.sum(xhat * g, axis=1), n)
        if IS_RMS:
            ds = (g - xhat * c1[:, None]) * rstd[:, None]
        else:
            c2 = tl.div_rn(tl.sum(g, axis=1), n)
            ds = (g - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DS:
            ds += tl.load(DS + rows[:, None] * stride_ds + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        out = rows[:, None] * N + cols[None, :]
        tl.store(DX + out, ds.to(DX.dtype.element_ty), mask=mask)
        if STORE_DR:
            tl.store(DR + out, ds.to(DR.dtype.element_ty), mask=mask)
        if HAS_WEIGHT:
            dw += dy * xhat
        if HAS_BIAS:
            db += dy
    partial = pid.to(tl.int64) * N + cols
    if HAS_WEIGHT:
        tl.store(DW + partial, tl.sum(dw, axis=0), mask=col_ok)
    if HAS_BIAS:
        tl.store(DB + partial, tl.sum(db, axis=0), mask=col_ok)


@triton.jit
def _norm_bwd_looped_kernel(
    DY,  # (M, N) upstream gradient of y, last dim contiguous
    DS,  # (M, N) upstream gradient of the returned s, last dim contiguous (unused without HAS_DS)
    X,  # (M, N) forward input rows, last dim contiguous
    R,  # (M, N) forward residual rows, last dim contiguous (unused without HAS_RESIDUAL)
    W,  # (N,) weight (unused without HAS_WEIGHT)
    Mean,  # (M,) float32 row means from the forward (unused when IS_RMS)
    Rstd,  # (M,) float32 row 1 / sqrt(var + eps) from the forward
    DX,  # (M, N) gradient of x, contiguous
    DR,  # (M, N) gradient of the residual in its own dtype, contiguous (unused without STORE_DR)
    DW,  # (programs, N) float32 partial dW rows, one per program (unused without HAS_WEIGHT)
    DB,  # (programs, N) float32 partial dB rows, one per program (unused without HAS_BIAS)
    stride_dy,  # row stride of DY, in elements
    stride_ds,  # row stride of DS, in elements
    stride_x,  # row stride of X, in elements
    stride_r,  # row stride of R, in elements
    M,  # rows
    N,  # hidden size
    rows_per_program,  # a multiple of BLOCK_M
    IS_RMS: tl.constexpr,  # RMSNorm: no mean
    HAS_DS: tl.constexpr,  # add DS to the gradient of s
    HAS_RESIDUAL: tl.constexpr,  # s = x + residual
    STORE_DR: tl.constexpr,  # write DR (the residual's dtype differs from x's)
    HAS_WEIGHT: tl.constexpr,  # multiply by W in the forward; accumulate a DW partial
    HAS_BIAS: tl.constexpr,  # accumulate a DB partial
    BLOCK_M: tl.constexpr,  # rows per group: the partial row is read and written once per group
    BLOCK_N: tl.constexpr,  # chunk length
):
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    cols = tl.arange(0, BLOCK_N)
    n = tl.cast(N, tl.float32)
    dw_row = DW + pid.to(tl.int64) * N  # this program's partial rows: read and written by it alone
    db_row = DB + pid.to(tl.int64) * N
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        if IS_RMS:
            mean = tl.zeros([BLOCK_M], dtype=tl.float32)
        else:
            mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
        x_rows = X + rows[:, None] * stride_x
        r_rows = R + rows[:, None] * stride_r
        dy_rows = DY + rows[:, None] * stride_dy
        # Pass 1: mean(g · x̂) and mean(g) of each row of the group.
        sum_gx = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        sum_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for chunk in range(0, N, BLOCK_N):
            offs = chunk + cols
            mask = row_ok[:, None] & (offs < N)[None, :]
            s = _load_sum(x_rows + offs[None, :], r_rows + offs[None, :], mask, HAS_RESIDUAL)
            g = tl.load(dy_rows + offs[None, :], mask=mask, other=0.0).to(tl.float32)
            if HAS_WEIGHT:
                g = g * tl.load(W + offs, mask=offs < N, other=0.0).to(tl.float32)[None, :]
            xhat = tl.where(mask, (s - mean[:, None]) * rstd[:, None], 0.0)
            sum_gx += g * xhat
            if not IS_RMS:
                sum_g += g
        c1 = tl.div_rn(tl.sum(sum_gx, axis=1), n)
        c2 = tl.div_rn(tl.sum(sum_g, axis=1), n)  # unused for RMSNorm
        # Pass 2: the gradient of s, and the group's share of dW/dB.
        for chunk in range(0, N, BLOCK_N):
            offs = chunk + cols
            col_ok = offs < N
            mask = row_ok[:, None] & col_ok[None, :]
            s = _load_sum(x_rows + offs[None, :], r_rows + offs[None, :], mask, HAS_RESIDUAL)
            dy = tl.load(dy_rows + offs[None, :], mask=mask, other=0.0).to(tl.float32)
            g = dy
            if HAS_WEIGHT:
                g = dy * tl.load(W + offs, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            xhat = tl.where(mask, (s - mean[:, None]) * rstd[:, None], 0.0)
            if IS_RMS:
                ds = (g - xhat * c1[:, None]) * rstd[:, None]
            else:
                ds = (g - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
            if HAS_DS:
                ds_ptrs = DS + rows[:, None] * stride_ds + offs[None, :]
                ds += tl.load(ds_ptrs, mask=mask, other=0.0).to(tl.float32)
            out = rows[:, None] * N + offs[None, :]
            tl.store(DX + out, ds.to(DX.dtype.element_ty), mask=mask)
            if STORE_DR:
                tl.store(DR + out, ds.to(DR.dtype.element_ty), mask=mask)
            # The program's first group starts its partial rows (nothing is read: no zero-fill needed).
            if HAS_WEIGHT:
                dw = tl.load(dw_row + offs, mask=col_ok & (start > row_start), other=0.0)
                tl.store(dw_row + offs, dw + tl.sum(dy * xhat, axis=0), mask=col_ok)
            if HAS_BIAS:
                db = tl.load(db_row + offs, mask=col_ok & (start > row_start), other=0.0)
                tl.store(db_row + offs, db + tl.sum(dy, axis=0), mask=col_ok)


@triton.jit
def _sum_partials_kernel(
    Partial,  # (P, N) float32 partial rows, contiguous
    Out,  # (N,) the column sums, in the parameter's dtype
    P,  # partial rows
    N,  # columns
    BLOCK_P: tl.constexpr,  # partial rows per step
    BLOCK_N: tl.constexpr,  # columns per program
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        rows = start + tl.arange(0, BLOCK_P)
        mask = (rows < P)[:, None] & col_ok[None, :]
        acc += tl.load(Partial + rows.to(tl.int64)[:, None] * N + cols[None, :], mask=mask, other=0.0)
    tl.store(Out + cols, tl.sum(acc, axis=0).to(Out.dtype.element_ty), mask=col_ok)


# -------------------------------------------------------------------------------------- launchers
def _rows(t: Tensor) -> Tensor:
    """``t`` as (M, N) rows with a contiguous last dim: a view when the strides allow, else a copy."""
    return last_dim_contiguous(t.reshape(-1, t.shape[-1]))


class _Config(NamedTuple):
    looped: bool  # the looped path (the row does not fit one tile)
    block_m: int  # rows per program (forward row path) or per step (backward)
    block_n: int  # the whole row (row path) or the chunk (looped path)
    num_warps: int


def _warps(tile: int) -> int:
    return min(32, max(4, tile // (32 * ELEMENTS_PER_THREAD)))


def _config(direction: str, rows: int, n: int, device: torch.device) -> _Config:
    """Tile sizes for ``direction`` in {"fwd", "bwd"} (see the constants above for the numbers)."""
    gpu = not interpreter.interpreted(device)
    block_n = max(MIN_BLOCK_N, triton.next_power_of_2(n))
    if direction == "bwd" and not gpu:  # spread the rows over the programs: several partial rows
        rows = triton.cdiv(rows, INTERPRETER_BWD_PROGRAMS)
    rows_pow2 = triton.next_power_of_2(rows)
    if direction == "fwd":
        if block_n > FWD_ROW_LIMIT:
            chunk = LOOP_FWD_BLOCK_N if gpu else INTERPRETER_LOOP_BLOCK_N
            return _Config(True, 1, chunk, _warps(chunk))
        block_m = max(1, min((GPU_FWD_TILE if gpu else INTERPRETER_TILE) // block_n, rows_pow2))
        return _Config(False, block_m, block_n, _warps(block_m * block_n))
    if block_n > BWD_ROW_LIMIT:
        if not gpu:
            block_m = min(rows_pow2, INTERPRETER_TILE // INTERPRETER_LOOP_BLOCK_N)
            return _Config(True, block_m, INTERPRETER_LOOP_BLOCK_N, 4)
        return _Config(True, LOOP_BWD_BLOCK_M, LOOP_BWD_BLOCK_N, _warps(LOOP_BWD_BLOCK_M * LOOP_BWD_BLOCK_N))
    block_m = max(1, min((GPU_BWD_TILE if gpu else INTERPRETER_TILE) // block_n, rows_pow2))
    tile = block_m * block_n
    return _Config(False, block_m, block_n, _warps(tile) if tile <= GPU_BWD_TILE else 32)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _bwd_programs(device: torch.device) -> int:
    """How many backward programs (and partial dW/dB rows) at most."""
    if device.type != "cuda":
        return INTERPRETER_BWD_PROGRAMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return BWD_PROGRAMS_PER_SM * _sm_count(index)


def _device_guard(device: torch.device):
    """Launch on the tensors' GPU, not on whichever is current."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _kernel_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a kernel writes an output of ``dtype`` in. Triton's interpreter (3.8) converts float32
    to bfloat16 by truncation, not round-to-nearest-even as the GPU does, so on the CPU bfloat16
    outputs are written in float32 and rounded by torch (:func:`_to`)."""
    return torch.float32 if dtype == torch.bfloat16 and interpreter.interpreted(device) else dtype


def _to(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _check(x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None) -> None:
    n = x.shape[-1] if x.dim() else 0
    if x.dim() == 0 or n == 0:
        raise ValueError(f"x must have a non-empty last dimension to normalize, got shape {tuple(x.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(param.shape)}")


def norm_fwd(
    x: Tensor,
    residual: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    *,
    rms: bool,
    residual_in_fp32: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """LayerNorm (or RMSNorm, ``rms=True``) over the last dimension of ``x`` (..., N).

    ``residual`` (x's shape) is added first; ``weight``/``bias`` are (N,) or None. Any of them may be
    fp16, bf16 or fp32, independently. Returns ``(y, s, mean, rstd)``: y contiguous in x's dtype; s
    contiguous in float32 (``residual_in_fp32``) or x's dtype, or an empty (0,) tensor without a
    residual; mean and rstd float32 of shape x.shape[:-1] (mean is empty (0,) for RMSNorm).
    """
    _check(x, residual, weight, bias)
    n = x.shape[-1]
    x_rows = _rows(x)
    m = x_rows.shape[0]
    s_dtype = torch.float32 if residual_in_fp32 else x.dtype  # fastattn.reference.residual_dtype's rule
    y = torch.empty(x.shape, dtype=_kernel_dtype(x.dtype, x.device), device=x.device)
    if residual is not None:
        s = torch.empty(x.shape, dtype=_kernel_dtype(s_dtype, x.device), device=x.device)
    else:
        s = x.new_empty((0,))
    mean = torch.empty((0,) if rms else x.shape[:-1], dtype=torch.float32, device=x.device)
    rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    if m == 0:
        return _to(y, x.dtype), _to(s, s_dtype if residual is not None else x.dtype), mean, rstd
    r_rows = _rows(residual) if residual is not None else x_rows
    args = (
        x_rows,
        r_rows,
        weight.contiguous() if weight is not None else y,
        bias.contiguous() if bias is not None else y,
        y,
        s if residual is not None else y,
        rstd if rms else mean,
        rstd,
        x_rows.stride(0),
        r_rows.stride(0),
    )
    flags = dict(
        IS_RMS=rms,
        HAS_RESIDUAL=residual is not None,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
    )
    cfg = _config("fwd", m, n, x.device)
    with _device_guard(x.device):
        if cfg.looped:
            _norm_fwd_looped_kernel[(m,)](*args, n, eps, **flags, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps)
        else:
            _norm_fwd_kernel[(triton.cdiv(m, cfg.block_m),)](
                *args, m, n, eps, **flags, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps
            )
    return _to(y, x.dtype), _to(s, s_dtype if residual is not None else x.dtype), mean, rstd


def _sum_partials(partial: Tensor, dtype: torch.dtype) -> Tensor:
    """Column sums of the float32 (P, N) partial rows, added in a fixed order, in ``dtype``."""
    programs, n = partial.shape
    out = torch.empty(n, dtype=_kernel_dtype(dtype, partial.device), device=partial.device)
    if interpreter.interpreted(partial.device):
        block_p, block_n = triton.next_power_of_2(programs), min(triton.next_power_of_2(n), INTERPRETER_TILE)
    else:
        block_p, block_n = REDUCE_BLOCK_P, REDUCE_BLOCK_N
    _sum_partials_kernel[(triton.cdiv(n, block_n),)](
        partial, out, programs, n, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=_warps(block_p * block_n)
    )
    return _to(out, dtype)


def norm_bwd(
    dy: Tensor,
    ds: Tensor | None,
    x: Tensor,
    residual: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    *,
    rms: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`norm_fwd`.

    ``dy`` (x's shape) is the upstream gradient of y, ``ds`` (or None) that of the returned s;
    ``x``, ``residual``, ``weight`` are the forward's inputs (``bias`` only gives dB its dtype), ``mean``
    and ``rstd`` its saved statistics. Returns ``(dx, dresidual, dw, db)``, contiguous: dx in x's dtype;
    dresidual in the residual's dtype when that differs from x's (it equals dx otherwise and is then
    an empty (0,) tensor, as it is without a residual); dw/db in the weight's/bias's dtype, or empty.
    """
    _check(x, residual, weight, bias)
    n = x.shape[-1]
    x_rows = _rows(x)
    m = x_rows.shape[0]
    store_dr = residual is not None and residual.dtype != x.dtype
    dx = torch.empty(x.shape, dtype=_kernel_dtype(x.dtype, x.device), device=x.device)
    dr = x.new_empty((0,))
    if store_dr:
        dr = torch.empty(x.shape, dtype=_kernel_dtype(residual.dtype, x.device), device=x.device)
    if m == 0:  # no rows: nothing to add up
        dw = weight.new_zeros(weight.shape) if weight is not None else x.new_empty((0,))
        db = bias.new_zeros(bias.shape) if bias is not None else x.new_empty((0,))
        return _to(dx, x.dtype), _to(dr, residual.dtype if store_dr else x.dtype), dw, db
    dy_rows = _rows(dy)
    ds_rows = _rows(ds) if ds is not None else dy_rows
    r_rows = _rows(residual) if residual is not None else x_rows
    cfg = _config("bwd", m, n, x.device)
    programs = min(_bwd_programs(x.device), triton.cdiv(m, cfg.block_m))
    rows_per_program = triton.cdiv(triton.cdiv(m, programs), cfg.block_m) * cfg.block_m  # whole steps
    programs = triton.cdiv(m, rows_per_program)  # every program gets rows, so writes its partial rows
    # One float32 partial row per program, written by that program alone.
    dw_partial = x.new_empty((programs, n), dtype=torch.float32) if weight is not None else dx
    db_partial = x.new_empty((programs, n), dtype=torch.float32) if bias is not None else dx
    args = (
        dy_rows,
        ds_rows,
        x_rows,
        r_rows,
        weight.contiguous() if weight is not None else dx,
        rstd if rms else mean,
        rstd,
        dx,
        dr if store_dr else dx,
        dw_partial,
        db_partial,
        dy_rows.stride(0),
        ds_rows.stride(0),
        x_rows.stride(0),
        r_rows.stride(0),
        m,
        n,
        rows_per_program,
    )
    flags = dict(
        IS_RMS=rms,
        HAS_DS=ds is not None,
        HAS_RESIDUAL=residual is not None,
        STORE_DR=store_dr,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
    )
    with _device_guard(x.device):
        kernel = _norm_bwd_looped_kernel if cfg.looped else _norm_bwd_kernel
        kernel[(programs,)](*args, **flags, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps)
        dw = _sum_partials(dw_partial, weight.dtype) if weight is not None else x.new_empty((0,))
        db = _sum_partials(db_partial, bias.dtype) if bias is not None else x.new_empty((0,))
    return _to(dx, x.dtype), _to(dr, residual.dtype if store_dr else x.dtype), dw, db
