"""Local dashboards without a W&B account: `logger=tensorboard`, `logger=mlflow`, and several
loggers at once. Each is read back with the library's own reader: TensorBoard's event
accumulator, the MLflow client."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY_REBER_RUN, records, rnnbench_cli

SWEEP = ["-m", "data=reber", "model=rnn,lstm", *TINY_REBER_RUN, "trainer.max_epochs=2"]
SWEEP += ["trainer.enable_progress_bar=false"]


def test_a_sweep_logs_to_tensorboard_mlflow_and_wandb_at_once(tmp_path):
    done = rnnbench_cli([*SWEEP, "logger=[tensorboard,mlflow,wandb]"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rnnbench: warning" not in done.stderr, done.stderr[-2000:]  # every logger started
    made = records(tmp_path / "runs")
    assert len(made) == 2 and all(r["status"] == "completed" for r in made)

    # TensorBoard: per-epoch scalars, and the config with its figures in the HParams tab.
    for record in made:
        events = EventAccumulator(str(Path(record["run_dir"]) / "tensorboard"))
        events.Reload()
        scalars = events.Tags()["scalars"]
        assert {"train/loss", "val/loss", "val/ppl", "test/ppl"} <= set(scalars), scalars
        val = [e.value for e in events.Scalars("val/ppl")]
        assert len(val) == 2  # one per epoch; the record's is its best epoch's
        assert min(abs(v - record["metrics"]["val/ppl"]) for v in val) < 1e-4
        assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
        shown = events.Scalars("hparams/test/ppl")[-1].value
        assert abs(shown - record["metrics"]["test/ppl"]) < 1e-4 * record["metrics"]["test/ppl"]

    # MLflow: one run per job in the local store under the runs root.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rnnbench")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    by_key = {r["run_key"]: r for r in made}
    for run in runs:
        record = by_key[run.data.tags["run_key"]]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
        assert run.data.tags["cell"] == record["config"]["model"]["cell"]
        assert run.data.params["model/hidden_size"] == "16"  # Lightning flattens with /
        assert abs(run.data.metrics["test/ppl"] - record["metrics"]["test/ppl"]) < 1e-4
        artifact = client.download_artifacts(run.info.run_id, "record.json", str(tmp_path))
        logged = json.loads(Path(artifact).read_text())
        assert logged["run_key"] == record["run_key"] and logged["status"] == "completed"
    # W&B went on beside them.
    assert all(r["wandb"]["mode"] == "offline" for r in made)
