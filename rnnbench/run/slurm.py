"""Sweeps on a SLURM cluster through submitit (`hydra/launcher=slurm_cpu`, whose launcher is
hydra_plugins/rnnbench_slurm): the sweep learns how each job ended even on a cluster that keeps
no accounting, and a job SLURM ended without a result (cancelled, past its time limit, out of
memory) is counted and named in one line instead of being waited on forever.

A job warned of its end (SLURM's USR2 before a time limit or a preemption) records itself
interrupted and is requeued by submitit (rnnbench.run.lifecycle.pass_on_stop_signal); the requeued
job goes on from its run folder's last.ckpt."""

from __future__ import annotations

import contextlib
import functools
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from submitit.core.utils import UncompletedJobError
from submitit.slurm import slurm

from rnnbench.run.sweep import note_lost_jobs

# The states of a job that is over (squeue's and sacct's names); any other may still run.
# GONE: squeue no longer knows the job, which ended more than MinJobAge (300 s) ago.
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "TIMEOUT",
    "GONE",
}


@functools.cache
def accounting_enabled() -> bool:
    """Whether the cluster keeps accounting, so that `sacct` can tell a job's state
    (AccountingStorageType is not accounting_storage/none). When scontrol cannot tell, as if it
    did: submitit's own way is tried."""
    try:
        config = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return True
    found = re.search(r"^AccountingStorageType\s*=\s*(\S+)", config, re.MULTILINE)
    return found is None or found.group(1) != "accounting_storage/none"


class QueueWatcher(slurm.SlurmInfoWatcher):
    """submitit's watcher of a sweep's job states, which asks `sacct`. Without accounting, sacct
    answers nothing (and says so on stderr at every poll), so a job killed before it wrote its
    result would be waited on forever: this one asks `squeue` instead, which knows the user's
    jobs until MinJobAge after they end, and takes a job it no longer lists as ended (GONE)."""

    def _make_command(self) -> list[str] | None:
        if accounting_enabled():
            return super()._make_command()
        if not self._registered - self._finished:
            return None
        # All the user's jobs, not --jobs=...: squeue fails when every job named is forgotten.
        return ["squeue", "--me", "--states=all", "--array", "--noheader", "--format=%i|%T"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if accounting_enabled():
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        listed = {}
        for line in text.splitlines():
            job_id, _, state = line.strip().partition("|")
            if state:
                listed[job_id] = {"JobID": job_id, "State": state}
        # Asked right after sbatch returned, squeue lists every job it took: one it no longer
        # lists has ended and been forgotten.
        gone = {j: {"JobID": j, "State": "GONE"} for j in self._registered - self._finished}
        return gone | listed

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        # submitit's test (not PENDING, RUNNING, ...) takes a SUSPENDED or STOPPED job as done.
        return self.get_state(job_id, mode=mode).split()[0].upper() in ENDED


class WatchedSlurmJob(slurm.SlurmJob):
    """A submitit SLURM job watched by QueueWatcher, whose results() hands back a LostJob in
    place of raising when the job ended without a result."""

    watcher = QueueWatcher(delay_s=60)  # polls well within MinJobAge (300 s by default)

    def results(self) -> list[Any]:
        try:
            return super().results()
        except UncompletedJobError as e:  # FailedJobError too: the job raised outside rnnbench
            return [LostJob(self.job_id, self.state, str(e), str(self.paths.stderr))]


class LostJob(JobReturn):
    """The JobReturn of a job that ended without a result: COMPLETED with no value, as a job
    whose run failed returns (a sweeper counts its trial failed; Hydra raises nothing)."""

    def __init__(self, job_id: str, state: str, error: str, log: str) -> None:
        super().__init__(status=JobStatus.COMPLETED, _return_value=None)
        self.job_id, self.state, self.log = job_id, state.split()[0], log
        # A job that raised outside rnnbench (FailedJobError): its exception's line, which
        # submitit's message holds between two rules of dashes.
        parts = error.split("-" * 22)
        trace = parts[1].strip().splitlines() if len(parts) > 2 else []
        self.reason = trace[-1].strip() if trace else None

    def line(self, job_num: int) -> str:
        """One line for the submitting shell: which job, how SLURM ended it, where its log is."""
        why = f": {self.reason}" if self.reason else ""
        # A job that raised may end before SLURM's state says so: then no state is named.
        state = f" {self.state}" if self.state in ENDED else ""
        return (
            f"rnnbench: job {job_num} (SLURM job {self.job_id}) ended{state} without a "
            f"result{why} (its log: {self.log})"
        )


@contextlib.contextmanager
def watched_jobs() -> Iterator[None]:
    """While a sweep is submitted and waited on, submitit makes WatchedSlurmJob jobs: its array
    submission names the SlurmJob class itself, so the module's name is swapped too."""
    saved = slurm.SlurmJob, slurm.SlurmExecutor.job_class
    slurm.SlurmJob = slurm.SlurmExecutor.job_class = WatchedSlurmJob
    try:
        yield
    finally:
        slurm.SlurmJob, slurm.SlurmExecutor.job_class = saved


def report_lost_jobs(returns: Sequence[JobReturn], first_job_num: int) -> None:
    """Name each job of `returns` that ended without a result, in one line on stderr, and count
    them for the sweep's summary."""
    lost = [(first_job_num + i, r) for i, r in enumerate(returns) if isinstance(r, LostJob)]
    for job_num, job in lost:
        print(job.line(job_num), file=sys.stderr, flush=True)
    note_lost_jobs(len(lost))
