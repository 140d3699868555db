"""The one benchmark harness: timing, cases, providers, the grid runner, the run's environment and ceilings.

Timing. On a GPU, ``triton.testing.do_bench`` (CUDA events; it flushes the L2 cache before every run)
gives the median and the 20th/80th percentiles. Inputs small enough to sit in the L2 cache are also
rotated: each run reads the next of several copies, so no timing path measures the cache. On a CPU,
a ``time.perf_counter`` loop gives the same three numbers.

A :class:`Case` is one shape of one op in one mode, with the work it counts (``bench.metrics``) and a
function that makes a fresh set of inputs. A :class:`Provider` turns a case and its inputs into a
call to time, or says why it cannot: not at all on this machine (``unavailable``), or not for this
case (it raises; the reason lands in the report). :func:`run_grid` times every case on every
provider, with a progress bar and an optional deadline.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib
import itertools
import math
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

QUANTILES = (0.5, 0.2, 0.8)  # median, and the 20th/80th percentiles as the spread
GPU_WARMUP_MS = 25  # do_bench's defaults: 25 ms of warm-up, 100 ms of timed runs
GPU_REPEAT_MS = 100
CPU_WARMUP_S = 0.02
CPU_BUDGET_S = 0.1  # tiny CPU shapes run in 10 µs to 10 ms: 0.1 s gives 10 to 10,000 runs
MIN_RUNS = 5
MAX_RUNS = 10_000
MAX_INPUT_COPIES = 32  # enough to rotate a 3 MB input set through a 50 MB L2 (H100) twice over
FAMILIES = ("ours", "pytorch", "peer")  # column order of the reports


class Skip(Exception):
    """Raised by a provider that cannot serve a case; the message is the reason."""


# ------------------------------------------------------------------------------------------ timing
@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    runs: int | None  # None when do_bench chose the count


def _quantiles_ms(times_ms: list[float]) -> tuple[float, float, float]:
    """The median and 20/80 percentiles, computed the way do_bench computes them (torch.quantile)."""
    values = torch.tensor(times_ms, dtype=torch.float64)
    return tuple(float(torch.quantile(values, q)) for q in QUANTILES)


def _reset_grads(tensors: Iterable[torch.Tensor]) -> None:
    for tensor in tensors:
        tensor.grad = None


def measure_host(
    fn: Callable[[], object],
    *,
    grad_to_none=(),
    budget_s: float = CPU_BUDGET_S,
    synchronize: bool = False,
    min_runs: int = MIN_RUNS,
    max_runs: int = MAX_RUNS,
) -> Timing:
    """Times ``fn`` with ``time.perf_counter``: warm-up, then runs until ``budget_s`` is spent (at
    least ``min_runs``). With ``synchronize`` each run waits for the GPU (for calls longer than a
    millisecond, such as a model's train step, where host timing is exact enough)."""
    sync = torch.cuda.synchronize if synchronize else (lambda: None)
    fn()
    sync()
    warmup_end = time.perf_counter() + CPU_WARMUP_S
    while time.perf_counter() < warmup_end:
        fn()
    sync()
    times_ms: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times_ms) < min_runs or (time.perf_counter() < end and len(times_ms) < max_runs):
        _reset_grads(grad_to_none)
        start = time.perf_counter()
        fn()
        sync()
        times_ms.append((time.perf_counter() - start) * 1e3)
    return Timing(*_quantiles_ms(times_ms), runs=len(times_ms))


def measure(fn: Callable[[], object], device: torch.device, *, grad_to_none=()) -> Timing:
    """Median and 20/80 percentiles of ``fn``: ``do_bench`` on a GPU, a host loop on a CPU."""
    if device.type != "cuda":
        return measure_host(fn, grad_to_none=grad_to_none)
    import triton.testing

    median, p20, p80 = triton.testing.do_bench(
        fn,
        warmup=GPU_WARMUP_MS,
        rep=GPU_REPEAT_MS,
        grad_to_none=list(grad_to_none) or None,
        quantiles=list(QUANTILES),
    )
    return Timing(median, p20, p80, runs=None)


@contextlib.contextmanager
def cpu_threads(count: int):
    """Runs the block with ``count`` intra-op threads. The tiny CPU timings use one: with several, a
    10 µs op waits for every thread, and on a busy machine one of them may be off the core for
    milliseconds (on a loaded 2-core machine, two threads gave medians of 20 ms for a 0.1 ms op)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def input_copies(set_bytes: int, device: torch.device) -> int:
    """How many copies of an input set to rotate through so that together they cover the GPU's L2
    cache twice (1 on a CPU, or when one set is that large already)."""
    if device.type != "cuda" or set_bytes <= 0:
        return 1
    l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size
    return max(1, min(MAX_INPUT_COPIES, math.ceil(2 * l2_bytes / set_bytes)))


def rotating(calls: list[Callable[[], object]]) -> Callable[[], object]:
    """One call that runs the next of ``calls`` each time."""
    if len(calls) == 1:
        return calls[0]
    cycle = itertools.cycle(calls)
    return lambda: next(cycle)()


def backward_call(output, grad: torch.Tensor) -> Callable[[], object]:
    """The backward of an already computed ``output`` (the first element of a tuple), repeatable."""
    primary = output[0] if isinstance(output, tuple) else output
    return lambda: torch.autograd.backward(primary, grad, retain_graph=True)


# ---------------------------------------------------------------------------- cases and providers
@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per case of a run
class Case:
    """One shape of one op in one mode.

    ``unit`` says what the reports show on a GPU: ``work`` per second (TFLOP/s from FLOPs, GB/s
    from bytes, tokens/s from tokens) or the time itself (µs). ``x_name``/``x`` place the case on a
    plot's horizontal axis; cases of one ``series`` share a plot panel.
    """

    op: str
    mode: str
    dtype: str
    label: str
    params: dict
    x_name: str
    x: int
    series: str
    unit: str
    work: float | None
    make_inputs: Callable[[], dict]
    input_bytes: int
    quick: bool = False  # part of the trimmed grid (--quick), which runs first

    def value(self, median_ms: float) -> float:
        """The reported number for a median time: throughput, or µs."""
        if self.unit == "µs":
            return median_ms * 1e3
        per_second = self.work / (median_ms * 1e-3)
        return per_second / {"TFLOP/s": 1e12, "GB/s": 1e9, "tokens/s": 1.0}[self.unit]


@dataclass
class Provider:
    """One implementation to time: ours, one of PyTorch's, or a peer library's."""

    name: str
    family: str  # "ours", "pytorch" or "peer"
    description: str
    build: Callable[[Case, dict], Callable[[], object]]  # raises Skip (or the library's error)
    unavailable: str | None = None  # why it cannot run on this machine at all
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    errors_mean_unsupported: bool = True  # False for ours: only NotImplementedError/Skip mean "cannot"
    cpu_opt_in: bool = False  # too slow to set up on a CPU to run unless named (--provider)


@dataclass(frozen=True)
class Row:
    case: Case
    provider: str
    family: str
    status: str  # "ok", "skipped" (cannot serve this case) or "error" (crashed)
    reason: str = ""
    timing: Timing | None = None


@dataclass
class Section:
    """The result of one benchmark target: rows, the providers considered, and notes for the report."""

    title: str
    rows: list[Row] = field(default_factory=list)
    providers: list[Provider] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cases_not_run: int = 0


def choose_providers(
    providers: list[Provider],
    device: torch.device,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> list[Provider]:
    """The providers a run considers. ``include`` (names or families) keeps only those; ``exclude``
    lists the named ones as left out; CPU opt-in providers are left out on a CPU unless included."""
    include, exclude = set(include), set(exclude)
    chosen = []
    for provider in providers:
        named = provider.name in include or provider.family in include
        if include and not named:
            continue
        if provider.unavailable is None:
            if provider.name in exclude or provider.family in exclude:
                provider.unavailable = "left out of this run (--exclude)"
            elif provider.cpu_opt_in and device.type == "cpu" and not named:
                provider.unavailable = (
                    f"not timed on a CPU by default (its set-up takes tens of seconds per "
                    f"shape there): --provider {provider.name} times it"
                )
        chosen.append(provider)
    return chosen


def compile_context() -> contextlib.ExitStack:
    """The settings under which torch.compile providers run.

    ``recompile_limit``: one graph per shape and mask (the attention grid has 72), past dynamo's
    default limit of 8, beyond which it would silently run the function uncompiled.
    ``donated_buffer`` off: donated buffers forbid the repeated backward of one graph that the
    backward timings run. Each is set where this torch version has it.
    """
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config

    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"  # its older name
    stack = contextlib.ExitStack()
    stack.enter_context(dynamo_config.patch(**{limit: 256}))
    if hasattr(functorch_config, "donated_buffer"):
        stack.enter_context(functorch_config.patch(donated_buffer=False))
    return stack


def peer_module(module: str, package: str) -> tuple[object | None, str | None]:
    """Imports a peer library; returns (module, None) or (None, why it cannot be used)."""
    try:
        return importlib.import_module(module), None
    except ModuleNotFoundError as error:
        if error.name and module.startswith(error.name.split(".")[0]):
            return None, f"{package} is not installed"
        return None, f"{package} cannot be imported: {type(error).__name__}: {error}"
    except Exception as error:  # a broken install fails in many ways (OSError from a missing .so, ...)
        return None, f"{package} cannot be imported: {type(error).__name__}: {error}"


def peer_provider(name: str, package: str, module: str, description: str, build: Callable) -> Provider:
    """The peer library ``package`` as provider ``name``: ``build(imported, case, inputs)`` is called with
    ``module`` imported; where it cannot be imported, the provider is unavailable and says why."""
    imported, why = peer_module(module, package)
    return Provider(name, "peer", description, functools.partial(build, imported), unavailable=why)


def torch_compiled(function: Callable) -> tuple[Callable | None, str | None]:
    """``torch.compile(function, dynamic=False)``, or (None, why torch.compile cannot be used here): its
    compiler imports Triton, so a broken Triton install breaks it too."""
    try:
        return torch.compile(function, dynamic=False), None
    except Exception as error:
        return None, f"torch.compile does not work here: {type(error).__name__}: {error}"


def reference_provider(name: str, description: str, build: Callable, compiled: bool, *functions: Callable):
    """The PyTorch reference ``description`` as provider ``name``: ``build(*functions, case, inputs)``; with
    ``compiled``, the functions under ``torch.compile`` (unavailable, saying why, where it cannot run)."""
    if not compiled:
        return Provider(name, "pytorch", description, functools.partial(build, *functions))
    functions, reasons = zip(*map(torch_compiled, functions), strict=True)
    return Provider(
        "torch.compile",
        "pytorch",
        f"torch.compile({description})",
        functools.partial(build, *functions),
        unavailable=next(filter(None, reasons), None),
        context=compile_context,
        cpu_opt_in=True,
    )


def ours_unavailable(name: str, api: str) -> str | None:
    """Why our backend ``name`` cannot be timed here (None when it can), for the op ``fastattn.<api>``."""
    import fastattn
    from fastattn import backends

    if not hasattr(fastattn, api):
        return f"fastattn.{api} is not available in this build"
    reasons = backends.platform_reasons(name)
    if reasons:
        return "; ".join(reasons)
    if name == "triton" and backends.triton_interpreting():
        return "Triton's interpreter (TRITON_INTERPRET=1) checks correctness; its times mean nothing"
    return None


def ours_provider(backend: str, description: str, build: Callable, *apis: str, label: str | None = None) -> Provider:
    """Our ``backend`` through ``fastattn.<api>`` for each of ``apis``, as provider ``label`` (default: the
    backend's name): unavailable where one of them cannot run here, and only NotImplementedError or Skip
    mean it cannot serve a case (any other error is a bug to report)."""
    unavailable = next(filter(None, (ours_unavailable(backend, api) for api in apis)), None)
    return Provider(
        label or backend, "ours", description, build, unavailable=unavailable, errors_mean_unsupported=False
    )


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _unsupported_reason(provider: Provider, error: Exception) -> str | None:
    """The skip reason when ``error`` means "cannot serve this case"; None when it is a crash."""
    if isinstance(error, Skip):
        return str(error)
    if isinstance(error, torch.OutOfMemoryError):
        return "out of memory"
    if isinstance(error, NotImplementedError):
        for line in str(error).splitlines():  # fastattn lists every backend's reasons: keep ours
            if line.strip().startswith(f"{provider.name}:"):
                return line.strip().removeprefix(f"{provider.name}:").strip()
        return _first_line(str(error))
    if provider.errors_mean_unsupported:
        return f"{type(error).__name__}: {_first_line(str(error))}"
    return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare(case: Case, provider: Provider, device: torch.device, input_sets: list[dict]):
    """Builds the provider's call on every input set and runs each once, so that compilation,
    autotuning and lazy set-up stay out of the timing. Returns the call that rotates through them,
    the tensors whose gradients to reset between runs, and the seconds of the last first call."""
    calls = []
    for inputs in input_sets:
        calls.append(provider.build(case, inputs))
        start = time.perf_counter()
        calls[-1]()
        _synchronize(device)
        first_s = time.perf_counter() - start
    grads = [t for inputs in input_sets for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    return rotating(calls), grads, first_s


def time_case(case: Case, provider: Provider, device: torch.device, input_sets: list[dict]) -> Row:
    """Times one provider on one case; never raises for a provider's failure (it becomes the row)."""
    caught: list[warnings.WarningMessage] = []
    try:
        with provider.context(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call, grads, _ = _prepare(case, provider, device, input_sets)
            timing = measure(call, device, grad_to_none=grads)
    except Exception as error:
        if isinstance(error, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
        reason = _unsupported_reason(provider, error)
        if reason is None:
            return Row(
                case,
                provider.name,
                provider.family,
                "error",
                f"{type(error).__name__}: {_first_line(str(error))}",
            )
        warning = next((str(w.message) for w in caught if "kernel not used" in str(w.message)), "")
        if warning:
            reason += f" ({_first_line(warning, 160)})"
        return Row(case, provider.name, provider.family, "skipped", reason)
    return Row(case, provider.name, provider.family, "ok", timing=timing)


def make_input_sets(case: Case, device: torch.device) -> list[dict]:
    return [case.make_inputs() for _ in range(input_copies(case.input_bytes, device))]


def run_grid(
    section: Section,
    cases: list[Case],
    device: torch.device,
    *,
    deadline: float | None = None,
    progress: bool = True,
) -> Section:
    """Times every case on every available provider of ``section`` (quick cases first), until the
    deadline (a ``time.perf_counter`` value) if one is given."""
    from fastattn.progress import progress_bar

    cases = sorted(cases, key=lambda c: not c.quick)  # stable: the trimmed grid first
    runnable = [p for p in section.providers if p.unavailable is None]
    bar = progress_bar(
        total=len(cases) * len(runnable),
        desc=section.title,
        unit="timing",
        leave=False,
        disable=not progress,
        file=sys.stderr,
    )
    with bar:
        for index, case in enumerate(cases):
            if deadline is not None and time.perf_counter() > deadline:
                section.cases_not_run = len(cases) - index
                break
            input_sets = make_input_sets(case, device) if runnable else []
            for provider in runnable:
                section.rows.append(time_case(case, provider, device, input_sets))
                bar.update()
            del input_sets
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return section


# ---------------------------------------------------------------------------- environment, ceilings
def git_commit() -> dict:
    """The commit of the source tree this package runs from (None outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        git = ["git", "--no-optional-locks", "-C", str(root)]  # reads only: never refreshes the index
        commit = subprocess.run(
            git + ["rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            git + ["status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def results_dir() -> Path:
    """``bench/results/`` of the source tree: where recorded runs are kept."""
    return Path(__file__).resolve().parent / "results"


def environment(device: torch.device) -> dict:
    """What a result depends on: the versions (those ``python -m fastattn verify`` reports), the
    device, the commit and the date."""
    from fastattn.verify import environment as versions

    env = versions()
    env["device"] = device.type
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_capability"] = f"sm_{props.major}{props.minor}"
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    env["cpu_threads"] = torch.get_num_threads()
    env.update(git_commit())
    env["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return env


COPY_BYTES = 2**30  # 1 GiB each way: large enough that launch cost is under 0.1% on an H100
MATMUL_SIZE = 8192


def _copy_timing(device: torch.device, size: int) -> Timing:
    source = torch.randint(0, 256, (size,), dtype=torch.uint8, device=device)  # never time zeros
    target = torch.empty_like(source)
    return measure(lambda: target.copy_(source), device)


def _matmul_timing(device: torch.device) -> Timing:
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=torch.bfloat16)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=torch.bfloat16)
    return measure(lambda: a @ b, device)


def measure_ceilings(device: torch.device) -> dict | None:
    """The device's copy bandwidth (bytes read + written per second) and bf16 matmul rate, measured
    once per run; None on a CPU (no GPU ceilings to measure)."""
    if device.type != "cuda":
        return None
    size = min(COPY_BYTES, torch.cuda.get_device_properties(device).total_memory // 8)
    copy, matmul = _copy_timing(device, size), _matmul_timing(device)
    torch.cuda.empty_cache()
    return {
        "copy_GBps": 2 * size / (copy.median_ms * 1e-3) / 1e9,
        "copy_bytes": 2 * size,
        "matmul_TFLOPs": 2 * MATMUL_SIZE**3 / (matmul.median_ms * 1e-3) / 1e12,
        "matmul_shape": [MATMUL_SIZE] * 3,
    }


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU (what models train in), float32 on a CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# ------------------------------------------------------------------------------- pytest-benchmark
PYTEST_SECONDS = 0.2  # timed rounds per test: tiny CPU shapes take 10 µs to 100 ms a call
PYTEST_MIN_ROUNDS, PYTEST_MAX_ROUNDS = 3, 200


def benchmark_case(benchmark, case: Case, provider: Provider, device: torch.device) -> None:
    """Times one provider on one case with pytest-benchmark's ``benchmark`` fixture (on one thread on a
    CPU, as the command line does); skips with the provider's reason when it cannot serve the case."""
    import pytest

    if provider.unavailable is not None:
        pytest.skip(provider.unavailable)
    input_sets = make_input_sets(case, device)
    with provider.context(), cpu_threads(1) if device.type == "cpu" else contextlib.nullcontext():
        try:
            call, grads, first_s = _prepare(case, provider, device, input_sets)
        except Exception as error:
            reason = _unsupported_reason(provider, error)
            if reason is None:
                raise
            pytest.skip(reason)

        def run():
            call()
            _synchronize(device)

        rounds = max(PYTEST_MIN_ROUNDS, min(PYTEST_MAX_ROUNDS, int(PYTEST_SECONDS / max(first_s, 1e-6))))
        benchmark.extra_info.update(
            op=case.op,
            mode=case.mode,
            case=case.label,
            dtype=case.dtype,
            provider=provider.name,
            family=provider.family,
            unit=case.unit,
            work=case.work,
        )
        benchmark.pedantic(run, setup=lambda: _reset_grads(grads), rounds=rounds)  # warmed up by _prepare
