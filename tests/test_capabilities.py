"""The capability table: each backend's dtypes, features and limits are declared once, and every layer
that depends on them follows a change made in that one place."""

import pytest
import torch

import fastattn
from fastattn import backends, capabilities
from fastattn.backends import Backend
from fastattn.bench import attention as bench_attention
from fastattn.ops.kvcache import attention_with_kvcache
from fastattn.verify import attention as verify_attention


def test_every_backend_declares_every_op():
    for backend in backends.BACKENDS:
        for op in capabilities.OPS:
            capability = capabilities.of(op, backend)
            if capability is None:  # the extension is not built
                assert backend is Backend.CUDA and backends.EXTENSION_ERROR is not None
                continue
            assert capability.dtypes, (op, backend)
            assert capability.features <= set(capabilities.OP_FEATURES[op]), (op, backend)
    assert len(capabilities.describe()) == len(capabilities.OPS) * len(backends.BACKENDS)


def test_the_extension_exports_its_own_limits():
    """The CUDA limits come from the extension (csrc/common/limits.h), not from a Python constant."""
    if backends._C is None:
        pytest.skip(f"the extension is not built: {backends.EXTENSION_ERROR}")
    exported = backends._C.capabilities()
    assert capabilities.of("attention", "cuda").max_head_dim == exported["attention"]["max_head_dim"]
    assert capabilities.of("sampling", "cuda").max_vocab == exported["sampling"]["max_vocab"] == 2**31 - 1
    assert capabilities.of("norm", "cuda").dtypes == (torch.float16, torch.bfloat16, torch.float32)
    limit = exported["attention"]["max_head_dim"]
    with pytest.raises(RuntimeError, match=f"head_dim must be in 1..{limit}, got {limit + 1}"):
        backends._C.attention_shared_memory(torch.float16, limit + 1)


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="op must be one of attention, kvcache, norm, sampling, got 'conv'"):
        capabilities.of("conv", "triton")
    with pytest.raises(ValueError, match="backend must be one of cuda, triton, torch, naive, got 'flash'"):
        capabilities.of("attention", "flash")
    with pytest.raises(ValueError, match="attention: unknown features \\['flash'\\]"):
        capabilities.Capability.from_table("attention", {"dtypes": (torch.float16,), "features": ("flash",)})


@pytest.fixture
def triton_head_dim_limit_64(monkeypatch):
    """The Triton kernels' head-dim limit changed in its one place (their table) to 64."""
    declared = dict(capabilities._TABLE[Backend.TRITON])
    for op in ("attention", "kvcache"):
        declared[op] = capabilities.Capability(**{**vars(declared[op]), "max_head_dim": 64})
    monkeypatch.setitem(capabilities._TABLE, Backend.TRITON, declared)
    return 64


def test_a_head_dim_limit_changed_in_one_place_is_followed_by_every_layer(triton_head_dim_limit_64):
    limit = triton_head_dim_limit_64
    if "triton" not in fastattn.available_backends():
        pytest.skip("triton cannot run here")
    q = torch.randn(1, 2, 5, limit + 16)
    # the dispatcher and its error message
    with pytest.raises(NotImplementedError, match=f"triton: head_dim {limit + 16} is larger than {limit}"):
        fastattn.attention(q, q, q, backend="triton")
    assert fastattn.attention(q[..., :limit], q[..., :limit], q[..., :limit], backend="triton").shape[-1] == limit
    torch.testing.assert_close(fastattn.attention(q, q, q), fastattn.attention(q, q, q, backend="naive"))
    cache, lengths = torch.zeros(1, 8, 2, limit + 16), torch.tensor([4], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match=f"triton: head_dim {limit + 16} is larger than {limit}"):
        attention_with_kvcache(q.transpose(1, 2), cache, cache, cache_seqlens=lengths, backend="triton")
    # env, verify's grid and the benchmarks' grid
    assert f"attention triton  float16, bfloat16, float32; head_dim <= {limit};" in "\n".join(capabilities.describe())
    assert capabilities.fused_max_head_dim() == limit
    assert limit in {shape.head_dim for shape in verify_attention.full_shapes()}
    assert bench_attention.head_dims() == (limit,)  # of 64, 128 and the widest served


def test_features_a_backend_lacks_are_named_in_the_error():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(NotImplementedError, match="torch: return_lse, softcap: not supported by this backend"):
        fastattn.attention(q, q, q, softcap=2.0, return_lse=True, backend="torch")


def test_backend_is_a_str_enum():
    assert Backend("cuda") is Backend.CUDA == "cuda"
    assert {"cuda": 1}[Backend.CUDA] == 1 and {Backend.CUDA: 1}["cuda"] == 1
    assert f"{Backend.TRITON:<8}|" == "triton  |" and repr(Backend.NAIVE) == "'naive'"
    assert backends.CHOICES == ("auto", "cuda", "triton", "torch", "naive")
    assert all(isinstance(name, Backend) for name in fastattn.available_backends())
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'cuda', 'triton', 'torch', 'naive'"):
        backends.parse("flash")


def test_a_dtype_dropped_from_a_backend_leaves_the_grids_and_is_refused(monkeypatch):
    declared = dict(capabilities._TABLE[Backend.TRITON])
    declared["attention"] = capabilities.Capability(**{**vars(declared["attention"]), "dtypes": (torch.float32,)})
    declared["norm"] = capabilities.Capability((torch.float32,))
    monkeypatch.setitem(capabilities._TABLE, Backend.TRITON, declared)
    assert capabilities.fused_dtypes("norm") == (torch.float32,)
    assert {case.dtype for case in verify_attention.cases(torch.device("cpu"), full=False)} == {torch.float32}
    if "triton" in fastattn.available_backends():
        x = torch.randn(3, 8, dtype=torch.float16)
        with pytest.raises(NotImplementedError, match=r"triton: x dtype torch.float16 is not supported \(float32\)"):
            fastattn.layer_norm(x, (8,), backend="triton")
