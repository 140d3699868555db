"""The CUDA norm, sampling and attention kernels of csrc/, run on the CPU, so that every CI run checks
their logic.

``cuda_emulator/fakecuda.h`` emulates the CUDA features these kernels use (threads, __syncthreads,
__syncwarp, warp shuffles, dynamic and static shared memory, cp.async with its commit and wait groups;
with ``emulated_ptx.h``, the tensor-core kernels' mma.sync and ldmatrix; its header lists what it does
not emulate), and ``racecheck.h`` checks every kernel's every shared-memory access for races. The
drivers in ``cuda_emulator/`` include the kernels' sources unchanged; only the
``kernel<<<grid, block, smem, stream>>>(args)`` launches and the ``__shared__`` declarations are
rewritten, into the build directory. ``cuda_emulator/mutate.py`` shows that these tests fail when bugs
are put into the kernels.

Checked: the norms' outputs and gradients against the float64 reference under the rule of
``fastattn.testing`` (as tests/test_norm.py checks the other backends), on each kernel path; the sampling
kernel's kept set against the Triton kernel's and the reference's, its draws against the kept set; the
Philox words against Triton's ``tl.randint4x``; the attention kernels' out, lse, dq, dk, dv and dsinks
(float32: the SIMT kernels; float16 / bfloat16: the tensor-core kernels of every head-dim bucket's tile
configuration, launched through the extension's dispatcher) with sliding windows, softcap, ALiBi, sinks,
dropout and packed sequences against the reference; the split-KV decode kernels; the race checker on
kernels with and without races.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl
from torch import Tensor

from fastattn import reference
from fastattn.kernels import sampling as triton_sampling
from fastattn.testing import assert_close_to_reference
from fastattn.verify.norm import Problem, compare, make_inputs

EMULATOR = Path(__file__).resolve().parent / "cuda_emulator"
CSRC = Path(__file__).resolve().parents[1] / "csrc"
# The sources rewritten for the emulator: kernel launches, dynamic shared memory.
REWRITTEN_SOURCES = (
    "norm/norm_launch.cu",
    "norm/norm_kernels.cuh",
    "sampling/sampling_launch.cu",
    "sampling/sampling_kernels.cuh",
    "attention/attention_launch.cu",  # the dispatcher: the driver runs the kernels through it
    "attention/attention_run.cuh",
    "attention/attention_preprocess.cuh",
    "attention/attention_simt.cuh",
    "attention/attention_decode.cuh",
    "attention/attention_fwd.cuh",  # the tensor-core kernels: mma.sync, ldmatrix, cp.async by emulated_ptx.h
    "attention/attention_bwd.cuh",
)
DRIVERS = ("norm_driver", "sample_driver", "philox_driver", "attention_driver", "decode_driver", "race_driver")
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # csrc/common/types.h
ABSENT = -1  # the drivers' dtype code of a tensor the case has not


# ------------------------------------------------------------------------------------------- build
LAUNCH = re.compile(r"(?P<kernel>[\w:]+)<<<(?P<config>.*?)>>>\((?P<args>.*?)\);", re.DOTALL)


def split_arguments(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses, brackets and braces."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


def rewrite_launches(source: str) -> str:
    """Every ``kernel<<<grid, block[, smem, stream]>>>(args);`` as ``fake_launch(kernel, dim3(grid),
    dim3(block), smem, args);`` (the launch synchronous)."""

    def fake_launch(match: re.Match) -> str:
        grid, block, *rest = split_arguments(match["config"])
        smem = rest[0] if rest else "0"
        return f"fake_launch({match['kernel']}, dim3({grid}), dim3({block}), {smem}, {match['args']});"

    rewritten, count = LAUNCH.subn(fake_launch, source)
    if count != source.count("<<<"):
        raise AssertionError(f"rewrote {count} of {source.count('<<<')} kernel launches: a launch of a new form")
    return rewritten


DYNAMIC_SHARED = re.compile(r"extern __shared__ (?:__align__\(\d+\) )?(?P<type>[\w ]+?) (?P<name>\w+)\[\];")


def rewrite_dynamic_shared(source: str) -> str:
    """Every ``extern __shared__ T name[];`` as a pointer to the emulated launch's dynamic shared memory."""
    return DYNAMIC_SHARED.sub(
        lambda match: (
            f"{match['type']}* const {match['name']} = static_cast<{match['type']}*>(fakecuda::dynamic_shared());"
        ),
        source,
    )


STATIC_SHARED = re.compile(r"__shared__ (?P<type>[\w:<>]+) (?P<name>\w+)(?P<dims>(?:\[[^\]]+\])*);")


def rewrite_static_shared(source: str) -> str:
    """Every ``__shared__ T name[dims];`` as a reference to a variable of fakecuda's static shared arena
    (the lambda makes each declaration a variable of its own)."""
    rewritten = STATIC_SHARED.sub(
        lambda match: f"auto& {match['name']} = fakecuda::static_shared<{match['type']}{match['dims']}>([] {{}});",
        source,
    )
    left = [line for line in rewritten.splitlines() if "__shared__" in line and "extern __shared__" not in line]
    if left:
        raise AssertionError(f"__shared__ declarations of a new form: {left}")
    return rewritten


def rewrite(source: str) -> str:
    return rewrite_static_shared(rewrite_dynamic_shared(rewrite_launches(source)))


# -fsanitize=thread: GCC calls a hook on every load and store, which racecheck.h defines to check shared
# memory for races (the object is linked without the sanitizer's runtime); -g1 and -no-pie let it name
# the source lines.
RACECHECK_FLAGS = ["-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0", "-g1"]


def build_drivers(csrc: Path, build: Path) -> dict[str, Path]:
    """Compiles the drivers against the sources in ``csrc`` into ``build``; fails the test on an error."""
    for name in REWRITTEN_SOURCES:
        (build / name).parent.mkdir(parents=True, exist_ok=True)
        (build / name).write_text(rewrite((csrc / name).read_text()))
    # The rewritten files (-I build) shadow csrc's; the stubs stand in for the CUDA headers.
    flags = [
        "-O2",
        "-std=c++20",
        *RACECHECK_FLAGS,
        "-Wall",
        "-Wno-unknown-pragmas",
        "-DFASTATTN_EMULATED_PTX",  # mma.cuh: emulated_ptx.h in place of the inline PTX
        "-fno-strict-aliasing",  # as nvcc: mma.cuh reads a __half2 as a uint32_t
        f"-I{EMULATOR / 'stub'}",
        f"-I{EMULATOR}",
        f"-I{build}",
        f"-I{csrc}",
    ]
    compilers = {
        name: subprocess.Popen(
            [
                "sh",
                "-c",
                shlex.join(["g++", *flags, "-c", str(EMULATOR / f"{name}.cpp"), "-o", f"{build / name}.o"])
                + " && "
                + shlex.join(["g++", "-no-pie", f"{build / name}.o", "-o", str(build / name)]),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in DRIVERS
    }  # in parallel: a few seconds each
    messages = {name: compiler.communicate()[1] for name, compiler in compilers.items()}  # read while they run:
    # a compiler whose errors fill the pipe would otherwise wait for a reader forever
    errors = [f"{name}:\n{messages[name]}" for name, compiler in compilers.items() if compiler.returncode != 0]
    if errors:
        pytest.fail("the emulated CUDA drivers do not compile:\n" + "\n".join(errors), pytrace=False)
    return {name: build / name for name in DRIVERS}


@pytest.fixture(scope="module")
def drivers(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the emulated CUDA kernels are built with the host's C++20 compiler")
    return build_drivers(CSRC, tmp_path_factory.mktemp("cuda_emulator"))


def run_driver(driver: Path, stdin: bytes) -> bytes:
    result = subprocess.run([str(driver)], input=stdin, capture_output=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"{driver.name} exited with {result.returncode}: {result.stderr.decode()}")
    return result.stdout


# ------------------------------------------------------------------------------------ race checker
# race_driver.cpp's kernels: (kernel, the hazard reported or None, the source lines of the two accesses).
RACES = [
    ("neighbour_without_barrier", "write-after-read", ("race_driver.cpp:24", "race_driver.cpp:23")),
    ("neighbour_after_syncthreads", None, ()),
    ("write_after_read", "write-after-read", ("race_driver.cpp:41", "race_driver.cpp:42")),
    ("in_warp_after_syncwarp", None, ()),
    ("in_warp_after_shuffle", "read-after-write", ("race_driver.cpp:56", "race_driver.cpp:57")),
    ("across_warps_after_syncwarp", "write-after-read", ("race_driver.cpp:65", "race_driver.cpp:63")),
    ("static_shared_write_write", "write-after-write", ("race_driver.cpp:71", "race_driver.cpp:72")),
    ("cp_async_read_before_wait", "cp.async in flight", ("race_driver.cpp:81", "race_driver.cpp:83")),
    ("cp_async_read_after_wait", None, ()),
    ("cp_async_wait_leaves_newest", "cp.async in flight", ("race_driver.cpp:101", "race_driver.cpp:105")),
]


@pytest.mark.parametrize(("kernel", "hazard", "lines"), RACES, ids=[race[0] for race in RACES])
def test_race_checker(drivers, kernel, hazard, lines):
    """The race checker (racecheck.h) that every emulated kernel runs under reports the races of
    race_driver.cpp's kernels, naming the kernel, both threads and both source lines, and passes their
    race-free twins."""
    result = subprocess.run([str(drivers["race_driver"]), kernel], capture_output=True, timeout=60, text=True)
    if hazard is None:
        assert result.returncode == 0, f"{kernel}: a race reported where there is none:\n{result.stderr}"
        return
    assert result.returncode != 0, f"{kernel}: the race went unreported"
    report = result.stderr
    assert f"racecheck: {hazard} hazard" in report, report
    assert f"{kernel}(" in report, f"the report does not name the kernel:\n{report}"
    first, second = (report.index(line) for line in lines)  # in this order: the earlier access first
    assert first < second, f"the accesses' lines {lines} in the wrong order:\n{report}"
    assert report.count("thread (") == 2, report


def raw(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class Unpacker:
    """Reads consecutive tensors out of a driver's output."""

    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def take(self, dtype: torch.dtype, *shape: int) -> Tensor:
        size = math.prod(shape) * dtype.itemsize
        chunk = bytearray(self.data[self.offset : self.offset + size])
        if len(chunk) != size:
            raise AssertionError(f"driver output ends at byte {len(self.data)}, expected {self.offset + size}")
        self.offset += size
        return torch.frombuffer(chunk, dtype=dtype).reshape(shape)


# ------------------------------------------------------------------------------------------- norms
@dataclasses.dataclass(frozen=True)
class Layout:
    """Where x's and the residual's rows lie in their buffers (elements); None: contiguous."""

    x_offset: int = 0
    x_row_stride: int | None = None
    residual_offset: int = 0
    residual_row_stride: int | None = None


def strided_storage(t: Tensor, offset: int, row_stride: int) -> Tensor:
    """A buffer holding ``t``'s rows at ``offset + r * row_stride``."""
    rows, cols = t.shape
    storage = torch.zeros(offset + (rows - 1) * row_stride + cols, dtype=t.dtype)
    storage.as_strided((rows, cols), (row_stride, 1), offset).copy_(t)
    return storage


def emulated_norm(driver: Path, problem: Problem, inputs: dict, layout: Layout):
    """The emulated kernels' forward and backward on ``inputs``: ({"y", "s", "dx", "dresidual",
    "dweight", "dbias"} as verify.norm.forward_backward gives them, (vectorized, dW/dB splits))."""
    rows, cols = problem.shape
    x, residual, weight, bias = (inputs[name] for name in ("x", "residual", "weight", "bias"))
    s_dtype = torch.float32 if residual is not None and problem.residual_in_fp32 else problem.dtype
    x_stride = layout.x_row_stride or cols
    residual_stride = layout.residual_row_stride or cols

    def code(t):
        return ABSENT if t is None else DTYPE_CODES[t.dtype]

    header = struct.pack(
        "<13qd",
        int(problem.op == "rms_norm"),
        rows,
        cols,
        code(x),
        layout.x_offset,
        x_stride,
        code(residual),
        layout.residual_offset,
        residual_stride,
        code(weight),
        code(bias),
        DTYPE_CODES[s_dtype],
        SM_COUNT,
        problem.eps,
    )  # NormCase of norm_driver.cpp
    buffers = [strided_storage(x, layout.x_offset, x_stride)]
    if residual is not None:
        buffers.append(strided_storage(residual, layout.residual_offset, residual_stride))
    buffers += [t for t in (weight, bias) if t is not None] + [inputs["dy"]]
    if residual is not None:
        buffers.append(inputs["ds"].to(s_dtype))
    out = Unpacker(run_driver(driver, header + b"".join(raw(t) for t in buffers)))

    vec_fwd, vec_bwd, splits = out.take(torch.int64, 3).tolist()
    result = {"y": out.take(problem.dtype, rows, cols)}
    result["s"] = out.take(s_dtype, rows, cols) if residual is not None else None
    out.take(torch.float32, rows * (1 if problem.op == "rms_norm" else 2))  # mean, rstd: checked through y
    result["dx"] = out.take(problem.dtype, rows, cols)
    result["dresidual"] = out.take(residual.dtype, rows, cols) if residual is not None else None
    result["dweight"] = out.take(weight.dtype, cols) if weight is not None else None
    result["dbias"] = out.take(bias.dtype, cols) if bias is not None else None
    assert vec_fwd == vec_bwd
    return result, (bool(vec_fwd), splits)


def norm_problem(op, rows, cols, dtype, *, weight=None, bias=None, residual=None, residual_in_fp32=False):
    return Problem(
        op,
        (rows, cols),
        dtype=dtype,
        weight_dtype=weight,
        bias_dtype=bias,
        residual_dtype=residual,
        residual_in_fp32=residual_in_fp32,
        eps=1e-5 if op == "layer_norm" else 1e-6,
    )


f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
SM_COUNT = 132  # an H100's: with norm_bwd_splits, it sets how many partials dW/dB are summed from
# csrc/norm/norm_launch.cu: one warp per row up to 1024 columns, one block per row with the row in
# registers up to 16384, one block per row re-reading the row beyond. Vectorized (16-byte) accesses
# need cols % 8 == 0 and 16-byte aligned rows.
# (id, problem, layout, vectorized, dW/dB partials or None)
NORM_CASES = [
    ("warp-plain", norm_problem("layer_norm", 9, 100, f32), Layout(), False, None),
    ("warp-1024", norm_problem("layer_norm", 9, 1024, f16, weight=f16, bias=f16, residual=f16), Layout(), True, 1),
    ("warp-1-col", norm_problem("rms_norm", 5, 1, f32, weight=f32), Layout(), False, 1),
    (
        "warp-mixed",
        norm_problem("layer_norm", 6, 64, bf16, weight=f32, bias=f32, residual=f32, residual_in_fp32=True),
        Layout(),
        True,
        1,
    ),
    (
        "block-1025",
        norm_problem("rms_norm", 3, 1025, bf16, weight=bf16, residual=f32, residual_in_fp32=True),
        Layout(),
        False,
        1,
    ),
    ("block-16384", norm_problem("layer_norm", 2, 16384, bf16, weight=f32, bias=bf16), Layout(), True, 1),
    ("stream-16392", norm_problem("rms_norm", 2, 16392, f16, residual=f16), Layout(), True, None),
    ("stream-20001", norm_problem("layer_norm", 2, 20001, f32, weight=f32, residual=bf16), Layout(), False, 1),
    # strided rows that stay aligned, then rows that start off the 16-byte grid
    (
        "strided",
        norm_problem("layer_norm", 5, 256, f16, weight=f16, bias=f16, residual=f16),
        Layout(x_row_stride=264, residual_row_stride=512),
        True,
        1,
    ),
    (
        "misaligned",
        norm_problem("rms_norm", 5, 256, f16, weight=f16, residual=bf16),
        Layout(x_offset=1, x_row_stride=259, residual_offset=3, residual_row_stride=300),
        False,
        1,
    ),
    (
        "misaligned-block",
        norm_problem("layer_norm", 3, 2048, f32, weight=f32, bias=f32, residual=f32),
        Layout(x_offset=2, x_row_stride=2050, residual_offset=4),
        False,
        1,
    ),
    # dW/dB summed from several partials, of row counts that are no multiple of the 8 rows a block steps by
    ("partials-65", norm_problem("layer_norm", 65, 40, f32, weight=f32, bias=f32), Layout(), True, 2),
    ("partials-200", norm_problem("rms_norm", 200, 72, bf16, weight=bf16, residual=bf16), Layout(), True, 4),
    ("partials-block", norm_problem("layer_norm", 130, 1032, f16, weight=f16, bias=f32), Layout(), True, 3),
]


@pytest.mark.parametrize(
    ("problem", "layout", "vectorized", "partials"),
    [case[1:] for case in NORM_CASES],
    ids=[case[0] for case in NORM_CASES],
)
def test_norm(drivers, problem, layout, vectorized, partials):
    """y, s and every gradient against the float64 reference: the rule and floors of verify.norm.reports."""
    inputs = make_inputs(problem, "cpu", seed=0)
    ours, (vec, splits) = emulated_norm(drivers["norm_driver"], problem, inputs, layout)
    assert vec == vectorized, f"{problem}: vectorized path {vec}, expected {vectorized}"
    assert partials is None or splits == partials, f"{problem}: {splits} dW/dB partials, expected {partials}"
    failures = [str(report) for report in compare(problem, inputs, ours) if not report.ok]
    assert not failures, f"{problem}: " + "; ".join(failures)


# ---------------------------------------------------------------------------------------- sampling
@dataclasses.dataclass
class SampleBatch:
    logits: Tensor  # (rows, vocab), possibly a strided view
    temperature: Tensor
    top_k: Tensor
    top_p: Tensor
    min_p: Tensor
    seeds: Tensor

    def __str__(self) -> str:
        return f"{tuple(self.logits.shape)} {str(self.logits.dtype).removeprefix('torch.')}"

    def row(self, r: int) -> str:
        return (
            f"row {r} (T={self.temperature[r].item():g}, k={self.top_k[r].item()}, p={self.top_p[r].item():g}, "
            f"min_p={self.min_p[r].item():g})"
        )


LOGIT_KINDS = (
    "randn",
    "ties",
    "few-values",
    "half-neginf",
    "one-finite",
    "all-neginf",
    "nan",
    "posinf",
    "constant",
    "adjacent",
)
# Per-row (temperature, top_k as a fraction of the vocabulary or a count, top_p, min_p).
ROW_PARAMETERS = [
    (0.0, 1.0, 1.0, 0.0),  # greedy
    (1.0, 1.0, 1.0, 0.0),  # plain
    (0.7, 1, 1.0, 0.0),
    (1.3, 5, 0.9, 0.0),
    (1.0, 50, 1.0, 0.05),
    (1.0, 0.5, 0.5, 0.0),
    (0.5, 1.0, 0.9, 0.1),
    (1.0, 3, 0.3, 0.0),
    (2.0, 1.0, 0.999, 0.0),
    (1.0, 2, 0.1, 0.5),
    (1.0, 10**9, 0.95, 0.01),
    (1e-30, 1.0, 0.8, 0.0),  # x / T overflows to +-inf
]


def make_logits(kind: str, vocab: int, generator: torch.Generator) -> Tensor:
    x = torch.randn(vocab, generator=generator) * 3
    if kind == "ties":
        x = (x * 2).round() / 2
    elif kind == "few-values":
        x = torch.randint(0, 4, (vocab,), generator=generator).float()
    elif kind == "half-neginf":
        x[torch.rand(vocab, generator=generator) < 0.5] = -torch.inf
    elif kind == "one-finite":
        x[:] = -torch.inf
        x[vocab // 2] = 1.0
    elif kind == "all-neginf":
        x[:] = -torch.inf
    elif kind == "nan":
        x[vocab // 3] = torch.nan
    elif kind == "posinf":
        x[:: max(1, vocab // 5)] = torch.inf
    elif kind == "constant":
        x[:] = 0.25
    elif kind == "adjacent":  # half the tokens on 64 consecutive float32 values (ulp 2^-19 at 20) above the rest:
        # the searches span ~2^31 keys and end among keys one apart, so their last passes decide
        cluster = torch.rand(vocab, generator=generator) < 0.5
        x[cluster] = 20 + torch.randint(0, 64, (int(cluster.sum()),), generator=generator).float() * 2**-19
    return x


def sample_batch(vocab: int, dtype: torch.dtype, shift: int, device) -> SampleBatch:
    """One row per entry of ROW_PARAMETERS, row r of kind LOGIT_KINDS[(r + shift) % len]; a strided view
    of a wider buffer."""
    generator = torch.Generator().manual_seed(vocab * 31 + shift)
    rows = len(ROW_PARAMETERS)
    logits = torch.stack(
        [make_logits(LOGIT_KINDS[(r + shift) % len(LOGIT_KINDS)], vocab, generator) for r in range(rows)]
    )
    wide = torch.zeros(rows, vocab + 5, dtype=dtype, device=device)
    wide[:, :vocab] = logits.to(dtype)
    temperature, top_k, top_p, min_p = zip(*ROW_PARAMETERS, strict=True)
    top_k = [max(1, round(k * vocab)) if isinstance(k, float) else k for k in top_k]
    seeds = torch.randint(-(2**63), 2**63 - 1, (rows,), dtype=torch.int64, generator=generator)
    return SampleBatch(
        wide[:, :vocab],
        torch.tensor(temperature, dtype=torch.float32, device=device),
        torch.tensor(top_k, device=device),
        torch.tensor(top_p, dtype=torch.float64, device=device),
        torch.tensor(min_p, dtype=torch.float64, device=device),
        seeds.to(device),
    )


@dataclasses.dataclass
class EmulatedSample:
    splits: int  # blocks per row the kernels ran with
    tokens: Tensor | None  # (rows,) int64, when drawn
    logprobs: Tensor | None  # (rows,) float32, when drawn
    mask: Tensor  # (rows, vocab) int8, 1 = kept


def emulated_sample(driver: Path, batch: SampleBatch, *, draw: bool, splits: int = 1, sm_count: int = 0):
    """The emulated kernels' outputs; ``splits`` blocks per row (1: the single-block kernel; 0: the
    launcher's choice for a GPU of ``sm_count`` SMs)."""
    logits = batch.logits.cpu()
    rows, vocab = logits.shape
    stride = logits.stride(0)
    storage = torch.as_strided(logits, ((rows - 1) * stride + vocab,), (1,))
    header = struct.pack("<7q", rows, vocab, stride, DTYPE_CODES[logits.dtype], int(draw), splits, sm_count)
    parameters = [
        batch.temperature.float(),
        batch.top_k.clamp(1, vocab).int(),
        batch.top_p.double(),
        batch.min_p.double(),
        batch.seeds,
    ]  # as sampling.cpp converts them
    out = Unpacker(run_driver(driver, header + b"".join(raw(t) for t in [storage, *parameters])))
    used = out.take(torch.int64, 1).item()
    tokens, logprobs = (out.take(torch.int64, rows), out.take(torch.float32, rows)) if draw else (None, None)
    return EmulatedSample(used, tokens, logprobs, out.take(torch.int8, rows, vocab))


def assert_masks_equal(name: str, got: Tensor, want: Tensor, batch: SampleBatch):
    differing = [r for r in range(got.shape[0]) if not torch.equal(got[r], want[r])]
    details = [
        f"{batch.row(r)}: kept {int(got[r].sum())} tokens vs {int(want[r].sum())}, differing at "
        f"{(got[r] != want[r]).nonzero().flatten()[:8].tolist()}"
        for r in differing
    ]
    assert not differing, f"{batch}: kept set differs from {name} in rows " + "; ".join(details)


# Vocabularies of one warp (<= 256: 8 tokens a thread) and of several, up to 12 warps.
@pytest.mark.parametrize("vocab", [1, 7, 256, 257, 1000, 3000])
def test_sampling_kept_set(drivers, device, vocab):
    """The kept set (draw=False) equals the Triton kernel's and the reference's, over every dtype and kind."""
    for shift, dtype in enumerate(DTYPE_CODES):
        batch = sample_batch(vocab, dtype, shift, device)
        mask = emulated_sample(drivers["sample_driver"], batch, draw=False).mask
        params = (batch.temperature, batch.top_k, batch.top_p, batch.min_p)
        assert_masks_equal(
            "the Triton kernel's", mask.bool(), triton_sampling.filter_mask(batch.logits, *params).cpu(), batch
        )
        want = reference.filter_logits(batch.logits, *params) > -math.inf
        assert_masks_equal("reference.filter_logits", mask.bool(), want.cpu(), batch)


@pytest.mark.parametrize("vocab", [7, 300, 2000])
def test_sampling_draws(drivers, device, vocab):
    """draw=True: greedy rows take the first argmax, rows with a NaN or no finite logit give -1 (log-prob
    NaN), every other token lies in the kept set and has the log-prob of its share of the kept mass."""
    for shift, dtype in enumerate(DTYPE_CODES):
        batch = sample_batch(vocab, dtype, shift + 3, device)
        drawn = emulated_sample(drivers["sample_driver"], batch, draw=True)
        tokens, logprobs, mask = drawn.tokens, drawn.logprobs, drawn.mask
        z = reference.filter_logits(batch.logits, batch.temperature, batch.top_k, batch.top_p, batch.min_p).cpu()
        for r in range(len(tokens)):
            token, logprob, where = tokens[r].item(), logprobs[r].item(), f"{batch}, {batch.row(r)}"
            drawn = f"{where}: token {token}, log-prob {logprob}"
            if (z[r] == -math.inf).all():  # a NaN or no finite z
                assert token == -1 and math.isnan(logprob), drawn
            elif batch.temperature[r] == 0:
                assert token == int(batch.logits[r].argmax()) and logprob == 0.0, drawn
            else:
                assert 0 <= token < vocab and mask[r, token] == 1, f"{where}: token {token} is not kept"
                kept = z[r][mask[r].bool()].double()
                want = (z[r, token] - kept.logsumexp(0)).item() if kept.max() < math.inf else -math.log(len(kept))
                assert logprob == pytest.approx(want, abs=1e-4, rel=1e-4), f"{where}: log-prob {logprob} vs {want}"


# The split path on sample_batch's rows (each case emulates 4 batches of 12 rows in 2-17 s): 7 tokens in 4
# splits (slices of 32 tokens: three empty); 3 uneven slices of 1024, 1024 and 952 tokens (128 threads, 8
# strides); 24 splits of 128 tokens (one warp each; the partials summed in chunks of 16 and 8 splits);
# 2 slices of ~3000 tokens (384 threads, 8 strides).
@pytest.mark.parametrize(("vocab", "splits"), [(7, 4), (3000, 3), (3000, 24), (6000, 2)])
def test_sampling_split_path(drivers, device, vocab, splits):
    """``splits`` blocks per row keep the single-block kernel's set and draw its tokens, with its
    log-probs up to the order of the float32 kept-mass sum (a few ulp of log(kept mass): absolute)."""
    # Only float32 rows of the adjacent kind need a search's 8th pass (float16 / bfloat16 values are
    # >= 2^13 keys apart): shift 2 puts it on a top-k row (7), shift 8 on a top-p row searched from the
    # smallest key (11); shift 8 also draws over every token of row 1 (plain: all kept).
    for dtype, shift in ((torch.float32, 2), (torch.float32, 8), (torch.float16, 9), (torch.bfloat16, 10)):
        batch = sample_batch(vocab, dtype, shift, device)
        single = emulated_sample(drivers["sample_driver"], batch, draw=True)
        split = emulated_sample(drivers["sample_driver"], batch, draw=True, splits=splits)
        assert split.splits == splits
        assert_masks_equal("the single-block kernel's", split.mask.bool(), single.mask.bool(), batch)
        for r in range(len(single.tokens)):
            where = f"{batch}, {splits} splits, {batch.row(r)}"
            assert split.tokens[r] == single.tokens[r], f"{where}: token {split.tokens[r]} vs {single.tokens[r]}"
            got, want = split.logprobs[r].item(), single.logprobs[r].item()
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6, nan_ok=True), f"{where}: log-prob {got} vs {want}"


# (rows, vocab, SMs) -> blocks per row: the largest power of two <= min(32, SMs // rows, vocab // 4096),
# 1 below 2; each case has a different term of the minimum deciding.
SPLIT_CHOICES = [
    ((1, 8191, 132), 1),  # vocab // 4096 = 1
    ((1, 12288, 132), 2),  # vocab // 4096 = 3
    ((1, 200_000, 132), 32),  # MAX_SPLITS
    ((2, 40960, 132), 8),  # vocab // 4096 = 10
    ((4, 65536, 40), 8),  # SMs // rows = 10
    ((3, 65536, 4), 1),  # SMs // rows = 1
]


@pytest.mark.parametrize(("case", "want"), SPLIT_CHOICES, ids=str)
def test_sampling_split_choice(drivers, device, case, want):
    """splits=0 runs the split count of kernels/sampling.py's split_count (the Triton path's choice)."""
    rows, vocab, sm_count = case
    assert triton_sampling.split_count(rows, vocab, sm_count) == want
    logits = torch.zeros(rows, vocab, device=device)  # one value: the searches close at once, cheap to emulate
    off = [torch.full((rows,), value, device=device) for value in (1.0, vocab, 1.0, 0.0)]
    seeds = torch.zeros(rows, dtype=torch.int64, device=device)
    batch = SampleBatch(logits, *off, seeds)
    assert emulated_sample(drivers["sample_driver"], batch, draw=False, splits=0, sm_count=sm_count).splits == want


# ------------------------------------------------------------------------------------------ Philox
@triton.jit
def _philox_words(seed_ptr, counter_ptr, words_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr + i), tl.load(counter_ptr + i))
    tl.store(words_ptr + 4 * i, r0.to(tl.int32, bitcast=True))
    tl.store(words_ptr + 4 * i + 1, r1.to(tl.int32, bitcast=True))
    tl.store(words_ptr + 4 * i + 2, r2.to(tl.int32, bitcast=True))
    tl.store(words_ptr + 4 * i + 3, r3.to(tl.int32, bitcast=True))


def test_philox_matches_triton(drivers, device):
    """csrc/common/philox.cuh gives tl.randint4x's words bit for bit (the Gumbel noise of both samplers)."""
    seeds = [
        0,
        1,
        42,
        2**31,
        2**32 - 1,
        2**32,
        2**40 + 12345,
        2**63 - 1,
        -1,
        -(2**32) - 1,
        -(2**63),
        -987654321098765432,
    ]
    counters = [0, 1, 31, 128255, 2**31 - 1, 2**32 - 1, 2**32, 2**32 + 3, 2**40 + 5, 2**62]
    pairs = [(seed, counter) for seed in seeds for counter in counters]
    size = triton.next_power_of_2(len(pairs))
    pairs += [(0, 0)] * (size - len(pairs))
    words = torch.zeros(4 * size, dtype=torch.int32, device=device)
    _philox_words[(1,)](
        torch.tensor([s for s, _ in pairs], device=device),
        torch.tensor([c for _, c in pairs], device=device),
        words,
        N=size,
    )
    triton_words = [[w & 0xFFFFFFFF for w in words[4 * n : 4 * n + 4].tolist()] for n in range(size)]
    host = run_driver(drivers["philox_driver"], "".join(f"{s} {c}\n" for s, c in pairs).encode()).decode()
    host_words = [[int(w, 16) for w in line.split()] for line in host.splitlines()]
    differing = [
        (pair, [hex(w) for w in h], [hex(w) for w in t])
        for pair, h, t in zip(pairs, host_words, triton_words, strict=True)
        if h != t
    ]
    assert not differing, f"(seed, counter), csrc words, Triton words: {differing[:5]}"


# ------------------------------------------------------------------------------------- attention
@dataclasses.dataclass(frozen=True)
class AttentionCase:
    """One problem for the emulated attention kernels (attention_driver.cpp)."""

    label: str
    batch: int = 2
    heads: tuple[int, int] = (4, 2)  # (Hq, Hkv)
    nq: int = 37
    nk: int = 37
    head_dim: int = 16
    causal: bool = False
    window: tuple[int, int] = (-1, -1)
    softcap: float = 0.0
    alibi: str | None = None  # "head": (Hq,) slopes, "batch": (B, Hq)
    sinks: bool = False
    padding: bool = False  # a key_padding_mask, batch row 0 without any key
    dropout_p: float = 0.0
    lengths: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # packed sequences (q, k lengths)
    dtype: torch.dtype = torch.float32  # float16 / bfloat16: the tensor-core kernels, PTX emulated

    def __str__(self) -> str:
        return self.label


ATTENTION_CASES = [
    AttentionCase("plain, GQA"),
    AttentionCase("causal Nq > Nk, padding, D 59", causal=True, nq=45, nk=20, head_dim=59, padding=True),
    AttentionCase("window crossing 32-key tiles, MQA", window=(9, 3), nq=70, nk=100, heads=(2, 1)),
    AttentionCase("causal window of two keys", causal=True, window=(1, -1), nq=33, nk=40),
    AttentionCase("softcap", softcap=2.0, head_dim=40),
    AttentionCase("ALiBi per batch, causal", alibi="batch", causal=True, nq=20, nk=50),
    AttentionCase("sinks, rows with no key", sinks=True, padding=True, causal=True, nq=40, nk=25),
    AttentionCase("all, dropout", window=(6, 2), softcap=3.0, alibi="head", sinks=True, dropout_p=0.2, nq=30, nk=41),
    AttentionCase("packed", lengths=((5, 0, 1, 70, 3), (7, 3, 1, 66, 0))),
    AttentionCase(
        "packed, causal window, softcap, ALiBi, sinks",
        lengths=((5, 0, 1, 70), (7, 3, 1, 66)),
        causal=True,
        window=(10, -1),
        softcap=2.5,
        alibi="batch",
        sinks=True,
    ),
]


# The tensor-core kernels (float16 / bfloat16), their PTX emulated: each head-dim bucket's tile
# configuration (D <= 128: 64-key forward tiles; D > 128: 32-key tiles and the backward in two head-dim
# slices), with the features above.
ATTENTION_CASES += [
    AttentionCase(
        "fp16 causal Nq > Nk, padding, D 59", causal=True, nq=45, nk=20, head_dim=59, padding=True, dtype=f16
    ),
    AttentionCase("bf16 plain GQA, D 32", head_dim=32, nq=70, nk=65, dtype=bf16),
    AttentionCase(
        "fp16 window, softcap, ALiBi, sinks, D 96",
        window=(9, 3),
        softcap=2.0,
        alibi="head",
        sinks=True,
        nq=50,
        nk=80,
        head_dim=96,
        dtype=f16,
    ),
    AttentionCase(
        "bf16 packed, causal, D 128", lengths=((5, 0, 1, 70), (7, 3, 1, 66)), causal=True, head_dim=128, dtype=bf16
    ),
    AttentionCase("fp16 dropout, D 64", dropout_p=0.2, nq=30, nk=41, head_dim=64, dtype=f16),
    AttentionCase("bf16 causal D 200, MQA", causal=True, nq=40, nk=70, head_dim=200, heads=(2, 1), dtype=bf16),
    AttentionCase("fp16 D 1, causal Nq < Nk", causal=True, nq=17, nk=97, head_dim=1, dtype=f16),
    AttentionCase(
        "bf16 D 8, 128 x 128 on tile boundaries, padding", nq=128, nk=128, head_dim=8, padding=True, dtype=bf16
    ),
    AttentionCase(
        "fp16 D 80, causal window Nq > Nk", causal=True, window=(12, -1), nq=65, nk=31, head_dim=80, dtype=f16
    ),
    AttentionCase("fp16 D 192, GQA, sinks", sinks=True, nq=33, nk=64, head_dim=192, dtype=f16),
    AttentionCase(
        "bf16 D 256, softcap, ALiBi per batch", softcap=3.0, alibi="batch", nq=20, nk=45, head_dim=256, dtype=bf16
    ),
    AttentionCase("fp16 D 111 packed, empty sequences", lengths=((0, 9, 33), (4, 0, 40)), head_dim=111, dtype=f16),
]


def attention_matrix() -> list[AttentionCase]:
    """Every head dim of the matrix in every dtype (so every bucket of both dispatchers, at and between
    their bounds), each case with a different mix: causal or not; Nq < Nk, Nq > Nk, lengths on the
    64-row tile boundaries and off them; MHA, GQA, MQA; a padding mask with a batch row of no key;
    dropout; a window, softcap, ALiBi or sinks. Each feature is on in some cases of each dtype."""
    lengths = [(17, 97), (65, 31), (64, 128), (33, 47)]
    heads = [(4, 2), (2, 1), (2, 2)]
    features = [
        {},
        {"window": (7, 2)},
        {"softcap": 2.0},
        {"alibi": "head"},
        {"sinks": True},
    ]
    cases = []
    for dtype_index, dtype in enumerate((f32, f16, bf16)):
        for dim_index, head_dim in enumerate((1, 8, 59, 64, 80, 96, 128, 256)):
            i = dtype_index + dim_index
            nq, nk = lengths[i % len(lengths)]
            options = dict(
                causal=i % 2 == 0,
                nq=nq,
                nk=nk,
                heads=heads[i % len(heads)],
                padding=i % 3 == 0,
                dropout_p=0.2 if i % 4 == 1 else 0.0,
                **features[i % len(features)],
            )
            on = [
                name.removesuffix("_p")
                for name, value in options.items()
                if name not in ("nq", "nk", "heads") and value
            ]
            label = (
                f"{str(dtype).removeprefix('torch.')} D {head_dim} Nq {nq} Nk {nk} H {options['heads']} {' '.join(on)}"
            )
            cases.append(AttentionCase(label, head_dim=head_dim, dtype=dtype, **options))
    return cases


ATTENTION_CASES += attention_matrix()


def attention_inputs(case: AttentionCase, device) -> dict:
    """The case's tensors (float32, on the CPU) and the keywords of fastattn.reference."""
    hq, hkv = case.heads
    if case.lengths is None:
        q = torch.randn(case.batch, hq, case.nq, case.head_dim)
        k, v = (torch.randn(case.batch, hkv, case.nk, case.head_dim) for _ in range(2))
        batch = case.batch
    else:
        q = torch.randn(sum(case.lengths[0]), hq, case.head_dim)
        k, v = (torch.randn(sum(case.lengths[1]), hkv, case.head_dim) for _ in range(2))
        batch = len(case.lengths[0])
    keywords = dict(causal=case.causal, window=case.window, softcap=case.softcap, scale=case.head_dim**-0.5)
    if case.padding:
        mask = torch.rand(batch, case.nk) > 0.3
        mask[0] = False
        keywords["key_padding_mask"] = mask
    if case.alibi:
        keywords["alibi_slopes"] = torch.rand((batch, hq) if case.alibi == "batch" else (hq,))
    if case.sinks:
        keywords["sinks"] = torch.randn(hq)
    lse_rows = (hq, q.shape[0]) if case.lengths else (batch, hq, case.nq)
    q, k, v, dout = (t.to(case.dtype).float() for t in (q, k, v, torch.randn_like(q)))  # values of the case's dtype
    return dict(q=q, k=k, v=v, dout=dout, dlse=torch.randn(lse_rows), keywords=keywords, batch=batch)


def offsets(lengths) -> Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def emulated_attention(driver: Path, case: AttentionCase, inputs: dict, seed: int) -> list[Tensor]:
    """(out, lse, dq, dk, dv[, dsinks]) of the emulated kernels."""
    q, k, keywords, batch = inputs["q"], inputs["k"], inputs["keywords"], inputs["batch"]
    hq, hkv = case.heads
    packed = case.lengths is not None
    nq, nk = (max(case.lengths[0]), max(case.lengths[1])) if packed else (case.nq, case.nk)
    alibi = keywords.get("alibi_slopes")
    header = struct.pack(
        "<18q3d",
        batch,
        hq,
        hkv,
        nq,
        nk,
        case.head_dim,
        int(packed),
        q.shape[0],
        k.shape[0],
        int(case.causal),
        *case.window,
        int(case.padding),
        0 if alibi is None else alibi.dim(),
        int(case.sinks),
        1,  # dlse
        seed,
        DTYPE_CODES[case.dtype],
        keywords["scale"],
        case.softcap,
        case.dropout_p,
    )
    parts = [header, raw(q), raw(k), raw(inputs["v"])]
    if case.padding:
        parts.append(raw(keywords["key_padding_mask"].to(torch.uint8)))
    if packed:
        parts += [raw(offsets(case.lengths[0])), raw(offsets(case.lengths[1]))]
    if alibi is not None:
        parts.append(raw(alibi))
    if case.sinks:
        parts.append(raw(keywords["sinks"]))
    parts += [raw(inputs["dout"]), raw(inputs["dlse"])]
    result = Unpacker(run_driver(driver, b"".join(parts)))
    outputs = [result.take(torch.float32, *q.shape), result.take(torch.float32, *inputs["dlse"].shape)]
    outputs += [result.take(torch.float32, *t.shape) for t in (q, k, k)]
    if case.sinks:
        outputs.append(result.take(torch.float32, hq))
    return outputs


def reference_attention(case: AttentionCase, inputs: dict, dtype: torch.dtype, keep: Tensor | None) -> list[Tensor]:
    """The same outputs from fastattn.reference in ``dtype`` (the loss Σ out·dout + Σ lse·dlse over finite lse)."""
    leaves = [inputs[name].to(dtype).requires_grad_() for name in ("q", "k", "v")]
    keywords = dict(inputs["keywords"])
    if case.sinks:
        keywords["sinks"] = keywords["sinks"].to(dtype).requires_grad_()
        leaves.append(keywords["sinks"])
    if keep is not None:
        keywords.update(dropout_p=case.dropout_p, dropout_keep=keep)
    if case.lengths is None:
        out, lse = reference.attention(*leaves[:3], return_lse=True, **keywords)
    else:
        cu_q, cu_k = offsets(case.lengths[0]), offsets(case.lengths[1])
        out, lse = reference.attention_varlen(*leaves[:3], cu_q, cu_k, return_lse=True, **keywords)
    finite_lse = torch.where(lse.isinf(), 0.0, lse)
    loss = (out * inputs["dout"].to(dtype)).sum() + (finite_lse * inputs["dlse"].to(dtype)).sum()
    return [out.detach(), lse.detach(), *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=str)
def test_attention(drivers, case):
    """The float32 kernels and the tensor-core kernels (float16 / bfloat16): window, softcap, ALiBi,
    sinks (and their gradient) and packed sequences against the float64 reference under the numerics
    rule (the plain math in the case's dtype); dropout with the Triton kernels' mask."""
    inputs = attention_inputs(case, "cpu")
    seed = 1234
    emulated = emulated_attention(drivers["attention_driver"], case, inputs, seed)
    keep = None
    if case.dropout_p > 0:
        from fastattn.kernels import attention as triton_attention

        keep = triton_attention.dropout_keep_mask(
            inputs["batch"], case.heads[0], case.nq, case.nk, case.dropout_p, seed, "cpu"
        )
    exact = reference_attention(case, inputs, torch.float64, keep)
    plain = reference_attention(case, inputs, case.dtype, keep)
    names = ("out", "lse", "dq", "dk", "dv", "dsinks")
    for name, got, ref, pla in zip(names, emulated, exact, plain, strict=False):
        factor = 2.0 if name in ("out", "lse") else 3.0
        assert_close_to_reference(f"{case} {name}", got, ref, pla, factor=factor)


# ------------------------------------------------------------------------------ split-KV decode
@dataclasses.dataclass(frozen=True)
class DecodeCase:
    """One problem for the emulated split-KV decode kernels (decode_driver.cpp), any dtype."""

    label: str
    dtype: torch.dtype = torch.float16
    lengths: tuple[int, ...] = (70, 0, 33)  # positions each sequence holds
    first: tuple[int, ...] = (0, 0, 0)  # cache_leftpad
    seq_q: int = 1
    heads: tuple[int, int] = (8, 2)
    head_dim: int = 40
    block_size: int | None = 16  # None: a contiguous cache
    num_splits: int = 3
    causal: bool = True
    window: tuple[int, int] = (-1, -1)
    softcap: float = 0.0
    alibi: bool = False

    def __str__(self) -> str:
        return self.label


DECODE_CASES = [
    DecodeCase("paged fp16, a sequence with no key, 3 splits"),
    DecodeCase("paged bf16, 3 queries, window, 1 split", dtype=torch.bfloat16, seq_q=3, window=(20, 0), num_splits=1),
    DecodeCase(
        "contiguous fp32, leftpad, softcap, ALiBi, 7 splits",
        dtype=torch.float32,
        block_size=None,
        first=(5, 0, 30),
        softcap=3.0,
        alibi=True,
        num_splits=7,
    ),
    DecodeCase(
        "contiguous bf16, D 128, MQA, not causal",
        dtype=torch.bfloat16,
        block_size=None,
        heads=(4, 1),
        head_dim=128,
        causal=False,
        lengths=(100, 64, 1),
    ),
]


def decode_reference(case: DecodeCase, q, keys, values, alibi, dtype):
    """Each sequence's queries on its keys from its first position (fastattn.reference.attention)."""
    outs, lses = [], []
    for b, (length, start) in enumerate(zip(case.lengths, case.first, strict=True)):
        kb, vb = keys[b][start:length], values[b][start:length]
        slopes = None if alibi is None else alibi[b]
        out, lse = reference.attention(
            q[b].transpose(0, 1)[None].to(dtype),
            kb.transpose(0, 1)[None].to(dtype),
            vb.transpose(0, 1)[None].to(dtype),
            causal=case.causal,
            window=case.window,
            softcap=case.softcap,
            alibi_slopes=slopes,
            return_lse=True,
        )
        outs.append(out[0].transpose(0, 1))
        lses.append(lse[0])
    return torch.stack(outs), torch.stack(lses)


@pytest.mark.parametrize("case", DECODE_CASES, ids=str)
def test_decode(drivers, case):
    """The split-KV kernels (every dtype: no tensor cores) against the float64 reference, per sequence."""
    batch, (hq, hkv), d = len(case.lengths), case.heads, case.head_dim
    capacity = 112
    keys = [torch.randn(capacity, hkv, d).to(case.dtype) for _ in range(batch)]
    values = [torch.randn(capacity, hkv, d).to(case.dtype) for _ in range(batch)]
    q = torch.randn(batch, case.seq_q, hq, d).to(case.dtype)
    if case.block_size is None:
        rows = torch.randperm(batch + 1)[:batch].to(torch.int32)
        cache_k, cache_v = (torch.randn(batch + 1, capacity, hkv, d).to(case.dtype) for _ in range(2))
        for b in range(batch):
            cache_k[rows[b]], cache_v[rows[b]] = keys[b], values[b]
        locate, cache_shape, max_blocks = rows, cache_k.shape, 0
    else:
        max_blocks = capacity // case.block_size
        table = torch.randperm(batch * max_blocks + 2)[: batch * max_blocks].reshape(batch, max_blocks).to(torch.int32)
        cache_k, cache_v = (
            torch.randn(batch * max_blocks + 2, case.block_size, hkv, d).to(case.dtype) for _ in range(2)
        )
        for b in range(batch):
            cache_k[table[b].long()] = keys[b].reshape(max_blocks, case.block_size, hkv, d)
            cache_v[table[b].long()] = values[b].reshape(max_blocks, case.block_size, hkv, d)
        locate, cache_shape = table, cache_k.shape
    alibi = torch.rand(batch, hq) if case.alibi else None
    longest = max(n - f for n, f in zip(case.lengths, case.first, strict=True))
    split_size = max(32, math.ceil(math.ceil(longest / case.num_splits) / 32) * 32)  # a multiple of the tile
    header = struct.pack(
        "<17q2d",
        batch,
        case.seq_q,
        hq,
        hkv,
        d,
        DTYPE_CODES[case.dtype],
        cache_shape[0],
        cache_shape[1],
        int(case.block_size is not None),
        max_blocks,
        longest,
        int(case.causal),
        *case.window,
        0 if alibi is None else 2,
        case.num_splits,
        split_size,
        d**-0.5,
        case.softcap,
    )
    lengths = torch.tensor(case.lengths, dtype=torch.int32)
    first = torch.tensor(case.first, dtype=torch.int32)
    parts = [header, raw(q), raw(cache_k), raw(cache_v), raw(locate), raw(lengths), raw(first)]
    if alibi is not None:
        parts.append(raw(alibi))
    result = Unpacker(run_driver(drivers["decode_driver"], b"".join(parts)))
    out, lse = result.take(case.dtype, *q.shape), result.take(torch.float32, batch, hq, case.seq_q)
    exact, exact_lse = decode_reference(case, q, keys, values, alibi, torch.float64)
    plain, _ = decode_reference(case, q, keys, values, alibi, case.dtype)
    assert_close_to_reference(f"{case} out", out, exact, plain, factor=2.0)
    finite = exact_lse.isfinite()
    assert torch.equal(lse.isfinite(), finite), "lse is -inf exactly where a query sees no key"
    torch.testing.assert_close(lse[finite].double(), exact_lse[finite], atol=1e-5, rtol=1e-5)
