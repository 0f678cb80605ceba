"""Task kinds (rnnbench.tasks) are the one declaration of a task's head, loss, metrics,
directions and headline: the modules, datasets, tables and reproduction all read it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from rnnbench.results.summary import format_summary
from rnnbench.results.table import metric_direction
from rnnbench.run.module import TASKS
from rnnbench.tasks import KINDS, direction

RECORDS = Path(__file__).resolve().parent.parent / "results" / "records"


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_module_logs_exactly_the_metrics_its_kind_declares(name):
    task, kind = TASKS[name], KINDS[name]
    assert task.kind is kind
    logged = set()
    for unit in ("char", "word", ""):
        means = {m: torch.tensor(0.7) for m in task.means}
        logged |= set(task.derive(means, unit))
    # A decoder's kinds also log what its decoded text scores (BLEU, ROUGE), at test.
    logged |= set(getattr(task, "scored", ()))
    assert logged == set(kind.metrics), name
    assert kind.headline in kind.metrics
    assert kind.item != "items"  # the summary's speed line names what was counted


def test_the_speed_line_never_calls_two_different_things_steps():
    """A copy-memory record (committed, full budget): its throughput counts time steps, and the
    same line counts optimizer steps, so the two must not share a name."""
    record = json.loads(next(RECORDS.glob("tcn/copy_memory_gru/*/result.json")).read_text())
    speed = next(line for line in format_summary(record).splitlines() if line.startswith("speed"))
    assert speed.count("steps") == 2 and "time steps/s over" in speed, speed
    assert all(kind.item != "steps" for kind in KINDS.values())


def test_the_model_line_tells_the_two_gru_forms_apart():
    """A GRU whose reset gate acts before the recurrent product says so; the default does not."""
    record = json.loads(next(RECORDS.glob("tcn/copy_memory_gru/*/result.json")).read_text())
    model = record["config"]["model"]
    lines = {}
    for reset in ("after", "before"):
        record["config"]["model"] = {**model, "gru_reset": reset, "impl": "scratch"}
        lines[reset] = next(x for x in format_summary(record).splitlines() if x.startswith("model"))
    assert lines["before"].split()[1:4] == ["gru", "(scratch,", "reset"], lines
    assert "reset" not in lines["after"], lines


def test_kind_losses_are_the_textbook_ones():
    torch.manual_seed(0)
    logits, y = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    batch = {"y": y}
    textbook = F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1))
    assert torch.allclose(KINDS["lm"].loss(logits, batch), textbook)
    # The probe counts every step: the sum over steps, averaged over the 3 sequences.
    summed = F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1), reduction="sum") / 3
    assert torch.allclose(KINDS["lm"].probe_loss(logits, batch), summed)
    keys, frames = torch.randn(2, 4, 88), torch.randint(0, 2, (2, 4, 88)).float()
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])  # padded frames count for nothing
    per_frame = F.binary_cross_entropy_with_logits(keys, frames, reduction="none").sum(-1)
    nll = KINDS["multilabel"].loss(keys, {"y": frames, "mask": mask})
    assert torch.allclose(nll, (per_frame * mask).sum() / 5)
    assert KINDS["multilabel"].items({"y": frames, "mask": mask}) == 5


def test_direction_comes_from_the_kinds_not_from_the_name():
    assert direction("test/acc", ["classify"]) == 1
    assert direction("val/ppl", ["lm"]) == -1
    assert direction("test/ppl_optimal", ["lm"]) == -1  # a reference goes its metric's way
    assert direction("timing.items_per_s") == 1
    # Names a kind does not declare are not guessed from their look ("acc..." was higher).
    assert direction("test/accuracy_drop") == 0
    assert direction("test/acc", ["lm"]) == 0
    frame = pd.DataFrame({"task": ["regress", "regress"], "test/mae": [0.1, 0.2]})
    assert metric_direction(frame, "test/mae") == -1


def test_datasets_take_head_and_headline_from_their_kind():
    from rnnbench.data.reber import EmbeddedReber
    from rnnbench.data.synthetic import AddingProblem

    reber = EmbeddedReber()
    assert reber.headline_metric == "test/ppl" and reber.kind is KINDS["lm"]
    adding = AddingProblem(seq_len=10)
    assert adding.kind.readout == "last" and adding.headline_metric == "test/mse"
