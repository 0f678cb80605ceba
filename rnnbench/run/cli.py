"""The `rnnbench` command (`cli`; was rnnbench.overrides): its command line checked before
Hydra launches anything: a bad key, an unknown config option or launcher, a sweep preset naming
a key that does not exist, a value outside what its key allows (every value of every sweep), a
run folder that cannot be written or that holds another configuration's run. Each is one clear
line and exit 2 instead of Hydra's multi-line report or a run that starts and lies; torch is not
imported until the line has passed. Then rnnbench.run.launch runs the job."""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rnnbench.config import CONF_DIR, compose, config_problem
from rnnbench.errors import UserError
from rnnbench.outputs import check_writable_folder
from rnnbench.results.record import check_run_folder, run_key
from rnnbench.run.sweep import is_search
from rnnbench.schema import Check, value_checks
from rnnbench.tasks import task_mismatch

# Values of a sweep checked one by one, each composed; beyond this many, the rest are checked
# by type and range alone (a seed sweep of range(1000) need not compose a thousand times).
COMPOSED_SWEEP_VALUES = 20

# Lines of Hydra's messages that say where it looked, not what is wrong.
NOISE = re.compile(
    r"^(Config search path|provider=|Set the environment variable|full_key|"
    r"object_type|reference_type)"
)


def one_line(message: str) -> str:
    """Hydra's multi-line message as one line: its content lines joined, options listed."""
    parts: list[str] = []
    options: list[str] = []
    for raw in str(message).splitlines():
        line = raw.strip()
        if not line or NOISE.match(line):
            continue
        if raw.startswith("\t"):  # Hydra lists available options one per tab-indented line
            options.append(line)
            continue
        if options:
            parts.append(", ".join(options))
            options = []
        parts.append(line)
    if options:
        parts.append(", ".join(options))
    return " ".join(parts)


def sweep_variants(overrides: list[str], checks: dict[str, Check]) -> list[list[str]]:
    """The overrides with each sweep narrowed to its first value, then, for every sweep, one
    variant per further value (the others at their first): every value gets composed once, but
    for the values beyond the first COMPOSED_SWEEP_VALUES of a key in `checks`."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    first = first_values(overrides)
    variants = [first]
    for i, override in enumerate(parsed):
        if not override.is_sweep_override() or isinstance(override.value(), IntervalSweep):
            continue  # a search's interval: checked at its low end (first_values)
        key = override.get_key_element()
        for n, value in enumerate(override.sweep_string_iterator()):
            if n == 0:
                continue
            if n >= COMPOSED_SWEEP_VALUES and key in checks:
                continue  # checked by value below
            variants.append([*first[:i], f"{key}={value}", *first[i + 1 :]])
    return variants


def leaf_sweep_problem(overrides: list[str], checks: dict[str, Check]) -> str | None:
    """Type and range of every value of a sweep over a plain key (seed=range(1000)), held to
    `checks` (the schema of the configuration the sweep's first values compose to)."""
    parser = OverridesParser.create()
    for override in parser.parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override() and key in checks:
            sweep = override.value()
            ends = [sweep.start, sweep.end] if isinstance(sweep, IntervalSweep) else None
            for value in ends or override.sweep_iterator():
                problem = checks[key].problem(key, value)
                if problem:
                    return problem
    return None


TASK_CHOICE = "task@data.task"  # the task group, as the data config's defaults place it


def first_values(overrides: list[str]) -> list[str]:
    """Each override with a sweep (a,b,c, range(...), or a search's interval(a, b))
    narrowed to its first value (an interval's low end)."""
    parser = OverridesParser.create()
    narrowed = []
    for override in parser.parse_overrides(overrides):
        if override.is_sweep_override():
            sweep = override.value()
            if isinstance(sweep, IntervalSweep):
                value = sweep.start
            else:
                value = next(iter(override.sweep_string_iterator()), None)
                if value is None:
                    raise ValueError(
                        f"{override.input_line} holds no value: range(a, b) proposes a, "
                        f"a+1, ..., b-1"
                    )
            narrowed.append(f"{override.get_key_element()}={value}")
        else:
            narrowed.append(override.input_line)
    return narrowed


def check_command_line(argv: list[str], config_dir: str) -> str | None:
    """None when the overrides compose (with the first value of every sweep, the sweep
    preset's parameters included); otherwise the problem, on one line."""
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.cfg or args.shell_completion:
        return None
    try:
        first = compose(first_values(args.overrides), return_hydra_config=True)
        if args.multirun:
            problem = unswept_problem(args.overrides)
            if problem:
                return problem
        checks = value_checks(first)
        problem = leaf_sweep_problem(args.overrides, checks)
        if problem:
            return problem
        given = {o.split("=", 1)[0].lstrip("+~") for o in args.overrides}
        for n, overrides in enumerate(sweep_variants(args.overrides, checks)):
            cfg = first if n == 0 else compose(overrides, return_hydra_config=True)
            params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
            unset = [k for k in params if not k.startswith("hydra.") and k not in given]
            if params and is_search(cfg.hydra.sweeper) and not args.multirun and unset:
                # A trial's own overrides (its record's) set every searched key: one run.
                return (
                    f"{' '.join(a for a in args.overrides if a.startswith('hparams_search='))} "
                    f"is a search, which runs as a multirun: add -m (rnnbench -m "
                    f"hparams_search=NAME ...), or give {', '.join(unset)} a value to run one "
                    f"configuration of it"
                ).lstrip()
            if params and args.multirun:
                preset = first_values([f"{k}={v}" for k, v in params.items()])
                absent = object()
                for key in params:
                    if key.startswith(("+", "hydra.")):
                        continue
                    if OmegaConf.select(cfg, key, default=absent) is absent:
                        return (
                            f"hydra.sweeper.params.{key}: the configuration has no key {key} "
                            f"to search (a typo? a new key takes a leading +)"
                        )
                # Both ends of every interval and every value of a choice or range, as a
                # plain sweep's values are: a value no trial could run is said now, not as
                # one failed trial after another.
                space = [f"{k}={v}" for k, v in params.items() if not k.startswith("hydra.")]
                problem = leaf_sweep_problem(space, value_checks(cfg))
                if problem:
                    return f"hydra.sweeper.params: {problem}"
                cfg = compose([*preset, *overrides], return_hydra_config=True)
            problem = (
                config_problem(cfg)
                or chosen_task_problem(overrides, cfg)
                or (n == 0 and folder_problem(cfg, args.multirun))
            )
            if problem:
                return problem
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        problem = one_line(e)
        if problem.startswith("Error merging override") and e.__cause__ is not None:
            # Hydra says which override; its cause says what the value should have been
            # ("could not be converted to Integer").
            problem += f": {one_line(e.__cause__)}"
        if problem.startswith("Could not override '"):
            problem = missing_key_problem(problem, args.overrides)
        if "Could not find 'experiment/" in problem:  # recipes sit one folder deeper
            recipes = sorted(
                p.relative_to(Path(config_dir) / "experiment").with_suffix("").as_posix()
                for p in (Path(config_dir) / "experiment").glob("*/*.yaml")
            )
            problem += f"; recipes: {', '.join(recipes)}"
        return problem
    return None


def chooses_task(key: str) -> bool:
    """Whether an override's key (`task@data.task`, `+task`, `task.x`) sets the task group."""
    key = key.lstrip("+~")
    return key.split("@", 1)[0] == "task" or key.startswith("task.")


def chosen_task_problem(overrides: list[str], cfg: DictConfig) -> str | None:
    """A task given on the command line (`task@data.task=...`) that is not the one the data
    config chooses (its batches hold that task's targets), in one line; None when none is
    given or it is the data's own. Composed without torch, as the data config chooses."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    rest = [o.input_line for o in parsed if not chooses_task(o.get_key_element())]
    if len(rest) == len(parsed):
        return None
    own = compose(rest, return_hydra_config=True)
    chosen, data_own = (c.hydra.runtime.choices.get(TASK_CHOICE) for c in (cfg, own))
    if chosen == data_own:
        return None
    return task_mismatch(chosen, OmegaConf.select(cfg, "data.name"), data_own)


def folder_problem(cfg: DictConfig, multirun: bool) -> str | None:
    """Why the run (or sweep) folder cannot hold this run: it cannot be written, or (a single
    run) it holds another configuration's run. None when it can."""
    folder = cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir
    option = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    problem = check_writable_folder(folder, option=f"results_root or {option}")
    if problem or multirun:
        return problem
    if cfg.get("pack") is not None:  # the folder is a pack's: rnnbench.run.pack checks its owner
        return None
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        check_run_folder(Path(folder), run_key(OmegaConf.to_container(plain, resolve=True)))
    except UserError as e:
        return str(e)
    return None


def unswept_problem(overrides: list[str]) -> str | None:
    """Hydra composes a multirun's configuration first without its sweeps (the default group
    options in their place), then each job's. A key that only the swept options hold
    (`-m data=ptb_word,ptb_char data.download=false`: the default data, reber, has no
    download) fails that first composition with a multi-line error: said here in one line,
    with the spelling that sets it whether the options hold it or not (`++`)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    if not any(o.is_sweep_override() for o in parsed):
        return None
    try:
        compose([o.input_line for o in parsed if not o.is_sweep_override()])
    except (HydraException, OmegaConfBaseException) as e:
        problem = one_line(e)
        if not problem.startswith("Could not override '"):
            return None  # the first values' composition says it, as for a single run
        key = problem.split("'", 2)[1]
        line = next(o.input_line for o in parsed if o.get_key_element().lstrip("+~") == key)
        return (
            f"{line}: {key} is a key of some swept options only, and a multirun's "
            f"configuration is composed first without its sweeps (the default options): "
            f"write ++{line.lstrip('+')} to set it where it exists"
        )
    return None


def missing_key_problem(problem: str, overrides: list[str]) -> str:
    """Hydra's "Could not override 'KEY'. To append to your config use +KEY=V", said for a key
    the configuration lacks, with the key it holds nearest to KEY (a typo's likely meaning):
    Hydra's advice alone sends a typo on to be added as a new key."""
    key = problem.split("'", 2)[1]
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        cfg = compose(first_values(rest))
    except (HydraException, OmegaConfBaseException, ValueError):
        return problem
    group, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, group) if group else cfg
    if not isinstance(node, DictConfig):
        return problem
    near = difflib.get_close_matches(leaf, [str(k) for k in node], n=1)
    said = f"{key} is not a key of the configuration"
    if near:
        said += f": did you mean {group + '.' if group else ''}{near[0]}?"
    return f"{said} (a key to add takes a leading +: +{key}=...)"


def exit_on_bad_command_line(config_dir: str = str(CONF_DIR)) -> None:
    problem = check_command_line(sys.argv[1:], config_dir)
    if problem:
        print(f"rnnbench: error: {problem}", file=sys.stderr)
        sys.exit(2)


def cli() -> None:
    """Console entry point (`rnnbench`, also `python -m rnnbench`): the command line is
    checked first, then handed to Hydra; torch and Lightning are imported only after that."""
    exit_on_bad_command_line()
    from rnnbench.run.launch import main  # lazy: torch loads once the command line is checked

    main()
