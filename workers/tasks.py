"""The GPU worker's Celery task: run one experiment. The control worker's tasks and the
Celery app itself live in `app.celery_app`."""
from __future__ import annotations


from app.config import host_name
from app.celery_app import RUN_EXPERIMENT, app


@app.task(name=RUN_EXPERIMENT, bind=True)
def run_experiment(self, experiment_id: int, attempt: int) -> str:
    from workers.experiment_job import execute  # heavy imports only where experiments run

    return execute(experiment_id, attempt, worker=self.request.hostname or "unknown", host=host_name())
