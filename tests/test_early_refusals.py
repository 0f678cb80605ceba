"""A bad value found while the data, model or trainer are built is refused as check_config
refuses one: one line naming its real cause, exit 2, and nothing left behind: no run folder, no
`failed` record, no W&B run. In a sweep the job is recorded failed, for the summary."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SCRIPT, TINY_REBER_RUN, records, require_data, rnnbench_cli
from rnnbench.config import CONF_DIR
from rnnbench.run.cli import check_command_line

ARGS = [*TINY_REBER_RUN, "trainer.enable_progress_bar=false"]  # logger=wandb (offline): default

CASES = {
    "bidirectional language model": (["model.bidirectional=true"], "model.bidirectional=true"),
    "negative string count": (["data.train_strings=-3"], "data.train_strings=-3"),
    "a GPU this machine lacks": (["trainer=gpu"], "trainer.accelerator=gpu needs a CUDA GPU"),
    # Refused by the command line's checks, before Hydra makes any folder:
    "a mistyped key": (
        ["model.hiden_size=10"],
        "model.hiden_size is not a key of the configuration: did you mean model.hidden_size?",
    ),
    "a mistyped key added as new": (
        ["+model.hiden_size=10"],
        "model.hiden_size is not a key of model (SequenceModel): did you mean model.hidden_size?",
    ),
    "the callback whose checkpoint the test scores, dropped": (
        ["~callbacks.best"],
        "~callbacks.best is not allowed: its best.ckpt is the weights the test scores",
    ),
    "the callback that records validation, dropped": (
        ["~callbacks.epochs"],
        "~callbacks.epochs is not allowed: its metrics.csv gives the record its validation",
    ),
}


def assert_refused_leaving_nothing(result: subprocess.CompletedProcess, cwd: Path, says: str):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [x for x in result.stderr.splitlines() if "error" in x.lower()]
    assert len(errors) == 1 and errors[0].startswith("rnnbench: error: "), result.stderr[-3000:]
    assert says in errors[0], errors[0]
    runs = cwd / "runs"
    left = [p for p in runs.rglob("*")] if runs.exists() else []
    assert not left, left  # no folder (not even the day's), no record, no wandb run


@pytest.mark.parametrize("case", CASES)
def test_a_refusal_while_building_leaves_no_folder(tmp_path, case):
    if case == "a GPU this machine lacks" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    overrides, says = CASES[case]
    result = rnnbench_cli([*ARGS, *overrides], cwd=tmp_path)
    assert_refused_leaving_nothing(result, tmp_path, says)


@pytest.mark.parametrize("kind", ["a folder", "a FIFO", "unreadable"])
def test_a_data_file_that_is_no_file_leaves_no_folder(tmp_path, kind):
    require_data("ptb/ptb.train.txt")
    root = tmp_path / "data"
    shutil.copytree(Path(os.environ["RNNBENCH_DATA_DIR"]) / "ptb", root / "ptb")
    bad = root / "ptb" / "ptb.valid.txt"
    bad.unlink()
    if kind == "a folder":
        bad.mkdir()
    elif kind == "a FIFO":
        os.mkfifo(bad)
    else:
        bad.write_text("unreadable\n")
        bad.chmod(0)
    args = ["trainer.enable_progress_bar=false", "model.hidden_size=16", "data=ptb_word"]
    args += [f"data.root={root}", "data.download=false"]
    command = [str(SCRIPT), *args]
    if kind == "unreadable" and os.geteuid() == 0:
        # root reads any file: run without the capabilities that allow it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("running as root without setpriv: cannot make a file unreadable")
        command = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
        command += [sys.executable, str(SCRIPT), *args]
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("RNNBENCH_RUNS_DIR", None)
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert_refused_leaving_nothing(result, tmp_path, str(bad))


def test_in_a_sweep_a_refused_job_is_recorded_failed(tmp_path):
    """The sweep goes on, and its summary counts the refused job from its record."""
    result = rnnbench_cli(["-m", *ARGS, "model.bidirectional=false,true"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "sweep: 2 jobs: 1 completed, 1 failed" in result.stdout, result.stdout[-2000:]
    failed = [r for r in records(tmp_path / "runs") if r["status"] == "failed"]
    assert len(failed) == 1 and "model.bidirectional=true" in failed[0]["error"]


def test_a_task_that_is_not_the_datas_is_refused_even_where_the_datas_own_run_completed(
    tmp_path,
):
    """The task is the data config's choice and left out of run_key; a task given on the
    command line that is not the data's is refused in one line before anything runs, in a
    sweep too, and a run composed with one is refused before it could reuse the completed run
    of the data's own task (same run_key) as its result."""
    from conftest import train
    from rnnbench.errors import ConfigError
    from rnnbench.run.cli import chooses_task

    assert [chooses_task(k) for k in ("task@data.task", "+task", "data.task", "tasks")] == [
        True, True, False, False
    ]  # fmt: skip
    says = "task=regress does not fit data=reber, whose batches are for task=lm"
    for sweep in (["task@data.task=regress"], ["-m", "task@data.task=lm,regress"]):
        result = rnnbench_cli([*sweep, *ARGS, "logger=none"], cwd=tmp_path)
        assert_refused_leaving_nothing(result, tmp_path, says)
    same = [*ARGS, "logger=none", "task@data.task=lm", f"results_root={tmp_path / 'runs'}"]
    assert train(same, tmp_path / "runs" / "own")["status"] == "completed"  # the data's own
    wrong = [*same[:-2], "task@data.task=regress", same[-1]]
    with pytest.raises(ConfigError, match=says):
        train(wrong, tmp_path / "runs" / "other")
    assert not (tmp_path / "runs" / "other").exists()


def test_a_key_only_the_swept_options_hold_is_said_with_its_spelling(tmp_path):
    """Hydra composes a multirun first without its sweeps, where the default data (reber) has
    no `download`: one line giving `++`, which the command line then takes."""
    args = ["-m", "data=ptb_word,ptb_char", "data.download=false", "trainer=debug", "logger=none"]
    result = rnnbench_cli(args, cwd=tmp_path)
    says = "data.download=false: data.download is a key of some swept options only"
    assert_refused_leaving_nothing(result, tmp_path, says)
    assert "write ++data.download=false to set it where it exists" in result.stderr
    fixed = [a.replace("data.download", "++data.download") for a in args]
    assert check_command_line(fixed, str(CONF_DIR)) is None
