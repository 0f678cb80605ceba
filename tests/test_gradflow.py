"""Gradient flow through time: the probe's ‖∂L/∂h_t‖ against a recurrence unrolled by hand,
against the spectral-norm bound of a tanh RNN, inside a real Lightning fit (CSV and W&B), and the
`rnnbench-gradflow` command end to end."""

import copy
import csv
import json
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from conftest import require_data, train
from rnnbench.data.music import PolyphonicMusic
from rnnbench.data.reber import EmbeddedReber
from rnnbench.data.sst2 import SST2
from rnnbench.data.synthetic import AddingProblem, CopyMemory
from rnnbench.gradflow_experiment import main, run_labels
from rnnbench.nn.model import SequenceModel
from rnnbench.run.gradflow import GradFlow, hidden_grad_norms
from rnnbench.run.module import TASKS, RegressionTask

B, T, IN, HID = 3, 6, 2, 5
JSB = ["poly_music/JSB_Chorales.mat"]


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation, which on a
    busy machine turns milliseconds into seconds (this file: 74 s on two threads, 13 s on one,
    on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hand_step(cell: str, gx, gh, h, c):
    """One step of the seed equations, from the input and recurrent projections."""
    if cell == "rnn":
        return torch.tanh(gx + gh), c
    if cell == "lstm":
        i, f, g, o = (gx + gh).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    # gru, with the reset gate applied after the matmul as torch.nn.GRU does
    (xr, xz, xn), (hr, hz, hn) = gx.chunk(3, dim=1), gh.chunk(3, dim=1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    return (1 - z) * torch.tanh(xn + r * hn) + z * h, c


def hand_unrolled(model: SequenceModel, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The model's forward pass written from the equations, one tensor per h_t of every layer
    and direction (listed in input time order): an autograd reference that shares no code
    with the probe or the stacks."""
    stack, weights = model.stack, dict(model.stack.rnn.named_parameters())
    hidden, inputs, finals = {}, x, []
    for layer in range(stack.num_layers):
        outputs = []
        for direction, suffix in zip(("forward", "backward"), ("", "_reverse"), strict=True):
            if direction == "backward" and not stack.bidirectional:
                break
            w_ih, w_hh, b_ih, b_hh = (
                weights[f"{w}_l{layer}{suffix}"]
                for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            order = range(x.size(1)) if direction == "forward" else reversed(range(x.size(1)))
            h = c = x.new_zeros(x.size(0), HID)
            hs = {}
            for t in order:
                h, c = hand_step(stack.cell, inputs[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh, h, c)
                hs[t] = h
            finals.append(h)
            hidden[(layer, direction)] = [hs[t] for t in range(x.size(1))]
            outputs.append(torch.stack(hidden[(layer, direction)], dim=1))
        inputs = torch.cat(outputs, dim=2)
    top = torch.cat(finals[-stack.directions :], dim=1) if model.readout == "last" else inputs
    return model.head(top), hidden


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("readout", ["last", "all"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("impl", ["fused", "scratch"])
def test_norms_match_a_hand_unrolled_recurrence(cell, readout, bidirectional, impl):
    torch.manual_seed(0)
    model = SequenceModel(
        3,
        input_size=IN,
        readout=readout,
        causal=False,
        cell=cell,
        impl=impl,
        hidden_size=HID,
        num_layers=2,
        bidirectional=bidirectional,
    ).double()
    x, target = torch.randn(B, T, IN, dtype=torch.float64), torch.randn(B, 3, dtype=torch.float64)

    def loss_fn(out):  # the final step's loss, or the per-step losses summed over steps
        wanted = target if readout == "last" else target[:, None]
        return ((out - wanted) ** 2).sum(-1).mean(0).sum()

    frame = hidden_grad_norms(model, x, loss_fn)

    out, hidden = hand_unrolled(model, x)
    loss = loss_fn(out)
    grads = torch.autograd.grad(loss, [h for hs in hidden.values() for h in hs])
    expected = pd.DataFrame(
        [(*key, t) for key in hidden for t in range(1, T + 1)],
        columns=["layer", "direction", "t"],
    )
    expected["norm"] = [g.norm().item() for g in grads]
    expected["loss"] = loss.item()
    assert set(frame["direction"]) == ({"forward", "backward"} if bidirectional else {"forward"})
    pd.testing.assert_frame_equal(
        frame.sort_values(["layer", "direction", "t"], ignore_index=True),
        expected.sort_values(["layer", "direction", "t"], ignore_index=True),
        rtol=1e-10,
    )
    assert all(p.grad is None for p in model.parameters())  # the model is left untouched


def test_padded_bidirectional_rows_match_each_row_alone():
    """Padding handled as the stacks handle it: the batch's squared norm at t is the sum over
    the rows that reach t of (that row's norm, run alone and unpadded / B)², the 1/B being
    the batch mean in the loss."""
    torch.manual_seed(1)
    model = SequenceModel(
        4,
        input_size=IN,
        readout="last",
        causal=False,
        cell="lstm",
        hidden_size=HID,
        num_layers=2,
        bidirectional=True,
    ).double()
    x = torch.randn(B, T, IN, dtype=torch.float64)
    y, lengths = torch.tensor([0, 3, 1]), torch.tensor([T, 4, 2])
    batch = hidden_grad_norms(model, x, lambda out: F.cross_entropy(out, y), lengths)

    squares = pd.Series(0.0, index=batch.set_index(["layer", "direction", "t"]).index)
    for row in range(B):
        n = int(lengths[row])
        alone = hidden_grad_norms(
            model, x[row : row + 1, :n], lambda out, r=row: F.cross_entropy(out, y[r : r + 1])
        )
        for key, norm in alone.set_index(["layer", "direction", "t"])["norm"].items():
            squares[key] += (norm / B) ** 2
    measured = batch.set_index(["layer", "direction", "t"])["norm"]
    assert (measured > 0).all()
    # The probe's padded forward pass is the model's own (packed sequences in torch.nn.LSTM).
    own = F.cross_entropy(model.eval()(x, lengths=lengths)[0], y).item()
    assert batch["loss"].iloc[0] == pytest.approx(own, rel=1e-12)
    pd.testing.assert_series_equal(measured, squares.pow(0.5), check_names=False, rtol=1e-10)


def tanh_rnn(w_hh: torch.Tensor, input_scale: float, bias: bool) -> tuple:
    """A one-layer tanh RNN with the given recurrent matrix, loss at the final step only."""
    torch.manual_seed(2)
    hidden = w_hh.size(0)
    model = SequenceModel(
        1,
        input_size=1,
        readout="last",
        causal=False,
        cell="rnn",
        hidden_size=hidden,
        num_layers=1,
    ).double()
    with torch.no_grad():
        model.stack.rnn.weight_hh_l0.copy_(w_hh)
        if not bias:
            model.stack.rnn.bias_ih_l0.zero_()
            model.stack.rnn.bias_hh_l0.zero_()
    x = input_scale * torch.randn(4, 30, 1, dtype=torch.float64)
    frame = hidden_grad_norms(model, x, lambda out: F.mse_loss(out, torch.ones_like(out)))
    norm = frame.set_index("t")["norm"]
    return norm[1] / norm[30], frame


def scaled(matrix: torch.Tensor, spectral_norm: float) -> torch.Tensor:
    return matrix * spectral_norm / torch.linalg.matrix_norm(matrix, ord=2)


def test_contracting_tanh_rnn_obeys_the_spectral_bound():
    """h_{t+1} = tanh(W_xh x + W_hh h_t + b), so ∂h_{t+1}/∂h_t = diag(tanh'(·)) W_hh with
    0 < tanh' ≤ 1: ‖∂h_{t+1}/∂h_t‖₂ ≤ ‖W_hh‖₂ = σ. With the loss at step T only,
    ∂L/∂h_1 = J_2ᵀ ⋯ J_Tᵀ ∂L/∂h_T row by row, hence ‖∂L/∂h_1‖ ≤ σ^(T-1) ‖∂L/∂h_T‖ over the
    batch too: the constant is 1. An orthogonal W_hh in the linear regime (tanh' ≈ 1) meets
    the bound with equality, so the bound is measured, not vacuous."""
    torch.manual_seed(3)
    bound = 0.5**29
    generic = scaled(torch.randn(16, 16, dtype=torch.float64), 0.5)
    ratio, _ = tanh_rnn(generic, input_scale=1.0, bias=True)
    assert 0 < ratio <= bound * (1 + 1e-9)

    orthogonal = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))[0]
    tight, _ = tanh_rnn(0.5 * orthogonal, input_scale=1e-8, bias=False)
    assert tight == pytest.approx(bound, rel=1e-6)


def test_expanding_tanh_rnn_breaks_that_bound():
    """The same argument with σ = 1.5 and an orthogonal W_hh in the linear regime gives
    ‖∂L/∂h_1‖/‖∂L/∂h_T‖ = 1.5^(T-1): exploding, and 3^(T-1) times over the σ = 0.5 bound."""
    torch.manual_seed(4)
    orthogonal = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))[0]
    ratio, frame = tanh_rnn(1.5 * orthogonal, input_scale=1e-10, bias=False)
    assert ratio == pytest.approx(1.5**29, rel=1e-4)
    assert ratio > 1e6 * 0.5**29
    assert frame["norm"].is_monotonic_decreasing  # grows backwards in time, step after step


def adding(seq_len: int = 12, batch_size: int = 8) -> AddingProblem:
    data = AddingProblem(
        seq_len=seq_len, train_size=64, valid_size=8, test_size=8, batch_size=batch_size, seed=5
    )
    data.setup()
    return data


def fit(callbacks: list, max_steps: int = 7, logger=False) -> tuple[RegressionTask, nn.Module]:
    """A real Lightning fit of a 2-layer LSTM on the adding problem, dropout between layers;
    returns the trained task and a copy of the model as it was before training."""
    data = adding()
    pl.seed_everything(6, verbose=False)
    model = SequenceModel(cell="lstm", hidden_size=8, num_layers=2, dropout=0.3, **data.model_io())
    task = RegressionTask(model, partial(torch.optim.Adam, lr=0.05))
    initial = copy.deepcopy(model)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(task, datamodule=data)
    return task, initial


def mse_on(batch):
    return lambda out: F.mse_loss(out, batch["y"])


def test_callback_records_the_probe_during_a_real_fit(tmp_path):
    flow = GradFlow(every_n_steps=3, path=tmp_path / "gradflow.csv")
    task, initial = fit([flow])

    rows = pd.read_csv(tmp_path / "gradflow.csv")
    assert list(rows.columns) == ["step", "layer", "direction", "t", "norm", "loss"]
    assert sorted(set(rows["step"])) == [0, 3, 6, 7]  # start, every 3 steps, the end
    assert (rows.groupby("step").size() == 2 * 12).all()
    pd.testing.assert_frame_equal(rows, flow.frame, check_dtype=False)

    # The probe batch is the first training batch, measured before and after the updates.
    first = next(iter(adding().train_dataloader()))
    assert torch.equal(flow.probe["x"], first["x"])
    first = {k: v.double() for k, v in first.items()}
    for step, model in ((0, initial), (7, task.model)):
        expected = hidden_grad_norms(model, first["x"], mse_on(first))
        measured = rows[rows["step"] == step].drop(columns="step").reset_index(drop=True)
        pd.testing.assert_frame_equal(measured, expected, check_dtype=False, rtol=1e-9)
    assert not rows[rows["step"] == 0]["norm"].equals(rows[rows["step"] == 7]["norm"])

    # Measuring draws no random number and writes no gradient: training is unchanged by it.
    plain, _ = fit([])
    for (name, a), (_, b) in zip(task.named_parameters(), plain.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def task_data(kind: str):
    """A small real datamodule of each task kind the callback has to handle."""
    if kind == "lm":
        return EmbeddedReber(train_strings=40, valid_strings=8, test_strings=8, batch_size=4)
    if kind == "steps":
        return CopyMemory(seq_len=8, train_size=16, valid_size=4, test_size=4, batch_size=4)
    if kind == "classify":  # padded sentences with `lengths`
        return SST2(root=str(require_data("sst2/train.tsv", "sst2/dev.tsv")), batch_size=4)
    # multilabel: padded pieces with a `mask`
    return PolyphonicMusic("jsb", batch_size=2, root=str(require_data(*JSB)))


@pytest.mark.parametrize("kind", ["lm", "steps", "classify", "multilabel"])
def test_callback_handles_every_task_kind(kind, tmp_path):
    """The probe's loss is the module's own loss on the probe batch: the same for a final-step
    task, summed over steps (T × the per-step mean, or frames / B × the per-frame mean where
    padding is masked) for per-step tasks."""
    data = task_data(kind)
    data.setup()
    pl.seed_everything(7, verbose=False)
    model = SequenceModel(cell="gru", hidden_size=8, num_layers=1, **data.model_io())
    initial = copy.deepcopy(model)
    task = TASKS[data.task](model, partial(torch.optim.Adam, lr=0.01))
    flow = GradFlow(every_n_steps=1, path=tmp_path / "gradflow.csv", probe_size=2)
    pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[flow],
    ).fit(task, datamodule=data)

    rows = pd.read_csv(tmp_path / "gradflow.csv")
    assert sorted(set(rows["step"])) == [0, 1, 2]
    assert rows["norm"].notna().all() and (rows["norm"] >= 0).all()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in flow.probe.items()}
    steps = batch["x"].size(1)
    assert (rows.groupby("step").size() == steps).all()
    own = TASKS[data.task](initial.double(), None).step(batch, "val").item()
    factor = {
        "lm": steps,
        "steps": steps,
        "classify": 1.0,
        "multilabel": float(batch["mask"].sum()) / batch["x"].size(0)
        if kind == "multilabel"
        else 0,
    }[kind]
    assert rows[rows["step"] == 0]["loss"].iloc[0] == pytest.approx(own * factor, rel=1e-9)
    if "lengths" in batch:  # t counts the rows that reach it: none past the longest
        first = rows[rows["step"] == 0]
        short, long = int(batch["lengths"].min()), int(batch["lengths"].max())
        assert short < long < steps  # the probe rows are padded to their batch's longest
        assert (first[first["t"] > long]["norm"] == 0).all()
        assert (first[first["t"] <= long]["norm"] > 0).all()


def test_callback_logs_a_wandb_table(tmp_path):
    from pytorch_lightning.loggers import WandbLogger

    logger = WandbLogger(project="rnnbench", save_dir=str(tmp_path), mode="offline")
    fit([GradFlow(every_n_steps=2, path=None)], max_steps=2, logger=logger)
    logger.experiment.finish()
    tables = sorted(tmp_path.glob("wandb/offline-run-*/files/media/table/gradflow/norms_*.json"))
    assert len(tables) == 2  # step 0 and step 2
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == ["step", "layer", "direction", "t", "norm", "loss"]
    assert len(table["data"]) == 2 * 12 and {r[0] for r in table["data"]} == {2}


PRESENTATION = (
    "matplotlib",
    "rnnbench.results.report",
    "rnnbench.results.plots",
    "rnnbench.results.table",
)
IMPORTS_NO_PRESENTATION = f"""
import json, sys
import pytorch_lightning
# Lightning's torchmetrics imports matplotlib itself whenever it is installed: mark every module
# of it as missing, so that an import of matplotlib by rnnbench fails here instead of finding it.
for name in [n for n in sys.modules if n.partition(".")[0] == "matplotlib"]:
    sys.modules[name] = None
import rnnbench.run.gradflow, rnnbench.run.train, rnnbench.run.callbacks
import rnnbench.run.launch, rnnbench.run.lifecycle
print(json.dumps([n for n in {PRESENTATION!r} if sys.modules.get(n) is not None]))
"""


def test_training_modules_import_no_presentation_code():
    """The callback runs inside training: importing it, the trainer or the always-on callbacks
    loads neither matplotlib nor the report, plotting or table modules (fresh interpreter: this
    one has imported them all)."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_NO_PRESENTATION],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_command_runs_end_to_end(tmp_path):
    script = Path(sys.executable).parent / "rnnbench-gradflow"
    args = ["--cells", "rnn", "lstm", "--seq-len", "10", "--hidden-size", "8", "--steps", "3"]
    args += ["--batch-size", "4", "--seed", "1", "-o", "flow.png", "--csv", "flow.csv"]
    result = subprocess.run(
        [str(script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr
    assert "|dL/dh_1|/|dL/dh_T|" in result.stdout and "step 3/3" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["seq_len"] == 10 and summary["steps"] == 3
    assert (tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = pd.read_csv(tmp_path / "flow.csv")
    assert set(rows["cell"]) == {"rnn", "lstm"} and set(rows["step"]) == {0, 3}
    for cell in ("rnn", "lstm"):
        for phase in ("init", "trained"):
            norm = rows[(rows["cell"] == cell) & (rows["phase"] == phase)].set_index("t")["norm"]
            assert summary["ratio_h1_hT"][cell][phase] == [pytest.approx(norm[1] / norm[10])]


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--cells", "--seq-len", "--steps", "--seed", "-o", "--explode"):
        assert option in text


def test_explode_reads_real_runs(tmp_path, capsys):
    base = [
        "data=adding",
        "data.seq_len=10",
        "data.train_size=64",
        "data.valid_size=16",
        "data.test_size=16",
        "data.batch_size=8",
        "model=rnn",
        "model.num_layers=1",
        "model.hidden_size=8",
        "model.init_range=1.0",
        "trainer.max_epochs=1",
    ]
    train(base, tmp_path / "free")
    train([*base, "trainer.gradient_clip_val=0.5"], tmp_path / "clipped")
    status = main(
        [
            "--explode",
            str(tmp_path / "free"),
            str(tmp_path / "clipped"),
            "-o",
            str(tmp_path / "ex.png"),
        ]
    )
    assert status == 0
    runs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]
    for run, name in zip(runs, ("free", "clipped"), strict=True):
        steps = list(csv.DictReader(open(tmp_path / name / "steps.csv")))
        assert run["steps"] == len(steps) == 8
        assert run["grad_norm max"] == pytest.approx(max(float(r["grad_norm"]) for r in steps))
        assert run["clipped steps"] == sum(int(r["clipped"]) for r in steps)
        assert math.isclose(run["loss first"], float(steps[0]["batch_loss"]))
        tail = [float(r["batch_loss"]) for r in steps[-50:]]
        assert run["loss last 50 mean"] == pytest.approx(sum(tail) / len(tail))
        assert run["clipped share"] == pytest.approx(run["clipped steps"] / run["steps"])
        assert math.isfinite(run["test/mse"])  # the runs' headline metric
    assert runs[0]["clipped steps"] == 0
    # Labelled by what differs between the runs: here only the clipping.
    assert [r["run"] for r in runs] == ["rnn, no clipping", "rnn, clip θ=0.5"]
    assert (tmp_path / "ex.png").stat().st_size > 0

    assert main(["--explode", str(tmp_path / "nowhere")]) == 2
    assert "rnnbench-gradflow: error:" in capsys.readouterr().err


def test_explode_labels_name_what_differs_between_runs():
    def record(cell: str, lr: float, seed: int) -> dict:
        config = {"model": {"cell": cell}, "optim": {"lr": lr}, "seed": seed}
        return {"config": {**config, "trainer": {"gradient_clip_val": 1.0}}}

    labels = run_labels(
        [record("gru", 0.004, 1), record("gru", 0.001, 2), record("lstm", 0.004, 3)]
    )
    assert labels == [
        "gru, lr=0.004, clip θ=1",
        "gru, lr=0.001, clip θ=1",
        "lstm, lr=0.004, clip θ=1",
    ]
