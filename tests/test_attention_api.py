"""fastattn.attention's contract beyond numerics: bad input, backend choice and fallback, empty
tensors, the custom ops (opcheck), and the drop-in scaled_dot_product_attention."""

import pytest
import torch
import torch.nn.functional as F

import fastattn
from fastattn import backends, capabilities, reference
from fastattn.ops import attention as attention_ops


def qkv(batch=2, heads_q=4, heads_kv=2, nq=5, nk=7, head_dim=8, dtype=torch.float32, device="cpu"):
    return (
        torch.randn(batch, heads_q, nq, head_dim, dtype=dtype, device=device),
        torch.randn(batch, heads_kv, nk, head_dim, dtype=dtype, device=device),
        torch.randn(batch, heads_kv, nk, head_dim, dtype=dtype, device=device),
    )


# ------------------------------------------------------------------------------------ bad input
def test_mismatched_devices():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="one device"):
        fastattn.attention(q, k.to("meta"), v.to("meta"))


def test_mismatched_dtypes():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="one dtype"):
        fastattn.attention(q, k.half(), v.half())


def test_integer_inputs():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="q must be a floating-point tensor"):
        fastattn.attention(q.long(), k, v)


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_wrong_rank(which):
    tensors = dict(zip("qkv", qkv(), strict=True))
    tensors[which] = tensors[which][0]
    with pytest.raises(ValueError, match=f"{which} must be 4-D"):
        fastattn.attention(tensors["q"], tensors["k"], tensors["v"])


def test_query_heads_not_a_multiple_of_kv_heads():
    q, k, v = qkv(heads_q=3, heads_kv=2)
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        fastattn.attention(q, k, v)


def test_mismatched_head_dims():
    q, _, _ = qkv(head_dim=8)
    _, k, v = qkv(head_dim=16)
    with pytest.raises(ValueError, match="same head_dim"):
        fastattn.attention(q, k, v)


def test_k_and_v_shapes_differ():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="k and v must have one shape"):
        fastattn.attention(q, k, v[:, :, :3])


def test_batch_sizes_differ():
    q, _, _ = qkv(batch=2)
    _, k, v = qkv(batch=3)
    with pytest.raises(ValueError, match="same batch size"):
        fastattn.attention(q, k, v)


def test_mask_of_the_wrong_shape():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(batch, Nk\) = \(2, 7\)"):
        fastattn.attention(q, k, v, key_padding_mask=torch.ones(2, 5, dtype=torch.bool))


def test_mask_of_the_wrong_dtype():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="key_padding_mask must be a bool tensor"):
        fastattn.attention(q, k, v, key_padding_mask=torch.ones(2, 7))


def test_mask_on_another_device():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="key_padding_mask must be on cpu"):
        fastattn.attention(q, k, v, key_padding_mask=torch.ones(2, 7, dtype=torch.bool, device="meta"))


@pytest.mark.parametrize("dropout_p", [-0.1, 1.0, 1.5, float("nan")])
def test_dropout_outside_the_unit_interval(dropout_p):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"dropout_p must be a number in \[0, 1\)"):
        fastattn.attention(q, k, v, dropout_p=dropout_p)


def test_non_finite_scale():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="scale must be a finite number"):
        fastattn.attention(q, k, v, scale=float("inf"))


def test_unknown_backend():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="backend must be one of"):
        fastattn.attention(q, k, v, backend="flash")


# ------------------------------------------------------------------------ backend choice, fallback
def test_head_dim_over_the_limit_is_refused_by_the_fused_backend_and_auto_falls_back():
    limit = capabilities.max_head_dim("triton")
    q, k, v = qkv(head_dim=limit + 64, nq=3, nk=4)
    with pytest.raises(NotImplementedError, match=f"triton: .*head_dim {limit + 64} is larger than {limit}"):
        fastattn.attention(q, k, v, backend="triton")
    out = fastattn.attention(q, k, v)
    torch.testing.assert_close(out, reference.attention(q, k, v))


def test_float64_goes_to_torch_or_naive():
    q, k, v = qkv(dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="dtype torch.float64 is not supported"):
        fastattn.attention(q, k, v, backend="triton")
    torch.testing.assert_close(fastattn.attention(q, k, v), reference.attention(q, k, v))


def test_return_lse_is_refused_by_torch_and_auto_skips_it():
    q, k, v = qkv()
    with pytest.raises(NotImplementedError, match="return_lse"):
        fastattn.attention(q, k, v, return_lse=True, backend="torch")
    with fastattn.use_backend("auto"):
        out, lse = fastattn.attention(q, k, v, return_lse=True)
    torch.testing.assert_close(lse, reference.attention(q, k, v, return_lse=True)[1])


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_torch_and_naive_backends_follow_the_contract(backend):
    """Bottom-right causal with Nq > Nk (rows that see nothing), GQA and padding: zeros, no NaN."""
    q, k, v = qkv(nq=9, nk=4)
    mask = torch.tensor([[True, False, True, True], [False, False, False, False]])
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = fastattn.attention(q, k, v, causal=True, key_padding_mask=mask, backend=backend)
    expected = reference.attention(q, k, v, causal=True, key_padding_mask=mask)
    torch.testing.assert_close(out, expected)
    assert torch.all(out[1] == 0) and torch.all(out[0, :, :5] == 0)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.all(q.grad[1] == 0)


def _runnable(backend: str, device: str) -> str:
    reasons = backends.device_reasons(backend, torch.device(device))
    if reasons:
        pytest.skip(f"{backend}: {'; '.join(reasons)}")
    return backend


@pytest.mark.parametrize("backend", ["cuda", "triton", "torch", "naive"])
@pytest.mark.parametrize("sizes", [dict(batch=0), dict(nq=0), dict(nk=0), dict(heads_q=0)])
def test_empty_inputs(backend, sizes, device):
    backend = _runnable(backend, device)
    q, k, v = qkv(**sizes, device=device)
    q.requires_grad_()
    out = fastattn.attention(q, k, v, causal=True, backend=backend)
    assert out.shape == q.shape and torch.all(out == 0)
    out.sum().backward()
    assert q.grad.shape == q.shape
    if backend != "torch":
        _, lse = fastattn.attention(q, k, v, causal=True, backend=backend, return_lse=True)
        assert lse.shape == q.shape[:3] and torch.all(lse == float("-inf"))


@pytest.mark.parametrize(
    "sizes, message",
    [(dict(head_dim=0), "head_dim must be at least 1"), (dict(heads_q=0, heads_kv=0), "at least one head")],
)
def test_no_head_dim_or_no_heads_is_a_value_error(sizes, message):
    with pytest.raises(ValueError, match=message):
        fastattn.attention(*qkv(**sizes))


@pytest.mark.parametrize(
    "sizes",
    [dict(head_dim=0), dict(heads_q=0, heads_kv=0), dict(batch=0), dict(nq=0), dict(nk=0)],
    ids=["D=0", "H=0", "B=0", "Nq=0", "Nk=0"],
)
def test_the_sdpa_drop_in_gives_torchs_result_on_empty_inputs(sizes):
    q, k, v = qkv(**{"heads_q": 2, "heads_kv": 2, **sizes})
    expected = F.scaled_dot_product_attention(q, k, v)
    out = fastattn.scaled_dot_product_attention(q, k, v)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["auto", "naive"])
def test_large_finite_logits_in_half_precision_give_no_nan_and_a_finite_lse(dtype, backend):
    """|scale · q·k| ~ 1e4..1e5 overflows float16 arithmetic (65504): the lse path computes in float32."""
    q, k, v = qkv(dtype=dtype)
    q, k = q * 100, k * 100
    out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True, backend=backend)
    exact, exact_lse = reference.attention(q.double(), k.double(), v.double(), causal=True, return_lse=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse[exact_lse > float("-inf")]).all(), (out, lse)
    out_error = (out.double() - exact).abs().max().item()
    assert out_error <= 2 * torch.finfo(dtype).eps * exact.abs().max().item(), f"out: max error {out_error:.3e}"
    lse_error = ((lse.double() - exact_lse).abs() / exact_lse.abs().clamp_min(1))[exact_lse > float("-inf")]
    assert lse_error.max().item() <= 1e-6, f"lse: max relative error {lse_error.max().item():.3e}"


@pytest.mark.parametrize("backend", ["cuda", "triton", "torch", "naive"])
def test_a_nan_query_row_is_nan_on_every_backend(backend, device):
    backend = _runnable(backend, device)
    q, k, v = qkv(device=device)
    q[0, 1, 2, 3] = float("nan")
    out = fastattn.attention(q, k, v, backend=backend)
    clean = torch.ones_like(out, dtype=torch.bool)
    clean[0, 1, 2] = False
    assert torch.isnan(out[0, 1, 2]).all(), out[0, 1, 2]
    expected = reference.attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(out[clean].double(), expected[clean], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["cuda", "triton", "torch", "naive"])
def test_a_nan_key_makes_the_rows_that_see_it_nan(backend, device):
    backend = _runnable(backend, device)
    q, k, v = qkv(nq=7, nk=7, device=device)
    k[1, 0, 4, 0] = float("nan")  # key 4 of kv head 0: query heads 0 and 1 of batch 1, rows 4.. (causal)
    out = fastattn.attention(q, k, v, causal=True, backend=backend)
    nan_rows = torch.isnan(out).any(dim=-1)
    expected = torch.zeros_like(nan_rows)
    expected[1, :2, 4:] = True
    assert torch.equal(nan_rows, expected), nan_rows


# ------------------------------------------------------------------------------- the custom ops
def _triton_or_skip(device):
    reasons = backends.device_reasons("triton", torch.device(device))
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_opcheck_forward_and_backward(device, layout):
    _triton_or_skip(device)
    if layout == "transposed":  # (B, N, H, D) storage seen as (B, H, N, D)
        q = torch.randn(2, 9, 4, 16, device=device).transpose(1, 2)
        k = torch.randn(2, 11, 2, 16, device=device).transpose(1, 2)
        v = torch.randn(2, 11, 2, 16, device=device).transpose(1, 2)
    else:
        q, k, v = qkv(nq=9, nk=11, head_dim=16, device=device)
    mask = torch.rand(2, 11, device=device) > 0.3
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    args = (q, k, v, mask, True, 0.25, 0.0, 0, False)
    torch.library.opcheck(torch.ops.fastattn.attention_fwd_triton.default, args)
    out, lse = torch.ops.fastattn.attention_fwd_triton(*args)
    dout = torch.randn_like(out)
    bwd_args = (
        dout,
        q.detach(),
        k.detach(),
        v.detach(),
        out.detach(),
        lse.detach(),
        None,
        mask,
        True,
        0.25,
        0.0,
        0,
        False,
    )
    torch.library.opcheck(torch.ops.fastattn.attention_bwd_triton.default, bwd_args)


def test_opcheck_with_an_expanded_upstream_gradient(device):
    """A stride-0 gradient (as torch.compile and .sum() produce) must give the right answer."""
    _triton_or_skip(device)
    q, k, v = (t.requires_grad_() for t in qkv(nq=6, nk=6, head_dim=16, device=device))
    fastattn.attention(q, k, v, backend="triton").sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    reference.attention(q, k, v).sum().backward()
    for ours, expected in zip(grads, (q.grad, k.grad, v.grad), strict=True):
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------- scaled_dot_product_attention
def _route_counter(monkeypatch):
    calls = []
    for name, implementation in list(attention_ops._IMPLEMENTATIONS.items()):

        def counting(*args, _name=name, _impl=implementation):
            calls.append(_name)
            return _impl(*args)

        monkeypatch.setitem(attention_ops._IMPLEMENTATIONS, name, counting)
    return calls


SDPA_CASES = {
    "plain": dict(),
    "causal": dict(is_causal=True),
    "key padding (B,1,1,Nk)": dict(mask="padding"),
    "scale": dict(scale=0.2),
}


@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_takes_the_fused_path_and_gives_torchs_result(device, monkeypatch, case):
    _triton_or_skip(device)
    options = dict(SDPA_CASES[case])
    q, k, v = qkv(heads_kv=4, nq=7, nk=7, head_dim=16, device=device)
    if options.pop("mask", None):
        options["attn_mask"] = torch.rand(2, 1, 1, 7, device=device) > 0.3
    calls = _route_counter(monkeypatch)
    with fastattn.use_backend("triton"):
        out = fastattn.scaled_dot_product_attention(q, k, v, **options)
    assert calls == ["triton"]
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, **options), atol=1e-5, rtol=1e-4)


def test_sdpa_gqa_needs_enable_gqa_like_torch():
    q, k, v = qkv(heads_q=4, heads_kv=2)
    with pytest.raises(RuntimeError) as ours:
        fastattn.scaled_dot_product_attention(q, k, v)
    with pytest.raises(RuntimeError) as theirs:
        F.scaled_dot_product_attention(q, k, v)
    assert str(ours.value) == str(theirs.value)
    torch.testing.assert_close(
        fastattn.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
    )


FALLBACK_CASES = {
    "float mask": lambda q, k: dict(attn_mask=torch.randn(q.shape[0], 1, q.shape[2], k.shape[2])),
    "bool (Nq, Nk) mask": lambda q, k: dict(attn_mask=torch.rand(q.shape[2], k.shape[2]) > 0.2),
    "causal with Nq != Nk (top-left in torch)": lambda q, k: dict(is_causal=True),
}


@pytest.mark.parametrize("case", list(FALLBACK_CASES))
def test_sdpa_falls_back_to_torch_for_what_the_kernels_do_not_serve(monkeypatch, case):
    q, k, v = qkv(heads_kv=4, nq=5, nk=8)
    options = FALLBACK_CASES[case](q, k)
    calls = _route_counter(monkeypatch)
    out = fastattn.scaled_dot_product_attention(q, k, v, **options)
    assert calls == []
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, **options))


def test_sdpa_accepts_three_dimensional_inputs_like_torch():
    q, k, v = torch.randn(3, 5, 8), torch.randn(3, 6, 8), torch.randn(3, 6, 8)
    torch.testing.assert_close(fastattn.scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
