"""Autoregressive decoding with a KV cache, split the way gpt-fast splits it: :func:`prefill` runs the
prompt once and fills the caches, :func:`decode_one_token` runs one new token as a single query row
against the cache (``fastattn.attention`` with ``Nq = 1 < Nk``, bottom-right causal), and
:func:`generate` loops, drawing every token with :func:`fastattn.sample`.

A model that decodes this way (``GPT``, the decoder of ``Transformer``) provides:

- ``setup_caches(batch_size, max_seq_len)``: one :class:`KVCache` per self-attention layer;
- ``forward_with_cache(tokens, start_pos, **context) -> logits (B, N, V)``: ``tokens`` ``(B, N)`` sit at
  positions ``start_pos .. start_pos + N - 1``; their keys and values are written into the caches;
- ``max_seq_len``: the most positions it can attend over; ``backend``: the backend for sampling.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

import fastattn


class KVCache(nn.Module):
    """The keys and values of one attention layer for the positions decoded so far.

    Buffers ``keys`` and ``values``: ``(B, Hkv, max_seq_len, D)``, not part of the ``state_dict``.
    A layer given a cache calls its :meth:`attend` (:mod:`fastattn.models.paged` has a paged one).
    """

    def __init__(self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int, *, dtype=None, device=None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("keys", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start_pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Writes k, v ``(B, Hkv, N, D)`` at positions ``start_pos .. start_pos + N - 1`` and returns the
        keys and values of every position up to the last written, ``(B, Hkv, start_pos + N, D)``."""
        batch, end = k.shape[0], start_pos + k.shape[2]
        if batch > self.keys.shape[0] or end > self.keys.shape[2]:
            raise ValueError(
                f"KV cache of batch {self.keys.shape[0]} and {self.keys.shape[2]} positions cannot hold "
                f"batch {batch} up to position {end}"
            )
        self.keys[:batch, :, start_pos:end] = k
        self.values[:batch, :, start_pos:end] = v
        return self.keys[:batch, :, :end], self.values[:batch, :, :end]

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, *, start_pos: int, causal: bool, key_padding_mask, backend: str
    ) -> Tensor:
        """Writes the new keys and values at ``start_pos ..`` and returns the attention of ``q``
        ``(B, Hq, N, D)`` over every cached position up to theirs (bottom-right causal)."""
        k, v = self.update(start_pos, k, v)  # (B, Hkv, start_pos + N, D)
        return fastattn.attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, backend=backend)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def sequence_seeds(seed: int, sequences, steps, device) -> Tensor:
    """The sampling seed of each draw: a hash (splitmix64) of ``seed``, the sequence's index and the
    step, as an int64 ``(B,)`` tensor; so a sequence's tokens depend on the seed and its index, not on
    the batch it is drawn in (the contiguous and the paged, continuously batched, paths agree)."""
    mixed = [
        _splitmix64(_splitmix64(_splitmix64(seed & 0xFFFFFFFFFFFFFFFF) ^ index) ^ step) >> 1
        for index, step in zip(sequences, steps, strict=True)
    ]
    return torch.tensor(mixed, dtype=torch.int64, device=device)


def make_caches(blocks: nn.ModuleList, batch_size: int, max_seq_len: int, *, dtype, device) -> nn.ModuleList:
    """One :class:`KVCache` per block of ``blocks`` (:class:`fastattn.models.layers.Block`), sized for
    its self-attention."""
    return nn.ModuleList(
        KVCache(
            batch_size,
            block.self_attention.n_kv_heads,
            max_seq_len,
            block.self_attention.head_dim,
            dtype=dtype,
            device=device,
        )
        for block in blocks
    )


@torch.no_grad()
def prefill(model: nn.Module, tokens: Tensor, **context) -> Tensor:
    """Runs the prompt ``tokens`` ``(B, N)`` at positions ``0 .. N-1``, filling the caches; returns the
    logits of the next token, ``(B, V)``."""
    return model.forward_with_cache(tokens, 0, **context)[:, -1]  # (B, V)


@torch.no_grad()
def decode_one_token(model: nn.Module, token: Tensor, position: int, **context) -> Tensor:
    """Runs one token per row, ``(B, 1)``, at ``position`` against the cache; returns the logits of the
    next token, ``(B, V)``."""
    return model.forward_with_cache(token, position, **context)[:, -1]  # (B, V)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How :func:`generate` (and :func:`fastattn.models.paged.generate`) draws each token: with
    :func:`fastattn.sample`'s ``temperature`` (0 = greedy), ``top_k``, ``top_p`` and ``min_p``. ``seed``
    makes the draws repeatable: sequence ``i``'s draw at step ``t`` has the seed :func:`sequence_seeds`
    gives ``(seed, i, t)``, so its tokens depend on the seed and its index, not on the batch it is drawn
    in, nor on the backend. The ``generate`` functions take these fields as keyword arguments."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None

    def draw(self, logits: Tensor, sequences, steps, backend) -> Tensor:
        """One token per row of ``logits`` ``(B, V)``, row ``b`` being sequence ``sequences[b]`` at step
        ``steps[b]``; ``(B,)`` int64."""
        filters = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # no copies
        seed = filters.pop("seed")  # the rest are fastattn.sample's own arguments
        seeds = None if seed is None else sequence_seeds(seed, sequences, steps, logits.device)
        return fastattn.sample(logits, **filters, seed=seeds, backend=backend)


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    eos_id: int | None = None,
    context: dict | None = None,
    **sampling,
) -> Tensor:
    """Extends ``prompt`` ``(B, N)`` by up to ``max_new_tokens`` tokens; returns ``(B, N + T)``.

    Every token is drawn as ``sampling`` says: the fields of :class:`Sampling` (``temperature``,
    ``top_k``, ``top_p``, ``min_p``, ``seed``) as keyword arguments, so the same seed gives the same
    tokens on every backend and in :func:`fastattn.models.paged.generate`.
    With ``eos_id``, a row that has drawn it keeps repeating it, and decoding stops once every row has.
    ``context``: keyword arguments for ``model.forward_with_cache`` (the encoder's output, for a
    decoder).

    When the sequence outgrows ``model.max_seq_len`` positions, the last ``max_seq_len // 2`` tokens
    are prefilled again at positions 0.. and decoding goes on from there (a sliding context).
    """
    settings = Sampling(**sampling)  # a misspelt setting is a TypeError naming it
    context = context or {}
    if max_new_tokens < 1:
        return prompt
    was_training = model.training
    model.eval()
    try:
        batch, prompt_len = prompt.shape
        window = model.max_seq_len
        model.setup_caches(batch, min(window, prompt_len + max_new_tokens))
        rows = range(batch)
        tokens = prompt
        logits = prefill(model, tokens[:, -window:], **context)  # (B, V)
        position = min(prompt_len, window)
        finished = torch.zeros(batch, dtype=torch.bool, device=prompt.device)
        for step in range(max_new_tokens):
            next_token = settings.draw(logits, rows, [step] * batch, model.backend)  # (B,)
            if eos_id is not None:
                next_token = torch.where(finished, torch.full_like(next_token, eos_id), next_token)
                finished |= next_token == eos_id
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (B, N + step + 1)
            if step + 1 == max_new_tokens or (eos_id is not None and bool(finished.all())):
                break
            if position < window:
                logits = decode_one_token(model, next_token[:, None], position, **context)
                position += 1
            else:
                kept = window // 2
                logits = prefill(model, tokens[:, -kept:], **context)
                position = kept
        return tokens
    finally:
        model.train(was_training)
