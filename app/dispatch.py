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


#: A group of CPU devices is named `<name>-cpu` (its worker makes sure of it): the coordinator
#: knows a group only by its name, and the name gives the queue its kind.
CPU_GROUP_SUFFIX = "-cpu"


def is_cpu_group(group: str) -> bool:
    """Whether `group` is a group of CPU devices (see CPU_GROUP_SUFFIX)."""
    return group.endswith(CPU_GROUP_SUFFIX)


def queue_for(group: str) -> str:
    """The queue a device group's worker consumes: `gpu.<group>`, or `cpu.<group>` for a CPU
    device, so that Flower's queues (and the worker's node name) say what runs where."""
    return f"{'cpu' if is_cpu_group(group) else 'gpu'}.{group}"


@dataclass(frozen=True)
class Dispatch:
    """One Celery job to send: run `experiment_id`'s attempt on the group's queue."""

    experiment_id: int
    attempt: int
    queue: str
    soft_time_limit: float
    time_limit: float
