"""The attention benchmark's model-feature cases (window, softcap, sinks, packed and padded) and the
decode benchmark's cases (contiguous and paged caches): every provider that serves a case computes the
same attention, so the timings compare like with like."""

import pytest
import torch

from fastattn import backends, reference
from fastattn.bench import attention as bench_attention
from fastattn.bench import decode as bench_decode
from fastattn.bench.harness import Skip

FORWARD_CASES = [
    case for case in bench_attention.feature_cases(torch.device("cpu"), torch.float32) if case.mode == "fwd"
]
PROVIDERS = {provider.name: provider for provider in bench_attention.providers(torch.device("cpu"))}


@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda case: case.label)
def test_feature_cases_compute_the_same_attention_on_every_provider(case):
    torch.manual_seed(0)
    inputs = case.make_inputs()
    names = ["naive", "torch-math"] + ([] if backends.device_reasons("triton", torch.device("cpu")) else ["triton"])
    outputs = {}
    for name in names:
        provider = PROVIDERS[name]
        try:
            with provider.context():
                outputs[name] = provider.build(case, inputs)()
        except Skip as skip:
            assert name == "torch-math" and case.params["feature"] in ("softcap", "sinks", "packed"), skip
    reference = outputs.pop("naive")
    tokens = inputs.get("key_padding_mask")
    for name, out in outputs.items():
        if case.params["feature"] == "padded":  # rows past a sequence's end are padding: not compared
            out, expected = out.transpose(1, 2)[tokens], reference.transpose(1, 2)[tokens]
        else:
            expected = reference
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4, msg=f"{name} against naive on {case.label}")


def test_the_packed_and_padded_cases_count_the_same_work():
    packed, padded = (
        next(case for case in FORWARD_CASES if case.params["feature"] == feature) for feature in ("packed", "padded")
    )
    assert packed.work == padded.work > 0


# ------------------------------------------------------------------------------------------- decode
DECODE_CASES = [case for case in bench_decode.cases(torch.device("cpu"), torch.float32) if case.x == 256]
DECODE_PROVIDERS = {provider.name: provider for provider in bench_decode.providers(torch.device("cpu"))}


@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda case: case.label)
def test_decode_cases_compute_the_same_attention_on_every_provider(case):
    torch.manual_seed(0)
    inputs = case.make_inputs()
    names = (
        ["triton", "torch", "naive"]
        if not backends.device_reasons("triton", torch.device("cpu"))
        else ["torch", "naive"]
    )
    outputs = {}
    for name in names:
        try:
            out = DECODE_PROVIDERS[name].build(case, inputs)()
        except Skip:
            assert case.params["block_size"] is not None and name != "triton"
            continue
        outputs[name] = out if name == "triton" else out.transpose(1, 2)  # (B, 1, Hq, D)
    if case.params["block_size"] is not None:  # the same keys, read through the pages
        table = inputs["block_table"].long()
        keys = inputs["k_cache"][table].flatten(1, 2).transpose(1, 2)  # (B, Hkv, L, D)
        values = inputs["v_cache"][table].flatten(1, 2).transpose(1, 2)
        outputs["naive"] = reference.attention(inputs["q"].transpose(1, 2), keys, values).transpose(1, 2)
    expected = outputs.pop("naive")
    for name, out in outputs.items():
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4, msg=f"{name} against naive on {case.label}")
