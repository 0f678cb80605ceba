"""`rnnbench-report` on run folders laid out as the harness lays them out (fixture_runs: chosen
numbers, nothing trained; see test_table.made_runs and fixture_runs.write_mixed_runs), opened in
a real headless Chromium. The gradient-flow test trains two real tiny runs, one logging to W&B
offline: its figure is drawn from what the callback writes, its W&B link from what W&B made."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest
from fixture_runs import MixedRuns
from test_table import SEED7_PPL, SWEEP_PPL, Runs, made_runs, parse_cell

from conftest import MISSING_BROWSER, REPO, skip_or_fail, train
from rnnbench.results.record import RECORD_FILE, STEPS_FILE
from rnnbench.results.report import FIGURE_PX
from rnnbench.results.report import main as report_main

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
    """Chromium's path; skip without it — or fail under CI, where `.ci/run` installs it
    first (`make browser`)."""
    found = next(filter(None, map(shutil.which, BROWSERS)), None)
    if found is None:
        skip_or_fail(f"no {' or '.join(BROWSERS)} on PATH: {MISSING_BROWSER}")
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


@pytest.fixture(scope="module")
def mixed(mixed_runs) -> MixedRuns:
    """A runs/ folder of four datasets, sweeps beside single runs, reused, failed and diverged
    runs (conftest.mixed_runs, written once per session)."""
    return mixed_runs


@pytest.fixture(scope="module")
def mixed_report(mixed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixed-report") / "report.html"
    script = Path(sys.executable).parent / "rnnbench-report"
    done = subprocess.run(
        [str(script), str(mixed.root), "-o", str(out)], capture_output=True, text=True, timeout=180
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
        self.links: list[str] = []  # every <a href>
        self.captions: dict[str, str] = {}  # figure (its image's alt) -> its caption
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self._caption: list[str] | None = None

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
        elif tag in ("h1", "h2", "h3"):
            self._heading = []
        elif tag == "a":
            self.links.append(dict(attrs)["href"])
        elif tag == "figcaption":
            self._caption = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            if self._is_best:
                self.best.add((len(self.tables) - 1, len(self.tables[-1]), len(self._row)))
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None
        elif tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None
        elif tag == "figcaption" and self._caption is not None:
            self.captions[self.images[-1]["alt"]] = "".join(self._caption).strip()
            self._caption = None

    def handle_data(self, data):
        for part in (self._cell, self._heading, self._caption):
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

    # One section per dataset, each under its headline metric.
    sections = ["reber: test/ppl", "ptb_word: test/ppl"]
    assert [h for h in page.headings if h.endswith(": test/ppl")] == sections
    each = ["Comparison", "test/ppl per configuration", "Learning curves"]
    each += ["Gradient norm before clipping", "Runs"]
    assert page.headings == ["rnnbench report", *(h for s in sections for h in [s, *each])]
    pivot, listing, ptb_pivot, ptb_comparison, ptb_listing = page.tables
    assert pivot[0] == ["model.cell", "model.num_layers=1", "model.num_layers=2"]
    cells = {row[0]: row[1:] for row in pivot[1:]}
    shown = {
        (cell, layers): parse_cell(text)
        for cell, texts in cells.items()
        if cell != "rnn_relu"
        for layers, text in zip((1, 2), texts, strict=True)
    }
    # Every Reber cell shows the numbers written; lstm/1 averages in the second seed.
    expected = SWEEP_PPL | {("lstm", 1): (SWEEP_PPL["lstm", 1] + SEED7_PPL) / 2}
    assert {k: round(v[0], 3) for k, v in shown.items()} == {
        k: round(v, 3) for k, v in expected.items()
    }
    assert {k: v[2] for k, v in shown.items()} == {k: 2 if k == ("lstm", 1) else 1 for k in shown}
    assert cells["rnn_relu"] == ["diverged", "-"]
    assert ptb_pivot == [["model.cell", "test/ppl"], ["lstm", "131.2"]]
    # The best cell of each depth is marked; PTB, alone in its table, is not.
    marked = {(pivot[r][0], pivot[0][c]) for t, r, c in page.best if t == 0}
    assert marked == {("gru", "model.num_layers=1"), ("lstm", "model.num_layers=2")}
    assert not {t for t, _, _ in page.best} - {0}
    # No published Reber number: a line under its pivot, not an empty comparison table.
    assert "no published test/ppl matches these runs" in dom.stdout
    assert sorted(float(row[2]) for row in ptb_comparison[1:]) == [78.93, 114.5]
    assert len(listing) - 1 == len(list(runs.sweep.rglob(RECORD_FILE))) + 3
    assert len(ptb_listing) - 1 == 1
    assert "left out: 1 failed" in dom.stdout

    alts = [img.get("alt") for img in page.images]
    kinds = ["test/ppl per configuration", "learning curves", "gradient norm traces"]
    assert alts == [f"{data}: {kind}" for data in ("reber", "ptb_word") for kind in kinds]
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
    assert "reber: gradient norm traces" in [img["alt"] for img in page.images]  # its steps.csv
    for trace in copy.rglob(STEPS_FILE):
        trace.unlink()
    assert report_main([str(copy), "-o", str(out)]) == 0
    page = Page()
    page.feed(out.read_text())
    assert [img["alt"] for img in page.images] == [
        "reber: test/ppl per configuration",
        "reber: learning curves",
    ]
    assert "No run folder holds a steps.csv" in out.read_text()


def test_gradient_flow_curves_of_runs_made_with_the_callback(runs, tmp_path):
    """Runs made with +callbacks=gradflow get the ‖∂L/∂h_t‖ figure, one line per run; the
    report of runs without it says how to get one. The LSTM run logs to W&B (offline): the
    report links its W&B run's folder."""
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
    made = {
        cell: train([f"model={cell}", *flow, *logger], tmp_path / "flow" / cell)
        for cell, logger in (("rnn", []), ("lstm", ["logger=wandb"]))
    }
    out = tmp_path / "report.html"
    assert report_main([str(tmp_path / "flow"), "-o", str(out)]) == 0
    page = Page()
    page.feed(out.read_text())
    assert "Gradient flow through time" in page.headings
    [img] = [i for i in page.images if i["alt"] == "adding: gradient flow through time"]
    wandb = made["lstm"]["wandb"]
    assert made["rnn"]["wandb"] is None and wandb["mode"] == "offline"
    assert Path(wandb["dir"]).is_dir()
    assert Path(os.path.abspath(wandb["dir"])).as_uri() in page.links
    png = base64.b64decode(img["src"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    bare = tmp_path / "bare.html"
    assert report_main([str(runs.seed), "-o", str(bare)]) == 0
    assert "No run was made with <code>+callbacks=gradflow</code>" in bare.read_text()


# Appended to a copy of a report (the report itself runs no script): once the page has loaded,
# what Chromium laid out, as JSON in a <pre> that --dump-dom then shows.
MEASURE = """<script>
window.addEventListener("load", () => {
  const root = document.documentElement;
  const figures = [...document.images].map((img) => {
    const box = img.getBoundingClientRect();
    return {alt: img.alt, natural: img.naturalWidth, shown: img.clientWidth, right: box.right};
  });
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify(
    {viewport: root.clientWidth, page: root.scrollWidth, height: root.scrollHeight, figures});
  document.body.append(out);
});
</script>"""


def laid_out(report: Path, width: int, tmp: Path) -> dict:
    """The report as Chromium lays it out in a window `width` px wide: the viewport's and the
    page's widths and height, and each image's own (natural) width, shown width (inside its
    border) and right edge."""
    probe = tmp / "measured.html"
    probe.write_text(report.read_text().replace("</body>", MEASURE + "</body>"))
    dom = chromium(f"--window-size={width},2000", "--dump-dom", probe.as_uri(), tmp=tmp)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    return json.loads(html.unescape(found.group(1)))


def test_mixed_folder_report_figures_fit_the_page(mixed, mixed_report, tmp_path):
    """A runs/ folder of four datasets: a section each with its own headline, every figure
    shown at its own size (text as large as drawn) inside a 1400 px window, the page never
    wider than the window; reference numbers dashed, bar axes that show the differences, each
    run linked to its folder. A full-page screenshot goes to test-artifacts/report-mixed.png."""
    page = Page()
    page.feed(mixed_report.read_text())
    sections = {"ptb_word: test/ppl", "sst2: test/acc", "adding: test/mse", "reber: test/ppl"}
    assert sections <= set(page.headings)
    assert len(page.images) == 4 * 3  # per dataset: bars, learning curves, gradient norms

    layout = laid_out(mixed_report, 1400, tmp_path)
    assert layout["page"] <= layout["viewport"], layout  # no sideways scrolling
    assert [f["alt"] for f in layout["figures"]] == [img["alt"] for img in page.images]
    for figure in layout["figures"]:
        assert 300 <= figure["natural"] <= FIGURE_PX, figure
        assert figure["shown"] == figure["natural"], figure  # not shrunk to fit
        assert figure["right"] <= layout["viewport"], figure

    captions = page.captions
    assert "dashed: test/ppl_optimal = 1.498" in captions["reber: test/ppl per configuration"]
    assert "dashed: val/ppl_optimal = 1.466" in captions["reber: learning curves"]
    # 1.535 against 1.635 and 0.801 against 0.823 would look equal from 0; 117 beside 6852 too.
    assert "axis not from 0" in captions["reber: test/ppl per configuration"]
    assert "axis not from 0" in captions["sst2: test/acc per configuration"]
    assert "log scale" in captions["ptb_word: test/ppl per configuration"]
    assert "axis not from 0" not in captions["adding: test/mse per configuration"]

    # Each run is linked to its folder; the relaunched sweep's copies are counted once (as
    # rnnbench-table counts them), so its folders are not listed.
    folders = [*(mixed.reber_sweep / str(n) for n in range(4)), mixed.ptb_full, mixed.ptb_reduced]
    folders += [*mixed.sst2, mixed.ddp, mixed.diverged, mixed.failed]
    files = {link for link in page.links if link.startswith("file://")}
    assert files == {Path(f).as_uri() for f in [mixed.root, *folders]}

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-mixed.png"
    shot.unlink(missing_ok=True)
    size = f"--window-size=1400,{layout['height']}"
    done = chromium(f"--screenshot={shot}", size, mixed_report.as_uri(), tmp=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (layout["height"], 1400)
    colours = {tuple(p) for p in (pixels[::6, ::6, :3] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 200  # figures and tables, not a blank or error page


def test_reused_runs_keep_their_curves(mixed, tmp_path):
    """A relaunched sweep's folder holds only copied records: its runs' curves and gradient
    norms are drawn from the runs they were copied from, which the listing links."""
    relaunch = mixed.reused[0].parent
    out = tmp_path / "report.html"
    assert report_main([str(relaunch), "-o", str(out)]) == 0
    page = Page()
    page.feed(out.read_text())
    assert page.captions["reber: learning curves"].startswith("val/ppl of 4 run(s) by step")
    assert "4 run(s)" in page.captions["reber: gradient norm traces"]
    links = set(page.links)
    for n, copy in enumerate(mixed.reused[:4]):
        assert copy.as_uri() in links
        assert (mixed.reber_sweep / str(n)).as_uri() in links  # reused from
    assert out.read_text().count("reused from") == 4


def test_line_figures_draw_the_best_runs_and_say_so(mixed, tmp_path):
    """--max-runs 2: of Reber's four runs the line figures draw the two best (the LSTM's
    seeds), the section says how many were left out, the listing marks those drawn."""
    out = tmp_path / "report.html"
    paths = [mixed.reber_sweep, mixed.ptb_full, mixed.ptb_reduced]
    assert report_main([*map(str, paths), "--max-runs", "2", "-o", str(out)]) == 0
    page = Page()
    page.feed(out.read_text())
    assert "the best 2 of 4 runs (by test/ppl) are drawn" in out.read_text()
    assert page.captions["reber: learning curves"].startswith("val/ppl of 2 run(s) by step")
    # Reber's listing marks the runs drawn; PTB's two runs are all drawn: no such column.
    [listing] = [t for t in page.tables if t[0][-1] == "in figures"]
    assert [row[:2] for row in listing[1:]] == [
        ["rnn", "1"],
        ["rnn", "2"],
        ["lstm", "1"],
        ["lstm", "2"],
    ]
    assert [row[-1] for row in listing[1:]] == ["", "", "✓", "✓"]


def test_max_runs_must_be_a_positive_number(mixed, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        report_main([str(mixed.root), "--max-runs", "0", "-o", str(tmp_path / "r.html")])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [
        "rnnbench-report: error: argument --max-runs: '0' is not a whole number of at least 1"
    ]
    assert not (tmp_path / "r.html").exists()
