"""Creating and cancelling tasks: the same path for the API, the pages and the CLI."""
from __future__ import annotations

import logging

from app.db import session_scope
from app.models import TASK_CANCELLING, TASK_PENDING, TASK_RUNNING, Task
from app.taskspec import TaskSpec

log = logging.getLogger(__name__)


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


def create_task(spec: TaskSpec, enqueue: bool = True) -> int:
    """Store a validated task and ask the coordinator to start it.

    The row is committed before the coordinator job is sent, so the job always finds it;
    if sending fails the periodic tick still starts the task.
    """
    check_time_limits(spec)
    max_iterations = spec.optimization.max_iterations
    with session_scope() as session:
        task = Task(
            name=spec.task_name,
            status=TASK_PENDING,
            spec=spec.to_dict(),
            engine=spec.engine,
            deployment_mode=spec.deployment_mode,
            strategy=spec.optimization.strategy,
            objective=spec.optimization.objective,
            max_parallel=spec.optimization.max_parallel_experiments,
            max_iterations=int(max_iterations),
            notes=list(spec.notes),
        )
        session.add(task)
        session.flush()
        task_id = task.id
    if enqueue:
        _nudge(task_id)
    return task_id


def _nudge(task_id: int) -> None:
    """Ask the coordinator to look at the task now. The row is already committed, so if
    the broker is unreachable nothing is lost: the periodic tick picks the task up."""
    from kombu.exceptions import OperationalError

    from app.dispatch import request_coordination

    try:
        request_coordination(task_id)
    except OperationalError:
        log.warning("broker unreachable; task %s starts at the coordinator's next tick", task_id)


def check_time_limits(spec: TaskSpec) -> None:
    """An experiment's hard time limit must end before Redis re-delivers its job, or a
    long experiment would be handed to a second worker while the first still runs it."""
    from app.config import get_settings
    from app.taskspec import TaskSpecError

    settings = get_settings()
    hard = float(spec.optimization.timeout_per_iteration) + settings.time_limit_grace
    if hard >= settings.visibility_timeout:
        raise TaskSpecError([{
            "loc": ["optimization", "timeout_per_iteration"],
            "msg": f"{spec.optimization.timeout_per_iteration}s plus the {settings.time_limit_grace:.0f}s grace must be "
                   f"below the broker's visibility timeout ({settings.visibility_timeout}s, AUTOTUNER_VISIBILITY_TIMEOUT)",
        }])


def cancel_task(task_id: int) -> str:
    """Cooperative cancellation: mark the task, let the coordinator and the jobs wind down."""
    with session_scope() as session:
        task = session.get(Task, task_id, with_for_update=True)
        if task is None:
            raise NotFound(f"task {task_id} not found")
        if task.status not in (TASK_PENDING, TASK_RUNNING, TASK_CANCELLING):
            raise Conflict(f"task {task_id} is already {task.status}")
        task.status = TASK_CANCELLING
    _nudge(task_id)
    return TASK_CANCELLING

