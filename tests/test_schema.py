"""The configuration schema and the guard it was built under: every recipe, every option of every
group and every configuration the README's commands run keeps the run_key it had when
tests/data/run_keys.json was written, so the archived records (results/records) and a user's
finished runs are still reused. A changed key fails here; a key that must change takes a tested
one-time migration, not a rewritten fixture.

Write the fixture (only from a commit whose keys are the reference): python tests/test_schema.py;
add the configurations it lacks, keeping every key in it: python tests/test_schema.py --add
"""

from __future__ import annotations

import dataclasses
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
from rnnbench.results.record import run_key
from rnnbench.schema import GROUPS as GROUPS_CHECKED
from rnnbench.schema import RunSchema, schema_for, schema_problem, value_checks

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
    changed = {c: (k, expected[c]) for c, k in now.items() if c in expected and expected[c] != k}
    assert not changed, f"run_key changed (now, then): {changed}"
    new = sorted(set(now) - set(expected))
    assert not new, f"not in {FIXTURE.name} yet (python tests/test_schema.py --add): {new}"


def test_a_record_from_before_the_nn_and_run_packages_builds_and_keeps_its_run_key():
    """An archived record names `_target_`s as they were before the modules moved into nn/ and
    run/: its config still instantiates (`current_targets`), and the moved names hash as the
    recorded ones (`recorded_target`)."""
    from rnnbench.nn.build import build_model
    from rnnbench.nn.model import SequenceModel
    from rnnbench.results.record import current_targets, recorded_target, run_key

    path = REPO / "results" / "records" / "tcn" / "nottingham_gru" / "36ec6b65678550b2-1234"
    old = json.loads((path / "result.json").read_text())["config"]
    assert old["model"]["_target_"] == "rnnbench.model.SequenceModel"  # as recorded then
    now = current_targets(old)
    assert now["model"]["_target_"] == "rnnbench.nn.model.SequenceModel"
    assert run_key(now) == run_key(old)
    # It holds the encoder-decoder's keys too, as every record then did: the model is given
    # its own alone.
    assert old["model"]["attention"] == "none"
    model = build_model(now["model"], {"input_size": 88, "output_size": 88})
    assert isinstance(model, SequenceModel)
    assert recorded_target("rnnbench.run.optim.step_decay") == "rnnbench.optim.step_decay"
    assert recorded_target("rnnbench.run.results.x") == "rnnbench.run.results.x"  # not moved
    assert (
        recorded_target("rnnbench.data.music.PolyphonicMusic")
        == "rnnbench.data.music.PolyphonicMusic"
    )


def write_fixture(add: bool) -> None:
    """Write the fixture from this commit's keys; with `add`, only add the configurations it
    lacks (a new recipe, option or README command), every key already in it kept as it is."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    keys = {kind: current_keys(kind) for kind in KINDS}
    note = f"run_keys computed by tests/test_schema.py at commit {commit}"
    if add:
        old = json.loads(FIXTURE.read_text())
        keys = {kind: {**keys[kind], **old["run_keys"].get(kind, {})} for kind in KINDS}
        note = f"{old['note'].split(';')[0]}; new configurations added at {commit}"
    text = json.dumps(
        {
            "note": f"{note}; a key that changes needs a migration, not a new fixture",
            "run_keys": keys,
        },
        indent=1,
    )
    FIXTURE.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(write_fixture(add="--add" in sys.argv[1:]))


# The schema (rnnbench/schema.py) -------------------------------------------------------------


def shipped_options() -> list[list[str]]:
    return KINDS["recipes"]() + KINDS["options"]()


def test_every_schema_field_is_a_key_of_the_options_it_describes():
    """A schema holds no key its YAML lacks (but those marked in_conf=False, which a user may
    add): a renamed key in conf/ cannot leave its check behind unnoticed."""
    seen = set()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides in shipped_options():
            config = compose(overrides)
            for group in (None, *GROUPS_CHECKED):
                node = config if group is None else config.get(group)
                if not isinstance(node, DictConfig):
                    continue
                schema = RunSchema if group is None else schema_for(group, node.get("_target_"))
                if schema is None:
                    continue
                seen.add(schema)
                for name, f in ((f.name, f) for f in dataclasses.fields(schema)):
                    if f.metadata.get("in_conf", True):
                        assert name in node, (overrides, group, name)
    families = {s for fallback, more in GROUPS_CHECKED.values() for s in more}
    assert families <= seen, families - seen  # every family describes a shipped option


def test_a_bad_value_of_every_key_is_one_line_naming_key_value_and_what_is_allowed():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose(["data=multi30k", "optim=sgd", "scheduler=step"])
    for dotted, check in value_checks(config).items():
        bad = "abc" if check.kind is not str else 7
        copy = config.copy()
        OmegaConf.update(copy, dotted, bad, force_add=True)
        line = schema_problem(copy)
        assert line == f"{dotted}={bad!r} is {'unknown' if check.choices else 'not allowed'}: " + (
            f"use {check.allowed()}"
        )
        assert "\n" not in line and check.allowed() in line


def test_the_schemas_are_in_hydras_config_store():
    from hydra.core.config_store import ConfigStore

    groups = ConfigStore.instance().list("schema")
    assert "run.yaml" in groups and set(GROUPS_CHECKED) <= set(groups)
    assert "textcorpus.yaml" in ConfigStore.instance().list("schema/data")


def test_each_architecture_is_given_its_own_keys_alone():
    """conf/model/ is one group for both architectures (`model=gru` picks the cell); the schema
    says which keys each reads, each constructor takes exactly those (and the dataset's part),
    and build_model gives it no other: neither takes the other's keys to drop them."""
    import inspect

    from rnnbench.config import encoder_decoder_keys, model_defaults
    from rnnbench.nn.build import build_model
    from rnnbench.nn.encoder_decoder import EncoderDecoder
    from rnnbench.nn.model import SequenceModel
    from rnnbench.schema import (
        EncoderDecoderSchema,
        ModelSchema,
        RecurrentSchema,
        SequenceModelSchema,
        foreign_model_keys,
    )

    def names(schema: type) -> set[str]:
        return {f.name for f in dataclasses.fields(schema)}

    assert set(model_defaults()) == names(ModelSchema)  # the YAML holds every key, no other
    io = {"input_size", "output_size", "vocab_size", "readout", "causal"}
    io_pairs = {"src_vocab_size", "tgt_vocab_size", "bos_id", "eos_id"}
    for cls, schema, given in (
        (SequenceModel, SequenceModelSchema, io),
        (EncoderDecoder, EncoderDecoderSchema, io_pairs),
    ):
        taken = set(inspect.signature(cls).parameters)
        assert taken - given == names(schema), cls
        assert foreign_model_keys(schema.TARGETS[0]) == names(ModelSchema) - names(schema)
        assert names(RecurrentSchema) < names(schema)
    assert encoder_decoder_keys() == ["attention", "teacher_forcing", "feed_context"]
    assert foreign_model_keys("my.own.Model") == frozenset()  # a user's class: every key

    every_key = {**model_defaults(), "_target_": SequenceModelSchema.TARGETS[0]}
    every_key |= {"hidden_size": 8, "num_layers": 1}
    model = build_model(every_key, {"input_size": 3, "output_size": 2, "readout": "last"})
    assert isinstance(model, SequenceModel)
    pairs = {"_target_": EncoderDecoderSchema.TARGETS[0], "src_vocab_size": 9}
    pairs |= {"tgt_vocab_size": 7, "bos_id": 2, "eos_id": 3}
    assert isinstance(build_model(every_key, pairs), EncoderDecoder)


def test_every_dataset_config_chooses_the_task_its_module_declares():
    """conf/task/ mirrors rnnbench/run/module.py's task modules, one option per task kind, and
    each dataset's config chooses (its defaults list) the kind its data module declares."""
    from hydra.utils import get_class

    from rnnbench.run.module import TASKS

    options = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
    assert options == sorted(TASKS)
    for name in options:
        chosen = compose([f"task@data.task={name}"]).task._target_  # the default data, reber
        assert get_class(chosen) is TASKS[name], name
    for path in sorted((CONF_DIR / "data").glob("*.yaml")):
        cfg = compose([f"data={path.stem}"])
        declared = get_class(cfg.data._target_).task
        assert get_class(cfg.task._target_) is TASKS[declared], path.stem
