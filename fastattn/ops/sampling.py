"""Sampling: input checks, backend choice, the custom op of the fused kernel, and ``fastattn.sample``.

Layers (DESIGN.md §2): ``fastattn.sample`` checks the inputs once, turns every parameter into a per-row
tensor, draws the per-row seeds once and picks the backend once; the Triton backend is a
``torch.library`` custom op (with a fake implementation, so ``torch.compile`` can trace it). Sampling
is not differentiable: no autograd is registered.

Backends: ``triton`` (kernels/sampling.py: sort-free selection of the thresholds and Gumbel-max),
``torch`` (PyTorch has no fused sampling op: this is the sort-based reference itself,
``fastattn.reference.sample``), ``naive`` (the reference), ``cuda`` (csrc/sampling: the Triton kernel's
algorithm in CUDA C++, also a custom op). Every backend draws
the same Philox stream, so the same seed gives the same tokens on each of them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import backends, capabilities, reference
from ..backends import Backend
from ..kernels.layout import last_dim_contiguous  # plain torch: imports no Triton

INT64 = torch.iinfo(torch.int64)


# ------------------------------------------------------------------------------------ input checks
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# name -> (what a valid value is, its test on a Python number, its test on a tensor, the "off" value)
_RULES = {
    "temperature": (
        "a finite number >= 0 (0 = greedy)",
        lambda v: math.isfinite(v) and v >= 0,
        lambda t: torch.isfinite(t) & (t >= 0),
        1.0,
    ),
    "top_k": ("an integer >= 1", lambda v: v >= 1, lambda t: t >= 1, None),
    "top_p": ("a number in (0, 1]", lambda v: 0 < v <= 1, lambda t: (t > 0) & (t <= 1), 1.0),
    "min_p": ("a number in [0, 1]", lambda v: 0 <= v <= 1, lambda t: (t >= 0) & (t <= 1), 0.0),
}
_DTYPES = {"temperature": torch.float32, "top_k": torch.int64, "top_p": torch.float64, "min_p": torch.float64}


def _check_logits(logits) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"sample: logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"sample: logits must be a floating-point tensor, got {logits.dtype}")
    if logits.dim() not in (1, 2):
        raise ValueError(f"sample: logits must be (B, V) or (V,), got shape {tuple(logits.shape)}")
    if logits.shape[-1] == 0:
        raise ValueError(f"sample: logits must have at least one token (V >= 1), got {tuple(logits.shape)}")


def _row_tensor(name: str, value, batch: int, vocab: int, logits: Tensor) -> tuple[Tensor, Tensor | None]:
    """``value`` as a ``(B,)`` tensor of the parameter's dtype on the logits' device, and for a tensor
    argument the bool ``(B,)`` of its valid entries (checked by the caller with one sync for all)."""
    rule, number_ok, tensor_ok, off = _RULES[name]
    dtype = _DTYPES[name]
    if value is None:
        value = vocab if name == "top_k" else off
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"sample: {name} must be a real tensor, got {value.dtype}")
        if name == "top_k" and value.is_floating_point():
            raise TypeError(f"sample: top_k must be an integer tensor, got {value.dtype}")
        shapes = ((batch,), (1,), ()) if batch == 1 else ((batch,),)
        if tuple(value.shape) not in shapes:
            raise ValueError(
                f"sample: {name} must be a number, None or a ({batch},) tensor (one value per row), "
                f"got shape {tuple(value.shape)}"
            )
        if value.device != logits.device:
            raise ValueError(f"sample: {name} must be on {logits.device} like the logits, not {value.device}")
        value = value.reshape(-1).expand(batch).to(dtype)  # checked after the cast: 1e39 is inf in float32
        return value, tensor_ok(value)
    integer = name == "top_k"
    well_typed = isinstance(value, int) and not isinstance(value, bool) if integer else _is_number(value)
    if not well_typed:
        raise TypeError(f"sample: {name} must be {rule}, None or a (B,) tensor, got {value!r}")
    if integer:
        if not number_ok(value):
            raise ValueError(f"sample: {name} must be {rule}, got {value!r}")
        value = min(value, vocab)  # k >= V keeps everything
    elif not number_ok(float(torch.tensor(value, dtype=dtype))):  # checked after the cast, as tensors are
        dtype_name = str(dtype).removeprefix("torch.")
        raise ValueError(f"sample: {name} must be {rule} (in {dtype_name}), got {value!r}")
    return torch.full((batch,), value, dtype=dtype, device=logits.device), None


def _check_tensor_values(checks: dict[str, Tensor]) -> None:
    """Raises for the first per-row tensor with an invalid entry; one device sync for all of them."""
    if not checks:
        return
    names = list(checks)
    ok = torch.stack([checks[name].all() for name in names]).tolist()
    for name, fine in zip(names, ok, strict=True):
        if not fine:
            raise ValueError(f"sample: every entry of {name} must be {_RULES[name][0]}")


def row_parameters(logits: Tensor, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """Checks the parameters of ``sample`` for ``(B, V)`` logits and returns them as ``(B,)`` tensors on the
    logits' device: temperature float32, top_k int64 (V = off), top_p float64 (1 = off), min_p float64
    (0 = off). What the backends (and ``fastattn.kernels.sampling.filter_mask``) take."""
    batch, vocab = logits.shape
    params, checks = [], {}
    for name, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("min_p", min_p)):
        tensor, check = _row_tensor(name, value, batch, vocab, logits)
        params.append(tensor)
        if check is not None:
            checks[name] = check
    _check_tensor_values(checks)
    return tuple(params)


def _seeds(seed, generator, batch: int, logits: Tensor) -> Tensor:
    if seed is not None and generator is not None:
        raise ValueError("sample: pass seed or generator, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"sample: generator must be a torch.Generator, got {type(generator).__name__}")
    if isinstance(seed, Tensor):
        if seed.dtype == torch.bool or seed.is_floating_point() or seed.is_complex():
            raise TypeError(f"sample: seed must be an int or an integer (B,) tensor, got {seed.dtype}")
        shapes = ((batch,), (1,), ()) if batch == 1 else ((batch,),)
        if tuple(seed.shape) not in shapes:
            raise ValueError(f"sample: seed must be an int or a ({batch},) tensor, got {tuple(seed.shape)}")
        if seed.device != logits.device:
            raise ValueError(f"sample: seed must be on the logits' device {logits.device}, got {seed.device}")
    elif seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"sample: seed must be an int or an int64 (B,) tensor, got {seed!r}")
        if not INT64.min <= seed <= INT64.max:
            raise ValueError(f"sample: seed must fit in int64, got {seed}")
    return reference.sampling_seeds(seed, generator, batch, logits.device)


def _backend_reasons(name: str, logits: Tensor) -> list[str]:
    """Why backend ``name`` cannot serve this sampling call (empty: it can)."""
    reasons = backends.device_reasons(name, logits.device)
    return reasons + capabilities.reasons("sampling", name, dtypes=[("", logits.dtype)], vocab=logits.shape[-1])


# ---------------------------------------------------------------------------- the Triton custom op
def _sample_fake(logits, temperature, top_k, top_p, min_p, seeds, return_logprobs):
    """The outputs' shapes and dtypes, for both fused backends' ops (torch.compile traces these)."""
    batch = logits.shape[0]
    tokens = logits.new_empty((batch,), dtype=torch.int64)
    return tokens, logits.new_empty((batch if return_logprobs else 0,), dtype=torch.float32)


# Both fused backends share one schema: int64 tokens (B,) and float32 log-probs (B,), or (0,) without
# return_logprobs.
_SCHEMA = (
    "(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, Tensor seeds, "
    "bool return_logprobs) -> (Tensor, Tensor)"
)


@torch.library.custom_op("fastattn::sample_triton", mutates_args=(), schema=_SCHEMA)
def _sample_triton(logits, temperature, top_k, top_p, min_p, seeds, return_logprobs):
    """The fused Triton kernel (kernels/sampling.py)."""
    from ..kernels import sampling as kernels  # imported on first use: triton reads TRITON_INTERPRET then

    return kernels.sample(logits, temperature, top_k, top_p, min_p, seeds, return_logprobs)


_sample_triton.register_fake(_sample_fake)


# ------------------------------------------------------------------------------ the CUDA custom op
@torch.library.custom_op("fastattn::sample_cuda", mutates_args=(), schema=_SCHEMA)
def _sample_cuda(logits, temperature, top_k, top_p, min_p, seeds, return_logprobs):
    """The CUDA C++ kernel (csrc/sampling): the Triton kernel's thresholds and random stream, so the
    same seeds give the same tokens."""
    from .. import _C

    logits = last_dim_contiguous(logits)
    # splits=0: chosen for the batch, vocabulary and GPU (several blocks per row at small batch)
    parameters = (temperature, top_k, top_p, min_p, seeds)
    tokens, logprobs, _ = _C.sample(logits, *parameters, draw=True, return_logprobs=return_logprobs, write_mask=False)
    return tokens, logprobs


_sample_cuda.register_fake(_sample_fake)


# ------------------------------------------------------------------------- the backends, as calls
def _sample_reference(logits, temperature, top_k, top_p, min_p, seeds, return_logprobs):
    drawn = reference.sample(
        logits,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        seed=seeds,
        return_logprobs=return_logprobs,
    )
    return drawn if return_logprobs else (drawn, None)


# torch has no fused sampling op: its backend is the sort-based reference (same stream, same tokens).
_IMPLEMENTATIONS = {
    Backend.CUDA: _sample_cuda,
    Backend.TRITON: _sample_triton,
    Backend.TORCH: _sample_reference,
    Backend.NAIVE: _sample_reference,
}


# ------------------------------------------------------------------------------ the functional API
def sample(
    logits: Tensor,
    *,
    temperature=1.0,
    top_k=None,
    top_p=None,
    min_p=None,
    seed=None,
    generator: torch.Generator | None = None,
    return_logprobs: bool = False,
    backend: str = "auto",
):
    """Draws one token per row from ``softmax(logits / temperature)`` restricted by top-k, top-p and min-p,
    without sorting the vocabulary (the Triton kernel finds the thresholds by selection).

    Semantics (Hugging Face ``generate``'s warpers in their order, and ``fastattn.reference.filter_logits``):

    1. temperature: ``z = logits / T`` (in float32; float64 logits stay float64 on the reference
       backends); ``T == 0`` means greedy: the first maximal logit, whatever the other parameters.
    2. top-k: keep ``z >= `` the k-th largest ``z`` (ties with it are kept); ``k >= V`` keeps all.
    3. top-p: on the distribution renormalized over the top-k set, keep a token iff the probability mass
       of the tokens ranked strictly above it is ``< p`` (the token crossing ``p`` is kept, and every
       token tied with it); ``p == 1`` keeps all.
    4. min-p: keep ``prob >= min_p * max_prob``.
    5. The most likely token is always kept; one token is drawn from the softmax over the kept tokens.

    Special rows: a row with a NaN, or with every logit ``-inf``, gives token ``-1`` (log-prob NaN). A row
    with ``+inf`` logits (including ``x / T`` overflowing) draws uniformly among its ``+inf`` entries: the
    limit of the softmax, where every finite token has probability 0.

    Args:
        logits: ``(B, V)`` or ``(V,)``, any float dtype (the fused backend takes float16, bfloat16 and
            float32), any row stride.
        temperature, top_k, top_p, min_p: each a Python number, ``None`` (off) or a ``(B,)`` tensor on the
            logits' device (one value per row), so greedy and sampled rows, and rows with different
            filters, share one batch. ``temperature >= 0`` and finite; ``top_k >= 1`` (integer);
            ``0 < top_p <= 1``; ``0 <= min_p <= 1``. Invalid values raise ``ValueError`` naming the
            argument (tensor values are checked with one device synchronization per call).
        seed: an int (used by every row: rows with equal logits then draw equal tokens) or an integer
            ``(B,)`` tensor of per-row seeds.
        generator: a ``torch.Generator`` the per-row seeds are drawn from (not with ``seed``). With
            neither, they come from torch's default generator of the logits' device, so
            ``torch.manual_seed`` makes runs repeatable.
        return_logprobs: also return the float32 ``(B,)`` log-probability of each drawn token under the
            final filtered, renormalized distribution (0 for greedy rows).
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"torch"`` or ``"naive"`` (see
            :mod:`fastattn.backends`).

    Randomness: Gumbel-max with noise from Philox4x32-10 keyed by the row's seed with the token index as
    counter (the exact stream is documented in ``fastattn.kernels.sampling``). A row's token depends
    only on its logits, parameters and seed: not on the batch size, the row's position, or the backend.

    Returns:
        int64 tokens ``(B,)`` (0-d for ``(V,)`` logits), or ``(tokens, logprobs)``.
    """
    _check_logits(logits)
    rows = logits.unsqueeze(0) if logits.dim() == 1 else logits  # (B, V)
    params = row_parameters(rows, temperature, top_k, top_p, min_p)
    seeds = _seeds(seed, generator, rows.shape[0], rows)
    name = backends.select("sample", backend, lambda candidate: _backend_reasons(candidate, rows))
    tokens, logprobs = _IMPLEMENTATIONS[name](rows, *params, seeds, bool(return_logprobs))
    if logits.dim() == 1:
        tokens = tokens.squeeze(0)
        logprobs = logprobs.squeeze(0) if return_logprobs else logprobs
    return (tokens, logprobs) if return_logprobs else tokens
