"""The names both sides of the broker agree on, without Celery: the jobs the coordinator
decides (`Dispatch`), the queue of each GPU group and the task names. The coordinator imports
this, not `app.celery_app`, so deciding work never loads Celery; `app.celery_app` sends the
dispatches and registers the tasks under these names.
"""
from __future__ import annotations

from dataclasses import dataclass

CONTROL_QUEUE = "control"
COORDINATE = "autotuner.coordinate"
TICK = "autotuner.tick"
RUN_EXPERIMENT = "autotuner.run_experiment"


def queue_for(group: str) -> str:
    """The queue a GPU group's worker consumes."""
    return f"gpu.{group}"


@dataclass(frozen=True)
class Dispatch:
    """One Celery job to send: run `experiment_id`'s attempt on the group's queue."""

    experiment_id: int
    attempt: int
    queue: str
    soft_time_limit: float
    time_limit: float
