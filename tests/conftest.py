"""Shared test helpers: real data from RNNBENCH_DATA_DIR, real Hydra compose, real runs."""

from __future__ import annotations

import functools
import http.server
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import forkserver
import pytest
import torch
from forkserver import ForkedProcess, ForkServer

from rnnbench.config import compose
from rnnbench.run.callbacks import quiet_lightning
from rnnbench.run.train import run


@pytest.fixture(autouse=True)
def _lightnings_expected_notes():
    """Every test starts as an rnnbench run does: Lightning's notes on what the harness does on
    purpose (callbacks.EXPECTED_NOTES) silenced, every other warning shown. pytest resets the
    warning filters per test, so the run's own call at import time would not reach a test that
    builds a Trainer itself."""
    quiet_lightning()


def keep_xdist_worker_to_its_cores() -> None:
    """Under pytest-xdist (`make test`: a worker per core), each worker, and every rnnbench
    process it starts, keeps to its own share of the cores: rnnbench sizes its torch thread
    pool to the cores it may use, and two workers' pools on the same two cores were measured
    to slow each other several-fold (the suite took 15.6 min unpinned, 8.5 pinned)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    share = cores[int(worker[2:]) % count :: count] or cores
    os.sched_setaffinity(0, share)
    torch.set_num_threads(len(share))


keep_xdist_worker_to_its_cores()
REPO = Path(__file__).resolve().parent.parent
# Small, fast settings for runs whose point is "it trains end to end", not the numbers.
# force=true: an in-process test run never reuses a finished run found under ./runs.
QUIET = ["logger=none", "trainer.enable_progress_bar=false", "force=true"]


# One tiny Reber run: a second or two of training; TINY_REBER also logs nothing and draws no bar.
TINY_REBER_RUN = [
    "data.train_strings=200",
    "data.valid_strings=40",
    "data.test_strings=40",
    "model.hidden_size=16",
    "model.num_layers=1",
    "trainer.max_epochs=1",
]
TINY_REBER = [*TINY_REBER_RUN, "logger=none", "trainer.enable_progress_bar=false"]
SCRIPT = Path(sys.executable).parent / "rnnbench"


def data_dir() -> Path:
    return Path(os.environ.get("RNNBENCH_DATA_DIR", "~/.cache/rnnbench")).expanduser()


def nothing_may_skip() -> bool:
    """Under CI (CI=true, or RNNBENCH_REQUIRE_DATA=1) a missing data file, browser or SLURM
    cluster fails its test: CI can never pass by skipping."""
    return os.environ.get("CI") == "true" or os.environ.get("RNNBENCH_REQUIRE_DATA") == "1"


MISSING_DATA = "not under RNNBENCH_DATA_DIR"
MISSING_BROWSER = "`make browser` installs it"
MISSING_SLURM = "`make slurm` starts one"


def skip_or_fail(message: str) -> None:
    if nothing_may_skip():
        pytest.fail(message)
    pytest.skip(message)


def require_data(*relpaths: str) -> Path:
    """The data folder, when it holds `relpaths`; otherwise skip — or fail under CI."""
    root = data_dir()
    missing = [p for p in relpaths if not (root / p).exists()]
    if missing:
        skip_or_fail(f"data files {missing} {MISSING_DATA}={root}")
    return root


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """`make test` ends by saying what it could not run here, and how to run it (printed last,
    by pytest_unconfigure, below pytest's own summary)."""
    skipped = terminalreporter.stats.get("skipped", [])

    def count(text: str) -> int:
        return sum(text in str(getattr(r, "longrepr", "")) for r in skipped)

    data, browser = count(MISSING_DATA), count(MISSING_BROWSER)
    slurm = count(MISSING_SLURM)
    config.stash[LAST_WORDS] = [
        *(
            [
                f"rnnbench: {data} tests skipped for missing data files: point "
                f"RNNBENCH_DATA_DIR at a folder that holds them (README, 'Data') to run them"
            ]
            if data
            else []
        ),
        *(
            [f"rnnbench: {browser} tests skipped for want of Chromium: `make browser` installs it"]
            if browser
            else []
        ),
        *(
            [
                f"rnnbench: {slurm} tests skipped for want of a SLURM cluster: `make slurm` "
                f"starts a single-node one here (.ci/slurm-up) and runs them"
            ]
            if slurm
            else []
        ),
    ]


def pytest_unconfigure(config) -> None:
    for line in config.stash.get(LAST_WORDS, []):
        config.get_terminal_writer().line(line, yellow=True)


LAST_WORDS = pytest.StashKey[list]()


def train(overrides: list[str], run_dir: Path) -> dict:
    """Compose `overrides` exactly as the CLI would and run it in-process."""
    return run(compose([*QUIET, *overrides]), run_dir, overrides)


# Commands are forked from a server that has imported torch and Lightning once (forkserver.py);
# RNNBENCH_TEST_FORK=0 starts every one as a fresh process instead.
FORK = os.environ.get("RNNBENCH_TEST_FORK", "1") != "0"


@functools.cache
def fork_server() -> ForkServer:
    return ForkServer()


def rnnbench_cli(
    args: list[str],
    cwd: Path,
    env: dict | None = None,
    timeout: int = 300,
    fresh: bool = False,
    script: Path = SCRIPT,
) -> subprocess.CompletedProcess:
    """Run the real `rnnbench` console script (or `script`, another of the package's) in its own
    process, W&B offline. `fresh`: start it from scratch, not forked, for a test of what the
    process does while it imports."""
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    full_env.pop("RNNBENCH_RUNS_DIR", None)
    if FORK and not fresh:
        return forkserver.run(fork_server(), script, args, cwd, full_env, timeout)
    return subprocess.run(
        [str(script), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in root.rglob("result.json")]


def assert_relaunch_reuses_all(args: list[str], cwd: Path, made: list[dict]) -> None:
    """Launched again, a finished sweep (its records `made`, under cwd/runs) trains nothing:
    each job reuses one of them, metrics and all, and the summary says so."""
    again = rnnbench_cli(args, cwd=cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"sweep: {len(made)} jobs: {len(made)} reused" in again.stdout
    reused = [r for r in records(cwd / "runs") if r.get("reused_from")]
    originals = {r["run_dir"]: r for r in made}
    assert sorted(r["reused_from"] for r in reused) == sorted(originals)
    for r in reused:
        assert r["metrics"] == originals[r["reused_from"]]["metrics"]


def assert_refused(result, message: str, cwd: Path) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("rnnbench: error: ") and message in errors[0], errors[0]
    assert all(r["status"] == "failed" for r in records(cwd / "runs"))
    assert all(message in r["error"] for r in records(cwd / "runs"))


def popen(
    args: list[str], cwd: Path, fresh: bool = False, start_new_session: bool = False
) -> subprocess.Popen | ForkedProcess:
    """The real `rnnbench` started in the background, W&B offline (forked unless `fresh`)."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    if FORK and not fresh:
        return ForkedProcess(fork_server(), SCRIPT, args, cwd, env, start_new_session)
    return subprocess.Popen(
        [str(SCRIPT), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=start_new_session,
    )


def wait_for(condition, proc: subprocess.Popen | ForkedProcess, timeout: float = 240) -> None:
    """Poll `condition` while `proc` runs; fail with its stderr if it ends or times out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 serving a folder: call it with the folder, get the URL."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a, **k: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# The offline file is a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of chunks,
# each with a 7-byte header (CRC-32 seeded with the chunk type, length, type); a record is one
# FULL chunk or FIRST, MIDDLE..., LAST.
BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(log: Path) -> list:
    """Every protobuf Record (wandb_internal_pb2) in an offline run file, checksums checked."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = log.read_bytes()
    assert struct.unpack("<4sHB", data[:HEADER]) == (b":W&B", 0xBEE1, 0), "unknown file format"
    found, parts, pos = [], [], HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # too little room left in the block: padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and crc == 0:  # zeros after the last chunk
            break
        payload = data[pos + HEADER : pos + HEADER + length]
        assert zlib.crc32(payload, zlib.crc32(bytes([kind]))) == crc, f"bad chunk at byte {pos}"
        assert kind in (FULL, FIRST, MIDDLE, LAST), f"chunk type {kind} at byte {pos}"
        parts.append(payload)
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            found.append(record)
            parts = []
    return found


@pytest.fixture(scope="session")
def mixed_runs(tmp_path_factory):
    """One runs/ folder as users accumulate it (fixture_runs.write_mixed_runs), written once
    for the session: tests read it, never change it (copy it first)."""
    from fixture_runs import write_mixed_runs

    return write_mixed_runs(tmp_path_factory.mktemp("mixed") / "runs")
