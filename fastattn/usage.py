"""Command-line values: the argparse types that check them as they are parsed, and the error of a value
that is only found bad once the command runs. Either way the command line prints one line naming the
flag and what is expected, and exits with status 2."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def require_extra(module: str, extra: str, flag: str, what: str) -> None:
    """Raises a UsageError for ``flag`` when ``module`` (of the optional ``extra``) is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"argument {flag}: {what} needs {module}: pip install 'fastattn[{extra}]'")


class UsageError(ValueError):
    """A bad value of a command-line flag (the message names the flag and what is expected): the command
    line prints it as one line and exits with status 2, as for a value argparse rejects."""


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    return parse


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def existing_file(text: str) -> str:
    """An argparse type: the path of a file that exists."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


def output_file(text: str) -> str:
    """An argparse type: a file the command will write, checked now rather than after the work: its
    folder is created if need be, and a file must be creatable in it."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; expected the path of a file to write")
    try:
        path.absolute().parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.absolute().parent):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {error.strerror or error}") from None
    return text


class Parser(argparse.ArgumentParser):
    """argparse, with every bad value reported as one line (the flag and what is expected), exit status 2."""

    def error(self, message: str):
        # Under torchrun every process parses the same arguments: the first one says it, once.
        said = (
            f"{self.prog}: error: {message} (see {self.prog} --help)\n" if os.environ.get("RANK", "0") == "0" else None
        )
        self.exit(2, said)
