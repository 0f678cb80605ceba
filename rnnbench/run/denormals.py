"""Denormal floats flushed to zero on every thread torch computes on.

A saturated recurrent cell (tanh/sigmoid at ±1) makes gradients of ~1e-40, which CPUs compute
in microcode; flushed to zero, such a run trains several times faster (issue 35, item 9).
torch.set_flush_denormal sets the calling thread's mode only, and each thread of torch's OpenMP
team keeps the mode of the thread that made it: set once the team exists, the matmuls the team
runs go on as before. `flush_denormal_everywhere` sets the mode on the team's threads too.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Callable
from pathlib import Path

import torch

TEAM_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.lru_cache(maxsize=1)
def openmp_parallel() -> Callable | None:
    """GOMP_parallel (what `#pragma omp parallel` calls: run a function on every thread of a
    team) of the OpenMP runtime loaded in this process, torch's; None where there is none."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:  # not Linux
        return None
    names = ("libgomp", "libiomp", "libomp")
    found = {p for line in maps if Path(p := line.split()[-1]).name.startswith(names)}
    # torch's own first, should another package have brought a runtime of its own
    for path in sorted(found, key=lambda p: not p.startswith(str(Path(torch.__file__).parent))):
        with contextlib.suppress(OSError, AttributeError):
            parallel = ctypes.CDLL(path).GOMP_parallel
            parallel.argtypes = [TEAM_FN, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            parallel.restype = None
            return parallel
    return None


def flushed_share() -> float:
    """The share of a product split over all of torch's threads that denormals made zero: 1 when
    every thread flushes them, 0 when none does."""
    x = torch.full((65_536 * torch.get_num_threads(),), 1e-39)
    return float((x * 1.0 == 0).float().mean())


def flush_denormal_everywhere(on: bool) -> bool:
    """Denormal floats flushed to zero (`on`) or kept, in this thread and on every thread of
    torch's OpenMP team; whether every thread now does so. torch.set_flush_denormal sets the
    calling thread's mode, and a team thread keeps the mode of the thread that made it: set
    in this thread alone, the matmuls the team runs would go on as before."""
    torch.set_flush_denormal(on)
    parallel = openmp_parallel()
    if parallel is not None:
        each = TEAM_FN(lambda _: torch.set_flush_denormal(on))
        parallel(each, None, torch.get_num_threads(), 0)
    return flushed_share() == float(on)
