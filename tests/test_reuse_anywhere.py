"""Never recompute, wherever the folders are: a job's own folder, its sweep's folder and the
runs root are all places a completed run is found, whatever the launcher, and a relative runs
root is the launching folder's even when Hydra moves the job into its run folder."""

from __future__ import annotations

import time

from conftest import TINY_REBER, records, rnnbench_cli

ARGS = [*TINY_REBER, "threads=1"]


def test_a_joblib_sweep_outside_the_runs_root_is_reused_when_relaunched(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "sweep"  # not under cwd/runs
    sweep = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=rnn,gru"]
    sweep += [*ARGS, f"hydra.sweep.dir={elsewhere}"]
    first = rnnbench_cli(sweep, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sweep: 2 jobs: 2 completed" in first.stdout
    before = {p: p.read_bytes() for p in elsewhere.glob("*/result.json")}
    assert len(before) == 2

    again = rnnbench_cli(sweep, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep: 2 jobs: 2 reused" in again.stdout, again.stdout[-2000:]
    for path, data in before.items():  # each job's record is its own, untouched
        assert path.read_bytes() == data, path
    assert not (tmp_path / "runs").exists() or not records(tmp_path / "runs")


def test_the_same_run_with_hydra_chdir_trains_once(tmp_path):
    args = [*ARGS, "hydra.job.chdir=true"]
    first = rnnbench_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    time.sleep(1.1)  # a new run folder (the default names it by the second)
    second = rnnbench_cli(args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reused completed run" in second.stdout, second.stdout[-2000:]
    found = records(tmp_path / "runs")
    assert len(found) == 2
    assert sum(r["status"] == "completed" and not r.get("reused_from") for r in found) == 1
    # Nothing was written under the run folder's own runs/ (the relative root, moved).
    assert not list((tmp_path / "runs").glob("*/*/runs"))
    copy = next(r for r in found if r.get("reused_from"))
    assert copy["run_key"] == found[0]["run_key"]
