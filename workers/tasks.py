"""Celery task definitions: thin wrappers that call the coordinator or the experiment job.

Task names are fixed strings so the web app can enqueue with `send_task` without importing
worker code.
"""
from __future__ import annotations

import socket

from celery.signals import worker_process_init

from app.coordinator import coordinate as _coordinate
from app.coordinator import tick as _tick
from app.store.db import dispose_engines, ping
from app.dispatch import send_experiments
from workers.celery_app import app


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    """A forked pool child must not reuse the parent's database sockets; it opens its own
    now, so the first experiment it claims does not pay for connecting."""
    dispose_engines()
    try:
        ping()
    except Exception:  # the database may come later; the first job will connect or fail clearly
        pass


@app.task(name="autotuner.coordinate")
def coordinate(task_id: int | None = None) -> int:
    dispatches = _coordinate(task_id)
    send_experiments(dispatches)
    return len(dispatches)


@app.task(name="autotuner.tick")
def tick() -> int:
    dispatches = _tick()
    send_experiments(dispatches)
    return len(dispatches)


@app.task(name="autotuner.run_experiment", bind=True)
def run_experiment(self, experiment_id: int, attempt: int) -> str:
    from workers.experiment_job import execute  # heavy imports only where experiments run

    return execute(experiment_id, attempt, worker=self.request.hostname or "unknown", host=socket.gethostname())
