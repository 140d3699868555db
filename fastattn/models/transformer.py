"""The encoder–decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

- Inputs: token embeddings scaled by √d_model plus sinusoidal positional encodings, then dropout.
- Encoder layer: ``x = LN(x + MHA(x))``, ``x = LN(x + FFN(x))`` (post-norm, §3.1), FFN = Linear, ReLU,
  Linear; the Add & Norm is fastattn's fused residual LayerNorm.
- Decoder layer: masked (causal) self-attention, cross-attention whose queries come from the decoder
  and keys/values from the encoder's output, FFN; each with Add & Norm.
- Output: a linear projection tied to the target embedding, then softmax; the loss is cross-entropy
  with label smoothing (§5.4). Padding masks on both sides (``pad_id``).
- ``norm_first=True`` gives the pre-norm variant (``x = x + f(LN(x))``, and a final LayerNorm on each
  stack), which trains more stably without a long warm-up.

Decoding (:meth:`Transformer.generate`) starts from ``<bos>`` and stops at ``<eos>``, greedily or with
``fastattn.sample``'s settings, with a KV cache for the decoder's self-attention and its cross-attention's keys and
values of the encoder's output worked out once per decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastattn.nn import LayerNorm

from . import decoding
from .layers import Block


def sinusoidal_positional_encoding(num_positions: int, d_model: int, base: float = 10000.0) -> Tensor:
    """The sinusoidal positional encodings of §3.5, float32 ``(num_positions, d_model)``:
    ``P[k, 2i] = sin(k / base^(2i/d))``, ``P[k, 2i+1] = cos(k / base^(2i/d))``."""
    positions = torch.arange(num_positions, dtype=torch.float64)[:, None]  # (N, 1)
    frequencies = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (ceil(d/2),)
    angles = positions * frequencies  # (N, ceil(d/2))
    encoding = torch.zeros(num_positions, d_model, dtype=torch.float64)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return encoding.float()


@dataclass
class TransformerConfig:
    source_vocab_size: int
    target_vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    dropout: float = 0.1
    label_smoothing: float = 0.1
    max_len: int = 256  # positions the encodings are precomputed for
    positional_base: float = 10000.0
    norm_first: bool = False  # False: the paper's post-norm; True: pre-norm
    pad_id: int = 0


class Transformer(nn.Module):
    """Encoder–decoder Transformer; the defaults of :class:`TransformerConfig` are the paper's base model."""

    def __init__(self, config: TransformerConfig, *, backend: str = "auto") -> None:
        super().__init__()
        self.config, self.backend = config, backend
        self.source_embedding = nn.Embedding(config.source_vocab_size, config.d_model)
        self.target_embedding = nn.Embedding(config.target_vocab_size, config.d_model)
        self.register_buffer(
            "positional_encoding",
            sinusoidal_positional_encoding(config.max_len, config.d_model, config.positional_base),
            persistent=False,
        )
        self.dropout = nn.Dropout(config.dropout)
        layer = dict(norm_first=config.norm_first, activation="relu", dropout=config.dropout, backend=backend)
        self.encoder = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.d_ff, **layer) for _ in range(config.n_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.d_ff, cross_attention=True, **layer)
            for _ in range(config.n_decoder_layers)
        )
        self.encoder_norm = LayerNorm(config.d_model, backend=backend) if config.norm_first else None
        self.decoder_norm = LayerNorm(config.d_model, backend=backend) if config.norm_first else None
        self.output = nn.Linear(config.d_model, config.target_vocab_size, bias=False)
        self.kv_caches: nn.ModuleList | None = None
        self._memory_source: Tensor | None = None  # the memory whose keys and values _memory_cache holds
        self._memory_cache: list[tuple[Tensor, Tensor]] = []
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        self.output.weight = self.target_embedding.weight  # tied with the pre-softmax projection (§3.4)

    @property
    def max_seq_len(self) -> int:
        return self.config.max_len

    def _embed(self, embedding: nn.Embedding, tokens: Tensor, start_pos: int = 0) -> Tensor:
        n = tokens.shape[1]
        if start_pos + n > self.config.max_len:
            raise ValueError(f"positions up to {start_pos + n} exceed max_len {self.config.max_len}")
        position = self.positional_encoding[start_pos : start_pos + n]  # (N, C)
        return self.dropout(embedding(tokens) * math.sqrt(self.config.d_model) + position)  # (B, N, C)

    def encode(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """source: int64 ``(B, S)``, padded with ``pad_id``. Returns the encoder's output ``(B, S, C)`` and
        the bool key padding mask ``(B, S)`` (True = a real token)."""
        source_mask = source != self.config.pad_id  # (B, S)
        x = self._embed(self.source_embedding, source)  # (B, S, C)
        for block in self.encoder:
            x = block(x, key_padding_mask=source_mask)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return x, source_mask

    def decode(
        self,
        target: Tensor,
        memory: Tensor,
        memory_mask: Tensor,
        *,
        start_pos: int | None = None,
    ) -> Tensor:
        """target: int64 ``(B, T)``; memory: the encoder's output ``(B, S, C)`` and its mask ``(B, S)``.
        Returns the logits ``(B, T, V)``. With ``start_pos``, ``target`` sits at positions
        ``start_pos ..`` and the self-attention reads and extends the KV caches."""
        offset = 0 if start_pos is None else start_pos
        x = self._embed(self.target_embedding, target, offset)  # (B, T, C)
        target_mask = None if start_pos is not None else target != self.config.pad_id  # (B, T)
        memory_keys_values = [None] * len(self.decoder)
        if start_pos is not None:
            memory_keys_values = self._memory_keys_values(memory, start_pos)
        for index, block in enumerate(self.decoder):
            cache = None if start_pos is None else self.kv_caches[index]
            x = block(
                x,
                causal=True,
                key_padding_mask=target_mask,
                memory=memory,
                memory_padding_mask=memory_mask,
                kv_cache=cache,
                start_pos=offset,
                memory_keys_values=memory_keys_values[index],
            )  # (B, T, C)
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return self.output(x)  # (B, T, V)

    def _memory_keys_values(self, memory: Tensor, start_pos: int) -> list[tuple[Tensor, Tensor]]:
        """Each decoder layer's cross-attention keys and values of ``memory``, worked out at the first
        step of a decoding (``start_pos`` 0, or another memory) and reused by the later steps: the
        encoder's output does not change while the decoder runs, and projecting it again at every step
        would cost 2·S·C² multiply-adds per layer and token for a source of S tokens."""
        if start_pos == 0 or self._memory_source is not memory:
            self._memory_source = memory
            self._memory_cache = [block.cross_attention.keys_values(memory) for block in self.decoder]
        return self._memory_cache

    def forward(self, source: Tensor, target: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing. source ``(B, S)``; target ``(B, T)``: the decoder's input
        (``<bos> y1 .. y_{T-1}``); labels ``(B, T)``: what it should predict (``y1 .. y_T``), ``pad_id``
        where there is nothing. Returns the logits ``(B, T, V)`` and the label-smoothed cross-entropy
        over the non-pad labels."""
        memory, memory_mask = self.encode(source)
        logits = self.decode(target, memory, memory_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.flatten(0, 1),
                labels.flatten(),
                ignore_index=self.config.pad_id,
                label_smoothing=self.config.label_smoothing,
            )
        return logits, loss

    def setup_caches(self, batch_size: int, max_seq_len: int) -> None:
        """Allocates one KV cache per decoder layer (its self-attention)."""
        weight = self.target_embedding.weight
        self.kv_caches = decoding.make_caches(
            self.decoder, batch_size, max_seq_len, dtype=weight.dtype, device=weight.device
        )

    def forward_with_cache(self, target: Tensor, start_pos: int, *, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """The decoder on ``target`` ``(B, T)`` at positions ``start_pos ..`` against its KV caches;
        logits ``(B, T, V)``."""
        if self.kv_caches is None:
            raise RuntimeError("call setup_caches(batch_size, max_seq_len) before forward_with_cache")
        return self.decode(target, memory, memory_mask, start_pos=start_pos)

    @torch.no_grad()
    def generate(
        self,
        source: Tensor,
        *,
        bos_id: int,
        eos_id: int,
        max_new_tokens: int,
        **sampling,
    ) -> Tensor:
        """Translates ``source`` ``(B, S)``: decodes from ``<bos>`` until every row has drawn ``<eos>`` or
        ``max_new_tokens`` tokens, greedily (``temperature=0``, the default) or with the other settings
        of :class:`fastattn.models.decoding.Sampling` as keyword arguments. Returns ``(B, 1 + T)``
        starting with ``<bos>``; a finished row repeats ``<eos>``."""
        was_training = self.training
        self.eval()
        try:
            memory, memory_mask = self.encode(source)
        finally:
            self.train(was_training)
        start = torch.full((source.shape[0], 1), bos_id, dtype=torch.int64, device=source.device)
        return decoding.generate(
            self,
            start,
            max_new_tokens,
            eos_id=eos_id,
            context=dict(memory=memory, memory_mask=memory_mask),
            **{"temperature": 0.0, **sampling},
        )
