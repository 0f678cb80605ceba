from rnnbench.run.cli import cli

cli()
