"""GPT generation from a paged KV cache with continuous batching (fastattn.models.paged): the same
tokens as the contiguous-cache path for the same seed, whatever the batching."""

import pytest
import torch

from fastattn.models import GPT, GPTConfig, paged
from fastattn.models import paged as paged_module


def model(backend="auto"):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=40, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    return GPT(config, backend=backend).eval()


@pytest.fixture
def calls(monkeypatch):
    """The attention entry points the paged path ran."""
    seen = []
    for name in ("attention_varlen", "attention_with_kvcache"):
        original = getattr(paged_module, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            seen.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(paged_module, name, spy)
    return seen


@pytest.mark.parametrize(
    "sampling", [dict(temperature=0.0), dict(temperature=1.0, top_k=10, seed=3)], ids=["greedy", "seeded"]
)
def test_the_tokens_of_the_contiguous_cache_path(sampling, calls):
    gpt = model()
    prompts = torch.randint(0, 40, (3, 7))
    expected = gpt.generate(prompts, 12, **sampling)
    got = paged.generate(gpt, list(prompts), 12, max_batch=2, **sampling)  # the third waits for a slot
    for row, tokens in zip(expected, got, strict=True):
        assert torch.equal(tokens, row), (tokens, row)
    assert "attention_varlen" in calls and "attention_with_kvcache" in calls


def test_ragged_prompts_do_not_depend_on_the_batching():
    gpt = model()
    lengths = [3, 11, 1, 17, 6]
    prompts = [torch.randint(0, 40, (n,)) for n in lengths]
    sampling = dict(temperature=0.9, top_p=0.9, seed=11)
    together = paged.generate(gpt, prompts, 9, max_batch=3, page_size=16, **sampling)
    one_at_a_time = paged.generate(gpt, prompts, 9, max_batch=1, page_size=32, **sampling)
    in_waves = paged.generate(gpt, prompts, 9, max_batch=3, continuous=False, **sampling)
    for a, b, c, prompt in zip(together, one_at_a_time, in_waves, prompts, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
        assert torch.equal(a[: len(prompt)], prompt) and len(a) == len(prompt) + 9
    for prompt, tokens in zip(prompts, paged.generate(gpt, prompts, 9, temperature=0.0), strict=True):
        assert torch.equal(tokens, gpt.generate(prompt[None], 9, temperature=0.0)[0])  # greedy, alone


def test_a_sequence_that_draws_eos_stops_and_frees_its_slot():
    gpt = model()
    prompts = [torch.randint(0, 40, (5,)) for _ in range(4)]
    free_run = paged.generate(gpt, prompts, 10, temperature=0.0)
    eos = int(free_run[0][7])  # the third token the first prompt draws
    stopped = paged.generate(gpt, prompts, 10, temperature=0.0, eos_id=eos, max_batch=2)
    for full, cut in zip(free_run, stopped, strict=True):
        drawn = full[5:].tolist()
        end = 5 + drawn.index(eos) + 1 if eos in drawn else len(full)
        assert torch.equal(cut, full[:end])


def test_bad_arguments():
    gpt = model()
    with pytest.raises(ValueError, match="fits the model's 48 positions"):
        paged.generate(gpt, [torch.zeros(40, dtype=torch.long)], 10)
    with pytest.raises(ValueError, match="page_size must be a multiple of 16"):
        paged.generate(gpt, [torch.zeros(4, dtype=torch.long)], 2, page_size=12)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        paged.generate(gpt, [torch.zeros(4, dtype=torch.long)], 2, max_batch=0)
