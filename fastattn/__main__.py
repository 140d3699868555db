"""Command line: ``python -m fastattn {env,verify,demo} ...`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def _use_interpreter_without_gpu() -> bool:
    """Without a GPU, run the Triton kernels on the CPU through Triton's interpreter.

    Must happen before triton is imported (it reads TRITON_INTERPRET when kernels are defined)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
        return True
    return False


def command_env(args: argparse.Namespace) -> int:
    import torch

    from . import backends

    lines = [
        ("fastattn", __import__("fastattn").__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("CUDA (torch built with)", torch.version.cuda or "none (CPU build)"),
    ]
    triton_error = backends._import_error("triton")
    if triton_error is None:
        import triton

        lines.append(("triton", triton.__version__))
    else:
        lines.append(("triton", f"not importable: {triton_error}"))
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(("GPU", f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"))
    else:
        lines.append(("GPU", "none"))
    lines.append(("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset")))
    lines.append(("FASTATTN_BACKEND", os.environ.get("FASTATTN_BACKEND", "unset (auto)")))
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name:<{width}}  {value}")
    print()
    print("backends (in the order auto tries them):")
    for name in backends.AUTO_ORDER:
        reasons = backends.platform_reasons(name)
        print(f"  {name:<7} {'available' if not reasons else 'unavailable: ' + '; '.join(reasons)}")
    return 0


def command_verify(args: argparse.Namespace) -> int:
    interpreted = _use_interpreter_without_gpu()
    import torch

    from . import verify

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    full = args.full if args.full is not None else device.type == "cuda"
    if interpreted:
        print("No GPU: the Triton kernels run on the CPU through Triton's interpreter (small shapes).")
    print(f"verify on {device} ({'full grid' if full else 'small shapes'}), backends: "
          f"{', '.join(args.backend or __import__('fastattn').available_backends())}")
    start = time.perf_counter()
    rows = verify.run(device, full=full, ops=args.op or verify.OPS, backend_names=args.backend)
    print(verify.format_table(rows))
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        verify.write_json(args.json, rows, device=device, full=full)
        print(f"wrote {args.json}")
    return 0 if rows and all(row.ok for row in rows) else 1


def command_demo(args: argparse.Namespace) -> int:
    """A short tour: one causal GQA attention with padding on every backend, against float64."""
    _use_interpreter_without_gpu()
    import torch

    import fastattn
    from fastattn.testing import error_report

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    batch, heads_q, heads_kv, nq, nk, head_dim = 2, 8, 2, 64, 192, 64
    q = torch.randn(batch, heads_q, nq, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch, heads_kv, nk, head_dim, device=device, dtype=dtype)
    v = torch.randn(batch, heads_kv, nk, head_dim, device=device, dtype=dtype)
    mask = torch.rand(batch, nk, device=device) > 0.2
    options = dict(causal=True, key_padding_mask=mask)
    exact = fastattn.reference.attention(q.double(), k.double(), v.double(), **options)
    plain = fastattn.reference.attention(q, k, v, **options)
    print(f"attention: B={batch} Hq={heads_q} Hkv={heads_kv} (GQA) Nq={nq} Nk={nk} D={head_dim}, "
          f"causal (bottom-right), key padding, {str(dtype).removeprefix('torch.')} on {device}")
    for backend in fastattn.available_backends():
        start = time.perf_counter()
        out = fastattn.attention(q, k, v, backend=backend, **options)
        elapsed = time.perf_counter() - start
        report = error_report("out", out, exact, plain, factor=2.0)
        print(f"  {backend:<7} max error vs float64 {report.max_error:.2e} (bound {report.bound:.2e}) "
              f"{'ok' if report.ok else 'FAIL'}   {elapsed * 1e3:8.1f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastattn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    env = commands.add_parser("env", help="versions, GPU, and which backends can run here (and why not)")
    env.set_defaults(run=command_env)

    verify = commands.add_parser(
        "verify",
        help="check every op on every available backend against the float64 reference",
        description="Runs every op on every available backend against the float64 reference under the "
        "numerics rules (max|out - ref| <= 2x (3x for gradients) the error of the same math in the test "
        "dtype). Prints a table; exits non-zero on any failure. Without a GPU the Triton kernels run "
        "through Triton's interpreter on small shapes.",
    )
    verify.add_argument("--json", metavar="PATH", help="also write the rows and the environment as JSON")
    verify.add_argument("--op", action="append", help="only this op (repeatable): attention")
    verify.add_argument("--backend", action="append", help="only this backend (repeatable)")
    grid = verify.add_mutually_exclusive_group()
    grid.add_argument("--full", dest="full", action="store_true", default=None,
                      help="the full shape grid (default on a GPU)")
    grid.add_argument("--quick", dest="full", action="store_false", help="small shapes (default on a CPU)")
    verify.set_defaults(run=command_verify)

    demo = commands.add_parser("demo", help="a short tour of the fused ops on this machine")
    demo.set_defaults(run=command_demo)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
