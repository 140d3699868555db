"""Visualising what a fastattn model attends to.

    layers = fastattn.viz.attention_weights(model, tokens)   # per layer: (H, N, N) probabilities
    python -m fastattn attention-graph --model runs/gpt.pt --text "To be, or not to be" --out graph.html

:func:`attention_weights` recovers the exact attention probabilities from the fused kernel's
log-sum-exp (the kernel never stores them); :mod:`fastattn.viz.graph` writes the interactive page.
"""

from .graph import write_attention_graph
from .weights import AttentionCall, LayerAttention, attention_weights, record_attention

__all__ = [
    "AttentionCall",
    "LayerAttention",
    "attention_weights",
    "record_attention",
    "write_attention_graph",
]
