"""The errors a user can fix: a bad configuration value or a data file that is missing or wrong.

`rnnbench` prints these as one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""

import errno


class UserError(Exception):
    """A problem the user can fix; its message says what was wrong and what is allowed."""


class ConfigError(UserError):
    """A configuration value outside what the harness allows."""


class DataError(UserError):
    """A data file that is missing, cannot be downloaded, fails its checksum or cannot be parsed."""


class DiskError(UserError):
    """A file the run must write that cannot be written: a full disk, a read-only folder."""


# What a write fails with when the fault is the disk or the folder, not the program.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def find_user_error(exc: BaseException) -> UserError | None:
    """The UserError behind `exc`, looking through wrappers (Hydra's InstantiationException);
    a write that failed for want of space or permission counts as one (DiskError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            where = f" {exc.filename}" if exc.filename else ""
            return DiskError(
                f"cannot write{where} ({exc.strerror}); free some space or give "
                f"results_root a writable folder"
            )
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise ConfigError naming `key` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is unknown: use one of {', '.join(allowed)}")
