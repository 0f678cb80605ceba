"""What every dataset tells the rest of the harness: its task kind, the model's input and output
shapes, its headline metric, and the reference numbers (optimum or trivial baseline) a run is
judged against."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from rnnbench.errors import DataError
from rnnbench.schema import DataSchema, check_arguments
from rnnbench.tasks import TaskKind, kind_of

SPLITS = ("train", "valid", "test")

# The longest line, in characters, that any text reader accepts (translation and summary pairs,
# language-model corpora, SST-2). Far above any real line: the longest of each corpus in the
# shared data folder measures 2,550 characters (the Debian summaries sample in tests/data), 1,037
# (PTB characters), 520 (PTB words), 270 (SST-2), 254 (Multi30k), 70 (The Time Machine), and a
# news article on one line (XSum, CNN/DailyMail) some thousands. A longer line is a file without
# line breaks or a hostile one: read as it is, one line of 1.3 MB became a sequence of 300,000+
# steps that the recurrent layer runs in one native call, deaf to SIGTERM and Ctrl-C for minutes.
# Bounded, no line costs the tokeniser more than a fraction of a second, so a stop signal is
# answered between lines.
MAX_LINE_CHARS = 100_000


def check_line(line: str, where: str | os.PathLike, number: int) -> str:
    """`line` (line `number` of `where`, a file's name) if it is at most MAX_LINE_CHARS long;
    otherwise DataError in one line naming the file and line. Every text reader calls this on
    every line before any other work on it."""
    if len(line) > MAX_LINE_CHARS:
        raise DataError(
            f"{where}:{number}: line of {len(line):,} characters is longer than the "
            f"{MAX_LINE_CHARS:,} allowed (rnnbench.data.base.MAX_LINE_CHARS); a sentence or "
            f"document is far shorter: check the file has one per line, or cut this one"
        )
    return line


def check_lines(lines: list[str], where: str | os.PathLike, first: int = 1) -> list[str]:
    """`lines` (numbered from `first`), each passed through check_line."""
    for number, line in enumerate(lines, start=first):
        check_line(line, where, number)
    return lines


class TensorDictDataset(Dataset):
    """Rows of equally long tensors, served as {name: row}."""

    def __init__(self, **tensors: Tensor) -> None:
        sizes = {t.size(0) for t in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"tensors of different lengths: {sizes}")
        self.tensors = tensors

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).size(0)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


class EpochShuffle(Sampler[int]):
    """Indices for one epoch: a permutation drawn from (seed, epoch) alone, so a run resumed
    at epoch k reads the same order as an uninterrupted one; under DDP each rank takes every
    world-th index of the same permutation (trimmed so all ranks take the same number)."""

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1) -> None:
        self.size, self.seed, self.shuffle, self.rank, self.world = size, seed, shuffle, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at each epoch start
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.world if self.world > 1 else self.size

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        if self.world > 1:
            order = order[: len(self) * self.world][self.rank :: self.world]
        return iter(order.tolist())


def own_generator() -> torch.Generator:
    """A DataLoader's own generator. Without one, every `iter(loader)` draws its base seed
    from the global RNG: the validation and test loaders would shift the dropout masks of
    later epochs, and a resumed run (which makes its iterators at other points) would draw other
    masks than an uninterrupted one."""
    return torch.Generator().manual_seed(0)


def rank_and_world(datamodule: pl.LightningDataModule) -> tuple[int, int]:
    trainer = datamodule.trainer
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


class SequenceDataModule(pl.LightningDataModule):
    """Base of every dataset. Subclasses set `task` (a kind of rnnbench.tasks: it says the head,
    the loss, the metrics and the headline) and `causal`, and implement `load_splits` and
    `model_io`."""

    task = ""
    causal = False  # next-step prediction: a bidirectional model would see the answer
    unit = ""
    collate: Callable | None = None

    def __init__(
        self, name: str, batch_size: int, eval_batch_size: int | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        check_arguments(DataSchema, "data", batch_size=batch_size, eval_batch_size=eval_batch_size)
        self.name, self.seed = name, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.splits: dict[str, Dataset] = {}

    @property
    def kind(self) -> TaskKind:
        return kind_of(self.task)

    @property
    def headline_metric(self) -> str:
        """The metric tables show by default (the task kind's; bits per character for text
        counted in characters)."""
        return self.kind.headline_metric(self.unit)

    def load_splits(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def model_io(self) -> dict[str, Any]:
        """Keyword arguments for rnnbench.nn.model.SequenceModel: vocab_size or input_size,
        output_size, readout ("all" | "last") and causal."""
        raise NotImplementedError

    def reference_metrics(self) -> dict[str, float]:
        """Numbers to read a result against: an exact optimum or a trivial baseline."""
        return {}

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.load_splits()

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        rank, world = rank_and_world(self)
        sampler = EpochShuffle(len(self.splits[split]), self.seed, train, rank, world)
        return DataLoader(
            self.splits[split],
            sampler=sampler,
            collate_fn=self.collate,
            batch_size=self.batch_size if train else self.eval_batch_size,
            generator=own_generator(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
