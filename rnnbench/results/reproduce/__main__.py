"""`python -m rnnbench.results.reproduce`: the `rnnbench-reproduce` command."""

from rnnbench.results.reproduce.command import cli

if __name__ == "__main__":
    cli()
