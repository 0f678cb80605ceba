"""Small refusals, each one line that says what is wrong (issue 33, item 8):
`rnnbench-reproduce --threads` below 1, and a checkpoint that cannot be loaded, named for what
is wrong with the file (empty, truncated, not a torch file, holds code, a directory, a FIFO,
unreadable, no state_dict) rather than for the errno torch.load happened to meet."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from test_records import RunsCode

from conftest import REPO, TINY_REBER, assert_refused, rnnbench_cli
from rnnbench.run.checkpoints import CheckpointError, load_checkpoint

REPRODUCE = Path(sys.executable).parent / "rnnbench-reproduce"  # [project.scripts]
KEEP = [*TINY_REBER, "checkpoints.keep=both"]  # a completed run keeps its last.ckpt


# rnnbench-reproduce --threads -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "0", "1.5"])
def test_reproduce_refuses_threads_below_one_in_one_line(tmp_path, value):
    from rnnbench.results.reproduce.command import parse_args

    out = tmp_path / "out"
    result = subprocess.run(
        [str(REPRODUCE), "--threads", value, "--time", "tcn/no_such", "-o", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        f"rnnbench-reproduce: error: argument --threads: '{value}' is not a whole number of "
        "at least 1"
    ], result.stderr
    assert not out.exists()  # refused before anything was made
    assert parse_args(["--threads", "3"]).threads == 3  # a whole number >= 1 still passes


# A checkpoint that cannot be loaded, named for what is wrong ------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, bytes]:
    """A completed tiny run made by the real `rnnbench`, with its last.ckpt, and that
    checkpoint's bytes."""
    cwd = tmp_path_factory.mktemp("tiny")
    run_dir = cwd / "runs" / "tiny"
    done = rnnbench_cli([*KEEP, f"hydra.run.dir={run_dir}"], cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, (run_dir / "checkpoints" / "last.ckpt").read_bytes()


def refusal(path: Path) -> str:
    """The reason load_checkpoint gives for `path`, checked to be the one-line message."""
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    head, tail = f"checkpoint {path} cannot be loaded (", "); it was not run. Delete it to "
    assert message.startswith(head) and tail in message, message
    assert message.endswith("start this run afresh") and "\n" not in message, message
    assert "Errno" not in message and "Weights only load failed" not in message, message
    return message[len(head) : message.index(tail)]


def test_an_empty_checkpoint_is_named_empty(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"")
    assert refusal(path) == "empty file (0 bytes)"


@pytest.mark.parametrize("keep", [0.5, 0.01, 0.99])
def test_a_truncated_checkpoint_is_named_truncated(tiny_run, tmp_path, keep):
    """A real checkpoint cut short (today: "[Errno 22] Invalid argument" for half of it)."""
    real = tiny_run[1]
    path = tmp_path / "last.ckpt"
    path.write_bytes(real)
    assert "state_dict" in load_checkpoint(path)  # whole, it loads
    path.write_bytes(real[: int(len(real) * keep)])
    assert refusal(path).startswith("truncated")


def test_a_truncated_legacy_torch_file_is_named_truncated(tmp_path):
    """torch's pre-zip format (consecutive pickles, then the storages), cut anywhere."""
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.randn(8)}}, path, _use_new_zipfile_serialization=False)
    real = path.read_bytes()
    assert "state_dict" in load_checkpoint(path)
    for cut in range(1, len(real), 7):
        path.write_bytes(real[:cut])
        assert refusal(path).startswith("truncated"), cut


def test_random_bytes_are_not_a_torch_file(tmp_path):
    data = random.Random(0).randbytes(4096)
    assert data[:2] != b"PK" and data[0] != 0x80  # neither a zip nor a pickle, by construction
    path = tmp_path / "last.ckpt"
    path.write_bytes(data)
    assert refusal(path) == "not a torch file: neither a zip archive nor a pickle"


# torch's own note on the hostile file's pickle protocol, which the test makes on purpose
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("form", ["bare pickle", "torch file", "legacy torch file"])
def test_a_checkpoint_holding_code_is_refused_as_code(tmp_path, form):
    marker = tmp_path / "code-ran"
    path = tmp_path / "last.ckpt"
    payload = {"state_dict": {"w": torch.zeros(2)}, "extra": RunsCode(marker)}
    if form == "bare pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=form == "torch file")
    reason = refusal(path)
    assert not marker.exists()  # its code never ran
    assert reason.startswith("holds code, refused (weights_only)"), reason
    assert "system" in reason  # the callable it would have run


def test_a_directory_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    path.mkdir()
    assert refusal(path) == "a directory, not a file"


def test_a_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "last.ckpt"
    os.mkfifo(path)
    reasons: list[str] = []
    reader = threading.Thread(target=lambda: reasons.append(refusal(path)), daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # opened the FIFO and waits for a writer: let it go, then fail
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=30)
        pytest.fail("load_checkpoint blocked on a FIFO")
    assert reasons == ["a FIFO, not a regular file"]


def test_an_unreadable_checkpoint_is_named_unreadable(tiny_run, tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(tiny_run[1])
    path.chmod(0)
    if os.geteuid() != 0:
        assert refusal(path) == "unreadable: permission denied"
        return
    # root reads any file: check in a process without the capabilities that allow it
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, and no setpriv to drop the right to read any file")
    code = (
        "import sys\n"
        "from rnnbench.run.checkpoints import CheckpointError, load_checkpoint\n"
        "try:\n    load_checkpoint(sys.argv[1])\n"
        "except CheckpointError as e:\n    print(e)\n"
    )
    drop = ["--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    result = subprocess.run(
        [setpriv, *drop, sys.executable, "-c", code, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 and result.stderr.startswith("setpriv"):
        pytest.skip(f"cannot drop root's capabilities here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        f"checkpoint {path} cannot be loaded (unreadable: permission denied); it was not run. "
        "Delete it to start this run afresh"
    )


@pytest.mark.parametrize("content", ["a dict without state_dict", "a list"])
def test_a_torch_file_without_state_dict_is_not_a_lightning_checkpoint(tmp_path, content):
    path = tmp_path / "last.ckpt"
    torch.save({"weights": torch.zeros(2)} if content.startswith("a dict") else [1, 2], path)
    assert refusal(path) == "a torch file, but not a Lightning checkpoint: no state_dict"


def test_a_relaunch_on_a_truncated_checkpoint_says_truncated(tiny_run, tmp_path):
    """The real `rnnbench`, relaunched in a run folder whose last.ckpt was cut in half (an
    unfinished run: no result.json), refuses in one line that says "truncated"."""
    run_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run[0], run_dir)
    (run_dir / "result.json").unlink()
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(tiny_run[1][: len(tiny_run[1]) // 2])
    result = rnnbench_cli([*KEEP, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert_refused(result, f"checkpoint {last} cannot be loaded (truncated", tmp_path)
    assert last.read_bytes() == tiny_run[1][: len(tiny_run[1]) // 2]  # left for the user
