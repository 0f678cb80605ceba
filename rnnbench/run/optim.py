"""Learning-rate schedules that torch.optim does not ship ready to configure."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def step_decay(optimizer: Optimizer, start_epoch: int = 4, factor: float = 2.0) -> LambdaLR:
    """Zaremba et al. 2014: keep lr for `start_epoch` epochs, then divide it by `factor` at the
    end of every later epoch (epoch k, counted from 1, runs at lr / factor^max(0, k - start))."""
    return LambdaLR(optimizer, lambda e: factor ** -max(0, e + 1 - start_epoch))
