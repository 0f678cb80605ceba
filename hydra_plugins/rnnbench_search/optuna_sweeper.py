"""`hydra/sweeper=optuna`: Hydra's Sweeper interface over Optuna's ask-and-tell API.

Each trial is an ordinary rnnbench job, launched by the configured launcher (basic, joblib,
submitit), with the proposed values as overrides: it trains, reuses or resumes exactly as any
run does and returns its record, whose validation headline the sweeper tells the study. See
rnnbench.run.search for the search space, the studies, the storage and the objective.
"""

# No `from __future__ import annotations`: Hydra's plugin scan loads this file outside
# sys.modules, where dataclasses cannot resolve string annotations.
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Optional  # noqa: UP035 - OmegaConf reads these types

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.rnnbench_search.optuna_sweeper.OptunaSweeper"
    study_name: str = "search"  # one study per value of a command-line sweep: NAME-key=value
    n_trials: int = 10  # trials per study in all, whatever number of launches made them
    sampler: str = "tpe"  # tpe | random | grid
    seed: int = 1234  # a relaunch proposes the trials an uninterrupted search would have
    storage: Optional[str] = None  # noqa: UP045 - null: sqlite in the sweep folder; journal:PATH; a DB URL
    # Pruning over the per-epoch validation headline: median | halving | hyperband, null: none.
    pruner: Optional[str] = None  # noqa: UP045
    pruner_startup_trials: int = 5  # median: trials that finish before any is compared
    pruner_min_epochs: int = 1  # epochs every trial trains before it can be pruned
    # After the trials: the best trial's config run again with the seeds after `seed`'s, its
    # test figure their mean ± std (0: none).
    confirm_seeds: int = 3
    # The confirming seeds train at once as one pack (one job) where pack allows the
    # configuration (README, "Packed runs"); false: one job per seed.
    confirm_pack: bool = True
    params: Dict[str, str] = field(default_factory=dict)  # noqa: UP006


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf)


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        study_name: str,
        n_trials: int,
        sampler: str,
        seed: int,
        storage: str | None,
        params: dict[str, str] | None,
        pruner: str | None = None,
        pruner_startup_trials: int = 5,
        pruner_min_epochs: int = 1,
        confirm_seeds: int = 3,
        confirm_pack: bool = True,
    ) -> None:
        self.study_name, self.n_trials, self.sampler = study_name, n_trials, sampler
        self.pruner, self.pruner_startup_trials = pruner, pruner_startup_trials
        self.pruner_min_epochs, self.confirm_seeds = pruner_min_epochs, confirm_seeds
        self.confirm_pack = confirm_pack
        self.seed, self.storage, self.params = seed, storage, dict(params or {})
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from rnnbench.errors import UserError
        from rnnbench.run.search import run_studies

        try:
            return run_studies(self, arguments)
        except UserError as e:  # a bad value, or a runs folder without file locks
            print(f"rnnbench: error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            from rnnbench.run.sweep import end_interrupted_job, stopped_by

            if stopped_by() is None:
                raise
            # Stopped while no job of its own ran (waiting on other workers' trials or seeds):
            # nothing to record, only the summary line and the stop's exit status.
            end_interrupted_job(self.config.hydra.sweep.dir)
