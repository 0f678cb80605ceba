"""Where the configuration lives, one `compose()`, and what every composed value may hold.

`conf/` holds every default. `compose()` builds a run's configuration from it exactly as the
`rnnbench` command does. `check_config()` holds it against `CHECKS` (type and range of every key a
user types) and `TARGET_CHECKS` (the keys of each optimizer and schedule), plus the few rules
that tie two keys together, and raises ConfigError with one line naming the first bad value and
what is allowed. It runs before Hydra makes a run folder and before torch is imported.

This module imports Hydra and OmegaConf only: the command line is checked in a fraction of a
second, whatever the run will later import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from rnnbench.cellspec import CELLS, GATED_CELLS
from rnnbench.errors import ConfigError

# One conf tree in git, at the repo top. A wheel carries a copy inside the package (setup.py puts
# it there); a source or editable checkout has no rnnbench/conf and reads the repo-top one.
CONF_DIR = Path(__file__).resolve().parent / "conf"
if not CONF_DIR.is_dir():
    CONF_DIR = CONF_DIR.parent.parent / "conf"

IMPLS = ("fused", "scratch")
GRU_RESETS = ("after", "before")
TBPTT_UPDATES = ("sequence", "chunk")
# What a completed run keeps of its checkpoints (checkpoints.drop_checkpoints says what each keeps).
CHECKPOINT_KEEPS = ("best", "last", "both", "none")
# A dataset's name becomes part of its run folder's name: no separators, no "..".
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The configuration `rnnbench OVERRIDES` would run, composed from `conf/`."""

    if GlobalHydra.instance().is_initialized():  # inside a running Hydra app
        return hydra_compose("config", list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", list(overrides), return_hydra_config=return_hydra_config)


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


def positive_int(**kw: Any) -> Check:
    return Check(int, low=1, **kw)


def fraction(**kw: Any) -> Check:
    """A share in [0, 1): dropout, momentum."""
    return Check(float, low=0, high=1, high_open=True, **kw)


RATE = Check(float, low=0, low_open=True)
NON_NEGATIVE = Check(float, low=0)
# A learning rate of 0 is allowed, as torch allows it: weights that never move are a control.
LR = NON_NEGATIVE
FLAG = Check(bool)
# A number of batches, or a share of them (Lightning's limit_*_batches).
BATCHES = Check(float, low=0)

# Every key a user types, by its dotted name; a key missing from a config is not checked.
CHECKS: dict[str, Check] = {
    "seed": Check(int, low=0, high=2**32 - 1),
    "threads": positive_int(nullable=True, meaning="null = cores / jobs running at once"),
    "pack": positive_int(nullable=True, meaning="null = each run alone"),
    "force": FLAG,
    "flush_denormal": FLAG,
    "checkpoint_every_n_steps": positive_int(nullable=True),
    "checkpoints.keep": Check(str, choices=CHECKPOINT_KEEPS),
    "results_root": Check(str),
    "data.name": Check(str),
    "data.batch_size": positive_int(),
    "data.eval_batch_size": positive_int(nullable=True),
    "data.bptt": positive_int(),
    "data.download": FLAG,
    "model.cell": Check(str, choices=CELLS),
    "model.impl": Check(str, choices=IMPLS),
    "model.hidden_size": positive_int(),
    "model.num_layers": positive_int(),
    "model.bidirectional": FLAG,
    "model.dropout": fraction(),
    "model.tie_weights": FLAG,
    "model.emb_size": positive_int(nullable=True, meaning="null = hidden_size"),
    "model.gru_reset": Check(str, choices=GRU_RESETS),
    "model.init_range": Check(float, low=0, low_open=True, nullable=True),
    "model.forget_bias": Check(float, nullable=True),
    "model.tbptt": positive_int(nullable=True, meaning="null = full backpropagation"),
    "model.tbptt_update": Check(str, choices=TBPTT_UPDATES),
    "model.attention": Check(str, choices=("none", "additive", "dot")),
    "model.teacher_forcing": Check(float, low=0, high=1, meaning="1 = always the reference"),
    "model.feed_context": FLAG,
    "decode.beam": positive_int(meaning="1 = greedy decoding"),
    "decode.length_penalty": Check(float, low=0, high=5, meaning="0 = none; 0.6 to 1 is usual"),
    "decode.max_len": positive_int(nullable=True, meaning="null = longest training target + 10"),
    "data.train_strings": positive_int(),
    "data.valid_strings": positive_int(),
    "data.test_strings": positive_int(),
    "data.seq_len": positive_int(),
    "data.test_size": positive_int(),
    "data.lookback": positive_int(),
    "data.horizon": positive_int(),
    "data.min_freq": positive_int(),
    "data.train_size": positive_int(nullable=True, meaning="null = every training pair"),
    "data.max_source_tokens": positive_int(nullable=True, meaning="null = no cut"),
    "data.max_target_tokens": positive_int(nullable=True, meaning="null = no cut"),
    "trainer.max_epochs": positive_int(also=(-1,), meaning="-1 = no limit"),
    "trainer.max_steps": positive_int(also=(-1,), meaning="-1 = no limit"),
    "trainer.gradient_clip_val": Check(
        float, low=0, low_open=True, nullable=True, meaning="θ in g <- min(1, θ/‖g‖) g"
    ),
    "trainer.gradient_clip_algorithm": Check(str, choices=("norm",)),
    "trainer.log_every_n_steps": positive_int(),
    "trainer.limit_train_batches": Check(float, low=0, low_open=True),
    "trainer.limit_val_batches": BATCHES,
    "trainer.limit_test_batches": BATCHES,
    "trainer.num_sanity_val_steps": Check(int, low=0, also=(-1,)),
    "trainer.deterministic": FLAG,
    "trainer.enable_progress_bar": FLAG,
    "trainer.accelerator": Check(str, choices=("cpu", "gpu", "cuda", "mps", "auto")),
    # Not in conf/ (32-true, Lightning's default): +trainer.precision=bf16-mixed on a GPU.
    "trainer.precision": Check(str, choices=("32-true", "64-true", "bf16-mixed")),
}

# The keys of each optimizer and learning-rate schedule, by its `_target_`.
TARGET_CHECKS: dict[str, dict[str, Check]] = {
    "torch.optim.SGD": {
        "lr": LR,
        "momentum": fraction(),
        "dampening": Check(float, low=0, high=1),
        "weight_decay": NON_NEGATIVE,
        "nesterov": FLAG,
    },
    "torch.optim.Adam": {
        "lr": LR,
        "eps": RATE,
        "weight_decay": NON_NEGATIVE,
        "amsgrad": FLAG,
    },
    "torch.optim.RMSprop": {
        "lr": LR,
        "alpha": Check(float, low=0, high=1, low_open=True),
        "eps": RATE,
        "momentum": fraction(),
        "weight_decay": NON_NEGATIVE,
        "centered": FLAG,
    },
    "torch.optim.lr_scheduler.ReduceLROnPlateau": {
        "factor": Check(float, low=0, high=1, low_open=True, high_open=True),
        "patience": Check(int, low=0),
        "threshold": NON_NEGATIVE,
        "cooldown": Check(int, low=0),
        "min_lr": NON_NEGATIVE,
    },
    "rnnbench.optim.step_decay": {
        "start_epoch": Check(int, low=0),
        "factor": Check(float, low=1, meaning="the learning rate is divided by it"),
    },
}


_MISSING = object()


def config_problem(cfg: DictConfig) -> str | None:
    """The first value of `cfg` outside what it may hold, as one line; None when all fit."""
    for key, check in CHECKS.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING:
            continue
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        problem = check.problem(key, value)
        if problem:
            return problem
    for group in ("optim", "scheduler"):
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        for key, check in TARGET_CHECKS.get(node.get("_target_"), {}).items():
            if key in node:
                problem = check.problem(f"{group}.{key}", node[key])
                if problem:
                    return problem
    return cross_problem(cfg)


# The datasets whose model is an encoder-decoder, and the model keys only they read.
SEQ2SEQ_DATA = "rnnbench.data.pairs."
SEQ2SEQ_MODEL_KEYS = {"attention": "none", "teacher_forcing": 1.0, "feed_context": False}


def cross_problem(cfg: DictConfig) -> str | None:
    """Rules between keys: a budget of at least one step, dataset names that stay inside
    the runs folder, options that apply only to some cells."""
    name = OmegaConf.select(cfg, "data.name")
    if isinstance(name, str) and not NAME.match(name):
        return (
            f"data.name={name!r} is not allowed: use a plain name (letters, digits, '_', '-', "
            f"'.'), it becomes part of the run folder's name"
        )
    trainer = cfg.get("trainer") or {}
    if trainer.get("max_epochs") == -1 and trainer.get("max_steps", -1) == -1:
        return (
            "trainer.max_epochs=-1 with trainer.max_steps=-1 trains forever: "
            "set one of them to a positive number"
        )
    devices = trainer.get("devices")
    if devices is not None and not _devices_ok(devices):
        return (
            f"trainer.devices={devices!r} is not allowed: use a number of devices >= 1, -1 "
            f"(all of them), 'auto', or a list of device indices"
        )
    for split in ("train", "val", "test"):
        limit = trainer.get(f"limit_{split}_batches")
        if isinstance(limit, float) and limit > 1:
            return (
                f"trainer.limit_{split}_batches={limit} is not allowed: use an integer (a "
                f"number of batches) or a fraction of the split in [0, 1]"
            )
    model = cfg.get("model") or {}
    cell = model.get("cell")
    if model.get("forget_bias") is not None and cell not in GATED_CELLS:
        return (
            f"model.forget_bias={model.get('forget_bias')} applies to model.cell=lstm or gru "
            f"only (the forget gate, the update gate): set it to null for model.cell={cell}"
        )
    if model.get("gru_reset", "after") != "after" and cell != "gru":
        return (
            f"model.gru_reset={model.get('gru_reset')!r} applies to model.cell=gru only: "
            f"leave it at 'after' for model.cell={cell}"
        )
    seq2seq = str((cfg.get("data") or {}).get("_target_", "")).startswith(SEQ2SEQ_DATA)
    for key, default in SEQ2SEQ_MODEL_KEYS.items():
        if not seq2seq and model.get(key, default) != default:
            return (
                f"model.{key}={model.get(key)} is for sequence-to-sequence data (data=multi30k, "
                f"data=summarize): data={OmegaConf.select(cfg, 'data.name')} has no decoder; "
                f"leave it at {str(default).lower() if isinstance(default, bool) else default}"
            )
    if seq2seq and OmegaConf.select(cfg, "callbacks.gradflow") is not None:
        return (
            "+callbacks=gradflow measures one recurrent stack's gradients ‖∂L/∂h_t‖ and does "
            "not cover an encoder-decoder yet: drop +callbacks=gradflow for "
            f"data={OmegaConf.select(cfg, 'data.name')}"
        )
    if seq2seq and model.get("tbptt") is not None:
        return (
            f"model.tbptt={model.get('tbptt')} does not apply to sequence-to-sequence data: the "
            f"decoder needs the encoder's final state, so the source cannot be cut; set "
            f"model.tbptt=null"
        )
    if cfg.get("pack") is not None and seq2seq:
        return (
            f"pack={cfg.get('pack')} is not available for sequence-to-sequence data "
            f"(data={OmegaConf.select(cfg, 'data.name')}): set pack=null"
        )
    if cfg.get("pack") is not None and model.get("tbptt") is not None:
        return (
            f"pack={cfg.get('pack')} needs model.tbptt=null: a pack trains each sequence whole; "
            f"set pack=null for truncated BPTT"
        )
    if model.get("tbptt_update", "sequence") != "sequence" and model.get("tbptt") is None:
        return (
            f"model.tbptt_update={model.get('tbptt_update')!r} needs model.tbptt "
            f"(a number of steps): set model.tbptt, or leave model.tbptt_update=sequence"
        )
    return None


def _devices_ok(devices: Any) -> bool:
    if isinstance(devices, ListConfig | list):
        return len(devices) > 0 and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices
        )
    if isinstance(devices, bool):
        return False
    return devices == "auto" or (isinstance(devices, int) and (devices >= 1 or devices == -1))


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError with one line when a value of `cfg` is outside what it may hold."""
    problem = config_problem(cfg)
    if problem:
        raise ConfigError(problem)
