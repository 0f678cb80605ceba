"""The suite as `make test` runs it: a test that needs a missing data file (or the SLURM tests,
without a cluster) is skipped, and the run ends by saying how many were and how to run them;
under CI=true it fails instead. The commands it forks (tests/forkserver.py) are what fresh
processes would be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from forkserver import ForkedProcess

from conftest import FORK, REPO, TINY_REBER, popen, records, rnnbench_cli, wait_for

ONE = "tests/test_data.py::test_local_file_failing_its_checksum_is_never_used"
SLURM = "tests/test_slurm.py"


def pytest_without_data(tmp_path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "RNNBENCH_REQUIRE_DATA")}
    environ |= {"RNNBENCH_DATA_DIR": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", ONE],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_skip_for_missing_data_is_said_last_and_fails_under_ci(tmp_path):
    here = pytest_without_data(tmp_path)
    assert here.returncode == 0, here.stdout[-2000:]
    last = here.stdout.strip().splitlines()[-1]
    assert last.startswith("rnnbench: 1 tests skipped for missing data files"), last
    assert "RNNBENCH_DATA_DIR" in last

    ci = pytest_without_data(tmp_path, CI="true")
    assert ci.returncode == 1, ci.stdout[-2000:]
    assert "not under RNNBENCH_DATA_DIR" in ci.stdout


def test_no_slurm_cluster_skips_its_module_in_one_line_and_fails_under_ci(tmp_path):
    def pytest_without_slurm(**env: str) -> subprocess.CompletedProcess:
        environ = {k: v for k, v in os.environ.items() if k not in ("CI", "RNNBENCH_REQUIRE_DATA")}
        environ |= {"PATH": str(tmp_path), **env}  # no sinfo, no scontrol
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", SLURM],
            cwd=REPO,
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
        )

    here = pytest_without_slurm()
    assert here.returncode == 5, here.stdout[-2000:]  # pytest's "no test collected": skipped
    said = [line for line in here.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(said) == 1 and "no SLURM cluster here" in said[0], here.stdout[-2000:]
    last = here.stdout.strip().splitlines()[-1]
    assert last.startswith("rnnbench: 1 tests skipped for want of a SLURM cluster"), last
    assert "make slurm" in last

    ci = pytest_without_slurm(CI="true")
    assert ci.returncode == 1, ci.stdout[-2000:]
    assert "no SLURM cluster here" in ci.stdout
    assert "skipped" not in ci.stdout.splitlines()[-1]


def test_a_forked_command_is_what_a_fresh_process_would_be(tmp_path):
    """The same commands forked from the server and started fresh: the same exit code, output
    and records. The test's environment and folder reach the fork (the missing data is named
    under the folder the environment points at), and a signal ends it as it ends a fresh one."""
    assert FORK, "RNNBENCH_TEST_FORK=0: the suite runs no forked command to compare"
    missing = ["data=ptb_word", "data.download=false", "logger=none"]
    env = {"RNNBENCH_DATA_DIR": str(tmp_path / "empty")}
    seen = {}
    for fresh in (True, False):
        cwd = tmp_path / f"fresh={fresh}"
        cwd.mkdir()
        gone = rnnbench_cli(missing, cwd=cwd, env=env, fresh=fresh)
        ran = rnnbench_cli([*TINY_REBER, "threads=1"], cwd=cwd, fresh=fresh)
        [record] = [r for r in records(cwd / "runs") if r["status"] == "completed"]
        proc = popen([*TINY_REBER, "threads=1", "trainer.max_epochs=500", "seed=2"], cwd, fresh)
        assert isinstance(proc, ForkedProcess) != fresh
        wait_for(lambda cwd=cwd: len(list((cwd / "runs").rglob("metrics.csv"))) == 2, proc)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        seen[fresh] = {
            "missing data": (gone.returncode, gone.stderr.replace(str(cwd), "CWD")),
            "ran": (ran.returncode, ran.stdout.count("\n"), record["metrics"]),
            "interrupted": (proc.wait(timeout=120), "run interrupted" in proc.communicate()[1]),
        }
        seen[fresh]["records"] = sorted(r["status"] for r in records(cwd / "runs"))
        assert str(tmp_path / "empty") in gone.stderr, gone.stderr
    assert seen[False] == seen[True]
    assert seen[True]["missing data"][0] == 2 and seen[True]["ran"][0] == 0
    assert seen[True]["interrupted"] == (130, True)
    assert seen[True]["records"].count("interrupted") == 1, seen[True]["records"]
