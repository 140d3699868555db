"""Proof that the emulated CUDA tests can fail: puts one bug at a time into a copy of the kernels and
runs tests/test_cuda_emulated.py on the copy, which must fail.

    python tests/cuda_emulator/mutate.py            # every mutation (about 5 minutes on 2 cores)
    python tests/cuda_emulator/mutate.py --list     # what each mutation does
    python tests/cuda_emulator/mutate.py --only fwd-missing-syncthreads

Each mutation is one textual change of csrc/ that compiles: a missing barrier or cp.async wait, an
off-by-one bound, a wrong causal offset, swapped mma fragments, a skipped rescale and others. The copy
(csrc/, tests/ and pyproject.toml in a temporary directory) is tested with ``pytest -x`` on the tests
the mutated file affects; a mutation is caught when a test fails, and survives when every test passes.
Exit status: 0 when every mutation is caught. Not run in CI (a few minutes); the README gives its tally.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
TESTS = "tests/test_cuda_emulated.py"


class Mutation(NamedTuple):
    name: str
    path: str  # under csrc/
    before: str  # occurs exactly once in the file
    after: str
    tests: str  # pytest -k expression: the tests that run the mutated code
    what: str


MUTATIONS = [
    Mutation(
        "fwd-missing-syncthreads",
        "attention/attention_fwd.cuh",
        "    __syncthreads();          // ... for every thread, and every warp is done with V_{j-1}\n",
        "",
        "attention",
        "forward: no barrier between the K tile's arrival and V's load into the buffer other warps still read",
    ),
    Mutation(
        "fwd-missing-cp-async-wait",
        "attention/attention_fwd.cuh",
        "    mma::cp_async_wait<0>();  // V_j has landed\n",
        "",
        "attention",
        "forward: P V reads the V tile without waiting for its cp.async",
    ),
    Mutation(
        "fwd-skipped-rescale",
        "attention/attention_fwd.cuh",
        "for (int e = 0; e < 4; ++e) acc_o[n][e] *= alpha[e / 2];",
        "for (int e = 0; e < 4; ++e) acc_o[n][e] *= 1.0f;",
        "attention",
        "forward: the output accumulator is not rescaled when the running max grows",
    ),
    Mutation(
        "fwd-last-key-tile-skipped",
        "attention/attention_fwd.cuh",
        "for (int start_n = begin_n; start_n < end_n; start_n += BN) {",
        "for (int start_n = begin_n; start_n + BN < end_n; start_n += BN) {",
        "attention",
        "forward: the key loop stops one tile early",
    ),
    Mutation(
        "fwd-lse-without-max",
        "attention/attention_fwd.cuh",
        "lse_row0[row] = no_key ? -INFINITY : (m_i[r] + log2f(l)) * kLn2;",
        "lse_row0[row] = no_key ? -INFINITY : log2f(l) * kLn2;",
        "attention",
        "forward: the log-sum-exp leaves out the running max",
    ),
    Mutation(
        "key-bound-off-by-one",
        "attention/attention_common.cuh",
        "if (i >= sq.seq_q || j >= sq.seq_k) return false;",
        "if (i >= sq.seq_q || j > sq.seq_k) return false;",
        "attention",
        "every attention kernel: the zero-filled key after the last one is visible",
    ),
    Mutation(
        "causal-offset-off-by-one",
        "attention/attention_common.cuh",
        "return int64_t(seq_k) - seq_q; }",
        "return int64_t(seq_k) - seq_q + 1; }",
        "attention",
        "every attention kernel: the bottom-right causal diagonal shifted by one key",
    ),
    Mutation(
        "dropout-counter-swapped",
        "attention/attention_common.cuh",
        "philox4x32_10(seed, static_cast<uint32_t>(j), static_cast<uint32_t>(i), bh, 0u)",
        "philox4x32_10(seed, static_cast<uint32_t>(i), static_cast<uint32_t>(j), bh, 0u)",
        "attention",
        "every attention kernel: query and key swapped in the dropout stream's counter",
    ),
    Mutation(
        "mma-b-fragments-swapped",
        "attention/mma.cuh",
        "mma16816<T>(acc[2 * nn], af, bf[0], bf[1]);",
        "mma16816<T>(acc[2 * nn], af, bf[1], bf[0]);",
        "attention",
        "tensor cores: Q K^T (and the backward's products) with the two B fragments of ldmatrix swapped",
    ),
    Mutation(
        "c-to-a-fragment-index",
        "attention/mma.cuh",
        "a[kk][1] = pack2<T>(c[2 * kk][2], c[2 * kk][3]);",
        "a[kk][1] = pack2<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);",
        "attention",
        "tensor cores: P's accumulator fragment for rows g+8 read from the wrong 8 columns",
    ),
    Mutation(
        "bwd-missing-syncthreads",
        "attention/attention_bwd.cuh",
        "      __syncthreads();  // every warp is done with the previous Q, dO, lse, delta\n",
        "",
        "attention",
        "backward dK/dV: the next query tile is loaded while other warps still read the previous one",
    ),
    Mutation(
        "bwd-ds-without-delta",
        "attention/attention_bwd.cuh",
        "pr * (dp - delta_s[qi]) * softcap_grad",
        "pr * dp * softcap_grad",
        "attention",
        "backward dK: dS = P * dP, the softmax Jacobian's rowsum(dO * O) term left out",
    ),
    Mutation(
        "dq-missing-cp-async-wait",
        "attention/attention_bwd.cuh",
        "    mma::cp_async_commit();\n    mma::cp_async_wait<0>();\n    __syncthreads();\n",
        "    mma::cp_async_commit();\n    __syncthreads();\n",
        "attention",
        "backward dQ: S = Q K^T reads the K tile without waiting for its cp.async",
    ),
    Mutation(
        "dq-softcap-grad-left-out",
        "attention/attention_bwd.cuh",
        "acc_s[n][e] = vis ? pr * (dp - delta[e / 2]) * softcap_grad(p, acc_s[n][e]) : 0.0f;",
        "acc_s[n][e] = vis ? pr * (dp - delta[e / 2]) : 0.0f;",
        "attention",
        "backward dQ: dS without the softcap's derivative",
    ),
    Mutation(
        "simt-missing-syncwarp",
        "attention/attention_common.cuh",
        "  __syncwarp();\n  for (int j = 0; j < BN; ++j) {",
        "  for (int j = 0; j < BN; ++j) {",
        "attention",
        "float32 kernels: a warp reads the P row its lanes wrote without __syncwarp",
    ),
    Mutation(
        "simt-skipped-rescale",
        "attention/attention_simt.cuh",
        "      for (int c = 0; c < DC; ++c) acc[r][c] *= alpha;\n    }\n    accumulate_pv",
        "      for (int c = 0; c < DC; ++c) acc[r][c] *= 1.0f;\n    }\n    accumulate_pv",
        "attention",
        "float32 forward: the output accumulator is not rescaled when the running max grows",
    ),
    Mutation(
        "decode-missing-syncthreads",
        "attention/attention_decode.cuh",
        "    __syncthreads();  // every warp is done with the previous K, V (and Q is loaded)\n",
        "",
        "decode",
        "split-KV decode: the next K, V tile is loaded while other warps still read the previous one",
    ),
    Mutation(
        "norm-reduce-missing-syncthreads",
        "common/reduce.cuh",
        "  __syncthreads();  // the previous call's readers are done with scratch\n",
        "",
        "norm",
        "norms: a block sum overwrites the scratch the previous block sum's readers still read",
    ),
    Mutation(
        "sampling-argmax-missing-syncthreads",
        "sampling/sampling_kernels.cuh",
        "    sh.idx[warp] = i;\n  }\n  __syncthreads();\n",
        "    sh.idx[warp] = i;\n  }\n",
        "sampling",
        "sampling: thread 0 merges the warps' argmax before every warp has written its own",
    ),
]


def mutate(csrc: Path, mutation: Mutation) -> None:
    path = csrc / mutation.path
    text = path.read_text()
    count = text.count(mutation.before)
    if count != 1:
        raise SystemExit(f"{mutation.name}: the text to change occurs {count} times in csrc/{mutation.path}, not once")
    path.write_text(text.replace(mutation.before, mutation.after))


def run(mutation: Mutation, timeout: float) -> tuple[str, str]:
    """(outcome, detail): "caught" and the first failing test, "SURVIVED", or "error" and why."""
    with tempfile.TemporaryDirectory(prefix="fastattn-mutant-") as tmp:
        copy = Path(tmp)
        shutil.copytree(ROOT / "csrc", copy / "csrc")
        shutil.copytree(ROOT / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", copy)
        mutate(copy / "csrc", mutation)
        command = [sys.executable, "-m", "pytest", TESTS, "-x", "-q", "-p", "no:cacheprovider", "-k", mutation.tests]
        try:
            result = subprocess.run(command, cwd=copy, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "caught", f"the tests did not finish in {timeout:.0f} s (a hang)"
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return "SURVIVED", "every test passed"
    if "do not compile" in output:
        return "error", "the mutant does not compile (fix the mutation)"
    failed = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - |$)", output, re.MULTILINE)
    hazard = re.search(r"racecheck: ([\w.\- ]+ hazard)", output)
    detail = failed[1].split("::", 1)[-1] if failed else f"pytest exited with {result.returncode}"
    return "caught", detail + (f" ({hazard[1]})" if hazard else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one mutant's tests may take")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:38} csrc/{m.path}: {m.what}")
        return 0
    chosen = [m for m in MUTATIONS if args.only is None or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in chosen}
    if unknown:
        parser.error(f"no mutation named {', '.join(sorted(unknown))} (see --list)")
    caught = 0
    for index, mutation in enumerate(chosen, 1):
        started = time.monotonic()
        outcome, detail = run(mutation, args.timeout)
        caught += outcome == "caught"
        seconds = time.monotonic() - started
        print(f"[{index}/{len(chosen)}] {outcome:8} {mutation.name:38} {seconds:5.0f} s  {detail}", flush=True)
    print(f"caught {caught} of {len(chosen)} mutations")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
