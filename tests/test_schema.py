"""The configuration schema and the guard it was built under: every recipe, every option of every
group and every configuration the README's commands run keeps the run_key it had when
tests/data/run_keys.json was written, so the archived records (results/records) and a user's
finished runs are still reused. A changed key fails here; a key that must change takes a tested
one-time migration, not a rewritten fixture.

Write the fixture (only from a commit whose keys are the reference): python tests/test_schema.py
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from omegaconf import DictConfig, OmegaConf

from rnnbench.config import CONF_DIR, compose
from rnnbench.record import run_key

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "data" / "run_keys.json"
GROUPS = ("data", "model", "optim", "scheduler", "trainer", "logger")


def readme_commands() -> list[list[str]]:
    """The overrides of every `rnnbench ...` command in the README's code blocks (a trailing
    backslash continues a line; comments, `-m` and Hydra's own options dropped)."""
    commands, pending = [], ""
    for raw in (REPO / "README.md").read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("make run ARGS="):
            line = "rnnbench " + shlex.split(line)[2].removeprefix("ARGS=")
        if not line.startswith("rnnbench "):
            continue
        words = shlex.split(line, comments=True)[1:]
        overrides = [w for w in words if not w.startswith(("-", "hydra.", "hydra/")) and w != "..."]
        if "=" in " ".join(words) or not words:
            commands.append(overrides)
    return commands


def values(override: str) -> list[str]:
    """`key=v` for each value of a sweep (an interval: its low end); the override itself when
    it is no sweep."""
    (parsed,) = OverridesParser.create().parse_overrides([override])
    if not parsed.is_sweep_override():
        return [override]
    key = parsed.get_key_element()
    if isinstance(parsed.value(), IntervalSweep):
        return [f"{key}={parsed.value().start}"]
    return [f"{key}={v}" for v in parsed.sweep_string_iterator()]


def key_of(config: DictConfig) -> str:
    """run_key of a composed configuration, its `hydra` node (if any) left out."""
    plain = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    return run_key(OmegaConf.to_container(plain, resolve=True))


def keys_of(command: list[str]) -> dict[str, str]:
    """run_key of every single run a command line starts: every value of every sweep (the
    preset's hydra.sweeper.params included), each once, the other sweeps at their first value."""
    first = [values(o)[0] for o in command]
    config = compose(first, return_hydra_config=True)
    given = {o.split("=", 1)[0].lstrip("+~") for o in command}
    preset = OmegaConf.select(config, "hydra.sweeper.params") or {}
    extra = [f"{k}={v}" for k, v in preset.items() if k not in given]
    # Without a preset, the first run is the one just composed.
    keys = {} if extra else {" ".join(first): key_of(config)}
    choices = [values(o) for o in [*command, *extra]]
    first = [c[0] for c in choices]
    runs = [first] + [
        [*first[:i], option, *first[i + 1 :]]
        for i, options in enumerate(choices)
        for option in options[1:]
    ]
    for overrides in runs:
        name = " ".join(overrides)
        if name not in keys:
            keys[name] = key_of(compose(overrides))
    return keys


KINDS = {
    "recipes": lambda: [
        [f"experiment={p.relative_to(CONF_DIR / 'experiment').with_suffix('').as_posix()}"]
        for p in sorted((CONF_DIR / "experiment").glob("*/*.yaml"))
    ],
    "options": lambda: [
        [f"{g}={p.stem}"] for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))
    ],
    "readme": readme_commands,
}


def current_keys(kind: str) -> dict[str, str]:
    """run_key of each configuration of one kind (KINDS), by its command line."""
    keys: dict[str, str] = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for command in KINDS[kind]():
            keys.update(keys_of(command))
    return keys


# Three tests, not one: under pytest-xdist the ~140 composes share the workers.
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_recipe_option_and_readme_command_keeps_its_run_key(kind):
    expected = json.loads(FIXTURE.read_text())["run_keys"][kind]
    now = current_keys(kind)
    assert len(now) >= 10
    changed = {c: (k, expected.get(c)) for c, k in now.items() if expected.get(c) != k}
    assert not changed, f"run_key changed (now, then): {changed}"


def write_fixture() -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    FIXTURE.write_text(
        json.dumps(
            {
                "note": f"run_keys computed by tests/test_schema.py at commit {commit}; "
                "a key that changes needs a migration, not a new fixture",
                "run_keys": {kind: current_keys(kind) for kind in KINDS},
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(write_fixture())
