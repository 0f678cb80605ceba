"""`results/reproduction.csv`, one line per (source, task, cell, metric), and the README's table
made from it (`--readme README.md`); a committed line no run record backs is carried over."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rnnbench.outputs import write_text
from rnnbench.results.reproduce.recipes import SOURCES, ReproduceError
from rnnbench.results.reproduce.rows import (
    Row,
    duration_text,
    fmt,
    is_within,
    mean_text,
    percent_change,
)

CSV_FILE = "reproduction.csv"
# The README's table of the rows run here, made from reproduction.csv (`--readme README.md`).
README_BEGIN = "<!-- rnnbench-reproduce:readme:begin -->"
README_END = "<!-- rnnbench-reproduce:readme:end -->"
# std: the seeds' sample standard deviation (blank for one seed); train_h: training hours per
# seed (their records' timing); train_partial: a resumed run timed only its last part.
CSV_COLUMNS = (
    "source", "task", "cell", "metric", "direction", "paper", "ours", "budget", "seeds", "std",
    "train_h", "train_partial", "command",
)  # fmt: skip


def csv_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [
        {
            "source": row.recipe.source,
            "task": row.recipe.task,
            "cell": row.recipe.label(),
            "metric": row.metric,
            "direction": "lower" if row.sign < 0 else "higher",
            "paper": "" if row.paper is None else row.paper,
            "ours": "" if row.ours is None else f"{row.ours:.6g}",
            "budget": row.budget,
            "seeds": row.seeds,
            "std": "" if row.std is None else f"{row.std:.4g}",
            "train_h": "" if row.train_hours is None else f"{row.train_hours:.4g}",
            "train_partial": "true" if row.train_partial and row.train_hours else "",
            "command": row.command,
        }
        for row in rows
    ]


def read_csv(path: Path) -> list[dict[str, str]]:
    """The lines of a reproduction.csv; none when it does not exist."""
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(lines)
    write_text(path, f.getvalue())


def csv_lines(rows: Sequence[Row], previous: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """The CSV's lines: the rows made now, with the previous lines of the sources not made
    now (`--source`) kept as they were; grouped by source in SOURCES order."""
    made = {row.recipe.source for row in rows}
    lines = [line for line in previous if line["source"] not in made] + csv_rows(rows)
    order = list(SOURCES)
    return sorted(lines, key=lambda line: order.index(line["source"]))  # stable within one


def readme_block(lines: Sequence[dict[str, str]]) -> str:
    """The README's table of every row run here (full or reduced budget), from the lines of
    reproduction.csv: ours (mean ± std over seeds) beside the paper, Δ, and time per seed."""
    out = [
        README_BEGIN,
        "<!-- made by `rnnbench-reproduce --readme README.md` from results/reproduction.csv -->",
        "| source | task | cell | metric | paper | ours | Δ | trained here, per seed |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    partial = False
    for line in lines:
        if line["budget"] in ("", "not run"):
            continue
        source = SOURCES[line["source"]]
        paper = float(line["paper"]) if line["paper"] else None
        ours = float(line["ours"]) if line["ours"] else None
        std = float(line["std"]) if line.get("std") else None
        delta = percent_change(ours, paper)
        if line["budget"] != "full":
            delta += ", reduced budget"
        elif paper is not None and ours is not None:
            if not is_within(ours, paper, lower=line["direction"] == "lower"):
                delta = f"**{delta}**, missed"
        hours = float(line["train_h"]) if line.get("train_h") else None
        trained = duration_text(hours)
        if line.get("train_partial") == "true" and hours is not None:
            trained, partial = f"> {trained} ¹", True
        cell = line["cell"].upper().replace("(TUNED)", "(tuned)")
        task = source.task_names.get(line["task"], line["task"])
        out.append(
            f"| {source.cited or source.name} | {task} "
            f"| {cell} | {line['metric']} | {fmt(paper)} "
            f"| {mean_text(ours, std, int(line['seeds'] or 0))} | {delta} | {trained} |"
        )
    if partial:
        out += [
            "",
            "¹ Resumed across sessions before a resumed record kept the earlier parts' "
            "training time: the time of the last part only.",
        ]
    return "\n".join([*out, README_END])


def readme_text(path: Path) -> str:
    """The text of the README whose table `--readme` rewrites; refused without its markers."""
    text = path.read_text() if path.is_file() else ""
    if README_BEGIN not in text or README_END not in text.split(README_BEGIN, 1)[1]:
        raise ReproduceError(
            f"--readme {path}: no {README_BEGIN} ... {README_END} markers in it; add them where "
            "the table goes"
        )
    return text


def write_readme(path: Path, lines: Sequence[dict[str, str]]) -> None:
    """Replace the table between the README markers of `path`."""
    head, rest = readme_text(path).split(README_BEGIN, 1)
    write_text(path, head + readme_block(lines) + rest.split(README_END, 1)[1])


def row_id(source: str, task: str, cell: str, metric: str) -> tuple[str, str, str, str]:
    return source, task, cell, metric


def carry_over(rows: Sequence[Row], path: Path) -> int:
    """Give each row no run record backs ("not run") the committed line of `path` that had
    one (a row made before its records were kept in the repo): a regeneration in a fresh
    clone, or with other runs, never turns a measured row into "not run"; nor does a shortened
    check run of the recipe displace a committed full-budget line. Returns how many."""
    previous = {
        row_id(r["source"], r["task"], r["cell"], r["metric"]): r
        for r in read_csv(path)
        if r.get("budget") not in (None, "", "not run")
    }
    if not previous:
        return 0
    carried = 0
    for row in rows:
        key = row_id(row.recipe.source, row.recipe.task, row.recipe.label(), row.metric)
        if key not in previous:
            continue
        if row.budget == "not run" or (
            row.budget == "reduced" and previous[key]["budget"] == "full"
        ):
            row.kept, row.budget, row.runs = previous[key], previous[key]["budget"], []
            row.differs = []
            carried += 1
    return carried
