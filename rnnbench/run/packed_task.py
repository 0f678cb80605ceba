"""The task module of a pack (`packed_task`): a lone task class's loop applied to each member of
a PackedSequenceModel, with each member's own metrics, clipping threshold, learning rate and
schedule, best epoch and divergence, as its lone run would have them (rnnbench.run.pack trains it
through the one lifecycle, rnnbench.run.runner)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.aggregation import MeanMetric

from rnnbench.errors import ConfigError
from rnnbench.nn.clipping import clip_global_norm_
from rnnbench.nn.packed import PackedSequenceModel
from rnnbench.results.record import (
    METRICS_FILE,
    STEPS_FILE,
)
from rnnbench.run.callbacks import EpochMetricsCSV, StepTrace
from rnnbench.run.module import SPLITS, RecurrentTask


class PackedTask:
    """Mixed in before a lone task class (`packed_task`): the lone class's loop, data hooks
    (the language model's carried state), `measure` and `derive`, applied to each member of a
    PackedSequenceModel. Metrics are kept per member (`member_metrics`); the Trainer sees one
    loss, the sum of the live members' losses, whose gradient with respect to member k's
    parameters is the gradient of member k's loss alone."""

    def __init__(
        self,
        model: PackedSequenceModel,
        optimizer,
        scheduler=None,
        unit: str = "",
        lrs: Sequence[float] = (),
        clips: Sequence[float | None] = (),
        member_dirs: Sequence[Path] = (),
    ) -> None:
        super().__init__(model, optimizer, scheduler, unit)
        members = model.members
        self.member_means = nn.ModuleList(
            nn.ModuleDict(
                {
                    f"{split}_{name}": MeanMetric(nan_strategy="disable")
                    for split in SPLITS
                    for name in self.means
                }
            )
            for _ in range(members)
        )
        self.lrs, self.clips = list(lrs), list(clips)
        self.alive = [True] * members
        self.diverged_at: list[int | None] = [None] * members  # the epoch of the first bad loss
        self.member_metrics: list[dict[str, float]] = [{} for _ in range(members)]
        self.validated = False  # whether validation ran in the epoch now ending
        self.epochs = [EpochMetricsCSV(Path(d) / METRICS_FILE) for d in member_dirs]
        self.traces = [
            StepTrace(Path(d) / STEPS_FILE, clip)
            for d, clip in zip(member_dirs, clips, strict=True)
        ]
        self.best: list[dict[str, Any] | None] = [None] * members  # {"row", "weights"}
        self.shadows: list[torch.optim.Optimizer] = []
        self.schedules: list[Any] = []
        self.epoch_lrs = [math.nan] * members
        self.member_losses: Tensor | None = None
        self._rates: list[float] | None = None  # this step's per-member learning rates
        self._before: list[Tensor] | None = None
        self._restored: dict[str, Any] | None = None
        self._limits: Tensor | None = None  # the members' clipping thresholds, as a tensor

    @property
    def members(self) -> int:
        return self.model.members

    # The batches ------------------------------------------------------------------------------

    def step(self, batch, split: str) -> Tensor:
        """Every member's loss of a batch, (K,); each member's means accumulated for `split`
        (for training and validation only while it is alive)."""
        out = self.run_model(batch)
        n = self.kind.items(batch)
        losses = []
        for k in range(self.members):
            values = self.measure(out[k], batch)
            if self.alive[k] or split == "test":
                for name, value in values.items():
                    self.member_means[k][f"{split}_{name}"].update(value.detach(), n)
            losses.append(values["loss"])
        return torch.stack(losses)

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        losses = self.step(batch, "train")
        for k, finite in enumerate(torch.isfinite(losses).tolist()):
            if self.alive[k] and not finite:
                # A finding for that member (it diverged), not the end of the others.
                self.alive[k], self.diverged_at[k] = False, self.current_epoch
        live = [k for k in range(self.members) if self.alive[k]]
        self.member_losses = losses.detach()
        if not live:
            self.diverged, self.trainer.should_stop = True, True
            return None
        self.last_loss = losses.detach()[live].mean()  # what the progress display shows
        return losses[live].sum()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.member_losses is None or self.grad_norm is None:
            return
        for k, trace in enumerate(self.traces):
            if self.alive[k]:
                trace.add(self.global_step, self.member_losses[k], self.grad_norm[k])
            if len(trace.pending) >= trace.flush_every:
                trace.flush()
        self.member_losses = None

    # Clipping and the update ------------------------------------------------------------------

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Per member: ‖g_k‖ over its own gradients, g_k <- min(1, θ_k/‖g_k‖) g_k. Runs after
        the backward and before the optimizer's update, so it also sets up the update's
        per-member learning rates (a member frozen in this very step included)."""
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        dead = [k for k in range(self.members) if not self.alive[k]]
        if not params:
            self.grad_norm = None
            return
        if dead:  # their gradient may be NaN: nothing of it may reach their weights
            for p in params:
                p.grad[dead] = 0
        if self._limits is None and any(c is not None for c in self.clips):
            # The thresholds never change: made once.
            thresholds = [math.inf if c is None else float(c) for c in self.clips]
            self._limits = params[0].new_tensor(thresholds)
        self.grad_norm = clip_global_norm_(params, self._limits, self.members).detach()
        self.prepare_update(optimizer)

    def prepare_update(self, optimizer) -> None:
        """Each member's learning rate for this update. One rate for all: the optimizer takes
        it. Rates that differ: the optimizer steps with rate 1 and each member's change is
        scaled by its own rate afterwards (`optimizer_step`) — exact, because every torch
        optimizer's change of the weights is proportional to its learning rate (its moments do
        not depend on it). A frozen member's rate is 0: its weights stay as they are."""
        rates = [
            s.param_groups[0]["lr"] if self.alive[k] else 0.0 for k, s in enumerate(self.shadows)
        ]
        self._rates, self._before = rates, None
        common = rates[0] if len(set(rates)) == 1 else 1.0
        for group in optimizer.param_groups:
            group["lr"] = common
        if len(set(rates)) > 1:
            self._before = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        optimizer.step(closure=optimizer_closure)
        if self._before is None:
            return
        params = [p for g in optimizer.param_groups for p in g["params"]]
        with torch.no_grad():
            rates = torch.tensor(self._rates, dtype=params[0].dtype, device=params[0].device)
            for p, before in zip(params, self._before, strict=True):
                r = rates.view(-1, *[1] * (p.dim() - 1))
                p.copy_(torch.where(r == 0, before, before + r * (p - before)))
        self._before = None

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        # Each member's learning rate and schedule live on a one-parameter optimizer of its own
        # (its "shadow"): a schedule steps it, and each update reads its rate.
        self.shadows = [
            self.optimizer_factory([nn.Parameter(torch.zeros(1))], lr=lr) for lr in self.lrs
        ]
        factory = self.scheduler_factory
        self.schedules = [factory(s) if factory else None for s in self.shadows]
        for shadow in self.shadows:
            # A shadow has no gradient, so this changes nothing; it tells torch's schedules that
            # their optimizer steps (they warn "lr_scheduler.step() before optimizer.step()").
            shadow.step()
        restored = self._restored or {}
        for shadow, state in zip(self.shadows, restored.get("shadows", []), strict=False):
            shadow.load_state_dict(state)
        for schedule, state in zip(self.schedules, restored.get("schedules", []), strict=False):
            if schedule is not None and state is not None:
                schedule.load_state_dict(state)
        return optimizer

    # Epochs -----------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        for trace in self.traces:  # a resumed pack re-runs the steps after its checkpoint
            trace.on_train_start(self.trainer, self)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Each member's learning rate of the epoch, read at its first batch (the first after a
        # resume), as EpochMetricsCSV reads a lone run's: by the epoch's end it may have moved.
        if any(math.isnan(lr) for lr in self.epoch_lrs):
            self.epoch_lrs = [s.param_groups[0]["lr"] for s in self.shadows]

    def log_split(self, split: str) -> None:
        """Each member's metrics of `split` (kept in `member_metrics`); the mean val/loss of
        the live members is logged for the progress display."""
        shown = []
        for k in range(self.members):
            means = {}
            for name in self.means:
                metric = self.member_means[k][f"{split}_{name}"]
                if metric.update_count == 0:
                    break
                means[name] = metric.compute()
                metric.reset()
            else:
                derived = self.derive(means, self.unit)
                self.member_metrics[k] |= {f"{split}/{n}": float(v) for n, v in derived.items()}
                if self.alive[k]:
                    shown.append(float(derived["loss"]))
        if split == "val" and not self.trainer.sanity_checking:
            self.validated = True
        if split == "val" and shown:
            self.log("val/loss", sum(shown) / len(shown), prog_bar=True)

    def on_train_epoch_end(self) -> None:
        self.log_split("train")
        # member_metrics keep the last validation's val/ values: as a lone run's metrics.csv,
        # an epoch that ran none does not show them as its own.
        kept = ("train/", "val/") if self.validated else ("train/",)
        self.validated = False
        for k in range(self.members):
            if self.alive[k] or self.diverged_at[k] == self.current_epoch:
                row = {"epoch": self.current_epoch, "step": self.global_step}
                row |= {
                    key: value
                    for key, value in sorted(self.member_metrics[k].items())
                    if key.startswith(kept)
                }
                row["lr"] = self.epoch_lrs[k]
                self.epochs[k].append(row)
                best = self.best[k]
                val = row.get("val/loss")
                if (
                    self.alive[k]
                    and val is not None
                    and (best is None or val < best["row"]["val/loss"])
                ):
                    self.best[k] = {"row": row, "weights": self.model.member_state_dict(k)}
            self.traces[k].flush()
        self.epoch_lrs = [math.nan] * self.members
        for k, schedule in enumerate(self.schedules):
            if schedule is None or not self.alive[k]:
                continue
            if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
                val = self.member_metrics[k].get("val/loss")
                if val is not None:
                    schedule.step(val)
            else:
                schedule.step()

    # Checkpoints: the pack's whole state, so a relaunch goes on exactly -----------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rnnbench_pack"] = {
            "alive": self.alive,
            "diverged_at": self.diverged_at,
            "member_metrics": self.member_metrics,
            "rows": [e.rows for e in self.epochs],
            "best": self.best,
            "shadows": [s.state_dict() for s in self.shadows],
            "schedules": [s.state_dict() if s is not None else None for s in self.schedules],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("rnnbench_pack")
        if state is None:
            return
        self._restored = state
        self.alive, self.diverged_at = list(state["alive"]), list(state["diverged_at"])
        self.member_metrics = [dict(m) for m in state["member_metrics"]]
        for epochs, rows in zip(self.epochs, state["rows"], strict=True):
            epochs.rows = list(rows)
        self.best = list(state["best"])

    def test_with_best(self) -> list[str]:
        """Give each member its best epoch's weights for the test; which each was tested with."""
        tested = []
        for k, best in enumerate(self.best):
            if best is not None:
                self.model.load_member(k, best["weights"])
            tested.append("best" if best is not None else "last")
        return tested


def packed_task(lone: type[RecurrentTask]) -> type:
    """The task module of a pack of `lone`'s kind."""
    if lone.kind.readout == "decoder":
        raise ConfigError(
            f"pack is not available for {lone.kind.name} (sequence-to-sequence) data: "
            f"run its seeds without pack"
        )
    return type(f"Packed{lone.__name__}", (PackedTask, lone), {})
