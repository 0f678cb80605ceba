"""`rnnbench-table` on a runs/ folder as users accumulate it (tests/fixture_runs.py
`write_mixed_runs`: four datasets of three task kinds, a sweep and single runs, a full and a
5-batch run of one recipe, a DDP run, a diverged, a failed and reused runs). The real console
script, in a subprocess."""

from __future__ import annotations

import io
import re

import pandas as pd
import pytest
from fixture_runs import MixedRuns, write_run
from test_table import md_tables, ok, parse_cell, rnnbench_table


@pytest.fixture
def mixed(mixed_runs) -> MixedRuns:
    return mixed_runs


def sections(text: str) -> dict[str, list]:
    """### NAME — METRIC headings -> the markdown tables under each."""
    parts = re.split(r"^### (.+)$", text, flags=re.M)
    return {parts[i].strip(): md_tables(parts[i + 1]) for i in range(1, len(parts), 2)}


def test_each_dataset_is_its_own_table_with_its_headline_and_direction(mixed):
    out = ok(mixed.root)
    found = sections(out)
    assert set(found) == {
        "ptb_word — test/ppl",
        "sst2 — test/acc",
        "adding — test/mse",
        "reber — test/ppl",
    }
    [sst2] = found["sst2 — test/acc"]
    # Uni- and bidirectional are two configurations: two columns, never one mean (0.812).
    assert sst2[0] == ["model.cell", "model.bidirectional=False", "model.bidirectional=True"]
    assert sst2[1] == ["gru", "0.8010", "0.8230"]
    assert "test/acc: mean ± sample std over seeds, n = runs when more than one; higher is" in out
    [adding] = found["adding — test/mse"]
    assert dict((row[0], row[1]) for row in adding[1:]) == {"rnn": "diverged", "lstm": "0.004200"}
    [reber] = found["reber — test/ppl"]
    cells = {row[0]: parse_cell(row[1]) for row in reber[1:]}
    # The relaunched sweep's reused copies are not counted again: n = 2 seeds per cell.
    assert cells["lstm"][:3] == (1.535, 0.007, 2) and cells["rnn"][2] == 2
    assert "1 failed" in out and str(mixed.failed) in out


def test_values_keep_their_types_and_reduced_budgets_are_marked(mixed):
    out = ok(mixed.root, "--reference", "zaremba2014,bai2018")
    pivot, comparison = sections(out)["ptb_word — test/ppl"]
    header = " ".join(pivot[0])
    assert "trainer.limit_train_batches=5," in header  # an int stays an int, not 5.0
    assert "trainer.limit_train_batches=1.0" in header  # and the float 1.0 ("all") stays 1.0
    assert pivot[1][1:] == ["117.3", "6852 †"]
    assert "† reduced budget, not a full run of its configuration:" in out
    assert "trainer.max_epochs=1 (recipe: 13)" in out
    rows = [dict(zip(comparison[0], r, strict=True)) for r in comparison[1:]]
    budgets = {(r["ours"], r["published"]): r["budget"] for r in rows}
    assert budgets[("117.3", "114.5")] == "full"
    assert budgets[("6852", "114.5")].startswith("reduced: trainer.limit_test_batches=5;")
    assert len(rows) == 4  # both runs against Zaremba's small LSTM and Bai's LSTM


def test_a_cell_never_pools_two_configurations(tmp_path):
    for strings, value in ((200, 1.61), (400, 1.55)):
        write_run(
            tmp_path / f"reber-{strings}",
            [f"data.train_strings={strings}", "logger=none", "trainer.max_epochs=1"],
            test=value,
        )
    # Asked for one column per cell only: the differing key becomes a row key, said under it.
    out = ok(tmp_path, "--rows", "model.cell", "--cols", "")
    [pivot] = md_tables(out)
    assert pivot[0][:2] == ["model.cell", "data.train_strings"]
    assert sorted((row[1], row[2]) for row in pivot[1:]) == [("200", "1.610"), ("400", "**1.550**")]
    assert "rows also split by data.train_strings" in out
    # By default the differing data key is a column: the dataset's own settings are axes too.
    [default] = md_tables(ok(tmp_path))
    assert default[0][1:] == ["data.train_strings=200", "data.train_strings=400"]


def test_long_csv_reads_with_plain_pandas(mixed, tmp_path):
    out = tmp_path / "runs.csv"
    done = rnnbench_table(mixed.root, "--long", "--format", "csv", "-o", out)
    assert done.returncode == 0, done.stderr
    runs = pd.read_csv(out)  # no options: no comment lines in the CSV
    assert runs["run_dir"].notna().all() and runs["status"].notna().all()
    # 11 runs: the reused copies are dropped when their originals are read too
    assert len(runs) == 11 and set(runs["status"]) == {"completed", "diverged", "failed"}
    assert set(runs["data.name"]) == {"ptb_word", "sst2", "adding", "reber"}
    notes = (tmp_path / "runs.csv.notes.txt").read_text()
    assert notes.startswith("command: rnnbench-table ") and "reber: 5 run(s)" in notes
    # On stdout the CSV is as plain, the notes on stderr.
    done = rnnbench_table(mixed.root, "--format", "csv")
    cells = pd.read_csv(io.StringIO(done.stdout))
    assert {"data.name", "mean", "n", "cuts"} <= set(cells.columns)
    assert "rnnbench-table: note: reber:" in done.stderr


def test_a_metric_of_some_datasets_leaves_the_others_out_with_a_note(mixed):
    done = rnnbench_table(mixed.root, "--metric", "test/acc")
    assert done.returncode == 0, done.stderr
    assert list(sections(done.stdout)) == [] and "0.8230" in done.stdout  # one section: no heading
    assert "left out ptb_word: no test/acc" in done.stderr
