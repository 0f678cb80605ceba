"""`rnnbench-gradflow`: see backpropagation through time, outside a training run.

rnnbench-gradflow                              # rnn, gru, lstm on adding, T=200: init vs trained
rnnbench-gradflow --cells rnn lstm --seq-len 100 -o flow.png --csv flow.csv
rnnbench-gradflow --explode RUN_DIR RUN_DIR -o explosion.png   # steps.csv of finished runs

The default experiment trains each cell on the adding problem with the harness's own task and
Trainer and measures ‖∂L/∂h_t‖ on one fixed batch with the training-time probe (the GradFlow
callback of rnnbench.run.gradflow, which says how the measurement works), at initialisation and
after training; it prints a table per cell and draws the curves. `--explode` compares the
pre-clip gradient norm and loss traces of finished runs. The figures are drawn here, with the
shared helpers of rnnbench.results.plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytorch_lightning as pl
import torch

from rnnbench.cellspec import BASE_CELLS, CELLS
from rnnbench.data.synthetic import AddingProblem
from rnnbench.errors import UserError
from rnnbench.nn.model import SequenceModel
from rnnbench.outputs import check_writable, mpl_text, one_line, write_text
from rnnbench.results.plots import colour, figure_format, hidden_grad_axes, panels, save_figure
from rnnbench.results.record import (
    BATCH_LOSS,
    CLIPPED,
    PRE_CLIP_GRAD_NORM,
    RECORD_FILE,
    STEP,
    STEPS_FILE,
    flatten,
    is_identity_key,
    read_record,
    read_trace,
)
from rnnbench.run.gradflow import GradFlow, first_last_ratios
from rnnbench.run.module import RegressionTask


class Progress(pl.Callback):
    """A line on stderr every `every` optimizer steps: step, batch loss, seconds so far."""

    def __init__(self, label: str, total: int, every: int) -> None:
        self.label, self.total, self.every = label, total, max(1, every)
        self.t0 = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == self.total:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            shown = f"{float(loss):.4f}" if loss is not None else "not finite"
            print(
                f"  {self.label}: step {step}/{self.total}, batch loss {shown}, "
                f"{time.perf_counter() - self.t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )


def measure_cell(
    cell: str,
    seq_len: int = 200,
    hidden_size: int = 128,
    num_layers: int = 1,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 0.002,
    clip: float | None = None,
    seed: int = 0,
    forget_bias: float | None = None,
    init_range: float | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train `cell` on the adding problem for `steps` Adam steps with the harness's own
    RegressionTask and Trainer, measuring ‖∂L/∂h_t‖ on the first batch before and after.
    `forget_bias` sets an LSTM's initial forget-gate bias (other cells have none);
    `init_range` draws every parameter from uniform(-x, x) as `model.init_range` does.
    Returns GradFlow's rows with `cell` and `phase` (init | trained) columns."""
    pl.seed_everything(seed, verbose=False)
    data = AddingProblem(
        seq_len=seq_len,
        train_size=steps * batch_size,
        valid_size=batch_size,
        test_size=batch_size,
        batch_size=batch_size,
        seed=seed,
    )
    data.setup()
    model = SequenceModel(
        cell=cell,
        hidden_size=hidden_size,
        num_layers=num_layers,
        forget_bias=forget_bias if cell == "lstm" else None,
        init_range=init_range,
        **data.model_io(),
    )
    task = RegressionTask(model, partial(torch.optim.Adam, lr=lr), clip=clip)
    flow = GradFlow(every_n_steps=steps, path=None)
    callbacks: list[pl.Callback] = [flow]
    if progress:
        callbacks.append(Progress(cell, steps, max(1, steps // 5)))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        callbacks=callbacks,
    )
    trainer.fit(task, datamodule=data)
    frame = flow.frame
    frame.insert(0, "phase", ["init" if s == 0 else "trained" for s in frame["step"]])
    frame.insert(0, "cell", cell)
    return frame


def plot_flow(frame: pd.DataFrame, path: str | Path, title: str) -> None:
    """One log-scale panel per cell: ‖∂L/∂h_t‖ against t, at initialisation (dashed) and
    after training (solid), one line per layer and direction."""
    cells = list(dict.fromkeys(frame["cell"]))
    fig, axes = panels(cells, width=4.6, height=3.4)
    # One y range for every panel, so that the cells compare at a glance.
    shown = frame["norm"][frame["norm"] > 0]
    y_range = (shown.min() / 10, shown.max() * 10) if len(shown) else None
    for ax, cell in zip(axes, cells, strict=True):
        of_cell = frame[frame["cell"] == cell]
        slots = list(of_cell.groupby(["phase", "step", "layer", "direction"], sort=False))
        for (phase, step, layer, direction), group in slots:
            name = f"{phase} (step {step})"
            if of_cell["layer"].nunique() > 1 or of_cell["direction"].nunique() > 1:
                name += f", layer {layer} {direction}"
            ax.plot(
                group["t"],
                group["norm"].where(group["norm"] > 0),
                color=colour(cell),
                linestyle="--" if phase == "init" else "-",
                alpha=1.0 - 0.5 * layer / max(1, of_cell["layer"].max()),
                label=name,
            )
        hidden_grad_axes(ax, cell)
        if y_range:
            ax.set_ylim(*y_range)
        ax.legend(fontsize=8)
    fig.suptitle(mpl_text(title), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def format_table(summary: pd.DataFrame) -> str:
    """The per-cell summary as fixed-width text with short numbers."""
    shown = summary.rename(
        columns={
            "norm_T": "|dL/dh_T|",
            "norm_mid": "|dL/dh_T/2|",
            "norm_1": "|dL/dh_1|",
            "ratio_1_T": "|dL/dh_1|/|dL/dh_T|",
            "loss": "probe loss",
        }
    )
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3g}")


CLIP_KEY = "trainer.gradient_clip_val"


def run_labels(records: Sequence[dict]) -> list[str]:
    """A label per run: its cell, the settings that differ between the runs (seeds and paths
    aside), and its clipping threshold."""
    flat = [flatten(r["config"]) for r in records]
    keys = sorted({k for f in flat for k in f if is_identity_key(k)})
    varying = [
        k
        for k in keys
        if k not in ("model.cell", CLIP_KEY) and len({repr(f.get(k)) for f in flat}) > 1
    ]
    labels = []
    for f in flat:
        clip = f.get(CLIP_KEY)
        parts = [str(f.get("model.cell")), *(f"{k.split('.')[-1]}={f.get(k)}" for k in varying)]
        parts.append("no clipping" if clip is None else f"clip θ={clip:g}")
        labels.append(", ".join(parts))
    return labels


def read_runs(run_dirs: Sequence[str | Path]) -> list[tuple[Path, pd.DataFrame, dict]]:
    """(folder, per-step trace, record) of each run; FileNotFoundError naming the file when a
    folder lacks its steps.csv (or its pre-clip gradient norms) or its result.json."""
    runs = []
    for run_dir in map(Path, run_dirs):
        steps = read_trace(run_dir / STEPS_FILE)
        if steps is None or PRE_CLIP_GRAD_NORM not in steps:
            raise FileNotFoundError(f"{run_dir / STEPS_FILE}: no per-step trace to read")
        if not (run_dir / RECORD_FILE).is_file():
            raise FileNotFoundError(f"{run_dir / RECORD_FILE}: no run record to read")
        runs.append((run_dir, steps, read_record(run_dir / RECORD_FILE)))
    return runs


def plot_explosion(
    traces: Sequence[tuple[str, float | None, pd.DataFrame]], path: str | Path
) -> None:
    """Two log-scale panels, the pre-clip gradient norm and the batch loss against the step, one
    line per (label, clipping threshold, steps.csv) of `traces` and its threshold θ dotted."""
    fig, (norm_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (label, clip, steps) in enumerate(traces):
        # Not the cell colours: the runs compared are often of one cell, differing in clipping.
        shade = f"C{i % 10}"  # matplotlib's own cycle: ten well-separated colours
        norm_ax.plot(
            steps[STEP], steps[PRE_CLIP_GRAD_NORM], lw=0.8, color=shade, label=mpl_text(label)
        )
        loss_ax.plot(steps[STEP], steps[BATCH_LOSS], lw=0.8, color=shade)
        if clip is not None:
            norm_ax.axhline(clip, color=shade, ls=":", lw=1, label=f"θ = {clip:g}")
    norm_ax.set(yscale="log", xlabel="step", ylabel="‖g‖ before clipping", title="gradient norm")
    loss_ax.set(yscale="log", xlabel="step", ylabel="batch loss", title="training loss")
    for ax in (norm_ax, loss_ax):
        ax.grid(alpha=0.3, which="both")
    norm_ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def explosion(run_dirs: Sequence[str | Path], path: str | Path) -> pd.DataFrame:
    """Read each run's steps.csv (pre-clip gradient norm and loss at every optimizer step) and
    result.json; draw both traces per run into `path` and return one summary row per run."""
    runs = read_runs(run_dirs)
    rows, traces = [], []
    for (run_dir, steps, record), label in zip(
        runs, run_labels([r for _, _, r in runs]), strict=True
    ):
        clip = flatten(record["config"]).get(CLIP_KEY)
        headline = record.get("headline") or "test/loss"
        traces.append((label, clip, steps))
        rows.append(
            {
                "run": label,
                "steps": len(steps),
                "status": record["status"],
                f"{PRE_CLIP_GRAD_NORM} median": steps[PRE_CLIP_GRAD_NORM].median(),
                f"{PRE_CLIP_GRAD_NORM} max": steps[PRE_CLIP_GRAD_NORM].max(),
                "clipped steps": int(steps[CLIPPED].sum()),
                "clipped share": steps[CLIPPED].mean(),
                "loss first": steps[BATCH_LOSS].iloc[0],
                # One batch is noisy: the end of training as the mean of its last 50 steps.
                "loss last 50 mean": steps[BATCH_LOSS].tail(50).mean(),
                headline: record["metrics"].get(headline, math.nan),
                "run_dir": str(run_dir),
            }
        )
    plot_explosion(traces, path)
    return pd.DataFrame(rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rnnbench-gradflow",
        description=(
            "See backpropagation through time. For each cell, the norm of the loss gradient\n"
            "with respect to every hidden state, ‖∂L/∂h_t‖ for t = 1..T, on a fixed batch of\n"
            "the adding problem (loss at the final step), at initialisation and after --steps\n"
            "Adam steps. Prints a table per cell (the ratio ‖∂L/∂h_1‖/‖∂L/∂h_T‖ among its\n"
            "columns), writes a log-scale PNG and ends with one JSON line of the ratios.\n\n"
            f"With --explode: the pre-clip gradient norm and loss at every step ({STEPS_FILE}) of\n"
            "finished rnnbench runs, as a table, a PNG and a JSON line."
        ),
        epilog=(
            "examples:\n"
            "  rnnbench-gradflow                     # rnn, gru, lstm; T=200, hidden 128\n"
            "  rnnbench-gradflow --cells lstm --forget-bias 1 -o lstm.png\n"
            "  rnnbench-gradflow --explode runs/a runs/b -o explosion.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--cells",
        nargs="+",
        default=list(BASE_CELLS),
        choices=CELLS,
        metavar="CELL",
        help=f"cells to compare, from {', '.join(CELLS)} (default: {' '.join(BASE_CELLS)})",
    )
    p.add_argument("--seq-len", type=int, default=200, help="T of the adding problem (200)")
    p.add_argument("--hidden-size", type=int, default=128, help="hidden units (128)")
    p.add_argument("--num-layers", type=int, default=1, help="stacked layers (1)")
    p.add_argument("--steps", type=int, default=300, help="Adam steps between the probes (300)")
    p.add_argument("--batch-size", type=int, default=32, help="training and probe batch (32)")
    p.add_argument("--lr", type=float, default=0.002, help="Adam learning rate (0.002)")
    p.add_argument("--clip", type=float, help="global-norm clipping θ (default: none)")
    p.add_argument("--seed", type=int, default=0, help="data, initial weights, order (0)")
    p.add_argument(
        "--forget-bias",
        type=float,
        help="initial forget-gate bias of the LSTM (default: PyTorch's init, about 0); the "
        "GRU and RNN keep PyTorch's init here (model.forget_bias in a run also sets a GRU's "
        "update gate)",
    )
    p.add_argument(
        "--init-range",
        type=float,
        help="every parameter uniform(-x, x), as model.init_range (default: PyTorch's init)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1): the recurrence is a chain of small matrix products, which a "
        "second thread barely speeds up and, on a busy machine, slows down many times over",
    )
    p.add_argument(
        "-o", "--output", help="PNG path (default: gradient_flow.png; explosion.png with --explode)"
    )
    p.add_argument("--csv", help="also write every measured norm to this CSV")
    p.add_argument(
        "--explode",
        nargs="+",
        metavar="RUN_DIR",
        help=f"run directories to compare (their {STEPS_FILE} and {RECORD_FILE})",
    )
    return p


def check_sizes(args: argparse.Namespace) -> str | None:
    for name in ("seq_len", "hidden_size", "num_layers", "steps", "batch_size", "threads"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')}={getattr(args, name)}: use an integer >= 1"
    if args.clip is not None and not args.clip > 0:
        return f"--clip={args.clip}: use a positive threshold θ, or leave it out"
    if args.seq_len < 2:
        return f"--seq-len={args.seq_len}: the adding problem needs at least 2 steps"
    return None


def check_outputs(args: argparse.Namespace, output: str) -> str | None:
    """Why the PNG (-o) or the CSV (--csv) cannot be written; None when both can."""
    try:
        figure_format(output)
    except ValueError as e:
        return str(e)
    problem = check_writable(output, "-o")
    if not problem and args.csv is not None:
        problem = check_writable(args.csv, "--csv")
    return problem


def run_explode(args: argparse.Namespace) -> int:
    output = args.output or "explosion.png"
    try:
        problem = check_outputs(args, output)
        if problem:
            raise UserError(problem)
        summary = explosion(args.explode, output)
    except (FileNotFoundError, KeyError, json.JSONDecodeError, UserError) as e:
        print(f"rnnbench-gradflow: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    print(summary.drop(columns="run_dir").to_string(index=False, float_format="{:.4g}".format))
    print(f"wrote {output}", file=sys.stderr)
    print(json.dumps({"runs": summary.to_dict(orient="records")}, allow_nan=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `rnnbench-gradflow` with `argv`; returns the exit status."""
    args = parser().parse_args(argv)
    if args.explode:
        return run_explode(args)
    output = args.output or "gradient_flow.png"
    problem = check_sizes(args) or check_outputs(args, output)  # before minutes of training
    if problem:
        print(f"rnnbench-gradflow: error: {one_line(problem)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    # Lightning's start-up banners and its few-workers advice would bury the tables.
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    setting = (
        f"adding problem, T={args.seq_len}, hidden {args.hidden_size}, "
        f"{args.num_layers} layer(s), {args.steps} Adam steps (lr {args.lr:g}, batch "
        f"{args.batch_size}, clip {args.clip}), seed {args.seed}"
    )
    if args.init_range is not None:
        setting += f", init uniform ±{args.init_range:g}"
    if args.forget_bias is not None and "lstm" in args.cells:
        setting += f", LSTM forget bias {args.forget_bias:g}"
    print(f"rnnbench-gradflow: {setting}", file=sys.stderr)
    frames = []
    for cell in args.cells:
        t0 = time.perf_counter()
        frame = measure_cell(
            cell,
            args.seq_len,
            args.hidden_size,
            args.num_layers,
            args.steps,
            args.batch_size,
            args.lr,
            args.clip,
            args.seed,
            args.forget_bias,
            args.init_range,
        )
        frames.append(frame)
        summary = first_last_ratios(frame).drop(columns=["cell", "direction"])
        print(f"\n{cell} ({time.perf_counter() - t0:.0f} s)")
        print(format_table(summary))
    everything = pd.concat(frames, ignore_index=True)
    try:
        plot_flow(everything, output, f"‖∂L/∂h_t‖ on a fixed batch: {setting}")
        print(f"\nwrote {one_line(output)}", file=sys.stderr)
        if args.csv is not None:
            write_text(args.csv, everything.to_csv(index=False))
            print(f"wrote {one_line(args.csv)}", file=sys.stderr)
    except UserError as e:
        print(f"rnnbench-gradflow: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    ratios = first_last_ratios(everything)
    result = {
        "ratio_h1_hT": {
            cell: {
                phase: [float(r) for r in of_phase["ratio_1_T"]]
                for phase, of_phase in of_cell.groupby("phase", sort=False)
            }
            for cell, of_cell in ratios.groupby("cell", sort=False)
        },
        "seq_len": args.seq_len,
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "clip": args.clip,
        "seed": args.seed,
        "forget_bias": args.forget_bias,
        "init_range": args.init_range,
    }
    print(json.dumps(result))
    return 0


def cli() -> None:
    """Console entry point (`rnnbench-gradflow`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
