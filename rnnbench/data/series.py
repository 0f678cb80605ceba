"""Time-series forecasting from CSV files: ETTh1/ETTh2 (Zhou et al. 2021) and the airline
passengers series. Windows of `lookback` rows predict the next `horizon` rows; normalisation is
fitted on the train rows only, and metrics are on that normalised scale, as the literature
reports them."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from rnnbench.data.base import SPLITS, SequenceDataModule
from rnnbench.data.fetch import DataFolder
from rnnbench.errors import ConfigError, DataError
from rnnbench.schema import ForecastingSchema, check_arguments


def read_columns(path, columns: Sequence[str], relpath: str) -> Tensor:
    """The named numeric columns of a CSV as a (rows, columns) float tensor."""

    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError) as e:
        raise DataError(f"cannot read {relpath} as CSV: {e}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"column(s) {missing} not in {relpath}: its columns are {list(frame.columns)}"
        )
    values = frame[list(columns)]
    if not all(pd.api.types.is_numeric_dtype(values[c]) for c in columns):
        raise DataError(f"columns {list(columns)} of {relpath} are not all numeric")
    return torch.tensor(values.to_numpy(), dtype=torch.float32)


class Windows(torch.utils.data.Dataset):
    """Window i: rows [s-lookback, s) in, rows [s, s+horizon) of the target columns out."""

    def __init__(
        self, series: Tensor, starts: range, lookback: int, horizon: int, targets: list[int]
    ) -> None:
        self.series, self.starts = series, starts
        self.lookback, self.horizon, self.targets = lookback, horizon, targets

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        s = self.starts[i]
        return {
            "x": self.series[s - self.lookback : s],
            "y": self.series[s : s + self.horizon, self.targets],
        }


class Forecasting(SequenceDataModule):
    """Forecast `targets` `horizon` steps ahead from `lookback` steps of `columns`.

    `split` gives the number of rows of train, valid and test, in order from the first row
    (ETT: 12/4/4 months of hourly rows as in Informer; airline: the last 24 months held out).
    A valid or test window may read its lookback from the rows before its split, as Informer's
    loader does; its targets stay inside the split.
    """

    task = "regress"

    def __init__(
        self,
        name: str,
        file: str,
        columns: Sequence[str],
        targets: Sequence[str],
        split: Sequence[int],
        lookback: int = 96,
        horizon: int = 24,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        seed: int = 0,
        root: str | None = None,
        download: bool = True,
        mirror: str | None = None,
    ) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed)
        check_arguments(ForecastingSchema, "data", lookback=lookback, horizon=horizon)
        unknown = [t for t in targets if t not in columns]
        if unknown:
            raise ConfigError(
                f"data.targets={list(targets)} names {unknown}, which are not in "
                f"data.columns={list(columns)}"
            )
        self.file, self.columns, self.targets = file, list(columns), list(targets)
        self.split, self.lookback, self.horizon = list(split), lookback, horizon
        self.folder = DataFolder(root, download, mirror)
        self.mean: Tensor | None = None
        self.std: Tensor | None = None

    def load_splits(self) -> dict[str, Windows]:
        series = read_columns(self.folder.path(self.file), self.columns, self.file)
        if sum(self.split) > series.size(0):
            raise ConfigError(
                f"data.split={self.split} needs {sum(self.split)} rows but "
                f"{self.file} has {series.size(0)}"
            )
        train_rows = self.split[0]
        self.mean = series[:train_rows].mean(0)
        self.std = series[:train_rows].std(0).clamp_min(1e-8)
        series = (series - self.mean) / self.std
        targets = [self.columns.index(t) for t in self.targets]
        splits, border = {}, 0
        for name, rows in zip(SPLITS, self.split, strict=True):
            first = max(border, self.lookback)  # the first target row with a full lookback
            starts = range(first, border + rows - self.horizon + 1)
            if len(starts) == 0:
                raise ConfigError(
                    f"data.lookback={self.lookback} + data.horizon={self.horizon} is longer "
                    f"than the {name} split of {self.file} allows ({rows} rows): shorten the "
                    f"window"
                )
            splits[name] = Windows(series, starts, self.lookback, self.horizon, targets)
            border += rows
        return splits

    def model_io(self) -> dict:
        return {
            "input_size": len(self.columns),
            "output_size": self.horizon * len(self.targets),
            "readout": self.kind.readout,
            "causal": False,
        }

    def reference_metrics(self) -> dict[str, float]:
        """Repeating the last observed value over the horizon: the naive forecast to beat."""
        test = self.splits["test"]
        errors = torch.cat([(w["y"] - w["x"][-1, test.targets]).reshape(-1) for w in test])
        return {
            "test/mse_naive": float((errors**2).mean()),
            "test/mae_naive": float(errors.abs().mean()),
        }
