from rnnbench.overrides import cli

cli()
