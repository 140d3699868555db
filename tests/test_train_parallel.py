"""``python -m fastattn train gpt --parallel {ddp,fsdp,context}``: the processes torchrun starts (gloo on
the CPU) train the GPT on the same global batch as one process, to float32 rounding; a run's
checkpoint continues on another number of processes; only the first process prints; a set-up that
cannot work stops at once with one line."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_train import assert_same_state

from fastattn.models import parallel, train

# Every run in processes of its own, with one thread each (torchrun's default for several processes): on
# 2 cores shared by up to 4 processes, torch's threads would spin against each other (a step 30x slower).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT = 240  # s: a stuck collective fails the test instead of hanging it (the runs take 5 to 30 s)
# 20 steps of the GPT's default batch (12 sequences of 64 characters). Context parallelism runs on the naive
# backend: ring attention merges its blocks by their log-sum-exp, which the torch backend does not return.
STEPS = ["--steps", "20", "--device", "cpu"]

# The loss after 20 steps, relative. W processes sum the same float32 numbers in another order (each its
# own mean, then the all-reduce; FSDP's reduce-scatter; the ring's merges), and AdamW carries the last-bit
# differences on. Measured with ddp and fsdp on 2 and 3 processes and context on 2 and 4: at most 6.8e-8,
# one float32 rounding step of a loss of 3.5. A run whose steps missed a process's gradients is off by
# 1.0e-2 (context on 2 processes without the all-reduce), so 1e-5 leaves a margin of 150 on either side.
LOSS_RTOL = 1e-5
# AdamW's second moments (the running mean of the squared gradients), to 1e-4 of each tensor's largest:
# measured at most 9.3e-7. They see what the loss cannot: gradients summed over 2 processes instead of
# averaged would be 4 times as large, while AdamW's steps, hence the loss, would not change.
MOMENT_TOL = 1e-4


def launch(arguments: list, processes: int | None = None, script: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m fastattn train gpt ARGUMENTS`` (or ``python SCRIPT train gpt ARGUMENTS``) in a process of
    its own, or under torchrun in ``processes`` processes (a free port found by ``--standalone``)."""
    program = [str(script)] if script else ["-m", "fastattn"]
    launcher = (
        [] if processes is None else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    )
    command = [sys.executable, *launcher, *program, "train", "gpt", *map(str, arguments)]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def succeeded(result: subprocess.CompletedProcess) -> bool:
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return True


def stop_script(tmp_path: Path, rank: int) -> Path:
    """The command line, with process ``rank`` (alone) receiving SIGINT during step 10."""
    script = tmp_path / "stop_at_step_10.py"
    script.write_text(
        textwrap.dedent(f"""\
            import os, signal, sys
            from fastattn.__main__ import main
            from fastattn.models import train

            loss = train.GPTTask.loss

            def loss_then_signal(self, model, batch, step, total_steps):
                if step + 1 == 10 and int(os.environ.get("RANK", 0)) == {rank}:
                    os.kill(os.getpid(), signal.SIGINT)
                return loss(self, model, batch, step, total_steps)

            train.GPTTask.loss = loss_then_signal
            sys.exit(main(sys.argv[1:]))
        """)
    )
    return script


def results(out: Path) -> tuple[float, float, dict]:
    """The last step's loss, the held-out loss and the checkpoint ``--save`` wrote, of the run in ``out``."""
    import json

    record = json.loads((out / "metrics.json").read_text())
    return record["train_loss"], record["metrics"]["loss"], torch.load(out / "final.pt", weights_only=True)


def assert_trains_as_one_process(out: Path, alone: Path) -> None:
    loss, held_out, saved = results(out)
    expected_loss, expected_held_out, expected = results(alone)
    assert abs(loss - expected_loss) <= LOSS_RTOL * expected_loss, (loss, expected_loss)
    assert abs(held_out - expected_held_out) <= LOSS_RTOL * expected_held_out, (held_out, expected_held_out)
    assert saved["step"] == expected["step"] == 20
    assert saved["model"].keys() == expected["model"].keys()
    assert saved["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]
    for index, state in expected["optimizer"]["state"].items():
        moment, expected_moment = saved["optimizer"]["state"][index]["exp_avg_sq"], state["exp_avg_sq"]
        error = (moment - expected_moment).abs().max().item() / expected_moment.abs().max().item()
        assert error <= MOMENT_TOL, f"parameter {index}: second moments off by {error:.2e} of the largest"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The single-process run of 20 steps on a backend (its --out folder), run once per module."""
    runs = {}

    def run(backend: str) -> Path:
        if backend not in runs:
            out = tmp_path_factory.mktemp(f"one-process-{backend}")
            assert succeeded(launch([*STEPS, "--backend", backend, "--out", out, "--save", out / "final.pt"]))
            runs[backend] = out
        return runs[backend]

    return run


CASES = [("ddp", 1), ("ddp", 2), ("fsdp", 2), ("context", 2), ("context", 4)]


@pytest.mark.parametrize(("mode", "processes"), CASES, ids=[f"{mode}-{n}" for mode, n in CASES])
def test_a_parallel_run_trains_as_one_process(tmp_path, one_process, mode, processes):
    """The same loss, held-out loss and optimizer state after 20 steps; one process prints (1: no torchrun)."""
    backend = "naive" if mode == "context" else "torch"
    out = tmp_path / "run"
    arguments = [*STEPS, "--backend", backend, "--parallel", mode, "--out", out, "--save", out / "final.pt"]
    result = launch(arguments, processes=processes if processes > 1 else None)
    assert succeeded(result)
    assert_trains_as_one_process(out, one_process(backend))
    described = f"--parallel {mode} on {processes} process"
    assert result.stdout.count("train gpt:") == result.stdout.count(described) == 1, result.stdout
    assert result.stdout.count("held-out after 20 steps") == 1, result.stdout
    assert result.stderr.count(" 0%|") == 1, result.stderr[-3000:]  # one progress bar, at its start once
    assert (out / parallel.CHECKPOINT_NAME / parallel.SETTINGS_NAME).is_file()


@pytest.fixture(scope="module")
def stopped_on_two(tmp_path_factory) -> Path:
    """The checkpoint of an fsdp run on 2 processes stopped after step 10 of 20: only process 1 received
    the SIGINT, and both stopped after the same step."""
    out = tmp_path_factory.mktemp("stopped")
    script = stop_script(out, rank=1)
    result = launch([*STEPS, "--backend", "torch", "--parallel", "fsdp", "--out", out], processes=2, script=script)
    assert result.returncode != 0, result.stdout  # torchrun reports its processes' exit status 130 as a failure
    assert result.stdout.count("SIGINT after step 10 of 20: saved") == 1, result.stdout + result.stderr[-3000:]
    return out / parallel.CHECKPOINT_NAME


@pytest.mark.parametrize(("mode", "processes"), [("ddp", 1), ("fsdp", 3)], ids=["ddp-1", "fsdp-3"])
def test_a_run_saved_on_2_processes_continues_on_another_number(tmp_path, one_process, stopped_on_two, mode, processes):
    out = tmp_path / "resumed"
    arguments = ["--backend", "torch", "--device", "cpu", "--parallel", mode, "--resume", stopped_on_two]
    result = launch([*arguments, "--out", out, "--save", out / "final.pt"], processes if processes > 1 else None)
    assert succeeded(result)
    assert f"resumed {stopped_on_two} (step 10)" in result.stdout
    assert_trains_as_one_process(out, one_process("torch"))


def test_a_run_resumed_on_as_many_processes_ends_bitwise_as_the_run_never_stopped(tmp_path, stopped_on_two):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--backend", "torch", "--parallel", "fsdp"]
    assert succeeded(launch([*STEPS, *common, "--out", straight, "--save", straight / "final.pt"], processes=2))
    arguments = [*common, "--device", "cpu", "--resume", stopped_on_two, "--out", resumed]
    assert succeeded(launch([*arguments, "--save", resumed / "final.pt"], processes=2))
    assert_same_state(results(straight)[2], results(resumed)[2])


def test_a_single_process_checkpoint_continues_on_2_processes(tmp_path, one_process):
    stopped, resumed = tmp_path / "stopped", tmp_path / "resumed"
    result = launch([*STEPS, "--backend", "torch", "--out", stopped], script=stop_script(tmp_path, rank=0))
    assert result.returncode == 130, result.stderr[-3000:]
    checkpoint = stopped / train.CHECKPOINT_NAME
    arguments = ["--backend", "torch", "--device", "cpu", "--parallel", "ddp", "--resume", checkpoint]
    assert succeeded(launch([*arguments, "--out", resumed, "--save", resumed / "final.pt"], processes=2))
    assert_trains_as_one_process(resumed, one_process("torch"))


def test_a_parallel_checkpoint_is_resumed_with_parallel_and_a_folder_must_be_one(tmp_path, stopped_on_two):
    for arguments, message in [
        (["--resume", stopped_on_two], "is the checkpoint of a --parallel run; continue it with --parallel"),
        (["--parallel", "ddp", "--resume", tmp_path], "is a folder but not the checkpoint of a --parallel run"),
    ]:
        result = launch([*arguments, "--device", "cpu", "--out", tmp_path / "run"])
        assert_one_line(result, "argument --resume", message)


def assert_one_line(result: subprocess.CompletedProcess, flag: str, message: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, f"exit status {result.returncode}\n{result.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("python -m fastattn train: error: "), result.stderr
    assert f"{flag}: " in lines[0] and message in lines[0], lines[0]


# A set-up that cannot work: an error naming the flag before the processes connect, so that none waits
# for another; under torchrun the first process reports it (torchrun adds its own failure report).
BAD_SETUPS = {
    "bert": (1, ["--parallel", "ddp"], "argument --parallel", "only gpt trains on several processes, not bert"),
    "context on torch": (1, ["--parallel", "context", "--backend", "torch"], "argument --backend", "torch cannot"),
    "no --parallel": (2, [], "argument --parallel", "torchrun started 2 processes; say how they share each step"),
    "uneven batch": (
        2,
        ["--parallel", "ddp", "--batch-size", "5"],
        "argument --batch-size",
        "a batch of 5 sequences does not",
    ),
    "context on 3": (3, ["--parallel", "context", "--backend", "naive"], "argument --parallel", "2 x 3 = 6 equal"),
}


@pytest.mark.parametrize("name", list(BAD_SETUPS))
def test_a_bad_setup_is_one_error_not_a_hang(tmp_path, name):
    processes, arguments, flag, message = BAD_SETUPS[name]
    model = "bert" if name == "bert" else "gpt"
    started = time.perf_counter()
    command = [sys.executable, "-m", "fastattn", "train", model, *arguments, "--out", str(tmp_path / "run")]
    if processes > 1:
        command[1:3] = [
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            "-m",
            "fastattn",
        ]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    if processes == 1:
        assert_one_line(result, flag, message)
    else:
        ours = [line for line in result.stderr.splitlines() if line.startswith("python -m fastattn train: error:")]
        assert result.returncode != 0 and len(ours) == 1, result.stderr[-3000:]
        assert f"{flag}: " in ours[0] and message in ours[0], ours[0]
        assert "fastattn/models" not in result.stderr, result.stderr[-3000:]  # no traceback through the command
    assert time.perf_counter() - started < 60
