"""Task kinds: what a dataset asks of a model, declared once.

A kind says where its head reads the recurrent stack (every step, or the final state), its loss
(the one the Lightning module trains on, the gradient-flow probe differentiates and the
benchmark's plain loop times), the metrics its runs record with whether lower or higher is
better, and its headline metric (what tables and reproduction show by default). A dataset names
its kind (`task = "lm"`); tables and reproduction read a metric's direction from here.

Importing this module does not import torch: tables and reports read the declarations alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import Tensor

    Batch = dict[str, Tensor]

Better = Literal["lower", "higher"]
PAD_ID = 0  # the padding id of every token vocabulary with padding (sentences, sentence pairs)


# The losses, each the mean over the items a batch predicts (tokens, frames, sequences). torch
# is imported on the first call, not with this module.


def token_cross_entropy(out: Tensor, batch: Batch) -> Tensor:
    """Mean cross-entropy over every (sequence, step) target: next-token or per-step class."""
    from torch.nn import functional as F  # lazy: tables read KINDS without torch

    return F.cross_entropy(out.reshape(-1, out.size(-1)), batch["y"].reshape(-1))


def sequence_cross_entropy(out: Tensor, batch: Batch) -> Tensor:
    """Mean cross-entropy of one class per sequence."""
    from torch.nn import functional as F  # lazy: tables read KINDS without torch

    return F.cross_entropy(out, batch["y"])


def squared_error(out: Tensor, batch: Batch) -> Tensor:
    """Mean squared error over every target value."""
    from torch.nn import functional as F  # lazy: tables read KINDS without torch

    y = batch["y"]
    return F.mse_loss(out.view_as(y), y)


def frame_nll(out: Tensor, batch: Batch) -> Tensor:
    """Negative log-likelihood per real (unpadded) frame: the sum of the binary cross-entropies
    of its keys, averaged over the frames `batch["mask"]` marks."""
    from torch.nn import functional as F  # lazy: tables read KINDS without torch

    y, mask = batch["y"], batch["mask"]
    per_frame = F.binary_cross_entropy_with_logits(out, y, reduction="none").sum(-1)
    return (per_frame * mask).sum() / mask.sum()


def target_tokens_cross_entropy(out: Tensor, batch: Batch) -> Tensor:
    """Mean cross-entropy over the real tokens of right-padded target sentences: `out` holds
    the logits of those tokens alone, (N, V), in the order of y[y != PAD_ID]."""
    from torch.nn import functional as F  # lazy: tables read KINDS without torch

    y = batch["y"]
    return F.cross_entropy(out, y[y != PAD_ID])


def real_tokens(batch: Batch) -> int:
    return int((batch["y"] != PAD_ID).sum())


def targets(batch: Batch) -> int:
    return batch["y"].numel()


def real_frames(batch: Batch) -> int:
    return int(batch["mask"].sum())


@dataclass(frozen=True)
class TaskKind:
    """One kind of task. `metrics` maps each metric name a run records per split (`test/ppl`
    is split `test`, name `ppl`) to which way is better; `headline` names the default one."""

    name: str
    # The head reads every step, the final state, or (seq2seq) a decoder reads the encoder.
    readout: Literal["all", "last", "decoder"]
    loss: Callable[[Tensor, Batch], Tensor]  # the mean over `items(batch)` predicted items
    items: Callable[[Batch], int]  # how many items a batch predicts: the loss's weight
    metrics: dict[str, Better]
    headline: str  # a name of `metrics`; shown as test/<headline>
    char_headline: str | None = None  # the headline for character-level data (bpc, not ppl)
    item: str = "items"  # what one item of throughput is: tokens, frames, sequences...

    def headline_metric(self, unit: str = "") -> str:
        """The metric tables show by default for data counted in `unit` (char, word...)."""
        name = self.char_headline if unit == "char" and self.char_headline else self.headline
        return f"test/{name}"

    def probe_loss(self, out: Tensor, batch: Batch) -> Tensor:
        """The loss with every step's contribution counted: for a per-step head (or a decoder)
        the sum over steps of each step's loss, averaged over the sequences (the mean loss
        times the items per sequence); for a final-state head the loss itself. What the
        gradient-flow probe differentiates, so ‖∂L/∂h_t‖ does not shrink with the sequence
        length."""
        loss = self.loss(out, batch)
        if self.readout == "last":
            return loss
        return loss * self.items(batch) / batch["y"].size(0)


KINDS: dict[str, TaskKind] = {
    kind.name: kind
    for kind in (
        TaskKind(
            "lm",
            "all",
            token_cross_entropy,
            targets,
            {"loss": "lower", "ppl": "lower", "bpc": "lower"},
            headline="ppl",
            char_headline="bpc",
            item="tokens",
        ),
        TaskKind(
            "steps",
            "all",
            token_cross_entropy,
            targets,
            {"loss": "lower"},
            "loss",
            item="time steps",  # not "steps": the summary line also counts optimizer steps
        ),
        TaskKind(
            "classify",
            "last",
            sequence_cross_entropy,
            targets,
            {"loss": "lower", "acc": "higher"},
            "acc",
            item="sequences",
        ),
        TaskKind(
            "regress",
            "last",
            squared_error,
            targets,
            {"loss": "lower", "mse": "lower", "mae": "lower"},
            "mse",
            item="values",
        ),
        TaskKind(
            "multilabel",
            "all",
            frame_nll,
            real_frames,
            {"loss": "lower", "nll": "lower"},
            "nll",
            item="frames",
        ),
        # Sequence to sequence: an encoder reads the source, a decoder writes the target. Loss
        # and perplexity are on the reference target (teacher-forced); the headline scores what
        # the model decodes by itself (greedy or beam search) against the references.
        TaskKind(
            "translate",
            "decoder",
            target_tokens_cross_entropy,
            real_tokens,
            {"loss": "lower", "ppl": "lower", "bleu": "higher"},
            "bleu",
            item="tokens",
        ),
        TaskKind(
            "summarize",
            "decoder",
            target_tokens_cross_entropy,
            real_tokens,
            {
                "loss": "lower",
                "ppl": "lower",
                "rouge1": "higher",
                "rouge2": "higher",
                "rougeL": "higher",
            },
            "rougeL",
            item="tokens",
        ),
    )
}
# What every run records beside its task's metrics (the record's timing and size).
RUN_FIGURES: dict[str, Better] = {
    "timing.train_s": "lower",
    "timing.items_per_s": "higher",
}


# A dataset's reference numbers (Reber's `test/ppl_optimal`, a series' `test/mse_naive`) go the
# way of the metric they are a reference for.
REFERENCE_SUFFIXES = ("_optimal", "_naive", "_baseline")


def direction(metric: str, tasks: tuple[str, ...] | list[str] = ()) -> int:
    """-1 when lower is better, +1 when higher is better, 0 when the kinds of `tasks` (every
    kind when none is given) do not declare it or disagree: no best is marked then."""
    if metric in RUN_FIGURES:
        return -1 if RUN_FIGURES[metric] == "lower" else 1
    name = metric.rsplit("/", 1)[-1]
    for suffix in REFERENCE_SUFFIXES:
        name = name.removesuffix(suffix)
    kinds = [KINDS[t] for t in tasks if t in KINDS] or list(KINDS.values())
    said = {kind.metrics[name] for kind in kinds if name in kind.metrics}
    if len(said) != 1:
        return 0
    return -1 if said == {"lower"} else 1


def kind_of(name: str) -> TaskKind:
    """The kind a dataset names; KeyError lists the kinds there are."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown task kind {name!r}: one of {', '.join(KINDS)}") from None


def task_mismatch(chosen: str, data: str, declared: str) -> str:
    """The one line refusing task=`chosen` for data=`data`, whose batches are for `declared`
    (the command line's early check and the run's own say it alike)."""
    return (
        f"task={chosen} does not fit data={data}, whose batches are for task={declared}: leave "
        f"the task to the data config (conf/task/ is chosen there)"
    )
