"""What a benchmark that cannot run raises: told in one line, exit status 2."""

from __future__ import annotations

from rnnbench.errors import UserError


class BenchError(UserError):
    """A benchmark that cannot run (missing data, a failed sweep): one line, exit status 2."""
