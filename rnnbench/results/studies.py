"""What a set of searches shows (`rnnbench-table --studies PATH`): per study (one per cell of
an equal-budget search) the best validation value and its configuration, the confirmed test
mean ± std, the trials run and pruned, the training hours spent, the importance of each
searched key (Optuna's fANOVA), and the expected best validation value against the number of
trials with its variance band (Dodge et al. 2019, "Show your work").

PATH is a search's folder (holding `optuna.db` or `journal.log`, as the `optuna` sweeper
leaves it) or a storage URL. Reads the studies and the trials' records; never writes either.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from rnnbench.cellspec import CELLS
from rnnbench.errors import UserError
from rnnbench.results.record import CHECKPOINT_DIR, RECORD_FILE, read_record, warn_skipped

STORAGE_FILES = {"optuna.db": "sqlite:///", "journal.log": "journal:"}
# Folders a run writes that hold no search, passed over when looking for searches beneath a folder.
SKIPPED_FOLDERS = {CHECKPOINT_DIR, "wandb", "mlruns", "tensorboard", "__pycache__"}


class StudyError(UserError):
    """A path that holds no study, or a storage that does not open: one line, exit 2."""


@dataclass
class StudyView:
    """One study as the views show it."""

    name: str
    cell: str
    metric: str
    maximize: bool
    states: Counter  # trials by state: complete, pruned, fail, running
    values: list[float]  # the completed trials' objective values, in trial order
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    headline: str | None  # the test metric the confirming runs give
    confirmed: list[float]  # the confirming runs' test headline values
    confirm_seeds: list[int]
    train_hours: float  # the trials' and confirming runs' training time
    train_steps: int = 0  # their optimizer steps: the cost, free of how loaded the machine was
    importance: dict[str, float] = field(default_factory=dict)
    recipe: str | None = None  # the conf/experiment recipe the study searched around, if any
    confirm_dirs: list[Path] = field(default_factory=list)  # the confirming runs' folders
    folder: Path | None = None  # the search's folder, when it was given as one


def storage_url(path: str | Path) -> tuple[str, Path | None]:
    """The storage URL of a search folder (and the folder), of a study file (`optuna.db`, a
    `.db` or `.sqlite` file, a journal `.log`, as optuna-dashboard takes them), or `path`
    itself as a URL. A file that is missing or empty is a StudyError: reading never creates or
    fills one."""
    text = str(path)
    folder = Path(path)
    if folder.is_dir():
        for name, scheme in STORAGE_FILES.items():
            if (folder / name).is_file():
                return scheme + str(written(folder / name).resolve()), folder
        raise StudyError(
            f"{path} holds no study: a search's folder has {' or '.join(STORAGE_FILES)}"
        )
    if folder.is_file() and folder.suffix in (".db", ".sqlite", ".sqlite3", ".log"):
        scheme = "journal:" if folder.suffix == ".log" else "sqlite:///"
        return scheme + str(written(folder).resolve()), folder.parent
    for scheme in ("journal:", "sqlite:///"):
        if text.startswith(scheme):
            written(Path(text.removeprefix(scheme)))
            return text, None
    if "://" in text:
        return text, None
    raise StudyError(f"{path} is neither a search's folder, a study file nor a storage URL")


def storage_urls(path: str | Path) -> list[tuple[str, Path | None]]:
    """storage_url of `path`; for a folder that is no search's but holds searches (a results
    root: `runs`, `runs/searches`), that of every search beneath it that has written its study."""
    folder = Path(path)
    if not folder.is_dir() or any((folder / name).is_file() for name in STORAGE_FILES):
        return [storage_url(path)]
    found = []
    for root, dirs, files in os.walk(folder):
        if any(name in files for name in STORAGE_FILES):
            dirs.clear()  # a search's own folders are its trials', not other searches
            if any((Path(root) / name).stat().st_size for name in STORAGE_FILES if name in files):
                found.append(storage_url(root))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_FOLDERS)
    if not found:
        raise StudyError(
            f"{path} holds no study: a search's folder has {' or '.join(STORAGE_FILES)}, and "
            f"none with a study lies beneath it"
        )
    return found


def written(file: Path) -> Path:
    """`file`, once it is known to hold something (a StudyError otherwise)."""
    if not file.is_file():
        raise StudyError(f"{file} holds no study: there is no such file")
    if file.stat().st_size == 0:
        raise StudyError(f"{file} holds no study: it is empty (a search that wrote nothing yet)")
    return file


def open_study_storage(url: str) -> Any:
    """An Optuna storage from `url`: `journal:PATH` a journal file, else an RDB URL."""
    if url.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(url.removeprefix("journal:"))
        return optuna.storages.JournalStorage(backend)
    return optuna.storages.RDBStorage(url)


def best_trial(study: Any) -> Any | None:
    """The study's best completed trial, None while it has none."""
    try:
        return study.best_trial
    except ValueError:
        return None


def locate(run_dir: str | None, folder: Path | None) -> Path | None:
    """A trial's run folder: where its record says, or, for a search folder copied elsewhere
    (an archive), the same study/trial folder inside it."""
    if not run_dir:
        return None
    where = Path(run_dir)
    if (where / RECORD_FILE).is_file() or folder is None:
        return where
    for tail in (where.parts[-2:], where.parts[-1:]):
        if (folder.joinpath(*tail) / RECORD_FILE).is_file():
            return folder.joinpath(*tail)
    return where


def read(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None or not (run_dir / RECORD_FILE).is_file():
        return None
    try:
        return dict(read_record(run_dir / RECORD_FILE))
    except (OSError, ValueError) as e:
        warn_skipped(run_dir / RECORD_FILE, e)
        return None


def training_cost(record: dict[str, Any] | None) -> tuple[float, int]:
    """What a run's training cost, in seconds and optimizer steps: nothing for a copy of another
    run's record."""
    if not record or record.get("reused_from"):
        return 0.0, 0
    timing = record.get("timing") or {}
    return float(timing.get("train_s") or 0.0), int(timing.get("steps") or 0)


def importance(study: Any) -> dict[str, float]:
    """Each searched key's share of the objective's variance (fANOVA over the completed
    trials); empty when fewer than two trials completed or nothing varied."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(done) < 2:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError):  # e.g. a single distinct value of every key
        return {}


def view_study(study: Any, folder: Path | None) -> StudyView:
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials if not t.user_attrs.get("requeued"))
    values = [t.value for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    seen: set[Path] = set()
    trained: list[dict[str, Any]] = []  # each run the study trained once, for its cost
    missing: list[Path] = []  # finished runs whose record is gone: their cost is unknown
    cell, recipe = None, None
    for t in trials:
        run_dir = locate(t.user_attrs.get("run_dir"), folder)
        record = read(run_dir)
        if run_dir and record is None and t.state.name in ("COMPLETE", "PRUNED"):
            missing.append(run_dir / RECORD_FILE)
        if record and run_dir not in seen:
            seen.add(run_dir)
            trained.append(record)
            config = record.get("config") or {}
            cell = cell or config.get("model", {}).get("cell")
            recipe = recipe or config.get("recipe")
    best = best_trial(study)
    confirmed_attr = study.user_attrs.get("confirmed") or {}
    confirmed, headline, confirm_dirs = [], None, []
    if best is not None and confirmed_attr.get("trial") == best.number:
        for run_dir in confirmed_attr.get("run_dirs", []):
            where = locate(run_dir, folder)
            record = read(where)
            if record is None:
                missing.append(where / RECORD_FILE)
            if record is None or where in seen:
                continue
            seen.add(where)
            confirm_dirs.append(where)
            trained.append(record)
            headline = headline or record.get("headline")
            value = (record.get("metrics") or {}).get(headline)
            if record.get("status") == "completed" and isinstance(value, int | float):
                confirmed.append(float(value))
    # Runs that confirmed an earlier best while the last trials ran: spent, so counted.
    for run_dir in study.user_attrs.get("confirmed_early_runs") or []:
        where = locate(run_dir, folder)
        if where not in seen and (record := read(where)) is not None:
            seen.add(where)
            trained.append(record)
    if missing:
        print(
            f"rnnbench: warning: study {study.study_name}: {len(missing)} finished run(s) have "
            f"no record (first: {missing[0]}): their training time and steps are not counted",
            file=sys.stderr,
        )
    costs = [training_cost(record) for record in trained]
    return StudyView(
        name=study.study_name,
        cell=str(cell or "?"),
        metric=str(study.user_attrs.get("metric", "value")),
        maximize=study.direction.name == "MAXIMIZE",
        states=states,
        values=values,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_trial=best.number if best else None,
        headline=headline,
        confirmed=confirmed,
        confirm_seeds=list(confirmed_attr.get("seeds", [])) if confirmed else [],
        train_hours=sum(seconds for seconds, _ in costs) / 3600,
        train_steps=sum(steps for _, steps in costs),
        importance=importance(study),
        recipe=recipe,
        confirm_dirs=confirm_dirs,
        folder=folder,
    )


def load_studies(paths: Iterable[str | Path]) -> list[StudyView]:
    """Every study in the storages of `paths`, in the cells' display order."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    views, opened = [], set()
    for url, folder in (found for path in paths for found in storage_urls(path)):
        if url in opened:  # one storage given twice: its studies once
            continue
        opened.add(url)
        try:
            storage = open_study_storage(url)
        except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, a locked file
            said = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StudyError(f"{url} does not open as an Optuna storage: {said}") from None
        for name in optuna.study.get_all_study_names(storage):
            views.append(view_study(optuna.load_study(study_name=name, storage=storage), folder))
    if not views:
        raise StudyError(f"no study in {', '.join(map(str, paths))}")
    order = {c: i for i, c in enumerate(CELLS)}
    return sorted(views, key=lambda v: (order.get(v.cell, len(order)), v.name))


def expected_max(values: Sequence[float], n: int, maximize: bool = True) -> tuple[float, float]:
    """The expected best of `n` trials drawn with replacement from `values` (the observed
    trials), and its variance: Dodge et al. 2019, eq. 1, with the empirical distribution.
    With v(1) <= ... <= v(N), P(max of n = v(i)) = (i/N)^n - ((i-1)/N)^n."""
    if not values or n < 1:
        raise ValueError("expected_max needs at least one value and n >= 1")
    sign = 1.0 if maximize else -1.0
    ordered = sorted(sign * v for v in values)
    total = len(ordered)
    mean = second = 0.0
    for i, v in enumerate(ordered, start=1):
        p = (i / total) ** n - ((i - 1) / total) ** n
        mean += p * v
        second += p * v * v
    return sign * mean, max(second - mean * mean, 0.0)


def expected_max_curve(view: StudyView) -> list[tuple[int, float, float]]:
    """(n, expected best, standard deviation) for n = 1 .. the completed trials."""
    return [
        (n, *_mean_std(expected_max(view.values, n, view.maximize)))
        for n in range(1, len(view.values) + 1)
    ]


def _mean_std(pair: tuple[float, float]) -> tuple[float, float]:
    return pair[0], math.sqrt(pair[1])


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """The mean of `values` and their sample standard deviation (0 for one value): how a
    confirmation's seeds are summed up, wherever it is shown."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread


def confirmed_stats(view: StudyView) -> tuple[float, float] | None:
    """The confirming runs' test mean and standard deviation (0 for one run); None if none."""
    return mean_spread(view.confirmed) if view.confirmed else None


def confirmed_text(view: StudyView) -> str:
    stats = confirmed_stats(view)
    if stats is None:
        return "not confirmed"
    return f"{fmt(stats[0])} ± {stats[1]:.2g} ({len(view.confirmed)} seeds)"


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def importance_text(view: StudyView) -> str:
    """The importances, largest first, with the number of completed trials they rest on: no
    more trials than keys searched cannot tell the keys' effects apart, and it says so."""
    if not view.importance:
        return "-"
    ranked = sorted(view.importance.items(), key=lambda kv: -kv[1])
    n = len(view.values)
    few = ": too few to rank them" if n <= len(ranked) else ""
    return ", ".join(f"{k} {v:.2f}" for k, v in ranked) + f" ({n} completed trials{few})"


def summary_headers(views: Sequence[StudyView]) -> tuple[str, str]:
    """The best and confirmed columns' names: they name the metrics when every study has the
    same (a study not yet confirmed has no test metric)."""
    metrics = {v.metric for v in views}
    heads = {v.headline for v in views if v.headline}
    best = f"best {metrics.pop()}" if len(metrics) == 1 else "best validation value"
    confirmed = f"confirmed {heads.pop()}" if len(heads) == 1 else "confirmed test value"
    return best, confirmed


def summary_data(views: Sequence[StudyView]) -> list[dict[str, Any]]:
    """One row per study with its values as numbers (what `--format csv` writes): counts as
    ints, values and hours as floats, None where a study has none yet."""
    best, confirmed = summary_headers(views)
    rows = []
    for v in views:
        stats = confirmed_stats(v)
        rows.append(
            {
                "study": v.name,
                "cell": v.cell,
                "trials": sum(v.states.values()),
                "pruned": v.states.get("pruned", 0),
                "failed": v.states.get("fail", 0),
                "running": v.states.get("running", 0),  # a live study's, or a dead worker's
                best: v.best_value,
                confirmed: stats and stats[0],
                "confirmed std": stats and stats[1],
                "confirmed seeds": len(v.confirmed),
                "train hours": v.train_hours,
                "train steps": v.train_steps,
                "best config": params_text(v.best_params),
                "importance (fANOVA)": importance_text(v),
            }
        )
    return rows


def summary_rows(views: Sequence[StudyView]) -> list[dict[str, str]]:
    """One row per study as text: what `rnnbench-table --studies` prints (summary_data's
    numbers, rounded for reading; the confirmed test as mean ± std (seeds))."""
    best, confirmed = summary_headers(views)
    text = {
        best: fmt,
        "train hours": lambda hours: f"{hours:.2f}",
        "train steps": lambda steps: f"{steps:,}",
        "best config": lambda config: config or "-",
    }
    rows = []
    for v, data in zip(views, summary_data(views), strict=True):
        row = {}
        for key, value in data.items():
            if key == confirmed:
                row[key] = confirmed_text(v)
            elif key not in ("confirmed std", "confirmed seeds"):
                row[key] = text.get(key, str)(value)
        rows.append(row)
    return rows


def expected_max_figure(views: Sequence[StudyView]) -> Any:
    """The expected best validation value against the number of trials, one line per study
    with its ±1 std band (a matplotlib Figure)."""
    from matplotlib.figure import Figure  # lazy: only this view draws

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for v in views:
        curve = expected_max_curve(v)
        if not curve:
            continue
        n, mean, std = zip(*curve, strict=True)
        ax.plot(n, mean, marker="o", markersize=3, label=f"{v.cell} ({v.name})")
        low = [m - s for m, s in zip(mean, std, strict=True)]
        high = [m + s for m, s in zip(mean, std, strict=True)]
        ax.fill_between(n, low, high, alpha=0.2)
    metric = views[0].metric if views else "value"
    ax.set_xlabel("trials (completed)")
    ax.set_ylabel(f"expected best {metric}")
    ax.set_title("Expected best validation value vs trials (Dodge et al. 2019)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def plot_expected_max(views: Sequence[StudyView], path: str | Path) -> Path:
    """expected_max_figure, saved to `path` (.png, .pdf, .svg)."""
    path = Path(path)
    expected_max_figure(views).savefig(path, dpi=120)
    return path
