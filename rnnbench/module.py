"""The LightningModule: a language model + token-weighted loss + global-norm clipping + the hidden
state carried across BPTT windows."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.aggregation import MeanMetric

from rnnbench.cells import State

LN2 = math.log(2.0)


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a window boundary: truncated BPTT keeps the values, not the history."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def global_grad_norm(parameters) -> Tensor:
    """‖g‖ over all gradients together, as one tensor (no host sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clip_global_norm_(parameters, norm: Tensor, threshold: float) -> None:
    """The seed's clipping, g <- min(1, θ/‖g‖) g, given ‖g‖ already computed."""
    scale = torch.clamp(threshold / (norm + 1e-6), max=1.0)
    for p in parameters:
        if p.grad is not None:
            p.grad.mul_(scale)


class LanguageModelTask(pl.LightningModule):
    """Next-token prediction: loss is the mean cross-entropy per token (nats); perplexity is exp
    of the token-weighted mean over a whole split, never a mean of batch perplexities."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        unit: str = "word",
    ) -> None:
        super().__init__()
        self.model, self.unit = model, unit
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # Token-weighted mean cross-entropy per split (a metric object, so DDP can sync it).
        self.train_nll = MeanMetric(nan_strategy="disable")
        self.val_nll = MeanMetric(nan_strategy="disable")
        self.test_nll = MeanMetric(nan_strategy="disable")
        self.state: State | None = None
        self.diverged = False

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        return self.model(tokens, state)

    def _step(self, batch: tuple[Tensor, Tensor], split: str) -> Tensor:
        tokens, targets = batch
        logits, state = self.model(tokens, detach_state(self.state))
        self.state = state
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        getattr(self, f"{split}_nll").update(loss.detach(), targets.numel())
        return loss

    # The hidden state runs through each split's windows in order and starts from zero each epoch.
    def on_train_epoch_start(self) -> None:
        self.state = None

    def on_validation_epoch_start(self) -> None:
        self._train_state, self.state = self.state, None

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")
        self.state = self._train_state

    def on_test_epoch_start(self) -> None:
        self.state = None

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def on_train_epoch_end(self) -> None:
        self._log_split("train")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            # A non-finite loss is a finding (the run diverged), not a crash: stop cleanly.
            self.diverged = True
            self.trainer.should_stop = True
            return None
        self.log("train/batch_loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_split(self, split: str) -> None:
        metric = getattr(self, f"{split}_nll")
        if metric.update_count == 0:
            return
        nll = metric.compute()
        metric.reset()
        self.log(f"{split}/loss", nll, prog_bar=split == "val")
        self.log(f"{split}/ppl", torch.exp(nll), prog_bar=split == "val")
        if self.unit == "char":
            self.log(f"{split}/bpc", nll / LN2)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        # The norm before clipping is what shows a vanilla RNN exploding: log it every step.
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = global_grad_norm(params)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if gradient_clip_val is not None:
            clip_global_norm_(params, norm, float(gradient_clip_val))

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": "val/loss"},
        }
