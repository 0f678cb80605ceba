"""The `denormal` section: denormal floats flushed to zero (the harness's default on a CPU)
against kept."""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from rnnbench.bench.contenders import FLUSH_CONTENDERS
from rnnbench.bench.training import (
    HEADLINE,
    TRAINING_OVERRIDES,
    WORKLOADS,
    measure_group,
    median_ratio,
    progress,
    rate,
)
from rnnbench.config import compose
from rnnbench.run.denormals import flush_denormal_everywhere

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
