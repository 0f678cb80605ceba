"""How a model config (conf/model/) becomes a model, for a run, a pack's members, a trained run
read back and the benchmark alike: the dataset's part joins it (`model_io`: sizes, and for
sentence pairs the encoder-decoder's class), and the class chosen is given only the keys it
reads (rnnbench.schema.foreign_model_keys): neither architecture takes the other's keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from rnnbench.schema import foreign_model_keys


def build_model(model_cfg: DictConfig | Mapping[str, Any], io: Mapping[str, Any]) -> nn.Module:
    """The model `model_cfg` describes for a dataset whose `model_io()` is `io`."""
    config = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    config.update(io)
    foreign = foreign_model_keys(str(config.get("_target_")))
    return instantiate({k: v for k, v in config.items() if k not in foreign})
