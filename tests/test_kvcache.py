"""fastattn.flash_attn.flash_attn_with_kvcache: contiguous and paged caches, the in-place append,
rotary, ragged lengths, against a plain per-sequence implementation and the float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from fastattn import backends, reference
from fastattn.flash_attn import flash_attn_with_kvcache
from fastattn.flash_attn.layers.rotary import apply_rotary_emb
from fastattn.testing import FORWARD_FACTOR, assert_close_to_reference

HEADS_Q, HEADS_KV, HEAD_DIM = 4, 2, 16


def rotate_plainly(x, cos, sin, positions, interleaved):
    """Rotary by complex multiplication: x (n, H, D), positions (n,); the first 2 * cos.shape[1] features."""
    half = cos.shape[1]
    angle = torch.complex(cos[positions].double(), sin[positions].double())[:, None, :]  # (n, 1, half)
    head = x[..., : 2 * half].double()
    if interleaved:
        pairs = torch.complex(head[..., 0::2], head[..., 1::2]) * angle
        rotated = torch.stack((pairs.real, pairs.imag), dim=-1).flatten(-2)
    else:
        pairs = torch.complex(head[..., :half], head[..., half:]) * angle
        rotated = torch.cat((pairs.real, pairs.imag), dim=-1)
    return torch.cat((rotated.to(x.dtype), x[..., 2 * half :]), dim=-1)


class Cache:
    """A KV cache as the test sees it: per sequence, its keys and values (positions 0..length), and
    the storage the function reads (contiguous rows or pages)."""

    def __init__(self, lengths, capacity, *, block_size=None, leftpad=None, permuted=False, dtype=torch.float32):
        self.lengths, self.block_size, self.dtype = list(lengths), block_size, dtype
        self.leftpad = list(leftpad) if leftpad is not None else [0] * len(lengths)
        batch = len(lengths)
        self.keys = [torch.randn(capacity, HEADS_KV, HEAD_DIM, dtype=dtype) for _ in range(batch)]
        self.values = [torch.randn(capacity, HEADS_KV, HEAD_DIM, dtype=dtype) for _ in range(batch)]
        if block_size is None:
            self.rows = torch.randperm(batch + 1)[:batch] if permuted else torch.arange(batch)
            self.k_cache = torch.randn(batch + 1, capacity, HEADS_KV, HEAD_DIM, dtype=dtype)  # a spare row
            self.v_cache = torch.randn_like(self.k_cache)
            for b in range(batch):
                self.k_cache[self.rows[b]] = self.keys[b]
                self.v_cache[self.rows[b]] = self.values[b]
            self.block_table = None
        else:
            pages = capacity // block_size
            shuffled = torch.randperm(batch * pages + 3)  # 3 pages nobody uses
            self.block_table = shuffled[: batch * pages].reshape(batch, pages).to(torch.int32)
            self.k_cache = torch.randn(batch * pages + 3, block_size, HEADS_KV, HEAD_DIM, dtype=dtype)
            self.v_cache = torch.randn_like(self.k_cache)
            for b in range(batch):
                for page in range(pages):
                    rows = slice(page * block_size, (page + 1) * block_size)
                    self.k_cache[self.block_table[b, page]] = self.keys[b][rows]
                    self.v_cache[self.block_table[b, page]] = self.values[b][rows]

    def read_back(self, b, length):
        """Sequence b's first ``length`` keys and values as stored now."""
        if self.block_table is None:
            return self.k_cache[self.rows[b], :length], self.v_cache[self.rows[b], :length]
        pages = self.block_table[b].long()
        return (
            self.k_cache[pages].flatten(0, 1)[:length],
            self.v_cache[pages].flatten(0, 1)[:length],
        )

    def keywords(self):
        keywords = dict(cache_seqlens=torch.tensor(self.lengths, dtype=torch.int32), block_table=self.block_table)
        if self.block_table is None:
            keywords["cache_batch_idx"] = self.rows.to(torch.int32)
            if any(self.leftpad):
                keywords["cache_leftpad"] = torch.tensor(self.leftpad, dtype=torch.int32)
        return keywords


def expected(cache, q, new_k, new_v, dtype, *, causal, window=None, softcap=0.0, alibi=None, rotary=None):
    """Per sequence: the cached keys, the new ones appended, rotary applied plainly, then the reference
    attention of that sequence's queries on its keys from the leftpad on (bottom-right aligned)."""
    outs, lses = [], []
    for b, length in enumerate(cache.lengths):
        start = cache.leftpad[b]
        keys, values = cache.keys[b][:length], cache.values[b][:length]
        qb = q[b]
        if new_k is not None:
            kb = new_k[b]
            if rotary is not None:
                cos, sin, interleaved = rotary
                kb = rotate_plainly(kb, cos, sin, torch.arange(len(kb)) + length, interleaved)
            keys, values = torch.cat((keys, kb)), torch.cat((values, new_v[b]))
        if rotary is not None:
            cos, sin, interleaved = rotary
            if causal or window is not None:
                positions = torch.arange(len(qb)) + length
            else:
                positions = torch.full((len(qb),), length)
            qb = rotate_plainly(qb, cos, sin, positions, interleaved)
        keys, values = keys[start:], values[start:]
        slopes = None if alibi is None else (alibi[b] if alibi.dim() == 2 else alibi)
        out, lse = reference.attention(
            qb.transpose(0, 1)[None].to(dtype),
            keys.transpose(0, 1)[None].to(dtype),
            values.transpose(0, 1)[None].to(dtype),
            causal=causal,
            window=window,
            softcap=softcap,
            alibi_slopes=slopes,
            return_lse=True,
        )
        outs.append(out[0].transpose(0, 1))
        lses.append(lse[0])
    return torch.stack(outs), torch.stack(lses)


CASES = {
    "contiguous, ragged, appended": dict(lengths=[0, 5, 17, 32], capacity=40, new=3),
    "contiguous, decode, rows permuted": dict(lengths=[7, 31, 1], capacity=32, new=1, permuted=True),
    "contiguous, leftpad": dict(lengths=[9, 12, 20], capacity=24, new=2, leftpad=[3, 0, 20]),
    "paged 16, decode": dict(lengths=[0, 15, 16, 47], capacity=48, new=1, block_size=16),
    "paged 32, several queries": dict(lengths=[33, 3, 60], capacity=64, new=4, block_size=32, q_len=4),
    "paged 256, cache full, no new keys": dict(lengths=[256, 100], capacity=256, new=0, block_size=256),
}
OPTIONS = {
    "causal": dict(causal=True),
    "not causal": dict(causal=False),
    "window": dict(causal=True, window=(5, 0)),
    "softcap, ALiBi": dict(causal=True, softcap=2.0, alibi="batch"),
    "rotary interleaved, causal": dict(causal=True, rotary=True),
    "rotary halves, not causal": dict(causal=False, rotary=True, interleaved=False),
}


@pytest.fixture(params=["cuda", "triton", "naive"])
def backend(request, device) -> str:
    """The split-KV kernels, and the gathered keys through fastattn.attention."""
    reasons = backends.device_reasons(request.param, torch.device(device))
    if reasons:
        pytest.skip(f"{request.param}: {'; '.join(reasons)}")
    return request.param


@pytest.mark.parametrize("options_name", list(OPTIONS))
@pytest.mark.parametrize("case_name", list(CASES))
def test_matches_the_plain_per_sequence_attention(case_name, options_name, backend, monkeypatch):
    case, options = dict(CASES[case_name]), OPTIONS[options_name]
    new, q_len = case.pop("new"), case.pop("q_len", max(CASES[case_name]["new"], 1))
    cache = Cache(**case)
    batch = len(cache.lengths)
    q = torch.randn(batch, q_len, HEADS_Q, HEAD_DIM)
    new_k = torch.randn(batch, new, HEADS_KV, HEAD_DIM) if new else None
    new_v = torch.randn(batch, new, HEADS_KV, HEAD_DIM) if new else None
    keywords = dict(causal=options["causal"], softcap=options.get("softcap", 0.0))
    window = options.get("window")
    if window is not None:
        keywords["window_size"] = window
    alibi = torch.rand(batch, HEADS_Q) if options.get("alibi") else None
    rotary = None
    if options.get("rotary"):
        angles = torch.arange(400)[:, None] * (10000 ** (-torch.arange(6) / 6))[None, :]  # rotary_dim 12 < D
        rotary = (torch.cos(angles), torch.sin(angles), options.get("interleaved", True))
        keywords.update(rotary_cos=rotary[0], rotary_sin=rotary[1], rotary_interleaved=rotary[2])
    monkeypatch.setenv("FASTATTN_BACKEND", backend)
    out, lse = flash_attn_with_kvcache(
        q,
        cache.k_cache,
        cache.v_cache,
        new_k,
        new_v,
        alibi_slopes=alibi,
        return_softmax_lse=True,
        **keywords,
        **cache.keywords(),
    )
    semantics = dict(causal=options["causal"], window=window, softcap=keywords["softcap"], alibi=alibi, rotary=rotary)
    exact, exact_lse = expected(cache, q, new_k, new_v, torch.float64, **semantics)
    plain, _ = expected(cache, q, new_k, new_v, torch.float32, **semantics)
    assert out.shape == q.shape and lse.shape == (batch, HEADS_Q, q_len)
    assert_close_to_reference(f"{case_name}, {options_name}", out, exact, plain, factor=FORWARD_FACTOR)
    finite = exact_lse.isfinite()
    assert torch.equal(lse.isfinite(), finite)
    torch.testing.assert_close(lse[finite].double(), exact_lse[finite], atol=1e-5, rtol=1e-5)
    for b, length in enumerate(cache.lengths):  # the new keys are in the cache, rotated; the rest unchanged
        keys, values = cache.read_back(b, length + new)
        torch.testing.assert_close(keys[:length], cache.keys[b][:length], atol=0, rtol=0)
        if new:
            expected_k = new_k[b]
            if rotary is not None:
                positions = torch.arange(new) + length
                expected_k = rotate_plainly(expected_k, rotary[0], rotary[1], positions, rotary[2])
            torch.testing.assert_close(keys[length:], expected_k, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(values[length:], new_v[b], atol=0, rtol=0)


def test_rotary_matches_the_complex_rotation():
    x = torch.randn(2, 7, 3, 16)
    angles = torch.arange(20)[:, None] * torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0])[None, :]
    cos, sin = torch.cos(angles), torch.sin(angles)
    offsets = torch.tensor([0, 9])
    for interleaved in (True, False):
        got = apply_rotary_emb(x, cos, sin, interleaved=interleaved, seqlen_offsets=offsets)
        for b in range(2):
            want = rotate_plainly(x[b], cos, sin, torch.arange(7) + offsets[b], interleaved)
            torch.testing.assert_close(got[b], want, atol=1e-6, rtol=1e-6)
    packed = x.flatten(0, 1)[:10]
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    got = apply_rotary_emb(packed, cos, sin, cu_seqlens=cu, max_seqlen=6)
    want = torch.cat(
        [
            rotate_plainly(packed[:4], cos, sin, torch.arange(4), False),
            rotate_plainly(packed[4:], cos, sin, torch.arange(6), False),
        ]
    )
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (
            dict(cache_seqlens=torch.tensor([40, 3], dtype=torch.int32)),
            RuntimeError,  # and a ValueError: FlashAttention-2 raises a RuntimeError naming the block_table
            "seqlens \\+ new <= the block_table's max_blocks x block_size 32 positions",
        ),
        (
            dict(block_table=torch.tensor([[9, 0], [1, 2]], dtype=torch.int32)),
            ValueError,
            "point into the cache's 4 blocks",
        ),
        (dict(block_table=torch.tensor([[0, 3], [1, 2]])), TypeError, "block_table must be an int32"),
        (dict(k_cache=torch.randn(4, 16, 3, 8)), ValueError, "must have one shape"),
        (dict(q=torch.randn(2, 1, 3, 8)), ValueError, "Hkv dividing q's 3 heads"),
        (dict(k=torch.randn(2, 1, 2, 4)), ValueError, "k and v must be"),
        (dict(num_splits=-1), ValueError, "num_splits must be an int >= 0"),
        (dict(k_cache=torch.randn(4, 12, 2, 8), v_cache=torch.randn(4, 12, 2, 8)), ValueError, "multiple of 16"),
    ],
)
def test_bad_input_is_a_clear_error(change, error, message):
    arguments = dict(
        q=torch.randn(2, 1, 4, 8),
        k_cache=torch.randn(4, 16, 2, 8),
        v_cache=torch.randn(4, 16, 2, 8),
        k=torch.randn(2, 1, 2, 8),
        v=torch.randn(2, 1, 2, 8),
        cache_seqlens=torch.tensor([3, 20], dtype=torch.int32),
        block_table=torch.tensor([[0, 3], [1, 2]], dtype=torch.int32),
    )
    if "k" in change:
        change["v"] = change["k"].clone()
    arguments.update(change)
    with pytest.raises(error, match=message):
        flash_attn_with_kvcache(**arguments)


def test_lse_of_a_sequence_with_no_key_is_minus_infinity():
    cache = Cache([0, 4], capacity=16, block_size=16)
    q = torch.randn(2, 1, HEADS_Q, HEAD_DIM)
    out, lse = flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, return_softmax_lse=True, **cache.keywords())
    assert torch.equal(out[0], torch.zeros_like(out[0])) and (lse[0] == -math.inf).all()
    assert lse[1].isfinite().all()


def test_without_the_fused_kernels_auto_picks_a_backend_that_serves_the_call(monkeypatch):
    """Where only torch and naive can run (a CPU without Triton's interpreter), auto picks torch
    (scaled_dot_product_attention on the gathered keys) unless the lse is asked for, which only naive
    returns; torch asked for the lse explicitly raises before the cache is written."""
    monkeypatch.setattr(backends, "AUTO_ORDER", ("torch", "naive"))
    cache = Cache([3, 9], capacity=16, block_size=16)
    q, new_k, new_v = torch.randn(2, 1, HEADS_Q, HEAD_DIM), *torch.randn(2, 2, 1, HEADS_KV, HEAD_DIM)
    want, want_lse = expected(cache, q, new_k, new_v, torch.float64, causal=True, window=None, softcap=0.0, alibi=None)
    k_cache, v_cache = cache.k_cache.clone(), cache.v_cache.clone()
    monkeypatch.setenv("FASTATTN_BACKEND", "torch")
    with pytest.raises(NotImplementedError, match="torch: return_lse: not supported"):
        flash_attn_with_kvcache(
            q, k_cache, v_cache, new_k, new_v, causal=True, return_softmax_lse=True, **cache.keywords()
        )
    assert torch.equal(k_cache, cache.k_cache), "a call that raised wrote the cache"
    monkeypatch.delenv("FASTATTN_BACKEND")
    for return_lse in (False, True):
        k_cache, v_cache = cache.k_cache.clone(), cache.v_cache.clone()
        result = flash_attn_with_kvcache(
            q, k_cache, v_cache, new_k, new_v, causal=True, return_softmax_lse=return_lse, **cache.keywords()
        )
        out, lse = result if return_lse else (result, None)
        torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
        if return_lse:
            torch.testing.assert_close(lse.double(), want_lse, atol=1e-5, rtol=1e-5)


def test_window_sides_as_integer_tensors(backend, monkeypatch):
    """FlashAttention-2's tests pass ``window_size`` as two 0-d int64 tensors: the same result as ints."""
    monkeypatch.setenv("FASTATTN_BACKEND", backend)
    cache = Cache([20, 7], capacity=32, block_size=16)
    q = torch.randn(2, 3, HEADS_Q, HEAD_DIM)
    as_ints = flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, window_size=(4, 1), **cache.keywords())
    as_tensors = flash_attn_with_kvcache(
        q, cache.k_cache, cache.v_cache, window_size=tuple(torch.tensor([4, 1])), **cache.keywords()
    )
    torch.testing.assert_close(as_tensors, as_ints, atol=0, rtol=0)


def test_every_split_count_gives_the_same_result(device):
    """The split-KV kernel's partial results merge exactly: 1 to 16 splits agree to float32 rounding,
    on a paged cache with one long and two short sequences, GQA, causal with several queries."""
    if backends.device_reasons("triton", torch.device(device)):
        pytest.skip("triton cannot run here")
    cache = Cache([700, 5, 300], capacity=720, block_size=16)
    q = torch.randn(3, 3, HEADS_Q, HEAD_DIM)
    results = {
        splits: flash_attn_with_kvcache(
            q, cache.k_cache, cache.v_cache, causal=True, num_splits=splits, return_softmax_lse=True, **cache.keywords()
        )
        for splits in (1, 2, 3, 7, 16)
    }
    one_out, one_lse = results[1]
    exact, _ = expected(cache, q, None, None, torch.float64, causal=True)
    plain, _ = expected(cache, q, None, None, torch.float32, causal=True)
    for splits, (out, lse) in results.items():
        assert_close_to_reference(f"{splits} splits", out, exact, plain, factor=FORWARD_FACTOR)
        torch.testing.assert_close(out, one_out, atol=2e-6, rtol=1e-5, msg=f"{splits} splits against 1")
        torch.testing.assert_close(lse, one_lse, atol=2e-6, rtol=1e-6, msg=f"{splits} splits against 1")


def test_the_split_count_heuristic():
    from fastattn.ops.kvcache import num_splits_for

    assert num_splits_for(programs=8, longest=32768, multiprocessors=132) == 33  # B=1, Hkv=8
    assert num_splits_for(programs=512, longest=32768, multiprocessors=132) == 1  # B=64 fills the GPU
    assert num_splits_for(programs=8, longest=100, multiprocessors=132) == 1  # too few keys to split
    assert num_splits_for(programs=1, longest=10**6, multiprocessors=132) == 128  # at most MAX_SPLITS
