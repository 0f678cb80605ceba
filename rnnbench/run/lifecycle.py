"""The parts the run lifecycle (rnnbench.run.runner, whose order every run follows) and its
strategies (rnnbench.run.train, rnnbench.run.pack) are built from: reuse of a completed run,
the loggers and W&B identity, the stop signals that interrupt a run (and SLURM's, passed on),
the device check, and leaving nothing behind when a run is refused while being built. Whether a
run `diverged` is decided in rnnbench.run.runner."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from rnnbench.errors import ConfigError, find_user_error
from rnnbench.results.record import (
    RECORD_FILE,
    Record,
    find_completed,
    is_identity_key,
    is_seed_key,
    now_iso,
    read_record,
    write_json_atomic,
)
from rnnbench.run.checkpoints import AtomicCheckpointIO
from rnnbench.run.sweep import note_stop, stopped_by
from rnnbench.run.trial import STUDY_ENV


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
    characters, with a hash of the whole so that two long command lines still get two groups.
    A search's trials and confirming runs are grouped by their study (one per cell)."""
    study = os.environ.get(STUDY_ENV)
    if study:
        return study[:WANDB_GROUP_MAX]
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
        if name == "mlflow":
            extra = mlflow_identity(conf, config, group)
        try:
            logger = instantiate(conf, **extra)
            if name == "wandb":
                # Lightning always hands wandb.init `anonymous` (None unless asked), and W&B
                # warns on every run that the setting does nothing: left out, it is unset.
                logger._wandb_init.pop("anonymous", None)
            if name != "tensorboard":  # TensorBoard's come with the figures: finish_dashboards
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


def mlflow_identity(conf: DictConfig, config: dict[str, Any], group: str | None) -> dict[str, Any]:
    """The MLflow logger's store, run name and tags where the user left them unset: the
    tracking URI from $MLFLOW_TRACKING_URI, else an SQLite store under the runs root; the name
    and tags W&B gets (wandb_identity)."""
    identity = wandb_identity(config, group)
    extra: dict[str, Any] = {}
    if conf.get("tracking_uri") is None:
        root = Path(config.get("results_root") or "runs").resolve()
        root.mkdir(parents=True, exist_ok=True)
        extra["tracking_uri"] = os.environ.get("MLFLOW_TRACKING_URI") or (
            f"sqlite:///{root / 'mlflow.db'}"
        )
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            extra["artifact_location"] = str(root / "mlartifacts")
    if conf.get("run_name") is None:
        extra["run_name"] = identity["name"]
    if conf.get("tags") is None:
        tags = dict(t.split(":", 1) for t in identity["tags"])
        extra["tags"] = {**tags, "group": identity["group"]}
    return extra


# What MLflow calls a run that ended each way (Lightning's MLFlowLogger.finalize passes it on).
MLFLOW_ENDS = {"completed": "success", "interrupted": "KILLED"}
MLFLOW_RECORD = "record.json"  # the run's result.json, as an MLflow artifact


def finish_dashboards(loggers: list, record: dict[str, Any], run_dir: Path) -> None:
    """Once the record is written: TensorBoard gets the run's configuration with its val/ and
    test/ figures (the HParams tab compares runs by them); MLflow gets the record's status and
    run_key as tags, the record as an artifact, and the run ended as the record says."""
    figures = {
        f"hparams/{k}": v
        for k, v in record["metrics"].items()
        if k.startswith(("val/", "test/")) and isinstance(v, float) and math.isfinite(v)
    }
    for logger in loggers:
        kind = type(logger).__name__
        try:
            if kind == "TensorBoardLogger":
                logger.log_hyperparams(record["config"], figures)
                logger.finalize("success")
            elif kind == "MLFlowLogger":
                client, run_id = logger.experiment, logger.run_id
                for tag in ("status", "run_key", "task", "headline"):
                    client.set_tag(run_id, tag, str(record.get(tag)))
                # As record.json: a second result.json under the runs root (where the store
                # keeps its artifacts) would read as a second run to every finder.
                client.log_dict(run_id, record, MLFLOW_RECORD)
                logger.finalize(MLFLOW_ENDS.get(record["status"], "failed"))
        except Exception as e:  # noqa: BLE001 - the record is written; a dashboard may fail
            print(
                f"rnnbench: warning: logger {kind} could not be finished ({e}); the run's "
                f"record is complete in {run_dir / RECORD_FILE}",
                file=sys.stderr,
            )


def discard_dashboards(loggers: list) -> None:
    """A refused run leaves no MLflow run behind (its folder, with TensorBoard's files, goes
    with discard_unused_folder)."""
    for logger in loggers:
        if type(logger).__name__ == "MLFlowLogger" and logger.run_id is not None:
            try:
                logger.experiment.delete_run(logger.run_id)
            except Exception:  # noqa: BLE001, S110 - nothing more to do for a refused run
                pass


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


def check_device(trainer_cfg: DictConfig) -> None:
    """Refuse, before anything starts, an accelerator this machine does not have."""
    accelerator = str(trainer_cfg.get("accelerator") or "cpu")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU and torch finds none on this "
            f"machine (torch {torch.__version__}): use trainer.accelerator=cpu, or "
            f"trainer.accelerator=auto to take a GPU where there is one"
        )
    devices = trainer_cfg.get("devices")
    found = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > found:
        raise ConfigError(
            f"trainer.devices={devices} needs {devices} GPUs and torch finds {found} on this "
            f"machine: use trainer.devices={found} (or -1, every GPU there is)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.accelerator=mps needs Apple's Metal (MPS) and torch finds none on this "
            "machine: use trainer.accelerator=cpu or auto"
        )


def trainer_plugins() -> list:
    """The Trainer's plugins, for lone and packed runs: checkpoints written atomically, and in
    a SLURM job Lightning's SLURM environment without its auto-requeue, whose own signal
    handler (SIGUSR1) would save and requeue beside submitit's (USR2, lifecycle's
    pass_on_stop_signal)."""
    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def discard_unused_folder(run_dir: Path, results_root: Path | None = None) -> None:
    """Remove `run_dir` when it holds nothing but what Hydra wrote at launch (.hydra/, the
    job's log): a refused run leaves no folder behind. A folder with anything else stays. So do
    the folders Hydra made above it inside `results_root` (the day's `runs/2026-12-07/`), once
    empty: removed only while empty, so another run's folder in them keeps them."""
    if not run_dir.is_dir():
        return
    own = [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if own:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    root = results_root.resolve() if results_root is not None else None
    parent = run_dir.resolve().parent
    while root is not None and parent != root and parent.is_relative_to(root):
        try:
            parent.rmdir()
        except OSError:  # not empty (another run's folder), or not ours to remove
            return
        parent = parent.parent


# SIGUSR2: SLURM's warning that a job's time limit or a preemption is near (sbatch
# --signal=USR2@N, as submitit asks for). The run stops as for SIGTERM, at once, so that its
# record is written before the job is requeued and SLURM's SIGTERM and SIGKILL follow.
WARNING_SIGNAL = signal.SIGUSR2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, WARNING_SIGNAL)
_outer_warning_handler: Any = None  # the USR2 handler in place before the run (submitit's)


def _raise_interrupt(signum, frame) -> None:
    note_stop(signum)
    hold_stop_signals()
    raise KeyboardInterrupt(f"signal {signum}")


def hold_stop_signals() -> None:
    """Ignore SIGTERM, SIGINT and SIGUSR2 while an interrupted run writes its record: the first
    stop interrupts, and a repeated one (submitit's controller forwards the SIGTERM the sweep
    also sends each job; a second Ctrl-C; SLURM's SIGTERM after its USR2) must not cut the
    record short. Main thread only."""
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    except ValueError:  # signal handlers can only be set from the main thread
        pass


_deferred: int | None = None  # a stop signal that came while a run that had ended was written


def _defer(signum, frame) -> None:
    global _deferred
    if _deferred is None:
        _deferred = signum


def defer_stop_signals() -> None:
    """While a run that has ended (completed, diverged, pruned or failed) writes its records,
    finishes its loggers and tidies its folder: a stop signal waits, so that none of it is cut
    short (a record lost, a W&B run left open, a folder half moved); `pass_on_deferred_stop`
    then acts on it. Main thread only."""
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _defer)
    except ValueError:  # signal handlers can only be set from the main thread
        pass


def pass_on_deferred_stop() -> None:
    """Once the handlers from before the run are back: the stop signal that waited, if one
    did, goes to them as if it had come just after the run (a sweep stops, a SLURM job's
    warning goes to submitit, a lone run ends with 128 + the signal)."""
    global _deferred
    if _deferred is not None:
        signum, _deferred = _deferred, None
        signal.raise_signal(signum)


def interrupt_on_stop_signals() -> dict[int, Any]:
    """Make SIGTERM (a scheduler's or `kill`'s polite stop) and SIGUSR2 (SLURM's warning) end
    the run like Ctrl-C, so it is recorded as interrupted, and Ctrl-C do so even where the
    process was started with SIGINT ignored (a background job of a script, a test runner's
    worker); returns the stop signals' handlers to restore (none off the main thread)."""
    global _outer_warning_handler
    try:
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, _raise_interrupt)
    except ValueError:  # signal handlers can only be set from the main thread
        return {}
    _outer_warning_handler = previous[WARNING_SIGNAL]
    return previous


def pass_on_stop_signal() -> None:
    """Once an interrupted run is recorded: when SLURM's USR2 stopped it, call the handler that
    was in place before the run, submitit's in a SLURM job, which requeues the job (unless it
    timed out more than max_num_timeout times: then it raises UncompletedJobError, said here in
    one line; the job ends interrupted, and the sweep names it). Returns when the job was
    requeued, was not, or there is no such handler."""
    if stopped_by() != WARNING_SIGNAL or not callable(_outer_warning_handler):
        return
    try:
        _outer_warning_handler(WARNING_SIGNAL, None)
    except SystemExit:  # submitit's way out after a requeue; the caller ends the process
        pass
    except Exception as e:  # noqa: BLE001 - submitit's UncompletedJobError: no more requeues
        # Raised on, Hydra would hand it to the submitting shell as the job's result, and
        # the sweep would end in its traceback instead of its summary.
        why = str(e).removeprefix("Job not requeued because: ").rstrip(".")
        print(
            f"rnnbench: the job is not requeued ({why}): launch the sweep again to go on from "
            f"its last.ckpt",
            file=sys.stderr,
            flush=True,
        )


def restore_signals(previous: dict[int, Any]) -> None:
    """Put back the handlers `interrupt_on_stop_signals` found."""
    for sig, handler in previous.items():
        if handler is not None:
            signal.signal(sig, handler)
