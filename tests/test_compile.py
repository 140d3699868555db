"""torch.compile over fastattn (fullgraph, same outputs and gradients as eager), and
torch.library.opcheck over every custom op registered under the ``fastattn`` namespace.

On a CPU the Triton kernels run through Triton's interpreter (conftest sets TRITON_INTERPRET=1):
torch.compile then traces the custom ops through their fake implementations and calls the real,
interpreted kernels at run time, so the same tests hold on a GPU.
"""

import importlib
import pkgutil

import pytest
import torch
from torch import nn

import fastattn
import fastattn.ops
from fastattn import backends


class Block(nn.Module):
    """A pre-norm transformer block on fastattn's modules, with a key padding mask and a causal one."""

    def __init__(self, backend, dim=32, heads=4):
        super().__init__()
        self.norm1 = fastattn.nn.LayerNorm(dim, backend=backend)
        self.attn = fastattn.nn.MultiheadAttention(dim, heads, batch_first=True, backend=backend)
        self.norm2 = fastattn.nn.RMSNorm(dim, eps=1e-6, backend=backend)
        self.mlp = nn.Linear(dim, dim)

    def forward(self, x, padding, causal_mask):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=padding, need_weights=False)[0]
        h, x = self.norm2(self.mlp(x), residual=x)  # fused Add & Norm
        return x + self.attn(h, h, h, attn_mask=causal_mask, is_causal=True, need_weights=False)[0]


def block_inputs(batch=2, seq=7, dim=32):
    x = torch.randn(batch, seq, dim, requires_grad=True)
    padding = torch.zeros(batch, seq, dtype=torch.bool)  # torch's sense: True = ignore
    padding[1, -2:] = True
    causal_mask = torch.ones(seq, seq, dtype=torch.bool).triu(diagonal=1)
    return x, padding, causal_mask


def run(model, x, padding, causal_mask):
    out = model(x, padding, causal_mask)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    grads = [x.grad] + [p.grad for p in model.parameters()]
    x.grad = None
    model.zero_grad()
    return out.detach(), grads


def assert_compiled_matches_eager(backend, compiler):
    torch._dynamo.reset()
    model = Block(backend)
    inputs = block_inputs()
    expected, expected_grads = run(model, *inputs)
    out, grads = run(torch.compile(model, fullgraph=True, backend=compiler), *inputs)
    # The same kernels run in both; inductor may fuse and reorder the surrounding torch ops.
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_model_compiles_fullgraph(backend):
    assert_compiled_matches_eager(backend, "aot_eager")


def test_model_compiles_fullgraph_with_inductor():
    assert_compiled_matches_eager("torch", "inductor")


def _triton_or_skip(device):
    reasons = backends.device_reasons("triton", torch.device(device))
    if reasons:
        pytest.skip("triton cannot run here: " + "; ".join(reasons))


@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_model_on_triton_compiles_fullgraph(backend, device):
    _triton_or_skip(device)
    assert_compiled_matches_eager(backend, "aot_eager")


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_triton_custom_ops_compile_fullgraph(compiler, device):
    """The Triton ops themselves trace (fake implementations) and run compiled, forward and backward."""
    _triton_or_skip(device)
    torch._dynamo.reset()

    def attention_then_norm(q, k, v, padding, weight, bias):
        out, _ = torch.ops.fastattn.attention_fwd_triton(q, k, v, padding, True, 0.25, 0.0, 0, False)
        y, _, _, _ = torch.ops.fastattn.norm_fwd_triton(out, None, weight, bias, 1e-5, False, False)
        return y

    q = torch.randn(2, 4, 9, 16, device=device, requires_grad=True)
    k, v = (torch.randn(2, 2, 9, 16, device=device, requires_grad=True) for _ in range(2))
    weight, bias = (torch.randn(16, device=device, requires_grad=True) for _ in range(2))
    padding = torch.rand(2, 9, device=device) > 0.2
    leaves = (q, k, v, weight, bias)
    results = []
    compiled = torch.compile(attention_then_norm, fullgraph=True, backend=compiler)
    for function in (attention_then_norm, compiled):
        out = function(q, k, v, padding, weight, bias)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        results.append((out, grads))
    (expected, expected_grads), (out, grads) = results
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------- opcheck
def registered_ops() -> list[str]:
    """Every custom op under torch.ops.fastattn, after importing every module of fastattn.ops."""
    for module in pkgutil.iter_modules(fastattn.ops.__path__):
        importlib.import_module(f"fastattn.ops.{module.name}")
    namespace = torch.ops.fastattn
    return sorted(name for name in dir(namespace) if isinstance(getattr(namespace, name), torch._ops.OpOverloadPacket))


def _leaf(*shape, device, dtype=torch.float32, grad=True):
    return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)


def _attention_fwd_samples(device):
    """args: q, k, v, key_padding_mask, causal, scale, dropout_p, seed, deterministic."""

    def bnhd(batch, seq, heads, dim):  # (B, N, H, D) storage seen as (B, H, N, D), as models hand it over
        return _leaf(batch, seq, heads, dim, device=device, grad=False).transpose(1, 2).requires_grad_()

    padding = torch.rand(2, 11, device=device) > 0.3
    return {
        "GQA, Nq < Nk, causal, key padding": (
            _leaf(2, 4, 9, 16, device=device),
            _leaf(2, 2, 11, 16, device=device),
            _leaf(2, 2, 11, 16, device=device),
            padding,
            True,
            0.25,
            0.0,
            0,
            False,
        ),
        "(B, N, H, D) layout, dropout": (
            bnhd(2, 9, 4, 16),
            bnhd(2, 11, 2, 16),
            bnhd(2, 11, 2, 16),
            None,
            False,
            0.3,
            0.2,
            1234,
            False,
        ),
        "Nq > Nk, causal, deterministic": (
            _leaf(1, 2, 13, 8, device=device),
            _leaf(1, 2, 5, 8, device=device),
            _leaf(1, 2, 5, 8, device=device),
            None,
            True,
            0.35,
            0.0,
            0,
            True,
        ),
    }


def _attention_bwd_samples(device):
    """args: dout, q, k, v, out, lse, dlse, then the forward's options; the upstream gradients vary:
    random, stride 0 (what .sum() gives) with a log-sum-exp gradient, random with one."""
    samples = {}
    upstreams = ("random dout", "expanded dout, dlse", "random dout, dlse")
    forward_samples = _attention_fwd_samples(device).items()
    for upstream, (label, (q, k, v, *options)) in zip(upstreams, forward_samples, strict=True):
        q, k, v = (t.detach() for t in (q, k, v))
        out, lse = torch.ops.fastattn.attention_fwd_triton(q, k, v, *options)
        if upstream.startswith("expanded"):
            dout = torch.ones((), device=device).expand(out.shape)
        else:
            dout = torch.randn_like(out)
        dlse = torch.randn_like(lse) if upstream.endswith("dlse") else None
        samples[f"{label}; {upstream}"] = (dout, q, k, v, out, lse, dlse, *options)
    return samples


def _norm_fwd_samples(device):
    """args: x, residual, weight, bias, eps, rms, residual_in_fp32."""
    strided_rows = torch.randn(6, 48, device=device)[:, :40].requires_grad_()
    half = torch.randn(5, 24, device=device, dtype=torch.float16)
    return {
        "layer norm, residual, bias": (
            _leaf(3, 5, 40, device=device),
            _leaf(3, 5, 40, device=device),
            _leaf(40, device=device),
            _leaf(40, device=device),
            1e-5,
            False,
            False,
        ),
        "rms norm, strided rows": (strided_rows, None, _leaf(40, device=device), None, 1e-6, True, False),
        "float16, residual in float32, float32 weight": (
            half.requires_grad_(),
            torch.randn_like(half).requires_grad_(),
            _leaf(24, device=device),
            None,
            1e-6,
            True,
            True,
        ),
        "no weight": (_leaf(4, 7, device=device), None, None, None, 1e-5, False, False),
    }


def _norm_bwd_samples(device):
    """args: dy (stride 0, as .sum() gives), ds, x, residual, weight, bias, mean, rstd, rms."""
    samples = {}
    for label, (x, residual, weight, bias, eps, rms, residual_in_fp32) in _norm_fwd_samples(device).items():
        x, residual, weight, bias = (t if t is None else t.detach() for t in (x, residual, weight, bias))
        y, s, mean, rstd = torch.ops.fastattn.norm_fwd_triton(x, residual, weight, bias, eps, rms, residual_in_fp32)
        dy = torch.ones((), device=device, dtype=y.dtype).expand(y.shape)
        ds = torch.randn_like(s) if residual is not None else None
        samples[label] = (dy, ds, x, residual, weight, bias, mean, rstd, rms)
    return samples


def _sample_samples(device):
    """args: logits, temperature, top_k, top_p, min_p, seeds (one per row), return_logprobs."""

    def rows(*values, dtype):
        return torch.tensor(values, device=device, dtype=dtype)

    return {
        "mixed filters, greedy row, log-probs": (
            torch.randn(3, 50, device=device),
            rows(1.0, 0.0, 0.7, dtype=torch.float32),
            rows(50, 5, 10, dtype=torch.int64),
            rows(1.0, 0.9, 0.5, dtype=torch.float64),
            rows(0.0, 0.1, 0.05, dtype=torch.float64),
            rows(1, 2, 3, dtype=torch.int64),
            True,
        ),
        "strided rows": (
            torch.randn(3, 64, device=device)[:, :40],
            rows(1.0, 1.0, 1.0, dtype=torch.float32),
            rows(40, 40, 40, dtype=torch.int64),
            rows(1.0, 1.0, 1.0, dtype=torch.float64),
            rows(0.0, 0.0, 0.0, dtype=torch.float64),
            rows(7, 7, 7, dtype=torch.int64),
            False,
        ),
    }


# The cuda and triton twins share one schema, hence one set of sample inputs.
SAMPLE_INPUTS = {
    f"{op}_{backend}": samples
    for op, samples in (
        ("attention_fwd", _attention_fwd_samples),
        ("attention_bwd", _attention_bwd_samples),
        ("norm_fwd", _norm_fwd_samples),
        ("norm_bwd", _norm_bwd_samples),
        ("sample", _sample_samples),
    )
    for backend in ("cuda", "triton")
}


@pytest.mark.parametrize("op_name", registered_ops())
def test_opcheck_every_custom_op(op_name, device):
    """Schema, fake tensors (torch.compile), autograd registration and AOT dispatch of every op; a
    new op fails here until it gets sample inputs in SAMPLE_INPUTS."""
    if op_name not in SAMPLE_INPUTS:
        pytest.fail(f"fastattn::{op_name} has no sample inputs: add them to SAMPLE_INPUTS in {__file__}")
    backend = op_name.rsplit("_", 1)[1]
    reasons = backends.device_reasons(backend, torch.device(device))
    if reasons:
        pytest.skip(f"{backend} cannot run here: " + "; ".join(reasons))
    op = getattr(torch.ops.fastattn, op_name).default
    for label, args in SAMPLE_INPUTS[op_name](device).items():
        try:
            torch.library.opcheck(op, args)
        except Exception as error:
            raise AssertionError(f"fastattn::{op_name} ({label}): {error}") from error


def test_opcheck_covers_every_registered_op():
    assert set(SAMPLE_INPUTS) == set(registered_ops()), "SAMPLE_INPUTS names ops that are not registered"
