"""rnnbench: a benchmark harness for recurrent networks (vanilla RNN, GRU, LSTM).

One command trains one configuration composed by Hydra (`rnnbench data=ptb_word model=gru`),
a multirun trains a grid, and every run leaves a `result.json` that comparison tables read.
"""

__version__ = "0.1.0"
