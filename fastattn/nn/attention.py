"""``fastattn.nn.MultiheadAttention``: a drop-in for ``torch.nn.MultiheadAttention`` that runs
fastattn's fused attention wherever the call allows it.

It subclasses ``torch.nn.MultiheadAttention``: the constructor, the parameters (``in_proj_weight`` or
``q_proj_weight``/``k_proj_weight``/``v_proj_weight``, ``in_proj_bias``, ``bias_k``, ``bias_v``,
``out_proj``), the ``state_dict`` and every ``isinstance`` check (``nn.TransformerEncoderLayer``'s
inference fast path among them) are torch's. Only ``forward`` changes: a call that fastattn's
attention can compute exactly goes to :func:`fastattn.attention`; every other call goes to torch's
own ``forward`` unchanged.

A call takes the fused path when

- ``need_weights=False`` (the fused kernels never form the attention matrix);
- ``key_padding_mask`` is None, a bool mask, or a float mask holding only ``0`` and ``-inf`` (what
  ``nn.TransformerEncoder`` turns bool masks into); a float mask with other values is an additive
  bias and goes to torch, as does a float mask while ``torch.compile`` traces (its values cannot be
  read then);
- ``attn_mask`` is None, or ``is_causal=True`` with ``L == S``: torch documents ``is_causal`` as the
  hint that ``attn_mask`` *is* the causal mask, and itself then drops the mask for
  ``F.scaled_dot_product_attention(is_causal=True)``; the hint without ``attn_mask`` is an error in
  torch, raised by torch here too;
- there is no ``add_bias_kv`` / ``add_zero_attn`` and inputs, masks and parameters agree in shape,
  dtype and device (any disagreement goes to torch, which raises its own error).

Mask senses follow torch: in ``key_padding_mask`` and a bool ``attn_mask``, ``True`` means *ignore*
(the opposite of :func:`fastattn.attention`'s ``key_padding_mask``, where ``True`` means the key takes
part); the conversion happens here. Dropout (``dropout`` in training) is fastattn's, drawn from a
different random stream than torch's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import backends
from ..ops.attention import attention


class MultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` with fastattn's fused attention (see the module docstring for
    which calls take it).

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first,
            device, dtype: as in ``torch.nn.MultiheadAttention``.
        backend: the backend of :func:`fastattn.attention` for the fused path: ``"auto"``,
            ``"cuda"``, ``"triton"``, ``"torch"`` or ``"naive"``.

    >>> mha = fastattn.nn.MultiheadAttention(256, 8, batch_first=True)
    >>> out, _ = mha(x, x, x, key_padding_mask=padding, need_weights=False)   # fused
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            embed_dim,
            num_heads,
            dropout=dropout,
            bias=bias,
            add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn,
            kdim=kdim,
            vdim=vdim,
            batch_first=batch_first,
            device=device,
            dtype=dtype,
        )
        self.backend = backends.parse(backend)

    @classmethod
    def configured_like(cls, module: nn.MultiheadAttention, **options) -> MultiheadAttention:
        """A new module with ``module``'s configuration and fresh parameters; ``options``: the other
        constructor arguments (``device``, ``dtype``, ``backend``)."""
        return cls(
            module.embed_dim,
            module.num_heads,
            dropout=module.dropout,
            bias=module.in_proj_bias is not None,
            add_bias_kv=module.bias_k is not None,
            add_zero_attn=module.add_zero_attn,
            kdim=module.kdim,
            vdim=module.vdim,
            batch_first=module.batch_first,
            **options,
        )

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}, "
            f"backend={self.backend!r}"
        )

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``torch.nn.MultiheadAttention.forward``, with its arguments, shapes and mask senses.

        Returns ``(attn_output, attn_weights)``; ``attn_weights`` is None unless ``need_weights``
        (which torch computes).
        """
        plan = None
        if not need_weights:
            plan = self._fused_plan(query, key, value, key_padding_mask, attn_mask, is_causal)
        if plan is not None:
            return self._fused_forward(query, key, value, *plan), None
        return super().forward(
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )

    # ------------------------------------------------------------------- which calls are fused
    def _fused_plan(self, query, key, value, key_padding_mask, attn_mask, is_causal):
        """``(keys_taking_part, causal)`` for the fused path, or None when the call goes to torch."""
        if not self._fused_inputs_ok(query, key, value):
            return None
        causal = self._fused_causal(query, key, attn_mask, is_causal)
        if causal is None:
            return None
        keys_taking_part = self._fused_key_padding_mask(query, key, key_padding_mask)
        return None if keys_taking_part is False else (keys_taking_part, causal)

    def _fused_inputs_ok(self, query: Tensor, key: Tensor, value: Tensor) -> bool:
        """Inputs and parameters agree in rank, size, dtype and device, with no extra key/value rows."""
        if self.bias_k is not None or self.bias_v is not None or self.add_zero_attn:
            return False
        if any(t.is_nested for t in (query, key, value)) or query.dim() not in (2, 3):
            return False
        if key.dim() != query.dim() or value.dim() != query.dim():
            return False
        if (query.shape[-1], key.shape[-1], value.shape[-1]) != (self.embed_dim, self.kdim, self.vdim):
            return False
        if key.shape[:-1] != value.shape[:-1]:
            return False
        batch_dim = 0 if self.batch_first else 1
        if query.dim() == 3 and query.shape[batch_dim] != key.shape[batch_dim]:
            return False
        weight = self.in_proj_weight if self._qkv_same_embed_dim else self.q_proj_weight
        if not (query.dtype == key.dtype == value.dtype == weight.dtype) or not query.is_floating_point():
            return False
        if not (query.device == key.device == value.device == weight.device):
            return False
        return not (self.training and self.dropout >= 1.0)

    def _fused_key_padding_mask(self, query, key, key_padding_mask) -> Tensor | None | bool:
        """The keys that take part, as fastattn's bool ``(N, S)`` mask (None: all of them), or
        False when this mask cannot be fused."""
        if key_padding_mask is None:
            return None
        batched = query.dim() == 3
        source_len = key.shape[1 if self.batch_first and batched else 0]
        expected = (key.shape[0 if self.batch_first else 1], source_len) if batched else (source_len,)
        if tuple(key_padding_mask.shape) != expected or key_padding_mask.device != query.device:
            return False
        if key_padding_mask.dtype == torch.bool:
            ignored = key_padding_mask
        elif key_padding_mask.is_floating_point() and not torch.compiler.is_compiling():
            ignored = key_padding_mask.isneginf()
            if not bool((ignored | (key_padding_mask == 0)).all()):
                return False  # an additive bias, not a padding mask
        else:
            return False
        return (~ignored).reshape(-1, source_len)

    def _fused_causal(self, query, key, attn_mask, is_causal) -> bool | None:
        """Whether the fused call is causal, or None when ``attn_mask`` cannot be fused."""
        if attn_mask is None:
            return False if not is_causal else None  # torch raises for the hint without a mask
        if not is_causal or not (attn_mask.dtype == torch.bool or attn_mask.is_floating_point()):
            return None
        seq_dim = 1 if self.batch_first and query.dim() == 3 else 0
        target_len, source_len = query.shape[seq_dim], key.shape[seq_dim]
        if target_len != source_len or tuple(attn_mask.shape[-2:]) != (target_len, source_len):
            return None
        return True

    # --------------------------------------------------------------------------- the fused path
    def _fused_forward(self, query, key, value, keys_taking_part: Tensor | None, causal: bool) -> Tensor:
        self_attention = query is key and key is value
        batched = query.dim() == 3
        if not batched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._project(query, key, value, self_attention)  # (N, L, E), (N, S, E), (N, S, E)
        batch, target_len = q.shape[0], q.shape[1]
        heads, head_dim = self.num_heads, self.head_dim
        q = q.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (N, H, L, D)
        k = k.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (N, H, S, D)
        v = v.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (N, H, S, D)
        out = attention(
            q,
            k,
            v,
            causal=causal,
            key_padding_mask=keys_taking_part,
            dropout_p=self.dropout if self.training else 0.0,
            backend=self.backend,
        )  # (N, H, L, D)
        if batched and not self.batch_first:
            out = out.permute(2, 0, 1, 3).reshape(target_len, batch, self.embed_dim)  # (L, N, E)
        else:
            out = out.transpose(1, 2).reshape(batch, target_len, self.embed_dim)  # (N, L, E)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        return out if batched else out.squeeze(0)

    def _project(self, query, key, value, self_attention: bool) -> tuple[Tensor, Tensor, Tensor]:
        """The input projections, as torch computes them (one matmul for self-attention)."""
        if self.in_proj_bias is None:
            bias_q = bias_k = bias_v = None
        else:
            bias_q, bias_k, bias_v = self.in_proj_bias.chunk(3)
        if not self._qkv_same_embed_dim:
            return (
                F.linear(query, self.q_proj_weight, bias_q),
                F.linear(key, self.k_proj_weight, bias_k),
                F.linear(value, self.v_proj_weight, bias_v),
            )
        if self_attention:
            return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        weight_q, weight_k, weight_v = self.in_proj_weight.chunk(3)
        return (
            F.linear(query, weight_q, bias_q),
            F.linear(key, weight_k, bias_k),
            F.linear(value, weight_v, bias_v),
        )
