"""Hugging Face transformers on fastattn: ``attn_implementation="fastattn"`` and norm swaps.

    import fastattn.integrations.huggingface as fastattn_hf     # registers "fastattn" with transformers
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="fastattn")
    fastattn_hf.patch_transformers(model)  # and swap the norms; or do both to an already loaded model

Importing this module registers :func:`attention_forward` with transformers' ``AttentionInterface``
under the name ``"fastattn"``, and transformers' SDPA mask builder with ``AttentionMaskInterface``
under the same name, so a ``"fastattn"`` model gets the masks an ``"sdpa"`` model gets: ``None``
whenever a plain causal (or full) pattern with no padding is all there is, else a 4-D bool mask
(``True`` = attend). Without a mask builder transformers would hand over no mask at all, and
padding would be silently ignored.

How a call is served:

- no mask: :func:`fastattn.attention`, causal when the module is causal and there is more than one
  query (transformers' own rule for SDPA);
- a bool mask that is key padding, with or without a bottom-right causal pattern (what a padded
  batch gives): :func:`fastattn.attention` with ``key_padding_mask`` and ``causal``. A ``(B, 1, 1,
  Nk)`` mask (a decode step) is key padding by its shape; a full ``(B, 1, Nq, Nk)`` one is compared
  on the device with the two patterns (a synchronization); under ``torch.compile`` it is not read
  and goes to :func:`fastattn.scaled_dot_product_attention`;
- any other mask (sliding windows, float masks, ...): :func:`fastattn.scaled_dot_product_attention`,
  which serves key-padding-shaped masks itself and hands the rest to torch;
- packed sequences, as transformers' flattening collator (``DataCollatorWithFlattening``) makes them:
  one row whose ``position_ids`` restart at 0 where each sequence begins (or the ``cu_seq_lens_q/k``
  keywords), with no mask or the row-wide causal (sliding-window) one transformers builds without
  knowing of the packing: :func:`fastattn.attention_varlen`, each sequence attending only within
  itself, the path transformers' ``flash_attention_2`` takes. Reading ``position_ids`` is a
  synchronization, done only for a single row of more than one query and no cache.

GQA runs natively (key/value heads are never repeated). The backend follows ``backend="auto"``
(:func:`fastattn.use_backend`, ``FASTATTN_BACKEND``).

The fused kernels never form the attention weights. When a forward asks for them
(``output_attentions=True``), each layer also computes them the textbook way (softmax of the masked
scores in float32, as transformers' eager attention does) and returns them; the output itself still
comes from the fused kernel.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
from transformers.masking_utils import sdpa_mask

try:  # where transformers records which outputs (output_attentions, ...) the running forward asked for
    from transformers.utils.output_capturing import _active_collector
except ImportError:  # releases that pass output_attentions to the attention function instead
    _active_collector = None

from .. import reference
from ..nn import RMSNorm
from ..ops.attention import attention, attention_varlen, scaled_dot_product_attention
from ..patch import replacement_for, swap_modules

logger = logging.getLogger(__name__)

IMPLEMENTATION = "fastattn"  # the attn_implementation name
_UNSUPPORTED = {
    "position_bias": "an additive position bias",
    "cache": "a paged cache (continuous batching)",
}


def attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[Tensor, Tensor | None]:
    """transformers' attention-function contract on fastattn.

    Args:
        module: the calling attention module (its ``is_causal`` is read when ``is_causal`` is None).
        query: ``(B, Hq, Nq, D)``; key, value: ``(B, Hkv, Nk, D)`` with ``Hq % Hkv == 0``.
        attention_mask: None, or a 4-D mask broadcastable to ``(B, 1 or Hq, Nq, Nk)`` (bool: True =
            attend; float: added to the scores).
        dropout: on the attention probabilities (transformers passes 0 in evaluation).
        scaling: multiplies ``q·k``; None: ``D ** -0.5``.

    Returns:
        ``(attn_output, attn_weights)``, ``attn_output`` of shape ``(B, Nq, Hq, D)``, contiguous;
        ``attn_weights`` ``(B, Hq, Nq, Nk)`` only when the forward asked for them
        (``output_attentions=True``), else None.
    """
    for name, feature in _UNSUPPORTED.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"attn_implementation={IMPLEMENTATION!r} does not support {feature} ({name}); use 'eager'")
    q_len, kv_len = query.shape[2], key.shape[2]
    module_causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    causal = module_causal and attention_mask is None and q_len > 1
    # Gemma 2's logit soft-capping and gpt-oss's sinks (s_aux): fastattn.attention's own keywords.
    features = {"softcap": kwargs.get("softcap") or 0.0, "sinks": kwargs.get("s_aux")}
    # transformers' sliding window: key j is visible to query i iff i - j < sliding_window (and j <= i).
    sliding_window = kwargs.get("sliding_window")
    window = (sliding_window - 1, 0) if sliding_window else None
    packing = _packed_sequences(query, key, attention_mask, window, kwargs)
    if packing is not None:
        return _attention_packed(query, key, value, packing, module_causal, scaling, dropout, window, kwargs, features)
    weights = None
    if _weights_requested(kwargs):
        weights = _attention_weights(query, key, attention_mask, scaling, causal, **features)
    if causal and kv_len > q_len:
        # Prefill into an empty static cache: the keys past the queries are unused slots (transformers'
        # SDPA path crops them the same way); then bottom-right and top-left causal agree.
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    if attention_mask is None:
        structure = (causal, None)
    elif torch.compiler.is_compiling():
        structure = None  # reading the mask would be a data-dependent branch: torch.compile cannot trace it
    else:
        structure = _causal_key_padding(attention_mask, query.shape[0], q_len, kv_len, window)
    if structure is not None:
        causal, keys_taking_part = structure
        out = attention(
            query,
            key,
            value,
            causal=causal,
            key_padding_mask=keys_taking_part,
            scale=scaling,
            dropout_p=dropout,
            window=window if causal else None,
            **features,
        )
    elif features["softcap"] or features["sinks"] is not None:
        raise ValueError(
            f"attn_implementation={IMPLEMENTATION!r}: soft-capping or sinks with a mask that is not causal, "
            "sliding-window and key padding (under torch.compile, or a custom mask) is not supported; use 'eager'"
        )
    else:
        out = scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=dropout,
            scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
    return out.transpose(1, 2).contiguous(), weights  # (B, Nq, Hq, D)


def _packed_sequences(
    query: Tensor, key: Tensor, attention_mask: Tensor | None, window: tuple[int, int] | None, kwargs: dict
):
    """``(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)`` when one row holds several
    sequences back to back (the ``cu_seq_lens_*`` keywords, or ``position_ids`` that restart at 0
    inside the row), else None. The row's mask must be absent or the plain causal (sliding-window)
    pattern transformers builds for it without knowing of the packing, no padding."""
    q_len = query.shape[2]
    if query.shape[0] != 1 or q_len == 1 or key.shape[2] != q_len:
        return None  # a batch of rows, decoding, or a cache of earlier tokens: nothing packed
    if kwargs.get("cu_seq_lens_q") is not None and kwargs.get("cu_seq_lens_k") is not None:
        cu_seqlens_q, cu_seqlens_k = (kwargs[name].to(torch.int32) for name in ("cu_seq_lens_q", "cu_seq_lens_k"))
        packing = (cu_seqlens_q, cu_seqlens_k, int(kwargs["max_length_q"]), int(kwargs["max_length_k"]))
    else:
        position_ids = kwargs.get("position_ids")
        if position_ids is None or position_ids.numel() != q_len:
            return None
        starts = torch.nonzero(position_ids.reshape(-1) == 0).flatten()  # a synchronization
        if len(starts) < 2 or int(starts[0]) != 0:
            return None
        cu_seqlens = torch.cat((starts, starts.new_tensor([q_len]))).to(torch.int32)
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        packing = (cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    if attention_mask is not None:
        structure = _causal_key_padding(attention_mask, 1, q_len, q_len, window)
        if structure is None or not structure[0] or not bool(structure[1].all()):
            return None  # padding or a custom mask: the mask says what each query sees
    return packing


def _attention_packed(query, key, value, packing, causal, scaling, dropout, window, kwargs, features):
    """The sequences packed in query's single row through :func:`fastattn.attention_varlen`:
    ``((1, N, Hq, D) output, weights or None)``."""
    cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k = packing
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (N, H, D) views, no copy
    out = attention_varlen(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        causal=causal,
        scale=scaling,
        dropout_p=dropout,
        window=window if causal else None,
        **features,
    )
    weights = None
    if _weights_requested(kwargs):  # block-diagonal: a query sees the keys of its own sequence only
        sequence_q = torch.bucketize(torch.arange(query.shape[2], device=query.device), cu_seqlens_q[1:], right=True)
        sequence_k = torch.bucketize(torch.arange(key.shape[2], device=key.device), cu_seqlens_k[1:], right=True)
        mask = sequence_q[:, None] == sequence_k[None, :]
        if causal:
            positions_q = torch.arange(query.shape[2], device=query.device) - cu_seqlens_q[sequence_q]
            positions_k = torch.arange(key.shape[2], device=key.device) - cu_seqlens_k[sequence_k]
            offset = (cu_seqlens_k[1:] - cu_seqlens_k[:-1] - (cu_seqlens_q[1:] - cu_seqlens_q[:-1]))[sequence_q]
            diagonal = (positions_q + offset)[:, None]
            mask &= positions_k[None, :] <= diagonal
            if window is not None:
                mask &= positions_k[None, :] >= diagonal - window[0]
        weights = _attention_weights(query, key, mask[None, None], scaling, False, **features)
    return out[None], weights


def _weights_requested(kwargs: dict) -> bool:
    if kwargs.get("output_attentions"):
        return True
    collected = _active_collector.get() if _active_collector is not None else None
    return collected is not None and "attentions" in collected


def _attention_weights(
    query: Tensor,
    key: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None,
    causal: bool,
    softcap: float = 0.0,
    sinks: Tensor | None = None,
) -> Tensor:
    """softmax(scaling · q kᵀ + mask) in float32, in query's dtype, ``(B, Hq, Nq, Nk)``: transformers'
    eager weights. ``causal`` (no mask given) is the bottom-right pattern; rows that see no key are 0;
    ``softcap`` caps the scores first, ``sinks`` join each row's denominator."""
    batch, heads_q, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    scale = head_dim**-0.5 if scaling is None else scaling
    keys = key.float().repeat_interleave(heads_q // key.shape[1], dim=1)  # (B, Hq, Nk, D)
    scores = scale * (query.float() @ keys.transpose(-1, -2))  # (B, Hq, Nq, Nk)
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    if attention_mask is None and causal:
        attention_mask = reference.attention_visibility(
            batch, q_len, kv_len, causal=True, key_padding_mask=None, device=query.device
        )
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    elif attention_mask is not None:
        scores = scores + attention_mask[..., :kv_len].float()
    no_key = (scores == float("-inf")).all(dim=-1, keepdim=True)  # softmax would give 0/0 there
    if sinks is not None:  # a column for the sink's mass, dropped after the softmax
        sink_column = sinks.float()[None, :, None, None].expand(batch, heads_q, q_len, 1)
        return torch.softmax(torch.cat((scores, sink_column), dim=-1), dim=-1)[..., :-1].to(query.dtype)
    return torch.softmax(scores, dim=-1).masked_fill(no_key, 0.0).to(query.dtype)


def _causal_key_padding(
    mask: Tensor, batch: int, q_len: int, kv_len: int, window: tuple[int, int] | None = None
) -> tuple[bool, Tensor] | None:
    """``(causal, keys_taking_part)`` when the bool ``mask`` is exactly key padding, alone or with
    the bottom-right causal pattern (with ``window``, the causal pattern within that window)
    (``keys_taking_part``: bool ``(B, Nk)``); None otherwise."""
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[3] != kv_len:
        return None
    if mask.shape[0] not in (1, batch) or mask.shape[2] not in (1, q_len):
        return None
    if mask.shape[2] == 1:  # one row for every query (a decode step): key padding, nothing to read
        return False, mask[:, 0, 0, :].expand(batch, kv_len).contiguous()
    mask = mask.expand(batch, 1, q_len, kv_len)
    # A key takes part iff some query sees it, under each pattern (with a window the last query does not
    # see them all).
    keys_taking_part = mask[:, 0].any(dim=1)
    for causal in (False, True):
        pattern = reference.attention_visibility(
            batch,
            q_len,
            kv_len,
            causal=causal,
            key_padding_mask=keys_taking_part,
            device=mask.device,
            window=window if causal else None,
        )
        if torch.equal(mask, pattern):
            return causal, keys_taking_part
    return None


def register() -> None:
    """Registers ``attn_implementation="fastattn"`` (the attention function and its mask builder)
    with transformers; done on import, harmless to repeat."""
    AttentionInterface.register(IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


# ------------------------------------------------------------------------------------------ norms
_RMS_NORM_CLASS_VERDICTS: dict[type, bool] = {}


def _computes_rms_norm(module: nn.Module, eps: float) -> bool:
    """Whether ``module``'s forward is ``x / sqrt(mean(x²) + eps) · weight``, checked on a copy with
    random weights against ``fastattn.reference.rms_norm`` (so that, say, Gemma's ``(1 + weight)``
    variant is told apart)."""
    generator = torch.Generator().manual_seed(0)
    probe = copy.deepcopy(module).to_empty(device="cpu").float()
    hidden = probe.weight.shape[0]
    with torch.no_grad():
        probe.weight.copy_(torch.randn(hidden, generator=generator))
        x = torch.randn(3, hidden, generator=generator)
        expected = reference.rms_norm(x.double(), (hidden,), probe.weight.double(), eps)
        try:
            got = probe(x)
        except Exception as error:  # an unusual forward signature: not a plain RMSNorm
            logger.debug("%s is not swapped: its forward raised %r on a probe", type(module).__name__, error)
            return False
    if not isinstance(got, Tensor) or got.shape != x.shape:
        return False
    return torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-5)


def _rms_norm_replacement(module: nn.Module) -> RMSNorm | None:
    """A :class:`fastattn.nn.RMSNorm` for a transformers RMSNorm class (``LlamaRMSNorm`` and its
    many copies: a class named ``*RMSNorm`` whose only parameter is a 1-D ``weight``, with
    ``variance_epsilon`` or ``eps``, computing the plain RMSNorm), else None."""
    kind = type(module)
    if not kind.__name__.endswith("RMSNorm") or isinstance(module, nn.RMSNorm):
        return None
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
        return None
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        return None
    if len(list(module.parameters())) != 1 or len(list(module.buffers())) != 0:
        return None
    if kind not in _RMS_NORM_CLASS_VERDICTS:
        _RMS_NORM_CLASS_VERDICTS[kind] = _computes_rms_norm(module, float(eps))
    if not _RMS_NORM_CLASS_VERDICTS[kind]:
        return None
    return RMSNorm(weight.shape[0], eps=float(eps), device="meta")


def _replacement(module: nn.Module, *, attention: bool, norm: bool) -> nn.Module | None:
    torch_module = replacement_for(module, attention=attention, norm=norm)
    if torch_module is not None or not norm:
        return torch_module
    return _rms_norm_replacement(module)


def patch_transformers(model: nn.Module, *, attention: bool = True, norm: bool = True) -> nn.Module:
    """Puts a transformers model on fastattn, in place.

    - ``attention=True``: the model (a ``PreTrainedModel``) and its sub-models get
      ``attn_implementation="fastattn"`` (``set_attn_implementation``), and ``nn.MultiheadAttention``
      modules are swapped as by :func:`fastattn.patch`;
    - ``norm=True``: ``nn.LayerNorm`` / ``nn.RMSNorm`` (GPT-2, BERT, ...) become fastattn's, and so do
      transformers' RMSNorm classes that compute the plain RMSNorm (``LlamaRMSNorm``, ``Qwen2RMSNorm``,
      ``MistralRMSNorm``, ...: same ``weight`` and ``eps``); others (e.g. Gemma's ``1 + weight``) stay.

    Returns the model; the names of swapped modules are appended to ``model.fastattn_replaced`` and
    logged, as by :func:`fastattn.patch`.
    """
    if attention and isinstance(model, PreTrainedModel):
        model.set_attn_implementation(IMPLEMENTATION)  # and its sub-models'
    return swap_modules(model, lambda module: _replacement(module, attention=attention, norm=norm))


def patch(model: nn.Module, *, attention: bool = True, norm: bool = True) -> nn.Module:
    """The former name of :func:`patch_transformers` (``fastattn.patch`` is the module patcher)."""
    warnings.warn(
        "fastattn.integrations.huggingface.patch() is now patch_transformers()", DeprecationWarning, stacklevel=2
    )
    return patch_transformers(model, attention=attention, norm=norm)


register()
