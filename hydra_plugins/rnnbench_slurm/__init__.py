"""rnnbench's SLURM launcher for Hydra (`hydra/launcher=slurm_cpu`, conf/hydra/launcher/).
Found by Hydra's plugin scan of the `hydra_plugins` namespace; the logic is rnnbench.run.slurm."""
