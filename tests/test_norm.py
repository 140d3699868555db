"""fastattn.layer_norm / rms_norm: numerics against the float64 reference (the error-ratio rule of
DESIGN.md §4) over hidden sizes, dtypes and features; determinism; agreement with torch; strides;
bad input; the custom ops (opcheck); the modules.

On the CPU the Triton kernels run under the interpreter with a few rows per case; on a GPU the same
tests take more rows, and the ``slow`` ones add the full grid and a tensor beyond 2^31 elements.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import fastattn
from fastattn import backends, capabilities
from fastattn.testing import FORWARD_FACTOR, GRADIENT_FACTOR, assert_close_to_reference
from fastattn.verify import norm as verify_norm
from fastattn.verify.norm import Problem, forward_backward, full_problem, make_inputs, reports

BACKENDS = backends.FUSED  # the fused backends under test
OPS = ["layer_norm", "rms_norm"]
HIDDEN_SIZES = [1, 3, 100, 1023, 1024, 4097, 65536, 70000]  # row path, looped backward, looped both
DTYPES = capabilities.fused_dtypes("norm")
GPU = torch.cuda.is_available()


def rows_for(hidden: int) -> int:
    """A few rows under the interpreter; enough on a GPU for several programs and partial rows."""
    if GPU:
        return 256 if hidden <= 4097 else 48
    return 4 if hidden <= 1024 else 2


@pytest.fixture(params=BACKENDS)
def backend(request, device):
    reasons = backends.device_reasons(request.param, torch.device(device))
    if reasons:
        pytest.skip(f"{request.param}: {'; '.join(reasons)}")
    return request.param


def check(problem: Problem, backend: str, device):
    failures = [str(r) for r in reports(problem, backend, device) if not r.ok]
    assert not failures, f"{problem}: " + "; ".join(failures)


def run(problem: Problem, backend: str, device, seed: int = 0) -> dict:
    """The op's outputs and gradients on ``backend`` (see ``verify.norm.forward_backward``)."""
    inputs = make_inputs(problem, device, seed)
    return forward_backward(verify_norm.norm_fn(problem, backend), problem, inputs)


# ------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("features", ["none", "affine", "residual"])
@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
@pytest.mark.parametrize("op", OPS)
def test_hidden_sizes(backend, device, op, hidden, features):
    """Every hidden size on each path, with no parameters (fp32), weight and bias (fp16), and
    everything plus a residual (bf16)."""
    shape = (rows_for(hidden), hidden)
    if features == "none":
        problem = Problem(op, shape, dtype=torch.float32)
    elif features == "affine":
        problem = dataclasses.replace(full_problem(op, shape, torch.float16), residual_dtype=None)
    else:
        problem = full_problem(op, shape, torch.bfloat16)
    check(problem, backend, device)


# (hidden, x dtype, fp32 weight and bias, residual_in_fp32): every combination on the row path (1023)
# and with the looped backward (4097); the looped forward (70000) with the mixed-precision setup.
DTYPE_GRID = [
    (hidden, dtype, param_fp32, residual_in_fp32)
    for hidden in (1023, 4097)
    for dtype in DTYPES
    for param_fp32 in (False, True)
    for residual_in_fp32 in (False, True)
] + [(70000, dtype, True, True) for dtype in DTYPES]


def _grid_id(hidden, dtype, param_fp32, residual_in_fp32):
    name = str(dtype).removeprefix("torch.")
    return f"{hidden}-{name}-w_{'fp32' if param_fp32 else name}-s_{'fp32' if residual_in_fp32 else name}"


@pytest.mark.parametrize(
    "hidden, dtype, param_fp32, residual_in_fp32", DTYPE_GRID, ids=[_grid_id(*params) for params in DTYPE_GRID]
)
@pytest.mark.parametrize("op", OPS)
def test_dtype_combinations(backend, device, op, hidden, dtype, param_fp32, residual_in_fp32):
    """x in fp16/bf16/fp32 x weight (and bias) in x's dtype or fp32 x s in x's dtype or fp32 (the
    residual then fp32 too, as a float32 residual stream is)."""
    problem = full_problem(
        op,
        (rows_for(hidden), hidden),
        dtype,
        param_dtype=torch.float32 if param_fp32 else dtype,
        residual_dtype=torch.float32 if residual_in_fp32 else dtype,
        residual_in_fp32=residual_in_fp32,
    )
    check(problem, backend, device)


OPTIONAL_INPUTS = [
    (op, weight, bias, residual)
    for op in OPS
    for weight in (False, True)
    for bias in ((False, True) if op == "layer_norm" else (False,))  # RMSNorm has no bias
    for residual in (False, True)
]


@pytest.mark.parametrize("op, weight, bias, residual", OPTIONAL_INPUTS)
def test_optional_inputs(backend, device, op, weight, bias, residual):
    dtype = torch.float16
    problem = Problem(
        op,
        (rows_for(100), 3, 100),
        dtype=dtype,
        weight_dtype=dtype if weight else None,
        bias_dtype=dtype if bias else None,
        residual_dtype=dtype if residual else None,
    )
    check(problem, backend, device)


@pytest.mark.parametrize("hidden", [4096, 4097])
@pytest.mark.parametrize("op", OPS)
def test_several_steps_per_program(backend, device, op, hidden):
    """Enough rows that each backward program takes several steps, on the row path (4096) and the
    looped one (4097, whose partial dW/dB rows are then read back and added to)."""
    problem = full_problem(op, (40, hidden), torch.bfloat16, param_dtype=torch.float32)
    check(problem, backend, device)


def test_residual_of_another_dtype(backend, device):
    """A bf16 residual with fp16 x: s is fp16, the residual's gradient bf16."""
    problem = full_problem("layer_norm", (rows_for(100), 100), torch.float16, residual_dtype=torch.bfloat16)
    out = run(problem, backend, device)
    assert out["s"].dtype == torch.float16 and out["dresidual"].dtype == torch.bfloat16
    check(problem, backend, device)


@pytest.mark.parametrize("hidden", [100, 4097])
@pytest.mark.parametrize("normalized_ndim", [2, 3])
def test_leading_and_normalized_dims(backend, device, hidden, normalized_ndim):
    """Several leading dims; several normalized dims (flattened into one row)."""
    problem = full_problem("layer_norm", (2, 3, 1, hidden), torch.float32, normalized_ndim=normalized_ndim)
    check(problem, backend, device)
    check(dataclasses.replace(problem, op="rms_norm", bias_dtype=None), backend, device)


@pytest.mark.parametrize("op", OPS)
def test_unused_outputs(backend, device, op):
    """Only s (or only y) feeds the loss: dx = dresidual = ds when y is unused."""
    problem = full_problem(op, (3, 64), torch.float32)
    inputs = make_inputs(problem, device)
    x, r, w = (inputs[k].requires_grad_() for k in ("x", "residual", "weight"))
    b = inputs["bias"].requires_grad_() if op == "layer_norm" else None
    fn = verify_norm.norm_fn(problem, backend)
    _, s = fn(x, (64,), w, b, r)
    dx, dr, dw = torch.autograd.grad(s, (x, r, w), inputs["ds"], allow_unused=True)
    assert torch.equal(dx, inputs["ds"]) and torch.equal(dr, inputs["ds"])
    assert dw is None or not dw.any()
    y, _ = fn(x, (64,), w, b, r)
    gy = torch.autograd.grad(y, (x, r), inputs["dy"])
    ry, _ = verify_norm.norm_fn(problem, "naive")(x, (64,), w, b, r)
    ref = torch.autograd.grad(ry, (x, r), inputs["dy"])
    for ours, expected in zip(gy, ref, strict=True):
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("op", OPS)
def test_no_rows(backend, device, op):
    x = torch.randn(0, 5, 16, device=device, requires_grad=True)
    r = torch.randn(0, 5, 16, device=device, requires_grad=True)
    w = torch.randn(16, device=device, requires_grad=True)
    fn = getattr(fastattn, op)
    y, s = fn(x, 16, w, residual=r, backend=backend)
    assert y.shape == s.shape == x.shape
    (y.sum() + s.sum()).backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("op", OPS)
def test_nan_stays_in_its_row(backend, device, op):
    """A NaN poisons its own row only; finite rows match the run without it bit for bit."""
    x = torch.randn(6, 300, device=device)
    clean = getattr(fastattn, op)(x, 300, backend=backend)
    x[2, 7] = float("nan")
    dirty = getattr(fastattn, op)(x, 300, backend=backend)
    assert dirty[2].isnan().all()
    keep = torch.arange(6, device=device) != 2
    assert torch.equal(dirty[keep], clean[keep])


# ---------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("hidden", [100, 4097, 70000])
@pytest.mark.parametrize("op", OPS)
def test_deterministic(backend, device, op, hidden):
    """Two runs give bitwise-identical outputs and gradients (dW/dB use no atomics). The row counts
    give several backward programs, hence several partial rows to reduce."""
    rows = (2048 if hidden <= 4097 else 256) if GPU else (32 if hidden <= 4097 else 6)
    problem = full_problem(op, (rows, hidden), torch.bfloat16, param_dtype=torch.float32)
    first, second = run(problem, backend, device), run(problem, backend, device)
    for name, value in first.items():
        if value is not None:
            assert torch.equal(value, second[name]), f"{name} differs between two runs"


# ----------------------------------------------------------------------------- strides and views
@pytest.mark.parametrize("hidden", [100, 4097])
@pytest.mark.parametrize("layout", ["row_stride", "transposed_rows", "column_stride", "expanded"])
@pytest.mark.parametrize("op", OPS)
def test_strided_inputs(backend, device, op, layout, hidden):
    """Views give exactly what their contiguous copies give: strided rows are read in place,
    the rest copied; upstream gradients are strided too."""
    n = hidden
    if layout == "row_stride":  # rows with a stride: a slice of wider rows
        x = torch.randn(4, 3, n + 5, device=device)[..., 2 : n + 2]
        r = torch.randn(4, 3, 2 * n, device=device)[..., ::2][..., :n] if n > 1 else None
    elif layout == "transposed_rows":  # leading dims swapped: one row stride cannot describe them
        x = torch.randn(3, 4, n, device=device).transpose(0, 1)
        r = torch.randn(3, 4, n, device=device).transpose(0, 1)
    elif layout == "column_stride":  # last dim not contiguous
        x = torch.randn(4, n, 3, device=device).transpose(1, 2)
        r = torch.randn(4, n, 3, device=device).transpose(1, 2)
    else:  # stride-0 rows
        x = torch.randn(1, 1, n, device=device).expand(4, 3, n)
        r = torch.randn(4, 1, n, device=device).expand(4, 3, n)
    w = torch.randn(2 * n, device=device)[::2]
    b = torch.randn(n, device=device) if op == "layer_norm" else None
    dy = torch.randn(n, 4, 3, device=device).permute(1, 2, 0)
    ds = torch.randn(1, 3, n, device=device).expand(4, 3, n)

    def forward_backward_of(*tensors):
        leaves = [t.detach().requires_grad_() if t is not None else None for t in tensors]
        xx, rr, ww, bb = leaves
        extra = dict(residual=rr, backend=backend)
        if op == "layer_norm":
            y, s = fastattn.layer_norm(xx, n, ww, bb, **extra)
        else:
            y, s = fastattn.rms_norm(xx, n, ww, **extra)
        wanted = [t for t in leaves if t is not None]
        return [y, s, *torch.autograd.grad((y, s), wanted, (dy, ds))]

    strided = forward_backward_of(x, r, w, b)
    contiguous = forward_backward_of(*(t.contiguous() if t is not None else None for t in (x, r, w, b)))
    for index, (a, c) in enumerate(zip(strided, contiguous, strict=True)):
        assert torch.equal(a, c), f"output {index} differs between the {layout} view and its copy"


# ---------------------------------------------------------------------------- agreement with torch
TORCH_AGREEMENT = [
    (normalized_shape, eps, torch.float32)
    for normalized_shape in ((37,), (3, 5), (2, 3, 4))
    for eps in (0.0, 1e-12, 0.1, 3.0)
] + [((3, 5), 1e-5, torch.float16), ((3, 5), 1e-5, torch.bfloat16), ((1000,), 0.5, torch.bfloat16)]


# eps = 0 makes rstd = 1/0 in the padding rows of a tile (masked, never stored); numpy says so.
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize(
    "normalized_shape, eps, dtype",
    TORCH_AGREEMENT,
    ids=[f"{list(shape)}-eps{eps}-{str(dtype).removeprefix('torch.')}" for shape, eps, dtype in TORCH_AGREEMENT],
)
@pytest.mark.parametrize("op", OPS)
def test_matches_torch(backend, device, op, normalized_shape, eps, dtype):
    """On inputs torch accepts we are at least as close to the exact answer as torch (error-ratio rule
    with torch as the plain result), for y and every gradient."""
    shape = (5, *normalized_shape)
    x = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype)
    w = torch.randn(normalized_shape, device=device, dtype=dtype)
    b = torch.randn(normalized_shape, device=device, dtype=dtype)
    dy = torch.randn(shape, device=device, dtype=dtype)

    def grads(fn, *tensors):
        leaves = [t.detach().requires_grad_() for t in tensors]
        y = fn(*leaves)
        return [y.detach(), *torch.autograd.grad(y, leaves, dy.to(y.dtype))]

    if op == "layer_norm":
        inputs = (x, w, b)
        ours = grads(lambda x, w, b: fastattn.layer_norm(x, normalized_shape, w, b, eps, backend=backend), *inputs)
        torchs = lambda x, w, b: F.layer_norm(x, normalized_shape, w, b, eps)
    else:
        inputs = (x, w)
        ours = grads(lambda x, w: fastattn.rms_norm(x, normalized_shape, w, eps, backend=backend), *inputs)
        torchs = lambda x, w: F.rms_norm(x, normalized_shape, w, eps)
    theirs = grads(torchs, *inputs)
    exact = grads(torchs, *(t.double() for t in inputs))
    for index, (a, t, e) in enumerate(zip(ours, theirs, exact, strict=True)):
        factor = FORWARD_FACTOR if index == 0 else GRADIENT_FACTOR
        assert_close_to_reference(f"output {index}", a, e, t, factor=factor)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_default_eps_is_torchs(backend, device, dtype):
    """eps=None means torch.finfo(x.dtype).eps, as in torch.nn.functional.rms_norm."""
    x = torch.randn(4, 64, device=device, dtype=dtype) * 1e-3
    ours = fastattn.rms_norm(x, 64, eps=None, backend=backend)
    exact = fastattn.reference.rms_norm(x.double(), 64, eps=torch.finfo(dtype).eps)
    plain = fastattn.reference.rms_norm(x, 64, eps=torch.finfo(dtype).eps)
    assert_close_to_reference("y", ours, exact, plain, factor=FORWARD_FACTOR)


# ------------------------------------------------------------------------------ the other backends
@pytest.mark.parametrize("backend_name", ["torch", "naive"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("op", OPS)
def test_torch_and_naive_backends(device, op, dtype, backend_name):
    """The plain-PyTorch backends meet the same contract (dtypes of y and s, accuracy)."""
    fp32 = torch.float32
    for problem in (
        full_problem(op, (4, 3, 100), dtype),
        full_problem(op, (4, 100), dtype, param_dtype=fp32, residual_dtype=fp32, residual_in_fp32=True),
        Problem(op, (4, 100), dtype=dtype),
    ):
        check(problem, backend_name, device)


def test_auto_falls_back_for_float64(device):
    x = torch.randn(3, 8, dtype=torch.float64, device=device)
    y = fastattn.layer_norm(x, 8)
    torch.testing.assert_close(y, F.layer_norm(x, (8,)))


# ------------------------------------------------------------------------------------ bad input
def _x(*shape, **kw):
    return torch.randn(*(shape or (2, 8)), **kw)


META = "meta"  # a second device on any machine
BAD_INPUTS = [
    ("integer x", lambda f: f(_x().long(), 8), TypeError, "x must be a floating-point tensor"),
    ("not a tensor", lambda f: f([[1.0] * 8], 8), TypeError, "x must be a torch.Tensor"),
    ("shape mismatch", lambda f: f(_x(2, 8), 7), ValueError, "trailing dimensions of x must equal"),
    ("shape too long", lambda f: f(_x(8), (2, 8)), ValueError, "trailing dimensions of x must equal"),
    ("empty shape", lambda f: f(_x(), ()), ValueError, "at least one dimension"),
    ("bad shape type", lambda f: f(_x(), 8.0), TypeError, "normalized_shape must be"),
    ("weight shape", lambda f: f(_x(), 8, torch.randn(7)), ValueError, r"weight must have shape \[8\]"),
    ("weight dtype", lambda f: f(_x(), 8, torch.ones(8, dtype=torch.int32)), TypeError, "weight must be a float"),
    ("weight device", lambda f: f(_x(), 8, torch.ones(8, device=META)), ValueError, "weight must be on x's device"),
    ("residual shape", lambda f: f(_x(), 8, residual=_x(3, 8)), ValueError, r"residual must have shape \[2, 8\]"),
    ("residual device", lambda f: f(_x(), 8, residual=_x(device=META)), ValueError, "residual must be on x's"),
    ("residual dtype", lambda f: f(_x(), 8, residual=_x().bool()), TypeError, "residual must be a floating"),
    ("eps nan", lambda f: f(_x(), 8, None, eps=float("nan")), ValueError, "eps must be a finite number"),
    ("eps string", lambda f: f(_x(), 8, None, eps="1e-5"), TypeError, "eps must be a number"),
    ("fp32 flag", lambda f: f(_x(), 8, residual=_x(), residual_in_fp32=1), TypeError, "residual_in_fp32 must be"),
    ("unknown backend", lambda f: f(_x(), 8, backend="fast"), ValueError, "backend must be one of"),
    ("cuda backend", lambda f: f(_x(), 8, backend="cuda"), NotImplementedError, "cuda"),
]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(op, call, error, message):
    with pytest.raises(error, match=message):
        call(getattr(fastattn, op))


def test_bias_device_mismatch():
    with pytest.raises(ValueError, match="bias must be on x's device"):
        fastattn.layer_norm(_x(), 8, torch.ones(8), torch.zeros(8, device="meta"))


def test_explicit_backend_that_cannot_serve(device):
    """float64 is not a fused dtype: the error names the backend and the reason."""
    if backends.platform_reasons("triton"):
        pytest.skip("triton cannot run here")
    with pytest.raises(NotImplementedError, match="triton: x dtype torch.float64 is not supported"):
        fastattn.layer_norm(torch.randn(2, 8, dtype=torch.float64, device=device), 8, backend="triton")
    with pytest.raises(NotImplementedError, match="cuda: "):  # CPU tensors: never the cuda backend's
        fastattn.rms_norm(torch.randn(2, 8), 8, backend="cuda")


# ------------------------------------------------------------------------------- the custom ops
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_opcheck(backend, device, rms, with_residual):
    """torch.library.opcheck (schema, fake tensors, autograd registration, AOT dispatch) with strided
    rows, a transposed residual and a strided weight; and the backward op with a stride-0 gradient."""
    n = 24
    x = torch.randn(3, 4, n + 8, device=device)[..., 4 : n + 4].requires_grad_()
    residual = torch.randn(4, 3, n, device=device).transpose(0, 1).requires_grad_() if with_residual else None
    weight = torch.randn(2 * n, device=device)[::2].requires_grad_()
    bias = None if rms else torch.randn(n, device=device, dtype=torch.float16).requires_grad_()
    args = (x, residual, weight, bias, 1e-5, rms, with_residual)
    torch.library.opcheck(torch.ops.fastattn.norm_fwd_triton.default, args)
    y, s, mean, rstd = torch.ops.fastattn.norm_fwd_triton(*args)
    dy = torch.randn(1, 1, n, device=device).expand(3, 4, n)
    ds = torch.randn(3, 4, n, device=device, dtype=s.dtype).transpose(0, 1).contiguous().transpose(0, 1)
    detached = [t.detach() if t is not None else None for t in (x, residual, weight, bias)]
    bwd_args = (dy, ds if with_residual else None, *detached, mean, rstd, rms)
    torch.library.opcheck(torch.ops.fastattn.norm_bwd_triton.default, bwd_args)


def test_torch_compile(backend, device):
    """torch.compile traces the custom op through its fake implementation, in one graph."""
    x = torch.randn(4, 32, device=device, requires_grad=True)
    r = torch.randn(4, 32, device=device)
    w = torch.randn(32, device=device, requires_grad=True)

    def step(x, r, w):
        y, s = fastattn.rms_norm(x, 32, w, residual=r, backend=backend)
        return (y * s).sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    expected = step(x, r, w)
    expected_grads = torch.autograd.grad(expected, (x, w))
    got = compiled(x, r, w)
    torch.testing.assert_close(got, expected)
    for ours, theirs in zip(torch.autograd.grad(got, (x, w)), expected_grads, strict=True):
        torch.testing.assert_close(ours, theirs)


# ------------------------------------------------------------------------------------- the modules
@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False)])
def test_layer_norm_module_state_dict(backend, device, affine):
    elementwise_affine, bias = affine
    options = dict(elementwise_affine=elementwise_affine, bias=bias, device=device)
    theirs = torch.nn.LayerNorm((3, 16), eps=1e-4, **options)
    ours = fastattn.nn.LayerNorm.configured_like(theirs, device=device, backend=backend)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 5, 3, 16, device=device)
    torch.testing.assert_close(ours(x), theirs(x))
    theirs.load_state_dict(fastattn.nn.LayerNorm((3, 16), **options).state_dict())
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("eps", [None, 1e-3])
@pytest.mark.parametrize("elementwise_affine", [True, False])
def test_rms_norm_module_state_dict(backend, device, eps, elementwise_affine):
    options = dict(eps=eps, elementwise_affine=elementwise_affine, device=device)
    theirs = torch.nn.RMSNorm(16, **options)
    ours = fastattn.nn.RMSNorm.configured_like(theirs, device=device, backend=backend)
    if elementwise_affine:
        with torch.no_grad():
            theirs.weight.normal_()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 5, 16, device=device)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm"])
def test_module_residual(backend, device, module):
    """forward(x, residual) is the fused Add & Norm: (norm(x + residual), x + residual)."""
    ours = getattr(fastattn.nn, module)(32, 1e-5, device=device, dtype=torch.bfloat16, backend=backend)
    theirs = getattr(torch.nn, module)(32, 1e-5, device=device, dtype=torch.float32)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 32, device=device, dtype=torch.bfloat16)
    r = torch.randn(3, 32, device=device, dtype=torch.float32)
    y, s = ours(x, r, residual_in_fp32=True)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    torch.testing.assert_close(s, x.float() + r)
    torch.testing.assert_close(y, theirs(x.float() + r).to(torch.bfloat16))
    assert "backend=" in repr(ours)
    with pytest.raises(ValueError, match="backend must be one of"):
        getattr(fastattn.nn, module)(32, backend="fastest")


# ------------------------------------------------------------------------------- GPU-only, large
@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_verify_grid(backend, device, op):
    """The full verify grid (every size, dtype and feature combination, many rows)."""
    failures = []
    for case in verify_norm.cases(torch.device(device), full=True):
        if case.op == op:
            row = case.run(backend, torch.device(device))
            if not row.ok:
                failures.append(f"{row.case} [{row.dtype}]: {row.detail}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_beyond_int32_offsets(backend, device, op):
    """A 2^31 + 2^16 element tensor (row offsets beyond int32): the last rows' y and dx are right."""
    n = 65536
    rows = 2**31 // n + 1
    x = torch.randn(rows, n, device=device, dtype=torch.float16).requires_grad_()
    dy = torch.randn(rows, n, device=device, dtype=torch.float16)
    y = getattr(fastattn, op)(x, n, backend=backend)
    (dx,) = torch.autograd.grad(y, x, dy)
    tail = slice(rows - 2, rows)

    def tail_outputs(dtype):
        leaf = x[tail].detach().to(dtype).requires_grad_()
        out = getattr(fastattn.reference, op)(leaf, n)
        return out, *torch.autograd.grad(out, leaf, dy[tail].to(dtype))

    exact, plain = tail_outputs(torch.float64), tail_outputs(torch.float16)
    assert_close_to_reference("y, last rows", y[tail], exact[0], plain[0], factor=FORWARD_FACTOR)
    assert_close_to_reference("dx, last rows", dx[tail], exact[1], plain[1], factor=GRADIENT_FACTOR)


@pytest.mark.parametrize("backend", ["cuda", "triton", "torch", "naive"])
def test_double_backward_works_or_says_which_backend_to_use(backend, device):
    """Differentiating a gradient (create_graph=True, then backward through it, as a gradient penalty
    does): PyTorch's own ops support it; the fused kernels refuse with a clear error naming what works."""
    reasons = backends.device_reasons(backend, torch.device(device))
    if reasons:
        pytest.skip(f"{backend}: {'; '.join(reasons)}")
    x = torch.randn(4, 8, device=device, requires_grad=True)
    weight = torch.randn(8, device=device, requires_grad=True)
    (dx,) = torch.autograd.grad(
        (fastattn.layer_norm(x, (8,), weight, backend=backend) ** 2).sum(), x, create_graph=True
    )
    if backend in ("cuda", "triton"):
        with pytest.raises(NotImplementedError, match="double backward.*backend='torch'"):
            dx.square().sum().backward()
        return
    dx.square().sum().backward()
    exact_x = x.detach().double().requires_grad_()
    exact_weight = weight.detach().double().requires_grad_()
    y = torch.nn.functional.layer_norm(exact_x, (8,), exact_weight, eps=1e-5)
    (exact_dx,) = torch.autograd.grad((y**2).sum(), exact_x, create_graph=True)
    exact_dx.square().sum().backward()
    torch.testing.assert_close(weight.grad.double(), exact_weight.grad, atol=1e-4, rtol=1e-4)
