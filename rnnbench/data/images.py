"""Sequential MNIST (Le et al. 2015): each image read pixel by pixel, 784 steps of one input in
[0, 1]; permuted MNIST reads the pixels in one fixed random order."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch
from torch import Tensor

from rnnbench.data.base import SequenceDataModule
from rnnbench.data.fetch import DataFolder
from rnnbench.errors import DataError

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> Tensor:
    """An IDX file (gzip): magic 2051 -> (n, rows, cols) uint8 images, 2049 -> (n,) labels."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        magic, n = struct.unpack(">II", raw[:8])
        if magic == 2051:
            rows, cols = struct.unpack(">II", raw[8:16])
            shape, offset = (n, rows, cols), 16
        elif magic == 2049:
            shape, offset = (n,), 8
        else:
            raise ValueError(f"magic number {magic} is neither 2051 nor 2049")
        data = torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8)
        return data.view(*shape)
    except (OSError, EOFError, ValueError, RuntimeError, struct.error) as e:
        raise DataError(f"cannot read {path} as a gzipped IDX file: {e}") from None


class PixelSequences(torch.utils.data.Dataset):
    def __init__(self, images: Tensor, labels: Tensor, order: Tensor | None) -> None:
        flat = images.reshape(images.size(0), -1)
        self.pixels = flat[:, order] if order is not None else flat
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.labels.size(0)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.pixels[i].unsqueeze(-1).float().div_(255.0), "y": self.labels[i]}


class PixelMNIST(SequenceDataModule):
    """`seq_mnist` (permute=false) or `pmnist` (permute=true, order drawn from
    `permutation_seed`). The last `valid_size` images of a seeded shuffle of train validate."""

    task = "classify"

    def __init__(
        self,
        name: str = "seq_mnist",
        permute: bool = False,
        permutation_seed: int = 0,
        valid_size: int = 5000,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
        root: str | None = None,
        download: bool = True,
        mirror: str | None = None,
    ) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed)
        self.permute, self.permutation_seed, self.valid_size = permute, permutation_seed, valid_size
        self.folder = DataFolder(root, download, mirror)

    def read(self, split: str) -> tuple[Tensor, Tensor]:
        images, labels = (read_idx(self.folder.path(f"mnist/{f}")) for f in FILES[split])
        if images.size(0) != labels.size(0):
            raise DataError(f"MNIST {split}: {images.size(0)} images but {labels.size(0)} labels")
        return images, labels

    def load_splits(self) -> dict[str, PixelSequences]:
        order = None
        if self.permute:
            order = torch.randperm(
                784, generator=torch.Generator().manual_seed(self.permutation_seed)
            )
        images, labels = self.read("train")
        # A fixed split, independent of the run's seed, so every run validates on the same images.
        shuffle = torch.randperm(images.size(0), generator=torch.Generator().manual_seed(0))
        train, valid = shuffle[: -self.valid_size], shuffle[-self.valid_size :]
        test_images, test_labels = self.read("test")
        return {
            "train": PixelSequences(images[train], labels[train], order),
            "valid": PixelSequences(images[valid], labels[valid], order),
            "test": PixelSequences(test_images, test_labels, order),
        }

    def model_io(self) -> dict:
        return {"input_size": 1, "output_size": 10, "readout": self.kind.readout, "causal": False}
