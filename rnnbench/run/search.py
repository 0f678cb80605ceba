"""Hyperparameter search over Optuna's ask-and-tell API: what the `optuna` Hydra sweeper
(hydra_plugins/rnnbench_search) asks of a study, kept here where it can be read and tested.

    rnnbench -m hparams_search=reber model=rnn,lstm        # one study per cell, equal budgets

- The search space is `hydra.sweeper.params` in Hydra's sweep syntax: `interval(a, b)` (a float,
  or an int when both ends are), `tag(log, interval(a, b))` (log-uniform), `range(a, b[, step])`
  (ints, b excluded as in Hydra), `choice(x, y, ...)` or `x,y,...` (categorical).
- A sweep on the command line (`model=rnn,lstm`) is not searched: each of its values gets a
  study of its own over the same space and the same `n_trials`.
- A study is persistent: SQLite in the search's folder by default, any RDB URL, or a journal
  file (`storage=journal:PATH`, for a shared filesystem); launched again, it goes on to
  `n_trials` in all, and a trial whose configuration has a completed record costs nothing (the
  run reuses it). The sampler is seeded per trial number, so a relaunch proposes exactly the
  trials an uninterrupted search would have.
- The objective is the validation value of the data's headline metric (val/ppl, val/acc,
  val/nll, ...; val/loss for sequence to sequence, whose headline is decoded at test only),
  read from the trial's record; its direction comes from the task kind.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
)
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from rnnbench.config import config_problem
from rnnbench.errors import ConfigError
from rnnbench.results.record import RECORD_FILE, run_key
from rnnbench.results.studies import best_trial, mean_spread
from rnnbench.run import claims
from rnnbench.run.shared_study import (
    FILE_STORAGES,
    beyond_budget,
    claims_folder,
    counted,
    open_storage,
    owner,
    requeue_stale,
    running_elsewhere,
)
from rnnbench.run.sweep import note_launched_folders, note_unrecorded_failures, parallel_jobs
from rnnbench.run.trial import PRUNERS, PrunerSpec, confirmation_env, env_overrides
from rnnbench.tasks import KINDS, direction

SAMPLERS = ("tpe", "random", "grid")
WAIT_S = 5.0  # between looks at what other workers of a study are doing
# The study's user attributes naming the trial its idle workers confirmed before its last trials
# ended (the best then), and the runs that did.
EARLY, EARLY_RUNS = "confirmed_early", "confirmed_early_runs"


@dataclass
class Dimension:
    """One searched key: its Optuna distribution, and the override a proposed value makes."""

    key: str
    distribution: Any  # optuna.distributions.BaseDistribution

    def override(self, value: Any) -> str:
        return override_line(self.key, value)


def override_line(key: str, value: Any) -> str:
    """`key=value` as Hydra reads it back as `value`: None as null, booleans as true/false, a
    string with characters the override grammar would read otherwise quoted."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, str) and not re.fullmatch(r"[\w./@:+-]+", value):
        text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    else:
        text = str(value)
    return f"{key}={text}"


def dimension(override: Override) -> Dimension:
    """The distribution of one `hydra.sweeper.params` entry; ConfigError for a range that is
    empty or inverted, or a sweep of another kind."""
    d = optuna.distributions
    key, sweep = override.get_key_element(), override.value()
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high:
            raise ConfigError(
                f"hydra.sweeper.params.{key}=interval({low}, {high}) is empty or inverted: "
                f"give interval(low, high) with low < high"
            )
        log = "log" in sweep.tags
        if log and low <= 0:
            raise ConfigError(
                f"hydra.sweeper.params.{key}: a log interval needs low > 0, not {low}"
            )
        if isinstance(low, int) and isinstance(high, int):
            return Dimension(key, d.IntDistribution(low, high, log=log))
        return Dimension(key, d.FloatDistribution(float(low), float(high), log=log))
    if isinstance(sweep, RangeSweep):
        if sweep.step == 0:
            raise ConfigError(
                f"hydra.sweeper.params.{key}: range({sweep.start}, {sweep.stop}, 0) has a step "
                f"of 0: give a step other than 0"
            )
        values = sorted(override.sweep_iterator())  # Hydra's values: floats, steps down
        if not values:
            raise ConfigError(
                f"hydra.sweeper.params.{key}=range({sweep.start}, {sweep.stop}) is empty: "
                f"range(a, b) proposes a, a+1, ..., b-1"
            )
        if all(isinstance(v, int) for v in values):
            step = abs(int(sweep.step or 1))
            return Dimension(key, d.IntDistribution(values[0], values[-1], step=step))
        return Dimension(key, d.CategoricalDistribution(values))
    if isinstance(sweep, ChoiceSweep):
        choices = [str(v) if isinstance(v, str) else v for v in sweep.list]
        return Dimension(key, d.CategoricalDistribution(choices))
    raise ConfigError(
        f"hydra.sweeper.params.{key}={override.get_value_element_as_str()}: use interval(a, b), "
        f"tag(log, interval(a, b)), range(a, b) or choice(x, y, ...)"
    )


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial `number` of a search seeded `seed`: a relaunch that goes on
    from trial N proposes what an uninterrupted search would have."""
    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(
    name: str, seed: int, space: list[Dimension] | None = None, n_trials: int | None = None
) -> Any:
    """Optuna's sampler `name`, seeded; a grid over `space`, which must hold `n_trials`."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid = {}
        for dim in space or []:
            dist = dim.distribution
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                grid[dim.key] = list(dist.choices)
            elif isinstance(dist, optuna.distributions.IntDistribution) and not dist.log:
                grid[dim.key] = list(range(dist.low, dist.high + 1, dist.step))
            else:
                raise ConfigError(
                    f"sampler=grid cannot enumerate hydra.sweeper.params.{dim.key} (a "
                    f"continuous interval): use choice(...) or range(...), or sampler=tpe"
                )
        points = math.prod(len(values) for values in grid.values())
        if n_trials is not None and n_trials > points:
            raise ConfigError(
                f"hydra.sweeper.n_trials={n_trials} is more than the grid's {points} points "
                f"(sampler=grid runs each once): give n_trials <= {points}"
            )
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise ConfigError(f"hydra.sweeper.sampler={name} is not allowed: use one of {SAMPLERS}")


def objective_metric(config: DictConfig) -> tuple[str, str]:
    """The metric a search of `config` optimises, and its direction (minimize | maximize):
    the validation value of the data's headline metric."""
    target = OmegaConf.select(config, "data._target_")
    task = getattr(get_class(target), "task", "") if target else ""
    kind = KINDS.get(task)
    if kind is None or kind.readout == "decoder":
        return "val/loss", "minimize"
    metric = "val/" + kind.headline_metric("").split("/", 1)[1]
    return metric, "minimize" if direction(metric, [task]) < 0 else "maximize"


def trial_value(record: Mapping[str, Any] | None, metric: str) -> float | None:
    """The value a trial's record gives `metric`, None when it has none (the run did not
    complete: failed, diverged, interrupted)."""
    if not isinstance(record, Mapping) or record.get("status") != "completed":
        return None
    value = (record.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


def suggest(trial: Any, dim: Dimension) -> Any:
    """Trial `trial`'s value of `dim` (a value it was enqueued with, else the sampler's)."""

    dist = dim.distribution
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return trial.suggest_float(dim.key, dist.low, dist.high, log=dist.log)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(dim.key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_categorical(dim.key, dist.choices)


def pruner_spec(sweeper: Any) -> PrunerSpec:
    """The sweeper's pruner settings; ConfigError for one that is not allowed."""
    name = sweeper.pruner
    if name in (None, "none"):
        return PrunerSpec(None)
    if name not in PRUNERS:
        raise ConfigError(
            f"hydra.sweeper.pruner={name} is not allowed: use one of {', '.join(PRUNERS)} or null"
        )
    for key in ("pruner_startup_trials", "pruner_min_epochs"):
        least = 0 if key == "pruner_startup_trials" else 1
        if getattr(sweeper, key) < least:
            raise ConfigError(
                f"hydra.sweeper.{key}={getattr(sweeper, key)} is not allowed: give at least {least}"
            )
    return PrunerSpec(name, sweeper.pruner_startup_trials, sweeper.pruner_min_epochs)


def study_name(base: str, axis: list[str]) -> str:
    """A study's name, also its jobs' folder: the search's, and the command-line sweep values
    it is for (`reber-model-gru` for model=gru)."""
    words = [a.replace("=", "-").replace("/", "_") for a in axis]
    return "-".join([base, *words])


def run_studies(sweeper: Any, arguments: list[str]) -> list[Any]:
    """The `optuna` sweeper's sweep: for each combination of the command line's sweeps, a
    study over `hydra.sweeper.params`, asked and told until it holds `n_trials` trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sweeper.n_trials < 1:
        raise ConfigError(
            f"hydra.sweeper.n_trials={sweeper.n_trials} is not allowed: a search needs at least "
            f"one trial"
        )
    if not 0 <= sweeper.seed < 2**32:
        raise ConfigError(
            f"hydra.sweeper.seed={sweeper.seed} is not allowed: give a whole number from 0 to "
            f"{2**32 - 1}"
        )
    confirm_seeds(0, sweeper.confirm_seeds)  # a bad count is said before hours of trials
    if not re.fullmatch(r"[\w.@+-]+", str(sweeper.study_name)):
        raise ConfigError(
            f"hydra.sweeper.study_name={sweeper.study_name!r} is not allowed: give a name of "
            f"letters, digits and . _ - (it names the study and its folders)"
        )
    config = sweeper.config
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    given = parser.parse_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    space = [dimension(o) for o in given if o.is_sweep_override()]
    if not space:
        raise ConfigError(
            "hydra.sweeper.params holds no range to search: give e.g. "
            "optim.lr: tag(log, interval(1e-4, 1e-1))"
        )
    fixed = [o.input_line for o in given if not o.is_sweep_override()]
    line = parser.parse_overrides(arguments)
    searched = {d.key for d in space}
    axes_overrides = [o for o in line if o.is_sweep_override()]
    fixed += [o.input_line for o in line if not o.is_sweep_override()]
    fixed = [f for f in fixed if f.split("=", 1)[0].lstrip("+~") not in searched]
    axes = BasicSweeper.split_arguments(axes_overrides, None)[0] if axes_overrides else [[]]
    sweep_dir = Path(config.hydra.sweep.dir)
    url = sweeper.storage or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
    if url.startswith("journal:"):  # the jobs may run elsewhere: an absolute path
        url = "journal:" + str(Path(url.removeprefix("journal:")).resolve())
    if url.startswith("sqlite://") and url.removeprefix("sqlite://") in ("", "/:memory:"):
        raise ConfigError(
            f"hydra.sweeper.storage={url} is not allowed: an in-memory study is not shared "
            f"with the trials' jobs; give sqlite:///PATH or journal:PATH"
        )
    pruner = pruner_spec(sweeper)
    storage = open_storage(url)
    width = parallel_jobs(config.hydra.get("launcher"))
    returns, job = [], 0
    loader = sweeper.hydra_context.config_loader
    # Every study is opened and held to what it was made for before anything runs: a refused
    # relaunch leaves the search as it was.
    opened = []
    for axis in axes:
        name = study_name(sweeper.study_name, axis)
        # The metric is this study's data's (a sweep over recipes may change the data).
        composed = loader.load_sweep_config(config, [*axis, *fixed])
        metric, goal = objective_metric(composed)
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            load_if_exists=True,
            direction=goal,
            sampler=make_sampler(sweeper.sampler, sweeper.seed, space, sweeper.n_trials),
            pruner=pruner.make(),
        )
        identity = study_identity(composed, space) | {"overrides": [*axis, *fixed]}
        check_same_study(study, url, goal, metric, identity)
        opened.append((axis, name, composed, metric, study, identity))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    for axis, name, composed, metric, study, identity in opened:
        # What every trial's job reads to report and prune as this study does (rnnbench.run.trial).
        study.set_user_attr("metric", metric)
        study.set_user_attr("pruner", pruner.as_attr())
        for key, value in identity.items():
            study.set_user_attr(key, value)
        folder = claims_folder(url, sweep_dir, name)
        # Where this study's jobs run inside the search's folder: a sweep's value gets a folder
        # of its own. The summary counts this study's jobs there, the trials of every launch
        # and its confirmation, not another study's beside them; noted before any launches,
        # so an interrupted launch counts its own.
        study_sub = f"{name}/" if axis else ""
        note_launched_folders(
            [sweep_dir / name]
            if axis
            else [sweep_dir / str(t.user_attrs.get("folder", t.number)) for t in study.get_trials()]
        )
        seeds = confirm_seeds(int(composed.get("seed") or 0), sweeper.confirm_seeds)
        confirming = Confirming(
            sweeper, seeds, [*axis, *fixed], sweep_dir, study_sub, folder, width
        )
        waiting_said, confirmed_early = False, False
        while True:
            requeue_stale(study, folder, url.startswith(FILE_STORAGES))
            left = sweeper.n_trials - counted(study)
            if left <= 0:
                # The budget is spent, but the best trial is known only once other workers'
                # trials end; a dead worker's are requeued above, and this one runs them.
                others = running_elsewhere(study)
                if not others:
                    break
                # Rather than wait idle, confirm the best trial so far: the one every idle
                # worker of the study confirms (the first to get here picks it), shared seed by
                # seed. Usually still the best once the others end, then its runs are reused.
                early = study.user_attrs.get(EARLY)
                if seeds and early is None and (best := best_trial(study)) is not None:
                    study.set_user_attr(EARLY, best.number)
                    early = study.user_attrs.get(EARLY)  # another worker's, had it just set one
                if seeds and early is not None and not confirmed_early:
                    print(
                        f"rnnbench: study {name}: confirming trial {early}, the best so far, "
                        f"while other workers run their trials",
                        file=sys.stderr,
                        flush=True,
                    )
                    results = confirming.launch(study, trial_numbered(study, early), "", job)
                    job += len(results)
                    returns.append(results)
                    # Their cost counts in the study's hours even if another trial wins.
                    study.set_user_attr(EARLY_RUNS, run_dirs_of(results))
                    confirmed_early, waiting_said = True, False
                    continue
                if not waiting_said:
                    print(
                        f"rnnbench: study {name}: waiting for "
                        + ", ".join(
                            f"trial {t.number} ({t.user_attrs.get('owner')})" for t in others
                        )
                        + " in other workers",
                        file=sys.stderr,
                        flush=True,
                    )
                    waiting_said = True
                time.sleep(WAIT_S)
                continue
            trials, batch, held, run_dirs = [], [], [], []
            for _ in range(min(width, left)):
                trial = study.ask()
                if beyond_budget(study, trial, sweeper.n_trials):
                    break
                if sweeper.sampler != "grid":  # a seed per trial number: see trial_seed
                    study.sampler = make_sampler(
                        sweeper.sampler, trial_seed(sweeper.seed, trial.number)
                    )
                values = [dim.override(suggest(trial, dim)) for dim in space]
                # Held by this worker until it tells the trial, and by the trial's job while
                # it runs: either alive, no other worker takes the trial for a dead one.
                claim = folder / f"trial-{trial.number}"
                held.append(claims.hold(claim, shared=True))
                trial.set_user_attr("claim", str(claim))
                trial.set_user_attr("owner", owner())
                if claims.slurm_job():  # which job to watch or cancel (optuna-dashboard shows it)
                    trial.set_user_attr("slurm_job", claims.slurm_job())
                home = trial.user_attrs.get("folder", trial.number)
                subdir = f"{study_sub}{home}"
                batch.append(
                    [
                        *values,
                        *axis,
                        *fixed,
                        f"hydra.sweep.subdir={subdir}",
                        *env_overrides(url, name, trial.number, claim),
                    ]
                )
                trials.append(trial)
                run_dirs.append(sweep_dir / subdir)
            if not batch:  # another worker took the last places
                continue
            try:
                sweeper.validate_batch_is_legal(batch)
                note_launched_folders(run_dirs)
                launched = time.time()
                results = sweeper.launcher.launch(batch, initial_job_idx=job)
                job += len(batch)
                returns.append(results)
                for trial, result, run_dir in zip(trials, results, run_dirs, strict=True):
                    tell(study, trial, result, metric)
                    if failed_unrecorded(result, run_dir, launched):
                        note_unrecorded_failures(1)
            finally:
                for h in held:
                    if h is not None:
                        h.close()
        print(describe_study(study, metric, sweeper.n_trials), flush=True)
        best = best_trial(study)
        if seeds and best is not None:
            # A best trial that is not the one confirmed early gets folders of its own.
            early = study.user_attrs.get(EARLY)
            prefix = "" if early in (None, best.number) else f"trial-{best.number}-"
            results = confirming.launch(study, best, prefix, job)
            job += len(results)
            returns.append(results)
            print(record_confirmation(study, best, seeds, results), flush=True)
    return returns


@dataclass
class Confirming:
    """How one study's best trial is confirmed: its configuration run again with each of
    `seeds` (as one pack where the sweeper's confirm_pack and the configuration allow), in the
    study's folder, the jobs shared seed by seed by the study's workers."""

    sweeper: Any
    seeds: list[int]
    overrides: list[str]  # the study's own: its sweep value and the fixed ones
    sweep_dir: Path
    study_sub: str  # the study's folder inside the search's
    claims: Path
    width: int

    def launch(self, study: Any, trial: Any, prefix: str, job: int) -> list[Any]:
        """Run `trial`'s confirming jobs (folders named `<prefix>confirm-...`); their
        JobReturns. A seed another worker runs is waited for, then its record reused."""
        sweeper = self.sweeper
        confirm = [override_line(k, v) for k, v in trial.params.items()] + self.overrides
        confirm = [o for o in confirm if o.split("=", 1)[0].lstrip("+~") != "pack"]
        seeds, loader = self.seeds, sweeper.hydra_context.config_loader
        if sweeper.confirm_pack and packable(loader, sweeper.config, confirm, len(seeds)):
            # One job trains the seeds at once as one pack (each member computes what its
            # lone run would): consecutive seeds, as pack=K takes them.
            jobs = {
                f"{prefix}confirm-{seeds[0]}-{seeds[-1]}": [
                    *confirm, f"pack={len(seeds)}", f"seed={seeds[0]}"
                ]
            }  # fmt: skip
        else:
            jobs = {f"{prefix}confirm-{seed}": [*confirm, f"seed={seed}"] for seed in seeds}
        batch = [
            [*o, f"hydra.sweep.subdir={self.study_sub}{sub}", *confirmation_env(study.study_name)]
            for sub, o in jobs.items()
        ]
        sweeper.validate_batch_is_legal(batch)
        note_launched_folders([self.sweep_dir / f"{self.study_sub}{sub}" for sub in jobs])
        return launch_shared(
            sweeper.launcher,
            batch,
            [self.claims / sub for sub in jobs],
            self.width,
            f"study {study.study_name}'s confirming run",
            job,
        )


def trial_numbered(study: Any, number: int) -> Any:
    """The study's trial `number` (a FrozenTrial)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def launch_shared(
    launcher: Any, batch: list[list[str]], claim: list[Path], width: int, what: str, job: int
) -> list[Any]:
    """Launch `batch`'s jobs so that the workers of a study share them: each job is run by the
    worker that takes its `claim` first (up to `width` at once, as many as the launcher runs),
    so several workers confirm side by side rather than one while the others wait. A worker
    left with jobs others run waits for each, then launches it too: that reuses its record, or
    resumes it from its checkpoint if its worker died. The JobReturns, in `batch`'s order."""
    results: dict[int, Any] = {}
    while len(results) < len(batch):
        left = [i for i in range(len(batch)) if i not in results]
        taken: dict[int, Any] = {}
        for i in left:
            if len(taken) < width and (held := claims.hold(claim[i], claims.this_process())):
                taken[i] = held
        if not taken:  # every job left runs elsewhere: wait for the first, then take it
            first = left[0]
            with claims.waiting(claim[first], f"{what} {claim[first].name}", WAIT_S):
                [results[first]] = launcher.launch([batch[first]], initial_job_idx=job + first)
            continue
        try:
            mine = sorted(taken)
            launched = launcher.launch([batch[i] for i in mine], initial_job_idx=job + mine[0])
            results.update(zip(mine, launched, strict=True))
        finally:
            for held in taken.values():
                held.close()
    return [results[i] for i in range(len(batch))]


def study_identity(composed: DictConfig, space: list[Dimension]) -> dict[str, Any]:
    """What a study was made for, kept in it: the run_key of the configuration its trials
    vary (the command line's fixed overrides and sweep values, the searched keys at their
    defaults) and its search space. A relaunch that differs would mix two searches in one."""
    plain = OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"])
    try:
        container = OmegaConf.to_container(plain, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation only a job resolves: the text then
        container = OmegaConf.to_container(plain, resolve=False)
    return {
        "config_key": run_key(container),
        "space": {
            dim.key: optuna.distributions.distribution_to_json(dim.distribution) for dim in space
        },
    }


def check_same_study(study: Any, url: str, goal: str, metric: str, made: dict[str, Any]) -> None:
    """ConfigError when the study `study` (just loaded) was made for another direction,
    configuration or search space than this launch's (`made`: study_identity): a study's
    trials must be comparable, so a relaunch may only go on with what it began."""
    name, attrs = study.study_name, study.user_attrs
    again = "give it another hydra.sweeper.study_name"
    if study.direction.name.lower() != goal:
        raise ConfigError(
            f"study {name} in {url} was made to {study.direction.name.lower()}, this "
            f"search would {goal} {metric}: {again}"
        )
    if attrs.get("config_key", made["config_key"]) != made["config_key"]:
        # The overrides that differ, where the study kept its own (the run_keys otherwise).
        before, now = attrs.get("overrides"), made.get("overrides", [])
        if before is not None:
            gone = " ".join(o for o in before if o not in now) or "nothing more"
            added = " ".join(o for o in now if o not in before) or "nothing more"
            differ = f"it was made with {gone}, this launch gives {added}"
        else:
            differ = f"run_key {attrs['config_key']}, this launch's {made['config_key']}"
        raise ConfigError(
            f"study {name} in {url} was made for another configuration ({differ}): relaunch "
            f"it with the overrides it was made with, or {again}"
        )
    before = attrs.get("space", made["space"])
    changed = sorted(k for k in {*before, *made["space"]} if before.get(k) != made["space"].get(k))
    if changed:
        raise ConfigError(
            f"study {name} in {url} was made over another search space ({', '.join(changed)} "
            f"differ): relaunch it with the space it was made with, or {again}"
        )


def packable(loader: Any, config: DictConfig, overrides: list[str], size: int) -> bool:
    """Whether the configuration `overrides` give may train its seeds as one pack of `size`
    (config.cross_problem says which may not: truncated BPTT, sequence-to-sequence data)."""
    if size < 2:
        return False
    return config_problem(loader.load_sweep_config(config, [*overrides, f"pack={size}"])) is None


def confirm_seeds(search_seed: int, count: int) -> list[int]:
    """The seeds the best trial's configuration is run again with: the `count` after the
    search's own, so its test figure never includes the trial's own (selected, lucky) run."""
    if count < 0:
        raise ConfigError(
            f"hydra.sweeper.confirm_seeds={count} is not allowed: give 0 (no confirmation) or "
            f"more, 3 for a mean and spread"
        )
    return [search_seed + i for i in range(1, count + 1)]


def record_confirmation(study: Any, best: Any, seeds: list[int], results: list[Any]) -> str:
    """Keep in the study which runs confirm its best trial (the views read them), and say in
    one line what their test headline gives."""
    runs, values = run_dirs_of(results), []
    for record in job_records(results):
        if isinstance(record, Mapping) and record.get("run_dir"):
            value = trial_value(record, str(record.get("headline")))
            if value is not None:
                values.append(value)
    study.set_user_attr("confirmed", {"trial": best.number, "seeds": seeds, "run_dirs": runs})
    head = f"study {study.study_name}: trial {best.number} confirmed with seeds "
    head += ",".join(map(str, seeds))
    if not values:
        return head + ": no confirming run completed"
    mean, spread = mean_spread(values)
    return head + f": test {mean:.6g} ± {spread:.2g} ({len(values)} of {len(seeds)} completed)"


def run_dirs_of(results: list[Any]) -> list[str]:
    """The run folders the records of jobs `results` (JobReturns) name, in order."""
    records = job_records(results)
    return [str(r["run_dir"]) for r in records if isinstance(r, Mapping) and r.get("run_dir")]


def returned(result: Any) -> Any:
    """What a job (its JobReturn `result`) returned: its record (or a pack's records), None
    from a job that failed or raised."""
    try:
        return result.return_value
    except BaseException:  # noqa: BLE001 - the job raised: no record from it
        return None


def job_records(results: list[Any]) -> list[Any]:
    """The records the jobs of `results` (JobReturns) returned, in order: one per job, or a
    pack's members; none from a job that failed or raised."""
    records = []
    for result in results:
        value = returned(result)
        if value is not None:
            records += value if isinstance(value, list) else [value]
    return records


def failed_unrecorded(result: Any, run_dir: Path, launched: float) -> bool:
    """Whether a trial's job (its JobReturn `result`, launched at `launched`) failed without
    writing a record in `run_dir`: refused before it trained (a value its key does not allow,
    a folder holding another run). Its record would count it; this must, or the search's exit
    status would say all went well."""
    if returned(result) is not None:
        return False
    path = run_dir / RECORD_FILE
    return not path.is_file() or path.stat().st_mtime < launched


def tell(study: Any, trial: Any, result: Any, metric: str) -> None:
    """Tell the study what trial `trial`'s job (its JobReturn `result`) gave: its record's
    value, else a failed trial (the run failed, diverged or was interrupted)."""
    record = returned(result)
    value = trial_value(record, metric)
    if isinstance(record, Mapping) and record.get("run_dir"):
        trial.set_user_attr("run_dir", str(record["run_dir"]))
    try:
        if isinstance(record, Mapping) and record.get("status") == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        elif value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        else:
            study.tell(trial, value, skip_if_finished=True)
    except RuntimeError as e:  # a grid sampler stops the study once its grid is done
        if "Study.stop" not in str(e):
            raise


def describe_study(study: Any, metric: str, n_trials: int) -> str:
    """One line: the study's trials by state and its best value so far."""
    states = Counter(
        t.state.name.lower()
        for t in study.get_trials(deepcopy=False)
        if not (t.user_attrs.get("requeued") or t.user_attrs.get("surplus"))
    )
    parts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    best = best_trial(study)
    tail = (
        f"; best {metric} {best.value:.6g} (trial {best.number}: {best.params})"
        if best is not None
        else "; no completed trial"
    )
    held = max(n_trials, sum(states.values()))  # a relaunch with fewer keeps those it has
    return f"study {study.study_name}: {held} trials ({parts}){tail}"
