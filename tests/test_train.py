"""Real training runs through the real Trainer: every cell on real PTB, Reber to its optimum,
divergence recorded as a finding, determinism."""

import csv
import json
import math

import pytest

from conftest import require_data, train

TINY = [
    "optim.lr=0.02",
    "model.hidden_size=16",
    "model.num_layers=1",
    "data.batch_size=8",
    "data.bptt=10",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=3",
    "trainer.limit_test_batches=3",
]
SMALL_REBER = [
    "data.train_strings=300",
    "data.valid_strings=60",
    "data.test_strings=60",
    "model.hidden_size=24",
    "model.num_layers=1",
    "trainer.max_epochs=2",
]


@pytest.mark.parametrize("data", ["ptb_word", "ptb_char"])
@pytest.mark.parametrize("cell", ["rnn", "rnn_relu", "gru", "lstm"])
def test_every_cell_trains_on_real_ptb(data, cell, tmp_path):
    require_data("ptb/ptb.train.txt" if data == "ptb_word" else "ptb_char/ptb.char.train.txt")
    record = train([f"data={data}", f"model={cell}", *TINY], tmp_path)
    assert record["status"] == "completed"
    metrics = record["metrics"]
    vocab = 10_000 if data == "ptb_word" else 50
    for split in ("val", "test"):
        assert math.isfinite(metrics[f"{split}/ppl"])
        assert metrics[f"{split}/ppl"] == pytest.approx(math.exp(metrics[f"{split}/loss"]))
        # Six steps must already beat the uniform guess over the vocabulary.
        assert metrics[f"{split}/ppl"] < vocab
    if data == "ptb_char":
        assert metrics["test/bpc"] == pytest.approx(metrics["test/loss"] / math.log(2))
    assert record["timing"]["steps"] == 6 and record["timing"]["items_per_s"] > 0
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["metrics"] == metrics and on_disk["run_key"] == record["run_key"]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == 1 and float(rows[0]["val/ppl"]) == pytest.approx(metrics["val/ppl"])


def test_scratch_cells_train_too(tmp_path):
    require_data("ptb/ptb.train.txt")
    record = train(
        ["data=ptb_word", "model=gru", "model.impl=scratch", "model.gru_reset=before", *TINY],
        tmp_path,
    )
    assert record["status"] == "completed" and record["metrics"]["test/ppl"] < 10_000


def test_lstm_reaches_the_reber_optimum(tmp_path):
    """The default run: an LSTM on embedded Reber within 5% of the exact optimal perplexity,
    which needs the long-range dependency (the outer T/P) learnt, not only the inner grammar."""
    record = train([], tmp_path)
    metrics = record["metrics"]
    assert record["status"] == "completed"
    assert metrics["test/ppl"] <= 1.05 * metrics["test/ppl_optimal"], metrics
    assert metrics["test/ppl"] >= metrics["test/ppl_optimal"] * 0.999  # nobody beats the optimum


def test_same_config_and_seed_give_the_same_metrics(tmp_path):
    first = train(SMALL_REBER, tmp_path / "a")
    second = train(SMALL_REBER, tmp_path / "b")
    assert first["metrics"] == second["metrics"]
    assert first["run_key"] == second["run_key"]
    third = train([*SMALL_REBER, "seed=99"], tmp_path / "c")
    assert third["metrics"]["test/loss"] != first["metrics"]["test/loss"]


def test_exploding_run_is_recorded_as_diverged(tmp_path):
    # A ReLU RNN whose recurrent weights are far too large: the hidden state grows
    # geometrically along the 40-step window until it overflows and the loss is not finite.
    record = train([*SMALL_REBER, "model=rnn_relu", "model.init_range=2.0"], tmp_path)
    assert record["status"] == "diverged"
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "diverged"


def test_clipping_threshold_is_applied_and_preclip_norm_logged(tmp_path):
    record = train(
        [
            *SMALL_REBER,
            "logger=csv",
            "trainer.gradient_clip_val=0.01",
            "trainer.log_every_n_steps=1",
        ],
        tmp_path,
    )
    assert record["status"] == "completed"
    rows = list(csv.DictReader(open(next(tmp_path.glob("csv/*/metrics.csv")))))
    norms = [float(r["train/grad_norm"]) for r in rows if r.get("train/grad_norm")]
    assert len(norms) >= record["timing"]["steps"] - 1
    # The logged norm is the one before clipping: far above the 0.01 threshold.
    assert min(norms) > 0.01


def test_step_decay_schedule_follows_zaremba(tmp_path):
    record = train(
        [
            *SMALL_REBER,
            "optim=sgd",
            "optim.lr=1.0",
            "scheduler=step",
            "scheduler.start_epoch=1",
            "scheduler.factor=2",
            "trainer.max_epochs=3",
        ],
        tmp_path,
    )
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    # start_epoch=1: the first epoch at lr, then halved at the end of each (lr of each epoch).
    assert [float(r["lr"]) for r in rows] == [1.0, 0.5, 0.25]
    assert record["status"] == "completed"


def test_a_run_without_validation_completes(tmp_path):
    """limit_val_batches=0: no val/loss for the plateau schedule or the best checkpoint."""
    record = train([*SMALL_REBER, "trainer.limit_val_batches=0"], tmp_path)
    assert record["status"] == "completed", record["error"]
    assert "val/loss" not in record["metrics"] and "test/ppl" in record["metrics"]


def test_last_checkpoint_is_the_latest_epoch_even_when_validation_does_not_improve(tmp_path):
    """A resume must go on from the newest epoch: with lr 0 validation never improves after the
    first epoch, so best.ckpt stays there while last.ckpt follows every epoch."""
    import torch

    epochs = 3
    args = [*SMALL_REBER, f"trainer.max_epochs={epochs}", "optim.lr=0", "checkpoints.keep=both"]
    record = train(args, tmp_path)
    assert record["status"] == "completed"
    checkpoints = tmp_path / "checkpoints"
    best = torch.load(checkpoints / "best.ckpt", map_location="cpu", weights_only=False)
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert best["global_step"] * epochs == last["global_step"] == record["timing"]["steps"]


def test_a_resumed_run_times_every_epoch(tmp_path):
    """The training time and item count travel in the checkpoint; resumed from one that does
    not carry them (written before they did), the record says its timing is partial."""
    import shutil

    import torch

    first = train(
        [*SMALL_REBER, "trainer.max_epochs=2", "checkpoints.keep=both"], tmp_path / "first"
    )
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    old = torch.load(last, map_location="cpu", weights_only=False)
    del old["callbacks"]["Throughput"]
    for name in ("carried", "untimed"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
    shutil.copyfile(last, tmp_path / "carried" / "checkpoints" / "last.ckpt")
    torch.save(old, tmp_path / "untimed" / "checkpoints" / "last.ckpt")

    carried = train([*SMALL_REBER, "trainer.max_epochs=3"], tmp_path / "carried")["timing"]
    untimed = train([*SMALL_REBER, "trainer.max_epochs=3"], tmp_path / "untimed")["timing"]
    per_epoch = first["timing"]["items"] // 2
    assert carried["items"] == 3 * per_epoch and "partial" not in carried
    assert carried["train_s"] > first["timing"]["train_s"]
    assert untimed["items"] == per_epoch and untimed["partial"] is True
