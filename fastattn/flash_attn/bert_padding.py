"""The padding helpers of FlashAttention-2's ``flash_attn.bert_padding``: between a padded batch
``(batch, seqlen, ...)`` with its mask and the packed ``(total, ...)`` rows the varlen functions take.
All of them are differentiable."""

from __future__ import annotations

import torch
from torch import Tensor


def index_first_axis(tensor: Tensor, indices: Tensor) -> Tensor:
    """The rows ``indices`` of ``tensor``'s first axis."""
    return tensor[indices]


def unpad_input(hidden_states: Tensor, attention_mask: Tensor, unused_mask: Tensor | None = None):
    """Packs the tokens of a padded batch.

    Args:
        hidden_states: ``(batch, seqlen, ...)``.
        attention_mask: ``(batch, seqlen)``, bool or 0/1: the tokens.
        unused_mask: ``(batch, seqlen)``: slots that are packed too but hold no token (counted in
            ``cu_seqlens``, not in the used lengths).

    Returns:
        ``(packed (total, ...), indices (total,) into the flattened batch, cu_seqlens int32 (batch + 1,),
        max_seqlen int, used_seqlens int32 (batch,))``.
    """
    packed_mask = attention_mask.bool() if unused_mask is None else attention_mask.bool() | unused_mask.bool()
    seqlens = packed_mask.sum(dim=-1, dtype=torch.int32)  # (batch,)
    used_seqlens = attention_mask.bool().sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(packed_mask.flatten(), as_tuple=False).flatten()  # in batch, then token, order
    max_seqlen = int(seqlens.max()) if seqlens.numel() else 0
    cu_seqlens = torch.zeros(len(seqlens) + 1, dtype=torch.int32, device=seqlens.device)
    cu_seqlens[1:] = seqlens.cumsum(0)
    return index_first_axis(hidden_states.flatten(0, 1), indices), indices, cu_seqlens, max_seqlen, used_seqlens


def pad_input(hidden_states: Tensor, indices: Tensor, batch: int, seqlen: int) -> Tensor:
    """The inverse of :func:`unpad_input`: ``(batch, seqlen, ...)`` with the packed rows at ``indices``
    and zeros elsewhere."""
    padded = hidden_states.new_zeros((batch * seqlen, *hidden_states.shape[1:]))
    return padded.index_put((indices,), hidden_states).view(batch, seqlen, *hidden_states.shape[1:])
