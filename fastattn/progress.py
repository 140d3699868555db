"""Progress bars on long work: tqdm's, from the ``progress`` extra (``pip install 'fastattn[progress]'``).

Without tqdm the work runs all the same, with no bar, and the first bar asked for says on stderr how to
get them. Only what the package uses of a tqdm bar is stood in for.
"""

from __future__ import annotations

import sys

_told = False


def progress_bar(iterable=None, **options):
    """``tqdm(iterable, **options)``, or without tqdm a stand-in that iterates, writes and ignores the rest."""
    try:
        from tqdm import tqdm
    except ImportError:
        global _told
        if not _told and not options.get("disable"):
            _told = True
            print("(no progress bars: pip install 'fastattn[progress]' for them)", file=sys.stderr)
        return _NoBar(iterable, options.get("total"))
    return tqdm(iterable, **options)


class _NoBar:
    def __init__(self, iterable, total: int | None) -> None:
        self.iterable, self.total = iterable, total

    def __iter__(self):
        return iter(self.iterable)

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def refresh(self) -> None:
        return None

    def close(self) -> None:
        return None

    def set_postfix(self, *args, **kwargs) -> None:
        return None

    def write(self, text: str) -> None:
        print(text)
