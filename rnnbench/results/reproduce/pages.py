"""Each source's markdown page (`results/tcn_table1.md`, ...): the generated block between the
`rnnbench-reproduce` markers, with the rows' table and the tuned rows of the archived searches;
whatever is written around the block is kept."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from rnnbench.outputs import md_text, one_line, write_text
from rnnbench.results.record import RECORD_FILE, read_record
from rnnbench.results.reproduce.recipes import Recipe, Source, differences
from rnnbench.results.reproduce.rows import (
    RECORDS_DIR,
    SEARCHES_DIR,
    Row,
    delta_text,
    duration_text,
    fmt,
    mean_text,
    ours_text,
    percent_change,
    portable,
    trained_text,
    verdict,
)
from rnnbench.results.reproduce.times import TIMES_FILE
from rnnbench.results.studies import StudyView, confirmed_stats

BEGIN, END = "<!-- rnnbench-reproduce:begin -->", "<!-- rnnbench-reproduce:end -->"


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
            overrides = OmegaConf.load(folder / "multirun.yaml").hydra.overrides
            # The sweeper's own settings (a pruner, a study name) make a search what it is.
            given = [*overrides.hydra, *overrides.task]
        except (OSError, ValueError, AttributeError):
            continue
        given = [o for o in given if not str(o).startswith("hydra.mode=")]
        commands.append(portable("rnnbench -m " + " ".join(map(str, given))))
    return commands


def searched_lines(rows: Sequence[Row], views: Sequence[StudyView]) -> list[str]:
    """The tuned rows: per study of a search around one of these recipes (one study per cell,
    equal budgets), its best configuration's confirmed test mean ± std beside the paper and the
    recipe as published; none when no study searched around these recipes."""
    heads = {row.recipe.name: row for row in rows if row.metric == row.recipe.headline}
    mine = sorted(
        ((heads[v.recipe], v) for v in views if v.recipe in heads),
        key=lambda p: (p[0].recipe.order, p[1].name),
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
        "| task | cell | study | metric | paper | recipe | searched | Δ | trials (pruned) "
        "| best val | trained here | verdict |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row, view in mine:
        mean, std = confirmed_stats(view) or (None, None)
        cut = searched_budget(row.recipe, view)
        trials = f"{sum(view.states.values())} ({view.states.get('pruned', 0)})"
        out.append(
            f"| {row.recipe.task} | {row.recipe.label(str.upper)} | {md_text(view.name)} "
            f"| {row.metric} "
            f"| {fmt(row.paper)} | {ours_text(row)} | {mean_text(mean, std, len(view.confirmed))} "
            f"| {percent_change(mean, row.paper)} | {trials} | {fmt(view.best_value)} "
            f"| {duration_text(view.train_hours)} "
            f"| {searched_verdict(row.paper, mean, row.sign < 0, cut)} |"
        )
    return [*out, ""]


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
