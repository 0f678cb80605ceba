"""Hyperparameter search from the command line (`rnnbench -m hparams_search=NAME`): one study
per command-line sweep value, each over the same space and `n_trials`, persistent and resumed
by a relaunch that trains nothing twice and proposes what an uninterrupted search would have;
bad input is one line. Real processes, real Optuna studies in SQLite."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import popen, records, rnnbench_cli, wait_for
from rnnbench.errors import ConfigError
from rnnbench.results.report import main as report_main
from rnnbench.results.studies import expected_max, view_study
from rnnbench.results.table import main as table_main
from rnnbench.run import claims
from rnnbench.run.search import dimension, objective_metric, trial_seed

TINY = [
    "data.train_strings=100",
    "data.valid_strings=20",
    "data.test_strings=20",
    "model.hidden_size=8",
    "model.num_layers=1",
    "trainer.max_epochs=1",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "threads=1",
]
SEARCH = ["-m", "hparams_search=reber", "model=rnn,lstm", *TINY, "hydra.sweeper.confirm_seeds=0"]


def trials(db: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{db}").get_trials()


def params_of(found: list[optuna.trial.FrozenTrial]) -> dict[int, dict]:
    return {t.number: t.params for t in found}


def test_a_search_gives_each_cell_the_same_budget_and_a_relaunch_goes_on(tmp_path):
    first = rnnbench_cli([*SEARCH, "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    db = tmp_path / "runs" / "searches" / "reber" / "optuna.db"
    for cell in ("rnn", "lstm"):
        assert f"study reber-model-{cell}: 3 trials (3 complete)" in first.stdout
        done = trials(db, f"reber-model-{cell}")
        assert len(done) == 3 and all(t.value is not None for t in done)
        for t in done:  # each trial's value is its record's validation perplexity
            record = json.loads((Path(t.user_attrs["run_dir"]) / "result.json").read_text())
            assert record["metrics"]["val/ppl"] == pytest.approx(t.value)
            assert record["config"]["model"]["cell"] == cell
            assert record["config"]["optim"]["lr"] == pytest.approx(t.params["optim.lr"])
    assert "sweep: 6 jobs: 6 completed" in first.stdout
    with sqlite3.connect(db) as con:  # the studies, where optuna-dashboard reads them
        names = sorted(r[0] for r in con.execute("select study_name from studies"))
    assert names == ["reber-model-lstm", "reber-model-rnn"]

    again = rnnbench_cli([*SEARCH, "hydra.sweeper.n_trials=4"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep: 8 jobs: 2 completed, 6 reused" in again.stdout, again.stdout[-2000:]
    trained = [r for r in records(tmp_path / "runs") if not r.get("reused_from")]
    assert len(trained) == 8  # nothing trained twice

    # The relaunch proposed what one uninterrupted search of 4 trials proposes.
    whole = tmp_path / "whole"
    whole.mkdir()
    once = rnnbench_cli([*SEARCH, "hydra.sweeper.n_trials=4"], cwd=whole)
    assert once.returncode == 0, once.stderr[-3000:]
    other = whole / "runs" / "searches" / "reber" / "optuna.db"
    for cell in ("rnn", "lstm"):
        name = f"reber-model-{cell}"
        assert params_of(trials(db, name)) == params_of(trials(other, name))


def test_a_killed_search_relaunched_trains_no_finished_trial_again(tmp_path):
    """Relaunched on another machine, too: the search's folder is copied without its claims
    (they stay with the machine that held them) and its running trial's owner is another host."""
    args = [*SEARCH[:2], "model=lstm", *TINY, "trainer.max_epochs=30"]
    args += ["hydra.sweeper.n_trials=3", "data.train_strings=400"]
    killed = tmp_path / "killed"
    killed.mkdir()
    proc = popen(args, cwd=killed)
    search = killed / "runs" / "searches" / "reber"
    wait_for(lambda: len(list(search.rglob("result.json"))) >= 1, proc, timeout=300)
    wait_for(lambda: len(list(search.rglob("metrics.csv"))) >= 2, proc, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    shutil.copytree(killed, tmp_path / "moved", ignore=shutil.ignore_patterns(".claims"))
    shutil.rmtree(killed)  # the machine it ran on is gone
    search = tmp_path / "moved" / "runs" / "searches" / "reber"
    study = optuna.load_study(study_name="reber", storage=f"sqlite:///{search / 'optuna.db'}")
    [running] = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    study._storage.set_trial_user_attr(running._trial_id, "owner", "node17:4242")
    finished = {p.parent for p in search.rglob("result.json")}
    stamps = {p: p.stat().st_mtime_ns for p in search.rglob("result.json")}
    time.sleep(0.1)
    again = rnnbench_cli(args, cwd=tmp_path / "moved")
    assert again.returncode == 0, again.stderr[-3000:]
    for path, stamp in stamps.items():  # a finished trial's record is not rewritten
        assert path.stat().st_mtime_ns == stamp, path
    found = trials(search / "optuna.db", "reber")  # model=lstm, no sweep: one study
    states = [t.state.name for t in found]
    # The killed trial was given up and run again from its checkpoint, with the same values.
    requeued = [t for t in found if t.user_attrs.get("requeued")]
    assert len(requeued) == 1 and states.count("COMPLETE") == 3, states
    retry = next(t for t in found if t.user_attrs.get("retry_of") == requeued[0].number)
    assert retry.params == requeued[0].params
    # In the killed trial's own folder, from the checkpoint it left there: no folder of the
    # search is left half done.
    assert Path(retry.user_attrs["run_dir"]) == search / str(requeued[0].number)
    assert search / str(requeued[0].number) not in finished
    record = json.loads((Path(retry.user_attrs["run_dir"]) / "result.json").read_text())
    assert record["status"] == "completed" and record["resume"]["exact"], record.get("resume")
    assert {r["status"] for r in records(search)} == {"completed"}


def dashboard_studies(storage: Path) -> list[str]:
    """The study names `optuna-dashboard STORAGE` serves (its JSON API, no browser)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = Path(sys.executable).parent / "optuna-dashboard"
    server = subprocess.Popen(
        [str(script), f"sqlite:///{storage}", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as reply:
                    return sorted(s["study_name"] for s in json.load(reply)["study_summaries"])
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_pruned_search_records_pruned_trials_and_prunes_a_bad_one(tmp_path, capsys):
    args = [*SEARCH, "trainer.max_epochs=3", "hydra.sweeper.pruner=median"]
    args += ["hydra.sweeper.pruner_startup_trials=2", "hydra.sweeper.confirm_seeds=3"]
    args += ["hydra.sweeper.n_trials=6"]
    first = rnnbench_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    search = tmp_path / "runs" / "searches" / "reber"
    db = search / "optuna.db"
    for cell in ("rnn", "lstm"):
        found = trials(db, f"reber-model-{cell}")
        assert len(found) == 6
        for t in found:  # each trial's state is its record's status
            record = json.loads((Path(t.user_attrs["run_dir"]) / "result.json").read_text())
            want = {"COMPLETE": "completed", "PRUNED": "pruned"}[t.state.name]
            assert record["status"] == want
            # every epoch's validation value was reported to the trial
            epochs = record["pruned"]["epoch"] if want == "pruned" else 3
            assert sorted(t.intermediate_values) == list(range(1, epochs + 1))
            if want == "pruned":
                assert epochs < 3 and "test/ppl" not in record["metrics"]
    assert "pruned" in first.stdout.splitlines()[-1], first.stdout[-500:]
    # The best trial's config, run again with the 3 seeds after the search's own (1234).
    for cell in ("rnn", "lstm"):
        study = optuna.load_study(study_name=f"reber-model-{cell}", storage=f"sqlite:///{db}")
        confirmed = study.user_attrs["confirmed"]
        assert confirmed["trial"] == study.best_trial.number
        runs = [json.loads((Path(d) / "result.json").read_text()) for d in confirmed["run_dirs"]]
        assert sorted(r["seed"] for r in runs) == [1235, 1236, 1237]
        best = json.loads(
            (Path(study.best_trial.user_attrs["run_dir"]) / "result.json").read_text()
        )
        for r in runs:
            assert r["status"] == "completed"
            for group in ("optim", "model", "trainer", "scheduler"):
                assert r["config"][group] == best["config"][group]
        # Trained at once as one pack (its members share the first seed's batches, as every
        # pack's do): one job, not three.
        pack = search / f"reber-model-{cell}" / "confirm-1235-1237"
        assert json.loads((pack / "pack.json").read_text())["status"] == "ended"
        assert {r["config"]["data"]["seed"] for r in runs} == {1235}
        assert sorted(Path(r["run_dir"]).parent for r in runs) == [pack] * 3
        tests = [r["metrics"]["test/ppl"] for r in runs]
        mean = sum(tests) / 3
        line = f"study reber-model-{cell}: trial {confirmed['trial']} confirmed with seeds"
        assert f"{line} 1235,1236,1237: test {mean:.6g}" in first.stdout

    # A deliberately bad trial (the smallest lr, the most dropout) is pruned after epoch 1.
    study = optuna.load_study(study_name="reber-model-lstm", storage=f"sqlite:///{db}")
    bad = {"optim.lr": 1e-4, "trainer.gradient_clip_val": 0.25, "model.dropout": 0.5}
    study.enqueue_trial(bad)
    confirming = {p: p.stat().st_mtime_ns for p in search.glob("*/confirm-*/*/result.json")}
    assert len(confirming) == 6
    # model=choice(lstm): the lstm study alone, by its name from the first launch
    lstm_only = [a.replace("model=rnn,lstm", "model=choice(lstm)") for a in args[:-1]]
    again = rnnbench_cli([*lstm_only, "hydra.sweeper.n_trials=7"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    # Its summary is the lstm study's: its 7 trials (the new one pruned) and its confirming
    # pack's 3 members, not the rnn study's records beside them in the search's folder.
    pruned = sum(t.state.name == "PRUNED" for t in trials(db, "reber-model-lstm"))
    said = f"sweep: 10 jobs: {10 - pruned} reused, {pruned} pruned"
    assert again.stdout.splitlines()[-1] == said, again.stdout[-300:]
    for path, stamp in confirming.items():  # best unchanged: its confirming runs reused
        assert path.stat().st_mtime_ns == stamp, path
    assert len(trials(db, "reber-model-rnn")) == 6
    last = trials(db, "reber-model-lstm")[-1]
    assert last.params == bad and last.state.name == "PRUNED", (last.params, last.state)
    run_dir = Path(last.user_attrs["run_dir"])
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "pruned" and record["pruned"]["epoch"] == 1

    # The studies' view: per cell its trials, pruned, best, confirmed test and curve; a plot
    # that could not be written is said before anything is read.
    for plot, says in [
        ("curve.txt", "--plot {} is not allowed: give a file ending in .png, .pdf, .svg"),
        ("none/curve.png", "cannot write {}: folder"),
    ]:
        assert table_main(["--studies", str(search), "--plot", str(tmp_path / plot)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says.format(tmp_path / plot) in err[0], err
    assert table_main(["--studies", str(search), "--plot", str(tmp_path / "curve.png")]) == 0
    shown = capsys.readouterr().out
    completed, spent_steps = {}, {}
    for cell, n in (("rnn", 6), ("lstm", 7)):
        study = optuna.load_study(study_name=f"reber-model-{cell}", storage=f"sqlite:///{db}")
        done = study.get_trials(deepcopy=False)
        pruned = sum(t.state.name == "PRUNED" for t in done)
        row = next(line for line in shown.splitlines() if f"| reber-model-{cell} |" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:6] == [cell, str(n), str(pruned), "0", "0"], row  # none failed, running
        assert cells[6] == f"{study.best_value:.4g}"
        assert cells[7].endswith("(3 seeds)")
        # Its cost in steps: every run it trained, trials and confirmations, a reused one not.
        spent = {t.user_attrs["run_dir"] for t in done} | set(
            study.user_attrs["confirmed"]["run_dirs"]
        )
        spent = [json.loads((Path(d) / "result.json").read_text()) for d in spent]
        steps = sum(r["timing"]["steps"] for r in spent if not r.get("reused_from"))
        assert steps > 0 and cells[9] == f"{steps:,}", (row, steps)
        completed[cell] = [t.value for t in done if t.state.name == "COMPLETE"]
        spent_steps[cell] = steps
    # The same summary as CSV holds numbers, not the text shown: pandas reads them as such.
    assert table_main(["--studies", str(search), "--format", "csv"]) == 0
    data = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("cell")
    assert data.loc["lstm", "trials"] == 7 and data.loc["rnn", "train steps"] == spent_steps["rnn"]
    assert data["confirmed seeds"].tolist() == [3, 3]
    for cell in ("rnn", "lstm"):
        study = optuna.load_study(study_name=f"reber-model-{cell}", storage=f"sqlite:///{db}")
        assert data.loc[cell, "best val/ppl"] == pytest.approx(study.best_value, rel=1e-12)
    # The curve: one row per number of trials; one trial's expected best is their mean.
    curve = shown.split("| trials | reber-model-rnn | reber-model-lstm |")[1].splitlines()[2:]
    curve = [line for line in curve if line.startswith("| ")]
    assert len(curve) == max(len(v) for v in completed.values())
    first = [c.strip() for c in curve[0].strip("|").split("|")]
    for cell, text in zip(("rnn", "lstm"), first[1:], strict=True):
        mean = sum(completed[cell]) / len(completed[cell])
        assert float(text.split(" ± ")[0]) == pytest.approx(mean, rel=1e-3)
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    # The report's page of the studies: the same table, the curves drawn in.
    page_file = tmp_path / "studies.html"
    assert report_main(["--studies", str(search), "-o", str(page_file)]) == 0
    page = page_file.read_text()
    assert page.count("<table") == 2 and 'src="data:image/png;base64,' in page
    for cell in ("rnn", "lstm"):
        assert f"reber-model-{cell}" in page
    assert page.count("(3 seeds)") == 2  # each study's confirmed test figure

    # optuna-dashboard opens the search's study file as the README says.
    assert dashboard_studies(db) == ["reber-model-lstm", "reber-model-rnn"]

    # A finished trial's record deleted: its cost is unknown, and the view says so in one line
    # rather than show a smaller cost as if it were whole.
    study = optuna.load_study(study_name="reber-model-rnn", storage=f"sqlite:///{db}")
    gone = Path(study.best_trial.user_attrs["run_dir"]) / "result.json"
    lost = json.loads(gone.read_text())["timing"]["steps"]
    gone.unlink()
    assert table_main(["--studies", str(search), "--format", "csv"]) == 0
    shown = capsys.readouterr()
    data = pd.read_csv(io.StringIO(shown.out)).set_index("cell")
    assert data.loc["rnn", "train steps"] == spent_steps["rnn"] - lost
    warned = [line for line in shown.err.splitlines() if "warning" in line]
    assert warned == [
        f"rnnbench: warning: study reber-model-rnn: 1 finished run(s) have no record (first: "
        f"{gone}): their training time and steps are not counted"
    ]

    # A pruned run is never reused as a finished one: run alone, it goes on to its budget.
    alone = rnnbench_cli([*record["overrides"], "hydra.run.dir=alone"], cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    done = json.loads((tmp_path / "alone" / "result.json").read_text())
    assert done["status"] == "completed" and not done.get("reused_from")
    assert done["resumed_from"] == str(run_dir)


BAD = {
    "unknown pruner": (["hydra.sweeper.pruner=mean"], "hydra.sweeper.pruner=mean is not allowed"),
    "unknown search space": (["hparams_search=nope"], "hparams_search"),
    "no trials": (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 is not allowed"),
    "inverted range": (
        ['hydra.sweeper.params={model.dropout:"interval(0.5,0.1)"}'],
        "model.dropout=interval(0.5, 0.1) is empty or inverted",
    ),
    "a key not in the config": (
        ["hparams_search=typo", "hydra.searchpath=[file://{conf}]"],
        "hydra.sweeper.params.optim.lrr: the configuration has no key optim.lrr",
    ),
    "a storage that cannot be opened": (
        ["hydra.sweeper.storage=nosuchdb://x"],
        "hydra.sweeper.storage=nosuchdb://x cannot be opened",
    ),
    "an in-memory storage, which the trials' jobs cannot share": (
        ["hydra.sweeper.storage=sqlite://"],
        "hydra.sweeper.storage=sqlite:// is not allowed",
    ),
    # Each value of the space is held to its key's checks before any trial, as a plain
    # sweep's are: the high end of an interval, every value of a range.
    "an interval running past what its key allows": (
        ['hydra.sweeper.params={model.dropout:"interval(0.4,1.6)"}'],
        "hydra.sweeper.params: model.dropout=1.6 is not allowed: use a number >= 0 and < 1",
    ),
    "a range of fractions for an integer key": (
        ["hparams_search=halves", "hydra.searchpath=[file://{conf}]"],
        "hydra.sweeper.params: model.num_layers=0.5 is not allowed: use an integer",
    ),
    "an empty range": (
        ['hydra.sweeper.params={model.dropout:"range(8,8)"}'],
        "model.dropout=range(8,8) holds no value",
    ),
    "a number of trials that is no whole number": (
        ["hydra.sweeper.n_trials=1.5"],
        "hydra.sweeper.n_trials=1.5: Value '1.5' of type 'float' could not be converted to Integer",
    ),
    "a study file that is no study": (
        ["hydra.sweeper.storage=sqlite:///{conf}/notes.db"],
        "file is not a database): {conf}/notes.db is not an Optuna study; move it aside",
    ),
    "a sampler seed out of range": (["hydra.sweeper.seed=-1"], "hydra.sweeper.seed=-1"),
    "a negative number of confirming seeds, said before any trial trains": (
        ["hydra.sweeper.confirm_seeds=-1"],
        "hydra.sweeper.confirm_seeds=-1 is not allowed",
    ),
    "a search without -m": (["-m"], "hparams_search=reber is a search, which runs as a multirun"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_search_input_is_one_line(tmp_path, case):
    extra, says = BAD[case]
    # A user's own search space, beside the package's (hydra.searchpath), with a typo in it.
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "typo.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: optuna\n"
        "hydra:\n  sweeper:\n    params:\n      optim.lrr: interval(0.1, 0.2)\n"
    )
    (conf / "halves.yaml").write_text(
        (conf / "typo.yaml").read_text().replace("optim.lrr: interval(0.1, 0.2)",
                                                 "model.num_layers: range(0.5, 2.5)")
    )  # fmt: skip
    notes = conf.parent / "notes.db"  # a file of the user's, not a study
    notes.write_text("lr 1e-3 looked best\n")
    extra = [e.replace("{conf}", str(conf.parent)) for e in extra]
    says = says.replace("{conf}", str(conf.parent))
    base = [a for a in SEARCH if not a.startswith("hparams_search=")]
    if case != "unknown search space":
        base.insert(1, "hparams_search=reber")
    if extra == ["-m"]:  # the case is the -m left out
        base, extra = base[1:], []
    result = rnnbench_cli([*base, "hydra.sweeper.n_trials=1", *extra], cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [x for x in result.stderr.splitlines() if "error" in x.lower()]
    assert len(errors) == 1 and says in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not records(tmp_path / "runs") if (tmp_path / "runs").exists() else True
    assert notes.read_text() == "lr 1e-3 looked best\n"


def test_a_relaunch_goes_on_only_with_the_study_it_began_and_a_refused_trial_fails_it(tmp_path):
    """A study's trials must be comparable: a relaunch with other fixed overrides or another
    space is refused in one line, leaving the search as it was. A trial refused before it
    trains (its folder holds another run) writes no record, yet fails the search: its summary
    and exit status say so."""
    args = [*SEARCH[:2], *TINY, "hydra.sweeper.confirm_seeds=0"]
    first = rnnbench_cli([*args, "hydra.sweeper.n_trials=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    search = tmp_path / "runs" / "searches" / "reber"
    kept = {p: p.read_bytes() for p in (search / "multirun.yaml", search / "optuna.db")}
    for other, says in [
        (
            ["model=gru"],
            "study reber in sqlite:///{} was made for another configuration (it was made with "
            "nothing more, this launch gives model=gru)",
        ),
        (
            ['hydra.sweeper.params={model.dropout:"interval(0.0,0.3)"}'],
            "study reber in sqlite:///{} was made over another search space (model.dropout",
        ),
    ]:
        refused = rnnbench_cli([*args, "hydra.sweeper.n_trials=2", *other], cwd=tmp_path)
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert refused.stderr.strip().splitlines() == [
            "rnnbench: error: " + refused.stderr.split("rnnbench: error: ", 1)[1].strip()
        ]
        assert says.format(search / "optuna.db") in refused.stderr, refused.stderr[-2000:]
        assert {p: p.read_bytes() for p in kept} == kept
    assert len(trials(search / "optuna.db", "reber")) == 1

    shutil.copytree(search / "0", search / "1")  # trial 1's folder holds trial 0's run
    failing = rnnbench_cli([*args, "hydra.sweeper.n_trials=2"], cwd=tmp_path)
    assert failing.returncode == 1, failing.stderr[-3000:]
    assert "study reber: 2 trials (1 complete, 1 fail)" in failing.stdout
    assert "1 failed" in failing.stdout.splitlines()[-1], failing.stdout[-2000:]
    # Named by its trial, which keeps its number from launch to launch (the job's restarts at 0).
    failed = [x for x in failing.stderr.splitlines() if x.startswith("rnnbench: trial 1 of study")]
    assert len(failed) == 1 and failed[0].startswith("rnnbench: trial 1 of study reber (job 0) ")
    assert "holds another configuration's run" in failed[0]


def test_a_journal_with_a_torn_last_line_is_refused_untouched_and_goes_on_without_it(tmp_path):
    """A worker stopped mid-write leaves the journal's last line torn. Optuna would append
    after it and never read the study again: the relaunch is refused in one line and writes
    nothing; without that line, the study goes on."""
    args = [
        *SEARCH[:2],
        *TINY,
        "hydra.sweeper.confirm_seeds=0",
        "hydra.sweeper.storage=journal:j.log",
    ]
    first = rnnbench_cli([*args, "hydra.sweeper.n_trials=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    journal = tmp_path / "j.log"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]) + lines[-1][:-20])
    torn = journal.read_bytes()
    refused = rnnbench_cli([*args, "hydra.sweeper.n_trials=2"], cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines() == [
        f"rnnbench: error: hydra.sweeper.storage=journal:{journal} ends in a torn line (a worker "
        "stopped while writing it?): nothing was written; remove its last line to go on from the "
        "entries before it"
    ]
    assert journal.read_bytes() == torn
    journal.write_bytes(b"".join(lines[:-1]))
    again = rnnbench_cli([*args, "hydra.sweeper.n_trials=2"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "study reber: 2 trials (2 complete)" in again.stdout


def test_a_null_choice_is_searched_and_confirmed_as_null(tmp_path):
    """`trainer.gradient_clip_val: null,0.25` searches clipping off against on: null reaches
    the trial (and the confirmation) as None, not as the string 'None'."""
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "clip.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: optuna\n"
        "hydra:\n  sweep:\n    dir: ${results_root}/searches/clip\n  sweeper:\n"
        "    sampler: grid\n    params:\n      trainer.gradient_clip_val: null,0.25\n"
    )
    args = ["-m", "hparams_search=clip", f"hydra.searchpath=[file://{conf.parent}]", *TINY]
    result = rnnbench_cli([*args, "hydra.sweeper.n_trials=2", "hydra.sweeper.confirm_seeds=1"],
                          cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "study search: 2 trials (2 complete)" in result.stdout, result.stdout[-2000:]
    clips = sorted(
        str(r["config"]["trainer"]["gradient_clip_val"])
        for r in records(tmp_path / "runs" / "searches" / "clip")
    )
    assert clips in (["0.25", "0.25", "None"], ["0.25", "None", "None"]), clips
    assert "1 of 1 completed" in result.stdout
    # A grid runs each point once: more trials than points is said, not run twice.
    more = rnnbench_cli([*args, "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    assert more.returncode == 2, more.stderr[-2000:]
    assert more.stderr.strip().splitlines() == [
        "rnnbench: error: hydra.sweeper.n_trials=3 is more than the grid's 2 points "
        "(sampler=grid runs each once): give n_trials <= 2"
    ]


def test_the_search_space_syntax_maps_to_optuna():
    parse = OverridesParser.create().parse_overrides
    [lr, layers, cell, drop] = parse(
        [
            "optim.lr=tag(log, interval(1e-4, 1e-1))",
            "model.num_layers=range(1, 4)",
            "model.cell=choice(rnn, gru)",
            "model.dropout=interval(0.0, 0.5)",
        ]
    )
    d = optuna.distributions
    assert dimension(lr).distribution == d.FloatDistribution(1e-4, 1e-1, log=True)
    assert dimension(layers).distribution == d.IntDistribution(1, 3)  # range's end excluded
    assert dimension(cell).distribution == d.CategoricalDistribution(["rnn", "gru"])
    assert dimension(drop).distribution == d.FloatDistribution(0.0, 0.5)
    with pytest.raises(ConfigError, match="empty"):
        dimension(parse(["model.num_layers=range(3, 3)"])[0])
    # Hydra's own values: a range stepping down, a range of fractions.
    [down, halves] = parse(["model.hidden_size=range(16, 4, -4)", "x=range(0.5, 2.5)"])
    assert dimension(down).distribution == d.IntDistribution(8, 16, step=4)
    assert dimension(halves).distribution == d.CategoricalDistribution([0.5, 1.5])
    # A proposed value, as an override Hydra reads back as that value.
    for value in [None, True, 0.25, "rnn", "tcn/jsb_lstm", "a b", "x,y", "it's"]:
        line = dimension(parse(["k=choice(1, 2)"])[0]).override(value)
        assert parse([line])[0].value() == value, line


def test_each_trial_number_has_its_own_seed_and_the_objective_its_direction():
    assert trial_seed(1234, 5) == trial_seed(1234, 5) != trial_seed(1234, 6)
    from rnnbench.config import compose

    assert objective_metric(compose(["data=reber"])) == ("val/ppl", "minimize")
    assert objective_metric(compose(["data=sst2"])) == ("val/acc", "maximize")
    assert objective_metric(compose(["data=multi30k"])) == ("val/loss", "minimize")


@pytest.mark.parametrize("maximize", [True, False])
def test_the_expected_best_of_n_trials_is_the_brute_force_mean_over_all_draws(maximize):
    values = [3.0, 1.5, 4.25, 1.5, 9.0]
    for n in (1, 2, 3):
        draws = [max(d) if maximize else min(d) for d in itertools.product(values, repeat=n)]
        mean = sum(draws) / len(draws)
        variance = sum((x - mean) ** 2 for x in draws) / len(draws)
        got = expected_max(values, n, maximize)
        assert got == pytest.approx((mean, variance)), n


def test_a_search_groups_its_runs_in_wandb_by_study(tmp_path):
    args = [*SEARCH, "logger=wandb", "hydra.sweeper.n_trials=1", "hydra.sweeper.confirm_seeds=1"]
    done = rnnbench_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = list((tmp_path / "runs" / "searches" / "reber").glob("*/*/result.json"))
    assert len(found) == 4  # a trial and a confirming run per cell
    for path in found:
        record = json.loads(path.read_text())
        study = path.parent.parent.name  # reber-model-rnn, reber-model-lstm
        assert record["wandb"]["group"] == study, (path, record["wandb"])


def test_two_workers_share_one_study_and_run_n_trials_between_them(tmp_path):
    """Two `rnnbench` processes on one storage: n_trials in all, no configuration twice."""
    args = [*SEARCH[:2], "model=rnn", *TINY, "hydra.sweeper.confirm_seeds=0"]
    args += ["trainer.max_epochs=4", "data.train_strings=600", "hydra.sweeper.n_trials=6"]
    # Started together: they also race to create the study's database.
    first, second = popen(args, cwd=tmp_path), popen(args, cwd=tmp_path)
    db = tmp_path / "runs" / "searches" / "reber" / "optuna.db"
    outs = [p.communicate(timeout=600) for p in (first, second)]
    for p, (out, err) in zip((first, second), outs, strict=True):
        assert p.returncode == 0, (p.returncode, out[-800:], err[-1200:])
    found = trials(db, "reber")
    counted = [t for t in found if not t.user_attrs.get("surplus")]
    assert len(counted) == 6 and all(t.state.name == "COMPLETE" for t in counted)
    owners = {t.user_attrs["owner"] for t in counted}
    assert len(owners) == 2, (owners, outs[1][0][-1500:], outs[1][1][-1500:])  # both ran trials
    trained = [r for r in records(tmp_path / "runs") if not r.get("reused_from")]
    assert len(trained) == 6
    assert len({r["run_key"] for r in trained}) == 6  # no configuration trained twice


def test_workers_share_a_confirmation_seed_by_seed(tmp_path):
    """The confirming seeds are shared by the study's workers, each seed run by the worker that
    claims it first: while another worker holds seed 1235, this one runs 1236 and 1237, then
    waits for 1235, and, its holder gone without a record, runs it too."""
    args = [*SEARCH[:2], "model=rnn", *TINY[:-2], "trainer.enable_progress_bar=false"]
    args += ["logger=none", "hydra.sweeper.n_trials=1"]
    first = rnnbench_cli([*args, "hydra.sweeper.confirm_seeds=0"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    search = tmp_path / "runs" / "searches" / "reber"
    other = claims.hold(search / ".claims" / "reber" / "confirm-1235", claims.this_process())
    assert other is not None
    confirming = [*args, "hydra.sweeper.confirm_seeds=3", "hydra.sweeper.confirm_pack=false"]
    worker = popen(confirming, cwd=tmp_path)

    def done(seed: int) -> bool:
        path = search / f"confirm-{seed}" / "result.json"
        return path.is_file() and json.loads(path.read_text())["status"] == "completed"

    wait_for(lambda: done(1236) and done(1237), worker)
    time.sleep(1.0)
    assert worker.poll() is None and not (search / "confirm-1235" / "result.json").exists()
    other.close()  # the other worker ends without a record: this one runs its seed
    out, err = worker.communicate(timeout=240)
    assert worker.returncode == 0, err[-3000:]
    runs = {seed: json.loads((search / f"confirm-{seed}" / "result.json").read_text())
            for seed in (1235, 1236, 1237)}  # fmt: skip
    assert all(r["status"] == "completed" and not r.get("reused_from") for r in runs.values())
    assert runs[1235]["started"] >= max(runs[s]["finished"] for s in (1236, 1237))
    waited = [line for line in err.splitlines() if "waiting for" in line]
    assert waited == [
        f"rnnbench: waiting for study reber's confirming run confirm-1235, run by process "
        f"{os.getpid()} on host {socket.gethostname()}"
    ], err[-2000:]
    assert "study reber: trial 0 confirmed with seeds 1235,1236,1237: test" in out


def test_studies_confirmed_or_not_share_one_set_of_columns():
    """A search whose first study is confirmed and second still running: one table."""
    from collections import Counter

    from rnnbench.results.studies import StudyView
    from rnnbench.results.table import studies_tables

    def view(name: str, confirmed: list[float]) -> StudyView:
        return StudyView(
            name, name, "val/nll", False, Counter(complete=2), [8.5, 8.2], 8.2, {"optim.lr": 1e-3},
            1, "test/nll" if confirmed else None, confirmed, [1235] if confirmed else [], 0.5,
        )  # fmt: skip

    summary, curve = studies_tables([view("lstm", [8.3]), view("rnn", [])])
    assert summary.header[6:8] == ["best val/nll", "confirmed test/nll"]
    assert [row[7].text for row in summary.body] == ["8.3 ± 0 (1 seeds)", "not confirmed"]
    assert len(curve.body) == 2  # n = 1, 2 completed trials


def test_a_confirmation_is_packed_only_where_pack_allows_its_configuration():
    """The confirming seeds train as one pack where `pack=K` may train the best configuration
    (Hydra's own config loader composes it, as the sweeper does); one seed, truncated BPTT or
    sequence-to-sequence data confirm one job per seed."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rnnbench.config import CONF_DIR, compose
    from rnnbench.run.search import packable

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = compose(["hparams_search=reber"], return_hydra_config=True)
        assert packable(loader, master, ["model=gru", "optim.lr=0.01"], 3)
        assert not packable(loader, master, ["model=gru"], 1)
        assert not packable(loader, master, ["model.tbptt=5"], 3)
        assert not packable(loader, master, ["data=multi30k"], 3)


def test_the_studies_view_reads_a_study_file_and_never_makes_one(tmp_path, capsys):
    """`rnnbench-table --studies` takes a search's folder, its study file (as optuna-dashboard
    does) or a URL, lists a storage given twice once, and refuses in one line a file that is
    missing or empty, without creating or filling it: it only reads."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = tmp_path / "search"
    search.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{search / 'optuna.db'}", study_name="s")
    study.set_user_attr("metric", "val/ppl")
    trial = study.ask()
    trial.suggest_float("optim.lr", 1e-4, 1e-2)
    study.tell(trial, 5.0)
    assert table_main(["--studies", str(search), str(search / "optuna.db")]) == 0
    assert capsys.readouterr().out.count("\n| s |") == 1

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "optuna.db").touch()  # a search that wrote nothing yet
    for path, says in [
        (tmp_path / "half", "half/optuna.db holds no study: it is empty"),
        (f"sqlite:///{tmp_path / 'typo.db'}", "typo.db holds no study: there is no such file"),
        (f"journal:{tmp_path / 'typo.log'}", "typo.log holds no study: there is no such file"),
        (tmp_path / "nothing", "is neither a search's folder, a study file nor a storage URL"),
    ]:
        assert table_main(["--studies", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert (tmp_path / "half" / "optuna.db").stat().st_size == 0
    assert not list(tmp_path.glob("typo*"))
    # A folder of searches (a results root) shows every search beneath it that has a study;
    # one that wrote nothing yet (half) is passed over, not refused.
    nested = tmp_path / "runs" / "searches"
    nested.mkdir(parents=True)
    shutil.copytree(search, nested / "mine")
    assert table_main(["--studies", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert shown.count("\n| s |") == 2, shown  # search/ and runs/searches/mine/, the same study
    assert table_main(["--studies", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.count("\n| s |") == 1
    assert table_main(["--studies", str(tmp_path / "runs" / "searches" / "mine" / "nothing")]) == 2
    capsys.readouterr()
    (tmp_path / "runs" / "searches" / "mine" / "optuna.db").unlink()
    assert table_main(["--studies", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none with a study lies beneath it" in err[0], err


def test_importance_ranks_the_key_that_decides_and_says_when_trials_are_too_few(tmp_path, capsys):
    """fANOVA's importances come with the number of completed trials they rest on; no more
    trials than keys searched cannot rank the keys, and the studies view says so."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for name, n in (("many", 16), ("few", 2)):
        sampler = optuna.samplers.RandomSampler(seed=0)
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler)
        study.set_user_attr("metric", "val/ppl")
        for _ in range(n):
            trial = study.ask()
            lr = trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
            trial.suggest_float("model.dropout", 0.0, 0.5)
            study.tell(trial, abs(math.log10(lr) + 3))  # the learning rate alone decides
    study.ask()  # a trial still running: counted as such
    assert table_main(["--studies", str(tmp_path / "optuna.db")]) == 0
    shown = capsys.readouterr().out
    header = [h.strip() for h in shown.splitlines()[0].split("|")]
    counts = {
        line.split("|")[1].strip(): line.split("|")[header.index("running")].strip()
        for line in shown.splitlines()
        if line.startswith(("| many |", "| few |"))
    }
    assert counts == {"many": "0", "few": "1"}, shown
    [many] = [line for line in shown.splitlines() if line.startswith("| many |")]
    [few] = [line for line in shown.splitlines() if line.startswith("| few |")]
    lr, dropout = (float(many.split(f"{k} ")[1][:4]) for k in ("optim.lr", "model.dropout"))
    assert lr > 0.8 > dropout and many.index("optim.lr") < many.index("model.dropout"), many
    assert "(16 completed trials)" in many, many
    assert "(2 completed trials: too few to rank them)" in few, few


def running_trial(db: Path, number: int) -> bool:
    """Whether trial `number` of the study in `db` runs: read-only, for Optuna would make its
    tables as the worker does, and one of the two would fail."""
    if not db.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT state FROM trials WHERE number = ?", (number,)).fetchone()
    except sqlite3.OperationalError:  # its tables are not made yet
        return False
    return row is not None and row[0] == "RUNNING"


def test_an_idle_worker_confirms_the_best_so_far_and_a_later_best_gets_its_own_runs(tmp_path):
    """A worker with no trial left confirms the best trial so far while another worker's trial
    runs, rather than wait idle; stopped while it then waits, it ends cleanly (143, no
    traceback). The other worker's trial turns out best: it is confirmed in folders of its own,
    the early runs stay as they were, and the study's cost counts both."""
    args = [*SEARCH[:2], "model=rnn", *TINY, "hydra.sweeper.n_trials=2"]
    args += ["hydra.sweeper.confirm_seeds=2", "hydra.sweeper.confirm_pack=false"]
    # Sampler seed 1242 gives trial 0 the learning rate that hardly trains, trial 1 the one that
    # does: the best changes once trial 1 ends.
    args += ['hydra.sweeper.params={optim.lr:"choice(0.0001,0.03)"}', "hydra.sweeper.seed=1242"]
    search = tmp_path / "runs" / "searches" / "reber"
    db = search / "optuna.db"
    args += ["data.train_strings=600", "trainer.max_epochs=2"]

    def stop_holding_no_lock(proc: Any) -> None:
        """SIGSTOP `proc` at a moment it holds no lock on the study's database (a worker
        stopped inside a write would hold up the other)."""
        while True:
            proc.send_signal(signal.SIGSTOP)
            try:
                with contextlib.closing(sqlite3.connect(db, timeout=0.2)) as conn:
                    conn.execute("BEGIN EXCLUSIVE")
                    conn.rollback()
                return
            except sqlite3.OperationalError:
                proc.send_signal(signal.SIGCONT)
                time.sleep(0.05)

    first = popen(args, cwd=tmp_path)
    wait_for(lambda: running_trial(db, 0), first)
    stop_holding_no_lock(first)  # in trial 0, so that trial 1 is the second worker's
    assert running_trial(db, 0) and not running_trial(db, 1)
    second = popen(args, cwd=tmp_path)
    try:
        wait_for(lambda: running_trial(db, 1), second)
        stop_holding_no_lock(second)
        first.send_signal(signal.SIGCONT)

        def confirmed(sub: str) -> bool:
            path = search / sub / "result.json"
            return path.is_file() and json.loads(path.read_text())["status"] == "completed"

        def early_runs_noted() -> bool:
            study = optuna.load_study(study_name="reber", storage=f"sqlite:///{db}")
            return "confirmed_early_runs" in study.user_attrs

        wait_for(early_runs_noted, first)  # its confirming runs ended: it waits for trial 1
        assert confirmed("confirm-1235") and confirmed("confirm-1236")
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    finally:
        first.send_signal(signal.SIGCONT)
        second.send_signal(signal.SIGCONT)
    assert first.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "rnnbench: sweep stopped by SIGTERM" in err, err[-3000:]
    assert "confirming trial 0, the best so far, while other workers run" in err
    assert re.search(r"^sweep: \d+ jobs: ", out, re.M), out[-2000:]  # its summary line
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="reber", storage=f"sqlite:///{db}")
    assert study.user_attrs["confirmed_early"] == 0
    assert study.best_trial.number == 1, [t.value for t in study.trials]
    later = {s: json.loads((search / f"trial-1-confirm-{s}" / "result.json").read_text())
             for s in (1235, 1236)}  # fmt: skip
    assert study.user_attrs["confirmed"]["run_dirs"] == [r["run_dir"] for r in later.values()]
    for seed, record in later.items():
        assert record["config"]["seed"] == seed and not record.get("reused_from")
        assert record["config"]["optim"]["lr"] == study.best_params["optim.lr"]
    early = [
        json.loads((search / f"confirm-{s}" / "result.json").read_text()) for s in (1235, 1236)
    ]
    assert all(r["config"]["optim"]["lr"] == study.trials[0].params["optim.lr"] for r in early)
    # Every run the study trained counts in its cost: the trials and both confirmations.
    trained = [r for r in records(search) if not r.get("reused_from")]
    assert len(trained) == 6
    view = view_study(study, search)
    assert view.train_steps == sum(r["timing"]["steps"] for r in trained) > 0
