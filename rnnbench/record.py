"""The run record: `result.json` in each run directory, the one file every consumer reads."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rnnbench.errors import ConfigError
from rnnbench.outputs import write_whole

SCHEMA = "rnnbench.result/1"
STATUSES = ("completed", "diverged", "failed", "interrupted")
# Keys that say where or how a run is watched, not what it computes: left out of run_key.
KEY_EXCLUDED = (
    "logger",
    "data.root",
    "data.download",
    "data.mirror",
    "results_root",
    "force",
    "threads",
    "checkpoint_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
)
# Options added after runs were recorded, left out of run_key while at the value that computes
# what the runs before them computed, so those runs still match (and are reused).
KEY_DEFAULTS = {"model.tbptt_update": "sequence"}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_key(config: dict[str, Any]) -> str:
    """A stable hash of the resolved config without paths and logger settings."""
    config = json.loads(json.dumps(config))  # a deep copy of plain data
    for dotted in (*KEY_EXCLUDED, *KEY_DEFAULTS):
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and (
            dotted not in KEY_DEFAULTS or node.get(leaf) == KEY_DEFAULTS[dotted]
        ):
            node.pop(leaf, None)
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


RECORD_FILE = "result.json"
KEY_FILE = "run_key"  # <run>/run_key, written when a run starts: what its checkpoints resume


def folder_key(run_dir: Path) -> str | None:
    """The run_key of the run a folder holds (its record's, else its run_key file's)."""
    try:
        record = json.loads((run_dir / RECORD_FILE).read_text())
        if isinstance(record, dict) and record.get("run_key"):
            return str(record["run_key"])
    except (OSError, ValueError):
        pass
    try:
        return (run_dir / KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def check_run_folder(run_dir: Path, key: str) -> None:
    """Refuse to run configuration `key` in a folder that holds another configuration's run:
    it would resume from that run's checkpoint and overwrite its record."""
    held = folder_key(run_dir)
    if held is not None and held != key:
        raise ConfigError(
            f"run folder {run_dir} holds another configuration's run (run_key {held}); this "
            f"configuration is run_key {key}: give it its own hydra.run.dir, or delete that "
            f"folder to replace its run"
        )


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON, written whole (outputs.write_whole)."""
    write_whole(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_record(path: str | Path) -> dict[str, Any]:
    """Load one result.json; raises ValueError when it is not an rnnbench record."""
    with open(path) as f:
        record = json.load(f)
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an rnnbench result record ({SCHEMA})")
    return record


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: str) -> dict[str, Any]:
    import hydra
    import pytorch_lightning
    import torch

    import rnnbench

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "hydra": hydra.__version__,
        "rnnbench": rnnbench.__version__,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "git_sha": git_sha(),
    }
