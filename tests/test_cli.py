"""The command line: env, verify's table, JSON and exit status, and the one-line error of every bad value."""

import json
import math
import signal
import subprocess
import sys

import pytest
import torch

from fastattn import __main__ as cli
from fastattn import backends, capabilities, verify
from fastattn.verify.common import Case, Row


def test_env_lists_every_backend_with_its_state(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    section, table = out.split("backends (in the order auto tries them):\n")[1].split("\n\n")
    states = {line.split()[0]: line.split()[1] for line in section.splitlines()}
    assert set(states) == {"triton", "cuda", "torch", "naive"}, out
    assert states["torch"] == states["naive"] == "available"
    assert all(state in ("available", "unavailable:") for state in states.values()), out
    assert table.splitlines()[1:] == capabilities.describe(), out  # what each backend serves


def test_verify_writes_json_and_exits_zero_when_everything_passes(tmp_path, capsys):
    report = tmp_path / "verify.json"
    assert cli.main(["verify", "--op", "attention", "--backend", "naive", "--json", str(report)]) == 0
    rows = json.loads(report.read_text())["rows"]
    assert rows and all(row["backend"] == "naive" and row["ok"] for row in rows)
    assert f"{len(rows)} passed, 0 failed" in capsys.readouterr().out


def _row(backend: str, ok: bool, max_error: float) -> Row:
    return Row("op", backend, "float32", "case", ok, max_error, 1.0, "detail")


def _cases(rows: dict[str, Row]) -> list[Case]:
    def run(backend, device):
        if backend not in rows:
            raise NotImplementedError(backend)
        return rows[backend]

    return [Case("op", torch.float32, "case", run)]


def test_a_failing_check_makes_verify_exit_non_zero(monkeypatch, capsys):
    monkeypatch.setattr(verify, "all_cases", lambda device, full, ops: _cases({"naive": _row("naive", False, 2.0)}))
    assert cli.main(["verify", "--backend", "naive"]) == 1
    assert "FAIL op [naive, float32, case]" in capsys.readouterr().out


def test_pytorchs_kernels_over_the_bound_are_reported_not_counted(monkeypatch, capsys):
    rows = {"torch": _row("torch", False, 2.0), "naive": _row("naive", True, 0.5)}
    monkeypatch.setattr(verify, "all_cases", lambda device, full, ops: _cases(rows))
    assert cli.main(["verify", "--backend", "torch", "--backend", "naive"]) == 0
    out = capsys.readouterr().out
    assert "over (PyTorch's kernel)" in out and "1 passed, 0 failed" in out


def test_a_crash_counts_as_a_failure_on_every_backend(monkeypatch):
    def crash(backend, device):
        raise RuntimeError("boom")

    monkeypatch.setattr(verify, "all_cases", lambda device, full, ops: [Case("op", torch.float32, "case", crash)])
    rows = verify.run(torch.device("cpu"), full=False, backend_names=["torch"], progress=False)
    assert [(r.ok, math.isnan(r.max_error), r.detail) for r in rows] == [(False, True, "RuntimeError: boom")]
    assert verify.failures(rows) == rows


# Every bad value on the command line: one line on stderr naming the flag, exit status 2, no traceback.
BAD_ARGUMENTS = {
    "train --batch-size 0": (["train", "gpt", "--batch-size", "0"], "--batch-size"),
    "train --steps -5": (["train", "gpt", "--steps", "-5"], "--steps"),
    "train --lr -1": (["train", "gpt", "--lr", "-1"], "--lr"),
    "train --lr nan": (["train", "gpt", "--lr", "nan"], "--lr"),
    "train --seed abc": (["train", "gpt", "--seed", "abc"], "--seed"),
    "train --device nonsense": (["train", "gpt", "--device", "nonsense"], "--device"),
    "train --checkpoint-every 0": (["train", "gpt", "--checkpoint-every", "0"], "--checkpoint-every"),
    "train --resume missing": (["train", "gpt", "--resume", "no/such/checkpoint.pt"], "--resume"),
    "train --load missing": (["train", "gpt", "--load", "no/such/checkpoint.pt"], "--load"),
    "train model": (["train", "gpt5"], "model"),
    "verify --op": (["verify", "--op", "nonexistent"], "--op"),
    "verify --backend": (["verify", "--backend", "nonexistent"], "--backend"),
    "bench --provider": (["bench", "norm", "--provider", "nonexistent"], "--provider"),
    "bench --exclude": (["bench", "norm", "--exclude", "nonexistent"], "--exclude"),
    "bench target": (["bench", "nonexistent"], "TARGET"),
    "bench --budget": (["bench", "--budget", "soon"], "--budget"),
    "bench --budget -1": (["bench", "--budget", "-1"], "--budget"),
    "bench --json unwritable": (["bench", "norm", "--json", "a-file/run.json"], "--json"),
    "bench --plot unwritable": (["bench", "norm", "--plot", "a-file/plot.png"], "--plot"),
    "verify --json unwritable": (["verify", "--json", "a-file/verify.json"], "--json"),
    "train --save unwritable": (["train", "gpt", "--save", "a-file/gpt.pt"], "--save"),
    "train --out unwritable": (["train", "gpt", "--out", "a-file/run"], "--out"),
    "attention-graph --out unwritable": (
        ["attention-graph", "--model", "m.pt", "--text", "x", "--out", "a-file/g.html"],
        "--out",
    ),
    "attention-graph --model": (["attention-graph", "--model", "no/such.pt", "--text", "x"], "--model"),
    "attention-graph --threshold": (
        ["attention-graph", "--model", "m.pt", "--text", "x", "--threshold", "abc"],
        "--threshold",
    ),
}
if not torch.cuda.is_available():
    BAD_ARGUMENTS["train --device cuda"] = (["train", "gpt", "--device", "cuda"], "--device")
if backends.platform_reasons("cuda"):
    BAD_ARGUMENTS["verify --backend cuda"] = (["verify", "--backend", "cuda"], "--backend")


@pytest.mark.parametrize("name", list(BAD_ARGUMENTS))
def test_a_bad_value_is_one_line_naming_the_flag_and_exit_status_2(name, tmp_path):
    arguments, flag = BAD_ARGUMENTS[name]
    (tmp_path / "a-file").write_text("a file, where a folder is expected")
    result = subprocess.run(
        [sys.executable, "-m", "fastattn", *arguments], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, f"exit status {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"argument {flag}" in lines[0] and lines[0].startswith("python -m fastattn"), lines[0]


def test_verify_progress_counts_the_rows_it_runs(monkeypatch):
    """A backend that cannot serve a case gives no row and leaves the bar's total: at the end the bar
    stands at its total, the number of rows."""
    import tqdm

    bars = []

    class RecordingBar(tqdm.tqdm):
        def close(self):
            bars.append((self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    served = {"naive": _row("naive", True, 0.5)}  # torch cannot serve the case
    monkeypatch.setattr(verify, "all_cases", lambda device, full, ops: _cases(served) + _cases(served))
    rows = verify.run(torch.device("cpu"), full=False, backend_names=["torch", "naive"])
    assert len(rows) == 2
    assert bars and set(bars) == {(2, 2)}, bars


def test_progress_bars_without_tqdm(monkeypatch, capsys):
    """Without the progress extra the work runs, with no bar, and the first bar says how to get them."""
    from fastattn import progress

    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm: ImportError
    monkeypatch.setattr(progress, "_told", False)
    assert list(progress.progress_bar(range(3), desc="work")) == [0, 1, 2]
    with progress.progress_bar(total=4, desc="verify") as bar:
        bar.total -= 1
        bar.update()
        bar.set_postfix(loss="1.0", refresh=False)
        bar.write("step 1")
    progress.progress_bar(range(2))
    out, err = capsys.readouterr()
    assert out == "step 1\n" and bar.total == 3
    assert err.count("pip install 'fastattn[progress]'") == 1, err


def test_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path, capsys):
    """bench --plot without the plot extra: one line naming the flag and what to install, before any timing."""
    import importlib.util

    from fastattn.bench import cli

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["overhead", "--plot", str(tmp_path / "plot.png")])
    assert exit_info.value.code == 2
    assert (
        "argument --plot: drawing the plots needs matplotlib: pip install 'fastattn[plot]'" in capsys.readouterr().err
    )


def test_ctrl_c_is_one_line_and_status_130(tmp_path):
    """Ctrl-C in a command (here verify, while it runs its checks): no traceback.

    CPython drops a KeyboardInterrupt that lands while a finalizer runs (it prints "Exception ignored
    in ..." and goes on), so on a busy machine one Ctrl-C can go unseen, as it would for a user, who
    presses it again: so does this test, every 2 seconds."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fastattn", "verify", "--op", "attention"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = process.stdout.readline()  # printed before the checks start
        assert first_line.startswith(("No GPU", "verify on")), first_line
        for _ in range(30):
            process.send_signal(signal.SIGINT)
            try:
                _, stderr = process.communicate(timeout=2)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].endswith("interrupted"), stderr[-2000:]
    # No traceback of ours: the only ones allowed are CPython's reports of an interrupt it dropped.
    assert stderr.count("Traceback") <= stderr.count("Exception ignored in"), stderr[-2000:]
