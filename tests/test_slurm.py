"""Sweeps on a real SLURM cluster, through the submitit launcher (hydra/launcher=slurm_cpu), as
a user runs them: the single-node cluster of .ci/slurm-up (`make slurm` starts it and runs this
module; CI starts it before `make test`). Without a cluster the module is skipped, in one line;
under CI it fails instead. The runs' folders are on a filesystem every node shares: on one node,
any folder is."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import MISSING_SLURM, TINY_REBER_RUN, nothing_may_skip, records, rnnbench_cli

SMALL = ["logger=none", "trainer.enable_progress_bar=false", *TINY_REBER_RUN]
ON_SLURM = ["-m", "hydra/launcher=slurm_cpu"]


def cluster_problem() -> str | None:
    """Why no job could run here (no SLURM client, no controller, no node taking jobs), or
    None."""
    if shutil.which("sinfo") is None or shutil.which("scontrol") is None:
        return "no SLURM cluster here (sinfo is not on PATH)"

    def ask(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    # `scontrol ping` answers at once where no controller runs; sinfo would retry for 9 s.
    ping = ask("scontrol", "ping")
    if ping.returncode != 0:
        said = (ping.stdout + ping.stderr).strip().splitlines()
        return f"no SLURM cluster here (scontrol ping: {said[0] if said else ping.returncode})"
    states = ask("sinfo", "--noheader", "--format=%T").stdout.split()
    if not any(s.rstrip("*") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"the SLURM cluster has no node taking jobs (sinfo: {', '.join(states) or 'none'})"
    return None


PROBLEM = cluster_problem()
if PROBLEM and not nothing_may_skip():
    pytest.skip(f"{PROBLEM}: {MISSING_SLURM}", allow_module_level=True)  # one line for all


@pytest.fixture(autouse=True)
def cluster() -> None:
    if PROBLEM:  # under CI: every test fails, and the rest of the suite still runs
        pytest.fail(f"{PROBLEM}: {MISSING_SLURM}")


def submitit_logs(sweep_dir: Path, suffix: str) -> dict[str, str]:
    """The jobs' stdout (suffix "out") or stderr ("err") in submitit's folder, by SLURM job id
    (an array's task: 12_3)."""
    return {
        p.name.rsplit("_", 2)[0]: p.read_text()
        for p in (sweep_dir / ".submitit").glob(f"*/*_log.{suffix}")
    }


def test_a_sweep_runs_as_slurm_jobs_and_a_relaunch_reuses_every_one(tmp_path):
    sweep = [*ON_SLURM, *SMALL, "seed=1,2,3,4"]
    first = rnnbench_cli(sweep, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sweep: 4 jobs: 4 completed" in first.stdout  # in the submitting shell
    # A cluster without accounting (sacct refuses) costs no warning per status poll.
    assert "Bypassing sacct error" not in first.stdout + first.stderr
    made = records(tmp_path / "runs")
    assert sorted(r["config"]["seed"] for r in made) == [1, 2, 3, 4]
    assert all(r["status"] == "completed" for r in made)
    # Each job was given one CPU and bound to it: it sized torch's threads to that.
    assert {r["env"]["threads"] for r in made} == {1}

    # Each job ran as a task of a SLURM array job: its output is in submitit's folder, one per
    # task, named by the SLURM job id, and it is the run's own summary.
    sweep_dir = Path(made[0]["run_dir"]).parent
    logs = submitit_logs(sweep_dir, "out")
    assert len(logs) == 4, sorted(logs)
    assert len({job.split("_")[0] for job in logs}) == 1  # one array
    for record in made:
        [job] = [job for job, log in logs.items() if f"{record['run_dir']}/result.json" in log]
        assert "Starting with JobEnvironment(job_id=" + job in logs[job]
    assert not any("Traceback" in err for err in submitit_logs(sweep_dir, "err").values())

    again = rnnbench_cli(sweep, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep: 4 jobs: 4 reused" in again.stdout
    reused = [r for r in records(tmp_path / "runs") if r.get("reused_from")]
    assert len(reused) == 4
    originals = {r["run_dir"]: r for r in made}
    assert sorted(r["reused_from"] for r in reused) == sorted(originals)
    for r in reused:
        assert r["metrics"] == originals[r["reused_from"]]["metrics"]


def test_a_failing_slurm_job_fails_the_sweep_in_one_line(tmp_path):
    # A value the command line allows, which the job's model refuses: reading a next-step task
    # backwards would show the model the answer.
    result = rnnbench_cli([*ON_SLURM, *SMALL, "model.bidirectional=true"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert "sweep: 1 jobs: 1 failed" in result.stdout
    [record] = records(tmp_path / "runs")
    assert record["status"] == "failed"
    assert "model.bidirectional=true is not allowed" in record["error"]
    # Why, in the job's own stderr in submitit's folder.
    [err] = submitit_logs(Path(record["run_dir"]).parent, "err").values()
    failed = [line for line in err.splitlines() if line.startswith("rnnbench: job 0 failed: ")]
    assert len(failed) == 1 and "model.bidirectional=true is not allowed" in failed[0], err
