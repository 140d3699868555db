"""Command line: ``python -m fastattn {env,verify,bench,train,generate,attention-graph,demo}`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

from .usage import Parser, UsageError, output_file, whole_number


def _use_interpreter_without_gpu() -> bool:
    """Without a GPU, run the Triton kernels on the CPU through Triton's interpreter.

    Must happen before triton is imported (it reads TRITON_INTERPRET when kernels are defined)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
        return True
    return False


def command_env(args: argparse.Namespace) -> int:
    _use_interpreter_without_gpu()  # as verify, demo and bench do: the backends listed are theirs
    import torch

    from . import backends, capabilities

    lines = [
        ("fastattn", __import__("fastattn").__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("CUDA (torch built with)", torch.version.cuda or "none (CPU build)"),
    ]
    lines.append(("triton", backends.triton_version() or "not installed"))
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
    print()
    print("what each backend serves (dtypes; limits; optional features):")
    print("\n".join(capabilities.describe()))
    return 0


def command_verify(args: argparse.Namespace) -> int:
    interpreted = _use_interpreter_without_gpu()
    import torch

    from . import backends, verify

    for name in args.backend or ():
        reasons = backends.platform_reasons(name)
        if reasons:
            raise UsageError(f"argument --backend: {name} cannot run here: {'; '.join(reasons)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    full = args.full if args.full is not None else device.type == "cuda"
    if interpreted:
        print("No GPU: the Triton kernels run on the CPU through Triton's interpreter (small shapes).")
    print(
        f"verify on {device} ({'full grid' if full else 'small shapes'}), backends: "
        f"{', '.join(args.backend or __import__('fastattn').available_backends())}"
    )
    start = time.perf_counter()
    rows = verify.run(device, full=full, ops=args.op or verify.OPS, backend_names=args.backend)
    print(verify.format_table(rows))
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        verify.write_json(args.json, rows, device=device, full=full)
        print(f"wrote {args.json}")
    return 0 if rows and not verify.failures(rows) else 1


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
    print(
        f"attention: B={batch} Hq={heads_q} Hkv={heads_kv} (GQA) Nq={nq} Nk={nk} D={head_dim}, "
        f"causal (bottom-right), key padding, {str(dtype).removeprefix('torch.')} on {device}"
    )
    for backend in fastattn.available_backends():
        start = time.perf_counter()
        out = fastattn.attention(q, k, v, backend=backend, **options)
        elapsed = time.perf_counter() - start
        report = error_report("out", out, exact, plain, factor=2.0)
        print(
            f"  {backend:<7} max error vs float64 {report.max_error:.2e} (bound {report.bound:.2e}) "
            f"{'ok' if report.ok else 'FAIL'}   {elapsed * 1e3:8.1f} ms"
        )
    return 0


def command_bench(args: argparse.Namespace) -> int:
    from .bench import cli

    return cli.run(args)


def command_train(args: argparse.Namespace) -> int:
    from .models import train

    return train.run(args)


def command_generate(args: argparse.Namespace) -> int:
    import torch

    from .models import paged
    from .models.decoding import Sampling
    from .ops.kvcache import PAGE_MULTIPLE
    from .ops.sampling import row_parameters
    from .progress import progress_bar
    from .viz import graph

    try:
        model, tokenizer, task_name = graph.load_char_model(args.model)
    except (ValueError, OSError) as error:
        raise UsageError(f"argument --model: {error}") from None
    if task_name != "gpt":
        raise UsageError(f"argument --model: a gpt checkpoint is needed, {args.model} holds a {task_name} one")
    prompts = []
    for text in args.prompt:
        unknown = sorted(set(text) - set(tokenizer.chars))
        if unknown:
            raise UsageError(f"argument --prompt: characters not in the model's vocabulary: {''.join(unknown)!r}")
        prompts.append(tokenizer.encode(text))
    room = model.config.block_size - max(len(prompt) for prompt in prompts)
    max_new_tokens = room if args.max_new_tokens is None else args.max_new_tokens
    if not 1 <= max_new_tokens <= room:
        raise UsageError(
            f"argument --max-new-tokens: the longest prompt leaves room for 1 to {room} new tokens in the "
            f"model's {model.config.block_size} positions, got {max_new_tokens}"
        )
    sampling = {field.name: getattr(args, field.name) for field in dataclasses.fields(Sampling)}
    for name in ("temperature", "top_p", "min_p"):  # checked here, to name the flag (--top-k: by argparse)
        try:
            row_parameters(torch.zeros(1, 1), **{name: sampling[name]})
        except ValueError as error:
            raise UsageError(f"argument --{name.replace('_', '-')}: {error}") from None
    if args.page_size % PAGE_MULTIPLE:
        raise UsageError(f"argument --page-size: a multiple of {PAGE_MULTIPLE}, got {args.page_size}")
    bar = progress_bar(total=len(prompts), desc="generate", unit="prompt", disable=args.no_progress, file=sys.stderr)
    try:
        outputs = paged.generate(
            model,
            prompts,
            max_new_tokens,
            **sampling,
            max_batch=args.max_batch,
            page_size=args.page_size,
            continuous=args.continuous,
            on_finish=lambda index, tokens: bar.update(),
        )
    finally:
        bar.close()
    for index, tokens in enumerate(outputs):
        print(f"--- prompt {index + 1} ---\n{tokenizer.decode(tokens)}")
    return 0


def command_attention_graph(args: argparse.Namespace) -> int:
    from .viz import graph

    try:
        model, tokenizer, task_name = graph.load_char_model(args.model)
    except (ValueError, OSError) as error:  # not a checkpoint (CheckpointError), or one of another model
        raise UsageError(f"argument --model: {error}") from None
    try:
        tokens, labels = graph.encode_text(task_name, tokenizer, model, args.text)
    except ValueError as error:
        raise UsageError(f"argument --text: {error}") from None
    title = f"{task_name} attention: {args.text!r}"
    path = graph.write_attention_graph(model, tokens, labels, args.out, threshold=args.threshold, title=title)
    print(f"wrote {path}: {len(labels)} tokens; open it in a browser")
    return 0


def add_command(commands, name: str, run, summary: str, **details) -> argparse.ArgumentParser:
    """The subcommand ``name``, which calls ``run(args)``; ``details``: its ``description`` and
    ``epilog``, printed by --help as written."""
    command = commands.add_parser(name, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter, **details)
    command.set_defaults(run=run)
    return command


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m fastattn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_command(commands, "env", command_env, "versions, GPU, and which backends can run here (and why not)")

    verify = add_command(
        commands,
        "verify",
        command_verify,
        "check every op on every available backend against the float64 reference",
        description="""\
Runs every op on every available backend against the float64 reference under the numerics rules
(max|out - ref| <= 2x (3x for gradients) the error of the same math in the test dtype). Prints a
table; exits non-zero on any failure. Without a GPU the Triton kernels run through Triton's
interpreter on small shapes.""",
    )
    verify.add_argument(
        "--json", type=output_file, metavar="PATH", help="also write the rows and the environment as JSON"
    )
    from .backends import BACKENDS
    from .verify import OPS

    verify.add_argument("--op", action="append", choices=OPS, help="only this op (repeatable)")
    verify.add_argument("--backend", action="append", choices=BACKENDS, help="only this backend (repeatable)")
    grid = verify.add_mutually_exclusive_group()
    grid.add_argument(
        "--full", dest="full", action="store_true", default=None, help="the full shape grid (default on a GPU)"
    )
    grid.add_argument("--quick", dest="full", action="store_false", help="small shapes (default on a CPU)")

    from .bench.cli import DESCRIPTION as BENCH_DESCRIPTION
    from .bench.cli import EPILOG as BENCH_EPILOG
    from .bench.cli import add_arguments as add_bench_arguments

    bench = add_command(
        commands,
        "bench",
        command_bench,
        "benchmark tables (and --plot) of our backends against PyTorch and installed peers",
        description=BENCH_DESCRIPTION,
        epilog=BENCH_EPILOG,
    )
    add_bench_arguments(bench)

    train = add_command(
        commands,
        "train",
        command_train,
        "train a reference model (gpt, bert, seq2seq, vae) on shipped data and show what it learned",
        description="""\
Trains one of fastattn's reference models on data shipped with the package (no downloads), with a
progress bar and held-out metrics along the way, then shows what the model learned. Every attention,
LayerNorm and sampling call of the model goes through fastattn's ops on --backend.

  gpt      character-level GPT on tiny Shakespeare: held-out loss (nats/char), generated text
  bert     character-level BERT (masked LM) on tiny Shakespeare: masked-character accuracy against
           always guessing the most frequent character, filled-in masks
  seq2seq  the encoder-decoder Transformer translating numerals to English words: exact match on
           held-out numbers, translations
  vae      a VAE with Transformer encoder/decoder on the 8x8 digits: reconstruction error against the
           mean image, KL, and a PNG of reconstructions, prior samples and an interpolation""",
        epilog="""\
examples:
  python -m fastattn train gpt --steps 200                 a quick look (about 20 s on 2 CPU cores)
  python -m fastattn train seq2seq --save runs/s2s.pt      the full default run, then a checkpoint
  python -m fastattn train seq2seq --load runs/s2s.pt --steps 0    evaluate and show a checkpoint
  python -m fastattn train vae --out runs/vae             writes runs/vae/vae.png
  torchrun --standalone --nproc-per-node 8 -m fastattn train gpt --parallel ddp
                                                           8 processes (GPUs), each an eighth of the batch""",
    )
    from .models.train import add_arguments as add_train_arguments

    add_train_arguments(train)

    attention_graph = add_command(
        commands,
        "attention-graph",
        command_attention_graph,
        "an HTML page of what a trained gpt or bert model attends to, token by token",
        description="""\
Runs a checkpoint of `python -m fastattn train {gpt,bert} --save PATH` on --text and writes one
self-contained HTML file (inline CSS and JavaScript, the weights embedded, nothing fetched): the
characters in a row (a space drawn as a visible mark; BERT's input starts with [CLS]); hover a token,
or click it to pin it, to draw curves to the tokens it attends to, thicker for larger weights. Pickers
choose the layer and the head or the average over heads; weights not above the threshold shown on the
page are hidden (a slider changes it).

The weights are the exact attention probabilities, recovered from the fused kernel's log-sum-exp
(see fastattn.viz.attention_weights).""",
        epilog="""\
examples:
  python -m fastattn train gpt --save runs/gpt.pt
  python -m fastattn attention-graph --model runs/gpt.pt --text "To be, or not to be" --out graph.html""",
    )
    attention_graph.add_argument(
        "--model", required=True, metavar="CHECKPOINT", help="a gpt or bert checkpoint written by `train ... --save`"
    )
    attention_graph.add_argument(
        "--text", required=True, help="the input: characters of the model's vocabulary, at most its context length"
    )
    attention_graph.add_argument(
        "--out",
        default="attention_graph.html",
        type=output_file,
        metavar="PATH",
        help="the HTML file to write (default: attention_graph.html)",
    )
    attention_graph.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="initial threshold: links with a weight not above it are hidden (default: 0.05)",
    )

    generate = add_command(
        commands,
        "generate",
        command_generate,
        "continue prompts with a trained gpt, many at once from a paged KV cache",
        description="""\
Continues each --prompt with a checkpoint of `python -m fastattn train gpt --save PATH`, serving up to
--max-batch prompts at once from a paged KV cache (pages of --page-size positions): the prompts
admitted together are prefilled in one packed row, every running one decodes a token per step, and
with --continuous (the default) a finished sequence's slot goes to the next waiting prompt at once.
The tokens depend on --seed and each prompt's place in the list only, not on the batching.""",
        epilog="""\
examples:
  python -m fastattn train gpt --save runs/gpt.pt
  python -m fastattn generate --model runs/gpt.pt --prompt "ROMEO:" --prompt "JULIET:" --seed 0""",
    )
    generate.add_argument(
        "--model", required=True, metavar="CHECKPOINT", help="a gpt checkpoint written by `train gpt --save`"
    )
    generate.add_argument(
        "--prompt", action="append", required=True, help="a prompt in the model's characters; repeatable"
    )
    generate.add_argument(
        "--max-new-tokens", type=whole_number(1), default=200, help="tokens per prompt (default: 200)"
    )
    generate.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default: 0.8)")
    generate.add_argument("--top-k", type=whole_number(1), help="keep the k most likely tokens")
    generate.add_argument("--top-p", type=float, help="keep the smallest set of tokens with this much probability")
    generate.add_argument("--min-p", type=float, help="drop the tokens less likely than this times the most likely")
    generate.add_argument("--seed", type=whole_number(0), default=0, help="the draws' seed (default: 0)")
    generate.add_argument("--max-batch", type=whole_number(1), default=8, help="sequences served at once (default: 8)")
    generate.add_argument("--page-size", type=whole_number(1), default=16, help="positions per page, a multiple of 16")
    generate.add_argument(
        "--continuous",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give a finished sequence's slot to a waiting prompt at once (default), or wait for the batch",
    )
    generate.add_argument("--no-progress", action="store_true", help="no progress bar")

    add_command(commands, "demo", command_demo, "a short tour of the fused ops on this machine")

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        commands.choices[args.command].error(str(error))
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves and returns 130 itself)
        print(f"python -m fastattn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
