"""What every configuration value may hold, written once: one dataclass per config group option
family (a dataset kind, the model, each optimizer and schedule, the trainer) and one for the
top-level keys. A field's annotation is its kind (`int | None`: an integer or null) and its
metadata the rest: a range, the allowed choices, values allowed besides (-1 = no limit) and what
they mean. `value_checks()` turns a composed configuration into its Checks, `Check.problem()`
words the one-line refusal; the YAML in conf/ holds the values. The schemas are registered in
Hydra's ConfigStore as `schema/<group>/<family>` (`rnnbench --help` lists them).

Why they are not the YAML groups' composition schemas (`defaults: [schema/...]`): OmegaConf
converts a value to its field's type while it composes, so `trainer=debug`'s
`limit_train_batches: 5` (5 batches) would become 5.0 (Lightning: 500% of the batches, refused)
and every run_key holding such a value would change; Union[int, float] would keep it but checks
nothing. A wrong type would be refused while composing as OmegaConf's multi-line ValidationError,
not our one line naming the key, the value and what is allowed; and a field declared for an
optional key (`+trainer.precision=...`) would add that key to every configuration, changing its
run_key. So the schemas are checked after composing, before any run folder is made.

Imports Hydra and OmegaConf only, like rnnbench.config: a command line is checked before torch
loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from rnnbench.cellspec import CELLS
from rnnbench.errors import ConfigError

IMPLS = ("fused", "scratch")
GRU_RESETS = ("after", "before")
# With model.tbptt: one optimizer step per sequence (its chunks' gradients summed), or one per
# chunk (the state carried on, detached), as Williams & Peng's BPTT(h; h') and Lightning 1.x did.
TBPTT_UPDATES = ("sequence", "chunk")
ATTENTIONS = ("none", "additive", "dot")
# What a completed run keeps of its checkpoints (checkpoints.drop_checkpoints says what each keeps).
CHECKPOINT_KEEPS = ("best", "last", "both", "none")


@dataclass(frozen=True)
class Check:
    """What one key may hold: a kind (int, float, bool, str), a range or a set of choices,
    whether null is allowed, and values allowed outside the range (-1 for "no limit")."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False
    nullable: bool = False
    choices: tuple = ()
    also: tuple = ()  # allowed besides the range, e.g. -1
    meaning: str = ""  # what `also` / null mean, said in the message

    def allowed(self) -> str:
        """What the key may hold, in words."""
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.kind is bool:
            text = "true or false"
        else:
            noun = {int: "an integer", float: "a number", str: "a string"}[self.kind]
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
            if self.high is not None:
                bounds.append(f"{'<' if self.high_open else '<='} {_num(self.high)}")
            text = f"{noun} {' and '.join(bounds)}".strip()
        extras = [str(a) for a in self.also] + (["null"] if self.nullable else [])
        if extras:
            text += f", or {' or '.join(extras)}"
        return text + (f" ({self.meaning})" if self.meaning else "")

    def problem(self, key: str, value: Any) -> str | None:
        """None when `value` is allowed for `key`, else one line naming both."""
        if value is None and self.nullable:
            return None
        if value in self.also and not isinstance(value, bool):
            return None
        if self.choices:
            if value in self.choices and not isinstance(value, bool | float):
                return None
            return f"{key}={value!r} is unknown: use {self.allowed()}"
        if not _of_kind(value, self.kind) or not self._in_range(value):
            shown = repr(value) if isinstance(value, str) else value
            return f"{key}={shown} is not allowed: use {self.allowed()}"
        return None

    def _in_range(self, value: Any) -> bool:
        if self.kind in (bool, str):
            return self.kind is bool or value != ""
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (
            value > self.high or (self.high_open and value == self.high)
        )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _of_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


# ---------------------------------------------------------------------------------------------
# Field helpers: what a field's annotation does not say. Every field defaults to MISSING: its
# value is the YAML's.


def key(*, in_conf: bool = True, **limits: Any) -> Any:
    """A schema field with its range, choices, `also` and `meaning` (Check's fields) as metadata;
    `in_conf=False`: conf/ does not set it (torch's or Lightning's default applies) and it is
    checked only where a user adds it."""
    return field(default=MISSING, metadata={"limits": limits, "in_conf": in_conf})


def count(**kw: Any) -> Any:
    """An integer >= 1 (a size, a number of steps)."""
    return key(low=1, **kw)


def share(**kw: Any) -> Any:
    """A share in [0, 1): dropout, momentum."""
    return key(low=0, high=1, high_open=True, **kw)


def rate(**kw: Any) -> Any:
    """A number > 0."""
    return key(low=0, low_open=True, **kw)


def non_negative(**kw: Any) -> Any:
    return key(low=0, **kw)


# ---------------------------------------------------------------------------------------------
# The top level


@dataclass
class CheckpointsSchema:
    """`checkpoints.*`: what a completed run keeps."""

    keep: str = key(choices=CHECKPOINT_KEEPS)


@dataclass
class DecodeSchema:
    """`decode.*`: how a sequence-to-sequence test decodes each source."""

    beam: int = count(meaning="1 = greedy decoding")
    length_penalty: float = key(low=0, high=5, meaning="0 = none; 0.6 to 1 is usual")
    max_len: int | None = count(meaning="null = longest training target + 10")


@dataclass
class RunSchema:
    """The top-level keys of conf/config.yaml (the groups have schemas of their own)."""

    seed: int = key(low=0, high=2**32 - 1)
    threads: int | None = count(meaning="null = cores / jobs running at once")
    pack: int | None = count(meaning="null = each run alone")
    force: bool = key()
    flush_denormal: bool = key()
    checkpoint_every_n_steps: int | None = count()
    checkpoints: CheckpointsSchema = field(default_factory=CheckpointsSchema)
    results_root: str = key()
    decode: DecodeSchema = field(default_factory=DecodeSchema)


# ---------------------------------------------------------------------------------------------
# data: one schema per kind of dataset, found by the `_target_` of its config. A target not
# listed (a user's own datamodule) is held to DataSchema.


@dataclass
class DataSchema:
    """What every dataset config has."""

    TARGETS: ClassVar[tuple[str, ...]] = ()
    name: str = key()  # also a plain name: config.cross_problem
    batch_size: int = count()
    eval_batch_size: int | None = count()


@dataclass
class DownloadedSchema(DataSchema):
    """A dataset read from RNNBENCH_DATA_DIR, fetched from its source when missing; the listed
    ones (polyphonic music, pixel MNIST, SST-2) have no checked keys beyond these."""

    TARGETS: ClassVar[tuple[str, ...]] = (
        "rnnbench.data.music.PolyphonicMusic",
        "rnnbench.data.images.PixelMNIST",
        "rnnbench.data.sst2.SST2",
    )
    download: bool = key()


@dataclass
class ReberSchema(DataSchema):
    TARGETS: ClassVar[tuple[str, ...]] = ("rnnbench.data.reber.EmbeddedReber",)
    train_strings: int = count()
    valid_strings: int = count()
    test_strings: int = count()
    bptt: int = count()


@dataclass
class SyntheticSchema(DataSchema):
    TARGETS: ClassVar[tuple[str, ...]] = (
        "rnnbench.data.synthetic.AddingProblem",
        "rnnbench.data.synthetic.CopyMemory",
    )
    seq_len: int = count()
    train_size: int = count()
    valid_size: int = count()
    test_size: int = count()


@dataclass
class TextCorpusSchema(DownloadedSchema):
    TARGETS: ClassVar[tuple[str, ...]] = ("rnnbench.data.lm.TextCorpus",)
    bptt: int = count()


@dataclass
class ForecastingSchema(DownloadedSchema):
    TARGETS: ClassVar[tuple[str, ...]] = ("rnnbench.data.series.Forecasting",)
    lookback: int = count()
    horizon: int = count()


@dataclass
class PairsSchema(DataSchema):
    """Sequence-to-sequence pairs: translation and summarisation."""

    TARGETS: ClassVar[tuple[str, ...]] = (
        "rnnbench.data.pairs.ParallelText",
        "rnnbench.data.pairs.Summaries",
    )
    min_freq: int = count()
    train_size: int | None = count(meaning="null = every training pair")
    max_source_tokens: int | None = count(meaning="null = no cut")
    max_target_tokens: int | None = count(meaning="null = no cut")


@dataclass
class Multi30kSchema(PairsSchema):
    TARGETS: ClassVar[tuple[str, ...]] = ("rnnbench.data.pairs.Multi30k",)
    download: bool = key()


# ---------------------------------------------------------------------------------------------
# model


@dataclass
class RecurrentSchema:
    """The keys of conf/model/*.yaml that every architecture reads: the cell and its stack."""

    TARGETS: ClassVar[tuple[str, ...]] = ()
    cell: str = key(choices=CELLS)
    impl: str = key(choices=IMPLS)
    hidden_size: int = count()
    num_layers: int = count()
    bidirectional: bool = key()
    dropout: float = share()
    tie_weights: bool = key()
    emb_size: int | None = count(meaning="null = hidden_size")
    gru_reset: str = key(choices=GRU_RESETS)
    init_range: float | None = rate()
    forget_bias: float | None = key()


@dataclass
class SequenceModelSchema(RecurrentSchema):
    """A recurrent model over one sequence (every dataset but sentence pairs)."""

    TARGETS: ClassVar[tuple[str, ...]] = ("rnnbench.nn.model.SequenceModel",)
    tbptt: int | None = count(meaning="null = full backpropagation")
    tbptt_update: str = key(choices=TBPTT_UPDATES)


@dataclass
class EncoderDecoderSchema(RecurrentSchema):
    """The encoder-decoder that sequence-to-sequence data builds (data.model_io names it)."""

    TARGETS: ClassVar[tuple[str, ...]] = ("rnnbench.nn.encoder_decoder.EncoderDecoder",)
    attention: str = key(choices=ATTENTIONS)
    teacher_forcing: float = key(low=0, high=1, meaning="1 = always the reference")
    feed_context: bool = key()


@dataclass
class ModelSchema(SequenceModelSchema, EncoderDecoderSchema):
    """What conf/model/*.yaml holds: the keys of both architectures, as one `model` group
    (`model=gru` picks the cell). The dataset decides which architecture is built, and that one
    is given its own keys alone (`foreign_model_keys`); a value other than the default for a key
    the data's architecture does not read is refused (config.cross_problem)."""

    TARGETS: ClassVar[tuple[str, ...]] = ()


ARCHITECTURES = (SequenceModelSchema, EncoderDecoderSchema)


def foreign_model_keys(target: str) -> frozenset[str]:
    """The keys of conf/model/ that the model class `target` does not read (the other
    architecture's); none for a class not listed in ARCHITECTURES (a user's own model is given
    every key, and its constructor says what it takes)."""
    own = next((s for s in ARCHITECTURES if target in s.TARGETS), None)
    if own is None:
        return frozenset()
    every = {f.name for f in dataclasses.fields(ModelSchema)}
    return frozenset(every - {f.name for f in dataclasses.fields(own)})


# ---------------------------------------------------------------------------------------------
# optim and scheduler: the keys of each optimizer and schedule that conf/ or a user may set. A
# target not listed is not checked (its own constructor says what it takes).


@dataclass
class OptimSchema:
    """What every optimizer config has. A learning rate of 0 is allowed, as torch allows it:
    weights that never move are a control."""

    TARGETS: ClassVar[tuple[str, ...]] = ()
    lr: float = non_negative()
    weight_decay: float = non_negative()


@dataclass
class SGDSchema(OptimSchema):
    TARGETS: ClassVar[tuple[str, ...]] = ("torch.optim.SGD",)
    momentum: float = share()
    dampening: float = key(low=0, high=1, in_conf=False)
    nesterov: bool = key(in_conf=False)


@dataclass
class AdamSchema(OptimSchema):
    TARGETS: ClassVar[tuple[str, ...]] = ("torch.optim.Adam",)
    eps: float = rate(in_conf=False)
    amsgrad: bool = key(in_conf=False)


@dataclass
class RMSpropSchema(OptimSchema):
    TARGETS: ClassVar[tuple[str, ...]] = ("torch.optim.RMSprop",)
    alpha: float = key(low=0, high=1, low_open=True)
    eps: float = rate(in_conf=False)
    momentum: float = share(in_conf=False)
    centered: bool = key(in_conf=False)


@dataclass
class PlateauSchema:
    TARGETS: ClassVar[tuple[str, ...]] = ("torch.optim.lr_scheduler.ReduceLROnPlateau",)
    factor: float = key(low=0, high=1, low_open=True, high_open=True)
    patience: int = key(low=0)
    threshold: float = non_negative(in_conf=False)
    cooldown: int = key(low=0, in_conf=False)
    min_lr: float = non_negative(in_conf=False)


@dataclass
class StepDecaySchema:
    TARGETS: ClassVar[tuple[str, ...]] = ("rnnbench.run.optim.step_decay",)
    start_epoch: int = key(low=0)
    factor: float = key(low=1, meaning="the learning rate is divided by it")


# ---------------------------------------------------------------------------------------------
# trainer: the Lightning Trainer arguments conf/ sets (any other may be added with +trainer.X).


@dataclass
class TrainerSchema:
    max_epochs: int = count(also=(-1,), meaning="-1 = no limit")
    max_steps: int = count(also=(-1,), meaning="-1 = no limit")
    gradient_clip_val: float | None = rate(meaning="θ in g <- min(1, θ/‖g‖) g")
    gradient_clip_algorithm: str = key(choices=("norm",))
    log_every_n_steps: int = count()
    # A number of batches, or a share of them (more than 1.0: config.cross_problem).
    limit_train_batches: float = rate()
    limit_val_batches: float = non_negative()
    limit_test_batches: float = non_negative()
    num_sanity_val_steps: int = key(low=0, also=(-1,))
    deterministic: bool = key()
    enable_progress_bar: bool = key()
    accelerator: str = key(choices=("cpu", "gpu", "cuda", "mps", "auto"))
    # Not in conf/ (32-true, Lightning's default): +trainer.precision=bf16-mixed on a GPU.
    precision: str = key(choices=("32-true", "64-true", "bf16-mixed"), in_conf=False)


# Each group's schemas, in the order a configuration is checked; the first is the one for a
# target no schema lists, None where such a target is not checked.
GROUPS: dict[str, tuple[type | None, tuple[type, ...]]] = {
    "data": (
        DataSchema,
        (
            ReberSchema,
            SyntheticSchema,
            TextCorpusSchema,
            ForecastingSchema,
            DownloadedSchema,
            PairsSchema,
            Multi30kSchema,
        ),
    ),
    "model": (ModelSchema, ()),
    "trainer": (TrainerSchema, ()),
    "optim": (None, (SGDSchema, AdamSchema, RMSpropSchema)),
    "scheduler": (None, (PlateauSchema, StepDecaySchema)),
}


def schema_for(group: str, target: Any) -> type | None:
    """The schema of a group's option, by its `_target_`."""
    fallback, families = GROUPS[group]
    return next((s for s in families if target in s.TARGETS), fallback)


@functools.cache
def field_checks(schema: type) -> tuple[tuple[str, Check | type], ...]:
    """Each field of `schema` with its Check (a nested schema: the schema itself), in order."""
    hints = typing.get_type_hints(schema)
    out: list[tuple[str, Check | type]] = []
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out.append((f.name, kind))
            continue
        args = typing.get_args(kind)
        nullable = isinstance(kind, types.UnionType) and type(None) in args
        if nullable:
            (kind,) = (a for a in args if a is not type(None))
        out.append((f.name, Check(kind, nullable=nullable, **f.metadata["limits"])))
    return tuple(out)


def schema_checks(schema: type, prefix: str = "") -> dict[str, Check]:
    """Every key of `schema` by its dotted name (nested schemas flattened)."""
    out: dict[str, Check] = {}
    for name, check in field_checks(schema):
        if isinstance(check, Check):
            out[prefix + name] = check
        else:
            out.update(schema_checks(check, f"{prefix}{name}."))
    return out


def value_checks(cfg: DictConfig) -> dict[str, Check]:
    """The Check of every key `cfg` may hold, by its dotted name: the top level's, then each
    group's from the schema of its option (data, model, trainer, optim, scheduler)."""
    out = schema_checks(RunSchema)
    for group in GROUPS:
        node = cfg.get(group)
        schema = schema_for(group, node.get("_target_")) if isinstance(node, DictConfig) else None
        if schema is not None:
            out.update(schema_checks(schema, f"{group}."))
    return out


def check_arguments(schema: type, prefix: str, **values: Any) -> None:
    """Raise ConfigError with the schema's one line for the first of `values` (a constructor's
    arguments, named as in `schema`) outside what it may hold: a class built from Python, not
    from a checked configuration, refuses a value as the command line does."""
    checks = schema_checks(schema, prefix + ".")
    for name, value in values.items():
        problem = checks[f"{prefix}.{name}"].problem(f"{prefix}.{name}", value)
        if problem:
            raise ConfigError(problem)


_ABSENT = object()


# The groups whose schema names every key their class takes: a key beyond it (`+model.hiden_size`)
# is a typo, refused here rather than as a TypeError from the class after the run folder is made.
# (The trainer, optimizers and schedules take any argument of Lightning's or torch's class, and
# the data schemas check the shared keys only.)
CLOSED_GROUPS = ("model",)
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def unknown_key_problem(cfg: DictConfig, checks: dict[str, Check]) -> str | None:
    """A key of a closed group that its schema does not know, as one line naming the keys it
    does (and the nearest, for a typo); None when there is none."""
    for group in CLOSED_GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or not str(node.get("_target_")).startswith(
            "rnnbench."
        ):
            continue  # a class of the user's own takes what it takes
        known = [k.removeprefix(f"{group}.") for k in checks if k.startswith(f"{group}.")]
        for key in node:
            if key in HYDRA_KEYS or key in known:
                continue
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {group}.{near[0]}? " if near else ""
            return (
                f"{group}.{key} is not a key of {group} ({str(node._target_).rsplit('.', 1)[-1]}): "
                f"{hint}its keys are {', '.join(known)}"
            )
    return None


def schema_problem(cfg: DictConfig) -> str | None:
    """The first value of `cfg` outside what its schema allows, or a key of a closed group it
    does not know, as one line; None when all fit. A key the configuration does not hold is
    not checked."""
    checks = value_checks(cfg)
    problem = unknown_key_problem(cfg, checks)
    if problem:
        return problem
    for dotted, check in checks.items():
        value = OmegaConf.select(cfg, dotted, default=_ABSENT)
        if value is _ABSENT:
            continue
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        problem = check.problem(dotted, value)
        if problem:
            return problem
    return None


def register() -> None:
    """Every schema into Hydra's ConfigStore: `schema/<group>/<family>`, and `schema/run`."""
    store = ConfigStore.instance()
    store.store(group="schema", name="run", node=RunSchema)
    for group, (fallback, families) in GROUPS.items():
        for schema in (fallback, *families):
            if schema is not None:
                name = schema.__name__.removesuffix("Schema").lower()
                store.store(group=f"schema/{group}", name=name, node=schema)


register()
