"""`python -m rnnbench.reproduce`: the `rnnbench-reproduce` command."""

from rnnbench.reproduce.command import cli

if __name__ == "__main__":
    cli()
