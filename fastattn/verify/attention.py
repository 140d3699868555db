"""Verify cases for attention: output, lse and gradients against the float64 reference."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import capabilities, reference
from ..ops.attention import attention, attention_varlen
from ..testing import FORWARD_FACTOR, GRADIENT_FACTOR, error_report
from .common import Case, Row

OP = "attention"


@dataclass(frozen=True)
class Shape:
    batch: int
    heads_q: int
    heads_kv: int
    nq: int
    nk: int
    head_dim: int
    causal: bool = False
    padding: bool = False  # a key padding mask, with one batch row entirely padded when batch > 1
    window: tuple[int, int] | None = None
    softcap: float = 0.0
    alibi: bool = False  # ALiBi's geometric slopes, 2^(-8 h / Hq)
    sinks: bool = False  # one random sink logit per query head

    def __str__(self) -> str:
        features = [name for name, on in (("causal", self.causal), ("padding", self.padding)) if on]
        features += [f"window={self.window}"] if self.window is not None else []
        features += [f"softcap={self.softcap:g}"] if self.softcap else []
        features += [name for name, on in (("alibi", self.alibi), ("sinks", self.sinks)) if on]
        return (
            f"B={self.batch} Hq={self.heads_q} Hkv={self.heads_kv} Nq={self.nq} Nk={self.nk} "
            f"D={self.head_dim}" + "".join(" " + f for f in features)
        )

    def features(self, device: torch.device, exact: bool) -> dict:
        """window, softcap, alibi_slopes and sinks as attention keywords (float64 sinks for the exact run)."""
        features = {"window": self.window, "softcap": self.softcap}
        if self.alibi:
            exponents = torch.arange(1, self.heads_q + 1, dtype=torch.float32)
            features["alibi_slopes"] = torch.pow(2.0, -8.0 * exponents / self.heads_q).to(device)
        if self.sinks:
            sinks = torch.randn(self.heads_q, generator=torch.Generator().manual_seed(1))
            features["sinks"] = sinks.to(device=device, dtype=torch.float64 if exact else torch.float32)
        return features


def make_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Random q, k, v, upstream gradient and key padding mask for ``shape`` (a fixed seed per case)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)

    q = randn(shape.batch, shape.heads_q, shape.nq, shape.head_dim)
    k = randn(shape.batch, shape.heads_kv, shape.nk, shape.head_dim)
    v = randn(shape.batch, shape.heads_kv, shape.nk, shape.head_dim)
    dout = randn(shape.batch, shape.heads_q, shape.nq, shape.head_dim)
    mask = None
    if shape.padding:
        mask = torch.rand(shape.batch, shape.nk, generator=generator) > 0.3
        mask[-1] = False if shape.batch > 1 else mask[-1]
        mask = mask.to(device)
    return q, k, v, dout, mask


def _forward_backward(fn, q, k, v, dout):
    """Output, lse (or None) and the gradients of ``(out * dout).sum()``."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    result = fn(q, k, v)
    out, lse = result if isinstance(result, tuple) else (result, None)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    return out.detach(), lse, dq, dk, dv


def check(shape: Shape, dtype: torch.dtype, backend: str, device: torch.device) -> Row:
    q, k, v, dout, mask = make_inputs(shape, dtype, device)
    options = dict(causal=shape.causal, key_padding_mask=mask)
    features, exact_features = shape.features(device, exact=False), shape.features(device, exact=True)
    wants_lse = backend != "torch"  # torch's SDPA does not return the log-sum-exp
    ours = _forward_backward(
        lambda *qkv: attention(*qkv, return_lse=wants_lse, backend=backend, **options, **features), q, k, v, dout
    )
    exact = _forward_backward(
        lambda *qkv: reference.attention(*qkv, return_lse=True, **options, **exact_features),
        *(t.double() for t in (q, k, v, dout)),
    )
    plain = _forward_backward(
        lambda *qkv: reference.attention(*qkv, return_lse=True, **options, **features), q, k, v, dout
    )
    reports = [error_report("out", ours[0], exact[0], plain[0], factor=FORWARD_FACTOR)]
    if wants_lse:
        reports.append(error_report("lse", ours[1], exact[1], plain[1], factor=FORWARD_FACTOR))
    for index, name in ((2, "dq"), (3, "dk"), (4, "dv")):
        reports.append(error_report(name, ours[index], exact[index], plain[index], factor=GRADIENT_FACTOR))
    return Row.from_reports(OP, backend, str(dtype).removeprefix("torch."), str(shape), reports)


QUICK_SHAPES = (
    Shape(1, 2, 2, 17, 17, 64, causal=True),
    Shape(2, 4, 2, 97, 200, 59, padding=True),
    Shape(1, 4, 1, 200, 97, 40, causal=True),
    Shape(2, 2, 1, 1, 128, 128, causal=True, padding=True),
    Shape(1, 4, 2, 97, 200, 64, causal=True, window=(32, 0)),  # a sliding window (Mistral)
    Shape(1, 4, 4, 65, 65, 40, softcap=20.0),  # Gemma 2
    Shape(2, 4, 2, 33, 47, 32, padding=True, alibi=True),  # BLOOM, MPT
    Shape(2, 4, 4, 50, 50, 64, causal=True, padding=True, sinks=True),  # gpt-oss; a row with no key
)


def full_shapes() -> tuple[Shape, ...]:
    """The GPU grid: the quick one, longer sequences, and the widest head dim the fused backends serve."""
    widest = capabilities.fused_max_head_dim()
    return QUICK_SHAPES + (
        Shape(1, 8, 2, 2048, 2048, 128, causal=True, window=(511, 0), sinks=True),
        Shape(1, 8, 8, 1024, 1024, widest, causal=True, softcap=50.0),
        Shape(2, 8, 8, 1025, 1025, 128, causal=True),
        Shape(2, 8, 2, 1025, 1025, 64, padding=True),
        Shape(1, 4, 4, 128, 1025, widest, causal=True),
        Shape(2, 6, 3, 200, 1025, 111, causal=True, padding=True),
        Shape(4, 16, 16, 2048, 2048, 96),
        Shape(1, 2, 2, 4096, 4096, 16, causal=True),
    )


def check_varlen(lengths: tuple[tuple[int, int], ...], dtype: torch.dtype, backend: str, device: torch.device) -> Row:
    """Packed sequences of (Nq, Nk) ``lengths``, causal with a window, against each sequence's reference."""
    generator = torch.Generator().manual_seed(2)
    cu_q = torch.tensor([0, *torch.tensor([n for n, _ in lengths]).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor([n for _, n in lengths]).cumsum(0).tolist()], dtype=torch.int32)
    q, dout = (torch.randn(int(cu_q[-1]), 4, 64, generator=generator).to(device, dtype) for _ in range(2))
    k, v = (torch.randn(int(cu_k[-1]), 2, 64, generator=generator).to(device, dtype) for _ in range(2))
    cu_q, cu_k = cu_q.to(device), cu_k.to(device)
    longest_q, longest_k = max(n for n, _ in lengths), max(n for _, n in lengths)
    options = dict(causal=True, window=(64, 0))
    ours = _forward_backward(
        lambda *qkv: attention_varlen(
            *qkv, cu_q, cu_k, longest_q, longest_k, return_lse=True, backend=backend, **options
        ),
        q,
        k,
        v,
        dout,
    )

    def textbook(*qkv):
        return reference.attention_varlen(*qkv, cu_q, cu_k, return_lse=True, **options)

    exact = _forward_backward(textbook, *(t.double() for t in (q, k, v, dout)))
    plain = _forward_backward(textbook, q, k, v, dout)
    reports = [
        error_report("out", ours[0], exact[0], plain[0], factor=FORWARD_FACTOR),
        error_report("lse", ours[1], exact[1], plain[1], factor=FORWARD_FACTOR),
    ]
    for index, name in ((2, "dq"), (3, "dk"), (4, "dv")):
        reports.append(error_report(name, ours[index], exact[index], plain[index], factor=GRADIENT_FACTOR))
    label = "varlen " + " ".join(f"{nq}x{nk}" for nq, nk in lengths) + " causal window=(64, 0)"
    return Row.from_reports(OP, backend, str(dtype).removeprefix("torch."), label, reports)


# A realistic mix of packed lengths: short and long sequences, an empty one and a single token.
QUICK_VARLEN = ((37, 37), (0, 5), (1, 1), (120, 150))
FULL_VARLEN = ((512, 512), (37, 37), (0, 5), (1, 1), (1900, 2048), (300, 300))


def cases(device: torch.device, full: bool) -> list[Case]:
    dtypes = capabilities.fused_dtypes("attention")
    shapes = full_shapes() if full else QUICK_SHAPES
    padded = [
        Case(OP, dtype, str(shape), functools.partial(check, shape, dtype)) for shape in shapes for dtype in dtypes
    ]
    lengths = FULL_VARLEN if full else QUICK_VARLEN
    packed = [Case(OP, dtype, f"varlen {lengths}", functools.partial(check_varlen, lengths, dtype)) for dtype in dtypes]
    return padded + packed
