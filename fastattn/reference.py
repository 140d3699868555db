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
    batch: int,
    nq: int,
    nk: int,
    *,
    causal: bool,
    key_padding_mask: Tensor | None,
    device,
    window: tuple[int, int] | None = None,
) -> Tensor:
    """Bool ``(B, 1, Nq, Nk)``: True where query ``i`` may attend to key ``j``.

    Masks are aligned to the bottom-right corner (``off = Nk - Nq``): causal, query ``i`` sees key
    ``j`` iff ``j <= i + off``; ``window=(left, right)``, iff ``i + off - left <= j <= i + off + right``,
    a side of -1 being unlimited.
    """
    visible = torch.ones(batch, 1, nq, nk, dtype=torch.bool, device=device)
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    diagonal = i + (nk - nq)  # the key aligned with query i
    if causal:
        visible = visible & (j <= diagonal)
    if window is not None:
        left, right = window
        if left >= 0:
            visible = visible & (j >= diagonal - left)
        if right >= 0:
            visible = visible & (j <= diagonal + right)
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :]
    return visible


def alibi_bias(slopes: Tensor, batch: int, heads: int, nq: int, nk: int) -> Tensor:
    """``-slope · |i + off - j|`` (FlashAttention-2's ALiBi), ``(B, Hq, Nq, Nk)`` in float32 at least;
    ``slopes`` is ``(Hq,)`` or ``(B, Hq)``."""
    dtype = torch.promote_types(slopes.dtype, torch.float32)
    i = torch.arange(nq, device=slopes.device, dtype=dtype)[:, None]
    j = torch.arange(nk, device=slopes.device, dtype=dtype)[None, :]
    distance = (i + (nk - nq) - j).abs()  # (Nq, Nk)
    slopes = slopes.to(dtype).expand(batch, heads)  # (B, Hq)
    return -slopes[:, :, None, None] * distance


def attention_scores(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
    window: tuple[int, int] | None = None,
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
) -> Tensor:
    """The scores ``(B, Hq, Nq, Nk)`` of :func:`attention` in q's dtype: scaled, capped, ALiBi-biased,
    -inf where a key is invisible."""
    batch, heads_q, nq, head_dim = q.shape
    nk = k.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    k = k.repeat_interleave(heads_q // k.shape[1], dim=1)  # (B, Hq, Nk, D)
    scores = scale * (q @ k.transpose(-1, -2))  # (B, Hq, Nq, Nk)
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        scores = scores + alibi_bias(alibi_slopes, batch, heads_q, nq, nk).to(scores.dtype)
    visible = attention_visibility(
        batch, nq, nk, causal=causal, key_padding_mask=key_padding_mask, device=q.device, window=window
    )
    return scores.masked_fill(~visible, float("-inf"))


def attention_probabilities(
    q: Tensor,
    k: Tensor,
    *,
    sinks: Tensor | None = None,
    **options,
) -> tuple[Tensor, Tensor]:
    """``(probs, lse)``: the attention probabilities ``(B, Hq, Nq, Nk)`` of :func:`attention` (before
    dropout; a sink's mass is in the denominator, so a row sums to less than 1) and the natural-log
    normalizer ``(B, Hq, Nq)``, both in the scores' dtype. Rows that see no key: zeros and -inf (the
    sink's logit with ``sinks``). ``options``: those of :func:`attention_scores`."""
    scores = attention_scores(q, k, **options)
    batch, heads_q, nq, nk = scores.shape
    row_max = scores.amax(dim=-1, keepdim=True) if nk > 0 else scores.new_full((batch, heads_q, nq, 1), -torch.inf)
    if sinks is not None:
        sink = sinks.to(scores.dtype)[None, :, None, None].expand(batch, heads_q, nq, 1)  # (B, Hq, Nq, 1)
        row_max = torch.maximum(row_max, sink)
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)  # rows with no key
    exp_scores = torch.exp(scores - row_max)  # masked entries: exp(-inf) = 0
    denominator = exp_scores.sum(dim=-1, keepdim=True)
    if sinks is not None:
        denominator = denominator + torch.exp(sink - row_max)
    probs = exp_scores / torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    lse = (row_max + torch.log(denominator)).squeeze(-1)  # log(0) = -inf for rows with no key
    return probs, lse


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    dropout_p: float = 0.0,
    dropout_keep: Tensor | None = None,
    return_lse: bool = False,
    **options,
):
    """softmax(scale · q kᵀ + mask) v, the way a textbook writes it.

    q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D) with Hq % Hkv == 0 (query head h reads key/value head
    h // (Hq / Hkv)). ``options``: ``causal``, ``scale``, ``key_padding_mask`` (bool (B, Nk), True = the
    key takes part), ``window``, ``softcap``, ``alibi_slopes`` and ``sinks``, as :func:`fastattn.attention`
    takes them (:func:`attention_scores` and :func:`attention_probabilities` apply them). Rows that see
    no key give zeros and lse = -inf (the sink's logit with ``sinks``).

    For query ``i`` and key ``j``, in this order: ``s = scale · q_i·k_j``; with ``softcap > 0``,
    ``s = softcap · tanh(s / softcap)``; with ``alibi_slopes``, ``s += -slope · |i + off - j|``; then
    the causal, window and padding masks (:func:`attention_visibility`). ``sinks`` ``(Hq,)`` adds
    ``exp(sink_h)`` to each row's softmax denominator (probability mass with no value) and the lse
    includes it (:func:`attention_probabilities`).

    Dropout: with ``dropout_p > 0`` the probabilities are multiplied by ``keep / (1 - dropout_p)``
    where ``keep`` is ``dropout_keep`` (bool, broadcastable to (B, Hq, Nq, Nk); pass the kernel's own
    mask to compare against it) or, if None, a fresh Bernoulli draw. ``lse`` is that of the scores
    before dropout.
    """
    probs, lse = attention_probabilities(q, k, **options)
    if dropout_p > 0.0:
        if dropout_keep is None:
            dropout_keep = torch.rand_like(probs) >= dropout_p
        probs = probs * dropout_keep / (1.0 - dropout_p)
    out = probs @ v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)  # (B, Hq, Nq, D)
    if return_lse:
        return out, lse.float() if lse.dtype != torch.float64 else lse
    return out


def attention_varlen(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    *,
    return_lse: bool = False,
    **options,
):
    """Packed sequences: q ``(total_q, Hq, D)``, k, v ``(total_k, Hkv, D)``; sequence ``b`` is rows
    ``cu_seqlens[b]:cu_seqlens[b + 1]`` and attends only within itself, with every option of
    :func:`attention` (its masks aligned to its own bottom-right corner; ``alibi_slopes`` may be
    ``(B, Hq)``; ``dropout_keep`` is ``(B, Hq, max Nq, max Nk)``, each sequence reading its top-left
    corner). ``lse`` is ``(Hq, total_q)``, FlashAttention-2's varlen layout."""
    outs, lses = [], []
    alibi_slopes = options.pop("alibi_slopes", None)
    dropout_keep = options.pop("dropout_keep", None)
    for b in range(len(cu_seqlens_q) - 1):
        rows_q = slice(int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]))
        rows_k = slice(int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1]))
        slopes = alibi_slopes[b] if alibi_slopes is not None and alibi_slopes.dim() == 2 else alibi_slopes
        if dropout_keep is not None:
            options["dropout_keep"] = dropout_keep[b, :, : rows_q.stop - rows_q.start, : rows_k.stop - rows_k.start]
        out, lse = attention(
            q[rows_q].transpose(0, 1)[None],  # (1, Hq, Nq_b, D)
            k[rows_k].transpose(0, 1)[None],
            v[rows_k].transpose(0, 1)[None],
            alibi_slopes=slopes,
            return_lse=True,
            **options,
        )
        outs.append(out[0].transpose(0, 1))  # (Nq_b, Hq, D)
        lses.append(lse[0])  # (Hq, Nq_b)
    out = torch.cat(outs) if outs else q.new_empty(q.shape)
    lse = torch.cat(lses, dim=1) if lses else q.new_empty((q.shape[1], 0), dtype=torch.float32)
    return (out, lse) if return_lse else out


# ------------------------------------------------------------------------------------------- norms
def _statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Norm statistics are float32 at least (float64 inputs keep float64, for the oracle)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def residual_dtype(x_dtype: torch.dtype, residual_in_fp32: bool) -> torch.dtype:
    """The dtype of the returned ``s = x + residual`` of the norms, on every backend."""
    return torch.float32 if residual_in_fp32 and x_dtype != torch.float64 else x_dtype


def _add_residual(x: Tensor, residual: Tensor | None, residual_in_fp32: bool):
    """``s = x + residual`` in the statistics dtype, and ``s`` as returned to the caller."""
    compute = _statistics_dtype(x.dtype)
    if residual is None:
        return x.to(compute), None
    total = x.to(compute) + residual.to(compute)
    return total, total.to(residual_dtype(x.dtype, residual_in_fp32))


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


# ---- sampling
# Hugging Face ``generate`` semantics (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
# MinPLogitsWarper, in that order), made exact where HF leaves room: ties at every boundary are kept,
# and the arithmetic that decides a boundary is fixed, so that the fused kernels can agree with it
# token for token:
#
# - the scaled logits are z = float32(logits) / float32(T), an IEEE division (float64 for float64
#   logits); T == 0 means greedy: only the first maximal logit is kept;
# - top-k keeps z >= the k-th largest z;
# - top-p renormalizes over the top-k set in float64 (probabilities exp(z - max) / Σ exp(z - max)) and
#   keeps a token iff the mass of the tokens sorted strictly before it is < p, then keeps every token
#   tied with the last one kept; p >= 1 keeps everything (what exact arithmetic gives: a float cumsum
#   can reach 1.0 before the tail and would drop tokens whose probability is tiny but not zero);
# - min-p keeps prob >= min_p * max_prob, evaluated as exp(z - max) >= min_p in float64 (the
#   normalization cancels);
# - rows with a NaN, or with every logit -inf, keep nothing (``sample`` returns token -1);
# - rows with +inf logits keep exactly their +inf entries (the limit of the softmax: every finite token
#   has probability 0) and draw uniformly among them.
#
# The draw is Gumbel-max over the kept set with the counter-based stream of ``gumbel_noise`` (the one
# the Triton kernel draws, see kernels/sampling.py), so the same seed gives the same token on every
# backend: token = argmax over kept i of float32((z_i - max z) + g_i), lowest index on ties.

PHILOX_ROUND_A = 0xD2511F53  # Philox4x32 multiplier of counter word 0
PHILOX_ROUND_B = 0xCD9E8D57  # Philox4x32 multiplier of counter word 2
PHILOX_KEY_A = 0x9E3779B9  # Weyl increment of key word 0 (golden ratio · 2^32)
PHILOX_KEY_B = 0xBB67AE85  # Weyl increment of key word 1 ((√3 - 1) · 2^32)
PHILOX_ROUNDS = 10
UINT32_MASK = 0xFFFFFFFF
UNIFORM_BITS = 52  # bits of the uniform: u = (2j + 1) · 2^-53 is exact in float64 for j < 2^52


def _mul_hi_lo(multiplier: int, word: Tensor) -> tuple[Tensor, Tensor]:
    """The high and low 32-bit halves of ``multiplier * word`` (both < 2^32), in int64 without overflow:
    the word is split into 16-bit halves so that no partial product reaches 2^63."""
    low = multiplier * (word & 0xFFFF)  # < 2^48
    high = multiplier * (word >> 16) + (low >> 16)  # < 2^49: the product is high · 2^16 + (low & 0xFFFF)
    return high >> 16, ((high & 0xFFFF) << 16) | (low & 0xFFFF)


def philox4x32(counter: tuple[Tensor, Tensor, Tensor, Tensor], key: tuple[Tensor, Tensor]):
    """Philox4x32-10 (Salmon et al., SC'11; Random123's ``philox4x32``) on int64 tensors holding 32-bit
    words: ``counter`` (c0, c1, c2, c3) and ``key`` (k0, k1), broadcast together. Returns the four output
    words. The same rounds as ``triton.language.randint4x``."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(PHILOX_ROUNDS):
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & UINT32_MASK
        k1 = (k1 + PHILOX_KEY_B) & UINT32_MASK
    return c0, c1, c2, c3


def gumbel_noise(seeds: Tensor, vocab: int) -> Tensor:
    """Float32 ``(B, V)`` Gumbel noise: entry (b, i) depends only on ``seeds[b]`` and ``i``.

    key = (seed mod 2^32, seed >> 32 mod 2^32) of the int64 seed; counter = (i mod 2^32, i >> 32, 0, 0);
    (r0, r1, ·, ·) = Philox4x32-10(counter, key); j = r0 · 2^20 + (r1 >> 12) (52 bits);
    u = (2j + 1) · 2^-53 in float64 (exact, in (0, 1)); E = -log(u) in float64 (an Exp(1) variable);
    g = -log(float32(E)) in float32.
    """
    seeds = seeds.to(torch.int64).reshape(-1, 1)  # (B, 1)
    index = torch.arange(vocab, device=seeds.device, dtype=torch.int64).reshape(1, -1)  # (1, V)
    zero = torch.zeros_like(index)
    r0, r1, _, _ = philox4x32(
        (index & UINT32_MASK, index >> 32, zero, zero), (seeds & UINT32_MASK, (seeds >> 32) & UINT32_MASK)
    )
    j = (r0 << (UNIFORM_BITS - 32)) | (r1 >> (64 - UNIFORM_BITS))  # (B, V), < 2^52
    u = (2 * j + 1).to(torch.float64) * 2.0 ** -(UNIFORM_BITS + 1)
    exponential = -torch.log(u)
    return -torch.log(exponential.to(torch.float32))


def sampling_seeds(seed, generator: torch.Generator | None, batch: int, device) -> Tensor:
    """The per-row int64 seeds ``(B,)``: ``seed`` (an int for every row, or a ``(B,)`` tensor), else drawn
    from ``generator``, else from torch's default generator of ``device``."""
    if seed is not None:
        if isinstance(seed, Tensor):
            return seed.to(device=device, dtype=torch.int64).reshape(-1).expand(batch).contiguous()
        return torch.full((batch,), int(seed), dtype=torch.int64, device=device)
    int64 = torch.iinfo(torch.int64)
    if generator is not None:
        drawn = torch.randint(
            int64.min, int64.max, (batch,), dtype=torch.int64, generator=generator, device=generator.device
        )
        return drawn.to(device)
    return torch.randint(int64.min, int64.max, (batch,), dtype=torch.int64, device=device)


def _row_values(value, off, batch: int, dtype: torch.dtype, device) -> Tensor:
    """A sampling parameter as a ``(B,)`` tensor: ``off`` for None, a Python number for every row."""
    if value is None:
        value = off
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype).reshape(-1).expand(batch)
    return torch.full((batch,), value, dtype=dtype, device=device)


def _kept(z: Tensor, greedy: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor) -> Tensor:
    """Bool ``(B, V)``: the tokens that survive temperature, top-k, top-p and min-p (``z`` scaled)."""
    batch, vocab = z.shape
    z_max = z.amax(dim=-1, keepdim=True)  # (B, 1); NaN for rows with a NaN
    valid = ~z.isnan().any(dim=-1, keepdim=True) & (z_max > -torch.inf)  # (B, 1)

    # top-k: z >= the k-th largest value (its ties are kept)
    sorted_z = z.sort(dim=-1, descending=True).values  # (B, V)
    kth = sorted_z.gather(-1, (top_k.clamp(1, vocab) - 1).reshape(-1, 1))  # (B, 1)
    keep = z >= kth

    # top-p on the distribution renormalized over the top-k set, in float64
    z64 = z.to(torch.float64).masked_fill(~keep, -torch.inf)
    probs = torch.softmax(z64, dim=-1)  # (B, V)
    sorted_z64, order = z64.sort(dim=-1, descending=True)
    sorted_probs = probs.gather(-1, order)
    mass_before = torch.cat([torch.zeros_like(sorted_probs[:, :1]), sorted_probs.cumsum(-1)[:, :-1]], dim=-1)
    keep_sorted = (mass_before < top_p.reshape(-1, 1)) | (top_p >= 1.0).reshape(-1, 1)
    last_kept = sorted_z64.masked_fill(~keep_sorted, torch.inf).amin(dim=-1, keepdim=True)  # (B, 1)
    keep &= z64 >= last_kept

    # min-p: prob >= min_p · max_prob, i.e. exp(z - max z) >= min_p
    ratio = torch.exp(z64 - z_max.to(torch.float64))
    keep &= ratio >= min_p.reshape(-1, 1)

    keep |= z == z_max  # the most likely token is always kept (the rules above keep it already)
    keep &= z > -torch.inf

    posinf = z_max == torch.inf  # (B, 1): only the +inf entries have probability > 0
    keep = torch.where(posinf, z == torch.inf, keep)
    first_max = torch.zeros_like(keep).scatter_(-1, z.argmax(dim=-1, keepdim=True), True)
    keep = torch.where(greedy.reshape(-1, 1), first_max, keep)
    return keep & valid


def filter_logits(logits: Tensor, temperature=1.0, top_k=None, top_p=None, min_p=None) -> Tensor:
    """The logits ``generate`` samples from: ``logits / T`` with every removed token set to ``-inf``.

    ``logits``: ``(B, V)`` or ``(V,)``; each parameter a number, None (off) or a ``(B,)`` tensor. The result
    is float32 (float64 for float64 logits). Greedy rows (T == 0) keep only their first maximal logit,
    unscaled; rows with a NaN or no finite logit are all ``-inf``. The rules are listed at the top of this
    section; inputs are assumed valid (``fastattn.sample`` checks them).
    """
    x = logits.unsqueeze(0) if logits.dim() == 1 else logits
    batch, vocab = x.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(compute)
    t = _row_values(temperature, 1.0, batch, compute, x.device)
    greedy = t == 0
    z = x / torch.where(greedy, torch.ones_like(t), t).reshape(-1, 1)  # (B, V); IEEE division by a tensor
    z = torch.where(greedy.reshape(-1, 1), x, z)
    keep = _kept(
        z,
        greedy,
        _row_values(top_k, vocab, batch, torch.int64, x.device),
        _row_values(top_p, 1.0, batch, torch.float64, x.device),
        _row_values(min_p, 0.0, batch, torch.float64, x.device),
    )
    out = z.masked_fill(~keep, -torch.inf)
    return out.squeeze(0) if logits.dim() == 1 else out


def sample(
    logits: Tensor, *, seed=None, generator: torch.Generator | None = None, return_logprobs: bool = False, **filters
):
    """Draws one token per row from the softmax over ``filter_logits(logits, **filters)`` (``temperature``,
    ``top_k``, ``top_p``, ``min_p``), by Gumbel-max with the noise of :func:`gumbel_noise`; token -1 for
    rows that keep nothing (a NaN, or no finite logit).

    Returns int64 tokens ``(B,)`` (0-d for ``(V,)`` logits) and, with ``return_logprobs``, the float32
    log-probability of each token under the filtered, renormalized distribution (0 for greedy rows, NaN
    for token -1).
    """
    x = logits.unsqueeze(0) if logits.dim() == 1 else logits
    batch, vocab = x.shape
    filtered = filter_logits(x, **filters)  # (B, V)
    kept = filtered > -torch.inf
    valid = kept.any(dim=-1)  # (B,)
    z_max = filtered.amax(dim=-1, keepdim=True)  # (B, 1)
    posinf = z_max == torch.inf
    d = torch.where(posinf, torch.zeros_like(filtered), filtered - z_max)  # log(prob / max prob) where kept
    noise = gumbel_noise(sampling_seeds(seed, generator, batch, x.device), vocab).to(d.dtype)
    score = torch.where(kept, d + noise, -torch.inf)
    tokens = torch.where(valid, score.argmax(dim=-1), -1)  # argmax: the first maximum
    if not return_logprobs:
        return tokens.squeeze(0) if logits.dim() == 1 else tokens

    log_probs = torch.log_softmax(torch.where(kept, d, -torch.inf).to(torch.float64), dim=-1)  # (B, V)
    n_posinf = (filtered == torch.inf).sum(dim=-1)
    chosen = log_probs.gather(-1, tokens.clamp(min=0).reshape(-1, 1)).squeeze(-1)
    chosen = torch.where(posinf.squeeze(-1), -torch.log(n_posinf.to(torch.float64)), chosen)
    logprobs = torch.where(valid, chosen, torch.nan).to(torch.float32)
    if logits.dim() == 1:
        return tokens.squeeze(0), logprobs.squeeze(0)
    return tokens, logprobs
