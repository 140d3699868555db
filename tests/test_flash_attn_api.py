"""fastattn.flash_attn: FlashAttention-2's Python API (signatures, layout, returns) over fastattn."""

import inspect

import pytest
import torch

import fastattn.flash_attn as flash_attn
from fastattn import reference
from fastattn.flash_attn import bert_padding, flash_attn_interface
from fastattn.testing import FORWARD_FACTOR, GRADIENT_FACTOR, assert_close_to_reference

COMMON = [
    ("dropout_p", 0.0),
    ("softmax_scale", None),
    ("causal", False),
    ("window_size", (-1, -1)),
    ("softcap", 0.0),
    ("alibi_slopes", None),
    ("deterministic", False),
    ("return_attn_probs", False),
]
# FlashAttention-2's signatures: (positional arguments, then the keywords with their defaults).
SIGNATURES = {
    "flash_attn_func": (["q", "k", "v"], COMMON),
    "flash_attn_qkvpacked_func": (["qkv"], COMMON),
    "flash_attn_kvpacked_func": (["q", "kv"], COMMON),
    "flash_attn_varlen_func": (
        ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"],
        [*COMMON, ("block_table", None)],
    ),
    "flash_attn_varlen_qkvpacked_func": (["qkv", "cu_seqlens", "max_seqlen"], COMMON),
    "flash_attn_varlen_kvpacked_func": (
        ["q", "kv", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"],
        COMMON,
    ),
}


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_signatures_are_flash_attention_2s(name):
    positional, keywords = SIGNATURES[name]
    parameters = list(inspect.signature(getattr(flash_attn, name)).parameters.values())
    assert [p.name for p in parameters] == positional + [key for key, _ in keywords]
    assert all(p.default is inspect.Parameter.empty for p in parameters[: len(positional)])
    assert [(p.name, p.default) for p in parameters[len(positional) :]] == keywords


CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "window": dict(window_size=(3, 2)),
    "causal window": dict(causal=True, window_size=(4, -1)),
    "softcap": dict(softcap=2.0),
    "alibi": dict(alibi_slopes=True),
    "scale": dict(softmax_scale=0.3),
}


def expected_bshd(q, k, v, **options):
    """The reference in float64 and in the inputs' dtype, for (B, N, H, D) inputs, as (B, N, H, D)."""
    window = options.get("window_size", (-1, -1))
    keywords = dict(
        causal=options.get("causal", False),
        scale=options.get("softmax_scale"),
        window=None if window == (-1, -1) else window,
        softcap=options.get("softcap", 0.0),
        alibi_slopes=options.get("alibi_slopes"),
    )

    def run(dtype):
        out, lse = reference.attention(*(t.to(dtype).transpose(1, 2) for t in (q, k, v)), return_lse=True, **keywords)
        return out.transpose(1, 2), lse

    return run(torch.float64), run(q.dtype)


@pytest.mark.parametrize("case", list(CASES))
def test_flash_attn_func_forward_and_backward(case):
    options = dict(CASES[case])
    q = torch.randn(2, 9, 4, 16, requires_grad=True)  # (B, Nq, H, D); GQA: 2 key/value heads
    k, v = (torch.randn(2, 13, 2, 16, requires_grad=True) for _ in range(2))
    if options.get("alibi_slopes"):
        options["alibi_slopes"] = torch.rand(4)
    out, lse, s_dmask = flash_attn.flash_attn_func(q, k, v, return_attn_probs=True, **options)
    (exact, exact_lse), (plain, _) = expected_bshd(q, k, v, **options)
    assert out.shape == q.shape and out.is_contiguous() and lse.shape == (2, 4, 9) and s_dmask is None
    assert_close_to_reference(f"out [{case}]", out, exact, plain, factor=FORWARD_FACTOR)
    torch.testing.assert_close(lse.double(), exact_lse, atol=1e-5, rtol=1e-5)

    upstream = torch.randn_like(out)
    grads = torch.autograd.grad((out * upstream).sum(), (q, k, v))
    exact_grads = torch.autograd.grad((exact * upstream.double()).sum(), (q, k, v))
    plain_grads = torch.autograd.grad((plain * upstream).sum(), (q, k, v))
    for label, got, exact_grad, plain_grad in zip(("dq", "dk", "dv"), grads, exact_grads, plain_grads, strict=True):
        assert_close_to_reference(f"{label} [{case}]", got, exact_grad, plain_grad, factor=GRADIENT_FACTOR)


def test_packed_variants_equal_the_unpacked_call():
    qkv = torch.randn(2, 7, 3, 4, 8)
    q, k, v = qkv.unbind(2)
    expected = flash_attn.flash_attn_func(q, k, v, causal=True)
    torch.testing.assert_close(flash_attn.flash_attn_qkvpacked_func(qkv, causal=True), expected)
    torch.testing.assert_close(
        flash_attn.flash_attn_kvpacked_func(q, torch.stack((k, v), dim=2), causal=True), expected
    )


def varlen_inputs(lengths_q, lengths_k, heads_kv=2):
    def offsets(lengths):
        return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)

    q = torch.randn(sum(lengths_q), 4, 8)
    k, v = (torch.randn(sum(lengths_k), heads_kv, 8) for _ in range(2))
    return q, k, v, offsets(lengths_q), offsets(lengths_k)


def test_varlen_functions_match_the_reference():
    q, k, v, cu_q, cu_k = varlen_inputs([4, 1, 0, 6], [5, 1, 2, 6])
    options = dict(causal=True, window_size=(3, -1), softcap=1.5)
    out, lse, s_dmask = flash_attn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 6, 6, return_attn_probs=True, **options)
    exact, exact_lse = reference.attention_varlen(
        q.double(), k.double(), v.double(), cu_q, cu_k, causal=True, window=(3, 0), softcap=1.5, return_lse=True
    )
    plain = reference.attention_varlen(q, k, v, cu_q, cu_k, causal=True, window=(3, 0), softcap=1.5)
    assert out.shape == q.shape and lse.shape == (4, q.shape[0]) and s_dmask is None
    assert_close_to_reference("varlen out", out, exact, plain, factor=FORWARD_FACTOR)
    torch.testing.assert_close(lse.double(), exact_lse, atol=1e-5, rtol=1e-5)

    same_q, same_k, same_v, cu, _ = varlen_inputs([4, 1, 6], [4, 1, 6], heads_kv=4)
    qkv = torch.stack((same_q, same_k, same_v), dim=1)  # (total, 3, H, D)
    expected = flash_attn.flash_attn_varlen_func(same_q, same_k, same_v, cu, cu, 6, 6, causal=True)
    torch.testing.assert_close(flash_attn.flash_attn_varlen_qkvpacked_func(qkv, cu, 6, causal=True), expected)
    kv = torch.stack((same_k, same_v), dim=1)
    torch.testing.assert_close(
        flash_attn.flash_attn_varlen_kvpacked_func(same_q, kv, cu, cu, 6, 6, causal=True), expected
    )


def normalized_as_flash_attention_2_tests_do(s_dmask, scores, lse, block_n):
    """S_dmask's magnitudes turned into probabilities the way FlashAttention-2's tests do: the scores
    are split into blocks of ``block_n`` keys, each block's running maximum m_j is max(its own max,
    the log-sum-exp of the blocks before it), and block j of |S_dmask| is multiplied by exp(m_j - lse)."""
    blocks = scores.split(block_n, dim=-1)
    block_lse = torch.stack([torch.logsumexp(b, dim=-1) for b in blocks], dim=-1)
    running_lse = torch.logcumsumexp(block_lse, dim=-1).unbind(dim=-1)
    maxima = [blocks[0].amax(dim=-1)] + [
        torch.maximum(b.amax(dim=-1), m) for b, m in zip(blocks[1:], running_lse, strict=False)
    ]
    parts = s_dmask.abs().split(block_n, dim=-1)
    return torch.cat([part * torch.exp(m - lse)[..., None] for part, m in zip(parts, maxima, strict=True)], dim=-1)


def test_s_dmask_encodes_the_dropout_pattern_out_was_made_with():
    """With dropout, S_dmask holds FlashAttention-2's unnormalized probabilities exp(s - m), negative
    where dropped: normalized as FlashAttention-2's tests normalize them (with _get_block_size_n) they
    are the reference's probabilities, and the output is the kept ones, rescaled, times v."""
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 6, 2, 8) for _ in range(3))
    out, lse, s_dmask = flash_attn.flash_attn_func(q, k, v, dropout_p=0.3, causal=True, return_attn_probs=True)
    assert s_dmask.shape == (2, 2, 6, 6)
    assert (s_dmask < 0).any() and (s_dmask > 0).any(), "no dropped or no kept entry: a weak draw"
    qt, kt = q.transpose(1, 2), k.transpose(1, 2)
    probs, exact_lse = reference.attention_probabilities(qt, kt, causal=True)
    torch.testing.assert_close(lse, exact_lse)
    block_n = flash_attn_interface._get_block_size_n(q.device, 8, True, True)
    scores = reference.attention_scores(qt, kt, causal=True)
    normalized = normalized_as_flash_attention_2_tests_do(s_dmask, scores, lse, block_n)
    torch.testing.assert_close(normalized, probs)
    kept = torch.where(s_dmask >= 0, normalized, 0.0)
    expected = (kept / (1 - 0.3)) @ v.transpose(1, 2)  # (B, H, Nq, D)
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("unused", [False, True])
def test_bert_padding_round_trip(unused):
    """unpad_input packs the tokens of a padded batch as the varlen functions take them; pad_input
    puts them back; gradients flow through both."""
    x = torch.randn(3, 5, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    unused_mask = torch.zeros_like(mask)
    unused_mask[0, 3] = unused
    packed, indices, cu_seqlens, max_seqlen, used = bert_padding.unpad_input(x, mask, unused_mask)
    assert cu_seqlens.tolist() == [0, 3 + unused, 8 + unused, 8 + unused] and cu_seqlens.dtype == torch.int32
    assert max_seqlen == 5 and used.tolist() == [3, 5, 0]
    assert torch.equal(packed, x.flatten(0, 1)[mask.flatten() | unused_mask.flatten()])
    assert torch.equal(bert_padding.index_first_axis(x.flatten(0, 1), indices), packed)
    padded = bert_padding.pad_input(packed, indices, 3, 5)
    assert torch.equal(padded, torch.where((mask | unused_mask)[..., None], x, 0.0))
    padded.sum().backward()
    assert torch.equal(x.grad, (mask | unused_mask)[..., None].expand_as(x).float())


def test_varlen_with_a_block_table_reads_the_keys_from_the_pages():
    """k and v as pages: the same output as the packed keys they hold, and a clear error for a table
    that points past the pages or cannot hold a sequence's keys."""
    q, k, v, cu_q, cu_k = varlen_inputs([3, 5], [20, 7])
    pages_k, pages_v = torch.randn(6, 16, *k.shape[1:]), torch.randn(6, 16, *v.shape[1:])
    table = torch.tensor([[4, 1], [5, 0]], dtype=torch.int32)
    for b, (start, end) in enumerate(zip(cu_k.tolist(), cu_k.tolist()[1:], strict=False)):
        for position in range(end - start):
            page, slot = table[b, position // 16], position % 16
            pages_k[page, slot], pages_v[page, slot] = k[start + position], v[start + position]
    expected = flash_attn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 5, 20, causal=True)
    got = flash_attn.flash_attn_varlen_func(q, pages_k, pages_v, cu_q, cu_k, 5, 20, causal=True, block_table=table)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="block_table must point into the 6 blocks"):
        flash_attn.flash_attn_varlen_func(
            q, pages_k, pages_v, cu_q, cu_k, 5, 20, block_table=torch.tensor([[4, 9], [5, 0]], dtype=torch.int32)
        )
    with pytest.raises(
        RuntimeError, match="sequence 0 has 20 keys; the block_table's max_blocks x block_size holds 16"
    ):
        flash_attn.flash_attn_varlen_func(q, pages_k, pages_v, cu_q, cu_k, 5, 20, block_table=table[:, :1].contiguous())
