"""`rnnbench-table`: every result.json under some paths in one DataFrame, printed as a comparison.

rnnbench-table runs/multirun/2026-11-25/20-35-48                  # cells x depths, headline metric
rnnbench-table runs/ --rows data.name,model.cell --cols model.num_layers --metric test/ppl
rnnbench-table runs/ --reference zaremba2014,bai2018 --format latex -o table.tex
rnnbench-table runs/ --long                                       # one line per run
rnnbench-table --wandb my-team/rnnbench                           # the same table from W&B

One row of the DataFrame is one run: its config flattened to dotted columns (`model.cell`), its
metrics as columns (`test/ppl`), `status`, `timing.*`, `params`, `seed`, `run_dir`. Runs whose
configs differ only in their seed (`seed`, `data.seed`, ...) collapse to mean ± std and n.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import gc
import hashlib
import html
import json
import marshal
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from stat import S_ISREG
from typing import Any

import pandas as pd

from rnnbench.cellspec import CELLS
from rnnbench.config import compose
from rnnbench.errors import UserError
from rnnbench.outputs import (
    check_writable,
    html_comment,
    md_text,
    one_line,
    write_text,
    write_whole,
)
from rnnbench.results import record as record_module
from rnnbench.results.record import (
    RECORD_FILE,
    flatten,
    is_identity_key,
    is_seed_key,
    read_record,
    record_files,
    repeat_key,
)
from rnnbench.results.studies import (
    StudyView,
    expected_max_curve,
    load_studies,
    plot_expected_max,
    summary_data,
    summary_rows,
)
from rnnbench.tasks import direction

FORMATS = ("md", "csv", "latex", "html")
# Runs in these states have a number (or "diverged") to show; the rest are left out and counted.
SHOWN = ("completed", "diverged")
RECORD_COLUMNS = (
    "status",
    "task",
    "headline",
    "seed",
    "params",
    "run_key",
    "config_id",
    "source",
    "run_dir",
    "timing.train_s",
    "timing.steps",
    "timing.items",
    "timing.items_per_s",
    "timing.partial",
)
# The keys users sweep most (README), in the order a default table puts them in columns.
AXIS_ORDER = (
    "model.num_layers",
    "model.hidden_size",
    "model.bidirectional",
    "model.impl",
    "trainer.gradient_clip_val",
    "model.dropout",
    "optim.lr",
)
# W&B run states for runs whose summary lacks the harness's own `status`.
WANDB_STATES = {
    "finished": "completed",
    "crashed": "failed",
    "failed": "failed",
    "killed": "interrupted",
    "preempted": "interrupted",
}
# Logged into a W&B run's config beside the configuration itself
# (rnnbench.run.lifecycle.build_loggers).
WANDB_EXTRAS = ("overrides", "run_key")
REFERENCE_DIR = "references"
MISSING = "-"


class TableError(UserError):
    """A bad path, key, metric or reference: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Records -> rows -> DataFrame


# Every row starts from this: the record columns, None until set.
BLANK_ROW: dict[str, Any] = dict.fromkeys(RECORD_COLUMNS)


def make_row(
    config: dict[str, Any],
    metrics: dict[str, Any],
    status: str,
    **extra: Any,
) -> dict[str, Any]:
    """The one row shape both sources produce: flattened config, metrics, status, `extra`."""
    return assemble_row(flatten(config), repeat_key(config), config, metrics, status, extra)


def assemble_row(
    flat: dict[str, Any],
    config_id: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    status: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """make_row's row from a config already flattened (`flat`) and identified (`config_id`):
    record columns first, then `extra`, the config and the metrics, each over the ones before."""
    row = dict(BLANK_ROW)
    row["status"] = status
    row["seed"] = config.get("seed")
    row["config_id"] = config_id
    row.update(extra)
    row.update(flat)
    row.update(metrics)
    return row


class ConfigReader:
    """flatten(config) and repeat_key(config) of many configs read from JSON: each section (a
    top-level key's subtree) flattened once per distinct content, each configuration hashed once.
    flatten and repeat_key walk, copy and hash the whole config, more than half of reading a
    record, and a sweep's records share all but a few sections, a configuration its seeds.

    A section is known by its repr, which tells 1 from 1.0 and True, 0.0 from -0.0 and a list
    from a string: the same repr is the same JSON, flattened the same. A configuration is known
    by its sections and other values, without the seeds repeat_key leaves out (a top-level seed,
    a section's own `seed`; one deeper stays in, which only makes the key stricter) but with
    where they were: the same key is the same configuration to repeat_key."""

    def __init__(self) -> None:
        # (name, repr) -> (its number, its keys flattened)
        self.sections: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.unseeded: dict[tuple[str, str], int] = {}  # the same for sections less their seed
        self.ids: dict[tuple, str] = {}

    def __call__(self, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """(flatten(config), repeat_key(config))."""
        flat: dict[str, Any] = {}
        key: list[Any] = []
        for name, value in config.items():
            token: Any
            if isinstance(value, dict) and value:
                text = repr(value)
                known = self.sections.get((name, text))
                if known is None:
                    known = len(self.sections), flatten(value, f"{name}.")
                    self.sections[name, text] = known
                flat.update(known[1])
                token = known[0]
                if "seed" in value:
                    rest = repr({k: v for k, v in value.items() if k != "seed"})
                    token = ("seeded", self.unseeded.setdefault((name, rest), len(self.unseeded)))
            elif isinstance(value, list | dict):
                flat[name] = json.dumps(value)
                token = ("json", name, flat[name])
            else:
                flat[name] = value
                token = ("value", name, repr(value))
            # repeat_key leaves a seed out whatever it holds: only that it was there counts.
            key.append(("seed", name) if is_seed_key(name) else token)
        found = self.ids.get(tuple(key))
        if found is None:
            found = self.ids[tuple(key)] = repeat_key(config)
        return flat, found


def record_row(
    record: dict[str, Any], path: str | Path | None = None, configs: ConfigReader | None = None
) -> dict[str, Any]:
    """The row of one result.json record; `path` (the file read) names the run's folder, which
    stays right when runs are copied elsewhere. `configs` remembers the sections and
    configurations seen before, for reading many records."""
    config = record["config"]
    timing = record.get("timing") or {}
    run_dir = str(Path(path).parent) if path is not None else record.get("run_dir")
    flat, config_id = (configs or ConfigReader())(config)
    extra = {
        "task": record.get("task"),
        "headline": record.get("headline"),
        "params": record.get("params"),
        "run_key": record.get("run_key"),
        "source": "file",
        "run_dir": run_dir,
        **{f"timing.{k}": v for k, v in timing.items()},
    }
    return assemble_row(
        flat, config_id, config, record.get("metrics") or {}, record["status"], extra
    )


def wandb_row(
    config: dict[str, Any],
    summary: dict[str, Any],
    state: str,
    run_dir: str | None = None,
) -> dict[str, Any]:
    """The row of one W&B run, from what `wandb.Api().runs()` gives: `run.config` (the resolved
    Hydra config the harness logged), `run.summary_metrics` (the record's metrics and `status`,
    put there when the run finished, plus W&B's own keys) and `run.state`.

    Timing is not in W&B, so those columns stay empty; `headline`, `task`, `params` and
    `run_key` are read from the summary (or the logged config) when the run put them there.
    """
    # The harness logs a run's `overrides` and `run_key` beside its configuration.
    run_key = config.get("run_key")
    config = {
        k: v for k, v in config.items() if not k.startswith("_wandb") and k not in WANDB_EXTRAS
    }
    metrics = {
        k: v
        for k, v in summary.items()
        if k.startswith(("val/", "test/"))
        and isinstance(v, int | float)
        and not isinstance(v, bool)
    }
    status = summary.get("status") or WANDB_STATES.get(state, state)
    return make_row(
        config,
        metrics,
        status,
        task=summary.get("task"),
        headline=summary.get("headline"),
        params=summary.get("params"),
        run_key=summary.get("run_key") or run_key,
        source="wandb",
        run_dir=run_dir,
    )


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every result.json at or under `paths` (files or folders), in natural order per path."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise TableError(f"{p}: no such file or folder")
        if p.is_file():
            found.append(p)
        else:
            found.extend(record_files(p))
    return list(dict.fromkeys(found))


def warn_stderr(message: str) -> None:
    print(f"rnnbench-table: warning: {message}", file=sys.stderr)


def load_rows(
    paths: Iterable[str | Path], warn: Callable[[str], None] = warn_stderr
) -> list[dict[str, Any]]:
    """One row per readable result.json under `paths`; others are skipped with a warning naming
    the file. Raises TableError when the paths hold no result.json at all. Over
    CACHE_MIN_RECORDS records, the rows of records unchanged since a table over the same paths
    read them come from its RowCache."""
    paths = list(paths)
    files = find_results(paths)
    if not files:
        raise TableError(f"no {RECORD_FILE} under {', '.join(map(str, paths))}")
    cache = RowCache.open(paths) if len(files) >= CACHE_MIN_RECORDS else None
    loaded: list[Loaded] = []
    configs = ConfigReader()
    with gc_paused():
        for f in files:
            if (done := load_one(f, cache, configs, warn)) is not None:
                loaded.append(done)
        if cache is not None:
            cache.save()
    # A re-launched sweep copies a finished run's record instead of recomputing it: count
    # that run once when its original is among the paths too.
    originals = {key for key, reused, _ in loaded if not reused}
    return [row for key, reused, row in loaded if not (reused and key in originals)]


def load_one(
    f: Path, cache: RowCache | None, configs: ConfigReader, warn: Callable[[str], None]
) -> Loaded | None:
    """What load_rows keeps of one record file, None (with a warning) when it is unreadable."""
    try:
        st = os.stat(f)
    except OSError as e:
        warn(f"skipped {f}: {e.strerror}")
        return None
    if not S_ISREG(st.st_mode):  # a pipe named result.json would block the read forever
        warn(f"skipped {f}: not a regular file")
        return None
    done = cache.get(str(f), st) if cache is not None else None
    if done is not None:
        return done
    try:
        record = read_record(f)
        done = (record.get("run_key"), record.get("reused_from"), record_row(record, f, configs))
    except ValueError as e:  # read_record's message names the file and what is wrong
        warn(f"skipped {e}")
        return None
    except (KeyError, TypeError, AttributeError) as e:
        warn(f"skipped {f}: missing {e}")
        return None
    except OSError as e:
        warn(f"skipped {f}: {e.strerror}")
        return None
    if cache is not None:
        cache.put(str(f), st, done)
    return done


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a while: reading a record makes a hundred objects
    that live on and no cycles, and the collector, scanning them again and again, took a quarter
    of reading 100,000 records."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


# ---------------------------------------------------------------------------------------------
# Rows of records read before

CACHE_ENV = "RNNBENCH_TABLE_CACHE"
CACHE_DEFAULT = "~/.cache/rnnbench/tables"
# Fewer records read in well under a second: no cache file is written for them.
CACHE_MIN_RECORDS = 1000
# A file changed less than this long before it is looked at could change again within the same
# tick of its filesystem's clock and keep its times and size: its row is kept once it settled.
SETTLED_NS = 2_000_000_000

# What the readers keep of a record: its run_key, its reused_from and its row.
Loaded = tuple[Any, Any, dict[str, Any]]


def signature(st: os.stat_result) -> tuple[int, ...]:
    """What rewriting a file changes: its device and inode (a new file renamed into place), its
    size, its modification time and its change time, which every write, rename and utime sets
    to the clock's time and no program can set back."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=1)
def code_tag() -> str | None:
    """This Python and the code that makes a row (record.py, table.py): rows another version
    made are not this version's rows. None when the source cannot be read (no cache then)."""
    digest = hashlib.sha256(f"{sys.version} {marshal.version}".encode())
    try:
        for module in (record_module.__file__, __file__):
            digest.update(Path(str(module)).read_bytes())
    except OSError:
        return None
    return digest.hexdigest()


class RowCache:
    """The rows of the records a table over the same paths read before, so that a table over
    tens of thousands of records reads, flattens and identifies only those that changed.

    A row comes back only while its file's `signature` is what it was when the row was made,
    and is kept only when that file had not changed for SETTLED_NS: a record written a moment
    ago is read, and a record rewritten in place is read again. One file per working folder and
    paths given, in the folder RNNBENCH_TABLE_CACHE names (default ~/.cache/rnnbench/tables;
    empty: no cache), holding the rows of the files found the last time, made by this code
    (`code_tag`); one that does not read back is ignored, one that cannot be written skipped."""

    def __init__(self, file: Path, tag: str) -> None:
        self.file, self.tag = file, tag
        self.settled = time.time_ns() - SETTLED_NS
        self.old: dict[str, tuple] = {}
        self.layouts: list[tuple[str, ...]] = []
        try:
            stored_tag, layouts, entries = marshal.loads(file.read_bytes())
            if stored_tag == tag:
                self.old, self.layouts = entries, layouts
        except (OSError, ValueError, TypeError, EOFError):  # none yet, or not one of ours
            pass
        self.layout_ids = {layout: i for i, layout in enumerate(self.layouts)}
        self.entries: dict[str, tuple] = {}

    @classmethod
    def open(cls, paths: Sequence[str | Path]) -> RowCache | None:
        folder = os.environ.get(CACHE_ENV, CACHE_DEFAULT)
        tag = code_tag()
        if not folder or tag is None:
            return None
        try:
            where = json.dumps([os.getcwd(), [os.fspath(p) for p in paths]])
        except OSError:  # the working folder is gone: relative paths name nothing stable
            return None
        name = hashlib.sha256(where.encode()).hexdigest()[:32]
        return cls(Path(folder).expanduser() / f"{name}.rows", tag)

    def get(self, path: str, st: os.stat_result) -> Loaded | None:
        """What `path` loaded as, when its file is the one that made the row; else None."""
        entry = self.old.get(path)
        if entry is None or entry[0] != signature(st):
            return None
        self.entries[path] = entry
        _, layout, values, run_key, reused = entry
        return run_key, reused, dict(zip(self.layouts[layout], values, strict=True))

    def put(self, path: str, st: os.stat_result, loaded: Loaded) -> None:
        """Keep what `path`, whose file was `st` before it was read, loaded as."""
        if max(st.st_mtime_ns, st.st_ctime_ns) >= self.settled:
            return
        run_key, reused, row = loaded
        layout = tuple(row)
        if layout not in self.layout_ids:
            self.layout_ids[layout] = len(self.layouts)
            self.layouts.append(layout)
        values = tuple(row.values())
        self.entries[path] = (signature(st), self.layout_ids[layout], values, run_key, reused)

    def save(self) -> None:
        """Write the rows kept this time, when they are not the ones read."""
        if self.entries.keys() == self.old.keys() and all(
            self.old[p] is e for p, e in self.entries.items()
        ):
            return
        try:
            data = marshal.dumps((self.tag, self.layouts, self.entries))
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_whole(self.file, data)
        except (OSError, ValueError):  # a read-only home, a value marshal cannot write
            pass


def wandb_rows(project: str) -> list[dict[str, Any]]:
    """The rows of every run in a W&B project (`ENTITY/PROJECT`), through the public API."""
    import wandb  # lazy: only --wandb tables need W&B, which takes a second to load

    try:
        return [
            wandb_row(dict(run.config), dict(run.summary_metrics), run.state, run_dir=run.url)
            for run in wandb.Api().runs(project)
        ]
    except (wandb.Error, ValueError, OSError) as e:  # not logged in, no network, no such project
        raise TableError(f"W&B project {project!r}: {str(e).splitlines()[0]}") from e


def frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The runs as one DataFrame, record columns first, then config keys, then metrics."""
    names = set().union(*rows)
    if not rows or not names:
        raise TableError("no readable runs")
    first = [c for c in RECORD_COLUMNS if c in names]
    config = sorted(c for c in names if c not in first and "/" not in c)
    metrics = sorted(c for c in names if "/" in c)
    # pandas gives record and metric columns their dtype (numbers with a gap: NaN). It would
    # turn a config column of ints with a gap into floats (limit_train_batches 5 -> 5.0) and
    # mix types per column: each config value stays what the run recorded (None: absent).
    with gc_paused():
        typed = pd.DataFrame.from_records(rows, columns=[*first, *metrics])
        columns = {c: typed[c] for c in first}
        columns |= {c: pd.Series([row.get(c) for row in rows], dtype=object) for c in config}
        columns |= {c: typed[c] for c in metrics}
        return pd.DataFrame(columns)


def load_frame(
    paths: Sequence[str | Path] = (),
    wandb_project: str | None = None,
    warn: Callable[[str], None] = warn_stderr,
) -> pd.DataFrame:
    """`frame` of the runs under `paths` and, when named, those of a W&B project."""
    rows = load_rows(paths, warn) if paths else []
    if wandb_project:
        rows += wandb_rows(wandb_project)
    if not rows and not paths and not wandb_project:
        raise TableError("give at least one PATH or --wandb ENTITY/PROJECT")
    return frame(rows)


# ---------------------------------------------------------------------------------------------
# Choosing what to show


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Columns a table can show: metrics (`split/name`), timing and parameter counts."""
    return [c for c in df.columns if "/" in c or c.startswith("timing.") or c == "params"]


def sections(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The runs split by dataset (`data.name`), in the order the datasets first appear: numbers
    of different datasets (and task kinds) are never one table's cells."""
    if "data.name" not in df.columns:
        return [("", df)]
    names = df["data.name"].map(lambda v: MISSING if _hashable(v) is None else str(v))
    return [(name, df[names == name]) for name in dict.fromkeys(names)]


def metric_direction(df: pd.DataFrame, metric: str) -> int:
    """-1 lower is better, +1 higher, 0 no best marked: as the task kinds of the runs in `df`
    declare it (rnnbench.tasks), never guessed from the metric's name."""
    kinds = df["task"].dropna().unique().tolist() if "task" in df.columns else []
    return direction(metric, kinds)


def config_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in RECORD_COLUMNS and c not in metric_columns(df)]


def varying_keys(df: pd.DataFrame) -> list[str]:
    """Config keys whose value differs between the runs, seeds and paths left out."""
    keys = [c for c in config_columns(df) if is_identity_key(c)]
    counts = df[keys].nunique(dropna=False)
    return [k for k in keys if counts[k] > 1]


def leading_keys(keys: Sequence[str]) -> list[str]:
    """`keys` without those that follow from another: `_target_`s (they follow a config group
    choice, as model.cell does). Tables are per dataset (`sections`), so the other `data.*`
    keys that vary are real axes (two Reber sizes), not the dataset's own settings."""
    return [k for k in keys if not k.endswith(("._target_", "._partial_"))]


def pooled_keys(df: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """Config keys that differ between the completed or diverged runs of one cell of a table on
    `keys`: a cell averages repeats (seeds) of one configuration, never several."""
    shown = df[df["status"].isin(SHOWN)]
    if shown.empty:
        return []
    groups = shown.groupby(list(keys), dropna=False, sort=False) if keys else [(None, shown)]
    found: list[str] = []
    for _, cell in groups:
        if cell["config_id"].nunique() > 1:
            found += [k for k in leading_keys(varying_keys(cell)) if k not in keys]
    first = [k for k in AXIS_ORDER if k in found]
    return list(dict.fromkeys(first + found))


def default_axes(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Rows: data.name when it varies, then model.cell. Columns: the config keys that vary
    between the runs of one row, the axes users sweep first (AXIS_ORDER). A key that differs only
    between rows (the hidden size of a PTB row beside Reber rows) is no column."""
    shown = df[df["status"].isin(SHOWN)]
    varying = varying_keys(shown if len(shown) else df)
    rows = [k for k in ("data.name", "model.cell") if k in varying]
    if not rows:
        rows = ["model.cell"] if "model.cell" in df.columns else varying[:1]
    candidates = [k for k in leading_keys(varying) if k not in rows]
    if rows and candidates:
        within = shown.groupby(rows, dropna=False)[candidates].nunique(dropna=False).max()
        candidates = [k for k in candidates if within[k] > 1]
    first = [k for k in AXIS_ORDER if k in candidates]
    return rows, first + [k for k in candidates if k not in first]


def default_metric(df: pd.DataFrame) -> str:
    """The headline the runs name (the most common one, when they differ)."""
    named = df["headline"].dropna() if "headline" in df.columns else pd.Series([], dtype=object)
    if named.empty:
        raise TableError(
            "the runs name no headline metric: pass --metric (available: "
            f"{', '.join(metric_columns(df))})"
        )
    return str(named.value_counts().index[0])


def nearest(name: str, names: Sequence[str]) -> str:
    """ " (did you mean X?)" for the name nearest `name` (a typo's likely meaning), or ""."""
    near = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {near[0]}?)" if near else ""


def check_keys(df: pd.DataFrame, keys: Sequence[str], option: str) -> None:
    unknown = [k for k in keys if k not in df.columns]
    if unknown:
        available = [c for c in df.columns if c not in metric_columns(df)]
        raise TableError(
            f"unknown key {', '.join(map(repr, unknown))} in {option}"
            f"{nearest(unknown[0], available)}; available: {', '.join(available)}"
        )


def check_metric(df: pd.DataFrame, metric: str) -> None:
    if metric not in metric_columns(df):
        metrics = metric_columns(df)
        raise TableError(
            f"unknown metric {metric!r}{nearest(metric, metrics)}; available: {', '.join(metrics)}"
        )


# ---------------------------------------------------------------------------------------------
# Aggregation


def _order(values: Iterable[Any], key: str) -> list[Any]:
    """Axis order: numbers ascending, cells in cellspec's display order, anything else as
    first found."""
    values = list(dict.fromkeys(values))
    if key == "model.cell":
        return sorted(values, key=lambda v: CELLS.index(v) if v in CELLS else 99)
    numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numeric) == len(values):
        return sorted(values)
    return values


def _sort_by_keys(df: pd.DataFrame, keys: Sequence[str], reference: pd.DataFrame) -> pd.DataFrame:
    """`df` sorted by `keys`, each in the order `_order` gives its values in `reference`."""
    if df.empty or not keys:
        return df.reset_index(drop=True)
    ranks = []
    for k in keys:
        order = {_hashable(v): i for i, v in enumerate(_order(reference[k], k))}
        ranks.append(df[k].map(lambda v, order=order: order.get(_hashable(v), len(order))))
    position = pd.DataFrame(dict(enumerate(ranks)))
    order = position.sort_values(list(position.columns), kind="stable").index
    return df.loc[order].reset_index(drop=True)


def _hashable(value: Any) -> Any:
    # pandas hands NaN for missing values; NaN != NaN, so map it to one sentinel.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


# Lightning's budget settings at which a run trains and scores whole splits: a float 1.0 is
# "all batches" (an int 1 is one batch), max_steps -1 is no cap.
FULL_LIMITS = (
    "trainer.limit_train_batches",
    "trainer.limit_val_batches",
    "trainer.limit_test_batches",
)
REDUCED_MARK = "†"


@functools.lru_cache(maxsize=64)
def recipe_epochs(recipe: str) -> int | None:
    """trainer.max_epochs of a reproduction recipe (conf/experiment/RECIPE), None when it does
    not compose here (a recipe of another version)."""

    try:
        return int(compose([f"experiment={recipe}"]).trainer.max_epochs)
    except Exception:  # noqa: BLE001 - an unknown or broken recipe only means "not known"
        return None


def budget_cuts(run: Mapping[str, Any]) -> list[str]:
    """`key=value` for each setting that cut this run short of its configuration's full
    budget: a limit on train/val/test batches, a max_steps cap, fewer epochs than its recipe."""
    cuts = []
    for key in FULL_LIMITS:
        value = _hashable(run.get(key))
        if value is not None and not (isinstance(value, float) and value == 1.0):
            cuts.append(f"{key}={key_text(value)}")
    steps = _hashable(run.get("trainer.max_steps"))
    if steps is not None and steps != -1:
        cuts.append(f"trainer.max_steps={key_text(steps)}")
    recipe, epochs = _hashable(run.get("recipe")), _hashable(run.get("trainer.max_epochs"))
    full = recipe_epochs(str(recipe)) if recipe is not None else None
    if full is not None and epochs is not None and 0 <= epochs < full:
        cuts.append(f"trainer.max_epochs={epochs} (recipe: {full})")
    return cuts


BUDGET_KEYS = (*FULL_LIMITS, "trainer.max_steps", "recipe", "trainer.max_epochs")


def budget_cuts_of(frame: pd.DataFrame) -> list[list[str]]:
    """budget_cuts of each run of `frame`, worked out once per distinct set of budget settings
    (a search's thousands of runs share a few)."""
    present = [k for k in BUDGET_KEYS if k in frame.columns]
    known: dict[tuple, list[str]] = {}
    out = []
    for values in frame[present].itertuples(index=False, name=None):
        # With each value's type: a limit of 1 (one batch) is not 1.0 (every batch).
        key = tuple((type(v), _hashable(v)) for v in values)
        if key not in known:
            known[key] = budget_cuts(dict(zip(present, values, strict=True)))
        out.append(known[key])
    return out


@dataclass
class View:
    """What a table shows: the metric, the row and column keys, the runs it left out."""

    metric: str
    rows: list[str]
    cols: list[str]
    notes: list[str] = field(default_factory=list)


def aggregate(
    df: pd.DataFrame, rows: Sequence[str], cols: Sequence[str], metric: str
) -> pd.DataFrame:
    """One line per cell of the table (each combination of `rows` + `cols` values): the mean,
    sample standard deviation and count of `metric` over the completed runs in it, the number of
    diverged runs, the number of distinct configurations (1 when only seeds differ), and
    whether the cell holds the best mean of its column."""
    keys = list(dict.fromkeys([*rows, *cols]))
    shown = df[df["status"].isin(SHOWN)]
    values = shown[metric].where(shown["status"] == "completed")
    values = pd.to_numeric(values, errors="coerce")
    work = shown[keys].copy()
    work["_value"] = values
    work["_diverged"] = shown["status"] == "diverged"
    work["_config"] = shown["config_id"]
    work["_dup"] = shown.duplicated(["config_id", "seed"], keep=False)
    work["_cuts"] = budget_cuts_of(shown)
    # Grouped on the values' text, their first run giving them back: grouping on the values
    # themselves would make one index of 1.0 and 5, both floats (5 -> "5.0").
    work["_cell"] = [repr(tuple(map(_hashable, r))) for r in shown[keys].itertuples(index=False)]
    grouped = work.groupby("_cell", sort=False)
    agg = grouped.agg(
        **{k: (k, "first") for k in keys},
        mean=("_value", "mean"),
        std=("_value", "std"),
        n=("_value", "count"),
        diverged=("_diverged", "sum"),
        configs=("_config", "nunique"),
        repeated=("_dup", "any"),
        cuts=("_cuts", lambda runs: "; ".join(sorted({c for cuts in runs for c in cuts}))),
    ).reset_index(drop=True)
    for k in keys:  # "first" skips None: a key absent from every run of the cell is None
        agg[k] = agg[k].astype(object)
    agg = _sort_by_keys(agg, keys, shown)
    agg.insert(len(keys), "metric", metric)
    agg["diverged"] = agg["diverged"].astype(int)
    # Numbers of different datasets are not comparable: best is per column and dataset.
    within = [*cols, *(["data.name"] if "data.name" in rows else [])]
    agg["best"] = _best_flags(agg, within, metric_direction(df, metric))
    return agg.reset_index(drop=True)


def _best_flags(agg: pd.DataFrame, within: list[str], sign: int) -> pd.Series:
    """True where a cell's mean is the best among the cells sharing its `within` values (ties
    all marked; a cell alone in its group is not marked, there is nothing to beat)."""
    if sign == 0 or agg.empty:
        return pd.Series(False, index=agg.index)
    score = agg["mean"] * sign
    groups = [agg[c].map(_hashable).astype(str) for c in within] or [pd.Series(0, agg.index)]
    best = score.groupby(groups).transform("max")
    rivals = score.groupby(groups).transform("count")
    return (score == best) & agg["mean"].notna() & (rivals > 1)


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_number(x: float, digits: int = 4) -> str:
    """`digits` significant figures without exponent between 1e-3 and 1e6: 6.780, 114.5, 10234."""
    if x is None or not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude < -3 or magnitude >= 6:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{max(0, digits - 1 - magnitude)}f}"


def _fmt_like(x: float, like: str) -> str:
    """`x` with as many decimals as `like` (a formatted mean), so mean ± std line up."""
    if "e" in like:
        return f"{x:.{len(like.split('e')[0].split('.')[-1])}e}"
    decimals = len(like.split(".")[1]) if "." in like else 0
    return f"{x:.{decimals}f}"


def cell_text(cell: pd.Series) -> str:
    """'6.780', '6.780 ± 0.012 (n=3)', '6.780 (n=1, 2 diverged)', 'diverged' or '-'."""
    n, diverged = int(cell["n"]), int(cell["diverged"])
    if n == 0:
        return "diverged" if diverged else MISSING
    mean = fmt_number(float(cell["mean"]))
    text = mean
    if n > 1:
        text += f" ± {_fmt_like(float(cell['std']), mean)}"
    extra = [f"n={n}"] if n > 1 or diverged else []
    if diverged:
        extra.append(f"{diverged} diverged")
    return f"{text} ({', '.join(extra)})" if extra else text


def signed(x: float) -> str:
    return ("+" if x >= 0 else "") + fmt_number(x)


def key_text(value: Any) -> str:
    value = _hashable(value)
    return MISSING if value is None else str(value)


@dataclass
class Cell:
    text: str
    best: bool = False


@dataclass
class Table:
    """A rendered-format-neutral table: header, body cells, lines printed under it."""

    title: str
    header: list[str]
    body: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    index_columns: int = 1
    text_columns: int = 0  # trailing columns of text (left-aligned), after the numbers


def pivot_table(agg: pd.DataFrame, view: View) -> Table:
    """Rows = `view.rows` values, one column per combination of `view.cols` values."""
    col_keys: list[tuple] = [()]
    if view.cols:
        columns = _sort_by_keys(agg[view.cols].drop_duplicates(), view.cols, agg)
        col_keys = [tuple(_hashable(v) for v in c) for c in columns.itertuples(index=False)]
    if view.cols:
        header_cols = [
            ", ".join(f"{k}={key_text(v)}" for k, v in zip(view.cols, c, strict=True))
            for c in col_keys
        ]
    else:
        header_cols = [view.metric]
    cells: dict[tuple, dict[tuple, Cell]] = {}
    for _, line in agg.iterrows():
        r = tuple(_hashable(line[k]) for k in view.rows)
        c = tuple(_hashable(line[k]) for k in view.cols)
        text = cell_text(line) + (f" {REDUCED_MARK}" if line.get("cuts") else "")
        cells.setdefault(r, {})[c] = Cell(text, bool(line["best"]))
    body = [
        ([Cell(key_text(v)) for v in r] or [Cell("all runs")])
        + [row.get(c, Cell(MISSING)) for c in col_keys]
        for r, row in cells.items()
    ]
    header = (view.rows or ["runs"]) + header_cols
    return Table(
        view.metric, header, body, list(view.notes), index_columns=len(header) - len(header_cols)
    )


def table_notes(df: pd.DataFrame, agg: pd.DataFrame, view: View) -> list[str]:
    """The lines under a table: what the numbers are, which runs were left out and why."""
    sign = metric_direction(df, view.metric)
    better = {1: "higher is better", -1: "lower is better", 0: "no best marked"}[sign]
    notes = [
        f"{view.metric}: mean ± sample std over seeds, n = runs when more than one; {better}"
        + ("; best per column marked" if sign else "")
    ]
    left_out = df[~df["status"].isin(SHOWN)]
    if len(left_out):
        counts = left_out["status"].value_counts()
        listed = ", ".join(f"{n} {s}" for s, n in counts.items())
        where = ", ".join(map(str, left_out["run_dir"].head(3)))
        more = " ..." if len(left_out) > 3 else ""
        notes.append(f"left out: {listed} run(s) ({where}{more})")
    mixed = agg[agg["configs"] > 1]
    if len(mixed):
        keys = [*view.rows, *view.cols]
        shown = df[df["status"].isin(SHOWN)]
        others = [k for k in leading_keys(varying_keys(shown)) if k not in keys]
        differing = (
            [
                k
                for k in others
                if (shown.groupby(keys, dropna=False)[k].nunique(dropna=False) > 1).any()
            ]
            if keys
            else others
        )
        notes.append(
            f"{len(mixed)} cell(s) mix configurations that differ in "
            f"{', '.join(differing) or 'keys not shown'}: add them to --rows/--cols"
        )
    if agg["repeated"].any():
        notes.append("some cells count repeated runs of one config and seed (n counts runs)")
    cuts = sorted({c for text in agg["cuts"] for c in text.split("; ") if c})
    if cuts:
        notes.append(
            f"{REDUCED_MARK} reduced budget, not a full run of its configuration: "
            + ", ".join(cuts)
        )
    return notes


# ---------------------------------------------------------------------------------------------
# Published numbers


def reference_names() -> list[str]:
    """The reference sets shipped with rnnbench (`rnnbench/references/<name>.csv`)."""
    folder = resources.files("rnnbench") / REFERENCE_DIR
    return sorted(p.name[: -len(".csv")] for p in folder.iterdir() if p.name.endswith(".csv"))


def literal(text: str) -> Any:
    """A reference CSV cell as the config value it stands for: 2, 0.5, true, or the text."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def load_reference(name: str) -> pd.DataFrame:
    """A shipped reference set by name, or any CSV file in the same layout by path.

    Layout: `label`, dotted config keys to match (`data.name`, `model.cell`, optional
    `model.num_layers`, ...; an empty cell matches anything), `metric`, `value`, and the
    citation: `paper`, `table`, `row`, plus a free `note`.
    """
    path = Path(name)
    if not path.is_file():
        shipped = resources.files("rnnbench") / REFERENCE_DIR / f"{name}.csv"
        if not shipped.is_file():
            raise TableError(
                f"unknown reference {name!r}; available: {', '.join(reference_names())} "
                "(or a path to a CSV file)"
            )
        path = Path(str(shipped))
    ref = pd.read_csv(path, dtype=str, keep_default_na=False, comment="#")
    missing = {"label", "metric", "value", "paper", "table", "row"} - set(ref.columns)
    if missing:
        raise TableError(f"reference {name!r} lacks column(s) {', '.join(sorted(missing))}")
    ref["value"] = ref["value"].astype(float)
    ref["reference"] = path.stem
    return ref


def match_keys(ref: pd.DataFrame) -> list[str]:
    """The dotted config keys a reference file matches on."""
    return [c for c in ref.columns if "." in c]


def compare(df: pd.DataFrame, agg: pd.DataFrame, view: View, ref: pd.DataFrame) -> pd.DataFrame:
    """Pair each table cell with every published row that matches it (see `load_reference`):
    same metric, and each key the reference row sets equal to the value of every run in the
    cell. Adds `published`, `delta` (ours - published), `delta_pct`, `label` and `source`."""
    keys = [*view.rows, *view.cols]
    shown = df[df["status"].isin(SHOWN)]
    ref = ref[ref["metric"] == view.metric]
    out = []
    groups = shown.groupby(keys, sort=False, dropna=False) if keys else [((), shown)]
    runs_by_cell = {
        tuple(_hashable(v) for v in (k if isinstance(k, tuple) else (k,))): g for k, g in groups
    }
    for position, cell in agg.iterrows():
        runs = runs_by_cell[tuple(_hashable(cell[k]) for k in keys)]
        for _, pub in ref.iterrows():
            wanted = {k: literal(pub[k]) for k in match_keys(ref) if pub[k] != ""}
            if all(k in runs and (runs[k].map(_hashable) == v).all() for k, v in wanted.items()):
                delta = cell["mean"] - pub["value"]
                out.append(
                    {
                        **cell.to_dict(),
                        "cell": position,
                        "published": pub["value"],
                        "delta": delta,
                        "delta_pct": 100 * delta / pub["value"],
                        "label": pub["label"],
                        "source": f"{pub['paper']}, {pub['table']}, {pub['row']}",
                        "reference": pub["reference"],
                    }
                )
    columns = [*agg.columns, "cell", "published", "delta", "delta_pct", "label", "source"]
    columns.append("reference")
    pairs = pd.DataFrame(out, columns=columns)
    for k in keys:  # as the runs recorded them: a column of 1.0 and 5 is not all floats
        pairs[k] = pd.Series([line[k] for line in out], index=pairs.index, dtype=object)
    return pairs


def comparison_table(pairs: pd.DataFrame, view: View) -> Table:
    """One line per (cell, published row) pair from `compare`."""
    keys = [*view.rows, *view.cols]
    header = [*keys, "ours", "published", "Δ", "Δ %", "budget", "published setting", "source"]
    body = []
    for _, p in pairs.iterrows():
        have = int(p["n"]) > 0
        body.append(
            [Cell(key_text(p[k])) for k in keys]
            + [
                Cell(cell_text(p)),
                Cell(fmt_number(p["published"])),
                Cell(signed(p["delta"]) if have else MISSING),
                Cell(f"{p['delta_pct']:+.1f}%" if have else MISSING),
                Cell(f"reduced: {p['cuts']}" if p["cuts"] else "full"),
                Cell(p["label"]),
                Cell(p["source"]),
            ]
        )
    notes = [f"Δ = ours - published ({view.metric}); {len(pairs)} matching published row(s)"]
    if pairs.empty:
        notes = [f"no published {view.metric} matches these runs (see rnnbench/references/)"]
    title = f"{view.metric} against published numbers"
    if (pairs["cuts"] != "").any():
        notes.append(
            "a reduced budget (limited batches, capped steps, fewer epochs than the recipe) is "
            "no reproduction: its Δ says how far that short run got, not whether the paper holds"
        )
    return Table(title, header, body, notes, index_columns=len(keys), text_columns=3)


# ---------------------------------------------------------------------------------------------
# Rendering
#
# Hand-written, not pandas', each for what the library lacks (tried on pandas 3.1):
# DataFrame.to_markdown (tabulate) leaves `|` and `**` in a cell as they are, which breaks or
# bolds the table; Styler.to_latex's escape="latex" passes Δ through, which LaTeX without extra
# packages refuses; Styler.to_html gives each render a fresh id (two renders of one table
# differ), so regenerated results/ files would change on every run. The report's page around
# these tables is a Jinja2 template (rnnbench/results/templates/).


# Markdown punctuation a cell or note could use to become markup: a cell end, an HTML tag, an
# entity, a link, code or emphasis. Backslash-escaped, they show as themselves.
def render_md(table: Table) -> str:
    """GitHub markdown; best cells in bold, notes as plain lines below."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    numbers = len(table.header) - table.index_columns - table.text_columns
    align = ["---"] * table.index_columns + ["---:"] * numbers + ["---"] * table.text_columns
    out = [line(map(md_text, table.header)), line(align)]
    for row in table.body:
        out.append(line(f"**{md_text(c.text)}**" if c.best else md_text(c.text) for c in row))
    return "\n".join(out + [""] + [md_text(n) for n in table.notes])


LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "\n": " ",
    "\r": " ",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
}


def _latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(table: Table) -> str:
    """A booktabs tabular; best cells in \\textbf, notes as % comments below."""
    numbers = len(table.header) - table.index_columns - table.text_columns
    spec = "l" * table.index_columns + "r" * numbers + "l" * table.text_columns
    out = [
        "% needs \\usepackage{booktabs}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(map(_latex_escape, table.header)) + r" \\",
        "\\midrule",
    ]
    for row in table.body:
        texts = [
            f"\\textbf{{{_latex_escape(c.text)}}}" if c.best else _latex_escape(c.text) for c in row
        ]
        out.append(" & ".join(texts) + r" \\")
    out += ["\\bottomrule", "\\end{tabular}"]
    out += [f"% {one_line(note)}" for note in table.notes]
    return "\n".join(out)


def render_html(table: Table) -> str:
    """A <table class="rnnbench"> (best cells <strong>, class "best"), notes as <p>."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table.header)
    rows = []
    for row in table.body:
        tds = []
        for i, c in enumerate(row):
            tag = "th" if i < table.index_columns else "td"
            text = f"<strong>{esc(c.text)}</strong>" if c.best else esc(c.text)
            classes = ["best"] * c.best + ["text"] * (i >= len(row) - table.text_columns)
            cls = f' class="{" ".join(classes)}"' if classes else ""
            tds.append(f"<{tag}{cls}>{text}</{tag}>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in table.notes)
    return (
        f'<table class="rnnbench">\n<caption>{esc(table.title)}</caption>\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody>\n</table>\n"
        + notes
    )


RENDERERS = {"md": render_md, "latex": render_latex, "html": render_html}
# What each format tolerates as a first line that the reader skips: the command that made it.
COMMENT: dict[str, Callable[[str], str]] = {
    "md": lambda text: html_comment(f"command: {text}"),
    "html": lambda text: html_comment(f"command: {text}"),
    "latex": lambda text: f"% command: {one_line(text)}",
}


def to_csv(data: pd.DataFrame) -> str:
    """Machine-readable: one line per cell (or per run), numbers at full precision, nothing
    else, so a plain `pandas.read_csv` reads it; the notes go beside it (`notes_file`)."""
    return data.to_csv(index=False, lineterminator="\n")


def notes_file(output: str | Path) -> Path:
    """Where `-o FILE --format csv` puts the command and the notes: FILE.notes.txt."""
    return Path(f"{output}.notes.txt")


# ---------------------------------------------------------------------------------------------
# Building the views the CLI and the report show


def check_shown(df: pd.DataFrame) -> None:
    """Refuse a table of nothing: every run failed or was interrupted."""
    if not df["status"].isin(SHOWN).any():
        counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
        raise TableError(f"no completed or diverged run to compare ({counts}); --long lists them")


def resolve_view(
    df: pd.DataFrame,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    metric: str | None = None,
) -> View:
    """Fill in defaults (see `default_axes`, `default_metric`) and check every name exists."""
    metric = metric or default_metric(df)
    check_metric(df, metric)
    auto_rows, auto_cols = default_axes(df)
    rows = list(rows) if rows is not None else auto_rows
    cols = list(cols) if cols is not None else [c for c in auto_cols if c not in rows]
    check_keys(df, rows, "--rows")
    check_keys(df, cols, "--cols")
    notes = []
    pooled = pooled_keys(df, [*rows, *cols])
    if pooled:
        rows = [*rows, *pooled]
        notes.append(
            f"rows also split by {', '.join(pooled)}: runs of one cell differed there, and a "
            "cell averages only seeds of one configuration"
        )
    return View(metric, rows, cols, notes)


@dataclass
class Result:
    """Everything one invocation shows: the tables and the DataFrames behind them."""

    view: View
    agg: pd.DataFrame
    tables: list[Table]
    data: pd.DataFrame  # what `--format csv` writes


def build(
    df: pd.DataFrame, view: View, references: Sequence[str] = (), long: bool = False
) -> Result:
    """The comparison pivot (plus a published-numbers table per reference set), or with
    `long` the runs one per line."""
    if long:
        return long_view(df, view)
    agg = aggregate(df, view.rows, view.cols, view.metric)
    view = replace(view, notes=[*view.notes, *table_notes(df, agg, view)])
    tables = [pivot_table(agg, view)]
    data = agg.drop(columns=["repeated"])
    if references:
        # Sets differ in their match columns: a key one set lacks matches anything.
        ref = pd.concat([load_reference(name) for name in references], ignore_index=True)
        ref = ref.fillna("")
        pairs = compare(df, agg, view, ref)
        if pairs.empty:  # an empty table says less than one line under the pivot
            tables[0].notes.append(comparison_table(pairs, view).notes[0])
        else:
            tables.append(comparison_table(pairs, view))
        # Joined on the cell's position, not on its keys: a key holding text in one run and a
        # number in another would not merge.
        extra = pairs[["cell", "published", "delta", "delta_pct", "label", "source"]]
        data = data.merge(extra, how="left", left_index=True, right_on="cell")
        data = data.drop(columns="cell").reset_index(drop=True)
    return Result(view, agg, tables, data)


def run_value(column: str, value: Any) -> str:
    """One value of a run's line: a config value as recorded (1.0 stays 1.0), a metric or
    time to 4 figures, MISSING for none (a failed run has no metric)."""
    if _hashable(value) is None:
        return MISSING
    if column in metric_columns(pd.DataFrame(columns=[column])) and isinstance(value, float):
        return fmt_number(value)
    return key_text(value)


def long_view(df: pd.DataFrame, view: View) -> Result:
    """Every run, failed ones too, one per line: keys, seed, status, metric, time, folder."""
    keys = list(dict.fromkeys([*view.rows, *view.cols]))
    columns = [*keys, "seed", "status", view.metric, "timing.train_s", "run_dir"]
    columns = list(dict.fromkeys(c for c in columns if c in df.columns))
    runs = _sort_by_keys(df[columns], keys, df)
    body = [
        [Cell(run_value(name, v)) for name, v in zip(columns, line, strict=True)]
        for line in runs.itertuples(index=False)
    ]
    notes = [f"{len(runs)} run(s)"]
    table = Table(f"{view.metric} per run", columns, body, notes, len(keys) + 1, text_columns=1)
    return Result(view, runs, [table], runs)


def render(result: Result, fmt: str, command: str | None = None) -> str:
    """The text of `result` in `fmt`; with `command`, a first line saying what made it."""
    if fmt not in FORMATS:
        raise TableError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return render_sections([("", result)], fmt, command)


# A dataset's heading above its tables, when a table command shows several datasets.
HEADING: dict[str, Callable[[str], str]] = {
    "md": lambda text: f"### {md_text(text)}\n",
    "html": lambda text: f"<h3>{html.escape(text)}</h3>",
    "latex": lambda text: f"\\paragraph{{{_latex_escape(text)}}}",
}


def render_sections(
    sections: Sequence[tuple[str, Result]], fmt: str, command: str | None = None
) -> str:
    """The text of each (dataset, result), under a heading naming the dataset when there are
    several; CSV is one table of every section's lines (with `data.name`) and no comments."""
    if fmt not in FORMATS:
        raise TableError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "csv":
        frames = []
        for name, result in sections:
            data = result.data
            if name and "data.name" not in data.columns:
                data = data.assign(**{"data.name": name})[["data.name", *data.columns]]
            frames.append(data)
        return to_csv(pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0])
    parts = []
    for name, result in sections:
        body = "\n\n".join(RENDERERS[fmt](t) for t in result.tables)
        if len(sections) > 1:
            headline = result.view.metric
            body = HEADING[fmt](f"{name} — {headline}") + "\n" + body
        parts.append(body)
    text = "\n\n".join(parts)
    if command:
        text = COMMENT[fmt](command) + "\n" + text
    return text if text.endswith("\n") else text + "\n"


def build_sections(
    df: pd.DataFrame,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    metric: str | None = None,
    references: Sequence[str] = (),
    long: bool = False,
) -> tuple[list[tuple[str, Result]], list[str]]:
    """One (dataset, Result) per dataset of `df` (`sections`), each with its own default axes
    and headline metric, unless data.name is among the given --rows/--cols (then one table).
    Returns them with a note per dataset left out (no such metric, nothing completed)."""
    together = "data.name" in [*(rows or []), *(cols or [])]
    parts = [("", df)] if together else sections(df)
    built, skipped = [], []
    for name, part in parts:
        if not long and not part["status"].isin(SHOWN).any():
            skipped.append(f"{name}: no completed or diverged run")
            continue
        if metric and len(parts) > 1 and (metric not in part.columns or part[metric].isna().all()):
            skipped.append(f"{name}: no {metric}")
            continue
        view = resolve_view(part, rows, cols, metric)
        built.append((name, build(part, view, references, long)))
    if not built:
        raise TableError("nothing to show: " + "; ".join(skipped))
    return built, skipped


# ---------------------------------------------------------------------------------------------
# Command line


def split_keys(text: str | None) -> list[str] | None:
    """ "a,b" -> ["a", "b"]; "" -> [] (no keys); None -> None (the default)."""
    return None if text is None else [k.strip() for k in text.split(",") if k.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rnnbench-table",
        description=(
            "Find every result.json under PATH (run folders, sweep folders, runs/) and print "
            "a comparison table: one cell per combination of --rows and --cols values, runs "
            "that differ only in their seed collapsed to mean ± std (n). Diverged runs show "
            "as 'diverged'; failed and interrupted ones are left out and counted under the "
            "table. The best cell per column is marked."
        ),
        epilog=(
            "Keys are dotted config keys as in the Hydra config (model.cell, model.num_layers, "
            "trainer.gradient_clip_val, data.name) or record fields (status, seed). Metrics are "
            "the record's (test/ppl, val/loss, test/bpc, ...), timing.train_s, "
            "timing.items_per_s or params. With -o, the file's first line is a comment giving "
            "the command (md/html: <!-- -->, latex: %); a CSV file stays plain CSV, with the "
            "command and the notes in FILE.notes.txt beside it. "
            f"Shipped references: {', '.join(reference_names())}."
        ),
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="result.json files or folders")
    p.add_argument(
        "--rows",
        help="comma-separated keys for the rows (default: data.name when it varies, model.cell)",
    )
    p.add_argument(
        "--cols",
        help="comma-separated keys for the columns (default: the other "
        "config keys that vary; '' for one column)",
    )
    p.add_argument("--metric", help="metric to show (default: the runs' headline, e.g. test/ppl)")
    p.add_argument("--format", default="md", choices=FORMATS, help="output format (default md)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument(
        "--reference",
        metavar="NAME[,NAME]",
        help="add a table of published numbers matched to these cells, with the delta: a "
        f"shipped set ({', '.join(reference_names())}) or a CSV path in the same layout",
    )
    p.add_argument("--long", action="store_true", help="list the runs, one per line")
    p.add_argument(
        "--studies",
        action="store_true",
        help="PATHs are searches (a folder holding optuna.db or journal.log, a folder of such "
        "folders such as runs/, a study file, or a storage URL): "
        "one row per study with its best validation value and config, the confirmed test mean "
        "± std, trials run and pruned, training hours and fANOVA importance; then the expected "
        "best validation value against the number of trials (Dodge et al. 2019)",
    )
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="with --studies: also draw the expected-best curves with their ±1 std bands to "
        "FILE (.png, .pdf or .svg)",
    )
    p.add_argument(
        "--wandb",
        metavar="ENTITY/PROJECT",
        help="also read the runs of this W&B project through the public API (needs network "
        "and a W&B login)",
    )
    return p


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `rnnbench-table` with `argv`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        problem = args.output is not None and check_writable(args.output)
        if args.plot is not None and not problem:
            problem = check_writable(args.plot, "--plot")
            if not problem and Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
                problem = (
                    f"--plot {args.plot} is not allowed: give a file ending in "
                    f"{', '.join(PLOT_SUFFIXES)}"
                )
        if problem:  # before reading thousands of records
            raise TableError(problem)
        if args.studies or args.plot:
            return studies_main(args, argv)
        df = load_frame(args.paths, args.wandb)
        if not args.long:
            check_shown(df)
        built, skipped = build_sections(
            df,
            split_keys(args.rows),
            split_keys(args.cols),
            args.metric,
            split_keys(args.reference) or [],
            args.long,
        )
        command = shlex.join(["rnnbench-table", *argv])
        csv = args.format == "csv"
        text = render_sections(built, args.format, command if args.output and not csv else None)
        notes = [f"left out {s}" for s in skipped]
        notes += [
            f"{name}: {n}" if name else n for name, r in built for t in r.tables for n in t.notes
        ]
        if args.output is not None:
            write_text(args.output, text)
            if csv:  # the CSV stays plain: what made it and what it means go beside it
                lines = [f"command: {command}", *notes]
                write_text(notes_file(args.output), "".join(one_line(n) + "\n" for n in lines))
        else:  # md, latex and html print their tables' notes below them
            for note in notes if csv else [f"left out {s}" for s in skipped]:
                print(f"rnnbench-table: note: {one_line(note)}", file=sys.stderr)
    except UserError as e:
        print(f"rnnbench-table: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    if args.output is not None:
        extra = f" and {notes_file(args.output)}" if csv else ""
        print(f"wrote {one_line(args.output)}{extra}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def studies_tables(views: Sequence[StudyView]) -> list[Table]:
    """The studies' summary, one row per study, and their expected-best curves."""
    rows = summary_rows(views)
    header = list(rows[0])
    summary = Table(
        "studies",
        header,
        [[Cell(row[k]) for k in header] for row in rows],
        [
            "best: the best completed trial's validation value; confirmed: its configuration "
            "run again with other seeds, test mean ± std (never the trial's own test score)",
            "train hours: the trials' and confirming runs' training time (reused runs count 0); "
            "train steps: their optimizer steps, a cost that does not depend on the machine's load",
            "importance: each searched key's share of the variance of the completed trials' "
            "values (Optuna's fANOVA); it cannot rank more keys than there are such trials",
        ],
        index_columns=2,
        text_columns=2,
    )
    curves = {v.name: expected_max_curve(v) for v in views}
    longest = max((len(c) for c in curves.values()), default=0)
    body = [
        [Cell(str(n))]
        + [
            Cell(f"{fmt_number(c[n - 1][1])} ± {fmt_number(c[n - 1][2], 2)}")
            if n <= len(c)
            else Cell(MISSING)
            for c in curves.values()
        ]
        for n in range(1, longest + 1)
    ]
    curve = Table(
        "expected best",
        ["trials", *curves],
        body,
        [
            "expected best validation value of n trials drawn from each study's completed "
            "ones, ± its standard deviation (Dodge et al. 2019)"
        ],
    )
    return [summary, curve]


def studies_main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """`rnnbench-table --studies PATH ...`."""
    if not args.paths:
        raise TableError("--studies needs a search's folder or a storage URL")
    views = load_studies(args.paths)
    tables = studies_tables(views)
    command = shlex.join(["rnnbench-table", *argv])
    if args.format == "csv":
        text = to_csv(pd.DataFrame(summary_data(views)))
    else:
        renderer = {"md": render_md, "latex": render_latex, "html": render_html}[args.format]
        text = "\n\n".join(renderer(t) for t in tables) + "\n"
        if args.output:
            text = COMMENT[args.format](command) + "\n" + text
    if args.plot:
        print(f"wrote {plot_expected_max(views, args.plot)}", file=sys.stderr)
    if args.output is not None:
        write_text(args.output, text)
        print(f"wrote {one_line(args.output)}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cli() -> None:
    """Console entry point (`rnnbench-table`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
