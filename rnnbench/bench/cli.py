"""The command line: the sections by name (SECTIONS), the parser (its help is the package's
docstring), main, and the console entry point `rnnbench-bench`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from rnnbench import bench
from rnnbench.bench.aggregate import aggregate, aggregate_options
from rnnbench.bench.denormal import denormal
from rnnbench.bench.outputs import headline, machine, versions, write_outputs
from rnnbench.bench.packing import pack, pack_options
from rnnbench.bench.sweeps import sweep, sweep_options
from rnnbench.bench.training import (
    HARNESS_GOAL,
    LOADER_GOAL,
    NEEDS,
    PEAK_GOAL,
    PEAK_GOAL_CELLS,
    SCRATCH_GOAL,
    progress,
    training_options,
    training_section,
)
from rnnbench.errors import UserError, find_user_error
from rnnbench.outputs import check_writable_folder, one_line
from rnnbench.run.sweep import threads_per_job

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
        prog=prog, description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
