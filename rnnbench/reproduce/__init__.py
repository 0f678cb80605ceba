"""`rnnbench-reproduce`: published result tables rebuilt from our own run records.

Each recipe in `conf/experiment/<source>/` reproduces one published row. This module composes
every recipe, finds the completed runs made from it under the results folders, and writes, per
source, a markdown table with ours beside the paper's number (`results/tcn_table1.md`,
`results/zaremba.md`) and one CSV row per (source, task, cell, metric)
(`results/reproduction.csv`). A recipe that has not been run shows the training time it would
take here, measured by `rnnbench-reproduce --time` (a few real steps of the recipe), never a
guessed result.

    rnnbench-reproduce                       # tables from the runs under ./runs
    rnnbench-reproduce --time tcn/ptb_word_lstm zaremba/large   # measure the time estimates

Findings written by hand under a table survive regeneration: only the block between the
`rnnbench-reproduce` markers is replaced.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rnnbench.cellspec import CELLS
from rnnbench.config import CONF_DIR, compose
from rnnbench.errors import UserError
from rnnbench.outputs import make_folder, md_text, one_line, write_text
from rnnbench.record import (
    METRICS_FILE,
    RECORD_FILE,
    flatten,
    identity,
    is_identity_key,
    iter_records,
    read_record,
    repeat_key,
    write_json_atomic,
)
from rnnbench.report import positive  # argparse type: a whole number of at least 1
from rnnbench.studies import STORAGE_FILES, StudyView, load_studies, storage_url
from rnnbench.table import literal, load_reference, match_keys
from rnnbench.tasks import direction

RESULTS_DIR = Path("results")
# OUT/records/<recipe>/<run_key>/: a copy of each run record behind a row (result.json and
# metrics.csv, no checkpoints), committed with the tables, so a fresh clone regenerates them.
RECORDS_DIR = "records"
# records/searches/<search>/: a search's study storage and its runs' records (the tuned rows)
SEARCHES_DIR = "searches"
TIMES_FILE = "recipe_times.csv"
CSV_FILE = "reproduction.csv"
BEGIN, END = "<!-- rnnbench-reproduce:begin -->", "<!-- rnnbench-reproduce:end -->"
# The README's table of the rows run here, made from reproduction.csv (`--readme README.md`).
README_BEGIN = "<!-- rnnbench-reproduce:readme:begin -->"
README_END = "<!-- rnnbench-reproduce:readme:end -->"
TOLERANCE = 0.02  # "reproduced": within 2 % of the paper on the metric's own side
GPU_HOURS = 6.0  # a recipe needing more training than this here is left for a GPU
PAPER_CELLS = tuple(reversed(CELLS))  # the papers' order: the best-known cell first
TUNED = "_tuned"  # recipe name suffix: a row beside the paper's, with settings tuned here
# std: the seeds' sample standard deviation (blank for one seed); train_h: training hours per
# seed (their records' timing); train_partial: a resumed run timed only its last part.
CSV_COLUMNS = (
    "source", "task", "cell", "metric", "direction", "paper", "ours", "budget", "seeds", "std",
    "train_h", "train_partial", "command",
)  # fmt: skip


@dataclass(frozen=True)
class Source:
    """A published table: its recipes' folder, the reference CSV it compares with, its page."""

    name: str
    reference: str
    title: str
    page: str
    tasks: tuple[str, ...]  # the paper's row order
    metrics: tuple[str, ...] = ()  # extra metrics shown beside the headline (Zaremba: val/ppl)
    cited: str = ""  # the README table's source column
    task_names: dict[str, str] = field(default_factory=dict)  # the README's task column


SOURCES = {
    "tcn": Source(
        "tcn",
        "bai2018",
        "Bai, Kolter & Koltun 2018, Table 1: the LSTM, GRU and RNN columns",
        "tcn_table1.md",
        tasks=(
            "seq_mnist",
            "pmnist",
            "adding",
            "copy_memory",
            "jsb",
            "nottingham",
            "ptb_word",
            "ptb_char",
        ),  # fmt: skip
        cited="Bai et al. 2018",
        task_names={
            "seq_mnist": "sequential MNIST",
            "pmnist": "permuted MNIST",
            "adding": "adding, T=600",
            "copy_memory": "copy memory, T=1000",
            "jsb": "JSB Chorales",
            "nottingham": "Nottingham",
            "ptb_word": "PTB words",
            "ptb_char": "PTB characters",
        },
    ),
    "zaremba": Source(
        "zaremba",
        "zaremba2014",
        "Zaremba, Sutskever & Vinyals 2014, Table 1: LSTMs on Penn Treebank words",
        "zaremba.md",
        tasks=("small", "medium", "large"),
        metrics=("val/ppl",),
        cited="Zaremba et al. 2014",
        task_names={t: f"PTB words, {t}" for t in ("small", "medium", "large")},
    ),
    "seq2seq": Source(
        "seq2seq",
        "bentrevett_seq2seq",
        "bentrevett/pytorch-seq2seq notebooks 1-3 (a tutorial, not a paper): RNN "
        "encoder-decoders on Multi30k de->en; their BLEU is HF evaluate's on spaCy tokens, ours "
        "sacreBLEU's on 13a tokens",
        "seq2seq.md",
        tasks=("lstm", "gru_context", "gru_attention", "small"),
        cited="bentrevett seq2seq tutorial",
        task_names={
            "lstm": "Multi30k de→en, LSTM enc-dec",
            "gru_context": "Multi30k de→en, GRU with context",
            "gru_attention": "Multi30k de→en, GRU with attention",
            "small": "Multi30k de→en, small GRU (ours)",
        },
    ),
}


class ReproduceError(UserError):
    """A bad argument to rnnbench-reproduce."""


@dataclass
class Recipe:
    """One `conf/experiment/<source>/<task>.yaml`, composed."""

    name: str  # e.g. tcn/jsb_lstm
    config: dict[str, Any]
    headline: str  # the metric the paper reports: test/nll, test/ppl, ...
    kind: str = ""  # its dataset's task kind (rnnbench.tasks): says which way is better

    @property
    def source(self) -> str:
        return self.name.split("/")[0]

    @property
    def tuned(self) -> bool:
        """A `<task>_<cell>_tuned` recipe: settings chosen here that beat or explain the
        paper's, shown as its own row beside the paper's recipe."""
        return self.name.endswith(TUNED)

    @property
    def task(self) -> str:
        stem = self.name.split("/")[1].removesuffix(TUNED)
        cell = self.config["model"]["cell"]
        return stem[: -len(cell) - 1] if stem.endswith("_" + cell) else stem

    @property
    def cell(self) -> str:
        return self.config["model"]["cell"]

    def label(self, case: Callable[[str], str] = str) -> str:
        """The cell column of the tables: `gru`, or `gru (tuned)` for a tuned recipe."""
        return f"{case(self.cell)} (tuned)" if self.tuned else case(self.cell)

    @property
    def key(self) -> str:
        return repeat_key(self.config)

    @property
    def order(self) -> tuple[int, int, str]:
        tasks, cells = SOURCES[self.source].tasks, PAPER_CELLS
        task = tasks.index(self.task) if self.task in tasks else len(tasks)
        cell = cells.index(self.cell) if self.cell in cells else len(cells)
        return task, cell, self.name


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


def recipe_names(sources: Iterable[str] = SOURCES, conf_dir: Path = CONF_DIR) -> list[str]:
    """Every recipe of the given sources (top-level files of conf/experiment/<source>/)."""
    names = []
    for source in sources:
        folder = conf_dir / "experiment" / source
        names += [f"{source}/{p.stem}" for p in sorted(folder.glob("*.yaml"))]
    return names


def compose_recipes(names: Sequence[str], overrides: Sequence[str] = ()) -> list[Recipe]:
    """Compose each recipe exactly as `rnnbench experiment=NAME` would."""

    recipes = []
    for name in names:
        cfg = compose([f"experiment={name}", *overrides])
        data = instantiate(cfg.data)
        config = OmegaConf.to_container(cfg, resolve=True)
        recipes.append(Recipe(name, config, data.headline_metric, data.task))
    return recipes


def published(recipe: Recipe, metric: str, references: dict[str, Any]) -> float | None:
    """The paper's number for this recipe and metric, matched as `rnnbench-table --reference`
    matches (every filled dotted key equals the recipe's value); None when the paper has none."""
    ref = references[recipe.source]
    flat = flatten(recipe.config)
    for _, row in ref[ref["metric"] == metric].iterrows():
        keys = [k for k in match_keys(ref) if row[k] != ""]
        if all(literal(row[k]) == flat.get(k) for k in keys):
            return float(row["value"])
    return None


def differences(recipe: Recipe, config: dict[str, Any]) -> list[str]:
    """`key=value` for each setting of a run that is not the recipe's (seed aside), as its
    run_key sees them (record.identity: a key at its one fixed value is not a difference)."""
    want, have = flatten(identity(recipe.config)), flatten(identity(config))
    keys = sorted(k for k in set(want) | set(have) if is_identity_key(k))
    return [f"{k}={have.get(k)}" for k in keys if want.get(k) != have.get(k)]


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


def render_table(rows: Sequence[Row]) -> str:
    out = [
        "| task | cell | metric | paper | ours | Δ | budget | trained here | verdict |",
        "|---|---|---|---:|---:|---:|---|---:|---|",
    ]
    for row in rows:
        out.append(
            f"| {row.recipe.task} | {row.recipe.label(str.upper)} | {row.metric} "
            f"| {fmt(row.paper)} | {ours_text(row)} | {delta_text(row)} | {row.budget} "
            f"| {trained_text(row)} | {verdict(row)} |"
        )
    return "\n".join(out)


def commands_made(rows: Sequence[Row]) -> list[str]:
    """The command of each run behind the table (once each), then this command."""
    seen = dict.fromkeys(row.command for row in rows if row.runs)
    return [*seen, "rnnbench-reproduce"]


def searched_budget(recipe: Recipe, view: StudyView) -> list[str]:
    """What the confirming runs of `view` set other than the recipe and the searched keys
    (their records' configurations): empty for the recipe's full budget."""
    differs: set[str] = set()
    for run_dir in view.confirm_dirs:
        record = read_record(run_dir / RECORD_FILE)
        differs |= {
            d
            for d in differences(recipe, record["config"])
            if d.split("=", 1)[0] not in view.best_params
        }
    return sorted(differs)


def searched_verdict(paper: float | None, mean: float | None, lower: bool, cut: list[str]) -> str:
    if mean is None:
        return "not confirmed yet"
    if cut:
        return "reduced budget: " + ", ".join(map(md_text, cut[:4]))
    if paper is None:
        return "no published number"
    beats = mean < paper if lower else mean > paper
    return "beats the paper" if beats else "**behind the paper**"


def search_commands(views: Sequence[StudyView]) -> list[str]:
    """The command of each search behind `views`, from its folder's multirun.yaml."""
    commands = []
    for folder in dict.fromkeys(v.folder for v in views if v.folder is not None):
        try:
            task = OmegaConf.load(folder / "multirun.yaml").hydra.overrides.task
        except (OSError, ValueError, AttributeError):
            continue
        commands.append(portable("rnnbench -m " + " ".join(task)))
    return commands


def searched_lines(rows: Sequence[Row], views: Sequence[StudyView]) -> list[str]:
    """The tuned rows: per study of a search around one of these recipes (one study per cell,
    equal budgets), its best configuration's confirmed test mean ± std beside the paper and the
    recipe as published; none when no study searched around these recipes."""
    heads = {row.recipe.name: row for row in rows if row.metric == row.recipe.headline}
    mine = sorted(
        ((heads[v.recipe], v) for v in views if v.recipe in heads), key=lambda p: p[0].recipe.order
    )
    if not mine:
        return []
    out = [
        "## Tuned by search: every cell the same budget",
        "",
        "Made by these commands (the searches; their studies and records are archived under "
        f"`{RECORDS_DIR}/{SEARCHES_DIR}/`):",
        "",
        *(f"    {one_line(c)}" for c in search_commands([v for _, v in mine])),
        "",
        "Each cell's study searched the same space with the same number of trials and sampler "
        "seed (`conf/hparams_search/`). Its best configuration by validation was trained again "
        "with the seeds after the search's own: **searched** is those runs' test mean ± std, "
        "never the best trial's own test score. *recipe*: the row above, the paper's settings. "
        "*trained here*: the whole study, trials and confirming runs.",
        "",
        "| task | cell | metric | paper | recipe | searched | Δ | trials (pruned) | best val "
        "| trained here | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row, view in mine:
        mean = statistics.fmean(view.confirmed) if view.confirmed else None
        std = statistics.stdev(view.confirmed) if len(view.confirmed) > 1 else None
        cut = searched_budget(row.recipe, view)
        trials = f"{sum(view.states.values())} ({view.states.get('pruned', 0)})"
        out.append(
            f"| {row.recipe.task} | {row.recipe.label(str.upper)} | {row.metric} "
            f"| {fmt(row.paper)} | {ours_text(row)} | {mean_text(mean, std, len(view.confirmed))} "
            f"| {percent_change(mean, row.paper)} | {trials} | {fmt(view.best_value)} "
            f"| {duration_text(view.train_hours)} "
            f"| {searched_verdict(row.paper, mean, row.sign < 0, cut)} |"
        )
    return [*out, ""]


def load_searches(out: Path) -> list[StudyView]:
    """The studies archived under OUT/records/searches/."""
    archive = out / RECORDS_DIR / SEARCHES_DIR
    folders = sorted(f for f in archive.glob("*") if any((f / n).is_file() for n in STORAGE_FILES))
    return load_studies(folders) if folders else []


def render_page(source: Source, rows: Sequence[Row], views: Sequence[StudyView] = ()) -> str:
    """The generated block of one source's page; `views`: the archived searches' studies."""
    full = [r for r in rows if r.budget == "full" and r.paper is not None]
    hit = sum(bool(r.within) for r in full)
    commands = "\n".join(f"    {one_line(c)}" for c in commands_made(rows))
    times = [r for r in rows if r.budget == "not run" and r.hours is not None]
    lines = [
        BEGIN,
        f"# {source.title}",
        "",
        "Made by these commands (the runs, then the table), run in the repository root:",
        "",
        commands,
        "",
        f'Full-budget rows within 2% of the paper: {hit} of {len(full)}. "trained here": the '
        "runs' training time on the machine that ran them (their records' timing). "
        'Δ = ours / paper − 1; "within 2%" means no worse than the paper by more than 2% '
        "(lower-is-better: ours ≤ 1.02 × paper; higher-is-better: ours ≥ 0.98 × paper).",
        "",
        render_table(rows),
        "",
    ]
    if times:
        loads = sorted(float(r.timed.get("load") or "nan") for r in times)
        threads = sorted({r.timed.get("threads", "?") for r in times})
        lines += [
            "Hours for rows not run: training time only, measured on this machine by "
            f"`rnnbench-reproduce --time` (a few real steps of each recipe; see "
            f"`results/{TIMES_FILE}`), times steps per epoch times epochs; with "
            f"{'/'.join(threads)} torch thread(s) at a load average of {loads[0]:g} to "
            f"{loads[-1]:g} (other jobs on the cores make these figures longer than an idle "
            "machine's).",
            "",
        ]
    return "\n".join([*lines, *searched_lines(rows, views), END])


def write_page(path: Path, block: str) -> None:
    """Replace the generated block of `path`, keeping whatever is written around it."""
    if path.is_file():
        text = path.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            write_text(path, head + block + tail)
            return
    write_text(path, block + "\n")


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


def archive_searches(paths: Sequence[Path], out: Path) -> int:
    """Copy each search folder's study storage, its multirun.yaml and its runs' records
    (result.json, metrics.csv; checkpoints stay behind) into OUT/records/searches/<folder>/,
    in the same study/trial layout, where the studies' view finds them (studies.locate). A
    study goes on between copies: a file that changed is copied again. Returns how many files
    were new or changed."""
    copied = 0
    for path in paths:
        _, folder = storage_url(path)
        if folder is None:
            raise ReproduceError(
                f"--searches {path}: give a search's folder (it holds {' or '.join(STORAGE_FILES)})"
            )
        target = out / RECORDS_DIR / SEARCHES_DIR / folder.resolve().name
        if target.resolve() == folder.resolve():
            continue  # already the archive
        make_folder(target, "-o")
        files = [folder / n for n in (*STORAGE_FILES, "multirun.yaml") if (folder / n).is_file()]
        for record in folder.rglob(RECORD_FILE):
            files += [p for p in (record, record.parent / METRICS_FILE) if p.is_file()]
        for source in files:
            dest = target / source.relative_to(folder)
            if dest.is_file() and filecmp.cmp(source, dest, shallow=False):
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            copied += 1
    return copied


def archive_records(rows: Sequence[Row], out: Path) -> int:
    """Copy each run record behind a row into OUT/records/<recipe>/<run_key>-<seed>/ (its
    result.json and metrics.csv; checkpoints stay behind). Returns how many were new."""
    new = 0
    for row in rows:
        for record in row.runs:
            source = Path(record["run_dir"])
            folder = out / RECORDS_DIR / row.recipe.name / f"{record['run_key']}-{record['seed']}"
            if (folder / RECORD_FILE).is_file() or folder.resolve() == source.resolve():
                continue
            make_folder(folder, "-o")
            write_json_atomic(folder / RECORD_FILE, {**record, "run_dir": str(folder)})
            if (source / METRICS_FILE).is_file():
                shutil.copyfile(source / METRICS_FILE, folder / METRICS_FILE)
            new += 1
    return new


# ---------------------------------------------------------------------------------------------
# Time estimates for recipes not run


def read_times(path: Path) -> dict[str, dict[str, str]]:
    """recipe -> its row of recipe_times.csv (hours, threads, load, command, ...)."""
    if not path.is_file():
        return {}
    with path.open() as f:
        return {row["recipe"]: row for row in csv.DictReader(f)}


def measure_time(recipe: Recipe, steps: int) -> dict[str, Any]:
    """Train `recipe` for `steps` real steps here (the first one's start-up included) and scale
    the time per step by the steps of one epoch and the recipe's epochs."""

    from rnnbench.train import run  # lazy: torch loads only to train a recipe

    overrides = [
        f"experiment={recipe.name}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=0",
        "trainer.limit_test_batches=1",
        "force=true",
    ]
    cfg = compose(overrides)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    per_epoch = len(datamodule.train_dataloader())
    with tempfile.TemporaryDirectory() as tmp:
        record = run(cfg, tmp, overrides)
    timing = record["timing"]
    s_per_step = timing["train_s"] / max(1, timing["steps"])
    epochs = recipe.config["trainer"]["max_epochs"]
    return {
        "recipe": recipe.name,
        "s_per_step": round(s_per_step, 4),
        "steps_per_epoch": per_epoch,
        "epochs": epochs,
        "hours": round(s_per_step * per_epoch * epochs / 3600, 2),
        "threads": record["env"].get("threads") if record.get("env") else "",
        "load": round(os.getloadavg()[0], 1),  # other work on the machine inflates the estimate
        "command": f"rnnbench-reproduce --time {recipe.name} --steps {steps} "
        f"--threads {torch.get_num_threads()}",
    }


def write_times(path: Path, measured: list[dict[str, Any]]) -> None:
    """Merge newly measured estimates into `path` (one row per recipe)."""
    rows = read_times(path) | {m["recipe"]: m for m in measured}
    fields = [
        "recipe", "s_per_step", "steps_per_epoch", "epochs", "hours", "threads", "load", "command"
    ]  # fmt: skip
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows[k] for k in sorted(rows))
    write_text(path, f.getvalue())


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rnnbench-reproduce",
        description=(
            "Rebuild the published tables (Bai et al. 2018 Table 1, Zaremba et al. 2014, and "
            "the bentrevett/pytorch-seq2seq tutorial's encoder-decoders) from "
            "the runs made with the conf/experiment/ recipes: ours beside the paper, one markdown "
            "page per source and results/reproduction.csv. With --time, measure how long the "
            "named recipes would train here instead."
        ),
        epilog="example: rnnbench -m experiment=tcn/jsb_lstm,tcn/jsb_gru,tcn/jsb_rnn && "
        "rnnbench-reproduce",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help="folders holding run records (default: $RNNBENCH_RUNS_DIR, else ./runs)",
    )
    parser.add_argument(
        "--source",
        action="append",
        choices=sorted(SOURCES),
        help="only this source's table (repeatable; default: all)",
    )
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="folder for the pages (default: results)",
    )
    parser.add_argument(
        "--time",
        nargs="+",
        metavar="RECIPE",
        help="measure training time per recipe (e.g. tcn/ptb_word_lstm, or a source: tcn) and "
        f"merge it into OUT/{TIMES_FILE}; writes no table",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        metavar="README",
        help="also rewrite the table between the rnnbench-reproduce:readme markers of this file "
        "(README.md) from the CSV just written",
    )
    parser.add_argument(
        "--searches",
        nargs="+",
        type=Path,
        metavar="FOLDER",
        help="search folders (runs/searches/<name>, from rnnbench -m hparams_search=...) to "
        f"archive under OUT/{RECORDS_DIR}/{SEARCHES_DIR}/; every archived search's studies "
        "give the pages their tuned rows",
    )
    parser.add_argument("--steps", type=int, default=10, help="steps timed per recipe (--time)")
    parser.add_argument(
        "--threads",
        type=positive,
        default=None,
        help="torch threads while timing, at least 1 (default: torch's)",
    )
    return parser.parse_args(argv)


def expand(names: Sequence[str]) -> list[str]:
    """Recipe names, a bare source name standing for all its recipes; unknown ones refused."""
    known = recipe_names()
    out = []
    for name in names:
        if name in SOURCES:
            out += recipe_names([name])
        elif name in known:
            out.append(name)
        else:
            raise ReproduceError(
                f"unknown recipe {name!r}; recipes are conf/experiment/<source>/<name>.yaml, "
                f"e.g. {known[0]}, or a whole source: {', '.join(SOURCES)}"
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.steps < 1:
            raise ReproduceError(f"--steps must be a positive number of steps, got {args.steps}")
        make_folder(args.out, "-o")  # before any timing or reading: refused in one line
        if args.time:
            names = expand(args.time)
            if args.threads is not None:
                torch.set_num_threads(args.threads)
            measured = []
            for i, recipe in enumerate(compose_recipes(names), 1):
                print(f"[{i}/{len(names)}] timing {recipe.name} ...", file=sys.stderr, flush=True)
                measured.append(measure_time(recipe, args.steps))
                m = measured[-1]
                print(
                    f"{m['recipe']}: {m['s_per_step']} s/step x {m['steps_per_epoch']} steps x "
                    f"{m['epochs']} epochs = {m['hours']} h"
                )
            write_times(args.out / TIMES_FILE, measured)
            return 0
        roots = args.paths or [Path(os.environ.get("RNNBENCH_RUNS_DIR") or "runs")]
        missing = [str(p) for p in roots if not p.is_dir()]
        if missing:
            raise ReproduceError(f"no such folder: {', '.join(missing)} (give the runs folder)")
        sources = args.source or list(SOURCES)
        if args.readme:
            readme_text(args.readme)  # refused before any table is written
        recipes = compose_recipes(recipe_names(sources))
        kept_records = args.out / RECORDS_DIR
        if kept_records.is_dir() and kept_records.resolve() not in [r.resolve() for r in roots]:
            roots = [*roots, kept_records]  # the records behind the committed rows
        rows = collect(recipes, roots, read_times(args.out / TIMES_FILE))
        carried = carry_over(rows, args.out / CSV_FILE)
        archived = archive_records(rows, args.out)
        archived_searches = archive_searches(args.searches or [], args.out)
        views = load_searches(args.out)
        for name in sources:
            mine = [r for r in rows if r.recipe.source == name]
            page = args.out / SOURCES[name].page
            write_page(page, render_page(SOURCES[name], mine, views))
            print(f"wrote {page}")
        lines = csv_lines(rows, read_csv(args.out / CSV_FILE))
        write_csv(args.out / CSV_FILE, lines)
        print(f"wrote {args.out / CSV_FILE}")
        if args.readme:
            write_readme(args.readme, lines)
            print(f"wrote the table in {args.readme}")
        full = [r for r in rows if r.budget == "full" and r.paper is not None]
        summary = {
            "full": len(full),
            "within_2pct": sum(bool(r.within) for r in full),
            "reduced": sum(r.budget == "reduced" for r in rows),
            "not_run": sum(r.budget == "not run" for r in rows),
            "carried_over": carried,
            "records_archived": archived,
            "search_files_archived": archived_searches,
            "studies": len(views),
        }
        print(json.dumps(summary))
        return 0
    except UserError as e:
        print(f"rnnbench-reproduce: error: {one_line(str(e))}", file=sys.stderr)
        return 2


def cli() -> None:
    sys.exit(main())
