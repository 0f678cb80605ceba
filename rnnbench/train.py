"""`rnnbench`: compose a configuration with Hydra, train and test it, leave result.json behind.

rnnbench                                      # the default run: an LSTM on embedded Reber
rnnbench data=ptb_word model=gru trainer.gradient_clip_val=0.25
rnnbench -m model=rnn,gru,lstm model.num_layers=1,2
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from rnnbench.callbacks import EpochMetricsCSV, SteadyProgressBar, StepTrace, Throughput
from rnnbench.errors import ConfigError, find_user_error
from rnnbench.module import TASKS
from rnnbench.overrides import exit_on_bad_command_line
from rnnbench.record import SCHEMA, environment, now_iso, run_key, write_json_atomic
from rnnbench.summary import format_summary
from rnnbench.sweep import (
    KEY_FILE,
    find_completed,
    find_resumable,
    parallel_jobs,
    threads_per_job,
)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def check_trainer(trainer_cfg: DictConfig) -> None:
    """Refuse clipping settings the seed's formula g <- min(1, θ/‖g‖) g does not cover."""
    clip = trainer_cfg.get("gradient_clip_val")
    if clip is not None and (
        isinstance(clip, bool) or not isinstance(clip, int | float) or clip <= 0
    ):
        raise ConfigError(
            f"trainer.gradient_clip_val={clip} is not allowed: use a positive "
            f"threshold θ, or null for no clipping"
        )
    algorithm = trainer_cfg.get("gradient_clip_algorithm", "norm")
    if algorithm != "norm":
        raise ConfigError(
            f"trainer.gradient_clip_algorithm={algorithm!r} is not supported: "
            f"rnnbench clips by global norm, use 'norm'"
        )


def is_rank_zero() -> bool:
    """False in the extra processes Lightning's DDP launcher starts: they train, never record."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def wandb_identity(config: dict[str, Any], group: str | None) -> dict[str, Any]:
    """Name, group and tags that let the W&B UI group and compare runs without set-up."""
    data, model = config["data"]["name"], config["model"]
    clip = config["trainer"].get("gradient_clip_val")
    direction = "bi" if model["bidirectional"] else "uni"
    name = (
        f"{data}-{model['cell']}-{model['impl']}-{model['num_layers']}x"
        f"{model['hidden_size']}-{direction}-clip{clip}"
    )
    tags = [
        f"data:{data}",
        f"cell:{model['cell']}",
        f"impl:{model['impl']}",
        f"layers:{model['num_layers']}",
        f"direction:{direction}",
        f"clip:{clip}",
    ]
    return {"name": name, "group": group or data, "tags": tags}


def build_loggers(
    logger_cfg: DictConfig | None, run_dir: Path, config: dict[str, Any], group: str | None
) -> list:
    """One Lightning logger per entry of the `logger` group, each writing inside `run_dir`.

    A logger that cannot start (W&B online with no network, a bad key) is dropped with one
    warning line: the run goes on with its local records.
    """
    loggers = []
    for name, conf in (logger_cfg or {}).items():
        extra: dict[str, Any] = {"save_dir": str(run_dir)}
        if name == "wandb":
            extra |= wandb_identity(config, group)
        try:
            logger = instantiate(conf, **extra)
            logger.log_hyperparams(config)
        except Exception as e:  # noqa: BLE001 - any logger failure is survivable
            reason = str(find_user_error(e) or e).strip().splitlines()
            print(
                f"rnnbench: warning: logger {name} unavailable ({reason[-1] if reason else e!r}); "
                f"continuing with result.json and metrics.csv only",
                file=sys.stderr,
            )
            continue
        loggers.append(logger)
    return loggers


def new_record(cfg: DictConfig, run_dir: Path, overrides: list[str] | None) -> dict[str, Any]:
    config = OmegaConf.to_container(cfg, resolve=True)
    return {
        "schema": SCHEMA,
        "status": "failed",
        "run_key": run_key(config),
        "task": None,
        "headline": None,
        "config": config,
        "overrides": list(overrides or []),
        "metrics": {},
        "best": None,
        "timing": {},
        "params": None,
        "env": None,
        "seed": cfg.get("seed"),
        "started": now_iso(),
        "finished": None,
        "wandb": None,
        "error": None,
        "run_dir": str(run_dir),
    }


def reuse(record: dict[str, Any], run_dir: Path, results_root: str | Path) -> dict | None:
    """The record of a completed run with the same run_key, copied into `run_dir` with
    `reused_from` naming its source; None when there is none."""
    source = find_completed(results_root, record["run_key"])
    source = source.resolve() if source is not None else None
    if source is None:
        return None
    if source.resolve() == run_dir.resolve():
        return json.loads((run_dir / "result.json").read_text())
    original = json.loads((source / "result.json").read_text())
    reused = {
        **original,
        "run_dir": str(run_dir),
        "overrides": record["overrides"],
        "reused_from": original.get("reused_from") or str(source),
        "started": record["started"],
        "finished": now_iso(),
    }
    write_json_atomic(run_dir / "result.json", reused)
    return reused


LAST_CKPT = "checkpoints/last.ckpt"


def resume_point(record: dict[str, Any], run_dir: Path, cfg: DictConfig) -> Path:
    """Where this run's checkpoint to go on from is, if it exists: its own
    `checkpoints/last.ckpt`, else (unless `force`) the newest one an unfinished run with the same
    run_key left under results_root, copied here and named in the record's `resumed_from`.
    Marks `run_dir` with the run_key so a later relaunch can find it in turn."""
    (run_dir / KEY_FILE).write_text(record["run_key"])
    last = run_dir / LAST_CKPT
    if last.exists() or cfg.get("force") or not cfg.get("results_root"):
        return last
    found = find_resumable(cfg.results_root, record["run_key"], exclude=run_dir)
    if found is None:
        return last
    adopt_checkpoints(found, last.parent)
    record["resumed_from"] = str(found.parent.parent.resolve())
    return last


CHECKPOINT_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


def adopt_checkpoints(last: Path, new: Path) -> None:
    """Take an unfinished run's `last.ckpt` into folder `new`, with the checkpoints its
    ModelCheckpoint states name (best.ckpt) copied beside it and those states pointed at `new`.
    Lightning restores the best score only when the state's folder is the callback's own;
    otherwise the first epoch after the resume would become "best" whatever its validation
    loss, and the test would use its weights."""
    new.mkdir(parents=True, exist_ok=True)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)

    def moved(path: str) -> str:
        # last.ckpt itself is written below, with the states changed: no need to copy it first.
        source, target = Path(path), new / Path(path).name
        if source.is_file() and not target.exists() and source.resolve() != last.resolve():
            shutil.copyfile(source, target)
        return os.path.realpath(target)

    for name, state in ckpt.get("callbacks", {}).items():
        if not name.startswith("ModelCheckpoint"):
            continue
        state["dirpath"] = os.path.realpath(new)
        for key in CHECKPOINT_PATH_KEYS:
            if state.get(key):
                state[key] = moved(state[key])
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
    torch.save(ckpt, new / "last.ckpt")


@dataclass
class Training:
    """What one run trains with, built from its config: `run` fits and tests it, and
    `rnnbench-bench` times its steps."""

    model: nn.Module
    task: pl.LightningModule
    trainer: pl.Trainer
    callbacks: RunCallbacks


def build_training(
    cfg: DictConfig,
    run_dir: Path,
    record: dict[str, Any],
    datamodule: pl.LightningDataModule,
    loggers: list,
    group: str | None = None,
    extra_callbacks: Sequence[pl.Callback] = (),
) -> Training:
    """Model, task module, loggers, callbacks and Trainer for `cfg` on a set-up datamodule
    (seeded before the datamodule was made); fills the record's task, headline metric,
    parameter count and environment. The loggers are appended to `loggers` as soon as they
    exist (rank zero only), so the caller can finish them however the build ends."""
    record["task"], record["headline"] = datamodule.task, datamodule.headline_metric
    model = instantiate(cfg.model, **datamodule.model_io())
    record["params"] = sum(p.numel() for p in model.parameters())
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    task = TASKS[datamodule.task](model, instantiate(cfg.optim), scheduler, datamodule.unit)
    if is_rank_zero():
        loggers += build_loggers(cfg.get("logger"), run_dir, record["config"], group)
    callbacks = RunCallbacks.for_run(cfg, run_dir)
    manual = {}
    if not task.automatic_optimization:  # per-chunk updates clip in the task's own loop
        task.clip_value = cfg.trainer.get("gradient_clip_val")
        manual = {"gradient_clip_val": None}
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=[*extra_callbacks, *callbacks.all],
        default_root_dir=str(run_dir),
        **manual,
    )
    record["env"] = environment(str(trainer.strategy.root_device))
    return Training(model, task, trainer, callbacks)


def run(
    cfg: DictConfig,
    run_dir: str | Path,
    overrides: list[str] | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """Train and test one configuration; write `run_dir/result.json` however the run ends.

    A completed run with the same run_key under `cfg.results_root` is reused, not recomputed
    (unless `force`); a `checkpoints/last.ckpt` already in `run_dir`, or else one left by an
    unfinished run with the same run_key, is resumed from (`resume_point`).
    Returns the record. Raises what the run raised (after recording it as failed or interrupted).
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    record = new_record(cfg, run_dir, overrides)
    rank_zero = is_rank_zero()
    if rank_zero and not cfg.get("force") and cfg.get("results_root"):
        reused = reuse(record, run_dir, cfg.results_root)
        if reused is not None:
            return reused
    loggers: list = []
    previous_sigterm = _sigterm_interrupts()
    try:
        check_trainer(cfg.trainer)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        built = build_training(cfg, run_dir, record, datamodule, loggers, group)
        task, trainer, callbacks = built.task, built.trainer, built.callbacks
        # Other DDP ranks start inside fit(), after rank zero has put the checkpoint in place.
        last = resume_point(record, run_dir, cfg) if rank_zero else run_dir / LAST_CKPT
        resumed = last.exists()
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if resumed else None)
        if trainer.interrupted:
            raise KeyboardInterrupt
        record["timing"] = {
            "train_s": round(callbacks.throughput.train_s, 3),
            "steps": trainer.global_step,
            "items": callbacks.throughput.items,
            "items_per_s": round(callbacks.throughput.items_per_s, 1),
        }
        if resumed and not callbacks.throughput.restored:
            # A checkpoint from before it carried the timing: the epochs before it are untimed.
            record["timing"]["partial"] = True
        record["best"] = best_epoch(callbacks.epochs.rows)
        record["metrics"] |= {
            k: v for k, v in (record["best"] or {}).items() if k.startswith("val/")
        }
        best_path = callbacks.best.best_model_path or None
        if best_path or not task.diverged:
            tested = trainer.test(task, datamodule=datamodule, ckpt_path=best_path, verbose=False)
            record["metrics"] |= {k: float(v) for k, v in tested[0].items()}
        record["metrics"] |= datamodule.reference_metrics()
        record["status"] = "diverged" if task.diverged else "completed"
        return record
    except (KeyboardInterrupt, SystemExit):
        record["status"] = "interrupted"
        raise
    except BaseException as e:
        user = find_user_error(e)
        record["error"] = str(user) if user else "".join(traceback.format_exception(e))
        raise
    finally:
        record["finished"] = now_iso()
        if rank_zero:
            finish_wandb(loggers, record)
            write_json_atomic(run_dir / "result.json", record)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


@dataclass
class RunCallbacks:
    """The callbacks every run trains with; `run` reads its record's figures from them."""

    throughput: Throughput
    epochs: EpochMetricsCSV
    trace: StepTrace
    best: ModelCheckpoint
    others: list[pl.Callback]

    @classmethod
    def for_run(cls, cfg: DictConfig, run_dir: Path) -> RunCallbacks:
        checkpoints = run_dir / "checkpoints"
        others: list[pl.Callback] = []
        if cfg.trainer.get("enable_progress_bar", True):
            others.append(SteadyProgressBar())
        # last.ckpt has its own callback: the best-model one only writes when val/loss improves,
        # and a resume must go on from the latest epoch, not from the best one.
        others.append(last_checkpoint(checkpoints))
        if cfg.get("checkpoint_every_n_steps"):
            others.append(
                last_checkpoint(checkpoints, every_n_train_steps=cfg.checkpoint_every_n_steps)
            )
        return cls(
            throughput=Throughput(),
            epochs=EpochMetricsCSV(run_dir / "metrics.csv"),
            trace=StepTrace(run_dir / "steps.csv", cfg.trainer.get("gradient_clip_val")),
            best=ModelCheckpoint(
                dirpath=checkpoints,
                filename="best",
                monitor="val/loss",
                mode="min",
                enable_version_counter=False,
            ),
            others=[*others, *extra_callbacks(cfg, run_dir)],
        )

    @property
    def all(self) -> list[pl.Callback]:
        return [self.throughput, self.epochs, self.trace, self.best, *self.others]


def last_checkpoint(checkpoints: Path, every_n_train_steps: int | None = None) -> ModelCheckpoint:
    """Writes `checkpoints/last.ckpt` at every epoch end (or every N training steps)."""
    # Not save_last: Lightning writes "last" only beside a top-k save, so with save_top_k=0 it
    # came at the end of training alone. One unmonitored top-1 file named "last" is overwritten
    # at every trigger instead.
    return ModelCheckpoint(
        dirpath=checkpoints,
        filename="last",
        save_top_k=1,
        every_n_train_steps=every_n_train_steps,
        enable_version_counter=False,
    )


def extra_callbacks(cfg: DictConfig, run_dir: Path) -> list[pl.Callback]:
    """The `callbacks` group's entries (`+callbacks=gradflow`), each writing <run>/<name>.csv."""
    return [
        instantiate(conf, out_path=run_dir / f"{name}.csv")
        for name, conf in (cfg.get("callbacks") or {}).items()
    ]


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _sigterm_interrupts():
    """Make SIGTERM (a scheduler's or `kill`'s polite stop) end the run like Ctrl-C, so it is
    recorded as interrupted; returns the handler to restore, None off the main thread."""
    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # signal handlers can only be set from the main thread
        return None


def best_epoch(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch row with the lowest validation loss, or None when no validation ran."""
    scored = [r for r in rows if "val/loss" in r]
    return min(scored, key=lambda r: r["val/loss"]) if scored else None


def finish_wandb(loggers: list, record: dict[str, Any]) -> None:
    """Put the record's headline numbers in the W&B summary, name the run in the record, and
    finish the W&B run so the next job of a multirun starts a new one."""
    for logger in loggers:
        if type(logger).__name__ != "WandbLogger" or logger._experiment is None:
            continue
        run = logger.experiment
        run.summary.update(
            {
                **record["metrics"],
                "status": record["status"],
                "task": record["task"],
                "headline": record["headline"],
                "params": record["params"],
                "run_key": record["run_key"],
            }
        )
        record["wandb"] = {
            "id": run.id,
            "mode": run.settings.mode,
            "project": run.project,
            "name": run.name,
            "group": run.group,
            "tags": list(run.tags),
            "dir": str(Path(run.dir).parent),
        }
        run.finish()


def set_threads(cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool) -> None:
    """torch threads per job: `threads`, else cores ÷ the processes training at once."""
    jobs = parallel_jobs(hydra_cfg.launcher) if multirun else 1
    trainer = cfg.trainer
    if trainer.get("accelerator") == "cpu" and isinstance(trainer.get("devices"), int):
        jobs *= trainer.devices
    torch.set_num_threads(cfg.get("threads") or threads_per_job(jobs))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    set_threads(cfg, hydra_cfg, multirun)
    try:
        record = run(
            cfg,
            hydra_cfg.runtime.output_dir,
            list(hydra_cfg.overrides.task),
            group=Path(hydra_cfg.sweep.dir).name if multirun else None,
        )
    except Exception as e:
        user = find_user_error(e)
        if multirun:
            # One job's failure is a finding of the sweep: recorded, reported, and the sweep
            # goes on; its summary line and exit code count it.
            reason = str(user) if user else f"{type(e).__name__}: {e}"
            print(
                f"rnnbench: job {hydra_cfg.job.num} failed: {reason} "
                f"(record in {hydra_cfg.runtime.output_dir})",
                file=sys.stderr,
            )
            return
        if user is None:
            raise
        print(f"rnnbench: error: {user}", file=sys.stderr)
        sys.exit(2)
    if not is_rank_zero():
        return
    if record.get("reused_from"):
        print(
            f"rnnbench: reused completed run {record['reused_from']} (same run_key "
            f"{record['run_key']}; force=true re-runs it)"
        )
    else:
        print(format_summary(record))


def cli() -> None:
    """Console entry point (`rnnbench`), also `python -m rnnbench`."""
    exit_on_bad_command_line(str(CONF_DIR))
    main()


if __name__ == "__main__":
    cli()
