"""A search trial's side of its study: the run reports its validation headline to the trial
after every epoch, and stops when the study's pruner says the trial is not worth finishing.

The `optuna` sweeper (rnnbench.run.search) tells a job which trial it is through variables in the
job's environment (`hydra.job.env_set`, so every launcher passes them on): the study's storage,
its name, the trial's number, and the trial's claim, which the job holds while it runs. The
pruner and the metric are the study's own user attributes, set by the sweeper, so the job
prunes exactly as the sweeper's study would. A run launched outside a search has none of these
and trains as always.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import optuna
import pytorch_lightning as pl

from rnnbench.results.studies import open_study_storage
from rnnbench.run import claims

STORAGE_ENV, STUDY_ENV, TRIAL_ENV, CLAIM_ENV, CONFIRM_ENV = (
    "RNNBENCH_STUDY_STORAGE",
    "RNNBENCH_STUDY",
    "RNNBENCH_TRIAL",
    "RNNBENCH_TRIAL_CLAIM",
    "RNNBENCH_CONFIRMATION",
)
PRUNERS = ("median", "halving", "hyperband")


@dataclass(frozen=True)
class PrunerSpec:
    """Which pruner a study uses: `name` (one of PRUNERS, or None for none), the trials that
    finish before the median pruner compares (`startup_trials`) and the epochs every trial
    trains before it can be pruned (`min_epochs`)."""

    name: str | None
    startup_trials: int = 5
    min_epochs: int = 1

    def make(self) -> optuna.pruners.BasePruner:
        if self.name is None:
            return optuna.pruners.NopPruner()
        if self.name == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=self.startup_trials, n_warmup_steps=self.min_epochs - 1
            )
        if self.name == "halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=self.min_epochs)
        if self.name == "hyperband":
            # The most epochs a trial trains is read from the finished trials ("auto"), the
            # same in the sweeper and in every job, since both read one storage.
            return optuna.pruners.HyperbandPruner(min_resource=self.min_epochs)
        raise ValueError(self.name)

    def as_attr(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "startup_trials": self.startup_trials,
            "min_epochs": self.min_epochs,
        }


def job_label(number: int) -> str:
    """How a job's lines name it: a search's trial by its study and trial number, which stay
    the same from launch to launch (job numbers start at 0 each launch); any other job by its
    number in this launch."""
    trial, study = os.environ.get(TRIAL_ENV), os.environ.get(STUDY_ENV)
    if trial is not None and study:
        return f"trial {trial} of study {study} (job {number})"
    return f"job {number}"


def quoted(text: str) -> str:
    """`text` as a quoted value on Hydra's command line."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def study_env(study: str) -> str:
    """The override that tells a job which study it runs for (its W&B group)."""
    return f"+hydra.job.env_set.{STUDY_ENV}={quoted(study)}"


def confirmation_env(study: str) -> list[str]:
    """The overrides of a job that confirms `study`'s best trial: its study (the W&B group),
    and that it confirms, so that its `pack=K` trains its own K seeds as one pack
    (`is_confirmation`) rather than packing K jobs of a sweep."""
    return [study_env(study), f"+hydra.job.env_set.{CONFIRM_ENV}=1"]


def is_confirmation() -> bool:
    """Whether this job confirms a study's best trial (`confirmation_env`)."""
    return os.environ.get(CONFIRM_ENV) == "1"


def env_overrides(storage_url: str, study: str, number: int, claim: Path) -> list[str]:
    """The overrides that tell trial `number`'s job which trial it is, and the claim it holds
    while it runs (rnnbench.run.shared_study.is_stale)."""
    return [
        f"+hydra.job.env_set.{STORAGE_ENV}={quoted(storage_url)}",
        study_env(study),
        f"+hydra.job.env_set.{TRIAL_ENV}={number}",
        f"+hydra.job.env_set.{CLAIM_ENV}={quoted(str(claim))}",
    ]


class ReportToTrial(pl.Callback):
    """Reports `metric` after every validation epoch to `trial` and stops training when its
    study's pruner prunes it; `pruned_at` is then the epoch it stopped after."""

    def __init__(
        self, trial: optuna.trial.Trial, metric: str, claim: IO[str] | None = None
    ) -> None:
        self.trial, self.metric, self.claim = trial, metric, claim
        self.pruned_at: int | None = None
        self.last_value: float | None = None

    def close(self) -> None:
        """Let go of the trial's claim: the run has ended."""
        if self.claim is not None:
            self.claim.close()
            self.claim = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        epoch = trainer.current_epoch + 1
        self.last_value = value
        try:
            self.trial.report(value, epoch)
        except optuna.exceptions.UpdateFinishedTrialError:
            # The study gave this trial up (a relaunch took it for a dead one): the run
            # trains on as an ordinary run, and its record is reused by the trial's retry.
            return
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True


def trial_callback() -> ReportToTrial | None:
    """The callback of the search trial this process runs, None outside a search."""
    url, name, number = (os.environ.get(k) for k in (STORAGE_ENV, STUDY_ENV, TRIAL_ENV))
    if not (url and name and number):
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_study_storage(url)
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    pruner = PrunerSpec(**(attrs.get("pruner") or {"name": None}))
    study = optuna.load_study(study_name=name, storage=storage, pruner=pruner.make())
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(name), int(number)
    )
    claim = None
    if os.environ.get(CLAIM_ENV):
        # Held beside the worker's: should the worker die (a login node's sweeper killed while
        # its SLURM jobs go on), no other worker takes this running trial for a dead one. A
        # worker testing whether the claim is held holds it for an instant: try again.
        for _ in range(20):
            if (claim := claims.hold(Path(os.environ[CLAIM_ENV]), shared=True)) is not None:
                break
            time.sleep(0.05)
    return ReportToTrial(optuna.trial.Trial(study, trial_id), attrs["metric"], claim)
