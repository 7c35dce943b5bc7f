"""Optional MLflow tracking for a job: params, metrics per logged step, the result as an artifact.

On when GRAFT_MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_URI) is set and the `mlflow` extra is installed.
"""

from __future__ import annotations

import os
from pathlib import Path


class NoTracking:
    def log_metrics(self, data: dict) -> None:
        pass

    def finish(self, status: str, model_dir: Path | None) -> None:
        pass


class MlflowTracking:
    def __init__(self, uri: str, job_id: str, config: dict, base_model: str):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(os.environ.get("GRAFT_MLFLOW_EXPERIMENT", "graftlm"))
        runs = mlflow.search_runs(filter_string=f"tags.graft_job_id = '{job_id}'", output_format="list")
        self.run = mlflow.start_run(run_id=runs[0].info.run_id) if runs else mlflow.start_run(
            run_name=job_id, tags={"graft_job_id": job_id, "base_model": base_model})
        if not runs:  # a resumed job keeps its run and its params
            mlflow.log_params({k: v for k, v in config.items() if not isinstance(v, (list, dict))})

    def log_metrics(self, data: dict) -> None:
        step = data["step"]
        self.mlflow.log_metrics({k: v for k, v in data.items() if k != "step" and isinstance(v, (int, float))},
                                step=step)

    def finish(self, status: str, model_dir: Path | None) -> None:
        if model_dir is not None:
            self.mlflow.log_artifacts(str(model_dir), artifact_path="model")
        self.mlflow.end_run(status="FINISHED" if status == "succeeded" else
                            "KILLED" if status in ("cancelled", "paused") else "FAILED")


def tracker_for(job_id: str, config: dict, base_model: str):
    uri = os.environ.get("GRAFT_MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return NoTracking()
    try:
        return MlflowTracking(uri, job_id, config, base_model)
    except ImportError:
        return NoTracking()
