"""`rnnbench-report` on run folders laid out as the harness lays them out (fixture_runs: chosen
numbers, nothing trained; see test_table.made_runs), opened in a real headless Chromium. The
gradient-flow test trains two real tiny runs: its figure is drawn from what the callback writes."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest
from test_table import SEED7_PPL, SWEEP_PPL, Runs, made_runs, parse_cell

from conftest import REPO, train
from rnnbench.record import RECORD_FILE, STEPS_FILE
from rnnbench.report import main as report_main

ARTIFACTS = REPO / "test-artifacts"
BROWSERS = ("chromium", "chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser() -> str:
    """Chromium's path; skip without it — or fail under CI (RNNBENCH_REQUIRE_DATA=1), where
    `make test` installs it first (`make browser`)."""
    found = next(filter(None, map(shutil.which, BROWSERS)), None)
    if found is None:
        message = f"no {' or '.join(BROWSERS)} on PATH: `make browser` installs it"
        if os.environ.get("RNNBENCH_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return made_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    script = Path(sys.executable).parent / "rnnbench-report"
    paths = [runs.sweep, runs.seed, runs.odd, runs.ptb]
    done = subprocess.run(
        [str(script), *map(str, paths), "--reference", "zaremba2014,bai2018", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return out


class Page(HTMLParser):
    """The tables (rows of cell texts) and images of a DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.best: set[tuple[int, int, int]] = set()  # (table, row, cell) of class="best" cells
        self._is_best = False
        self.images: list[dict[str, str]] = []
        self.headings: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
            self._is_best = "best" in (dict(attrs).get("class") or "").split()
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag in ("h1", "h2"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            if self._is_best:
                self.best.add((len(self.tables) - 1, len(self.tables[-1]), len(self._row)))
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None
        elif tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [browser(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_in_a_headless_browser(runs, report, tmp_path):
    url = report.resolve().as_uri()
    dom = chromium("--dump-dom", url, tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Page()
    page.feed(dom.stdout)

    assert {"Comparison", "Learning curves", "Gradient norm before clipping"} <= set(page.headings)
    pivot, comparison, listing = page.tables
    assert pivot[0] == ["data.name", "model.cell", "model.num_layers=1", "model.num_layers=2"]
    cells = {tuple(row[:2]): row[2:] for row in pivot[1:]}
    shown = {
        (cell, layers): parse_cell(text)
        for (data, cell), texts in cells.items()
        if data == "reber" and cell != "rnn_relu"
        for layers, text in zip((1, 2), texts, strict=True)
    }
    # Every Reber cell shows the numbers written; lstm/1 averages in the second seed.
    expected = SWEEP_PPL | {("lstm", 1): (SWEEP_PPL["lstm", 1] + SEED7_PPL) / 2}
    assert {k: round(v[0], 3) for k, v in shown.items()} == {
        k: round(v, 3) for k, v in expected.items()
    }
    assert {k: v[2] for k, v in shown.items()} == {k: 2 if k == ("lstm", 1) else 1 for k in shown}
    assert cells[("reber", "rnn_relu")] == ["diverged", "-"]
    assert cells[("ptb_word", "lstm")] == ["-", "131.2"]
    # The best cell of each depth among the Reber rows is marked; PTB, alone, is not.
    rows = [tuple(row[:2]) for row in pivot]
    marked = {(rows[r], pivot[0][c]) for t, r, c in page.best if t == 0}
    assert marked == {
        (("reber", "gru"), "model.num_layers=1"),
        (("reber", "lstm"), "model.num_layers=2"),
    }
    assert sorted(float(row[4]) for row in comparison[1:]) == [78.93, 114.5]
    assert len(listing) - 1 == len(list(runs.sweep.rglob(RECORD_FILE))) + 4
    assert "left out: 1 failed" in dom.stdout

    alts = [img.get("alt") for img in page.images]
    assert alts == [
        "test/ppl per configuration",
        "learning curves",
        "gradient norm traces",
    ]
    for img in page.images:
        kind, data = img["src"].split(",", 1)
        assert kind == "data:image/png;base64"
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    done = chromium(f"--screenshot={shot}", "--window-size=1400,3000", url, tmp=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (3000, 1400)
    colours = {tuple(p) for p in (pixels[:1600:4, ::4, :3] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 200  # figures and tables, not a blank or error page


def test_report_is_self_contained(report):
    text = report.read_text()
    assert text.startswith("<!doctype html>")
    assert "<!-- command: rnnbench-report " in text
    # Nothing fetched when the page opens: no external script, style, image or font.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<script" not in text and "@import" not in text


def test_runs_without_a_step_trace_get_a_note_instead_of_traces(runs, tmp_path):
    """Run folders whose steps.csv is gone (older or pruned runs): no gradient-norm figure."""
    copy = tmp_path / "runs"
    shutil.copytree(runs.seed, copy)
    out = tmp_path / "report.html"
    assert report_main([str(copy), "-o", str(out)]) == 0
    page = Page()
    page.feed(out.read_text())
    assert "gradient norm traces" in [img["alt"] for img in page.images]  # with its steps.csv
    for trace in copy.rglob(STEPS_FILE):
        trace.unlink()
    assert report_main([str(copy), "-o", str(out)]) == 0
    page = Page()
    page.feed(out.read_text())
    assert [img["alt"] for img in page.images] == ["test/ppl per configuration", "learning curves"]
    assert "No run folder holds a steps.csv" in out.read_text()


def test_gradient_flow_curves_of_runs_made_with_the_callback(runs, tmp_path):
    """Runs made with +callbacks=gradflow get the ‖∂L/∂h_t‖ figure, one line per run; the
    report of runs without it says how to get one."""
    flow = [
        "+callbacks=gradflow",
        "callbacks.gradflow.every_n_steps=4",
        "data=adding",
        "data.seq_len=25",
        "data.train_size=64",
        "data.valid_size=16",
        "data.test_size=16",
        "data.batch_size=8",
        "model.num_layers=1",
        "model.hidden_size=8",
        "trainer.max_epochs=1",
    ]
    for cell in ("rnn", "lstm"):
        train([f"model={cell}", *flow], tmp_path / "flow" / cell)
    out = tmp_path / "report.html"
    assert report_main([str(tmp_path / "flow"), "-o", str(out)]) == 0
    page = Page()
    page.feed(out.read_text())
    assert "Gradient flow through time" in page.headings
    [img] = [i for i in page.images if i["alt"] == "gradient flow through time"]
    png = base64.b64decode(img["src"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    bare = tmp_path / "bare.html"
    assert report_main([str(runs.seed), "-o", str(bare)]) == 0
    assert "No run was made with <code>+callbacks=gradflow</code>" in bare.read_text()
