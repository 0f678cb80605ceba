"""Check a command line's overrides before Hydra launches anything, so that a bad key, an
unknown config option or launcher, or a sweep preset naming a key that does not exist is one
clear line and a non-zero exit instead of Hydra's multi-line report."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

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


def first_values(overrides: list[str]) -> list[str]:
    """Each override with a sweep (a,b,c or range(...)) narrowed to its first value."""
    parser = OverridesParser.create()
    narrowed = []
    for override in parser.parse_overrides(overrides):
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
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
        overrides = first_values(args.overrides)
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(
                config_name=args.config_name or "config",
                overrides=overrides,
                return_hydra_config=True,
            )
            params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
            if params and args.multirun:
                preset = first_values([f"{k}={v}" for k, v in params.items()])
                compose(
                    config_name=args.config_name or "config",
                    overrides=[*preset, *overrides],
                    return_hydra_config=True,
                )
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        problem = one_line(e)
        if "Could not find 'experiment/" in problem:  # recipes sit one folder deeper
            recipes = sorted(
                p.relative_to(Path(config_dir) / "experiment").with_suffix("").as_posix()
                for p in (Path(config_dir) / "experiment").glob("*/*.yaml")
            )
            problem += f"; recipes: {', '.join(recipes)}"
        return problem
    return None


def exit_on_bad_command_line(config_dir: str) -> None:
    problem = check_command_line(sys.argv[1:], config_dir)
    if problem:
        print(f"rnnbench: error: {problem}", file=sys.stderr)
        sys.exit(2)
