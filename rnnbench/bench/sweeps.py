"""The `sweep` section: a four-run `rnnbench -m` sweep with the joblib launcher (2 jobs)
against the same sweep with the basic launcher, and how much faster a step runs on the basic
launcher's threads than on each joblib job's (the bound training alone sets)."""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from rnnbench.bench.aggregate import TEMPLATE_OVERRIDES
from rnnbench.bench.contenders import PlainLoop
from rnnbench.bench.errors import BenchError
from rnnbench.bench.training import (
    HEADLINE,
    TRAINING_OVERRIDES,
    WORKLOADS,
    progress,
    rate,
)
from rnnbench.config import compose
from rnnbench.results.record import iter_records
from rnnbench.run.sweep import threads_per_job

SWEEP_GOAL = 0.75
SWEEP_LAUNCHERS = {"basic": (), "joblib": ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")}
SWEEP_RUNS = 4


SWEEP_STEPS = 120


def sweep_overrides(quick: bool, steps: int | None) -> list[str]:
    """Four PTB-small LSTM runs (seeds 1-4), one short epoch each (SWEEP_STEPS batches, about
    7 s of training here: long enough that training, not each run's start-up, is what the
    launchers share out), validated and tested; under --quick, four of `aggregate`'s tiny runs
    (no W&B, whose start-up would dominate)."""
    seeds = "seed=" + ",".join(str(s) for s in range(1, SWEEP_RUNS + 1))
    if quick:
        return [*TEMPLATE_OVERRIDES, "model=lstm", seeds]
    return [
        "model=lstm",
        *WORKLOADS[HEADLINE].overrides,
        seeds,
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps or SWEEP_STEPS}",
        "trainer.limit_val_batches=5",
        "trainer.limit_test_batches=5",
    ]


def run_sweep(launcher: Sequence[str], overrides: Sequence[str]) -> float:
    """Wall seconds of one `rnnbench -m` sweep in a fresh folder; every run must complete."""

    with tempfile.TemporaryDirectory(prefix="rnnbench-bench-sweep-") as tmp:
        env = {**os.environ, "RNNBENCH_RUNS_DIR": str(Path(tmp) / "runs")}
        command = [sys.executable, "-m", "rnnbench", "-m", *launcher, *overrides]
        t0 = time.perf_counter()
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        statuses = [r.get("status") for _, r in iter_records(Path(tmp) / "runs")]
    if done.returncode != 0 or statuses.count("completed") != SWEEP_RUNS:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise BenchError(
            f"sweep `{shlex.join(command[1:])}` exited {done.returncode} with "
            f"{statuses.count('completed')} of {SWEEP_RUNS} runs completed:\n{tail}"
        )
    return wall


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Joblib (2 jobs) against basic: the same four runs, alternating launchers by round."""
    overrides = sweep_overrides(args.quick, args.sweep_steps)
    # Three rounds: the median then survives one round that a busy machine slowed down.
    rounds = args.sweep_rounds or (1 if args.quick else 3)
    walls: dict[str, list[float]] = {name: [] for name in SWEEP_LAUNCHERS}
    for r in range(rounds):
        order = list(SWEEP_LAUNCHERS)[:: 1 if r % 2 == 0 else -1]
        for name in order:
            progress(f"sweep round {r + 1}/{rounds}: {name} launcher, {SWEEP_RUNS} runs")
            walls[name].append(run_sweep(SWEEP_LAUNCHERS[name], overrides))
    ratio = statistics.median(j / b for j, b in zip(walls["joblib"], walls["basic"], strict=True))
    basic, joblib = statistics.median(walls["basic"]), statistics.median(walls["joblib"])
    ok = ratio <= SWEEP_GOAL
    scaling = thread_scaling(args.quick)
    return {
        "runs": SWEEP_RUNS,
        "overrides": overrides,
        "basic_s": round(basic, 2),
        "joblib_s": round(joblib, 2),
        "basic_rounds_s": [round(x, 2) for x in walls["basic"]],
        "joblib_rounds_s": [round(x, 2) for x in walls["joblib"]],
        "joblib_vs_basic": round(ratio, 4),
        "goal": SWEEP_GOAL,
        "ok": ok,
        "thread_scaling": scaling,
        "line": (
            f"sweep: {SWEEP_RUNS} runs, joblib 2 jobs {joblib:.1f} s vs basic {basic:.1f} s = "
            f"{ratio:.3f} x (goal <= {SWEEP_GOAL:g}, median of {rounds} round(s))"
            + ("" if ok else "  MISSED")
            + f"; a PTB-small LSTM step runs {scaling['speedup']:.2f} x faster on "
            f"{scaling['threads_basic']} threads than on {scaling['threads_joblib']}, so "
            f"training alone keeps joblib above {scaling['joblib_bound']:.2f} x"
        ),
    }


def thread_scaling(quick: bool) -> dict[str, Any]:
    """Tokens/s of the PTB-small LSTM step (the plain loop) on the threads the basic launcher
    gives its one job over the threads each of joblib's two jobs gets, alternating by round.
    Two jobs side by side can at best halve the time, so half this speed-up is the lowest
    joblib/basic ratio that training time alone allows."""

    alone, shared = threads_per_job(1), threads_per_job(2)
    cfg = compose(["model=lstm", *WORKLOADS[HEADLINE].overrides, *TRAINING_OVERRIDES])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    loop = PlainLoop(cfg, datamodule)
    steps, rounds = (2, 1) if quick else (10, 5)
    before = torch.get_num_threads()
    rates: dict[int, list[float]] = {alone: [], shared: []}
    progress(f"sweep: thread scaling, {alone} vs {shared} threads x {rounds} rounds")
    try:
        loop.run(1 if quick else 3)
        for r in range(rounds):
            for n in (alone, shared)[:: 1 if r % 2 == 0 else -1]:
                torch.set_num_threads(n)
                rates[n].append(rate(loop.run(steps), "tokens"))
    finally:
        torch.set_num_threads(before)
    speedup = statistics.median(a / b for a, b in zip(rates[alone], rates[shared], strict=True))
    return {
        "threads_basic": alone,
        "threads_joblib": shared,
        "speedup": round(speedup, 4),
        "joblib_bound": round(speedup / 2, 4),
    }


def sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep-rounds", type=int, help="rounds of the sweep section (default 3)")
    p.add_argument(
        "--sweep-steps",
        type=int,
        help=f"training batches per sweep run (default {SWEEP_STEPS}; not with --quick)",
    )
