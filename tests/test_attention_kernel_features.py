"""The fused kernels' sliding window, softcap, ALiBi, sinks and packed sequences, forward and backward,
against the float64 reference under the numerics rule (DESIGN.md §4): out, lse, dq, dk, dv and dsinks,
on awkward shapes. On the CPU the Triton kernels run in Triton's interpreter (128-row tiles there, so
shapes past 128 cross tile edges and skip tiles outside a window)."""

from __future__ import annotations

import math

import pytest
import torch

import fastattn
from fastattn import capabilities, reference
from fastattn.kernels import attention as kernels
from fastattn.testing import FORWARD_FACTOR, GRADIENT_FACTOR, assert_close_to_reference

FUSED = ["triton", "cuda"]


@pytest.fixture(params=FUSED)
def backend(request, device) -> str:
    reasons = fastattn.backends.device_reasons(request.param, torch.device(device))
    if reasons:
        pytest.skip(f"{request.param}: {'; '.join(reasons)}")
    return request.param


def gradients(outputs, leaves, upstream):
    """Gradients of Σ out·dout + Σ lse·dlse (the lse term only where lse is finite)."""
    (out, lse), (dout, dlse) = outputs, upstream
    loss = (out * dout.to(out.dtype)).sum()
    if dlse is not None:
        loss = loss + torch.where(lse.isinf(), 0.0, lse * dlse.to(lse.dtype)).sum()
    return torch.autograd.grad(loss, leaves)


def assert_matches_reference(label, fused, exact, plain, names):
    for name, got, ref, pla in zip(names, fused, exact, plain, strict=True):
        factor = FORWARD_FACTOR if name in ("out", "lse") else GRADIENT_FACTOR
        assert not got.isnan().any(), f"{label} {name} has NaN"
        assert_close_to_reference(f"{label} {name}", got, ref, pla, factor=factor)


# ----------------------------------------------------------------------------------- padded batches
class Case:
    def __init__(self, label, *, batch=2, heads=(4, 2), nq=37, nk=37, head_dim=16, dtype=torch.float32, **options):
        self.label, self.batch, self.heads, self.nq, self.nk = label, batch, heads, nq, nk
        self.head_dim, self.dtype = head_dim, dtype
        self.options = options  # causal, window, softcap, alibi ("head" | "batch"), sinks, padding, ...

    def __repr__(self) -> str:
        return self.label


CASES = [
    Case("window", window=(3, 1)),
    Case("window left 0", window=(0, 2), nq=20, nk=45),
    Case("window right 0, Nq > Nk (rows with no key)", window=(10, 0), nq=150, nk=40, heads=(2, 2)),
    Case("window wider than the sequences", window=(500, 400), nq=20, nk=33),
    Case("causal window crossing tiles, bf16", window=(16, -1), causal=True, nq=130, nk=260, dtype=torch.bfloat16),
    Case("window one side unlimited, fp16", window=(-1, 5), nq=45, nk=30, dtype=torch.float16),
    Case("softcap, large logits, fp16", softcap=5.0, logit_scale=10.0, dtype=torch.float16),
    Case("softcap, causal Nq < Nk, D 59", softcap=2.0, causal=True, nq=17, nk=40, head_dim=59),
    Case("ALiBi per head, MQA", alibi="head", heads=(4, 1)),
    Case("ALiBi per batch, causal, bf16", alibi="batch", causal=True, nq=29, nk=50, dtype=torch.bfloat16),
    Case("sinks, dlse", sinks=True, lse_loss=True),
    Case("sinks, rows and a batch with no key", sinks=True, padding=True, causal=True, nq=40, nk=25, lse_loss=True),
    Case("sinks fp16, D 1", sinks=True, head_dim=1, dtype=torch.float16, nq=9, nk=140),
    Case(
        "all, GQA, the widest head dim, deterministic",
        window=(7, 2),
        softcap=3.0,
        alibi="batch",
        sinks=True,
        causal=True,
        head_dim=capabilities.max_head_dim("triton"),
        nq=33,
        nk=47,
        deterministic=True,
        lse_loss=True,
    ),
    Case("all with dropout", window=(9, 4), softcap=4.0, alibi="head", sinks=True, dropout_p=0.25, nq=21, nk=30),
]


def case_inputs(case: Case, device):
    opts = case.options
    hq, hkv = case.heads
    logit_scale = opts.get("logit_scale", 1.0)
    q = (torch.randn(case.batch, hq, case.nq, case.head_dim, device=device) * logit_scale).to(case.dtype)
    k, v = (torch.randn(case.batch, hkv, case.nk, case.head_dim, device=device).to(case.dtype) for _ in range(2))
    keywords = {name: opts[name] for name in ("causal", "window", "softcap", "dropout_p") if name in opts}
    if opts.get("alibi"):
        shape = (case.batch, hq) if opts["alibi"] == "batch" else (hq,)
        keywords["alibi_slopes"] = torch.rand(shape, device=device) * 0.5
    if opts.get("sinks"):
        keywords["sinks"] = torch.randn(hq, device=device) * 2
    if opts.get("padding"):
        mask = torch.rand(case.batch, case.nk, device=device) > 0.3
        mask[0] = False  # batch row 0 sees no key at all
        keywords["key_padding_mask"] = mask
    return q, k, v, keywords


def run_reference(q, k, v, keywords, upstream, dtype):
    """(out, lse, dq, dk, dv[, dsinks]) of the reference in ``dtype``."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    options = dict(keywords)
    if "sinks" in options:
        options["sinks"] = options["sinks"].detach().to(dtype).requires_grad_()
        leaves.append(options["sinks"])
    out, lse = reference.attention(*leaves[:3], return_lse=True, **options)
    return (out, lse, *gradients((out, lse), leaves, upstream))


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_features_forward_and_backward(backend, device, case, dropout_seeds):
    q, k, v, keywords = case_inputs(case, device)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    if "sinks" in keywords:
        leaves.append(keywords["sinks"].requires_grad_())
    deterministic = case.options.get("deterministic", False)
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend, deterministic=deterministic, **keywords)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse) if case.options.get("lse_loss") else None
    fused = (out.detach(), lse.detach(), *gradients((out, lse), leaves, (dout, dlse)))

    reference_keywords = {name: value for name, value in keywords.items()}
    if case.options.get("dropout_p"):
        (seed,) = dropout_seeds
        reference_keywords["dropout_keep"] = kernels.dropout_keep_mask(
            case.batch, case.heads[0], case.nq, case.nk, case.options["dropout_p"], seed, device
        )
    exact = run_reference(q, k, v, reference_keywords, (dout, dlse), torch.float64)
    plain = run_reference(q, k, v, reference_keywords, (dout, dlse), case.dtype)
    names = ("out", "lse", "dq", "dk", "dv", "dsinks")[: len(fused)]
    assert_matches_reference(case.label, fused, exact, plain, names)

    visible = reference.attention_visibility(
        case.batch,
        case.nq,
        case.nk,
        causal=keywords.get("causal", False),
        key_padding_mask=keywords.get("key_padding_mask"),
        device=device,
        window=keywords.get("window"),
    )
    blind = ~visible.any(dim=-1).expand(case.batch, case.heads[0], case.nq)  # rows that see no key
    assert (fused[0][blind] == 0).all() and (fused[2][blind] == 0).all()
    no_key_lse = keywords["sinks"].detach()[None, :, None].expand_as(lse) if "sinks" in keywords else -math.inf
    assert torch.equal(fused[1][blind], torch.as_tensor(no_key_lse).expand_as(lse)[blind])


def test_window_tiles_outside_the_band_are_never_read(device):
    """With a window of 8, query block 256..299 (128-row tiles here, as on a GPU) cannot see key 0, so the
    key tile 0..127 is never loaded for it: a NaN value there reaches the blocks that read the tile
    (0·NaN in P V, as in the textbook P V) and no other. A NaN key is selected away from every row that
    does not see it."""
    if fastattn.backends.device_reasons("triton", torch.device(device)):
        pytest.skip("triton cannot run here")
    q, k, v = (torch.randn(1, 2, 300, 16, device=device) for _ in range(3))
    nan_value = v.clone()
    nan_value[:, :, 0] = math.nan
    out = fastattn.attention(q, k, nan_value, window=(8, 8), backend="triton")
    assert out[:, :, :9].isnan().all() and not out[:, :, 256:].isnan().any()
    nan_key = k.clone()
    nan_key[:, :, 0] = math.nan
    out = fastattn.attention(q, nan_key, v, window=(8, 8), backend="triton")
    assert out[:, :, :9].isnan().all() and not out[:, :, 9:].isnan().any()


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic dq", "deterministic"])
def test_window_gradient_is_that_of_the_band_alone(device, deterministic):
    """Queries far from a key get exactly zero gradient through it, and keys outside every window zero dk, dv."""
    if fastattn.backends.device_reasons("triton", torch.device(device)):
        pytest.skip("triton cannot run here")
    q, k, v = (torch.randn(1, 1, 260, 8, device=device).requires_grad_() for _ in range(3))
    out = fastattn.attention(q, k, v, window=(0, 3), backend="triton", deterministic=deterministic)
    out[:, :, 200:].sum().backward()
    assert (q.grad[:, :, :200] == 0).all() and (k.grad[:, :, :200] == 0).all() and (v.grad[:, :, :200] == 0).all()
    assert (k.grad[:, :, 200:].abs().sum(-1) > 0).all()


# ----------------------------------------------------------------------------------- packed sequences
def packed(lengths_q, lengths_k, heads=(4, 2), head_dim=24, dtype=torch.float32, device="cpu"):
    def offsets(lengths):
        return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)

    q = torch.randn(sum(lengths_q), heads[0], head_dim, device=device).to(dtype)
    k, v = (torch.randn(sum(lengths_k), heads[1], head_dim, device=device).to(dtype) for _ in range(2))
    return q, k, v, offsets(lengths_q), offsets(lengths_k)


VARLEN_CASES = {
    "plain": (dict(), torch.float32),
    "causal, bf16": (dict(causal=True), torch.bfloat16),
    "everything": (dict(causal=True, window=(6, -1), softcap=2.0, alibi=True, sinks=True), torch.float32),
    "window, sinks, fp16, dropout": (dict(window=(3, 3), sinks=True, dropout_p=0.2), torch.float16),
}


@pytest.mark.parametrize("name", list(VARLEN_CASES))
def test_varlen_forward_and_backward(backend, device, name, dropout_seeds):
    """Empty, length-1 and one long sequence (crossing the 128-row tiles) packed together, with
    queries and keys of different lengths (Nq < Nk, Nq > Nk and Nk = 0 in one batch)."""
    options, dtype = VARLEN_CASES[name]
    lengths_q, lengths_k = [5, 0, 1, 140, 3, 4], [7, 3, 1, 150, 0, 2]
    q, k, v, cu_q, cu_k = packed(lengths_q, lengths_k, dtype=dtype, device=device)
    keywords = {key: options[key] for key in ("causal", "window", "softcap", "dropout_p") if key in options}
    if options.get("alibi"):
        keywords["alibi_slopes"] = torch.rand(len(lengths_q), 4, device=device)
    if options.get("sinks"):
        keywords["sinks"] = torch.randn(4, device=device)
    leaves = [t.requires_grad_() for t in (q, k, v)] + (
        [keywords["sinks"].requires_grad_()] if "sinks" in keywords else []
    )
    out, lse = fastattn.attention_varlen(
        q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), return_lse=True, backend=backend, **keywords
    )
    assert out.shape == q.shape and out.is_contiguous() and lse.shape == (4, sum(lengths_q))
    upstream = (torch.randn_like(out), torch.randn_like(lse))
    fused = (out.detach(), lse.detach(), *gradients((out, lse), leaves, upstream))

    if "dropout_p" in keywords:  # the kernels' keep mask, per sequence: (B, Hq, max Nq, max Nk)
        (seed,) = dropout_seeds
        keep = kernels.dropout_keep_mask(
            len(lengths_q), 4, max(lengths_q), max(lengths_k), keywords["dropout_p"], seed, device
        )
        keywords["dropout_keep"] = keep

    def run(dtype):
        ref_leaves = [t.detach().to(dtype).requires_grad_() for t in leaves]
        ref_keywords = dict(keywords)
        if "sinks" in keywords:
            ref_keywords["sinks"] = ref_leaves[3]
        out, lse = reference.attention_varlen(*ref_leaves[:3], cu_q, cu_k, return_lse=True, **ref_keywords)
        return (out, lse, *gradients((out, lse), ref_leaves, upstream))

    names = ("out", "lse", "dq", "dk", "dv", "dsinks")[: len(fused)]
    assert_matches_reference(name, fused, run(torch.float64), run(dtype), names)


def test_a_packed_batch_equals_its_sequences_run_one_by_one(backend, device):
    lengths = [3, 130, 1, 17]
    q, k, v, cu_q, cu_k = packed(lengths, lengths, device=device)
    sinks = torch.randn(4, device=device)
    options = dict(causal=True, window=(20, -1), softcap=3.0, sinks=sinks)
    out = fastattn.attention_varlen(q, k, v, cu_q, cu_k, 130, 130, backend=backend, **options)
    for b, (start, end) in enumerate(zip(cu_q.tolist(), cu_q.tolist()[1:], strict=False)):
        one = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]  # (1, H, N_b, D)
        alone = fastattn.attention(*one, backend=backend, **options)[0].transpose(0, 1)
        torch.testing.assert_close(out[start:end], alone, atol=2e-6, rtol=1e-5, msg=f"sequence {b}")


# ----------------------------------------------------------------------------------- the custom ops
def test_opcheck_with_every_feature(device):
    if fastattn.backends.device_reasons("triton", torch.device(device)):
        pytest.skip("triton cannot run here")
    q, k, v = (torch.randn(2, h, 9, 16, device=device).requires_grad_() for h in (4, 2, 2))
    slopes, sinks = torch.rand(2, 4, device=device), torch.randn(4, device=device).requires_grad_()
    features = (3, 1, 2.5, slopes, sinks)
    args = (q, k, v, None, True, 0.25, 0.0, 0, False, *features)
    torch.library.opcheck(torch.ops.fastattn.attention_fwd_triton.default, args)
    out, lse = torch.ops.fastattn.attention_fwd_triton(*args)
    backward_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), None)
    torch.library.opcheck(
        torch.ops.fastattn.attention_bwd_triton.default,
        (*backward_args, None, True, 0.25, 0.0, 0, False, *features[:4], sinks.detach()),
    )


def test_opcheck_packed(device):
    if fastattn.backends.device_reasons("triton", torch.device(device)):
        pytest.skip("triton cannot run here")
    q, k, v, cu_q, cu_k = packed([3, 0, 6], [4, 2, 6], device=device)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    args = (q, k, v, None, False, 0.3, 0.0, 0, True, -1, -1, 0.0, None, None, cu_q, cu_k, 6, 6)
    torch.library.opcheck(torch.ops.fastattn.attention_fwd_triton.default, args)


def test_the_kernels_tanh_is_within_two_ulp(device):
    """Softcap's tanh (kernels/attention.py::_tanh) against float64, over the range scores take."""
    if fastattn.backends.device_reasons("triton", torch.device(device)):
        pytest.skip("triton cannot run here")
    import triton
    import triton.language as tl

    @triton.jit
    def tanh_kernel(X, Y, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(Y + offsets, kernels._tanh(tl.load(X + offsets)))

    x = torch.cat([torch.linspace(-12, 12, 2**14), torch.linspace(-1, 1, 2**14), torch.linspace(-1e-3, 1e-3, 2**14)])
    x = x.to(device)
    y = torch.empty_like(x)
    tanh_kernel[(x.numel() // 1024,)](x, y, BLOCK=1024)
    exact = torch.tanh(x.double())
    ulps = (y.double() - exact).abs() / (torch.finfo(torch.float32).eps * exact.abs().clamp_min(1e-30))
    assert ulps.max() <= 2.0, f"max error {ulps.max():.2f} ulp at x = {x[ulps.argmax()]:.6g}"
