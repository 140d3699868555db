"""End to end: a GPT training step and token generation, in tokens per second, on each fastattn backend.

The model is ``fastattn.models.GPT`` (config ``GPTConfig``; ``forward(idx, targets) -> (logits, loss)``;
``generate(prompt, max_new_tokens)``), run under ``fastattn.use_backend(name)`` for each backend that
runs here. A training step is forward, backward and an AdamW step on a batch of random tokens;
generation is a prompt of 16 tokens continued by ``max_new_tokens`` tokens, then a batch of prompts
served from the contiguous cache (``generate``) and from the paged one with continuous batching
(``fastattn.models.paged.generate``), the same prompts, tokens and seed.

On a GPU: GPT-2 small (12 layers, 12 heads, width 768, context 1024, vocabulary 50,304) under bf16
autocast, training on 8 × 1024 tokens, generating 128 tokens for one prompt and for 16. On a CPU: a
2-layer, width-128 model, training on 2 × 64 tokens, generating 16 tokens for one prompt and for 4.

Times are host-timed runs that end with a device synchronization (a step takes milliseconds), the
median and 20/80 percentiles over the runs that fit the budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time

import torch

import fastattn

from .harness import Case, Provider, Row, Section, choose_providers, measure_host, ours_unavailable

TITLE = "models"
GPU_CONFIG = {
    "n_layer": 12,
    "n_head": 12,
    "n_embd": 768,
    "block_size": 1024,
    "vocab_size": 50304,
    "dropout": 0.0,
}
CPU_CONFIG = {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 128, "vocab_size": 256, "dropout": 0.0}
GPU_TRAIN, CPU_TRAIN = (8, 1024), (2, 64)  # (batch, tokens per sequence)
PROMPT_TOKENS = 16
GPU_NEW_TOKENS, CPU_NEW_TOKENS = 128, 16
GPU_PROMPTS, CPU_PROMPTS = 16, 4  # the batched generation rows: contiguous against paged
GPU_BUDGET_S, CPU_BUDGET_S = 3.0, 1.0  # per (case, backend)
MIN_RUNS, MAX_RUNS = 3, 20  # a GPT-2 generation of 128 tokens takes about a second


def _config(gpt_config, device: torch.device):
    """The GPTConfig for this device, setting only the fields the class has."""
    wanted = GPU_CONFIG if device.type == "cuda" else CPU_CONFIG
    names = {f.name for f in dataclasses.fields(gpt_config)}
    return gpt_config(**{name: value for name, value in wanted.items() if name in names})


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cases(config, device: torch.device) -> list[Case]:
    vocab = getattr(config, "vocab_size", CPU_CONFIG["vocab_size"])
    batch, length = GPU_TRAIN if device.type == "cuda" else CPU_TRAIN
    new_tokens = GPU_NEW_TOKENS if device.type == "cuda" else CPU_NEW_TOKENS
    shape = {name: getattr(config, name) for name in ("n_layer", "n_head", "n_embd") if hasattr(config, name)}
    dtype = "bfloat16 autocast" if device.type == "cuda" else "float32"

    def train_inputs():
        return {
            "idx": torch.randint(0, vocab, (batch, length), device=device),
            "targets": torch.randint(0, vocab, (batch, length), device=device),
        }

    prompts = GPU_PROMPTS if device.type == "cuda" else CPU_PROMPTS

    def generate_inputs(count=1):
        return lambda: {"prompt": torch.randint(0, vocab, (count, PROMPT_TOKENS), device=device)}

    batched = [
        Case(
            "gpt",
            f"generate, {cache} cache",
            dtype,
            f"B={prompts} prompt={PROMPT_TOKENS} new={new_tokens}",
            {**shape, "batch": prompts, "prompt": PROMPT_TOKENS, "new_tokens": new_tokens, "cache": cache},
            "",
            0,
            "generate",
            "tokens/s",
            float(prompts * new_tokens),
            generate_inputs(prompts),
            0,
        )
        for cache in ("contiguous", "paged")
    ]
    return [
        Case(
            "gpt",
            "train step",
            dtype,
            f"B={batch} T={length}",
            {**shape, "batch": batch, "tokens": length},
            "",
            0,
            "train",
            "tokens/s",
            float(batch * length),
            train_inputs,
            0,
        ),
        Case(
            "gpt",
            "generate",
            dtype,
            f"B=1 prompt={PROMPT_TOKENS} new={new_tokens}",
            {**shape, "batch": 1, "prompt": PROMPT_TOKENS, "new_tokens": new_tokens},
            "",
            0,
            "generate",
            "tokens/s",
            float(new_tokens),
            generate_inputs(),
            0,
        ),
        *batched,
    ]


def _train_step(model, device, inputs):
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    idx, targets = inputs["idx"], inputs["targets"]

    def step():
        with _autocast(device):
            _, loss = model(idx, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _generation(model, device, inputs, new_tokens, cache):
    from fastattn.models import paged

    model.eval()
    prompt = inputs["prompt"]

    def generate():
        with torch.no_grad(), _autocast(device):
            if cache == "paged":
                paged.generate(model, list(prompt), new_tokens, seed=0, max_batch=len(prompt))
            else:
                model.generate(prompt, new_tokens, seed=0)

    return generate


def providers(gpt, config, device: torch.device) -> list[Provider]:
    """One provider per fastattn backend: a fresh model (same seed) run under ``use_backend``."""

    def provider(name: str) -> Provider:
        def build(case, inputs):
            with fastattn.use_backend(name):
                torch.manual_seed(0)
                model = gpt(config).to(device)
            if case.series == "train":
                call = _train_step(model, device, inputs)
            else:
                call = _generation(model, device, inputs, case.params["new_tokens"], case.params.get("cache"))

            def run():
                with fastattn.use_backend(name):
                    call()

            return run

        family = "ours" if name in fastattn.backends.FUSED else "pytorch"
        why = ours_unavailable(name, "attention") if family == "ours" else None
        return Provider(
            name,
            family,
            f"fastattn.models.GPT under use_backend({name!r})",
            build,
            unavailable=why,
            errors_mean_unsupported=False,
        )

    return [provider(name) for name in fastattn.backends.AUTO_ORDER]


def load(device: torch.device):
    """(GPT, the GPTConfig for ``device``); raises what importing fastattn.models raises."""
    from fastattn.models import GPT, GPTConfig

    return GPT, _config(GPTConfig, device)


def run(
    device: torch.device, *, include=(), exclude=(), deadline: float | None = None, progress: bool = True
) -> Section:
    """Times each case on each backend; a section with only a note when fastattn.models is missing."""
    from fastattn.progress import progress_bar

    section = Section(TITLE)
    try:
        gpt, config = load(device)
    except Exception as error:  # reported, not raised: the other benchmarks still run
        section.notes.append(f"fastattn.models is not available yet ({type(error).__name__}: {error})")
        return section
    section.notes.append(f"GPTConfig: {dataclasses.asdict(config)}")
    section.providers = choose_providers(providers(gpt, config, device), device, include=include, exclude=exclude)
    runnable = [p for p in section.providers if p.unavailable is None]
    budget = GPU_BUDGET_S if device.type == "cuda" else CPU_BUDGET_S
    jobs = [(case, provider) for case in cases(config, device) for provider in runnable]
    for index, (case, provider) in enumerate(
        progress_bar(jobs, desc=TITLE, leave=False, disable=not progress, file=sys.stderr)
    ):
        if deadline is not None and time.perf_counter() > deadline:
            section.cases_not_run = len(jobs) - index
            break
        section.rows.append(_time(case, provider, device, budget))
    return section


def _time(case: Case, provider: Provider, device: torch.device, budget: float) -> Row:
    try:
        call = provider.build(case, case.make_inputs())
        timing = measure_host(
            call, budget_s=budget, synchronize=device.type == "cuda", min_runs=MIN_RUNS, max_runs=MAX_RUNS
        )
    except Exception as error:
        if isinstance(error, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
        status = "skipped" if isinstance(error, (NotImplementedError, torch.OutOfMemoryError)) else "error"
        return Row(case, provider.name, provider.family, status, f"{type(error).__name__}: {error}".splitlines()[0])
    return Row(case, provider.name, provider.family, "ok", timing=timing)


if __name__ == "__main__":
    from .cli import main

    sys.exit(main([TITLE, *sys.argv[1:]]))
