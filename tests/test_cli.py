"""The command line: env, and verify's table, JSON and exit status."""

import json
import math

import torch

from fastattn import __main__ as cli
from fastattn import verify
from fastattn.verify.common import Case, Row


def test_env_lists_every_backend_with_its_state(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    states = {line.split()[0]: line.split()[1] for line in out.split("backends")[1].splitlines()[1:] if line.strip()}
    assert set(states) == {"triton", "cuda", "torch", "naive"}, out
    assert states["torch"] == states["naive"] == "available"
    assert all(state in ("available", "unavailable:") for state in states.values()), out


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
