"""Language-modelling data: a vocabulary from the train split, the token stream cut into
`batch_size` contiguous streams, and windows of `bptt` tokens read in order so the model's hidden
state can be carried from one window to the next (truncated BPTT, as in Zaremba et al. 2014 and
pytorch/examples word_language_model).
"""

from __future__ import annotations

import math
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from rnnbench.data.base import (
    SPLITS,
    SequenceDataModule,
    check_lines,
    own_generator,
    rank_and_world,
)
from rnnbench.data.fetch import ensure_file
from rnnbench.errors import ConfigError, DataError
from rnnbench.schema import TextCorpusSchema, check_arguments

EOS = "<eos>"
UNK = "<unk>"


class Vocabulary:
    """Token <-> index, most frequent first (ties by first appearance), built from one split."""

    def __init__(
        self, tokens: Iterable[str], add_unk: bool = False, specials: Sequence[str] = ()
    ) -> None:
        counts = self.counts = Counter(tokens)
        # `specials` (such as a padding token) take the first indices, in the order given.
        self.itos: list[str] = [
            *specials,
            *(t for t, _ in counts.most_common() if t not in specials),
        ]
        if add_unk and UNK not in self.itos:
            self.itos.append(UNK)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def from_itos(cls, itos: Sequence[str]) -> Vocabulary:
        """The vocabulary with exactly these tokens, in this order (a cached one)."""
        vocab = cls(())
        vocab.itos = list(itos)
        vocab.stoi = {t: i for i, t in enumerate(vocab.itos)}
        return vocab

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> torch.Tensor:
        unk = self.stoi.get(UNK)
        if unk is None:
            ids = [self.stoi[t] for t in tokens]
        else:
            ids = [self.stoi.get(t, unk) for t in tokens]
        return torch.tensor(ids, dtype=torch.long)


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D token stream into `batch_size` contiguous rows, dropping the ragged tail."""
    n = ids.numel() // batch_size
    if n < 2:
        raise ConfigError(
            f"data.batch_size={batch_size} leaves fewer than 2 tokens per stream for a split of "
            f"{ids.numel()} tokens: use a smaller batch size"
        )
    return ids[: n * batch_size].view(batch_size, n)


class BPTTWindows(Dataset):
    """Window i of a batchified stream: inputs rows[:, i*bptt : i*bptt+L], targets shifted by one.

    Each item is a whole batch, so a DataLoader over it uses batch_size=None and no shuffling.
    """

    def __init__(self, rows: torch.Tensor, bptt: int) -> None:
        self.rows, self.bptt = rows, bptt

    def __len__(self) -> int:
        return math.ceil((self.rows.size(1) - 1) / self.bptt)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = i * self.bptt
        length = min(self.bptt, self.rows.size(1) - 1 - start)
        return {
            "x": self.rows[:, start : start + length],
            "y": self.rows[:, start + 1 : start + 1 + length],
        }


class LMDataModule(SequenceDataModule):
    """Base of every language-modelling dataset; subclasses return each split's tokens."""

    task = "lm"
    causal = True

    def __init__(
        self, name: str, batch_size: int, eval_batch_size: int, bptt: int, unit: str = "word"
    ) -> None:
        super().__init__(name, batch_size, eval_batch_size)
        check_arguments(TextCorpusSchema, "data", bptt=bptt)
        self.unit, self.bptt = unit, bptt
        self.vocab: Vocabulary | None = None
        self.rows: dict[str, torch.Tensor] = {}

    def load_tokens(self) -> dict[str, list[str]]:
        """Each split's token sequence (train, valid, test)."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def model_io(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "output_size": self.vocab_size,
            "readout": self.kind.readout,
            "causal": True,
        }

    def setup(self, stage: str | None = None) -> None:
        if self.rows:
            return
        tokens = self.load_tokens()
        train_types = set(tokens["train"])
        has_oov = any(t not in train_types for s in ("valid", "test") for t in tokens[s])
        self.vocab = Vocabulary(tokens["train"], add_unk=has_oov)
        for split in SPLITS:
            size = self.batch_size if split == "train" else self.eval_batch_size
            self.rows[split] = batchify(self.vocab.encode(tokens[split]), size)

    def num_tokens(self, split: str) -> int:
        """How many target tokens one pass over `split` predicts."""
        rows = self.rows[split]
        return rows.size(0) * (rows.size(1) - 1)

    def _loader(self, split: str) -> DataLoader:
        rows = self.rows[split]
        rank, world = rank_and_world(self)
        if world > 1:
            # Under DDP each rank reads its own share of the contiguous streams, in order, so
            # the hidden state still flows from one window to the next.
            if rows.size(0) % world:
                raise ConfigError(
                    f"data.batch_size and data.eval_batch_size must be divisible "
                    f"by the {world} DDP processes (got {rows.size(0)})"
                )
            rows = rows[rank::world]
        return DataLoader(
            BPTTWindows(rows, self.bptt), batch_size=None, shuffle=False, generator=own_generator()
        )


def words(line: str) -> list[str]:
    """Whitespace tokens plus one end-of-sentence marker (PTB word and character files)."""
    return line.split() + [EOS]


def d2l_chars(line: str) -> list[str]:
    """D2L's Time Machine preprocessing: non-letters become spaces, lower case, characters."""
    return list(re.sub("[^A-Za-z]+", " ", line).strip().lower())


TOKENIZERS = {"words": words, "d2l_chars": d2l_chars}


class TextCorpus(LMDataModule):
    """A text corpus read from files under the data folder, one tokenizer per line.

    `files` maps split -> catalogue path (`archive.zip:member` reads a member of a verified
    archive); a single `all` entry is cut in order into train/valid/test by `split` fractions.
    """

    def __init__(
        self,
        name: str,
        files: dict[str, str],
        tokenizer: str = "words",
        unit: str = "word",
        batch_size: int = 20,
        eval_batch_size: int = 10,
        bptt: int = 35,
        root: str | None = None,
        download: bool = True,
        mirror: str | None = None,
        split: Sequence[float] | None = None,
    ) -> None:
        super().__init__(name, batch_size, eval_batch_size, bptt, unit)
        if tokenizer not in TOKENIZERS:
            raise ConfigError(
                f"data.tokenizer={tokenizer!r} is unknown: use one of {sorted(TOKENIZERS)}"
            )
        self.files, self.tokenize = dict(files), TOKENIZERS[tokenizer]
        self.root, self.download, self.mirror = root, download, mirror
        self.split = list(split) if split is not None else None

    def _read_lines(self, spec: str) -> list[str]:
        relpath, _, member = spec.partition(":")
        path = ensure_file(relpath, self.root, self.download, self.mirror)
        try:
            if member:
                with zipfile.ZipFile(path) as archive:
                    text = archive.read(member).decode("utf-8")
            else:
                text = Path(path).read_text(encoding="utf-8")
        except (KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {spec} from {path}: {e}") from None
        lines = text.splitlines()
        check_lines(lines, f"{path}:{member}" if member else path)
        # The PTB character files end with "\n " (each symbol, newline included, is followed by
        # a space): that last blank fragment is not a line and gets no end-of-line marker.
        while lines and not lines[-1].strip():
            lines.pop()
        return lines

    def _tokens(self, lines: Iterable[str]) -> list[str]:
        return [t for line in lines for t in self.tokenize(line)]

    def load_tokens(self) -> dict[str, list[str]]:
        if "all" in self.files:
            lines = self._read_lines(self.files["all"])
            fractions = self.split or [0.8, 0.1, 0.1]
            cut1 = int(len(lines) * fractions[0])
            cut2 = cut1 + int(len(lines) * fractions[1])
            parts = {"train": lines[:cut1], "valid": lines[cut1:cut2], "test": lines[cut2:]}
            return {s: self._tokens(parts[s]) for s in SPLITS}
        return {s: self._tokens(self._read_lines(self.files[s])) for s in SPLITS}
