"""Put fastattn into an existing model: swap its ``torch.nn`` modules, or route its
``F.scaled_dot_product_attention`` calls.

    model = fastattn.patch(model)     # nn.MultiheadAttention, nn.LayerNorm, nn.RMSNorm -> fastattn.nn
    model.fastattn_replaced           # ['encoder.layers.0.self_attn', 'encoder.layers.0.norm1', ...]

    with fastattn.patch_sdpa():       # F.scaled_dot_product_attention -> fastattn's, in this block only
        logits = model(tokens)

The swapped modules subclass the ones they replace and take over their parameters (the very
``Parameter`` objects: same device, dtype and values, and an optimizer built before the swap keeps
working), so ``isinstance`` checks such as ``nn.TransformerEncoderLayer``'s inference fast path, state
dicts and training all carry on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch.nn.functional as F
from torch import nn

from .nn import LayerNorm, MultiheadAttention, RMSNorm
from .ops.attention import scaled_dot_product_attention

logger = logging.getLogger(__name__)

_REPLACEMENTS = {nn.MultiheadAttention: MultiheadAttention, nn.LayerNorm: LayerNorm, nn.RMSNorm: RMSNorm}
REPLACED_ATTRIBUTE = "fastattn_replaced"  # on the patched model: the names of every module swapped so far
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def replacement_for(module: nn.Module, *, attention: bool, norm: bool) -> nn.Module | None:
    """fastattn's module for ``module`` (built on the meta device, without parameters of its own
    yet), or None. Only the exact torch classes match: a subclass may have changed ``forward``."""
    kind = type(module)
    if (attention and kind is nn.MultiheadAttention) or (norm and kind in (nn.LayerNorm, nn.RMSNorm)):
        return _REPLACEMENTS[kind].configured_like(module, device="meta")
    return None


def take_over(new: nn.Module, old: nn.Module) -> nn.Module:
    """Moves ``old``'s own parameters, buffers and submodules (the objects themselves) and its
    training mode into ``new``, a module of the same configuration; returns ``new``."""
    for name, parameter in old.named_parameters(recurse=False):
        setattr(new, name, parameter)
    for name, buffer in old.named_buffers(recurse=False):
        setattr(new, name, buffer)
    for name, child in old.named_children():
        setattr(new, name, child)
    return new.train(old.training)


def has_hooks(module: nn.Module) -> bool:
    """Whether hooks are registered on ``module`` itself (a swap would silently drop them)."""
    return any(getattr(module, name, None) for name in _HOOK_DICTS)


def swap_modules(model: nn.Module, replacement) -> nn.Module:
    """Swaps, in place, every submodule ``m`` of ``model`` for which ``replacement(m)`` returns a
    module (every reference to ``m``, if it is shared); modules with hooks are left alone, with a
    warning. Appends the names of the swapped modules to ``model.fastattn_replaced``, logs them, and
    returns the model (a new object only when the model itself was swapped)."""
    swaps: dict[int, nn.Module] = {}
    names = []
    for name, module in model.named_modules():
        new = replacement(module)
        if new is None:
            continue
        if has_hooks(module):
            logger.warning(
                "fastattn.patch: left %s (%s) alone: it has hooks", name or "the model", type(module).__name__
            )
            continue
        swaps[id(module)] = take_over(new, module)
        names.append(name)
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):  # named_children() skips repeats
            if child is not None and id(child) in swaps:
                setattr(parent, child_name, swaps[id(child)])
    patched = swaps.get(id(model), model)
    setattr(patched, REPLACED_ATTRIBUTE, getattr(model, REPLACED_ATTRIBUTE, []) + names)
    logger.info("fastattn.patch replaced %d module(s): %s", len(names), ", ".join(names) or "none")
    return patched


def patch(model: nn.Module, *, attention: bool = True, norm: bool = True) -> nn.Module:
    """Swaps the matching ``torch.nn`` modules of any model for fastattn's, in place, weights kept.

    - ``attention=True``: ``nn.MultiheadAttention`` -> :class:`fastattn.nn.MultiheadAttention`
      (fused whenever ``need_weights=False`` and the masks are key padding or causal; torch's own
      computation otherwise);
    - ``norm=True``: ``nn.LayerNorm`` -> :class:`fastattn.nn.LayerNorm`, ``nn.RMSNorm`` ->
      :class:`fastattn.nn.RMSNorm`.

    Only those exact classes are swapped (not subclasses, which may compute something else), and not
    modules with hooks on them. The new modules own the very parameters of the old ones.

    Returns the model; use the returned object: it is a new one when ``model`` itself is one of the
    swapped classes. The names of the swapped modules (``""`` for the model itself) are appended to
    ``model.fastattn_replaced`` and logged at INFO level by the ``fastattn.patch`` logger.

    :func:`fastattn.patch_sdpa` is the other way in, for models that call
    ``F.scaled_dot_product_attention`` themselves.
    """
    return swap_modules(model, functools.partial(replacement_for, attention=attention, norm=norm))


# ------------------------------------------------------------- routing F.scaled_dot_product_attention
@contextlib.contextmanager
def patch_sdpa() -> Iterator[None]:
    """Within the block, calls of ``torch.nn.functional.scaled_dot_product_attention`` go to
    :func:`fastattn.scaled_dot_product_attention` (torch's semantics, fused kernels where they serve
    the inputs, torch's own function otherwise); on leaving the block, torch's function is back.

    It rebinds the attribute ``torch.nn.functional.scaled_dot_product_attention``, which is what
    ``F.scaled_dot_product_attention(...)`` calls and ``torch.nn.MultiheadAttention`` read at call
    time; code that imported the function by name earlier keeps torch's. Never on by default; it
    affects every thread while the block runs.

    >>> with fastattn.patch_sdpa():
    ...     out = model(x)
    """
    torch_sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = scaled_dot_product_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = torch_sdpa


def _sdpa_under_its_old_name():
    """``fastattn.patch.sdpa()``, the old name of :func:`patch_sdpa`: warns, then does the same."""
    import warnings

    warnings.warn("fastattn.patch.sdpa() is now fastattn.patch_sdpa()", DeprecationWarning, stacklevel=2)
    return patch_sdpa()


patch.sdpa = _sdpa_under_its_old_name
