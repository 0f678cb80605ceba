"""Sweeps on a real SLURM cluster, through the submitit launcher (hydra/launcher=slurm_cpu), as
a user runs them: the single-node cluster of .ci/slurm-up (`make slurm` starts it and runs this
module; CI starts it before `make test`). Without a cluster the module is skipped, in one line;
under CI it fails instead. The runs' folders are on a filesystem every node shares: on one node,
any folder is."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    MISSING_SLURM,
    TINY_REBER_RUN,
    assert_relaunch_reuses_all,
    nothing_may_skip,
    popen,
    records,
    rnnbench_cli,
    wait_for,
)
from rnnbench.run import claims
from rnnbench.run.slurm import ENDED

SMALL = ["logger=none", "trainer.enable_progress_bar=false", *TINY_REBER_RUN]
ON_SLURM = ["-m", "hydra/launcher=slurm_cpu"]
# SMALL for as many epochs as asked (~0.1 s each), on one thread as a one-CPU job has.
LONG = [a for a in SMALL if not a.startswith("trainer.max_epochs=")] + ["threads=1"]


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


# The cluster has as many CPUs as the machine (2 on CI), and each test needs its jobs to run at
# once (one trains while another waits, a signal reaches a job mid-training). Two tests on two
# pytest workers would queue each other's jobs, and a job would finish before its partner starts:
# the module's tests take the cluster one at a time. The test's jobs keep both cores busy, so the
# waiting worker costs little.
CLUSTER_LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "rnnbench-test-slurm.lock"


@pytest.fixture(autouse=True)
def cluster() -> Iterator[None]:
    if PROBLEM:  # under CI: every test fails, and the rest of the suite still runs
        pytest.fail(f"{PROBLEM}: {MISSING_SLURM}")
    with open(CLUSTER_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # freed when the test ends, or its process does
        yield
        # A cancelled job holds its CPU while SLURM completes it: the next test's jobs would
        # start one after the other instead of at once.
        deadline = time.monotonic() + 60
        while our_jobs() and time.monotonic() < deadline:
            time.sleep(0.5)


def our_jobs() -> list[str]:
    """This user's jobs the cluster still holds (pending, running or completing)."""
    listed = subprocess.run(
        ["squeue", "--me", "--noheader", "--format=%i"], capture_output=True, text=True
    )
    return listed.stdout.split()


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

    assert_relaunch_reuses_all(sweep, tmp_path, made)


def test_a_failing_job_and_one_out_of_requeues_end_the_sweep_in_a_line_each(tmp_path):
    """Job 0 fails: a value the command line allows, which the job's model refuses (reading a
    next-step task backwards would show the model the answer). Job 1 is warned of its end (USR2)
    once more than max_num_timeout allows (0 here): submitit will not requeue it, and it ends
    interrupted. Each is one line in the submitting shell, and no traceback anywhere."""
    sweep = tmp_path / "sweep"
    args = [*ON_SLURM, *LONG, "model.bidirectional=true,false", "trainer.max_epochs=2000"]
    # Under 10 minutes, submitit takes any USR2 for the time limit's (not a preemption's).
    args += ["hydra.launcher.timeout_min=5", "hydra.launcher.max_num_timeout=0"]
    args += [f"hydra.sweep.dir={sweep}"]
    proc = popen(args, tmp_path)
    try:
        wait_for(lambda: epochs_done(sweep / "1") >= 2, proc)
        subprocess.run(["scancel", "--signal=USR2", f"{slurm_array(sweep)}_1"], check=True)
        out, err = proc.communicate(timeout=300)
    except BaseException:
        proc.kill()
        with contextlib.suppress(Exception):
            subprocess.run(["scancel", slurm_array(sweep)])
        raise
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in out + err
    assert "sweep: 2 jobs: 1 failed, 1 interrupted" in out, out[-2000:]
    failed = json.loads((sweep / "0" / "result.json").read_text())
    assert failed["status"] == "failed"
    assert "model.bidirectional=true is not allowed" in failed["error"]
    # Why, in the submitting shell too, under the summary line.
    [why] = [line for line in out.splitlines() if line.startswith("  failed ")]
    folder = sweep / "0"  # as the sweep's folder is given
    assert why.startswith(f"  failed {folder}: model.bidirectional=true is not allowed"), why
    # Why, in the job's own stderr in submitit's folder.
    logs = submitit_logs(sweep, "err")
    array = slurm_array(sweep)
    lines = logs[f"{array}_0"].splitlines()
    said = [line for line in lines if line.startswith("rnnbench: job 0 failed: ")]
    assert len(said) == 1 and "model.bidirectional=true is not allowed" in said[0], lines

    stopped = json.loads((sweep / "1" / "result.json").read_text())
    assert stopped["status"] == "interrupted" and not stopped.get("requeued"), stopped
    assert "rnnbench: the job is not requeued (" in logs[f"{array}_1"], logs[f"{array}_1"][-2000:]
    lost = [line for line in err.splitlines() if "without a result" in line]
    assert len(lost) == 1 and lost[0].startswith(f"rnnbench: job 1 (SLURM job {array}_1) "), lost


def epochs_done(run_dir: Path) -> int:
    """The epochs in a run folder's metrics.csv (0 before it exists)."""
    path = run_dir / "metrics.csv"
    return len(path.read_text().splitlines()) - 1 if path.is_file() else 0


def slurm_array(sweep_dir: Path) -> str:
    """The SLURM job id of the array a sweep's jobs run in (from submitit's folder)."""
    [array] = {
        m.group(1)
        for p in (sweep_dir / ".submitit").iterdir()
        if (m := re.fullmatch(r"(\d+)_\d+", p.name))
    }
    return array


def test_slurm_ending_jobs_ends_the_sweep_and_its_warning_requeues_to_resume_exactly(tmp_path):
    """One sweep, two long jobs, ended by SLURM while they train. Job 0 is cancelled: the
    sweep does not wait on it forever, but ends, names it in one line and counts it. Job 1 gets
    USR2, what SLURM sends before a time limit (sbatch --signal=USR2@N) and on a preemption: it
    records itself interrupted, submitit requeues it, and it goes on from its last.ckpt to the
    metrics of an uninterrupted run. (One sweep for both: each SLURM sweep costs ~30 s.)"""
    sweep = tmp_path / "sweep"
    proc = popen(
        [*ON_SLURM, *LONG, "trainer.max_epochs=2000,100", f"hydra.sweep.dir={sweep}"], tmp_path
    )
    try:
        # Each job is signalled as soon as it has trained enough: job 1 (100 epochs, ~10 s) first,
        # as it could end before job 0 started on a loaded machine (CI, stop 42).
        wait_for(lambda: epochs_done(sweep / "1") >= 5, proc)
        array = slurm_array(sweep)
        # To the job's steps (the python process srun runs), not its batch shell, as --signal
        # does.
        subprocess.run(["scancel", "--signal=USR2", f"{array}_1"], check=True)
        wait_for(lambda: epochs_done(sweep / "0") >= 2, proc)
        subprocess.run(["scancel", f"{array}_0"], check=True)
        signalled = time.monotonic()
    except BaseException:
        proc.kill()
        with contextlib.suppress(Exception):  # no job left behind on the cluster
            subprocess.run(["scancel", slurm_array(sweep)])
        raise

    # The same run uninterrupted, outside SLURM, while job 1 waits to start again.
    (tmp_path / "alone").mkdir()
    alone = rnnbench_cli([*LONG, "trainer.max_epochs=100"], cwd=tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr[-3000:]

    out, err = proc.communicate(timeout=300)
    ended_s = time.monotonic() - signalled
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in out + err
    assert "sweep: 2 jobs: 1 completed, 1 interrupted" in out
    lost = [line for line in err.splitlines() if "without a result" in line]
    assert len(lost) == 1, err[-3000:]
    assert lost[0].startswith(f"rnnbench: job 0 (SLURM job {array}_0) ended CANCELLED "), lost
    assert ended_s < 150, ended_s  # squeue is polled at least once a minute
    cancelled = json.loads((sweep / "0" / "result.json").read_text())
    assert cancelled["status"] == "interrupted" and "requeued" not in cancelled

    [(requeued, uninterrupted)] = [
        (json.loads((sweep / "1" / "result.json").read_text()), r)
        for r in records(tmp_path / "alone" / "runs")
    ]
    assert requeued["status"] == "completed", requeued.get("error")
    assert requeued["requeued"] == 1
    assert requeued["resume"]["exact"] and requeued["resume"]["epoch"] >= 4
    assert requeued["run_key"] == uninterrupted["run_key"]
    assert requeued["metrics"] == uninterrupted["metrics"]
    assert (sweep / "1" / "metrics.csv").read_text() == Path(
        uninterrupted["run_dir"], "metrics.csv"
    ).read_text()


def test_a_packed_sweeps_claiming_job_killed_leaves_its_pack_to_another_job_that_trains_it_once(
    tmp_path,
):
    """Two jobs of one pack start on the cluster; whichever claims the pack first is killed
    outright (SIGKILL: nothing of it runs to tidy up, as when its node is lost). Its claim ends
    with it, the other job takes the pack on from its last checkpoint and trains it to the end:
    each member ends with the metrics of the same pack trained without a stop."""
    sweep = tmp_path / "sweep"
    packed = [*LONG, "pack=2", "seed=1,2", "trainer.max_epochs=120"]
    described = sweep / "packs" / "0-1" / "pack.json"
    # The test holds the pack's claim until both jobs wait for it: however late SLURM or the
    # imports start one of them, neither trains the pack before the other is there to wait.
    gate = claims.hold(described.parent / "claim", claims.this_process())
    proc = popen([*ON_SLURM, *packed, f"hydra.sweep.dir={sweep}"], tmp_path)
    try:

        def waiting_for(holder: str) -> list[str]:
            """The jobs whose stderr says they wait for the pack held by `holder`."""
            said = f"waiting for the pack in {described.parent}, trained by {holder}"
            return [job for job, e in submitit_logs(sweep, "err").items() if said in e]

        wait_for(lambda: len(waiting_for(f"process {os.getpid()} on host")) == 2, proc)
        gate.close()

        def one_trains_one_waits() -> bool:
            return bool(waiting_for("SLURM job")) and epochs_done(sweep / "0") >= 3

        wait_for(one_trains_one_waits, proc)
        claimer = json.loads(described.read_text())
        assert claimer["status"] == "running" and claimer["slurm_job"], claimer
        subprocess.run(["scancel", "--full", "--signal=KILL", claimer["slurm_job"]], check=True)
    except BaseException:
        gate.close()
        proc.kill()
        with contextlib.suppress(Exception):
            subprocess.run(["scancel", slurm_array(sweep)])
        raise

    (tmp_path / "alone").mkdir()  # the same pack, never stopped, outside SLURM
    alone = rnnbench_cli(["-m", *packed], cwd=tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr[-3000:]

    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in out + err
    taken = json.loads(described.read_text())
    assert taken["status"] == "ended" and taken["slurm_job"] != claimer["slurm_job"], taken
    killed = int(claimer["slurm_job"].rsplit("_", 1)[1])
    lost = [line for line in err.splitlines() if "without a result" in line]
    assert len(lost) == 1 and lost[0].startswith(f"rnnbench: job {killed} "), err[-3000:]
    waited = submitit_logs(sweep, "err")[taken["slurm_job"]]
    assert f"trained by SLURM job {claimer['slurm_job']} (host " in waited, waited[-2000:]

    uninterrupted = {r["config"]["seed"]: r for r in records(tmp_path / "alone" / "runs")}
    for num in (0, 1):
        record = json.loads((sweep / str(num) / "result.json").read_text())
        assert record["status"] == "completed", record.get("error")
        # Trained once: on from the killed job's last checkpoint, not from the start.
        assert record["resume"]["exact"] and record["resume"]["epoch"] >= 3, record["resume"]
        twin = uninterrupted[record["config"]["seed"]]
        assert record["run_key"] == twin["run_key"]
        assert record["metrics"] == twin["metrics"]
        rows = (sweep / str(num) / "metrics.csv").read_text()
        assert rows == Path(twin["run_dir"], "metrics.csv").read_text()


def journal_study(journal: Path, study: str) -> Any:
    """`study` in a journal storage, as a worker reads it."""
    import optuna

    from rnnbench.results.studies import open_study_storage

    return optuna.load_study(study_name=study, storage=open_study_storage(f"journal:{journal}"))


def journal_trials(journal: Path, study: str) -> list:
    """The trials of `study` in a journal storage, as a worker reads them."""
    return journal_study(journal, study).get_trials(deepcopy=False)


def test_two_study_workers_as_a_slurm_array_lose_no_trial_when_one_is_killed(tmp_path):
    """A search's workers as the tasks of one SLURM array, sharing a journal file: one worker
    is killed outright in the middle of a trial. The other takes that trial up again (it goes
    on from the killed run's checkpoint), and the study ends with exactly n_trials completed
    trials, no configuration trained twice, and the best one confirmed once."""
    journal, search = tmp_path / "study.journal", tmp_path / "runs" / "searches" / "reber"
    args = ["-m", "hparams_search=reber", "model=rnn", *SMALL, "threads=1"]
    args += ["data.train_strings=400", "trainer.max_epochs=60", "hydra.sweeper.n_trials=4"]
    args += ["hydra.sweeper.confirm_seeds=1", f"hydra.sweeper.storage=journal:{journal}"]
    script = Path(sys.executable).parent / "rnnbench"
    command = " ".join(shlex.quote(a) for a in [str(script), *args])
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", "--mem=2G",
         f"--output={tmp_path}/worker-%a.out", f"--error={tmp_path}/worker-%a.err",
         f"--chdir={tmp_path}", f"--wrap=exec {command}"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "WANDB_MODE": "offline"},
    )  # fmt: skip
    array = submitted.stdout.strip().split(";")[0]

    def worker_mid_trial() -> int | None:
        """The task number of a worker with a trial 3 epochs in (either: under CI's load one
        worker may start long after the other)."""
        if not journal.is_file():
            return None
        with contextlib.suppress(Exception):  # the study not made yet
            for t in journal_trials(journal, "reber"):
                job = str(t.user_attrs.get("slurm_job", ""))
                if t.state.name == "RUNNING" and job.startswith(f"{array}_"):
                    if epochs_done(search / str(t.number)) >= 3:
                        return int(job.rsplit("_", 1)[1])
        return None

    def array_ended() -> bool:
        listed = subprocess.run(
            ["squeue", "--noheader", "--jobs", array, "--states=all", "--format=%T"],
            capture_output=True, text=True,
        )  # fmt: skip
        return not (set(listed.stdout.split()) - ENDED)

    try:
        deadline = time.monotonic() + 300
        while (killed := worker_mid_trial()) is None:
            assert time.monotonic() < deadline, (tmp_path / "worker-0.err").read_text()[-2000:]
            time.sleep(0.2)
        subprocess.run(["scancel", "--full", "--signal=KILL", f"{array}_{killed}"], check=True)
        deadline = time.monotonic() + 400
        while not array_ended():
            assert time.monotonic() < deadline, (tmp_path / f"worker-{1 - killed}.err").read_text()
            time.sleep(1)
    finally:
        subprocess.run(["scancel", array])

    other = 1 - killed
    out = (tmp_path / f"worker-{other}.out").read_text()
    err = (tmp_path / f"worker-{other}.err").read_text()
    assert "Traceback" not in out + err, err[-3000:]
    found = journal_trials(journal, "reber")
    counted = [
        t for t in found if not (t.user_attrs.get("requeued") or t.user_attrs.get("surplus"))
    ]
    assert len(counted) == 4 and all(t.state.name == "COMPLETE" for t in counted), found
    [dead] = [t for t in found if t.user_attrs.get("requeued")]
    assert dead.user_attrs["slurm_job"] == f"{array}_{killed}"
    [retry] = [t for t in counted if t.user_attrs.get("retry_of") == dead.number]
    assert retry.params == dead.params and retry.user_attrs["slurm_job"] == f"{array}_{other}"
    resumed = json.loads((Path(retry.user_attrs["run_dir"]) / "result.json").read_text())
    assert resumed["status"] == "completed", resumed.get("error")
    # In the dead trial's own folder, from the checkpoint it left there.
    assert Path(retry.user_attrs["run_dir"]) == search / str(dead.number)
    assert resumed["resume"]["exact"] and resumed["resume"]["epoch"] >= 3, resumed["resume"]

    made = records(tmp_path / "runs")
    trained = [r for r in made if not r.get("reused_from") and r["status"] != "interrupted"]
    assert len({r["run_key"] for r in trained}) == len(trained)  # no configuration twice
    assert "study reber: 4 trials (4 complete)" in out, out[-2000:]
    confirmed = [line for line in out.splitlines() if "confirmed with seeds" in line]
    assert len(confirmed) == 1 and "(1 of 1 completed)" in confirmed[0], out[-2000:]
    # Each confirming configuration trained once: the best trial's, and perhaps an earlier
    # best's, confirmed by the worker left idle while the other's trial ran.
    confirming = [r for r in made if "confirm-" in Path(r["run_dir"]).name]
    trained_once = [r for r in confirming if not r.get("reused_from")]
    assert len({r["run_key"] for r in trained_once}) == len(trained_once) in (1, 2), confirming
    final = journal_study(journal, "reber").user_attrs["confirmed"]["run_dirs"]
    assert len(final) == 1 and Path(final[0]).name.endswith("confirm-1235"), final
