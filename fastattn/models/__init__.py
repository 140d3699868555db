"""Reference models built from fastattn's ops: every attention is ``fastattn.attention``, every
normalization ``fastattn.nn.LayerNorm`` (fused Add & Norm where a residual meets a norm), every drawn
token ``fastattn.sample``; each model takes a ``backend`` and passes it to all of them.

- :class:`Transformer`: the encoder–decoder of "Attention Is All You Need";
- :class:`GPT`: decoder-only, pre-norm, causal, with a KV cache and ``generate``;
- :class:`BERT`: encoder-only with ``[CLS]`` and key padding masks, masked-LM pre-training;
- :class:`VAE`: patch-Transformer encoder and decoder, reparameterization, the negative ELBO.

``python -m fastattn train {gpt,bert,seq2seq,vae}`` trains each on data shipped with the package
(:mod:`fastattn.models.train`).
"""

from . import paged
from .bert import BERT, BERTConfig, mask_tokens
from .decoding import KVCache
from .gpt import GPT, GPTConfig
from .transformer import Transformer, TransformerConfig, sinusoidal_positional_encoding
from .vae import VAE, VAEConfig, VAEOutput

__all__ = [
    "BERT",
    "BERTConfig",
    "GPT",
    "GPTConfig",
    "KVCache",
    "Transformer",
    "TransformerConfig",
    "VAE",
    "VAEConfig",
    "VAEOutput",
    "mask_tokens",
    "paged",
    "sinusoidal_positional_encoding",
]
