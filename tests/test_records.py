"""A record never lies: another configuration never lands in a run's folder, a resume ends
exactly where the uninterrupted run ends, checkpoints are data and never code, a run that is no
result is never `completed`, a full or read-only disk loses nothing, a stopped sweep leaves no
orphans, and every bad value is one line before anything starts. Real processes throughout."""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import (
    REPO,
    SCRIPT,
    TINY_REBER,
    assert_refused,
    popen,
    records,
    rnnbench_cli,
    train,
    wait_for,
)
from rnnbench.errors import ConfigError
from rnnbench.results.record import read_trace
from rnnbench.run.sweep import descendants

QUIET = ["logger=none", "trainer.enable_progress_bar=false"]
TINY = TINY_REBER


def epochs_done(run_dir: Path) -> int:
    path = run_dir / "metrics.csv"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


# 1. Another configuration into an existing run folder ---------------------------------------


@pytest.fixture(scope="module")
def completed_folder(tmp_path_factory):
    """A folder holding a completed run, and the bytes of its record and checkpoints."""
    cwd = tmp_path_factory.mktemp("taken")
    run_dir = cwd / "runs" / "mine"
    done = rnnbench_cli([*TINY, f"hydra.run.dir={run_dir}"], cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    files = {p: p.read_bytes() for p in [run_dir / "result.json", *run_dir.rglob("*.ckpt")]}
    return cwd, run_dir, files


@pytest.mark.parametrize("change", ["optim.lr=0.01", "seed=7", "model.hidden_size=12"])
def test_another_config_is_refused_from_a_run_folder(completed_folder, change):
    cwd, run_dir, files = completed_folder
    key = json.loads((run_dir / "result.json").read_text())["run_key"]
    result = rnnbench_cli([*TINY, change, f"hydra.run.dir={run_dir}"], cwd=cwd)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if "error" in x]
    assert str(run_dir) in line and key in line and "run_key" in line
    for path, data in files.items():  # the run's record and checkpoints are untouched
        assert path.read_bytes() == data, path


def test_another_config_is_refused_by_run_itself(completed_folder):
    """The same guarantee for a run started in-process (a sweep job, the Python API)."""
    from rnnbench.config import compose
    from rnnbench.run.train import run

    cwd, run_dir, files = completed_folder
    with pytest.raises(ConfigError, match="holds another configuration's run"):
        run(compose([*TINY, "optim.lr=0.01"]), run_dir)
    for path, data in files.items():
        assert path.read_bytes() == data, path


# 2. Exact resume ----------------------------------------------------------------------------

# 2 x 64 with dropout: what is tested is the resume, and a small model keeps the suite short
# (2 x 200 took a minute a test); five epochs leave a kill after the first one room to land.
RESUMABLE = [
    *QUIET,
    "data.train_strings=1000",
    "model.dropout=0.2",
    "model.hidden_size=64",
    "trainer.max_epochs=5",
]
BUDGETS = {
    "epochs bind": [],
    "max_steps binds mid-epoch": ["trainer.max_steps=80"],  # 19 steps an epoch: 4.2 epochs
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run folder of each budget's run without a stop, made once."""
    made: dict[str, Path] = {}

    def folder(budget: str) -> Path:
        if budget not in made:
            cwd = tmp_path_factory.mktemp("whole")
            done = rnnbench_cli([*RESUMABLE, *BUDGETS[budget], "hydra.run.dir=whole"], cwd=cwd)
            assert done.returncode == 0, done.stderr[-3000:]
            made[budget] = cwd / "whole"
        return made[budget]

    return folder


# Each budget once, each relaunch folder once: the four combinations cost a minute more of the
# suite and exercise no code path these two do not.
@pytest.mark.parametrize(
    "budget, relaunch_dir", [("max_steps binds mid-epoch", "same"), ("epochs bind", "new")]
)
def test_killed_run_resumes_exactly(tmp_path, budget, relaunch_dir, uninterrupted):
    """SIGKILL after the first epoch, relaunch: metrics, step count, metrics.csv and steps.csv
    are the uninterrupted run's, with the history once."""
    args = [*RESUMABLE, *BUDGETS[budget]]
    whole = uninterrupted(budget)

    cwd = tmp_path / "later"  # its own results_root: the whole run is not reused
    killed = cwd / "runs" / "killed"
    cwd.mkdir()
    proc = popen([*args, f"hydra.run.dir={killed}"], cwd=cwd)
    wait_for(lambda: epochs_done(killed) >= 1, proc)
    time.sleep(0.3)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "result.json").exists()

    again = killed if relaunch_dir == "same" else cwd / "runs" / "new"
    resumed = rnnbench_cli([*args, f"hydra.run.dir={again}"], cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((whole / "result.json").read_text())
    b = json.loads((again / "result.json").read_text())
    assert b["status"] == "completed" and b["resume"]["exact"] is True
    assert b["resume"]["step"] > 0
    # The summary says it went on from a checkpoint: from which epoch and step, and whose.
    whose = f" of {killed.resolve()}" if relaunch_dir == "new" else ""
    line = f"from epoch {b['resume']['epoch']}, step {b['resume']['step']}{whose} (exact)"
    assert re.search(rf"^resumed +{re.escape(line)}$", resumed.stdout, re.M), resumed.stdout
    assert b["metrics"] == a["metrics"]
    assert b["timing"]["steps"] == a["timing"]["steps"]
    assert b["timing"]["items"] == a["timing"]["items"]
    for name in ("metrics.csv", "steps.csv"):
        assert (again / name).read_text() == (whole / name).read_text(), name


def test_an_epoch_max_steps_cuts_short_shows_no_validation(uninterrupted):
    """max_steps=80 stops training 4 steps into epoch 4, where no validation runs: its row in
    metrics.csv has no val/ values (Lightning's callback_metrics still hold epoch 3's), and the
    best epoch is one that was validated."""
    whole = uninterrupted("max_steps binds mid-epoch")
    rows = read_trace(whole / "metrics.csv")
    assert list(rows["step"]) == [19, 38, 57, 76, 80]
    assert rows["val/loss"].iloc[:4].notna().all() and pd.isna(rows["val/loss"].iloc[4])
    record = json.loads((whole / "result.json").read_text())
    assert record["best"]["epoch"] == int(rows["val/loss"].idxmin()) <= 3


def test_killed_joblib_sweep_resumes_exactly(tmp_path):
    """A joblib sweep killed whole (its process group) and launched again: every job ends
    with the metrics of the same job run without a stop."""
    sweep = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=rnn,gru"]
    args = [*RESUMABLE, "threads=1"]
    (tmp_path / "whole").mkdir()
    whole = rnnbench_cli([*sweep, *args], cwd=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    reference = {r["config"]["model"]["cell"]: r for r in records(tmp_path / "whole")}

    cwd = tmp_path / "killed"
    cwd.mkdir()
    proc = popen([*sweep, *args], cwd=cwd, start_new_session=True)
    wait_for(lambda: len([p for p in cwd.rglob("metrics.csv") if epochs_done(p.parent)]) >= 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    finished = len(records(cwd / "runs"))  # a fast job may have finished before the kill
    assert finished < 2

    time.sleep(1.1)  # a new sweep folder
    again = rnnbench_cli([*sweep, *args], cwd=cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    second = [r for r in records(cwd / "runs") if "multirun" in r["run_dir"]]
    second = [r for r in second if r.get("resumed_from") or r.get("reused_from")]
    assert len(second) == 2 and sum(bool(r.get("resumed_from")) for r in second) == 2 - finished
    for r in second:
        ref = reference[r["config"]["model"]["cell"]]
        assert r["metrics"] == ref["metrics"] and r["timing"]["steps"] == ref["timing"]["steps"]


def test_a_mid_epoch_resume_says_it_is_not_exact(tmp_path):
    """checkpoint_every_n_steps can leave a mid-epoch checkpoint; a resume from one is
    recorded as such, never passed off as the uninterrupted run."""
    args = [*RESUMABLE, "checkpoint_every_n_steps=5"]
    run_dir = tmp_path / "runs" / "killed"
    proc = popen([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    wait_for(lambda: epochs_done(run_dir) >= 1, proc)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    start = ckpt.stat().st_mtime
    wait_for(lambda: ckpt.stat().st_mtime > start + 1e-3, proc)  # a step checkpoint
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    resumed = rnnbench_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((run_dir / "result.json").read_text())
    exact = bool(state.get("rnnbench_boundary"))
    assert record["resume"]["exact"] is exact
    assert any("mid-epoch" in note for note in record["notes"]) is (not exact)
    if not exact:
        assert "mid-epoch" in resumed.stdout  # the summary says so


# 3. No code from a checkpoint ---------------------------------------------------------------


class RunsCode:
    """A pickle that would create a file when unpickled with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> bytes:
    run_dir = tmp_path_factory.mktemp("ckpt")
    train([*TINY, "checkpoints.keep=both"], run_dir)  # a completed run keeps last.ckpt then
    return (run_dir / "checkpoints" / "last.ckpt").read_bytes()


def bad_checkpoint(kind: str, real: bytes, marker: Path) -> bytes:
    return {
        "truncated": lambda: real[: len(real) // 2],
        "random bytes": lambda: os.urandom(4096),
        "empty": lambda: b"",
        "pickle with code": lambda: pickle.dumps({"state_dict": RunsCode(marker)}),
    }[kind]()


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "empty", "pickle with code"])
def test_an_unloadable_checkpoint_of_its_own_is_refused_in_one_line(
    kind, tmp_path, real_checkpoint
):
    marker = tmp_path / "code-ran"
    run_dir = tmp_path / "runs" / "mine"
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(bad_checkpoint(kind, real_checkpoint, marker))
    result = rnnbench_cli([*TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert not marker.exists()  # the pickle's code never ran
    assert_refused(result, f"checkpoint {last} cannot be loaded", tmp_path)


def test_a_corrupt_checkpoint_of_another_run_is_skipped(tmp_path, real_checkpoint, capsys):
    """An unfinished run with the same run_key left a truncated last.ckpt: a later launch warns,
    starts afresh and completes, instead of failing on it for ever."""
    from omegaconf import OmegaConf

    from rnnbench.config import compose
    from rnnbench.results.record import KEY_FILE, run_key
    from rnnbench.run.train import run

    cfg = compose([*TINY, f"results_root={tmp_path / 'runs'}"])
    first = tmp_path / "runs" / "first"
    (first / "checkpoints").mkdir(parents=True)
    (first / KEY_FILE).write_text(run_key(OmegaConf.to_container(cfg, resolve=True)))
    (first / "checkpoints" / "last.ckpt").write_bytes(real_checkpoint[:1000])
    record = run(cfg, tmp_path / "runs" / "second")
    assert record["status"] == "completed" and "resumed_from" not in record
    err = capsys.readouterr().err
    assert "warning: skipped: checkpoint" in err and str(first) in err


def test_every_torch_load_is_weights_only():
    """No module loads a checkpoint in a way that can run code."""
    offenders = []
    for path in (REPO / "rnnbench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                safe = [k for k in node.keywords if k.arg == "weights_only"]
                if not safe or not (
                    isinstance(safe[0].value, ast.Constant) and safe[0].value.value is True
                ):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders


# 4. Non-finite results, zero budgets, no validation --------------------------------------------


def test_non_finite_weights_or_metrics_are_diverged_not_completed():
    """divergence() on a real model and real metric values."""
    import torch

    from rnnbench.nn.model import SequenceModel
    from rnnbench.run.runner import divergence

    model = SequenceModel(output_size=5, vocab_size=5, cell="lstm", hidden_size=4, num_layers=1)
    finite = {"val/loss": 1.0, "test/loss": 1.2, "test/ppl": 3.3}
    assert divergence(None, model.parameters(), finite) is None
    bad_test = {**finite, "test/ppl": float("inf")}
    assert "test/ppl" in divergence(None, model.parameters(), bad_test)
    bad_val = {**finite, "val/loss": float("nan")}
    assert "val/loss" in divergence(None, model.parameters(), bad_val)
    said = divergence("at step 7", model.parameters(), finite)
    assert said == "the training loss became non-finite at step 7"
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    assert "weights" in divergence(None, model.parameters(), finite)


def test_weights_blown_up_by_the_last_step_make_the_run_diverged(tmp_path):
    """One SGD step at an absurd rate: its loss was finite, the weights after it are not."""
    record = train(
        [*TINY, "optim=sgd", "optim.lr=1e38", "trainer.limit_train_batches=1", "scheduler=none"],
        tmp_path,
    )
    assert record["status"] == "diverged", record["metrics"]
    assert any(note.startswith("diverged:") for note in record["notes"])


def test_a_budget_shorter_than_an_epoch_says_the_test_used_the_last_weights(tmp_path):
    record = train([*TINY, "trainer.max_steps=3", "trainer.limit_val_batches=0"], tmp_path)
    assert record["status"] == "completed" and record["best"] is None
    assert record["tested"] == "last"
    assert any("no validation ran" in note for note in record["notes"])


# 5. Disk full and read-only folders ---------------------------------------------------------


def in_small_tmpfs(script: str, size: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `script` (bash; $D is the mount point) in a private mount namespace with a tmpfs
    of `size` on $D, so a full or read-only disk is real and nothing leaks out."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    mount = tmp_path / "disk"
    mount.mkdir()
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mount}"],
        capture_output=True,
    )
    if probe.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI cannot mount a tmpfs: {probe.stderr.decode()[-500:]}")
        pytest.skip("no permission to mount a tmpfs in a private namespace")
    env = {**os.environ, "WANDB_MODE": "offline", "D": str(mount), "RB": str(SCRIPT)}
    env.pop("RNNBENCH_RUNS_DIR", None)
    return subprocess.run(
        ["unshare", "-m", "bash", "-c", f"mount -t tmpfs -o size={size} tmpfs $D && {script}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


BIG = [*TINY, "model.hidden_size=256"]  # a checkpoint of ~3 MB


def test_a_full_disk_is_one_line_and_leaves_no_truncated_checkpoint(tmp_path):
    args = " ".join([*BIG, "hydra.run.dir=$D/run", "results_root=$D"])
    out = in_small_tmpfs(
        f'$RB {args}; echo "rc=$?"; ls -a $D/run/checkpoints; echo ---; cat $D/run/result.json',
        "400k",
        tmp_path,
    )
    listing, _, record = out.stdout.partition("---")
    assert "rc=0" not in listing and "rc=" in listing, out.stdout + out.stderr
    errors = [x for x in out.stderr.splitlines() if "error" in x.lower()]
    assert len(errors) == 1 and "No space left on device" in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert ".ckpt" not in listing and ".tmp" not in listing  # nothing half-written
    if record.strip():
        assert json.loads(record)["status"] == "failed"


def test_a_full_disk_keeps_the_earlier_completed_record(tmp_path):
    """A forced re-run in a completed run's folder on a disk that fills up: the completed
    record survives, byte for byte."""
    small = " ".join([*TINY, "hydra.run.dir=$D/run", "results_root=$D"])
    big = " ".join([*BIG, "force=true", "hydra.run.dir=$D/run", "results_root=$D"])
    script = (
        f"$RB {small} >/dev/null 2>&1 && cp $D/run/result.json $D/../before.json && "
        f"dd if=/dev/zero of=$D/fill bs=4k 2>/dev/null; rm -f $D/fill; "
        f"dd if=/dev/zero of=$D/fill bs=1k count=$(( $(df -k --output=avail $D | tail -1) - 200 )) "
        f"2>/dev/null; $RB {big}; echo rc=$?; cmp $D/run/result.json $D/../before.json && echo SAME"
    )
    script = script.replace("$D/../before.json", "/tmp/rnnbench-before-$$.json")
    out = in_small_tmpfs(script, "6m", tmp_path)
    assert "rc=0" not in out.stdout and "rc=" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "SAME" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "Traceback" not in out.stderr


def test_a_read_only_run_folder_is_one_line_before_the_run(tmp_path):
    small = " ".join([*TINY, "hydra.run.dir=$D/run", "results_root=$D"])
    script = (
        f"$RB {small} >/dev/null 2>&1 && sha256sum $D/run/result.json && "
        f"mount -o remount,ro $D && $RB {small} force=true; echo rc=$?; "
        f"sha256sum $D/run/result.json"
    )
    out = in_small_tmpfs(script, "4m", tmp_path)
    sums = [x.split()[0] for x in out.stdout.splitlines() if x.endswith("result.json")]
    assert len(sums) == 2 and sums[0] == sums[1], out.stdout
    assert "rc=2" in out.stdout, out.stdout + out.stderr[-2000:]
    [line] = [x for x in out.stderr.splitlines() if "error" in x]
    assert "Read-only file system" in line and "Traceback" not in out.stderr


# 6. Stopping a sweep ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "launcher, signum",
    [
        ("joblib", signal.SIGTERM),
        ("joblib", signal.SIGINT),
        ("submitit_local", signal.SIGTERM),
        ("basic", signal.SIGINT),
        ("basic", signal.SIGTERM),
    ],
)
def test_a_stopped_sweep_leaves_no_orphans_and_records_its_jobs(launcher, signum, tmp_path):
    long = [a for a in TINY if not a.startswith("trainer.max_epochs")]
    sweep = ["-m", f"hydra/launcher={launcher}", "model=rnn,gru", *long]
    sweep += ["trainer.max_epochs=500", "threads=1"]
    if launcher == "joblib":
        sweep.append("hydra.launcher.n_jobs=2")
    running = 1 if launcher == "basic" else 2
    proc = popen(sweep, cwd=tmp_path)
    wait_for(lambda: len(list(tmp_path.rglob("metrics.csv"))) >= running, proc)
    workers = descendants(proc.pid)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err and "Traceback" not in out
    # Every job of the sweep is counted, those that never started too.
    waiting = f", {2 - running} not started" if running < 2 else ""
    assert f"sweep: 2 jobs: {running} interrupted{waiting}" in out, out[-2000:]
    time.sleep(0.5)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and not zombie(pid)]
    assert not alive
    statuses = [r["status"] for r in records(tmp_path / "runs")]
    assert statuses == ["interrupted"] * running


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# 7. One clear line for every bad value, before anything starts -------------------------------

BAD_VALUES = {
    "seed negative": (["seed=-1"], "seed=-1 is not allowed"),
    "seed a string": (["seed=abc"], "seed='abc' is not allowed"),
    "threads zero": (["threads=0"], "threads=0 is not allowed"),
    "lr negative": (["optim.lr=-0.1"], "optim.lr=-0.1 is not allowed"),
    "lr a string": (["optim.lr=fast"], "optim.lr='fast' is not allowed"),
    "momentum 1": (["optim=sgd", "optim.momentum=1.0"], "optim.momentum=1.0 is not allowed"),
    "weight decay": (["optim.weight_decay=-1"], "optim.weight_decay=-1 is not allowed"),
    "plateau factor": (["scheduler.factor=4"], "scheduler.factor=4 is not allowed"),
    "plateau patience": (["scheduler.patience=-2"], "scheduler.patience=-2 is not allowed"),
    "dropout 1.5": (["model.dropout=1.5"], "model.dropout=1.5 is not allowed"),
    "init range 0": (["model.init_range=0"], "model.init_range=0 is not allowed"),
    "forget bias nan": (["model.forget_bias=nan"], "model.forget_bias=nan is not allowed"),
    "bool as string": (["model.bidirectional=yes"], "model.bidirectional='yes' is not allowed"),
    "max_steps 0": (["trainer.max_steps=0"], "trainer.max_steps=0 is not allowed"),
    "max_epochs 0": (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed"),
    "no train batches": (
        ["trainer.limit_train_batches=0"],
        "trainer.limit_train_batches=0 is not allowed",
    ),
    "devices 0": (["trainer.devices=0"], "trainer.devices=0 is not allowed"),
    "checkpoint steps": (["checkpoint_every_n_steps=0"], "checkpoint_every_n_steps=0 is not"),
    "gru option on lstm": (["model.gru_reset=before"], "applies to model.cell=gru only"),
    "forget bias on rnn": (["model=rnn", "model.forget_bias=1"], "applies to model.cell=lstm"),
    "data.name a path": (["data.name=../../escape"], "data.name='../../escape' is not allowed"),
    "results_root under a file": (["results_root=afile/runs"], "afile is a file, not a folder"),
    "sweep value": (["-m", "optim.lr=0.1,-5"], "optim.lr=-5 is not allowed"),
    "sweep group value": (["-m", "model=lstm,rnn", "model.forget_bias=1"], "model.cell=rnn"),
}


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_every_bad_value_is_one_line_before_any_run_folder(name, tmp_path):
    overrides, message = BAD_VALUES[name]
    (tmp_path / "afile").write_text("not a folder")
    result = rnnbench_cli([*overrides, "logger=none"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("rnnbench: error: "), result.stderr[-2000:]
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # no run folder was made


def test_a_bad_value_is_refused_before_torch_is_imported(tmp_path):
    code = (
        "import sys\n"
        "from rnnbench.run.cli import cli\n"
        "sys.argv = ['rnnbench', 'optim.lr=-1']\n"
        "try:\n    cli()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print('torch' in sys.modules, 'pytorch_lightning' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["exit", "2", "False", "False"], out.stdout + out.stderr


def test_every_shipped_config_passes_the_checks():
    """Every recipe and every option of every group composes to values the checks allow."""
    from rnnbench.config import compose, config_problem

    overrides = [
        [f"experiment={p.relative_to(REPO / 'conf' / 'experiment').with_suffix('')}"]
        for p in (REPO / "conf" / "experiment").glob("*/*.yaml")
    ]
    for group in ("data", "model", "optim", "scheduler", "trainer"):
        overrides += [[f"{group}={p.stem}"] for p in (REPO / "conf" / group).glob("*.yaml")]
    assert len(overrides) > 30
    for o in overrides:
        assert config_problem(compose(o)) is None, o


# 9. Modes -----------------------------------------------------------------------------------


def test_records_and_checkpoints_get_the_mode_of_the_runs_other_files(tmp_path):
    old = os.umask(0o022)
    try:
        train([*TINY, "checkpoints.keep=both"], tmp_path)
    finally:
        os.umask(old)
    for name in ("result.json", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_every_archived_record_keeps_its_run_key():
    """The records in results/records (hours of CPU training) are reused only while their
    command line still composes to the run_key they were recorded with."""
    from omegaconf import OmegaConf

    from rnnbench.config import compose
    from rnnbench.results.record import run_key

    archived = sorted((Path(__file__).parent.parent / "results" / "records").rglob("result.json"))
    assert len(archived) >= 30
    for path in archived:
        record = json.loads(path.read_text())
        config = OmegaConf.to_container(compose(list(record["overrides"])), resolve=True)
        assert run_key(config) == record["run_key"], (path, record["overrides"])


def test_flushing_denormals_is_the_old_identity_and_not_flushing_another():
    from omegaconf import OmegaConf

    from rnnbench.config import compose
    from rnnbench.results.record import run_key

    def key(*overrides: str) -> str:
        return run_key(OmegaConf.to_container(compose(list(overrides)), resolve=True))

    assert key("data=reber") == key("data=reber", "flush_denormal=true")
    assert key("data=reber") != key("data=reber", "flush_denormal=false")


def test_where_a_run_ran_is_not_its_identity_but_its_precision_is():
    from omegaconf import OmegaConf

    from rnnbench.config import compose
    from rnnbench.results.record import run_key

    def key(*overrides: str) -> str:
        return run_key(OmegaConf.to_container(compose(list(overrides)), resolve=True))

    auto = key("data=reber")  # the default: trainer.accelerator=auto
    assert auto == key("data=reber", "trainer.accelerator=cpu")
    assert auto == key("data=reber", "trainer.accelerator=gpu")
    assert auto == key("data=reber", "+trainer.precision=32-true")
    assert auto != key("data=reber", "+trainer.precision=bf16-mixed")
