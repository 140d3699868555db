"""``make gpu-check RESULTS=dir``: build, test, verify and benchmark fastattn on a GPU machine in one call.

Made for a machine with torch and triton preinstalled and no network, and for one call of at most
10 minutes (an H100 with 16 cores). The stages, each stopped when it runs past its share of the
budget (default 570 s; the time a stage leaves unused passes on to the ones after it):

    build      pip install --no-build-isolation --no-deps -e . with MAX_JOBS=16; if the CUDA
               extension fails to build, the package is installed without it so the rest still runs
    env        python -m fastattn env, and nvidia-smi's view of the card
    tests      the test suite on CUDA (pytest; JUnit XML)
    verify     python -m fastattn verify --full --json
    memory     peak memory of attention forward + backward for N = 1k .. 16k: must grow linearly
    bench      the standard benchmark grid, trimmed by a time budget (the --quick shapes run first;
               torch.compile is left out: compiling each shape takes seconds to tens of seconds)
    sanitizer  compute-sanitizer memcheck over the tests of the cuda backend (-k cuda), when the tool exists

RESULTS receives at most 7 files: summary.md and summary.json (every stage's outcome, the memory and
overhead checks, the benchmark tables), log.txt (every command's output), tests.xml, verify.json,
bench.json and bench.png. Without a GPU, the GPU stages report "skipped: no GPU" and the CPU part of
the benchmarks runs; ``--dry-run`` writes the plan without running anything. The exit status is 1
when a stage that ran failed or timed out.

This file uses only the standard library and runs as a script from the source tree, before fastattn
is installed:

    python bench/gpu_check.py --results DIR [--budget SECONDS] [--dry-run]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 570  # 10 minutes, less make's start-up and the report
BUILD_JOBS = "16"
BENCH_MARGIN_S = 30  # the benchmarks stop starting shapes this long before their stage's limit
MIN_STAGE_S = 5
LOG_HEAD_BYTES, LOG_TAIL_BYTES = 50_000, 350_000  # per stage: the start and the end of long outputs
GPU_PROBE = "import torch; print(torch.cuda.is_available())"
NVIDIA_SMI_QUERY = "name,driver_version,memory.total,temperature.gpu,power.draw,power.limit,clocks.sm,clocks.max.sm"


@dataclass
class Stage:
    name: str
    weight: float  # its share of the budget, against the stages still to run
    needs_gpu: bool
    what: str
    status: str = "not run"  # passed, failed, timed out, skipped: <why>, not run (dry run)
    seconds: float = 0.0
    limit_s: float = 0.0
    detail: str = ""
    commands: list[str] = field(default_factory=list)


def _stages() -> list[Stage]:
    return [
        Stage("build", 25, True, "pip install --no-build-isolation --no-deps -e . (MAX_JOBS=16)"),
        Stage("env", 2, False, "python -m fastattn env; nvidia-smi"),
        Stage("tests", 25, True, "pytest on CUDA, JUnit XML"),
        Stage("verify", 10, True, "python -m fastattn verify --full --json"),
        Stage("memory", 4, True, "peak memory of attention fwd+bwd, N = 1k..16k"),
        Stage("bench", 25, False, "python -m fastattn bench on the standard grid, time-budgeted"),
        Stage("sanitizer", 9, True, "compute-sanitizer memcheck over the cuda backend's tests"),
    ]


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        candidate = Path(home or "/nonexistent", "bin", "compute-sanitizer")
        if candidate.exists():
            return str(candidate)
    return None


def _commands(stage: Stage, python: str, results: Path, scratch: Path, limit_s: float) -> list[list[str]]:
    """The commands of a stage, run in order (build: the second only when the first fails)."""
    fastattn = [python, "-m", "fastattn"]
    if stage.name == "build":
        install = [python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."]
        return [install, install]
    if stage.name == "env":
        commands = [fastattn + ["env"]]
        if shutil.which("nvidia-smi"):
            commands.append(["nvidia-smi", f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv"])
        return commands
    if stage.name == "tests":
        return [[python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={results / 'tests.xml'}"]]
    if stage.name == "verify":
        return [fastattn + ["verify", "--full", "--json", str(results / "verify.json")]]
    if stage.name == "memory":
        return [
            fastattn
            + [
                "bench",
                "memory",
                "--no-progress",
                "--json",
                str(scratch / "memory.json"),
                "--markdown",
                str(scratch / "memory.md"),
            ]
        ]
    if stage.name == "bench":
        budget = max(MIN_STAGE_S, limit_s - BENCH_MARGIN_S)
        return [
            fastattn
            + [
                "bench",
                "attention",
                "decode",
                "norm",
                "sampling",
                "models",
                "overhead",
                "--no-progress",
                "--budget",
                f"{budget:.0f}",
                "--exclude",
                "torch.compile",
                "--json",
                str(results / "bench.json"),
                "--plot",
                str(results / "bench.png"),
                "--markdown",
                str(scratch / "bench.md"),
            ]
        ]
    sanitizer = _sanitizer()
    return [
        [
            sanitizer or "compute-sanitizer",
            "--tool",
            "memcheck",
            "--error-exitcode",
            "1",
            "--target-processes",
            "all",
            python,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-k",
            "cuda",
            "-m",
            "not slow",
            "tests",
        ]
    ]


def _run(command: list[str], env: dict, timeout: float, output) -> int | None:
    """Runs one command with its output into ``output``; its exit code, or None when it timed out
    (then its whole process group is stopped)."""
    output.write(f"$ {' '.join(command)}\n")
    output.flush()
    try:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    except OSError as error:
        output.write(f"cannot start: {error}\n")
        return 127
    try:
        return process.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        output.write(f"\nstopped after {timeout:.0f} s (the stage's time limit)\n")
        return None


def _append_log(log: Path, stage: Stage, output: Path) -> None:
    """Appends a stage's output to the log, its middle left out when it is long."""
    data = output.read_bytes()
    if len(data) > LOG_HEAD_BYTES + LOG_TAIL_BYTES:
        left_out = len(data) - LOG_HEAD_BYTES - LOG_TAIL_BYTES
        data = data[:LOG_HEAD_BYTES] + f"\n[... {left_out} bytes left out ...]\n".encode() + data[-LOG_TAIL_BYTES:]
    with open(log, "ab") as file:
        header = f"\n===== {stage.name}: {stage.status} ({stage.seconds:.0f} s of {stage.limit_s:.0f} s)\n"
        file.write(header.encode())
        file.write(data)


def run_stage(stage: Stage, python: str, results: Path, scratch: Path, limit_s: float) -> None:
    stage.limit_s = limit_s
    if stage.name == "sanitizer" and _sanitizer() is None:
        stage.status = "skipped: compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)"
        return
    commands = _commands(stage, python, results, scratch, limit_s)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if stage.name == "build":
        env["MAX_JOBS"] = BUILD_JOBS
    output = scratch / f"{stage.name}.out"
    start = time.perf_counter()
    with open(output, "w", encoding="utf-8") as handle:
        codes = []
        for index, command in enumerate(commands):
            if stage.name == "build" and index == 1:
                if codes[0] == 0:
                    break
                env["FASTATTN_SKIP_CUDA_BUILD"] = "1"  # the Python package, so that the other stages run
                handle.write("\nthe build failed: installing without the CUDA extension\n")
            stage.commands.append(" ".join(command))
            code = _run(command, env, limit_s - (time.perf_counter() - start), handle)
            codes.append(code)
            if code is None:
                break
    stage.seconds = time.perf_counter() - start
    if None in codes:
        stage.status = "timed out"
    elif stage.name == "sanitizer" and codes[0] == 5:
        stage.status = "skipped: no test of the cuda backend selected (-k cuda)"
    elif stage.name == "build" and codes[0] != 0:
        stage.status = "failed"
        stage.detail = (
            "CUDA extension not built; installed without it" if codes[-1] == 0 else "could not install the package"
        )
    elif stage.name == "env":
        stage.status = "passed" if codes[0] == 0 else "failed"
    else:
        stage.status = "passed" if all(code == 0 for code in codes) else "failed"
    _append_log(results / "log.txt", stage, output)


# ---------------------------------------------------------------------------------------- the report
def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _junit_counts(path: Path) -> dict | None:
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def _verify_counts(report: dict | None) -> dict | None:
    if report is None:
        return None
    rows = report.get("rows", [])
    return {"passed": sum(1 for r in rows if r.get("ok")), "failed": sum(1 for r in rows if not r.get("ok"))}


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _environment_text(environment: dict | None) -> str:
    if not environment:
        return "environment: unknown (no benchmark report was written)"
    commit = (environment.get("commit") or "unknown")[:12] + (" (modified)" if environment.get("dirty") else "")
    return (
        f"{environment.get('gpu') or 'no GPU'}; torch {environment.get('torch')}, triton "
        f"{environment.get('triton')}, CUDA {environment.get('cuda')}; commit {commit}; "
        f"{environment.get('date')}"
    )


def write_report(
    stages: list[Stage],
    results: Path,
    scratch: Path,
    *,
    gpu: bool,
    budget: float,
    dry_run: bool,
    started: str,
) -> str:
    """Writes summary.json and summary.md; returns the Markdown without the benchmark tables."""
    bench = _load_json(results / "bench.json")
    memory = _load_json(scratch / "memory.json")
    environment = (bench or memory or {}).get("environment")
    tests, verify = _junit_counts(results / "tests.xml"), _verify_counts(_load_json(results / "verify.json"))
    summary = {
        "started": started,
        "gpu": gpu,
        "dry_run": dry_run,
        "budget_s": budget,
        "environment": environment,
        "stages": [asdict(stage) for stage in stages],
        "tests": tests,
        "verify": verify,
        "memory": (memory or {}).get("memory"),
        "overhead": (bench or {}).get("overhead"),
        "ceilings": (bench or {}).get("ceilings"),
        "bench_failures": (bench or {}).get("failures"),
    }
    lines = [f"# fastattn GPU check, {started}", "", _environment_text(environment), ""]
    if not gpu:
        lines += ["No GPU on this machine: the GPU stages were skipped.", ""]
    lines += ["| stage | result | time | limit | what |", "|---|---|---|---|---|"]
    for stage in stages:
        result = stage.status + (f" ({stage.detail})" if stage.detail else "")
        lines.append(f"| {stage.name} | {result} | {stage.seconds:.0f} s | {stage.limit_s:.0f} s | {stage.what} |")
    lines.append("")
    if tests:
        lines.append(
            f"tests: {tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
            f"{tests['skipped']} skipped"
        )
    if verify:
        lines.append(f"verify: {verify['passed']} passed, {verify['failed']} failed")
    for failure in summary["bench_failures"] or []:
        lines.append(f"benchmark check failed: {failure}")
    lines.append("")
    short = "\n".join(lines) + "\n" + _read(scratch / "memory.md")
    full = short + "\n" + _read(scratch / "bench.md")
    files = sorted(p.name for p in results.iterdir() if p.is_file()) + ["summary.json", "summary.md"]
    full += "\nfiles: " + ", ".join(sorted(set(files))) + "\n"
    summary["files"] = sorted(set(files))
    (results / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (results / "summary.md").write_text(full, encoding="utf-8")
    return short


def _has_gpu(python: str) -> bool:
    try:
        probe = subprocess.run([python, "-c", GPU_PROBE], capture_output=True, text=True, timeout=120, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.stdout.strip().endswith("True")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", required=True, type=Path, help="the folder that receives the results")
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds for all the stages together (default {DEFAULT_BUDGET_S})",
    )
    parser.add_argument("--dry-run", action="store_true", help="write the plan and the report; run nothing")
    args = parser.parse_args(argv)

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    deadline = time.perf_counter() + args.budget
    python = sys.executable
    results = args.results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    (results / "log.txt").write_text(f"fastattn GPU check, {started}, python {python}\n", encoding="utf-8")
    gpu = _has_gpu(python)
    print(
        f"[gpu-check] {'GPU found' if gpu else 'no GPU: the GPU stages are skipped'}; "
        f"budget {args.budget:.0f} s; results in {results}",
        flush=True,
    )
    stages = _stages()
    planned = 0.0
    with tempfile.TemporaryDirectory(prefix="fastattn-gpu-check-") as scratch_name:
        scratch = Path(scratch_name)
        for index, stage in enumerate(stages):
            runs_here = gpu or not stage.needs_gpu
            if not runs_here and not args.dry_run:
                stage.status = "skipped: no GPU"
                continue
            # A dry run plans for a GPU machine: every stage, with the limits it would get there.
            to_run = [s for s in stages[index:] if gpu or args.dry_run or not s.needs_gpu]
            left = deadline - time.perf_counter() - planned
            limit = max(MIN_STAGE_S, left * stage.weight / sum(s.weight for s in to_run))
            if args.dry_run:
                stage.status = "not run (dry run)" if runs_here else "not run (dry run; no GPU here)"
                stage.limit_s = limit
                planned += limit  # the plan assumes each stage uses all of its time
                stage.commands = [" ".join(c) for c in _commands(stage, python, results, scratch, limit)]
                print(f"[gpu-check] {stage.name}: at most {limit:.0f} s: {' ; '.join(stage.commands)}")
                continue
            print(f"[gpu-check] {stage.name}: {stage.what} (at most {limit:.0f} s)", flush=True)
            run_stage(stage, python, results, scratch, limit)
            print(
                f"[gpu-check] {stage.name}: {stage.status} in {stage.seconds:.0f} s"
                + (f" ({stage.detail})" if stage.detail else ""),
                flush=True,
            )
        short = write_report(
            stages, results, scratch, gpu=gpu, budget=args.budget, dry_run=args.dry_run, started=started
        )
    print()
    print(short)
    print(f"full report: {results / 'summary.md'}")
    failed = [s for s in stages if s.status in ("failed", "timed out")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
