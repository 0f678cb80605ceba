"""`rnnbench`: compose a configuration with Hydra, train and test it (lone, or packed with
`pack=K`), leave result.json behind, print the summary.

rnnbench                                      # the default run: an LSTM on embedded Reber
rnnbench data=ptb_word model=gru trainer.gradient_clip_val=0.25
rnnbench -m model=rnn,gru,lstm model.num_layers=1,2
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, open_dict

from rnnbench.config import CONF_DIR, check_config
from rnnbench.errors import find_user_error
from rnnbench.results.record import RECORD_FILE, Record, read_record
from rnnbench.results.summary import format_pack_summary, format_summary, show
from rnnbench.run.callbacks import quiet_lightning
from rnnbench.run.denormals import flush_denormal_everywhere
from rnnbench.run.lifecycle import is_rank_zero, pass_on_stop_signal, sweep_group
from rnnbench.run.pack import run_pack, seed_members
from rnnbench.run.sweep import (
    end_interrupted_job,
    parallel_jobs,
    stop_exit_code,
    threads_per_job,
)
from rnnbench.run.sweep_packs import run_in_sweep
from rnnbench.run.train import run
from rnnbench.run.trial import is_confirmation, job_label


def set_threads(cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool) -> None:
    """torch threads per job: `threads`, else cores ÷ the processes training at once."""
    jobs = parallel_jobs(hydra_cfg.launcher) if multirun else 1
    trainer = cfg.trainer
    if trainer.get("accelerator") == "cpu" and isinstance(trainer.get("devices"), int):
        jobs *= trainer.devices
    torch.set_num_threads(cfg.get("threads") or threads_per_job(jobs))


def run_packed(
    cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool, group: str | None
) -> list[Record]:
    """`rnnbench ... pack=K`: in a single run, K seeds packed in the run folder; in a
    multirun, this job's record, from its pack (`run_in_sweep`), except for a job that confirms
    a study's best trial, which packs its own K seeds as a single run does."""
    check_config(cfg)  # pack: a whole number >= 1 (schema.RunSchema)
    if multirun and not is_confirmation():
        return [run_in_sweep(cfg, hydra_cfg, group)]
    run_dir = Path(hydra_cfg.runtime.output_dir)
    members = seed_members(cfg, run_dir, list(hydra_cfg.overrides.task))
    return run_pack(members, run_dir, group, [hydra_cfg.sweep.dir] if multirun else [])


def stopped_how(where: Path) -> str:
    """How a run stopped by a signal had got on: `interrupted`, or, when the signal came once
    it had ended (rnnbench.run.runner: it waited while the record was written), `stopped
    after it ended completed` (or diverged, pruned, failed) as its record says."""
    try:
        status = read_record(where / RECORD_FILE)["status"]
    except (OSError, ValueError):
        return "interrupted"
    return "interrupted" if status == "interrupted" else f"stopped after it ended {status}"


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    quiet_lightning(banners=True)
    set_threads(cfg, hydra_cfg, multirun)
    flush_denormal_everywhere(bool(cfg.get("flush_denormal", True)))
    if cfg.get("results_root"):
        # A relative results_root is the launching folder's, also where hydra.job.chdir=true
        # has moved the job into its run folder: reuse and resume look where runs are.
        with open_dict(cfg):
            cfg.results_root = to_absolute_path(str(cfg.results_root))
    try:
        group = sweep_group(hydra_cfg.sweep.dir) if multirun else None
        if cfg.get("pack") is not None:
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
        label = job_label(hydra_cfg.job.num) if multirun else "run"
        print(f"rnnbench: {label} {stopped_how(Path(where))} (record in {where})", file=sys.stderr)
        if multirun:
            # A SLURM job warned of its end (USR2) is requeued, to go on from its last.ckpt.
            pass_on_stop_signal()
            end_interrupted_job(hydra_cfg.sweep.dir)
        sys.exit(stop_exit_code())
    except Exception as e:
        user = find_user_error(e)
        if multirun:
            # One job's failure is a finding of the sweep: recorded, reported, and the sweep
            # goes on; its summary line and exit code count it.
            reason = str(user) if user else f"{type(e).__name__}: {e}"
            where = Path(hydra_cfg.runtime.output_dir)
            said = "record in" if (where / RECORD_FILE).is_file() else "nothing recorded in"
            print(
                f"rnnbench: {job_label(hydra_cfg.job.num)} failed: {reason} ({said} {where})",
                file=sys.stderr,
            )
            return None
        if user is None:
            raise
        print(f"rnnbench: error: {user}", file=sys.stderr)
        sys.exit(2)
    if not is_rank_zero():
        return None
    if len(records) > 1:  # a pack's members (pack=K in a single run, or a confirmation)
        show(format_pack_summary(records))
        return records if multirun else None  # the study reads its confirming runs
    for record in records:
        if record.get("reused_from"):
            show(
                f"rnnbench: reused completed run {record['reused_from']} (same run_key "
                f"{record['run_key']}; force=true re-runs it)"
            )
        else:
            show(format_summary(record))
    # A sweeper reads it (the job's return value): a search's trial tells its study from it.
    return records[0]
