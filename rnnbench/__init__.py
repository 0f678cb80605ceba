"""rnnbench: a benchmark harness for recurrent networks (vanilla RNN, GRU, LSTM).

One command trains one configuration composed by Hydra (`rnnbench data=ptb_word model=gru`),
a multirun trains a grid, and every run leaves a `result.json` that comparison tables read.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: rnnbench.load_model, rnnbench.translate
    if name in ("load_model", "translate", "load_run"):
        # lazy: `import rnnbench` stays free of torch for the commands that read records
        from rnnbench.run import trained

        return getattr(trained, name)
    raise AttributeError(f"module 'rnnbench' has no attribute {name!r}")
