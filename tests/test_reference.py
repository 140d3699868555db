"""The reference ops against PyTorch's own: the oracle must itself be right."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastattn import reference


def _gqa_expand(k, group):
    return k.repeat_interleave(group, dim=1)


@pytest.mark.parametrize("nq,nk", [(1, 1), (17, 17), (5, 9), (9, 5), (64, 200)])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torch_sdpa(nq, nk, causal):
    q = torch.randn(2, 4, nq, 24, dtype=torch.float64)
    k = torch.randn(2, 2, nk, 24, dtype=torch.float64)
    v = torch.randn(2, 2, nk, 24, dtype=torch.float64)
    mask = torch.rand(2, nk) > 0.3
    mask[:, -1] = True  # every query sees at least one key when not causal
    ours, lse = reference.attention(q, k, v, causal=causal, key_padding_mask=mask, scale=0.3, return_lse=True)
    visible = torch.ones(nq, nk, dtype=torch.bool)
    if causal:  # bottom-right aligned: torch's lower-right causal bias
        visible = torch.ones(nq, nk, dtype=torch.bool).tril(diagonal=nk - nq)
    attn_mask = visible[None, None] & mask[:, None, None, :]
    expected = F.scaled_dot_product_attention(q, _gqa_expand(k, 2), _gqa_expand(v, 2), attn_mask=attn_mask, scale=0.3)
    torch.testing.assert_close(ours, expected)
    scores = 0.3 * q @ _gqa_expand(k, 2).transpose(-1, -2)
    expected_lse = scores.masked_fill(~attn_mask, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(lse, expected_lse)


def test_attention_causal_matches_torch_lower_right_bias():
    from torch.nn.attention.bias import causal_lower_right

    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 11, 8), torch.randn(1, 2, 11, 8)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(5, 11))
    torch.testing.assert_close(reference.attention(q, k, v, causal=True), expected)


def test_attention_rows_with_no_visible_key_are_zero_with_zero_gradient():
    q = torch.randn(1, 1, 6, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 3, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 3, 8, dtype=torch.float64, requires_grad=True)
    out, lse = reference.attention(q, k, v, causal=True, return_lse=True)  # queries 0..2 see nothing
    assert torch.all(out[0, 0, :3] == 0) and torch.all(lse[0, 0, :3] == float("-inf"))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.all(q.grad[0, 0, :3] == 0) and torch.isfinite(k.grad).all()


def test_attention_dropout_uses_the_given_mask():
    q, k, v = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8)
    keep = torch.rand(1, 1, 4, 6) > 0.25
    probs = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, dim=-1)
    expected = (probs * keep / 0.75) @ v
    torch.testing.assert_close(reference.attention(q, k, v, dropout_p=0.25, dropout_keep=keep), expected)


@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 100), (4, 1)])
@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_matches_torch(shape, affine):
    x = torch.randn(*shape, dtype=torch.float64)
    weight = torch.randn(shape[-1], dtype=torch.float64) if affine else None
    bias = torch.randn(shape[-1], dtype=torch.float64) if affine else None
    torch.testing.assert_close(
        reference.layer_norm(x, shape[-1], weight, bias, eps=1e-3), F.layer_norm(x, (shape[-1],), weight, bias, 1e-3)
    )


def test_layer_norm_multi_dimensional_shape_and_residual():
    x, residual = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)
    weight = torch.randn(4, 5, dtype=torch.float64)
    y, s = reference.layer_norm(x, (4, 5), weight, eps=1e-5, residual=residual)
    torch.testing.assert_close(s, x + residual)
    torch.testing.assert_close(y, F.layer_norm(x + residual, (4, 5), weight, None, 1e-5))


@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 100)])
def test_rms_norm_matches_torch(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    weight = torch.randn(shape[-1], dtype=torch.float64)
    torch.testing.assert_close(
        reference.rms_norm(x, shape[-1], weight, eps=1e-6), F.rms_norm(x, (shape[-1],), weight, 1e-6)
    )


def test_norm_statistics_are_float32_for_half_inputs():
    # Values near 200: their squares summed in float16 would overflow (max 65504); in float32 they don't.
    x = (torch.randn(4, 4096) * 30 + 200).to(torch.float16)
    expected = F.layer_norm(x.float(), (4096,)).to(torch.float16)
    one_ulp = torch.finfo(torch.float16).eps
    torch.testing.assert_close(reference.layer_norm(x, 4096), expected, atol=one_ulp, rtol=one_ulp)


def test_residual_in_fp32_keeps_the_sum_in_float32():
    x, residual = torch.randn(3, 8, dtype=torch.bfloat16), torch.randn(3, 8, dtype=torch.bfloat16)
    _, s = reference.rms_norm(x, 8, residual=residual, residual_in_fp32=True)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s, x.float() + residual.float(), atol=0, rtol=0)


# ------------------------------------------------- window, softcap, ALiBi, sinks, varlen: element by element
def attention_by_element(q, k, v, *, scale, causal, window, softcap, slopes, sinks, keep):
    """The contract written out one query and one key at a time, in Python loops (float64, tiny shapes)."""
    batch, heads_q, nq, _ = q.shape
    group, nk = heads_q // k.shape[1], k.shape[2]
    left, right = window if window is not None else (-1, -1)
    off = nk - nq
    out, lse = torch.zeros_like(q), torch.full((batch, heads_q, nq), float("-inf"), dtype=q.dtype)
    for b in range(batch):
        for h in range(heads_q):
            for i in range(nq):
                logits = {}
                for j in range(nk):
                    seen = keep[b, j] and not (causal and j > i + off)
                    seen = seen and not (left >= 0 and j < i + off - left) and not (right >= 0 and j > i + off + right)
                    if not seen:
                        continue
                    s = scale * float(q[b, h, i] @ k[b, h // group, j])
                    if softcap > 0:
                        s = softcap * math.tanh(s / softcap)
                    if slopes is not None:
                        s -= float(slopes[h]) * abs(i + off - j)
                    logits[j] = s
                sink = [float(sinks[h])] if sinks is not None else []
                if not logits and not sink:
                    continue
                denominator = sum(math.exp(s) for s in [*logits.values(), *sink])
                lse[b, h, i] = math.log(denominator)
                for j, s in logits.items():
                    out[b, h, i] += math.exp(s) / denominator * v[b, h // group, j]
    return out, lse


FEATURES = {
    "window (2, 0)": dict(window=(2, 0)),
    "window (0, 1)": dict(window=(0, 1)),
    "window (1, -1) causal": dict(window=(1, -1), causal=True),
    "window wider than the sequence": dict(window=(50, 50)),
    "softcap": dict(softcap=0.7),
    "alibi": dict(alibi=True),
    "sinks": dict(sinks=True),
    "sinks, window (0, 0), padding": dict(sinks=True, window=(0, 0), padded=True),
    "everything": dict(window=(3, 1), softcap=2.0, alibi=True, sinks=True, causal=True, padded=True),
}


@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("nq,nk", [(5, 5), (3, 6), (6, 3)])
def test_window_softcap_alibi_and_sinks_follow_the_contract_element_by_element(feature, nq, nk):
    options = FEATURES[feature]
    q = 2 * torch.randn(2, 4, nq, 4, dtype=torch.float64)
    k, v = (torch.randn(2, 2, nk, 4, dtype=torch.float64) for _ in range(2))
    keep = torch.ones(2, nk, dtype=torch.bool)
    if options.get("padded"):
        keep[1, : nk // 2 + 1] = False  # with the window, some rows of batch 1 see no key
    slopes = torch.rand(4, dtype=torch.float64) if options.get("alibi") else None
    sinks = torch.randn(4, dtype=torch.float64) if options.get("sinks") else None
    settings = dict(
        scale=0.6,
        causal=options.get("causal", False),
        window=options.get("window"),
        softcap=options.get("softcap", 0.0),
    )
    out, lse = reference.attention(
        q, k, v, key_padding_mask=keep, alibi_slopes=slopes, sinks=sinks, return_lse=True, **settings
    )
    expected_out, expected_lse = attention_by_element(q, k, v, slopes=slopes, sinks=sinks, keep=keep, **settings)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(lse, expected_lse)


def test_sinks_get_a_gradient():
    q, k, v = (torch.randn(1, 2, 4, 3, dtype=torch.float64) for _ in range(3))
    sinks = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def run(sinks):
        out, lse = reference.attention(q, k, v, causal=True, window=(1, 0), sinks=sinks, return_lse=True)
        return out, lse

    assert torch.autograd.gradcheck(run, (sinks,))


def test_varlen_is_each_sequence_on_its_own():
    """Empty and length-1 sequences included; each sequence's masks aligned to its own corner."""
    lengths_q, lengths_k = [3, 0, 1, 5], [4, 2, 1, 5]
    cu_q = torch.tensor([0, *torch.tensor(lengths_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lengths_k).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(sum(lengths_q), 4, 8, dtype=torch.float64)
    k, v = (torch.randn(sum(lengths_k), 2, 8, dtype=torch.float64) for _ in range(2))
    slopes = torch.rand(4, 4, dtype=torch.float64)  # (B, Hq)
    options = dict(causal=True, window=(2, -1), softcap=1.5)
    out, lse = reference.attention_varlen(q, k, v, cu_q, cu_k, alibi_slopes=slopes, return_lse=True, **options)
    assert out.shape == q.shape and lse.shape == (4, sum(lengths_q))
    for b in range(4):
        rows_q, rows_k = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        one_out, one_lse = reference.attention(
            q[rows_q].transpose(0, 1)[None],
            k[rows_k].transpose(0, 1)[None],
            v[rows_k].transpose(0, 1)[None],
            alibi_slopes=slopes[b],
            return_lse=True,
            **options,
        )
        torch.testing.assert_close(out[rows_q], one_out[0].transpose(0, 1))
        torch.testing.assert_close(lse[:, rows_q], one_lse[0])
