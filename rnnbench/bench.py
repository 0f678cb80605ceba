"""`python -m rnnbench.bench`: timings of rnnbench's own machinery, one named section each.

python -m rnnbench.bench                        # every section
python -m rnnbench.bench aggregate -n 10000     # one section, with its options
python -m rnnbench.bench aggregate --records runs/multirun/2026-11-25/20-35-48

Each section prints one readable line; the last line is one JSON object holding every section's
numbers, for machines. The exit status is 1 when a section misses its goal.

Sections:
  aggregate  read N result.json records into the DataFrame and print the pivot (rnnbench-table's
             path), goal < 3 s for 10,000. The records are copies of real ones, made by the
             harness (a three-run sweep trained here, or --records PATH), with seed, depth,
             metrics and status perturbed, written to a temporary folder first.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rnnbench import table

AGGREGATE_GOAL_S = 3.0
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
TEMPLATE_CELLS = ("rnn", "gru", "lstm")


def train_templates(workdir: Path) -> list[Path]:
    """Train one tiny real run per cell in `workdir`; their result.json paths."""
    from hydra import compose, initialize_config_dir

    from rnnbench.train import CONF_DIR, run

    # Lightning's info lines (checkpoint restored, ...) would bury the one line a section prints.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    paths = []
    for cell in TEMPLATE_CELLS:
        overrides = [*TEMPLATE_OVERRIDES, f"model={cell}"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        run(cfg, workdir / cell, overrides)
        paths.append(workdir / cell / table.RESULT)
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
        (out / table.RESULT).write_text(json.dumps(record))


def aggregate(args: argparse.Namespace) -> dict[str, Any]:
    """Time find + read + DataFrame + pivot + markdown over `args.n` records."""
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
        fan_out(templates, args.n, tmp / "records")

        t0 = time.perf_counter()
        files = table.find_results([tmp / "records"])
        t1 = time.perf_counter()
        rows = table.load_rows([tmp / "records"])
        t2 = time.perf_counter()
        df = table.frame(rows)
        t3 = time.perf_counter()
        view = table.resolve_view(df)
        result = table.build(df, view)
        table.render(result, "md")
        t4 = time.perf_counter()
    total = t4 - t0
    return {
        "records": len(files),
        "templates": len(templates),
        "rows": len(df),
        "cells": len(result.agg),
        "seconds": round(total, 3),
        "find_s": round(t1 - t0, 3),
        "read_s": round(t2 - t1, 3),
        "frame_s": round(t3 - t2, 3),
        "pivot_s": round(t4 - t3, 3),
        "goal_s": AGGREGATE_GOAL_S,
        "ok": total < AGGREGATE_GOAL_S,
        "line": (
            f"aggregate: {len(files):,} records -> DataFrame + pivot in {total:.2f} s "
            f"(goal < {AGGREGATE_GOAL_S:g} s): find {t1 - t0:.2f}, read {t2 - t1:.2f}, "
            f"frame {t3 - t2:.2f}, pivot+render {t4 - t3:.2f}"
        ),
    }


def aggregate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=10_000, help="records to aggregate (default 10000)")
    p.add_argument(
        "--records",
        metavar="PATH",
        help="copy the result.json files under PATH instead of training three tiny runs",
    )


# Name -> (run, add its options). Future sections (training throughput, ...) go here.
SECTIONS: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable]] = {
    "aggregate": (aggregate, aggregate_options),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rnnbench.bench",
        description="Time rnnbench's own machinery. Sections: " + ", ".join(SECTIONS),
    )
    p.add_argument("sections", nargs="*", metavar="SECTION", help="default: all")
    for _, add_options in SECTIONS.values():
        add_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections; returns 1 when one missed its goal."""
    p = parser()
    args = p.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; use {', '.join(SECTIONS)}")
    results = {}
    for name in args.sections or list(SECTIONS):
        results[name] = SECTIONS[name][0](args)
        print(results[name].pop("line"), flush=True)
    print(json.dumps(results))
    return 0 if all(r.get("ok", True) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
