"""hydra-submitit-launcher's SLURM launcher, whose sweep ends however SLURM ends its jobs: one
killed without a result (cancelled, past its time limit, out of memory) is named in one line and
counted failed in the summary, where the stock launcher waits on it forever (no accounting) or
raises (rnnbench.run.slurm)."""

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from rnnbench.run.slurm import report_lost_jobs, watched_jobs


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        with watched_jobs():
            returns = super().launch(job_overrides, initial_job_idx)
        report_lost_jobs(returns, initial_job_idx)
        return returns
