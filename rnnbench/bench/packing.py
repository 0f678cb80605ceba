"""Packed runs, the `pack` section: K seeds trained as one packed model against K lone runs
one after another."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from hydra.utils import instantiate

from rnnbench.bench.training import (
    TRAINING_OVERRIDES,
    Workload,
    measure_group,
    progress,
    split_choices,
)
from rnnbench.config import compose

# K=1 separates the two costs: a member step of the packed (scratch) recurrence against a lone
# run's (oneDNN's whole-sequence LSTM on a CPU), then how that grows with K.
PACK_SIZES = (1, 4, 8)
PACK_WORKLOADS = {
    "seq_mnist": Workload(
        "sequential MNIST, the LSTM recipe: 1 x 130, batch 64, 784 steps, RMSprop, clip 1",
        ("experiment=tcn/seq_mnist_lstm",),
        steps=2,
        rounds=3,
    ),
    "copy_memory": Workload(
        "copy memory, the LSTM recipe: 1 x 50, T = 1000 (1,020 steps), batch 32, RMSprop, clip 1",
        ("experiment=tcn/copy_memory_lstm",),
        steps=2,
        rounds=3,
    ),
    "ptb_small": Workload(
        "PTB words, Zaremba et al. small LSTM recipe: 2 x 200, batch 20, bptt 20, SGD, clip 0.25",
        ("experiment=zaremba/small",),
        steps=6,
        rounds=3,
    ),
}
# The goals: K seeds packed in at most this many times one lone run's time.
PACK_GOALS = {("seq_mnist", 4): 1.5, ("seq_mnist", 8): 2.5, ("ptb_small", 4): 3.0}


def pack(args: argparse.Namespace) -> dict[str, Any]:
    """Per workload: the median step time of one lone run (the Trainer as `rnnbench` runs it)
    and of packs of K seeds, measured in rounds side by side; K seeds packed take
    `time_vs_one` times one run's time, a `speedup` over K lone runs one after another."""

    names = split_choices(args.pack_workloads, PACK_WORKLOADS, "--pack-workloads") or (
        ["ptb_small"] if args.quick else list(PACK_WORKLOADS)
    )
    sizes = (2,) if args.quick else PACK_SIZES
    contenders = ["harness", *(f"pack{k}" for k in sizes)]
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rnnbench-bench-pack-") as tmp:
        for name in names:
            workload = PACK_WORKLOADS[name]
            steps = args.steps or (2 if args.quick else workload.steps)
            rounds = args.rounds or (2 if args.quick else workload.rounds)
            cfg = compose([*workload.overrides, *TRAINING_OVERRIDES, "logger=none"])
            datamodule = instantiate(cfg.data)
            datamodule.setup("fit")
            progress(f"pack {name}: {', '.join(contenders)} x {rounds} rounds x {steps} steps")
            samples = measure_group(cfg, datamodule, contenders, rounds, steps, 1, Path(tmp) / name)
            lone = [statistics.median(s.seconds for s in r) for r in samples["harness"]]
            row: dict[str, Any] = {"lone_step_s": round(statistics.median(lone), 4)}
            for k in sizes:
                packed = [statistics.median(s.seconds for s in r) for r in samples[f"pack{k}"]]
                ratio = statistics.median(p / a for p, a in zip(packed, lone, strict=True))
                row[f"pack{k}_step_s"] = round(statistics.median(packed), 4)
                row[f"pack{k}_time_vs_one"] = round(ratio, 3)
                row[f"pack{k}_speedup"] = round(k / ratio, 3)
            figures[name] = row
            progress(f"pack {name}: done")
    judged = {
        f"{w} K={k}": (figures[w][f"pack{k}_time_vs_one"], goal)
        for (w, k), goal in PACK_GOALS.items()
        if w in figures and f"pack{k}_time_vs_one" in figures[w]
    }
    ok = all(got <= goal for got, goal in judged.values())
    parts = []
    for w, row in figures.items():
        packs = ", ".join(
            f"K={k} {row[f'pack{k}_time_vs_one']:.2f} x one run ({row[f'pack{k}_speedup']:.2f} x "
            f"faster than {k} lone)"
            for k in sizes
        )
        parts.append(f"{w} {packs}")
    goals = ", ".join(f"{label} <= {goal:g}" for label, (_, goal) in judged.items())
    return {
        "goal": {label: goal for label, (_, goal) in judged.items()},
        "ok": ok,
        "figures": figures,
        "line": f"pack: {'; '.join(parts)} (goal {goals or 'none measured'})"
        + ("" if ok else "  MISSED"),
    }


def pack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pack-workloads",
        metavar="LIST",
        help=f"pack section: comma-separated, of {', '.join(PACK_WORKLOADS)} (default: all)",
    )
