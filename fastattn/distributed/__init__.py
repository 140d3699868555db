"""Context parallelism on ``torch.distributed``: one long sequence split across the ranks of a process
group, attention computed by passing keys and values around the ring of ranks (Ring Attention, Liu et
al. 2023), with the causal work balanced by the "zigzag" layout.

    from fastattn.distributed import gather_sequence, ring_attention, shard_sequence

    q, k, v = (shard_sequence(t, dim=2) for t in (q, k, v))      # (B, H, N / W, D) on each rank
    out = ring_attention(q, k, v, causal=True)                    # this rank's rows of attention
    full = gather_sequence(out, dim=2)                            # (B, H, N, D) on every rank

Works with the ``gloo`` (CPU) and ``nccl`` (GPU) process groups; the block computations run on
fastattn's own kernels (any backend that returns the log-sum-exp: cuda, triton, naive).
"""

from .ring import ring_attention
from .sequence import gather_sequence, shard_sequence

__all__ = ["gather_sequence", "ring_attention", "shard_sequence"]
