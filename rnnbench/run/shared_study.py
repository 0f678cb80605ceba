"""A study shared by the workers of a search: its storage, which worker runs which trial, and
its budget. Several `rnnbench` processes (on one machine, or SLURM jobs on a shared filesystem)
may run one study; each trial's job holds a claim while it trains (rnnbench.run.claims), so a
trial whose worker died is found (`is_stale`) and run again in its own folder, where it resumes
(`requeue_stale`), and a study never runs more than `n_trials` (`beyond_budget`).
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from rnnbench.errors import ConfigError
from rnnbench.results.studies import open_study_storage
from rnnbench.run import claims
from rnnbench.run.sweep import is_alive

UNOWNED_GRACE_S = 120  # a running trial with no owner after this long was left by a dead launch


def open_storage(url: str) -> Any:
    """An Optuna storage from `url`: `journal:PATH` a journal file (for a shared filesystem),
    anything else an RDB URL (sqlite:///PATH by default); ConfigError naming it when it cannot
    be opened."""

    if url.startswith("journal:"):
        check_journal_end(Path(url.removeprefix("journal:")))
    try:
        for prefix in ("journal:", "sqlite:///"):
            if url.startswith(prefix):
                Path(url.removeprefix(prefix)).parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            try:
                return open_study_storage(url)
            except sqlalchemy.exc.SQLAlchemyError:
                # Workers started together race to create a new database's tables: the
                # losers find them made a moment later.
                if attempt == 2:
                    raise
                time.sleep(0.5 + random.random())
    except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, no permission, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        held = Path(url.removeprefix("sqlite:///"))
        if url.startswith("sqlite:///") and held.is_file() and held.stat().st_size:
            # The URL is right; the file it names is not a study (damaged, or another file).
            advice = (
                f"{held} is not an Optuna study; move it aside to start the study afresh, or "
                f"give hydra.sweeper.storage another file"
            )
        else:
            advice = "give sqlite:///PATH, journal:PATH or a database URL"
        raise ConfigError(
            f"hydra.sweeper.storage={url} cannot be opened ({reason[:200]}): {advice}"
        ) from None


def torn_end(path: Path) -> bool:
    """Whether a journal file's last line is unfinished or not an entry."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        tail = f.read()
    if not tail or not tail.endswith(b"\n"):
        return bool(tail)
    try:
        json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    except ValueError:
        return True
    return False


def check_journal_end(path: Path) -> None:
    """ConfigError when the journal's last line is torn (a worker stopped mid-write, a disk
    that filled): Optuna would append after it and leave the study unreadable for good. A
    line another worker is writing right now ends in a moment: looked at again first."""
    if not path.is_file() or not torn_end(path):
        return
    time.sleep(1.0)
    if torn_end(path):
        raise ConfigError(
            f"hydra.sweeper.storage=journal:{path} ends in a torn line (a worker stopped "
            f"while writing it?): nothing was written; remove its last line to go on from the "
            f"entries before it"
        )


def owner() -> str:
    """Who runs a trial, in words for people: host and process (the claim says whether it
    still runs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


FILE_STORAGES = ("journal:", "sqlite:///")  # a study in a file, its claims beside it


def claims_folder(url: str, sweep_dir: Path, study: str) -> Path:
    """Where a study's claims are (rnnbench.run.claims): beside its storage when that is a file
    (the one thing every worker of the study shares), else in the sweep's folder."""
    for prefix in FILE_STORAGES:
        if url.startswith(prefix):
            return Path(url.removeprefix(prefix)).resolve().parent / ".claims" / study
    return sweep_dir.resolve() / ".claims" / study


def is_stale(trial: Any, folder: Path, beside_storage: bool) -> bool:
    """A RUNNING trial that no live process runs: neither the worker that asked it nor its job
    holds its claim any more, wherever they ran (a worker cancelled, killed, or lost with its
    node). The claim is looked for in the study's claims `folder` as this worker sees it, not
    only at the path the trial noted: where the claims are `beside_storage` (a study file,
    which every worker opens), a claim missing there has no live holder, so a study copied or
    moved to another machine or mount without its claims goes on. A database server's study
    may have workers that share no folder: a claim that none of them sees, and a trial from
    before claims were kept, go by the owner's pid, on this host only."""
    claim = trial.user_attrs.get("claim")
    if claim:
        held = claims.is_held(folder / f"trial-{trial.number}")
        if held is None and not beside_storage:
            held = claims.is_held(Path(claim))
        if held is not None or beside_storage:
            return not held
    host, _, pid = str(trial.user_attrs.get("owner", ":")).rpartition(":")
    if host == "":
        # No owner yet: just asked by a worker that is about to say it is its own, or left
        # by an older launch long ago.
        started = trial.datetime_start
        return started is None or (datetime.now() - started).total_seconds() > UNOWNED_GRACE_S
    if host != socket.gethostname() or not pid.isdigit():
        return False
    # This very process cannot be running it yet: it was left by a launch before.
    return int(pid) == os.getpid() or not is_alive(int(pid))


def counted(study: Any) -> int:
    """How many of `n_trials` a study has spent: finished trials and those running elsewhere,
    not the ones given up to be run again."""

    return len(spent(study))


def spent(study: Any) -> list[int]:
    """The numbers of the trials that count towards `n_trials`, in order."""
    states = optuna.trial.TrialState
    return [
        t.number
        for t in study.get_trials(deepcopy=False)
        if t.state in (states.COMPLETE, states.PRUNED, states.FAIL, states.RUNNING)
        and not (t.user_attrs.get("requeued") or t.user_attrs.get("surplus"))
    ]


def beyond_budget(study: Any, trial: Any, n_trials: int) -> bool:
    """Whether `trial`, just asked, is one too many: several workers sharing a study can ask
    at once after each saw one trial left. The lowest numbers keep their places; a trial
    beyond them is given up unrun (`surplus`, not counted), so a study never exceeds n_trials."""
    if trial.number in spent(study)[:n_trials]:
        return False
    study._storage.set_trial_user_attr(trial._trial_id, "surplus", True)
    study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return True


def requeue_stale(study: Any, folder: Path, beside_storage: bool) -> int:
    """Give up the running trials no live process runs and enqueue their values again: a trial
    with the same values is the same configuration, which resumes from its checkpoint. One
    worker at a time (the study's `requeue` claim), so a dead trial is enqueued once, however
    many workers find it; 0 while another worker is at it. `folder` holds the study's claims,
    `beside_storage` when it is beside the study's file (`is_stale`)."""
    hold = claims.hold(folder / "requeue", claims.this_process())
    if hold is None:
        return 0
    with hold:
        stale = [
            t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if is_stale(t, folder, beside_storage)
        ]
        for t in stale:
            # A FrozenTrial has no setter: the storage's (Optuna has no public way to mark a
            # trial of another process; the attribute must be set before it is finished).
            study._storage.set_trial_user_attr(t._trial_id, "requeued", True)
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            # The retry trains in the given-up trial's folder, so it resumes from the
            # checkpoint there and its record replaces the interrupted one.
            attrs = {"retry_of": t.number, "folder": t.user_attrs.get("folder", t.number)}
            study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)
    return len(stale)


def running_elsewhere(study: Any) -> list[Any]:
    """The study's trials that count and still run: once this worker has told its own, other
    workers' (a worker's dead trials are requeued first, so these have a live process)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not (t.user_attrs.get("requeued") or t.user_attrs.get("surplus"))
    ]
