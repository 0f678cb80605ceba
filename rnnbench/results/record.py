"""The run folder: the files a run leaves there, what its record (`result.json`) holds, which
configuration it is (its run_key), and how runs are found again. Every reader and writer of run
folders (train, checkpoints, sweep, table, report, reproduce, gradflow, bench) goes through here:
nothing else names these files."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from rnnbench.errors import ConfigError
from rnnbench.outputs import exchange_folders, write_whole

if TYPE_CHECKING:
    import pandas as pd

# ---------------------------------------------------------------------------------------------
# The files of a run folder

RECORD_FILE = "result.json"  # the record: every consumer reads it
METRICS_FILE = "metrics.csv"  # one row per epoch: train/val metrics, learning rate
STEPS_FILE = "steps.csv"  # every optimizer step: loss and pre-clip gradient norm
STEPS_COLUMNS = ("step", "batch_loss", "grad_norm", "clipped")
KEY_FILE = "run_key"  # written when a run starts: which configuration its checkpoints resume
CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = f"{CHECKPOINT_DIR}/last.ckpt"  # what a resume goes on from
BEST_CKPT = f"{CHECKPOINT_DIR}/best.ckpt"  # the lowest val/loss: what the test scored
EXAMPLES_FILE = "decoded.jsonl"  # seq2seq: some test pairs' source, reference and decoded text
PACK_FILE = "pack.json"  # a pack's folder (rnnbench.run.pack): its members, its trainer, its status
# checkpoints/best.ckpt (the lowest val/loss, what the test scores) is the `best` entry of
# conf/callbacks/default.yaml: a ModelCheckpoint whose folder train.place_in sets.


def trace_file(name: str) -> str:
    """The file an optional callback (`+callbacks=NAME`) writes its trace to: NAME.csv."""
    return f"{name}.csv"


# The columns of steps.csv by name: the optimizer step, that batch's loss, the global gradient
# norm before clipping and whether clipping changed the gradient.
STEP, BATCH_LOSS, PRE_CLIP_GRAD_NORM, CLIPPED = STEPS_COLUMNS
# `+callbacks=gradflow` writes ‖∂L/∂h_t‖ for every step t, layer and direction at each probe step
# (conf/callbacks/gradflow.yaml names the same file).
GRADFLOW_FILE = trace_file("gradflow")
GRADFLOW_COLUMNS = ("step", "layer", "direction", "t", "norm", "loss")


def read_trace(path: Path) -> pd.DataFrame | None:
    """One of a run's CSV traces (metrics.csv, steps.csv, gradflow.csv) as a DataFrame, or None
    when there is no regular file (a pipe would block the read forever) or it does not parse."""
    import pandas as pd  # lazy: training never reads a trace back

    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


EXAMPLES_KEPT = 10  # decoded test pairs kept beside a seq2seq run's record


def write_examples(
    run_dir: Path, sources: list[str], references: list[str], decoded: dict[int, str]
) -> None:
    """The first EXAMPLES_KEPT decoded test pairs (row -> text) with their source and
    reference, as EXAMPLES_FILE: one JSON object a line."""
    rows = [
        {"index": i, "source": sources[i], "reference": references[i], "decoded": decoded[i]}
        for i in sorted(decoded)[:EXAMPLES_KEPT]
    ]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_whole(Path(run_dir) / EXAMPLES_FILE, text.encode())


def read_examples(run_dir: Path) -> list[dict[str, Any]]:
    """A seq2seq run's decoded test examples (EXAMPLES_FILE): source, reference, decoded; []
    when it has none or the file does not parse."""
    path = Path(run_dir) / EXAMPLES_FILE
    if not path.is_file():
        return []
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError):
        return []
    keys = ("source", "reference", "decoded")
    return [r for r in rows if isinstance(r, dict) and all(isinstance(r.get(k), str) for k in keys)]


# ---------------------------------------------------------------------------------------------
# The record

SCHEMA = "rnnbench.result/1"
Status = Literal["completed", "diverged", "failed", "interrupted", "pruned"]
STATUSES: tuple[Status, ...] = ("completed", "diverged", "failed", "interrupted", "pruned")


class Timing(TypedDict, total=False):
    train_s: float  # wall time of fit()
    steps: int  # optimizer steps
    items: int  # predicted items trained on (tokens, frames, sequences)
    items_per_s: float
    partial: bool  # the run did not reach its budget (diverged, interrupted)


class Resume(TypedDict):
    step: int
    epoch: int
    exact: bool  # false for a mid-epoch checkpoint (checkpoint_every_n_steps)


class Decoding(TypedDict, total=False):
    """How a sequence-to-sequence run decoded its test sources, and how the text was scored."""

    beam: int  # 1 = greedy
    length_penalty: float
    max_len: int | None
    signature: str  # the scorer's: sacreBLEU's signature string, or rouge-score's settings
    pairs: int  # how many test pairs were decoded and scored


class Record(TypedDict, total=False):
    """`result.json`, version SCHEMA. `status` is only ever `completed` for a run that trained
    its whole budget with finite weights and metrics and was tested."""

    schema: str
    status: Status
    run_key: str
    task: str | None  # a tasks.KINDS name
    headline: str | None  # the metric tables show by default, e.g. test/ppl
    config: dict[str, Any]  # the resolved configuration
    overrides: list[str]  # the command line that made it
    metrics: dict[str, float]  # split/name: test/ppl, val/loss, ...
    best: dict[str, Any] | None  # the epoch row with the lowest val/loss
    tested: Literal["best", "last"]  # which weights the test metrics come from
    timing: Timing
    params: int | None
    env: dict[str, Any] | None
    seed: int | None
    started: str
    finished: str | None
    wandb: dict[str, Any] | None
    error: str | None
    notes: list[str]
    run_dir: str
    resume: Resume  # present when the run went on from a checkpoint
    resumed_from: str  # the checkpoint of another folder it went on from
    reused_from: str  # a completed run with the same run_key, copied instead of recomputed
    decoding: Decoding  # sequence-to-sequence runs only
    packed_with: dict[str, Any]  # trained in a pack (`pack=K`): its folder, size, members
    pruned: dict[str, Any]  # a search's pruned trial: the epoch it stopped after, its value
    requeued: int  # a SLURM job's: how many times SLURM requeued it (a time limit, a preemption)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_record(config: dict[str, Any], run_dir: Path, overrides: Iterable[str] = ()) -> Record:
    """The record of a run about to start: `failed` until the run says otherwise. In a SLURM
    job that was requeued, it counts the requeues (`requeued`; not part of the run_key)."""
    requeued = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    return {
        "schema": SCHEMA,
        "status": "failed",
        "run_key": run_key(config),
        "task": None,
        "headline": None,
        "config": config,
        "overrides": list(overrides),
        "metrics": {},
        "best": None,
        "timing": {},
        "params": None,
        "env": None,
        "seed": config.get("seed"),
        "started": now_iso(),
        "finished": None,
        "wandb": None,
        "error": None,
        "notes": [],
        "run_dir": str(run_dir),
    } | ({"requeued": requeued} if requeued else {})


def read_record(path: str | Path) -> Record:
    """Load one result.json; raises ValueError, saying what is wrong, when it is not an
    rnnbench record of the shape its readers rely on (`record_shape_error`)."""
    # Bytes decoded whole: a text-mode read decodes and translates newlines in chunks, a
    # quarter of a table's reading time over thousands of records.
    with open(path, "rb") as f:
        data = f.read()
    try:
        record = json.loads(data.decode("utf-8"))
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise ValueError(f"{path} is not complete JSON ({e})") from None
    wrong = record_shape_error(record)
    if wrong:
        raise ValueError(f"{path} is not an rnnbench result record ({SCHEMA}): {wrong}")
    return record


# The fields every reader relies on, and the types they must have when present.
REQUIRED_FIELDS = {"status": str, "run_key": str, "config": dict, "metrics": dict}
OPTIONAL_FIELDS = {
    "overrides": list,
    "notes": list,
    "timing": dict,
    "best": (dict, type(None)),
    "resume": dict,
    "packed_with": dict,
    "reused_from": (str, type(None)),
    "wandb": (dict, type(None)),
}


def record_shape_error(record: Any) -> str | None:
    """What makes `record` (parsed JSON) not a readable record, in words; None when it is."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if record.get("schema") != SCHEMA:
        return f"schema {record.get('schema')!r}"
    for name, kind in REQUIRED_FIELDS.items():
        if not isinstance(record.get(name), kind):
            return f"{name} is {type(record.get(name)).__name__}, not {kind.__name__}"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r} is none of {', '.join(STATUSES)}"
    for name, kinds in OPTIONAL_FIELDS.items():
        if name in record and not isinstance(record[name], kinds):
            return f"{name} is {type(record[name]).__name__}"
    bad = [
        k
        for k, v in record["metrics"].items()
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float))
    ]
    if bad:
        return f"metrics {', '.join(sorted(bad)[:3])} not numbers"
    return None


_warned: set[str] = set()


def warn_skipped(path: Path, error: OSError | ValueError) -> None:
    """One warning line per unreadable record and process, however many finders meet it."""
    key = str(path)
    if key not in _warned:
        _warned.add(key)
        why = f"{path}: {error.strerror}" if isinstance(error, OSError) else str(error)
        print(f"rnnbench: warning: skipped {why}", file=sys.stderr)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON, written whole (outputs.write_whole)."""
    write_whole(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def write_record(run_dir: Path, record: Record) -> str | None:
    """Write the record as run_dir/result.json, unless that holds a completed record and this
    one is not (a forced re-run that failed keeps the result it would have replaced). Returns
    why it could not be written (a full disk, a read-only folder), None when it was."""
    path = run_dir / RECORD_FILE
    if record["status"] != "completed":
        try:
            kept = json.loads(path.read_text()).get("status") == "completed"
        except (OSError, ValueError, AttributeError):
            kept = False
        if kept:
            print(
                f"rnnbench: warning: kept the completed record {path}; this run ended "
                f"{record['status']} and is not recorded there",
                file=sys.stderr,
            )
            return None
    try:
        write_json_atomic(path, record)
    except OSError as e:
        reason = f"cannot write the run record {path} ({e.strerror or e})"
        print(f"rnnbench: warning: {reason}", file=sys.stderr)
        return reason
    return None


# ---------------------------------------------------------------------------------------------
# Identity: which configuration a run is

# Keys that say where or how a run is watched, not what it computes, or what other keys of the
# identity decide: left out of run_key.
KEY_EXCLUDED = (
    "logger",
    "data.root",
    "data.download",
    "data.mirror",
    "results_root",
    "force",
    "threads",
    "pack",  # how many runs train together: each member computes what it would alone
    "checkpoint_every_n_steps",
    "checkpoints.keep",  # what is deleted after the run, not what it computes
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    # The task module (conf/task/): the dataset's config chooses it, and a run whose task is
    # not its dataset's is refused; data._target_, in the identity, says it.
    "task",
    # The always-on callbacks (conf/callbacks/default.yaml) watch a run; they compute nothing.
    *(
        f"callbacks.{name}"
        for name in ("resume", "throughput", "epochs", "trace", "best", "progress_bar")
    ),
)
# Options added after runs were recorded, left out of run_key while at the value that computes
# what the runs before them computed, so those runs still match (and are reused).
KEY_DEFAULTS = {
    # Denormals flushed to zero change only values below ~1e-38 (the runs recorded before
    # computed the same numbers, slower); false, the old way, is a configuration of its own.
    "flush_denormal": True,
    "trainer.precision": "32-true",  # bf16-mixed computes otherwise: a configuration of its own
    "model.tbptt_update": "sequence",
    # Sequence-to-sequence options: any other dataset refuses a value but these.
    "model.attention": "none",
    "model.teacher_forcing": 1.0,
    "model.feed_context": False,
    "decode.beam": 5,
    "decode.length_penalty": 0.6,
    "decode.max_len": None,
}

# Keys whose every value is one configuration: the identity holds the value the first runs
# had. Where a run ran is not what it computes (the record's env.device says where): a run on
# the CPU, on a GPU, or on whichever `auto` found, is one configuration, and runs recorded
# when the default was `cpu` keep their run_key.
KEY_FIXED = {"trainer.accelerator": "cpu"}


# The modules that moved into the nn/ and run/ packages (issue 34) after runs were recorded
# naming them in `_target_`s: a run's identity keeps the name they had then (`recorded_target`),
# so its run_key stands, and a record's config is instantiated by the name they have now
# (`current_targets`).
MOVED_MODULES = {
    **dict.fromkeys(("cells", "clipping", "model", "encoder_decoder", "packed", "decode"), "nn"),
    **dict.fromkeys(
        ("overrides", "launch", "lifecycle", "train", "pack", "sweep", "search", "trial", "claims")
        + ("runner", "packed_task", "sweep_packs")
        + ("slurm", "module", "callbacks", "checkpoints", "optim", "denormals", "gradflow")
        + ("trained",),
        "run",
    ),
}


def recorded_target(target: str) -> str:
    """A `_target_` as runs recorded it before the move into nn/ and run/: what run_key hashes."""
    parts = target.split(".")
    if len(parts) > 3 and parts[0] == "rnnbench" and MOVED_MODULES.get(parts[2]) == parts[1]:
        return ".".join(["rnnbench", *parts[2:]])
    return target


def current_targets(config: Any) -> Any:
    """`config` (a record's, a plain dict) with every `_target_` recorded before the move into
    nn/ and run/ named as it is now, so it can be instantiated."""
    if isinstance(config, list):
        return [current_targets(v) for v in config]
    if not isinstance(config, dict):
        return config
    renamed = {}
    for key, value in config.items():
        if key == "_target_" and isinstance(value, str):
            parts = value.split(".")
            if len(parts) > 2 and parts[0] == "rnnbench" and parts[1] in MOVED_MODULES:
                value = f"rnnbench.{MOVED_MODULES[parts[1]]}.{'.'.join(parts[1:])}"
        renamed[key] = current_targets(value)
    return renamed


def is_seed_key(key: str) -> bool:
    """`seed`, `data.seed`, ...: keys that differ between repeats of one configuration."""
    return key == "seed" or key.endswith(".seed")


@functools.lru_cache(maxsize=4096)  # called per key per run: 10,000 runs share ~50 keys
def is_identity_key(key: str) -> bool:
    """Whether dotted `key` says what a run computes: not a seed, not a path or logger setting."""
    excluded = any(key == e or key.startswith(e + ".") for e in KEY_EXCLUDED)
    return not excluded and not is_seed_key(key)


def identity(config: dict[str, Any], seeds: bool = True) -> dict[str, Any]:
    """A copy of `config` holding only what the run computes (KEY_EXCLUDED and defaulted
    KEY_DEFAULTS removed, KEY_FIXED at their one value), and without its seeds unless
    `seeds`."""

    def walk(node: Any, prefix: str) -> Any:
        if not isinstance(node, dict):
            return node
        kept = {}
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if dotted in KEY_EXCLUDED or (not seeds and is_seed_key(dotted)):
                continue
            if dotted in KEY_DEFAULTS and value == KEY_DEFAULTS[dotted]:
                continue
            value = KEY_FIXED.get(dotted, value)
            if key == "_target_" and isinstance(value, str):
                value = recorded_target(value)
            kept[key] = walk(value, dotted + ".")
            if isinstance(value, dict) and value and not kept[key]:
                del kept[key]  # held only excluded keys: as if it were not there
        return kept

    return walk(json.loads(json.dumps(config, default=str)), "")


def config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_key(config: dict[str, Any]) -> str:
    """Which configuration a run is: a stable hash of what it computes (`identity`). Reuse,
    resume and a run folder's ownership go by it."""
    return config_hash(identity(config))


def repeat_key(config: dict[str, Any]) -> str:
    """run_key without the seeds: runs sharing it are repeats of one configuration (a table's
    cell, a recipe's budget)."""
    return config_hash(identity(config, seeds=False))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists and empty dicts become JSON text, so they can group."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        elif isinstance(value, list | dict):
            out[dotted] = json.dumps(value)
        else:
            out[dotted] = value
    return out


# ---------------------------------------------------------------------------------------------
# Ownership of a folder


def folder_key(run_dir: Path) -> str | None:
    """The run_key of the run a folder holds (its record's, else its run_key file's)."""
    try:
        record = json.loads((run_dir / RECORD_FILE).read_text())
        if isinstance(record, dict) and record.get("run_key"):
            return str(record["run_key"])
    except (OSError, ValueError):
        pass
    try:
        return (run_dir / KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def check_run_folder(run_dir: Path, key: str) -> None:
    """Refuse to run configuration `key` in a folder that holds another configuration's run:
    it would resume from that run's checkpoint and overwrite its record."""
    held = folder_key(run_dir)
    if held is not None and held != key:
        raise ConfigError(
            f"run folder {run_dir} holds another configuration's run (run_key {held}); this "
            f"configuration is run_key {key}: give it its own hydra.run.dir, or delete that "
            f"folder to replace its run"
        )


FORCED_PREFIX = ".forced-"  # a forced re-run's folder beside the completed run it replaces


def holds_completed(run_dir: Path) -> bool:
    """Whether `run_dir` holds a readable completed record."""
    try:
        return read_record(run_dir / RECORD_FILE)["status"] == "completed"
    except (OSError, ValueError):
        return False


def forced_folder(run_dir: Path) -> Path:
    """Where `force=true` trains when `run_dir` holds a completed run: a hidden folder beside
    it, the same for every launch (a relaunch resumes it; DDP's ranks agree on it)."""
    return run_dir.parent / f"{FORCED_PREFIX}{run_dir.name}"


def take_place(record: Record, forced: Path, run_dir: Path) -> None:
    """Put the completed forced re-run in `forced` (its record `record`, already written there)
    in the place of the completed run in `run_dir`, in one step: the folder holds the old run
    or the new one, never a mix. Hydra's files of this launch (.hydra/, the job log), written
    into `run_dir`, go along; the old run is deleted."""

    old, new = str(forced), str(run_dir)
    record["run_dir"] = new
    wandb = record.get("wandb")
    if isinstance(wandb, dict) and isinstance(wandb.get("dir"), str):
        wandb["dir"] = wandb["dir"].replace(old, new, 1)
    record["notes"].append("a forced re-run (force=true): it replaced a completed run here")
    write_json_atomic(forced / RECORD_FILE, record)
    for item in [run_dir / ".hydra", *run_dir.glob("*.log")]:
        if item.is_dir():
            shutil.copytree(item, forced / item.name, dirs_exist_ok=True)
        elif item.is_file():
            shutil.copy2(item, forced / item.name)
    exchange_folders(forced, run_dir)
    shutil.rmtree(forced, ignore_errors=True)  # the replaced run, now at the forced path


def claim_run_folder(run_dir: Path, key: str) -> None:
    """Mark `run_dir` as configuration `key`'s, so a relaunch resumes it and no other
    configuration takes it over."""
    (run_dir / KEY_FILE).write_text(key)


# ---------------------------------------------------------------------------------------------
# Discovery


def natural_key(path: Path) -> list:
    """Sort key putting run folder 10 after 9, not after 1."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def record_files(root: str | Path) -> list[Path]:
    """Every result.json under folder `root`, in natural order: what `Path.rglob` finds (links
    to folders not followed, a dangling link not a record, unreadable folders passed over), in
    a fifth less time, which is a tenth of a table over thousands of run folders."""
    found: list[str] = []
    folders = [os.fspath(root)]
    while folders:  # depth first, each folder's subfolders in listing order, as rglob goes
        try:
            with os.scandir(folders.pop()) as listing:
                entries = list(listing)
        except OSError:
            continue
        inside = []
        for entry in entries:
            try:
                # As rglob: anything of that name that exists (a folder or a pipe too: the
                # readers refuse it by name), a link only when what it names exists.
                if entry.name == RECORD_FILE and (
                    not entry.is_symlink() or os.path.exists(entry.path)
                ):
                    found.append(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    inside.append(entry.path)
            except OSError:
                continue
        folders.extend(reversed(inside))
    return sorted(map(Path, found), key=natural_key)


def iter_records(root: str | Path) -> Iterator[tuple[Path, Record]]:
    """(path, record) for every readable rnnbench result.json under `root`."""
    for path in record_files(root):
        if not path.is_file():  # a pipe named result.json would block the read forever
            continue
        try:
            yield path, read_record(path)
        except (OSError, ValueError) as e:
            warn_skipped(path, e)
            continue


def find_completed(root: str | Path, key: str, exclude: Path | None = None) -> Path | None:
    """A run directory under `root` whose record has run_key `key` and status completed;
    an original run is preferred over a record that itself reused one."""
    found = []
    for path, record in iter_records(root):
        if record.get("run_key") == key and record.get("status") == "completed":
            if exclude is None or path.parent.resolve() != exclude.resolve():
                found.append((record.get("reused_from") is not None, str(path.parent)))
    return Path(min(found)[1]) if found else None


def find_resumable(root: str | Path, key: str, exclude: Path | None = None) -> list[Path]:
    """The `checkpoints/last.ckpt` files under `root`, newest first, of runs with run_key `key`
    that never completed (killed, interrupted, or still running elsewhere), so a relaunched
    sweep, or one in a later session, goes on from one instead of starting over."""
    found = []
    for key_file in Path(root).rglob(KEY_FILE):
        run_dir = key_file.parent
        last = run_dir / LAST_CKPT
        if exclude is not None and run_dir.resolve() == exclude.resolve():
            continue
        try:
            if key_file.read_text().strip() != key or not last.exists():
                continue
            status = read_record(run_dir / RECORD_FILE)["status"]
        except FileNotFoundError:
            status = None
        except (OSError, ValueError) as e:
            # A record that does not read is no evidence the run is unfinished: not resumed.
            warn_skipped(run_dir / RECORD_FILE, e)
            continue
        if status not in ("completed", "diverged"):
            found.append((last.stat().st_mtime, last))
    return [last for _, last in sorted(found, reverse=True)]


def unrecorded_runs(root: str | Path) -> list[Path]:
    """Run folders under `root` that started (they hold a run_key file) but have no record."""
    return [
        key.parent for key in Path(root).rglob(KEY_FILE) if not (key.parent / RECORD_FILE).exists()
    ]


# ---------------------------------------------------------------------------------------------
# Environment


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: str, flush_denormal: bool | None = None) -> dict[str, Any]:
    """What a run ran on; `flush_denormal`: whether denormal floats were flushed to zero
    (launch.main sets it from the config)."""
    # lazy: the record is read by commands that never load torch (tables, report)
    import hydra
    import pytorch_lightning
    import torch

    import rnnbench

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "hydra": hydra.__version__,
        "rnnbench": rnnbench.__version__,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "git_sha": git_sha(),
    } | ({} if flush_denormal is None else {"flush_denormal": bool(flush_denormal)})
