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
import pickle
import pickletools
import re
import shutil
import stat
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from rnnbench.errors import UserError
from rnnbench.outputs import write_whole
from rnnbench.results.record import CHECKPOINT_DIR, LAST_CKPT, claim_run_folder, find_resumable

# Set in a checkpoint's dict by ResumeCheckpoint: taken where a resume is exact.
BOUNDARY = "rnnbench_boundary"


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded or cannot be written."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path`, loaded as data only (weights_only: no code runs);
    CheckpointError naming the file and saying, in words, what is wrong with it when it is not
    a loadable Lightning checkpoint (empty, truncated, not a torch file, holds code, ...)."""
    reason = _file_problem(path)  # before torch.load: opening a FIFO would block
    if reason is None:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated, random bytes, a pickle with code, ...
            reason = _load_problem(path, e)
        else:
            if isinstance(ckpt, dict) and "state_dict" in ckpt:
                return ckpt
            reason = "a torch file, but not a Lightning checkpoint: no state_dict"
    raise CheckpointError(
        f"checkpoint {path} cannot be loaded ({reason}); it was not run. "
        f"Delete it to start this run afresh"
    )


def _file_problem(path: str | Path) -> str | None:
    """What keeps `path` from being read as a file at all, in words; None for a readable,
    non-empty regular file. Looks with stat before opening anything: a FIFO is never opened."""

    try:
        found = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return f"cannot be looked at: {e.strerror or e}"
    mode = found.st_mode
    if stat.S_ISDIR(mode):
        return "a directory, not a file"
    if not stat.S_ISREG(mode):
        kinds = {
            "a FIFO": stat.S_ISFIFO, "a socket": stat.S_ISSOCK,
            "a character device": stat.S_ISCHR, "a block device": stat.S_ISBLK,
        }  # fmt: skip
        kind = next((k for k, test in kinds.items() if test(mode)), "a special file")
        return f"{kind}, not a regular file"
    if found.st_size == 0:
        return "empty file (0 bytes)"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return f"unreadable: {(e.strerror or str(e)).lower()}"
    return None


def _load_problem(path: str | Path, error: Exception) -> str:
    """What is wrong, in words, with the readable, non-empty file `path` that torch.load
    (weights_only) refused with `error`: told from the file's own bytes, not torch's wording."""

    text = str(error)
    code = re.search(r"GLOBAL ([\w.]+)", text)  # torch names the global it refused
    holds_code = "holds code, refused (weights_only)" + (f": {code[1]}" if code else "")
    first_line = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":  # torch's zip format
        if not zipfile.is_zipfile(path):
            return "truncated: a zip archive whose end is missing"
        try:
            with zipfile.ZipFile(path) as archive:
                names, bad = archive.namelist(), archive.testzip()
        except Exception as e:  # noqa: BLE001 - a damaged archive raises many kinds
            return f"a damaged zip archive: {str(e)[:100] or type(e).__name__}"
        if bad is not None:
            return f"damaged: {bad} in its zip archive fails its checksum"
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "a zip archive, but not a torch file"
        if isinstance(error, pickle.UnpicklingError):
            return holds_code
        return f"a damaged torch file: {first_line}"
    if head[:1] != b"\x80":  # not a pickle (protocol 2+) either
        return "not a torch file: neither a zip archive nor a pickle"

    # A pickle: torch's legacy format (a pickled magic number first) or a bare one, read with an
    # inert stand-in for each global torch rebuilds from; any other global is code: refused.
    class Inert(dict):  # takes any arguments, state, items (OrderedDict) or appends
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __setstate__(self, state: Any) -> None:
            pass

        def append(self, item: Any) -> None:
            pass

        def extend(self, items: Any) -> None:
            pass

    class Names(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module.split(".")[0] in ("torch", "collections", "_codecs"):
                return Inert
            raise LookupError(f"{module}.{name}")

        def persistent_load(self, pid: Any) -> None:
            return None

    try:
        with open(path, "rb") as f:
            first = Names(f).load()
    except LookupError as e:
        return f"holds code, refused (weights_only): {e.args[0]}"
    except Exception as e:  # noqa: BLE001 - EOFError, UnpicklingError, ...
        if isinstance(e, EOFError) or "truncated" in str(e):
            return "truncated: the pickle ends early"
        return "a damaged pickle, not a torch file"
    if first != torch.serialization.MAGIC_NUMBER:
        return "a pickle, not a torch file"
    with open(path, "rb") as f:  # torch's legacy layout: its pickles read, none run
        try:
            for _ in range(5):  # magic number, protocol, sys_info, the objects, storage keys
                for _ in pickletools.genops(f):
                    pass
        except ValueError:
            if f.tell() >= os.fstat(f.fileno()).st_size:
                return "truncated: the file ends early"
            return f"a damaged torch file: {first_line}"
    if isinstance(error, EOFError) or "unexpected EOF" in text or "truncated" in text:
        return "truncated: the file ends early"
    if isinstance(error, pickle.UnpicklingError):
        return holds_code
    return f"a damaged torch file: {first_line}"


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


def resume_point(
    record: dict[str, Any], run_dir: Path, cfg: DictConfig, packed: bool = False
) -> Path | None:
    """The checkpoint this run goes on from, or None to start afresh.

    Its own `checkpoints/last.ckpt` (refused with CheckpointError when it does not load);
    else (unless `force`) the newest loadable one an unfinished run with the same run_key left
    under results_root, copied here and named in the record's `resumed_from`; one that does not
    load is skipped with a warning. Marks `run_dir` with the run_key so a later relaunch can
    find it in turn, and says in the record whether the resume is exact: from an epoch
    boundary, of a kind in EXACT_RESUMES (a note says why when it is not).
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
            copy_traces(source, run_dir)
            record["resumed_from"] = str(source.resolve())
            break
        if ckpt is None:
            return None
    step = int(ckpt.get("global_step", 0))
    why_not = inexact_resume(cfg, packed, bool(ckpt.get(BOUNDARY)), step)
    record["resume"] = {"step": step, "epoch": int(ckpt.get("epoch", 0)), "exact": not why_not}
    if why_not:
        record.setdefault("notes", []).append(why_not)
    return last


# The kinds of resume a test proves exact: tests/test_resume_kinds.py kills a run of each kind
# in its third epoch (a pack in its second), resumes it, and compares metrics, metrics.csv and
# steps.csv with the uninterrupted run's. A resume of another kind is recorded `exact: false`.
# A kind is (how the run trains, optim._target_, scheduler._target_ or None).
PROVEN_OPTIMIZERS = ("torch.optim.Adam", "torch.optim.SGD", "torch.optim.RMSprop")
PROVEN_SCHEDULERS = (
    None,
    "rnnbench.run.optim.step_decay",
    "torch.optim.lr_scheduler.ReduceLROnPlateau",
)
EXACT_RESUMES = frozenset(
    {("lone", o, s) for o in PROVEN_OPTIMIZERS for s in PROVEN_SCHEDULERS}
    | {("packed", "torch.optim.Adam", s) for s in PROVEN_SCHEDULERS}
)


def resume_kind(cfg: DictConfig, packed: bool = False) -> tuple[str, str, str | None]:
    """What a resume of `cfg` is, for EXACT_RESUMES: lone, packed, or chunk (truncated BPTT
    with an optimizer step per chunk: the task steps the optimizer and schedule itself)."""
    chunked = bool(OmegaConf.select(cfg, "model.tbptt")) and (
        OmegaConf.select(cfg, "model.tbptt_update") == "chunk"
    )
    loop = "packed" if packed else "chunk" if chunked else "lone"
    scheduler = OmegaConf.select(cfg, "scheduler._target_") if cfg.get("scheduler") else None
    return loop, str(OmegaConf.select(cfg, "optim._target_")), scheduler


def inexact_resume(cfg: DictConfig, packed: bool, boundary: bool, step: int) -> str | None:
    """Why a resume from a checkpoint at `step` may not end as the uninterrupted run would
    (a note for the record), or None when a test proves this kind of resume exact."""
    if not boundary:
        return (
            f"resumed from a mid-epoch checkpoint (step {step}): the rest of that epoch is not "
            f"the uninterrupted run's (checkpoint_every_n_steps)"
        )
    loop, optim, scheduler = resume_kind(cfg, packed)
    if (loop, optim, scheduler) not in EXACT_RESUMES:
        return (
            f"resumed at step {step}; no test proves a resume exact for a {loop} run with "
            f"{optim} and scheduler {scheduler}: its figures may differ from an uninterrupted "
            f"run's"
        )
    return None


def copy_traces(source: Path, run_dir: Path) -> None:
    """The per-step traces (steps.csv, gradflow.csv, ...) an unfinished run left in `source`,
    into `run_dir` where it goes on: the callbacks keep their rows up to the checkpoint's step,
    so the new folder holds the whole history once."""
    for trace in source.glob("*.csv"):
        if trace.is_file() and not (run_dir / trace.name).exists():
            shutil.copyfile(trace, run_dir / trace.name)


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


# What a checkpoint needs for the weights to be used: Lightning loads these for a test, and
# rnnbench.load_model reads the state_dict. The optimizer's state and the loops' are for a
# resume, which a completed run never needs.
WEIGHTS_KEYS = ("state_dict", "epoch", "global_step", "pytorch-lightning_version")


def keep_weights_only(path: Path) -> None:
    """Rewrite checkpoint `path` with its weights alone (WEIGHTS_KEYS); the optimizer state of
    an Adam run is two thirds of its size."""
    checkpoint = load_checkpoint(path)
    AtomicCheckpointIO().save_checkpoint(
        {k: checkpoint[k] for k in WEIGHTS_KEYS if k in checkpoint}, path
    )


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
