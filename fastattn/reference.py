"""Textbook versions of every fastattn op, in plain PyTorch.

They are the oracle of the tests (run on float64 inputs), the ``naive`` backend, and the baseline of
the benchmarks. They favour the obvious formula over speed or memory: attention materializes the
full ``(Nq, Nk)`` score matrix, and sampling sorts the vocabulary.

Each function computes in the dtype it is given, except where the op's contract fixes a precision
(norm statistics in float32 at least); the tests call them on float64 inputs for the exact answer and
on the test dtype for the rounding error a plain implementation makes.
"""

from __future__ import annotations

import torch
from torch import Tensor


# --------------------------------------------------------------------------------------- attention
def attention_visibility(
    batch: int, nq: int, nk: int, *, causal: bool, key_padding_mask: Tensor | None, device
) -> Tensor:
    """Bool ``(B, 1, Nq, Nk)``: True where query ``i`` may attend to key ``j``.

    Causal masks are aligned to the bottom-right corner: query ``i`` sees key ``j`` iff
    ``j <= i + (Nk - Nq)``.
    """
    visible = torch.ones(batch, 1, nq, nk, dtype=torch.bool, device=device)
    if causal:
        i = torch.arange(nq, device=device)[:, None]
        j = torch.arange(nk, device=device)[None, :]
        visible = visible & (j <= i + (nk - nq))
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :]
    return visible


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    dropout_keep: Tensor | None = None,
    return_lse: bool = False,
):
    """softmax(scale · q kᵀ + mask) v, the way a textbook writes it.

    q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D) with Hq % Hkv == 0 (query head h reads key/value head
    h // (Hq / Hkv)). key_padding_mask: bool (B, Nk), True = the key takes part. Rows that see no key
    give zeros and lse = -inf.

    Dropout: with ``dropout_p > 0`` the probabilities are multiplied by ``keep / (1 - dropout_p)``
    where ``keep`` is ``dropout_keep`` (bool, broadcastable to (B, Hq, Nq, Nk); pass the kernel's own
    mask to compare against it) or, if None, a fresh Bernoulli draw. ``lse`` is that of the scores
    before dropout.
    """
    batch, heads_q, nq, head_dim = q.shape
    heads_kv, nk = k.shape[1], k.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    group = heads_q // heads_kv
    k = k.repeat_interleave(group, dim=1)  # (B, Hq, Nk, D)
    v = v.repeat_interleave(group, dim=1)  # (B, Hq, Nk, D)

    scores = scale * (q @ k.transpose(-1, -2))  # (B, Hq, Nq, Nk)
    visible = attention_visibility(
        batch, nq, nk, causal=causal, key_padding_mask=key_padding_mask, device=q.device
    )
    scores = scores.masked_fill(~visible, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True) if nk > 0 else scores.new_full((batch, heads_q, nq, 1), -torch.inf)
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)  # rows with no key
    exp_scores = torch.exp(scores - row_max)  # masked entries: exp(-inf) = 0
    denominator = exp_scores.sum(dim=-1, keepdim=True)
    probs = exp_scores / torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    lse = (row_max + torch.log(denominator)).squeeze(-1)  # log(0) = -inf for rows with no key

    if dropout_p > 0.0:
        if dropout_keep is None:
            dropout_keep = torch.rand_like(probs) >= dropout_p
        probs = probs * dropout_keep / (1.0 - dropout_p)
    out = probs @ v  # (B, Hq, Nq, D)
    if return_lse:
        return out, lse.float() if lse.dtype != torch.float64 else lse
    return out


# ------------------------------------------------------------------------------------------- norms
def _statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Norm statistics are float32 at least (float64 inputs keep float64, for the oracle)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _add_residual(x: Tensor, residual: Tensor | None, residual_in_fp32: bool):
    """``s = x + residual`` in the statistics dtype, and ``s`` as returned to the caller."""
    compute = _statistics_dtype(x.dtype)
    if residual is None:
        return x.to(compute), None
    total = x.to(compute) + residual.to(compute)
    stored_dtype = torch.float32 if residual_in_fp32 and x.dtype != torch.float64 else x.dtype
    return total, total.to(stored_dtype)


def _normalized_dims(x: Tensor, normalized_shape) -> tuple[int, ...]:
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return tuple(range(x.dim() - len(normalized_shape), x.dim()))


def layer_norm(
    x: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    residual: Tensor | None = None,
    residual_in_fp32: bool = False,
):
    """(s - mean(s)) / sqrt(var(s) + eps) · weight + bias over the trailing ``normalized_shape``,
    where ``s = x + residual`` (or ``x``). The variance is the biased one (divide by N), as in
    ``torch.nn.functional.layer_norm``. With ``residual`` returns ``(y, s)``."""
    total, stored = _add_residual(x, residual, residual_in_fp32)
    dims = _normalized_dims(x, normalized_shape)
    mean = total.mean(dim=dims, keepdim=True)
    variance = ((total - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (total - mean) / torch.sqrt(variance + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    y = y.to(x.dtype)
    return y if residual is None else (y, stored)


def rms_norm(
    x: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    eps: float = 1e-6,
    *,
    residual: Tensor | None = None,
    residual_in_fp32: bool = False,
):
    """s / sqrt(mean(s²) + eps) · weight over the trailing ``normalized_shape``, where
    ``s = x + residual`` (or ``x``). With ``residual`` returns ``(y, s)``."""
    total, stored = _add_residual(x, residual, residual_in_fp32)
    dims = _normalized_dims(x, normalized_shape)
    y = total / torch.sqrt((total * total).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    y = y.to(x.dtype)
    return y if residual is None else (y, stored)
