"""What each backend can serve, per op: dtypes, optional features and limits, as data.

Each backend declares its own, next to its code: the CUDA extension exports its limits
(``_C.capabilities()``, from ``csrc/common/limits.h``), the Triton kernels declare theirs in
``kernels/capabilities.py``, and PyTorch's ops and the reference are described here. Everything that
depends on them reads this table and never restates it: the ops' backend choice and its error
messages, ``python -m fastattn env``, ``verify``'s and the benchmarks' grids, and the tests.

>>> capabilities.of("attention", "triton").max_head_dim
256
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from . import backends
from .backends import Backend
from .kernels import capabilities as triton_capabilities  # plain data: imports no Triton

# The optional features of the ops, as a call uses them.
FEATURES = {
    "dropout": "dropout_p > 0",
    "deterministic": "a deterministic backward, on CUDA tensors (on the CPU every backend's is)",
    "return_lse": "the log-sum-exp returned with the output",
    "window": "a sliding window (left, right)",
    "softcap": "scores capped by softcap * tanh(s / softcap)",
    "alibi_slopes": "ALiBi biases",
    "sinks": "attention sinks (a logit per head in every softmax)",
    "varlen": "packed sequences of different lengths (cu_seqlens)",
    "paged": "a paged KV cache (block_table)",
}
# Each op and the features it has.
OP_FEATURES = {
    "attention": ("dropout", "deterministic", "return_lse", "window", "softcap", "alibi_slopes", "sinks", "varlen"),
    "kvcache": ("return_lse", "window", "softcap", "alibi_slopes", "paged"),
    "norm": (),
    "sampling": (),
}
OPS = tuple(OP_FEATURES)


@dataclasses.dataclass(frozen=True)
class Capability:
    """What one backend serves for one op. A limit of None means: no limit of the backend's own."""

    dtypes: tuple[torch.dtype, ...]
    features: frozenset[str] = frozenset()
    max_head_dim: int | None = None
    max_vocab: int | None = None

    @classmethod
    def from_table(cls, op: str, entry: dict) -> Capability:
        """``op``'s entry of ``_C.capabilities()`` or of ``kernels/capabilities.py``."""
        unknown = set(entry["features"]) - set(OP_FEATURES[op])
        if unknown:
            raise ValueError(f"{op}: unknown features {sorted(unknown)} (fastattn.capabilities.OP_FEATURES)")
        return cls(
            tuple(entry["dtypes"]),
            frozenset(entry["features"]),
            entry.get("max_head_dim"),
            entry.get("max_vocab"),
        )

    def dtype_names(self) -> str:
        return ", ".join(str(dtype).removeprefix("torch.") for dtype in self.dtypes)

    def reasons(self, *, dtypes=(), head_dim=None, vocab=None, features=()) -> list[str]:
        """Why a call with these properties cannot be served (empty: it can).

        ``dtypes``: (label, dtype) pairs of the call's tensors, the label empty for the main input."""
        reasons = [
            f"{label + ' ' if label else ''}dtype {dtype} is not supported ({self.dtype_names()})"
            for label, dtype in dtypes
            if dtype not in self.dtypes
        ]
        if head_dim is not None and self.max_head_dim is not None and head_dim > self.max_head_dim:
            reasons.append(f"head_dim {head_dim} is larger than {self.max_head_dim}")
        if vocab is not None and self.max_vocab is not None and vocab > self.max_vocab:
            reasons.append(f"vocabulary size {vocab} is larger than {self.max_vocab}")
        if not self.features.issuperset(features):
            missing = [feature for feature in FEATURES if feature in features and feature not in self.features]
            reasons.append(f"{', '.join(missing)}: not supported by this backend")
        return reasons


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# PyTorch's own ops. scaled_dot_product_attention takes dropout and a float mask (which carries the
# window and ALiBi); it returns no lse, has no packed layout, softcap or sinks, and its CUDA backward is
# not guaranteed deterministic. The KV-cache op gathers each sequence's keys (paged or not) for it.
_TORCH = {
    "attention": Capability(_FLOATS, frozenset({"dropout", "window", "alibi_slopes"})),
    "kvcache": Capability(_FLOATS, frozenset({"window", "alibi_slopes", "paged"})),
    "norm": Capability(_FLOATS),
    "sampling": Capability(_FLOATS),
}
# The textbook reference computes everything, in any float dtype.
_NAIVE = {op: Capability(_FLOATS, frozenset(features)) for op, features in OP_FEATURES.items()}


def _declared(table: dict) -> dict[str, Capability]:
    return {op: Capability.from_table(op, table[op]) for op in OPS}


# Read once, as fastattn is imported (no import may happen while torch.compile traces a call). The cuda
# backend's capabilities are unknown when the extension is not built: its import error is then why it
# cannot serve anything.
_TABLE: dict[Backend, dict[str, Capability]] = {
    Backend.TRITON: _declared(triton_capabilities.CAPABILITIES),
    Backend.TORCH: _TORCH,
    Backend.NAIVE: _NAIVE,
}
if backends._C is not None:
    _TABLE[Backend.CUDA] = _declared(backends._C.capabilities())


def of(op: str, backend: str) -> Capability | None:
    """What ``backend`` serves for ``op`` (one of :data:`OPS`); None for the ``cuda`` backend when the
    extension is not built."""
    declared = _TABLE.get(backend)
    if declared is not None and op in declared:  # every op call asks: the checks below only on a miss
        return declared[op]
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    if backend not in backends.BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(backends.BACKENDS)}, got {backend!r}")
    return None


def reasons(op: str, backend: str, **call) -> list[str]:
    """Why ``backend`` cannot serve a call of ``op`` with these properties (see :meth:`Capability.reasons`);
    empty when its capabilities are unknown (the cuda backend unbuilt: the device check says so)."""
    capability = of(op, backend)
    return [] if capability is None else capability.reasons(**call)


def max_head_dim(backend: str, op: str = "attention") -> int | None:
    """The largest head dim ``backend`` serves for ``op`` (None: no limit of its own, or unknown)."""
    capability = of(op, backend)
    return None if capability is None else capability.max_head_dim


def fused_max_head_dim(op: str = "attention") -> int:
    """The largest head dim both fused backends serve (the extension's, where it is built)."""
    return min(limit for backend in backends.FUSED if (limit := max_head_dim(backend, op)) is not None)


def lacks(op: str, backend: str, feature: str) -> bool:
    """True when ``backend`` (a name, or "auto") is known not to serve ``feature`` for ``op``."""
    capability = None if backend == "auto" else of(op, backend)
    return capability is not None and feature not in capability.features


def fused_dtypes(op: str) -> tuple[torch.dtype, ...]:
    """The dtypes both fused backends serve for ``op`` (the extension's, where it is built)."""
    known = [capability.dtypes for backend in backends.FUSED if (capability := of(op, backend)) is not None]
    return tuple(dtype for dtype in known[0] if all(dtype in dtypes for dtypes in known))


CUDA_ATTENTION_KERNELS = ("forward", "backward", "decode")  # what _C.attention_shared_memory reports, in order


def cuda_shared_memory_reasons(
    dtype: torch.dtype, head_dim: int, kernels: tuple[str, ...], device: torch.device
) -> list[str]:
    """Why the CUDA attention ``kernels`` (of :data:`CUDA_ATTENTION_KERNELS`) for (dtype, head_dim) cannot
    launch on ``device`` for lack of shared memory (the extension says what each tile configuration needs).

    The largest tiles need more than some GPUs allow one block: the float16/bfloat16 backward at
    head_dim > 192 takes 99.25 KiB, and float32 at head_dim > 128 takes 100.13 KiB forward and
    132.25 KiB backward, where sm_86 and sm_89 allow 99 KiB (sm_80 163 KiB, sm_90 227 KiB); the split-KV
    decode kernel takes at most 82.125 KiB. Such calls go to another backend (or, with ``backend="cuda"``,
    raise) rather than fail at launch.
    """
    needs = dict(zip(CUDA_ATTENTION_KERNELS, _cuda_shared_memory(dtype, head_dim), strict=True))
    limit = backends.shared_memory_limit(device)
    return [
        f"the {dtype} head_dim {head_dim} {kernel} needs {needs[kernel] / 1024:.2f} KiB of shared memory per "
        f"block, {device} allows {limit / 1024:.2f} KiB"
        for kernel in kernels
        if needs[kernel] > limit
    ]


@functools.cache
def _cuda_shared_memory(dtype: torch.dtype, head_dim: int) -> tuple[int, ...]:
    return tuple(backends._C.attention_shared_memory(dtype, head_dim))


def describe() -> list[str]:
    """The table as text, one line per op and backend (for ``python -m fastattn env``)."""
    lines = []
    for op in OPS:
        for backend in backends.AUTO_ORDER:
            capability = of(op, backend)
            if capability is None:
                lines.append(f"  {op:<9} {backend:<7} unknown (the extension is not built)")
                continue
            limits = [f"head_dim <= {capability.max_head_dim}"] if capability.max_head_dim else []
            limits += [f"vocabulary <= {capability.max_vocab:,}"] if capability.max_vocab else []
            features = ", ".join(feature for feature in FEATURES if feature in capability.features)
            lines.append(
                f"  {op:<9} {backend:<7} {capability.dtype_names()}"
                + "".join(f"; {limit}" for limit in limits)
                + (f"; {features}" if features else "")
            )
    return lines
