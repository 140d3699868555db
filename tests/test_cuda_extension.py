"""The CUDA extension ``fastattn._C``: built and importable, its ops registered, and the C++ argument
checks giving readable errors; on a GPU, the cuda backend against the Triton one where they must agree
bit for bit (sampling's random stream, attention's dropout stream) and ``torch.library.opcheck`` of the
cuda custom ops.

The numerics of the cuda kernels are tested by the op test files (tests/test_attention.py,
test_norm.py, test_sampling.py), whose ``BACKENDS`` include "cuda": without a GPU those cases are
skipped with the reason from ``fastattn.backends.device_reasons``. The tests here that need no GPU run
in CI: the extension is built there (``make test`` installs with ``pip install --no-build-isolation``).
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

import fastattn
from fastattn import backends, capabilities, reference

CUDA_OPS = ("attention_fwd_cuda", "attention_bwd_cuda", "norm_fwd_cuda", "norm_bwd_cuda", "sample_cuda")
EXTENSION_FUNCTIONS = (
    "attention_fwd",
    "attention_bwd",
    "norm_fwd",
    "norm_bwd",
    "sample",
    "attention_decode",
    "attention_shared_memory",
    "kernel_image_error",
)


def _why_not_built() -> str | None:
    """Why setup.py builds no extension in this environment (None: it does; see setup.py)."""
    if os.environ.get("FASTATTN_SKIP_CUDA_BUILD", "0").lower() in ("1", "true", "on", "yes"):
        return "FASTATTN_SKIP_CUDA_BUILD is set"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    found = shutil.which("nvcc") or any(h and os.path.exists(os.path.join(h, "bin", "nvcc")) for h in homes)
    if not found:
        return "nvcc is not found"
    return None


@pytest.fixture(scope="module")
def C():
    """The extension module; skipped where setup.py builds none, a failure where it should have."""
    error = backends.EXTENSION_ERROR
    if error is not None:
        why = _why_not_built()
        if why is not None:
            pytest.skip(f"the CUDA extension is not built here: {why}")
        pytest.fail(f"fastattn._C should be built here (torch {torch.__version__}, nvcc found) but: {error}")
    import fastattn._C

    return fastattn._C


@pytest.fixture
def gpu():
    """A CUDA device the cuda backend can run on (skipped with the backend's reason otherwise)."""
    reasons = backends.device_reasons("cuda", torch.device("cuda"))
    if reasons:
        pytest.skip(f"cuda: {'; '.join(reasons)}")
    return torch.device("cuda")


# ------------------------------------------------------------------------------ build and import
def test_extension_imports_and_binds_every_function(C):
    for name in EXTENSION_FUNCTIONS:
        assert callable(getattr(C, name, None)), f"fastattn._C.{name} is missing"


def test_cuda_backend_reports_only_the_device_when_built(C):
    """Built, the cuda backend's only obstacle on a GPU-less machine is the GPU itself."""
    reasons = backends.platform_reasons("cuda")
    if torch.cuda.is_available():
        assert reasons == []
    else:
        assert reasons == ["no CUDA GPU is available"]


def test_every_cuda_op_is_registered():
    for name in CUDA_OPS:
        assert hasattr(torch.ops.fastattn, name), f"torch.ops.fastattn.{name} is not registered"


def test_op_layers_list_no_missing_cuda_kernel(C):
    """No op reports its cuda kernel as missing from the build."""
    from fastattn.ops import attention, norm, sampling

    q = torch.randn(1, 2, 3, 8)
    x = torch.randn(3, 8)
    reasons = (
        attention._backend_reasons("cuda", q, q, q, used={"deterministic", "return_lse"})
        + norm._backend_reasons("cuda", x, (8,), None, None, None)
        + sampling._backend_reasons("cuda", x)
    )
    assert not [r for r in reasons if "not part of this build" in r], reasons


# ------------------------------------------------------------------------- what a GPU must offer
KIB = 1024
SM86_SHARED_MEMORY = 99 * KIB  # opt-in limit per block of sm_86 and sm_89 (sm_80: 163 KiB, sm_90: 227 KiB)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("head_dim", [1, 8, 32, 33, 64, 96, 128, 129, 192, 256])
def test_attention_shared_memory_fits_every_sm80_and_sm90_block(C, dtype, head_dim):
    """Every kernel fits sm_80's 163 KiB; all but the head_dim > 128 backwards (and the float32
    head_dim > 128 forward) fit sm_86's 99 KiB, as the cuda_shared_memory_reasons docstring says; the
    split-KV decode kernel fits it at every head dim."""
    forward, backward, decode = C.attention_shared_memory(dtype, head_dim)
    assert 0 < forward <= backward <= 163 * KIB, (forward, backward)
    assert 0 < decode <= 82.125 * KIB, decode
    too_big_for_sm86 = head_dim > 128 and (dtype == torch.float32 or head_dim > 192)
    assert (backward > SM86_SHARED_MEMORY) == too_big_for_sm86, backward
    assert (forward > SM86_SHARED_MEMORY) == (too_big_for_sm86 and dtype == torch.float32), forward


def test_attention_shared_memory_checks_its_arguments(C):
    with pytest.raises(RuntimeError, match="dtype must be float16, bfloat16 or float32, got Int"):
        C.attention_shared_memory(torch.int32, 64)
    limit = C.capabilities()["attention"]["max_head_dim"]
    with pytest.raises(RuntimeError, match=f"head_dim must be in 1..{limit}, got {limit + 1}"):
        C.attention_shared_memory(torch.float16, limit + 1)


def test_shared_memory_reasons_name_the_need_and_the_limit(C, monkeypatch):
    """On a GPU with sm_86's limit, the head_dim 256 backward is refused before launch, with the sizes;
    the forward alone is not."""
    monkeypatch.setattr(backends, "shared_memory_limit", lambda device: SM86_SHARED_MEMORY)
    gpu = torch.device("cuda", 0)
    every = capabilities.CUDA_ATTENTION_KERNELS
    assert capabilities.cuda_shared_memory_reasons(torch.float16, 256, ("forward", "decode"), gpu) == []
    assert capabilities.cuda_shared_memory_reasons(torch.float16, 256, every, gpu) == [
        "the torch.float16 head_dim 256 backward needs 99.25 KiB of shared memory per block, cuda:0 allows 99.00 KiB"
    ]
    assert len(capabilities.cuda_shared_memory_reasons(torch.float32, 256, every, gpu)) == 2
    assert capabilities.cuda_shared_memory_reasons(torch.bfloat16, 128, every, gpu) == []
    monkeypatch.setattr(backends, "shared_memory_limit", lambda device: 64 * KIB)  # below any GPU we run on
    assert capabilities.cuda_shared_memory_reasons(torch.float32, 256, ("decode",), gpu) == [
        "the torch.float32 head_dim 256 decode needs 82.12 KiB of shared memory per block, cuda:0 allows 64.00 KiB"
    ]


def test_old_gpus_are_refused_with_the_capability(C, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (7, 5))
    assert backends._find_cuda_device_reasons(3) == ("needs a GPU of compute capability 8.0 or newer, cuda:3 is 7.5",)


def test_kernel_image_error_is_a_message_not_a_crash(C):
    """Asked about a device it cannot run on (here: none at all), the extension says why."""
    error = C.kernel_image_error(0)
    if torch.cuda.is_available():
        assert isinstance(error, str)
    else:
        assert error, "no GPU, yet the extension claims a kernel image for cuda:0"


# ------------------------------------------------------------------------------- C++ argument checks
def _attention_args(**changes):
    args = dict(
        q=torch.randn(2, 4, 5, 8),
        k=torch.randn(2, 2, 6, 8),
        v=torch.randn(2, 2, 6, 8),
        key_padding_mask=None,
        causal=False,
        scale=0.35,
        dropout_p=0.0,
        seed=0,
    )
    args.update(changes)
    return args


def _attention_bwd_args(**changes):
    args = _attention_args()
    args.pop("key_padding_mask")
    args = dict(
        dout=torch.randn(2, 4, 5, 8),
        out=torch.randn(2, 4, 5, 8),
        lse=torch.randn(2, 4, 5),
        dlse=None,
        key_padding_mask=None,
        **args,
    )
    args.update(changes)
    return args


def _decode_args(**changes):
    args = dict(
        q=torch.randn(2, 1, 4, 8),
        k_cache=torch.randn(4, 16, 2, 8),
        v_cache=torch.randn(4, 16, 2, 8),
        cache_rows=None,
        block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
        cache_total=torch.tensor([20, 3], dtype=torch.int32),
        cache_first=torch.zeros(2, dtype=torch.int32),
        longest=20,
        scale=0.35,
        causal=True,
        window_left=-1,
        window_right=-1,
        softcap=0.0,
        alibi_slopes=None,
        num_splits=2,
        split_size=32,
    )
    args.update(changes)
    return args


def _norm_args(**changes):
    args = dict(
        x=torch.randn(6, 16),
        residual=None,
        weight=torch.ones(16),
        bias=torch.zeros(16),
        eps=1e-5,
        rms=False,
        residual_in_fp32=False,
    )
    args.update(changes)
    return args


def _norm_bwd_args(**changes):
    args = dict(
        dy=torch.randn(6, 16),
        x=torch.randn(6, 16),
        residual=None,
        weight=torch.ones(16),
        bias_dtype=torch.float32,
        mean=torch.zeros(6),
        rstd=torch.ones(6),
        dresidual_out=None,
        rms=False,
        store_dresidual=False,
    )
    args.update(changes)
    return args


def _sample_args(**changes):
    args = dict(
        logits=torch.randn(3, 10),
        temperature=torch.ones(3),
        top_k=torch.full((3,), 10),
        top_p=torch.ones(3, dtype=torch.float64),
        min_p=torch.zeros(3, dtype=torch.float64),
        seeds=torch.arange(3),
        draw=True,
        return_logprobs=False,
        write_mask=False,
    )
    args.update(changes)
    return args


CPU_TENSORS = [
    ("attention_fwd", _attention_args, "q must be a CUDA tensor, got cpu"),
    ("attention_bwd", _attention_bwd_args, "q must be a CUDA tensor, got cpu"),
    ("norm_fwd", _norm_args, "x must be a CUDA tensor, got cpu"),
    ("norm_bwd", _norm_bwd_args, "x must be a CUDA tensor, got cpu"),
    ("sample", _sample_args, "logits must be a CUDA tensor, got cpu"),
    ("attention_decode", _decode_args, "q must be a CUDA tensor, got cpu"),
]


@pytest.mark.parametrize("function, make_args, message", CPU_TENSORS, ids=[c[0] for c in CPU_TENSORS])
def test_cpu_tensors_are_refused(C, function, make_args, message):
    with pytest.raises(RuntimeError, match=message):
        getattr(C, function)(**make_args())


# One more than the extension's largest head dim (it is not built: these tests are skipped).
TOO_WIDE = (capabilities.max_head_dim("cuda") or 0) + 1
BAD_ARGUMENTS = [
    # dtypes
    (
        "attention_fwd",
        _attention_args(q=torch.randint(0, 3, (2, 4, 5, 8))),
        "q must be float16, bfloat16 or float32, got Long",
    ),
    ("attention_fwd", _attention_args(k=torch.randn(2, 2, 6, 8).half()), "k must have q's dtype Float, got Half"),
    ("attention_fwd", _attention_args(key_padding_mask=torch.ones(2, 6)), "key_padding_mask must be Bool, got Float"),
    ("attention_bwd", _attention_bwd_args(lse=torch.randn(2, 4, 5).double()), "lse must be Float, got Double"),
    ("norm_fwd", _norm_args(x=torch.randn(6, 16).double()), "x must be float16, bfloat16 or float32, got Double"),
    (
        "norm_fwd",
        _norm_args(weight=torch.ones(16, dtype=torch.int32)),
        "weight must be float16, bfloat16 or float32, got Int",
    ),
    ("norm_bwd", _norm_bwd_args(rstd=torch.ones(6).half()), "rstd must be Float, got Half"),
    (
        "sample",
        _sample_args(logits=torch.randn(3, 10).double()),
        "logits must be float16, bfloat16 or float32, got Double",
    ),
    ("sample", _sample_args(seeds=torch.arange(3, dtype=torch.int32)), "seeds must be int64, got Int"),
    ("sample", _sample_args(top_k=torch.ones(3)), "top_k must be an integer tensor, got Float"),
    # shapes
    (
        "attention_fwd",
        _attention_args(q=torch.randn(4, 5, 8)),
        r"q must be 4-D \(batch, heads, seq, head_dim\), got shape \[4, 5, 8\]",
    ),
    (
        "attention_fwd",
        _attention_args(q=torch.randn(2, 3, 5, 8)),
        r"the query heads \(3\) must be a multiple of the key/value heads \(2\)",
    ),
    ("attention_fwd", _attention_args(v=torch.randn(2, 2, 7, 8)), "k and v must have one shape"),
    (
        "attention_fwd",
        _attention_args(
            q=torch.randn(2, 4, 5, TOO_WIDE), k=torch.randn(2, 2, 6, TOO_WIDE), v=torch.randn(2, 2, 6, TOO_WIDE)
        ),
        f"head_dim must be in 1..{TOO_WIDE - 1}, got {TOO_WIDE}",
    ),
    (
        "attention_fwd",
        _attention_args(key_padding_mask=torch.ones(2, 5, dtype=torch.bool)),
        r"key_padding_mask must have shape \[2, 6\], got \[2, 5\]",
    ),
    (
        "attention_fwd",
        _attention_args(q=torch.randn(2, 4, 8, 5).transpose(-1, -2)),
        "q must be contiguous in its last dimension",
    ),
    ("attention_fwd", _attention_args(dropout_p=1.0), r"dropout_p must be in \[0, 1\), got 1"),
    (
        "attention_fwd",
        _attention_args(
            k=torch.randn(1, 1, 1, 8).expand(2, 2, 2**30 + 1, 8), v=torch.randn(1, 1, 1, 8).expand(2, 2, 2**30 + 1, 8)
        ),
        "sequence lengths must be at most 2\\^30, got 5 and 1073741825",
    ),
    (
        "attention_fwd",
        _attention_args(
            q=torch.randn(1, 1, 1, 8).expand(2**20, 2**10, 40, 8),
            k=torch.randn(1, 1, 1, 8).expand(2**20, 2**10, 40, 8),
            v=torch.randn(1, 1, 1, 8).expand(2**20, 2**10, 40, 8),
        ),
        r"batch \* heads \* ceil\(seq / 16\) must be < 2\^31 \(the kernels' grid\), got 3221225472",
    ),
    ("attention_bwd", _attention_bwd_args(dout=torch.randn(2, 4, 6, 8)), r"dout must have shape \[2, 4, 5, 8\]"),
    (
        "attention_fwd",
        _attention_args(window_left=-2),
        r"window must be two ints >= -1 \(-1: unlimited\), got \(-2, -1\)",
    ),
    ("attention_fwd", _attention_args(softcap=-1.0), "softcap must be a finite number >= 0, got -1"),
    (
        "attention_fwd",
        _attention_args(alibi_slopes=torch.rand(3)),
        r"alibi_slopes must be \(Hq,\) or \(batch, Hq\) with Hq = 4, got \[3\]",
    ),
    ("attention_fwd", _attention_args(alibi_slopes=torch.rand(4).double()), "alibi_slopes must be Float, got Double"),
    ("attention_fwd", _attention_args(sinks=torch.rand(2, 4)), r"sinks must have shape \[4\], got \[2, 4\]"),
    (
        "attention_fwd",
        _attention_args(cu_seqlens_q=torch.tensor([0, 5], dtype=torch.int32)),
        "cu_seqlens_q and cu_seqlens_k must be given together",
    ),
    (
        "attention_fwd",
        _attention_args(cu_seqlens_q=torch.tensor([0, 5]), cu_seqlens_k=torch.tensor([0, 6])),
        "q must be 3-D \\(total, heads, head_dim\\) with cu_seqlens, got shape \\[2, 4, 5, 8\\]",
    ),
    (
        "attention_fwd",
        _attention_args(
            q=torch.randn(5, 4, 8),
            k=torch.randn(6, 2, 8),
            v=torch.randn(6, 2, 8),
            cu_seqlens_q=torch.tensor([0, 5]),
            cu_seqlens_k=torch.tensor([0, 6]),
        ),
        "cu_seqlens_q must be Int, got Long",
    ),
    (
        "attention_fwd",
        _attention_args(
            q=torch.randn(5, 4, 8),
            k=torch.randn(6, 2, 8),
            v=torch.randn(6, 2, 8),
            key_padding_mask=torch.ones(1, 6, dtype=torch.bool),
            cu_seqlens_q=torch.tensor([0, 5], dtype=torch.int32),
            cu_seqlens_k=torch.tensor([0, 6], dtype=torch.int32),
            max_seqlen_q=5,
            max_seqlen_k=6,
        ),
        "packed sequences take no key_padding_mask",
    ),
    ("attention_decode", _decode_args(cache_rows=torch.zeros(2, dtype=torch.int32)), "give exactly one of"),
    ("attention_decode", _decode_args(block_table=torch.zeros(2, 2)), "block_table must be Int, got Float"),
    (
        "attention_decode",
        _decode_args(cache_total=torch.zeros(3, dtype=torch.int32)),
        r"cache_total must have shape \[2\]",
    ),
    ("attention_decode", _decode_args(split_size=48), "split_size a positive multiple of 32"),
    ("attention_decode", _decode_args(k_cache=torch.randn(4, 16, 3, 8)), "k_cache and v_cache must have one shape"),
    ("norm_fwd", _norm_args(x=torch.randn(6)), r"x must be 2-D \(rows, normalized size\), got shape \[6\]"),
    ("norm_fwd", _norm_args(residual=torch.randn(6, 15)), r"residual must have shape \[6, 16\], got \[6, 15\]"),
    ("norm_fwd", _norm_args(weight=torch.ones(15)), r"weight must have shape \[16\], got \[15\]"),
    ("norm_fwd", _norm_args(rms=True), "rms_norm takes no bias"),
    ("norm_bwd", _norm_bwd_args(mean=None), "layer_norm's backward needs the forward's mean"),
    ("sample", _sample_args(temperature=torch.ones(4)), r"temperature must have shape \[3\], got \[4\]"),
    ("sample", _sample_args(logits=torch.randn(3, 0)), "logits must have at least one token"),
]


@pytest.mark.parametrize(
    "function, args, message", BAD_ARGUMENTS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_ARGUMENTS)]
)
def test_bad_arguments_get_readable_errors(C, function, args, message):
    """Dtypes and shapes are checked before the device, so these errors show on any machine."""
    with pytest.raises(RuntimeError, match=message):
        getattr(C, function)(**args)


def test_explicit_cuda_backend_on_cpu_tensors_says_why():
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(NotImplementedError, match="cuda: "):
        fastattn.attention(q, q, q, backend="cuda")
    with pytest.raises(NotImplementedError, match="cuda: "):
        fastattn.layer_norm(torch.randn(2, 8), 8, backend="cuda")
    with pytest.raises(NotImplementedError, match="cuda: "):
        fastattn.sample(torch.randn(2, 8), backend="cuda")


# ------------------------------------------------------------------------------------ GPU: streams
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("vocab", [1, 37, 4096, 50_000])
def test_same_seed_same_tokens_on_triton_and_cuda(gpu, dtype, vocab):
    """Both kernels draw the same Philox stream and find the same thresholds: bit-identical tokens for
    the same seeds, with every filter on, per-row parameters, greedy rows and special rows."""
    if backends.device_reasons("triton", gpu):
        pytest.skip(f"triton: {'; '.join(backends.device_reasons('triton', gpu))}")
    gen = torch.Generator().manual_seed(vocab)
    batch = 64
    logits = (torch.randn(batch, vocab, generator=gen) * 3).to(dtype)
    logits[1] = torch.randint(-3, 4, (vocab,), generator=gen).to(dtype) * 0.75  # ties everywhere
    logits[2, :: max(1, vocab // 3)] = math.inf
    logits[3, vocab // 2] = math.nan
    logits[4] = -math.inf
    logits = logits.to(gpu)
    seeds = torch.randint(-(2**62), 2**62, (batch,), generator=gen).to(gpu)
    temperature = torch.rand(batch, generator=gen).to(gpu) * 1.5
    temperature[5] = 0.0  # greedy
    settings = [
        dict(),
        dict(temperature=temperature),
        dict(temperature=0.8, top_k=max(1, vocab // 10)),
        dict(temperature=temperature, top_p=0.9),
        dict(temperature=1.3, min_p=0.05),
        dict(
            temperature=temperature,
            top_k=torch.randint(1, vocab + 1, (batch,), generator=gen).to(gpu),
            top_p=torch.rand(batch, generator=gen, dtype=torch.float64).clamp_min(1e-3).to(gpu),
            min_p=0.02,
        ),
    ]
    for filters in settings:
        options = dict(seed=seeds, return_logprobs=True, **filters)
        triton_tokens, triton_logprobs = fastattn.sample(logits, backend="triton", **options)
        cuda_tokens, cuda_logprobs = fastattn.sample(logits, backend="cuda", **options)
        differ = (triton_tokens != cuda_tokens).nonzero().flatten().tolist()
        assert not differ, f"{filters}: rows {differ[:8]} draw different tokens"
        torch.testing.assert_close(cuda_logprobs, triton_logprobs, rtol=1e-5, atol=1e-5, equal_nan=True)
    # the batch does not matter: row 7 alone draws what it drew in the batch
    alone = fastattn.sample(logits[7:8], seed=seeds[7:8], temperature=0.9, top_p=0.8, backend="cuda")
    batched = fastattn.sample(logits, seed=seeds, temperature=0.9, top_p=0.8, backend="cuda")
    assert alone.item() == batched[7].item()


@pytest.mark.parametrize("vocab", [10, 1000, 32_000])
def test_cuda_kept_set_equals_triton_and_reference(gpu, C, vocab):
    from fastattn.kernels import sampling as triton_sampling
    from fastattn.ops import sampling as ops

    gen = torch.Generator().manual_seed(1)
    logits = torch.randint(-6, 7, (16, vocab), generator=gen).float().mul(0.5).to(gpu)  # many ties
    params = ops.row_parameters(logits, 0.7, max(1, vocab // 7), 0.8, 0.01)
    seeds = torch.zeros(16, dtype=torch.int64, device=gpu)
    _, _, mask = C.sample(logits, *params, seeds, False, False, True)
    assert torch.equal(mask, triton_sampling.filter_mask(logits, *params))
    want = reference.filter_logits(logits.double(), 0.7, max(1, vocab // 7), 0.8, 0.01) > -math.inf
    assert torch.equal(mask, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_cuda_dropout_draws_the_triton_stream(gpu, dtype):
    """The cuda forward and backward apply the keep-mask of kernels/attention.py's stream: equal to
    the reference fed that mask."""
    from fastattn.kernels import attention as triton_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 70, 40, dtype=dtype, device=gpu) for _ in range(3))
    seed, p = 1234, 0.3
    keep = triton_attention.dropout_keep_mask(2, 4, 70, 70, p, seed, gpu)
    out, lse = torch.ops.fastattn.attention_fwd_cuda(q, k, v, None, True, 40**-0.5, p, seed, True)
    ref_out, ref_lse = reference.attention(
        q.double(), k.double(), v.double(), causal=True, dropout_p=p, dropout_keep=keep, return_lse=True
    )
    tol = 2e-2 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ GPU: opcheck
def test_opcheck_attention(gpu):
    q = torch.randn(2, 5, 4, 24, device=gpu, dtype=torch.float16).transpose(1, 2).requires_grad_()  # strided
    k = torch.randn(2, 2, 9, 24, device=gpu, dtype=torch.float16).requires_grad_()
    v = torch.randn(2, 2, 9, 24, device=gpu, dtype=torch.float16).requires_grad_()
    mask = torch.rand(2, 9, device=gpu) > 0.3
    for args in ((q, k, v, None, True, 0.2, 0.0, 0, True), (q, k, v, mask, False, 0.2, 0.1, 7, False)):
        torch.library.opcheck(torch.ops.fastattn.attention_fwd_cuda.default, args)


@pytest.mark.parametrize("rms", [False, True])
def test_opcheck_norm(gpu, rms):
    n = 24
    x = torch.randn(3, 4, n + 8, device=gpu)[..., 4 : n + 4].requires_grad_()
    residual = torch.randn(4, 3, n, device=gpu).transpose(0, 1).requires_grad_()
    weight = torch.randn(2 * n, device=gpu)[::2].requires_grad_()
    bias = None if rms else torch.randn(n, device=gpu, dtype=torch.float16).requires_grad_()
    for args in ((x, residual, weight, bias, 1e-5, rms, True), (x, None, None, bias, 1e-5, rms, False)):
        torch.library.opcheck(torch.ops.fastattn.norm_fwd_cuda.default, args)


def test_opcheck_sample(gpu):
    from fastattn.ops import sampling as ops

    logits = torch.randn(5, 40, device=gpu)
    params = ops.row_parameters(logits, torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0], device=gpu), 10, 0.9, 0.05)
    seeds = torch.arange(5, device=gpu)
    strided = torch.randn(40, 5, device=gpu).t()  # last dimension not contiguous
    for x in (logits, strided, logits[:, ::2]):
        for return_logprobs in (False, True):
            args = (x, *params, seeds, return_logprobs)
            torch.library.opcheck(torch.ops.fastattn.sample_cuda.default, args)
