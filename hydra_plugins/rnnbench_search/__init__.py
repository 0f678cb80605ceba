"""rnnbench's Optuna sweeper for Hydra (`hydra/sweeper=optuna`, set by conf/hparams_search/).
Found by Hydra's plugin scan of the `hydra_plugins` namespace; the logic is rnnbench.run.search."""
