"""The zigzag layout of a sequence over the ranks of a group.

Under a causal mask, query ``i`` sees ``i + 1`` keys, so cutting the sequence into W consecutive parts
would give the last rank W times the first rank's work. Cut into 2W equal chunks instead, rank ``r``
holds chunks ``r`` and ``2W - 1 - r``: an early chunk and its mirror, the same work on every rank.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from torch import Tensor


def group_layout(group) -> tuple[int, int]:
    """(world size, rank in ``group``) of this process; (1, 0) without a process group."""
    if not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise RuntimeError("group is given but torch.distributed is not initialized: call init_process_group")
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def zigzag_chunks(world: int, rank: int) -> tuple[int, int]:
    """The two chunks of 2W that ``rank`` holds, in the order it holds them."""
    return rank, 2 * world - 1 - rank


def _check_dim(x, dim: int, name: str) -> int:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(dim, int) or isinstance(dim, bool) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{name}: dim must be an int in [{-x.dim()}, {x.dim()}) for a {x.dim()}-d tensor, got {dim!r}")
    return dim % x.dim()


def shard_sequence(x: Tensor, dim: int, group=None) -> Tensor:
    """This rank's part of the full sequence ``x`` (the same on every rank) along ``dim``: chunks ``r``
    and ``2W - 1 - r`` of ``2W`` equal chunks, concatenated. The length must divide by ``2W``."""
    dim = _check_dim(x, dim, "shard_sequence")
    world, rank = group_layout(group)
    length = x.shape[dim]
    if length % (2 * world):
        raise ValueError(
            f"shard_sequence: the sequence length along dim {dim} must be a multiple of 2 x world size = "
            f"{2 * world} (the zigzag layout cuts it into {2 * world} equal chunks), got {length}; pad it to "
            f"{-(-length // (2 * world)) * 2 * world}"
        )
    chunks = x.chunk(2 * world, dim)
    first, second = zigzag_chunks(world, rank)
    return torch.cat([chunks[first], chunks[second]], dim)


class _GatherSequence(torch.autograd.Function):
    """All ranks' shards reassembled; the gradient of a rank's shard is the sum over ranks of the
    gradients of its rows (every rank used the whole sequence)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, group) -> Tensor:
        world, rank = group_layout(group)
        ctx.dim, ctx.group, ctx.world, ctx.rank = dim, group, world, rank
        if world == 1:
            return x.clone()
        shards = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(shards, x.contiguous(), group=group)
        chunks = [None] * (2 * world)
        for owner, shard in enumerate(shards):
            first, second = zigzag_chunks(world, owner)
            chunks[first], chunks[second] = shard.chunk(2, dim)
        return torch.cat(chunks, dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.world == 1:
            return grad, None, None
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        chunks = grad.chunk(2 * ctx.world, ctx.dim)
        first, second = zigzag_chunks(ctx.world, ctx.rank)
        return torch.cat([chunks[first], chunks[second]], ctx.dim), None, None


def gather_sequence(x: Tensor, dim: int, group=None) -> Tensor:
    """The inverse of :func:`shard_sequence`: every rank gets the full sequence along ``dim``
    (differentiable). The shards must have the same shape on every rank."""
    dim = _check_dim(x, dim, "gather_sequence")
    world, _ = group_layout(group)
    if x.shape[dim] % 2:
        raise ValueError(
            f"gather_sequence: a shard holds two equal chunks along dim {dim}: its length must be even, "
            f"got {x.shape[dim]}"
        )
    if world > 1:
        check_same_on_every_rank("gather_sequence", {"shape": tuple(x.shape), "dtype": x.dtype}, x.device, group)
    return _GatherSequence.apply(x, dim, group)


def _digest(text: str) -> int:
    """A 56-bit digest of ``text``, the same in every process (``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=7).digest(), "little")


def check_same_on_every_rank(op: str, facts: dict, device: torch.device, group) -> None:
    """Raises ``ValueError`` on every rank when a fact (a shape, a dtype, an option) differs between the
    ranks of ``group``: one small all_gather, so a mismatch is an error, not a hang or garbage."""
    encoded = [_digest(f"{name}={value}") for name, value in facts.items()]
    mine = torch.tensor(encoded, dtype=torch.int64, device=device)
    world, rank = group_layout(group)
    everyone = [torch.empty_like(mine) for _ in range(world)]
    try:
        dist.all_gather(everyone, mine, group=group)
    except RuntimeError as error:
        raise RuntimeError(
            f"{op}: rank {rank} could not reach every rank of the group ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no details'}); every rank of the group must make "
            "the same call"
        ) from error
    table = torch.stack(everyone).tolist()
    for index, name in enumerate(facts):
        differing = [other for other in range(world) if table[other][index] != table[rank][index]]
        if differing:
            raise ValueError(
                f"{op}: {name} differs between ranks (rank {rank} has {facts[name]}; ranks {differing} differ): "
                "every rank must pass shards of the same shape, dtype and options"
            )
