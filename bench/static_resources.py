"""Registers, spills, shared memory and occupancy of every GPU kernel of the package on sm_80 and sm_90,
from the compilers alone (no GPU).

    python bench/static_resources.py                      # both sources, both architectures
    python bench/static_resources.py --only cuda --arch 90

Triton: every variant the launchers can select is compiled ahead of time by ``bench/triton_aot.py``
(one process per architecture, side by side), which records the shared memory Triton reports and
what ptxas says of registers and spills. For sm_80 the launchers also choose under the 99 KiB of
sm_86/sm_89, so the tiles kept for those GPUs are compiled and checked too (with sm_80's code, which
is what runs there). Triton builds capability 90 as sm_90a (its wgmma path), the CUDA extension as
sm_90 (see setup.py).

CUDA: each kernel file of the extension (the ``.cu`` files setup.py builds) is compiled to a cubin
with setup.py's nvcc flags and ``-Xptxas -v``, several files at a time; the entry functions' threads
per block come from their ``__launch_bounds__`` (``.maxntid`` in the PTX, kept with ``--keep``: the
largest block a launcher uses), and the dynamic shared memory the host launches the attention kernels
with from the extension itself (``fastattn._C.attention_shared_memory``).

Occupancy per SM, the smallest of: registers (65,536 per SM, allocated per warp in units of 256:
ceil(registers x 32 / 256) x 256), shared memory (164 KiB per SM on sm_80, 228 KiB on sm_90, less
1 KiB the system reserves per block), threads (2,048) and blocks (32). A kernel fits an architecture
when its static plus dynamic shared memory is at most the most one block may opt in to: 163 KiB on
sm_80 (A100), 99 KiB on sm_86/sm_89, 227 KiB on sm_90 (H100/H200).

Writes ``resources.json`` (every row, the versions, the commit, the time each part took) and
``resources.md`` (the findings, then the tables) to ``--out`` (default bench/results/static/). The exit
status is 1 when there is a problem: a variant a launcher picks that spills (beyond ACCEPTED_SPILLS,
each there for a reason) or does not fit a GPU it is picked for; tests/test_static_resources.py fails
on the same. On 2 cores: about 2.5 minutes for Triton, 40 s for CUDA.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AOT_SCRIPT = Path(__file__).resolve().parent / "triton_aot.py"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "static"
COMPILE_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Arch:
    name: str
    optin_shared: int  # the most shared memory one block may opt in to (bytes)
    shared_per_sm: int  # shared memory per SM (bytes)
    registers_per_sm: int = 65536
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32


ARCHS = {
    80: Arch("sm_80", 163 * 1024, 164 * 1024),  # A100
    90: Arch("sm_90", 227 * 1024, 228 * 1024),  # H100, H200
}
SM86 = Arch("sm_86/89", 99 * 1024, 100 * 1024, threads_per_sm=1536, blocks_per_sm=16)  # A10, L4, RTX 30/40
# The GPUs that run each architecture's code (sm_86/sm_89 run sm_80's): the Triton launchers choose
# under each one's shared memory, and every kernel is checked against each.
RUNS_ON = {80: (ARCHS[80], SM86), 90: (ARCHS[90],)}
RESERVED_SHARED_PER_BLOCK = 1024
REGISTER_UNIT = 256  # registers are allocated per warp in units of 256
WARP = 32


@dataclass
class Row:
    """One compiled kernel variant on one architecture."""

    source: str  # "triton" or "cuda"
    kernel: str
    arch: int
    dtype: str  # of the inputs
    config: dict  # Triton: the constexpr sizes, "warps" and "stages"; CUDA: "template", its arguments
    switches: dict[str, bool]  # the kernel's constexpr switches (Triton)
    threads: int | None  # per block; None: not fixed at compile time (a CUDA kernel without __launch_bounds__)
    registers: int
    spill_stores: int  # bytes per thread
    spill_loads: int
    static_shared: int
    dynamic_shared: int | None  # None: the extension does not report it
    picked_on: list[str] = field(default_factory=list)  # where a launcher selects it
    fits: dict[str, bool | None] = field(default_factory=dict)
    blocks_per_sm: int | None = None  # None: the block size is not known
    warps_per_sm: int | None = None
    limited_by: str = ""


# ------------------------------------------------------------------------------------------ ptxas
ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)'")
SPILLS = re.compile(
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads"
)
USED = re.compile(r"Used (?P<registers>\d+) registers(?:, used \d+ barriers)?(?:, (?P<smem>\d+) bytes smem)?")


def parse_ptxas(log: str) -> dict[str, dict]:
    """ptxas -v's report per entry function: registers, spill stores and loads, static shared memory."""
    entries: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        if match := ENTRY.search(line):
            current = entries[match["name"]] = {"registers": 0, "spill_stores": 0, "spill_loads": 0, "static_shared": 0}
        elif current is not None and (match := SPILLS.search(line)):
            current["spill_stores"], current["spill_loads"] = int(match["stores"]), int(match["loads"])
        elif current is not None and (match := USED.search(line)):
            current["registers"] = int(match["registers"])
            current["static_shared"] = int(match["smem"] or 0)
            current = None  # the entry's last line
    return entries


def occupancy(row: Row, arch: Arch) -> tuple[int, str]:
    """(blocks per SM, what limits them) for ``row`` on ``arch``."""
    warps = math.ceil(row.threads / WARP)
    registers_per_warp = math.ceil(row.registers * WARP / REGISTER_UNIT) * REGISTER_UNIT
    shared = row.static_shared + (row.dynamic_shared or 0) + RESERVED_SHARED_PER_BLOCK
    limits = {
        "registers": arch.registers_per_sm // (registers_per_warp * warps) if row.registers else arch.blocks_per_sm,
        "shared memory": arch.shared_per_sm // shared,
        "threads": arch.threads_per_sm // (warps * WARP),
        "blocks": arch.blocks_per_sm,
    }
    limiter = min(limits, key=lambda name: limits[name])
    return limits[limiter], limiter


def finish(row: Row, limits: tuple[Arch, ...]) -> Row:
    """Fills in where ``row`` fits and its occupancy on its own architecture."""
    shared = None if row.dynamic_shared is None else row.static_shared + row.dynamic_shared
    row.fits = {arch.name: None if shared is None else shared <= arch.optin_shared for arch in limits}
    if row.threads is None:
        row.limited_by = "block size set at launch"
        return row
    row.blocks_per_sm, row.limited_by = occupancy(row, ARCHS[row.arch])
    row.warps_per_sm = row.blocks_per_sm * math.ceil(row.threads / WARP)
    return row


# ----------------------------------------------------------------------------------------- Triton
def triton_rows(archs: list[int]) -> tuple[list[Row], list[str]]:
    """Compiles every Triton variant for ``archs``, one process per architecture side by side: (rows, the
    kernels the package defines)."""
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory(prefix="fastattn-aot-") as scratch:
        processes = {}
        for arch in archs:
            limits = [str(limit.optin_shared) for limit in RUNS_ON[arch]]
            processes[arch] = subprocess.Popen(
                [sys.executable, str(AOT_SCRIPT), str(arch), *limits],
                # a scratch cache: triton_aot.py compiles every variant afresh (for ptxas' report) anyway
                env={**environment, "TRITON_CACHE_DIR": os.path.join(scratch, f"sm{arch}")},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        reports = {}
        for arch, process in processes.items():
            stdout, stderr = process.communicate(timeout=COMPILE_TIMEOUT_S)
            if process.returncode != 0:
                raise RuntimeError(f"compiling the Triton kernels for sm_{arch} failed:\n{stderr[-6000:]}")
            reports[arch] = json.loads(stdout.splitlines()[-1])
    defined = reports[archs[0]]["defined"] if archs else []
    return [row for arch in archs for row in _triton_arch_rows(reports[arch])], defined


def _triton_arch_rows(report: dict) -> list[Row]:
    arch = report["arch"]
    by_limit = {limit.optin_shared: limit.name for limit in RUNS_ON[arch]}
    rows = []
    for variant in report["compiled"]:
        (ptxas,) = parse_ptxas(variant["ptxas"]).values()  # one entry function per Triton kernel
        constexprs = variant["constexprs"]
        config = {name: value for name, value in constexprs.items() if not isinstance(value, bool)}
        config |= {"warps": variant["num_warps"], "stages": variant["num_stages"]}
        row = Row(
            source="triton",
            kernel=variant["kernel"],
            arch=arch,
            dtype=variant["dtype"],
            config=config,
            switches={name: value for name, value in constexprs.items() if isinstance(value, bool)},
            threads=variant["num_warps"] * WARP,
            registers=ptxas["registers"],
            spill_stores=ptxas["spill_stores"],
            spill_loads=ptxas["spill_loads"],
            static_shared=ptxas["static_shared"],
            dynamic_shared=variant["shared_bytes"],
            picked_on=[by_limit[limit] for limit in variant["launched_under"]],
        )
        rows.append(finish(row, RUNS_ON[arch]))
    return rows


# ------------------------------------------------------------------------------------------- CUDA
def _setup_module():
    """setup.py's helpers (nvcc flags, kernel files, include folders), without running setup()."""
    spec = importlib.util.spec_from_file_location("fastattn_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_unavailable() -> str | None:
    """Why the CUDA kernels cannot be reported here (None: they can)."""
    if not (ROOT / "setup.py").exists():
        return "not a source checkout (setup.py and csrc/ are missing)"
    if _setup_module()._find_cuda_home() is None:
        return "nvcc is not found (set CUDA_HOME)"
    from fastattn import backends

    if backends.EXTENSION_ERROR is not None:
        return f"the extension fastattn._C does not load: {backends.EXTENSION_ERROR}"
    return None


ENTRY_PTX = re.compile(r"\.entry\s+(?P<name>\w+)\s*\((?P<params>[^)]*)\)(?P<directives>[^{]*)\{")
EXTERN_SHARED = re.compile(r"\.extern\s+\.shared\s[^;]*?(?P<name>\w+)\[\]\s*;")
MAXNTID = re.compile(r"\.maxntid\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?")
INSTANTIATION = re.compile(r"attention_(?P<dtype>fp16|bf16|fp32)_hd(?P<head_dim>\d+)\.cu")
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}  # of the instantiation files' names
CXX_DTYPES = {"__half": "float16", "__nv_bfloat16": "bfloat16", "float": "float32"}  # a template's first argument


def _compile_cuda(nvcc: str, flags: list[str], source: str, arch: int, scratch: Path) -> tuple[str, str, dict]:
    """nvcc -cubin of one file for one architecture: (ptxas' report, the PTX, the seconds it took)."""
    keep = scratch / f"{Path(source).stem}-sm{arch}"
    keep.mkdir()
    command = [nvcc, "-cubin", f"-arch=sm_{arch}", *flags, "-Xptxas", "-v", "--keep", f"--keep-dir={keep}"]
    start = time.perf_counter()
    result = subprocess.run(
        [*command, source, "-o", str(keep / "out.cubin")], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source} for sm_{arch}:\n{result.stderr[-6000:]}")
    ptx = "\n".join(path.read_text() for path in sorted(keep.glob("*.ptx")))
    return result.stdout + result.stderr, ptx, {"file": os.path.relpath(source, ROOT), "arch": arch, "s": seconds}


def _demangle(names: list[str]) -> dict[str, str]:
    try:
        result = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    except (OSError, subprocess.SubprocessError):
        return {name: name for name in names}
    return dict(zip(names, result.stdout.splitlines(), strict=True))


def _entries(source: str, arch: int, log: str, ptx: str) -> list[tuple]:
    """(source, arch, mangled name, ptxas' numbers, threads per block or None, whether it takes dynamic
    shared memory) of each entry function of one compiled file."""
    externs = EXTERN_SHARED.findall(ptx)
    in_ptx = {match["name"]: match for match in ENTRY_PTX.finditer(ptx)}
    starts = sorted(match.start() for match in in_ptx.values()) + [len(ptx)]
    entries = []
    for name, ptxas in parse_ptxas(log).items():
        match = in_ptx[name]
        bounds = MAXNTID.search(match["directives"])
        threads = math.prod(int(n) for n in bounds.groups() if n) if bounds else None
        body = ptx[match.end() : next(start for start in starts if start > match.start())]
        dynamic = any(re.search(rf"\b{re.escape(extern)}\b", body) for extern in externs)
        entries.append((source, arch, name, ptxas, threads, dynamic))
    return entries


def cuda_rows(archs: list[int], jobs: int) -> tuple[list[Row], list[dict]]:
    """Compiles every kernel file of the extension for ``archs``, ``jobs`` at a time: (rows, timings)."""
    setup = _setup_module()
    cuda_home = setup._find_cuda_home()
    os.environ.setdefault("CUDA_HOME", cuda_home)  # else torch.utils.cpp_extension guesses, and warns
    import torch
    from torch.utils.cpp_extension import include_paths

    import fastattn._C

    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    includes = setup.include_dirs(torch.version.cuda) + include_paths()
    flags = setup.NVCC_FLAGS + [f"-I{folder}" for folder in includes]
    with tempfile.TemporaryDirectory(prefix="fastattn-nvcc-") as scratch:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            tasks = {
                pool.submit(_compile_cuda, nvcc, flags, source, arch, Path(scratch)): (source, arch)
                for source in setup.kernel_sources()
                for arch in archs
            }
            results = {tasks[task]: task.result() for task in concurrent.futures.as_completed(tasks)}
    entries = [
        entry for (source, arch), (log, ptx, _) in sorted(results.items()) for entry in _entries(source, arch, log, ptx)
    ]
    names = _demangle(sorted({entry[2] for entry in entries}))
    rows = []
    for source, arch, name, ptxas, threads, dynamic in entries:
        kernel, _, arguments = names[name].removeprefix("void ").partition("<")
        kernel = kernel.split("(")[0].removeprefix("fastattn::")
        config = {"template": arguments.rpartition(">")[0]} if arguments else {}
        instantiation = INSTANTIATION.search(source)
        dtype = DTYPES[instantiation["dtype"]] if instantiation else CXX_DTYPES.get(arguments.split(",")[0], "")
        dynamic_shared = 0
        if dynamic:  # only the attention kernels' sizes are reported by the extension
            dynamic_shared = None
            if instantiation:
                forward, backward, _ = fastattn._C.attention_shared_memory(
                    getattr(torch, dtype), int(instantiation["head_dim"])
                )
                dynamic_shared = forward if "_fwd_" in kernel else backward
            elif kernel == "attn::decode::attn_decode_split_kernel":  # template <T, DC>: head dims up to 32 DC
                chunks = int(arguments.rpartition(">")[0].rpartition(",")[2])
                dynamic_shared = fastattn._C.attention_shared_memory(getattr(torch, dtype), 32 * chunks)[2]
        row = Row(
            source="cuda",
            kernel=kernel,
            arch=arch,
            dtype=dtype,
            config=config,
            switches={},
            threads=threads,
            dynamic_shared=dynamic_shared,
            picked_on=[ARCHS[arch].name],
            **ptxas,
        )
        rows.append(finish(row, RUNS_ON[arch]))
    timings = [timing for _, _, timing in results.values()]
    return rows, timings


# ----------------------------------------------------------------------------------------- report
# Spills accepted, each for its reason, by (source, kernel, arch): the most bytes of spill stores a thread
# of any of its variants may have. Most are ptxas' own trade, registers kept below what the block size
# allows (255 up to 256 threads) so that one more block fits an SM, for a few bytes that stay in L1. A
# variant spilling more, or an entry that no longer spills anything, is a problem: the list follows the
# compilers.
ATOMIC_DQ = (
    "only with the atomic dQ (deterministic=False), with dropout or in float32: dK, dV and a dQ tile with its "
    "atomic addresses live at once, and none of some 40 tiles tried compiles without spilling on one "
    "architecture or the other (kernels/attention.py, above _GPU_CONFIGS)"
)
ACCEPTED_SPILLS = {
    ("triton", "_attn_bwd_dkdv_kernel", 80): (20, f"4 bytes in 16-bit, 4-20 in float32, {ATOMIC_DQ}"),
    ("triton", "_attn_bwd_dkdv_kernel", 90): (28, f"12 bytes in 16-bit, 20-28 in float32, {ATOMIC_DQ}"),
    ("triton", "_sample_kernel", 90): (
        52,
        "ptxas keeps 128 registers (2 blocks of 8 warps); 4 warps take 168 and still spill 4 bytes, and 256-element "
        "tiles spill nothing on sm_90 but 8-20 bytes on sm_80",
    ),
    ("triton", "_norm_bwd_looped_kernel", 80): (8, "ptxas keeps 64 registers (4 blocks of 8 warps); sm_90 spills none"),
    ("cuda", "attn::decode::attn_decode_split_kernel", 80): (
        12,
        "ptxas keeps 128 registers (4 blocks of 128 threads); __launch_bounds__(128, 1) spills nothing at 154-170 "
        "registers but allows 3 blocks: which is faster needs a GPU",
    ),
    ("cuda", "attn::decode::attn_decode_split_kernel", 90): (16, "as on sm_80 (96-128 registers kept)"),
    ("cuda", "attn::simt::attn_bwd_dq_simt_kernel", 80): (
        28,
        "ptxas keeps 168 registers (3 blocks of 128 threads); __launch_bounds__(128, 1) spills nothing at 214-222, "
        "2 blocks; for head dims > 128 (DC = 8) shared memory allows 1 block anyway, so there that costs nothing",
    ),
    ("cuda", "attn::simt::attn_bwd_dkdv_simt_kernel", 80): (
        40,
        "ptxas keeps 128 and 168 registers (DC = 2, 8); __launch_bounds__(128, 1) spills nothing at 184 and 214 "
        "registers; DC = 8 is held to 1 block by shared memory anyway",
    ),
    ("cuda", "norm::norm_bwd_dx_kernel", 80): (
        20,
        "512 threads allow 128 registers, and the row cache of 4 chunks (x-hat and g, 128 floats) needs a few more on "
        "sm_80 (not on sm_90); a smaller cache or 256-thread blocks would change the rows the cached kernel serves",
    ),
}


def problems(rows: list[Row]) -> list[str]:
    """What must not be: a variant a launcher picks that spills (beyond ACCEPTED_SPILLS), or that does not fit
    where it is picked; and an accepted spill that is gone."""
    found = []
    spilling = set()
    for row in rows:
        where = f"{row.source} {row.kernel} {row.dtype} {_config(row.config)} {_switches(row.switches)}"
        where += f" on {ARCHS[row.arch].name}"
        accepted, _ = ACCEPTED_SPILLS.get((row.source, row.kernel, row.arch), (0, ""))
        if row.picked_on and row.spill_stores:
            spilling.add((row.source, row.kernel, row.arch))
            if row.spill_stores > accepted:
                found.append(f"{where}: {row.spill_stores} bytes of spill stores per thread")
        for name in row.picked_on:
            if row.fits.get(name) is False:
                shared = row.static_shared + row.dynamic_shared
                found.append(f"{where}: {shared} bytes of shared memory, more than {name} allows a block")
    compiled = {(row.source, row.arch) for row in rows}
    for source, kernel, arch in ACCEPTED_SPILLS.keys() - spilling:
        if (source, arch) in compiled:
            found.append(f"{source} {kernel} on {ARCHS[arch].name} spills no more: remove it from ACCEPTED_SPILLS")
    return found


def _switches(switches: dict) -> str:
    return " ".join(name for name, on in switches.items() if on) or "-"


def _config(config: dict) -> str:
    return " ".join(str(value) if name == "template" else f"{name}={value}" for name, value in config.items()) or "-"


def _versions() -> dict:
    import torch
    import triton
    from triton.backends.nvidia.compiler import get_ptxas

    from fastattn.bench.harness import git_commit

    setup = _setup_module()
    cuda_home = setup._find_cuda_home()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "triton_ptxas": get_ptxas(max(ARCHS)).version,
        "nvcc": setup._nvcc_version(cuda_home) if cuda_home else None,
        **git_commit(),
    }


def build(archs: list[int], sources: list[str], jobs: int) -> dict:
    """Compiles and measures; the report as written to resources.json."""
    report = {"environment": _versions(), "archs": archs, "seconds": {}, "rows": [], "skipped": {}}
    if "triton" in sources:
        start = time.perf_counter()
        rows, defined = triton_rows(archs)
        report["seconds"]["triton"] = round(time.perf_counter() - start, 1)
        report["triton_kernels"] = defined
        report["rows"] += rows
    if "cuda" in sources:
        why = cuda_unavailable()
        if why is not None:
            report["skipped"]["cuda"] = why
        else:
            start = time.perf_counter()
            rows, timings = cuda_rows(archs, jobs)
            report["seconds"]["cuda"] = round(time.perf_counter() - start, 1)
            report["seconds"]["cuda_jobs"] = jobs
            report["seconds"]["cuda_files"] = sorted(timings, key=lambda t: -t["s"])
            report["rows"] += rows
    report["problems"] = problems(report["rows"])
    report["rows"] = [asdict(row) for row in report["rows"]]
    return report


def _row_order(row: dict) -> tuple:
    return row["kernel"], row["dtype"], _config(row["config"]), _switches(row["switches"]), row["arch"]


def _shared(row: dict) -> str:
    dynamic = "?" if row["dynamic_shared"] is None else row["dynamic_shared"]
    return f"{row['static_shared']} + {dynamic}" if row["static_shared"] else str(dynamic)


def _fits(row: dict) -> str:
    return ", ".join(f"{name} {'?' if ok is None else 'yes' if ok else 'NO'}" for name, ok in row["fits"].items())


def markdown(report: dict) -> str:
    env = report["environment"]
    commit = (env["commit"] or "unknown")[:12] + (" (modified)" if env.get("dirty") else "")
    seconds = report["seconds"]
    lines = [
        "# Registers, spills, shared memory and occupancy of the GPU kernels",
        "",
        f"Written by `python bench/static_resources.py` on {env['date']} without a GPU: triton {env['triton']} "
        f"(its ptxas {env['triton_ptxas']}), torch {env['torch']}, nvcc {env['nvcc']}; commit {commit}.",
        "Triton: "
        + (f"{seconds['triton']} s for both architectures side by side" if "triton" in seconds else "not run")
        + "; CUDA: "
        + (
            f"{seconds['cuda']} s, {seconds['cuda_jobs']} nvcc at a time"
            if "cuda" in seconds
            else report["skipped"].get("cuda", "not run")
        )
        + ". How each number is obtained, and the occupancy model: see the docstring of bench/static_resources.py.",
        "",
        "Columns: registers per thread; spill stores / loads in bytes per thread; shared memory per block "
        "in bytes (static + dynamic; `?`: the extension does not report the dynamic size); whether it fits the "
        "opt-in limit of each architecture that runs this code; blocks and warps per SM on the architecture "
        "compiled for, and what limits them. *Picked on*: where a launcher selects this variant (empty: a "
        "candidate tried and passed over for lack of shared memory).",
        "",
        "## Problems",
        "",
    ]
    lines += [f"- {problem}" for problem in report["problems"]] or [
        "None: no variant a launcher picks spills or exceeds the shared memory where it is picked."
    ]
    sources = {row["source"] for row in report["rows"]}
    lines += [
        "",
        "## Spills accepted",
        "",
        "| source | kernel | arch | at most (bytes) | why |",
        "|---|---|---|--:|---|",
    ]
    lines += [
        f"| {source} | {kernel} | {ARCHS[arch].name} | {most} | {why} |"
        for (source, kernel, arch), (most, why) in ACCEPTED_SPILLS.items()
        if source in sources and arch in report["archs"]
    ]
    for source, title in (("triton", "Triton"), ("cuda", "CUDA")):
        rows = [row for row in report["rows"] if row["source"] == source]
        if not rows:
            continue
        lines += ["", f"## {title}", ""]
        for arch in report["archs"]:
            arch_rows = [row for row in rows if row["arch"] == arch]
            heaviest = max(arch_rows, key=lambda row: row["registers"])
            spilling = [row for row in arch_rows if row["spill_stores"]]
            lines.append(
                f"- {ARCHS[arch].name}: {len(arch_rows)} variants; the most registers {heaviest['registers']} "
                f"({heaviest['kernel']} {heaviest['dtype']} {_config(heaviest['config'])}); "
                f"{len(spilling)} spill"
                + (f" (at most {max(r['spill_stores'] for r in spilling)} bytes)" if spilling else "")
            )
        lines += [
            "",
            "| kernel | dtype | config | switches on | arch | picked on | regs | spills st/ld | shared | fits | "
            "blocks/SM (limit) | warps/SM |",
            "|---|---|---|---|---|---|--:|--:|--:|---|--:|--:|",
        ]
        for row in sorted(rows, key=_row_order):
            lines.append(
                f"| {row['kernel']} | {row['dtype'] or '-'} | {_config(row['config'])} | "
                f"{_switches(row['switches'])} | {ARCHS[row['arch']].name} | "
                f"{', '.join(row['picked_on']) or '-'} | {row['registers']} | "
                f"{row['spill_stores']}/{row['spill_loads']} | {_shared(row)} | {_fits(row)} | "
                f"{row['blocks_per_sm']} ({row['limited_by']}) | {row['warps_per_sm']} |"
            )
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "resources.json", out / "resources.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/static_resources.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--arch",
        type=int,
        nargs="+",
        choices=sorted(ARCHS),
        default=sorted(ARCHS),
        help="compute capabilities (default: all)",
    )
    parser.add_argument("--only", choices=("triton", "cuda"), help="report one source only (default: both)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser.add_argument(
        "--jobs", type=int, default=cores, help=f"nvcc processes at a time (default: {cores}, the cores)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"folder for the reports (default: {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    sources = [args.only] if args.only else ["triton", "cuda"]
    report = build(sorted(args.arch), sources, args.jobs)
    for path in write(report, args.out):
        print(f"wrote {path}")
    for source, why in report["skipped"].items():
        print(f"{source}: skipped: {why}")
    for problem in report["problems"]:
        print(f"problem: {problem}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
