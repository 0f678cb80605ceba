"""SST-2 sentence sentiment (GLUE format). GLUE's test split has no labels, so dev.tsv is our
test split and validation is carved from train with a fixed seed."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from rnnbench.data.base import SequenceDataModule, check_line
from rnnbench.data.fetch import DataFolder
from rnnbench.data.lm import Vocabulary
from rnnbench.errors import DataError

PAD = "<pad>"


def read_sst2(path: Path, relpath: str) -> list[tuple[list[str], int]]:
    """(lower-cased whitespace tokens, label) per row of a `sentence<TAB>label` file; a line
    longer than MAX_LINE_CHARS is refused naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        header = check_line(f.readline().rstrip("\n"), path, 1).split("\t")
        if header != ["sentence", "label"]:
            raise DataError(
                f"{relpath} line 1: expected the header 'sentence<TAB>label', got {header}"
            )
        for lineno, line in enumerate(f, start=2):
            fields = check_line(line.rstrip("\n"), path, lineno).split("\t")
            if len(fields) != 2 or fields[1].strip() not in ("0", "1") or not fields[0].strip():
                raise DataError(
                    f"{relpath} line {lineno}: expected 'sentence<TAB>label' with "
                    f"label 0 or 1, got {line.rstrip()[:80]!r}"
                )
            rows.append((fields[0].lower().split(), int(fields[1])))
    return rows


class Sentences(torch.utils.data.Dataset):
    def __init__(self, rows: list[tuple[list[str], int]], vocab: Vocabulary) -> None:
        self.ids = [vocab.encode(tokens) for tokens, _ in rows]
        self.labels = torch.tensor([label for _, label in rows])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.ids[i], self.labels[i]


def pad_sentences(items: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Right-pad with id 0 (<pad>); `lengths` lets the model pack, so padding never reaches
    the recurrence."""
    lengths = torch.tensor([ids.numel() for ids, _ in items])
    x = torch.zeros(len(items), int(lengths.max()), dtype=torch.long)
    for i, (ids, _) in enumerate(items):
        x[i, : ids.numel()] = ids
    return {"x": x, "lengths": lengths, "y": torch.stack([label for _, label in items])}


class SST2(SequenceDataModule):
    task = "classify"
    collate = staticmethod(pad_sentences)

    def __init__(
        self,
        name: str = "sst2",
        valid_size: int = 872,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
        root: str | None = None,
        download: bool = True,
        mirror: str | None = None,
    ) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed)
        self.valid_size = valid_size
        self.folder = DataFolder(root, download, mirror)
        self.vocab: Vocabulary | None = None

    def load_splits(self) -> dict[str, Sentences]:
        rows = {
            f: read_sst2(self.folder.path(f"sst2/{f}.tsv"), f"sst2/{f}.tsv")
            for f in ("train", "dev")
        }
        # A fixed carve-out, independent of the run's seed: every run validates on the same rows.
        order = torch.randperm(len(rows["train"]), generator=torch.Generator().manual_seed(0))
        train = [rows["train"][i] for i in order[: -self.valid_size]]
        valid = [rows["train"][i] for i in order[-self.valid_size :]]
        self.vocab = Vocabulary(
            (t for tokens, _ in train for t in tokens), add_unk=True, specials=[PAD]
        )
        return {
            "train": Sentences(train, self.vocab),
            "valid": Sentences(valid, self.vocab),
            "test": Sentences(rows["dev"], self.vocab),
        }

    def model_io(self) -> dict:
        return {
            "vocab_size": len(self.vocab),
            "output_size": 2,
            "readout": self.kind.readout,
            "causal": False,
        }
