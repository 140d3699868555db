"""fastattn.viz: attention probabilities recovered from the fused kernel's lse, and the attention-graph
page, driven in a real headless Chromium (Playwright with the system's chromium).

The models are tiny and randomly initialised; their query and key projections are drawn with a large spread so
that each head attends sharply and the heads differ from one another.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types

import pytest
import torch

import fastattn
from fastattn import reference
from fastattn.models import BERT, GPT, BERTConfig, GPTConfig
from fastattn.models.layers import AttentionLayer
from fastattn.models.train import GPTTask, save_checkpoint
from fastattn.viz import attention_weights, record_attention
from fastattn.viz.graph import token_label

BACKENDS = [name for name in ("naive", "torch", "triton") if name in fastattn.available_backends()]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def sharpen(model: torch.nn.Module) -> torch.nn.Module:
    """Query and key/value weights ~ N(0, 0.5²): attention far from uniform, different in every head."""
    for module in model.modules():
        if isinstance(module, AttentionLayer):
            torch.nn.init.normal_(module.query.weight, std=0.5)
            torch.nn.init.normal_(module.key_value.weight, std=0.5)
    return model.eval()


def naive_probabilities(q, k, *, causal, key_padding_mask, scale) -> torch.Tensor:
    """The textbook softmax, through fastattn.reference: attention with v = the identity returns P."""
    batch, heads_kv, nk, _ = k.shape
    identity = torch.eye(nk, dtype=torch.float64).expand(batch, heads_kv, nk, nk)
    return reference.attention(
        q.double(), k.double(), identity, causal=causal, key_padding_mask=key_padding_mask, scale=scale
    )  # (B, Hq, Nq, Nk)


def projections_of(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """q and k of every self-attention, recomputed from its input and its own projection weights."""
    found = {}

    def capture(name):
        def hook(module, args, _output):
            x = args[0]
            batch, n, _ = x.shape
            q = module.query(x).view(batch, n, module.n_heads, module.head_dim).transpose(1, 2)
            kv = module.key_value(x).view(batch, n, 2, module.n_kv_heads, module.head_dim)
            found[name] = (q, kv.permute(2, 0, 3, 1, 4)[0])

        return hook

    handles = [
        module.register_forward_hook(capture(name))
        for name, module in model.named_modules()
        if isinstance(module, AttentionLayer)
    ]
    with torch.no_grad():
        model(tokens[None])
    for handle in handles:
        handle.remove()
    return found


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["gpt", "bert"])
def test_attention_weights_match_naive_softmax(backend, kind):
    if kind == "gpt":  # causal, grouped-query attention
        model = GPT(
            GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32),
            backend=backend,
        )
        tokens = torch.randint(0, 13, (11,))
        padding = None
    else:  # bidirectional, with padded keys at the end
        model = BERT(
            BERTConfig(vocab_size=13, max_seq_len=16, n_layer=2, n_head=4, d_model=32, d_ff=64),
            backend=backend,
        )
        tokens = torch.cat([torch.tensor([1]), torch.randint(3, 13, (8,)), torch.zeros(3, dtype=torch.int64)])
        padding = (tokens != 0)[None]
    sharpen(model)
    layers = attention_weights(model, tokens)
    projections = projections_of(model, tokens)

    assert [layer.name for layer in layers] == [f"blocks.{i}.self_attention" for i in range(2)]
    for layer in layers:
        q, k = projections[layer.name]
        expected = naive_probabilities(q, k, causal=kind == "gpt", key_padding_mask=padding, scale=None)[0]
        error = (layer.weights.double() - expected).abs()
        assert layer.weights.shape == (4, len(tokens), len(tokens))
        assert error.max() < 1e-5, f"{layer.name}: max error {error.max():.3g}, mean {error.mean():.3g}"
        assert expected.amax(dim=-1).mean() > 0.5  # sharp attention: a wrong row or head would show
        if padding is not None:
            assert layer.weights[..., ~padding[0]].abs().max() == 0  # padded keys get exactly zero

    rows = [0, 5, len(tokens) - 1]
    for full, some in zip(layers, attention_weights(model, tokens, rows=rows), strict=True):
        assert some.rows == rows
        torch.testing.assert_close(some.weights, full.weights[:, rows], rtol=0, atol=1e-5)


def test_record_attention_restores_the_op_and_leaves_the_output_unchanged():
    model = sharpen(GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=32)))
    tokens = torch.randint(0, 13, (1, 9))
    with torch.no_grad():
        plain, _ = model(tokens)
        with record_attention(model) as calls:
            recorded, _ = model(tokens)
    assert fastattn.attention is fastattn.ops.attention.attention
    assert len(calls) == 2 and all(call.causal and call.lse.shape == (1, 4, 9) for call in calls)
    torch.testing.assert_close(recorded, plain, rtol=0, atol=0)


def test_token_labels_show_whitespace():
    assert [token_label(char) for char in "a b\n"] == ["a", "␣", "b", "↵"]


# ------------------------------------------------------------------------------------ the page
TEXT = "To be, or not to be"


@pytest.fixture(scope="module")
def graph_page(tmp_path_factory):
    """A tiny random GPT saved as a train checkpoint, the page the command writes for it, its weights."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("attention_graph")
    task = GPTTask(torch.device("cpu"))
    model = sharpen(GPT(GPTConfig(vocab_size=task.tokenizer.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32)))
    checkpoint = directory / "gpt.pt"
    save_checkpoint(
        checkpoint, types.SimpleNamespace(name="gpt"), model, torch.optim.SGD(model.parameters(), lr=0.1), 0
    )
    page = directory / "graph.html"
    command = [
        sys.executable,
        "-m",
        "fastattn",
        "attention-graph",
        "--model",
        str(checkpoint),
        "--text",
        TEXT,
        "--out",
        str(page),
        "--threshold",
        "0.1",
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    weights = [layer.weights.double() for layer in attention_weights(model, task.tokenizer.encode(TEXT))]
    return page, weights


def test_page_is_self_contained(graph_page):
    page, weights = graph_page
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    assert "<link" not in html and "src=" not in html  # no external stylesheet or script
    data = json.loads(html.split('type="application/json">')[1].split("</script>")[0])
    assert data["tokens"] == [token_label(char) for char in TEXT] and "␣" in data["tokens"]
    assert len(data["layers"]) == len(weights)
    embedded = torch.tensor(data["layers"][1]["weights"], dtype=torch.float64)
    assert (embedded - weights[1]).abs().max() < 1e-5


def exceeding(weights: torch.Tensor, threshold: float) -> set[int]:
    """The keys whose weight exceeds ``threshold``, after checking none lies so close to it that the
    rounding of the embedded weights could move it across."""
    assert (weights - threshold).abs().min() > 1e-4
    return {int(key) for key in torch.nonzero(weights > threshold).flatten()}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
def test_page_in_headless_chromium(graph_page):
    from playwright.sync_api import sync_playwright

    page_path, weights = graph_page
    query = len(TEXT) - 1  # the last character: causal, it sees every token
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_path.as_uri())

            def highlighted() -> set[int]:
                return set(
                    page.eval_on_selector_all(".token.attended", "nodes => nodes.map(n => Number(n.dataset.index))")
                )

            def link_widths() -> dict[int, float]:
                pairs = page.eval_on_selector_all(
                    ".link",
                    "paths => paths.map(p => [Number(p.dataset.key), Number(p.getAttribute('stroke-width'))])",  # noqa: E501
                )
                return dict(pairs)

            threshold = float(page.inner_text("#threshold-value"))
            assert threshold == 0.1
            assert highlighted() == set()
            page.hover(f'.token[data-index="{query}"]')
            assert page.get_attribute(f'.token[data-index="{query}"]', "class") == "token source"
            average = weights[0].mean(dim=0)[query]  # layer 0, the average over heads: the default view
            assert highlighted() == exceeding(average, threshold)
            assert set(link_widths()) == highlighted()

            page.select_option("#head-picker", "2")
            head = weights[0][2, query]
            assert highlighted() == exceeding(head, threshold)
            widths = link_widths()
            for key, width in widths.items():
                assert width == pytest.approx(max(1, float(head[key]) * 16), abs=0.006)  # MIN_WIDTH, MAX_WIDTH

            page.select_option("#layer-picker", "1")
            assert highlighted() == exceeding(weights[1][2, query], threshold)
            assert exceeding(weights[1][2, query], threshold) != exceeding(head, threshold) or link_widths() != widths

            page.mouse.move(0, 0)
            assert highlighted() == set()
        finally:
            browser.close()
    assert errors == []
    assert requests == [page_path.as_uri()]
