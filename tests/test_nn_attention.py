"""fastattn.nn.MultiheadAttention against torch.nn.MultiheadAttention: outputs, gradients, masks,
layouts, state dicts, and which calls take the fused path."""

import copy

import pytest
import torch
from torch import nn

import fastattn
import fastattn.nn.attention as nn_attention
from fastattn.nn import MultiheadAttention
from fastattn.testing import FORWARD_FACTOR, GRADIENT_FACTOR, assert_close_to_reference

EMBED, HEADS, BATCH, TARGET, SOURCE = 32, 4, 2, 7, 9


def torch_mha(**options) -> nn.MultiheadAttention:
    """A torch module with every parameter random (torch starts biases at zero)."""
    module = nn.MultiheadAttention(EMBED, HEADS, **options)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.3)
    return module


def ours_from(module: nn.MultiheadAttention, **options) -> MultiheadAttention:
    ours = MultiheadAttention.configured_like(module, **options)
    ours.load_state_dict(module.state_dict())
    return ours.train(module.training)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls that reach fastattn.attention."""
    calls = []
    original = nn_attention.attention

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(nn_attention, "attention", counting)
    return calls


def inputs(*, batch_first, batched=True, kdim=EMBED, vdim=EMBED, self_attention=False):
    def shaped(length, dim):
        if not batched:
            return torch.randn(length, dim)
        return torch.randn(BATCH, length, dim) if batch_first else torch.randn(length, BATCH, dim)

    if self_attention:
        x = shaped(TARGET, EMBED)
        return x, x, x
    return shaped(TARGET, EMBED), shaped(SOURCE, kdim), shaped(SOURCE, vdim)


def padding(batched=True, source=SOURCE, fully_masked_row=False):
    """torch's sense: True = ignore this key."""
    ignored = torch.rand(BATCH, source) < 0.3
    ignored[:, 0] = False
    if fully_masked_row:
        ignored[1] = True
    return ignored if batched else ignored[0]


def causal_mask(length, dtype=torch.bool):
    mask = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)  # True = ignore
    return mask if dtype == torch.bool else torch.zeros(length, length).masked_fill(mask, float("-inf"))


def as_float_mask(ignored):
    return torch.zeros(ignored.shape).masked_fill(ignored, float("-inf"))


def compare(module, call, *, expect_fused, fused_calls, grads=False):
    """Runs ``call`` on torch's module in float64 (the exact answer) and float32 (plain) and on ours
    in float32; checks the outputs (and parameter gradients) under the numerics rule."""
    runs = {"ref": copy.deepcopy(module).double(), "plain": module, "ours": ours_from(module)}
    results = {}
    for name, mod in runs.items():
        tensors = call.tensors
        if name == "ref":
            tensors = [t.detach().double().requires_grad_(t.requires_grad) for t in tensors]
        before = len(fused_calls)
        out, weights = call(mod, *tensors)
        if name == "ours":
            fused = len(fused_calls) > before
            assert fused == expect_fused, "fell back to torch" if expect_fused else "took the fused path"
        grad = None
        if grads:
            upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            out.backward(upstream.to(out.dtype))
            grad = {n: p.grad for n, p in mod.named_parameters()}
        results[name] = (out.detach(), weights, grad)
    (out_ref, weights_ref, grad_ref), plain, ours = results["ref"], results["plain"], results["ours"]
    assert_close_to_reference("output", ours[0], out_ref, plain[0], factor=FORWARD_FACTOR)
    if weights_ref is None:
        assert ours[1] is None
    else:
        assert_close_to_reference("weights", ours[1], weights_ref, plain[1], factor=FORWARD_FACTOR)
    for n in grad_ref or {}:
        assert_close_to_reference(f"d{n}", ours[2][n], grad_ref[n], plain[2][n], factor=GRADIENT_FACTOR)


class Call:
    """A forward call with its tensor arguments kept apart, so they can be cast to float64."""

    def __init__(self, tensors, **kwargs):
        self.tensors = list(tensors)
        self.kwargs = kwargs
        self.masks = {name: kwargs.pop(name) for name in ("key_padding_mask", "attn_mask") if name in kwargs}

    def __call__(self, module, *tensors):
        if self.tensors[0] is self.tensors[1] is self.tensors[2]:
            tensors = (tensors[0],) * 3  # keep self-attention recognizable after the cast
        dtype = tensors[0].dtype
        masks = {n: m.to(dtype) if m.is_floating_point() else m for n, m in self.masks.items()}
        return module(*tensors, **masks, **self.kwargs)


# ----------------------------------------------------------------------------------- fused calls
FUSED_CASES = {
    "batch_first self-attention": dict(batch_first=True, self_attention=True),
    "seq-first cross-attention": dict(batch_first=False),
    "unbatched": dict(batch_first=True, batched=False),
    "bool key padding": dict(batch_first=True, key_padding="bool"),
    "float key padding (0/-inf)": dict(batch_first=False, key_padding="float"),
    "unbatched key padding": dict(batch_first=False, batched=False, key_padding="bool"),
    "fully masked batch element": dict(batch_first=True, key_padding="full"),
    "causal hint, bool mask": dict(batch_first=True, self_attention=True, causal=torch.bool),
    "causal hint, float masks": dict(batch_first=False, self_attention=True, causal=torch.float32, key_padding="float"),
    "kdim/vdim (separate weights)": dict(batch_first=True, kdim=24, vdim=40, key_padding="bool"),
    "no bias": dict(batch_first=True, bias=False, self_attention=True),
}


@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_calls_match_torch(case, fused_calls):
    options = dict(FUSED_CASES[case])
    batched = options.pop("batched", True)
    key_padding = options.pop("key_padding", None)
    causal = options.pop("causal", None)
    self_attention = options.pop("self_attention", False)
    kdim, vdim = options.get("kdim", EMBED), options.get("vdim", EMBED)
    module = torch_mha(**options)
    tensors = inputs(
        batch_first=module.batch_first,
        batched=batched,
        kdim=kdim,
        vdim=vdim,
        self_attention=self_attention or causal is not None,
    )
    kwargs = dict(need_weights=False)
    if key_padding is not None:
        source = TARGET if causal is not None else SOURCE
        ignored = padding(batched, source=source, fully_masked_row=key_padding == "full")
        kwargs["key_padding_mask"] = as_float_mask(ignored) if key_padding == "float" else ignored
    if causal is not None:
        kwargs.update(attn_mask=causal_mask(TARGET, causal), is_causal=True)
    compare(module, Call(tensors, **kwargs), expect_fused=True, fused_calls=fused_calls)


def test_gradients_match_torch(fused_calls):
    module = torch_mha(batch_first=True).train()
    tensors = [t.requires_grad_() for t in inputs(batch_first=True)]
    call = Call(tensors, key_padding_mask=padding(), need_weights=False)
    compare(module, call, expect_fused=True, fused_calls=fused_calls, grads=True)


def test_causal_gradients_match_torch(fused_calls):
    module = torch_mha(batch_first=False).train()
    call = Call(
        inputs(batch_first=False, self_attention=True),
        attn_mask=causal_mask(TARGET),
        is_causal=True,
        need_weights=False,
    )
    compare(module, call, expect_fused=True, fused_calls=fused_calls, grads=True)


# ------------------------------------------------------------------------------ torch's own path
FALLBACK_CASES = {
    "need_weights (averaged)": dict(need_weights=True),
    "need_weights per head": dict(need_weights=True, average_attn_weights=False),
    "arbitrary bool attn_mask": dict(attn_mask="random"),
    "3-D float attn_mask": dict(attn_mask="3d-float"),
    "additive float key padding": dict(key_padding="additive"),
    "add_bias_kv": dict(module=dict(add_bias_kv=True)),
    "add_zero_attn": dict(module=dict(add_zero_attn=True)),
}


@pytest.mark.parametrize("case", list(FALLBACK_CASES))
def test_other_calls_go_to_torch_and_match(case, fused_calls):
    options = dict(FALLBACK_CASES[case])
    module = torch_mha(batch_first=True, **options.pop("module", {}))
    kwargs = dict(need_weights=options.pop("need_weights", False))
    kwargs.update(options)
    if kwargs.pop("attn_mask", None) == "random":
        kwargs["attn_mask"] = torch.rand(TARGET, SOURCE) < 0.3
    elif case == "3-D float attn_mask":
        kwargs["attn_mask"] = torch.randn(BATCH * HEADS, TARGET, SOURCE)
    if kwargs.pop("key_padding", None) == "additive":
        kwargs["key_padding_mask"] = torch.randn(BATCH, SOURCE)
    compare(module, Call(inputs(batch_first=True), **kwargs), expect_fused=False, fused_calls=fused_calls)


def test_causal_hint_without_mask_raises_like_torch():
    ours = MultiheadAttention(EMBED, HEADS, batch_first=True)
    x = torch.randn(BATCH, TARGET, EMBED)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ours(x, x, x, need_weights=False, is_causal=True)


def test_dropout_in_training_is_fastattns(fused_calls):
    """In training the fused call gets the module's dropout; in evaluation none."""
    ours = MultiheadAttention(EMBED, HEADS, dropout=0.25, batch_first=True)
    x = torch.randn(BATCH, TARGET, EMBED)
    ours.train()(x, x, x, need_weights=False)
    ours.eval()(x, x, x, need_weights=False)
    assert [call["dropout_p"] for call in fused_calls] == [0.25, 0.0]
    torch.manual_seed(3)
    first = ours.train()(x, x, x, need_weights=False)[0]
    torch.manual_seed(3)
    again = ours(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, ours.eval()(x, x, x, need_weights=False)[0])


def test_explicit_backend_is_used(fused_calls):
    ours = MultiheadAttention(EMBED, HEADS, batch_first=True, backend="naive")
    x = torch.randn(BATCH, TARGET, EMBED)
    ours(x, x, x, need_weights=False)
    assert fused_calls[0]["backend"] == "naive"
    with pytest.raises(ValueError, match="backend"):
        MultiheadAttention(EMBED, HEADS, backend="fast")


# ------------------------------------------------------------------------------- state dicts
@pytest.mark.parametrize(
    "options",
    [dict(), dict(kdim=24, vdim=40), dict(add_bias_kv=True, bias=False)],
    ids=["packed", "separate", "bias_kv"],
)
def test_state_dicts_load_both_ways(options):
    module = torch_mha(**options)
    ours = MultiheadAttention(EMBED, HEADS, **options)
    assert list(ours.state_dict()) == list(module.state_dict())
    ours.load_state_dict(module.state_dict())
    back = nn.MultiheadAttention(EMBED, HEADS, **options)
    back.load_state_dict(ours.state_dict())
    for (name, expected), got in zip(module.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(expected, got), name
    assert isinstance(ours, nn.MultiheadAttention)


def test_the_two_key_padding_mask_senses():
    """fastattn.attention's key_padding_mask says which keys take part (True = keep); torch's and
    fastattn.nn.MultiheadAttention's say which to ignore (True = ignore). The same padded keys through
    both give the reference result; the other sense gives another result."""
    torch.manual_seed(0)
    embed, heads, length = 16, 2, 6
    ignored = torch.zeros(BATCH, length, dtype=torch.bool)
    ignored[0, 4:] = True
    ignored[1, 1] = True
    x = torch.randn(BATCH, length, embed)
    module = fastattn.nn.MultiheadAttention(embed, heads, batch_first=True, bias=False).eval()
    with torch.no_grad():
        through_module, _ = module(x, x, x, key_padding_mask=ignored, need_weights=False)
        torch_module = torch.nn.MultiheadAttention(embed, heads, batch_first=True, bias=False).eval()
        torch_module.load_state_dict(module.state_dict())
        expected, _ = torch_module(x, x, x, key_padding_mask=ignored, need_weights=False)
        torch.testing.assert_close(through_module, expected, atol=1e-5, rtol=1e-5)

        q, k, v = (
            (x @ w.T).view(BATCH, length, heads, embed // heads).transpose(1, 2) for w in module.in_proj_weight.chunk(3)
        )
        kept = ~ignored
        through_op = fastattn.attention(q, k, v, key_padding_mask=kept)
        reference_out = fastattn.reference.attention(q, k, v, key_padding_mask=kept)
        torch.testing.assert_close(through_op, reference_out, atol=1e-5, rtol=1e-5)
        heads_out = through_op.transpose(1, 2).reshape(BATCH, length, embed) @ module.out_proj.weight.T
        torch.testing.assert_close(heads_out, through_module, atol=1e-5, rtol=1e-5)

        wrong_sense = fastattn.attention(q, k, v, key_padding_mask=ignored)
        assert (wrong_sense - through_op).abs().max() > 1e-2, "the mask's sense made no difference"
