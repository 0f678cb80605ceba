"""The records behind the rows and the searches behind the tuned rows, copied under
`results/records/` (no checkpoints) so that a fresh clone regenerates the same pages."""

from __future__ import annotations

import filecmp
import shutil
from collections.abc import Sequence
from pathlib import Path

from rnnbench.outputs import make_folder
from rnnbench.results.record import METRICS_FILE, RECORD_FILE, write_json_atomic
from rnnbench.results.reproduce.recipes import ReproduceError
from rnnbench.results.reproduce.rows import RECORDS_DIR, SEARCHES_DIR, Row
from rnnbench.results.studies import STORAGE_FILES, StudyView, load_studies, storage_url


def archive_searches(paths: Sequence[Path], out: Path) -> int:
    """Copy each search folder's study storage, its multirun.yaml and its runs' records
    (result.json, metrics.csv; checkpoints stay behind) into OUT/records/searches/<folder>/,
    in the same study/trial layout, where the studies' view finds them (studies.locate). A
    study goes on between copies: a file that changed is copied again. Returns how many files
    were new or changed."""
    copied = 0
    for path in paths:
        _, folder = storage_url(path)
        if folder is None:
            raise ReproduceError(
                f"--searches {path}: give a search's folder (it holds {' or '.join(STORAGE_FILES)})"
            )
        target = out / RECORDS_DIR / SEARCHES_DIR / folder.resolve().name
        if target.resolve() == folder.resolve():
            continue  # already the archive
        make_folder(target, "-o")
        files = [folder / n for n in (*STORAGE_FILES, "multirun.yaml") if (folder / n).is_file()]
        for record in folder.rglob(RECORD_FILE):
            files += [p for p in (record, record.parent / METRICS_FILE) if p.is_file()]
        for source in files:
            dest = target / source.relative_to(folder)
            if dest.is_file() and filecmp.cmp(source, dest, shallow=False):
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            copied += 1
    return copied


def archive_records(rows: Sequence[Row], out: Path) -> int:
    """Copy each run record behind a row into OUT/records/<recipe>/<run_key>-<seed>/ (its
    result.json and metrics.csv; checkpoints stay behind). Returns how many were new."""
    new = 0
    for row in rows:
        for record in row.runs:
            source = Path(record["run_dir"])
            folder = out / RECORDS_DIR / row.recipe.name / f"{record['run_key']}-{record['seed']}"
            if (folder / RECORD_FILE).is_file() or folder.resolve() == source.resolve():
                continue
            make_folder(folder, "-o")
            write_json_atomic(folder / RECORD_FILE, {**record, "run_dir": str(folder)})
            if (source / METRICS_FILE).is_file():
                shutil.copyfile(source / METRICS_FILE, folder / METRICS_FILE)
            new += 1
    return new


def load_searches(out: Path) -> list[StudyView]:
    """The studies archived under OUT/records/searches/."""
    archive = out / RECORDS_DIR / SEARCHES_DIR
    folders = sorted(f for f in archive.glob("*") if any((f / n).is_file() for n in STORAGE_FILES))
    return load_studies(folders) if folders else []
