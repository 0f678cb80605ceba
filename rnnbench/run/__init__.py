"""Running: the `rnnbench` command (overrides, launch), the one run lifecycle (runner) and its
strategies (train: a lone run; pack, packed_task: K runs at once), the task modules (module),
callbacks and checkpoints, sweeps, packs across a sweep's jobs, searches and their trials,
claims between processes, SLURM, and loading a trained run back (trained)."""
