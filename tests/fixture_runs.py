"""Run folders as the harness leaves them, with chosen numbers instead of training.

Tests of what reads records (`rnnbench-table`, `rnnbench-report`, bench's aggregate) need runs
whose numbers they know, not runs that take minutes to train. `write_run` makes one: the REAL
configuration `rnnbench OVERRIDES` would run (`rnnbench.config.compose`, checked with
`check_config`), the record the harness starts from (`rnnbench.results.record.new_record`: schema,
run_key, config, overrides, seed, started), filled the way `rnnbench.run.train.run` fills it for a
run of that task kind and status, and written through `rnnbench.results.record`: result.json
(`write_json_atomic`), the epoch rows (METRICS_FILE), the step trace (STEPS_FILE, STEPS_COLUMNS)
and the run_key file a run that started training leaves (`claim_run_folder`).

    write_run(tmp / "a", ["model=gru", "model.num_layers=2"], test=6.8)   # test/ppl 6.8
    write_run(tmp / "b", ["data=ptb_char"], test=1.41)                   # test/bpc 1.41
    write_run(tmp / "c", ["model=rnn_relu"], status="diverged")
    write_run(tmp / "d", ["model.bidirectional=true"], status="failed", error="...")
    write_sweep(tmp / "sweep", {"model": ["rnn", "lstm"], "model.num_layers": [1, 2]},
                numbers=lambda job: {"test": 7.0 if job["model"] == "rnn" else 6.5})
    reuse_run(tmp / "e", ["model=gru", "model.num_layers=2"], results_root=tmp)

Numbers are given in the run's headline metric (test/ppl, test/bpc, test/acc, test/mse...): the
task kind and unit come from the configured dataset class (its `task`, and `data.unit`), not
from training, and the other metrics of that kind follow from the loss as the task modules
derive them (ppl = exp(loss), bpc = loss / ln 2, mse = loss, nll = loss). Accuracy and MAE are
not functions of the loss in a real run; here they are stand-ins (acc = exp(-loss),
mae = sqrt(loss)) so that one number fixes them all.

What is not real: the numbers, the parameter count when not given (a formula from the config's
sizes), the timing. Nothing trains, nothing is checkpointed, no W&B run is made: tests whose
behaviour needs those (the W&B rows, the gradient-flow callback) train a real tiny run.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import OmegaConf

from rnnbench.cellspec import CELL_SPECS
from rnnbench.config import check_config, compose
from rnnbench.results.record import (
    METRICS_FILE,
    RECORD_FILE,
    STEPS_COLUMNS,
    STEPS_FILE,
    Record,
    Status,
    check_run_folder,
    claim_run_folder,
    environment,
    new_record,
    now_iso,
    write_json_atomic,
)
from rnnbench.run.lifecycle import reuse
from rnnbench.run.train import best_epoch
from rnnbench.tasks import KINDS

__all__ = ["MixedRuns", "headline_of", "reuse_run", "write_mixed_runs", "write_run", "write_sweep"]

LN2 = math.log(2.0)
# A dataset's reference numbers (rnnbench.data.*.reference_metrics), by data.name: what a real
# run of it records beside its own metrics. Reber's are its exact optimal perplexities.
REFERENCE_METRICS: dict[str, dict[str, float]] = {
    "reber": {"val/ppl_optimal": 1.4662, "test/ppl_optimal": 1.4983},
}
# metric name -> the loss that gives it (the inverse of `split_metrics`)
LOSS_OF: dict[str, Callable[[float], float]] = {
    "loss": lambda v: v,
    "ppl": math.log,
    "bpc": lambda v: v * LN2,
    "mse": lambda v: v,
    "nll": lambda v: v,
    "acc": lambda v: -math.log(v),
    "mae": lambda v: v * v,
}


def headline_of(config: Mapping[str, Any]) -> tuple[str, str, str]:
    """(task kind, unit, headline metric) of a resolved config, as its run would record them:
    the dataset class's `task`, the `data.unit` (or the class's), the kind's headline."""
    data = config["data"]
    cls = get_class(data["_target_"])
    unit = data.get("unit", cls.unit)
    return cls.task, unit, KINDS[cls.task].headline_metric(unit)


def split_metrics(task: str, unit: str, loss: float) -> dict[str, float]:
    """The metrics one split of a `task` run records for mean loss `loss` (without the split
    prefix), as rnnbench.run.module's task modules derive them."""
    if task == "lm":
        out = {"loss": loss, "ppl": math.exp(loss)}
        return out | ({"bpc": loss / LN2} if unit == "char" else {})
    if task == "classify":
        return {"loss": loss, "acc": math.exp(-loss)}  # acc: a stand-in
    if task == "regress":
        return {"loss": loss, "mse": loss, "mae": math.sqrt(loss)}  # mae: a stand-in
    if task == "multilabel":
        return {"loss": loss, "nll": loss}
    if task == "steps":
        return {"loss": loss}
    raise ValueError(f"unknown task kind {task!r}: one of {', '.join(KINDS)}")


def prefixed(split: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{split}/{k}": v for k, v in metrics.items()}


def param_count(model: Mapping[str, Any]) -> int:
    """A stand-in for the model's parameter count, from the config's sizes (input width taken
    as emb_size, else hidden_size): grows with the cell's gates, depth, width and direction."""
    h, layers = model["hidden_size"], model["num_layers"]
    width, directions = model.get("emb_size") or h, 2 if model.get("bidirectional") else 1
    gates = CELL_SPECS[model["cell"]].gates if model["cell"] in CELL_SPECS else 1
    per_layer = [gates * h * (w + h + 2) for w in [width] + [h] * layers]
    return directions * sum(per_layer[:layers]) + (h + 1) * width


def write_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    test: float | None = None,
    val: Sequence[float] | None = None,
    status: Status = "completed",
    steps_per_epoch: int = 4,
    grad_norm: float | Sequence[float] = 1.0,
    train_s: float | None = None,
    items_per_step: int = 500,
    params: int | None = None,
    metrics: Mapping[str, float] | None = None,
    error: str | None = None,
    epochs_file: bool = True,
    steps_file: bool = True,
    device: str = "cpu",
) -> Record:
    """Write the run folder `run_dir` of the configuration `rnnbench OVERRIDES` would run, with
    chosen numbers; returns its record.

    test: the test value of the run's headline metric (test/ppl for word-level text, test/bpc
        for character-level, test/acc, test/mse, ...); default: the best validation value.
    val: the validation value of that metric after each epoch (metrics.csv has one row per
        value, and the record's `best` is the lowest val/loss, picked by the harness's own
        `best_epoch`); default: trainer.max_epochs values falling to about `test`.
    status: "completed"; "diverged" (the last epoch's metrics are NaN, the trace stops before
        the non-finite step, the test is NaN unless an earlier epoch was the best); "failed"
        (with `error`; by default it failed before training: no metrics, params, env or files,
        as a refused model does; give `val` for one that failed after those epochs);
        "interrupted" (the epochs of `val` ran, nothing was tested or timed).
    grad_norm: the pre-clip gradient norm of steps.csv: one float (a trace falling to it) or one
        value per step (len(val) * steps_per_epoch); `clipped` follows
        trainer.gradient_clip_val as the trace callback's does.
    metrics: merged into the record's metrics last (a dataset's reference numbers, a value to
        set exactly); Reber runs get Reber's optimal perplexities unless given.
    epochs_file, steps_file: write metrics.csv, steps.csv (a run made with ~callbacks.trace,
        or before ~callbacks.epochs was refused, has none).

    Refused, as the harness refuses them, before anything is written: a config check_config
    rejects, and a `run_dir` holding another configuration's run.
    """
    run_dir = Path(run_dir).resolve()
    overrides = list(overrides)
    cfg = compose(overrides)
    check_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    record = new_record(config, run_dir, overrides)
    check_run_folder(run_dir, record["run_key"])
    run_dir.mkdir(parents=True, exist_ok=True)

    task, unit, headline = headline_of(config)
    name = headline.split("/", 1)[1]
    record["task"], record["headline"] = task, headline
    to_loss = LOSS_OF[name]

    trained = status in ("completed", "diverged") or val is not None
    if val is None and trained:
        epochs = max(1, int(config["trainer"]["max_epochs"]))
        end = to_loss(test) * 1.02 if test is not None else 1.0
        val_losses = [end * (1 + 0.15 * (epochs - 1 - e) / epochs) for e in range(epochs)]
    else:
        val_losses = [to_loss(v) for v in val or ()]
    if status == "diverged" and val_losses:
        val_losses[-1] = math.nan

    rows = []
    lr = config["optim"].get("lr", math.nan)
    for epoch, loss in enumerate(val_losses):
        train_loss = loss * 0.98 + 0.02
        row = {"epoch": epoch, "step": (epoch + 1) * steps_per_epoch}
        split = prefixed("train", split_metrics(task, unit, train_loss))
        split |= prefixed("val", split_metrics(task, unit, loss))
        if val is not None and math.isfinite(loss):
            split[f"val/{name}"] = val[epoch]  # the number given, not exp(log(it))
        rows.append(row | dict(sorted(split.items())) | {"lr": lr})

    if trained:
        record["params"] = params if params is not None else param_count(config["model"])
        record["env"] = environment(device)
        claim_run_folder(run_dir, record["run_key"])  # as a run does when it starts training
    if rows and epochs_file:
        write_epochs(run_dir / METRICS_FILE, rows)
    if rows and steps_file:
        trace = step_trace(rows, steps_per_epoch, grad_norm, config, diverged=status == "diverged")
        write_steps(run_dir / STEPS_FILE, trace)

    if status in ("completed", "diverged"):
        steps = len(rows) * steps_per_epoch
        seconds = train_s if train_s is not None else 0.25 * steps
        record["timing"] = {
            "train_s": round(seconds, 3),
            "steps": steps,
            "items": steps * items_per_step,
            "items_per_s": round(steps * items_per_step / seconds, 1),
        }
        record["best"] = best_epoch(rows)
        best_loss = record["best"]["val/loss"] if record["best"] else math.nan
        record["metrics"] |= {
            k: v for k, v in (record["best"] or {}).items() if k.startswith("val/")
        }
        record["tested"] = "best" if record["best"] else "last"
        if math.isnan(best_loss):  # the best weights were already non-finite
            test_loss = math.nan
        else:
            test_loss = to_loss(test) if test is not None else best_loss
        record["metrics"] |= prefixed("test", split_metrics(task, unit, test_loss))
        if test is not None and math.isfinite(test_loss):
            record["metrics"][headline] = test
    if trained:
        record["metrics"] |= REFERENCE_METRICS.get(config["data"]["name"], {})
    record["metrics"] |= dict(metrics or {})
    if status == "diverged":
        record["notes"].append("diverged: the training loss became non-finite")
    if status == "failed":
        record["error"] = error or "RuntimeError: the run failed"
    record["status"] = status
    record["finished"] = now_iso()
    write_json_atomic(run_dir / RECORD_FILE, record)
    return record


def step_trace(
    rows: list[dict[str, Any]],
    steps_per_epoch: int,
    grad_norm: float | Sequence[float],
    config: Mapping[str, Any],
    diverged: bool = False,
) -> list[tuple[int, float, float, int]]:
    """(step, batch_loss, grad_norm, clipped) for every optimizer step of the epochs `rows`: the
    loss falls through each epoch to its training loss; a diverged run's non-finite last step
    is not traced (the trace callback skips it)."""
    total = len(rows) * steps_per_epoch
    if isinstance(grad_norm, int | float):
        norms = [grad_norm * (1 + 2 * math.exp(-3 * s / total)) for s in range(total)]
    else:
        norms = list(grad_norm)
        if len(norms) != total:
            raise ValueError(f"grad_norm: {len(norms)} values for {total} steps")
    clip = config["trainer"].get("gradient_clip_val")
    trace, last = [], 2.0
    for epoch, row in enumerate(rows):
        loss, blows_up = row["train/loss"], not math.isfinite(row["train/loss"])
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i + 1
            norm = norms[step - 1]
            if blows_up:  # the epoch the loss went non-finite: loss and norm explode
                batch_loss, norm = last * (1 + i), norm * 10**i
            else:
                batch_loss = loss * (1 + 0.1 * (steps_per_epoch - 1 - i) / steps_per_epoch)
            trace.append((step, batch_loss, norm, int(clip is not None and norm > clip)))
        last = loss if not blows_up else last
    return trace[:-1] if diverged else trace


def write_epochs(path: Path, rows: list[dict[str, Any]]) -> None:
    """metrics.csv as the epoch callback writes it: epoch, step, train/ and val/ metrics, lr."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_steps(path: Path, trace: list[tuple[int, float, float, int]]) -> None:
    """steps.csv as the trace callback writes it: STEPS_COLUMNS, 6 significant figures."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(STEPS_COLUMNS)
        for step, loss, norm, clipped in trace:
            writer.writerow([step, f"{loss:.6g}", f"{norm:.6g}", clipped])


def write_sweep(
    sweep_dir: str | Path,
    axes: Mapping[str, Sequence[Any]],
    common: Sequence[str] = (),
    numbers: Callable[[dict[str, Any]], Mapping[str, Any]] = lambda job: {},
) -> list[Record]:
    """A Hydra multirun `rnnbench -m KEY=A,B ... COMMON` as it lays out its jobs: one run folder
    per combination of the `axes` values, `sweep_dir/<job number>`, numbered in Hydra's order
    (the last axis varies fastest), each with the overrides Hydra gives the job. `numbers(job)`,
    job = {key: value}, gives that job's `write_run` keyword arguments (test=..., status=...)."""
    records = []
    for n, values in enumerate(itertools.product(*axes.values())):
        job = dict(zip(axes, values, strict=True))
        overrides = [*(f"{k}={v}" for k, v in job.items()), *common]
        records.append(write_run(Path(sweep_dir) / str(n), overrides, **numbers(job)))
    return records


def reuse_run(run_dir: str | Path, overrides: Sequence[str], results_root: str | Path) -> Record:
    """What `rnnbench OVERRIDES` does in `run_dir` when a completed run of the same
    configuration is under `results_root`: the harness's own `reuse` copies that record here
    with `reused_from` naming it (the original run is preferred over another copy). Raises
    LookupError when there is none."""
    run_dir = Path(run_dir).resolve()
    overrides = list(overrides)
    cfg = compose(overrides)
    check_config(cfg)
    record = new_record(OmegaConf.to_container(cfg, resolve=True), run_dir, overrides)
    check_run_folder(run_dir, record["run_key"])
    run_dir.mkdir(parents=True, exist_ok=True)
    reused = reuse(record, run_dir, results_root)
    if reused is None:
        raise LookupError(f"no completed run with run_key {record['run_key']} under {results_root}")
    return reused


@dataclass
class MixedRuns:
    """What `write_mixed_runs` laid out, by role."""

    root: Path  # the runs/ folder
    reber_sweep: Path  # 2 cells x 2 seeds on Reber
    ptb_full: Path  # experiment=zaremba/small at its full budget (13 epochs)
    ptb_reduced: Path  # the same recipe cut to 5 batches of one epoch
    sst2: list[Path]  # a GRU, uni- and bidirectional
    ddp: Path  # an adding-problem LSTM trained with trainer=ddp (2 processes)
    diverged: Path  # an adding-problem vanilla RNN that diverged
    failed: Path
    reused: list[Path]  # copies of completed runs made by relaunches


def write_mixed_runs(root: str | Path) -> MixedRuns:
    """A runs/ folder as a user accumulates it over weeks, not one clean sweep: four datasets
    of three task kinds (reber and PTB language modelling, SST-2 classification, adding-problem
    regression), a multirun sweep beside single runs, a full-budget recipe run and the same
    recipe at a 5-batch budget, a DDP run, a diverged run, a failed one, and runs reused by a
    relaunched sweep and by a repeated single run. Numbers are chosen so that each dataset has
    a known best."""
    root = Path(root)
    day = root / "2026-11-30"
    sweep = root / "multirun" / "2026-11-30" / "10-00-00-000000"
    write_sweep(
        sweep,
        {"model": ["rnn", "lstm"], "seed": [1, 2]},
        common=["logger=none", "trainer.max_epochs=2"],
        numbers=lambda job: {
            "test": (1.62 if job["model"] == "rnn" else 1.52) + 0.01 * job["seed"]
        },
    )
    ptb_full = day / "11-00-00_ptb_word_lstm"
    write_run(ptb_full, ["experiment=zaremba/small", "logger=none"], test=117.3)
    ptb_reduced = day / "11-30-00_ptb_word_lstm"
    write_run(
        ptb_reduced,
        [
            "experiment=zaremba/small",
            "logger=none",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=5",
            "trainer.limit_val_batches=5",
            "trainer.limit_test_batches=5",
        ],
        test=6852.0,
        steps_per_epoch=5,
    )
    sst2 = [day / "12-00-00_sst2_gru", day / "12-10-00_sst2_gru"]
    write_run(
        sst2[0], ["data=sst2", "model=gru", "logger=none", "trainer.max_epochs=3"], test=0.801
    )
    write_run(
        sst2[1],
        [
            "data=sst2",
            "model=gru",
            "model.bidirectional=true",
            "logger=none",
            "trainer.max_epochs=3",
        ],
        test=0.823,
    )
    ddp = day / "13-00-00_adding_lstm"
    write_run(
        ddp,
        [
            "data=adding",
            "data.seq_len=50",
            "model=lstm",
            "trainer=ddp",
            "logger=none",
            "trainer.max_epochs=2",
        ],
        test=0.0042,
    )
    diverged = day / "13-30-00_adding_rnn"
    write_run(
        diverged,
        [
            "data=adding",
            "data.seq_len=50",
            "model=rnn",
            "optim.lr=10",
            "logger=none",
            "trainer.max_epochs=2",
        ],
        status="diverged",
    )
    failed = day / "14-00-00_reber_gru"
    write_run(failed, ["model=gru", "logger=none", "model.hidden_size=8"], status="failed")
    # A relaunched sweep: every job reused from the first one, in a sweep folder of its own.
    relaunch = root / "multirun" / "2026-12-01" / "09-00-00-000000"
    reused = []
    for n, (cell, seed) in enumerate([("rnn", 1), ("rnn", 2), ("lstm", 1), ("lstm", 2)]):
        overrides = [f"model={cell}", f"seed={seed}", "logger=none", "trainer.max_epochs=2"]
        reused.append(relaunch / str(n))
        reuse_run(reused[-1], overrides, results_root=sweep)
    # The SST-2 run launched again by hand: reused, not recomputed.
    again = root / "2026-12-01" / "10-00-00_sst2_gru"
    reuse_run(again, ["data=sst2", "model=gru", "logger=none", "trainer.max_epochs=3"], day)
    reused.append(again)
    return MixedRuns(root, sweep, ptb_full, ptb_reduced, sst2, ddp, diverged, failed, reused)
