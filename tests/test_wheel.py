"""The wheel alone is a working install: built from a copy of the tree, put into a fresh venv
that cannot see the source checkout, its `rnnbench` command finds its configuration and runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import REPO, TINY_REBER_RUN

# What a build reads; copying only these keeps the repo's build/, egg-info, runs and .venv
# out of the build, and the build's leftovers out of the repo others are working in.
BUILD_INPUTS = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "rnnbench", "conf"]
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def run_checked(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=JUNK)
        elif (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    dist = tmp / "dist"
    run_checked(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--quiet", "--wheel-dir", str(dist), str(src)],
        cwd=tmp,
    )
    (wheel,) = dist.glob("rnnbench-*.whl")
    return wheel


def fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A venv holding only the wheel; the repo venv's packages serve as its dependencies."""
    venv = tmp / "venv"
    run_checked([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    run_checked(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
        + ["--no-deps", "--no-index", str(wheel)],
        cwd=tmp,
    )
    site = run_checked(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp
    ).stdout.strip()
    # A bare path line adds the dir without running the .pth files inside it, so the repo's
    # editable-install finder (which would map `rnnbench` back to the checkout) stays inactive.
    (Path(site) / "repo_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def test_wheel_installs_a_command_that_runs_without_the_source_tree(tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path, build_wheel(tmp_path))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline"}
    for var in ("PYTHONPATH", "RNNBENCH_RUNS_DIR", "VIRTUAL_ENV"):
        env.pop(var, None)

    where = run_checked(
        [str(venv / "bin" / "python"), "-c"]
        + ["import rnnbench, rnnbench.config as c; print(rnnbench.__file__); print(c.CONF_DIR)"],
        cwd=cwd,
        env=env,
    ).stdout.splitlines()
    assert len(where) == 2, where
    for path in map(Path, where):
        assert path.is_relative_to(venv.resolve()), f"{path} is not inside the fresh venv {venv}"
        assert not path.is_relative_to(REPO), f"{path} comes from the checkout"
    assert (Path(where[1]) / "config.yaml").is_file()
    # The report's module loads its Jinja2 templates (rnnbench/results/templates/) on import.
    python = str(venv / "bin" / "python")
    run_checked([python, "-c", "import rnnbench.results.report"], cwd=cwd, env=env)

    rnnbench = str(venv / "bin" / "rnnbench")
    help_text = run_checked([rnnbench, "--help"], cwd=cwd, env=env).stdout
    assert "== Configuration groups ==" in help_text, help_text
    for group in ("data", "model", "trainer", "logger"):
        assert f"{group}:" in help_text, help_text

    run_dir = tmp_path / "run"
    quiet = ["logger=none", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    run_checked(
        [rnnbench, "data=reber", *TINY_REBER_RUN, *quiet],
        cwd=cwd,
        env=env,
        timeout=180,
    )
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "completed", record
