"""The ``attention-graph`` page: one self-contained HTML file (inline CSS and JavaScript, the weights
embedded as JSON, nothing fetched) showing which tokens each token attends to.

The tokens sit in a row; hovering a token (or clicking it, to pin it) draws a curve from it to every
token it attends to with a weight above the threshold shown on the page, the curve's thickness
proportional to the weight, and highlights those tokens. A picker chooses the layer and the head, or
the average over the heads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .weights import LayerAttention, attention_weights

VISIBLE_WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥"}  # characters drawn in place of invisible ones
CHAR_LEVEL_TASKS = ("gpt", "bert")  # the train command's models whose tokenizer is character-level
WEIGHT_DECIMALS = 5  # weights are written to the page rounded to this many decimals


def token_label(token: str) -> str:
    """How a token is shown on the page: whitespace as a visible symbol (a space as ␣)."""
    return "".join(VISIBLE_WHITESPACE.get(char, char) for char in token)


def load_char_model(checkpoint_path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, object, str]:
    """The model of a ``python -m fastattn train {gpt,bert} --save`` checkpoint (in eval mode), its
    character tokenizer and the task name."""
    from fastattn.models import train

    checkpoint = train.load_checkpoint(checkpoint_path, torch.device(device))
    task_name = checkpoint["task"]
    if task_name not in CHAR_LEVEL_TASKS:
        raise ValueError(
            f"{checkpoint_path} holds a {task_name} checkpoint; the attention graph reads the "
            f"character-level models ({', '.join(CHAR_LEVEL_TASKS)})"
        )
    task = train.TASKS[task_name](torch.device(device))
    model = task.model_class(task.config_class(**checkpoint["config"])).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), task.tokenizer, task_name


def encode_text(task_name: str, tokenizer, model: nn.Module, text: str) -> tuple[Tensor, list[str]]:
    """The int64 tokens ``(N,)`` the model reads for ``text`` and their labels on the page. BERT's
    input starts with ``[CLS]``, as in training. Raises ``ValueError`` for characters outside the
    vocabulary or a text longer than the model's context."""
    unknown = sorted(set(text) - set(tokenizer.chars))
    if unknown:
        raise ValueError(f"characters not in the model's vocabulary: {''.join(unknown)!r}")
    tokens = tokenizer.encode(text)
    labels = [token_label(char) for char in text]
    if task_name == "bert":
        tokens = torch.cat([torch.tensor([model.config.cls_id]), tokens])
        labels = ["[CLS]"] + labels
        limit = model.config.max_seq_len
    else:
        limit = model.config.block_size
    if not 0 < len(tokens) <= limit:
        raise ValueError(f"the text must give 1 to {limit} tokens for this model, it gives {len(tokens)}")
    return tokens, labels


def graph_data(labels: list[str], layers: list[LayerAttention], threshold: float) -> dict:
    """The JSON the page embeds: the token labels, per layer its name and the weights ``[head][query][key]``
    (rounded to :data:`WEIGHT_DECIMALS`), and the initial threshold."""
    return {
        "tokens": labels,
        "threshold": threshold,
        "layers": [
            {"name": layer.name, "weights": torch.round(layer.weights, decimals=WEIGHT_DECIMALS).tolist()}
            for layer in layers
        ],
    }


def render_html(data: dict, title: str) -> str:
    """The page for :func:`graph_data`'s ``data``: one HTML document with everything inline."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return PAGE.replace("__TITLE__", _escape_html(title)).replace("__DATA__", payload)


def write_attention_graph(
    model: nn.Module,
    tokens: Tensor,
    labels: list[str],
    path: str | Path,
    *,
    threshold: float = 0.05,
    title: str = "",
) -> Path:
    """Computes the attention weights of ``model`` on ``tokens`` (see :func:`attention_weights`) and writes
    the page to ``path``; returns the path."""
    layers = attention_weights(model, tokens)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(graph_data(labels, layers, threshold), title or "attention graph"), encoding="utf-8")
    return path


def _escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }
  h1 { font-size: 18px; margin: 0 0 10px; }
  #controls { display: flex; gap: 18px; align-items: center; flex-wrap: wrap; margin-bottom: 8px;
              font-size: 14px; }
  #controls select, #controls input { font-size: 14px; }
  #hint { font-size: 13px; color: #666; margin-bottom: 6px; }
  #graph-box { overflow-x: auto; }
  .token rect { fill: #f3f3f3; stroke: #bbb; }
  .token text { font-family: ui-monospace, monospace; font-size: 15px; text-anchor: middle;
                dominant-baseline: central; pointer-events: none; }
  .token { cursor: pointer; }
  .token.attended rect { fill: #ffb454; stroke: #d9822b; }
  .token.source rect { fill: #1f6feb; stroke: #1f6feb; }
  .token.source text { fill: #fff; }
  .link { fill: none; stroke: #d9822b; stroke-linecap: round; opacity: 0.75; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div id="controls">
  <label>layer <select id="layer-picker"></select></label>
  <label>head <select id="head-picker"></select></label>
  <label>threshold <input id="threshold-slider" type="range" min="0" max="1" step="0.001">
    <span id="threshold-value"></span></label>
</div>
<div id="hint">Hover a token to see the tokens it attends to (click to pin it, click again to unpin).
Curve thickness is the attention weight; weights not above the threshold are hidden.</div>
<div id="graph-box"><svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg></div>
<script id="attention-data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("attention-data").textContent);
const SVG_NS = "http://www.w3.org/2000/svg";
const CELL = 30, BOX = 26, BOX_HEIGHT = 26;  // px
const MAX_WIDTH = 16, MIN_WIDTH = 1;  // px: a curve of weight 1 is MAX_WIDTH wide, none thinner
const svg = document.getElementById("graph");
const layerPicker = document.getElementById("layer-picker");
const headPicker = document.getElementById("head-picker");
const slider = document.getElementById("threshold-slider");
const thresholdValue = document.getElementById("threshold-value");
const count = DATA.tokens.length;
const arcSpace = Math.min(260, 24 + (count - 1) * CELL * 0.45);  // room for the highest curve
const rowY = arcSpace + 10;
let pinned = null;
let shown = null;

DATA.layers.forEach((layer, index) => layerPicker.add(new Option(`${index}: ${layer.name}`, index)));
const headCount = DATA.layers.length ? DATA.layers[0].weights.length : 0;
headPicker.add(new Option("average over heads", "average"));
for (let head = 0; head < headCount; head++) headPicker.add(new Option(`head ${head}`, head));
slider.value = DATA.threshold;

svg.setAttribute("width", count * CELL + 20);
svg.setAttribute("height", rowY + BOX_HEIGHT + 10);
const linkLayer = document.createElementNS(SVG_NS, "g");
svg.appendChild(linkLayer);
const tokenNodes = DATA.tokens.map((label, index) => {
  const group = document.createElementNS(SVG_NS, "g");
  group.setAttribute("class", "token");
  group.dataset.index = index;
  const rect = document.createElementNS(SVG_NS, "rect");
  rect.setAttribute("x", centre(index) - BOX / 2);
  rect.setAttribute("y", rowY);
  rect.setAttribute("width", BOX);
  rect.setAttribute("height", BOX_HEIGHT);
  rect.setAttribute("rx", 4);
  const text = document.createElementNS(SVG_NS, "text");
  text.setAttribute("x", centre(index));
  text.setAttribute("y", rowY + BOX_HEIGHT / 2);
  text.textContent = label;
  if (label.length > 1) text.style.fontSize = `${Math.max(7, 26 / label.length)}px`;
  const tooltip = document.createElementNS(SVG_NS, "title");
  tooltip.textContent = `${index}: ${label}`;
  group.append(rect, text, tooltip);
  group.addEventListener("mouseenter", () => { if (pinned === null) show(index); });
  group.addEventListener("mouseleave", () => { if (pinned === null) show(null); });
  group.addEventListener("click", () => {
    pinned = pinned === index ? null : index;
    show(pinned === null ? index : pinned);
  });
  svg.appendChild(group);
  return group;
});

function centre(index) { return 10 + index * CELL + CELL / 2; }

function threshold() { return Number(slider.value); }

function weightsOf(query) {
  const heads = DATA.layers[Number(layerPicker.value)].weights;
  if (headPicker.value !== "average") return heads[Number(headPicker.value)][query];
  const total = key => heads.reduce((sum, head) => sum + head[query][key], 0);
  return heads[0][query].map((_, key) => total(key) / heads.length);
}

function curve(from, to) {
  const x1 = centre(from), x2 = centre(to), y = rowY;
  if (from === to) return `M ${x1 - 6} ${y} C ${x1 - 14} ${y - 26}, ${x1 + 14} ${y - 26}, ${x1 + 6} ${y}`;
  const height = Math.min(arcSpace - 4, 14 + Math.abs(x2 - x1) * 0.45);
  return `M ${x1} ${y} C ${x1} ${y - height}, ${x2} ${y - height}, ${x2} ${y}`;
}

function show(query) {
  shown = query;
  linkLayer.replaceChildren();
  tokenNodes.forEach(node => node.classList.remove("source", "attended"));
  if (query === null) return;
  tokenNodes[query].classList.add("source");
  const limit = threshold();
  weightsOf(query).forEach((weight, key) => {
    if (!(weight > limit)) return;
    tokenNodes[key].classList.add("attended");
    const path = document.createElementNS(SVG_NS, "path");
    path.setAttribute("class", "link");
    path.setAttribute("d", curve(query, key));
    path.setAttribute("stroke-width", Math.max(MIN_WIDTH, weight * MAX_WIDTH).toFixed(2));
    path.dataset.key = key;
    path.dataset.weight = weight;
    linkLayer.appendChild(path);
  });
}

function refresh() {
  thresholdValue.textContent = threshold().toFixed(3);
  show(shown);
}

layerPicker.addEventListener("change", refresh);
headPicker.addEventListener("change", refresh);
slider.addEventListener("input", refresh);
refresh();
</script>
</body>
</html>
"""
