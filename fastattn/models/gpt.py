"""GPT: a decoder-only, pre-norm, causal Transformer language model (GPT-2's layout, after nanoGPT),
with a KV cache for generation (gpt-fast's ``prefill`` / ``decode_one_token`` / ``generate``).

    model = GPT(GPTConfig(vocab_size=65))
    logits, loss = model(idx, targets)                            # (B, N, V), scalar
    out = model.generate(prompt, 200, temperature=0.8, top_k=40, seed=0)
    outs = fastattn.models.paged.generate(model, [p1, p2, p3], 200, seed=0)  # prompts of any lengths
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastattn.nn import LayerNorm

from . import decoding
from .layers import Block, init_weights


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64  # the context: the most positions the model attends over
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # fewer key/value heads than n_head: grouped-query attention
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True


class GPT(nn.Module):
    """Token and learned position embeddings, ``n_layer`` pre-norm causal blocks, a final LayerNorm and
    a language-model head tied to the token embedding."""

    def __init__(self, config: GPTConfig, *, backend: str = "auto") -> None:
        super().__init__()
        self.config, self.backend = config, backend
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(
                config.n_embd,
                config.n_head,
                4 * config.n_embd,
                n_kv_heads=config.n_kv_head,
                norm_first=True,
                activation="gelu",
                dropout=config.dropout,
                bias=config.bias,
                backend=backend,
            )
            for _ in range(config.n_layer)
        )
        self.final_norm = LayerNorm(config.n_embd, bias=config.bias, backend=backend)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # weight tying
        self.kv_caches: nn.ModuleList | None = None
        self.apply(init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith("out.weight") or name.endswith("down.weight"):  # GPT-2: scaled residual projections
                torch.nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @property
    def max_seq_len(self) -> int:
        return self.config.block_size

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """idx: int64 ``(B, N)`` with ``N <= block_size``; targets: ``(B, N)`` (-100 = ignore) or None;
        positions: int64 ``(N,)``, the positions of idx's tokens when they are not ``0 .. N-1`` (this
        process's shard of a longer sequence, under context parallelism). Returns the logits
        ``(B, N, V)`` and the mean cross-entropy (None without targets)."""
        logits = self._run(idx, start_pos=None, positions=positions)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def forward_with_cache(self, idx: Tensor, start_pos: int) -> Tensor:
        """idx ``(B, N)`` at positions ``start_pos ..``, attending to the cached positions too; their keys
        and values join the caches (:meth:`setup_caches` first). Returns the logits ``(B, N, V)``."""
        if self.kv_caches is None:
            raise RuntimeError("call setup_caches(batch_size, max_seq_len) before forward_with_cache")
        return self._run(idx, start_pos=start_pos)

    def forward_paged(self, idx: Tensor, positions: Tensor, caches: list) -> Tensor:
        """idx ``(B, N)`` at ``positions`` ``(B, N)`` (each token its own), every block attending through
        its cache of ``caches`` (a paged pool's layers, :mod:`fastattn.models.paged`): a packed prefill
        or a decode step. Returns the logits ``(B, N, V)``."""
        x = self.token_embedding(idx) + self.position_embedding(positions)  # (B, N, C)
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block(x, causal=True, kv_cache=cache)
        return self.lm_head(self.final_norm(x))  # (B, N, V)

    def _run(self, idx: Tensor, start_pos: int | None, positions: Tensor | None = None) -> Tensor:
        batch, n = idx.shape
        offset = 0 if start_pos is None else start_pos
        if offset + n > self.config.block_size:
            raise ValueError(f"positions up to {offset + n} exceed block_size {self.config.block_size}")
        if positions is None:
            positions = torch.arange(offset, offset + n, device=idx.device)  # (N,)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))  # (B, N, C)
        for index, block in enumerate(self.blocks):
            cache = None if start_pos is None else self.kv_caches[index]
            x = block(x, causal=True, kv_cache=cache, start_pos=offset)  # (B, N, C)
        return self.lm_head(self.final_norm(x))  # (B, N, V)

    def setup_caches(self, batch_size: int, max_seq_len: int) -> None:
        """Allocates one KV cache per layer for ``batch_size`` rows and ``max_seq_len`` positions."""
        if max_seq_len > self.config.block_size:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds block_size {self.config.block_size}")
        weight = self.token_embedding.weight
        self.kv_caches = decoding.make_caches(
            self.blocks, batch_size, max_seq_len, dtype=weight.dtype, device=weight.device
        )

    def generate(self, prompt: Tensor, max_new_tokens: int, **sampling) -> Tensor:
        """Continues ``prompt`` ``(B, N)`` by ``max_new_tokens`` tokens drawn with :func:`fastattn.sample`;
        returns ``(B, N + max_new_tokens)``. ``sampling``: ``temperature`` (0: greedy), ``top_k``,
        ``top_p``, ``min_p``, ``seed`` and ``eos_id``, as :func:`fastattn.models.decoding.generate` takes
        them."""
        return decoding.generate(self, prompt, max_new_tokens, **sampling)
