"""Polyphonic music (Boulanger-Lewandowski et al. 2012) as TCN ships it: 88-key piano rolls in
.mat files, next-frame prediction."""

from __future__ import annotations

from pathlib import Path

import torch
from scipy.io import loadmat
from torch import Tensor

from rnnbench.data.base import SPLITS, SequenceDataModule
from rnnbench.data.fetch import DataFolder
from rnnbench.errors import DataError

KEYS = 88
FILES = {
    "jsb": "JSB_Chorales",
    "nottingham": "Nottingham",
    "musedata": "MuseData",
    "piano_midi": "Piano_midi",
}


def read_piano_rolls(path: Path) -> dict[str, list[Tensor]]:
    """{split: [(T, 88) float tensors]} from a TCN .mat file (keys traindata/validdata/testdata)."""

    try:
        mat = loadmat(path)
        rolls = {
            split: [torch.as_tensor(a, dtype=torch.float32) for a in mat[f"{split}data"][0]]
            for split in SPLITS
        }
    except (ValueError, OSError, KeyError, IndexError, TypeError) as e:
        raise DataError(
            f"cannot read piano rolls from {path} ({type(e).__name__}: {e}); "
            f"it is truncated or not a TCN .mat file: delete it to download it again"
        ) from None
    for split, seqs in rolls.items():
        for i, roll in enumerate(seqs):
            if roll.dim() != 2 or roll.size(1) != KEYS:
                raise DataError(
                    f"{path}: {split} sequence {i} has shape {tuple(roll.shape)}, "
                    f"expected (frames, {KEYS})"
                )
    return rolls


class PianoRolls(torch.utils.data.Dataset):
    def __init__(self, rolls: list[Tensor]) -> None:
        self.rolls = [r for r in rolls if r.size(0) > 1]

    def __len__(self) -> int:
        return len(self.rolls)

    def __getitem__(self, i: int) -> Tensor:
        return self.rolls[i]


def pad_next_frame(rolls: list[Tensor]) -> dict[str, Tensor]:
    """Inputs are frames 0..T-2, targets frames 1..T-1, right-padded; `mask` marks real frames
    (padding comes after every real frame, so a causal model never reads it before them)."""
    steps = max(r.size(0) for r in rolls) - 1
    x = torch.zeros(len(rolls), steps, KEYS)
    y = torch.zeros(len(rolls), steps, KEYS)
    mask = torch.zeros(len(rolls), steps)
    for i, r in enumerate(rolls):
        n = r.size(0) - 1
        x[i, :n], y[i, :n], mask[i, :n] = r[:-1], r[1:], 1.0
    return {"x": x, "y": y, "mask": mask}


class PolyphonicMusic(SequenceDataModule):
    """JSB Chorales, Nottingham, MuseData or Piano-midi.de; NLL per frame is the metric."""

    task, causal = "multilabel", True
    collate = staticmethod(pad_next_frame)

    def __init__(
        self,
        name: str = "jsb",
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        seed: int = 0,
        root: str | None = None,
        download: bool = True,
        mirror: str | None = None,
    ) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed)
        if name not in FILES:
            raise DataError(f"data.name={name!r} is not a music dataset: use one of {list(FILES)}")
        self.relpath = f"poly_music/{FILES[name]}.mat"
        self.folder = DataFolder(root, download, mirror)

    def load_splits(self) -> dict[str, PianoRolls]:
        rolls = read_piano_rolls(self.folder.path(self.relpath))
        return {split: PianoRolls(seqs) for split, seqs in rolls.items()}

    def model_io(self) -> dict:
        return {
            "input_size": KEYS,
            "output_size": KEYS,
            "readout": self.kind.readout,
            "causal": True,
        }
