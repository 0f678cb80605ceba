"""Noise and disk: what a run prints when nobody watches a terminal, which Lightning notes it no
longer sets off, what its log file keeps, and which checkpoints `checkpoints.keep` leaves behind.

Two real `rnnbench` subprocesses (pipes, so stdout is no terminal): the tiny Reber run on
trainer=debug with the CSV logger, and on trainer=ddp (2 CPU processes); four tiny in-process
runs for the runs that do not complete and a resume; the rest reads what those left.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from conftest import TINY_REBER, TINY_REBER_RUN, assert_refused, rnnbench_cli, train
from rnnbench.config import compose
from rnnbench.results.record import CHECKPOINT_DIR, LAST_CKPT, find_resumable, identity, run_key
from rnnbench.results.summary import format_summary
from rnnbench.run.checkpoints import drop_checkpoints
from rnnbench.run.train import run

BEST_CKPT = f"{CHECKPOINT_DIR}/best.ckpt"
# The Lightning notes our defaults set off before (their texts as Lightning 2.6 prints them):
NOTES = {
    # conf/trainer/default.yaml's limit_*_batches: 1.0, once per split
    "limit": "was configured so 100% of the batches",
    # trainer=debug's 5 batches under the default log_every_n_steps=20, with a logger on
    "log_every": "is smaller than the logging interval Trainer(log_every_n_steps=",
    # trainer=ddp: the task modules log torchmetrics' computed (already reduced) means
    "sync_dist": "sync_dist=True)` when logging on epoch level in distributed setting",
}
LINE = re.compile(r"epoch 1/1 batch (\d)/4 step \1 loss [\d.]+ \([\d.]+ it/s\)")
DONE = re.compile(r"epoch 1/1 done: step 4 val/loss [\d.]+ loss [\d.]+ \([\d.]+ it/s\)")
PIPED = [*TINY_REBER_RUN, "trainer=debug", "logger=csv", "callbacks.progress_bar.line_every=0"]


def assert_no_notes(stderr: str) -> None:
    for name, text in NOTES.items():
        assert text not in stderr, f"{name}: {stderr}"


@pytest.fixture(scope="module")
def piped(tmp_path_factory):
    """The tiny run on trainer=debug with a logger, its output read through pipes, a line per
    batch; checkpoints.keep at its default."""
    cwd = tmp_path_factory.mktemp("piped")
    run_dir = cwd / "runs" / "piped"
    result = rnnbench_cli([*PIPED, f"hydra.run.dir={run_dir}"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, run_dir


def test_a_piped_run_prints_plain_lines_not_redraws(piped):
    """Every line before the summary is one of ours: a bar's redraws would be more lines here
    (text mode reads each carriage return as a line end), with its cursor moves."""
    result, _ = piped
    progress = result.stdout[: result.stdout.index("-" * 72)].splitlines()
    assert [int(m[1]) for m in map(LINE.fullmatch, progress) if m] == [1, 2, 3, 4], progress
    assert len(progress) == 5 and DONE.fullmatch(progress[-1]), progress
    assert "\x1b[" not in result.stdout and "\r" not in result.stderr


def test_the_console_summary_lands_in_the_runs_log_file(piped):
    result, run_dir = piped
    summary = result.stdout[result.stdout.index("-" * 72) :].strip()
    assert "status      completed" in summary
    assert summary in (run_dir / "train.log").read_text()


def test_trainer_debug_sets_off_no_logging_interval_warning_and_logs_every_step(piped):
    result, run_dir = piped
    assert_no_notes(result.stderr)
    with open(run_dir / "csv" / "version_0" / "metrics.csv", newline="") as f:
        logged = [row["step"] for row in csv.DictReader(f) if row["train/batch_loss"]]
    assert logged == ["1", "2", "3", "4"]  # every step's loss reached the logger


def test_by_default_a_completed_run_keeps_best_ckpt_only(piped):
    _, run_dir = piped
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "completed" and record["tested"] == "best"
    assert record["config"]["checkpoints"]["keep"] == "best"
    assert (run_dir / BEST_CKPT).is_file() and not (run_dir / LAST_CKPT).exists()


def test_a_completed_folder_without_last_ckpt_is_reused_never_resumed(piped):
    """A relaunch of the completed configuration reuses its record; no search for a checkpoint
    to resume from returns its folder."""
    _, run_dir = piped
    root = run_dir.parent
    cfg = compose([*PIPED, f"results_root={root}"])
    key = run_key(OmegaConf.to_container(cfg, resolve=True))
    assert find_resumable(root, key) == []
    again = run(cfg, root / "again")
    assert Path(again["reused_from"]) == run_dir.resolve() and again["status"] == "completed"
    assert not (root / "again" / CHECKPOINT_DIR).exists()


def test_ddp_sets_off_no_sync_dist_or_limit_notes_and_keeps_last(tmp_path):
    """trainer=ddp: 2 processes, one line of progress (rank zero's), and checkpoints.keep=last
    deletes best.ckpt once the test scored it."""
    run_dir = tmp_path / "runs" / "ddp"
    args = [*TINY_REBER_RUN, "trainer=ddp", "logger=none", "checkpoints.keep=last"]
    result = rnnbench_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run_dir / "result.json").read_text())
    assert record["env"]["world_size"] == 2  # it did run distributed (Lightning's count)
    assert "device      cpu, 2 processes" in result.stdout
    assert_no_notes(result.stderr)
    progress = result.stdout[: result.stdout.index("-" * 72)].splitlines()
    assert len(progress) == 1 and DONE.fullmatch(progress[0]), progress  # line_every: 30 s
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "completed" and record["tested"] == "best"
    assert (run_dir / LAST_CKPT).is_file() and not (run_dir / BEST_CKPT).exists()


class EndAtTest(pl.Callback):
    """Ends a run as its test starts, after both checkpoints were written: SystemExit is how an
    interrupt (Ctrl-C, SIGTERM) leaves Lightning; any other exception fails the run. Put in the
    progress bar's entry, which is not part of the run_key, so the same configuration can be
    relaunched without it."""

    def __init__(self, raises: str = "SystemExit", **_ignored) -> None:
        self.raises = raises

    def on_test_start(self, trainer, pl_module) -> None:
        if self.raises == "SystemExit":
            raise SystemExit(143)
        raise RuntimeError("the test split cannot be read")


ENDS = [f"callbacks.progress_bar._target_={__name__}.EndAtTest"]
NOT_COMPLETED = {
    "failed": [*ENDS, "+callbacks.progress_bar.raises=RuntimeError"],
    "diverged": ["model=rnn", "optim.lr=1e6"],
}


def test_keep_none_spares_a_run_that_did_not_complete(tmp_path):
    """Interrupted: last.ckpt stays for the relaunch, which resumes from it, completes, and
    only then drops last.ckpt (keep=best, the default)."""
    with pytest.raises(SystemExit):
        train([*TINY_REBER, *ENDS, "checkpoints.keep=none"], tmp_path)
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "interrupted"
    assert (tmp_path / LAST_CKPT).is_file() and (tmp_path / BEST_CKPT).is_file()

    record = train(TINY_REBER, tmp_path)
    assert record["status"] == "completed" and record["resume"]["exact"] is True
    assert (tmp_path / BEST_CKPT).is_file() and not (tmp_path / LAST_CKPT).exists()


@pytest.mark.parametrize("status", NOT_COMPLETED)
def test_keep_none_spares_a_failed_or_diverged_run(tmp_path, status):
    """Failed and diverged runs keep both checkpoints, to be examined (or, failed, resumed)."""
    try:
        record = train([*TINY_REBER, *NOT_COMPLETED[status], "checkpoints.keep=none"], tmp_path)
    except RuntimeError:
        record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == status
    assert (tmp_path / LAST_CKPT).is_file() and (tmp_path / BEST_CKPT).is_file()


@pytest.mark.parametrize(
    ("keep", "scored", "left"),
    [
        ("best", "best", {"best.ckpt"}),
        ("last", "best", {"last.ckpt"}),
        ("both", "best", {"best.ckpt", "last.ckpt"}),
        ("none", "best", None),
        ("best", "last", {"last.ckpt"}),  # no validation ran: the test scored the last weights
        ("none", "last", None),
    ],
)
def test_what_each_keep_leaves(tmp_path, keep, scored, left):
    """`left`: the files left in checkpoints/ (None: the folder went too)."""
    folder = tmp_path / CHECKPOINT_DIR
    folder.mkdir()
    made = {"best.ckpt", "last.ckpt"} if scored == "best" else {"last.ckpt"}
    for name in made:
        (folder / name).write_bytes(b"weights")
    best = folder / "best.ckpt" if scored == "best" else None
    dropped = drop_checkpoints(tmp_path, keep, best)
    assert (set(p.name for p in folder.iterdir()) if folder.exists() else None) == left
    assert {p.name for p in dropped} == made - (left or set())


def test_a_bad_keep_is_refused_in_one_line(tmp_path):
    result = rnnbench_cli([*TINY_REBER_RUN, "checkpoints.keep=most"], cwd=tmp_path)
    assert result.returncode == 2
    assert_refused(
        result, "checkpoints.keep='most' is unknown: use one of best, last, both, none", tmp_path
    )


def test_keep_is_not_part_of_the_run_key():
    keys = {
        run_key(OmegaConf.to_container(compose([f"checkpoints.keep={k}"]), resolve=True))
        for k in ("best", "last", "both", "none")
    }
    assert len(keys) == 1
    assert "checkpoints" not in identity(OmegaConf.to_container(compose([]), resolve=True))


class EndInSecondEpoch(pl.Callback):
    """Interrupts a run at its second epoch's first batch, after ResumeCheckpoint wrote last.ckpt
    there: the relaunch resumes inside an epoch whose start it never sees. In the progress bar's
    entry, like EndAtTest, so the relaunch has the same run_key."""

    def __init__(self, **_ignored) -> None:
        pass

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 1:
            raise SystemExit(143)


def test_a_resumed_runs_progress_lines_time_this_process_only(tmp_path, capsys):
    """The rate on a resumed epoch's lines counts the batches and seconds of this process: no
    line may claim fewer batches a second than one batch over the whole relaunch took (a clock
    never started reads as seconds since boot, and shows a rate near zero)."""
    two_epochs = [*TINY_REBER, "trainer.max_epochs=2"]
    with pytest.raises(SystemExit):
        train(
            [*two_epochs, f"callbacks.progress_bar._target_={__name__}.EndInSecondEpoch"], tmp_path
        )
    capsys.readouterr()
    shown = ["trainer.enable_progress_bar=true", "callbacks.progress_bar.line_every=0"]
    began = time.monotonic()
    record = train([*two_epochs, *shown], tmp_path)
    took = time.monotonic() - began
    out = capsys.readouterr().out
    assert record["status"] == "completed" and record["resume"]["exact"] is True
    rates = [float(m[1]) for m in re.finditer(r"^epoch 2/2 .*\((\S+) it/s\)$", out, re.M)]
    assert len(rates) == 5, out  # four batches and the epoch's end
    assert min(rates) >= 0.99 / took, (rates, took)


REPO = Path(__file__).resolve().parent.parent


def make_run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`make run ARGS=...` from the repo root as the README shows it, with this test's Python
    environment as the Makefile's VENV; -o: never reinstall it (the stamp is taken as made)."""
    venv = Path(sys.executable).parent.parent
    runs = tmp_path / "runs"
    make = ["make", "--no-print-directory", "-o", f"{venv}/.installed", "run", f"VENV={venv}"]
    make.append("ARGS=" + shlex.join([*args, f"results_root={runs}"]))
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("RNNBENCH_RUNS_DIR", None)
    return subprocess.run(make, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["rnnbench", "make run"])
def test_a_default_run_prints_its_summary_and_little_else(how, tmp_path):
    """The default logger (W&B, offline) and trainer: progress, our summary with the W&B sync
    hint, and no banners, adverts or warnings from Lightning or W&B. `make run` adds the line
    naming the command it runs."""
    args = [*TINY_REBER_RUN, "trainer.enable_progress_bar=false"]
    if how == "make run":
        done = make_run(args, tmp_path)
    else:
        done = rnnbench_cli(args, cwd=tmp_path, fresh=True)  # its import-time lines too
    assert done.returncode == 0, done.stderr[-3000:]
    printed = (done.stdout + done.stderr).splitlines()
    besides_progress = [line for line in printed if not line.startswith("epoch ")]
    assert len(besides_progress) <= 15 + (how == "make run"), "\n".join(printed)
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("result.json")]
    assert record["status"] == "completed"
    for noise in ("GPU available", "TPU available", "Tip", "wandb:", "Restoring states"):
        assert not any(noise in line for line in printed), (noise, "\n".join(printed))
    assert "warning" not in done.stderr.lower(), done.stderr
    assert any("upload it: wandb sync" in line for line in printed)
    # trainer.accelerator=auto found this machine's device, and the summary says which.
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert f"device      {device}" in done.stdout


def test_a_completed_run_keeps_weights_only_and_loads_for_use(tmp_path):
    """best.ckpt carries the weights alone (the optimizer state was last.ckpt's, gone once the
    run completed), and rnnbench.load_model rebuilds the model with exactly those weights."""
    import rnnbench
    from rnnbench.run.checkpoints import load_checkpoint

    record = train([*TINY_REBER, "trainer.max_epochs=2", "optim=adam"], tmp_path)
    assert record["status"] == "completed"
    kept = load_checkpoint(tmp_path / BEST_CKPT)
    assert "optimizer_states" not in kept and not (tmp_path / LAST_CKPT).exists()
    model = rnnbench.load_model(tmp_path)
    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == {k.removeprefix("model.") for k in kept["state_dict"]}
    for name, weight in kept["state_dict"].items():
        assert torch.equal(loaded[name.removeprefix("model.")], weight), name

    # No validation ran: the scored last.ckpt is the one kept, as weights too.
    other = tmp_path / "no_val"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        record = train([*TINY_REBER, "optim=adam", "trainer.limit_val_batches=0"], other)
    assert record["status"] == "completed" and record["tested"] == "last"
    # The harness tests last.ckpt on purpose: Lightning's notes on the missing val/loss are
    # expected ones, and the summary says validation did not run rather than leave it blank.
    assert not [w for w in caught if "val/loss" in str(w.message)], [str(w.message) for w in caught]
    assert re.search(r"^val +not run$", format_summary(record), re.M), format_summary(record)
    assert "optimizer_states" not in load_checkpoint(other / LAST_CKPT)
    assert rnnbench.load_model(other) is not None


def test_the_readme_scores_a_sentence_with_a_trained_language_model(tmp_path, capsys):
    """The README's use of `rnnbench.load_run`, run as written on a real PTB run: it encodes a
    sentence with the run's vocabulary and gives its perplexity and the next word."""
    from conftest import require_data

    root = require_data("ptb/ptb.train.txt")
    run_dir = tmp_path / "ptb_word_lstm"
    tiny = ["model.hidden_size=16", "data.batch_size=8", "data.bptt=10", "trainer.max_epochs=1"]
    tiny += [f"trainer.limit_{split}_batches=3" for split in ("train", "val", "test")]
    assert train(["data=ptb_word", "model=lstm", *tiny], run_dir)["status"] == "completed"
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "load_run(" in b]
    example = re.search(r'load_run\("([^"]+)"\)', block).group(1)
    exec(block.replace(example, str(run_dir)), {})  # noqa: S102 - the README's own code
    said = re.fullmatch(r"perplexity ([\d.]+), next word (\S+)\n", capsys.readouterr().out)
    assert said, said
    vocab = set((root / "ptb" / "ptb.train.txt").read_text().split()) | {"<eos>"}
    # Three steps of training: a perplexity (finite, above 1), and a word of the vocabulary.
    assert 1 < float(said[1]) < float("inf") and said[2] in vocab, said.groups()


def test_a_stop_signal_once_the_run_has_ended_waits_for_its_record(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, SLURM's warning) that comes as a completed run starts writing its
    record does not cut short the writing, the loggers' finish or the dropping of the optimizer
    state: it waits, then reaches the handler from before the run, and the command says the
    run had ended."""
    from rnnbench.run import train as lone
    from rnnbench.run.launch import stopped_how

    class StoppedAsItEnds(lone.LoneRun):
        def finish(self, refused: bool) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            super().finish(refused)

    monkeypatch.setattr(lone, "LoneRun", StoppedAsItEnds)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C
    try:
        with pytest.raises(KeyboardInterrupt):
            train([*TINY_REBER, "trainer.max_epochs=2", "optim=adam"], tmp_path)
    finally:
        signal.signal(signal.SIGINT, before)
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "completed" and record["finished"] is not None
    assert not (tmp_path / LAST_CKPT).exists() and (tmp_path / BEST_CKPT).exists()
    assert stopped_how(tmp_path) == "stopped after it ended completed"
