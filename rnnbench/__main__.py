from rnnbench.run.overrides import cli

cli()
