"""A record says `resume.exact: true` only for a kind of resume proven exact here: every kind
in checkpoints.EXACT_RESUMES is killed with SIGKILL mid-run and relaunched, and must end with
the uninterrupted run's metrics, metrics.csv (learning rates included) and steps.csv.

One sweep holds every kind; it is killed once per job, each time in a later job, and relaunched
into the same sweep folder (outside the runs root): each relaunch resumes the job killed last
and reuses the jobs before it, so every job is killed and resumed once, in 10 launches."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from conftest import popen, rnnbench_cli, wait_for
from rnnbench.config import compose
from rnnbench.run.checkpoints import EXACT_RESUMES, PROVEN_OPTIMIZERS, PROVEN_SCHEDULERS

QUIET = ["logger=none", "trainer.enable_progress_bar=false", "threads=1"]
# lr 0.03 with a schedule that cuts it when validation stalls (patience 0): on this data the
# plateau schedule cuts it after the third epoch or later, so the resumed part must hold the
# schedule's state exactly. 8 epochs give the kill, landing in epoch 2 to 4, room.
ARGS = [
    *QUIET,
    "data.train_strings=800",
    "model.dropout=0.2",
    "model.hidden_size=48",
    "trainer.max_epochs=8",
    "optim.lr=0.03",
    "trainer.gradient_clip_val=1",
]
OPTIMS = {"adam": "torch.optim.Adam", "sgd": "torch.optim.SGD", "rmsprop": "torch.optim.RMSprop"}
SCHEDULERS = {
    "none": None,
    "step": "rnnbench.run.optim.step_decay",
    "plateau": "torch.optim.lr_scheduler.ReduceLROnPlateau",
}
LONE_SWEEP = [f"optim={','.join(OPTIMS)}", f"scheduler={','.join(SCHEDULERS)}"]


def rows(path: Path) -> int:
    return len(path.read_text().splitlines()) - 1 if path.is_file() else 0


def kill_each_job_then_finish(args: list[str], cwd: Path, sweep: Path, jobs: int, every: int):
    """Launch the sweep `jobs` times, killing launch k (SIGKILL) once job k has `every` epochs
    in its metrics.csv, then once more to the end; returns the last launch."""
    for k in range(jobs):
        proc = popen(["-m", *args, f"hydra.sweep.dir={sweep}"], cwd=cwd)
        wait_for(lambda k=k: rows(sweep / str(k) / "metrics.csv") >= every, proc)
        time.sleep(0.15)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert not (sweep / str(k) / "result.json").exists(), f"job {k} ended before its kill"
    return rnnbench_cli(["-m", *args, f"hydra.sweep.dir={sweep}"], cwd=cwd)


def by_kind(sweep: Path) -> dict[tuple[str, str], dict]:
    found = {}
    for path in sweep.glob("*/result.json"):
        r = json.loads(path.read_text())
        cfg = r["config"]
        scheduler = (cfg.get("scheduler") or {}).get("_target_")
        found[(cfg["optim"]["_target_"], scheduler)] = r
    return found


def test_the_proven_kinds_are_every_optimizer_and_scheduler_config():
    """Every conf/optim and conf/scheduler option is a proven kind for lone runs (a new one
    must join the sweep below), and the kinds are the config files' targets."""
    for name, target in OPTIMS.items():
        assert compose([f"optim={name}"]).optim._target_ == target
    for name, target in SCHEDULERS.items():
        cfg = compose([f"scheduler={name}"])
        assert (cfg.scheduler.get("_target_") if cfg.get("scheduler") else None) == target
    assert set(OPTIMS.values()) == set(PROVEN_OPTIMIZERS)
    assert set(SCHEDULERS.values()) == set(PROVEN_SCHEDULERS)
    assert {k for k in EXACT_RESUMES if k[0] == "lone"} == {
        ("lone", o, s) for o in OPTIMS.values() for s in SCHEDULERS.values()
    }


def test_every_optimizer_and_scheduler_resumes_exactly(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    whole = rnnbench_cli(["-m", *LONE_SWEEP, *ARGS, "hydra.sweep.dir=sweep"], cwd=ref)
    assert whole.returncode == 0, whole.stderr[-3000:]
    reference = by_kind(ref / "sweep")
    assert len(reference) == 9

    cwd, sweep = tmp_path / "work", tmp_path / "elsewhere" / "sweep"  # outside cwd/runs
    cwd.mkdir()
    last = kill_each_job_then_finish([*LONE_SWEEP, *ARGS], cwd, sweep, jobs=9, every=2)
    assert last.returncode == 0, last.stderr[-3000:]
    # The last launch trained only the job killed last: the others were finished and reused.
    assert "sweep: 9 jobs: 1 completed, 8 reused" in last.stdout, last.stdout[-2000:]
    resumed = by_kind(sweep)
    assert resumed.keys() == reference.keys()
    for kind, b in resumed.items():
        a = reference[kind]
        assert b["status"] == "completed", kind
        assert b["resume"]["exact"] is True and b["resume"]["epoch"] >= 2, (kind, b["resume"])
        assert b["metrics"] == a["metrics"], kind
        for name in ("metrics.csv", "steps.csv"):
            theirs = Path(a["run_dir"]) / name
            assert (Path(b["run_dir"]) / name).read_text() == theirs.read_text(), (kind, name)
    # The case that failed: Adam under the plateau schedule cuts its rate after the resume.
    plateau = resumed[(OPTIMS["adam"], SCHEDULERS["plateau"])]
    lines = (Path(plateau["run_dir"]) / "metrics.csv").read_text().splitlines()[1:]
    rates = [float(line.split(",")[-1]) for line in lines]
    assert min(rates[plateau["resume"]["epoch"] :]) < rates[0], rates


def test_a_kind_no_test_proves_is_recorded_inexact(tmp_path):
    """A resume of a kind outside EXACT_RESUMES (here a schedule the suite never resumes) says
    `exact: false` and why, even from an epoch boundary."""
    args = [
        *ARGS,
        "trainer.max_epochs=4",
        "scheduler=step",
        "scheduler._target_=torch.optim.lr_scheduler.StepLR",
        "~scheduler.start_epoch",
        "~scheduler.factor",
        "+scheduler.step_size=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = popen(args, cwd=tmp_path)
    wait_for(lambda: rows(tmp_path / "run" / "metrics.csv") >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    again = rnnbench_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["resume"]["exact"] is False
    assert any("no test proves a resume exact" in n and "StepLR" in n for n in record["notes"])


PACKED_SWEEP = ["seed=1,2", f"scheduler={','.join(SCHEDULERS)}", "pack=2"]


def test_every_scheduler_of_a_pack_resumes_exactly(tmp_path):
    """The packed kinds: a sweep of 3 packs of 2 seeds, one pack per schedule, each killed in
    its third epoch and relaunched into the same sweep folder (the killed job's claim on its
    pack ends with its process: the relaunch takes it)."""
    args = [*PACKED_SWEEP, *ARGS]
    ref = tmp_path / "ref"
    ref.mkdir()
    whole = rnnbench_cli(["-m", *args, "hydra.sweep.dir=sweep"], cwd=ref)
    assert whole.returncode == 0, whole.stderr[-3000:]

    cwd, sweep = tmp_path / "work", tmp_path / "elsewhere" / "sweep"
    cwd.mkdir()
    last = kill_each_job_then_finish(args, cwd, sweep, jobs=3, every=2)
    assert last.returncode == 0, last.stderr[-3000:]
    assert "sweep: 6 jobs: 2 completed, 4 reused" in last.stdout, last.stdout[-2000:]
    for job in range(6):
        a = json.loads((ref / "sweep" / str(job) / "result.json").read_text())
        b = json.loads((sweep / str(job) / "result.json").read_text())
        kind = (b["config"]["scheduler"] or {}).get("_target_"), b["seed"]
        assert b["status"] == "completed" and b["packed_with"]["size"] == 2, kind
        assert b["resume"]["exact"] is True and b["resume"]["epoch"] >= 2, (kind, b["resume"])
        assert b["metrics"] == a["metrics"], kind
        for name in ("metrics.csv", "steps.csv"):
            theirs = ref / "sweep" / str(job) / name
            assert (sweep / str(job) / name).read_text() == theirs.read_text(), (kind, name)
