"""Training measurement: workloads x cells, contenders in rounds. The harness, peak, scratch
and loader sections share one measurement (`training`); the pack and denormal sections run
their contenders in rounds the same way (`measure_group`)."""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate

from rnnbench.bench.contenders import (
    FLUSH_CONTENDERS,
    FlushingLoop,
    LightningHarness,
    Matmul,
    PackHarness,
    PlainLoop,
    Sample,
)
from rnnbench.bench.errors import BenchError
from rnnbench.cellspec import BASE_CELLS, GATED_CELLS
from rnnbench.config import compose

HARNESS_GOAL = 0.97
PEAK_GOAL = 0.75
PEAK_GOAL_CELLS = GATED_CELLS
SCRATCH_GOAL = 0.8
LOADER_GOAL = 0.02


@dataclass(frozen=True)
class Workload:
    title: str
    overrides: tuple[str, ...]
    steps: int  # timed steps per contender per round in a full run
    rounds: int  # rounds in a full run: more where a step is short and the median cheap


WORKLOADS = {
    "ptb_small": Workload(
        "PTB words, Zaremba et al. small: 2 x 200, batch 20, bptt 20, SGD, clip 0.25",
        (
            "data=ptb_word",
            "model.hidden_size=200",
            "model.num_layers=2",
            "data.batch_size=20",
            "data.bptt=20",
            "optim=sgd",
            "trainer.gradient_clip_val=0.25",
        ),
        # Its ratios are the goals: nine short rounds, so that a few rounds a shared machine
        # slowed down do not move the median.
        steps=10,
        rounds=9,
    ),
    "ptb_char": Workload(
        "PTB characters, Bai et al.'s LSTM size: 2 x 600, batch 32, bptt 100, Adam, clip 0.15",
        (
            "data=ptb_char",
            "model.hidden_size=600",
            "model.num_layers=2",
            "trainer.gradient_clip_val=0.15",
        ),
        steps=3,
        rounds=3,
    ),
    "seq_mnist": Workload(
        "sequential MNIST: 1 x 130, batch 64, 784 steps, Adam, clip 1",
        (
            "data=seq_mnist",
            "model.hidden_size=130",
            "model.num_layers=1",
            "trainer.gradient_clip_val=1.0",
        ),
        steps=4,
        rounds=5,
    ),
    "multi30k": Workload(
        "Multi30k de->en, the small seq2seq recipe: bidirectional 1 x 128 encoder, additive "
        "attention, batch 128, Adam, clip 1 (tokens = real target tokens)",
        (
            "data=multi30k",
            "model.num_layers=1",
            "model.hidden_size=128",
            "model.emb_size=128",
            "model.bidirectional=true",
            "model.attention=additive",
            "trainer.gradient_clip_val=1.0",
        ),
        steps=3,
        rounds=3,
    ),
}
HEADLINE = "ptb_small"
CELLS = BASE_CELLS
# No validation pass: the timed steps are training steps, and a fit stops mid-epoch anyway.
TRAINING_OVERRIDES = ("trainer.limit_val_batches=0",)
# The contenders each training section compares.
NEEDS = {
    "harness": ("harness", "raw"),
    "peak": ("harness", "mm"),
    "scratch": ("raw", "scratch"),
    "loader": ("harness", "raw"),
}
CONTENDER_ORDER = ("harness", "raw", "scratch", "mm")


def rate(samples: Sequence[Sample], field: str) -> float:
    """Tokens (or FLOPs) per second over a round's steps."""
    return sum(getattr(s, field) for s in samples) / sum(s.seconds for s in samples)


def median_ratio(top: list[list[Sample]], bottom: list[list[Sample]], field: str) -> float:
    """The median over rounds of rate(top) / rate(bottom), rounds paired as they ran."""
    return statistics.median(
        rate(a, field) / rate(b, field) for a, b in zip(top, bottom, strict=True)
    )


def summarize_group(rounds: dict[str, list[list[Sample]]]) -> dict[str, Any]:
    """Per-contender medians and the pairwise ratios of one workload x cell."""
    out: dict[str, Any] = {}
    for name, runs in rounds.items():
        field = "flops" if name == "mm" else "tokens"
        per_round = [rate(r, field) for r in runs]
        if name == "mm":
            out["mm_gflop_s"] = round(statistics.median(per_round) / 1e9, 2)
            continue
        out[f"{name}_tok_s"] = round(statistics.median(per_round), 1)
        out[f"{name}_tok_s_rounds"] = [round(x, 1) for x in per_round]
        out[f"{name}_step_ms"] = round(
            1e3 * statistics.median(s.seconds for r in runs for s in r), 3
        )
        out[f"{name}_gflop_s"] = round(statistics.median(rate(r, "flops") for r in runs) / 1e9, 2)
        out["flops_per_token"] = runs[0][0].flops / runs[0][0].tokens
    if "harness" in rounds and "raw" in rounds:
        out["harness_vs_raw"] = round(median_ratio(rounds["harness"], rounds["raw"], "tokens"), 4)
        out["loader_share"] = round(
            statistics.median(
                statistics.fmean(s.fetch_s for s in raw) / statistics.fmean(h.seconds for h in har)
                for raw, har in zip(rounds["raw"], rounds["harness"], strict=True)
            ),
            5,
        )
    if "raw" in rounds and "scratch" in rounds:
        out["scratch_vs_fused"] = round(median_ratio(rounds["scratch"], rounds["raw"], "tokens"), 4)
    if "mm" in rounds:
        for name in ("harness", "raw"):
            if name in rounds:
                key = "peak_fraction" if name == "harness" else "raw_peak_fraction"
                out[key] = round(median_ratio(rounds[name], rounds["mm"], "flops"), 4)
    return out


def build_contender(name: str, cfg, datamodule, run_dir: Path):
    if name == "harness":
        return LightningHarness(cfg, datamodule, run_dir)
    if name.startswith("pack"):
        return PackHarness(cfg, datamodule, run_dir / name, int(name.removeprefix("pack")))
    if name == "raw":
        return PlainLoop(cfg, datamodule)
    if name == "scratch":
        return PlainLoop(compose_scratch(cfg), datamodule, name="scratch")
    if name in FLUSH_CONTENDERS:
        return FlushingLoop(cfg, datamodule, FLUSH_CONTENDERS[name])
    return Matmul()


def compose_scratch(cfg):
    scratch = copy.deepcopy(cfg)
    scratch.model.impl = "scratch"
    return scratch


def measure_group(
    cfg, datamodule, contenders: Sequence[str], rounds: int, steps: int, warmup: int, workdir: Path
) -> dict[str, list[list[Sample]]]:
    """Build `contenders`, warm each up, then `rounds` rounds of `steps` steps each, the
    starting contender rotating from round to round."""
    built = [build_contender(name, cfg, datamodule, workdir) for name in contenders]
    try:
        for c in built:
            c.run(warmup)
        out: dict[str, list[list[Sample]]] = {c.name: [] for c in built}
        for r in range(rounds):
            k = r % len(built)
            for c in built[k:] + built[:k]:
                out[c.name].append(c.run(steps))
        return out
    finally:
        for c in built:
            c.close()


def training_plan(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    workloads = split_choices(args.workloads, WORKLOADS, "--workloads") or (
        [HEADLINE] if args.quick else list(WORKLOADS)
    )
    cells = split_choices(args.cells, CELLS, "--cells") or list(CELLS)
    needed = {c for s in args.selected if s in NEEDS for c in NEEDS[s]}
    contenders = [c for c in CONTENDER_ORDER if c in needed]
    return workloads, cells, contenders


def training(args: argparse.Namespace) -> dict[str, dict[str, dict[str, Any]]]:
    """figures[workload][cell], measured once for every training section selected."""
    if getattr(args, "training_figures", None) is not None:
        return args.training_figures

    workloads, cells, contenders = training_plan(args)
    warmup = 1 if args.quick else 2
    figures: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="rnnbench-bench-") as tmp:
        for w in workloads:
            workload = WORKLOADS[w]
            steps = args.steps or (2 if args.quick else workload.steps)
            rounds = args.rounds or (2 if args.quick else workload.rounds)
            base = [*workload.overrides, *TRAINING_OVERRIDES]
            datamodule = instantiate(compose([f"model={cells[0]}", *base]).data)
            datamodule.setup("fit")
            figures[w] = {}
            for cell in cells:
                progress(f"{w} {cell}: {', '.join(contenders)} x {rounds} rounds x {steps} steps")
                cfg = compose([f"model={cell}", *base])
                t0 = time.perf_counter()
                samples = measure_group(
                    cfg, datamodule, contenders, rounds, steps, warmup, Path(tmp) / f"{w}-{cell}"
                )
                wall = time.perf_counter() - t0
                figures[w][cell] = summarize_group(samples) | {
                    "rounds": rounds,
                    "steps_per_round": steps,
                    "wall_s": round(wall, 1),
                }
                progress(f"{w} {cell}: done in {wall:.0f} s")
    args.training_figures = figures
    print_training_table(figures)
    return figures


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


TRAINING_COLUMNS = (
    ("harness tok/s", "harness_tok_s", "{:,.0f}"),
    ("raw tok/s", "raw_tok_s", "{:,.0f}"),
    ("harness/raw", "harness_vs_raw", "{:.3f}"),
    ("scratch tok/s", "scratch_tok_s", "{:,.0f}"),
    ("scratch/fused", "scratch_vs_fused", "{:.3f}"),
    ("harness GFLOP/s", "harness_gflop_s", "{:.1f}"),
    ("mm GFLOP/s", "mm_gflop_s", "{:.1f}"),
    ("peak fraction", "peak_fraction", "{:.3f}"),
    ("loader share", "loader_share", "{:.4f}"),
)


def training_rows(figures: dict[str, dict[str, dict[str, Any]]]) -> tuple[list[str], list]:
    shown = [
        c for c in TRAINING_COLUMNS if any(c[1] in f for w in figures.values() for f in w.values())
    ]
    header = ["workload", "cell", *(c[0] for c in shown)]
    rows = []
    for w, by_cell in figures.items():
        for cell, f in by_cell.items():
            rows.append([w, cell, *(fmt.format(f[k]) if k in f else "-" for _, k, fmt in shown)])
    return header, rows


def aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width text table: the first two columns left-aligned, the numbers right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i < 2 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), *(line(r) for r in rows)])


def print_training_table(figures: dict[str, dict[str, dict[str, Any]]]) -> None:
    rounds = ", ".join(f"{w} {next(iter(c.values()))['rounds']}" for w, c in figures.items())
    print(
        f"training: median over rounds ({rounds}); tokens = batch x time steps (multi30k: real "
        "target tokens); harness = the Lightning Trainer as rnnbench runs it, raw = a plain "
        "PyTorch loop, scratch = raw with impl=scratch, mm = torch.mm fp32"
    )
    print(aligned(*training_rows(figures)), flush=True)


def per_cell(figures: dict, key: str, workload: str = HEADLINE) -> dict[str, float]:
    return {cell: f[key] for cell, f in figures.get(workload, {}).items() if key in f}


def describe(figures: dict, key: str) -> str:
    return "; ".join(
        f"{w} " + ", ".join(f"{cell} {f[key]:.3g}" for cell, f in by_cell.items())
        for w, by_cell in figures.items()
    )


def training_section(
    key: str, goal: float, at_least: bool, cells_judged: Sequence[str] | None = None
) -> Callable[[argparse.Namespace], dict[str, Any]]:
    """A training section: the figure `key` of every workload x cell, judged against `goal`
    (`cells_judged` on the headline workload only, when given)."""

    def section(args: argparse.Namespace) -> dict[str, Any]:
        figures = training(args)
        judged = [
            f[key]
            for w, by_cell in figures.items()
            for cell, f in by_cell.items()
            if cells_judged is None or (w == HEADLINE and cell in cells_judged)
        ]
        ok = all((x >= goal) if at_least else (x <= goal) for x in judged)
        sign = ">=" if at_least else "<="
        scope = f"{'/'.join(cells_judged)} on {HEADLINE}" if cells_judged else "each"
        return {
            "goal": goal,
            "ok": ok,
            "figures": {w: per_cell(figures, key, w) for w in figures},
            "line": f"{key}: {describe(figures, key)} (goal {sign} {goal:g} {scope})"
            + ("" if ok else "  MISSED"),
        }

    return section


def training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workloads",
        metavar="LIST",
        help=f"comma-separated, of {', '.join(WORKLOADS)} (default all; --quick {HEADLINE})",
    )
    p.add_argument("--cells", metavar="LIST", help=f"comma-separated, of {', '.join(CELLS)}")
    p.add_argument(
        "--rounds",
        type=int,
        help="rounds of the training sections (default: per workload, "
        + ", ".join(f"{w} {x.rounds}" for w, x in WORKLOADS.items())
        + "; --quick 2)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="timed steps per contender per round (default: per workload, "
        + ", ".join(f"{w} {x.steps}" for w, x in WORKLOADS.items())
        + "; --quick 2)",
    )


def split_choices(text: str | None, allowed, option: str) -> list[str] | None:
    if text is None:
        return None
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in chosen if x not in allowed]
    if bad or not chosen:
        raise BenchError(f"{option}={text!r}: use a comma-separated list of {', '.join(allowed)}")
    return chosen
