"""`python -m rnnbench.bench`: the command, writing to results/ as the console script does."""

import sys

from rnnbench.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(default_out="results"))
