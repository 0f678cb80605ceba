"""Machine, output files: the machine and versions a report names, the figures its last line
leads with, and bench.md and bench.json."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rnnbench.bench.training import WORKLOADS, per_cell, training_rows
from rnnbench.outputs import make_folder, one_line, write_text
from rnnbench.results import table
from rnnbench.results.record import environment


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
