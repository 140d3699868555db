"""Ring attention: exact attention over a sequence split across the ranks of a process group.

Each rank holds its shard of q, k and v in the zigzag layout (``shard_sequence``: chunks ``r`` and
``2W - 1 - r`` of ``2W``, each of C = N / 2W positions). In W steps, every rank computes attention of its
queries against the key/value shard it holds, then passes that shard to the next rank and receives one
from the previous (``batch_isend_irecv``, started before the step's compute so the transfer overlaps
it). Per pair of (query chunk, key chunk) the mask is a band of key - query offsets: query position
``i·C + a`` sees key ``j·C + b`` iff ``lo <= b - a <= hi`` with ``d = (i - j)·C``, ``lo = d - left`` and
``hi = d + right`` (unbounded sides: -inf / +inf; causal: right = 0). A pair whose band misses the C x C
block is skipped (under a causal mask, half the pairs: the zigzag gives every rank the same number), a
pair it covers is attended without mask, and the rest through ``fastattn.attention``'s bottom-right
window after padding the ends: ``s`` keys (masked) or ``-s`` queries (discarded), ``s`` the point of
``[lo, hi]`` nearest 0, so that the window's diagonal offset ``Nk - Nq = s`` and its sides ``s - lo``,
``hi - s`` are >= 0; ``|s| < C``. The partial results merge in float32 by their log-sum-exp::

    lse = log(Σ_b exp(lse_b)),  out = Σ_b exp(lse_b - lse)·out_b

accumulated as an online softmax over the blocks (see ``_Accumulator``).

Backward: the k/v shards go around the ring again, each with a float32 accumulator of its dK/dV that
travels with it and is back at its owner after W steps. Each block is recomputed and differentiated by
``fastattn.attention``'s own backward, given the gradients of its (out_b, lse_b) through the merge:
with ``w_b = exp(lse_b - lse)``, ``dout_b = w_b·dout`` and ``dlse_b = w_b·(dout·(out_b - out) + dlse)``.
Memory per rank is O(N / W): the local shards, out and lse, and one block in flight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .. import capabilities
from ..ops.attention import attention
from .sequence import check_same_on_every_rank, group_layout, zigzag_chunks


@dataclass(frozen=True)
class BlockPlan:
    """How one (query chunk, key chunk) pair is attended: the chunks padded at their ends by
    ``pad_keys`` masked keys or ``pad_queries`` discarded queries, under ``window`` (None: no mask)."""

    pad_keys: int
    pad_queries: int
    window: tuple[int, int] | None


def block_plan(query_chunk: int, key_chunk: int, chunk: int, causal: bool, window) -> BlockPlan | None:
    """The plan of a pair of chunks of ``chunk`` positions; None when no query sees a key of it."""
    left, right = window if window is not None else (-1, -1)
    right = 0 if causal else right
    offset = (query_chunk - key_chunk) * chunk
    lo = -math.inf if left < 0 else offset - left  # b - a >= lo
    hi = math.inf if right < 0 else offset + right  # b - a <= hi
    span = chunk - 1  # b - a ranges over [-span, span]
    if lo > span or hi < -span:
        return None
    if lo <= -span and hi >= span:
        return BlockPlan(0, 0, None)
    shift = int(min(max(0, lo), hi))
    sides = (-1 if lo == -math.inf else shift - int(lo), -1 if hi == math.inf else int(hi) - shift)
    return BlockPlan(max(shift, 0), max(-shift, 0), sides)


def _attend_block(q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, scale: float, backend: str):
    """(out, lse) of q's chunk against k/v's chunk under ``plan``; out in q's dtype, lse float32."""
    chunk = q.shape[2]
    mask = None
    if plan.pad_keys:
        k, v = (F.pad(t, (0, 0, 0, plan.pad_keys)) for t in (k, v))
        mask = torch.arange(chunk + plan.pad_keys, device=q.device).expand(q.shape[0], -1) < chunk
    if plan.pad_queries:
        q = F.pad(q, (0, 0, 0, plan.pad_queries))
    out, lse = attention(
        q, k, v, key_padding_mask=mask, scale=scale, window=plan.window, return_lse=True, backend=backend
    )
    return out[:, :, :chunk], lse[:, :, :chunk]


def _blocks(world: int, rank: int, owner: int, chunk: int, causal: bool, window):
    """(query rows, key rows, plan) of every pair this rank attends while it holds ``owner``'s shard."""
    for q_index, q_chunk in enumerate(zigzag_chunks(world, rank)):
        for k_index, k_chunk in enumerate(zigzag_chunks(world, owner)):
            plan = block_plan(q_chunk, k_chunk, chunk, causal, window)
            if plan is not None:
                yield slice(q_index * chunk, (q_index + 1) * chunk), slice(k_index * chunk, (k_index + 1) * chunk), plan


class _Ring:
    """This rank's neighbours in ``group``, and the transfer of a tensor one step around the ring."""

    def __init__(self, group) -> None:
        self.group = group
        self.world, self.rank = group_layout(group)
        self.next = self._global((self.rank + 1) % self.world)
        self.previous = self._global((self.rank - 1) % self.world)

    def _global(self, group_rank: int) -> int:
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    def start(self, tensor: Tensor):
        """Sends ``tensor`` to the next rank and receives the previous rank's into a new buffer; returns
        (buffer, requests) without waiting."""
        received = torch.empty_like(tensor)
        operations = [
            dist.P2POp(dist.isend, tensor, self.next, self.group),
            dist.P2POp(dist.irecv, received, self.previous, self.group),
        ]
        return received, dist.batch_isend_irecv(operations)

    @staticmethod
    def finish(transfer) -> Tensor:
        received, requests = transfer
        for request in requests:
            request.wait()
        return received


class _Accumulator:
    """The float32 merge of blocks' (out_b, lse_b) for some rows, in the online-softmax form: the largest
    lse so far ``peak`` (exactly one of the blocks' lse), ``total = Σ exp(lse_b - peak)`` and ``acc =
    Σ exp(lse_b - peak)·out_b``; normalized once at the end. Merging normalized results pairwise would
    round the running lse to float32 at every step (ulp(4) = 4.8e-7: ~2.4e-7 relative error per merge
    in every weight); here only the sums round, ~6e-8 relative per merge, and ``total`` not even that."""

    def __init__(self, shape, device) -> None:
        self.acc = torch.zeros(shape, dtype=torch.float32, device=device)
        self.peak = torch.full(shape[:-1], -math.inf, dtype=torch.float32, device=device)
        self.total = torch.zeros(shape[:-1], dtype=torch.float64, device=device)  # (B, H, rows): cheap in float64

    def add(self, rows: slice, out_b: Tensor, lse_b: Tensor) -> None:
        peak = self.peak[:, :, rows]
        new_peak = torch.maximum(peak, lse_b)
        seen = new_peak > -math.inf  # rows with no key so far keep zeros
        rescale = torch.where(seen, torch.exp(peak - new_peak), 0.0)
        weight = torch.where(seen, torch.exp(lse_b - new_peak), 0.0)
        self.acc[:, :, rows] = self.acc[:, :, rows] * rescale[..., None] + out_b.float() * weight[..., None]
        self.total[:, :, rows] = self.total[:, :, rows] * rescale.double() + weight.double()
        self.peak[:, :, rows] = new_peak

    def result(self) -> tuple[Tensor, Tensor]:
        """(out float32, lse float32): zeros and -inf for rows that saw no key."""
        seen = self.total > 0
        out = self.acc / torch.where(seen, self.total, 1.0).float()[..., None]
        # lse rounds once, from float64: the peak block's own rounding is then its only other error
        lse = torch.where(seen, self.peak.double() + torch.log(self.total), -math.inf).float()
        return out, lse


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, window, group, backend):
        ring = _Ring(group)
        chunk = q.shape[2] // 2
        merged = _Accumulator(q.shape, q.device)
        kv = torch.stack([k, v])
        for step in range(ring.world):
            transfer = ring.start(kv) if step < ring.world - 1 else None
            owner = (ring.rank - step) % ring.world
            for rows, keys, plan in _blocks(ring.world, ring.rank, owner, chunk, causal, window):
                out_b, lse_b = _attend_block(q[:, :, rows], kv[0][:, :, keys], kv[1][:, :, keys], plan, scale, backend)
                merged.add(rows, out_b, lse_b)
            if transfer is not None:
                kv = ring.finish(transfer)
        out, lse = merged.result()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = (causal, scale, window, group, backend)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, window, group, backend = ctx.options
        ring = _Ring(group)
        chunk = q.shape[2] // 2
        dout = dout.float()
        dlse = torch.zeros_like(lse) if dlse is None else dlse.float()
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        kv = torch.stack([k, v])
        dkv = torch.zeros(kv.shape, dtype=torch.float32, device=kv.device)  # travels with kv
        dkv_transfer = None
        for step in range(ring.world):
            kv_transfer = ring.start(kv) if step < ring.world - 1 else None
            owner = (ring.rank - step) % ring.world
            block_dkv = torch.zeros_like(dkv)
            for rows, keys, plan in _blocks(ring.world, ring.rank, owner, chunk, causal, window):
                q_b, k_b, v_b = (
                    t.detach().requires_grad_() for t in (q[:, :, rows], kv[0][:, :, keys], kv[1][:, :, keys])
                )
                with torch.enable_grad():
                    out_b, lse_b = _attend_block(q_b, k_b, v_b, plan, scale, backend)
                seen = lse[:, :, rows] > -math.inf
                weight = torch.where(seen, torch.exp(lse_b.detach() - lse[:, :, rows]), 0.0)
                d_out = dout[:, :, rows]
                d_out_b = (weight[..., None] * d_out).to(out_b.dtype)
                d_lse_b = weight * ((d_out * (out_b.detach().float() - out[:, :, rows])).sum(-1) + dlse[:, :, rows])
                dq_b, dk_b, dv_b = torch.autograd.grad((out_b, lse_b), (q_b, k_b, v_b), (d_out_b, d_lse_b))
                dq[:, :, rows] += dq_b.float()
                block_dkv[0][:, :, keys] += dk_b.float()
                block_dkv[1][:, :, keys] += dv_b.float()
            if dkv_transfer is not None:
                dkv = ring.finish(dkv_transfer)  # the accumulator of the shard this rank now holds
            dkv += block_dkv
            if ring.world > 1:  # on to the next holder; after the last step, home to its owner
                dkv_transfer = ring.start(dkv)
            if kv_transfer is not None:
                kv = ring.finish(kv_transfer)
        if dkv_transfer is not None:
            dkv = ring.finish(dkv_transfer)
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None, None


def _check(q, k, v, causal, scale, window, backend) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"ring_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"ring_attention: {name} must be (B, H, N / W, D), got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"ring_attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"ring_attention: q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or q.shape[2] != k.shape[2]:
        raise ValueError(
            f"ring_attention: q {tuple(q.shape)} and k {tuple(k.shape)} must share B, the shard length and D "
            "(every rank holds the same chunks of queries and keys)"
        )
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"ring_attention: query heads {q.shape[1]} must be a multiple of key heads {k.shape[1]}")
    if q.shape[2] % 2:
        raise ValueError(
            f"ring_attention: a shard holds two equal chunks of the zigzag layout (shard_sequence): its length "
            f"must be even, got {q.shape[2]}"
        )
    if not isinstance(causal, bool):
        raise TypeError(f"ring_attention: causal must be a bool, got {causal!r}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"ring_attention: scale must be a finite number or None, got {scale!r}")
    if window is not None and not (
        isinstance(window, (tuple, list))
        and len(window) == 2
        and all(isinstance(side, int) and not isinstance(side, bool) and side >= -1 for side in window)
    ):
        raise ValueError(f"ring_attention: window must be None or (left, right), two ints >= -1, got {window!r}")
    if capabilities.lacks("attention", backend, "return_lse"):
        raise ValueError(
            f"ring_attention: backend '{backend}' cannot serve it: merging the blocks needs their log-sum-exp, "
            "which it does not return; use 'auto' or a backend whose capabilities include return_lse"
        )


def ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    window: tuple[int, int] | None = None,
    return_lse: bool = False,
    group=None,
    backend: str = "auto",
):
    """This rank's rows of ``fastattn.attention`` over the full sequence, from the ranks' shards.

    Args:
        q: ``(B, Hq, N / W, D)``, k, v: ``(B, Hkv, N / W, D)``: this rank's shards of the full sequence in
            the zigzag layout of :func:`shard_sequence` along dim 2 (the same shape on every rank).
        causal, scale, window: as in :func:`fastattn.attention` on the full sequence (``Nq = Nk = N``).
        return_lse: also return the float32 ``(B, Hq, N / W)`` log-sum-exp of this rank's rows.
        group: the process group (default: the world); its ranks hold the shards in rank order.
        backend: of the block computations (``fastattn.attention``'s; not ``torch``, which returns no lse).

    Differentiable: the gradients of q, k and v equal those of attention on the full sequence, each on
    its rank. Every rank of ``group`` must call it with shards of the same shape, dtype and options: a
    mismatch raises ``ValueError`` on every rank (one small all_gather per call checks it), a rank that
    does not call it makes the others raise when the process group's timeout expires.
    """
    _check(q, k, v, causal, scale, window, backend)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    window = tuple(window) if window is not None else None
    world, _ = group_layout(group)
    if world > 1:
        facts = {"q shape": tuple(q.shape), "k shape": tuple(k.shape), "dtype": q.dtype, "causal": causal}
        check_same_on_every_rank("ring_attention", {**facts, "scale": scale, "window": window}, q.device, group)
    out, lse = _RingAttention.apply(q, k, v, causal, scale, window, group, backend)
    return (out, lse) if return_lse else out
