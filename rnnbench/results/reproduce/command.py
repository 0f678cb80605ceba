"""Command line: `rnnbench-reproduce` writes the pages, the CSV and the README's table from the
run records, or with `--time` measures how long recipes would train here."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rnnbench.errors import UserError
from rnnbench.outputs import make_folder, one_line
from rnnbench.results.report import positive  # argparse type: a whole number of at least 1
from rnnbench.results.reproduce.archive import archive_records, archive_searches, load_searches
from rnnbench.results.reproduce.csv_readme import (
    CSV_FILE,
    carry_over,
    csv_lines,
    read_csv,
    readme_text,
    write_csv,
    write_readme,
)
from rnnbench.results.reproduce.pages import render_page, write_page
from rnnbench.results.reproduce.recipes import (
    SOURCES,
    ReproduceError,
    compose_recipes,
    recipe_names,
)
from rnnbench.results.reproduce.rows import RECORDS_DIR, SEARCHES_DIR, collect
from rnnbench.results.reproduce.times import TIMES_FILE, measure_time, read_times, write_times

RESULTS_DIR = Path("results")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rnnbench-reproduce",
        description=(
            "Rebuild the published tables (Bai et al. 2018 Table 1, Zaremba et al. 2014, and "
            "the bentrevett/pytorch-seq2seq tutorial's encoder-decoders) from "
            "the runs made with the conf/experiment/ recipes: ours beside the paper, one markdown "
            "page per source and results/reproduction.csv. With --time, measure how long the "
            "named recipes would train here instead."
        ),
        epilog="example: rnnbench -m experiment=tcn/jsb_lstm,tcn/jsb_gru,tcn/jsb_rnn && "
        "rnnbench-reproduce",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help="folders holding run records (default: $RNNBENCH_RUNS_DIR, else ./runs)",
    )
    parser.add_argument(
        "--source",
        action="append",
        choices=sorted(SOURCES),
        help="only this source's table (repeatable; default: all)",
    )
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="folder for the pages (default: results)",
    )
    parser.add_argument(
        "--time",
        nargs="+",
        metavar="RECIPE",
        help="measure training time per recipe (e.g. tcn/ptb_word_lstm, or a source: tcn) and "
        f"merge it into OUT/{TIMES_FILE}; writes no table",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        metavar="README",
        help="also rewrite the table between the rnnbench-reproduce:readme markers of this file "
        "(README.md) from the CSV just written",
    )
    parser.add_argument(
        "--searches",
        nargs="+",
        type=Path,
        metavar="FOLDER",
        help="search folders (runs/searches/<name>, from rnnbench -m hparams_search=...) to "
        f"archive under OUT/{RECORDS_DIR}/{SEARCHES_DIR}/; every archived search's studies "
        "give the pages their tuned rows",
    )
    parser.add_argument("--steps", type=int, default=10, help="steps timed per recipe (--time)")
    parser.add_argument(
        "--threads",
        type=positive,
        default=None,
        help="torch threads while timing, at least 1 (default: torch's)",
    )
    return parser.parse_args(argv)


def expand(names: Sequence[str]) -> list[str]:
    """Recipe names, a bare source name standing for all its recipes; unknown ones refused."""
    known = recipe_names()
    out = []
    for name in names:
        if name in SOURCES:
            out += recipe_names([name])
        elif name in known:
            out.append(name)
        else:
            raise ReproduceError(
                f"unknown recipe {name!r}; recipes are conf/experiment/<source>/<name>.yaml, "
                f"e.g. {known[0]}, or a whole source: {', '.join(SOURCES)}"
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.steps < 1:
            raise ReproduceError(f"--steps must be a positive number of steps, got {args.steps}")
        roots = args.paths or [Path(os.environ.get("RNNBENCH_RUNS_DIR") or "runs")]
        missing = [str(p) for p in roots if not p.is_dir()]
        if missing and args.paths and not args.time:
            raise ReproduceError(f"no such folder: {', '.join(missing)} (give the runs folder)")
        if missing and not args.time:
            # A fresh clone has no runs/: its rows come from the records kept with the pages.
            print(
                f"rnnbench-reproduce: no {missing[0]}/ here: the rows come from the records "
                f"kept in {args.out / RECORDS_DIR}",
                file=sys.stderr,
            )
            roots = []
        make_folder(args.out, "-o")  # before any timing or reading: refused in one line
        if args.time:
            names = expand(args.time)
            measured = []
            for i, recipe in enumerate(compose_recipes(names), 1):
                print(f"[{i}/{len(names)}] timing {recipe.name} ...", file=sys.stderr, flush=True)
                measured.append(measure_time(recipe, args.steps, args.threads))
                m = measured[-1]
                print(
                    f"{m['recipe']}: {m['s_per_step']} s/step x {m['steps_per_epoch']} steps x "
                    f"{m['epochs']} epochs = {m['hours']} h"
                )
            write_times(args.out / TIMES_FILE, measured)
            return 0
        sources = args.source or list(SOURCES)
        if args.readme:
            readme_text(args.readme)  # refused before any table is written
        recipes = compose_recipes(recipe_names(sources))
        kept_records = args.out / RECORDS_DIR
        if kept_records.is_dir() and kept_records.resolve() not in [r.resolve() for r in roots]:
            roots = [*roots, kept_records]  # the records behind the committed rows
        rows = collect(recipes, roots, read_times(args.out / TIMES_FILE))
        carried = carry_over(rows, args.out / CSV_FILE)
        archived = archive_records(rows, args.out)
        archived_searches = archive_searches(args.searches or [], args.out)
        views = load_searches(args.out)
        for name in sources:
            mine = [r for r in rows if r.recipe.source == name]
            page = args.out / SOURCES[name].page
            write_page(page, render_page(SOURCES[name], mine, views))
            print(f"wrote {page}")
        lines = csv_lines(rows, read_csv(args.out / CSV_FILE))
        write_csv(args.out / CSV_FILE, lines)
        print(f"wrote {args.out / CSV_FILE}")
        if args.readme:
            write_readme(args.readme, lines)
            print(f"wrote the table in {args.readme}")
        full = [r for r in rows if r.budget == "full" and r.paper is not None]
        summary = {
            "full": len(full),
            "within_2pct": sum(bool(r.within) for r in full),
            "reduced": sum(r.budget == "reduced" for r in rows),
            "not_run": sum(r.budget == "not run" for r in rows),
            "carried_over": carried,
            "records_archived": archived,
            "search_files_archived": archived_searches,
            "studies": len(views),
        }
        print(json.dumps(summary))
        return 0
    except UserError as e:
        print(f"rnnbench-reproduce: error: {one_line(str(e))}", file=sys.stderr)
        return 2


def cli() -> None:
    sys.exit(main())
