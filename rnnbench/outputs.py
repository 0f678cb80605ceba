"""Files the commands write, written safely: checked before any work, never left half written.

Every auxiliary command (rnnbench-table, -report, -reproduce, -gradflow, -bench) checks its
output path up front with `check_writable` (a file) or `check_writable_folder` (a folder), so a
path that cannot be written is refused in one line before minutes of training or reading, and
writes with `write_text` / `write_bytes`: a temporary file beside the target, renamed over it
once complete, with the mode a plain `open()` would give under the user's umask
(`default_file_mode`). Text that ends up inside a comment or a matplotlib label goes through
`html_comment`, `one_line` or `mpl_text`, so a hostile run folder name cannot break out of it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import tempfile
from pathlib import Path

from rnnbench.errors import UserError

# Characters str.splitlines() (and so most readers) take as the end of a line.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


class OutputError(UserError):
    """An output file or folder that cannot be written: one line, exit status 2."""


def shown(path: str | os.PathLike) -> str:
    """`path` as an error message shows it: as typed, or quoted when empty or unprintable."""
    text = os.fspath(path)
    return text if text and text.isprintable() else repr(text)


def one_line(text: str) -> str:
    """`text` with every line break written as its escape (\\n, \\r, \\u2028, ...)."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if ch in LINE_BREAKS else ch for ch in text
    )


def html_comment(text: str) -> str:
    """`<!-- text -->` that `text` cannot end, nest or spoil, on one line: `&`, `<` and `>`
    HTML-escaped, so it holds none of `-->`, `--!>`, `<!--` (what HTML forbids in a comment);
    `--` itself, which HTML allows, stays readable (`--format`). `html.unescape` of the inside
    gives `text` back (line breaks aside)."""
    inner = one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"<!-- {inner} -->"


MD_SPECIAL = "\\|<>&[]`*$"


def md_text(text: str) -> str:
    """`text` as markdown that shows it verbatim, on one line (a GitHub table cell)."""
    return "".join("\\" + ch if ch in MD_SPECIAL else ch for ch in one_line(text))


def mpl_text(text: str) -> str:
    """`text` as a matplotlib title, label or legend entry shows it verbatim: `$` escaped so
    that it never starts mathtext (which fails to draw on a malformed formula)."""
    return str(text).replace("$", r"\$")


def default_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 less the process umask (0o644
    under umask 022). For files made with tempfile.mkstemp (always 0o600) before renaming."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _probe_folder(folder: Path) -> str | None:
    """Why no file can be created in the existing folder `folder`; None when one can."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".rnnbench-probe-")
    except OSError as e:
        return f"cannot create files in {shown(folder)} ({e.strerror})"
    os.close(fd)
    os.unlink(probe)
    return None


def check_writable(path: str | os.PathLike, option: str = "-o") -> str | None:
    """Why the file `path` cannot be written, as one line naming it and what to do; None when
    it can. Nothing is created: a probe file in its folder is made and removed at once."""
    p = Path(path)
    fix = f"give {option} a file path in a writable folder"
    bad = f"cannot write {shown(path)}"
    try:
        st = p.stat()
    except FileNotFoundError:
        st = None
    except OSError as e:  # a parent that is a file (ENOTDIR), a loop of links, ...
        return _parent_problem(p, bad, fix) or f"{bad}: {e.strerror}; {fix}"
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            return f"{bad}: it is a folder; {fix}, e.g. {shown(p / 'out')}"
        if not stat.S_ISREG(st.st_mode):
            # /dev/null, /dev/stdout, a pipe with a reader: written in place.
            try:
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as e:
                if e.errno == errno.ENXIO and stat.S_ISFIFO(st.st_mode):
                    return f"{bad}: it is a pipe that nothing reads; {fix}"
                return f"{bad}: {e.strerror}; {fix}"
            return None
        if not os.access(p, os.W_OK):
            return f"{bad}: it is not writable; {fix}"
    problem = _parent_problem(p, bad, fix)
    if problem:
        return problem
    probe = _probe_folder(_target(p).parent)
    return f"{bad}: {probe}; {fix}" if probe else None


def _target(p: Path) -> Path:
    """The path a write to `p` lands on: `p`, or through a symbolic link the file it names."""
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def _parent_problem(p: Path, bad: str, fix: str) -> str | None:
    """What is wrong with the folder `p` would be written into, when something is."""
    parent = _target(p).parent
    if parent.is_dir():
        return None
    for above in [parent, *parent.parents]:
        if above.exists():
            if not above.is_dir():
                return f"{bad}: {shown(above)} is a file, not a folder; {fix}"
            break
    return f"{bad}: folder {shown(parent)} does not exist; create it or {fix}"


def check_writable_folder(path: str | os.PathLike, option: str = "-o") -> str | None:
    """Why `path` cannot be (made and) written as an output folder, as one line naming it and
    what to do; None when it can. Nothing is created."""
    p = Path(path)
    fix = f"give {option} a folder that can be written"
    bad = f"cannot write to folder {shown(path)}"
    for above in [p, *p.parents]:
        try:
            st = above.stat()
        except FileNotFoundError:
            continue
        except OSError as e:  # ENOTDIR: some folder above is a file; found on the way up
            if e.errno == errno.ENOTDIR:
                continue
            return f"{bad}: {e.strerror}; {fix}"
        if not stat.S_ISDIR(st.st_mode):
            what = "it is" if above == p else f"{shown(above)} is"
            return f"{bad}: {what} a file, not a folder; {fix}"
        probe = _probe_folder(above)
        return f"{bad}: {probe}; {fix}" if probe else None
    return f"{bad}: no folder above it exists; {fix}"


def make_folder(path: str | os.PathLike, option: str = "-o") -> Path:
    """`path` made (with its parents) as an output folder; OutputError when it cannot be."""
    problem = check_writable_folder(path, option)
    if problem:
        raise OutputError(problem)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create folder {shown(path)} ({e.strerror})") from None
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` all at once: into a temporary file beside it, renamed over it
    when complete, so a failed write leaves the old file (or none), never half of one. An
    existing special file (/dev/null, a pipe) is written in place. OutputError on failure."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        st = None
    try:
        if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            # Non-blocking open: a pipe nobody reads is refused (ENXIO) instead of hanging.
            fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            with open(fd, "wb") as f:
                f.write(data)
            return
        write_whole(p, data, stat.S_IMODE(st.st_mode) if st is not None else None)
    except OSError as e:
        reason = e.strerror or str(e)
        raise OutputError(f"cannot write {shown(path)} ({reason}); pick another path") from None


def write_whole(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    """Write `data` to a temp file in `path`'s folder, fsync, then rename over `path` (through
    a link: over the file it names): a reader sees the old file or the new one, never half of
    one, and a failed write (a full disk) leaves no temp file. The file gets `mode`, by default
    the mode a plain open() would give it (0644 under umask 022), not mkstemp's 0600. The one
    atomic writer: records, checkpoints and every command's output go through it."""
    target = _target(Path(path))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """`write_bytes` of `text` encoded (UTF-8 by default)."""
    write_bytes(path, text.encode(encoding))


RENAME_EXCHANGE = 2  # linux/fs.h: renameat2 swaps the two names in one step
AT_FDCWD = -100


def exchange_folders(a: str | os.PathLike, b: str | os.PathLike) -> None:
    """Swap the folders at `a` and `b` in one step (Linux renameat2 RENAME_EXCHANGE), so a
    reader sees one or the other, never neither; elsewhere (another OS, a file system without
    it) with three renames, whose one gap is a moment without `b`."""

    a, b = os.fsencode(a), os.fsencode(b)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None and renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0:
        return
    aside = b + b".exchanging"
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)
