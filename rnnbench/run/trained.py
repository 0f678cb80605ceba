"""A trained run, for use: its model with the weights its test scored, and for a sequence to
sequence run, translations (or summaries) of sentences given to it.

    import rnnbench
    model = rnnbench.load_model("runs/2026-12-06/10-38-49_reber_lstm")   # an nn.Module, eval()
    rnnbench.translate("runs/.../multi30k_gru", ["ein mann fährt fahrrad ."])

The model is rebuilt from the run's recorded configuration (its data gives the vocabulary
sizes, as when it trained) and loaded from the checkpoint the run kept: best.ckpt, or
last.ckpt when no validation ran (a completed run keeps either as weights alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from rnnbench.errors import UserError
from rnnbench.nn.build import build_model
from rnnbench.nn.decode import decode
from rnnbench.results.record import (
    BEST_CKPT,
    LAST_CKPT,
    RECORD_FILE,
    current_targets,
    read_record,
)
from rnnbench.run.checkpoints import load_checkpoint

__all__ = ["TrainedRun", "load_run", "load_model", "translate"]


@dataclass
class TrainedRun:
    """A run's model (eval mode, on the CPU), its set-up data module and its record."""

    model: nn.Module
    data: pl.LightningDataModule
    record: dict[str, Any]


def trained_checkpoint(run_dir: Path) -> Path:
    """The checkpoint holding the weights the run's test scored."""
    for name in (BEST_CKPT, LAST_CKPT):
        if (run_dir / name).is_file():
            return run_dir / name
    raise UserError(
        f"{run_dir} holds no checkpoint ({BEST_CKPT} or {LAST_CKPT}): it was run with "
        f"checkpoints.keep=none, or is no run folder"
    )


def load_run(run_dir: str | Path) -> TrainedRun:
    """The model of the run in `run_dir` with its trained weights, and its data module."""
    run_dir = Path(run_dir)
    if not (run_dir / RECORD_FILE).is_file():
        raise UserError(f"{run_dir} has no {RECORD_FILE}: give a run's folder")
    record = dict(read_record(run_dir / RECORD_FILE))
    config = OmegaConf.create(current_targets(record["config"]))  # recorded before nn/, run/?
    data = instantiate(config.data)
    data.setup("fit")
    model = build_model(config.model, data.model_io())
    weights = load_checkpoint(trained_checkpoint(run_dir))["state_dict"]
    # The task module holds the model as `model`: its weights are named model.<name>.
    model.load_state_dict({k.removeprefix("model."): w for k, w in weights.items()})
    return TrainedRun(model.eval(), data, record)


def load_model(run_dir: str | Path) -> nn.Module:
    """The trained model of the run in `run_dir`, in eval mode, on the CPU."""
    return load_run(run_dir).model


@torch.no_grad()
def translate(
    run: str | Path | TrainedRun,
    sentences: Sequence[str],
    beam: int | None = None,
    max_len: int | None = None,
) -> list[str]:
    """What a sequence-to-sequence run makes of each sentence: tokenised and encoded as its
    training sources were, decoded as its test decoded (its `decode` settings: beam, length
    penalty, length limit) unless `beam` or `max_len` say otherwise."""
    trained = run if isinstance(run, TrainedRun) else load_run(run)
    data, model = trained.data, trained.model
    if not hasattr(data, "src_vocab"):
        raise UserError(
            f"the run in {trained.record.get('run_dir')} is not a sequence-to-sequence run "
            f"(data={trained.record['config']['data'].get('name')}): it has nothing to translate"
        )
    settings = trained.record["config"].get("decode") or {}
    beam = beam or int(settings.get("beam") or 1)
    max_len = max_len or settings.get("max_len") or data.longest_target + 10
    out = []
    for sentence in sentences:
        ids = data.src_vocab.encode(data._tokens(sentence, data.max_source_tokens))
        src = torch.as_tensor(ids, dtype=torch.long).view(1, -1)
        lengths = torch.tensor([src.size(1)])
        hyp = decode(model, src, lengths, beam, int(max_len), settings.get("length_penalty", 0))
        out.append(data.detokenize(hyp[0].tolist()))
    return out
