"""Hostile input and output paths: outputs that cannot be written, run folders whose names are
markup, data paths that are no plain file, and the mode of downloaded files.

The commands run as the real console scripts in subprocesses. Tests run as root, so permission
bits stop nothing: unwritable outputs are a path under a regular file, a folder, /proc and
/dev/full.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_REBER, assert_refused, require_data, rnnbench_cli
from rnnbench import outputs
from rnnbench.data.fetch import ensure_file
from rnnbench.errors import DataError

BIN = Path(sys.executable).parent
# A run folder whose name closes an HTML comment, opens a script and holds every LaTeX special.
HOSTILE = Path("h%&$#_{}~^\\") / "x--><script>alert(1)</script>"
TINY = TINY_REBER
PTB_FILES = ("ptb/ptb.train.txt", "ptb/ptb.valid.txt", "ptb/ptb.test.txt")
# Small enough that the old code trained and only then failed to write, in seconds.
GRADFLOW_TINY = ["--cells", "rnn", "--seq-len", "4", "--hidden-size", "4", "--steps", "1"]
GRADFLOW_TINY += ["--batch-size", "2"]


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs/ folder of one real tiny run trained inside a folder named HOSTILE."""
    cwd = tmp_path_factory.mktemp("hostile") / HOSTILE
    cwd.mkdir(parents=True)
    done = rnnbench_cli(TINY, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((cwd / "runs").rglob("result.json"))) == 1
    return cwd / "runs"


def run(command: str | list[str], *args: str | Path, cwd: Path, timeout: int = 120):
    """A console script of .venv/bin (or a full argv list) in a subprocess."""
    argv = [str(BIN / command)] if isinstance(command, str) else list(command)
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("RNNBENCH_RUNS_DIR", None)
    return subprocess.run(
        [*argv, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_error_line(done, prefix: str, named: str, only: bool = True) -> None:
    """Exit status 2, no traceback and one stderr line `prefix: error: ...` naming `named`:
    the only line at all when `only`, else the only one that mentions an error."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    lines = done.stderr.splitlines()
    if not only:
        lines = [line for line in lines if "error" in line.lower()]
    assert len(lines) == 1, done.stderr[-3000:]
    assert "error" in lines[0] and lines[0].startswith(f"{prefix}: error: "), lines[0]
    assert named in lines[0], lines[0]


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its content (None for folders)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


# ---- outputs that cannot be written --------------------------------------------------------

FILE_OUTPUTS = {  # command -> the arguments before `-o BAD`
    "rnnbench-table": lambda runs: [runs],
    "rnnbench-report": lambda runs: [runs],
    "rnnbench-gradflow": lambda runs: GRADFLOW_TINY,
}
FOLDER_OUTPUTS = {  # command -> (its prefix in errors, argv before the output option)
    "rnnbench-reproduce": (
        "rnnbench-reproduce",
        lambda runs: [str(BIN / "rnnbench-reproduce"), runs, "-o"],
    ),
    "python -m rnnbench.bench": (
        "rnnbench-bench",
        lambda runs: (
            [sys.executable, "-m", "rnnbench.bench", "aggregate", "--records", runs]
            + ["-n", "5", "--out"]
        ),
    ),
}
# name -> the bad path, given the folder holding `somefile` (a regular file) and `folder`.
BAD_FILE = {
    "parent is a file": lambda place: place / "somefile" / "out.txt",
    "is a folder": lambda place: place / "folder",
    "on /proc": lambda place: Path("/proc/rnnbench-out.png"),
}
BAD_FOLDER = {
    "parent is a file": lambda place: place / "somefile" / "out",
    "is a file": lambda place: place / "somefile",
    "on /proc": lambda place: Path("/proc/rnnbench-out"),
}


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A folder holding a regular file `somefile` and an empty folder `folder`."""
    (tmp_path / "place" / "folder").mkdir(parents=True)
    (tmp_path / "place" / "somefile").write_text("keep me\n")
    return tmp_path / "place"


@pytest.mark.parametrize("case", BAD_FILE)
@pytest.mark.parametrize("command", FILE_OUTPUTS)
def test_unwritable_output_file_is_one_line_before_any_work(
    command, case, hostile_runs, place, tmp_path
):
    bad = BAD_FILE[case](place)
    before = listing(place)
    done = run(command, *FILE_OUTPUTS[command](hostile_runs), "-o", bad, cwd=tmp_path)
    assert_one_error_line(done, command, str(bad))
    assert done.stdout == ""  # no table printed: refused before training or reading
    assert listing(place) == before  # no partial or temporary file anywhere
    assert not bad.exists() or bad.is_dir()


@pytest.mark.parametrize("case", BAD_FOLDER)
@pytest.mark.parametrize("command", FOLDER_OUTPUTS)
def test_unwritable_output_folder_is_one_line_before_any_work(
    command, case, hostile_runs, place, tmp_path
):
    prefix, argv = FOLDER_OUTPUTS[command]
    bad = BAD_FOLDER[case](place)
    before = listing(place)
    done = run(argv(hostile_runs) + [str(bad)], cwd=tmp_path)
    assert_one_error_line(done, prefix, str(bad))
    assert done.stdout == ""
    assert listing(place) == before
    assert not Path("/proc/rnnbench-out").exists()


def test_unwritable_gradflow_csv_is_refused_before_training(place, tmp_path):
    bad = place / "somefile" / "flow.csv"
    done = run("rnnbench-gradflow", *GRADFLOW_TINY, "--csv", bad, cwd=tmp_path)
    assert_one_error_line(done, "rnnbench-gradflow", str(bad))
    assert "--csv" in done.stderr
    assert not (tmp_path / "gradient_flow.png").exists()  # nothing trained, nothing drawn


@pytest.mark.parametrize("command", FILE_OUTPUTS)
def test_a_write_that_fails_is_one_line(command, hostile_runs, tmp_path):
    """/dev/full passes every check and fails the write itself (ENOSPC); rnnbench-gradflow
    has trained and printed its tables by then."""
    done = run(command, *FILE_OUTPUTS[command](hostile_runs), "-o", "/dev/full", cwd=tmp_path)
    assert_one_error_line(done, command, "/dev/full", only=command != "rnnbench-gradflow")
    assert "No space left" in done.stderr


def test_write_text_replaces_whole_files_with_the_umask_mode(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        assert outputs.default_file_mode() == 0o640
        outputs.write_text(tmp_path / "out.md", "first\n")
        assert stat.S_IMODE((tmp_path / "out.md").stat().st_mode) == 0o640
    finally:
        os.umask(old)

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(outputs.OutputError, match="out.md.*No space left"):
        outputs.write_text(tmp_path / "out.md", "second, never complete\n")
    assert [p.name for p in tmp_path.iterdir()] == ["out.md"]  # no temporary file left
    assert (tmp_path / "out.md").read_text() == "first\n"


# ---- escaping ----------------------------------------------------------------------------


def assert_sealed(comment: str) -> None:
    """Nothing in `comment` could end it or open another (HTML's rules for comment text)."""
    assert not any(bad in comment for bad in ("-->", "--!>", "<!--", "<", ">")), comment


class Page(HTMLParser):
    """The start tags and comments of an HTML page, as a browser's tokenizer sees them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.comments: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_comment(self, data):
        self.comments.append(data)


def test_table_html_comment_cannot_be_broken_out_of(hostile_runs, tmp_path):
    out = tmp_path / "table.html"
    done = run(
        "rnnbench-table", hostile_runs, "--long", "--format", "html", "-o", out, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    page = Page(out.read_text())
    assert "script" not in page.tags and "table" in page.tags
    [comment] = page.comments
    assert_sealed(comment)
    assert str(hostile_runs) in html.unescape(comment)  # the command, recoverable
    assert str(HOSTILE / "runs") in html.unescape(out.read_text())  # the cells, escaped


def test_table_markdown_and_latex_escape_run_folders(hostile_runs, tmp_path):
    out = tmp_path / "table.md"
    done = run("rnnbench-table", hostile_runs, "--long", "-o", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first, *rest = out.read_text().splitlines()
    assert first.startswith("<!-- command: ") and first.count("-->") == 1
    assert first.endswith(" -->")
    body = "\n".join(rest)
    assert "x--\\>\\<script\\>alert(1)\\</script\\>" in body
    assert not re.search(r"(?<!\\)<", body)  # no raw "<": nothing a renderer takes as HTML

    done = run("rnnbench-table", hostile_runs, "--long", "--format", "latex", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    escaped = (
        r"h\%\&\$\#\_\{\}\textasciitilde{}\textasciicircum{}\textbackslash{}/"
        r"x--\textgreater{}\textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{}"
    )
    assert escaped in done.stdout


def test_command_comment_stays_on_its_line(hostile_runs, tmp_path):
    """A PATH holding a line break must not end the comment line that names the command."""
    broken = tmp_path / "a\nb"
    broken.symlink_to(hostile_runs, target_is_directory=True)
    out = tmp_path / "table.latex"
    done = run("rnnbench-table", broken, "--format", "latex", "-o", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert lines[0].startswith("% command: ") and "a\\nb" in lines[0]
    assert lines[1] == "% needs \\usepackage{booktabs}"
    # CSV keeps its command in FILE.notes.txt: on its first line, whole.
    out = tmp_path / "table.csv"
    done = run("rnnbench-table", broken, "--format", "csv", "-o", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    notes = (tmp_path / "table.csv.notes.txt").read_text().splitlines()
    assert notes[0].startswith("command: rnnbench-table ") and "a\\nb" in notes[0]
    table = pd.read_csv(out)
    assert len(table) == 1 and table["mean"].notna().all()


def test_report_escapes_and_draws_hostile_config_values(hostile_runs, tmp_path):
    """A data.name that is broken mathtext and markup: the page still draws, and shows it."""
    runs = tmp_path / "copy" / "runs"
    shutil.copytree(hostile_runs, runs, ignore=shutil.ignore_patterns("checkpoints"))
    [result] = runs.rglob("result.json")
    record = json.loads(result.read_text())
    record["config"]["data"]["name"] = r"$\bogus$ <b>bold</b>"
    result.write_text(json.dumps(record))
    out = tmp_path / "report.html"
    done = run("rnnbench-report", hostile_runs, runs, "-o", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    page = Page(text)
    assert "script" not in page.tags and "b" not in page.tags
    assert len(page.comments) == 1
    assert_sealed(page.comments[0])
    assert str(hostile_runs) in html.unescape(page.comments[0])
    assert r"$\bogus$ &lt;b&gt;bold&lt;/b&gt;" in text


def test_bench_markdown_comment_cannot_be_broken_out_of(hostile_runs, tmp_path):
    argv = [sys.executable, "-m", "rnnbench.bench", "aggregate", "--records", str(hostile_runs)]
    done = run([*argv, "-n", "5", "--out", tmp_path / "out"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first = (tmp_path / "out" / "bench.md").read_text().splitlines()[0]
    assert first.startswith("<!-- command: ") and first.endswith(" -->")
    assert first.count("-->") == 1 and "<script" not in first
    [comment] = Page(first).comments
    assert_sealed(comment)
    assert str(hostile_runs) in html.unescape(comment)


# ---- data paths that are no plain file ---------------------------------------------------


def make_data_dir(root: Path, kind: str) -> Path:
    """A data folder laid out as the shared one, whose ptb.train.txt is `kind`."""
    shared = require_data(*PTB_FILES)
    (root / "ptb").mkdir(parents=True)
    for name in PTB_FILES[1:]:
        (root / name).symlink_to(shared / name)
    train = root / PTB_FILES[0]
    if kind == "fifo":
        os.mkfifo(train)
    elif kind == "folder":
        train.mkdir()
    elif kind == "dangling link":
        train.symlink_to(root / "nowhere" / "ptb.train.txt")
    return train


DATA_KINDS = {"fifo": "named pipe", "folder": "folder", "dangling link": "symbolic link"}


@pytest.mark.parametrize("kind", DATA_KINDS)
def test_data_path_that_is_no_file_is_one_line_and_never_hangs(kind, tmp_path):
    train = make_data_dir(tmp_path / "data", kind)
    (tmp_path / "work").mkdir()
    args = ["data=ptb_word", "logger=none", "trainer.enable_progress_bar=false"]
    done = rnnbench_cli(
        args, cwd=tmp_path / "work", env={"RNNBENCH_DATA_DIR": str(tmp_path / "data")}, timeout=120
    )
    assert_refused(done, str(train), tmp_path / "work")
    assert DATA_KINDS[kind] in done.stderr


@pytest.mark.parametrize("kind", DATA_KINDS)
def test_every_dataset_gets_the_check_in_ensure_file(kind, tmp_path):
    train = make_data_dir(tmp_path, kind)
    raised: list[BaseException] = []

    def resolve() -> None:
        try:
            ensure_file(PTB_FILES[0], root=tmp_path, download=False)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            raised.append(e)

    worker = threading.Thread(target=resolve, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # blocked opening the pipe: give it a writer so it ends
        os.close(os.open(train, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"ensure_file blocked on {train}")
    [err] = raised
    assert isinstance(err, DataError), repr(err)
    message = str(err)
    assert "\n" not in message and str(train) in message and DATA_KINDS[kind] in message


# ---- modes of downloaded files -----------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)], ids=["022", "027"])
def test_downloaded_file_gets_the_mode_of_a_plain_file(umask, mode, tmp_path, http_server):
    shared = require_data(PTB_FILES[1])
    old = os.umask(umask)
    try:
        path = ensure_file(PTB_FILES[1], root=tmp_path / "cache", mirror=http_server(shared))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_bytes() == (shared / PTB_FILES[1]).read_bytes()
