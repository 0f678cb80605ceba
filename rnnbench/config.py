"""Where the configuration lives, one `compose()`, and what every composed value may hold.

`conf/` holds every default. `compose()` builds a run's configuration from it exactly as the
`rnnbench` command does. `check_config()` holds it against its schema (rnnbench/schema.py: the
kind and range of every key, by the group option it comes from), plus the few rules that tie two
keys together, and raises ConfigError with one line naming the first bad value and what is
allowed. It runs before Hydra makes a run folder and before torch is imported.

This module imports Hydra and OmegaConf only: the command line is checked in a fraction of a
second, whatever the run will later import.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from rnnbench.cellspec import GATED_CELLS
from rnnbench.errors import ConfigError
from rnnbench.schema import EncoderDecoderSchema, RecurrentSchema, schema_problem

# One conf tree in git, at the repo top. A wheel carries a copy inside the package (setup.py puts
# it there); a source or editable checkout has no rnnbench/conf and reads the repo-top one.
CONF_DIR = Path(__file__).resolve().parent / "conf"
if not CONF_DIR.is_dir():
    CONF_DIR = CONF_DIR.parent.parent / "conf"

# A dataset's name becomes part of its run folder's name: no separators, no "..".
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The configuration `rnnbench OVERRIDES` would run, composed from `conf/`."""

    if GlobalHydra.instance().is_initialized():  # inside a running Hydra app
        return hydra_compose("config", list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", list(overrides), return_hydra_config=return_hydra_config)


def config_problem(cfg: DictConfig) -> str | None:
    """The first value of `cfg` outside what it may hold, as one line; None when all fit."""
    return schema_problem(cfg) or cross_problem(cfg)


# The datasets whose model is an encoder-decoder (their model_io names it).
SEQ2SEQ_DATA = "rnnbench.data.pairs."


@functools.cache
def model_defaults() -> dict[str, Any]:
    """The values conf/model/rnn.yaml gives every model key (the YAML holds the values)."""
    node = OmegaConf.load(CONF_DIR / "model" / "rnn.yaml")
    return {k: v for k, v in node.items() if k not in ("defaults", "_target_")}


def encoder_decoder_keys() -> list[str]:
    """The model keys only the encoder-decoder reads, in the schema's order."""
    shared = {f.name for f in dataclasses.fields(RecurrentSchema)}
    return [f.name for f in dataclasses.fields(EncoderDecoderSchema) if f.name not in shared]


# The callbacks that make what a run's record says (the others only watch it, and may be dropped).
KEPT_CALLBACKS = {
    "epochs": "its metrics.csv gives the record its validation values and best epoch",
    "best": "its best.ckpt is the weights the test scores (checkpoints.keep=last drops it after)",
}


def cross_problem(cfg: DictConfig) -> str | None:
    """Rules between keys: a budget of at least one step, dataset names that stay inside
    the runs folder, options that apply only to some cells."""
    name = OmegaConf.select(cfg, "data.name")
    if isinstance(name, str) and not NAME.match(name):
        return (
            f"data.name={name!r} is not allowed: use a plain name (letters, digits, '_', '-', "
            f"'.'), it becomes part of the run folder's name"
        )
    callbacks = cfg.get("callbacks")
    for name, gives in KEPT_CALLBACKS.items():
        if isinstance(callbacks, DictConfig) and name not in callbacks:
            return (
                f"~callbacks.{name} is not allowed: {gives}, so a run without it would record "
                f"other figures under the same run_key; keep it"
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
    for key in [] if seq2seq else encoder_decoder_keys():
        default = model_defaults()[key]
        if model.get(key, default) != default:
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
