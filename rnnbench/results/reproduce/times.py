"""Time estimates for recipes not run: a few real steps of a recipe trained here
(`rnnbench-reproduce --time`), scaled to its epochs, kept in `results/recipe_times.csv`."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from rnnbench.config import compose
from rnnbench.outputs import write_text
from rnnbench.results.reproduce.recipes import Recipe

TIMES_FILE = "recipe_times.csv"


def read_times(path: Path) -> dict[str, dict[str, str]]:
    """recipe -> its row of recipe_times.csv (hours, threads, load, command, ...)."""
    if not path.is_file():
        return {}
    with path.open() as f:
        return {row["recipe"]: row for row in csv.DictReader(f)}


def measure_time(recipe: Recipe, steps: int, threads: int | None = None) -> dict[str, Any]:
    """Train `recipe` for `steps` real steps here (the first one's start-up included), on
    `threads` torch threads (None: torch's choice), and scale the time per step by the steps of
    one epoch and the recipe's epochs."""
    # torch and the run layer load only to train a recipe, not for the tables and pages the
    # rest of rnnbench-reproduce makes from records.
    import torch  # lazy: only --time trains
    from hydra.utils import instantiate  # lazy: only --time builds a datamodule

    from rnnbench.run.train import run  # lazy: only --time trains

    if threads is not None:
        torch.set_num_threads(threads)

    overrides = [
        f"experiment={recipe.name}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=0",
        "trainer.limit_test_batches=1",
        "force=true",
    ]
    cfg = compose(overrides)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    per_epoch = len(datamodule.train_dataloader())
    with tempfile.TemporaryDirectory() as tmp:
        record = run(cfg, tmp, overrides)
    timing = record["timing"]
    s_per_step = timing["train_s"] / max(1, timing["steps"])
    epochs = recipe.config["trainer"]["max_epochs"]
    return {
        "recipe": recipe.name,
        "s_per_step": round(s_per_step, 4),
        "steps_per_epoch": per_epoch,
        "epochs": epochs,
        "hours": round(s_per_step * per_epoch * epochs / 3600, 2),
        "threads": record["env"].get("threads") if record.get("env") else "",
        "load": round(os.getloadavg()[0], 1),  # other work on the machine inflates the estimate
        "command": f"rnnbench-reproduce --time {recipe.name} --steps {steps} "
        f"--threads {torch.get_num_threads()}",
    }


def write_times(path: Path, measured: list[dict[str, Any]]) -> None:
    """Merge newly measured estimates into `path` (one row per recipe)."""
    rows = read_times(path) | {m["recipe"]: m for m in measured}
    fields = [
        "recipe", "s_per_step", "steps_per_epoch", "epochs", "hours", "threads", "load", "command"
    ]  # fmt: skip
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows[k] for k in sorted(rows))
    write_text(path, f.getvalue())
