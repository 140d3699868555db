"""attn_implementation="fastattn" and norm swaps on Hugging Face transformers models (GPT-2, BERT, a
Llama with GQA), built from small configs with random weights (nothing is downloaded)."""

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (fastattn[hf])")

from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402
from transformers.masking_utils import sdpa_mask, sliding_window_causal_mask_function  # noqa: E402

import fastattn  # noqa: E402
import fastattn.integrations.huggingface as fastattn_hf  # noqa: E402
from fastattn.ops import attention as attention_ops  # noqa: E402
from fastattn.testing import FORWARD_FACTOR, GRADIENT_FACTOR, assert_close_to_reference  # noqa: E402

VOCAB, BATCH, SEQ = 101, 2, 9
# A small decoder: GQA (4 query heads, 2 key/value heads), 2 layers.
DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def gpt2_config():
    return transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def bert_config():
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def llama_config():
    """GQA (4 query heads, 2 key/value heads) and LlamaRMSNorm."""
    return transformers.LlamaConfig(**DECODER)


MODELS = {
    "gpt2": (gpt2_config, transformers.AutoModelForCausalLM),
    "bert": (bert_config, transformers.AutoModelForMaskedLM),
    "llama": (llama_config, transformers.AutoModelForCausalLM),
}


def eager_and_fastattn(name):
    """The eager model and a copy on fastattn (attn_implementation="fastattn" at construction, norms
    swapped by fastattn.integrations.huggingface.patch_transformers), with the same random weights."""
    make_config, auto = MODELS[name]
    eager = auto.from_config(make_config(), attn_implementation="eager").eval()
    ours = auto.from_config(make_config(), attn_implementation="fastattn").eval()
    ours.load_state_dict(eager.state_dict())
    return eager, fastattn_hf.patch_transformers(ours, attention=False)


@pytest.fixture
def kernel_calls(monkeypatch):
    """The backends fastattn.attention ran, one entry per call."""
    calls = []
    for backend, implementation in list(attention_ops._IMPLEMENTATIONS.items()):

        def counting(*args, _backend=backend, _implementation=implementation, **features):
            calls.append(_backend)
            return _implementation(*args, **features)

        monkeypatch.setitem(attention_ops._IMPLEMENTATIONS, backend, counting)
    return calls


def padding_mask(kind):
    """transformers' 2-D attention_mask (1 = token, 0 = padding)."""
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    if kind == "right":
        mask[1, -3:] = 0
    elif kind == "left":
        mask[1, :3] = 0
    return mask


# ------------------------------------------------------------------------------------- logits
@pytest.mark.parametrize("padding", ["none", "right"])
@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_eager(name, padding, kernel_calls):
    """Right padding: the float64 eager model turns fully masked rows (left padding) into NaN, which
    then reaches every position of the sequence; fastattn is checked on left padding in generate."""
    eager, ours = eager_and_fastattn(name)
    norm_class = fastattn.nn.RMSNorm if name == "llama" else fastattn.nn.LayerNorm
    assert ours.fastattn_replaced and all(isinstance(ours.get_submodule(n), norm_class) for n in ours.fastattn_replaced)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    mask = padding_mask(padding)
    with torch.no_grad():
        ref = copy.deepcopy(eager).double()(ids, attention_mask=mask).logits
        plain = eager(ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask).logits
    assert len(kernel_calls) == 2, "each of the 2 layers should run fastattn.attention once"
    tokens = mask.bool()  # logits at padded positions are meaningless
    assert_close_to_reference(f"{name} logits", out[tokens], ref[tokens], plain[tokens], factor=FORWARD_FACTOR)


def test_llama_training_gradients_match_eager():
    eager, ours = eager_and_fastattn("llama")
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    mask = padding_mask("right")
    grads = {}
    for label, model in (("ref", copy.deepcopy(eager).double()), ("plain", eager), ("ours", ours)):
        model.train()(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        grads[label] = {n: p.grad for n, p in model.named_parameters()}
    for n in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.norm.weight",
    ):
        assert_close_to_reference(
            f"d {n}", grads["ours"][n], grads["ref"][n], grads["plain"][n], factor=GRADIENT_FACTOR
        )


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_generate_matches_eager(name, kernel_calls):
    eager, ours = eager_and_fastattn(name)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    mask = padding_mask("left")
    options = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = eager.generate(ids, **options)
        got = ours.generate(ids, **options)
    assert got.shape == (BATCH, SEQ + 4)
    assert torch.equal(got, expected)
    assert kernel_calls


# ------------------------------------------------------------------------------- patch() and norms
class OffsetRMSNorm(torch.nn.Module):
    """Gemma's variant, ``(1 + weight)``: named like an RMSNorm but not one fastattn's can replace."""

    def __init__(self, hidden, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(hidden))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)


def test_patch_sets_the_implementation_and_swaps_plain_rms_norms_only():
    make_config, auto = MODELS["llama"]
    model = auto.from_config(make_config(), attn_implementation="eager")
    model.model.extra_norm = OffsetRMSNorm(64)
    final_norm = model.model.norm
    assert fastattn_hf.patch_transformers(model) is model
    assert model.config._attn_implementation == "fastattn"
    assert type(model.model.norm) is fastattn.nn.RMSNorm
    assert model.model.norm.weight is final_norm.weight
    assert model.model.norm.eps == final_norm.variance_epsilon
    assert type(model.model.extra_norm) is OffsetRMSNorm
    assert "model.norm" in model.fastattn_replaced and "model.extra_norm" not in model.fastattn_replaced
    assert "fastattn" in transformers.AttentionInterface._global_mapping


def test_the_former_name_patch_still_works_with_a_deprecation_warning():
    make_config, auto = MODELS["llama"]
    model = auto.from_config(make_config(), attn_implementation="eager")
    with pytest.warns(DeprecationWarning, match="patch_transformers"):
        assert fastattn_hf.patch(model) is model
    assert model.config._attn_implementation == "fastattn"


# --------------------------------------------------------------------- the attention function itself
class AttentionStub(torch.nn.Module):
    def __init__(self, is_causal, groups):
        super().__init__()
        self.is_causal, self.num_key_value_groups = is_causal, groups


def hf_mask(kind, q_len, kv_len):
    """A mask as transformers' SDPA mask builder makes it (None where it would skip it)."""
    padding = torch.ones(BATCH, kv_len, dtype=torch.bool)
    padding[1, :2] = False
    common = dict(q_offset=kv_len - q_len, attention_mask=padding, allow_is_causal_skip=False)
    if kind == "none":
        return None
    if kind == "causal + padding":
        return sdpa_mask(BATCH, q_len, kv_len, **common)
    if kind == "sliding window":
        return sdpa_mask(BATCH, q_len, kv_len, mask_function=sliding_window_causal_mask_function(3), **common)
    if kind == "float":
        return torch.randn(BATCH, 1, q_len, kv_len)
    raise ValueError(kind)


CASES = {
    # (mask kind, q_len, kv_len, fused?)
    "prefill, causal": ("none", 7, 7, True),
    "decode, padding": ("causal + padding", 1, 8, True),
    "prefill, causal + padding": ("causal + padding", 7, 7, True),
    "chunk after cache, causal + padding": ("causal + padding", 3, 8, True),
    "static-cache prefill (unused slots cropped)": ("none", 5, 8, True),
    "sliding window (torch)": ("sliding window", 7, 7, False),
    "float mask (torch)": ("float", 7, 7, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_attention_forward_matches_transformers_sdpa(case, kernel_calls):
    kind, q_len, kv_len, fused = CASES[case]
    module = AttentionStub(is_causal=True, groups=2)
    q = torch.randn(BATCH, 4, q_len, 16)
    k, v = torch.randn(BATCH, 2, kv_len, 16), torch.randn(BATCH, 2, kv_len, 16)
    mask = hf_mask(kind, q_len, kv_len)
    as64 = None if mask is None else mask.double() if mask.is_floating_point() else mask
    ref, _ = sdpa_attention_forward(module, q.double(), k.double(), v.double(), as64, scaling=0.3)
    plain, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    out, weights = fastattn_hf.attention_forward(module, q, k, v, mask, scaling=0.3)
    assert weights is None and out.is_contiguous() and out.shape == (BATCH, q_len, 4, 16)
    assert bool(kernel_calls) == fused, "took the fused path" if not fused else "fell back to torch"
    if kind == "causal + padding":
        # transformers' SDPA leaves rows that see no key to torch (zeros); both agree on them too.
        assert not torch.isnan(out).any()
    assert_close_to_reference(case, out, ref, plain, factor=FORWARD_FACTOR)


def test_attention_forward_passes_dropout_through():
    module = AttentionStub(is_causal=False, groups=1)
    q, k, v = (torch.randn(BATCH, 2, 6, 8) for _ in range(3))
    torch.manual_seed(5)
    out, _ = fastattn_hf.attention_forward(module, q, k, v, None, dropout=0.4)
    torch.manual_seed(5)
    expected = fastattn.attention(q, k, v, dropout_p=0.4)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=0, atol=0)


def test_unsupported_features_raise():
    module = AttentionStub(is_causal=True, groups=1)
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="an additive position bias"):
        fastattn_hf.attention_forward(module, q, q, q, None, position_bias=torch.zeros(1, 2, 4, 4))
    custom_mask = torch.rand(1, 1, 4, 4) > 0.5
    with pytest.raises(ValueError, match="soft-capping or sinks with a mask"):
        fastattn_hf.attention_forward(module, q, q, q, custom_mask, softcap=30.0)


def feature_models():
    """Small models of the families known for a feature, each in eager and on fastattn, same weights."""
    return {
        "mistral (sliding window)": transformers.MistralConfig(**DECODER, sliding_window=4),
        "gemma2 (softcap, sliding window)": transformers.Gemma2Config(
            **DECODER, head_dim=16, sliding_window=4, attn_logit_softcapping=2.0, query_pre_attn_scalar=16
        ),
        "gpt-oss (sinks, sliding window)": transformers.GptOssConfig(
            **{**DECODER, "intermediate_size": 32},
            head_dim=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=4,
        ),
    }


@pytest.mark.parametrize("name", list(feature_models()))
def test_feature_models_match_eager_through_fastattn_attention(name, monkeypatch):
    """Each layer runs fastattn.attention with the model's feature (window, softcap or sinks) and the
    logits match eager attention's (right padding: 3 padded keys in the second row)."""
    config = feature_models()[name]
    torch.manual_seed(0)
    eager = transformers.AutoModelForCausalLM.from_config(
        copy.deepcopy(config),
        attn_implementation="eager",
        experts_implementation="eager",  # float64 MoE
    ).eval()
    for module in eager.modules():
        if hasattr(module, "sinks"):
            torch.nn.init.normal_(module.sinks)  # learned sinks: not zero
    ours = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="fastattn").eval()
    ours.load_state_dict(eager.state_dict())
    calls = []
    attention = fastattn_hf.attention

    def spy(*args, **kwargs):
        calls.append({key: kwargs[key] for key in ("window", "softcap", "sinks") if kwargs.get(key) is not None})
        return attention(*args, **kwargs)

    monkeypatch.setattr(fastattn_hf, "attention", spy)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    mask = padding_mask("right")
    with torch.no_grad():
        ref = copy.deepcopy(eager).double()(ids, attention_mask=mask).logits
        plain = eager(ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask).logits
    assert len(calls) == 2, f"{len(calls)} calls of fastattn.attention for 2 layers"
    feature = {"mistral": "window", "gemma2": "softcap", "gpt-oss": "sinks"}[name.split()[0]]
    assert any(feature in call for call in calls), f"{feature} never reached fastattn.attention: {calls}"
    tokens = mask.bool()
    assert_close_to_reference(f"{name} logits", out[tokens], ref[tokens], plain[tokens], factor=FORWARD_FACTOR)


@pytest.mark.parametrize("name", list(MODELS))
def test_output_attentions_returns_the_eager_weights(name):
    """output_attentions=True through "fastattn" gives every layer's weights, those of eager attention,
    not an empty tuple; with a padded batch too."""
    eager, ours = eager_and_fastattn(name)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
    padding = torch.ones(BATCH, SEQ, dtype=torch.long)
    padding[1, SEQ - 3 :] = 0
    with torch.no_grad():
        expected = eager(tokens, attention_mask=padding, output_attentions=True).attentions
        got = ours(tokens, attention_mask=padding, output_attentions=True).attentions
    assert len(got) == len(expected) == 2, f"{len(got)} layers of weights, expected {len(expected)}"
    for layer, (weights, reference_weights) in enumerate(zip(got, expected, strict=True)):
        assert weights.shape == reference_weights.shape, (layer, weights.shape, reference_weights.shape)
        keys_taking_part = padding.bool()[:, None, None, :].expand_as(weights)
        torch.testing.assert_close(weights[keys_taking_part], reference_weights[keys_taking_part], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------- packed sequences
def packed_families():
    """Llama and Qwen2 (plain), and the feature families: each config once."""
    return {
        "llama": transformers.LlamaConfig(**DECODER),
        "qwen2": transformers.Qwen2Config(**DECODER),
        **feature_models(),
    }


@pytest.mark.parametrize("name", list(packed_families()))
def test_a_packed_row_equals_its_sequences_run_one_by_one(name, monkeypatch):
    """One row holding three sequences back to back, position_ids restarting at 0 (transformers'
    DataCollatorWithFlattening): each layer runs fastattn.attention_varlen, and the logits and the
    gradients equal those of eager attention run on each sequence alone."""
    config = packed_families()[name]
    torch.manual_seed(0)
    eager = transformers.AutoModelForCausalLM.from_config(
        copy.deepcopy(config), attn_implementation="eager", experts_implementation="eager"
    ).eval()
    for module in eager.modules():
        if hasattr(module, "sinks"):
            torch.nn.init.normal_(module.sinks)
    ours = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="fastattn").eval()
    ours.load_state_dict(eager.state_dict())
    calls = []
    varlen = fastattn_hf.attention_varlen

    def spy(*args, **kwargs):
        calls.append(args[3].tolist())  # cu_seqlens_q
        return varlen(*args, **kwargs)

    monkeypatch.setattr(fastattn_hf, "attention_varlen", spy)
    lengths = [6, 2, 3]  # the first longer than the sliding windows (4) of the feature families
    ids = torch.randint(0, VOCAB, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    upstream = torch.randn(1, sum(lengths), VOCAB)

    def separately(model):
        pieces = [model(piece).logits for piece in ids.split(lengths, dim=1)]
        return torch.cat(pieces, dim=1)

    results = {}
    for label, model, run in (
        ("ref", copy.deepcopy(eager).double(), separately),
        ("plain", eager, separately),
        ("ours", ours, lambda model: model(ids, position_ids=positions).logits),
    ):
        logits = run(model)
        (logits * upstream.to(logits.dtype)).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "v_proj.weight"))}
        results[label] = (logits.detach(), grads)
    assert calls == [[0, 6, 8, 11]] * 2, f"fastattn.attention_varlen calls (cu_seqlens): {calls}"
    assert_close_to_reference(
        f"{name} packed logits", results["ours"][0], results["ref"][0], results["plain"][0], factor=FORWARD_FACTOR
    )
    for n in results["ours"][1]:
        got, exact, plain = (results[label][1][n] for label in ("ours", "ref", "plain"))
        assert_close_to_reference(f"{name} d {n}", got, exact, plain, factor=GRADIENT_FACTOR)


def test_packed_output_attentions_are_block_diagonal():
    """output_attentions on a packed row: each query's weights cover its own sequence's keys only."""
    _, ours = eager_and_fastattn("llama")
    lengths = [4, 5]
    ids = torch.randint(0, VOCAB, (1, 9))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = ours(ids, position_ids=positions, output_attentions=True).attentions[0][0]  # (H, 9, 9)
        alone = ours(ids[:, 4:], output_attentions=True).attentions[0][0]  # the second sequence
    assert torch.equal(packed[:, 4:, :4], torch.zeros(4, 5, 4)) and torch.equal(packed[:, :4, 4:], torch.zeros(4, 4, 5))
    torch.testing.assert_close(packed[:, 4:, 4:], alone)


def test_the_collators_cu_seq_lens_keywords_select_the_sequences(monkeypatch):
    """DataCollatorWithFlattening(return_flash_attn_kwargs=True) hands over cu_seq_lens_q/k and
    max_length_q/k: they are what fastattn.attention_varlen gets."""
    _, ours = eager_and_fastattn("llama")
    calls = []
    varlen = fastattn_hf.attention_varlen

    def spy(*args, **kwargs):
        calls.append((args[3].tolist(), args[5]))
        return varlen(*args, **kwargs)

    monkeypatch.setattr(fastattn_hf, "attention_varlen", spy)
    ids = torch.randint(0, VOCAB, (1, 9))
    collated = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True)(
        [{"input_ids": ids[0, :5].tolist()}, {"input_ids": ids[0, 5:].tolist()}]
    )
    keywords = {key: collated[key] for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
    with torch.no_grad():
        packed = ours(collated["input_ids"], position_ids=collated["position_ids"], **keywords).logits
        first = ours(ids[:, :5]).logits
    assert calls == [([0, 5, 9], 5)] * 2
    torch.testing.assert_close(packed[:, :5], first, atol=1e-5, rtol=1e-5)
