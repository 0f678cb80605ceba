"""A forced re-run (`force=true`) into a completed run's folder never leaves it half replaced:
killed mid-run, or on a disk that fills up, the folder is the old completed run byte for byte;
once the re-run completes, every file in the folder is the new run's."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

from test_records import in_small_tmpfs

from conftest import TINY_REBER, popen, rnnbench_cli, wait_for

# Enough epochs for a kill to land mid-run; the same configuration both times (same run_key).
ARGS = [
    *TINY_REBER,
    "data.train_strings=600",
    "model.hidden_size=48",
    "trainer.max_epochs=20",  # the kill lands after the re-run's first epoch, long before its end
    "checkpoints.keep=both",
    "threads=1",
]


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file the run wrote (Hydra's own .hydra/ and log are the launch's)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"
    }


def test_a_killed_forced_rerun_leaves_the_completed_run_untouched(tmp_path):
    run = tmp_path / "runs" / "r"
    first = rnnbench_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = digest(run)
    assert {"result.json", "metrics.csv", "steps.csv", "checkpoints/best.ckpt"} <= before.keys()
    old = json.loads((run / "result.json").read_text())

    proc = popen([*ARGS, "force=true", f"hydra.run.dir={run}"], cwd=tmp_path)
    forced = tmp_path / "runs" / ".forced-r"
    wait_for(lambda: (forced / "metrics.csv").is_file(), proc)  # an epoch into the re-run
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert forced.is_dir()  # killed mid-run, not after its swap
    assert digest(run) == before  # every file of the completed run, byte for byte

    again = rnnbench_cli([*ARGS, "force=true", f"hydra.run.dir={run}"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    new = json.loads((run / "result.json").read_text())
    assert new["status"] == "completed" and new["started"] != old["started"]
    assert new["run_dir"] == str(run.resolve())
    assert any("forced re-run" in n for n in new["notes"])
    assert not forced.exists()  # the old run went with the swap
    # One run's files: its metrics.csv has every epoch once, its steps.csv every step once.
    epochs = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in epochs] == list(range(20))
    steps = [int(r.split(",")[0]) for r in (run / "steps.csv").read_text().splitlines()[1:]]
    assert (
        steps == list(range(steps[0], steps[0] + len(steps)))
        and len(steps) == new["timing"]["steps"]
    )
    assert (run / "checkpoints" / "best.ckpt").is_file()


def test_a_forced_rerun_on_a_full_disk_keeps_the_completed_run(tmp_path):
    big = [*ARGS, "model.hidden_size=256", "trainer.max_epochs=2"]  # checkpoints of ~9 MB
    small = " ".join([*big, "hydra.run.dir=$D/run", "results_root=$D"])
    script = (
        f"$RB {small} >/dev/null 2>&1 && "
        f"find $D/run -type f ! -path '*/.hydra/*' ! -name '*.log' | sort | xargs sha256sum "
        f"> /tmp/rnnbench-before-$$ && "
        f"dd if=/dev/zero of=$D/fill bs=1k count=$(( $(df -k --output=avail $D | tail -1) - 300 )) "
        f"2>/dev/null; $RB {small} force=true; echo rc=$?; "
        f"find $D/run -type f ! -path '*/.hydra/*' ! -name '*.log' | sort | xargs sha256sum "
        f"| cmp - /tmp/rnnbench-before-$$ && echo SAME; rm -f /tmp/rnnbench-before-$$"
    )
    out = in_small_tmpfs(script, "48m", tmp_path)
    assert "rc=" in out.stdout and "rc=0" not in out.stdout, out.stdout + out.stderr[-3000:]
    assert "SAME" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    errors = [x for x in out.stderr.splitlines() if "error" in x.lower()]
    assert len(errors) == 1 and "No space left on device" in errors[0], out.stderr[-3000:]
