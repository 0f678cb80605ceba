"""`rnnbench-report`: one self-contained HTML page comparing the runs under some paths.

rnnbench-report runs/ -o report.html
rnnbench-report runs/ --reference zaremba2014 --metric test/ppl -o ptb.html

The page has one section per dataset (`data.name`), each with its own headline metric (the
`headline` its runs recorded): the comparison table(s) of `rnnbench-table`, a bar chart of the
metric per configuration (error bars: std over seeds), learning curves from each run's
metrics.csv, the pre-clip gradient-norm traces from its steps.csv, for runs made with
`+callbacks=gradflow` the gradient-flow curves ‖∂L/∂h_t‖ from their gradflow.csv, and the runs,
each linked to its folder and, when it logged to W&B, its W&B run. The dataset's reference
numbers (Reber's `*_optimal` perplexity, a trivial predictor's `*_baseline` / `*_naive`) are
dashed lines. A reused run's curves are read from the run it was copied from.

Figures are PNGs at most FIGURE_PX pixels wide, shown at their own size (the page column is
wider), so their text stays as large as drawn whatever the number of runs; the line figures of
a dataset draw its best `--max-runs` runs and say how many were left out. Figures are embedded
as base64: the file needs no network and no other file to be viewed.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import re
import shlex
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
import matplotlib.pyplot as plt
import pandas as pd
from markupsafe import Markup
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rnnbench.errors import UserError
from rnnbench.outputs import check_writable, html_comment, mpl_text, one_line, write_text
from rnnbench.results.plots import colour, figure_bytes, hidden_grad_axes, panels
from rnnbench.results.record import (
    GRADFLOW_COLUMNS,
    GRADFLOW_FILE,
    METRICS_FILE,
    PRE_CLIP_GRAD_NORM,
    RECORD_FILE,
    STEP,
    STEPS_FILE,
    read_examples,
    read_record,
    read_trace,
)
from rnnbench.results.studies import expected_max_figure, load_studies
from rnnbench.results.table import (
    REDUCED_MARK,
    SHOWN,
    Result,
    View,
    build,
    build_sections,
    check_keys,
    check_metric,
    check_shown,
    fmt_number,
    key_text,
    load_frame,
    metric_direction,
    render,
    render_html,
    sections,
    split_keys,
    studies_tables,
)
from rnnbench.tasks import REFERENCE_SUFFIXES

DPI = 100
# The widest a figure is drawn, in pixels: under the page column (STYLE: 1300 px), so a browser
# shows every figure pixel for pixel, its text as large as drawn, instead of shrinking it.
FIGURE_PX = 1200
FIGURE_IN = FIGURE_PX / DPI
MAX_RUNS = 12  # runs a line figure draws per dataset (--max-runs): more lines are no longer read
MAX_BARS = 16  # bars per chart, fewer when their labels are long
LABEL_WIDTH, LABEL_LINES = 50, 3  # a legend entry: characters per line, lines at most
TICK_CHARS = 24  # a bar's label: characters per line
# Values spanning more than this factor are drawn on a log axis (a 5-batch PTB run's perplexity
# beside a full run's), and bars whose spread is under this fraction of their smallest value get
# an axis that does not start at 0 (0.801 against 0.823 accuracy would be two equal bars).
LOG_SPAN = 20.0
ZOOM_SPREAD = 0.5
LINESTYLES = ("-", "--", ":", "-.")
REFERENCE_DASHES = ((0, (6, 3)), (0, (1, 2)), (0, (8, 2, 2, 2)))
# What the gradient-flow figure draws from a run's gradflow.csv (not the probe's loss).
FLOW_DRAWN = {c for c in GRADFLOW_COLUMNS if c != "loss"}

# The pages are Jinja2 templates (rnnbench/results/templates/): a value is escaped where the
# template writes it, so nothing here escapes by hand; a figure or a table already made passes
# as Markup.
PAGES = jinja2.Environment(
    loader=jinja2.PackageLoader("rnnbench.results", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)
PAGES.filters["comment"] = lambda text: Markup(html_comment(f"command: {text}"))
PARTS = PAGES.get_template("parts.html").module


class Link(NamedTuple):
    """A link's text and target (None: the text alone)."""

    text: str
    href: str | None = None


# ---------------------------------------------------------------------------------------------
# What is drawn


@dataclass(frozen=True)
class RunFiles:
    """Where one run's files are, as its record says."""

    folder: Path  # the run folder, holding its result.json
    traces: Path  # the folder of its metrics.csv, steps.csv: the source run's for a reused run
    reused_from: Path | None
    wandb: dict[str, Any] | None  # record["wandb"]: id, mode, project, name, group, tags, dir


def run_files(run_dir: str) -> RunFiles:
    """What the table's frame does not keep of a run: whether it was reused (it has no traces
    of its own then: they are in the folder it was copied from) and its W&B run."""
    folder = Path(run_dir)
    try:
        record: dict[str, Any] = dict(read_record(folder / RECORD_FILE))
    except (OSError, ValueError):  # changed since the table read it: a run without links
        record = {}
    source = record.get("reused_from")
    reused = Path(source) if isinstance(source, str) and source else None
    traces = reused if reused is not None and reused.is_dir() else folder
    wandb = record.get("wandb")
    return RunFiles(folder, traces, reused, wandb if isinstance(wandb, dict) else None)


@dataclass
class Section:
    """One dataset's part of the page."""

    name: str  # its data.name; "" when the runs make one table (data.name among --rows/--cols)
    view: View
    result: Result  # its tables, as rnnbench-table builds them
    frame: pd.DataFrame  # all its runs, failed ones too
    runs: pd.DataFrame  # its completed and diverged runs, with a `traces` folder column
    drawn: pd.DataFrame  # those its line figures draw: the best `max_runs`
    sign: int  # metric_direction of its metric

    @property
    def title(self) -> str:
        return self.name or "all runs"


def completed_values(runs: pd.DataFrame, metric: str) -> pd.Series:
    """`metric` of each completed run, NaN for the others (a diverged run has no number)."""
    if metric not in runs:
        return pd.Series(math.nan, index=runs.index)
    return pd.to_numeric(runs[metric].where(runs["status"] == "completed"), errors="coerce")


def keep_best(frame: pd.DataFrame, values: pd.Series, sign: int, limit: int) -> pd.DataFrame:
    """The `limit` rows of `frame` whose `values` are best in the direction `sign` (-1: lower
    is better, +1: higher; rows without a value last), in their own order; the first `limit`
    when the direction is not known."""
    if len(frame) <= limit:
        return frame
    if not sign:
        return frame.head(limit)
    rank = (pd.to_numeric(values, errors="coerce") * sign).rank(
        ascending=False, method="first", na_option="bottom"
    )
    return frame[rank <= limit]


def left_out_note(shown: int, total: int, what: str, section: Section) -> str:
    """'the best 12 of 40 runs (by test/ppl) are drawn', or '' when all are."""
    if shown >= total:
        return ""
    best = f"best {shown}" if section.sign else f"first {shown}"
    return f"the {best} of {total} {what} (by {section.view.metric}) are drawn"


def references_of(runs: pd.DataFrame, metric: str) -> list[tuple[str, float]]:
    """The dataset's reference numbers for `metric` the runs recorded beside it (test/ppl ->
    test/ppl_optimal; test/mse -> a trivial predictor's test/mse_baseline, test/mse_naive), as
    (name, value), one per distinct value."""
    found = []
    for name in (metric + suffix for suffix in REFERENCE_SUFFIXES):
        if name in runs:
            values = pd.to_numeric(runs[name], errors="coerce")
            distinct = dict.fromkeys(float(f"{v:.6g}") for v in values if math.isfinite(v))
            found += [(name, v) for v in distinct]
    return found


def reference_lines(ax: Axes, refs: Sequence[tuple[str, float]]) -> None:
    """Each reference number as a dashed horizontal line, named in the legend."""
    for i, (name, value) in enumerate(refs):
        ax.axhline(
            value,
            color="#444",
            linewidth=1.2,
            linestyle=REFERENCE_DASHES[i % len(REFERENCE_DASHES)],
            label=mpl_text(f"{name} = {fmt_number(value)}"),
            zorder=3,  # over the bars: an optimum below them must still show
        )


def value_scale(ax: Axes, values: Sequence[float], bars: bool = False) -> str:
    """Set `ax`'s y axis so that `values` (what is drawn: bar ends and reference lines, curve
    points) show their differences: log when they span more than LOG_SPAN times; for bars, an
    axis that does not start at 0 when their spread is small beside their size (ZOOM_SPREAD),
    else one from 0 with room for the labels above the bars. Returns what a reader must know
    about the axis, '' when it is plain."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    if lo > 0 and hi / lo > LOG_SPAN:
        ax.set_yscale("log")
        if bars:
            ax.set_ylim(lo / 2, hi * 2.5)
        return "log scale"
    if not bars:
        return ""
    if lo > 0 and lo < hi and hi - lo < ZOOM_SPREAD * lo:
        ax.set_ylim(lo - 0.25 * (hi - lo), hi + 0.3 * (hi - lo))
        return "axis not from 0"
    bottom, top = min(lo, 0.0), max(hi, 0.0)
    span = top - bottom or abs(top) or 1.0
    ax.set_ylim(bottom, top + 0.15 * span)
    return ""


def label_keys(runs: pd.DataFrame, view: View) -> list[str]:
    """The table keys that tell `runs` apart, model.cell first (figures colour by it); a key
    all of them share is left out, so that the legend names what differs. model.cell alone
    when no key differs."""
    keys = ["model.cell", *view.rows, *view.cols]
    keys = [k for k in dict.fromkeys(keys) if k in runs]
    varying = [k for k in keys if runs[k].map(key_text).nunique() > 1]
    return varying or keys[:1]


def run_label(run: pd.Series, keys: Sequence[str]) -> str:
    """'cell=lstm, num_layers=2': the keys naming a run's line, wrapped at LABEL_WIDTH, at most
    LABEL_LINES lines."""
    text = ", ".join(f"{k.rsplit('.', 1)[-1]}={key_text(run[k])}" for k in keys) or "run"
    lines = textwrap.wrap(text, LABEL_WIDTH, max_lines=LABEL_LINES, placeholder=" …")
    return mpl_text("\n".join(lines))


def style_of(run: pd.Series, view: View, styles: dict) -> str:
    """Runs that differ in the table's column keys get different line styles."""
    key = tuple(key_text(run[k]) for k in view.cols)
    return styles.setdefault(key, LINESTYLES[len(styles) % len(LINESTYLES)])


def curve_column(metric: str, columns: Sequence[str]) -> str | None:
    """The validation series that matches `metric` (val/ppl for test/ppl), else val/loss."""
    wanted = "val/" + metric.rsplit("/", 1)[-1]
    for name in (wanted, "val/loss"):
        if name in columns:
            return name
    return None


def finish(fig: Figure, axes: list) -> None:
    """Integer steps on every x axis, and one legend for all panels, below them (lines of one
    configuration look the same in every panel, so one key serves all); the figure grows in
    height, never in width, to hold it."""
    handles: dict[str, object] = {}
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.dataLim.width == 0:  # one epoch: a single step, give it room either side
            ax.set_xlim(ax.dataLim.x0 - 1, ax.dataLim.x0 + 1)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if not handles:
        return
    width, height = fig.get_size_inches()
    # As many columns as the width holds (8 pt: ~6 px a character, ~50 px of line and gaps).
    column_px = 6.2 * max(len(line) for label in handles for line in label.split("\n")) + 50
    ncols = max(1, min(len(handles), int(width * DPI // column_px)))
    lines = max(label.count("\n") + 1 for label in handles)
    rows = -(-len(handles) // ncols)
    fig.set_size_inches(width, height + rows * (0.17 * lines + 0.08) + 0.15)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=ncols,
        fontsize=8,
        frameon=False,
    )


def figure_html(fig: Figure, alt: str, caption: str) -> Markup:
    """The figure as a <figure>: a PNG inline (base64) exactly as wide as drawn, never wider than
    FIGURE_PX (the figures lay out inside their size: no cropping or growing on save), then
    closed; `caption` (text) under it."""
    width, height = fig.get_size_inches()
    fig.set_size_inches(min(width, FIGURE_IN), height)
    px_w, px_h = (round(v * DPI) for v in fig.get_size_inches())
    data = base64.b64encode(figure_bytes(fig, "png", dpi=DPI)).decode("ascii")
    return PARTS.figure(alt, px_w, px_h, data, caption)


def note(text: str) -> Markup:
    return PARTS.note(text)


def metric_bars(section: Section) -> Markup:
    """The metric per table cell (bars: mean, error bars one std over seeds), the dataset's
    reference numbers as dashed lines, at most MAX_BARS bars (the best)."""
    agg, view = section.result.agg, section.view
    if not (agg["n"] > 0).any() and not (agg["diverged"] > 0).any():
        return note(f"No run of {section.title} records {view.metric}.")
    keys = label_keys(agg, view)
    texts = [
        [textwrap.shorten(f"{k.rsplit('.', 1)[-1]}={key_text(c[k])}", TICK_CHARS) for k in keys]
        + ([REDUCED_MARK + " reduced"] if c.get("cuts") else [])
        for _, c in agg.iterrows()
    ]
    # Each bar as wide as its label (8 pt: ~0.075 in a character), as many as the width holds.
    slot = max(0.8, 0.075 * max(len(line) for lines in texts for line in lines) + 0.3)
    limit = max(1, min(MAX_BARS, int((FIGURE_IN - 1.6) // slot)))
    cells = keep_best(agg, agg["mean"], section.sign, limit)
    labels = [mpl_text("\n".join(texts[agg.index.get_loc(i)])) for i in cells.index]
    width = min(FIGURE_IN, max(5.0, slot * len(cells) + 1.6))
    fig, [ax] = panels([None], width=width, height=4.2, layout="constrained")
    x = list(range(len(cells)))
    std = cells["std"].where(cells["n"] > 1).fillna(0.0)
    ax.bar(
        x,
        cells["mean"],
        yerr=std,
        capsize=4,
        color=[colour(c) for c in cells.get("model.cell", [None] * len(cells))],
        edgecolor="#333",
        zorder=2,
    )
    for i, (_, cell) in enumerate(cells.iterrows()):
        if cell["n"] == 0:  # no bar: say why at the foot of its place
            text = "diverged" if cell["diverged"] else "no runs"
            ax.text(i, 0.03, text, ha="center", fontsize=8, transform=ax.get_xaxis_transform())
        else:
            ax.annotate(
                f"n={int(cell['n'])}",
                (i, cell["mean"] + std.iloc[i]),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    refs = references_of(section.runs, view.metric)
    reference_lines(ax, refs)
    ends = [*(cells["mean"] - std), *(cells["mean"] + std), *(v for _, v in refs)]
    scale = value_scale(ax, ends, bars=True)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlim(-0.6, len(cells) - 0.4)  # a cell with no bar (diverged) keeps its place
    ax.set_ylabel(mpl_text(view.metric + (f" ({scale})" if scale else "")))
    ax.set_title(mpl_text(f"{section.title}: {view.metric}, mean ± std over seeds"), fontsize=10)
    ax.grid(axis="y", alpha=0.3, which="both")
    if refs:
        ax.legend(fontsize=8, loc="best")
    better = {1: "higher is better", -1: "lower is better", 0: ""}[section.sign]
    parts = [f"{view.metric} per configuration: mean ± std over seeds, n = runs", better]
    parts += [f"dashed: {name} = {fmt_number(v)}" for name, v in refs]
    parts += [scale, left_out_note(len(cells), len(agg), "configurations", section)]
    caption = "; ".join(p for p in parts if p)
    return figure_html(fig, f"{section.title}: {view.metric} per configuration", caption)


def learning_curves(section: Section) -> Markup:
    """The validation curve of each drawn run against step (a reused run's from the run it was
    copied from), the dataset's reference number for that series dashed."""
    view, runs = section.view, section.drawn
    fig, [ax] = panels([None], width=0.75 * FIGURE_IN, height=4.0, layout="constrained")
    keys = label_keys(runs, view)
    styles: dict = {}
    labelled: set = set()
    drawn_series: set = set()
    values: list[float] = []
    drawn = 0
    for _, run in runs.iterrows():
        epochs = read_trace(Path(run["traces"]) / METRICS_FILE)
        series = curve_column(view.metric, epochs.columns) if epochs is not None else None
        if series is None or STEP not in epochs:
            continue
        drawn_series.add(series)
        label = run_label(run, keys)
        ax.plot(
            epochs[STEP],
            epochs[series],
            marker="o",
            markersize=3,
            color=colour(run.get("model.cell")),
            linestyle=style_of(run, view, styles),
            label=None if label in labelled else label,
            alpha=0.85,
        )
        values += pd.to_numeric(epochs[series], errors="coerce").tolist()
        labelled.add(label)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return note(f"No run folder of {section.title} holds a {METRICS_FILE}.")
    refs = [ref for series in sorted(drawn_series) for ref in references_of(section.runs, series)]
    reference_lines(ax, refs)
    scale = value_scale(ax, [*values, *(v for _, v in refs)])
    shown = " / ".join(sorted(drawn_series))
    ax.set_title(mpl_text(f"{section.title}: {shown} by step"), fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(mpl_text(shown + (f" ({scale})" if scale else "")))
    ax.grid(alpha=0.3, which="both")
    finish(fig, [ax])
    parts = [f"{shown} of {drawn} run(s) by step"]
    parts += [f"dashed: {name} = {fmt_number(v)}" for name, v in refs]
    parts += [scale, left_out_note(len(runs), len(section.runs), "runs", section)]
    caption = "; ".join(p for p in parts if p)
    return figure_html(fig, f"{section.title}: learning curves", caption)


def grad_norms(section: Section) -> Markup:
    """The per-step pre-clip gradient norm of each drawn run, one panel per cell, log scale."""
    view, traces = section.view, []
    for _, run in section.drawn.iterrows():
        steps = read_trace(Path(run["traces"]) / STEPS_FILE)
        if (
            steps is not None
            and PRE_CLIP_GRAD_NORM in steps
            and steps[PRE_CLIP_GRAD_NORM].notna().any()
        ):
            traces.append((run, steps[[STEP, PRE_CLIP_GRAD_NORM]].dropna()))
    if not traces:
        return note(f"No run folder holds a {STEPS_FILE} with gradient norms.")

    cells = list(dict.fromkeys(str(run.get("model.cell")) for run, _ in traces))
    # Three panels fill the width; one or two are wider, as a lone panel would be too small.
    width = FIGURE_IN / 3 if len(cells) >= 3 else 0.45 * FIGURE_IN
    fig, axes = panels(cells, width=width, height=3.4, layout="constrained")
    by_cell = dict(zip(cells, axes, strict=True))
    keys = label_keys(section.drawn, view)
    styles: dict = {}
    labelled: set = set()
    for run, steps in traces:
        cell = str(run.get("model.cell"))
        label = run_label(run, keys)
        by_cell[cell].plot(
            steps[STEP],
            steps[PRE_CLIP_GRAD_NORM],
            color=colour(cell),
            linestyle=style_of(run, view, styles),
            alpha=0.8,
            label=None if label in labelled else label,
        )
        labelled.add(label)
    for cell, ax in by_cell.items():
        ax.set_yscale("log")
        ax.set_title(mpl_text(f"{cell}: gradient norm before clipping"), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("‖g‖")
        ax.grid(alpha=0.3, which="both")
    finish(fig, list(by_cell.values()))
    parts = [f"global gradient norm before clipping, {len(traces)} run(s), log scale"]
    parts.append(left_out_note(len(section.drawn), len(section.runs), "runs", section))
    caption = "; ".join(p for p in parts if p)
    return figure_html(fig, f"{section.title}: gradient norm traces", caption)


def gradient_flow(section: Section) -> Markup | str:
    """‖∂L/∂h_t‖ against t on each drawn run's probe batch (top layer, forward direction), one
    line per run coloured by cell, log scale: at the first probe and at the last. Vanishing
    gradients show as a line falling towards t = 1. '' when no run was made with the probe."""
    flows = []
    for _, run in section.drawn.iterrows():
        flow = read_trace(Path(run["traces"]) / GRADFLOW_FILE)
        if flow is not None and FLOW_DRAWN <= set(flow.columns) and len(flow):
            top = flow[(flow["layer"] == flow["layer"].max()) & (flow["direction"] == "forward")]
            flows.append((run, top))
    if not flows:
        return ""
    fig, axes = panels(["first", "last"], width=0.45 * FIGURE_IN, height=3.8, layout="constrained")
    keys = label_keys(section.drawn, section.view)
    styles: dict = {}
    for ax, (which, pick) in zip(axes, (("first", min), ("last", max)), strict=True):
        steps = set()
        for run, flow in flows:
            step = pick(flow["step"])
            steps.add(int(step))
            at = flow[flow["step"] == step].sort_values("t")
            ax.plot(
                at["t"],
                at["norm"].where(at["norm"] > 0),
                color=colour(run.get("model.cell")),
                linestyle=style_of(run, section.view, styles),
                alpha=0.85,
                label=run_label(run, keys),
            )
        shown = ", ".join(map(str, sorted(steps)))
        hidden_grad_axes(ax, f"at the {which} probe (step {shown})", xlabel="t (time step)")
    finish(fig, axes)
    caption = f"‖∂L/∂h_t‖ of {len(flows)} run(s), top layer, log scale"
    return figure_html(fig, f"{section.title}: gradient flow through time", caption)


# ---------------------------------------------------------------------------------------------
# The page


EXAMPLES_RUNS = 3  # runs whose decoded examples a section shows (the best by its metric)
EXAMPLES_SHOWN = 5  # examples per run


def decoded_examples(section: Section) -> list[tuple[str, list[dict[str, str]]]]:
    """For a sequence-to-sequence section: the first test examples of its best runs, each
    source beside its reference and what the run decoded, as (run label, examples); none when
    its runs decoded nothing."""
    keys = label_keys(section.runs, section.view)
    shown = []
    for _, run in section.drawn.head(EXAMPLES_RUNS).iterrows():
        examples = read_examples(Path(run["traces"]))[:EXAMPLES_SHOWN]
        if examples:
            shown.append((run_label(run, keys), examples))
    return shown


def file_link(path: Path, base: Path | None) -> Link:
    """A link to a local folder (file:// URI), its text relative to `base` when under it."""
    path = Path(os.path.abspath(path))
    try:
        text = str(path.relative_to(base)) if base is not None else str(path)
    except ValueError:
        text = str(path)
    return Link(text, path.as_uri())


def wandb_link(run: dict[str, Any] | None) -> Link | None:
    """The W&B run of a record: its page when the record has its URL, else its local folder
    (an offline run's files, for `wandb sync`)."""
    if not run:
        return None
    name = f"{run.get('mode') or 'W&B'}: {run.get('name') or run.get('id')}"
    url = run.get("url")
    if isinstance(url, str) and url.startswith("https://"):
        return Link(name, url)
    if run.get("dir"):
        return Link(name, Path(os.path.abspath(run["dir"])).as_uri())
    return Link(name)


def runs_listing(section: Section, files: dict[str, RunFiles], base: Path | None) -> Markup:
    """Every run of the section, failed ones too, one per line (rnnbench-table --long), its
    folder and W&B run linked; a reused run also links the run it was copied from. When the
    line figures leave runs out, a last column marks those they draw."""
    table = build(section.frame, section.view, long=True).tables[0]
    at = table.header.index("run_dir")
    header = [*table.header[:at], "folder", "W&B", *table.header[at + 1 :]]
    drawn = set(section.drawn["run_dir"].astype(str))
    rows = []
    for row in table.body:
        texts = [c.text for c in row]
        found = files.get(texts[at])
        rows.append(
            {
                "before": texts[:at],
                "after": texts[at + 1 :],
                "run_dir": texts[at],
                "folder": found and file_link(found.folder, base),
                "reused_from": found and found.reused_from and file_link(found.reused_from, base),
                "wandb": found and wandb_link(found.wandb),
                "drawn": texts[at] in drawn,
            }
        )
    cut = len(section.drawn) < len(section.runs)
    return PARTS.runs(header, rows, len(rows) <= 2 * MAX_RUNS, cut)


def anchor(name: str) -> str:
    return "data-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", name) or "all")


def section_parts(
    section: Section, files: dict[str, RunFiles], base: Path | None, flow: str = ""
) -> dict[str, Any]:
    """What report.html shows of a dataset: its heading, tables, figures (`flow`: its
    gradient-flow figure, '' for none), decoded examples and runs."""
    counts = ", ".join(f"{n} {s}" for s, n in section.frame["status"].value_counts().items())
    summary = f"{len(section.frame)} run(s) ({counts})"
    cut = left_out_note(len(section.drawn), len(section.runs), "runs", section)
    if cut:
        summary += f"; {cut} in the line figures (--max-runs); all are listed under Runs"
    return {
        "anchor": anchor(section.name),
        "title": section.title,
        "metric": section.view.metric,
        "count": len(section.frame),
        "summary": summary,
        "table": Markup(render(section.result, "html")),
        "bars": metric_bars(section),
        "curves": learning_curves(section),
        "norms": grad_norms(section),
        "flow": flow,
        "examples": decoded_examples(section),
        "runs": runs_listing(section, files, base),
    }


def make_sections(
    df: pd.DataFrame,
    files: dict[str, RunFiles],
    rows: Sequence[str] | None,
    cols: Sequence[str] | None,
    metric: str | None,
    references: Sequence[str],
    max_runs: int,
) -> tuple[list[Section], list[str]]:
    """One Section per dataset of `df` (rnnbench-table's sections), and the datasets left out."""
    built, skipped = build_sections(df, rows, cols, metric, references)
    frames = dict(sections(df))
    out = []
    for name, result in built:
        frame = frames.get(name, df)  # "" (one table of all datasets): every run
        runs = frame[frame["status"].isin(SHOWN) & frame["run_dir"].notna()]
        runs = runs.assign(traces=[str(files[str(d)].traces) for d in runs["run_dir"]])
        view = result.view
        sign = metric_direction(runs, view.metric)
        drawn = keep_best(runs, completed_values(runs, view.metric), sign, max_runs)
        out.append(Section(name, view, result, frame, runs, drawn, sign))
    return out, skipped


def made_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def report_html(
    df: pd.DataFrame,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    metric: str | None = None,
    references: Sequence[str] = (),
    sources: Sequence[str] = (),
    command: str | None = None,
    max_runs: int = MAX_RUNS,
) -> str:
    """The whole page as one string: a section per dataset (see the module's docstring);
    `rows`, `cols`, `metric` and `references` as rnnbench-table takes them (None: each
    dataset's defaults), `max_runs` the runs a line figure draws per dataset."""
    folders = df["run_dir"].dropna().astype(str).unique()
    files = {d: run_files(d) for d in folders}
    parts_of, skipped = make_sections(df, files, rows, cols, metric, references, max_runs)
    base = Path(os.path.commonpath([os.path.abspath(d) for d in folders])) if len(folders) else None
    if base is not None and str(base) in {os.path.abspath(d) for d in folders}:
        base = base.parent  # one run: name it inside its parent folder
    return PAGES.get_template("report.html").render(
        command=command,
        title="rnnbench report: " + ", ".join(s.title for s in parts_of),
        runs=len(df),
        counts=", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()),
        sources=", ".join(map(str, sources)),
        made=made_now(),
        base=base and file_link(base, None),
        skipped=skipped,
        sections=[section_parts(s, files, base, gradient_flow(s)) for s in parts_of],
    )


def studies_page(paths: Sequence[str], command: str | None = None) -> str:
    """A page about the studies of the searches at `paths` (rnnbench-table --studies): their
    summary table, the expected-best curves drawn, and the curves' numbers."""
    views = load_studies(paths)
    summary, curve = studies_tables(views)
    figure = figure_html(
        expected_max_figure(views),
        "expected best validation value against the number of trials",
        "The expected best validation value of n trials drawn from each study's completed "
        "ones, ± one standard deviation (Dodge et al. 2019).",
    )
    return PAGES.get_template("studies.html").render(
        command=command,
        title="rnnbench studies: " + ", ".join(v.name for v in views),
        count=len(views),
        sources=", ".join(paths),
        made=made_now(),
        summary=Markup(render_html(summary)),
        figure=figure,
        curve=Markup(render_html(curve)),
    )


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rnnbench-report",
        description=(
            "Write one self-contained HTML page about the runs under PATH, a section per "
            "dataset with its headline metric: the comparison table of rnnbench-table, the "
            "metric per configuration with error bars over seeds and the dataset's reference "
            "numbers, learning curves, pre-clip gradient-norm traces, and the runs linked to "
            "their folders and W&B runs. Figures are embedded, so the page opens offline."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help=f"{RECORD_FILE} files or folders")
    p.add_argument(
        "--studies",
        action="store_true",
        help="PATHs are searches (folders holding optuna.db or journal.log, or storage URLs): "
        "a page of their studies, as rnnbench-table --studies, with the expected-best curves",
    )
    p.add_argument("-o", "--output", default="report.html", help="default: report.html")
    p.add_argument("--rows", help="comma-separated table row keys (as rnnbench-table)")
    p.add_argument("--cols", help="comma-separated table column keys (as rnnbench-table)")
    p.add_argument("--metric", help="metric (default: each dataset's headline)")
    p.add_argument("--reference", metavar="NAME[,NAME]", help="published numbers to compare")
    p.add_argument(
        "--max-runs",
        type=positive,
        default=MAX_RUNS,
        metavar="N",
        help=f"runs a line figure draws per dataset, the best by the metric (default {MAX_RUNS})",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run `rnnbench-report` with `argv`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        problem = check_writable(args.output)
        if problem:  # before reading the runs and drawing every figure
            raise UserError(problem)
        if args.studies:
            page = studies_page(args.paths, shlex.join(["rnnbench-report", *argv]))
            write_text(args.output, page)
            print(f"wrote {one_line(args.output)}", file=sys.stderr)
            return 0
        df = load_frame(args.paths)
        check_shown(df)
        rows, cols = split_keys(args.rows), split_keys(args.cols)
        check_keys(df, rows or [], "--rows")
        check_keys(df, cols or [], "--cols")
        if args.metric:
            check_metric(df, args.metric)
        command = shlex.join(["rnnbench-report", *argv])
        references = split_keys(args.reference) or []
        page = report_html(
            df, rows, cols, args.metric, references, args.paths, command, args.max_runs
        )
        write_text(args.output, page)
    except UserError as e:
        print(f"rnnbench-report: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    print(f"wrote {one_line(args.output)}", file=sys.stderr)
    return 0


def cli() -> None:
    """Console entry point (`rnnbench-report`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
