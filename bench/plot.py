"""Plots of a benchmark run: one panel per op, mode and shape series, one line per provider.

On a GPU: attention in TFLOP/s against the sequence length with the measured bf16 matmul rate drawn
as a ceiling; norms in GB/s against the hidden size with the measured copy bandwidth as the ceiling;
sampling in µs against the batch size with the time to read the logits once at that bandwidth as the
floor. On a CPU: median milliseconds, and no ceilings (there are none to measure).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from .harness import FAMILIES, Section

PANEL_COLUMNS = 3
PANEL_SIZE = (5.2, 3.6)  # inches
STYLES = {"ours": "-", "pytorch": "--", "peer": ":"}


def _panels(sections: list[Section]) -> dict[tuple[str, str], list]:
    panels: dict[tuple[str, str], list] = defaultdict(list)
    for section in sections:
        for row in section.rows:
            if row.status == "ok" and row.case.x_name:
                panels[(section.title, f"{row.case.op} {row.case.series} ({row.case.dtype})")].append(row)
    return panels


def _ceiling(ax, unit: str, rows, ceilings: dict) -> None:
    if unit == "TFLOP/s":
        ax.axhline(
            ceilings["matmul_TFLOPs"],
            color="black",
            linewidth=1,
            label=f"bf16 matmul {ceilings['matmul_TFLOPs']:.0f} TFLOP/s",
        )
    elif unit == "GB/s":
        ax.axhline(ceilings["copy_GBps"], color="black", linewidth=1, label=f"copy {ceilings['copy_GBps']:.0f} GB/s")
    elif unit == "µs":
        points = sorted({(row.case.x, row.case.work) for row in rows})
        ax.plot(
            [x for x, _ in points],
            [work / (ceilings["copy_GBps"] * 1e9) * 1e6 for _, work in points],
            color="black",
            linewidth=1,
            label="logits read once at copy bandwidth",
        )


def plot(path: str | Path, sections: list[Section], *, ceilings: dict | None, on_gpu: bool, title: str) -> bool:
    """Writes a PNG; False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(sections)
    if not panels:
        return False
    families = {p.name: p.family for s in sections for p in s.providers}
    rows_count = math.ceil(len(panels) / PANEL_COLUMNS)
    columns = min(PANEL_COLUMNS, len(panels))
    figure, axes = plt.subplots(
        rows_count, columns, squeeze=False, figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows_count)
    )
    for ax, ((_, name), rows) in zip(axes.flat, panels.items(), strict=False):
        unit = rows[0].case.unit if on_gpu else "ms"
        lines = defaultdict(list)
        for row in rows:
            value = row.case.value(row.timing.median_ms) if on_gpu else row.timing.median_ms
            lines[row.provider].append((row.case.x, value))
        for provider in sorted(lines, key=lambda p: FAMILIES.index(families[p])):
            points = sorted(lines[provider])
            ax.plot(
                [x for x, _ in points],
                [y for _, y in points],
                STYLES[families[provider]],
                marker="o",
                markersize=3,
                label=provider,
            )
        if on_gpu and ceilings:
            _ceiling(ax, unit, rows, ceilings)
        ax.set_xscale("log", base=2)
        ticks = sorted({row.case.x for row in rows})
        ax.set_xticks(ticks, [str(x) for x in ticks], fontsize=7)
        ax.minorticks_off()
        if unit in ("µs", "ms"):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(rows[0].case.x_name)
        ax.set_ylabel(f"median {unit}" if unit == "ms" else unit)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
