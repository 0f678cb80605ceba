"""Sweeps that scale out: sharing the cores between parallel jobs, stopping every worker when
the sweep is stopped, and the summary line at the end of a multirun. (Finding a finished run
by its key is record.find_completed.)"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rnnbench.results.record import iter_records, unrecorded_runs


def threads_per_job(parallel_jobs: int) -> int:
    """Cores ÷ jobs running at once, at least 1, so parallel jobs do not fight over cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, parallel_jobs))


def parallel_jobs(launcher_cfg: DictConfig | None, cores: int | None = None) -> int:
    """How many jobs a Hydra launcher runs at once (joblib's n_jobs; -1 = every core)."""
    n_jobs = (launcher_cfg or {}).get("n_jobs")
    if n_jobs is None:
        return 1
    cores = cores or os.cpu_count() or 1
    return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)


def summarize(
    records: list[dict[str, Any]],
    jobs: int | None = None,
    found: int = 0,
    lost: int = 0,
    unrecorded_failures: int = 0,
) -> tuple[str, Counter]:
    """One line: how many of the sweep's `jobs` completed, were reused (a copy of another
    run's record, or, `found` of them, already completed in their own folder before this
    launch), were pruned by a search, diverged, failed, were interrupted, or never started.
    `lost`: jobs the launcher saw end without a result (SLURM killed them); those that left no
    record either count as failed. `unrecorded_failures`: jobs a search saw fail without
    writing a record (refused before training): failed, beyond the records."""
    counts = Counter(
        "reused" if r.get("reused_from") else r.get("status", "unknown") for r in records
    )
    counts["completed"] -= found
    counts["reused"] += found
    total = max(jobs or 0, len(records) + unrecorded_failures)
    unrecorded = total - len(records)
    gone = min(max(lost, unrecorded_failures), unrecorded)
    counts["failed"] += gone
    counts["not started"] = unrecorded - gone
    order = ["completed", "reused", "pruned", "diverged", "failed", "interrupted", "not started"]
    parts = [f"{counts[k]} {k}" for k in order if counts[k]] or ["no runs"]
    return f"sweep: {total} jobs: " + ", ".join(parts), +counts


def is_alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting to be reaped has)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # gone (a ZombieProcess is one too)
        return False
    except psutil.AccessDenied:  # another user's: alive
        return True


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return [c.pid for c in children if is_alive(c.pid)]


def stop_workers(sweep_dir: str | Path, grace_s: float = 60.0) -> None:
    """Ask every worker process of this sweep to stop (SIGTERM: a running job records itself
    interrupted), wait up to `grace_s` until they are gone or every started job has its
    record (helpers such as loky's resource tracker ignore SIGTERM), then kill what is left:
    no orphans."""
    workers = descendants(os.getpid())
    for pid in workers:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    # The workers themselves are watched, not "whoever is below us now": a job whose launching
    # process died first (submitit's) is re-parented away while it still writes its record.
    while time.monotonic() < deadline and any(is_alive(pid) for pid in workers):
        if not unrecorded_runs(sweep_dir):
            time.sleep(0.5)  # the jobs' last lines
            break
        time.sleep(0.2)
    for pid in {*workers, *descendants(os.getpid())}:
        try:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


_sweep_parent: int | None = None  # the pid of the process that launched this sweep, there
_stopped_by: int | None = None  # the first signal that stopped this process: exit 128 + it
_started: dict[Path, int] = {}  # record_stamps as the sweep started, in the sweep's process
_lost = 0  # jobs of this sweep that ended without a result (rnnbench.run.slurm), in its process
_unrecorded_failures = 0  # a search's jobs that failed and wrote no record, in its process
# A search's studies' folders (their trials' and confirming runs'): the summary counts their
# records only, as a search's folder may hold other studies (a launch with other sweep values).
_launched: set[Path] = set()


def note_lost_jobs(count: int) -> None:
    """Count `count` more jobs of the sweep that ended without a result (SLURM cancelled or
    killed them) for its summary."""
    global _lost
    _lost += count


def note_unrecorded_failures(count: int) -> None:
    """Count `count` more jobs of a search that failed without writing a record (a trial
    refused before it trained) for the sweep's summary and exit status."""
    global _unrecorded_failures
    _unrecorded_failures += count


def note_launched_folders(folders: list[Path]) -> None:
    """The folders of the jobs of the studies a search ran: its summary is theirs
    (print_summary)."""
    _launched.update(Path(f).resolve() for f in folders)


def reused_lines(found: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """One line per reused job of a sweep ((result.json path, record) pairs): its folder and the
    completed run it copied, whose W&B run (when it had one) holds the curves. A reused job
    trains nothing, so it makes no W&B run of its own."""
    lines = []
    for path, record in found:
        if record.get("reused_from"):
            wandb = record.get("wandb") or {}
            where = f" (W&B run {wandb['id']})" if wandb.get("id") else ""
            lines.append(f"  reused {path.parent}: copied from {record['reused_from']}{where}")
    return lines


def failed_lines(found: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """One line per failed job of a sweep ((result.json path, record) pairs): its folder and
    why, the error's line (a traceback's last), so that the reason reaches the shell that
    launched the sweep, wherever the job ran."""
    lines = []
    for path, record in found:
        if record.get("status") == "failed":
            said = (record.get("error") or "no error recorded").strip().splitlines() or [""]
            why = said[-1] if said[0].startswith("Traceback") else said[0]
            lines.append(f"  failed {path.parent}: {why}")
    return lines


def record_stamps(sweep_dir: str | Path) -> dict[Path, int]:
    """The sweep's result.json files and their modification times (ns): taken as a sweep
    starts, they tell the jobs a relaunch found completed from the jobs it ran."""
    stamps = {}
    for path, record in iter_records(sweep_dir):
        if record.get("status") == "completed":
            stamps[path.resolve()] = path.stat().st_mtime_ns
    return stamps


def is_search(sweeper: Any) -> bool:
    """Whether a sweep's `hydra.sweeper` node is the search's (hydra/sweeper=optuna,
    hydra_plugins/rnnbench_search), not Hydra's basic sweeper."""
    return "rnnbench_search" in str(OmegaConf.select(sweeper, "_target_") if sweeper else "")


def job_count(sweep_dir: str | Path) -> int | None:
    """How many jobs the sweep has (its multirun.yaml expanded), None when that cannot be told
    (a search: its trials, not the space's values, are its jobs)."""
    try:
        if is_search(OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra.sweeper):
            return None
        return len(sweep_jobs(Path(sweep_dir)))
    except Exception:  # noqa: BLE001 - the count is a courtesy; records are the truth
        return None


def print_summary(sweep_dir: str | Path, before: dict[Path, int] | None = None) -> Counter:
    """Print the sweep's summary line, then a line per reused job naming its source and one per
    failed job saying why. A job whose completed record was already there, unchanged, before
    this launch (`before`, record_stamps) counts as reused; a job without a record as not
    started."""
    found = list(iter_records(sweep_dir))
    if _launched:  # a search: its own jobs', not other studies' in the same folder
        found = [(p, r) for p, r in found if any(p.resolve().is_relative_to(f) for f in _launched)]
    kept = 0
    for path, record in found:
        stamp = (before or {}).get(path.resolve())
        if stamp is not None and not record.get("reused_from"):
            kept += stamp == path.stat().st_mtime_ns
    line, counts = summarize(
        [r for _, r in found], job_count(sweep_dir), kept, _lost, _unrecorded_failures
    )
    print("\n".join([line, *reused_lines(found), *failed_lines(found)]), flush=True)
    return counts


def sweep_jobs(sweep_dir: Path) -> list[list[str]]:
    """Every job of the sweep, as its override list, in job-number order (the basic sweeper's
    expansion of hydra.sweeper.params and the command line saved in multirun.yaml)."""

    saved = OmegaConf.load(sweep_dir / "multirun.yaml")
    params = saved.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params) if params else {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.to_container(saved.hydra.overrides.task))
    overrides = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(overrides, None)
    return [list(job) for batch in batches for job in batch]


def note_stop(signum: int) -> None:
    """Remember the signal that stops this process, the first of a burst (its exit status is
    128 + it)."""
    global _stopped_by
    if _stopped_by is None:
        _stopped_by = signum


def stopped_by() -> int | None:
    """The signal that stopped this process, None while none has."""
    return _stopped_by


def stop_exit_code() -> int:
    """128 + the signal that stopped this process: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + (_stopped_by or signal.SIGINT)


def stop_sweep_on_signal(sweep_dir: str | Path) -> None:
    """Make SIGTERM and Ctrl-C to a sweep's parent stop its workers (recording the running
    jobs interrupted), print the summary line and exit 128 + signal, without a traceback."""
    global _sweep_parent
    _sweep_parent = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        note_stop(signum)
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second Ctrl-C must not cut this short
            signal.signal(sig, signal.SIG_IGN)
        print(f"rnnbench: sweep stopped by {signal.Signals(signum).name}", file=sys.stderr)
        if not descendants(os.getpid()):
            # The job runs in this process (the basic launcher): it records itself
            # interrupted, then end_interrupted_job ends the sweep.
            raise KeyboardInterrupt(f"signal {signum}")
        stop_workers(sweep_dir)
        print_summary(sweep_dir, _started)
        sys.stderr.flush()
        # os._exit: the launcher's own clean-up would wait on workers that are gone.
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def end_interrupted_job(sweep_dir: str | Path) -> None:
    """After a sweep's job recorded itself interrupted: its process takes no further job. In
    the sweep's own process (the basic launcher) the summary line comes first."""
    if _sweep_parent == os.getpid():
        print_summary(sweep_dir, _started)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(stop_exit_code())


class SweepSummary(Callback):
    """Hydra callback: refuses launcher settings that cannot run, stops the sweep cleanly on
    SIGTERM or Ctrl-C, and ends a multirun with one summary line, exiting non-zero when any job
    failed or was interrupted."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _lost, _unrecorded_failures
        launcher = config.hydra.get("launcher") or {}
        n_jobs = launcher.get("n_jobs")
        if n_jobs is not None and n_jobs == 0:
            print(
                "rnnbench: error: hydra.launcher.n_jobs=0 is not allowed: use a positive "
                "number of parallel jobs, or -1 for one per core",
                file=sys.stderr,
            )
            sys.exit(2)
        _lost = _unrecorded_failures = 0
        _launched.clear()
        _started.clear()
        _started.update(record_stamps(config.hydra.sweep.dir))
        stop_sweep_on_signal(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        counts = print_summary(config.hydra.sweep.dir, _started)
        if counts["failed"] or counts["interrupted"]:
            sys.exit(1)
