"""The rows: per recipe and metric, the runs made from it found among the run records, ours
beside the paper, and the text of each cell of a row (ours, Δ, time trained, verdict)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnbench.outputs import md_text
from rnnbench.results.record import iter_records, repeat_key
from rnnbench.results.reproduce.recipes import SOURCES, Recipe, differences, published
from rnnbench.results.table import load_reference
from rnnbench.tasks import direction

# OUT/records/<recipe>/<run_key>/: a copy of each run record behind a row (result.json and
# metrics.csv, no checkpoints), committed with the tables, so a fresh clone regenerates them.
RECORDS_DIR = "records"
# records/searches/<search>/: a search's study storage and its runs' records (the tuned rows)
SEARCHES_DIR = "searches"
TOLERANCE = 0.02  # "reproduced": within 2 % of the paper on the metric's own side
GPU_HOURS = 6.0  # a recipe needing more training than this here is left for a GPU


@dataclass
class Row:
    """Ours against the paper for one recipe and metric."""

    recipe: Recipe
    metric: str
    paper: float | None
    runs: list[dict[str, Any]] = field(default_factory=list)  # the records that count
    budget: str = "not run"  # full | reduced | not run
    differs: list[str] = field(default_factory=list)  # reduced: what differs from the recipe
    timed: dict[str, str] | None = None  # not run: its row of recipe_times.csv
    kept: dict[str, str] | None = None  # carried over from the committed reproduction.csv

    @property
    def hours(self) -> float | None:
        """Training hours measured here for a recipe not run; None when not measured."""
        return float(self.timed["hours"]) if self.timed else None

    @property
    def ours(self) -> float | None:
        if self.kept is not None:
            return float(self.kept["ours"]) if self.kept["ours"] else None
        values = self.values
        return statistics.fmean(values) if values else None

    @property
    def diverged(self) -> bool:
        return bool(self.runs) and all(r.get("status") == "diverged" for r in self.runs)

    @property
    def sign(self) -> int:
        return direction(self.metric, [self.recipe.kind])

    @property
    def within(self) -> bool | None:
        """Ours no worse than the paper by more than TOLERANCE; None when either is missing."""
        if self.paper is None or self.ours is None or self.budget != "full":
            return None
        return is_within(self.ours, self.paper, lower=self.sign < 0)

    @property
    def values(self) -> list[float]:
        """The metric of each run behind the row (finite ones)."""
        values = [r["metrics"].get(self.metric) for r in self.runs]
        return [v for v in values if isinstance(v, int | float) and math.isfinite(v)]

    @property
    def std(self) -> float | None:
        """The seeds' sample standard deviation; None for fewer than two."""
        if self.kept is not None:
            return float(self.kept["std"]) if self.kept.get("std") else None
        values = self.values
        return statistics.stdev(values) if len(values) > 1 else None

    @property
    def train_hours(self) -> float | None:
        """Training hours per run (the mean of their records' timing); None when untimed."""
        if self.kept is not None:
            return float(self.kept["train_h"]) if self.kept.get("train_h") else None
        seconds = [r.get("timing", {}).get("train_s") for r in self.runs]
        seconds = [x for x in seconds if isinstance(x, int | float)]
        return sum(seconds) / len(seconds) / 3600 if seconds else None

    @property
    def train_partial(self) -> bool:
        """Some run behind the row was resumed and timed only its last part."""
        if self.kept is not None:
            return self.kept.get("train_partial") == "true"
        return any(is_partly_timed(r) for r in self.runs)

    @property
    def seeds(self) -> int:
        return int(self.kept["seeds"]) if self.kept is not None else len(self.runs)

    @property
    def command(self) -> str:
        if self.kept is not None:
            return portable(self.kept["command"])
        if not self.runs:
            return f"rnnbench experiment={self.recipe.name}"
        overrides = [o for o in self.runs[0].get("overrides") or [] if not is_machine_path(o)]
        seeds = sorted({r.get("seed") for r in self.runs if r.get("seed") is not None})
        if len(seeds) < 2:
            return "rnnbench " + " ".join(overrides)
        # Several seeds: the one multirun that makes them all.
        others = [o for o in overrides if not o.startswith("seed=")]
        return f"rnnbench -m {' '.join(others)} seed={','.join(map(str, seeds))}"


def is_machine_path(override: str) -> bool:
    """An override that says where the runs were written on the machine that ran them: it
    changes no result, and the path need not exist on a fresh clone."""
    return override.startswith("results_root=")


def portable(command: str) -> str:
    """A row's command as anyone can run it from a fresh clone (machine paths left out)."""
    return " ".join(word for word in command.split(" ") if not is_machine_path(word))


def collect(
    recipes: Sequence[Recipe], roots: Sequence[Path], times: dict[str, dict[str, str]]
) -> list[Row]:
    """One Row per recipe and shown metric, holding the runs made from the recipe: full-budget
    runs (every setting the recipe's, any seed) when there are any, else reduced ones."""
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    seen = set()  # one run found twice (under runs/ and its copy in results/records)
    for root in roots:
        for path, record in iter_records(root):
            if SEARCHES_DIR in path.relative_to(root).parts[:-1]:
                continue  # a search's trial or confirming run: the tuned rows' (searched_lines)
            name = (record.get("config") or {}).get("recipe")
            if name and record.get("status") in ("completed", "diverged"):
                once = (record.get("run_key"), record.get("seed"), record.get("started"))
                if not record.get("reused_from") and once not in seen:
                    seen.add(once)
                    by_recipe.setdefault(name, []).append({**record, "run_dir": str(path.parent)})
    references = {s: load_reference(SOURCES[s].reference) for s in {r.source for r in recipes}}
    rows = []
    for recipe in sorted(recipes, key=lambda r: r.order):
        made = by_recipe.get(recipe.name, [])
        full = [r for r in made if repeat_key(r["config"]) == recipe.key]
        for metric in (*SOURCES[recipe.source].metrics, recipe.headline):
            row = Row(recipe, metric, published(recipe, metric, references))
            if full:
                row.runs, row.budget = full, "full"
            elif made:
                newest = max(made, key=lambda r: r.get("finished") or "")
                row.differs = differences(recipe, newest["config"])
                row.runs = [
                    r for r in made if repeat_key(r["config"]) == repeat_key(newest["config"])
                ]
                row.budget = "reduced"
            else:
                row.timed = times.get(recipe.name)
            rows.append(row)
    return rows


def is_within(ours: float, paper: float, lower: bool) -> bool:
    """Ours no worse than the paper by more than TOLERANCE, on the metric's own side."""
    return ours <= (1 + TOLERANCE) * paper if lower else ours >= (1 - TOLERANCE) * paper


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.4g}" if abs(x) < 1 else f"{x:.2f}"


def mean_text(mean: float | None, std: float | None, seeds: int) -> str:
    """`8.48`, or `8.48 ± 0.019 (3 seeds)`: the spread to two significant digits."""
    text = fmt(mean)
    return f"{text} ± {std:.2g} ({seeds} seeds)" if std is not None and seeds > 1 else text


def percent_change(ours: float | None, paper: float | None) -> str:
    """Δ = ours / paper − 1, e.g. `+1.9%`; `-` when either is missing."""
    if paper is None or ours is None:
        return "-"
    return f"{100 * (ours / paper - 1):+.1f}%"


def delta_text(row: Row) -> str:
    return percent_change(row.ours, row.paper)


def ours_text(row: Row) -> str:
    if row.budget == "not run":
        if row.hours is None:
            return "not run (time not measured: rnnbench-reproduce --time " + row.recipe.name + ")"
        if row.hours > GPU_HOURS:
            return f"not run — needs a GPU, about {row.hours:.0f} h on this CPU"
        return f"not run yet — about {row.hours:.1f} h on this CPU"
    if row.diverged:
        return "diverged"
    return mean_text(row.ours, row.std, len(row.values) if row.kept is None else row.seeds)


KEPT_NOTE = "record not in the repo: carried over from the committed reproduction.csv"


def verdict(row: Row) -> str:
    if row.kept is not None:
        within = row.within
        said = "" if within is None else ("within 2%; " if within else "missed by more than 2%; ")
        return said + KEPT_NOTE
    if row.budget == "reduced":  # the settings come from run records: shown verbatim
        return "reduced budget: " + ", ".join(map(md_text, row.differs[:4]))
    within = row.within
    if within is None:
        return "" if row.budget == "not run" else "no published number"
    return "within 2%" if within else "**missed by more than 2%**: see below"


def is_partly_timed(record: dict[str, Any]) -> bool:
    timing = record.get("timing", {})
    return bool(timing.get("partial") or (record.get("resumed_from") and "items" not in timing))


def duration_text(hours: float | None) -> str:
    """`5.1 min` or `1.7 h`; `-` when untimed."""
    if hours is None:
        return "-"
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def trained_text(row: Row) -> str:
    """How long the runs behind a row trained here (their record's timing), e.g. 5.1 min."""
    text = duration_text(row.train_hours)
    # A run resumed from a checkpoint that did not carry the training time so far (or recorded
    # before records said so) timed only its last part.
    if row.train_partial and row.train_hours is not None:
        return f"> {text} (resumed; earlier parts untimed)"
    return text
