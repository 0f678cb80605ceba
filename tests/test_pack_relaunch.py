"""A packed sweep stopped and launched again keeps each member's whole history, and two sweeps
of the same packs train each pack once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from conftest import popen, records, rnnbench_cli, wait_for

QUIET = ["logger=none", "trainer.enable_progress_bar=false", "threads=1"]
PACKED = [
    "-m",
    "seed=1,2",
    "pack=2",
    *QUIET,
    "data.train_strings=600",
    "model.dropout=0.2",
    "model.hidden_size=32",
    "trainer.max_epochs=4",
]


def rows(path: Path) -> int:
    return len(path.read_text().splitlines()) - 1 if path.is_file() else 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The folder of the packed sweep run without a stop (its sweep in `sweep`)."""
    ref = tmp_path_factory.mktemp("ref")
    whole = rnnbench_cli([*PACKED, "hydra.sweep.dir=sweep"], cwd=ref)
    assert whole.returncode == 0, whole.stderr[-3000:]
    return ref


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_a_stopped_packed_sweep_keeps_every_step(tmp_path, uninterrupted, stop):
    """SIGTERM, or SLURM's warning USR2, after the first epoch, relaunch (a new sweep folder):
    each member's steps.csv holds every step once, as the uninterrupted sweep's, and its record
    says resumed_from."""
    ref = uninterrupted
    cwd = tmp_path / "work"
    cwd.mkdir()
    proc = popen([*PACKED, "hydra.sweep.dir=runs/first"], cwd=cwd)
    wait_for(lambda: rows(cwd / "runs" / "first" / "1" / "metrics.csv") >= 1, proc)
    time.sleep(0.2)
    proc.send_signal(stop)
    proc.wait(timeout=120)
    assert proc.returncode == 128 + stop, proc.stderr.read()[-2000:]
    stopped = [
        json.loads((cwd / "runs" / "first" / str(n) / "result.json").read_text()) for n in (0, 1)
    ]
    assert [r["status"] for r in stopped] == ["interrupted", "interrupted"]

    again = rnnbench_cli([*PACKED, "hydra.sweep.dir=runs/second"], cwd=cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    for n in (0, 1):
        a = json.loads((ref / "sweep" / str(n) / "result.json").read_text())
        b = json.loads((cwd / "runs" / "second" / str(n) / "result.json").read_text())
        assert b["status"] == "completed" and b["metrics"] == a["metrics"]
        assert b["resumed_from"] == str((cwd / "runs" / "first" / str(n)).resolve())
        for name in ("metrics.csv", "steps.csv"):
            theirs = (ref / "sweep" / str(n) / name).read_text()
            assert (cwd / "runs" / "second" / str(n) / name).read_text() == theirs, (n, name)


def test_two_sweeps_of_the_same_packs_train_them_once(tmp_path):
    """Two launches of one packed sweep at once (two sweep folders, one runs root): one trains
    the pack, the other waits for it and reuses its records."""
    procs = [popen([*PACKED, f"hydra.sweep.dir=runs/s{i}"], cwd=tmp_path) for i in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    found = records(tmp_path / "runs")
    assert len(found) == 4 and all(r["status"] == "completed" for r in found)
    trained = [r for r in found if not r.get("reused_from")]
    reused = [r for r in found if r.get("reused_from")]
    assert len(trained) == 2 and len(reused) == 2, [r["run_dir"] for r in trained]
    assert {Path(r["run_dir"]).parent for r in trained} != {
        Path(r["run_dir"]).parent for r in reused
    }
    assert {r["reused_from"] for r in reused} == {r["run_dir"] for r in trained}
    assert any("waiting for the same pack" in err for _, err in outs)
