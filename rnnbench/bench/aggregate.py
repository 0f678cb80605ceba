"""Tables at scale, the `aggregate` section: rnnbench-table's path (read, DataFrame, pivot,
markdown) timed over thousands of copies of real records."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rnnbench.cellspec import BASE_CELLS
from rnnbench.config import compose
from rnnbench.results import table
from rnnbench.results.record import RECORD_FILE
from rnnbench.run.train import run

# (records up to, seconds): the goals for a table at search scale.
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
