"""Creating, cancelling, retrying and deleting tasks: the same path for the API, the pages and the CLI."""
from __future__ import annotations

import copy
import logging

from sqlalchemy import delete, select, update

from app.store.warmstart import check_warm_start
from app.celery_app import request_coordination
from app.store import ledger
from app.store.db import session_scope
from app.store.lifecycle import back_to_pending, lock_task
from app.domain.states import ExperimentState, TaskStatus, TASK_TERMINAL
from app.store.models import Attempt, Experiment, Task, utcnow
from app.config import get_settings
from app.domain.taskspec import TaskSpec, TaskSpecError, parse_task

log = logging.getLogger(__name__)


class NotFound(Exception):
    """No such row: `what` ("task", "experiment") and its id; `loc` names the field for APIs."""

    def __init__(self, what: str, ident: object) -> None:
        super().__init__(f"{what} {ident} not found")
        self.loc = [f"{what}_id"]


class Conflict(Exception):
    """The task's state does not allow the action (cancel a finished task, delete a running one)."""

    loc = ["task_id"]


def create_task(spec: TaskSpec, enqueue: bool = True) -> int:
    """Store a validated task and ask the coordinator to start it.

    The row is committed before the coordinator job is sent, so the job always finds it;
    if sending fails the periodic tick still starts the task.
    """
    check_submittable(spec)
    max_iterations = spec.optimization.max_iterations
    with session_scope() as session:
        task = Task(
            name=spec.task_name,
            status=TaskStatus.PENDING,
            spec=spec.to_dict(),
            engine=spec.engine,
            deployment_mode=spec.deployment_mode,
            strategy=spec.optimization.strategy,
            objective=spec.optimization.objective,
            max_parallel=spec.optimization.max_parallel_experiments,
            priority=spec.optimization.priority,
            max_iterations=int(max_iterations),
            notes=list(spec.notes),
        )
        session.add(task)
        session.flush()
        task_id = task.id
    if enqueue:
        request_coordination(task_id)
    return task_id


def check_submittable(spec: TaskSpec) -> None:
    """Everything a valid task must still pass to be accepted here: submission, preview and
    `autotuner run` all ask this one question, so they never disagree."""
    _check_runnable(spec)
    _check_time_limits(spec)
    check_warm_start(spec)


def _check_runnable(spec: TaskSpec) -> None:
    """Refuse at submission what validation only notes: a task this system cannot run would
    otherwise fail every one of its experiments."""
    if spec.deployment_mode == "ome":
        raise TaskSpecError([{"loc": ["deployment_mode"], "msg": (
            "'ome' deploys on Kubernetes (OME InferenceServices), which this system does not run; "
            "use docker, process or sim (e.g. --deployment-mode docker)")}])
    launcher = spec.launcher
    if spec.deployment_mode == "docker" and (launcher.docker_command is None or not launcher.image):
        raise TaskSpecError([{"loc": ["deployment_mode"], "msg": (
            f"engine {launcher.name!r} has no container image (AUTOTUNER_ENGINES_FILE); use deployment_mode "
            "'process'")}])


def _check_time_limits(spec: TaskSpec) -> None:
    """An experiment's hard time limit must end before Redis re-delivers its job, or a
    long experiment would be handed to a second worker while the first still runs it."""
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
        task = lock_task(session, task_id)
        if task is None:
            raise NotFound("task", task_id)
        if task.status not in (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.CANCELLING):
            raise Conflict(f"task {task_id} is already {task.status}")
        task.status = TaskStatus.CANCELLING
    request_coordination(task_id)
    return TaskStatus.CANCELLING



def update_task(task_id: int, max_parallel_experiments: int | None = None, priority: int | None = None) -> dict:
    """Change how many experiments of a task may run at once, and its priority, while it runs.
    The stored spec is re-validated with the new values (field-level errors, nothing written
    when one is bad); the coordinator applies them at once."""
    with session_scope() as session:
        task = lock_task(session, task_id)
        if task is None:
            raise NotFound("task", task_id)
        if task.status in TASK_TERMINAL:
            raise Conflict(f"task {task_id} is already {task.status}")
        data = copy.deepcopy(task.spec)
        optimization = data.setdefault("optimization", {})
        if max_parallel_experiments is not None:
            optimization["max_parallel_experiments"] = max_parallel_experiments
        if priority is not None:
            optimization["priority"] = priority
        spec = parse_task(data)
        task.spec = spec.to_dict()
        task.max_parallel, task.priority = spec.optimization.max_parallel_experiments, spec.optimization.priority
        session.execute(update(Experiment).where(Experiment.task_id == task_id).values(priority=task.priority)
                        .execution_options(synchronize_session=False))
        result = {"id": task_id, "max_parallel_experiments": task.max_parallel, "priority": task.priority}
    request_coordination(task_id)
    return result


def retry_failed(task_id: int) -> int:
    """Run the task's failed and timed-out experiments again; returns how many.

    They stay the same rows (same `seq`, same parameters, earlier attempts kept in their
    history), so the coordinator's `max_iterations` count does not grow: they simply become
    `pending` again and the scheduler gives them GPUs as a new attempt, with `max_attempts`
    attempts again (those ended by a lost worker or a busy host before count no more). A task
    that had ended runs again. A cancelling or cancelled task is refused: cancelling wins.
    """
    with session_scope() as session:
        task = lock_task(session, task_id)
        if task is None:
            raise NotFound("task", task_id)
        if task.status in (TaskStatus.CANCELLING, TaskStatus.CANCELLED):
            raise Conflict(f"task {task_id} is {task.status}; a cancelled task is not retried")
        failed = session.execute(
            select(Experiment)
            .where(Experiment.task_id == task_id, Experiment.state.in_((ExperimentState.FAILED, ExperimentState.TIMED_OUT)))
            .order_by(Experiment.seq)
            .with_for_update()
        ).scalars().all()
        if not failed:
            raise Conflict(f"task {task_id} has no failed or timed-out experiment to retry")
        for exp in failed:
            exp.retried_after = exp.attempt  # its capped attempts count from here
            back_to_pending(session, exp)
        if task.status not in (TaskStatus.PENDING, TaskStatus.RUNNING):  # completed or failed: it runs again
            task.status, task.finished_at, task.error = TaskStatus.RUNNING, None, None
            if task.started_at is None:
                task.started_at = utcnow()
        count = len(failed)
    request_coordination(task_id)
    return count


def delete_task(task_id: int) -> None:
    """Delete a finished task with its experiments, attempts and GPU allocation history.

    Only terminal tasks: a running one still has jobs in the queues and engines on GPUs
    (cancel it first). Rows are deleted explicitly, children first, so the result does not
    depend on the database enforcing ON DELETE CASCADE."""
    with session_scope() as session:
        task = session.execute(select(Task).where(Task.id == task_id).with_for_update()).scalar_one_or_none()
        if task is None:
            raise NotFound("task", task_id)
        if task.status not in TASK_TERMINAL:
            raise Conflict(f"task {task_id} is {task.status}; cancel it and wait for it to end before deleting it")
        exp_ids = select(Experiment.id).where(Experiment.task_id == task_id)
        fenced = ledger.forget(session, exp_ids)
        if fenced:
            raise Conflict(f"task {task_id}: the engine of a lost attempt on GPU {', '.join(fenced)} is not yet known "
                           "to be stopped; try again once its worker has reaped it")
        session.execute(delete(Attempt).where(Attempt.experiment_id.in_(exp_ids)).execution_options(synchronize_session=False))
        session.execute(delete(Experiment).where(Experiment.task_id == task_id).execution_options(synchronize_session=False))
        session.execute(delete(Task).where(Task.id == task_id).execution_options(synchronize_session=False))
