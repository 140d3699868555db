"""Rotary position embedding with FlashAttention-2's ``apply_rotary_emb`` signature and conventions."""

from __future__ import annotations

import torch
from torch import Tensor


def _positions(x: Tensor, seqlen_offsets, cu_seqlens: Tensor | None) -> Tensor:
    """The position of every row of ``x``: (batch, seqlen), or (total,) with ``cu_seqlens``."""
    if cu_seqlens is None:
        batch, seqlen = x.shape[0], x.shape[1]
        offsets = torch.as_tensor(seqlen_offsets, device=x.device).reshape(-1, 1).expand(batch, 1)
        return offsets + torch.arange(seqlen, device=x.device)[None, :]
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    sequence = torch.repeat_interleave(
        torch.arange(len(lengths), device=x.device), lengths.long(), output_size=x.shape[0]
    )
    offsets = torch.as_tensor(seqlen_offsets, device=x.device).reshape(-1).expand(len(lengths))
    return torch.arange(x.shape[0], device=x.device) - cu_seqlens[sequence] + offsets[sequence]


def apply_rotary_emb(
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    interleaved: bool = False,
    inplace: bool = False,
    seqlen_offsets: int | Tensor = 0,
    cu_seqlens: Tensor | None = None,
    max_seqlen: int | None = None,
) -> Tensor:
    """Rotates the first ``rotary_dim`` features of every head of ``x``.

    Args:
        x: ``(batch, seqlen, nheads, headdim)``, or ``(total, nheads, headdim)`` with ``cu_seqlens``.
        cos, sin: ``(seqlen_rotary, rotary_dim / 2)``; row ``p`` is the angle's cosine / sine at position ``p``.
        interleaved: rotate the pairs (0, 1), (2, 3), ... (GPT-J); else the halves (x_i, x_{i + rotary_dim/2})
            (GPT-NeoX).
        inplace: write the result into ``x``.
        seqlen_offsets: the first position: an int, or ``(batch,)`` (a KV cache's lengths).
        cu_seqlens: int32 ``(batch + 1,)`` offsets of packed sequences; ``max_seqlen`` is not needed.

    Returns:
        ``x`` with each pair ``(a, b)`` at position ``p`` turned into ``(a cos - b sin, a sin + b cos)``,
        computed in float32; the features past ``rotary_dim`` unchanged.
    """
    rotary_half = cos.shape[-1]
    rotary_dim = 2 * rotary_half
    if cos.shape != sin.shape or cos.dim() != 2:
        raise ValueError(
            f"cos and sin must be (seqlen_rotary, rotary_dim / 2), got {tuple(cos.shape)}, {tuple(sin.shape)}"
        )
    if rotary_dim > x.shape[-1]:
        raise ValueError(f"rotary_dim ({rotary_dim}) must be at most headdim ({x.shape[-1]})")
    positions = _positions(x, seqlen_offsets, cu_seqlens)
    if positions.numel() and int(positions.max()) >= cos.shape[0]:
        raise ValueError(f"positions reach {int(positions.max())}, past the {cos.shape[0]} rows of cos and sin")
    cos_at = cos[positions].float().unsqueeze(-2)  # (..., 1, rotary_dim / 2): one angle for every head
    sin_at = sin[positions].float().unsqueeze(-2)
    rotated = x[..., :rotary_dim].float()
    if interleaved:
        first, second = rotated[..., 0::2], rotated[..., 1::2]
    else:
        first, second = rotated[..., :rotary_half], rotated[..., rotary_half:]
    new_first, new_second = first * cos_at - second * sin_at, first * sin_at + second * cos_at
    if interleaved:
        rotated = torch.stack((new_first, new_second), dim=-1).flatten(-2)
    else:
        rotated = torch.cat((new_first, new_second), dim=-1)
    if inplace:
        x[..., :rotary_dim] = rotated.to(x.dtype)
        return x
    return torch.cat((rotated.to(x.dtype), x[..., rotary_dim:]), dim=-1)  # differentiable
