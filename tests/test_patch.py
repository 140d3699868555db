"""fastattn.patch: module swaps (weights kept, what was swapped reported), nn.Transformer* models in
training and evaluation, and the opt-in routing of F.scaled_dot_product_attention."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastattn
from fastattn.ops import attention as attention_ops
from fastattn.testing import FORWARD_FACTOR, GRADIENT_FACTOR, assert_close_to_reference


@pytest.fixture
def kernel_calls(monkeypatch):
    """The backends fastattn.attention ran, one entry per call."""
    calls = []
    for name, implementation in list(attention_ops._IMPLEMENTATIONS.items()):

        def counting(*args, _name=name, _implementation=implementation):
            calls.append(_name)
            return _implementation(*args)

        monkeypatch.setitem(attention_ops._IMPLEMENTATIONS, name, counting)
    return calls


class TinyModel(nn.Module):
    """One of each swappable module, one shared module, and a LayerNorm subclass that must stay."""

    class ScaledLayerNorm(nn.LayerNorm):
        def forward(self, x):
            return 2 * super().forward(x)

    def __init__(self, dim=16):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        shared = nn.LayerNorm(dim)
        self.blocks = nn.Sequential(shared, nn.Linear(dim, dim), nn.RMSNorm(dim, eps=1e-6), shared)
        self.custom = self.ScaledLayerNorm(dim)

    def forward(self, x):
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.custom(self.blocks(x))


def test_swaps_modules_in_place_and_keeps_their_parameters(caplog):
    model = TinyModel().double()
    parameters = dict(model.named_parameters())
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    expected = model(x)
    with caplog.at_level(logging.INFO, logger="fastattn.patch"):
        patched = fastattn.patch(model)
    assert patched is model
    assert model.fastattn_replaced == ["attn", "blocks.0", "blocks.2"]
    assert "replaced 3 module(s): attn, blocks.0, blocks.2" in caplog.text
    assert type(model.attn) is fastattn.nn.MultiheadAttention
    assert type(model.blocks[0]) is fastattn.nn.LayerNorm and model.blocks[3] is model.blocks[0]
    assert type(model.blocks[2]) is fastattn.nn.RMSNorm and model.blocks[2].eps == 1e-6
    assert type(model.custom) is TinyModel.ScaledLayerNorm
    for name, parameter in model.named_parameters():
        assert parameter is parameters[name], name
    assert all(p.dtype == torch.float64 for p in model.parameters())
    torch.testing.assert_close(model(x), expected)
    assert fastattn.patch(model).fastattn_replaced == ["attn", "blocks.0", "blocks.2"]  # nothing left to swap


@pytest.mark.parametrize(
    "attention, norm, expected", [(True, False, ["attn"]), (False, True, ["blocks.0", "blocks.2"])]
)
def test_attention_and_norm_flags(attention, norm, expected):
    assert fastattn.patch(TinyModel(), attention=attention, norm=norm).fastattn_replaced == expected


def test_a_swapped_model_object_is_returned():
    norm = nn.LayerNorm(8).train(False)
    patched = fastattn.patch(norm)
    assert type(patched) is fastattn.nn.LayerNorm and patched.weight is norm.weight and not patched.training
    assert patched.fastattn_replaced == [""]


def test_modules_with_hooks_are_left_alone(caplog):
    model = TinyModel()
    model.blocks[2].register_forward_hook(lambda module, args, out: None)
    with caplog.at_level(logging.WARNING, logger="fastattn.patch"):
        fastattn.patch(model)
    assert type(model.blocks[2]) is nn.RMSNorm and "blocks.2" not in model.fastattn_replaced
    assert "left blocks.2 (RMSNorm) alone: it has hooks" in caplog.text


def test_an_optimizer_keeps_training_the_swapped_modules():
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fastattn.patch(model)
    before = model.attn.in_proj_weight.detach().clone()
    model(torch.randn(2, 5, 16)).square().sum().backward()
    optimizer.step()
    assert not torch.equal(model.attn.in_proj_weight, before)


# ------------------------------------------------------------------------------- nn.Transformer*
D_MODEL, N_HEAD, SEQ, BATCH = 16, 2, 6, 2


def padding_mask():
    ignored = torch.zeros(BATCH, SEQ, dtype=torch.bool)  # torch's sense: True = padding
    ignored[1, -2:] = True
    return ignored


def causal(length=SEQ):
    return torch.ones(length, length, dtype=torch.bool).triu(diagonal=1)  # torch's sense: True = masked


def encoder():
    layer = nn.TransformerEncoderLayer(D_MODEL, N_HEAD, dim_feedforward=32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True)


def decoder():
    layer = nn.TransformerDecoderLayer(
        D_MODEL, N_HEAD, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=True
    )
    return nn.TransformerDecoder(layer, num_layers=2)


def transformer():
    return nn.Transformer(
        D_MODEL, N_HEAD, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32, dropout=0.0, batch_first=True
    )


def run_encoder(model, src):
    return model(src, mask=causal(), src_key_padding_mask=padding_mask())


def run_encoder_padding_only(model, src):
    return model(src, src_key_padding_mask=padding_mask())


def run_decoder(model, src):
    memory = src.flip(1)
    return model(src, memory, tgt_mask=causal(), tgt_is_causal=True, memory_key_padding_mask=padding_mask())


def run_transformer(model, src):
    return model(
        src, src.flip(1), tgt_mask=causal(), src_key_padding_mask=padding_mask(), memory_key_padding_mask=padding_mask()
    )


MODELS = {
    "encoder, causal + padding": (encoder, run_encoder),
    "encoder, padding": (encoder, run_encoder_padding_only),
    "decoder": (decoder, run_decoder),
    "transformer": (transformer, run_transformer),
}


def outputs(model, run, src, *, grads):
    """Output (and parameter gradients) of ``run(model, src)``; masks are cast to src's dtype by torch."""
    model.zero_grad()
    out = run(model, src)
    if not grads:
        return out.detach(), None
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(upstream.to(out.dtype))
    return out.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", list(MODELS))
def test_transformer_models_match_torch(case, mode, kernel_calls):
    """Training, and evaluation with autograd on (the layers' own forward, through fastattn's modules):
    within the numerics rule of torch's float64 result. Padded positions are compared too."""
    build, run = MODELS[case]
    torch_model = build().train(mode == "train")
    src = torch.randn(BATCH, SEQ, D_MODEL)
    ours = fastattn.patch(copy.deepcopy(torch_model))
    assert any(name.endswith("self_attn") for name in ours.fastattn_replaced)
    ref, ref_grads = outputs(copy.deepcopy(torch_model).double(), run, src.double(), grads=True)
    plain, plain_grads = outputs(torch_model, run, src, grads=True)
    before = len(kernel_calls)
    out, grads = outputs(ours, run, src, grads=True)
    assert len(kernel_calls) > before, "fastattn's attention was never called"
    assert_close_to_reference("output", out, ref, plain, factor=FORWARD_FACTOR)
    for name in ref_grads:
        assert_close_to_reference(f"d{name}", grads[name], ref_grads[name], plain_grads[name], factor=GRADIENT_FACTOR)


@pytest.mark.parametrize("case", list(MODELS))
def test_inference_fast_paths_stay_torchs(case):
    """Under no_grad in evaluation torch's fused encoder-layer path still recognizes the swapped
    modules (they subclass torch's), so encoder outputs are bitwise torch's; everything else stays
    within the numerics rule."""
    build, run = MODELS[case]
    torch_model = build().eval()
    src = torch.randn(BATCH, SEQ, D_MODEL)
    ours = fastattn.patch(copy.deepcopy(torch_model))
    with torch.no_grad():
        ref = run(copy.deepcopy(torch_model).double(), src.double())
        plain, out = run(torch_model, src), run(ours, src)
    if case.startswith("encoder"):
        torch.testing.assert_close(out, plain, rtol=0, atol=0)
    assert_close_to_reference("output", out, ref, plain, factor=FORWARD_FACTOR)


# ---------------------------------------------------------------- F.scaled_dot_product_attention
class SdpaModel(nn.Module):
    """Calls F.scaled_dot_product_attention itself, as many models do."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x, attn_mask=None, is_causal=False):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, D)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


@pytest.mark.parametrize("mask", ["none", "causal", "key padding", "float (falls back to torch)"])
def test_sdpa_routes_calls_to_fastattn_within_the_block_only(mask, kernel_calls):
    model = SdpaModel()
    x = torch.randn(2, 7, 32)
    kwargs = {
        "none": {},
        "causal": dict(is_causal=True),
        "key padding": dict(attn_mask=torch.rand(2, 1, 1, 7) > 0.3),
        "float (falls back to torch)": dict(attn_mask=torch.randn(2, 4, 7, 7)),
    }[mask]
    torch_sdpa = F.scaled_dot_product_attention
    with torch.no_grad():
        as64 = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
        ref = model.double()(x.double(), **as64)
        plain = model.float()(x, **kwargs)
        assert kernel_calls == []
        with fastattn.patch_sdpa():
            assert F.scaled_dot_product_attention is not torch_sdpa
            out = model(x, **kwargs)
    assert F.scaled_dot_product_attention is torch_sdpa
    assert len(kernel_calls) == (0 if mask.startswith("float") else 1)
    assert_close_to_reference("output", out, ref, plain, factor=FORWARD_FACTOR)


def test_sdpa_routing_is_undone_on_errors_and_reaches_torch_modules(kernel_calls):
    torch_sdpa = F.scaled_dot_product_attention
    with pytest.raises(RuntimeError, match="inside"):
        with fastattn.patch_sdpa():
            raise RuntimeError("inside")
    assert F.scaled_dot_product_attention is torch_sdpa
    mha = nn.MultiheadAttention(16, 2, batch_first=True)  # torch's own module calls F's SDPA
    x = torch.randn(2, 5, 16)
    with fastattn.patch_sdpa():
        mha(x, x, x, need_weights=False)
    assert kernel_calls
    with pytest.warns(DeprecationWarning, match="patch_sdpa"):  # the old name still works
        with fastattn.patch.sdpa():
            assert F.scaled_dot_product_attention is not torch_sdpa
    assert F.scaled_dot_product_attention is torch_sdpa
