"""Contenders: each runs `steps` training steps (or matmuls) and returns one Sample per step.

The Trainer as `rnnbench` runs it (LightningHarness, PackHarness: K seeds packed), the plain
PyTorch loop (PlainLoop; FlushingLoop, with denormals flushed or kept) and torch.mm (Matmul)."""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch import Tensor, nn

from rnnbench.bench.errors import BenchError
from rnnbench.bench.flops import step_work
from rnnbench.config import check_config
from rnnbench.nn.build import build_model
from rnnbench.nn.cells import detach_state
from rnnbench.nn.clipping import clip_global_norm_
from rnnbench.results.record import new_record
from rnnbench.run.denormals import flush_denormal_everywhere
from rnnbench.run.lifecycle import finish_wandb
from rnnbench.run.pack import build_pack, seed_members
from rnnbench.run.train import build_training

MATMUL_SIZE = 2048


class Sample(NamedTuple):
    seconds: float
    tokens: int  # batch x time steps (an encoder-decoder: real target tokens)
    flops: int
    fetch_s: float = 0.0  # of `seconds`, spent in the DataLoader's next()
    loss: float | None = None  # the plain loop's last step of a run: its loss


class StepClock(pl.Callback):
    """Timestamps every training batch start: the time from one start to the next is a whole
    step of the loop as the Trainer runs it (step, callbacks, logger, progress bar, fetch)."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append((time.perf_counter(), step_work(pl_module.model, batch)))

    def take(self, model: nn.Module) -> list[Sample]:
        """The steps between the starts recorded since the last call."""
        starts, self.starts = self.starts, []
        return [
            Sample(t1 - t0, *work) for (t0, work), (t1, _) in zip(starts, starts[1:], strict=False)
        ]


class LightningHarness:
    """The training step as `rnnbench` runs it: rnnbench's task module, callbacks and loggers
    in the Trainer the config describes. Each `run` is one more `Trainer.fit` (an epoch, to
    Lightning) that stops `steps + 1` batches later, so setup, the epoch's start and end hooks
    and teardown stay out of the timed steps."""

    name = "harness"

    def __init__(self, cfg, datamodule, run_dir: Path) -> None:

        # As rnnbench.run.train.run() builds a run, with run()'s own callbacks and loggers.
        run_dir.mkdir(parents=True, exist_ok=True)
        check_config(cfg)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        self.record = new_record(OmegaConf.to_container(cfg, resolve=True), run_dir)
        self.loggers: list = []
        self.clock = StepClock()
        built = build_training(
            cfg, run_dir, self.record, datamodule, self.loggers, extra_callbacks=[self.clock]
        )
        self.model, self.task, self.trainer = built.model, built.task, built.trainer
        self.datamodule = datamodule

    def run(self, steps: int) -> list[Sample]:
        # Lightning counts every fit as one more epoch: lift the epoch limit, set the step limit.
        self.trainer.fit_loop.max_epochs = -1
        self.trainer.fit_loop.epoch_loop.max_steps = self.trainer.global_step + steps + 1
        # The progress bar draws as always; its text goes to stderr so stdout stays a report.
        with contextlib.redirect_stdout(sys.stderr):
            self.trainer.fit(self.task, datamodule=self.datamodule)
        samples = self.clock.take(self.model)
        if len(samples) != steps:
            raise RuntimeError(
                f"the Trainer stopped after {len(samples) + 1} of {steps + 1} batches "
                f"(diverged: {self.task.diverged})"
            )
        return samples

    def close(self) -> None:

        finish_wandb(self.loggers, self.record)


class PackHarness(LightningHarness):
    """K seeds of the same run as one packed run (`pack=K`, rnnbench.run.pack) in the Trainer:
    every member's step is in each timed step."""

    def __init__(self, cfg, datamodule, run_dir: Path, size: int) -> None:

        self.name = f"pack{size}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.pack = size
        members = seed_members(cfg, run_dir, [])
        for m in members:
            m.run_dir.mkdir(parents=True, exist_ok=True)
        self.clock = StepClock()
        built = build_pack(members, datamodule, run_dir, extra_callbacks=[self.clock])
        self.task, self.trainer = built.task, built.trainer
        self.model, self.datamodule = built.task.model, datamodule

    def close(self) -> None:
        pass


class PlainLoop:
    """The same step as a plain PyTorch loop: the model built from the same config and seed,
    the datamodule's own training DataLoader, the config's optimizer and the same clipping,
    g <- min(1, θ/‖g‖) g (the harness's own clip_global_norm_); nothing else."""

    def __init__(self, cfg, datamodule, name: str = "raw") -> None:

        self.name = name
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        self.model = build_model(cfg.model, datamodule.model_io()).train()
        self.params = list(self.model.parameters())
        self.optimizer = instantiate(cfg.optim)(self.params)
        self.clip = cfg.trainer.get("gradient_clip_val")
        losses = {
            "lm": self.carried_state_loss,
            "classify": self.sequence_loss,
            "translate": self.pair_loss,
            "summarize": self.pair_loss,
        }
        if datamodule.task not in losses:
            raise BenchError(f"no plain loop for task {datamodule.task!r}: use {sorted(losses)}")
        self.kind, self.loss = datamodule.kind, losses[datamodule.task]
        self.loader = datamodule.train_dataloader()
        self.batches = iter(self.loader)
        self.state = None

    def carried_state_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The kind's loss, the state carried (detached) from the previous window, as the
        language-model task does."""

        logits, self.state = self.model(batch["x"], detach_state(self.state))
        return self.kind.loss(logits, batch)

    def sequence_loss(self, batch: dict[str, Tensor]) -> Tensor:
        logits, _ = self.model(batch["x"], lengths=batch.get("lengths"))
        return self.kind.loss(logits, batch)

    def pair_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The encoder-decoder's loss on the reference target, as the translation task's."""
        logits = self.model(batch["x"], batch["lengths"], batch["tgt_in"], batch["tgt_lengths"])
        return self.kind.loss(logits, batch)

    def next_batch(self) -> dict[str, Tensor]:
        try:
            return next(self.batches)
        except StopIteration:  # a new epoch: the state starts from zero, as in the harness
            self.batches, self.state = iter(self.loader), None
            return next(self.batches)

    def run(self, steps: int) -> list[Sample]:
        samples = []
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = self.next_batch()
            t1 = time.perf_counter()
            loss = self.loss(batch)
            self.optimizer.zero_grad()
            loss.backward()
            clip_global_norm_(self.params, self.clip)
            self.optimizer.step()
            t2 = time.perf_counter()
            samples.append(Sample(t2 - t0, *step_work(self.model, batch), t1 - t0))
        if samples:  # read once the timing is done: a tensor kept would keep its step's memory
            samples[-1] = samples[-1]._replace(loss=float(loss.detach()))
        return samples

    def close(self) -> None:
        pass


class Matmul:
    """The machine's fp32 matmul rate: torch.mm on two n x n matrices, one sample per product,
    at most `repeats` products a round (a product is far longer than a training step)."""

    name = "mm"
    repeats = 3

    def __init__(self, n: int = MATMUL_SIZE) -> None:
        generator = torch.Generator().manual_seed(0)
        self.a, self.b = torch.randn(2, n, n, generator=generator).unbind(0)
        self.out = torch.empty(n, n)

    def run(self, steps: int) -> list[Sample]:
        samples = []
        flops = 2 * self.a.size(0) ** 3
        for _ in range(min(steps, self.repeats)):
            t0 = time.perf_counter()
            torch.mm(self.a, self.b, out=self.out)
            samples.append(Sample(time.perf_counter() - t0, 0, flops))
        return samples

    def close(self) -> None:
        pass


FLUSH_CONTENDERS = {"flush_on": True, "flush_off": False}


class FlushingLoop(PlainLoop):
    """The plain loop run with denormals flushed to zero (`on`) or kept, on every thread."""

    def __init__(self, cfg, datamodule, on: bool) -> None:
        super().__init__(cfg, datamodule, name="flush_on" if on else "flush_off")
        self.on = on

    def run(self, steps: int) -> list[Sample]:
        if not flush_denormal_everywhere(self.on):
            raise BenchError("denormal: the flushing mode did not reach every torch thread")
        return super().run(steps)
