"""Sending work to Celery. Only ever called after the database transaction that decided
the work has committed, so a message never refers to a row that does not exist."""
from __future__ import annotations

from typing import Iterable

from app.coordinator import Dispatch
from workers.celery_app import CONTROL_QUEUE, app as celery


def send_experiments(dispatches: Iterable[Dispatch]) -> None:
    for d in dispatches:
        celery.send_task(
            "autotuner.run_experiment",
            args=[d.experiment_id, d.attempt],
            queue=d.queue,
            soft_time_limit=d.soft_time_limit,
            time_limit=d.time_limit,
        )


def request_coordination(task_id: int | None = None) -> None:
    """Ask the coordinator to look at a task (or all of them) soon."""
    celery.send_task("autotuner.coordinate", args=[task_id], queue=CONTROL_QUEUE)
