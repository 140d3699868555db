"""The work each benchmark counts: FLOPs of attention, bytes of the norms and of sampling.

Every throughput fastattn reports comes from these formulas and nowhere else.

Attention (FlashAttention's convention): two matrix products per visible (query, key) pair, each of
2·D FLOPs, so the forward is ``4 · B · H · pairs · D`` with ``pairs = Nq · Nk`` without a mask; the
backward does five products (dV, dP, dS, dQ, dK) against the forward's two: 2.5× the forward.
With ``causal=True`` the pairs are counted exactly for the bottom-right mask (query ``i`` sees key
``j`` iff ``j <= i + Nk - Nq``): ``N(N+1)/2`` for ``Nq == Nk`` (half the square plus the diagonal);
with a sliding window, only the pairs inside it. Packed sequences count each sequence's own pairs
(and so does the same batch padded: the padding is no work done for anyone).

Norms are memory-bound: their measure is the bytes that must move between memory and the chip,
each tensor read or written exactly once (the weight and bias once, not once per row).

Sampling is reported in microseconds per batch; its bytes (the logits read once) give the floor
drawn on plots.
"""

from __future__ import annotations

BACKWARD_OVER_FORWARD = 2.5  # five matrix products in the backward against two in the forward


def visible_pairs(nq: int, nk: int, causal: bool, window: tuple[int, int] | None = None) -> int:
    """How many (query, key) pairs the mask lets through; bottom-right aligned when causal. With
    ``window=(left, right)`` (-1: unlimited; causal makes right 0) query ``i`` sees the keys
    ``i + Nk - Nq - left .. i + Nk - Nq + right`` that exist, counted row by row."""
    if window is not None and window != (-1, -1):
        left, right = window[0], 0 if causal else window[1]
        offset = nk - nq
        pairs = 0
        for i in range(nq):
            first = 0 if left < 0 else max(0, i + offset - left)
            last = nk - 1 if right < 0 else min(nk - 1, i + offset + right)
            pairs += max(0, last - first + 1)
        return pairs
    if not causal:
        return nq * nk
    # Query i sees min(i + Nk - Nq + 1, Nk) keys when that is positive: the queries from
    # max(0, Nq - Nk) on see an arithmetic series of counts that ends at Nk for the last query.
    first_seeing = max(0, nq - nk)
    rows = nq - first_seeing
    first_count = first_seeing + nk - nq + 1
    return rows * (first_count + nk) // 2


def attention_flops(
    batch: int, heads: int, nq: int, nk: int, head_dim: int, causal: bool, mode: str, window=None
) -> float:
    """FLOPs of one attention call; ``mode`` is ``"fwd"``, ``"bwd"`` or ``"fwd+bwd"``."""
    forward = 4.0 * batch * heads * visible_pairs(nq, nk, causal, window) * head_dim
    factor = {"fwd": 1.0, "bwd": BACKWARD_OVER_FORWARD, "fwd+bwd": 1.0 + BACKWARD_OVER_FORWARD}[mode]
    return forward * factor


def norm_bytes(
    rows: int,
    hidden: int,
    *,
    element_size: int,
    mode: str,
    has_bias: bool,
    has_residual: bool,
    residual_element_size: int | None = None,
) -> float:
    """Bytes a LayerNorm/RMSNorm must move for ``rows`` rows of ``hidden`` elements.

    ``mode="fwd"``: read x (and residual), weight (and bias); write y (and ``s = x + residual``).
    ``mode="bwd"``: read dy, x (and residual: s is recomputed), weight and the float32 per-row
    statistics (rstd, and mean for LayerNorm when ``has_bias``); write dx (which is also the residual's
    gradient) and dweight (and dbias). The partial sums of dweight stay out: a kernel may keep them
    on chip.
    """
    activation = rows * hidden * element_size
    parameters = hidden * element_size * (2 if has_bias else 1)
    residual_size = residual_element_size or element_size
    if mode == "fwd":
        moved = 2 * activation + parameters  # x in, y out
        if has_residual:
            moved += rows * hidden * element_size + rows * hidden * residual_size  # residual in, s out
        return float(moved)
    if mode == "bwd":
        statistics = rows * 4 * (2 if has_bias else 1)  # float32 rstd (and mean)
        moved = 3 * activation + 2 * parameters + statistics  # dy, x in; dx out; weight in, dweight out
        if has_residual:
            moved += rows * hidden * element_size  # the residual, to recompute s
        return float(moved)
    raise ValueError(f"mode must be 'fwd' or 'bwd', got {mode!r}")


def sampling_bytes(batch: int, vocab: int, element_size: int) -> float:
    """Bytes sampling must move: the logits read once (the B token ids written are negligible)."""
    return float(batch * vocab * element_size + batch * 8)
