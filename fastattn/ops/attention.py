"""Attention: input checks, backend choice, the custom ops of the fused kernels, and their autograd.

Layers (DESIGN.md §2): ``fastattn.attention`` checks the inputs once and picks the backend once;
the fused backends are ``torch.library`` custom ops (with fake implementations, so ``torch.compile``
can trace them) whose backward is registered with ``register_autograd``; the ``torch`` and ``naive``
backends are plain PyTorch, differentiated by autograd itself.
"""

from __future__ import annotations

import functools
import math
import operator

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends, capabilities, reference
from ..backends import Backend
from ..kernels.layout import last_dim_contiguous  # plain torch: imports no Triton
from . import refuse_double_backward

# Torch's function, bound once: fastattn.patch_sdpa() may rebind the name in torch.nn.functional to
# ours, and our fallbacks must still reach torch's.
_torch_sdpa = F.scaled_dot_product_attention


# ------------------------------------------------------------------------------------ input checks
def _check_inputs(q, k, v, key_padding_mask, dropout_p, scale) -> None:
    """Raises a clear exception for inputs no backend could serve correctly."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must have one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must have the same head_dim, got {q.shape[3]} and {k.shape[3]}")
    if q.shape[3] == 0:  # the default scale D ** -0.5 has no value; sequences and batches may be empty
        raise ValueError(f"head_dim must be at least 1, got q of shape {tuple(q.shape)}")
    heads_q, heads_kv = q.shape[1], k.shape[1]
    if heads_kv == 0:
        raise ValueError(f"k and v must have at least one head, got shape {tuple(k.shape)}")
    if heads_q % heads_kv != 0:
        raise ValueError(
            f"the query heads ({heads_q}) must be a multiple of the key/value heads ({heads_kv}) (GQA/MQA)"
        )
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
            got = key_padding_mask.dtype if isinstance(key_padding_mask, Tensor) else type(key_padding_mask).__name__
            raise TypeError(f"key_padding_mask must be a bool tensor (True = key takes part), got {got}")
        expected = (k.shape[0], k.shape[2])
        if tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"key_padding_mask must have shape (batch, Nk) = {expected}, got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask must be on {q.device}, got {key_padding_mask.device}")
    if not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _window_sides(window) -> tuple[int, int] | None:
    """``window``'s two sides as ints: a pair of integers (Python, NumPy, or 0-d integer tensors, as
    FlashAttention-2's tests pass them) >= -1; None if it is not one."""
    try:
        left, right = window
        sides = (operator.index(left), operator.index(right))
    except (TypeError, ValueError):
        return None
    if isinstance(left, bool) or isinstance(right, bool) or min(sides) < -1:
        return None
    return sides


def checked_features(q, causal, window, softcap, alibi_slopes, sinks) -> dict:
    """The window, softcap, ALiBi and sinks of a call, checked; only those in use (none: ``{}``)."""
    features = {}
    if window is not None:
        sides = _window_sides(window) if not isinstance(window, (str, bytes)) else None
        if sides is None:
            raise ValueError(f"window must be None or (left, right), two ints >= -1 (-1: unlimited), got {window!r}")
        left, right = sides
        right = 0 if causal else right
        if (left, right) != (-1, -1):
            features["window"] = (left, right)
    if not (isinstance(softcap, (int, float)) and math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"softcap must be a finite number >= 0 (0: off), got {softcap!r}")
    if softcap > 0:
        features["softcap"] = float(softcap)
    batch, heads_q = q.shape[0], q.shape[1]
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, Tensor) or alibi_slopes.dtype != torch.float32:
            got = alibi_slopes.dtype if isinstance(alibi_slopes, Tensor) else type(alibi_slopes).__name__
            raise TypeError(f"alibi_slopes must be a float32 tensor, got {got}")
        if tuple(alibi_slopes.shape) not in ((heads_q,), (batch, heads_q)):
            raise ValueError(
                f"alibi_slopes must be (Hq,) = ({heads_q},) or (B, Hq) = ({batch}, {heads_q}), "
                f"got {tuple(alibi_slopes.shape)}"
            )
        if alibi_slopes.device != q.device:
            raise ValueError(f"alibi_slopes must be on {q.device}, got {alibi_slopes.device}")
        features["alibi_slopes"] = alibi_slopes
    if sinks is not None:
        if not isinstance(sinks, Tensor) or not sinks.is_floating_point():
            got = sinks.dtype if isinstance(sinks, Tensor) else type(sinks).__name__
            raise TypeError(f"sinks must be a floating-point tensor, got {got}")
        if tuple(sinks.shape) != (heads_q,):
            raise ValueError(f"sinks must be (Hq,) = ({heads_q},), got {tuple(sinks.shape)}")
        if sinks.device != q.device:
            raise ValueError(f"sinks must be on {q.device}, got {sinks.device}")
        features["sinks"] = sinks
    return features


def used_features(features: dict, *, dropout_p=0.0, deterministic=False, return_lse=False, device=None) -> set[str]:
    """The optional features (``fastattn.capabilities.FEATURES``) a call of the attention ops uses."""
    used = set(features)
    if dropout_p > 0:
        used.add("dropout")
    if deterministic and device is not None and device.type == "cuda":  # on the CPU every backward is
        used.add("deterministic")
    if return_lse:
        used.add("return_lse")
    return used


def _backend_reasons(name, q, k, v, *, used: set[str]) -> list[str]:
    """Why backend ``name`` cannot serve this attention call with the ``used`` features (empty: it can)."""
    reasons = backends.device_reasons(name, q.device)
    reasons += capabilities.reasons("attention", name, dtypes=[("", q.dtype)], head_dim=q.shape[-1], features=used)
    if name == Backend.CUDA and not reasons:  # the kernels' shared memory is known for the served shapes only
        needs_backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        kernels = ("forward", "backward") if needs_backward else ("forward",)
        reasons += capabilities.cuda_shared_memory_reasons(q.dtype, q.shape[-1], kernels, q.device)
    return reasons


# ------------------------------------------------------------------- the fused backends' custom ops
# Both fused backends share one schema per op. Beyond the padded call's arguments, the features come
# last with defaults that switch them off: window sides (-1: unlimited), softcap (0: off), ALiBi slopes,
# sinks, and packed sequences (cu_seqlens given: q, k, v are (total, H, D) and lse is (Hq, total_q)).
# The backward returns dsinks too: float32 (Hq,), zeros without sinks.
_FEATURES_SCHEMA = (
    "SymInt window_left=-1, SymInt window_right=-1, float softcap=0., Tensor? alibi_slopes=None, "
    "Tensor? sinks=None, Tensor? cu_seqlens_q=None, Tensor? cu_seqlens_k=None, SymInt max_seqlen_q=0, "
    "SymInt max_seqlen_k=0"
)
_OPTIONS_SCHEMA = "Tensor? key_padding_mask, bool causal, float scale, float dropout_p, SymInt seed, bool deterministic"
_FORWARD_SCHEMA = f"(Tensor q, Tensor k, Tensor v, {_OPTIONS_SCHEMA}, {_FEATURES_SCHEMA}) -> (Tensor, Tensor)"
_BACKWARD_SCHEMA = (
    f"(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? dlse, {_OPTIONS_SCHEMA}, "
    f"{_FEATURES_SCHEMA}) -> (Tensor, Tensor, Tensor, Tensor)"
)
# What an op's implementation gets for the features the caller left out: the dispatcher passes only
# the arguments given.
_FEATURE_DEFAULTS = (-1, -1, 0.0, None, None, None, None, 0, 0)


def _all_features(given: tuple) -> tuple:
    """The nine feature arguments of a fused op's call, the missing ones at their defaults."""
    return given + _FEATURE_DEFAULTS[len(given) :]


def _triton_features(given: tuple):
    """The feature arguments as the Triton kernels take them (``kernels.attention.Features``)."""
    from ..kernels import attention as kernels  # imported on first use: triton reads TRITON_INTERPRET then

    window_left, window_right, *rest = _all_features(given)
    return kernels.Features((window_left, window_right), *rest)


@torch.library.custom_op("fastattn::attention_fwd_triton", mutates_args=(), schema=_FORWARD_SCHEMA)
def _attention_fwd_triton(q, k, v, key_padding_mask, causal, scale, dropout_p, seed, deterministic, *features):
    """The fused forward; ``deterministic`` is not used here, only carried to the backward."""
    from ..kernels import attention as kernels

    options = (key_padding_mask, causal, scale, dropout_p, seed)
    out, lse = kernels.attention_fwd(q, k, v, *options, _triton_features(features))
    return out.contiguous(), lse.contiguous()


@torch.library.custom_op("fastattn::attention_bwd_triton", mutates_args=(), schema=_BACKWARD_SCHEMA)
def _attention_bwd_triton(dout, q, k, v, out, lse, dlse, *options_and_features):
    from ..kernels import attention as kernels

    options, features = options_and_features[:6], options_and_features[6:]
    dq, dk, dv, dsinks = kernels.attention_bwd(dout, q, k, v, out, lse, dlse, *options, _triton_features(features))
    if dsinks is None:
        dsinks = torch.zeros(q.shape[1], dtype=torch.float32, device=q.device)
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dsinks


# ----------------------------------------------- fakes and autograd, shared by the two fused backends
def _lse_shape(q: Tensor, packed: bool) -> tuple[int, ...]:
    """(B, Hq, Nq), or (Hq, total_q) for packed sequences."""
    return (q.shape[1], q.shape[0]) if packed else (q.shape[0], q.shape[1], q.shape[2])


def _attention_fwd_fake(q, k, v, key_padding_mask, causal, scale, dropout_p, seed, deterministic, *features):
    packed = len(features) > 5 and features[5] is not None  # cu_seqlens_q
    return q.new_empty(q.shape), q.new_empty(_lse_shape(q, packed), dtype=torch.float32)


def _attention_bwd_fake(dout, q, k, v, *rest):
    return (
        q.new_empty(q.shape),
        k.new_empty(k.shape),
        v.new_empty(v.shape),
        q.new_empty(q.shape[1], dtype=torch.float32),
    )


_FORWARD_ARGUMENTS = 9  # q, k, v, key_padding_mask, causal, scale, dropout_p, seed, deterministic
_SINKS = 4  # the index of sinks among the feature arguments that follow


def _attention_setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, *options = inputs[:_FORWARD_ARGUMENTS]
    features = inputs[_FORWARD_ARGUMENTS:]
    out, lse = output
    # The feature tensors (slopes, sinks, offsets) are saved like the others; the numbers stay in place.
    ctx.feature_tensors = [i for i, value in enumerate(features) if isinstance(value, Tensor)]
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask, *(features[i] for i in ctx.feature_tensors))
    ctx.options = tuple(options)
    ctx.features = [None if isinstance(value, Tensor) else value for value in features]
    sinks = features[_SINKS] if len(features) > _SINKS else None
    ctx.sinks_need_grad = sinks is not None and sinks.requires_grad
    # Unused outputs (lse, most of the time) then get None instead of a tensor of zeros.
    ctx.set_materialize_grads(False)


def _register_fakes_and_autograd(forward, backward) -> None:
    """The fake implementations of a backend's forward and backward ops, and the forward's autograd
    formula calling that backend's backward op."""
    forward.register_fake(_attention_fwd_fake)
    backward.register_fake(_attention_bwd_fake)

    def attention_backward(ctx, dout, dlse):
        q, k, v, out, lse, key_padding_mask, *tensors = ctx.saved_tensors
        features = list(ctx.features)
        for index, tensor in zip(ctx.feature_tensors, tensors, strict=True):
            features[index] = tensor
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv, dsinks = backward(dout, q, k, v, out, lse, dlse, key_padding_mask, *ctx.options, *features)
        feature_grads = [None] * len(features)
        if ctx.sinks_need_grad:
            feature_grads[_SINKS] = dsinks.to(features[_SINKS].dtype)
        return dq, dk, dv, None, None, None, None, None, None, *feature_grads

    forward.register_autograd(attention_backward, setup_context=_attention_setup_context)
    refuse_double_backward(backward, "attention")


_register_fakes_and_autograd(_attention_fwd_triton, _attention_bwd_triton)


def _cuda_features(given: tuple) -> tuple:
    """The feature arguments as the C++ side takes them: float32 contiguous slopes and sinks, contiguous
    offsets."""
    window_left, window_right, softcap, alibi_slopes, sinks, cu_q, cu_k, max_q, max_k = _all_features(given)
    alibi_slopes, sinks = (t.to(torch.float32).contiguous() if t is not None else None for t in (alibi_slopes, sinks))
    cu_q, cu_k = (t.contiguous() if t is not None else None for t in (cu_q, cu_k))
    return window_left, window_right, softcap, alibi_slopes, sinks, cu_q, cu_k, max_q, max_k


@torch.library.custom_op("fastattn::attention_fwd_cuda", mutates_args=(), schema=_FORWARD_SCHEMA)
def _attention_fwd_cuda(q, k, v, key_padding_mask, causal, scale, dropout_p, seed, deterministic, *features):
    """The CUDA C++ forward (csrc/attention, same dropout stream as the Triton kernel); ``deterministic``
    is only carried to the backward, whose CUDA kernels are deterministic either way (no atomics)."""
    from .. import _C

    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    options = (key_padding_mask, causal, scale, dropout_p, seed)
    out, lse = _C.attention_fwd(q, k, v, *options, *_cuda_features(features))
    return out, lse


@torch.library.custom_op("fastattn::attention_bwd_cuda", mutates_args=(), schema=_BACKWARD_SCHEMA)
def _attention_bwd_cuda(dout, q, k, v, out, lse, dlse, *options_and_features):
    from .. import _C

    dout, q, k, v, out = (last_dim_contiguous(t) for t in (dout, q, k, v, out))
    dlse = dlse.to(torch.float32).contiguous() if dlse is not None else None
    # deterministic (options[5]) is not passed on: the CUDA backward has no atomics
    options, features = options_and_features[:5], options_and_features[6:]
    dq, dk, dv, dsinks = _C.attention_bwd(
        dout, q, k, v, out, lse.contiguous(), dlse, *options, *_cuda_features(features)
    )
    return dq, dk, dv, dsinks


_register_fakes_and_autograd(_attention_fwd_cuda, _attention_bwd_cuda)


# ------------------------------------------------------------------------- the backends, as calls
def _feature_arguments(features: dict) -> tuple:
    """The fused ops' feature arguments (window_left ... sinks) for the checked ``features`` of a call."""
    left, right = features.get("window", (-1, -1))
    return left, right, features.get("softcap", 0.0), features.get("alibi_slopes"), features.get("sinks")


def _attention_fused(forward, q, k, v, key_padding_mask, causal, scale, dropout_p, deterministic, **features):
    """Calls ``forward``, the fused forward op of the cuda or triton backend, with a dropout seed."""
    seed = _dropout_seed(dropout_p)
    return forward(
        q, k, v, key_padding_mask, causal, scale, dropout_p, seed, deterministic, *_feature_arguments(features)
    )


def _attention_torch(
    q, k, v, key_padding_mask, causal, scale, dropout_p, deterministic, window=None, alibi_slopes=None
):
    batch, heads_q, nq, _ = q.shape
    nk = k.shape[2]
    mask = None
    if key_padding_mask is not None or (causal and nq != nk) or window is not None or alibi_slopes is not None:
        mask = reference.attention_visibility(
            batch, nq, nk, causal=causal, key_padding_mask=key_padding_mask, device=q.device, window=window
        )
    attn_mask = mask
    if alibi_slopes is not None:  # the bias as a float mask, -inf where no key is visible
        bias = reference.alibi_bias(alibi_slopes, batch, heads_q, nq, nk).to(q.dtype)
        attn_mask = bias.masked_fill(~mask, float("-inf"))
    out = _torch_sdpa(
        q,
        k,
        v,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=causal and mask is None,  # is_causal is top-left: right only for Nq == Nk
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    # A NaN in a query row makes that row NaN on every backend, as the textbook math does; PyTorch's CPU
    # kernel returns zeros for it instead. Adding 0 · Σ_d q (NaN there, 0 elsewhere) needs no sync, and
    # in place (where autograd allows) no new output: allocating one cost up to 1 ms at (8, 8, 128, 64).
    nan_rows = q.sum(dim=-1, keepdim=True).mul_(0).to(out.dtype)  # (B, Hq, Nq, 1)
    out = out + nan_rows if out.requires_grad else out.add_(nan_rows)
    if mask is not None:
        # Our contract: rows that see no key give zeros, whatever SDPA's kernel makes of them.
        out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out, None


def _attention_naive(q, k, v, key_padding_mask, causal, scale, dropout_p, deterministic, **features):
    # The textbook math in float32 at least: in float16 the scores of large but finite logits overflow
    # (|scale · q·k| > 65504 gives inf, then NaN) and the lse keeps 11 bits.
    compute = torch.promote_types(q.dtype, torch.float32)
    out, lse = reference.attention(
        q.to(compute),
        k.to(compute),
        v.to(compute),
        causal=causal,
        scale=scale,
        key_padding_mask=key_padding_mask,
        dropout_p=dropout_p,
        return_lse=True,
        **features,
    )
    return out.to(q.dtype), lse


_FUSED_FORWARD = {Backend.CUDA: _attention_fwd_cuda, Backend.TRITON: _attention_fwd_triton}
_IMPLEMENTATIONS = {
    Backend.CUDA: functools.partial(_attention_fused, _attention_fwd_cuda),
    Backend.TRITON: functools.partial(_attention_fused, _attention_fwd_triton),
    Backend.TORCH: _attention_torch,
    Backend.NAIVE: _attention_naive,
}


def _dropout_seed(dropout_p: float) -> int:
    """A Philox seed for the fused kernels' dropout, drawn from torch's default generator (so
    ``torch.manual_seed`` makes runs repeatable); 0 when there is no dropout."""
    if dropout_p == 0.0:
        return 0
    return int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64).item())


# ------------------------------------------------------------------------------ the functional API
def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    window: tuple[int, int] | None = None,
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    sinks: Tensor | None = None,
    deterministic: bool = False,
    return_lse: bool = False,
    backend: str = "auto",
):
    """Scaled dot-product attention, fused: ``softmax(scale · q kᵀ + mask) v``.

    Args:
        q: ``(B, Hq, Nq, D)``; k, v: ``(B, Hkv, Nk, D)`` with ``Hq % Hkv == 0`` (GQA/MQA: query head
            ``h`` reads key/value head ``h // (Hq // Hkv)``; K and V are never copied per head).
            ``D`` from 1 to the fused backends' limit, in their dtypes (``fastattn.capabilities``:
            ``python -m fastattn env`` prints them); larger ``D`` and other dtypes go to torch or
            naive. Any strides
            whose last dimension is contiguous: a ``(B, N, H, D)`` tensor passed through
            ``.transpose(1, 2)`` costs no copy.
        causal: mask aligned to the **bottom-right** corner: query ``i`` sees key ``j`` iff
            ``j <= i + (Nk - Nq)``. For ``Nq = 3, Nk = 5`` (``x`` = visible)::

                      key j:  0 1 2 3 4
                query i = 0:  x x x . .
                query i = 1:  x x x x .
                query i = 2:  x x x x x

            and for ``Nq = 5, Nk = 3`` the first two queries see no key at all::

                      key j:  0 1 2
                query i = 0:  . . .
                query i = 1:  . . .
                query i = 2:  x . .
                query i = 3:  x x .
                query i = 4:  x x x

            With ``Nq == Nk`` it is the usual lower triangle; with ``Nq < Nk`` it is what a KV-cache
            decode step needs (the new queries are the last positions).
        scale: multiplies ``q·k``; defaults to ``D ** -0.5``.
        key_padding_mask: bool ``(B, Nk)``, True = the key takes part (PyTorch's bool ``attn_mask``
            sense). Note: ``torch.nn.MultiheadAttention``'s and ``fastattn.nn.MultiheadAttention``'s
            ``key_padding_mask`` have the opposite sense (True = ignore the key): pass ``~mask``.
        dropout_p: dropout on the attention probabilities (pass 0 in evaluation). The fused kernels
            draw it from a counter-based generator seeded from torch's default generator and
            regenerate it in the backward.
        window: ``(left, right)``: query ``i`` sees key ``j`` iff ``i + off - left <= j <= i + off + right``
            (``off = Nk - Nq``; -1: unlimited on that side; with ``causal``, ``right`` is 0). None: no window.
        softcap: ``> 0`` caps the scores: ``s = softcap · tanh(s / softcap)`` (Gemma 2); 0: off.
        alibi_slopes: float32 ``(Hq,)`` or ``(B, Hq)``: adds ``-slope · |i + off - j|`` to the scores.
        sinks: ``(Hq,)``: each row's softmax denominator gains ``exp(sink_h)`` (probability mass with no
            value; the lse includes it; a row that sees no key has ``lse = sink_h``). Differentiable.
            Window, softcap, ALiBi and sinks are applied in this order after the scale. ``cuda``,
            ``triton`` and ``naive`` serve all four, ``torch`` window and ALiBi.
        deterministic: the backward gives bitwise-identical gradients run to run.
        return_lse: also return ``lse``, float32 ``(B, Hq, Nq)``: the natural-log sum of
            ``exp(scale · q·k)`` over the visible keys (differentiable).
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"torch"`` or ``"naive"`` (see
            :mod:`fastattn.backends`).

    Returns:
        ``out`` ``(B, Hq, Nq, D)`` in q's dtype, or ``(out, lse)``. A query that sees no key gets
        zeros (``lse = -inf``), never NaN, and zero gradient; so ``Nk = 0`` gives zeros. Empty
        batches, heads or queries (``B``, ``Hq`` or ``Nq`` = 0) give empty results; ``D = 0`` and
        ``Hkv = 0`` raise ``ValueError``. A NaN in a query row makes that row NaN (a NaN key, every
        row that sees it), on every backend, as the textbook math does.
    """
    _check_inputs(q, k, v, key_padding_mask, dropout_p, scale)
    features = checked_features(q, causal, window, softcap, alibi_slopes, sinks)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    used = used_features(
        features, dropout_p=dropout_p, deterministic=deterministic, return_lse=return_lse, device=q.device
    )
    name = backends.select("attention", backend, lambda candidate: _backend_reasons(candidate, q, k, v, used=used))
    implementation = _IMPLEMENTATIONS[name]
    out, lse = implementation(q, k, v, key_padding_mask, causal, scale, float(dropout_p), deterministic, **features)
    return (out, lse) if return_lse else out


def _check_cu_seqlens(name: str, cu_seqlens, total: int, max_seqlen, max_name: str, device) -> list[int]:
    """The offsets of ``cu_seqlens`` as ints, checked against the contract; a clear error otherwise."""
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1:
        got = f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}" if isinstance(cu_seqlens, Tensor) else type(cu_seqlens)
        raise TypeError(f"{name} must be a 1-D int32 tensor (B + 1,), got {got}")
    if cu_seqlens.device != device:
        raise ValueError(f"{name} must be on {device}, got {cu_seqlens.device}")
    offsets = cu_seqlens.tolist()  # a host copy: the checks (and the reference) need the values
    if not offsets or offsets[0] != 0 or offsets[-1] != total:
        raise ValueError(f"{name} must start at 0 and end at the total length {total}, got {offsets}")
    lengths = [end - start for start, end in zip(offsets, offsets[1:], strict=False)]
    if any(length < 0 for length in lengths):
        raise ValueError(f"{name} must be non-decreasing, got {offsets}")
    if not (_is_int(max_seqlen) and max_seqlen >= max(lengths, default=0)):
        raise ValueError(
            f"{max_name} must be an int >= the longest sequence ({max(lengths, default=0)}), got {max_seqlen!r}"
        )
    return offsets


def attention_varlen(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    scale: float | None = None,
    window: tuple[int, int] | None = None,
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    sinks: Tensor | None = None,
    dropout_p: float = 0.0,
    deterministic: bool = False,
    return_lse: bool = False,
    backend: str = "auto",
):
    """Attention over sequences of different lengths packed without padding.

    Args:
        q: ``(total_q, Hq, D)``; k, v: ``(total_k, Hkv, D)``, the sequences one after another.
        cu_seqlens_q, cu_seqlens_k: int32 ``(B + 1,)``: sequence ``b`` is rows ``cu[b]:cu[b + 1]``
            (starting at 0, non-decreasing, ending at the total; a sequence may be empty).
        max_seqlen_q, max_seqlen_k: at least the longest sequence.
        Every other argument as in :func:`attention`, applied to each sequence on its own (its masks
        aligned to its own bottom-right corner); ``alibi_slopes`` may be ``(B, Hq)``.

    Returns:
        ``out`` ``(total_q, Hq, D)``, or ``(out, lse)`` with ``lse`` float32 ``(Hq, total_q)``
        (FlashAttention-2's varlen layout). Each sequence attends only within itself. Served by the
        ``cuda`` and ``triton`` kernels (no padding computed: each block reads its sequence's offsets)
        and the ``naive`` reference; not by ``torch`` (SDPA has no packed layout).
    """
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, Tensor) or tensor.dim() != 3:
            raise ValueError(f"{name} must be a 3-D tensor (total, heads, head_dim)")
    batch = len(cu_seqlens_q) - 1 if isinstance(cu_seqlens_q, Tensor) and cu_seqlens_q.dim() == 1 else 0
    # The checks of the padded entry point, on the packed tensors seen as one batch.
    _check_inputs(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], None, dropout_p, scale)
    offsets_q = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, "max_seqlen_q", q.device)
    offsets_k = _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, "max_seqlen_k", q.device)
    if len(offsets_q) != len(offsets_k):
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must list as many sequences, "
            f"got {len(offsets_q) - 1} and {len(offsets_k) - 1}"
        )
    batched_q = q.new_empty((batch, q.shape[1], 0, q.shape[2]))  # the (B, Hq) shape the feature checks read
    features = checked_features(batched_q, causal, window, softcap, alibi_slopes, sinks)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)

    used = {"varlen"} | used_features(features, dropout_p=dropout_p, deterministic=deterministic, device=q.device)
    name = backends.select(
        "attention_varlen", backend, lambda candidate: _backend_reasons(candidate, q[None], k[None], v[None], used=used)
    )
    if name in _FUSED_FORWARD:
        seed = _dropout_seed(float(dropout_p))
        out, lse = _FUSED_FORWARD[name](
            q,
            k,
            v,
            None,
            causal,
            scale,
            float(dropout_p),
            seed,
            deterministic,
            *_feature_arguments(features),
            cu_seqlens_q,
            cu_seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
        )
        return (out, lse) if return_lse else out
    compute = torch.promote_types(q.dtype, torch.float32)  # as the naive backend of attention()
    out, lse = reference.attention_varlen(
        q.to(compute),
        k.to(compute),
        v.to(compute),
        cu_seqlens_q,
        cu_seqlens_k,
        causal=causal,
        scale=scale,
        dropout_p=float(dropout_p),
        return_lse=True,
        **features,
    )
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------- the drop-in SDPA replacement
def _as_key_padding_mask(attn_mask: Tensor, batch: int, nk: int) -> Tensor | None:
    """``attn_mask`` as a ``(B, Nk)`` key padding mask, if it is a bool mask that only depends on the
    batch and key index (shape broadcastable as ``(B or 1, 1, 1, Nk)``); else None."""
    if attn_mask.dtype != torch.bool or attn_mask.dim() > 4 or attn_mask.dim() == 0:
        return None
    shape = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)
    if shape[0] not in (1, batch) or shape[1] != 1 or shape[2] != 1 or shape[3] not in (1, nk):
        return None
    return attn_mask.reshape(shape)[:, 0, 0, :].expand(batch, nk)


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """Drop-in replacement for ``torch.nn.functional.scaled_dot_product_attention``, with its
    semantics (its ``is_causal`` is top-left aligned). Calls the fused kernels where they serve the
    inputs (4-D tensors of one float dtype and head_dim, no mask or a bool key-padding mask, causal
    only with ``Nq == Nk``) and the chosen backend can run them; everything else goes to torch, which
    also raises torch's own errors for inputs it rejects."""

    def torch_sdpa():
        return _torch_sdpa(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )

    tensors = (query, key, value)
    if not all(isinstance(t, Tensor) and t.dim() == 4 for t in tensors):
        return torch_sdpa()
    if not (query.dtype == key.dtype == value.dtype):
        return torch_sdpa()
    if not (query.device == key.device == value.device) or key.shape != value.shape:
        return torch_sdpa()
    batch, heads_q, nq, head_dim = query.shape
    heads_kv, nk = key.shape[1], key.shape[2]
    if key.shape[0] != batch or key.shape[3] != head_dim or head_dim == 0 or heads_kv == 0:
        return torch_sdpa()
    if heads_q != heads_kv and not (enable_gqa and heads_kv > 0 and heads_q % heads_kv == 0):
        return torch_sdpa()
    if is_causal and (attn_mask is not None or nq != nk):
        return torch_sdpa()
    if not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p < 1.0):
        return torch_sdpa()
    key_padding_mask = None
    if attn_mask is not None:
        key_padding_mask = _as_key_padding_mask(attn_mask, batch, nk)
        if key_padding_mask is None or key_padding_mask.device != query.device:
            return torch_sdpa()
    # The fused backends that can serve the call (their dtypes and head dims: fastattn.capabilities).
    used = used_features({}, dropout_p=dropout_p)
    fused = [
        name
        for name in backends.AUTO_ORDER
        if name in backends.FUSED and not _backend_reasons(name, query, key, value, used=used)
    ]
    default = backends.default_backend()
    if not fused or (default != "auto" and default not in fused):
        return torch_sdpa()
    return attention(
        query,
        key,
        value,
        causal=is_causal,
        scale=scale,
        key_padding_mask=key_padding_mask,
        dropout_p=dropout_p,
        backend=default if default != "auto" else fused[0],
    )
