"""`rnnbench-bench` (also `python -m rnnbench.bench`, `make bench`): how fast rnnbench's own
machinery is, one named section each, the contenders of a comparison measured side by side.

rnnbench-bench                                   # every section, every workload (~10 min, 2 cores)
rnnbench-bench harness peak --workloads ptb_small --cells lstm
rnnbench-bench --quick                           # every section, a few steps each: for tests
rnnbench-bench aggregate -n 10000 --records runs/multirun/2026-11-25/20-35-48

Sections (goals are reported, not enforced: the exit status is 0 unless --strict):
  aggregate  read N result.json records into the DataFrame and print the pivot (rnnbench-table's
             path), goal < 3 s for 10,000 and < 20 s for 100,000 (-n 100000). The records are
             copies of real ones, made by the harness (a three-run sweep trained here, or
             --records PATH), with seed, depth, metrics and status perturbed, written to a
             temporary folder first. Timed twice: the first table reads every record, the
             second (from 1,000 records) takes the rows of the unchanged ones from
             rnnbench-table's row cache, in a temporary folder of its own.
  harness    tokens/s of the training step run through the Lightning Trainer as `rnnbench` runs
             it (its callbacks, the config's logger, the progress bar) over a plain PyTorch loop
             of the same model, data, optimizer and clipping; goal >= 0.97 per cell.
  peak       useful FLOP/s of that step (matmul FLOPs counted from the model's shapes, backward
             = 2 x forward) over torch.mm's fp32 rate on 2048 x 2048 matrices, measured in the
             same rounds; goal >= 0.75 for LSTM and GRU on PTB-small.
  scratch    tokens/s of model.impl=scratch over impl=fused, both in the plain loop; goal >= 0.8.
  loader     the share of the harness's step spent waiting on the DataLoader (its next() timed in
             the plain loop, over the harness's step time); goal <= 0.02.
  sweep      wall time of a four-run `rnnbench -m` sweep with the joblib launcher (2 jobs) over
             the same sweep with the basic launcher: real subprocesses, small runs;
             goal <= 0.75.
  denormal   denormal floats flushed to zero (flush_denormal, the default on a CPU) against kept:
             the PTB-small LSTM in the plain loop, from the same weights over the same batches,
             the two taking turns for 10 rounds of 20 steps; tokens/s flushed over kept and the
             loss at the last step, for a saturating run (SGD lr 20, no clipping) and a normal
             one (the Zaremba small recipe's lr 20, clip 0.25); goal for the normal one: >= 0.95
             and the same loss. The mode is set on every thread torch computes on (its OpenMP
             team too), and put back after.

Workloads (--workloads): ptb_small (PTB words, Zaremba et al.'s small LSTM: 2 x 200, batch 20,
bptt 20), ptb_char (PTB characters, Bai et al.'s LSTM size: 2 x 600) and seq_mnist (sequential
MNIST, 1 x 130); each for every cell of --cells.

The training sections (harness, peak, scratch, loader) share one measurement: for each workload
and cell, the contenders they need are built once and warmed up, then take turns running --steps
steps each for --rounds rounds, the order rotating every round so machine drift hits all alike.
A round's rate is its tokens (batch x time steps) over its seconds, so periodic costs such as
logger writes count; a figure is the median over rounds, a ratio the median of per-round ratios.

Output: a table on stdout, bench.md and bench.json in --out (results/ from the command line),
and as the last line one JSON object: the PTB-small headline figures (harness_vs_raw,
peak_fraction and scratch_vs_fused per cell, loader_share: the largest over cells),
sweep_vs_basic, each section's result under its own name, and every workload x cell's figures
under training_figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch import Tensor, nn

from rnnbench import table
from rnnbench.cells import detach_state
from rnnbench.cellspec import BASE_CELLS, GATED_CELLS
from rnnbench.clipping import clip_global_norm_
from rnnbench.config import check_config, compose
from rnnbench.denormals import flush_denormal_everywhere
from rnnbench.encoder_decoder import EncoderDecoder
from rnnbench.errors import UserError, find_user_error
from rnnbench.lifecycle import finish_wandb
from rnnbench.outputs import check_writable_folder, make_folder, one_line, write_text
from rnnbench.pack import build_pack, seed_members
from rnnbench.record import RECORD_FILE, environment, iter_records, new_record
from rnnbench.sweep import threads_per_job
from rnnbench.train import build_training, run

# (records up to, seconds): the issue's goals for a table at search scale.
AGGREGATE_GOALS = ((10_000, 3.0), (100_000, 20.0))
# The sweep `aggregate` trains when it is given no records: three cells, tiny and one epoch.
TEMPLATE_OVERRIDES = [
    "logger=none",
    "trainer.enable_progress_bar=false",
    "data.train_strings=200",
    "data.valid_strings=40",
    "data.test_strings=40",
    "model.hidden_size=16",
    "model.num_layers=1",
    "trainer.max_epochs=1",
]
TEMPLATE_CELLS = BASE_CELLS  # one template run per kind of cell

HARNESS_GOAL = 0.97
PEAK_GOAL = 0.75
PEAK_GOAL_CELLS = GATED_CELLS
SCRATCH_GOAL = 0.8
LOADER_GOAL = 0.02
SWEEP_GOAL = 0.75
MATMUL_SIZE = 2048


class BenchError(UserError):
    """A benchmark that cannot run (missing data, a failed sweep): one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# aggregate


def train_templates(workdir: Path) -> list[Path]:
    """Train one tiny real run per cell in `workdir`; their result.json paths."""

    paths = []
    for cell in TEMPLATE_CELLS:
        overrides = [*TEMPLATE_OVERRIDES, f"model={cell}"]
        run(compose(overrides), workdir / cell, overrides)
        paths.append(workdir / cell / RECORD_FILE)
    return paths


def fan_out(templates: Sequence[dict[str, Any]], n: int, dest: Path, seed: int = 0) -> None:
    """Write `n` records to `dest/<i>/result.json`, each a template with its seed (unique),
    depth (1-4), metrics (±2 %) and status (1 in 50 diverged, 1 in 100 failed) changed."""
    rng = random.Random(seed)
    k = len(templates)
    for i in range(n):
        record = copy.deepcopy(templates[i % k])
        config = record["config"]
        config["model"]["num_layers"] = 1 + (i // k) % 4
        record["seed"] = config["seed"] = 1000 + i
        record["metrics"] = {m: v * (1 + rng.gauss(0, 0.02)) for m, v in record["metrics"].items()}
        roll = rng.random()
        if roll < 0.02:
            record["status"] = "diverged"
            record["metrics"] = {m: float("nan") for m in record["metrics"]}
        elif roll < 0.03:
            record["status"], record["metrics"] = "failed", {}
        out = dest / str(i)
        out.mkdir(parents=True)
        record["run_dir"] = str(out)
        (out / RECORD_FILE).write_text(json.dumps(record))


def aggregate_goal(n: int) -> float | None:
    """The issue's goal for a table over `n` records: < 3 s up to 10,000, < 20 s up to 100,000."""
    return next((goal for size, goal in AGGREGATE_GOALS if n <= size), None)


@contextlib.contextmanager
def table_cache(folder: Path) -> Iterator[None]:
    """rnnbench-table's row cache in `folder` for a while: the bench's records never meet the
    user's cache, and its first table finds none."""
    before = os.environ.get(table.CACHE_ENV)
    os.environ[table.CACHE_ENV] = str(folder)
    try:
        yield
    finally:
        if before is None:
            del os.environ[table.CACHE_ENV]
        else:
            os.environ[table.CACHE_ENV] = before


def time_table(folder: Path) -> tuple[dict[str, float], pd.DataFrame, table.Result]:
    """rnnbench-table's path over `folder`, timed: read (finding the records, then reading
    them), the DataFrame, then the view, the pivot and its markdown."""
    t0 = time.perf_counter()
    rows = table.load_rows([folder])
    t1 = time.perf_counter()
    df = table.frame(rows)
    t2 = time.perf_counter()
    result = table.build(df, table.resolve_view(df))
    table.render(result, "md")
    t3 = time.perf_counter()
    times = {"seconds": t3 - t0, "read_s": t1 - t0, "frame_s": t2 - t1, "pivot_s": t3 - t2}
    return {k: round(v, 3) for k, v in times.items()}, df, result


def aggregate(args: argparse.Namespace) -> dict[str, Any]:
    """Time read + DataFrame + pivot + markdown over `args.n` records: the first table over
    them (every record read), then the same table again (the rows of unchanged records from
    rnnbench-table's cache, over table.CACHE_MIN_RECORDS records)."""
    n = args.n or (300 if args.quick else 10_000)
    goal = aggregate_goal(n)
    with tempfile.TemporaryDirectory(prefix="rnnbench-bench-") as tmp:
        tmp = Path(tmp)
        if args.records:
            sources = table.find_results([args.records])
        else:
            sources = train_templates(tmp / "templates")
        templates = [json.loads(p.read_text()) for p in sources]
        templates = [r for r in templates if r.get("status") == "completed"]
        if not templates:
            raise table.TableError(f"no completed result.json to copy under {args.records}")
        records = tmp / "records"
        fan_out(templates, n, records)
        if n >= table.CACHE_MIN_RECORDS:
            # The last records written settle, so that the first table keeps every row.
            time.sleep(table.SETTLED_NS / 1e9)

        t0 = time.perf_counter()
        files = table.find_results([records])
        find_s = round(time.perf_counter() - t0, 3)
        with table_cache(tmp / "cache"):
            first, df, result = time_table(records)
            again, _, _ = time_table(records)
    total, warm = first["seconds"], again["seconds"]
    ok = goal is None or total < goal
    judged = "no goal" if goal is None else f"goal < {goal:g} s"
    return {
        "records": len(files),
        "templates": len(templates),
        "rows": len(df),
        "cells": len(result.agg),
        **first,
        "find_s": find_s,
        "again": again,
        "cached": n >= table.CACHE_MIN_RECORDS,
        "goal_s": goal,
        "ok": ok,
        "ok_again": goal is None or warm < goal,
        "line": (
            f"aggregate: {len(files):,} records -> DataFrame + pivot in {total:.2f} s, "
            f"{warm:.2f} s again{' (rows cached)' if n >= table.CACHE_MIN_RECORDS else ''} "
            f"({judged}): read {first['read_s']:.2f} (finding them {find_s:.2f}), "
            f"frame {first['frame_s']:.2f}, pivot+render {first['pivot_s']:.2f}; again: read "
            f"{again['read_s']:.2f}, frame {again['frame_s']:.2f}, pivot+render "
            f"{again['pivot_s']:.2f}" + ("" if ok else "  MISSED")
        ),
    }


def aggregate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-n", type=int, default=None, help="records to aggregate (default 10000, --quick 300)"
    )
    p.add_argument(
        "--records",
        metavar="PATH",
        help="copy the result.json files under PATH instead of training three tiny runs",
    )


# ---------------------------------------------------------------------------------------------
# Useful FLOPs


def forward_flops(model: nn.Module, batch: int, steps: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward pass of a `SequenceModel` over a batch of
    `batch` sequences of `steps` time steps, from its parameter shapes: every layer's and
    direction's input and recurrent gate matmuls at every step, and the head at every step
    (readout "all") or once per sequence ("last"). The embedding is a lookup: no FLOPs.
    Biases and the gates' elementwise arithmetic are not counted."""
    tokens = batch * steps
    gates = sum(
        p.numel()
        for name, p in model.stack.rnn.named_parameters()
        if name.startswith(("weight_ih", "weight_hh"))
    )
    head_rows = tokens if model.readout == "all" else batch
    return 2 * tokens * gates + 2 * head_rows * model.head.weight.numel()


def train_step_flops(model: nn.Module, batch: int, steps: int) -> int:
    """Useful FLOPs of one training step: forward, and backward counted as 2 x forward (a
    gradient for each matmul's input and one for its weight)."""
    return 3 * forward_flops(model, batch, steps)


def gate_weights(stack: nn.Module) -> int:
    return sum(
        p.numel()
        for name, p in stack.rnn.named_parameters()
        if name.startswith(("weight_ih", "weight_hh"))
    )


def step_work(model: nn.Module, batch: dict[str, Tensor]) -> tuple[int, int]:
    """What one training step on `batch` computes: (tokens, useful FLOPs). A sequence model's
    tokens are its batch x time steps; an encoder-decoder's are the real target tokens it
    predicts, its FLOPs the encoder's gates over the real source tokens and the decoder's gates
    and output layer over the real target tokens (attention is not counted)."""

    if not isinstance(model, EncoderDecoder):
        b, t = batch["x"].shape[:2]
        return b * t, train_step_flops(model, b, t)
    source, target = int(batch["lengths"].sum()), int(batch["tgt_lengths"].sum())
    forward = 2 * source * gate_weights(model.encoder) + 2 * target * (
        gate_weights(model.decoder) + model.head.weight.numel()
    )
    return target, 3 * forward


# ---------------------------------------------------------------------------------------------
# Contenders: each runs `steps` training steps (or matmuls) and returns one Sample per step.


class Sample(NamedTuple):
    seconds: float
    tokens: int  # batch x time steps (an encoder-decoder: real target tokens)
    flops: int
    fetch_s: float = 0.0  # of `seconds`, spent in the DataLoader's next()
    loss: float | None = None  # the plain loop's last step of a run: its loss


class StepClock(pl.Callback):
    """Timestamps every training batch start: the time from one start to the next is a whole
    step of the loop as the Trainer runs it (step, callbacks, logger, progress bar, fetch)."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append((time.perf_counter(), step_work(pl_module.model, batch)))

    def take(self, model: nn.Module) -> list[Sample]:
        """The steps between the starts recorded since the last call."""
        starts, self.starts = self.starts, []
        return [
            Sample(t1 - t0, *work) for (t0, work), (t1, _) in zip(starts, starts[1:], strict=False)
        ]


class LightningHarness:
    """The training step as `rnnbench` runs it: rnnbench's task module, callbacks and loggers
    in the Trainer the config describes. Each `run` is one more `Trainer.fit` (an epoch, to
    Lightning) that stops `steps + 1` batches later, so setup, the epoch's start and end hooks
    and teardown stay out of the timed steps."""

    name = "harness"

    def __init__(self, cfg, datamodule, run_dir: Path) -> None:

        # As rnnbench.train.run() builds a run, with run()'s own callbacks and loggers.
        run_dir.mkdir(parents=True, exist_ok=True)
        check_config(cfg)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        self.record = new_record(OmegaConf.to_container(cfg, resolve=True), run_dir)
        self.loggers: list = []
        self.clock = StepClock()
        built = build_training(
            cfg, run_dir, self.record, datamodule, self.loggers, extra_callbacks=[self.clock]
        )
        self.model, self.task, self.trainer = built.model, built.task, built.trainer
        self.datamodule = datamodule

    def run(self, steps: int) -> list[Sample]:
        # Lightning counts every fit as one more epoch: lift the epoch limit, set the step limit.
        self.trainer.fit_loop.max_epochs = -1
        self.trainer.fit_loop.epoch_loop.max_steps = self.trainer.global_step + steps + 1
        # The progress bar draws as always; its text goes to stderr so stdout stays a report.
        with contextlib.redirect_stdout(sys.stderr):
            self.trainer.fit(self.task, datamodule=self.datamodule)
        samples = self.clock.take(self.model)
        if len(samples) != steps:
            raise RuntimeError(
                f"the Trainer stopped after {len(samples) + 1} of {steps + 1} batches "
                f"(diverged: {self.task.diverged})"
            )
        return samples

    def close(self) -> None:

        finish_wandb(self.loggers, self.record)


class PackHarness(LightningHarness):
    """K seeds of the same run as one packed run (`pack=K`, rnnbench.pack) in the Trainer:
    every member's step is in each timed step."""

    def __init__(self, cfg, datamodule, run_dir: Path, size: int) -> None:

        self.name = f"pack{size}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.pack = size
        members = seed_members(cfg, run_dir, [])
        for m in members:
            m.run_dir.mkdir(parents=True, exist_ok=True)
        self.clock = StepClock()
        built = build_pack(members, datamodule, run_dir, extra_callbacks=[self.clock])
        self.task, self.trainer = built.task, built.trainer
        self.model, self.datamodule = built.task.model, datamodule

    def close(self) -> None:
        pass


class PlainLoop:
    """The same step as a plain PyTorch loop: the model built from the same config and seed,
    the datamodule's own training DataLoader, the config's optimizer and the same clipping,
    g <- min(1, θ/‖g‖) g (the harness's own clip_global_norm_); nothing else."""

    def __init__(self, cfg, datamodule, name: str = "raw") -> None:

        self.name = name
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        self.model = instantiate(cfg.model, **datamodule.model_io()).train()
        self.params = list(self.model.parameters())
        self.optimizer = instantiate(cfg.optim)(self.params)
        self.clip = cfg.trainer.get("gradient_clip_val")
        losses = {
            "lm": self.carried_state_loss,
            "classify": self.sequence_loss,
            "translate": self.pair_loss,
            "summarize": self.pair_loss,
        }
        if datamodule.task not in losses:
            raise BenchError(f"no plain loop for task {datamodule.task!r}: use {sorted(losses)}")
        self.kind, self.loss = datamodule.kind, losses[datamodule.task]
        self.loader = datamodule.train_dataloader()
        self.batches = iter(self.loader)
        self.state = None

    def carried_state_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The kind's loss, the state carried (detached) from the previous window, as the
        language-model task does."""

        logits, self.state = self.model(batch["x"], detach_state(self.state))
        return self.kind.loss(logits, batch)

    def sequence_loss(self, batch: dict[str, Tensor]) -> Tensor:
        logits, _ = self.model(batch["x"], lengths=batch.get("lengths"))
        return self.kind.loss(logits, batch)

    def pair_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The encoder-decoder's loss on the reference target, as the translation task's."""
        logits = self.model(batch["x"], batch["lengths"], batch["tgt_in"], batch["tgt_lengths"])
        return self.kind.loss(logits, batch)

    def next_batch(self) -> dict[str, Tensor]:
        try:
            return next(self.batches)
        except StopIteration:  # a new epoch: the state starts from zero, as in the harness
            self.batches, self.state = iter(self.loader), None
            return next(self.batches)

    def run(self, steps: int) -> list[Sample]:
        samples = []
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = self.next_batch()
            t1 = time.perf_counter()
            loss = self.loss(batch)
            self.optimizer.zero_grad()
            loss.backward()
            clip_global_norm_(self.params, self.clip)
            self.optimizer.step()
            t2 = time.perf_counter()
            samples.append(Sample(t2 - t0, *step_work(self.model, batch), t1 - t0))
        if samples:  # read once the timing is done: a tensor kept would keep its step's memory
            samples[-1] = samples[-1]._replace(loss=float(loss.detach()))
        return samples

    def close(self) -> None:
        pass


class Matmul:
    """The machine's fp32 matmul rate: torch.mm on two n x n matrices, one sample per product,
    at most `repeats` products a round (a product is far longer than a training step)."""

    name = "mm"
    repeats = 3

    def __init__(self, n: int = MATMUL_SIZE) -> None:
        generator = torch.Generator().manual_seed(0)
        self.a, self.b = torch.randn(2, n, n, generator=generator).unbind(0)
        self.out = torch.empty(n, n)

    def run(self, steps: int) -> list[Sample]:
        samples = []
        flops = 2 * self.a.size(0) ** 3
        for _ in range(min(steps, self.repeats)):
            t0 = time.perf_counter()
            torch.mm(self.a, self.b, out=self.out)
            samples.append(Sample(time.perf_counter() - t0, 0, flops))
        return samples

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Training measurement: workloads x cells, contenders in rounds


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


# ---------------------------------------------------------------------------------------------
# sweep

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


# ---------------------------------------------------------------------------------------------
# Machine, output files, command line


# ---------------------------------------------------------------------------------------------
# Packed runs: K seeds trained as one packed model against K lone runs one after another

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
# The issue's goals: K seeds packed in at most this many times one lone run's time.
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


# ---------------------------------------------------------------------------------------------
# denormal: denormal floats flushed to zero (the harness's default on a CPU) against kept

# The PTB-small LSTM, two ways: lr 20 and clip 0.25 are the Zaremba small recipe's (for its
# per-token mean loss: their lr 1, clip 5); without the clipping the cells saturate and the
# gradients through them go denormal (issue 35, item 9).
DENORMAL_RUNS = {
    "saturating": "SGD lr 20, no clipping",
    "normal": "SGD lr 20, clip 0.25 (the Zaremba small recipe's)",
}
DENORMAL_OVERRIDES = {"saturating": ("trainer.gradient_clip_val=null",), "normal": ()}
# A normal run flushing reaches at least this share of its speed not flushing (noise aside),
# and ends at the same loss (relative difference).
DENORMAL_GOAL = 0.95
DENORMAL_LOSS_RTOL = 1e-4
DENORMAL_STEPS, DENORMAL_ROUNDS = 20, 10  # 200 steps each way, as the issue measured
FLUSH_CONTENDERS = {"flush_on": True, "flush_off": False}


class FlushingLoop(PlainLoop):
    """The plain loop run with denormals flushed to zero (`on`) or kept, on every thread."""

    def __init__(self, cfg, datamodule, on: bool) -> None:
        super().__init__(cfg, datamodule, name="flush_on" if on else "flush_off")
        self.on = on

    def run(self, steps: int) -> list[Sample]:
        if not flush_denormal_everywhere(self.on):
            raise BenchError("denormal: the flushing mode did not reach every torch thread")
        return super().run(steps)


def denormal(args: argparse.Namespace) -> dict[str, Any]:
    """Per run of DENORMAL_RUNS: the PTB-small LSTM in the plain loop twice, from the same
    weights over the same batches, one flushing denormals to zero and one keeping them, taking
    turns for rounds of steps (measure_group); tokens/s of each, flushing over keeping (the
    median of per-round ratios), and the loss of the last step, the same batch both ways.
    Where the mode cannot reach torch's OpenMP team, torch computes on this thread alone."""
    steps = args.steps or (1 if args.quick else DENORMAL_STEPS)
    rounds = args.rounds or (2 if args.quick else DENORMAL_ROUNDS)
    warmup = 0 if args.quick else 1  # --quick shows the figures' shape, not the speed
    base = ["model=lstm", *WORKLOADS[HEADLINE].overrides, *TRAINING_OVERRIDES]
    before = bool(torch.full((1,), 1e-39) * 1.0 == 0)  # this thread's mode, to put back
    threads = torch.get_num_threads()
    figures: dict[str, Any] = {}
    try:
        if not (flush_denormal_everywhere(True) and flush_denormal_everywhere(False)):
            torch.set_num_threads(1)
        datamodule = instantiate(compose(base).data)
        datamodule.setup("fit")
        with tempfile.TemporaryDirectory(prefix="rnnbench-bench-") as tmp:
            for name, title in DENORMAL_RUNS.items():
                progress(f"denormal {name} ({title}): flush on/off x {rounds} rounds x {steps}")
                cfg = compose([*base, *DENORMAL_OVERRIDES[name]])
                samples = measure_group(
                    cfg, datamodule, list(FLUSH_CONTENDERS), rounds, steps, warmup, Path(tmp)
                )
                on, off = samples["flush_on"], samples["flush_off"]
                loss_on, loss_off = float(on[-1][-1].loss), float(off[-1][-1].loss)
                figures[name] = {
                    "on_tok_s": round(statistics.median(rate(r, "tokens") for r in on), 1),
                    "off_tok_s": round(statistics.median(rate(r, "tokens") for r in off), 1),
                    "on_vs_off": round(median_ratio(on, off, "tokens"), 4),
                    "on_vs_off_rounds": [
                        round(rate(a, "tokens") / rate(b, "tokens"), 3)
                        for a, b in zip(on, off, strict=True)
                    ],
                    "loss_on": loss_on,
                    "loss_off": loss_off,
                    "steps": warmup + rounds * steps,
                }
        used = torch.get_num_threads()
    finally:
        flush_denormal_everywhere(before)
        torch.set_num_threads(threads)
    normal = figures["normal"]
    same_loss = math.isclose(normal["loss_on"], normal["loss_off"], rel_tol=DENORMAL_LOSS_RTOL)
    ok = normal["on_vs_off"] >= DENORMAL_GOAL and same_loss
    parts = [
        f"{name} {f['on_vs_off']:.2f} x ({f['on_tok_s']:,.0f} vs {f['off_tok_s']:,.0f} tok/s), "
        f"loss {f['loss_on']:.4g} vs {f['loss_off']:.4g}"
        for name, f in figures.items()
    ]
    return {
        "goal": DENORMAL_GOAL,
        "ok": ok,
        "threads": used,
        "figures": figures,
        "line": (
            f"denormal: flushed over kept, PTB-small LSTM, plain loop, {used} "
            f"thread(s), {rounds} rounds x {steps} steps: {'; '.join(parts)} (goal: normal >= "
            f"{DENORMAL_GOAL:g} x, the same loss)" + ("" if ok else "  MISSED")
        ),
    }


def machine() -> dict[str, Any]:
    """The CPU, the cores this process may use, torch's threads, and the load around it."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "cores_usable": cores,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, Any]:

    env = environment("cpu")
    return {k: env[k] for k in ("python", "torch", "pytorch_lightning", "hydra", "rnnbench")} | {
        "git_sha": env["git_sha"],
        "platform": platform.platform(),
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the last line leads with: PTB-small per cell, the loader, the sweep."""
    figures = results.get("training_figures", {})
    out: dict[str, Any] = {}
    for key in ("harness_vs_raw", "peak_fraction", "scratch_vs_fused"):
        if per_cell(figures, key):
            out[key] = per_cell(figures, key)
    shares = per_cell(figures, "loader_share")
    if shares:
        out["loader_share"] = max(shares.values())
    if "sweep" in results:
        out["sweep_vs_basic"] = results["sweep"]["joblib_vs_basic"]
    return out


LEGEND = (
    "harness: the training step in the Lightning Trainer as `rnnbench` runs it (callbacks, "
    "logger, progress bar); raw: the same model, data, optimizer and clipping in a plain PyTorch "
    "loop; scratch: raw with model.impl=scratch. Tokens = batch x time steps (multi30k: the real "
    "target tokens), the rate of a round "
    "is its tokens over its seconds, each figure the median over rounds. Peak fraction: the "
    "harness's useful FLOP/s (matmul FLOPs from the model's shapes, backward = 2 x forward) over "
    "torch.mm's fp32 rate on 2048 x 2048 matrices in the same rounds. Loader share: the "
    "DataLoader's next() over the harness's step time."
)


def code_span(text: str) -> str:
    """`text` as one markdown code span: fenced by more backticks than any run inside it."""
    text = one_line(text)
    longest = current = 0
    for ch in text:
        current = current + 1 if ch == "`" else 0
        longest = max(longest, current)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def write_outputs(out: Path, report: dict[str, Any], lines: Sequence[str]) -> None:
    """bench.json (everything) and bench.md (the command first, as rnnbench-table writes it,
    then the machine, the training table and every section's line). OutputError when the
    folder or a file in it cannot be written; a file is never left half written."""
    make_folder(out, "--out")
    write_text(out / "bench.json", json.dumps(report, indent=2) + "\n")
    m, v = report["machine"], report["versions"]
    facts = [
        f"- command: {code_span(report['command'])}",
        f"- machine: {m['cpu']} ({m['cpu_capability']}), {m['cores_usable']} usable cores of "
        f"{m['logical_cpus']}, torch threads {m['torch_threads']}; load average "
        f"{m['load_average_start'][0]} at the start, {m['load_average_end'][0]} at the end",
        "- versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
        f"- date: {report['date']}",
    ]
    command = table.COMMENT["md"](report["command"])
    text = [command, "", "# rnnbench benchmark", "", *facts, ""]
    figures = report.get("training_figures")
    if figures:
        header, rows = training_rows(figures)
        body = [[table.Cell(str(c)) for c in r] for r in rows]
        text += ["## Training", "", table.render_md(table.Table("", header, body, [], 2)), ""]
        text += [f"- {w}: {WORKLOADS[w].title}" for w in figures] + [""]
        text += [LEGEND, ""]
    text += ["## Sections", "", *(f"- {line}" for line in lines), ""]
    write_text(out / "bench.md", "\n".join(text))


# Name -> (run, add its options). Every section returns its figures, "ok" and one "line".
SECTIONS: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable]] = {
    "aggregate": (aggregate, aggregate_options),
    "harness": (training_section("harness_vs_raw", HARNESS_GOAL, True), training_options),
    "peak": (training_section("peak_fraction", PEAK_GOAL, True, PEAK_GOAL_CELLS), lambda p: None),
    "scratch": (training_section("scratch_vs_fused", SCRATCH_GOAL, True), lambda p: None),
    "loader": (training_section("loader_share", LOADER_GOAL, False), lambda p: None),
    "sweep": (sweep, sweep_options),
    "pack": (pack, pack_options),
    "denormal": (denormal, lambda p: None),
}


def parser(prog: str, default_out: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sections", nargs="*", metavar="SECTION", help="default: all")
    p.add_argument("--quick", action="store_true", help="a few steps of everything (for tests)")
    p.add_argument(
        "--out",
        default=default_out,
        metavar="DIR",
        help="write bench.md and bench.json here"
        + (f" (default {default_out})" if default_out else ""),
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a section misses its goal")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: as `rnnbench` sets them for one job, one per core)",
    )
    for _, add_options in SECTIONS.values():
        add_options(p)
    return p


def main(
    argv: Sequence[str] | None = None,
    prog: str = "python -m rnnbench.bench",
    default_out: str | None = None,
) -> int:
    """Run the chosen sections; returns 2 when one cannot run, 1 when one missed its goal
    under --strict, else 0. The last line printed is the JSON object of every figure."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser(prog, default_out)
    args = p.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; use {', '.join(SECTIONS)}")
    args.selected = args.sections or list(SECTIONS)
    problem = args.out and check_writable_folder(args.out, "--out")
    if problem:  # before minutes of measuring
        print(f"rnnbench-bench: error: {one_line(problem)}", file=sys.stderr)
        return 2
    # Lightning's info lines (checkpoint restored, ...) would bury the lines a section prints.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    if args.threads or any(s in NEEDS or s == "denormal" for s in args.selected):
        torch.set_num_threads(args.threads or threads_per_job(1))
    host = machine()
    results: dict[str, Any] = {}
    lines = []
    try:
        for name in args.selected:
            results[name] = SECTIONS[name][0](args)
            lines.append(results[name].pop("line"))
            print(lines[-1], flush=True)
    except Exception as e:
        user = find_user_error(e)
        if user is None:
            raise
        print(f"rnnbench-bench: error: {one_line(str(user))}", file=sys.stderr)
        return 2
    host["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if getattr(args, "training_figures", None):
        results["training_figures"] = args.training_figures
    ok = all(r.get("ok", True) for r in results.values() if isinstance(r, dict))
    final = {**headline(results), **results, "ok": ok, "machine": host}
    if args.out:
        report = {
            "command": f"{prog} {shlex.join(argv)}".strip(),  # prog may be "python -m ..."
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            **final,
        }
        try:
            write_outputs(Path(args.out), report, lines)
        except UserError as e:
            print(f"rnnbench-bench: error: {one_line(str(e))}", file=sys.stderr)
            return 2
        progress(f"wrote {Path(args.out) / 'bench.md'} and bench.json")
    print(json.dumps(final))
    return 1 if args.strict and not ok else 0


def cli() -> None:
    """Console entry point (`rnnbench-bench`): writes results/bench.md and results/bench.json."""
    sys.exit(main(prog="rnnbench-bench", default_out="results"))
