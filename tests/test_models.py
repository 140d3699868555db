"""The reference models (fastattn.models), their data (fastattn.data) and ``python -m fastattn train``.

Tiny configs throughout: every backend (naive, torch, and triton, through Triton's interpreter on a
CPU) must give each model's loss and parameter gradients within the numerics rules of
``fastattn.testing`` (against the model run in float64 on the naive backend, relative to the same
model in float32 on the naive backend).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import fastattn
from fastattn.data import CharTokenizer, NumberTranslation, load_digits, number_to_words, tiny_shakespeare
from fastattn.models import (
    BERT,
    GPT,
    VAE,
    BERTConfig,
    GPTConfig,
    Transformer,
    TransformerConfig,
    VAEConfig,
    mask_tokens,
    paged,
    sinusoidal_positional_encoding,
)
from fastattn.models.bert import IGNORE_INDEX
from fastattn.testing import FORWARD_FACTOR, GRADIENT_FACTOR, assert_close_to_reference

BACKENDS = [name for name in ("naive", "torch", "triton") if name in fastattn.available_backends()]


# ------------------------------------------------------------------------------------- tiny models
def tiny_gpt(backend: str) -> GPT:
    return GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32), backend=backend)


def tiny_transformer(backend: str, norm_first: bool = False) -> Transformer:
    config = TransformerConfig(
        source_vocab_size=11,
        target_vocab_size=17,
        d_model=32,
        n_heads=4,
        d_ff=64,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
        max_len=16,
        norm_first=norm_first,
    )
    return Transformer(config, backend=backend)


def tiny_bert(backend: str) -> BERT:
    return BERT(
        BERTConfig(vocab_size=19, max_seq_len=16, n_layer=2, n_head=4, d_model=32, d_ff=64, dropout=0.0),
        backend=backend,
    )


def tiny_vae(backend: str) -> VAE:
    return VAE(
        VAEConfig(latent_dim=4, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=1, n_decoder_layers=1),
        backend=backend,
    )


def gpt_inputs(generator):
    idx = torch.randint(0, 13, (2, 12), generator=generator)
    return (idx[:, :-1], idx[:, 1:]), {}


def transformer_inputs(generator):
    source = torch.randint(3, 11, (3, 7), generator=generator)
    source[0, 5:] = 0  # padding in the source...
    target = torch.randint(3, 17, (3, 9), generator=generator)
    target[:, 0] = 1
    target[1, 6:] = 0  # ...and in the target
    return (source, target[:, :-1], target[:, 1:]), {}


def bert_inputs(generator):
    tokens = torch.randint(3, 19, (3, 16), generator=generator)
    tokens[:, 0] = 1
    tokens[2, 9:] = 0
    inputs, labels = mask_tokens(
        tokens,
        mask_id=2,
        vocab_size=19,
        maskable=tokens > 2,
        generator=generator,
        mask_prob=0.5,
        first_regular_id=3,
    )
    return (inputs, labels), {}


def vae_inputs(generator):
    images = torch.rand(3, 1, 8, 8, generator=generator)
    return (images,), {"noise": torch.randn(3, 4, generator=generator)}


def model_loss(model, args, kwargs):
    out = model(*args, **kwargs)
    return out.loss if isinstance(model, VAE) else out[1]


def model_outputs(model, args, kwargs):
    """The loss and every tensor the forward pass returns, as one vector (the loss of a reduction is a
    single number; its rounding is judged together with the outputs it reduces)."""
    out = model(*args, **kwargs)
    if isinstance(model, VAE):
        tensors = (out.logits, out.mu, out.logvar, out.loss)
        return out.loss, torch.cat([t.reshape(-1) for t in tensors])
    logits, loss = out
    return loss, torch.cat([logits.reshape(-1), loss.reshape(-1)])


MODELS = {
    "gpt": (tiny_gpt, gpt_inputs),
    "transformer": (tiny_transformer, transformer_inputs),
    "transformer-pre-norm": (lambda backend: tiny_transformer(backend, norm_first=True), transformer_inputs),
    "bert": (tiny_bert, bert_inputs),
    "vae": (tiny_vae, vae_inputs),
}


def as_dtype(value, dtype):
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def outputs_and_gradients(make, state, inputs, backend: str, dtype: torch.dtype):
    """The model's outputs with its loss (see :func:`model_outputs`) and the loss's parameter gradients,
    each flattened into one vector."""
    model = make(backend).to(dtype)
    model.load_state_dict(state)
    args, kwargs = inputs
    args = [as_dtype(a, dtype) for a in args]
    kwargs = {k: as_dtype(v, dtype) for k, v in kwargs.items()}
    loss, outputs = model_outputs(model, args, kwargs)
    parameters = list(model.parameters())
    gradients = torch.autograd.grad(loss, parameters)
    return outputs.detach(), torch.cat([g.reshape(-1) for g in gradients])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_loss_and_gradients_match_across_backends(name, backend):
    """naive in float64 is the exact answer and naive in float32 the plain one; the fused backends must
    stay within the numerics rules. The naive float32 model itself must stay within 1e-4 (relative to
    the largest value) of float64: the models hold no float32-unstable computation."""
    make, make_inputs = MODELS[name]
    state = make("naive").state_dict()
    inputs = make_inputs(torch.Generator().manual_seed(1))
    ref_out, ref_grads = outputs_and_gradients(make, state, inputs, "naive", torch.float64)
    plain_out, plain_grads = outputs_and_gradients(make, state, inputs, "naive", torch.float32)
    assert torch.isfinite(ref_out).all() and ref_grads.abs().max() > 0
    if backend == "naive":
        for label, plain, ref in (("outputs", plain_out, ref_out), ("gradients", plain_grads, ref_grads)):
            relative = ((plain.double() - ref).abs().max() / ref.abs().max()).item()
            assert relative < 1e-4, (
                f"{name} {label}: float32 differs from float64 by {relative:.2e} of the largest value"
            )
        return
    out, grads = outputs_and_gradients(make, state, inputs, backend, torch.float32)
    assert_close_to_reference(f"{name} outputs and loss ({backend})", out, ref_out, plain_out, factor=FORWARD_FACTOR)
    assert_close_to_reference(f"{name} gradients ({backend})", grads, ref_grads, plain_grads, factor=GRADIENT_FACTOR)


# --------------------------------------------------------------------------------- KV-cache decoding
def cached_logits(model, tokens, prompt_len, **context):
    """Logits of every position from prompt_len - 1 on: the prompt prefilled, then one token at a time."""
    model.setup_caches(tokens.shape[0], tokens.shape[1])
    steps = [model.forward_with_cache(tokens[:, :prompt_len], 0, **context)[:, -1]]
    for position in range(prompt_len, tokens.shape[1]):
        steps.append(model.forward_with_cache(tokens[:, position : position + 1], position, **context)[:, -1])
    return torch.stack(steps, dim=1)  # (B, N - prompt_len + 1, V)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt_kv_cache_gives_the_logits_of_full_recomputation(backend):
    state = tiny_gpt("naive").state_dict()
    tokens = torch.randint(0, 13, (2, 16), generator=torch.Generator().manual_seed(2))
    prompt_len = 5

    def full(dtype):
        model = tiny_gpt("naive").to(dtype).eval()
        model.load_state_dict(state)
        return model(tokens)[0][:, prompt_len - 1 :]

    model = tiny_gpt(backend).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        out = cached_logits(model, tokens, prompt_len)
        ref, plain = full(torch.float64), full(torch.float32)
    assert_close_to_reference(f"gpt cached logits ({backend})", out, ref, plain, factor=FORWARD_FACTOR)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transformer_kv_cache_gives_the_logits_of_full_recomputation(backend):
    state = tiny_transformer("naive").state_dict()
    (source, target, _), _ = transformer_inputs(torch.Generator().manual_seed(3))
    target = target.clamp(min=3)  # decoding never feeds [PAD]
    target[:, 0] = 1

    def full(dtype):
        model = tiny_transformer("naive").to(dtype).eval()
        model.load_state_dict(state)
        return model(source, target)[0]

    model = tiny_transformer(backend).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        memory, memory_mask = model.encode(source)
        out = cached_logits(model, target, 1, memory=memory, memory_mask=memory_mask)
        ref, plain = full(torch.float64), full(torch.float32)
    assert_close_to_reference(f"transformer cached logits ({backend})", out, ref, plain, factor=FORWARD_FACTOR)


def test_transformer_decoding_projects_the_encoder_output_once_per_layer():
    """The cross-attention keys and values of the memory are worked out at the first step of a
    decoding and reused by the later ones; a new decoding (another memory) works them out again."""
    model = tiny_transformer("torch").eval()
    (source, target, _), _ = transformer_inputs(torch.Generator().manual_seed(3))
    target = target.clamp(min=3)
    projections = []
    for block in model.decoder:
        block.cross_attention.key_value.register_forward_hook(lambda *_: projections.append(1))
    with torch.no_grad():
        for decoding in (1, 2):
            memory, memory_mask = model.encode(source)
            cached_logits(model, target, 1, memory=memory, memory_mask=memory_mask)
            assert len(projections) == decoding * len(model.decoder), (decoding, len(projections))


def test_gpt_generate_greedy_is_argmax_of_recomputation_and_seeded_sampling_repeats():
    model = tiny_gpt("torch").eval()
    prompt = torch.randint(0, 13, (2, 3), generator=torch.Generator().manual_seed(4))
    out = model.generate(prompt, 10, temperature=0.0)
    assert out.shape == (2, 13) and torch.equal(out[:, :3], prompt)
    with torch.no_grad():
        logits = model(out[:, :-1])[0]  # (B, 12, V)
    assert torch.equal(logits[:, 2:].argmax(dim=-1), out[:, 3:])
    sampled = model.generate(prompt, 10, temperature=1.0, top_k=5, top_p=0.9, min_p=0.01, seed=7)
    assert torch.equal(sampled, model.generate(prompt, 10, temperature=1.0, top_k=5, top_p=0.9, min_p=0.01, seed=7))
    naive = tiny_gpt("naive")
    naive.load_state_dict(model.state_dict())
    assert torch.equal(sampled, naive.generate(prompt, 10, temperature=1.0, top_k=5, top_p=0.9, min_p=0.01, seed=7))


def test_generate_names_a_misspelt_sampling_setting():
    model = tiny_gpt("torch").eval()
    prompt = torch.zeros(1, 2, dtype=torch.int64)
    with pytest.raises(TypeError, match="topk"):
        model.generate(prompt, 3, topk=5)
    with pytest.raises(TypeError, match="temprature"):
        paged.generate(model, [prompt[0]], 3, temprature=0.5)


def test_gpt_generate_slides_its_context_past_block_size():
    model = tiny_gpt("torch").eval()
    prompt = torch.zeros(1, 1, dtype=torch.int64)
    out = model.generate(prompt, 40, temperature=0.0)
    assert out.shape == (1, 41)
    # The first block_size tokens see their whole context: greedy equals full recomputation.
    with torch.no_grad():
        logits = model(out[:, :16])[0]
    assert torch.equal(logits[:, :-1].argmax(dim=-1), out[:, 1:16])


def test_transformer_generate_stops_at_eos():
    model = tiny_transformer("torch").eval()
    source = torch.randint(3, 11, (4, 5), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.output.bias = torch.nn.Parameter(torch.full((17,), -1e4))
        model.output.bias.data[2] = 1e4  # every step's logits put <eos> first
    out = model.generate(source, bos_id=1, eos_id=2, max_new_tokens=8)
    assert out.tolist() == [[1, 2]] * 4


# ----------------------------------------------------------------------------------- model pieces
def test_sinusoidal_positional_encoding_textbook_values():
    expected = torch.tensor(
        [[0.0, 1.0, 0.0, 1.0], [0.84, 0.54, 0.10, 1.00], [0.91, -0.42, 0.20, 0.98], [0.14, -0.99, 0.30, 0.96]]
    )
    encoding = sinusoidal_positional_encoding(4, 4, base=100.0)
    assert torch.equal(encoding.mul(100).round().div(100), expected)
    big = sinusoidal_positional_encoding(50, 16)
    assert torch.allclose(big[7, 2 * 3], torch.tensor(math.sin(7 / 10000 ** (6 / 16))))
    assert torch.allclose(big[7, 2 * 3 + 1], torch.tensor(math.cos(7 / 10000 ** (6 / 16))))


def test_padding_keys_take_no_part():
    """Changing what sits in padded positions changes no real position's output (key padding masks)."""
    bert = tiny_bert("torch").eval()
    tokens = torch.randint(3, 19, (2, 16), generator=torch.Generator().manual_seed(6))
    tokens[:, 0] = 1
    mask = torch.arange(16) < torch.tensor([[16], [9]])
    other = torch.where(mask, tokens, torch.randint(3, 19, tokens.shape))
    with torch.no_grad():
        a, b = bert(tokens, key_padding_mask=mask)[0], bert(other, key_padding_mask=mask)[0]
    assert torch.allclose(a[mask], b[mask], atol=1e-6)

    transformer = tiny_transformer("torch").eval()
    source = torch.randint(3, 11, (2, 7), generator=torch.Generator().manual_seed(7))
    source[1, 4:] = 0
    target = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    with torch.no_grad():
        short = transformer(source[1:, :4], target[1:])[0]
        padded = transformer(source, target)[0][1:]
    assert torch.allclose(short, padded, atol=1e-5)


def test_mask_tokens_proportions():
    """15% chosen; of those 80% [MASK], 10% random, 10% kept. 200,000 maskable positions; each share
    must lie within 5 binomial standard deviations of its expected value."""
    tokens = torch.randint(3, 50, (400, 500), generator=torch.Generator().manual_seed(8))
    maskable = torch.ones_like(tokens, dtype=torch.bool)
    maskable[:, 0] = False
    inputs, labels = mask_tokens(
        tokens,
        mask_id=2,
        vocab_size=50,
        maskable=maskable,
        generator=torch.Generator().manual_seed(9),
        first_regular_id=3,
    )
    chosen = labels != IGNORE_INDEX
    assert not chosen[:, 0].any() and torch.equal(labels[chosen], tokens[chosen])
    assert torch.equal(inputs[~chosen], tokens[~chosen])

    def within(count, total, p):
        return abs(count - p * total) <= 5 * math.sqrt(total * p * (1 - p))

    n, picked = int(maskable.sum()), int(chosen.sum())
    as_mask = int((inputs[chosen] == 2).sum())
    kept = int((inputs[chosen] == tokens[chosen]).sum())
    assert within(picked, n, 0.15)
    assert within(as_mask, picked, 0.8)
    # a random replacement equals the original with probability 1/47: "kept" counts those too
    assert within(kept, picked, 0.1 + 0.1 / 47)
    assert int(((inputs >= 3) & (inputs < 50)).sum()) + as_mask == inputs.numel()


def test_vae_kl_and_reparameterization():
    model = tiny_vae("torch")
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(10))
    noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(11))
    out = model(images, noise=noise, beta=0.5)
    posterior = torch.distributions.Normal(out.mu, torch.exp(0.5 * out.logvar))
    prior = torch.distributions.Normal(torch.zeros_like(out.mu), torch.ones_like(out.mu))
    expected_kl = torch.distributions.kl_divergence(posterior, prior).sum(dim=1).mean()
    assert torch.allclose(out.kl, expected_kl, rtol=1e-5)
    z = out.mu + torch.exp(0.5 * out.logvar) * noise
    expected_bce = torch.nn.functional.binary_cross_entropy_with_logits(model.decode(z), images, reduction="sum") / 5
    assert torch.allclose(out.reconstruction, expected_bce, rtol=1e-5)
    assert torch.allclose(out.loss, out.reconstruction + 0.5 * out.kl)
    assert model.sample(6, generator=torch.Generator().manual_seed(0)).shape == (6, 1, 8, 8)
    path = model.interpolate(images[0], images[1], 5)
    with torch.no_grad():
        ends = torch.sigmoid(model.decode(model.encode(images[:2])[0]))
    assert path.shape == (5, 1, 8, 8) and torch.allclose(path[[0, -1]], ends, atol=1e-6)


def irreducible_loss(name: str, inputs) -> float:
    """The VAE's binary cross-entropy cannot fall below the entropy of its grey-level targets; the
    other losses can approach 0 on one repeated batch."""
    if name != "vae":
        return 0.0
    images = inputs[0][0].double()
    return float(-(torch.xlogy(images, images) + torch.xlogy(1 - images, 1 - images)).sum() / images.shape[0])


@pytest.mark.parametrize("name", list(MODELS))
def test_fifty_steps_reduce_the_loss(name):
    """50 AdamW steps on one batch at least halve the reducible part of the loss."""
    make, make_inputs = MODELS[name]
    model = make("torch")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    inputs = make_inputs(torch.Generator().manual_seed(12))
    floor = irreducible_loss(name, inputs)
    losses = []
    for _ in range(50):
        loss = model_loss(model, *inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item() - floor)
    assert losses[-1] < 0.5 * losses[0], f"{name}: reducible loss {losses[0]:.3f} -> {losses[-1]:.3f}"


# ------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize(
    "number, words",
    [
        (0, "zero"),
        (7, "seven"),
        (15, "fifteen"),
        (20, "twenty"),
        (42, "forty two"),
        (100, "one hundred"),
        (101, "one hundred one"),
        (110, "one hundred ten"),
        (999, "nine hundred ninety nine"),
        (1000, "one thousand"),
        (1234, "one thousand two hundred thirty four"),
        (10010, "ten thousand ten"),
        (700000, "seven hundred thousand"),
        (1000000, "one million"),
        (2000017, "two million seventeen"),
        (
            123456789,
            "one hundred twenty three million four hundred fifty six thousand seven hundred eighty nine",
        ),
    ],
)
def test_number_to_words(number, words):
    assert number_to_words(number) == words


@pytest.mark.parametrize("bad", [-1, 10**12, 1.5, True])
def test_number_to_words_rejects(bad):
    with pytest.raises(ValueError):
        number_to_words(bad)


def test_number_translation_data():
    data = NumberTranslation(max_number=10**6, num_test=300, seed=0)
    assert len(set(data.test_numbers)) == 300 and min(data.test_numbers) >= 100
    numbers, source, target = data.train_batch(2000, torch.Generator().manual_seed(13))
    assert not set(numbers) & set(data.test_numbers)
    assert max(numbers) < 10**6 and min(numbers) < 10  # every length is drawn
    for n, row in zip(numbers[:50], target[:50], strict=True):
        assert data.decode_target(row) == number_to_words(n)
    assert source[0, : len(str(numbers[0]))].tolist() == [data.source_index[c] for c in str(numbers[0])]
    assert source.shape == (2000, 6) and target.shape == (2000, data.max_target_len)
    assert (target[:, 0] == NumberTranslation.BOS).all() and ((target == NumberTranslation.EOS).sum(1) == 1).all()


def test_shipped_data():
    text = tiny_shakespeare()
    assert len(text) == 1115394 and text.startswith("First Citizen:")
    tokenizer = CharTokenizer(text, specials=["[PAD]"])
    assert tokenizer.vocab_size == 66 and tokenizer.decode(tokenizer.encode("To be, or not")) == "To be, or not"
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == torch.uint8 and int(images.max()) == 16
    assert labels.shape == (1797,) and torch.equal(torch.bincount(labels) > 170, torch.ones(10, dtype=torch.bool))


# ------------------------------------------------------------------------------------ command line
def test_train_command_writes_artifacts_and_checkpoint_round_trips(tmp_path, capsys):
    from fastattn.__main__ import main

    checkpoint = tmp_path / "vae.pt"
    assert (
        main(
            [
                "train",
                "vae",
                "--steps",
                "3",
                "--backend",
                "torch",
                "--save",
                str(checkpoint),
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    assert (tmp_path / "a" / "vae.png").stat().st_size > 1000
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert (
        main(
            [
                "train",
                "vae",
                "--steps",
                "0",
                "--load",
                str(checkpoint),
                "--backend",
                "torch",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    second = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert first["metrics"] == second["metrics"] and second["steps"] == 3
    saved = torch.load(checkpoint, weights_only=True)
    model = VAE(VAEConfig(**saved["config"]))
    model.load_state_dict(saved["model"])
    assert saved["task"] == "vae" and saved["step"] == 3
    out = capsys.readouterr().out
    assert "held-out" in out and "loaded" in out


def test_train_command_rejects_a_checkpoint_of_another_model(tmp_path, capsys):
    from fastattn.__main__ import main

    checkpoint = tmp_path / "vae.pt"
    main(
        [
            "train",
            "vae",
            "--steps",
            "1",
            "--backend",
            "torch",
            "--save",
            str(checkpoint),
            "--out",
            str(tmp_path),
        ]
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "seq2seq", "--load", str(checkpoint), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "holds a vae checkpoint, not seq2seq" in capsys.readouterr().err


def test_generate_command_serves_prompts_from_a_paged_cache(tmp_path, capsys):
    """`generate` continues every prompt; the text does not depend on the batching, and bad flags are
    one-line errors."""
    from fastattn.__main__ import main

    checkpoint = tmp_path / "gpt.pt"
    train = ["train", "gpt", "--steps", "2", "--backend", "torch", "--save", str(checkpoint), "--out", str(tmp_path)]
    assert main(train) == 0
    capsys.readouterr()
    prompts = ["ROMEO:", "JULIET: O", "A"]
    common = ["generate", "--model", str(checkpoint), "--max-new-tokens", "12", "--seed", "5", "--no-progress"]
    for prompt in prompts:
        common += ["--prompt", prompt]
    assert main(common) == 0
    together = capsys.readouterr().out
    assert main([*common, "--max-batch", "1", "--no-continuous"]) == 0
    assert capsys.readouterr().out == together
    blocks = together.split("--- prompt ")[1:]
    assert len(blocks) == 3 and all(
        block.split("\n", 1)[1].startswith(p) for block, p in zip(blocks, prompts, strict=True)
    )
    assert main([*common, "--min-p", "1.0"]) == 0  # only the most likely token is kept: greedy
    min_p_one = capsys.readouterr().out
    assert main([*common, "--temperature", "0"]) == 0
    assert capsys.readouterr().out == min_p_one
    for flags, flag in (
        (["--max-new-tokens", "100"], "--max-new-tokens"),
        (["--page-size", "12"], "--page-size"),
        (["--prompt", "§"], "--prompt"),
        (["--top-p", "1.5"], "--top-p"),
        (["--min-p", "-0.1"], "--min-p"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*common, *flags])
        assert exit_info.value.code == 2 and flag in capsys.readouterr().err
