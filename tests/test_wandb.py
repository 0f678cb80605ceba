"""W&B as the harness logs it, read back from the offline run's own `run-*.wandb` file with
wandb's protobuf records: the name, group, tags, job type and notes a user sets win; the
defaults otherwise; one readable group per sweep; `overrides` and `run_key` in the config; a
relaunched sweep's summary names its reused jobs; the README's sync command finds every
offline run in a shell without globstar."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixture_runs import reuse_run
from omegaconf import OmegaConf

from conftest import REPO, TINY_REBER_RUN, records, rnnbench_cli, wandb_records
from rnnbench.config import compose
from rnnbench.run.lifecycle import WANDB_GROUP_MAX, sweep_group, wandb_identity
from rnnbench.run.sweep import print_summary

ARGS = [*TINY_REBER_RUN, "logger=wandb", "trainer.enable_progress_bar=false"]
# What the sweep's group keeps of ARGS: logger=wandb and the progress bar change no result.
KEPT = " ".join(a for a in TINY_REBER_RUN)
USER = [
    "logger.wandb.name=my-run",
    "logger.wandb.group=my-group",
    "logger.wandb.tags=[first,second]",
    "logger.wandb.job_type=probe",
    "logger.wandb.notes='a first look'",
]


@dataclass
class LoggedRun:
    """What one run left in its offline W&B file."""

    run: Any  # the RunRecord: display_name, run_group, tags, job_type, notes
    config: dict[str, Any]  # every config update, in order
    summary: dict[str, Any]  # every top-level summary update, in order


def logged_run(run_dir: Path) -> LoggedRun:
    [log] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    recs = wandb_records(log)
    [run] = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for r in recs:
        kind = r.WhichOneof("record_type")
        items = (
            r.config.update if kind == "config" else r.summary.update if kind == "summary" else []
        )
        target = config if kind == "config" else summary
        for item in items:
            if item.key:  # W&B's own nested summary entries carry nested_key instead
                target[item.key] = json.loads(item.value_json)
    return LoggedRun(run, config, summary)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One single run with every W&B identity setting given, then a 2-job sweep with none,
    in one folder: its runs/ holds both layouts (runs/DATE/RUN, runs/multirun/DATE/TIME/N)."""
    root = tmp_path_factory.mktemp("wandb")
    single = rnnbench_cli([*ARGS, *USER], cwd=root)
    assert single.returncode == 0, single.stderr[-3000:]
    sweep = rnnbench_cli(["-m", "model=rnn,gru", *ARGS], cwd=root)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    return root


def by_dir(root: Path) -> dict[Path, dict]:
    return {Path(r["run_dir"]): r for r in records(root / "runs")}


def sweep_jobs(root: Path) -> dict[Path, dict]:
    """The first sweep's jobs, not the copies a relaunch makes."""
    return {
        d: r for d, r in by_dir(root).items() if "multirun" in d.parts and "reused_from" not in r
    }


def test_user_settings_win(runs):
    [(run_dir, record)] = [(d, r) for d, r in by_dir(runs).items() if "multirun" not in d.parts]
    logged = logged_run(run_dir)
    assert logged.run.display_name == "my-run"
    assert logged.run.run_group == "my-group"
    assert list(logged.run.tags) == ["first", "second"]
    assert logged.run.job_type == "probe"
    assert logged.run.notes == "a first look"
    wandb = record["wandb"]
    assert (wandb["name"], wandb["group"], wandb["tags"]) == (
        "my-run",
        "my-group",
        ["first", "second"],
    )


def test_sweep_defaults_readable_group_overrides_and_run_key(runs):
    jobs = sweep_jobs(runs)
    assert len(jobs) == 2
    groups = set()
    for run_dir, record in jobs.items():
        logged = logged_run(run_dir)
        cell = record["config"]["model"]["cell"]
        assert logged.run.display_name == f"reber-{cell}-fused-1x16-uni-clipNone"
        assert {"data:reber", f"cell:{cell}", "layers:1", "direction:uni"} <= set(logged.run.tags)
        assert logged.run.job_type == "train" and logged.run.notes == ""
        groups.add(logged.run.run_group)
        # The job's own overrides and run_key beside the resolved config, and in the summary.
        assert logged.config["overrides"] == record["overrides"]
        assert f"model={cell}" in logged.config["overrides"]
        assert logged.config["run_key"] == record["run_key"] == logged.summary["run_key"]
        assert logged.config["model"]["cell"] == cell
        assert logged.summary["status"] == "completed"
        assert logged.summary["test/ppl"] == pytest.approx(record["metrics"]["test/ppl"])
    # One group for the sweep, named after its command line, not its timestamped folder, cut
    # at a space to W&B's limit (this command line is longer) with a hash of the whole.
    [group] = groups
    assert " ~" in group, group
    head, digest = group.rsplit(" ~", 1)
    assert len(group) <= WANDB_GROUP_MAX and re.fullmatch("[0-9a-f]{8}", digest)
    assert f"model=rnn,gru {KEPT}".startswith(head + " "), group  # whole overrides only
    assert head.startswith("model=rnn,gru data.train_strings=200 data.valid_strings=40"), group


def test_relaunched_sweep_summary_names_each_reused_job_and_its_source(runs, tmp_path, capsys):
    # The relaunch's jobs as the harness's own `reuse` makes them from the real sweep's records
    # (a relaunch through the CLI costs a process start and proves nothing more here).
    first = sorted(sweep_jobs(runs).items())
    relaunch = tmp_path / "multirun" / "relaunch"
    for n, (_, record) in enumerate(first):
        reuse_run(relaunch / str(n), record["overrides"], results_root=runs / "runs")
    print_summary(relaunch)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sweep: 2 jobs: 2 reused"
    assert len(lines) == 3, lines
    for n, (line, (source_dir, source)) in enumerate(zip(lines[1:], first, strict=True)):
        job = (relaunch / str(n)).resolve()
        assert line == f"  reused {job}: copied from {source_dir} (W&B run {source['wandb']['id']})"


def test_group_of_a_long_or_empty_sweep(tmp_path):
    def saved(name: str, task: list[str]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        OmegaConf.save({"hydra": {"overrides": {"task": task}}}, folder / "multirun.yaml")
        return folder

    long = [f"optim.lr=0.1,0.01,0.001,0.0001,1e-05,{width}" for width in ("0.5", "0.25")]
    grid = ["model=rnn,gru,lstm", "model.num_layers=1,2,3", "model.hidden_size=32,64,128"]
    names = [sweep_group(saved(f"long{n}", [*grid, text])) for n, text in enumerate(long)]
    assert all(len(n) <= WANDB_GROUP_MAX for n in names) and names[0] != names[1]
    assert names[0].startswith("model=rnn,gru,lstm model.num_layers=1,2,3")
    # Nothing that changes a result left: the sweep folder's name.
    assert sweep_group(saved("10-00-00-123456", ["logger=csv", "force=true"])) == "10-00-00-123456"
    assert sweep_group(tmp_path / "no-multirun-yaml") == "no-multirun-yaml"
    # A single run's default group is its dataset.
    config = OmegaConf.to_container(compose(["data=sst2"]), resolve=True)
    assert wandb_identity(config, None)["group"] == "sst2"


def readme_sync_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### The W&B dashboard") :]
    section = section[: section.index("\n## ")]
    return re.findall(r"`([^`]*wandb sync[^`]*)`", section)


def test_readme_sync_command_finds_every_offline_run_in_a_default_shell(runs):
    upload, dry_run = readme_sync_commands()
    assert dry_run.replace(" --dry-run", "") == upload  # the same command, less the upload
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", dry_run], cwd=runs, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    listed = set(re.findall(r"\S+\.wandb", done.stdout + done.stderr))
    made = {str(p.relative_to(runs)) for p in runs.glob("runs/**/offline-run-*/run-*.wandb")}
    assert len(made) == 3 and listed == made, done.stdout + done.stderr
