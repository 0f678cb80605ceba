"""Checkpoints a run can trust: written whole or not at all, loaded without running code, and
taken where a resume goes on exactly as the uninterrupted run would have.

- `AtomicCheckpointIO` (the Trainer's checkpoint plugin) writes each checkpoint to a temporary
  file beside its target and renames it over the target once complete, so a full disk or a
  kill mid-write never leaves a truncated checkpoint under a valid name; it loads with
  `weights_only=True`, so a checkpoint can hold tensors and plain data, never code.
- `ResumeCheckpoint` writes `checkpoints/last.ckpt` just before each epoch's first batch and at
  the end of training. From there Lightning's loops restart exactly: a checkpoint taken at an
  epoch's end is written before the learning-rate schedule steps and resumes into a repeated,
  empty epoch end; one taken in on_train_epoch_start still holds the previous epoch's batch
  count, so the resumed epoch ends at once.
- `resume_point` picks the checkpoint a run goes on from: its own, else one an unfinished run
  with the same run_key left elsewhere (copied in by `adopt_checkpoints`); a checkpoint that
  does not load is refused (the run's own) or skipped with a warning (another run's).
- `drop_checkpoints` deletes, once a run's record says completed, what `checkpoints.keep` does
  not keep (by default last.ckpt: a completed run is never resumed).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig

from rnnbench.errors import UserError
from rnnbench.outputs import write_whole
from rnnbench.record import CHECKPOINT_DIR, LAST_CKPT, claim_run_folder, find_resumable

# Set in a checkpoint's dict by ResumeCheckpoint: taken where a resume is exact.
BOUNDARY = "rnnbench_boundary"


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded or cannot be written."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path`, loaded as data only (weights_only: no code runs);
    CheckpointError naming the file when it is not a loadable checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, random bytes, a pickle with code, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded ({reason[:200]}); it was not run. "
            f"Delete it to start this run afresh"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint (no state_dict); it was not "
            f"used. Delete it to start this run afresh"
        )
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, written atomically and loaded as data only."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # in memory first: a write error is a plain OSError
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_whole(path, buffer.getvalue())
        except OSError as e:
            raise CheckpointError(
                f"cannot write checkpoint {path} ({e.strerror or e}); free some space or give "
                f"results_root a writable folder"
            ) from None

    def load_checkpoint(self, path: Any, map_location: Any = None, **kwargs: Any) -> dict:
        return load_checkpoint(path)


class ResumeCheckpoint(pl.Callback):
    """Writes `path` (checkpoints/last.ckpt) before each epoch's first batch and when
    training ends."""

    def __init__(self, path: str | Path = LAST_CKPT) -> None:
        self.path = Path(path)
        self._saving = False

    def _save(self, trainer: pl.Trainer) -> None:
        self._saving = True
        try:
            trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, not weights
        finally:
            self._saving = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint[BOUNDARY] = self._saving


def resume_point(record: dict[str, Any], run_dir: Path, cfg: DictConfig) -> Path | None:
    """The checkpoint this run goes on from, or None to start afresh.

    Its own `checkpoints/last.ckpt` (refused with CheckpointError when it does not load);
    else (unless `force`) the newest loadable one an unfinished run with the same run_key left
    under results_root, copied here and named in the record's `resumed_from`; one that does not
    load is skipped with a warning. Marks `run_dir` with the run_key so a later relaunch can
    find it in turn, and notes in the record whether the resume is exact (an epoch boundary).
    """
    claim_run_folder(run_dir, record["run_key"])
    last = run_dir / LAST_CKPT
    if last.exists():
        ckpt = load_checkpoint(last)
    else:
        ckpt = None
        if cfg.get("force") or not cfg.get("results_root"):
            return None
        for found in find_resumable(cfg.results_root, record["run_key"], exclude=run_dir):
            try:
                ckpt = load_checkpoint(found)
            except CheckpointError as e:
                print(f"rnnbench: warning: skipped: {e}", file=sys.stderr)
                continue
            adopt_checkpoints(found, ckpt, last)
            source = found.parent.parent
            # The per-step traces (steps.csv, gradflow.csv) so far: the callbacks keep their
            # rows up to the checkpoint's step, so the new folder holds the whole history once.
            for trace in source.glob("*.csv"):
                if not (run_dir / trace.name).exists():
                    shutil.copyfile(trace, run_dir / trace.name)
            record["resumed_from"] = str(source.resolve())
            break
        if ckpt is None:
            return None
    record["resume"] = {
        "step": int(ckpt.get("global_step", 0)),
        "epoch": int(ckpt.get("epoch", 0)),
        "exact": bool(ckpt.get(BOUNDARY)),
    }
    return last


CHECKPOINT_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


def adopt_checkpoints(last: Path, ckpt: dict[str, Any], target: Path) -> None:
    """Take an unfinished run's `last.ckpt` (loaded as `ckpt`) in as `target`, with the
    checkpoints its ModelCheckpoint states name (best.ckpt) copied beside it and those states
    pointed at the target's folder. Lightning restores the best score only when the state's
    folder is the callback's own; otherwise the first epoch after the resume would become
    "best" whatever its validation loss, and the test would use its weights."""
    new = target.parent
    new.mkdir(parents=True, exist_ok=True)

    def moved(path: str) -> str:
        # last.ckpt itself is written below, with the states changed: no need to copy it first.
        source, copy = Path(path), new / Path(path).name
        if source.is_file() and not copy.exists() and source.resolve() != last.resolve():
            shutil.copyfile(source, copy)
        return os.path.realpath(copy)

    for name, state in ckpt.get("callbacks", {}).items():
        if not name.startswith("ModelCheckpoint"):
            continue
        state["dirpath"] = os.path.realpath(new)
        for key in CHECKPOINT_PATH_KEYS:
            if state.get(key):
                state[key] = moved(state[key])
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    write_whole(target, buffer.getvalue())


def drop_checkpoints(run_dir: Path, keep: str, best: str | Path | None) -> list[Path]:
    """Delete the checkpoints of a completed run that `keep` (`checkpoints.keep`) does not keep,
    and return those deleted. Called once the record says completed: until then
    `checkpoints/last.ckpt` is what a relaunch resumes from, so no other run loses anything.

    `best` is the checkpoint the test scored (checkpoints/best.ckpt), None when no validation
    ran and the test scored the last weights, which last.ckpt holds. keep=best keeps the scored
    checkpoint (best.ckpt, else last.ckpt), last keeps last.ckpt, both keeps both, none keeps
    nothing; an emptied checkpoints/ folder goes too. A file that cannot be deleted costs a
    warning line, not the completed run.
    """
    last = (run_dir / LAST_CKPT).resolve()
    scored = Path(best).resolve() if best else last
    kept = {"best": {scored}, "last": {last}, "both": {last, scored}, "none": set()}[keep]
    dropped = []
    for path in sorted({last, scored} - kept):
        if not path.exists():
            continue
        try:
            path.unlink()
        except OSError as e:
            print(f"rnnbench: warning: kept {path} ({e.strerror or e})", file=sys.stderr)
            continue
        dropped.append(path)
    folder = run_dir / CHECKPOINT_DIR
    if dropped and folder.is_dir() and not any(folder.iterdir()):
        with contextlib.suppress(OSError):  # an empty folder left behind is harmless
            folder.rmdir()
    return dropped
