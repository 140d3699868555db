"""``python -m fastattn train`` never loses work: periodic and final checkpoints written atomically, a
stop by SIGINT or SIGTERM saved, ``--resume`` continuing a run bitwise, bad checkpoints and bad flags
reported in one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastattn.__main__ import main
from fastattn.models import train

# A short GPT run on the torch backend: 40 steps take about a second on a CPU.
RUN = ["train", "gpt", "--backend", "torch", "--batch-size", "4", "--device", "cpu"]


def state_of(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_state(first: dict, second: dict, where: str = "") -> None:
    """Equal to the bit: nested dicts, lists and tensors (torch.equal) and plain values."""
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and torch.equal(first, second), f"{where} differs"
    elif isinstance(first, dict):
        assert first.keys() == second.keys(), f"{where}: keys {sorted(first)} != {sorted(second)}"
        for key in first:
            assert_same_state(first[key], second[key], f"{where}/{key}")
    elif isinstance(first, list | tuple):
        assert len(first) == len(second), f"{where}: lengths {len(first)} != {len(second)}"
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_same_state(a, b, f"{where}[{index}]")
    else:
        assert first == second, f"{where}: {first!r} != {second!r}"


def stop_at_step(monkeypatch, stop_after: int, signal_number: int = signal.SIGINT) -> None:
    """Sends this process ``signal_number`` during step ``stop_after`` (counting from 1) of a GPT run."""
    loss = train.GPTTask.loss

    def loss_then_signal(self, model, batch, step, total_steps):
        if step + 1 == stop_after:
            os.kill(os.getpid(), signal_number)
        return loss(self, model, batch, step, total_steps)

    monkeypatch.setattr(train.GPTTask, "loss", loss_then_signal)


def test_a_run_stopped_at_20_and_resumed_equals_40_steps_bitwise(tmp_path, monkeypatch, capsys):
    assert main([*RUN, "--steps", "40", "--out", str(tmp_path / "straight")]) == 0
    straight = state_of(tmp_path / "straight" / train.CHECKPOINT_NAME)

    with monkeypatch.context() as patch:
        stop_at_step(patch, 20)
        assert main([*RUN, "--steps", "40", "--out", str(tmp_path / "stopped")]) == 130
    checkpoint = tmp_path / "stopped" / train.CHECKPOINT_NAME
    assert state_of(checkpoint)["step"] == 20
    assert "SIGINT after step 20 of 40" in capsys.readouterr().out

    resume = ["train", "gpt", "--backend", "torch", "--device", "cpu", "--resume", str(checkpoint)]
    assert main([*resume, "--out", str(tmp_path / "stopped")]) == 0
    resumed = state_of(checkpoint)
    assert resumed["step"] == straight["step"] == 40
    assert_same_state(straight, resumed)


def test_checkpoints_are_written_every_n_steps(tmp_path, monkeypatch):
    steps_saved = []
    save = train.save_checkpoint

    def record(path, task, model, optimizer, step, resume=None):
        steps_saved.append(step)
        save(path, task, model, optimizer, step, resume)

    monkeypatch.setattr(train, "save_checkpoint", record)
    assert main([*RUN, "--steps", "25", "--checkpoint-every", "10", "--out", str(tmp_path)]) == 0
    assert steps_saved == [10, 20, 25]


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    assert main([*RUN, "--steps", "3", "--out", str(tmp_path)]) == 0
    checkpoint = tmp_path / train.CHECKPOINT_NAME
    before = checkpoint.read_bytes()

    def write_half_then_fail(state, file):
        file.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        main([*RUN, "--steps", "3", "--out", str(tmp_path)])
    assert checkpoint.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == [train.CHECKPOINT_NAME, "metrics.json", "samples.txt"]


def test_temporary_files_of_killed_saves_are_cleared(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / f".{train.CHECKPOINT_NAME}.1234-abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main([*RUN, "--steps", "1", "--out", str(tmp_path)]) == 0
    assert not stale.exists()


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_real_run_with_its_checkpoint_saved(tmp_path, signal_number):
    """The command in its own process, stopped from outside while it trains."""
    command = [sys.executable, "-m", "fastattn", *RUN, "--steps", "1000000", "--out", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = process.stdout.readline()  # the header is printed before the first step
        assert first_line.startswith("train gpt"), first_line + process.stderr.read()
        time.sleep(2.0)  # some steps
        process.send_signal(signal_number)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signal_number], stderr[-3000:]
    assert "continue with --resume" in stdout, stdout
    saved = train.load_checkpoint(tmp_path / train.CHECKPOINT_NAME, torch.device("cpu"))
    assert saved["step"] > 0 and saved["resume"]["total_steps"] == 1000000
    assert "Traceback" not in stderr, stderr[-3000:]


BAD_CHECKPOINTS = {
    "truncated": lambda whole: whole[: len(whole) // 2],
    "garbage": lambda whole: b"this is not a checkpoint" * 100,
    "empty": lambda whole: b"",
}


@pytest.mark.parametrize("damage", list(BAD_CHECKPOINTS))
@pytest.mark.parametrize("flag", ["--resume", "--load"])
def test_a_bad_checkpoint_is_one_clear_error_naming_the_file(tmp_path, capsys, damage, flag):
    assert main([*RUN, "--steps", "1", "--out", str(tmp_path / "run")]) == 0
    whole = (tmp_path / "run" / train.CHECKPOINT_NAME).read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(BAD_CHECKPOINTS[damage](whole))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "gpt", "--backend", "torch", flag, str(bad), "--out", str(tmp_path / "again")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"argument {flag}: {bad}" in lines[0] and "checkpoint" in lines[0], lines
    with pytest.raises(train.CheckpointError, match=str(bad)):
        train.load_checkpoint(bad, torch.device("cpu"))


def test_a_checkpoint_of_another_model_or_without_run_state_is_refused(tmp_path, capsys):
    assert main(["train", "vae", "--backend", "torch", "--steps", "1", "--out", str(tmp_path / "vae")]) == 0
    vae_checkpoint = tmp_path / "vae" / train.CHECKPOINT_NAME
    weights_only = tmp_path / "weights.pt"  # a checkpoint without the state of a run in progress
    saved = state_of(vae_checkpoint)
    model = train.VAE(train.VAEConfig(**saved["config"]))
    train.save_checkpoint(weights_only, train.VAETask, model, torch.optim.SGD(model.parameters(), lr=0.1), 0)
    capsys.readouterr()
    for model_name, checkpoint, message in [
        ("gpt", vae_checkpoint, "holds a vae checkpoint, not gpt"),
        ("vae", weights_only, "does not hold the state of a run in progress; --load starts from its weights"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", model_name, "--resume", str(checkpoint), "--out", str(tmp_path / "again")])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_resume_takes_the_runs_own_settings(tmp_path, capsys):
    assert main([*RUN, "--steps", "2", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*RUN, "--resume", str(tmp_path / train.CHECKPOINT_NAME), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "argument --batch-size: not with --resume" in capsys.readouterr().err


def test_an_unwritable_out_is_reported_before_the_first_step(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    started = []
    monkeypatch.setattr(train.GPTTask, "loss", lambda *args: started.append(1))
    with pytest.raises(SystemExit) as exit_info:
        main([*RUN, "--out", str(blocker / "run")])
    assert exit_info.value.code == 2 and not started
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"argument --out: cannot write to {blocker / 'run'}" in line
