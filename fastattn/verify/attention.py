"""Verify cases for attention: output, lse and gradients against the float64 reference."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import reference
from ..ops.attention import attention
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

    def __str__(self) -> str:
        features = [name for name, on in (("causal", self.causal), ("padding", self.padding)) if on]
        return (
            f"B={self.batch} Hq={self.heads_q} Hkv={self.heads_kv} Nq={self.nq} Nk={self.nk} "
            f"D={self.head_dim}" + "".join(" " + f for f in features)
        )


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
    wants_lse = backend != "torch"  # torch's SDPA does not return the log-sum-exp
    ours = _forward_backward(
        lambda *qkv: attention(*qkv, return_lse=wants_lse, backend=backend, **options), q, k, v, dout
    )
    exact = _forward_backward(
        lambda *qkv: reference.attention(*qkv, return_lse=True, **options),
        *(t.double() for t in (q, k, v, dout)),
    )
    plain = _forward_backward(lambda *qkv: reference.attention(*qkv, return_lse=True, **options), q, k, v, dout)
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
)
FULL_SHAPES = QUICK_SHAPES + (
    Shape(2, 8, 8, 1025, 1025, 128, causal=True),
    Shape(2, 8, 2, 1025, 1025, 64, padding=True),
    Shape(1, 4, 4, 128, 1025, 256, causal=True),
    Shape(2, 6, 3, 200, 1025, 111, causal=True, padding=True),
    Shape(4, 16, 16, 2048, 2048, 96),
    Shape(1, 2, 2, 4096, 4096, 16, causal=True),
)


def cases(device: torch.device, full: bool) -> list[Case]:
    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    shapes = FULL_SHAPES if full else QUICK_SHAPES
    return [Case(OP, dtype, str(shape), functools.partial(check, shape, dtype)) for shape in shapes for dtype in dtypes]
