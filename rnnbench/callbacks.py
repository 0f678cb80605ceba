"""The callbacks every run gets (conf/callbacks/default.yaml): training throughput, the
per-epoch metrics CSV and the per-step trace beside result.json, and the progress bar. A file
path given relative (the default) is taken inside the run folder (train.place_in)."""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar

from rnnbench.record import METRICS_FILE, STEPS_COLUMNS, STEPS_FILE

# Logged every step, not per epoch: the last step's value says nothing about the epoch.
STEP_METRICS = {"train/batch_loss", "train/grad_norm"}


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

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.startswith(("train/", "val/")) and key not in STEP_METRICS:
                row[key] = float(value)
        row["lr"], self.lr = self.lr, math.nan
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
        # clip: the run's gradient-clipping threshold, set by train.run from trainer config.
        self.path, self.clip, self.flush_every = Path(path), clip, flush_every
        # (step, [loss, norm]) pairs, appended in one operation: a signal (SIGTERM -> interrupt)
        # landing mid-callback can never leave a step without its values.
        self.pending: list[tuple[int, torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module) -> None:
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
        self.pending.append(
            (trainer.global_step, torch.stack([loss.detach().float(), norm.float()]))
        )
        if len(self.pending) >= self.flush_every:
            self.flush(trainer)

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
        metrics = super().get_metrics(trainer, pl_module)
        loss = getattr(pl_module, "last_loss", None)
        if loss is not None:
            metrics["loss"] = f"{float(loss):.4g}"
        return metrics
