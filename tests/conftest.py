"""Shared test helpers: real data from RNNBENCH_DATA_DIR, real Hydra compose, real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnbench.config import compose
from rnnbench.train import run

REPO = Path(__file__).resolve().parent.parent
# Small, fast settings for runs whose point is "it trains end to end", not the numbers.
# force=true: an in-process test run never reuses a finished run found under ./runs.
QUIET = ["logger=none", "trainer.enable_progress_bar=false", "force=true"]


def data_dir() -> Path:
    return Path(os.environ.get("RNNBENCH_DATA_DIR", "~/.cache/rnnbench")).expanduser()


def require_data(*relpaths: str) -> Path:
    """The data folder, when it holds `relpaths`; otherwise skip — or fail under CI
    (RNNBENCH_REQUIRE_DATA=1), so CI can never pass by skipping."""
    root = data_dir()
    missing = [p for p in relpaths if not (root / p).exists()]
    if missing:
        message = f"data files {missing} not under RNNBENCH_DATA_DIR={root}"
        if os.environ.get("RNNBENCH_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return root


def compose_config(overrides: list[str]):
    return compose(overrides)


def train(overrides: list[str], run_dir: Path) -> dict:
    """Compose `overrides` exactly as the CLI would and run it in-process."""
    return run(compose_config([*QUIET, *overrides]), run_dir, overrides)


def rnnbench_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300):
    """Run the real `rnnbench` console script in a subprocess."""
    script = Path(sys.executable).parent / "rnnbench"
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    full_env.pop("RNNBENCH_RUNS_DIR", None)
    return subprocess.run(
        [str(script), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in root.rglob("result.json")]


def assert_refused(result, message: str, cwd: Path) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("rnnbench: error: ") and message in errors[0], errors[0]
    assert all(r["status"] == "failed" for r in records(cwd / "runs"))
    assert all(message in r["error"] for r in records(cwd / "runs"))
