"""`rnnbench`: compose a configuration with Hydra, train and test it, leave result.json behind.

rnnbench                                      # the default run: an LSTM on embedded Reber
rnnbench data=ptb_word model=gru trainer.gradient_clip_val=0.25
rnnbench -m model=rnn,gru,lstm model.num_layers=1,2
"""

from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from rnnbench.callbacks import EpochMetricsCSV, Throughput
from rnnbench.errors import ConfigError, find_user_error
from rnnbench.module import TASKS
from rnnbench.record import SCHEMA, environment, now_iso, run_key, write_json_atomic
from rnnbench.summary import format_summary

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
    """One Lightning logger per entry of the `logger` group, each writing inside `run_dir`."""
    loggers = []
    for name, conf in (logger_cfg or {}).items():
        extra: dict[str, Any] = {"save_dir": str(run_dir)}
        if name == "wandb":
            extra |= wandb_identity(config, group)
        logger = instantiate(conf, **extra)
        logger.log_hyperparams(config)
        loggers.append(logger)
    return loggers


def run(
    cfg: DictConfig,
    run_dir: str | Path,
    overrides: list[str] | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """Train and test one configuration; write `run_dir/result.json` however the run ends.

    Returns the record. Raises what the run raised (after recording it as failed or interrupted).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    record: dict[str, Any] = {
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
    loggers: list = []
    previous_sigterm = _sigterm_interrupts()
    try:
        check_trainer(cfg.trainer)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        record["task"], record["headline"] = datamodule.task, datamodule.headline_metric
        model = instantiate(cfg.model, **datamodule.model_io())
        record["params"] = sum(p.numel() for p in model.parameters())
        scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
        task = TASKS[datamodule.task](model, instantiate(cfg.optim), scheduler, datamodule.unit)
        loggers = build_loggers(cfg.get("logger"), run_dir, config, group)
        throughput, epochs = Throughput(), EpochMetricsCSV(run_dir / "metrics.csv")
        best_ckpt = ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best",
            monitor="val/loss",
            mode="min",
            enable_version_counter=False,
        )
        trainer = instantiate(
            cfg.trainer,
            logger=loggers or False,
            callbacks=[throughput, epochs, best_ckpt],
            default_root_dir=str(run_dir),
        )
        record["env"] = environment(str(trainer.strategy.root_device))
        trainer.fit(task, datamodule=datamodule)
        if trainer.interrupted:
            raise KeyboardInterrupt
        record["timing"] = {
            "train_s": round(throughput.train_s, 3),
            "steps": trainer.global_step,
            "items_per_s": round(throughput.items_per_s, 1),
        }
        record["best"] = best_epoch(epochs.rows)
        record["metrics"] |= {
            k: v for k, v in (record["best"] or {}).items() if k.startswith("val/")
        }
        best_path = best_ckpt.best_model_path or None
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
        finish_wandb(loggers, record)
        write_json_atomic(run_dir / "result.json", record)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


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
        run.summary.update({**record["metrics"], "status": record["status"]})
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


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        record = run(
            cfg,
            hydra_cfg.runtime.output_dir,
            list(hydra_cfg.overrides.task),
            group=Path(hydra_cfg.sweep.dir).name if multirun else None,
        )
    except Exception as e:
        user = find_user_error(e)
        if user is None:
            raise
        print(f"rnnbench: error: {user}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(record))


def cli() -> None:
    """Console entry point (`rnnbench`), also `python -m rnnbench`."""
    main()


if __name__ == "__main__":
    cli()
