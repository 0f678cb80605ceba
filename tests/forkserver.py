"""The suite's `rnnbench` commands, forked from a process that has already imported them.

Most of the suite's time went on rnnbench processes starting: importing torch, Lightning, Hydra
and Optuna takes 5-9 s of CPU, and most commands a test runs then train for a second or two.
Each pytest worker therefore starts one server (this file, run as a script) that imports all of
that once, and every command a test runs is a fork of it. The fork is a real process: its own
pid, session, signals, exit status, stdin/stdout/stderr and working folder, running the console
script's entry point from the top with the test's environment and argv, and ending through the
interpreter's own shutdown (atexit, thread joins, stream flushes). It skips only the imports.

What a fork cannot show is what the process does while it imports: the console's first lines
(import-time warnings went to the server), or a refusal made before torch loads. Those tests
start the real script: `fresh=True` in conftest's helpers. `RNNBENCH_TEST_FORK=0` makes every
command a fresh process, to check that the suite passes the same way without the server.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

MESSAGE = 1 << 20  # the largest request: argv and environment, as JSON


# --- the server side: runs in the server process and, after the fork, in each command --------


def _serve(sock: socket.socket) -> tuple[dict, list[int]]:
    """Answer requests until the worker hangs up (then exit). Each request forks a child, to which
    this returns the request; the server answers with the child's pid, and later its exit code."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD wakes the select
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "request")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    while True:
        for key, _ in selector.select():
            if key.data == "child":
                while True:
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        break
                _reap(sock)
                continue
            data, fds, _, _ = socket.recv_fds(sock, MESSAGE, 8)
            if not data:  # the worker is gone; its commands run on as any process would
                sys.exit(0)
            pid = os.fork()
            if pid == 0:
                selector.close()
                os.close(wake_r)
                os.close(wake_w)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sock.close()
                return json.loads(data), fds
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps({"started": pid}).encode())


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(json.dumps({"pid": pid, "exit": os.waitstatus_to_exitcode(status)}).encode())


def _become(request: dict, fds: list[int]) -> None:
    """In the forked child: take the request's streams, folder, environment and argv, as a fresh
    process started with them would have them."""
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["script"], *request["args"]]
    sys.path[0] = str(Path(request["script"]).parent)  # as the console script's own is


def _entry_point(script: str):
    from importlib.metadata import entry_points

    (found,) = entry_points(group="console_scripts", name=Path(script).name)
    return found.load()


def _preload() -> None:
    """What an rnnbench command imports before it trains, imported once here."""
    import hydra_plugins.hydra_joblib_launcher.joblib_launcher  # noqa: F401
    import optuna  # noqa: F401

    import rnnbench.results.report  # noqa: F401
    import rnnbench.results.reproduce.command  # noqa: F401
    import rnnbench.results.table  # noqa: F401
    import rnnbench.run.launch  # noqa: F401
    import rnnbench.run.search  # noqa: F401
    import rnnbench.run.train  # noqa: F401

    # A fork copies only the thread that forks: a server with other threads could hand its
    # children a lock held forever.
    assert threading.active_count() == 1, threading.enumerate()


# --- the worker side: a Popen-like handle on each forked command --------------------------------


class ForkServer:
    """One server per pytest worker, started on first use; `start` forks a command from it."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._server = subprocess.Popen(
            [sys.executable, __file__, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._sock = ours
        self._lock = threading.Lock()
        self._exits: dict[int, int] = {}

    def start(
        self,
        script: Path,
        args: list[str],
        cwd: Path,
        env: dict,
        streams: list[int],
        new_session: bool,
    ) -> int:
        request = {
            "script": str(script),
            "args": [str(a) for a in args],
            "cwd": str(cwd),
            "env": env,
            "new_session": new_session,
        }
        with self._lock:
            socket.send_fds(self._sock, [json.dumps(request).encode()], streams)
            while True:
                reply = self._receive(wait=None)
                if reply and "started" in reply:
                    return reply["started"]

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """The command's exit code (negative: the signal that ended it), waiting up to `timeout`
        seconds for it (None: as long as it takes, 0: not at all)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                while pid not in self._exits and self._receive(wait=0) is not None:
                    pass
                if pid in self._exits:
                    return self._exits[pid]
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if left <= 0:
                    return None
                self._receive(wait=left)

    def _receive(self, wait: float | None) -> dict | None:
        """The server's next message (None: none came within `wait` seconds); exits are kept."""
        self._sock.settimeout(wait)
        try:
            data = self._sock.recv(MESSAGE)
        except (BlockingIOError, TimeoutError):
            return None
        finally:
            self._sock.settimeout(None)
        if not data:
            raise RuntimeError(f"the fork server ended (exit {self._server.poll()})")
        reply = json.loads(data)
        if "exit" in reply:
            self._exits[reply["pid"]] = reply["exit"]
        return reply


class ForkedProcess:
    """What tests use of subprocess.Popen (pid, returncode, poll, wait, communicate, signals,
    text stdout/stderr pipes), for a command forked by a ForkServer."""

    def __init__(
        self,
        server: ForkServer,
        script: Path,
        args: list[str],
        cwd: Path,
        env: dict,
        new_session: bool = False,
    ) -> None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdin = os.open(os.devnull, os.O_RDONLY)
        try:
            self.pid = server.start(script, args, cwd, env, [stdin, out_w, err_w], new_session)
        finally:
            for fd in (stdin, out_w, err_w):
                os.close(fd)
        self.args = [str(script), *args]
        self.stdout = open(out_r)  # noqa: SIM115 (text, as Popen(text=True) reads its pipes)
        self.stderr = open(err_r)  # noqa: SIM115
        self.returncode: int | None = None
        self._server = server

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Read stdout and stderr to their ends (both at once, so neither pipe fills), then wait."""
        texts: dict[str, str] = {}
        readers = [
            threading.Thread(target=lambda n=n, f=f: texts.__setitem__(n, f.read()), daemon=True)
            for n, f in (("out", self.stdout), ("err", self.stderr))
        ]
        for reader in readers:
            reader.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()) + 5)
        return texts["out"], texts["err"]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run(
    server: ForkServer, script: Path, args: list[str], cwd: Path, env: dict, timeout: float
) -> subprocess.CompletedProcess:
    """subprocess.run(..., capture_output=True, text=True, timeout=...) for a forked command."""
    proc = ForkedProcess(server, script, args, cwd, env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


if __name__ == "__main__":
    _preload()
    _request, _fds = _serve(socket.socket(fileno=int(sys.argv[1])))
    # From here on this is the forked command, as its console script would run it.
    _become(_request, _fds)
    sys.exit(_entry_point(_request["script"])())
