"""The one lifecycle every training goes through (`train_and_record`): build, resume, fit,
test, conclude each record, and write it however the training ends. What is trained is a
strategy's: a lone run (rnnbench.run.train.LoneRun, also what a search's trial is) or a pack of
runs trained at once (rnnbench.run.pack.PackRun). The strategy says how to build its task and
Trainer, where it resumes from, how its runs are tested and what each record holds; the
lifecycle owns the order, the stop signals, and the rules every record follows (how it ends:
`completed`, `diverged`, `pruned`, `interrupted` or `failed`, and why)."""

from __future__ import annotations

import math
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from torch import Tensor

from rnnbench.errors import find_user_error
from rnnbench.results.record import Record, now_iso
from rnnbench.run.callbacks import Throughput
from rnnbench.run.lifecycle import (
    defer_stop_signals,
    hold_stop_signals,
    interrupt_on_stop_signals,
    pass_on_deferred_stop,
    restore_signals,
)


class RunStrategy(Protocol):
    """What `train_and_record` trains, and how its records are made.

    `records` are the runs' records (one for a lone run, one per member for a pack), filled in
    as the training goes; `task` and `trainer` exist once `build` returned."""

    records: list[Record]
    task: pl.LightningModule
    trainer: pl.Trainer
    # Whether a bad value met while building (a UserError) is refused without a record (a lone
    # run's command line), rather than recorded as failed (a pack's members, a sweep's job).
    refuses_unbuilt: bool

    def build(self) -> pl.LightningDataModule:
        """Seed, set up the data, and build the task and Trainer; return the datamodule."""

    def resume_point(self) -> Path | None:
        """The checkpoint the fit goes on from, or None to start afresh."""

    def conclude(self, datamodule: pl.LightningDataModule) -> None:
        """After a fit that was not interrupted: test, and fill in each record's figures and
        status (`record_best`, `conclude_record`)."""

    def finish(self, refused: bool) -> None:
        """However the training ended: write the records (or, `refused`, leave nothing behind),
        finish the loggers, keep the checkpoints the config asks for."""


def train_and_record(strategy: RunStrategy) -> None:
    """Train `strategy`'s runs and record them however the training ends: completed (or
    diverged, pruned) through `strategy.conclude`; `interrupted` by a stop signal or Ctrl-C
    (the signals then stay held while the process ends: a second one must not cut the writing
    short); `failed` with the error. A stop signal that comes once the run has ended waits
    until its records are written, then goes to the handlers from before the run. Raises what
    the training raised, once recorded."""
    previous_handlers = interrupt_on_stop_signals()
    building, refused = True, False
    try:
        datamodule = strategy.build()
        building = False
        last = strategy.resume_point()
        strategy.trainer.fit(
            strategy.task, datamodule=datamodule, ckpt_path=str(last) if last else None
        )
        if strategy.trainer.interrupted:
            raise KeyboardInterrupt
        strategy.conclude(datamodule)
    except (KeyboardInterrupt, SystemExit):
        for record in strategy.records:
            record["status"] = "interrupted"
        hold_stop_signals()
        raise
    except BaseException as e:
        user = find_user_error(e)
        error = str(user) if user else "".join(traceback.format_exception(e))
        for record in strategy.records:
            record["error"] = error
        refused = building and user is not None and strategy.refuses_unbuilt
        raise
    finally:
        for record in strategy.records:
            record["finished"] = now_iso()
        interrupted = any(r["status"] == "interrupted" for r in strategy.records)
        if not interrupted:
            defer_stop_signals()
        try:
            strategy.finish(refused)
        finally:  # even when writing failed: a later stop must not wait on handlers left behind
            if not interrupted:
                restore_signals(previous_handlers)
                pass_on_deferred_stop()


def measured_timing(clock: Throughput, steps: int) -> dict[str, Any]:
    """A record's `timing`: the training's own time (checkpoint writing left out), its steps
    and the items (tokens, sequences) it trained on."""
    return {
        "train_s": round(clock.train_s, 3),
        "steps": steps,
        "items": clock.items,
        "items_per_s": round(clock.items_per_s, 1),
    }


def record_best(record: Record, best: dict[str, Any] | None) -> None:
    """The run's best epoch (lowest val/loss; None when no validation ran): the record's `best`,
    and its validation metrics, those of that epoch."""
    record["best"] = best
    record["metrics"] |= {k: v for k, v in (best or {}).items() if k.startswith("val/")}


def conclude_record(
    record: Record,
    tested: str,
    test_metrics: dict[str, float],
    reference_metrics: dict[str, float],
    nonfinite_loss: str | None,
    weights: Iterable[Tensor],
) -> None:
    """The end of a run's record that trained to the end of its budget: which weights its test
    used (`tested`: "best" or "last"), its test and reference metrics, and its status,
    `diverged` (with why, `divergence`) or `completed`."""
    record["tested"] = tested
    if tested == "last":
        record["notes"].append(
            "no validation ran (the budget ended before the first validation): the test "
            "used the last weights"
        )
    record["metrics"] |= test_metrics
    record["metrics"] |= reference_metrics
    why = divergence(nonfinite_loss, weights, record["metrics"])
    if why:
        record["notes"].append(f"diverged: {why}")
    record["status"] = "diverged" if why else "completed"


def divergence(
    nonfinite_loss: str | None, weights: Iterable[Tensor], metrics: dict[str, Any]
) -> str | None:
    """Why a run that trained to the end is no result, or None: its training loss went
    non-finite (`nonfinite_loss` says when, e.g. "at step 12"), its weights did, or a
    validation or test metric is inf or NaN."""
    if nonfinite_loss is not None:
        return f"the training loss became non-finite {nonfinite_loss}".rstrip()
    if not all(bool(torch.isfinite(w).all()) for w in weights):
        return "the weights became non-finite"
    return nonfinite_metrics(metrics)


def nonfinite_metrics(metrics: dict[str, Any]) -> str | None:
    """Which validation or test metrics are inf or NaN, in words; None when none is."""
    bad = sorted(
        k
        for k, v in metrics.items()
        if k.startswith(("val/", "test/")) and isinstance(v, float) and not math.isfinite(v)
    )
    return f"{', '.join(bad)} not finite" if bad else None
