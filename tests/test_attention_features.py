"""fastattn.attention's window, softcap, ALiBi and sinks, and fastattn.attention_varlen: the backends that
serve them match the float64 reference under the numerics rule, the others refuse with their reason,
and bad values are clear errors."""

import pytest
import torch

import fastattn
from fastattn import backends, capabilities, reference
from fastattn.testing import FORWARD_FACTOR, GRADIENT_FACTOR, assert_close_to_reference

FEATURES = {
    "window": dict(window=(3, 1)),
    "window causal": dict(window=(2, -1), causal=True),
    "softcap": dict(softcap=1.5),
    "alibi": dict(alibi=True),
    "alibi per batch": dict(alibi=True, per_batch=True),
    "sinks": dict(sinks=True),
    "all": dict(window=(4, 0), softcap=3.0, alibi=True, sinks=True, causal=True),
}
# The features of fastattn.capabilities each case uses.
USES = {
    "window": {"window"},
    "window causal": {"window"},
    "softcap": {"softcap"},
    "alibi": {"alibi_slopes"},
    "alibi per batch": {"alibi_slopes"},
    "sinks": {"sinks"},
    "all": {"window", "softcap", "alibi_slopes", "sinks"},
}


def serves(backend: str, name: str) -> bool:
    """Whether ``backend``'s capabilities include every feature case ``name`` uses (the cuda backend's
    are unknown without the extension: then it cannot run here anyway)."""
    capability = capabilities.of("attention", backend)
    return capability is not None and USES[name] <= capability.features


def feature_inputs(name, dtype=torch.float32, nq=9, nk=13):
    options = FEATURES[name]
    q = torch.randn(2, 4, nq, 16, dtype=dtype)
    k, v = (torch.randn(2, 2, nk, 16, dtype=dtype) for _ in range(2))
    keywords = {key: options[key] for key in ("window", "softcap", "causal") if key in options}
    if options.get("alibi"):
        keywords["alibi_slopes"] = torch.rand(2, 4) if options.get("per_batch") else torch.rand(4)
    if options.get("sinks"):
        keywords["sinks"] = torch.randn(4)
    return q, k, v, keywords


def as_float64(keywords):
    return {key: value.double() if key == "sinks" else value for key, value in keywords.items()}


@pytest.mark.parametrize("name", list(FEATURES))
@pytest.mark.parametrize("backend", ["naive", "triton", "cuda", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_served_features_match_the_reference(name, backend, dtype):
    if not serves(backend, name):
        pytest.skip(f"{backend} does not serve {name}")
    if backends.device_reasons(backend, torch.device("cpu")):
        pytest.skip(f"{backend} cannot run here")
    q, k, v, keywords = feature_inputs(name, dtype)
    out = fastattn.attention(q, k, v, backend=backend, **keywords)
    exact = reference.attention(q.double(), k.double(), v.double(), **as_float64(keywords))
    plain = reference.attention(q, k, v, **keywords)
    assert_close_to_reference(f"{name} [{backend}]", out, exact, plain, factor=FORWARD_FACTOR)


@pytest.mark.parametrize("name", list(FEATURES))
def test_backends_that_do_not_serve_a_feature_say_so_and_auto_finds_one(name):
    q, k, v, keywords = feature_inputs(name)
    if not serves("torch", name):
        with pytest.raises(NotImplementedError, match="torch: .*: not supported by this backend"):
            fastattn.attention(q, k, v, backend="torch", **keywords)
    torch.testing.assert_close(
        fastattn.attention(q, k, v, **keywords), fastattn.attention(q, k, v, backend="naive", **keywords)
    )


def test_gradients_of_q_k_v_and_sinks():
    q, k, v, keywords = feature_inputs("all", nq=7, nk=7)
    leaves = [t.requires_grad_() for t in (q, k, v, keywords["sinks"])]
    out, lse = fastattn.attention(q, k, v, backend="naive", return_lse=True, **keywords)
    upstream, upstream_lse = torch.randn_like(out), torch.randn_like(lse)
    grads = torch.autograd.grad((out * upstream).sum() + (lse * upstream_lse).sum(), leaves)

    exact_leaves = [t.detach().double().requires_grad_() for t in leaves]
    exact_keywords = {**keywords, "sinks": exact_leaves[3]}
    exact_out, exact_lse = reference.attention(*exact_leaves[:3], return_lse=True, **exact_keywords)
    exact_grads = torch.autograd.grad(
        (exact_out * upstream.double()).sum() + (exact_lse * upstream_lse.double()).sum(), exact_leaves
    )
    plain_leaves = [t.detach().requires_grad_() for t in leaves]
    plain_out, plain_lse = reference.attention(
        *plain_leaves[:3], return_lse=True, **{**keywords, "sinks": plain_leaves[3]}
    )
    plain_grads = torch.autograd.grad((plain_out * upstream).sum() + (plain_lse * upstream_lse).sum(), plain_leaves)
    for label, got, exact, plain in zip(("dq", "dk", "dv", "dsinks"), grads, exact_grads, plain_grads, strict=True):
        assert_close_to_reference(label, got, exact, plain, factor=GRADIENT_FACTOR)


def test_a_row_that_sees_no_key_has_the_sinks_lse():
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    sinks = torch.tensor([0.5, -1.0])
    keep = torch.tensor([[False, False, True, True]])
    out, lse = fastattn.attention(
        q, k, v, key_padding_mask=keep, window=(0, 0), sinks=sinks, return_lse=True, backend="naive"
    )
    assert torch.equal(out[0, :, :2], torch.zeros(2, 2, 8))
    assert torch.equal(lse[0, :, :2], sinks[:, None].expand(2, 2))


@pytest.mark.parametrize(
    "keywords, error, message",
    [
        (dict(window=(-2, 0)), ValueError, "window must be None or"),
        (dict(window=(1,)), ValueError, "window must be None or"),
        (dict(window=(1.5, 2)), ValueError, "window must be None or"),
        (dict(softcap=-1.0), ValueError, "softcap must be a finite number >= 0"),
        (dict(softcap=float("nan")), ValueError, "softcap must be a finite number >= 0"),
        (dict(alibi_slopes=torch.rand(3)), ValueError, r"alibi_slopes must be \(Hq,\)"),
        (dict(alibi_slopes=torch.rand(4, dtype=torch.float16)), TypeError, "alibi_slopes must be a float32"),
        (dict(sinks=torch.rand(2, 4)), ValueError, r"sinks must be \(Hq,\)"),
        (dict(sinks=torch.ones(4, dtype=torch.int64)), TypeError, "sinks must be a floating-point"),
    ],
)
def test_bad_feature_values(keywords, error, message):
    q, k, v, _ = feature_inputs("window")
    with pytest.raises(error, match=message):
        fastattn.attention(q, k, v, **keywords)


# ------------------------------------------------------------------------------------------ varlen
def packed(lengths_q, lengths_k, dtype=torch.float32):
    def offsets(lengths):
        return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)

    q = torch.randn(sum(lengths_q), 4, 8, dtype=dtype)
    k, v = (torch.randn(sum(lengths_k), 2, 8, dtype=dtype) for _ in range(2))
    return q, k, v, offsets(lengths_q), offsets(lengths_k)


def test_varlen_matches_the_reference_with_empty_short_and_long_sequences():
    lengths_q, lengths_k = [5, 0, 1, 40], [7, 3, 1, 40]
    q, k, v, cu_q, cu_k = packed(lengths_q, lengths_k)
    keywords = dict(causal=True, window=(6, -1), softcap=2.0, alibi_slopes=torch.rand(4, 4), sinks=torch.randn(4))
    out, lse = fastattn.attention_varlen(q, k, v, cu_q, cu_k, 40, 40, return_lse=True, **keywords)
    exact, exact_lse = reference.attention_varlen(
        q.double(), k.double(), v.double(), cu_q, cu_k, return_lse=True, **as_float64(keywords)
    )
    plain = reference.attention_varlen(q, k, v, cu_q, cu_k, **keywords)
    assert out.shape == q.shape and lse.shape == (4, sum(lengths_q))
    assert_close_to_reference("varlen out", out, exact, plain, factor=FORWARD_FACTOR)
    torch.testing.assert_close(lse.double(), exact_lse, atol=1e-5, rtol=1e-5)


def test_varlen_is_refused_by_torch_with_the_reason():
    q, k, v, cu_q, cu_k = packed([3, 2], [3, 2])
    with pytest.raises(NotImplementedError, match="torch: varlen: not supported by this backend"):
        fastattn.attention_varlen(q, k, v, cu_q, cu_k, 3, 3, backend="torch")


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(cu_seqlens_q=torch.tensor([0, 4, 2, 5], dtype=torch.int32)), ValueError, "non-decreasing"),
        (dict(cu_seqlens_q=torch.tensor([1, 3, 5], dtype=torch.int32)), ValueError, "start at 0"),
        (dict(cu_seqlens_q=torch.tensor([0, 3, 4], dtype=torch.int32)), ValueError, "end at the total length 5"),
        (dict(cu_seqlens_q=torch.tensor([0, 3, 5], dtype=torch.int64)), TypeError, "1-D int32"),
        (dict(cu_seqlens_q=torch.tensor([0, 2, 3, 5], dtype=torch.int32)), ValueError, "as many sequences"),
        (dict(max_seqlen_q=2), ValueError, r"max_seqlen_q must be an int >= the longest sequence \(3\)"),
    ],
)
def test_bad_cu_seqlens_are_clear_errors(change, error, message):
    q, k, v, cu_q, cu_k = packed([3, 2], [3, 2])
    arguments = {**dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=3, max_seqlen_k=3), **change}
    with pytest.raises(error, match=message):
        fastattn.attention_varlen(q, k, v, **arguments)
