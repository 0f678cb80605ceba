"""Gradient flow through time: ‖∂L/∂h_t‖ at every step t of every layer, on a fixed batch.

rnnbench +callbacks=gradflow data=adding model=rnn    # the GradFlow callback in a training run

This is the training-time part: the probe (hidden_grad_norms) and the GradFlow callback. It
imports no plotting and no report code, since every run made with `+callbacks=gradflow` imports
it; the `rnnbench-gradflow` experiment and its figures are in rnnbench.gradflow_experiment.

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

import copy
import csv
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from rnnbench.nn.cells import RecurrentStack, State, reverse_time
from rnnbench.nn.model import SequenceModel
from rnnbench.results.record import GRADFLOW_COLUMNS
from rnnbench.run.module import Batch, RecurrentTask

DIRECTIONS = ("forward", "backward")
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
            return pd.DataFrame(columns=list(GRADFLOW_COLUMNS))
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
            writer = csv.DictWriter(f, fieldnames=GRADFLOW_COLUMNS)
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
        from pytorch_lightning.loggers import WandbLogger  # lazy: W&B loads only when logged to

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb  # lazy: W&B takes a second to load; a run without it never does

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
