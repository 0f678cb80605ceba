"""Gradient flow through time: ‖∂L/∂h_t‖ at every step t of every layer, on a fixed batch.

rnnbench-gradflow                              # rnn, gru, lstm on adding, T=200: init vs trained
rnnbench-gradflow --cells rnn lstm --seq-len 100 -o flow.png --csv flow.csv
rnnbench-gradflow --explode RUN_DIR RUN_DIR -o explosion.png   # steps.csv of finished runs

How the hidden states become visible: torch.nn.LSTM (impl=fused) hands back the last layer's
outputs only, and the scratch stack keeps its h_t inside its time loop. The probe therefore runs
a copy of the model whose RecurrentStack is cut into one single-layer, single-direction
RecurrentStack per (layer, direction) slot, of the model's own impl and holding that slot's
weights (fused and scratch name their parameters alike), called one time step at a time. Each
h_t is then its own node of the graph; the model's own embedding, readout and head turn the
stack's output into the prediction, and one torch.autograd.grad(L, [every h_t]) gives the total
derivative through every path (the later steps, the layers above, the head). Nothing is written
to the parameters' .grad and nothing is drawn from the run's random stream, so a probe during
training changes nothing about the training.

The probe runs in eval mode (no dropout) from a zero initial state, in float64 by default:
vanishing gradients pass float32's smallest normal number (1.2e-38) within a couple of hundred
steps, lose their precision there and then flush to exactly 0. ‖·‖ is the Frobenius norm of the
(batch, hidden) gradient of h_t; t counts from 1. In padded batches position t counts the rows
that reach it.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from rnnbench.cells import CELLS, RecurrentStack, State, reverse_time
from rnnbench.data.synthetic import AddingProblem
from rnnbench.errors import UserError
from rnnbench.model import SequenceModel
from rnnbench.module import (
    Batch,
    RecurrentTask,
    RegressionTask,
)
from rnnbench.outputs import check_writable, mpl_text, one_line, write_bytes, write_text
from rnnbench.record import RECORD_FILE, STEPS_FILE, flatten, is_identity_key, read_record
from rnnbench.report import GRAD_NORM, colour, panels, read_csv

DIRECTIONS = ("forward", "backward")
COLUMNS = ("step", "layer", "direction", "t", "norm", "loss")
WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class UnrolledStack(nn.Module):
    """A copy of a RecurrentStack that runs one time step at a time, so every hidden state h_t
    of every layer and direction is a tensor of its own in the autograd graph.

    Called like the stack (x, state, lengths) -> (outputs, final state), with the same results;
    after a call, `hidden[(layer, direction)]` lists that slot's h_t in the order it read them
    (the backward direction reads the sequence reversed).
    """

    def __init__(self, stack: RecurrentStack) -> None:
        super().__init__()
        self.cell, self.hidden_size = stack.cell, stack.hidden_size
        self.num_layers, self.directions = stack.num_layers, stack.directions
        self.output_size = stack.output_size
        # torch.nn.GRU only knows the reset gate applied after the matmul.
        gru_reset = getattr(stack.rnn, "gru_reset", "after")
        weights = stack.rnn.state_dict()
        self.slots = nn.ModuleList()
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[: self.directions]:
                own = {f"rnn.{w}_l0": weights[f"{w}_l{layer}{suffix}"] for w in WEIGHTS}
                w_ih = own["rnn.weight_ih_l0"]
                # A new layer draws initial weights: from a forked generator, so that a probe
                # during training leaves the run's random stream (dropout masks) as it was.
                with torch.random.fork_rng(devices=[]):
                    single = RecurrentStack(
                        stack.cell, w_ih.size(1), self.hidden_size, impl=stack.impl,
                        gru_reset=gru_reset,
                    )  # fmt: skip
                single.to(device=w_ih.device, dtype=w_ih.dtype)
                single.load_state_dict(own)
                self.slots.append(single)
        self.hidden: dict[tuple[int, str], list[Tensor]] = {}

    def forward(
        self, x: Tensor, state: State | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, State]:
        batch, steps = x.size(0), x.size(1)
        # As the stacks do with padded rows: past a row's length the state stays as it was and
        # the output is zero; the backward direction starts at each row's last real step.
        mask = None
        if lengths is not None:
            mask = torch.arange(steps, device=x.device)[None, :] < lengths.to(x.device)[:, None]
        lstm = self.cell == "lstm"
        self.hidden = {}
        finals_h, finals_c = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for d in range(self.directions):
                slot = layer * self.directions + d
                if state is None:
                    h = c = x.new_zeros(batch, self.hidden_size)
                else:
                    h, c = (state[0][slot], state[1][slot]) if lstm else (state[slot], None)
                seq = reverse_time(layer_input, lengths) if d else layer_input
                hs = []
                for t in range(steps):
                    out, new = self.slots[slot](
                        seq[:, t : t + 1], (h[None], c[None]) if lstm else h[None]
                    )
                    # out[:, 0] is h_t itself; the returned h_n is a second handle on the same
                    # value, left unused so that every path out of h_t goes through one tensor.
                    h_t, c_t = out[:, 0], new[1][0] if lstm else None
                    if mask is not None:
                        keep = mask[:, t, None]
                        h_t = torch.where(keep, h_t, h)
                        c_t = torch.where(keep, c_t, c) if lstm else None
                    h, c = h_t, c_t
                    hs.append(h)
                self.hidden[(layer, DIRECTIONS[d])] = hs
                finals_h.append(h)
                finals_c.append(c)
                out = torch.stack(hs, dim=1)
                if mask is not None:
                    out = out * mask[..., None]
                outputs.append(reverse_time(out, lengths) if d else out)
            layer_input = torch.cat(outputs, dim=2)
        h_n = torch.stack(finals_h)
        return layer_input, ((h_n, torch.stack(finals_c)) if lstm else h_n)

    def gradients(self, loss: Tensor, lengths: Tensor | None = None) -> dict[tuple, Tensor]:
        """∂loss/∂h_t of the last call, per (layer, direction) as (batch, T, hidden) in the
        input's time order, zero where a padded row has no step t."""
        keys = list(self.hidden)
        nodes = [h for key in keys for h in self.hidden[key]]
        grads = torch.autograd.grad(loss, nodes, allow_unused=True)
        grads = [torch.zeros_like(h) if g is None else g for h, g in zip(nodes, grads, strict=True)]
        steps = len(self.hidden[keys[0]])
        out = {}
        for i, key in enumerate(keys):
            g = torch.stack(grads[i * steps : (i + 1) * steps], dim=1)
            if key[1] == "backward":
                g = reverse_time(g, lengths)
            if lengths is not None:
                real = torch.arange(steps, device=g.device)[None, :] < lengths.to(g.device)[:, None]
                g = g * real[..., None]
            out[key] = g
        return out


def hidden_grad_norms(
    model: SequenceModel,
    x: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    lengths: Tensor | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> pd.DataFrame:
    """‖∂L/∂h_t‖ for every step t (from 1) of every layer and direction of `model` on input
    `x`, where L = loss_fn(model output). One row per (layer, direction, t), with columns
    layer, direction, t, norm and loss (L's value). `model` itself is left untouched.

    The probe computes in `dtype` (None: the model's own); floating `x` is cast to it, and
    `loss_fn` receives outputs of that dtype.
    """
    probe = copy.deepcopy(model)
    if dtype is not None:
        probe.to(dtype)
        x = x.to(dtype) if x.is_floating_point() else x
    probe.stack = UnrolledStack(probe.stack)
    probe.eval()
    with torch.enable_grad():
        out, _ = probe(x, lengths=lengths)
        loss = loss_fn(out)
        grads = probe.stack.gradients(loss, lengths)
    rows = []
    for (layer, direction), g in grads.items():
        norms = torch.linalg.vector_norm(g.double(), dim=(0, 2)).tolist()
        rows += [(layer, direction, t, n) for t, n in enumerate(norms, start=1)]
    frame = pd.DataFrame(rows, columns=["layer", "direction", "t", "norm"])
    frame["loss"] = float(loss.detach())
    return frame


def probe_loss(task: RecurrentTask, batch: Batch) -> Callable[[Tensor], Tensor]:
    """The loss the probe differentiates for `task` on `batch`: its kind's `probe_loss` (the
    task's own loss where the head reads the final state; for per-step heads the sum over steps
    of each step's loss averaged over the batch, so every step's loss counts)."""
    return lambda out: task.kind.probe_loss(out, batch)


def first_last_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """Per measurement and slot: ‖∂L/∂h_T‖, ‖∂L/∂h_T/2‖, ‖∂L/∂h_1‖ and h_1/h_T, the ratio."""
    keys = [c for c in frame.columns if c not in ("t", "norm")]
    rows = []
    for key, group in frame.groupby(keys, sort=False):
        norm = group.set_index("t")["norm"]
        last, first = norm.index.max(), norm.index.min()
        rows.append(
            (
                *key,
                norm[last],
                norm[(first + last) // 2],
                norm[first],
                norm[first] / norm[last] if norm[last] > 0 else math.nan,
            )
        )
    return pd.DataFrame(rows, columns=[*keys, "norm_T", "norm_mid", "norm_1", "ratio_1_T"])


class GradFlow(pl.Callback):
    """Records ‖∂L/∂h_t‖ for every t, layer and direction on a fixed probe batch (the first
    training batch, or its first `probe_size` rows) before the first optimizer step, every
    `every_n_steps` steps and at the end of training.

    Rows (step, layer, direction, t, norm, loss) are appended to the CSV `path` (None: kept
    in memory only, see `frame`); with a W&B logger each measurement is also logged as a
    table, a line plot and the ratio ‖∂L/∂h_1‖/‖∂L/∂h_T‖ per slot. The probe batch is saved in
    checkpoints, so a resumed run keeps measuring on the same batch. The probe computes in
    `dtype` (see hidden_grad_norms); training is not affected by it.
    """

    def __init__(
        self,
        every_n_steps: int,
        path: str | Path | None,
        probe_size: int | None = None,
        dtype: torch.dtype | None = torch.float64,
    ) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int):
            raise TypeError(f"every_n_steps={every_n_steps!r}: use an integer >= 1")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: use an integer >= 1")
        self.every_n_steps, self.probe_size, self.dtype = every_n_steps, probe_size, dtype
        self.path = Path(path) if path is not None else None
        self.probe: Batch | None = None
        self.frames: list[pd.DataFrame] = []
        self.measured: int | None = None

    @property
    def frame(self) -> pd.DataFrame:
        """Every measurement of this fit so far, one row per (step, layer, direction, t)."""
        if not self.frames:
            return pd.DataFrame(columns=list(COLUMNS))
        return pd.concat(self.frames, ignore_index=True)

    def state_dict(self) -> dict:
        return {"probe": self.probe}

    def load_state_dict(self, state_dict: dict) -> None:
        self.probe = state_dict.get("probe")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.path is None or not trainer.is_global_zero:
            return
        # A resumed run measures again from its checkpoint's step on: drop the later rows.
        kept = []
        if self.path.exists() and trainer.global_step > 0:
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) < trainer.global_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(kept)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Batch, batch_idx: int
    ) -> None:
        if self.probe is None:
            rows = slice(0, self.probe_size)
            self.probe = {k: v[rows].detach().clone().cpu() for k, v in batch.items()}
        if trainer.global_step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.measure(trainer, pl_module)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Measure now, unless this step is measured already (several batches share a step
        under gradient accumulation) or this process is not rank zero."""
        step = trainer.global_step
        if self.probe is None or self.measured == step or not trainer.is_global_zero:
            return
        self.measured = step
        device, dtype = pl_module.device, self.dtype
        batch = {
            k: v.to(device, dtype) if dtype is not None and v.is_floating_point() else v.to(device)
            for k, v in self.probe.items()
        }
        frame = hidden_grad_norms(
            pl_module.model,
            batch["x"],
            probe_loss(pl_module, batch),
            batch.get("lengths"),
            self.dtype,
        )
        frame.insert(0, "step", step)
        self.frames.append(frame)
        if self.path is not None:
            frame.to_csv(self.path, mode="a", header=False, index=False)
        self.log_wandb(trainer, frame)

    @staticmethod
    def log_wandb(trainer: pl.Trainer, frame: pd.DataFrame) -> None:
        from pytorch_lightning.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        step = int(frame["step"].iloc[0])
        slots = list(frame.groupby(["layer", "direction"], sort=False))
        names = [f"layer{layer}_{direction}" for (layer, direction), _ in slots]
        ratios = first_last_ratios(frame)
        logged = {
            "gradflow/norms": wandb.Table(dataframe=frame),
            "gradflow/curve": wandb.plot.line_series(
                xs=slots[0][1]["t"].tolist(),
                ys=[group["norm"].tolist() for _, group in slots],
                keys=names,
                title=f"‖∂L/∂h_t‖ at step {step}",
                xname="t",
            ),
            **{
                f"gradflow/ratio_1_T/{name}": float(r)
                for name, r in zip(names, ratios["ratio_1_T"], strict=True)
            },
        }
        for logger in loggers:
            logger.log_metrics(logged, step=step)


class Progress(pl.Callback):
    """A line on stderr every `every` optimizer steps: step, batch loss, seconds so far."""

    def __init__(self, label: str, total: int, every: int) -> None:
        self.label, self.total, self.every = label, total, max(1, every)
        self.t0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
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
    task = RegressionTask(model, partial(torch.optim.Adam, lr=lr))
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
        gradient_clip_val=clip,
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
        ax.set_yscale("log")
        if y_range:
            ax.set_ylim(*y_range)
        ax.set_title(cell)
        ax.set_xlabel("t")
        ax.set_ylabel(r"$\|\partial L / \partial h_t\|$")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(mpl_text(title), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def figure_format(path: str | Path) -> str:
    """The image format `path` names by its suffix (png when it has none), as savefig reads it;
    ValueError naming the formats when matplotlib cannot write that one."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix[1:].lower() or "png"
    known = FigureCanvasBase.get_supported_filetypes()
    if suffix not in known:
        raise ValueError(f"{path}: unknown image format {suffix!r}; use one of {', '.join(known)}")
    return suffix


def save_figure(fig, path: str | Path, dpi: int = 90) -> None:
    """Draw `fig` in memory and write it to `path` in one go (see outputs.write_bytes), then
    close it: a figure that fails to draw or write leaves no half file."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=figure_format(path), dpi=dpi)
    finally:
        plt.close(fig)
    write_bytes(path, buf.getvalue())


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


def explosion(run_dirs: Sequence[str | Path], path: str | Path) -> pd.DataFrame:
    """Read each run's steps.csv (pre-clip gradient norm and loss at every optimizer step) and
    result.json; draw both traces per run into `path` and return one summary row per run."""
    import matplotlib.pyplot as plt

    runs = []
    for run_dir in map(Path, run_dirs):
        steps = read_csv(run_dir / STEPS_FILE)
        if steps is None or GRAD_NORM not in steps:
            raise FileNotFoundError(f"{run_dir / STEPS_FILE}: no per-step trace to read")
        if not (run_dir / RECORD_FILE).is_file():
            raise FileNotFoundError(f"{run_dir / RECORD_FILE}: no run record to read")
        runs.append((run_dir, steps, read_record(run_dir / RECORD_FILE)))
    rows, traces = [], []
    for (run_dir, steps, record), label in zip(
        runs, run_labels([r for _, _, r in runs]), strict=True
    ):
        clip = record["config"]["trainer"].get("gradient_clip_val")
        headline = record.get("headline") or "test/loss"
        traces.append((label, clip, steps))
        rows.append(
            {
                "run": label,
                "steps": len(steps),
                "status": record["status"],
                "grad_norm median": steps[GRAD_NORM].median(),
                "grad_norm max": steps[GRAD_NORM].max(),
                "clipped steps": int(steps["clipped"].sum()),
                "clipped share": steps["clipped"].mean(),
                "loss first": steps["batch_loss"].iloc[0],
                # One batch is noisy: the end of training as the mean of its last 50 steps.
                "loss last 50 mean": steps["batch_loss"].tail(50).mean(),
                headline: record["metrics"].get(headline, math.nan),
                "run_dir": str(run_dir),
            }
        )
    fig, (norm_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (label, clip, steps) in enumerate(traces):
        shade = f"C{i % 10}"  # matplotlib's own cycle: ten well-separated colours
        norm_ax.plot(steps["step"], steps[GRAD_NORM], lw=0.8, color=shade, label=mpl_text(label))
        loss_ax.plot(steps["step"], steps["batch_loss"], lw=0.8, color=shade)
        if clip is not None:
            norm_ax.axhline(clip, color=shade, ls=":", lw=1, label=f"θ = {clip:g}")
    norm_ax.set(yscale="log", xlabel="step", ylabel="‖g‖ before clipping", title="gradient norm")
    loss_ax.set(yscale="log", xlabel="step", ylabel="batch loss", title="training loss")
    for ax in (norm_ax, loss_ax):
        ax.grid(alpha=0.3, which="both")
    norm_ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
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
            "With --explode: the pre-clip gradient norm and loss at every step (steps.csv) of\n"
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
        default=["rnn", "gru", "lstm"],
        choices=CELLS,
        metavar="CELL",
        help=f"cells to compare, from {', '.join(CELLS)} (default: rnn gru lstm)",
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
        help="initial forget-gate bias of the LSTM (default: PyTorch's init, about 0)",
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
        help="run directories to compare (their steps.csv and result.json)",
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
