"""Reports of a benchmark run: text and Markdown tables, the JSON rows, and recorded runs.

Each op's table puts the providers side by side: one row per case, one column per provider. On a GPU
a cell holds the throughput (TFLOP/s, GB/s, tokens/s) or the time (µs) and, in brackets, the speedup
over the best PyTorch provider for that case (its time over this one's: above 1x is faster). On a
CPU cells hold median milliseconds: the tiny CPU shapes say nothing about GPU throughput.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from .harness import FAMILIES, Case, Row, Section, results_dir

ROW_ENVIRONMENT = ("gpu", "torch", "triton", "cuda", "commit", "date")  # carried by every JSON row
VALUE_FORMATS = {"TFLOP/s": "{:.1f}", "GB/s": "{:.0f}", "µs": "{:.1f}", "tokens/s": "{:.0f}", "ms": "{:.3f}"}


def table(title: str, header, lines, notes=(), *, markdown: bool = False) -> str:
    """A titled table (aligned text, or Markdown), followed by its notes."""
    header = tuple(str(h) for h in header)
    lines = [tuple(str(cell) for cell in line) for line in lines]
    out = [f"### {title}", ""] if markdown else [title]
    if lines:
        if markdown:
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            out += ["| " + " | ".join(line) + " |" for line in lines]
        else:
            widths = [max(len(row[i]) for row in (header, *lines)) for i in range(len(header))]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths)
            out.append(fmt.format(*header).rstrip())
            out.append(fmt.format(*("-" * w for w in widths)))
            out += [fmt.format(*line).rstrip() for line in lines]
    if notes:
        if markdown and lines:
            out.append("")
        out += [f"- {note}" if markdown else f"  {note}" for note in notes]
    return "\n".join(out) + "\n"


def speedups(rows: list[Row]) -> dict[tuple[Case, str], float]:
    """For each (case, provider) that ran: the best PyTorch provider's median over its own."""
    best: dict[Case, float] = {}
    for row in rows:
        if row.status == "ok" and row.family == "pytorch":
            best[row.case] = min(best.get(row.case, float("inf")), row.timing.median_ms)
    return {
        (row.case, row.provider): best[row.case] / row.timing.median_ms
        for row in rows
        if row.status == "ok" and row.case in best
    }


def _groups(rows: list[Row]) -> dict[tuple[str, str, str], list[Row]]:
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row.case.op, row.case.mode, row.case.dtype)].append(row)
    return groups


def _unit(rows: list[Row], on_gpu: bool) -> str:
    return rows[0].case.unit if on_gpu else "ms"


def _cell(row: Row, unit: str, speedup: float | None) -> str:
    if row.status == "skipped":
        return "–"
    if row.status == "error":
        return "ERROR"
    value = row.timing.median_ms if unit == "ms" else row.case.value(row.timing.median_ms)
    text = VALUE_FORMATS[unit].format(value)
    return text if speedup is None else f"{text} ({speedup:.2f}x)"


def section_text(section: Section, on_gpu: bool, *, markdown: bool = False) -> str:
    """The tables of one benchmark target, one per (op, mode, dtype), with the reasons for gaps."""
    ratio = speedups(section.rows)
    order = {name: i for i, name in enumerate(p.name for p in section.providers)}
    family_rank = {p.name: FAMILIES.index(p.family) for p in section.providers}
    parts = []
    for (op, mode, dtype), rows in _groups(section.rows).items():
        unit = _unit(rows, on_gpu)
        names = sorted({row.provider for row in rows}, key=lambda n: (family_rank[n], order[n]))
        cases = list(dict.fromkeys(row.case for row in rows))
        cells = {(row.case, row.provider): row for row in rows}
        lines = []
        for case in cases:
            line = [case.label]
            for name in names:
                row = cells.get((case, name))
                line.append(_cell(row, unit, ratio.get((case, name))) if row else "")
            lines.append(line)
        measure = "median ms on one CPU thread" if unit == "ms" else unit
        title = f"{op} {mode}, {dtype}: {measure} (in brackets: speedup over the best PyTorch provider)"
        notes = _gap_notes(rows)
        parts.append(table(title, ("case", *names), lines, notes, markdown=markdown))
    notes = [f"not run here: {p.name}: {p.unavailable}" for p in section.providers if p.unavailable]
    if section.cases_not_run:
        notes.append(f"{section.cases_not_run} cases not run: the time budget ran out")
    notes += section.notes
    if notes:
        parts.append(table(f"{section.title}: providers and cases not timed", (), (), notes, markdown=markdown))
    return "\n".join(parts)


def _gap_notes(rows: list[Row]) -> list[str]:
    """One note per (provider, reason) of the skipped and failed cells, with how many cases it covers."""
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for row in rows:
        if row.status != "ok":
            counts[(row.provider, row.status, row.reason)] += 1
    return [
        f"{provider}: {'ERROR: ' if status == 'error' else ''}{reason} ({count} case{'s' * (count > 1)})"
        for (provider, status, reason), count in counts.items()
    ]


def json_rows(sections: list[Section], environment: dict, on_gpu: bool) -> list[dict]:
    """Every timing as one flat record that names the GPU, the versions, the commit and the date.
    ``value`` is the reported number in ``unit``: on a CPU, the median in ms (no throughput)."""
    carried = {key: environment.get(key) for key in ROW_ENVIRONMENT}
    records = []
    for section in sections:
        ratio = speedups(section.rows)
        for row in section.rows:
            case, timing = row.case, row.timing
            record = {
                **carried,
                "op": case.op,
                "mode": case.mode,
                "dtype": case.dtype,
                "case": case.label,
                **case.params,
                "provider": row.provider,
                "family": row.family,
                "status": row.status,
                "reason": row.reason or None,
                "median_ms": timing.median_ms if timing else None,
                "p20_ms": timing.p20_ms if timing else None,
                "p80_ms": timing.p80_ms if timing else None,
                "runs": timing.runs if timing else None,
                "unit": case.unit if on_gpu else "ms",
                "work": case.work,
                "value": (case.value(timing.median_ms) if on_gpu else timing.median_ms) if timing else None,
                "speedup_vs_best_pytorch": ratio.get((case, row.provider)),
            }
            records.append(record)
    return records


def providers_summary(sections: list[Section]) -> list[dict]:
    return [
        {
            "target": s.title,
            "provider": p.name,
            "family": p.family,
            "what": p.description,
            "available": p.unavailable is None,
            "reason": p.unavailable,
        }
        for s in sections
        for p in s.providers
    ]


def write_json(path: str | Path, report: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(report, file, indent=1, ensure_ascii=False, default=str)
        file.write("\n")


def record_stem(environment: dict) -> str:
    """``<date>_<gpu>_torch-<version>_triton-<version>``: the name of a recorded run in bench/results/."""
    device = environment.get("gpu") or "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    versions = "_".join(
        f"{name}-{re.sub(r'[^A-Za-z0-9.]+', '.', str(environment.get(name)))}" for name in ("torch", "triton")
    )
    return f"{environment['date'][:10]}_{slug}_{versions}"


def record(report: dict, markdown: str) -> list[Path]:
    """Writes the run's JSON and Markdown into bench/results/; returns the two paths."""
    stem = record_stem(report["environment"])
    directory = results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = directory / f"{stem}.json", directory / f"{stem}.md"
    write_json(json_path, report)
    markdown_path.write_text(markdown, encoding="utf-8")
    return [json_path, markdown_path]
