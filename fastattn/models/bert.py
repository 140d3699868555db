"""BERT: an encoder-only Transformer pre-trained as a masked language model (Devlin et al., 2019).

Sequences start with a ``[CLS]`` token (whose final hidden state, ``encode(...)[:, 0]``, summarizes the
sequence for downstream classifiers) and are right-padded with ``[PAD]``, which a key padding mask
keeps out of every attention. :func:`mask_tokens` picks 15% of the real tokens as prediction targets
and replaces 80% of those with ``[MASK]``, 10% with a random token and keeps 10%. Layers are post-norm
with GELU, as in BERT; the masked-LM head is dense, GELU, LayerNorm and a projection tied to the token
embedding. (The next-sentence task and segment embeddings are left out: the masked LM alone is what
the pre-training here needs.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastattn.nn import LayerNorm

from .layers import Block, init_weights

IGNORE_INDEX = -100  # label of the positions that are not predicted


@dataclass
class BERTConfig:
    vocab_size: int
    max_seq_len: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 512
    dropout: float = 0.1
    norm_first: bool = False  # BERT is post-norm
    pad_id: int = 0
    cls_id: int = 1
    mask_id: int = 2


def mask_tokens(
    tokens: Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    maskable: Tensor,
    generator: torch.Generator | None = None,
    mask_prob: float = 0.15,
    first_regular_id: int = 0,
) -> tuple[Tensor, Tensor]:
    """BERT's masking. tokens: int64 ``(B, N)``; maskable: bool ``(B, N)``, the positions that may be
    chosen (not ``[CLS]`` or ``[PAD]``). Each maskable position is chosen with probability ``mask_prob``;
    a chosen position becomes ``[MASK]`` with probability 0.8, a random token in
    ``first_regular_id .. vocab_size - 1`` with 0.1, and stays as it is with 0.1.

    Returns ``(inputs, labels)``, both ``(B, N)``: labels hold the original token at chosen positions and
    ``IGNORE_INDEX`` elsewhere. Draws from ``generator`` (CPU) so that a seed fixes the masks.
    """
    draws = torch.rand(tokens.shape + (2,), generator=generator).to(tokens.device)  # (B, N, 2)
    chosen = (draws[..., 0] < mask_prob) & maskable  # (B, N)
    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE_INDEX))
    random_tokens = torch.randint(first_regular_id, vocab_size, tokens.shape, generator=generator).to(tokens.device)
    inputs = torch.where(chosen & (draws[..., 1] < 0.8), torch.full_like(tokens, mask_id), tokens)
    inputs = torch.where(chosen & (draws[..., 1] >= 0.8) & (draws[..., 1] < 0.9), random_tokens, inputs)
    return inputs, labels


class BERT(nn.Module):
    """Token and learned position embeddings with a LayerNorm, ``n_layer`` bidirectional blocks with key
    padding masks, and the masked-LM head."""

    def __init__(self, config: BERTConfig, *, backend: str = "auto") -> None:
        super().__init__()
        self.config, self.backend = config, backend
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_seq_len, config.d_model)
        self.embedding_norm = LayerNorm(config.d_model, eps=1e-12, backend=backend)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(
                config.d_model,
                config.n_head,
                config.d_ff,
                norm_first=config.norm_first,
                activation="gelu",
                dropout=config.dropout,
                norm_eps=1e-12,
                backend=backend,
            )
            for _ in range(config.n_layer)
        )
        self.final_norm = LayerNorm(config.d_model, eps=1e-12, backend=backend) if config.norm_first else None
        self.head_dense = nn.Linear(config.d_model, config.d_model)
        self.head_norm = LayerNorm(config.d_model, eps=1e-12, backend=backend)
        self.head_output = nn.Linear(config.d_model, config.vocab_size)
        self.apply(init_weights)
        self.head_output.weight = self.token_embedding.weight

    def encode(self, tokens: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """tokens: int64 ``(B, N)`` starting with ``[CLS]``; key_padding_mask: bool ``(B, N)``, True = a
        real token (default: ``tokens != pad_id``). Returns the hidden states ``(B, N, C)``."""
        if key_padding_mask is None:
            key_padding_mask = tokens != self.config.pad_id
        positions = torch.arange(tokens.shape[1], device=tokens.device)  # (N,)
        x = self.token_embedding(tokens) + self.position_embedding(positions)  # (B, N, C)
        x = self.dropout(self.embedding_norm(x))
        for block in self.blocks:
            x = block(x, key_padding_mask=key_padding_mask)  # (B, N, C)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def forward(
        self, tokens: Tensor, labels: Tensor | None = None, key_padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Masked-LM logits ``(B, N, V)`` and, with ``labels`` (``(B, N)``, ``IGNORE_INDEX`` where nothing is
        predicted, as from :func:`mask_tokens`), the mean cross-entropy over the predicted positions."""
        hidden = self.encode(tokens, key_padding_mask)
        logits = self.head_output(self.head_norm(F.gelu(self.head_dense(hidden))))  # (B, N, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss
