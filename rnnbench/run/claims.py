"""Claims: which process does a piece of work that several may reach at once — train a pack,
run a search trial, confirm a study's best — held as `flock` locks on files in the shared runs
folder.

A lock ends with its process however it ends, on whichever node it ran: the kernel frees it,
and on a shared filesystem its lock manager does (NFSv4, Lustre mounted with `-o flock`, GPFS,
BeeGFS). So no claim is ever stale, and no process id is compared, which would only mean
something on the host that wrote it: a job SLURM cancels, ends at its time limit or loses with
its node frees its claims, and a job on any node takes the work on. A filesystem without locks
is refused in one line rather than waited on forever.

The holder (host, pid, SLURM job) is written into an exclusive claim's file, to say who holds
it; shared claims (a trial's, held both by the search worker and by the trial's job) say nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rnnbench.errors import UserError
from rnnbench.results.record import now_iso

HELD_ELSEWHERE = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def this_process() -> dict[str, Any]:
    """Who a claim's holder is: host, pid, and its SLURM job when it runs in one."""
    holder: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    job = slurm_job()
    if job:
        holder["slurm_job"] = job
    return holder | {"since": now_iso()}


def slurm_job() -> str | None:
    """This process's SLURM job as squeue and scancel name it (an array's task: 12_3)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def describe(holder: dict[str, Any] | None) -> str:
    """A holder in words: `SLURM job 12_3 (host vm, pid 4242)`."""
    if not holder:
        return "another process"
    host, pid, job = holder.get("host"), holder.get("pid"), holder.get("slurm_job")
    return f"SLURM job {job} (host {host}, pid {pid})" if job else f"process {pid} on host {host}"


def hold(path: Path, holder: dict[str, Any] | None = None, shared: bool = False) -> IO[str] | None:
    """The claim on `path` for this process, None while another process holds it (or, for a
    shared claim, holds it exclusively). An exclusive claim writes `holder` into the file. The
    claim lasts until the returned file is closed or the process ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - held open for as long as the claim
    try:
        fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        if e.errno in HELD_ELSEWHERE:
            return None
        raise no_locks(path, e) from None
    if not shared and holder is not None:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(holder))
        f.flush()
    return f


def is_held(path: Path) -> bool | None:
    """Whether a live process holds a claim on `path`; None when there is no such file (the
    claim was never taken here, or this node does not see the folder it is in)."""
    try:
        f = open(path)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in HELD_ELSEWHERE:
                return True
            raise no_locks(path, e) from None
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def holder_of(path: Path) -> dict[str, Any] | None:
    """Who holds (or last held) the exclusive claim on `path`, as it wrote itself there."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


class WaitNotice:
    """What a process waiting for a claim says on stderr: who holds it, at first and again
    each time the claim changes hands (a killed holder's work taken on by another), so a job's
    log names whoever did the work it waited for."""

    def __init__(self, path: Path, saying: str) -> None:
        self.path, self.saying, self.said = path, saying, None

    def look(self) -> None:
        holder = holder_of(self.path)
        if holder is None and self.said is not None:
            return  # the file is being rewritten by a new holder: say it on the next look
        words = describe(holder)
        if words != self.said:
            print(f"rnnbench: {self.saying} {words}", file=sys.stderr, flush=True)
            self.said = words


@contextlib.contextmanager
def waiting(path: Path, what: str, wait_s: float) -> Iterator[None]:
    """Hold the exclusive claim on `path` for the block, waiting while another process holds
    it (saying who, and `what` for), looking again every `wait_s` seconds."""
    notice = WaitNotice(path, f"waiting for {what}, run by")
    while (hold_file := hold(path, this_process())) is None:
        notice.look()
        time.sleep(wait_s)
    with hold_file:
        yield


def no_locks(path: Path, error: OSError) -> UserError:
    return UserError(
        f"{path.parent} is on a filesystem without file locks (flock: {error.strerror}), which "
        f"packs and shared searches need to tell which job does what: put results_root (and "
        f"hydra.sweep.dir) on one that has them (a local disk, NFSv4, Lustre mounted with "
        f"-o flock, GPFS)"
    )
