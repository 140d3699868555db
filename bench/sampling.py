"""Sampling: microseconds per batch to draw one token per row, for every provider, side by side.

Standard grid (DESIGN.md §5): vocabularies of 32,000 (Llama 2) and 128,256 (Llama 3) float32 logits,
batches of 1, 64 and 512 rows, with two settings of ``generate``: temperature 0.7 with top-k 50 and
top-p 0.9, and top-p 0.9 alone; ``--quick`` keeps the 128,256 vocabulary. Without a GPU: V = 32,000
and B in {1, 8}, timed on the CPU.

Providers: ours (``fastattn.sample(backend="cuda" | "triton")``, which split a row over several
programs at small batch, and the same kernels with one program a row, ``splits=1``); PyTorch has no fused sampler, so
two sort-based ones stand for it: ``torch``, the reference ``fastattn.reference.sample`` (which is
also fastattn's ``torch`` and ``naive`` backend; its per-row Philox draw costs extra elementwise
passes), and ``torch.multinomial``, the usual pipeline of ``generate`` (the reference's sort-based
filter, a softmax and ``torch.multinomial`` on torch's generator: the fastest plain-PyTorch way);
``torch.compile`` of the reference; and flashinfer's ``top_k_top_p_sampling_from_logits`` (or
``top_p_sampling_from_probs`` for top-p alone) when installed.

    python -m fastattn bench sampling [--quick] [--plot sampling.png]
"""

from __future__ import annotations

import sys

import torch

import fastattn
from fastattn import reference
from fastattn.ops import sampling as sampling_ops

from . import metrics
from .harness import Case, Provider, ours_provider, peer_provider, reference_provider

TITLE = "sampling"
VOCABULARIES = (32000, 128256)
BATCHES = (1, 64, 512)
QUICK_VOCABULARIES = (128256,)
TINY_VOCABULARY, TINY_BATCHES = 32000, (1, 8)
SETTINGS = (
    {"temperature": 0.7, "top_k": 50, "top_p": 0.9},
    {"temperature": 1.0, "top_p": 0.9},
)


def _settings(case: Case) -> dict:
    return {name: case.params[name] for name in ("temperature", "top_k", "top_p") if name in case.params}


def _case(vocab: int, batch: int, settings: dict, device, quick: bool) -> Case:
    def make_inputs() -> dict:
        return {"logits": torch.randn(batch, vocab, device=device, dtype=torch.float32) * 4}

    moved = metrics.sampling_bytes(batch, vocab, element_size=4)
    return Case(
        op="sample",
        mode=" ".join(f"{name}={value}" for name, value in settings.items()),
        dtype="float32",
        label=f"B={batch} V={vocab}",
        params={"batch": batch, "vocab": vocab, **settings},
        x_name="B",
        x=batch,
        series=f"V={vocab}",
        unit="µs",
        work=moved,
        make_inputs=make_inputs,
        input_bytes=int(moved),
        quick=quick,
    )


def cases(device: torch.device, dtype: torch.dtype) -> list[Case]:
    """The standard grid on a GPU (the --quick part marked), tiny shapes on a CPU. Logits are float32
    whatever ``dtype`` (what a language model's head usually hands to the sampler)."""
    if device.type != "cuda":
        return [
            _case(TINY_VOCABULARY, batch, settings, device, True) for settings in SETTINGS for batch in TINY_BATCHES
        ]
    return [
        _case(vocab, batch, settings, device, vocab in QUICK_VOCABULARIES)
        for settings in SETTINGS
        for vocab in VOCABULARIES
        for batch in BATCHES
    ]


def _ours(name: str) -> Provider:
    def build(case, inputs):
        logits, settings = inputs["logits"], _settings(case)
        return lambda: fastattn.sample(logits, **settings, backend=name)

    return ours_provider(name, f"fastattn.sample(backend={name!r})", build, "sample")


def _ours_one_program(name: str) -> Provider:
    """Our kernel with one program (block) a row, as a large batch runs it: beside ``_ours`` at small
    batch, the gain of splitting a row over several programs (the same tokens either way)."""

    def build(case, inputs):
        logits, settings = inputs["logits"], _settings(case)
        params = sampling_ops.row_parameters(logits, **settings)
        seeds = reference.sampling_seeds(0, None, logits.shape[0], logits.device)
        if name == "cuda":
            from fastattn import _C

            return lambda: _C.sample(logits, *params, seeds, True, False, False, 1)
        from fastattn.kernels import sampling as kernels

        return lambda: kernels.sample(logits, *params, seeds, False, splits=1)

    return ours_provider(name, f"{name} kernel, one program a row", build, "sample", label=f"{name} splits=1")


def _reference(compiled: bool) -> Provider:
    def build(function, case, inputs):
        logits, settings = inputs["logits"], _settings(case)
        return lambda: function(logits, **settings)

    return reference_provider("torch", "fastattn.reference.sample (sort-based)", build, compiled, reference.sample)


def _multinomial() -> Provider:
    def build(case, inputs):
        logits, settings = inputs["logits"], _settings(case)
        temperature = settings.pop("temperature")

        def draw():
            filtered = reference.filter_logits(logits, temperature, settings.get("top_k"), settings.get("top_p"), None)
            return torch.multinomial(torch.softmax(filtered, dim=-1), 1).squeeze(-1)

        return draw

    return Provider("torch.multinomial", "pytorch", "reference.filter_logits + softmax + torch.multinomial", build)


def _flashinfer() -> Provider:
    def build(sampling, case, inputs):
        logits, settings = inputs["logits"], _settings(case)
        scaled = logits / settings["temperature"]
        if "top_k" in settings:
            return lambda: sampling.top_k_top_p_sampling_from_logits(scaled, settings["top_k"], settings["top_p"])
        return lambda: sampling.top_p_sampling_from_probs(torch.softmax(scaled, dim=-1), settings["top_p"])

    description = "flashinfer.sampling.top_k_top_p_sampling_from_logits"
    return peer_provider("flashinfer", "flashinfer", "flashinfer.sampling", description, build)


def providers(device: torch.device) -> list[Provider]:
    return [
        _ours("cuda"),
        _ours("triton"),
        _ours_one_program("cuda"),
        _ours_one_program("triton"),
        _reference(compiled=False),
        _multinomial(),
        _reference(compiled=True),
        _flashinfer(),
    ]


if __name__ == "__main__":
    from .cli import main

    sys.exit(main([TITLE, *sys.argv[1:]]))
