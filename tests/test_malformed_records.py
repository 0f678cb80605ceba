"""One malformed record cannot block a configuration: a result.json that is valid JSON of the
wrong shape, beside a last.ckpt, is skipped with one warning by every finder (reuse, resume,
tables, report, reproduce), never a traceback. Fixture records for the finders (pure logic),
one real launch for "every launch of that config fails"."""

from __future__ import annotations

import json
import shutil

import pytest
from fixture_runs import write_run

from conftest import TINY_REBER, rnnbench_cli
from rnnbench.results import record as rec
from rnnbench.results.reproduce.recipes import compose_recipes
from rnnbench.results.reproduce.rows import collect
from rnnbench.results.table import load_rows

WRONG_SHAPES = {
    "a list": [1, 2],
    "a string": "done",
    "a number": 3,
    "metrics as strings": "metrics",
    "no status": "status",
    "an unknown status": "weird",
    "config a list": "config",
}


def malformed(good: dict, shape: str):
    value = WRONG_SHAPES[shape]
    if not isinstance(value, str) or shape in ("a string",):
        return value
    bad = json.loads(json.dumps(good))
    if value == "metrics":
        bad["metrics"] = {k: str(v) for k, v in bad["metrics"].items()}
    elif value == "status":
        del bad["status"]
    elif value == "weird":
        bad["status"] = "kind of done"
    elif value == "config":
        bad["config"] = [1]
    return bad


@pytest.fixture
def folder(tmp_path):
    """runs/good: a completed record; runs/bad: the same run_key, its record replaced later,
    with a run_key file and a last.ckpt beside it."""
    good = write_run(tmp_path / "runs" / "good", TINY_REBER, test=1.6)
    bad_dir = tmp_path / "runs" / "bad"
    shutil.copytree(tmp_path / "runs" / "good", bad_dir)
    (bad_dir / "checkpoints").mkdir()
    (bad_dir / "checkpoints" / "last.ckpt").write_bytes(b"not read by a finder")
    return tmp_path / "runs", good, bad_dir


@pytest.mark.parametrize("shape", WRONG_SHAPES)
def test_every_finder_skips_a_wrong_shape_with_one_warning(folder, shape, capsys):
    root, good, bad_dir = folder
    (bad_dir / "result.json").write_text(json.dumps(malformed(good, shape)))
    rec._warned.clear()
    key = good["run_key"]
    assert rec.find_completed(root, key) == root / "good"
    assert rec.find_resumable(root, key) == []  # not taken for an unfinished run
    assert rec.find_completed(root, key) == root / "good"  # a second finder: no second warning
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "warning" in x]
    assert len(lines) == 1 and str(bad_dir / "result.json") in lines[0], err
    assert "Traceback" not in err

    warned: list[str] = []
    rows = load_rows([root], warn=warned.append)
    assert len(rows) == 1 and len(warned) == 1 and str(bad_dir) in warned[0], warned


def test_reproduce_skips_a_wrong_shape(tmp_path, capsys):
    """reproduce reads every record under its folders: a list among them is skipped."""
    root = tmp_path / "records"
    root.mkdir()
    (root / "x").mkdir()
    (root / "x" / "result.json").write_text("[1, 2]")
    recipes = compose_recipes(["tcn/jsb_lstm"])
    rows = collect(recipes, [root], {})
    assert rows and all(not r.runs for r in rows)
    assert "skipped" in capsys.readouterr().err


def test_a_launch_beside_a_malformed_record_runs(tmp_path):
    """[1,2] as the record of an unfinished run of the same configuration (its run_key file
    and last.ckpt beside it): the launch warns once and trains, today's AttributeError gone."""
    first = rnnbench_cli([*TINY_REBER, "hydra.run.dir=runs/a", "checkpoints.keep=both"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (tmp_path / "runs" / "a" / "result.json").write_text("[1, 2]")
    again = rnnbench_cli([*TINY_REBER, "hydra.run.dir=runs/b"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    warnings = [x for x in again.stderr.splitlines() if "warning: skipped" in x]
    assert len(warnings) == 1 and "runs/a/result.json" in warnings[0], again.stderr
    b = json.loads((tmp_path / "runs" / "b" / "result.json").read_text())
    assert b["status"] == "completed" and "resumed_from" not in b
