"""Sweeps that scale out and never recompute: finding a finished run by its key, sharing the
cores between parallel jobs, and the summary line at the end of a multirun."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from rnnbench.record import SCHEMA


def iter_records(root: str | Path):
    """(path, record) for every readable rnnbench result.json under `root`."""
    for path in Path(root).rglob("result.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("schema") == SCHEMA:
            yield path, record


def find_completed(root: str | Path, key: str, exclude: Path | None = None) -> Path | None:
    """A run directory under `root` whose record has run_key `key` and status completed;
    an original run is preferred over a record that itself reused one."""
    found = []
    for path, record in iter_records(root):
        if record.get("run_key") == key and record.get("status") == "completed":
            if exclude is None or path.parent.resolve() != exclude.resolve():
                found.append((record.get("reused_from") is not None, str(path.parent)))
    return Path(min(found)[1]) if found else None


KEY_FILE = "run_key"  # <run>/run_key, written when a run starts: what its checkpoints resume


def find_resumable(root: str | Path, key: str, exclude: Path | None = None) -> Path | None:
    """The newest `checkpoints/last.ckpt` under `root` of a run with run_key `key` that never
    completed (killed, interrupted, or still running elsewhere), so a relaunched sweep, or one in a
    later session, goes on from it instead of starting over; None when there is none."""
    found = []
    for key_file in Path(root).rglob(KEY_FILE):
        run_dir = key_file.parent
        last = run_dir / "checkpoints" / "last.ckpt"
        if exclude is not None and run_dir.resolve() == exclude.resolve():
            continue
        try:
            if key_file.read_text().strip() != key or not last.exists():
                continue
            status = json.loads((run_dir / "result.json").read_text()).get("status")
        except FileNotFoundError:
            status = None
        except (OSError, ValueError):
            continue
        if status not in ("completed", "diverged"):
            found.append((last.stat().st_mtime, last))
    return max(found)[1] if found else None


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


def summarize(records: list[dict[str, Any]]) -> tuple[str, Counter]:
    """One line: how many jobs completed, were reused, diverged, failed, were interrupted."""
    counts = Counter(
        "reused" if r.get("reused_from") else r.get("status", "unknown") for r in records
    )
    order = ["completed", "reused", "diverged", "failed", "interrupted"]
    parts = [f"{counts[k]} {k}" for k in order if counts[k]] or ["no runs"]
    return f"sweep: {len(records)} jobs: " + ", ".join(parts), counts


class SweepSummary(Callback):
    """Hydra callback: refuses launcher settings that cannot run, and ends a multirun with one
    summary line, exiting non-zero when any job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.get("launcher") or {}
        n_jobs = launcher.get("n_jobs")
        if n_jobs is not None and n_jobs == 0:
            print(
                "rnnbench: error: hydra.launcher.n_jobs=0 is not allowed: use a positive "
                "number of parallel jobs, or -1 for one per core",
                file=sys.stderr,
            )
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        records = [r for _, r in iter_records(config.hydra.sweep.dir)]
        line, counts = summarize(records)
        print(line, flush=True)
        if counts["failed"] or counts["interrupted"]:
            sys.exit(1)
