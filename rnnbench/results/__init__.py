"""The results layer: run records in, tables, figures and pages out.

- `record`: the run folder, its files and its record (`result.json`), run_key, finding runs
- `summary`: the one-screen summary printed at the end of a run, read from its record
- `studies`: what a set of searches shows: best values, importances, expected best vs trials
- `table`: `rnnbench-table`, the records of some paths in one DataFrame, printed as a comparison
- `plots`: the matplotlib helpers shared by the report and the gradflow experiment
- `report`: `rnnbench-report`, one self-contained HTML page (Jinja2 templates in `templates/`)
- `reproduce`: `rnnbench-reproduce`, the published tables rebuilt from our own run records
"""
