"""`rnnbench-report`: one self-contained HTML page comparing the runs under some paths.

rnnbench-report runs/multirun/2026-11-25/20-35-48 -o report.html
rnnbench-report runs/ --reference zaremba2014 --metric test/ppl -o ptb.html

The page holds the comparison table(s) of `rnnbench-table`, a bar chart of the metric per
configuration (error bars: std over seeds), learning curves from each run's metrics.csv and the
pre-clip gradient-norm traces from each run's steps.csv, and for runs made with
`+callbacks=gradflow` the gradient-flow curves ‖∂L/∂h_t‖ from their gradflow.csv. Figures are
PNGs embedded as base64, so the file needs no network and no other file to be viewed.
"""

from __future__ import annotations

import argparse
import base64
import html
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rnnbench.errors import UserError
from rnnbench.outputs import check_writable, html_comment, mpl_text, one_line, write_text
from rnnbench.plots import colour, figure_bytes, hidden_grad_axes, panels
from rnnbench.record import (
    GRADFLOW_COLUMNS,
    GRADFLOW_FILE,
    METRICS_FILE,
    PRE_CLIP_GRAD_NORM,
    RECORD_FILE,
    STEP,
    STEPS_FILE,
    read_trace,
)
from rnnbench.table import (
    SHOWN,
    View,
    build,
    check_shown,
    key_text,
    load_frame,
    render,
    resolve_view,
    split_keys,
)

LINESTYLES = ("-", "--", ":", "-.")
# What the gradient-flow figure draws from a run's gradflow.csv (not the probe's loss).
FLOW_DRAWN = {c for c in GRADFLOW_COLUMNS if c != "loss"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { margin-bottom: 0.2em; }
.meta { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 0.25em; }
table.rnnbench { border-collapse: collapse; margin: 1em 0 0.4em; font-size: 0.95em; }
table.rnnbench caption { text-align: left; font-weight: bold; padding-bottom: 0.3em; }
table.rnnbench th, table.rnnbench td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
table.rnnbench thead th { background: #eef; }
table.rnnbench td { text-align: right; font-variant-numeric: tabular-nums; }
table.rnnbench tbody th { text-align: left; font-weight: normal; }
table.rnnbench td.best { background: #e6f4e6; }
table.rnnbench td.text { text-align: left; }
p.note { margin: 0.1em 0; color: #555; font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""


def png_tag(fig: Figure, alt: str) -> str:
    """The figure as an <img> with the PNG inline (base64), then closed."""
    data = base64.b64encode(figure_bytes(fig, "png", dpi=100, tight=True)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def finish(fig: Figure, axes: list) -> None:
    """Integer steps on every x axis, and one legend for all panels, below them (lines of one
    configuration look the same in every panel, so one key serves all)."""
    handles: dict[str, object] = {}
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.dataLim.width == 0:  # one epoch: a single step, give it room either side
            ax.set_xlim(ax.dataLim.x0 - 1, ax.dataLim.x0 + 1)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=min(4, len(handles)),
            fontsize=9,
            frameon=False,
        )
    fig.tight_layout()


def style_of(run: pd.Series, view: View, styles: dict) -> str:
    """Runs that differ in the table's column keys get different line styles."""
    key = tuple(key_text(run[k]) for k in view.cols)
    return styles.setdefault(key, LINESTYLES[len(styles) % len(LINESTYLES)])


def run_label(run: pd.Series, view: View) -> str:
    """'cell=lstm, num_layers=2': the table keys naming a run's line (figures colour by cell,
    so it always comes first)."""
    keys = [k for k in ["model.cell", *view.rows, *view.cols] if k != "data.name" and k in run]
    keys = list(dict.fromkeys(keys))
    return mpl_text(", ".join(f"{k.rsplit('.', 1)[-1]}={key_text(run[k])}" for k in keys))


def curve_column(metric: str, columns: Sequence[str]) -> str | None:
    """The validation series that matches `metric` (val/ppl for test/ppl), else val/loss."""
    wanted = "val/" + metric.rsplit("/", 1)[-1]
    for name in (wanted, "val/loss"):
        if name in columns:
            return name
    return None


def datasets(runs: pd.DataFrame) -> list:
    return list(dict.fromkeys(runs["data.name"])) if "data.name" in runs else [None]


def of_dataset(runs: pd.DataFrame, name: object) -> pd.DataFrame:
    return runs if name is None else runs[runs["data.name"] == name]


def learning_curves(runs: pd.DataFrame, view: View) -> str:
    """Validation curve against step, one line per run, one panel per dataset."""
    names = datasets(runs)
    fig, axes = panels(names)
    drawn = 0
    for ax, name in zip(axes, names, strict=True):
        styles: dict = {}
        labelled: set = set()
        drawn_series: set = set()
        for _, run in of_dataset(runs, name).iterrows():
            epochs = read_trace(Path(run["run_dir"]) / METRICS_FILE)
            series = curve_column(view.metric, epochs.columns) if epochs is not None else None
            if series is None or "step" not in epochs:
                continue
            drawn_series.add(series)
            label = run_label(run, view)
            ax.plot(
                epochs["step"],
                epochs[series],
                marker="o",
                markersize=3,
                color=colour(run.get("model.cell")),
                linestyle=style_of(run, view, styles),
                label=None if label in labelled else label,
                alpha=0.85,
            )
            labelled.add(label)
            drawn += 1
        shown = " / ".join(sorted(drawn_series)) or "validation"
        ax.set_title(mpl_text(f"{name or 'runs'}: {shown} by step"))
        ax.set_xlabel("step")
        ax.set_ylabel(mpl_text(shown))
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return f'<p class="note">No run folder holds a {METRICS_FILE} to draw.</p>'
    finish(fig, axes)
    return png_tag(fig, "learning curves")


def metric_bars(agg: pd.DataFrame, view: View) -> str:
    """The metric per table cell, error bars one std over seeds, one panel per dataset."""
    keys = [k for k in [*view.rows, *view.cols] if k != "data.name"]
    names = list(dict.fromkeys(agg["data.name"])) if "data.name" in agg else [None]
    # One row of panels, each as wide as its number of bars (a lone PTB bar stays narrow).
    bars = [len(agg) if n is None else int((agg["data.name"] == n).sum()) for n in names]
    fig, axes = plt.subplots(
        1,
        len(names),
        figsize=(sum(max(2.5, 0.8 * b + 1.5) for b in bars), 4.0),
        squeeze=False,
        gridspec_kw={"width_ratios": [max(2.5, 0.8 * b + 1.5) for b in bars]},
    )
    axes = list(axes.flat)
    for ax, name in zip(axes, names, strict=True):
        cells = agg if name is None else agg[agg["data.name"] == name]
        x = range(len(cells))
        means = cells["mean"].fillna(0)
        ax.bar(
            x,
            means,
            yerr=cells["std"].fillna(0),
            capsize=4,
            color=[colour(c) for c in cells.get("model.cell", [None] * len(cells))],
            edgecolor="#333",
        )
        top = float((means + cells["std"].fillna(0)).max()) if len(means) else 1.0
        for i, (_, cell) in enumerate(cells.iterrows()):
            if cell["n"] == 0:
                note, y = ("diverged" if cell["diverged"] else "no runs"), 0.0
            else:
                note = f"n={int(cell['n'])}"
                y = cell["mean"] + (cell["std"] if cell["n"] > 1 else 0)
            ax.text(i, y + 0.015 * top, note, ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, top * 1.1)
        labels = [mpl_text("\n".join(key_text(c[k]) for k in keys)) for _, c in cells.iterrows()]
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_xlabel(mpl_text(" / ".join(keys)))
        ax.set_ylabel(mpl_text(view.metric))
        ax.set_title(mpl_text(name or "runs"))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(mpl_text(f"{view.metric}: mean ± std over seeds, n = runs"))
    fig.tight_layout()
    return png_tag(fig, f"{view.metric} per configuration")


def grad_norms(runs: pd.DataFrame, view: View) -> str:
    """The per-step pre-clip gradient norm of each run, one panel per cell, log scale."""
    traces = []
    for _, run in runs.iterrows():
        steps = read_trace(Path(run["run_dir"]) / STEPS_FILE)
        if (
            steps is not None
            and PRE_CLIP_GRAD_NORM in steps
            and steps[PRE_CLIP_GRAD_NORM].notna().any()
        ):
            traces.append((run, steps[[STEP, PRE_CLIP_GRAD_NORM]].dropna()))
    if not traces:
        return f'<p class="note">No run folder holds a {STEPS_FILE} with gradient norms.</p>'

    cells = list(dict.fromkeys(str(run.get("model.cell")) for run, _ in traces))
    fig, axes = panels(cells, width=4.8, height=3.5)
    by_cell = dict(zip(cells, axes, strict=True))
    styles: dict = {}
    labelled: set = set()
    for run, steps in traces:
        cell = str(run.get("model.cell"))
        label = run_label(run, view)
        by_cell[cell].plot(
            steps[STEP],
            steps[PRE_CLIP_GRAD_NORM],
            color=colour(cell),
            linestyle=style_of(run, view, styles),
            alpha=0.8,
            label=None if (cell, label) in labelled else label,
        )
        labelled.add((cell, label))
    for cell, ax in by_cell.items():
        ax.set_yscale("log")
        ax.set_title(mpl_text(f"{cell}: global gradient norm before clipping"))
        ax.set_xlabel("step")
        ax.set_ylabel("‖g‖")
        ax.grid(alpha=0.3, which="both")
    finish(fig, list(by_cell.values()))
    return png_tag(fig, "gradient norm traces")


def gradient_flow(runs: pd.DataFrame, view: View) -> str:
    """‖∂L/∂h_t‖ against t on each run's probe batch (top layer, forward direction), one line
    per run coloured by cell, log scale: at the first probe and at the last. Vanishing
    gradients show as a line falling towards t = 1."""
    flows = []
    for _, run in runs.iterrows():
        flow = read_trace(Path(run["run_dir"]) / GRADFLOW_FILE)
        if flow is not None and FLOW_DRAWN <= set(flow.columns) and len(flow):
            top = flow[(flow["layer"] == flow["layer"].max()) & (flow["direction"] == "forward")]
            flows.append((run, top))
    if not flows:
        return (
            '<p class="note">No run was made with <code>+callbacks=gradflow</code>: no '
            "gradient-flow figure.</p>"
        )
    fig, axes = panels(["first", "last"], width=5.5, height=3.8)
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
                linestyle=style_of(run, view, styles),
                alpha=0.85,
                label=run_label(run, view),
            )
        shown = ", ".join(map(str, sorted(steps)))
        hidden_grad_axes(ax, f"at the {which} probe (step {shown})", xlabel="t (time step)")
    finish(fig, axes)
    return png_tag(fig, "gradient flow through time")


def report_html(
    df: pd.DataFrame,
    view: View,
    references: Sequence[str] = (),
    sources: Sequence[str] = (),
    command: str | None = None,
) -> str:
    """The whole page as one string."""
    result = build(df, view, references)
    runs = df[df["status"].isin(SHOWN) & df["run_dir"].notna()]
    runs_table = render(build(df, view, long=True), "html")
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
    esc = html.escape
    parts = [
        "<!doctype html>",
        html_comment(f"command: {command}") if command else "",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>rnnbench report: {esc(view.metric)}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>rnnbench report</h1>",
        f'<p class="meta">{len(df)} runs ({esc(counts)}) from '
        f"{esc(', '.join(map(str, sources)))}; made {made}"
        + (f"<br><code>{esc(command)}</code>" if command else "")
        + "</p>",
        "<h2>Comparison</h2>",
        render(result, "html"),
        f"<h2>{esc(view.metric)} per configuration</h2>",
        metric_bars(result.agg, view),
        "<h2>Learning curves</h2>",
        learning_curves(runs, view),
        "<h2>Gradient norm before clipping</h2>",
        grad_norms(runs, view),
        "<h2>Gradient flow through time</h2>",
        gradient_flow(runs, view),
        "<h2>Runs</h2>",
        f"<details><summary>{len(df)} runs</summary>{runs_table}</details>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rnnbench-report",
        description=(
            "Write one self-contained HTML page about the runs under PATH: the comparison "
            "table of rnnbench-table, the metric per configuration with error bars over seeds, "
            "learning curves and pre-clip gradient-norm traces. "
            "Figures are embedded, so the page opens offline."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help=f"{RECORD_FILE} files or folders")
    p.add_argument("-o", "--output", default="report.html", help="default: report.html")
    p.add_argument("--rows", help="comma-separated table row keys (as rnnbench-table)")
    p.add_argument("--cols", help="comma-separated table column keys (as rnnbench-table)")
    p.add_argument("--metric", help="metric (default: the runs' headline)")
    p.add_argument("--reference", metavar="NAME[,NAME]", help="published numbers to compare")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run `rnnbench-report` with `argv`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        problem = check_writable(args.output)
        if problem:  # before reading the runs and drawing every figure
            raise UserError(problem)
        df = load_frame(args.paths)
        check_shown(df)
        view = resolve_view(df, split_keys(args.rows), split_keys(args.cols), args.metric)
        command = shlex.join(["rnnbench-report", *argv])
        page = report_html(df, view, split_keys(args.reference) or [], args.paths, command)
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
