"""`rnnbench`: compose a configuration with Hydra, train and test it, leave result.json behind.

rnnbench                                      # the default run: an LSTM on embedded Reber
rnnbench data=ptb_word model=gru trainer.gradient_clip_val=0.25
rnnbench -m model=rnn,gru,lstm model.num_layers=1,2
"""

from __future__ import annotations

import hashlib
import math
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
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar
from torch import nn

from rnnbench.callbacks import EpochMetricsCSV, Throughput
from rnnbench.checkpoints import (
    AtomicCheckpointIO,
    ResumeCheckpoint,
    drop_checkpoints,
    resume_point,
)
from rnnbench.config import CONF_DIR, check_config
from rnnbench.errors import ConfigError, UserError, find_user_error
from rnnbench.module import TASKS
from rnnbench.record import (
    CHECKPOINT_DIR,
    LAST_CKPT,
    RECORD_FILE,
    Record,
    check_run_folder,
    environment,
    find_completed,
    forced_folder,
    holds_completed,
    is_identity_key,
    is_seed_key,
    new_record,
    now_iso,
    read_record,
    take_place,
    write_examples,
    write_json_atomic,
    write_record,
)
from rnnbench.summary import format_pack_summary, format_summary, show
from rnnbench.sweep import (
    end_interrupted_job,
    note_stop,
    parallel_jobs,
    stop_exit_code,
    threads_per_job,
)

__all__ = ["CONF_DIR", "main", "run"]


def is_rank_zero() -> bool:
    """False in the extra processes Lightning's DDP launcher starts: they train, never record."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def wandb_identity(config: dict[str, Any], group: str | None) -> dict[str, Any]:
    """The default name, group (`group`, else the dataset's name), tags and job type that let
    the W&B UI group and compare runs without set-up; a user's logger.wandb.* values win."""
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
    attention = model.get("attention", "none")
    if attention != "none":  # an encoder-decoder's attention tells its runs apart too
        name += f"-{attention}"
        tags.append(f"attention:{attention}")
    return {"name": name, "group": group or data, "tags": tags, "job_type": "train"}


WANDB_GROUP_MAX = 128  # the longest group name W&B accepts


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group every job of one multirun shares: the sweep's command line as Hydra's
    sweeper saved it in multirun.yaml before the first job (`model=rnn,gru data=ptb_word`),
    less the overrides that change nothing a run computes (logger, progress bar, force, ...);
    the sweep folder's name when that leaves nothing. Cut at a space to fit W&B's 128
    characters, with a hash of the whole so that two long command lines still get two groups."""
    sweep_dir = Path(sweep_dir)
    saved = sweep_dir / "multirun.yaml"
    # Each job's own hydra.overrides.task holds its values (model=gru), not the sweep's lists.
    # Unresolved: an override may hold an interpolation (`results_root=${oc.env:SCRATCH}`).
    task = (
        OmegaConf.to_container(OmegaConf.load(saved).hydra.overrides.task)
        if saved.is_file()
        else []
    )
    kept = [
        o.input_line
        for o in OverridesParser.create().parse_overrides(task)
        if is_identity_key(o.key_or_group) or is_seed_key(o.key_or_group)
    ]
    text = " ".join(kept) or sweep_dir.name
    if len(text) > WANDB_GROUP_MAX:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        head = text[: WANDB_GROUP_MAX - len(digest) - 2]
        text = f"{head.rsplit(' ', 1)[0] if ' ' in head else head} ~{digest}"
    return text


def build_loggers(
    logger_cfg: DictConfig | None,
    run_dir: Path,
    config: dict[str, Any],
    group: str | None,
    quiet: bool = False,
) -> list:
    """One Lightning logger per entry of the `logger` group, each writing inside `run_dir`;
    `quiet`: W&B prints nothing to the console (a pack's members, whose summary says where
    their W&B runs are).

    A logger that cannot start (W&B online with no network, a bad key) is dropped with one
    warning line: the run goes on with its local records.
    """
    loggers = []
    for name, conf in (logger_cfg or {}).items():
        extra: dict[str, Any] = {"save_dir": str(run_dir)}
        if name == "wandb":
            # The harness's identity fills only what the user left unset (conf/logger/wandb.yaml
            # or logger.wandb.tags=[a,b] on the command line): instantiate's keywords would win.
            defaults = wandb_identity(config, group)
            extra |= {k: v for k, v in defaults.items() if conf.get(k) is None}
            if quiet:
                extra["settings"] = {**(conf.get("settings") or {}), "silent": True}
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


def reuse(
    record: Record, run_dir: Path, results_root: str | Path, also: Sequence[str | Path] = ()
) -> Record | None:
    """The record of a completed run with the same run_key, copied into `run_dir` with
    `reused_from` naming its source; None when there is none. Looked for in `run_dir` itself
    first (a relaunch into the same folder: its record stays as it is), then under each folder
    of `also` (a sweep's folder, wherever it lies), then under `results_root`."""
    key = record["run_key"]
    roots = [run_dir, *also, results_root]
    source = next((s for root in roots if (s := find_completed(root, key)) is not None), None)
    if source is None:
        return None
    source = source.resolve()
    if source == run_dir.resolve():
        # Nothing is written: the folder's record is this run's. The copy returned says it was
        # found, not trained, for the summary line.
        own = read_record(run_dir / RECORD_FILE)
        return {**own, "reused_from": own.get("reused_from") or str(run_dir)}
    original = read_record(source / RECORD_FILE)
    reused = {
        **original,
        "run_dir": str(run_dir),
        "overrides": record["overrides"],
        "reused_from": original.get("reused_from") or str(source),
        "started": record["started"],
        "finished": now_iso(),
    }
    write_json_atomic(run_dir / RECORD_FILE, reused)
    return reused


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
    # A decoder's kinds (translation, summaries) also take how the test decodes (`decode`).
    options = dict(cfg.get("decode") or {}) if datamodule.kind.readout == "decoder" else {}
    clip = cfg.trainer.get("gradient_clip_val")
    task = TASKS[datamodule.task](
        model, instantiate(cfg.optim), scheduler, datamodule.unit, clip, **options
    )
    if is_rank_zero():
        loggers += build_loggers(cfg.get("logger"), run_dir, record["config"], group)
    callbacks = RunCallbacks.for_run(cfg, run_dir)
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=[*extra_callbacks, *callbacks.all],
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        gradient_clip_val=None,  # the task clips (rnnbench.clipping), with the config's θ
    )
    record["env"] = environment(str(trainer.strategy.root_device))
    return Training(model, task, trainer, callbacks)


def run(
    cfg: DictConfig,
    run_dir: str | Path,
    overrides: list[str] | None = None,
    group: str | None = None,
    search: Sequence[str | Path] = (),
    record_refusals: bool = False,
) -> dict[str, Any]:
    """Train and test one configuration; write `run_dir/result.json` however the run ends.

    Refused with ConfigError, before anything is written: a value outside what its key allows,
    and a `run_dir` that holds another configuration's run. A completed run with the same
    run_key in `run_dir`, under a folder of `search` (a sweep's) or under `cfg.results_root`
    is reused, not recomputed (unless `force`); a
    `checkpoints/last.ckpt` already in `run_dir`, or else one left by an unfinished run with the
    same run_key, is resumed from (`checkpoints.resume_point`). A completed record already in
    `run_dir` is never replaced by one that did not complete: a forced re-run into it trains
    in `record.forced_folder` and takes its place once completed (`record.take_place`). A bad
    value found while data, model and trainer are built (a ConfigError, DataError, ...) is
    raised without a record, and the folder goes when it holds nothing else (unless
    `record_refusals`: a sweep's job records it failed, for the sweep's summary).
    Returns the record. Raises what the run raised (after recording it as failed or interrupted).
    """
    run_dir = Path(run_dir).resolve()
    check_config(cfg)
    record = new_record(OmegaConf.to_container(cfg, resolve=True), run_dir, overrides or [])
    check_run_folder(run_dir, record["run_key"])
    run_dir.mkdir(parents=True, exist_ok=True)
    rank_zero = is_rank_zero()
    if rank_zero and not cfg.get("force"):
        reused = reuse(record, run_dir, cfg.get("results_root") or run_dir, search)
        if reused is not None:
            return reused
    place = run_dir  # where the record ends up
    if cfg.get("force") and holds_completed(run_dir):
        # A forced re-run never leaves a completed folder half replaced: it trains beside the
        # completed run and takes its place in one step once it completed itself.
        run_dir = forced_folder(place)
        check_run_folder(run_dir, record["run_key"])
        run_dir.mkdir(exist_ok=True)
        record["run_dir"] = str(run_dir)
    loggers: list = []
    best_path: str | None = None  # the checkpoint the test scores, known once training ended
    previous_handlers = _sigterm_interrupts()
    # A bad value found while the data, model and trainer are built is refused like one
    # check_config finds: one line, and no record, no W&B run, no folder left by this launch.
    building, refused = True, False
    try:
        check_device(cfg.trainer)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        built = build_training(cfg, run_dir, record, datamodule, loggers, group)
        task, trainer, callbacks = built.task, built.trainer, built.callbacks
        building = False
        # Other DDP ranks start inside fit(), after rank zero has put the checkpoint in place.
        if rank_zero:
            last = resume_point(record, run_dir, cfg)
        else:
            last = run_dir / LAST_CKPT if (run_dir / LAST_CKPT).exists() else None
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if last else None)
        if trainer.interrupted:
            raise KeyboardInterrupt
        if callbacks.throughput is not None:  # absent when ~callbacks.throughput
            clock = callbacks.throughput
            record["timing"] = {
                "train_s": round(clock.train_s, 3),
                "steps": trainer.global_step,
                "items": clock.items,
                "items_per_s": round(clock.items_per_s, 1),
            }
            if last and not clock.restored:
                # A checkpoint from before it carried the timing: the epochs before are untimed.
                record["timing"]["partial"] = True
        record["best"] = best_epoch(callbacks.epochs.rows) if callbacks.epochs else None
        record["metrics"] |= {
            k: v for k, v in (record["best"] or {}).items() if k.startswith("val/")
        }
        best_path = (callbacks.best.best_model_path or None) if callbacks.best else None
        record["tested"] = "best" if best_path else "last"
        if best_path is None:
            record["notes"].append(
                "no validation ran (the budget ended before the first validation): the test "
                "used the last weights"
            )
        if best_path or not task.diverged:
            tested = trainer.test(task, datamodule=datamodule, ckpt_path=best_path, verbose=False)
            record["metrics"] |= {k: float(v) for k, v in tested[0].items()}
            record |= task.record_fields()
            if rank_zero and getattr(task, "decoded", None):
                test = datamodule.texts["test"]
                write_examples(run_dir, test.source, test.target, task.decoded)
        record["metrics"] |= datamodule.reference_metrics()
        why = divergence(task, built.model, record["metrics"])
        if why:
            record["notes"].append(f"diverged: {why}")
        record["status"] = "diverged" if why else "completed"
        return record
    except (KeyboardInterrupt, SystemExit):
        record["status"] = "interrupted"
        hold_stop_signals()
        raise
    except BaseException as e:
        user = find_user_error(e)
        record["error"] = str(user) if user else "".join(traceback.format_exception(e))
        refused = building and user is not None and not record_refusals
        raise
    finally:
        record["finished"] = now_iso()
        if refused:
            finish_wandb(loggers, record)
            for folder in {run_dir, place}:
                discard_unused_folder(folder)
        elif rank_zero:
            finish_wandb(loggers, record)
            unwritten = write_record(run_dir, record)
            if unwritten and sys.exc_info()[1] is None:
                raise UserError(unwritten)
            if record["status"] == "completed":
                # Only once the record says completed: until then last.ckpt is what a relaunch
                # resumes from. A config composed without the key keeps both, as runs always did.
                keep = OmegaConf.select(cfg, "checkpoints.keep", default="both")
                drop_checkpoints(run_dir, keep, best_path)
                if run_dir != place:
                    take_place(record, run_dir, place)
        if record["status"] != "interrupted":
            # An interrupted run's process is ending (a sweep's with it): a repeated stop must
            # not cut that short either, so the signals stay held.
            restore_signals(previous_handlers)


def check_device(trainer_cfg: DictConfig) -> None:
    """Refuse, before anything starts, an accelerator this machine does not have."""
    accelerator = str(trainer_cfg.get("accelerator") or "cpu")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU and torch finds none on this "
            f"machine (torch {torch.__version__}): use trainer.accelerator=cpu, or "
            f"trainer.accelerator=auto to take a GPU where there is one"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.accelerator=mps needs Apple's Metal (MPS) and torch finds none on this "
            "machine: use trainer.accelerator=cpu or auto"
        )


def discard_unused_folder(run_dir: Path) -> None:
    """Remove `run_dir` when it holds nothing but what Hydra wrote at launch (.hydra/, the
    job's log): a refused run leaves no folder behind. A folder with anything else stays."""
    if not run_dir.is_dir():
        return
    own = [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if not own:
        shutil.rmtree(run_dir, ignore_errors=True)


def divergence(task: pl.LightningModule, model: nn.Module, metrics: dict[str, Any]) -> str | None:
    """Why a run that trained to the end is no result, or None: its training loss went
    non-finite, its weights did, or a validation or test metric is inf or NaN."""
    if task.diverged:
        return "the training loss became non-finite"
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return "the weights became non-finite"
    return nonfinite_metrics(metrics)


def nonfinite_metrics(metrics: dict[str, Any]) -> str | None:
    """Which validation or test metrics are inf or NaN, in words; None when none is."""
    bad = sorted(
        k
        for k, v in metrics.items()
        if k.startswith(("val/", "test/")) and isinstance(v, float) and not math.isfinite(v)
    )
    return f"{', '.join(bad)} not finite" if bad else None


@dataclass
class RunCallbacks:
    """The callbacks a run trains with: the `callbacks` group's entries
    (conf/callbacks/default.yaml, plus `+callbacks=NAME`), placed in the run folder. `run` reads
    its record's figures from the always-on ones; each may be dropped (`~callbacks.NAME`), and
    the record then goes without what it gave (timing, best epoch, steps.csv, resume)."""

    throughput: Throughput | None
    epochs: EpochMetricsCSV | None
    best: ModelCheckpoint | None
    all: list[pl.Callback]

    @classmethod
    def for_run(cls, cfg: DictConfig, run_dir: Path) -> RunCallbacks:
        entries = (cfg.get("callbacks") or {}).values()
        made = [place_in(instantiate(conf), run_dir) for conf in entries]
        if not cfg.trainer.get("enable_progress_bar", True):
            made = [c for c in made if not isinstance(c, ProgressBar)]
        # last.ckpt every N steps has its own callback: the best-model one only writes when
        # val/loss improves, and a resume must go on from the latest step, not the best one.
        if cfg.get("checkpoint_every_n_steps"):
            made.append(last_checkpoint(run_dir / CHECKPOINT_DIR, cfg.checkpoint_every_n_steps))

        def first(kind: type) -> Any:
            return next((c for c in made if type(c) is kind), None)

        # The resume checkpoint first: its writing time is not training time (Throughput).
        made.sort(key=lambda c: not isinstance(c, ResumeCheckpoint))
        best = next(
            (c for c in made if isinstance(c, ModelCheckpoint) and c.monitor == "val/loss"), None
        )
        return cls(first(Throughput), first(EpochMetricsCSV), best, made)


def place_in(callback: pl.Callback, run_dir: Path) -> pl.Callback:
    """`callback` with its files inside `run_dir`: a relative `path` is taken there, and a
    ModelCheckpoint without a folder writes to run_dir/checkpoints."""
    if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
        callback.dirpath = str(run_dir / CHECKPOINT_DIR)
    path = getattr(callback, "path", None)
    if isinstance(path, Path) and not path.is_absolute():
        callback.path = run_dir / path
    return callback


def last_checkpoint(checkpoints: Path, every_n_train_steps: int) -> ModelCheckpoint:
    """Writes `checkpoints/last.ckpt` every N training steps (checkpoint_every_n_steps)."""
    # Not save_last: Lightning writes "last" only beside a top-k save, so with save_top_k=0 it
    # came at the end of training alone. One unmonitored top-1 file named "last" is overwritten
    # at every trigger instead.
    return ModelCheckpoint(
        dirpath=checkpoints,
        filename=Path(LAST_CKPT).stem,
        save_top_k=1,
        every_n_train_steps=every_n_train_steps,
        enable_version_counter=False,
    )


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _raise_interrupt(signum, frame) -> None:
    note_stop(signum)
    hold_stop_signals()
    raise KeyboardInterrupt(f"signal {signum}")


def hold_stop_signals() -> None:
    """Ignore SIGTERM and SIGINT while an interrupted run writes its record: the first stop
    interrupts, and a repeated one (submitit's controller forwards the SIGTERM the sweep also
    sends each job; a second Ctrl-C) must not cut the record short. Main thread only."""
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    except ValueError:  # signal handlers can only be set from the main thread
        pass


def _sigterm_interrupts() -> dict[int, Any]:
    """Make SIGTERM (a scheduler's or `kill`'s polite stop) end the run like Ctrl-C, so it is
    recorded as interrupted, and Ctrl-C do so even where the process was started with SIGINT
    ignored (a background job of a script, a test runner's worker); returns the stop signals'
    handlers to restore (none off the main thread)."""
    try:
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, _raise_interrupt)
    except ValueError:  # signal handlers can only be set from the main thread
        return {}
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    """Put back the handlers `_sigterm_interrupts` found."""
    for sig, handler in previous.items():
        if handler is not None:
            signal.signal(sig, handler)


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
        # Not logged at the start: build_loggers is handed the resolved config alone.
        run.config.update(
            {"overrides": record["overrides"], "run_key": record["run_key"]},
            allow_val_change=True,
        )
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
    if cfg.get("results_root"):
        # A relative results_root is the launching folder's, also where hydra.job.chdir=true
        # has moved the job into its run folder: reuse and resume look where runs are.
        with open_dict(cfg):
            cfg.results_root = to_absolute_path(str(cfg.results_root))
    try:
        group = sweep_group(hydra_cfg.sweep.dir) if multirun else None
        if cfg.get("pack") is not None:
            from rnnbench.pack import run_packed

            records = run_packed(cfg, hydra_cfg, multirun, group)
        else:
            overrides = list(hydra_cfg.overrides.task)
            search = [hydra_cfg.sweep.dir] if multirun else []
            output = hydra_cfg.runtime.output_dir
            records = [run(cfg, output, overrides, group, search, record_refusals=multirun)]
    except (KeyboardInterrupt, SystemExit) as e:
        # Ctrl-C, SIGTERM, or Lightning's exit after catching one: recorded as interrupted.
        if isinstance(e, SystemExit) and e.code in (0, None):
            raise
        where = hydra_cfg.runtime.output_dir
        label = f"job {hydra_cfg.job.num}" if multirun else "run"
        print(f"rnnbench: {label} interrupted (record in {where})", file=sys.stderr)
        if multirun:
            end_interrupted_job(hydra_cfg.sweep.dir)
        sys.exit(stop_exit_code())
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
    if len(records) > 1:  # a pack's members (pack=K in a single run)
        show(format_pack_summary(records))
        return
    for record in records:
        if record.get("reused_from"):
            show(
                f"rnnbench: reused completed run {record['reused_from']} (same run_key "
                f"{record['run_key']}; force=true re-runs it)"
            )
        else:
            show(format_summary(record))
