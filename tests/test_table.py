"""`rnnbench-table` on run folders laid out as the harness lays them out: a sweep, a second seed,
a diverged and a failed run and a PTB run, written with chosen numbers by fixture_runs (nothing
trains), so every assertion checks numbers known in advance. One real tiny run, logged to W&B
offline, is trained for what only a real run has: its W&B files, and bench's copies of real
records. The console script runs in a subprocess."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from fixture_runs import write_run, write_sweep
from omegaconf import OmegaConf

from conftest import TINY_REBER_RUN, rnnbench_cli, wandb_records
from rnnbench.bench import cli as bench
from rnnbench.config import CONF_DIR, compose
from rnnbench.results import table
from rnnbench.results.record import (
    RECORD_FILE,
    flatten,
    natural_key,
    record_files,
    repeat_key,
    write_json_atomic,
)

CELLS = ["rnn", "gru", "lstm"]
TINY = [
    "data.train_strings=200",
    "data.valid_strings=40",
    "data.test_strings=40",
    "model.hidden_size=16",
    "trainer.max_epochs=3",
]
SWEEP = {"model": CELLS, "model.num_layers": [1, 2]}  # rnnbench -m model=... model.num_layers=1,2
SWEEP_COMMON = ["logger=none", "trainer.enable_progress_bar=false", *TINY]
# test/ppl of each sweep job. Each depth has another best cell (gru at 1 layer, lstm at 2), none
# of them the first row, no two equal: a table that bolds the wrong cell, or none, fails.
SWEEP_PPL = {
    ("rnn", 1): 6.90,
    ("rnn", 2): 7.10,
    ("gru", 1): 6.70,
    ("gru", 2): 6.95,
    ("lstm", 1): 6.80,
    ("lstm", 2): 6.60,
}
# lstm, 1 layer again with seed 7: that cell becomes mean 6.86, sample std 0.08485 (n=2); a
# population std (0.06) or a single run's number would show otherwise. Still above gru's 6.70.
SEED7_PPL = 6.92
# rnn_relu at lr 1000: finite for two epochs, non-finite in the third. Its best epoch was
# tested (a finite number, as the harness records it), yet the run is no result: a table that
# averaged it in would show 7.4 instead of "diverged".
DIVERGED = ["model=rnn_relu", "model.num_layers=1", "optim.lr=1000", *TINY]
DIVERGED_PPL = 7.4
# A value the checks allow but the model refuses (Reber is next-step prediction): a run that
# started and failed before training, with its record.
FAILED = ["model.bidirectional=true", *TINY]
FAILED_ERROR = (
    "model.bidirectional=true is not allowed for next-step prediction: reading the sequence "
    "backwards shows the model the very values it must predict; use model.bidirectional=false "
    "(bidirectional suits classification and regression)"
)
# Zaremba et al.'s small LSTM (2 x 200, no dropout) on PTB: a record whose keys match published
# rows, with numbers chosen away from them (Δ 16.7 and 52.27 against 114.5 and 78.93).
PTB = [
    "data=ptb_word",
    "model=lstm",
    "model.num_layers=2",
    "model.hidden_size=200",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "logger=none",
]
PTB_PPL, PTB_VAL_PPL = 131.2, [150.2, 136.4]
NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


@dataclass
class Runs:
    sweep: Path  # 3 cells x 2 depths, seed 1234: <sweep>/<job number>/result.json
    seed: Path  # lstm, 1 layer, seed 7: the sweep's lstm/1 config again
    odd: Path  # a diverged run and a failed one
    ptb: Path  # one PTB record shaped as Zaremba's small LSTM


_RUNS: list[Runs] = []


def made_runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The run folders every test of this file and test_report.py reads, written once per
    session by fixture_runs (a few seconds: ten configs composed, nothing trained)."""
    if _RUNS:
        return _RUNS[0]
    root = tmp_path_factory.mktemp("made")

    def numbers(job: dict) -> dict:
        return {"test": SWEEP_PPL[job["model"], job["model.num_layers"]]}

    write_sweep(root / "sweep", SWEEP, SWEEP_COMMON, numbers)
    seed7 = ["model=lstm", "model.num_layers=1", "seed=7", *TINY]
    write_run(root / "seed" / "lstm-seed7", seed7, test=SEED7_PPL)
    write_run(root / "odd" / "diverged", DIVERGED, test=DIVERGED_PPL, status="diverged")
    write_run(root / "odd" / "failed", FAILED, status="failed", error=FAILED_ERROR)
    write_run(root / "ptb" / "zaremba-small", PTB, test=PTB_PPL, val=PTB_VAL_PPL)
    _RUNS.append(Runs(root / "sweep", root / "seed", root / "odd", root / "ptb"))
    return _RUNS[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return made_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """One real tiny Reber run made by the `rnnbench` console script, logged to W&B offline:
    the folder holding its run folder."""
    root = tmp_path_factory.mktemp("real")
    args = [*TINY_REBER_RUN, "logger=wandb", "trainer.enable_progress_bar=false"]
    done = rnnbench_cli(args, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "runs"


def records(*paths: Path) -> list[dict]:
    return [json.loads(p.read_text()) for path in paths for p in sorted(path.rglob(RECORD_FILE))]


def ppl(recs: list[dict], cell: str, layers: int) -> list[float]:
    """test/ppl of the completed runs of one cell and depth, read straight from result.json."""
    return [
        r["metrics"]["test/ppl"]
        for r in recs
        if r["status"] == "completed"
        and r["config"]["model"]["cell"] == cell
        and r["config"]["model"]["num_layers"] == layers
    ]


def rnnbench_table(*args: str | Path) -> subprocess.CompletedProcess:
    """The real console script, in a subprocess."""
    script = Path(sys.executable).parent / "rnnbench-table"
    return subprocess.run(
        [str(script), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def ok(*args: str | Path) -> str:
    done = rnnbench_table(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def md_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in `text`, as rows of cell texts (the |---| line dropped)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if not all(re.fullmatch(r"-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def parse_cell(text: str) -> tuple[float, float | None, int, bool]:
    """'**6.78 ± 0.01 (n=2)**' -> (6.78, 0.01, 2, best)."""
    best = text.startswith(("**", "\\textbf{"))
    text = re.sub(r"^\*\*|\*\*$|^\\textbf\{|\}$", "", text).replace("$\\pm$", "±")
    m = re.fullmatch(rf"({NUMBER})(?: ± ({NUMBER}))?(?: \(n=(\d+)[^)]*\))?", text)
    assert m, f"not a number cell: {text!r}"
    return float(m[1]), float(m[2]) if m[2] else None, int(m[3] or 1), best


def close(shown: float, exact: float) -> bool:
    """A number printed with 4 significant figures against the full-precision one."""
    return math.isclose(shown, exact, rel_tol=1e-3)


def test_markdown_pivot_of_a_sweep_is_cells_by_depths_of_test_ppl(runs):
    out = ok(runs.sweep)
    [pivot] = md_tables(out)
    assert pivot[0] == ["model.cell", "model.num_layers=1", "model.num_layers=2"]
    assert [row[0] for row in pivot[1:]] == CELLS
    recs = records(runs.sweep)
    for row in pivot[1:]:
        for layers, text in zip((1, 2), row[1:], strict=True):
            mean, std, n, _ = parse_cell(text)
            [expected] = ppl(recs, row[0], layers)
            assert expected == SWEEP_PPL[row[0], layers]  # the record holds what was written
            assert close(mean, expected) and std is None and n == 1
    for col, winner in ((1, "gru"), (2, "lstm")):  # one bold cell per column: its lowest ppl
        bold = [row[0] for row in pivot[1:] if parse_cell(row[col])[3]]
        assert bold == [winner]
    [note] = [line for line in out.splitlines() if line.startswith("test/ppl:")]
    assert "lower is better" in note


def test_latex_and_csv_give_the_same_numbers(runs):
    [md] = md_tables(ok(runs.sweep))
    md_numbers = {(row[0], col): parse_cell(row[col])[0] for row in md[1:] for col in (1, 2)}

    latex = ok(runs.sweep, "--format", "latex")
    assert "\\begin{tabular}" in latex and "model.num\\_layers=1" in latex
    body = [line for line in latex.splitlines() if line.endswith("\\\\")][1:]
    latex_numbers = {}
    for line in body:
        cells = [c.strip() for c in line[: -len("\\\\")].split(" & ")]
        for col in (1, 2):
            latex_numbers[(cells[0], col)] = parse_cell(cells[col])[0]
    assert latex_numbers == md_numbers

    # Plain CSV: pandas reads it with no options, every line a cell of the md table.
    csv = pd.read_csv(io.StringIO(ok(runs.sweep, "--format", "csv")))
    assert (
        len(csv) == 6 and set(csv["metric"]) == {"test/ppl"} and set(csv["data.name"]) == {"reber"}
    )
    for line in csv.to_dict("records"):
        col = 1 + int(line["model.num_layers"]) - 1
        assert close(md_numbers[(line["model.cell"], col)], line["mean"])


def test_seeds_collapse_to_mean_std_and_n(runs):
    out = ok(runs.sweep, runs.seed)
    [pivot] = md_tables(out)
    cells = {row[0]: row[1:] for row in pivot[1:]}
    mean, std, n, _ = parse_cell(cells["lstm"][0])
    both = ppl(records(runs.sweep, runs.seed), "lstm", 1)
    assert sorted(both) == [SWEEP_PPL["lstm", 1], SEED7_PPL] and n == 2
    assert close(mean, statistics.mean(both))
    # The std is printed with the mean's decimals (6.860 ± 0.085): half a unit of the last one.
    assert math.isclose(std, statistics.stdev(both), abs_tol=5e-4)
    assert parse_cell(cells["lstm"][1])[2] == 1  # the other depth still has one run
    assert "mix configurations" not in out  # the seed was the only difference

    csv = pd.read_csv(io.StringIO(ok(runs.sweep, runs.seed, "--format", "csv")))
    lstm1 = csv[(csv["model.cell"] == "lstm") & (csv["model.num_layers"] == 1)].iloc[0]
    assert lstm1["n"] == 2 and close(lstm1["std"], statistics.stdev(both))

    [long] = md_tables(ok(runs.sweep, runs.seed, "--long"))
    lines = [dict(zip(long[0], line, strict=True)) for line in long[1:]]
    by_folder = {str(p.parent): json.loads(p.read_text()) for p in runs.seed.rglob(RECORD_FILE)}
    by_folder |= {str(p.parent): json.loads(p.read_text()) for p in runs.sweep.rglob(RECORD_FILE)}
    assert sorted(line["run_dir"] for line in lines) == sorted(by_folder)  # each run once
    for line in lines:
        record = by_folder[line["run_dir"]]
        assert int(line["seed"]) == record["seed"] and line["status"] == record["status"]
        assert close(float(line["test/ppl"]), record["metrics"]["test/ppl"])
        assert line["model.cell"] == record["config"]["model"]["cell"]
    assert sorted(int(line["seed"]) for line in lines) == [7] + [1234] * 6


def test_diverged_shows_in_its_cell_and_failed_is_counted_under_the_table(runs):
    out = ok(runs.sweep, runs.odd)
    [pivot] = md_tables(out)
    cells = {row[0]: row[1:] for row in pivot[1:]}
    # Its record holds a finite test/ppl (its best epoch, tested): "diverged" comes from status.
    [diverged] = records(runs.odd / "diverged")
    assert diverged["status"] == "diverged" and diverged["metrics"]["test/ppl"] == DIVERGED_PPL
    assert cells["rnn_relu"] == ["diverged", "-"]
    assert set(cells) == {*CELLS, "rnn_relu"}  # the failed run (an lstm) is in no cell
    lstm = [parse_cell(text) for text in cells["lstm"]]
    assert [(v[0], v[2]) for v in lstm] == [(SWEEP_PPL["lstm", 1], 1), (SWEEP_PPL["lstm", 2], 1)]
    [left_out] = [line for line in out.splitlines() if line.startswith("left out:")]
    assert "1 failed" in left_out and str(runs.odd / "failed") in left_out


def test_reference_puts_published_numbers_and_deltas_beside_matching_rows(runs):
    args = [runs.sweep, runs.ptb, "--rows", "data.name,model.cell", "--cols", "model.num_layers"]
    out = ok(*args, "--reference", "zaremba2014,bai2018")
    pivot, comparison = md_tables(out)
    assert [r[:2] for r in pivot[1:]][-1] == ["ptb_word", "lstm"]
    header = comparison[0]
    rows = [dict(zip(header, r, strict=True)) for r in comparison[1:]]
    [ptb_record] = records(runs.ptb)
    ours = ptb_record["metrics"]["test/ppl"]
    assert ours == PTB_PPL
    # Only the PTB cell has published numbers: Zaremba's small LSTM (its size matches) and Bai's
    # LSTM (matched on data + cell); Zaremba's medium and large need 650 and 1500 units.
    assert {(r["data.name"], r["model.cell"], r["model.num_layers"]) for r in rows} == {
        ("ptb_word", "lstm", "2")
    }
    published = {float(r["published"]): r for r in rows}
    assert set(published) == {114.5, 78.93}
    assert "Zaremba et al. 2014, Table 1" in published[114.5]["source"]
    assert "Bai et al. 2018, Table 1" in published[78.93]["source"]
    for value, r in published.items():
        assert close(float(r["Δ"]), ours - value)
        assert close(float(r["ours"]), ours)

    val = md_tables(ok(*args, "--reference", "zaremba2014", "--metric", "val/ppl"))[1]
    assert [float(r[4]) for r in val[1:]] == [120.7]  # the validation number of the same row
    # ours: the best epoch's val/ppl, as the record keeps it (the lower of the two epochs)
    [(shown, delta)] = [(float(r[3]), float(r[5])) for r in val[1:]]
    assert close(shown, min(PTB_VAL_PPL)) and close(delta, min(PTB_VAL_PPL) - 120.7)

    csv = pd.read_csv(
        io.StringIO(ok(*args, "--reference", "zaremba2014,bai2018", "--format", "csv"))
    )
    with_ref = csv[csv["published"].notna()]
    assert sorted(with_ref["published"]) == [78.93, 114.5]
    assert (with_ref["delta"] - (with_ref["mean"] - with_ref["published"])).abs().max() < 1e-9
    assert csv[csv["data.name"] == "reber"]["published"].isna().all()


def test_output_files_start_with_the_command_that_made_them(runs, tmp_path):
    first = {"md": "<!-- command: ", "html": "<!-- command: ", "latex": "% command: "}
    for fmt, start in first.items():
        out = tmp_path / f"table.{fmt}"
        done = rnnbench_table(runs.sweep, "--format", fmt, "-o", out)
        assert done.returncode == 0 and done.stdout == ""
        line = out.read_text().splitlines()[0]
        assert line.startswith(start) and f"rnnbench-table {runs.sweep} --format {fmt}" in line
    assert "<table" in (tmp_path / "table.html").read_text()
    # CSV stays plain for any reader; the command and the notes go to FILE.notes.txt beside it.
    done = rnnbench_table(runs.sweep, "--format", "csv", "-o", tmp_path / "table.csv")
    assert done.returncode == 0 and "table.csv.notes.txt" in done.stderr
    csv = pd.read_csv(tmp_path / "table.csv")
    assert len(csv) == 6 and csv["mean"].notna().all()
    notes = (tmp_path / "table.csv.notes.txt").read_text().splitlines()
    assert (
        notes[0] == f"command: rnnbench-table {runs.sweep} --format csv -o {tmp_path / 'table.csv'}"
    )
    assert any("lower is better" in n for n in notes)


def test_a_path_without_runs_is_one_line_and_a_failure(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        done = rnnbench_table(path)
        assert done.returncode != 0 and done.stdout == ""
        [line] = done.stderr.splitlines()
        assert line.startswith("rnnbench-table: error:") and str(path) in line


def test_truncated_and_foreign_records_are_skipped_with_a_warning(runs, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(runs.sweep, copy, ignore=shutil.ignore_patterns("checkpoints", "csv"))
    truncated = copy / "0" / RECORD_FILE
    lost = json.loads(truncated.read_text())["config"]["model"]
    truncated.write_text(truncated.read_text()[:200])
    foreign = copy / "other" / RECORD_FILE
    foreign.parent.mkdir()
    foreign.write_text(json.dumps({"schema": "someone-else/1", "accuracy": 0.9}))
    done = rnnbench_table(copy)
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.splitlines()
    assert len(warnings) == 2
    assert any(str(truncated) in w and "not complete JSON" in w for w in warnings)
    assert any(str(foreign) in w and "not an rnnbench result" in w for w in warnings)
    [pivot] = md_tables(done.stdout)
    layers = [int(h.split("=")[1]) for h in pivot[0][1:]]
    cells = {
        (row[0], n): text for row in pivot[1:] for n, text in zip(layers, row[1:], strict=True)
    }
    assert cells.pop((lost["cell"], lost["num_layers"])) == "-"
    assert len(cells) == 5 and all(parse_cell(text)[2] == 1 for text in cells.values())


def test_unknown_metric_or_key_lists_what_exists(runs):
    done = rnnbench_table(runs.sweep, "--metric", "test/acc")
    [line] = done.stderr.splitlines()
    assert done.returncode != 0 and "'test/acc'" in line and "did you mean test/" in line
    assert "test/ppl" in line and "val/loss" in line

    done = rnnbench_table(runs.sweep, "--rows", "model.cel")
    [line] = done.stderr.splitlines()
    assert done.returncode != 0 and "'model.cel'" in line and "--rows" in line
    assert "(did you mean model.cell?)" in line
    assert "model.cell" in line and "model.num_layers" in line

    done = rnnbench_table(runs.sweep, "--reference", "nobody2099")
    [line] = done.stderr.splitlines()
    assert done.returncode != 0 and "zaremba2014" in line and "bai2018" in line


def test_help_names_every_option():
    done = rnnbench_table("--help")
    assert done.returncode == 0
    for option in ("--rows", "--cols", "--metric", "--format", "--reference", "--long", "--wandb"):
        assert option in done.stdout
    assert "zaremba2014" in done.stdout and "bai2018" in done.stdout


def wandb_offline_run(run_dir: Path) -> tuple[dict, dict, str]:
    """What `wandb.Api()` gives for this run once synced (run.config, run.summary_metrics,
    run.state), read from the offline run's own file (conftest.wandb_records)."""
    [log] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    config, summary, state = {}, {}, "running"
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config |= {i.key: json.loads(i.value_json) for i in record.config.update}
        elif kind == "summary":
            for item in record.summary.update:
                *parents, leaf = list(item.nested_key) or [item.key]
                node = summary
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = json.loads(item.value_json)
        elif kind == "exit":
            state = "finished" if record.exit.exit_code == 0 else "failed"
    config.pop("_wandb", None)  # the API keeps it apart (run.rawconfig)
    return config, summary, state


def test_wandb_rows_are_the_rows_of_result_json(real_run):
    [path] = real_run.rglob(RECORD_FILE)
    record = json.loads(path.read_text())
    config, summary, state = wandb_offline_run(path.parent)
    assert state == "finished" and "trainer/global_step" in summary  # W&B's own keys are there

    from_file = table.record_row(record, path)
    from_wandb = table.wandb_row(config, summary, state)
    assert "trainer/global_step" not in from_wandb and "train/loss" not in from_wandb
    not_in_wandb = {"task", "headline", "params", "run_key", "source", "run_dir"}
    not_in_wandb |= {k for k in from_file if k.startswith("timing.")}
    for key, value in from_file.items():
        if key not in not_in_wandb:
            assert from_wandb[key] == value, key
    assert set(from_wandb) == set(from_file)
    assert from_wandb["source"] == "wandb" and from_wandb["status"] == "completed"

    pivots = [
        table.aggregate(table.frame([row]), ["data.name", "model.cell"], [], "test/ppl")
        for row in (from_file, from_wandb)
    ]
    pd.testing.assert_frame_equal(*pivots)


def test_references_ship_with_citations():
    assert {"zaremba2014", "bai2018"} <= set(table.reference_names())
    for name in ("zaremba2014", "bai2018"):
        ref = table.load_reference(name)
        assert (ref[["paper", "table", "row", "metric", "label"]] != "").all().all()
        assert ref["value"].gt(0).all()
    bai = table.load_reference("bai2018")
    assert len(bai) == 24 and set(bai["model.cell"]) == {"rnn", "gru", "lstm"}
    # A reference row for a dataset name no config has, or keyed on a key the configuration of
    # its dataset and cell does not have, would never match a run.
    datasets = {OmegaConf.load(f).get("name"): f.stem for f in (CONF_DIR / "data").glob("*.yaml")}
    for name in ("zaremba2014", "bai2018"):
        ref = table.load_reference(name)
        assert set(ref["data.name"]) <= set(datasets)
        for data, rows in ref.groupby("data.name"):  # one compose per dataset: ~0.2 s each
            config = compose([f"data={datasets[data]}", f"model={rows['model.cell'].iloc[0]}"])
            keys = set(flatten(OmegaConf.to_container(config, resolve=True)))
            used = {k for k in table.match_keys(ref) if (rows[k] != "").any()}
            assert used and used <= keys, (name, data, used - keys)


def test_bench_aggregates_copies_of_real_records(real_run, capsys):
    assert bench.main(["aggregate", "-n", "300", "--records", str(real_run)]) == 0
    line, last = capsys.readouterr().out.strip().splitlines()[-2:]
    assert line.startswith("aggregate: 300 records -> DataFrame + pivot in ")
    result = json.loads(last)["aggregate"]
    assert result["records"] == result["rows"] == 300 and result["templates"] == 1
    assert result["cells"] == 1 * 4  # the one real run's cell (lstm), depths 1-4
    assert result["ok"] is (result["seconds"] < result["goal_s"])


# ---- reading many records: the row cache, configurations, finding the files -----------------


def rewrite_in_place(path: Path, old: str, new: str, keep_mtime: bool = False) -> None:
    """`old` -> `new` (as long) in the file, written into the same inode: the same size, and
    with `keep_mtime` the same modification time as before, as a rewrite within one tick of a
    coarse filesystem clock (or a tool that keeps times) leaves it."""
    text = path.read_text()
    assert len(old) == len(new) and text.count(old) == 1
    before = path.stat()
    with open(path, "r+") as f:
        f.write(text.replace(old, new))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert not keep_mtime or after.st_mtime_ns == before.st_mtime_ns


def row_texts(rows: list[dict]) -> list[str]:
    """Rows as text that tells 1 from 1.0 and True, and keeps the key order."""
    return [repr(list(row.items())) for row in rows]


def test_row_cache_is_never_stale(runs, tmp_path, monkeypatch, capsys):
    """Past CACHE_MIN_RECORDS records, load_rows takes a record's row from the cache only while
    the file is the one that made it: a record written a moment ago shows, one rewritten in
    place (same size, its mtime put back) shows its new content, one replaced, added or removed
    too; the rows are those read without a cache, and a malformed record warns every time."""
    monkeypatch.setattr(table, "CACHE_MIN_RECORDS", 1)
    cache = tmp_path / "cache"
    monkeypatch.setenv(table.CACHE_ENV, str(cache))
    folder = tmp_path / "sweep"
    shutil.copytree(runs.sweep, folder)
    (folder / "bad").mkdir()
    (folder / "bad" / RECORD_FILE).write_text('{"schema": "rnnbench.result/1", "stat')
    reads: list[Path] = []
    read_record = table.read_record
    monkeypatch.setattr(table, "read_record", lambda p: reads.append(p) or read_record(p))

    def ppl_by_run() -> dict[str, float]:
        reads.clear()
        rows = table.load_rows([folder])
        assert capsys.readouterr().err.count("skipped") == 1  # the malformed one, each time
        return {Path(r["run_dir"]).name: r["test/ppl"] for r in rows}

    original = ppl_by_run()
    assert len(reads) == 7 and not cache.exists()  # all written a moment ago: none kept

    def text(run: str) -> str:  # the run's test/ppl as json.dumps wrote it
        return f'"test/ppl": {original[run]}'

    rewrite_in_place(folder / "0" / RECORD_FILE, text("0"), text("1"))
    assert ppl_by_run()["0"] == original["1"]  # rewritten a moment after it was read

    time.sleep(table.SETTLED_NS / 1e9)
    assert ppl_by_run() == {**original, "0": original["1"]} and len(reads) == 7
    assert len(list(cache.iterdir())) == 1  # settled: kept
    assert ppl_by_run() == {**original, "0": original["1"]}
    assert reads == [folder / "bad" / RECORD_FILE]  # the rows come from the cache

    rewrite_in_place(folder / "1" / RECORD_FILE, text("1"), text("2"), keep_mtime=True)
    replaced = json.loads((folder / "2" / RECORD_FILE).read_text())
    replaced["metrics"]["test/ppl"] = 99.0
    write_json_atomic(folder / "2" / RECORD_FILE, replaced)  # a new file in its place
    shutil.copytree(folder / "3", folder / "30")
    shutil.rmtree(folder / "4")
    expected = {**original, "0": original["1"], "1": original["2"], "2": 99.0, "30": original["3"]}
    del expected["4"]
    assert ppl_by_run() == expected
    assert sorted(p.parent.name for p in reads) == ["1", "2", "30", "bad"]

    cached = table.load_rows([folder])
    monkeypatch.setenv(table.CACHE_ENV, "")  # no cache: every record read
    assert row_texts(cached) == row_texts(table.load_rows([folder]))


def test_config_reader_gives_flatten_and_repeat_key():
    """ConfigReader flattens each distinct section once and hashes each distinct configuration
    once, and gives what flatten and repeat_key give for every config, however close two come:
    only seeds apart (top-level, a section's, deeper), 0.0 against -0.0, 1 against 1.0 and
    True, a list against its JSON text, a section holding only a seed against an empty one, a
    default left out against written out, a key holding a dot."""
    base = OmegaConf.to_container(compose(["model=lstm"]), resolve=True)

    def variant(change) -> dict:
        config = json.loads(json.dumps(base))
        change(config)
        return config

    changes = [
        lambda c: None,
        lambda c: c.update(seed=7),
        lambda c: c["data"].update(seed=8),
        lambda c: c["model"].update(seed=9),
        lambda c: c["model"].update(inner={"seed": 1, "x": 2}),
        lambda c: c["model"].update(inner={"seed": 2, "x": 2}),
        lambda c: c["model"].update(dropout=-0.0),
        lambda c: c["model"].update(num_layers=1.0),
        lambda c: c["model"].update(num_layers=True),
        lambda c: c["model"].update(extra=[1, 2]),
        lambda c: c["model"].update(extra="[1, 2]"),
        lambda c: c.update(only={"seed": 3}),
        lambda c: c.update(only={"seed": 4}),
        lambda c: c.update(only={}),
        lambda c: c.update(listed=[]),
        lambda c: c.update(flush_denormal=True),
        lambda c: c.update(flush_denormal=False),
        lambda c: c.update(threads=1.0),
        lambda c: c.update({"data.seed": 5}),
        lambda c: c.update({"model": {"cell": "gru"}, "model.cell": "lstm"}),
        lambda c: c["data"].pop("seed"),
    ]
    configs = [variant(change) for change in changes]
    reader = table.ConfigReader()
    for config in configs + configs[::-1]:
        flat, config_id = reader(config)
        assert row_texts([flat]) == row_texts([flatten(config)])
        assert config_id == repeat_key(config)
    assert len(reader.ids) < len(configs)  # seeds apart: hashed once


def test_record_files_are_what_rglob_finds(tmp_path):
    """record_files walks with os.scandir and finds what Path.rglob does, in natural order: in
    hidden folders, not through links to folders, a link only to something that exists, a
    folder or a pipe named result.json too (load_rows then refuses it by name)."""
    for folder in ("a/1", "a/2", "a/10", "a/2/.hydra", "b", "c", "d/result.json/x"):
        (tmp_path / folder).mkdir(parents=True)
    for folder in ("a/1", "a/10", "a/2/.hydra", "d/result.json/x", "."):
        (tmp_path / folder / RECORD_FILE).write_text("{}")
    os.symlink(tmp_path / "a", tmp_path / "b" / "to-a")
    os.symlink(tmp_path / "nowhere", tmp_path / "c" / RECORD_FILE)
    os.symlink(tmp_path / "a" / "1" / RECORD_FILE, tmp_path / "b" / RECORD_FILE)
    os.mkfifo(tmp_path / "a" / "2" / RECORD_FILE)
    found = record_files(tmp_path)
    assert found == sorted(tmp_path.rglob(RECORD_FILE), key=natural_key)
    assert [str(p.relative_to(tmp_path)) for p in found] == [
        f"{folder}/{RECORD_FILE}"
        for folder in ("a/1", "a/2/.hydra", "a/2", "a/10", "b", "d", "d/result.json/x")
    ] + [RECORD_FILE]
    warned: list[str] = []
    table.load_rows([tmp_path / "a" / "2"], warn=warned.append)
    assert any("not a regular file" in w for w in warned)
