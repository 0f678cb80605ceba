"""LightningModules: one per task kind, sharing the training loop, global-norm clipping,
divergence handling and the per-split metric bookkeeping.

Every metric is a weighted mean accumulated over a whole split (a torchmetrics object, so DDP
can sync it) and derived once at the epoch end: perplexity is exp of the token-weighted mean
cross-entropy over the split, never a mean of batch perplexities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from torch import Tensor, nn
from torchmetrics.aggregation import MeanMetric

from rnnbench.errors import ConfigError
from rnnbench.nn.cells import State, detach_state
from rnnbench.nn.clipping import clip_global_norm_
from rnnbench.nn.decode import decode
from rnnbench.tasks import KINDS, TaskKind, task_mismatch
from rnnbench.text_scores import ROUGE_KEYS

LN2 = math.log(2.0)
SPLITS = ("train", "val", "test")
Batch = dict[str, Tensor]


def time_chunks(batch: Batch, k: int) -> list[Batch]:
    """The batch cut along time into pieces of k steps: every tensor that has the inputs'
    (batch, time) leading shape is cut; the others (per-sequence targets) go whole."""
    bt = batch["x"].shape[:2]
    steps = range(0, bt[1], k)
    return [
        {n: v[:, i : i + k] if v.dim() >= 2 and v.shape[:2] == bt else v for n, v in batch.items()}
        for i in steps
    ]


class RecurrentTask(pl.LightningModule):
    """The shared loop. A task module has its kind (rnnbench.tasks: loss, items, metrics), names
    its accumulated quantities (`means`), measures them on a model's output for a batch
    (`measure`: the loss first), and turns their split means into the kind's metrics
    (`derive`). A pack (rnnbench.run.packed_task) measures each member's output the same way."""

    kind: TaskKind
    means: tuple[str, ...] = ("loss",)

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        unit: str = "",
        clip: float | None = None,
    ) -> None:
        super().__init__()
        self.model, self.unit = model, unit
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.accumulators = nn.ModuleDict(
            {
                f"{split}_{name}": MeanMetric(nan_strategy="disable")
                for split in SPLITS
                for name in self.means
            }
        )
        self.diverged = False
        self.diverged_step: int | None = None  # the optimizer step whose loss went non-finite
        # Truncated BPTT with an optimizer step per chunk: the loop below steps the optimizer
        # itself, so Lightning's automatic optimization (one step per batch) is off.
        tbptt = getattr(model, "tbptt", None)
        self.chunked = tbptt is not None and getattr(model, "tbptt_update", "") == "chunk"
        self.automatic_optimization = not self.chunked
        # θ of the global-norm clipping (trainer.gradient_clip_val): the task clips, in
        # Lightning's hook or after each chunk, never Lightning itself (its value is None).
        self.clip_value = clip
        self.carry: State | None = None  # the state handed from one chunk to the next
        # The last step's loss and pre-clip gradient norm, read by StepTrace and the progress
        # bar (kept as tensors: no host sync in the step).
        self.last_loss: Tensor | None = None
        self.grad_norm: Tensor | None = None

    def step(self, batch: Batch, split: str) -> Tensor:
        """The loss of a batch, its `means` accumulated for `split`."""
        values = self.measure(self.run_model(batch), batch)
        n = self.kind.items(batch)
        for name, value in values.items():
            self.accumulate(split, name, value, n)
        return values["loss"]

    @classmethod
    def measure(cls, out: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Each of `means` on the model's output for a batch (a mean over its items)."""
        return {"loss": cls.kind.loss(out, batch)}

    @classmethod
    def derive(cls, means: dict[str, Tensor], unit: str = "") -> dict[str, Tensor]:
        """The kind's metrics from a split's means (text counted in `unit`)."""
        return means

    def record_fields(self) -> dict:
        """Fields this task adds to the run's record once tested (none by default)."""
        return {}

    def items_in(self, batch: Batch) -> int:
        """How many predicted items a batch holds (tokens, frames, sequences): for throughput."""
        return self.kind.items(batch)

    def accumulate(self, split: str, name: str, value: Tensor, weight: float | Tensor) -> None:
        self.accumulators[f"{split}_{name}"].update(value.detach(), weight)

    def run_model(self, batch: Batch) -> Tensor:
        """The model's output for a batch; going on from the previous chunk's state when
        training chunk by chunk."""
        out, state = self.model(batch["x"], self.carry, lengths=batch.get("lengths"))
        if self.chunked and self.training:
            self.carry = detach_state(state)
        return out

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        if self.chunked:
            return self.training_step_per_chunk(batch)
        loss = self.step(batch, "train")
        if not self.finite(loss):
            return None
        # Per-step values go to steps.csv and the loggers through StepTrace, in bulk: a
        # self.log here costs ~1 ms a step, 2 % of a PTB-small step.
        self.last_loss = loss.detach()
        return loss

    def finite(self, loss: Tensor) -> bool:
        if torch.isfinite(loss):
            return True
        # A non-finite loss is a finding (the run diverged), not a crash: stop cleanly, at
        # once, not after the budget.
        self.diverged, self.diverged_step = True, self.global_step + 1
        self.trainer.should_stop = True
        return False

    def training_step_per_chunk(self, batch: Batch) -> Tensor | None:
        """model.tbptt_update=chunk: forward, backward, clip and step on each chunk of
        `tbptt` steps in turn, the state carried on detached from one chunk to the next."""
        optimizer = self.optimizers()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.carry, loss = None, None
        for chunk in time_chunks(batch, self.model.tbptt):
            if self.items_in(chunk) == 0:  # only padding in this stretch of every row
                continue
            loss = self.step(chunk, "train")
            if not self.finite(loss):
                return None
            optimizer.zero_grad()
            self.manual_backward(loss)
            self.clip_and_record(params, self.clip_value)
            optimizer.step()
        self.carry = None
        if loss is not None:
            self.last_loss = loss.detach()
            return self.last_loss
        return None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self.log_split("train")
        if not self.automatic_optimization:
            self.step_schedule()
        elif self.trainer.fit_loop.restarting:
            # Lightning (2.x, FitLoop.on_advance_end) steps no ReduceLROnPlateau at the end of
            # the first epoch after a resume, although that epoch validated: its best and
            # num_bad_epochs then lag the uninterrupted run's by one epoch and the rate is cut
            # an epoch late, or never. Lightning's own update, at the point it skips it.
            self.trainer.fit_loop.epoch_loop.update_lr_schedulers(
                "epoch", update_plateau_schedulers=True
            )

    def step_schedule(self) -> None:
        """What Lightning does at an epoch end under automatic optimization (validation has run
        by now): step the learning-rate schedule, on val/loss for ReduceLROnPlateau."""
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            val_loss = self.trainer.callback_metrics.get("val/loss")
            if val_loss is not None:
                scheduler.step(val_loss)
        else:
            scheduler.step()

    def on_validation_epoch_end(self) -> None:
        self.log_split("val")

    def on_test_epoch_end(self) -> None:
        self.log_split("test")

    def log_split(self, split: str) -> None:
        means = {}
        for name in self.means:
            metric = self.accumulators[f"{split}_{name}"]
            if metric.update_count == 0:
                return
            means[name] = metric.compute()
            metric.reset()
        for name, value in self.derive(means, self.unit).items():
            self.log(f"{split}/{name}", value, prog_bar=split == "val" and name == "loss")

    # Lightning's checkpoints hold weights, optimizer and schedule but not the random state:
    # without it a resumed run would draw other dropout masks than an uninterrupted one.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rnnbench_rng"] = {"torch": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rnnbench_rng" in checkpoint:
            torch.set_rng_state(checkpoint["rnnbench_rng"]["torch"])

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.clip_and_record(params, self.clip_value)

    def clip_and_record(self, params: list[Tensor], threshold: float | None) -> None:
        # The norm before clipping is what shows a vanilla RNN exploding: log it every step
        # (read by the StepTrace callback, without a host sync).
        self.grad_norm = clip_global_norm_(params, threshold).detach()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if not self.automatic_optimization:  # step_schedule() steps it
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}
        return {
            "optimizer": optimizer,
            # strict=False: a run without validation (limit_val_batches=0) keeps its learning
            # rate instead of failing on the missing val/loss.
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": "epoch",
                "monitor": "val/loss",
                "strict": False,
            },
        }


class LanguageModelTask(RecurrentTask):
    """Next-token prediction over BPTT windows read in order; the hidden state is carried from
    one window to the next (detached) and starts from zero at each epoch of each split."""

    kind = KINDS["lm"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.state: State | None = None
        self._train_state: State | None = None

    def run_model(self, batch: Batch) -> Tensor:
        logits, self.state = self.model(batch["x"], detach_state(self.state))
        return logits

    @classmethod
    def derive(cls, means: dict[str, Tensor], unit: str = "") -> dict[str, Tensor]:
        out = {"loss": means["loss"], "ppl": torch.exp(means["loss"])}
        if unit == "char":
            out["bpc"] = means["loss"] / LN2
        return out

    def on_train_epoch_start(self) -> None:
        self.state = None

    def on_validation_epoch_start(self) -> None:
        self._train_state, self.state = self.state, None

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.state = self._train_state

    def on_test_epoch_start(self) -> None:
        self.state = None


class StepClassificationTask(RecurrentTask):
    """A class per time step (copy memory): mean cross-entropy over every output position."""

    kind = KINDS["steps"]


class ClassificationTask(RecurrentTask):
    """One class per sequence from the final state: cross-entropy and accuracy."""

    kind = KINDS["classify"]
    means = ("loss", "acc")

    @classmethod
    def measure(cls, out: Tensor, batch: Batch) -> dict[str, Tensor]:
        accuracy = (out.argmax(-1) == batch["y"]).float().mean()
        return {"loss": cls.kind.loss(out, batch), "acc": accuracy}


class RegressionTask(RecurrentTask):
    """Real-valued targets from the final state: mean squared error (the loss) and MAE."""

    kind = KINDS["regress"]
    means = ("loss", "mae")

    @classmethod
    def measure(cls, out: Tensor, batch: Batch) -> dict[str, Tensor]:
        y = batch["y"]
        pred = out.view_as(y)
        return {"loss": cls.kind.loss(pred, batch), "mae": (pred - y).abs().mean()}

    @classmethod
    def derive(cls, means: dict[str, Tensor], unit: str = "") -> dict[str, Tensor]:
        return {"loss": means["loss"], "mse": means["loss"], "mae": means["mae"]}


class MultilabelTask(RecurrentTask):
    """Next-frame prediction of 88 binary keys: NLL per frame = the sum of the 88 binary
    cross-entropies, averaged over real (unpadded) frames."""

    kind = KINDS["multilabel"]

    @classmethod
    def derive(cls, means: dict[str, Tensor], unit: str = "") -> dict[str, Tensor]:
        return {"loss": means["loss"], "nll": means["loss"]}


class TranslationTask(RecurrentTask):
    """Sequence to sequence: loss and perplexity of the reference target (teacher-forced, over
    its real tokens); at test the model also decodes every source by itself (`beam`: 1 greedy,
    else beam search) and the dataset scores the decoded text (BLEU; ROUGE for summaries).
    `decoded` keeps, after the test, each test pair's decoded text in order."""

    kind = KINDS["translate"]
    scored: tuple[str, ...] = ("bleu",)  # the metrics of decoded text, from the dataset's scorer

    def __init__(
        self,
        *args,
        beam: int = 5,
        length_penalty: float = 0.6,
        max_len: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        # decode.* values outside their range are refused by config.check_config.
        self.beam, self.length_penalty, self.max_len = beam, length_penalty, max_len
        self.decoded: dict[int, str] = {}
        self.scores: dict[str, float] = {}
        self.signature: str | None = None
        self.limit = 0  # set at each test's start

    def step(self, batch: Batch, split: str) -> Tensor:
        logits = self.model(batch["x"], batch["lengths"], batch["tgt_in"], batch["tgt_lengths"])
        loss = self.kind.loss(logits, batch)
        self.accumulate(split, "loss", loss, self.kind.items(batch))
        return loss

    @classmethod
    def derive(cls, means: dict[str, Tensor], unit: str = "") -> dict[str, Tensor]:
        return {"loss": means["loss"], "ppl": torch.exp(means["loss"])}

    def on_test_epoch_start(self) -> None:
        self.decoded = {}
        # The longest output a source may decode to: decode.max_len, else the longest
        # training target + 10 (found once here, not per batch).
        self.limit = self.max_len or self.trainer.datamodule.longest_target + 10

    def test_step(self, batch: Batch, batch_idx: int) -> None:

        self.step(batch, "test")
        ids = decode(
            self.model, batch["x"], batch["lengths"], self.beam, self.limit, self.length_penalty
        )
        detokenize = self.trainer.datamodule.detokenize
        for i, row in zip(batch["index"].tolist(), ids.tolist(), strict=True):
            self.decoded[i] = detokenize(row)

    def on_test_epoch_end(self) -> None:
        decoded = self.decoded
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Each DDP rank decoded its share of the test pairs: every rank scores them all.
            shares = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(shares, decoded)
            decoded = {i: text for share in shares for i, text in share.items()}
        self.decoded = decoded
        # A run with limit_test_batches decoded only some pairs: it is scored on those alone.
        self.scores, self.signature = self.trainer.datamodule.score(decoded)
        super().on_test_epoch_end()
        if set(self.scores) != set(self.scored):
            raise RuntimeError(f"the scorer gave {sorted(self.scores)}, not {list(self.scored)}")
        for name in self.scored:
            self.log(f"test/{name}", float(self.scores[name]))

    def record_fields(self) -> dict:
        """What the run's record keeps of the decoding: settings, scorer signature, and how
        many test pairs were decoded."""
        return {
            "decoding": {
                "beam": self.beam,
                "length_penalty": self.length_penalty,
                "max_len": self.max_len,
                "signature": self.signature,
                "pairs": len(self.decoded),
            }
        }


class SummarizationTask(TranslationTask):
    """The same model and loop; the dataset scores summaries with ROUGE-1/2/L."""

    kind = KINDS["summarize"]
    scored = ROUGE_KEYS


# The module that trains each kind of rnnbench.tasks.KINDS.
TASKS: dict[str, type[RecurrentTask]] = {
    task.kind.name: task
    for task in (
        LanguageModelTask,
        StepClassificationTask,
        ClassificationTask,
        RegressionTask,
        MultilabelTask,
        TranslationTask,
        SummarizationTask,
    )
}


def task_class(cfg: Any) -> type[RecurrentTask]:
    """The task module that trains `cfg` (a run's config): the one its `task` names
    (conf/task/, chosen by the dataset's config), which must be the kind the data module
    declares, for its batches hold that task's targets; another is refused in one line (before
    any reuse: a run of the data's own task is no result for another). A dataset config of a
    user's own that chooses no task gets its module's declared one."""
    data_target = OmegaConf.select(cfg, "data._target_")
    kind = getattr(get_class(data_target), "task", "")
    if kind not in TASKS:
        raise ConfigError(
            f"data._target_={data_target} declares no task kind: give its class an attribute "
            f"task, one of {', '.join(TASKS)}"
        )
    declared = TASKS[kind]
    target = OmegaConf.select(cfg, "task._target_")
    if target is None:
        return declared
    chosen = get_class(target)
    if chosen is not declared:
        name = getattr(getattr(chosen, "kind", None), "name", target)
        raise ConfigError(task_mismatch(name, OmegaConf.select(cfg, "data.name"), kind))
    return chosen
