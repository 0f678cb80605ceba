"""Generated long-memory tasks from Bai et al. 2018: the adding problem and copy memory, drawn
from the run's seed."""

from __future__ import annotations

import math

import torch

from rnnbench.data.base import SequenceDataModule, TensorDictDataset
from rnnbench.errors import ConfigError
from rnnbench.schema import SyntheticSchema, check_arguments


class GeneratedSplits(SequenceDataModule):
    """Train/valid/test drawn one after another from one seeded generator."""

    def __init__(
        self,
        name: str,
        seq_len: int,
        train_size: int,
        valid_size: int,
        test_size: int,
        batch_size: int,
        eval_batch_size: int | None,
        seed: int,
    ) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed)
        check_arguments(
            SyntheticSchema,
            "data",
            seq_len=seq_len,
            train_size=train_size,
            valid_size=valid_size,
            test_size=test_size,
        )
        self.seq_len = seq_len
        self.sizes = {"train": train_size, "valid": valid_size, "test": test_size}

    def generate(self, n: int, generator: torch.Generator) -> TensorDictDataset:
        raise NotImplementedError

    def load_splits(self) -> dict[str, TensorDictDataset]:
        generator = torch.Generator().manual_seed(self.seed)
        return {split: self.generate(n, generator) for split, n in self.sizes.items()}


class AddingProblem(GeneratedSplits):
    """Hochreiter & Schmidhuber 1997, as in Bai et al.: channel 0 holds uniform values, channel 1
    marks exactly two positions; the target is the sum of the two marked values."""

    task = "regress"

    def __init__(
        self,
        name: str = "adding",
        seq_len: int = 600,
        train_size: int = 50_000,
        valid_size: int = 1000,
        test_size: int = 1000,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(seq_len, int) and seq_len < 2:
            raise ConfigError(
                f"data.seq_len={seq_len} is not allowed: the adding problem marks "
                f"two distinct steps, use an integer >= 2"
            )
        super().__init__(
            name, seq_len, train_size, valid_size, test_size, batch_size, eval_batch_size, seed
        )

    def generate(self, n: int, generator: torch.Generator) -> TensorDictDataset:
        values = torch.rand(n, self.seq_len, generator=generator)
        # Two distinct positions per row, uniformly: the first two of a random permutation.
        positions = torch.rand(n, self.seq_len, generator=generator).argsort(dim=1)[:, :2]
        marks = torch.zeros(n, self.seq_len).scatter_(1, positions, 1.0)
        x = torch.stack([values, marks], dim=-1)
        y = (values * marks).sum(dim=1, keepdim=True)
        return TensorDictDataset(x=x, y=y)

    def model_io(self) -> dict:
        return {"input_size": 2, "output_size": 1, "readout": self.kind.readout, "causal": False}

    def reference_metrics(self) -> dict[str, float]:
        """The trivial predictor always answers 1, the target's mean: MSE = 2 × Var U(0,1) = 1/6."""
        y = self.splits["test"].tensors["y"]
        return {"test/mse_baseline": float(((y - 1.0) ** 2).mean())}


class CopyMemory(GeneratedSplits):
    """Bai et al.'s copy memory: 10 digits from 1-8, then T-1 blanks (0), then 11 delimiters (9);
    the output is 0 everywhere except the last 10 steps, which must repeat the digits."""

    task, causal = "steps", True
    MEMORY, SYMBOLS = 10, 10

    def __init__(
        self,
        name: str = "copy_memory",
        seq_len: int = 1000,
        train_size: int = 10_000,
        valid_size: int = 1000,
        test_size: int = 1000,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            name, seq_len, train_size, valid_size, test_size, batch_size, eval_batch_size, seed
        )

    def generate(self, n: int, generator: torch.Generator) -> TensorDictDataset:
        m, t = self.MEMORY, self.seq_len
        digits = torch.randint(1, 9, (n, m), generator=generator)
        x = torch.cat(
            [digits, torch.zeros(n, t - 1, dtype=torch.long), torch.full((n, m + 1), 9)], dim=1
        )
        y = torch.cat([torch.zeros(n, m + t, dtype=torch.long), digits], dim=1)
        return TensorDictDataset(x=x, y=y)

    def model_io(self) -> dict:
        return {
            "vocab_size": self.SYMBOLS,
            "output_size": self.SYMBOLS,
            "readout": self.kind.readout,
            "causal": True,
        }

    def reference_metrics(self) -> dict[str, float]:
        """A memoryless model answers 0 until the end, then guesses among the 8 digits."""
        return {"test/loss_baseline": self.MEMORY * math.log(8) / (self.seq_len + 2 * self.MEMORY)}
