from rnnbench.train import cli

cli()
