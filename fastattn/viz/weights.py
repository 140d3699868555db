"""Attention probabilities of a fastattn model, recovered exactly from the fused kernel's log-sum-exp.

The fused kernels never store the ``(Nq, Nk)`` matrix of probabilities. Each call of
:func:`fastattn.attention` can return ``lse_i = log Σ_j exp(scale · q_i·k_j)`` over the keys query ``i``
sees, and that is all it takes to rebuild any row afterwards:

    P_ij = exp(scale · q_i·k_j − lse_i)     for visible keys j,    0 otherwise.

:func:`record_attention` captures ``q``, ``k``, the mask and ``lse`` of every attention call a model
makes; :func:`attention_weights` runs a model on one input and turns the captures into probabilities.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import fastattn
from fastattn.models.layers import AttentionLayer
from fastattn.reference import attention_visibility


@dataclass
class AttentionCall:
    """What one :func:`fastattn.attention` call of a model saw: ``q`` ``(B, Hq, Nq, D)``, ``k``
    ``(B, Hkv, Nk, D)``, the masks and scale it was given, and the kernel's ``lse`` float32 ``(B, Hq, Nq)``.
    ``name`` is the calling :class:`~fastattn.models.layers.AttentionLayer`'s path in the model,
    e.g. ``"blocks.0.self_attention"``."""

    name: str
    q: Tensor
    k: Tensor
    causal: bool
    key_padding_mask: Tensor | None
    scale: float
    lse: Tensor

    def probabilities(self, rows: Sequence[int] | None = None) -> Tensor:
        """float32 ``(B, Hq, len(rows), Nk)``: the attention probabilities of the query positions ``rows``
        (all of them when None), zero for keys the query cannot see; only those rows are computed."""
        batch, heads, nq, _ = self.q.shape
        nk = self.k.shape[2]
        rows = torch.arange(nq, device=self.q.device) if rows is None else torch.as_tensor(rows, device=self.q.device)
        q = self.q[:, :, rows].float()  # (B, Hq, R, D)
        k = self.k.float().repeat_interleave(heads // self.k.shape[1], dim=1)  # (B, Hq, Nk, D)
        lse = self.lse[:, :, rows]  # (B, Hq, R)
        visible = attention_visibility(
            batch, nq, nk, causal=self.causal, key_padding_mask=self.key_padding_mask, device=q.device
        )[:, :, rows]  # (B, 1, R, Nk)
        visible = visible & torch.isfinite(lse)[..., None]  # a row that sees no key has lse = -inf
        logits = self.scale * (q @ k.transpose(-1, -2)) - lse[..., None]  # (B, Hq, R, Nk)
        return torch.where(visible, torch.exp(logits), torch.zeros_like(logits))


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[list[AttentionCall]]:
    """Within the block, every :func:`fastattn.attention` call made by a
    :class:`~fastattn.models.layers.AttentionLayer` of ``model`` also asks the kernel for its
    ``lse``, and is appended, in call order, to the list the block receives.

    Where the model's backend cannot return the lse (``torch``: PyTorch's SDPA does not), the recorded
    calls run on the backend ``"auto"`` picks among those that can.

    It rebinds ``fastattn.attention`` for the duration of the block (calls from elsewhere pass through
    unchanged), so, like :func:`fastattn.patch_sdpa`, it affects every thread while the block runs.

    >>> with record_attention(model) as calls:
    ...     model(tokens)
    >>> calls[0].probabilities().shape      # (B, H, N, N)
    """
    calls: list[AttentionCall] = []
    running: list[str] = []  # the path of the AttentionLayer that is running, innermost last
    fused_attention = fastattn.attention

    def attention_recording_lse(q, k, v, *, causal=False, scale=None, key_padding_mask=None, **options):
        if not running or options.get("return_lse", False):
            return fused_attention(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask, **options)
        arguments = dict(causal=causal, scale=scale, key_padding_mask=key_padding_mask, return_lse=True)
        try:
            out, lse = fused_attention(q, k, v, **arguments, **options)
        except NotImplementedError:  # a backend without the lse (torch's SDPA): the first that has it
            out, lse = fused_attention(q, k, v, **arguments, **{**options, "backend": "auto"})
        calls.append(
            AttentionCall(
                name=running[-1],
                q=q.detach(),
                k=k.detach(),
                causal=causal,
                key_padding_mask=None if key_padding_mask is None else key_padding_mask.detach(),
                scale=q.shape[-1] ** -0.5 if scale is None else scale,
                lse=lse.detach(),
            )
        )
        return out

    def leave(_module, _args, _output) -> None:
        running.pop()

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, AttentionLayer):
            handles.append(module.register_forward_pre_hook(lambda _module, _args, name=name: running.append(name)))
            handles.append(module.register_forward_hook(leave))
    fastattn.attention = attention_recording_lse
    try:
        yield calls
    finally:
        fastattn.attention = fused_attention
        for handle in handles:
            handle.remove()


@dataclass
class LayerAttention:
    """The attention probabilities of one attention layer on one input: ``weights`` float32
    ``(H, len(rows), Nk)``, row ``r`` being query position ``rows[r]``."""

    name: str
    weights: Tensor
    rows: list[int]


@torch.no_grad()
def attention_weights(model: nn.Module, tokens: Tensor, rows: Sequence[int] | None = None) -> list[LayerAttention]:
    """Runs ``model(tokens[None])`` once (in eval mode, no gradients) and returns, per attention layer in
    call order, the attention probabilities of every head for the query positions ``rows`` (all when
    None), recovered exactly from the fused pass (see the module's docstring): the full ``(N, N)``
    matrix is never stored by the kernel, and here only the rows asked for are formed.

    ``tokens``: int64 ``(N,)``, one input of a model called as ``model(tokens)`` with ``(B, N)`` tokens
    (:class:`~fastattn.models.GPT`, :class:`~fastattn.models.BERT`). For other call signatures, e.g. the
    encoder–decoder, use :func:`record_attention` around the call directly.
    """
    was_training = model.training
    model.eval()
    try:
        with record_attention(model) as calls:
            model(tokens[None])
    finally:
        model.train(was_training)
    layers = []
    for call in calls:
        selected = list(range(call.q.shape[2])) if rows is None else list(rows)
        layers.append(LayerAttention(name=call.name, weights=call.probabilities(selected)[0], rows=selected))
    return layers
