"""Reproduction recipes (conf/experiment/) and `rnnbench-reproduce`: every recipe composes and
trains a few real steps, GRU and RNN recipes sit at the LSTM's parameter budget, and the tables
are built from real run records."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import require_data, train
from rnnbench.config import compose
from rnnbench.nn.build import build_model
from rnnbench.results.reproduce.command import main
from rnnbench.results.reproduce.csv_readme import README_BEGIN, README_END, read_csv, readme_block
from rnnbench.results.reproduce.pages import BEGIN, END, render_page, render_table, write_page
from rnnbench.results.reproduce.recipes import SOURCES, TUNED, Recipe, compose_recipes, recipe_names
from rnnbench.results.reproduce.rows import Row, collect, portable, trained_text

RECIPES = recipe_names()
FEW_STEPS = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]
# A smoke run: one training step and one test batch; no validation pass (sequential MNIST's
# 256-row, 784-step validation batch would be most of the time).
SMOKE = [*FEW_STEPS[:2], "trainer.limit_val_batches=0", FEW_STEPS[3]]
DATA_FILES = {
    "seq_mnist": "mnist",
    "pmnist": "mnist",
    "jsb": "poly_music/JSB_Chorales.mat",
    "nottingham": "poly_music/Nottingham.mat",
    "ptb_word": "ptb/ptb.train.txt",
    "ptb_char": "ptb_char/ptb.char.train.txt",
    "multi30k": "multi30k/training.tar.gz",
}


def test_every_source_has_its_recipes():
    tcn = [r for r in RECIPES if r.startswith("tcn/") and not r.endswith(TUNED)]
    assert len(tcn) == 8 * 3  # Table 1: 8 tasks x LSTM, GRU, RNN (tuned rows beside them)
    assert {"zaremba/small", "zaremba/medium", "zaremba/large"} <= set(RECIPES)
    assert {"zaremba/small_gru", "zaremba/small_rnn"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_composes_and_trains_a_step(name, tmp_path):
    cfg = compose([f"experiment={name}"])
    assert cfg.recipe == name
    data = cfg.data.name
    if data in DATA_FILES:
        require_data(DATA_FILES[data])
    record = train([f"experiment={name}", *SMOKE], tmp_path)
    assert record["status"] in ("completed", "diverged"), record["error"]
    assert record["config"]["recipe"] == name
    assert record["timing"]["steps"] == 1


def params(name: str) -> int:
    cfg = compose([f"experiment={name}"])
    datamodule = instantiate(cfg.data)
    if cfg.data.name in DATA_FILES:
        require_data(DATA_FILES[cfg.data.name])
    datamodule.setup("fit")
    model = build_model(cfg.model, datamodule.model_io())
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "task", ["seq_mnist", "adding", "copy_memory", "jsb", "nottingham", "ptb_char", "ptb_word"]
)
def test_gru_and_rnn_recipes_match_the_lstm_parameter_budget(task):
    """Bai et al. tune GRU and RNN at the LSTM's size; a recipe (tuned ones too) whose hidden
    size drifts from that budget by more than 2 % fails here."""
    lstm = params(f"tcn/{task}_lstm")
    others = [n for n in RECIPES if n.startswith(f"tcn/{task}_") and n != f"tcn/{task}_lstm"]
    assert {f"tcn/{task}_gru", f"tcn/{task}_rnn"} <= set(others)
    for name in others:
        assert abs(params(name) / lstm - 1) < 0.02, name


def test_zaremba_recipe_follows_the_papers_code():
    """lr x 20 and clip / 20 for the per-token mean loss; lr held for 5 epochs, as main.lua's
    `epoch > max_epoch` test with max_epoch 4 holds it."""
    cfg = compose(["experiment=zaremba/small"])
    assert cfg.optim.lr == 20.0 and cfg.trainer.gradient_clip_val == 0.25
    assert (cfg.data.bptt, cfg.data.batch_size, cfg.trainer.max_epochs) == (20, 20, 13)
    import torch

    schedule = instantiate(cfg.scheduler)(torch.optim.SGD([torch.zeros(1)], lr=1.0))
    lrs = []
    for _ in range(13):
        lrs.append(schedule.optimizer.param_groups[0]["lr"])
        schedule.optimizer.step()  # an epoch's updates, then its schedule step (torch's order)
        schedule.step()
    assert lrs[:5] == [1.0] * 5 and lrs[5] == 0.5 and lrs[12] == 0.5**8


def test_tables_from_real_runs(tmp_path):
    """A run of a recipe at its own budget is 'full' and compared with the paper; the same recipe
    run shorter is 'reduced' and says what differs; a recipe not run is 'not run'."""
    require_data("poly_music/JSB_Chorales.mat")
    runs = tmp_path / "runs"
    short = [*FEW_STEPS]
    train(["experiment=tcn/jsb_lstm", *short], runs / "a")
    train(["experiment=tcn/jsb_gru", *short], runs / "b")
    [record_a] = [json.loads((runs / "a" / "result.json").read_text())]

    # Against the recipes as composed with the same shortening, run a's budget is "full".
    as_run = compose_recipes(["tcn/jsb_lstm"], short)
    [row] = collect(as_run, [runs], {})
    assert row.budget == "full" and row.ours == record_a["metrics"]["test/nll"]
    assert row.paper == 8.45
    assert row.within == (row.ours <= 1.02 * 8.45)

    # Against the real recipes: reduced, naming the shortened settings; jsb_rnn not run.
    timed = {"tcn/jsb_rnn": {"hours": "0.1", "threads": "1", "load": "2.5"}}
    rows = collect(compose_recipes(["tcn/jsb_lstm", "tcn/jsb_rnn"]), [runs], timed)
    lstm, rnn = rows
    assert lstm.budget == "reduced" and "trainer.max_epochs=1" in lstm.differs
    assert lstm.within is None
    assert rnn.budget == "not run" and rnn.hours == 0.1

    page = tmp_path / "page.md"
    page.write_text("intro\n" + BEGIN + "\nold\n" + END + "\n\n## Findings\nkept\n")
    write_page(page, render_page(SOURCES["tcn"], rows))
    text = page.read_text()
    assert text.startswith("intro\n" + BEGIN) and text.endswith("## Findings\nkept\n")
    assert "old" not in text and "not run yet — about 0.1 h on this CPU" in text
    assert "with 1 torch thread(s) at a load average of 2.5 to 2.5" in text
    assert "rnnbench experiment=tcn/jsb_lstm trainer.max_epochs=1" in text


def test_cli_writes_every_page_and_the_csv(tmp_path):
    require_data("poly_music/JSB_Chorales.mat")
    train(["experiment=tcn/jsb_rnn", *FEW_STEPS], tmp_path / "runs" / "r")
    out = tmp_path / "results"
    assert main([str(tmp_path / "runs"), "-o", str(out)]) == 0
    assert (out / "tcn_table1.md").read_text().startswith(BEGIN)
    assert "Zaremba" in (out / "zaremba.md").read_text()
    with (out / "reproduction.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "source", "task", "cell", "metric", "direction", "paper", "ours", "budget", "seeds",
        "std", "train_h", "train_partial", "command",
    ]  # fmt: skip
    jsb_rnn = [r for r in rows if (r["source"], r["task"], r["cell"]) == ("tcn", "jsb", "rnn")]
    assert [(r["budget"], r["seeds"], r["direction"]) for r in jsb_rnn] == [
        ("reduced", "1", "lower")
    ]
    zaremba = [r for r in RECIPES if r.startswith("zaremba/")]
    assert len(rows) == len(RECIPES) + len(zaremba)  # Zaremba's rows: val and test


@pytest.mark.parametrize(
    "args, message",
    [
        (["--time", "tcn/no_such"], "unknown recipe 'tcn/no_such'"),
        (["--steps", "0", "--time", "tcn"], "--steps must be a positive"),
        (["no/such/folder"], "no such folder: no/such/folder"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message):
    script = Path(sys.executable).parent / "rnnbench-reproduce"
    result = subprocess.run(
        [str(script), *args, "-o", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnbench-reproduce: error: "), result.stderr
    assert message in lines[0]
    assert not list(tmp_path.glob("*.csv"))


def test_unknown_recipe_names_the_recipes(tmp_path):
    from conftest import assert_refused, rnnbench_cli

    result = rnnbench_cli(["experiment=tcn/jsb_lsmt", "logger=none"], cwd=tmp_path)
    assert_refused(result, "Could not find 'experiment/tcn/jsb_lsmt'", tmp_path)
    assert "recipes: " in result.stderr
    assert "tcn/adding_gru" in result.stderr and "zaremba/small_rnn" in result.stderr


def test_trained_time_of_a_resumed_run():
    """A resumed run's record times every epoch (the checkpoint carries the count); one written
    before that timed only its last part, and the table says so instead of passing it off."""
    recipe = Recipe("tcn/jsb_lstm", {}, "test/nll")
    whole = {"timing": {"train_s": 720.0, "items": 1000}, "resumed_from": "runs/a"}
    assert trained_text(Row(recipe, "test/nll", 8.45, runs=[whole])) == "12.0 min"
    old = {"timing": {"train_s": 720.0, "steps": 10}, "resumed_from": "runs/a"}
    assert trained_text(Row(recipe, "test/nll", 8.45, runs=[old])).startswith("> 12.0 min")
    from_old_checkpoint = {"timing": {"train_s": 720.0, "items": 10, "partial": True}}
    assert trained_text(Row(recipe, "test/nll", 8.45, runs=[from_old_checkpoint])).startswith(">")


def test_a_tuned_recipe_is_its_own_row_beside_the_papers():
    plain = Recipe("tcn/nottingham_rnn", {"model": {"cell": "rnn"}}, "test/nll")
    tuned = Recipe("tcn/nottingham_rnn_tuned", {"model": {"cell": "rnn"}}, "test/nll")
    later = Recipe("tcn/ptb_word_lstm", {"model": {"cell": "lstm"}}, "test/ppl")
    assert (plain.task, plain.label(), plain.tuned) == ("nottingham", "rnn", False)
    assert (tuned.task, tuned.label(), tuned.tuned) == ("nottingham", "rnn (tuned)", True)
    assert plain.order < tuned.order < later.order
    table = render_table([Row(plain, "test/nll", 4.05), Row(tuned, "test/nll", 4.05)])
    assert "| nottingham | RNN | test/nll |" in table
    assert "| nottingham | RNN (tuned) | test/nll |" in table


def read_csv_rows(path: Path) -> dict[tuple[str, str, str, str], dict[str, str]]:
    with path.open() as f:
        return {(r["source"], r["task"], r["cell"], r["metric"]): r for r in csv.DictReader(f)}


def test_regeneration_never_turns_a_measured_row_into_not_run(tmp_path):
    """The records behind rows are kept under OUT/records (no checkpoints) and read back; a
    committed row whose record is not in the repo is carried over, said so, never dropped."""
    from fixture_runs import write_run

    require_data("poly_music/JSB_Chorales.mat")
    runs, out = tmp_path / "runs", tmp_path / "results"
    write_run(runs / "jsb", ["experiment=tcn/jsb_lstm", "logger=none"], test=8.51)
    assert main([str(runs), "-o", str(out)]) == 0
    row = read_csv_rows(out / "reproduction.csv")["tcn", "jsb", "lstm", "test/nll"]
    assert (row["budget"], row["ours"], row["seeds"]) == ("full", "8.51", "1")
    [kept] = (out / "records" / "tcn" / "jsb_lstm").rglob("result.json")
    assert json.loads(kept.read_text())["metrics"]["test/nll"] == 8.51
    assert not list((out / "records").rglob("*.ckpt"))

    # A fresh clone: no runs/ at all. The kept record makes the row, counted once.
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "-o", str(out)]) == 0
    again = read_csv_rows(out / "reproduction.csv")
    assert again["tcn", "jsb", "lstm", "test/nll"] == row

    # The committed table, regenerated with no run records at all: every measured row stays.
    committed = read_csv_rows(Path(__file__).parent.parent / "results" / "reproduction.csv")
    shutil.copytree(
        Path(__file__).parent.parent / "results", tmp_path / "clone", dirs_exist_ok=True
    )
    assert main([str(tmp_path / "empty"), "-o", str(tmp_path / "clone")]) == 0
    regenerated = read_csv_rows(tmp_path / "clone" / "reproduction.csv")
    measured = {k: r for k, r in committed.items() if r["budget"] != "not run"}
    assert measured and {k: regenerated[k]["ours"] for k in measured} == {
        k: r["ours"] for k, r in measured.items()
    }
    assert all(regenerated[k]["budget"] == r["budget"] for k, r in measured.items())
    page = (tmp_path / "clone" / "tcn_table1.md").read_text()
    assert "carried over from the committed reproduction.csv" in page

    # A shortened check of a recipe whose committed line is at full budget: the line stays.
    full = {k: r for k, r in measured.items() if r["budget"] == "full"}
    source, task, cell, metric = key = next(k for k in full if k[0] == "tcn")
    check = ["experiment=tcn/" + f"{task}_{cell}".replace(" (tuned)", "_tuned")]
    write_run(runs / "check", [*check, "trainer.max_epochs=2", "logger=none"], test=99.0)
    assert main([str(runs), "-o", str(tmp_path / "clone")]) == 0
    again = read_csv_rows(tmp_path / "clone" / "reproduction.csv")[key]
    assert (again["budget"], again["ours"]) == ("full", full[key]["ours"])


REPO = Path(__file__).parent.parent


def test_the_readmes_table_is_made_from_the_committed_csv():
    """README.md's table of the rows run here is exactly what `--readme` makes of the committed
    results/reproduction.csv: a row measured, re-measured or dropped there cannot drift."""
    text = (REPO / "README.md").read_text()
    block = README_BEGIN + text.split(README_BEGIN, 1)[1].split(README_END, 1)[0] + README_END
    lines = read_csv(REPO / "results" / "reproduction.csv")
    assert block == readme_block(lines)
    run_here = [line for line in lines if line["budget"] != "not run"]
    assert run_here and block.count("\n| ") == len(run_here) + 1  # the header, then each row


def test_readme_table_from_seeds_and_refusals(tmp_path):
    """Three seeds give mean ± std in the CSV and the README's table; the text around the
    markers is kept; a README without them is refused before anything is written."""
    from fixture_runs import write_run

    require_data("poly_music/JSB_Chorales.mat")
    runs, out = tmp_path / "runs", tmp_path / "results"
    for seed, nll in ((1, 8.4), (2, 8.5), (3, 8.9)):
        overrides = ["experiment=tcn/jsb_lstm", f"seed={seed}", "logger=none"]
        # Where the runs were written is this machine's path: no part of the row's command.
        overrides.append(f"results_root={tmp_path / 'elsewhere'}")
        write_run(runs / f"s{seed}", overrides, test=nll, train_s=600.0)
    readme = tmp_path / "README.md"

    readme.write_text("# title\nno markers here\n")
    script = Path(sys.executable).parent / "rnnbench-reproduce"
    refused = subprocess.run(
        [str(script), str(runs), "-o", str(out), "--readme", str(readme)],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert f"--readme {readme}: no {README_BEGIN}" in refused.stderr
    assert not out.exists() or not list(out.glob("*.csv"))
    assert readme.read_text() == "# title\nno markers here\n"

    readme.write_text(f"# title\nbefore\n{README_BEGIN}\nstale\n{README_END}\nafter\n")
    assert main([str(runs), "-o", str(out), "--readme", str(readme)]) == 0
    row = read_csv_rows(out / "reproduction.csv")["tcn", "jsb", "lstm", "test/nll"]
    assert (row["ours"], row["seeds"], row["std"], row["train_h"]) == (
        "8.6",
        "3",
        "0.2646",
        "0.1667",
    )
    assert row["command"] == "rnnbench -m experiment=tcn/jsb_lstm logger=none seed=1,2,3"
    text = readme.read_text()
    assert text.startswith("# title\nbefore\n" + README_BEGIN) and text.endswith("after\n")
    assert "stale" not in text
    assert (
        "| Bai et al. 2018 | JSB Chorales | LSTM | test/nll | 8.45 | 8.60 ± 0.26 (3 seeds) "
        "| +1.8% | 10.0 min |" in text
    )
    assert text.count("\n| ") == 2  # only the row run here, under its header


def test_a_kept_command_loses_only_its_machine_path():
    """A committed line's command made before results_root was left out runs from a fresh
    clone once carried over: only the results_root= word goes."""
    kept = "rnnbench experiment=seq2seq/small logger=csv results_root=/tmp/s2s threads=1"
    assert portable(kept) == "rnnbench experiment=seq2seq/small logger=csv threads=1"
    assert portable("rnnbench -m experiment=tcn/jsb_lstm seed=1,2") == (
        "rnnbench -m experiment=tcn/jsb_lstm seed=1,2"
    )


def test_one_source_keeps_the_other_sources_rows(tmp_path):
    """`--source tcn` rewrites the tcn lines of reproduction.csv and leaves every other
    source's line as it was committed."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "results", clone)
    (tmp_path / "empty").mkdir()
    before = read_csv_rows(clone / "reproduction.csv")
    assert main([str(tmp_path / "empty"), "-o", str(clone), "--source", "tcn"]) == 0
    after = read_csv_rows(clone / "reproduction.csv")
    assert set(after) == set(before)
    others = {k for k in before if k[0] != "tcn"}
    assert others and all(after[k] == before[k] for k in others)


def test_a_fresh_clone_rebuilds_the_committed_pages_from_the_kept_records(tmp_path, monkeypatch):
    """No runs/ in a fresh clone: rnnbench-reproduce says so and rebuilds every source's page
    and the CSV from the records kept in results/records, as committed (tuned rows included,
    one per study, each search's command with its sweeper settings)."""
    clone = tmp_path / "results"
    shutil.copytree(REPO / "results", clone)
    monkeypatch.chdir(tmp_path)
    assert main(["-o", str(clone)]) == 0
    for page in [*(SOURCES[name].page for name in SOURCES), "reproduction.csv"]:
        assert (clone / page).read_text() == (REPO / "results" / page).read_text(), page
    tuned = [line for line in (clone / SOURCES["tcn"].page).read_text().splitlines()
             if line.startswith("| jsb | LSTM | jsb")]  # fmt: skip
    studies = [line.split(" | ")[2] for line in tuned]
    assert studies == ["jsb-experiment-tcn_jsb_lstm", "jsb-halving", "jsb-unpruned"]


def test_a_search_gives_tuned_rows_that_survive_the_search_folder(tmp_path):
    """A real (tiny) equal-budget search around a recipe: rnnbench-reproduce --searches archives
    its study and records and adds a tuned row, the confirming runs' test mean ± std beside the
    paper; the trials never stand in for the recipe's own row; and the archive alone, the
    search's folder gone, gives the same row."""
    from conftest import rnnbench_cli

    require_data("poly_music/JSB_Chorales.mat")
    tiny = ["trainer.max_epochs=1", *(f"trainer.limit_{s}_batches=2" for s in ("train", "val"))]
    args = ["-m", "hparams_search=jsb", "experiment=tcn/jsb_lstm", "hydra.sweeper.n_trials=2"]
    args += ["hydra.sweeper.confirm_seeds=2", "hydra.sweeper.pruner=null", "threads=1"]
    args += [*tiny, "trainer.limit_test_batches=2", "logger=none"]
    searched = rnnbench_cli([*args, "trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert searched.returncode == 0, searched.stderr[-3000:]
    search = tmp_path / "runs" / "searches" / "jsb"
    confirming = [
        json.loads(p.read_text())
        for p in search.rglob("result.json")
        if any(part.startswith("confirm-") for part in p.parts)
    ]
    assert sorted(r["seed"] for r in confirming) == [1235, 1236]
    tests = [r["metrics"]["test/nll"] for r in confirming]
    mean, std = sum(tests) / 2, abs(tests[0] - tests[1]) / 2**0.5

    out = tmp_path / "out"
    run = [str(tmp_path / "runs"), "-o", str(out), "--source", "tcn"]
    assert main([*run, "--searches", str(search)]) == 0
    page = (out / SOURCES["tcn"].page).read_text()
    [row] = [
        line for line in page.splitlines() if line.startswith("| jsb | LSTM") and "(0)" in line
    ]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["jsb", "LSTM", "jsb", "test/nll", "8.45"]  # its study: jsb
    assert cells[6] == f"{mean:.2f} ± {std:.2g} (2 seeds)"
    assert cells[8] == "2 (0)"  # trials (pruned)
    assert cells[-1].startswith("reduced budget: trainer.limit_test_batches=2")
    recipe_row = next(line for line in page.splitlines() if line.startswith("| jsb | LSTM"))
    assert "| not run" in recipe_row  # the trials and confirming runs are not the recipe's runs
    assert (out / "records" / "searches" / "jsb" / "journal.log").is_file()

    shutil.rmtree(tmp_path / "runs")  # the archive alone
    (tmp_path / "runs").mkdir()
    assert main(run) == 0
    assert row in (out / SOURCES["tcn"].page).read_text().splitlines()


def test_time_measures_a_recipe_here_and_scales_it_to_its_epochs(tmp_path):
    """`rnnbench-reproduce --time` trains a recipe for a few real steps (torch and the run
    layer loaded for that alone) and writes the estimate for its whole budget."""
    script = Path(sys.executable).parent / "rnnbench-reproduce"
    args = ["--time", "tcn/adding_gru", "--steps", "2", "--threads", "1", "-o", str(tmp_path)]
    done = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "recipe_times.csv").open() as f:
        [row] = list(csv.DictReader(f))
    cfg = compose(["experiment=tcn/adding_gru"])
    assert row["recipe"] == "tcn/adding_gru" and row["threads"] == "1"
    assert int(row["epochs"]) == cfg.trainer.max_epochs
    assert int(row["steps_per_epoch"]) == -(-cfg.data.train_size // cfg.data.batch_size)
    s_per_step = float(row["s_per_step"])
    assert s_per_step > 0
    hours = s_per_step * int(row["steps_per_epoch"]) * int(row["epochs"]) / 3600
    assert float(row["hours"]) == pytest.approx(hours, abs=0.01)
    assert row["command"] == "rnnbench-reproduce --time tcn/adding_gru --steps 2 --threads 1"
    assert f"tcn/adding_gru: {row['s_per_step']} s/step" in done.stdout
