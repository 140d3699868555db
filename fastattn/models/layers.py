"""Building blocks shared by the reference models: multi-head attention on :func:`fastattn.attention`,
the position-wise feed-forward network, and the Transformer block with fastattn's fused Add & Norm.

Every attention goes through ``fastattn.attention`` and every normalization through
``fastattn.nn.LayerNorm``, each with the block's ``backend``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastattn
from fastattn.nn import LayerNorm


class AttentionLayer(nn.Module):
    """Multi-head attention: ``softmax(q kᵀ / √D) v`` per head, then an output projection.

    Self-attention when ``memory`` is None (queries, keys and values from ``x``); cross-attention
    otherwise (queries from ``x``, keys and values from ``memory``, e.g. the encoder's output).
    ``n_kv_heads < n_heads`` shares each key/value head among ``n_heads // n_kv_heads`` query heads
    (grouped-query attention).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads != 0 or n_heads % n_kv_heads != 0:
            raise ValueError(
                f"d_model ({d_model}) must be a multiple of n_heads ({n_heads}), "
                f"and n_heads of n_kv_heads ({n_kv_heads})"
            )
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.query = nn.Linear(d_model, d_model, bias=bias)
        self.key_value = nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.backend = backend

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        causal: bool = False,
        key_padding_mask: Tensor | None = None,
        kv_cache: nn.Module | None = None,
        start_pos: int = 0,
        memory_keys_values: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x: ``(B, Nq, C)``; memory: ``(B, Nk, C)`` or None; key_padding_mask: bool ``(B, Nk)``, True =
        the key takes part. With ``kv_cache`` (a :class:`fastattn.models.decoding.KVCache`, or a paged
        cache's layer), the new keys and values are written at positions ``start_pos ..`` and the
        queries attend to every cached position up to theirs (bottom-right causal: ``Nq < Nk``).
        ``memory_keys_values``: the :meth:`keys_values` of ``memory``, computed once for every step of a
        decoding. Returns ``(B, Nq, C)``."""
        batch, nq, channels = x.shape
        q = self.query(x).view(batch, nq, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, Nq, D)
        if memory_keys_values is not None:
            k, v = memory_keys_values
        else:
            k, v = self.keys_values(x if memory is None else memory)  # 2 × (B, Hkv, Nk, D)
        if kv_cache is not None:  # decoding: the cache writes the new keys and attends over its positions
            y = kv_cache.attend(
                q, k, v, start_pos=start_pos, causal=causal, key_padding_mask=key_padding_mask, backend=self.backend
            )
        else:
            y = fastattn.attention(
                q,
                k,
                v,
                causal=causal,
                key_padding_mask=key_padding_mask,
                dropout_p=self.dropout if self.training else 0.0,
                backend=self.backend,
            )  # (B, H, Nq, D)
        return self.out(y.transpose(1, 2).reshape(batch, nq, channels))

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values of ``source`` ``(B, N, C)``: two ``(B, Hkv, N, D)`` tensors."""
        batch, n, _ = source.shape
        kv = self.key_value(source).view(batch, n, 2, self.n_kv_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k, v


class FeedForward(nn.Module):
    """The position-wise feed-forward network: ``Linear(d_model, d_ff)``, activation (ReLU or GELU),
    ``Linear(d_ff, d_model)``."""

    ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(self.ACTIVATIONS)}, got {activation!r}")
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.activation = self.ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(self.activation(self.up(x))))  # (B, N, C)


class Block(nn.Module):
    """One Transformer layer: self-attention, cross-attention (decoder layers of an encoder–decoder only)
    and the feed-forward network, each sublayer ``f`` wrapped in a residual connection and a LayerNorm:

    - post-norm (``norm_first=False``, "Attention Is All You Need"): ``x = LN(x + f(x))``, the Add & Norm
      computed by one fused ``LayerNorm(f(x), residual=x)``;
    - pre-norm (``norm_first=True``, GPT-2 and later): ``x = x + f(LN(x))``; the add of one sublayer is
      fused into the LayerNorm of the next, ``(LN(x + f), x + f) = LayerNorm(f, residual=x)``.

    Dropout (``dropout``) is applied to each sublayer's output before the add, and inside attention and
    the feed-forward network.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        *,
        n_kv_heads: int | None = None,
        cross_attention: bool = False,
        norm_first: bool = False,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        norm_eps: float = 1e-5,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        attention = dict(n_kv_heads=n_kv_heads, bias=bias, dropout=dropout, backend=backend)
        self.self_attention = AttentionLayer(d_model, n_heads, **attention)
        self.cross_attention = AttentionLayer(d_model, n_heads, **attention) if cross_attention else None
        self.feed_forward = FeedForward(d_model, d_ff, activation=activation, bias=bias, dropout=dropout)
        self.norms = nn.ModuleList(
            LayerNorm(d_model, eps=norm_eps, bias=bias, backend=backend) for _ in range(3 if cross_attention else 2)
        )
        self.norm_first = norm_first
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        *,
        causal: bool = False,
        key_padding_mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        kv_cache: nn.Module | None = None,
        start_pos: int = 0,
        memory_keys_values: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x: ``(B, N, C)``. ``causal``, ``key_padding_mask`` (bool ``(B, N)``), ``kv_cache`` and
        ``start_pos`` go to the self-attention; ``memory`` ``(B, M, C)``, ``memory_padding_mask``
        (bool ``(B, M)``) and ``memory_keys_values`` (the cross-attention's keys and values of
        ``memory``, when already computed) to the cross-attention. Returns ``(B, N, C)``."""

        def attend_to_self(h: Tensor) -> Tensor:
            return self.self_attention(
                h, causal=causal, key_padding_mask=key_padding_mask, kv_cache=kv_cache, start_pos=start_pos
            )

        sublayers = [attend_to_self]
        if self.cross_attention is not None:
            if memory is None:
                raise ValueError("a block with cross-attention needs the encoder's output (memory)")
            sublayers.append(
                lambda h: self.cross_attention(
                    h, memory, key_padding_mask=memory_padding_mask, memory_keys_values=memory_keys_values
                )
            )
        sublayers.append(self.feed_forward)

        if not self.norm_first:
            for norm, sublayer in zip(self.norms, sublayers, strict=True):
                x, _ = norm(self.dropout(sublayer(x)), residual=x)  # LN(x + f(x))
            return x
        h = self.norms[0](x)
        for index, sublayer in enumerate(sublayers):
            update = self.dropout(sublayer(h))
            if index + 1 < len(sublayers):
                h, x = self.norms[index + 1](update, residual=x)  # h = LN(x + f), x = x + f
            else:
                x = x + update
        return x


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2/BERT initialization: linear and embedding weights ~ N(0, std²), biases zero; LayerNorm keeps
    its ones and zeros. Use as ``model.apply(init_weights)``."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        torch.nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        torch.nn.init.zeros_(module.bias)


def __getattr__(name: str):
    # The old name of AttentionLayer, one capital letter away from fastattn.nn.MultiheadAttention.
    if name == "MultiHeadAttention":
        import warnings

        warnings.warn(
            "fastattn.models.layers.MultiHeadAttention is now AttentionLayer (fastattn.nn.MultiheadAttention is "
            "the drop-in for torch.nn.MultiheadAttention)",
            DeprecationWarning,
            stacklevel=2,
        )
        return AttentionLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
