"""`rnnbench-reproduce`: published result tables rebuilt from our own run records.

Each recipe in `conf/experiment/<source>/` reproduces one published row. This package composes
every recipe, finds the completed runs made from it under the results folders, and writes, per
source, a markdown table with ours beside the paper's number (`results/tcn_table1.md`,
`results/zaremba.md`) and one CSV row per (source, task, cell, metric)
(`results/reproduction.csv`). A recipe that has not been run shows the training time it would
take here, measured by `rnnbench-reproduce --time` (a few real steps of the recipe), never a
guessed result.

    rnnbench-reproduce                       # tables from the runs under ./runs
    rnnbench-reproduce --time tcn/ptb_word_lstm zaremba/large   # measure the time estimates

Findings written by hand under a table survive regeneration: only the block between the
`rnnbench-reproduce` markers is replaced.

One module per stage, each importing only those listed above it:

- `recipes`: the published tables (`SOURCES`) and their recipes, composed
- `rows`: per recipe and metric, its runs among the records, ours beside the paper, as text
- `times`: the training time of the recipes not run, measured here (`--time`)
- `pages`: each source's markdown page, with the tuned rows of the archived searches
- `csv_readme`: `results/reproduction.csv`, and the README's table made from it
- `archive`: the records and searches behind the rows, copied under `results/records/`
- `command`: the command line, `rnnbench-reproduce` (`rnnbench.results.reproduce.command:cli`)
"""
