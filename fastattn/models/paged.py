"""Serving many prompts at once from a paged KV cache, with continuous batching.

The keys and values of every layer live in one pool of fixed-size pages (vLLM's PagedAttention, the
layout of FlashAttention-2's ``block_table``): a sequence owns the pages its length needs, listed in
its row of a page table, so sequences of any length share the pool without padding or copies. The
loop of :func:`generate`:

- admit waiting prompts while there are free slots and pages (all pages a sequence can need are
  reserved on admission, so a running sequence never waits for one), and prefill them together in
  one packed row (``fastattn.attention_varlen``), their keys written into their pages;
- decode one token for every running sequence (``flash_attn_with_kvcache``'s op on the pages: the
  new key appended in place, the split-KV kernels);
- a sequence that has its tokens (or drew ``eos_id``) frees its pages, and with ``continuous=True``
  a waiting prompt takes its place at once; else new prompts wait for the whole batch to finish.

Sampling draws each token with the seed of (``seed``, the prompt's index, the step): the same tokens
as :func:`fastattn.models.decoding.generate` for the same seed, whatever the batching.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops.attention import attention_varlen
from ..ops.kvcache import PAGE_MULTIPLE, attention_with_kvcache
from .decoding import Sampling


class PagePool:
    """Pages of keys and values for every layer: ``keys``, ``values`` ``(layers, num_pages, page_size,
    Hkv, D)``; pages are handed out and taken back by index."""

    def __init__(self, layers: int, num_pages: int, page_size: int, n_kv_heads: int, head_dim: int, *, dtype, device):
        if page_size % PAGE_MULTIPLE:
            raise ValueError(f"page_size must be a multiple of {PAGE_MULTIPLE}, got {page_size}")
        shape = (layers, num_pages, page_size, n_kv_heads, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.page_size = page_size
        self._free = list(range(num_pages - 1, -1, -1))

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise RuntimeError(f"the page pool has {len(self._free)} free pages, {count} asked for")
        return [self._free.pop() for _ in range(count)]

    def release(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))


@dataclass
class _Sequence:
    index: int  # the prompt's position in the list: its seed stream and its result's place
    tokens: list[int]  # prompt, then the tokens drawn
    prompt_len: int
    pages: list[int]
    cached: int = 0  # positions whose keys are in the pages
    done: bool = False

    @property
    def steps(self) -> int:
        return len(self.tokens) - self.prompt_len


class _PagedLayer:
    """One layer's view of the pool for one forward pass: a packed prefill or a batched decode step.
    It stands where :class:`fastattn.models.decoding.KVCache` stands (the ``kv_cache`` of a block)."""

    def __init__(self, pool: PagePool, layer: int, table: Tensor, lengths: Tensor, cu_seqlens: Tensor | None):
        self.pool, self.layer, self.table, self.lengths, self.cu_seqlens = pool, layer, table, lengths, cu_seqlens

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, backend: str, **_) -> Tensor:
        """q ``(B, Hq, N, D)``, k, v ``(B, Hkv, N, D)`` of the new tokens; returns ``(B, Hq, N, D)``."""
        keys, values = self.pool.keys[self.layer], self.pool.values[self.layer]
        if self.cu_seqlens is None:  # decode: one new token per sequence, appended at its length
            out = attention_with_kvcache(
                q.transpose(1, 2),
                keys,
                values,
                k.transpose(1, 2),
                v.transpose(1, 2),
                cache_seqlens=self.lengths,
                block_table=self.table,
                causal=causal,
                backend=backend,
            )  # (B, 1, Hq, D)
            return out.transpose(1, 2)
        # prefill: the sequences packed in one row; their keys go to their pages, position by position
        q, k, v = (t[0].transpose(0, 1) for t in (q, k, v))  # (total, H, D)
        counts = self.cu_seqlens[1:] - self.cu_seqlens[:-1]
        sequence = torch.repeat_interleave(torch.arange(len(counts), device=q.device), counts.long())
        position = torch.arange(q.shape[0], device=q.device) - self.cu_seqlens[sequence]
        page = self.table[sequence, position // self.pool.page_size].long()
        keys[page, position % self.pool.page_size] = k
        values[page, position % self.pool.page_size] = v
        longest = int(counts.max())
        out = attention_varlen(
            q, k, v, self.cu_seqlens, self.cu_seqlens, longest, longest, causal=causal, backend=backend
        )
        return out.transpose(0, 1)[None]  # (1, Hq, total, D)


def _table(sequences: list[_Sequence], device) -> Tensor:
    width = max(len(s.pages) for s in sequences)
    return torch.tensor([s.pages + [0] * (width - len(s.pages)) for s in sequences], dtype=torch.int32, device=device)


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: list[Tensor],
    max_new_tokens: int,
    *,
    eos_id: int | None = None,
    max_batch: int = 8,
    page_size: int = 16,
    continuous: bool = True,
    on_finish=None,
    **sampling,
) -> list[Tensor]:
    """Continues each prompt (1-D int64 tensors of any lengths) by up to ``max_new_tokens`` tokens,
    serving at most ``max_batch`` at a time from a paged cache (see the module docstring); returns
    one tensor per prompt, prompt then tokens (ending at ``eos_id`` when drawn). ``on_finish(index,
    tokens)`` is called as each sequence finishes (in the order they do). ``sampling``: the fields of
    :class:`~fastattn.models.decoding.Sampling` (``temperature``, ``top_k``, ``top_p``, ``min_p``,
    ``seed``) as keyword arguments.

    ``model`` is a :class:`fastattn.models.GPT`; a prompt and its tokens must fit its context
    (``block_size``) positions: the paged path has no sliding context. Its backend must serve packed
    sequences (``cuda``, ``triton``, ``naive``; ``torch`` has none, and says so).
    """
    settings = Sampling(**sampling)  # a misspelt setting is a TypeError naming it
    if max_new_tokens < 1:
        return [prompt.clone() for prompt in prompts]
    context = model.config.block_size
    for index, prompt in enumerate(prompts):
        if prompt.dim() != 1 or len(prompt) == 0 or len(prompt) + max_new_tokens > context:
            raise ValueError(
                f"prompt {index}: a non-empty 1-D tensor whose length plus max_new_tokens ({max_new_tokens}) fits "
                f"the model's {context} positions, got shape {tuple(prompt.shape)}"
            )
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    weight = model.token_embedding.weight
    attention = model.blocks[0].self_attention
    per_sequence = math.ceil(context / page_size)
    pool = PagePool(
        len(model.blocks),
        max_batch * per_sequence,
        page_size,
        attention.n_kv_heads,
        attention.head_dim,
        dtype=weight.dtype,
        device=weight.device,
    )
    waiting = deque(range(len(prompts)))
    running: list[_Sequence] = []
    results: list[Tensor | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        while waiting or running:
            admitted = []
            while waiting and len(running) + len(admitted) < max_batch and (continuous or not running):
                prompt = prompts[waiting[0]]
                need = math.ceil((len(prompt) + max_new_tokens) / page_size)
                if need > pool.free_pages:
                    break
                index = waiting.popleft()
                admitted.append(_Sequence(index, prompt.tolist(), len(prompt), pool.allocate(need)))
            decoding = list(running)
            if admitted:
                _prefill(model, pool, admitted, settings, eos_id)
            if decoding:
                _decode(model, pool, decoding, settings, eos_id)
            running = decoding + admitted
            for sequence in running:
                if sequence.steps >= max_new_tokens:
                    sequence.done = True
                if sequence.done:
                    pool.release(sequence.pages)
                    results[sequence.index] = torch.tensor(sequence.tokens, device=weight.device)
                    if on_finish is not None:
                        on_finish(sequence.index, results[sequence.index])
            running = [s for s in running if not s.done]
        return results
    finally:
        model.train(was_training)


def _draw(logits: Tensor, sequences: list[_Sequence], sampling: Sampling, eos_id: int | None, backend) -> None:
    """One token for each sequence from its logits row ``(len(sequences), V)``."""
    tokens = sampling.draw(logits, [s.index for s in sequences], [s.steps for s in sequences], backend).tolist()
    for sequence, token in zip(sequences, tokens, strict=True):
        sequence.tokens.append(token)
        sequence.done |= eos_id is not None and token == eos_id


def _prefill(model, pool: PagePool, sequences: list[_Sequence], sampling: Sampling, eos_id) -> None:
    device = model.token_embedding.weight.device
    lengths = [len(s.tokens) for s in sequences]
    tokens = torch.tensor([t for s in sequences for t in s.tokens], device=device)[None]  # (1, total)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    table = _table(sequences, device)
    caches = [_PagedLayer(pool, layer, table, None, cu_seqlens) for layer in range(len(model.blocks))]
    logits = model.forward_paged(tokens, positions, caches)[0]  # (total, V)
    for sequence, length in zip(sequences, lengths, strict=True):
        sequence.cached = length
    _draw(logits[cu_seqlens[1:].long() - 1], sequences, sampling, eos_id, model.backend)


def _decode(model, pool: PagePool, sequences: list[_Sequence], sampling: Sampling, eos_id) -> None:
    device = model.token_embedding.weight.device
    tokens = torch.tensor([s.tokens[-1] for s in sequences], device=device)[:, None]  # (B, 1)
    lengths = torch.tensor([s.cached for s in sequences], dtype=torch.int32, device=device)
    table = _table(sequences, device)
    caches = [_PagedLayer(pool, layer, table, lengths, None) for layer in range(len(model.blocks))]
    logits = model.forward_paged(tokens, lengths[:, None].long(), caches)[:, -1]  # (B, V)
    for sequence in sequences:
        sequence.cached += 1
    _draw(logits, sequences, sampling, eos_id, model.backend)
