"""LayerNorm and RMSNorm: GB/s of the bytes that must move, for every provider, side by side.

Standard grid (DESIGN.md §5): M = 4096 rows of N in 512 .. 65536 (bfloat16), the forward alone, the
forward with the residual add fused in ("Add & Norm": ``s = x + residual``, returns ``(y, s)``), and
the backward; ``--quick`` keeps N in {1024, 8192, 65536}. Without a GPU: 128 rows of N in {512, 4096}
(float32), timed on the CPU. The bytes counted are in ``bench.metrics.norm_bytes``.

Providers: ours (``fastattn.layer_norm`` / ``fastattn.rms_norm`` with ``backend="cuda" | "triton"``);
``torch`` (``F.layer_norm`` / ``F.rms_norm``, the residual added by a separate ``x + residual``);
``naive`` (``fastattn.reference``) and ``torch.compile`` of it; and, when installed, liger-kernel,
apex, flash-attn's Triton norms and flashinfer's RMSNorm.

    python -m fastattn bench norm [--quick] [--plot norm.png]
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

import fastattn
from fastattn import reference

from . import metrics
from .harness import Case, Provider, Skip, backward_call, ours_provider, peer_provider, reference_provider

TITLE = "norm"
OPS = ("layer_norm", "rms_norm")
MODES = ("fwd", "fwd+residual", "bwd")
ROWS = 4096
HIDDEN_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
QUICK_HIDDEN_SIZES = (1024, 8192, 65536)
TINY_ROWS, TINY_HIDDEN_SIZES = 128, (512, 4096)
EPS = {"layer_norm": 1e-5, "rms_norm": 1e-6}  # the defaults of fastattn's and torch's functions


def _case(op, mode, rows, hidden, dtype, device, quick) -> Case:
    has_bias = op == "layer_norm"
    residual = mode == "fwd+residual"

    def make_inputs() -> dict:
        grad = mode == "bwd"
        inputs = {
            "x": torch.randn(rows, hidden, device=device, dtype=dtype, requires_grad=grad),
            "weight": torch.randn(hidden, device=device, dtype=dtype, requires_grad=grad),
        }
        if has_bias:
            inputs["bias"] = torch.randn(hidden, device=device, dtype=dtype, requires_grad=grad)
        if residual:
            inputs["residual"] = torch.randn(rows, hidden, device=device, dtype=dtype)
        if grad:
            inputs["dy"] = torch.randn(rows, hidden, device=device, dtype=dtype)
        return inputs

    element = torch.empty((), dtype=dtype).element_size()
    moved = metrics.norm_bytes(
        rows,
        hidden,
        element_size=element,
        mode="bwd" if mode == "bwd" else "fwd",
        has_bias=has_bias,
        has_residual=residual,
    )
    return Case(
        op=op,
        mode=mode,
        dtype=str(dtype).removeprefix("torch."),
        label=f"M={rows} N={hidden}",
        params={"rows": rows, "hidden": hidden, "residual": residual},
        x_name="N",
        x=hidden,
        series=mode,
        unit="GB/s",
        work=moved,
        make_inputs=make_inputs,
        input_bytes=int(moved),
        quick=quick,
    )


def cases(device: torch.device, dtype: torch.dtype) -> list[Case]:
    """The standard grid on a GPU (the --quick part marked), tiny shapes on a CPU."""
    if device.type != "cuda":
        return [
            _case(op, mode, TINY_ROWS, n, dtype, device, True)
            for op in OPS
            for mode in MODES
            for n in TINY_HIDDEN_SIZES
        ]
    return [
        _case(op, mode, ROWS, n, dtype, device, n in QUICK_HIDDEN_SIZES)
        for op in OPS
        for mode in MODES
        for n in HIDDEN_SIZES
    ]


def _in_mode(case: Case, inputs: dict, forward):
    return forward if case.mode != "bwd" else backward_call(forward(), inputs["dy"])


def _arguments(case: Case, inputs: dict):
    return inputs["x"], (case.params["hidden"],), inputs["weight"], inputs.get("bias"), inputs.get("residual")


def _ours(name: str) -> Provider:
    def build(case, inputs):
        x, shape, weight, bias, residual = _arguments(case, inputs)
        if case.op == "layer_norm":
            forward = lambda: fastattn.layer_norm(x, shape, weight, bias, residual=residual, backend=name)
        else:
            forward = lambda: fastattn.rms_norm(x, shape, weight, residual=residual, backend=name)
        return _in_mode(case, inputs, forward)

    return ours_provider(name, f"fastattn.layer_norm / rms_norm(backend={name!r})", build, "layer_norm", "rms_norm")


def _torch() -> Provider:
    def build(case, inputs):
        x, shape, weight, bias, residual = _arguments(case, inputs)
        eps = EPS[case.op]

        def normalize(s):
            if case.op == "layer_norm":
                return F.layer_norm(s, shape, weight, bias, eps)
            return F.rms_norm(s, shape, weight, eps)

        if residual is None:
            return _in_mode(case, inputs, lambda: normalize(x))

        def add_and_normalize():
            s = x + residual
            return normalize(s), s

        return add_and_normalize

    return Provider("torch", "pytorch", "F.layer_norm / F.rms_norm (residual: x + residual first)", build)


def _naive(compiled: bool) -> Provider:
    def build(layer_norm, rms_norm, case, inputs):
        x, shape, weight, bias, residual = _arguments(case, inputs)
        eps = EPS[case.op]
        if case.op == "layer_norm":
            return _in_mode(case, inputs, lambda: layer_norm(x, shape, weight, bias, eps, residual=residual))
        return _in_mode(case, inputs, lambda: rms_norm(x, shape, weight, eps, residual=residual))

    description = "fastattn.reference.layer_norm / rms_norm"
    return reference_provider("naive", description, build, compiled, reference.layer_norm, reference.rms_norm)


def _without_residual(peer: str, case: Case, inputs: dict, layer_norm: Callable, rms_norm: Callable):
    """The call of a peer with no fused residual add: ``layer_norm(x, shape, weight, bias, eps)`` or
    ``rms_norm(x, shape, weight, eps)``, in the case's mode."""
    x, shape, weight, bias, residual = _arguments(case, inputs)
    if residual is not None:
        raise Skip(f"{peer} has no fused residual add")
    eps = EPS[case.op]
    if case.op == "layer_norm":
        return _in_mode(case, inputs, lambda: layer_norm(x, shape, weight, bias, eps))
    return _in_mode(case, inputs, lambda: rms_norm(x, shape, weight, eps))


def _liger() -> Provider:
    def build(functional, case, inputs):
        layer_norm = lambda x, shape, weight, bias, eps: functional.liger_layer_norm(x, weight, bias, eps)
        rms_norm = lambda x, shape, weight, eps: functional.liger_rms_norm(x, weight, eps, in_place=False)
        return _without_residual("liger-kernel", case, inputs, layer_norm, rms_norm)

    module, description = "liger_kernel.transformers.functional", "liger_kernel liger_layer_norm / liger_rms_norm"
    return peer_provider("liger", "liger-kernel", module, description, build)


def _apex() -> Provider:
    def build(module, case, inputs):
        layer_norm = lambda x, shape, weight, bias, eps: module.fused_layer_norm_affine(x, weight, bias, shape, eps)
        rms_norm = lambda x, shape, weight, eps: module.fused_rms_norm_affine(x, weight, shape, eps)
        return _without_residual("apex", case, inputs, layer_norm, rms_norm)

    description = "apex fused_layer_norm_affine / fused_rms_norm_affine"
    return peer_provider("apex", "apex", "apex.normalization.fused_layer_norm", description, build)


def _flash_attn() -> Provider:
    def build(module, case, inputs):
        x, _, weight, bias, residual = _arguments(case, inputs)
        rms = case.op == "rms_norm"
        forward = lambda: module.layer_norm_fn(
            x,
            weight,
            None if rms else bias,
            residual=residual,
            eps=EPS[case.op],
            prenorm=residual is not None,
            is_rms_norm=rms,
        )
        return _in_mode(case, inputs, forward)

    module, description = "flash_attn.ops.triton.layer_norm", "flash_attn.ops.triton.layer_norm.layer_norm_fn"
    return peer_provider("flash-attn", "flash-attn", module, description, build)


def _flashinfer() -> Provider:
    def build(norm, case, inputs):
        if case.op != "rms_norm":
            raise Skip("flashinfer has no LayerNorm")
        if case.mode == "bwd":
            raise Skip("flashinfer's norms have no backward")
        x, _, weight, _, residual = _arguments(case, inputs)
        eps = EPS[case.op]
        if residual is None:
            return lambda: norm.rmsnorm(x, weight, eps)
        # fused_add_rmsnorm works in place: on copies, so the shared inputs stay as they are.
        x_copy, residual_copy = x.clone(), residual.clone()
        return lambda: norm.fused_add_rmsnorm(x_copy, residual_copy, weight, eps)

    description = "flashinfer.norm.rmsnorm / fused_add_rmsnorm (forward only)"
    return peer_provider("flashinfer", "flashinfer", "flashinfer.norm", description, build)


def providers(device: torch.device) -> list[Provider]:
    return [
        _ours("cuda"),
        _ours("triton"),
        _torch(),
        _naive(compiled=False),
        _naive(compiled=True),
        _liger(),
        _apex(),
        _flash_attn(),
        _flashinfer(),
    ]


if __name__ == "__main__":
    from .cli import main

    sys.exit(main([TITLE, *sys.argv[1:]]))
