"""The callbacks every run gets (conf/callbacks/default.yaml): training throughput, the
per-epoch metrics CSV and the per-step trace beside result.json, and the progress display (a
bar on a terminal, plain lines elsewhere). A file path given relative (the default) is taken
inside the run folder (train.place_in).

Importing this module also silences the Lightning notes that our own defaults set off and that
say nothing to a user (`quiet_lightning`)."""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar

from rnnbench.results.record import METRICS_FILE, STEPS_COLUMNS, STEPS_FILE


class _DropMessages(logging.Filter):
    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


# Lightning's notes on what the harness does on purpose, not on anything a user should change.
EXPECTED_NOTES = (
    r".*smaller than the logging interval",  # the default log_every_n_steps over small data
    r"Checkpoint directory .* exists and is not empty",  # a resume put its checkpoint there
    r"The dirpath has changed from",  # a resume from another folder's checkpoint
    r"`training_step` returned `None`",  # a non-finite loss's step is skipped: it diverged
    # No validation before the run ended (trainer.max_steps inside the first epoch, or
    # limit_val_batches=0): the run tests its last.ckpt instead, and says so in its record.
    r"`ModelCheckpoint\(monitor='val/.*could not find the monitored key",
    r"ReduceLROnPlateau conditioned on metric val/.* which is not available",
    # trainer=ddp: the task modules log what a torchmetrics MeanMetric's compute() returns,
    # already reduced over all processes; sync_dist would reduce it a second time.
    r"It is recommended to use `self\.log\('(train|val|test)/",
    # Inside Lightning: its CombinedLoader builds torch's pytree LeafSpec, which newer torch
    # deprecates; fixable by neither us nor the user.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # A machine with SLURM installed, a run outside a job: runs reach SLURM through
    # hydra/launcher=slurm (submitit's sbatch), never through srun.
    r"The `srun` command is available on your system but is not used",
)


def quiet_lightning(banners: bool = False) -> None:
    """Silence Lightning's notes on what the harness does on purpose (EXPECTED_NOTES), and its
    `Trainer(limit_train_batches=1.0)` was configured so 100% of the batches ... note:
    conf/trainer/default.yaml spells out Lightning's own default (1.0, all batches) so that
    records, run_key and the tables carry the budget (its note for an explicit 1, one batch,
    stays). Every other warning stays. With `banners` (a run's start: its console is its
    progress and our summary), Lightning's INFO lines go too: accelerator banners, a logger
    advert, 'Restoring states ...'."""
    if banners:
        for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
    notes = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropMessages) for f in notes.filters):
        notes.addFilter(
            _DropMessages(*(f"`Trainer(limit_{s}_batches=1.0)`" for s in ("train", "val", "test")))
        )
    for note in EXPECTED_NOTES:
        warnings.filterwarnings("ignore", message=note)


quiet_lightning()

# Logged every step, not per epoch: the last step's value says nothing about the epoch.
STEP_METRICS = {"train/batch_loss", "train/grad_norm"}


# Not Lightning's ThroughputMonitor: it logs rates to the loggers per step and keeps nothing
# across a resume (no state_dict), while the record needs the totals (seconds inside training
# batches, items) of every epoch, resumed or not.
class Throughput(pl.Callback):
    """Wall time spent inside training batches and the number of target items they processed."""

    def __init__(self) -> None:
        self.train_s = 0.0
        self.items = 0
        self._t0 = 0.0
        self.restored = False  # set when a checkpoint handed over the earlier epochs' counts

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_s += time.perf_counter() - self._t0
        self.items += pl_module.items_in(batch)

    @property
    def items_per_s(self) -> float:
        return self.items / self.train_s if self.train_s else 0.0

    # Kept in checkpoints: a run resumed from one reports the training time of all its epochs.
    def state_dict(self) -> dict:
        return {"train_s": self.train_s, "items": self.items}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_s, self.items = state_dict["train_s"], state_dict["items"]
        self.restored = True


class EpochMetricsCSV(pl.callbacks.Checkpoint):
    """Appends one row per epoch (epoch, step, every epoch-level metric) to `path`, whatever the
    experiment logger, so learning curves exist offline.

    A Checkpoint subclass because Lightning runs those after the LightningModule's own
    on_train_epoch_end, where the epoch's training metrics are logged.
    """

    def __init__(self, path: str | Path = METRICS_FILE) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []
        self.lr = math.nan
        self.validated = False  # whether validation ran in the epoch now ending

    # Saved in checkpoints, so a resumed run's metrics.csv keeps the epochs before the stop.
    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict.get("rows", []))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The epoch's own learning rate, read at its first batch (the first after a resume):
        # by its end the schedule may have stepped already.
        if math.isnan(self.lr) and trainer.optimizers:
            self.lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validated = self.validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # callback_metrics keep the last validation's val/ values: an epoch that ran none (one
        # that max_steps cut short, check_val_every_n_epoch > 1) must not show them as its own.
        kept = ("train/", "val/") if self.validated else ("train/",)
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.startswith(kept) and key not in STEP_METRICS:
                row[key] = float(value)
        row["lr"], self.lr = self.lr, math.nan
        self.validated = False
        self.append(row)

    def append(self, row: dict[str, Any]) -> None:
        """Add one epoch's row and rewrite the file (a packed run's members add their own)."""
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)


class StepTrace(pl.Callback):
    """Writes `steps.csv` beside result.json: every optimizer step's training loss and
    gradient norm before clipping (what shows a vanilla RNN exploding), and whether clipping
    acted. Values stay on the device and reach the host once per `flush_every` steps."""

    COLUMNS = STEPS_COLUMNS

    def __init__(
        self, path: str | Path = STEPS_FILE, clip: float | None = None, flush_every: int = 200
    ) -> None:
        # clip: the gradient-clipping threshold θ; a lone run's comes from its task module at
        # the start of training (its clip_value), a pack gives each member's trace its own.
        self.path, self.clip, self.flush_every = Path(path), clip, flush_every
        # (step, [loss, norm]) pairs, appended in one operation: a signal (SIGTERM -> interrupt)
        # landing mid-callback can never leave a step without its values.
        self.pending: list[tuple[int, torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        if self.clip is None:
            self.clip = getattr(pl_module, "clip_value", None)
        # A resumed run re-runs the steps after its checkpoint: drop their old rows.
        kept = []
        if self.path.exists() and trainer.global_step > 0:
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= trainer.global_step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.COLUMNS)
            writer.writeheader()
            writer.writerows(kept)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        norm = getattr(pl_module, "grad_norm", None)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or norm is None:  # a skipped step (the run diverged)
            return
        self.add(trainer.global_step, loss, norm)
        if len(self.pending) >= self.flush_every:
            self.flush(trainer)

    def add(self, step: int, loss: torch.Tensor, norm: torch.Tensor) -> None:
        """Hold one step's loss and pre-clip norm (on the device) until the next flush."""
        self.pending.append((step, torch.stack([loss.detach().float(), norm.float()])))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.flush(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        # The run is already ending with `exception`: a trace that cannot be written must not
        # replace it (an interrupted run would be recorded as failed).
        try:
            self.flush(trainer)
        except Exception as e:
            print(f"rnnbench: warning: steps.csv not completed ({e!r})", file=sys.stderr)

    def flush(self, trainer: pl.Trainer | None = None) -> None:
        """Write the steps held so far to steps.csv and hand every `log_every_n_steps`-th to the
        experiment loggers as train/batch_loss and train/grad_norm (W&B, CSV)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        steps = [step for step, _ in pending]
        values = torch.stack([v for _, v in pending]).tolist()
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            for step, (loss, norm) in zip(steps, values, strict=True):
                clipped = int(self.clip is not None and norm > self.clip)
                writer.writerow([step, f"{loss:.6g}", f"{norm:.6g}", clipped])
        if trainer is not None and trainer.loggers:
            every = max(1, trainer.log_every_n_steps)
            for step, (loss, norm) in zip(steps, values, strict=True):
                if step % every == 0:
                    for logger in trainer.loggers:
                        logger.log_metrics(
                            {"train/batch_loss": loss, "train/grad_norm": norm}, step=step
                        )
            for logger in trainer.loggers:
                logger.save()


class SteadyProgressBar(TQDMProgressBar):
    """Lightning's progress bar, redrawn at most every `interval` seconds during training
    (and at the end of each epoch), showing the last batch's loss: redrawing it every step cost
    ~3.5 ms, 6 % of a PTB-small step."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__()
        self.interval, self._drawn = interval, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._drawn >= self.interval or batch_idx + 1 == self.total_train_batches:
            self._drawn = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict:
        return with_loss(super().get_metrics(trainer, pl_module), pl_module)


def with_loss(metrics: dict[str, Any], pl_module: pl.LightningModule) -> dict[str, Any]:
    """`metrics` with the last training batch's loss (the task module's `last_loss`) added."""
    loss = getattr(pl_module, "last_loss", None)
    if loss is not None:
        metrics["loss"] = f"{float(loss):.4g}"
    return metrics


class ProgressLines(ProgressBar):
    """Progress as plain lines, for a stdout that is no terminal (a pipe, a file, a batch job's
    log), where a redrawn bar would pile up as carriage returns: one line every `every` seconds
    of training and one at each epoch's end, with validation's numbers, e.g.

        epoch 3/10 batch 40/125 step 290 loss 1.23 (45.1 it/s)
        epoch 3/10 done: step 375 val/loss 1.19 loss 1.2 (44.7 it/s)

    Validation and test add no lines of their own: the epoch line and the summary carry them."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every, self.enabled = every, True
        self._start = self._said = 0.0
        self._batches = 0  # trained in this epoch by this process (a resume starts mid-epoch)

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        # A resume goes on inside the epoch that last.ckpt was saved in, and Lightning calls no
        # on_train_epoch_start for it: the clock starts here too.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._said = time.monotonic()
        self._batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1
        now = time.monotonic()
        if self.enabled and now - self._said >= self.every:
            self._said = now
            total = self.total_train_batches
            of = f"/{total}" if math.isfinite(total) else ""
            self.say(trainer, pl_module, f"batch {batch_idx + 1}{of}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.enabled:
            self.say(trainer, pl_module, "done:")

    def say(self, trainer: pl.Trainer, pl_module: pl.LightningModule, where: str) -> None:
        epochs = f"/{trainer.max_epochs}" if (trainer.max_epochs or 0) > 0 else ""
        metrics = with_loss(dict(trainer.progress_bar_metrics), pl_module)
        metrics.pop("v_num", None)  # the logger's version: the bar shows it, a log line need not
        shown = "".join(
            f" {k} {v:.4g}" if isinstance(v, float) else f" {k} {v}" for k, v in metrics.items()
        )
        rate = self._batches / max(time.monotonic() - self._start, 1e-9)
        print(
            f"epoch {trainer.current_epoch + 1}{epochs} {where} step {trainer.global_step}"
            f"{shown} ({rate:.3g} it/s)",
            flush=True,
        )


def progress_display(interval: float = 0.5, line_every: float = 30.0) -> ProgressBar:
    """The progress display a run gets (the `progress_bar` entry of conf/callbacks/default.yaml):
    on a terminal the bar, redrawn at most every `interval` seconds (SteadyProgressBar);
    elsewhere a plain line every `line_every` seconds and at each epoch's end (ProgressLines)."""
    if sys.stdout.isatty():
        return SteadyProgressBar(interval)
    return ProgressLines(line_every)
