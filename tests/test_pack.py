"""Packed runs (`pack=K`): each member of a pack computes what its lone run computes, and leaves
the record its lone run would. Every run here is real: the Trainer, Hydra's compose and
multirun, the rnnbench console script, result.json and checkpoints on disk."""

from __future__ import annotations

import io
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import (
    QUIET,
    assert_refused,
    popen,
    records,
    require_data,
    rnnbench_cli,
    train,
    wait_for,
    wandb_records,
)
from rnnbench.config import compose
from rnnbench.nn.model import SequenceModel
from rnnbench.nn.packed import PackedSequenceModel
from rnnbench.results.record import read_trace
from rnnbench.run.pack import Member, run_pack, seed_members

# float64 end to end, so a difference is a difference in what is computed, not rounding.
EXACT = [
    "+trainer.precision=64-true",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=50",
    "trainer.limit_val_batches=3",
    "trainer.limit_test_batches=3",
    "trainer.gradient_clip_val=0.05",  # small enough that clipping acts on some steps
    "model.hidden_size=8",
]
TASKS = {
    # Next-symbol prediction over BPTT windows, the state carried from window to window.
    "lm": ["data=reber", "data.batch_size=4", "data.bptt=20", "data.train_strings=600"],
    # One class per sentence from the final state, rows padded to their batch's longest.
    "classify": ["data=sst2", "data.batch_size=16", "data.eval_batch_size=64"],
}
TOLERANCE = 1e-5


def lone(overrides: list[str], run_dir: Path) -> dict:
    return train(overrides, run_dir)


def pack_of(overrides: list[str], run_dir: Path) -> list[dict]:
    cfg = compose([*QUIET, *overrides])
    return run_pack(seed_members(cfg, run_dir, overrides), run_dir)


def losses(run_dir: Path) -> pd.Series:
    return read_trace(Path(run_dir) / "steps.csv").set_index("step")["batch_loss"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(Path(run_dir) / "checkpoints" / "best.ckpt", weights_only=True)
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def assert_same_run(member: dict, alone: dict) -> None:
    """Same run_key, status, every loss of every step and split, and the weights tested."""
    assert member["run_key"] == alone["run_key"]
    assert member["status"] == alone["status"] == "completed"
    got, want = losses(member["run_dir"]), losses(alone["run_dir"])
    assert list(got.index) == list(want.index) and len(got) == 50
    # steps.csv keeps 6 significant digits: equal to them.
    assert ((got - want).abs() <= TOLERANCE * want.abs().clip(lower=1)).all()
    for key in ("val/loss", "test/loss"):
        assert abs(member["metrics"][key] - alone["metrics"][key]) < TOLERANCE, key
    assert member["best"]["train/loss"] == pytest.approx(alone["best"]["train/loss"], abs=1e-5)
    w_member, w_alone = weights(member["run_dir"]), weights(alone["run_dir"])
    assert w_member.keys() == w_alone.keys()
    for name in w_alone:
        assert torch.allclose(w_member[name], w_alone[name], atol=TOLERANCE, rtol=0), name


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_each_member_of_a_pack_of_4_is_its_lone_run(cell, layers, task, tmp_path):
    if task == "classify":
        require_data("sst2")
    common = [*TASKS[task], *EXACT, f"model={cell}", f"model.num_layers={layers}"]
    assert_pack_of_4_matches_lone_runs(common, tmp_path)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_bidirectional_pack_on_padded_rows_is_its_lone_runs(cell, tmp_path):
    """Both directions, each row reversed over its own real steps only, two layers."""
    require_data("sst2")
    common = [*TASKS["classify"], *EXACT, f"model={cell}", "model.num_layers=2"]
    assert_pack_of_4_matches_lone_runs([*common, "model.bidirectional=true"], tmp_path)


def assert_pack_of_4_matches_lone_runs(common: list[str], tmp_path: Path) -> None:
    common = [*common, "seed=11"]
    members = pack_of([*common, "pack=4"], tmp_path / "pack")
    assert [m["seed"] for m in members] == [11, 12, 13, 14]
    for k, member in enumerate(members):
        assert member["packed_with"]["size"] == 4 and member["packed_with"]["index"] == k
        # The lone run that reproduces member k: its own seed, the pack's data order.
        alone = lone([*common, f"seed={11 + k}", "data.seed=11"], tmp_path / f"lone{k}")
        assert_same_run(member, alone)
    # The members are four different runs, not one run four times.
    assert len({m["metrics"]["val/loss"] for m in members}) == 4


def test_pack_weights_load_into_lone_models_and_compute_the_same():
    torch.manual_seed(0)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(SequenceModel(5, input_size=3, readout="last", cell="lstm", hidden_size=6))
    packed = PackedSequenceModel(models)
    x = torch.randn(4, 9, 3)
    out, _ = packed(x)
    for k, model in enumerate(models):
        fresh = SequenceModel(5, input_size=3, readout="last", cell="lstm", hidden_size=6)
        fresh.load_state_dict(packed.member_state_dict(k))
        assert torch.allclose(model(x)[0], out[k], atol=1e-6)
        assert torch.allclose(fresh(x)[0], out[k], atol=1e-6)
    assert not torch.allclose(out[0], out[1])


TINY = ["data=reber", "data.train_strings=300", "data.valid_strings=40", "data.test_strings=40"]
TINY += ["data.batch_size=4", "model.hidden_size=8", "model.num_layers=1", "trainer.max_epochs=2"]


def test_a_multirun_packs_its_jobs_and_each_member_is_its_lone_run(tmp_path):
    """Seeds x learning rates in one pack of 4 (the sweep's four jobs), each job's folder with
    its member's record; rerun, every job is reused; each member equals its lone run."""
    sweep = [*TINY, "+trainer.precision=64-true", "seed=1,2", "optim.lr=0.002,0.02", "pack=4"]
    args = ["-m", *sweep, "logger=none", "trainer.enable_progress_bar=false"]
    done = rnnbench_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr
    found = sorted(records(tmp_path / "runs"), key=lambda r: r["run_dir"])
    assert len(found) == 4 and all(r["status"] == "completed" for r in found)
    packs = {r["packed_with"]["pack"] for r in found}
    assert len(packs) == 1 and Path(packs.pop()).parent.name == "packs"
    assert {(r["seed"], r["config"]["optim"]["lr"]) for r in found} == {
        (1, 0.002),
        (1, 0.02),
        (2, 0.002),
        (2, 0.02),
    }
    assert {r["config"]["data"]["seed"] for r in found} == {1}  # one stream of batches
    # Each job's own folder holds its member's record.
    assert sorted(Path(r["run_dir"]).name for r in found) == ["0", "1", "2", "3"]
    again = rnnbench_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("rnnbench: reused completed run") == 4
    # A member with its own learning rate equals its lone run (float64).
    member = next(r for r in found if r["seed"] == 2 and r["config"]["optim"]["lr"] == 0.02)
    alone = lone(
        [*TINY, "+trainer.precision=64-true", "seed=2", "data.seed=1", "optim.lr=0.02"],
        tmp_path / "lone",
    )
    assert member["run_key"] == alone["run_key"]
    got, want = losses(member["run_dir"]), losses(alone["run_dir"])
    assert len(got) == len(want) > 20
    assert ((got - want).abs() <= TOLERANCE * want.abs().clip(lower=1)).all()
    assert member["metrics"]["test/loss"] == pytest.approx(alone["metrics"]["test/loss"], abs=1e-5)


@pytest.mark.parametrize("pack", ["null", "2"])
def test_an_epoch_without_validation_shows_none(pack, tmp_path):
    """check_val_every_n_epoch=2 over 3 epochs validates after epoch 1 only: epochs 0 and 2 have
    no val/ values in metrics.csv, lone or packed (both hold the last validation's)."""
    args = [*QUIET, *TINY, "trainer.max_epochs=3", "+trainer.check_val_every_n_epoch=2"]
    done = rnnbench_cli([*args, f"pack={pack}", "hydra.run.dir=run"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "run" / ("member-0" if pack == "2" else "")
    rows = read_trace(folder / "metrics.csv")
    assert list(rows["epoch"]) == [0, 1, 2]
    assert list(rows["val/loss"].notna()) == [False, True, False]
    assert rows["train/loss"].notna().all()


def test_a_diverged_member_is_frozen_and_the_others_train_on(tmp_path):
    """One member's learning rate blows its loss up: it is recorded diverged, the other
    completes exactly as its lone run does."""
    base = [*TINY, "model=rnn_relu", "optim=sgd", "scheduler=none", "+trainer.precision=64-true"]
    members = []
    for k, lr in enumerate([0.5, 1e6]):
        cfg = compose([*QUIET, *base, "seed=3", f"optim.lr={lr}"])
        members.append(Member(cfg, tmp_path / "pack" / f"member-{k}", [f"optim.lr={lr}"]))
    sane, wild = run_pack(members, tmp_path / "pack")
    assert wild["status"] == "diverged"
    assert any("non-finite" in note for note in wild["notes"])
    assert sane["status"] == "completed"
    alone = lone([*base, "seed=3", "optim.lr=0.5"], tmp_path / "lone")
    assert sane["run_key"] == alone["run_key"]
    assert sane["metrics"]["test/loss"] == pytest.approx(alone["metrics"]["test/loss"], abs=1e-5)
    assert math.isfinite(sane["metrics"]["test/loss"])
    # The diverged member's steps stop where its loss stopped being finite.
    assert len(losses(wild["run_dir"])) < len(losses(sane["run_dir"]))


def test_packed_members_show_in_the_table_as_ordinary_runs(tmp_path):
    pack_of([*TINY, "seed=5", "pack=3"], tmp_path / "runs" / "p")
    script = Path(sys.executable).parent / "rnnbench-table"
    done = subprocess.run(
        [str(script), str(tmp_path / "runs"), "--format", "csv"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # The three members are three seeds of one configuration: one cell, mean ± std over 3.
    (row,) = pd.read_csv(io.StringIO(done.stdout)).to_dict("records")
    assert row["n"] == 3 and row["configs"] == 1 and row["diverged"] == 0 and row["std"] > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("pack=0", "pack=0 is not allowed"),
        ("pack=two", "pack='two' is not allowed"),
        ("model.tbptt=10", "needs model.tbptt=null"),
    ],
)
def test_bad_pack_settings_are_refused_in_one_line(override, message, tmp_path):
    args = [*TINY, "logger=none", "pack=2", override]
    assert_refused(rnnbench_cli(args, tmp_path), message, tmp_path)


def test_a_single_run_pack_leaves_its_members_and_pack_json(tmp_path):
    members = pack_of([*TINY, "seed=7", "pack=2"], tmp_path / "p")
    described = json.loads((tmp_path / "p" / "pack.json").read_text())
    assert described["status"] == "ended"
    assert [m["run_key"] for m in described["members"]] == [m["run_key"] for m in members]
    for k, m in enumerate(members):
        assert Path(m["run_dir"]) == (tmp_path / "p" / f"member-{k}").resolve()
        assert (Path(m["run_dir"]) / "metrics.csv").is_file()
        assert m["timing"]["packed"] == 2
    # A completed pack keeps no resume checkpoint (checkpoints.keep=best).
    assert not (tmp_path / "p" / "checkpoints" / "last.ckpt").exists()


def test_a_killed_pack_resumes_exactly(tmp_path):
    """SIGKILL after the first epoch, relaunch: each member's metrics, metrics.csv and steps.csv
    are the uninterrupted pack's (dropout on: the masks' random state is resumed too)."""
    args = [*QUIET, "data.train_strings=1000", "model.dropout=0.2", "model.hidden_size=32"]
    args += ["trainer.max_epochs=4", "pack=2"]
    (tmp_path / "a").mkdir()
    done = rnnbench_cli([*args, "hydra.run.dir=whole"], cwd=tmp_path / "a")
    assert done.returncode == 0, done.stderr[-3000:]
    cwd = tmp_path / "b"
    cwd.mkdir()
    killed = cwd / "killed"
    proc = popen([*args, f"hydra.run.dir={killed}"], cwd=cwd)
    metrics = killed / "member-1" / "metrics.csv"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, proc)
    time.sleep(0.3)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "member-0" / "result.json").exists()
    resumed = rnnbench_cli([*args, f"hydra.run.dir={killed}"], cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for k in range(2):
        a = json.loads((tmp_path / "a" / "whole" / f"member-{k}" / "result.json").read_text())
        b = json.loads((killed / f"member-{k}" / "result.json").read_text())
        assert b["status"] == "completed" and b["resume"]["exact"] is True
        assert b["metrics"] == a["metrics"]
        assert b["timing"]["steps"] == a["timing"]["steps"]
        for name in ("metrics.csv", "steps.csv"):
            whole = tmp_path / "a" / "whole" / f"member-{k}" / name
            assert (killed / f"member-{k}" / name).read_text() == whole.read_text(), name


def test_each_member_is_its_own_wandb_run(tmp_path):
    """W&B (offline) gets one run per member, with its epochs' and steps' history and its
    record's numbers in the summary, as a lone run would have."""
    args = [*TINY, "logger=wandb", "trainer.enable_progress_bar=false", "pack=2"]
    done = rnnbench_cli([*args, "hydra.run.dir=p"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = records(tmp_path / "p")
    assert len(found) == 2 and len({r["wandb"]["id"] for r in found}) == 2
    for r in found:
        [log] = Path(r["run_dir"]).glob("wandb/offline-run-*/run-*.wandb")
        recs = wandb_records(log)
        history = [
            {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in x.history.item
            }
            for x in recs
            if x.WhichOneof("record_type") == "history"
        ]
        val = [h["val/loss"] for h in history if "val/loss" in h]
        assert val == pytest.approx(
            list(read_trace(Path(r["run_dir"]) / "metrics.csv")["val/loss"])
        )
        assert any("train/batch_loss" in h for h in history)
        summary = {
            item.key: json.loads(item.value_json)
            for x in recs
            if x.WhichOneof("record_type") == "summary"
            for item in x.summary.update
            if item.key
        }
        assert summary["run_key"] == r["run_key"]
        assert summary["test/loss"] == pytest.approx(r["metrics"]["test/loss"])


def test_a_big_pack_prints_one_summary(tmp_path):
    """pack=K prints one summary, its members in a table of at most 10 lines, and its members'
    W&B runs print nothing (a pack of 1,000 printed 12,968 lines, 30 a member)."""
    args = [
        "data.train_strings=50",
        "data.valid_strings=10",
        "data.test_strings=10",
        "model.hidden_size=4",
        "model.num_layers=1",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "pack=14",
        "hydra.run.dir=p",
    ]
    done = rnnbench_cli(args, cwd=tmp_path)  # logger=wandb, offline: the default
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) <= 30, "\n".join(lines)
    assert sum("rnnbench-table" in x for x in lines) == 1
    assert "... and 4 more" in done.stdout
    assert "14 completed" in done.stdout and "14 offline W&B runs" in done.stdout
    assert len(records(tmp_path / "p")) == 14
