"""``python -m fastattn bench``: its arguments (:func:`add_arguments`, which the command line of
``fastattn/__main__.py`` declares as its ``bench`` subcommand) and the run (:func:`run`). The command
line depends on this module, never the reverse. Each script of this package also runs on its own
(``python -m fastattn.bench.attention --quick``) through :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from fastattn.usage import Parser, UsageError, output_file, positive_number, require_extra

# Shares of --budget, in that order; a target's unused time passes on to the ones after it.
BUDGET_WEIGHTS = {
    "attention": 40,
    "decode": 10,
    "norm": 15,
    "sampling": 10,
    "models": 15,
    "overhead": 5,
    "memory": 5,
    "ring": 5,
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
THROUGHPUT_TARGETS = ("attention", "decode", "norm", "sampling")

TARGETS = tuple(BUDGET_WEIGHTS)  # in the order they run
DESCRIPTION = """\
Times every provider side by side on the standard grid and prints one table per op: ours (cuda,
triton), PyTorch's (SDPA with each of its backends, F.layer_norm / F.rms_norm, sort-based sampling),
naive (fastattn.reference), torch.compile of naive, and every installed peer (flash-attn, xformers,
liger-kernel, apex, flashinfer); a provider that cannot run says why. In brackets: the speedup over
the best PyTorch provider of the same case.

targets (all when none is named):
  attention  TFLOP/s, forward and backward: B = 16384/N, H = 2048/D, N 512..16384, D 64/128/256; then
             sliding window, softcap, sinks, packed against padded at the shapes of the models using them
  decode     GB/s of K and V read: one query against a KV cache, B 1/8/64, cache 1k..32k, contiguous and
             paged (blocks of 16 and 256), Hq/Hkv 32/8, D 128
  norm       GB/s of the bytes that must move: LayerNorm, RMSNorm, with the residual add, backward
  sampling   µs per batch: V 32000 / 128256, B 1 / 64 / 512, top-k 50 + top-p 0.9
  models     GPT train step and generation in tokens/s on each backend (fastattn.models)
  overhead   the cost of fastattn's dispatch on small CPU tensors against calling PyTorch (limit 5%)
  memory     peak GPU memory of attention fwd+bwd for N 1k..16k: must grow linearly
  ring       ring attention fwd+bwd on 1, 2 and 4 processes: time, compute/transfer overlap ratio, memory
             per rank (O(N/W))

On a GPU, timings are triton.testing.do_bench medians (20/80 percentiles in the JSON), and the copy
bandwidth and bf16 matmul rate of the device are measured once per run as ceilings. Without a GPU,
only the dispatch overhead and tiny-shape CPU timings (milliseconds) can be measured."""
EPILOG = """\
examples:
  python -m fastattn bench                               everything this machine can run
  python -m fastattn bench attention --quick --plot a.png
  python -m fastattn bench norm --provider ours --provider torch
  python -m fastattn bench --json run.json --record      also keep the run in bench/results/"""


def _target(name: str) -> str:
    if name not in TARGETS:
        raise argparse.ArgumentTypeError(f"invalid target {name!r} (choose from {', '.join(TARGETS)})")
    return name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``python -m fastattn bench``."""
    parser.add_argument(
        "targets", nargs="*", type=_target, metavar="TARGET", help=f"one or more of {', '.join(TARGETS)}"
    )
    parser.add_argument("--quick", action="store_true", help="a trimmed grid (a few shapes per op)")
    parser.add_argument(
        "--json", type=output_file, metavar="PATH", help="write every timing as a JSON row, with the versions"
    )
    parser.add_argument("--markdown", type=output_file, metavar="PATH", help="write the tables as Markdown")
    parser.add_argument(
        "--plot",
        type=output_file,
        metavar="PATH",
        help="draw a PNG: TFLOP/s vs N (attention), GB/s vs cache length (decode) and vs hidden size "
        "(norms), µs vs batch (sampling), with the measured ceilings",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="also keep the JSON and Markdown in bench/results/, named by date, GPU, versions",
    )
    parser.add_argument(
        "--provider",
        action="append",
        metavar="NAME",
        help="time only this provider or family (ours, pytorch, peer); repeatable",
    )
    parser.add_argument("--exclude", action="append", metavar="NAME", help="leave a provider out; repeatable")
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        help="attention and norm inputs (default: bfloat16 on a GPU, float32 on a CPU)",
    )
    parser.add_argument(
        "--budget",
        type=positive_number,
        metavar="SECONDS",
        help="stop timing new shapes after this long, shared among the targets (the --quick shapes run first)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    """``python -m fastattn bench`` with these arguments, for the scripts of this package run on their own."""
    parser = Parser(
        prog="python -m fastattn bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except UsageError as error:
        parser.error(str(error))


NO_GPU_MESSAGE = """\
No CUDA GPU on this machine. What can be measured here: the dispatch overhead of fastattn's backend
layer (against calling PyTorch directly), and tiny-shape timings on the CPU that compare providers
with each other (median milliseconds on one thread). What cannot: GPU timings, TFLOP/s and GB/s, the
copy and matmul ceilings, peak GPU memory, and our cuda/triton kernels (they need a GPU; under
TRITON_INTERPRET=1 the Triton kernels only check correctness). On a GPU machine: python -m fastattn
bench, or make gpu-check RESULTS=dir for the whole check."""


def _environment_line(env: dict) -> str:
    device = f"{env['gpu']} ({env.get('gpu_capability')})" if env.get("gpu") else f"CPU ({env['cpu_threads']} threads)"
    commit = (env["commit"] or "unknown")[:12] + (" (modified)" if env.get("dirty") else "")
    return (
        f"{device}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda'] or 'none'}; "
        f"commit {commit}; {env['date']}"
    )


def _deadlines(targets: list[str], budget: float | None):
    """Yields (target, deadline) with each target's deadline set when it starts, from the time left."""
    if budget is None:
        for target in targets:
            yield target, None
        return
    end = time.perf_counter() + budget
    for index, target in enumerate(targets):
        left = max(0.0, end - time.perf_counter())
        weight = BUDGET_WEIGHTS[target] / sum(BUDGET_WEIGHTS[t] for t in targets[index:])
        yield target, time.perf_counter() + left * weight


def _check_provider_names(args, targets: list[str], op_modules: dict, device) -> None:
    """--provider and --exclude name providers (or families) of the targets run, else a UsageError."""
    from fastattn import backends

    known = set()
    for target in targets:
        if target in op_modules:
            known |= {
                name for provider in op_modules[target].providers(device) for name in (provider.name, provider.family)
            }
        elif target == "models":
            known |= {*backends.AUTO_ORDER, "ours", "pytorch"}
    for flag, names in (("--provider", args.provider or ()), ("--exclude", args.exclude or ())):
        unknown = [name for name in names if name not in known]
        if unknown:
            choices = ", ".join(sorted(known)) or "none: these targets have no providers"
            raise UsageError(
                f"argument {flag}: {', '.join(map(repr, unknown))} is no provider of {', '.join(targets)} "
                f"(choose from {choices})"
            )


def run(args) -> int:
    """Runs ``args.targets`` (all when empty); returns 1 when an acceptance check fails or one of our
    kernels crashed, else 0."""
    from . import attention, decode, memory, models, norm, overhead, plot, report, ring, sampling
    from .harness import (
        Section,
        choose_providers,
        cpu_threads,
        default_device,
        default_dtype,
        environment,
        measure_ceilings,
        run_grid,
    )

    if args.plot:
        require_extra("matplotlib", "plot", "--plot", "drawing the plots")
    targets = list(dict.fromkeys(args.targets)) or list(TARGETS)
    device = default_device()
    op_modules = {"attention": attention, "decode": decode, "norm": norm, "sampling": sampling}
    _check_provider_names(args, targets, op_modules, device)
    on_gpu = device.type == "cuda"
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(device)
    progress = not args.no_progress
    if not on_gpu:
        print(NO_GPU_MESSAGE + "\n")
    env = environment(device)
    print(_environment_line(env) + "\n")
    ceilings = None
    if on_gpu and any(t in THROUGHPUT_TARGETS for t in targets):
        ceilings = measure_ceilings(device)
        print(
            f"ceilings measured on this device: copy {ceilings['copy_GBps']:.0f} GB/s (bytes read + "
            f"written), 8192³ bf16 matmul {ceilings['matmul_TFLOPs']:.0f} TFLOP/s\n"
        )

    sections: list[Section] = []
    markdown_parts = [f"## fastattn benchmarks: {_environment_line(env)}\n"]
    if not on_gpu:
        markdown_parts.append(NO_GPU_MESSAGE.replace("\n", " ") + "\n")
    overhead_results, memory_results, ring_results, failures = [], [], [], []
    for target, deadline in _deadlines(targets, args.budget):
        if target in op_modules:
            module = op_modules[target]
            section = Section(
                module.TITLE,
                providers=choose_providers(
                    module.providers(device), device, include=args.provider or (), exclude=args.exclude or ()
                ),
            )
            cases = module.cases(device, dtype)
            if args.quick:
                cases = [case for case in cases if case.quick]
            with cpu_threads(1) if not on_gpu else contextlib.nullcontext():
                run_grid(section, cases, device, deadline=deadline, progress=progress)
        elif target == "models":
            with cpu_threads(1) if not on_gpu else contextlib.nullcontext():
                section = models.run(
                    device,
                    include=args.provider or (),
                    exclude=args.exclude or (),
                    deadline=deadline,
                    progress=progress,
                )
        elif target == "overhead":
            budget = overhead.BUDGET_S if deadline is None else max(0.2, (deadline - time.perf_counter()) / 5)
            overhead_results, notes = overhead.run(min(budget, overhead.BUDGET_S), progress=progress)
            print(overhead.format_table(overhead_results, notes))
            markdown_parts.append(overhead.format_table(overhead_results, notes, markdown=True))
            failures += [f"dispatch overhead of {r.op}: {r.overhead:+.1%}" for r in overhead_results if not r.ok]
            continue
        elif target == "ring":
            ring_results, notes = ring.run(device)
            print(ring.format_table(ring_results, notes))
            markdown_parts.append(ring.format_table(ring_results, notes, markdown=True))
            continue
        else:
            memory_results, notes = memory.run(device)
            print(memory.format_table(memory_results, notes))
            markdown_parts.append(memory.format_table(memory_results, notes, markdown=True))
            failures += [f"memory of {r.backend} attention grows superlinearly" for r in memory_results if not r.ok]
            continue
        sections.append(section)
        print(report.section_text(section, on_gpu))
        markdown_parts.append(report.section_text(section, on_gpu, markdown=True))
        failures += [
            f"{row.provider} crashed on {row.case.op} {row.case.mode} {row.case.label}: {row.reason}"
            for row in section.rows
            if row.status == "error" and row.family == "ours"
        ]

    markdown = "\n".join(markdown_parts)
    result = {
        "environment": env,
        "ceilings": ceilings,
        "targets": targets,
        "grid": "tiny (CPU)" if not on_gpu else ("quick" if args.quick else "standard"),
        "budget_s": args.budget,
        "providers": report.providers_summary(sections),
        "overhead": [r.as_dict() for r in overhead_results],
        "memory": [r.as_dict() for r in memory_results],
        "ring": [r.as_dict() for r in ring_results],
        "failures": failures,
        "rows": report.json_rows(sections, env, on_gpu),
    }
    if args.json:
        report.write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as file:
            file.write(markdown)
        print(f"wrote {args.markdown}")
    if args.plot:
        title = f"fastattn: {_environment_line(env)}"
        if plot.plot(args.plot, sections, ceilings=ceilings, on_gpu=on_gpu, title=title):
            print(f"wrote {args.plot}")
        else:
            print(f"--plot: nothing to draw for {', '.join(targets)}")
    if args.record:
        for path in report.record(result, markdown):
            print(f"recorded {path}")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0
