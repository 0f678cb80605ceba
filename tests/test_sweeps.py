"""Sweeps at scale and runs that survive faults, as real processes: joblib and submitit
launchers, reuse of finished runs, resume after SIGKILL, failing jobs, DDP on the CPU, W&B
without a network, and the sweep-level bad inputs."""

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from conftest import (
    TINY_REBER_RUN,
    assert_relaunch_reuses_all,
    popen,
    records,
    rnnbench_cli,
    wait_for,
)
from rnnbench.run import slurm
from rnnbench.run.sweep import summarize, threads_per_job

SMALL = ["logger=none", "trainer.enable_progress_bar=false", *TINY_REBER_RUN]


def test_joblib_sweep_then_relaunch_reuses_everything(tmp_path):
    sweep = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=rnn,gru,lstm", *SMALL]
    first = rnnbench_cli(sweep, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sweep: 3 jobs: 3 completed" in first.stdout
    made = records(tmp_path / "runs")
    # Two jobs wrote into one sweep root at once: every record whole, one per cell.
    assert sorted(r["config"]["model"]["cell"] for r in made) == ["gru", "lstm", "rnn"]
    assert all(r["status"] == "completed" for r in made)
    # Each of the 2 parallel jobs got its share of the cores.
    assert {r["env"]["threads"] for r in made} == {threads_per_job(2)}
    assert all(r["env"]["flush_denormal"] is True for r in made)  # the default, recorded

    assert_relaunch_reuses_all(sweep, tmp_path, made)
    forced = rnnbench_cli([*sweep[:3], "model=gru", *SMALL, "force=true"], cwd=tmp_path)
    assert "1 completed" in forced.stdout


def test_submitit_local_launcher_runs_jobs(tmp_path):
    result = rnnbench_cli(
        ["-m", "hydra/launcher=submitit_local", "model=rnn,gru", *SMALL], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep: 2 jobs: 2 completed" in result.stdout


def test_a_run_resumed_in_a_new_folder_keeps_its_best_checkpoint(tmp_path):
    """Lightning restores the best validation score only when the checkpoint was written in the
    callback's own folder. At lr 0 validation never improves after the first epoch, so a run
    killed after two epochs and resumed elsewhere must still test the first epoch's weights."""
    import torch

    args = [
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=6",
        "optim.lr=0",
        "data.train_strings=1000",
        "model.hidden_size=32",  # what is tested is the checkpoints, not the model
    ]
    killed = tmp_path / "runs" / "killed"
    proc = popen([*args, f"hydra.run.dir={killed}"], cwd=tmp_path)
    epochs = killed / "metrics.csv"
    wait_for(lambda: epochs.exists() and len(epochs.read_text().splitlines()) >= 1 + 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "result.json").exists()

    new = tmp_path / "runs" / "new"
    resumed = rnnbench_cli([*args, f"hydra.run.dir={new}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((new / "result.json").read_text())
    assert record["resumed_from"] == str(killed)
    assert record["best"]["epoch"] == 0
    best = torch.load(new / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["global_step"] == record["best"]["step"] < record["timing"]["steps"]


def test_killed_multirun_relaunch_runs_only_the_unfinished_jobs(tmp_path):
    sweep = ["-m", "model=rnn,gru,lstm,rnn_relu", *SMALL[:-1], "trainer.max_epochs=3"]
    proc = popen(sweep, cwd=tmp_path)
    wait_for(lambda: len(list(tmp_path.rglob("result.json"))) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    finished = len(records(tmp_path / "runs"))
    assert 2 <= finished < 4

    time.sleep(1.1)
    again = rnnbench_cli(sweep, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{4 - finished} completed, {finished} reused" in again.stdout


def test_one_failing_job_does_not_stop_the_sweep(tmp_path):
    result = rnnbench_cli(
        # Values the command line allows, but one job's model refuses: reading a next-step
        # task backwards would show the model the answer.
        [
            "-m",
            "model.hidden_size=8,12",
            "model.bidirectional=false,true",
            *SMALL[:5],
            "model.num_layers=1",
            "trainer.max_epochs=1",
        ],
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "sweep: 4 jobs: 2 completed, 2 failed" in result.stdout
    failed = [r for r in records(tmp_path / "runs") if r["status"] == "failed"]
    assert len(failed) == 2 and all("bidirectional=true" in r["error"] for r in failed)
    assert "rnnbench: job 1 failed: model.bidirectional=true" in result.stderr
    # Under the summary line, each failed job's folder and why (a SLURM job's stderr is not
    # the shell's).
    why = [line for line in result.stdout.splitlines() if line.startswith("  failed ")]
    expected = [
        f"  failed {Path(r['run_dir']).relative_to(tmp_path)}: {r['error']}" for r in failed
    ]
    assert sorted(why) == sorted(expected)  # the folders as the sweep's is given: relative


def test_a_job_slurm_ended_without_a_result_is_counted_and_its_end_seen(monkeypatch):
    """The summary counts a job SLURM ended without a result (SIGKILL: no record) as failed;
    without accounting its state comes from squeue, and a job squeue forgot has ended. (A real
    cluster's cancelled job: tests/test_slurm.py.)"""
    found = [{"status": "completed"}, {"status": "interrupted"}]  # the lost job left no record
    assert (
        summarize(found, jobs=3, lost=1)[0] == "sweep: 3 jobs: 1 completed, 1 failed, 1 interrupted"
    )
    assert summarize(found, jobs=3)[0] == "sweep: 3 jobs: 1 completed, 1 interrupted, 1 not started"
    # A search's trial refused before it trained: no record, no job count, yet failed.
    assert (
        summarize(found, unrecorded_failures=1)[0]
        == "sweep: 3 jobs: 1 completed, 1 failed, 1 interrupted"
    )

    monkeypatch.setattr(slurm, "accounting_enabled", lambda: False)
    watcher = slurm.QueueWatcher()
    jobs = ["7_0", "7_1", "7_2", "8"]
    for job in jobs:
        watcher.register_job(job)
    assert watcher._make_command()[0] == "squeue"  # never sacct, which only says it is off
    watcher._info_dict.update(watcher.read_info(b"7_0|RUNNING\n7_2|CANCELLED\n8|SUSPENDED\n"))
    done = [watcher.is_done(job, mode="cache") for job in jobs]
    assert done == [False, True, True, False]  # 7_1: squeue no longer lists it
    assert watcher.get_state("7_1", mode="cache") == "GONE"


def test_ddp_on_two_cpu_processes_writes_one_record_equal_to_one_process(tmp_path):
    args = [*SMALL[:-1], "trainer.max_epochs=2", "data.batch_size=16", "data.eval_batch_size=16"]
    (tmp_path / "one").mkdir()
    (tmp_path / "ddp").mkdir()
    single = rnnbench_cli(args, cwd=tmp_path / "one")
    ddp = rnnbench_cli(
        [*args, "trainer=ddp", "trainer.enable_progress_bar=false"], cwd=tmp_path / "ddp"
    )
    assert single.returncode == 0 and ddp.returncode == 0, ddp.stderr[-3000:]
    [one] = records(tmp_path / "one")
    [two] = records(tmp_path / "ddp")  # one record, not one per process
    assert two["config"]["trainer"]["strategy"] == "ddp" and two["status"] == "completed"
    # Each process reads half the streams and DDP averages the gradients: the same updates.
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=1e-4), key


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wandb_online_without_a_network_leaves_the_run_to_finish(tmp_path):
    secret = "0123456789abcdef0123456789abcdef01234567"
    env = {
        "WANDB_MODE": "online",
        "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}",
        "WANDB_API_KEY": secret,
    }
    result = rnnbench_cli([*SMALL[1:], "logger=wandb"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("rnnbench: warn")]
    assert len(warnings) == 1 and "logger wandb unavailable" in warnings[0]
    [record] = records(tmp_path / "runs")
    assert record["status"] == "completed" and record["wandb"] is None
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["-m", "hydra/launcher=nope", "model=rnn,gru"],
            "Could not find 'hydra/launcher/nope' Available options in 'hydra/launcher': "
            "basic, joblib",
        ),
        (
            ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "model=rnn,gru"],
            "hydra.launcher.n_jobs=0 is not allowed",
        ),
        (["-m", "+sweep=bad"], "the configuration has no key model.nonexistent"),
    ],
)
def test_sweep_bad_inputs_are_one_line(args, message, tmp_path):
    presets = tmp_path / "presets" / "sweep"
    presets.mkdir(parents=True)
    (presets / "bad.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      model.nonexistent: 1,2\n"
    )
    result = rnnbench_cli(
        [*args, f"hydra.searchpath=[file://{tmp_path / 'presets'}]", "logger=none"], cwd=tmp_path
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rnnbench: error: "), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "runs").exists()
