"""Truncated backprop through time as a model knob (model.tbptt) on every task."""

import pytest
import torch

from conftest import train
from rnnbench.errors import ConfigError
from rnnbench.nn.model import SequenceModel

T, B, IN = 12, 3, 2


def model(cell: str, readout: str, tbptt, impl: str = "fused") -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(
        output_size=1,
        input_size=IN,
        readout=readout,
        causal=False,
        cell=cell,
        impl=impl,
        hidden_size=5,
        num_layers=2,
        tbptt=tbptt,
    ).double()


def input_grad(net: SequenceModel, x: torch.Tensor, steps: slice | None = None):
    """Outputs, and the gradient of the loss (at the readout, or at `steps` of a per-step
    output) with respect to every input step."""
    x = x.clone().requires_grad_(True)
    out, _ = net(x)
    (out if steps is None else out[:, steps]).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("impl", ["fused", "scratch"])
def test_truncation_at_or_beyond_the_length_is_full_bptt(cell, impl):
    x = torch.randn(B, T, IN, dtype=torch.float64)
    full = input_grad(model(cell, "last", None, impl), x)
    for k in (T, T + 5):
        out, xg, grads = input_grad(model(cell, "last", k, impl), x)
        torch.testing.assert_close(out, full[0], rtol=0, atol=0)
        torch.testing.assert_close(xg, full[1], rtol=0, atol=0)
        for name, g in grads.items():
            torch.testing.assert_close(g, full[2][name], rtol=0, atol=0)
    # One step shorter already changes the gradient (but not the forward values).
    out, xg, _ = input_grad(model(cell, "last", T - 1, impl), x)
    torch.testing.assert_close(out, full[0])
    assert not torch.allclose(xg, full[1])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_no_gradient_crosses_a_chunk_boundary(cell):
    k = 4
    x = torch.randn(B, T, IN, dtype=torch.float64)
    # Readout at the last step: only the last chunk's inputs get gradient.
    _, xg, _ = input_grad(model(cell, "last", k), x)
    assert torch.all(xg[:, : T - k] == 0)
    assert torch.all(xg[:, T - k :].abs().sum(-1) > 0)
    # A loss on the second chunk's per-step outputs reaches that chunk only: not back into the
    # first one, and (causal) not forward into the third.
    _, xg, _ = input_grad(model(cell, "all", k), x, steps=slice(k, 2 * k))
    assert torch.all(xg[:, :k] == 0) and torch.all(xg[:, 2 * k :] == 0)
    assert torch.all(xg[:, k : 2 * k].abs().sum(-1) > 0)


def test_bad_truncation_settings():
    with pytest.raises(ConfigError, match="model.tbptt=0"):
        model("lstm", "last", 0)
    with pytest.raises(ConfigError, match="model.bidirectional=false"):
        SequenceModel(
            output_size=1, input_size=2, readout="last", causal=False, bidirectional=True, tbptt=5
        )


@pytest.mark.parametrize(
    "data, extra",
    [
        (
            "adding",
            ["data.seq_len=30", "data.train_size=64", "data.valid_size=16", "data.test_size=16"],
        ),
        (
            "copy_memory",
            ["data.seq_len=30", "data.train_size=64", "data.valid_size=16", "data.test_size=16"],
        ),
    ],
)
def test_truncated_training_runs(data, extra, tmp_path):
    record = train(
        [
            f"data={data}",
            "trainer=debug",
            "model.hidden_size=12",
            "model.num_layers=1",
            "model.tbptt=8",
            *extra,
        ],
        tmp_path,
    )
    assert record["status"] == "completed"
    assert record["config"]["model"]["tbptt"] == 8


def test_gradflow_callback_from_the_config(tmp_path):
    record = train(
        [
            "+callbacks=gradflow",
            "callbacks.gradflow.every_n_steps=5",
            "data=adding",
            "data.seq_len=20",
            "data.train_size=64",
            "data.valid_size=16",
            "data.test_size=16",
            "data.batch_size=8",
            "model=rnn",
            "model.num_layers=1",
            "model.hidden_size=8",
            "trainer.max_epochs=1",
        ],
        tmp_path,
    )
    assert record["status"] == "completed"
    import pandas as pd

    flow = pd.read_csv(tmp_path / "gradflow.csv")
    first = flow[flow["step"] == 0]
    assert sorted(first["t"]) == list(range(1, 21))  # every time step of the probe
    assert (first["norm"] > 0).all()
    assert flow["step"].max() >= 5  # measured again while training


# Training alone, as the textbook loop it is held against: Lightning notes the unused val step.
@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_per_chunk_updates_equal_the_textbook_loop():
    """model.tbptt_update=chunk through the real Trainer = forward, backward, clip and SGD step
    on each chunk in turn, the state carried on detached: written out here by hand."""
    import copy

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from rnnbench.run.module import StepClassificationTask

    k, classes, clip = 5, 3, 0.3
    torch.manual_seed(1)
    x = torch.randn(B, T, IN, dtype=torch.float64)
    y = torch.randint(0, classes, (B, T))
    net = SequenceModel(
        output_size=classes, input_size=IN, cell="lstm", hidden_size=6, num_layers=2,
        tbptt=k, tbptt_update="chunk",
    ).double()  # fmt: skip
    by_hand = copy.deepcopy(net)

    sgd = torch.optim.SGD(by_hand.parameters(), lr=0.5)
    state = None
    for i in range(0, T, k):
        out, state = by_hand(x[:, i : i + k], state)
        state = tuple(s.detach() for s in state)
        loss = torch.nn.functional.cross_entropy(
            out.reshape(-1, classes), y[:, i : i + k].reshape(-1)
        )
        sgd.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(by_hand.parameters(), clip)
        sgd.step()

    task = StepClassificationTask(net, lambda p: torch.optim.SGD(p, lr=0.5))
    task.clip_value = clip
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(task, train_dataloaders=DataLoader([{"x": x, "y": y}], batch_size=None))
    assert trainer.global_step == 3  # ceil(12 / 5) optimizer steps for one batch
    for (name, p), q in zip(net.named_parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_per_chunk_training_run_steps_once_per_chunk(tmp_path):
    record = train(
        [
            "data=copy_memory",
            "data.seq_len=30",  # + 20 = 50 steps per sequence
            "data.train_size=64",
            "data.valid_size=16",
            "data.test_size=16",
            "model.hidden_size=12",
            "model.num_layers=1",
            "model.tbptt=8",
            "model.tbptt_update=chunk",
            "trainer.max_epochs=2",
            "trainer.gradient_clip_val=0.5",
        ],
        tmp_path,
    )
    assert record["status"] == "completed", record["error"]
    assert record["timing"]["steps"] == 2 * 2 * 7  # epochs x batches x ceil(50 / 8)
    lrs = [
        float(line.split(",")[-1]) for line in (tmp_path / "metrics.csv").read_text().split()[1:]
    ]
    assert len(lrs) == 2  # the plateau schedule stepped by the task's own loop, without error


def test_bad_per_chunk_settings():
    with pytest.raises(ConfigError, match="model.tbptt_update='often' is unknown"):
        SequenceModel(output_size=1, input_size=2, tbptt=4, tbptt_update="often")
    with pytest.raises(ConfigError, match="model.tbptt_update=chunk needs an output at every step"):
        model_kw = dict(output_size=1, input_size=2, readout="last", causal=False, tbptt=4)
        SequenceModel(**model_kw, tbptt_update="chunk")
