"""One lone run: reuse a completed one or train it (`run`), as the strategy `LoneRun` of the one
lifecycle (rnnbench.run.runner): its data, model, task and Trainer built from a composed config,
resumed from its last checkpoint, tested with its best, recorded in its folder. The `rnnbench`
command is rnnbench.run.launch; a pack of runs is rnnbench.run.pack."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar
from torch import nn

from rnnbench.config import check_config
from rnnbench.errors import UserError
from rnnbench.nn.build import build_model
from rnnbench.results.record import (
    CHECKPOINT_DIR,
    LAST_CKPT,
    check_run_folder,
    environment,
    forced_folder,
    holds_completed,
    new_record,
    take_place,
    write_examples,
    write_record,
)
from rnnbench.run.callbacks import EpochMetricsCSV, Throughput, quiet_lightning
from rnnbench.run.checkpoints import (
    ResumeCheckpoint,
    drop_checkpoints,
    keep_weights_only,
    resume_point,
)
from rnnbench.run.lifecycle import (
    build_loggers,
    check_device,
    discard_dashboards,
    discard_unused_folder,
    finish_dashboards,
    finish_wandb,
    is_rank_zero,
    reuse,
    trainer_plugins,
)
from rnnbench.run.module import task_class
from rnnbench.run.runner import conclude_record, measured_timing, record_best, train_and_record
from rnnbench.run.trial import trial_callback

__all__ = ["run", "LoneRun", "build_training", "Training"]


@dataclass
class Training:
    """What one run trains with, built from its config: `run` fits and tests it, and
    `rnnbench-bench` times its steps."""

    model: nn.Module
    task: pl.LightningModule
    trainer: pl.Trainer
    callbacks: RunCallbacks


def build_training(
    cfg: DictConfig,
    run_dir: Path,
    record: dict[str, Any],
    datamodule: pl.LightningDataModule,
    loggers: list,
    group: str | None = None,
    extra_callbacks: Sequence[pl.Callback] = (),
) -> Training:
    """Model, task module, loggers, callbacks and Trainer for `cfg` on a set-up datamodule
    (seeded before the datamodule was made); fills the record's task, headline metric,
    parameter count and environment. The loggers are appended to `loggers` as soon as they
    exist (rank zero only), so the caller can finish them however the build ends."""
    record["task"], record["headline"] = datamodule.task, datamodule.headline_metric
    model = build_model(cfg.model, datamodule.model_io())
    record["params"] = sum(p.numel() for p in model.parameters())
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    # A decoder's kinds (translation, summaries) also take how the test decodes (`decode`).
    options = dict(cfg.get("decode") or {}) if datamodule.kind.readout == "decoder" else {}
    clip = cfg.trainer.get("gradient_clip_val")
    task = task_class(cfg)(
        model, instantiate(cfg.optim), scheduler, datamodule.unit, clip, **options
    )
    if is_rank_zero():
        loggers += build_loggers(cfg.get("logger"), run_dir, record["config"], group)
    callbacks = RunCallbacks.for_run(cfg, run_dir)
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=[*extra_callbacks, *callbacks.all],
        default_root_dir=str(run_dir),
        plugins=trainer_plugins(),
        gradient_clip_val=None,  # the task clips (rnnbench.nn.clipping), with the config's θ
    )
    record["env"] = environment(str(trainer.strategy.root_device), cfg.get("flush_denormal", True))
    record["env"]["world_size"] = trainer.world_size  # processes training it (DDP: devices)
    return Training(model, task, trainer, callbacks)


def run(
    cfg: DictConfig,
    run_dir: str | Path,
    overrides: list[str] | None = None,
    group: str | None = None,
    search: Sequence[str | Path] = (),
    record_refusals: bool = False,
) -> dict[str, Any]:
    """Train and test one configuration; write `run_dir/result.json` however the run ends.

    Refused with ConfigError, before anything is written: a value outside what its key allows,
    and a `run_dir` that holds another configuration's run. A completed run with the same
    run_key in `run_dir`, under a folder of `search` (a sweep's) or under `cfg.results_root`
    is reused, not recomputed (unless `force`); a
    `checkpoints/last.ckpt` already in `run_dir`, or else one left by an unfinished run with the
    same run_key, is resumed from (`checkpoints.resume_point`). A completed record already in
    `run_dir` is never replaced by one that did not complete: a forced re-run into it trains
    in `record.forced_folder` and takes its place once completed (`record.take_place`). A bad
    value found while data, model and trainer are built (a ConfigError, DataError, ...) is
    raised without a record, and the folder goes when it holds nothing else (unless
    `record_refusals`: a sweep's job records it failed, for the sweep's summary).
    Returns the record. Raises what the run raised (after recording it as failed or interrupted).
    """
    run_dir = Path(run_dir).resolve()
    check_config(cfg)
    task_class(cfg)  # a task that is not the data's: refused before any reuse
    quiet_lightning(banners=True)
    record = new_record(OmegaConf.to_container(cfg, resolve=True), run_dir, overrides or [])
    check_run_folder(run_dir, record["run_key"])
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_rank_zero() and not cfg.get("force"):
        reused = reuse(record, run_dir, cfg.get("results_root") or run_dir, search)
        if reused is not None:
            return reused
    place = run_dir  # where the record ends up
    if cfg.get("force") and holds_completed(run_dir):
        # A forced re-run never leaves a completed folder half replaced: it trains beside the
        # completed run and takes its place in one step once it completed itself.
        run_dir = forced_folder(place)
        check_run_folder(run_dir, record["run_key"])
        run_dir.mkdir(exist_ok=True)
        record["run_dir"] = str(run_dir)
    train_and_record(LoneRun(cfg, run_dir, place, record, group, not record_refusals))
    return record


class LoneRun:
    """The strategy of one run (`train_and_record`): its model, task and Trainer
    (`build_training`), resumed from its own folder's last.ckpt or an unfinished run's with its
    run_key, tested with its best checkpoint, recorded in its folder (and moved to `place` once
    completed, for a forced re-run). Under a search it is a trial: the pruner may end it
    `pruned`."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        place: Path,
        record: dict[str, Any],
        group: str | None,
        refuses_unbuilt: bool,
    ) -> None:
        self.cfg, self.run_dir, self.place, self.group = cfg, run_dir, place, group
        self.record = record
        self.records = [record]
        self.refuses_unbuilt = refuses_unbuilt
        self.rank_zero = is_rank_zero()
        self.loggers: list = []
        self.trial = None
        self.built: Training | None = None
        self.best_path: str | None = None  # the checkpoint the test scores, once known
        self.resumed = False  # whether the fit went on from a checkpoint

    def build(self) -> pl.LightningDataModule:
        cfg = self.cfg
        check_device(cfg.trainer)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        self.trial = trial_callback()  # None unless a search launched this run as a trial
        extra = [self.trial] if self.trial else []
        self.built = build_training(
            cfg, self.run_dir, self.record, datamodule, self.loggers, self.group, extra
        )
        self.task, self.trainer = self.built.task, self.built.trainer
        return datamodule

    def resume_point(self) -> Path | None:
        # Other DDP ranks start inside fit(), after rank zero has put the checkpoint in place.
        if self.rank_zero:
            last = resume_point(self.record, self.run_dir, self.cfg)
        else:
            last = self.run_dir / LAST_CKPT if (self.run_dir / LAST_CKPT).exists() else None
        self.resumed = last is not None
        return last

    def conclude(self, datamodule: pl.LightningDataModule) -> None:
        record, task, trainer, callbacks = (
            self.record,
            self.task,
            self.trainer,
            self.built.callbacks,
        )
        if callbacks.throughput is not None:  # absent when ~callbacks.throughput
            record["timing"] = measured_timing(callbacks.throughput, trainer.global_step)
            if self.resumed and not callbacks.throughput.restored:
                # A checkpoint from before it carried the timing: the epochs before are untimed.
                record["timing"]["partial"] = True
        record_best(record, best_epoch(callbacks.epochs.rows) if callbacks.epochs else None)
        trial = self.trial
        if trial is not None and trial.pruned_at is not None:
            # Not tested: a pruned trial is no result, and a relaunch outside the search goes
            # on from its last.ckpt to the whole budget.
            record["status"] = "pruned"
            record["pruned"] = {"epoch": trial.pruned_at, "value": trial.last_value}
            record["notes"].append(
                f"pruned by the search's pruner after epoch {trial.pruned_at} "
                f"({trial.metric} {trial.last_value:.6g})"
            )
            if "timing" in record:
                record["timing"]["partial"] = True
            return
        self.best_path = (callbacks.best.best_model_path or None) if callbacks.best else None
        tested: dict[str, float] = {}
        if self.best_path or not task.diverged:
            scores = trainer.test(
                task, datamodule=datamodule, ckpt_path=self.best_path, verbose=False
            )
            tested = {k: float(v) for k, v in scores[0].items()}
            record |= task.record_fields()
            if self.rank_zero and getattr(task, "decoded", None):
                test = datamodule.texts["test"]
                write_examples(self.run_dir, test.source, test.target, task.decoded)
        step = getattr(task, "diverged_step", None)
        conclude_record(
            record,
            "best" if self.best_path else "last",
            tested,
            datamodule.reference_metrics(),
            (f"at step {step}" if step else "") if task.diverged else None,
            self.built.model.parameters(),
        )

    def finish(self, refused: bool) -> None:
        record, run_dir = self.record, self.run_dir
        if self.trial is not None:
            self.trial.close()
        if refused:
            # Refused like a value check_config finds: one line, and no record, no W&B run, no
            # folder left by this launch.
            finish_wandb(self.loggers, record)
            discard_dashboards(self.loggers)
            root = self.cfg.get("results_root")
            for folder in {run_dir, self.place}:
                discard_unused_folder(folder, Path(root) if root else None)
            return
        if not self.rank_zero:
            return
        finish_wandb(self.loggers, record)
        unwritten = write_record(run_dir, record)
        finish_dashboards(self.loggers, record, run_dir)
        if unwritten and sys.exc_info()[1] is None:
            raise UserError(unwritten)
        if record["status"] == "completed":
            # Only once the record says completed: until then last.ckpt is what a relaunch
            # resumes from. A config composed without the key keeps both, as runs always did.
            keep = OmegaConf.select(self.cfg, "checkpoints.keep", default="both")
            drop_checkpoints(run_dir, keep, self.best_path)
            if keep == "best" and self.best_path is None and (run_dir / LAST_CKPT).exists():
                # No validation ran: the scored weights are last.ckpt's, kept as weights
                # (best.ckpt is written weights-only: conf/callbacks/default.yaml).
                keep_weights_only(run_dir / LAST_CKPT)
            if run_dir != self.place:
                take_place(record, run_dir, self.place)


@dataclass
class RunCallbacks:
    """The callbacks a run trains with: the `callbacks` group's entries
    (conf/callbacks/default.yaml, plus `+callbacks=NAME`), placed in the run folder. `run` reads
    its record's figures from the always-on ones; those that only watch may be dropped
    (`~callbacks.NAME`; not epochs or best, config.KEPT_CALLBACKS), and the record then goes
    without what they gave (timing, steps.csv, resume)."""

    throughput: Throughput | None
    epochs: EpochMetricsCSV | None
    best: ModelCheckpoint | None
    all: list[pl.Callback]

    @classmethod
    def for_run(cls, cfg: DictConfig, run_dir: Path) -> RunCallbacks:
        entries = (cfg.get("callbacks") or {}).values()
        made = [place_in(instantiate(conf), run_dir) for conf in entries]
        if not cfg.trainer.get("enable_progress_bar", True):
            made = [c for c in made if not isinstance(c, ProgressBar)]
        # last.ckpt every N steps has its own callback: the best-model one only writes when
        # val/loss improves, and a resume must go on from the latest step, not the best one.
        if cfg.get("checkpoint_every_n_steps"):
            made.append(last_checkpoint(run_dir / CHECKPOINT_DIR, cfg.checkpoint_every_n_steps))

        def first(kind: type) -> Any:
            return next((c for c in made if type(c) is kind), None)

        # The resume checkpoint first: its writing time is not training time (Throughput).
        made.sort(key=lambda c: not isinstance(c, ResumeCheckpoint))
        best = next(
            (c for c in made if isinstance(c, ModelCheckpoint) and c.monitor == "val/loss"), None
        )
        return cls(first(Throughput), first(EpochMetricsCSV), best, made)


def place_in(callback: pl.Callback, run_dir: Path) -> pl.Callback:
    """`callback` with its files inside `run_dir`: a relative `path` is taken there, and a
    ModelCheckpoint without a folder writes to run_dir/checkpoints."""
    if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
        callback.dirpath = str(run_dir / CHECKPOINT_DIR)
    path = getattr(callback, "path", None)
    if isinstance(path, Path) and not path.is_absolute():
        callback.path = run_dir / path
    return callback


def last_checkpoint(checkpoints: Path, every_n_train_steps: int) -> ModelCheckpoint:
    """Writes `checkpoints/last.ckpt` every N training steps (checkpoint_every_n_steps)."""
    # Not save_last: Lightning writes "last" only beside a top-k save, so with save_top_k=0 it
    # came at the end of training alone. One unmonitored top-1 file named "last" is overwritten
    # at every trigger instead.
    return ModelCheckpoint(
        dirpath=checkpoints,
        filename=Path(LAST_CKPT).stem,
        save_top_k=1,
        every_n_train_steps=every_n_train_steps,
        enable_version_counter=False,
    )


def best_epoch(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch row with the lowest validation loss, or None when no validation ran."""
    scored = [r for r in rows if "val/loss" in r]
    return min(scored, key=lambda r: r["val/loss"]) if scored else None
