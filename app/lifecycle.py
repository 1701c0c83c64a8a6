"""An experiment's life as seen by the store: claim, phase changes, end, loss.

Each function is one short transaction. The experiment job calls them from a worker;
the reaper calls `mark_lost`. Every write is guarded by (state, attempt) so a late or
duplicate actor finds nothing to change instead of corrupting a newer attempt.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import ledger
from app.db import session_scope
from app.models import (
    ATTEMPT_LOST,
    EXP_CANCELLED,
    EXP_FAILED,
    EXP_PENDING,
    EXP_QUEUED,
    EXP_RUNNING,
    TASK_CANCELLED,
    TASK_CANCELLING,
    Attempt,
    Experiment,
    Gpu,
    Task,
    utcnow,
)


@dataclass(frozen=True)
class Claim:
    """What a worker needs to run the experiment it has just claimed."""

    experiment_id: int
    task_id: int
    attempt: int
    params: dict[str, Any]
    spec: dict[str, Any]
    gpu_indices: list[int]
    gpu_labels: list[str]


def _attempt(session: Session, exp: Experiment) -> Attempt | None:
    return session.execute(
        select(Attempt).where(Attempt.experiment_id == exp.id, Attempt.number == exp.attempt)
    ).scalar_one_or_none()


def pid_alive(pid: int | None) -> bool:
    """True while a process of this host with that pid exists."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_experiment(session: Session, experiment_id: int) -> Experiment | None:
    return session.execute(
        select(Experiment).where(Experiment.id == experiment_id).with_for_update()
    ).scalar_one_or_none()


def claim(experiment_id: int, attempt: int, worker: str, host: str, pid: int) -> Claim | None:
    """Compare-and-set queued -> running for exactly this attempt.

    Returns None when there is nothing to run: a duplicate delivery, a stale message of an
    older attempt, or a cancelled task. A re-delivery after this worker's child process died
    mid-run (its pid is gone) marks that attempt lost so the coordinator retries it.
    """
    with session_scope() as session:
        exp = _lock_experiment(session, experiment_id)
        if exp is None or exp.attempt != attempt:
            return None
        task = session.get(Task, exp.task_id)
        if exp.state == EXP_RUNNING:
            att = _attempt(session, exp)
            if att is not None and att.worker == worker and not pid_alive(att.pid):
                mark_lost(session, exp, "the worker process running it died")
            return None
        if exp.state != EXP_QUEUED:
            return None
        if task.status in (TASK_CANCELLING, TASK_CANCELLED):
            end_attempt(session, exp, EXP_CANCELLED, error="task cancelled before it started")
            return None
        now = utcnow()
        exp.state, exp.phase, exp.started_at = EXP_RUNNING, "deploying", now
        exp.worker, exp.host = worker, host
        att = _attempt(session, exp)
        att.state, att.started_at, att.worker, att.host, att.pid = EXP_RUNNING, now, worker, host, pid
        gpus = session.execute(select(Gpu).where(Gpu.held_by == exp.id).order_by(Gpu.index)).scalars().all()
        return Claim(
            experiment_id=exp.id,
            task_id=exp.task_id,
            attempt=exp.attempt,
            params=dict(exp.params),
            spec=dict(task.spec),
            gpu_indices=[g.index for g in gpus],
            gpu_labels=[g.label for g in gpus],
        )


def set_phase(experiment_id: int, attempt: int, phase: str) -> None:
    with session_scope() as session:
        exp = _lock_experiment(session, experiment_id)
        if exp is not None and exp.state == EXP_RUNNING and exp.attempt == attempt:
            exp.phase = phase


def should_stop(experiment_id: int) -> bool:
    """Cooperative cancellation: the job polls this instead of being killed."""
    with session_scope(readonly=True) as session:
        row = session.execute(
            select(Experiment.state, Task.status).join(Task).where(Experiment.id == experiment_id)
        ).one_or_none()
    return row is None or row[0] == EXP_CANCELLED or row[1] in (TASK_CANCELLING, TASK_CANCELLED)


def finish(
    experiment_id: int,
    attempt: int,
    state: str,
    *,
    metrics: dict[str, Any] | None = None,
    objective: float | None = None,
    slo_ok: bool | None = None,
    error: str | None = None,
    engine_log: str | None = None,
) -> int | None:
    """Record the end of a running attempt and free its GPUs in the same transaction.

    Returns the task id, or None when this attempt no longer owns the experiment (the
    reaper declared it lost meanwhile): a late result must not overwrite a newer attempt.
    """
    with session_scope() as session:
        exp = _lock_experiment(session, experiment_id)
        if exp is None or exp.state != EXP_RUNNING or exp.attempt != attempt:
            return None
        exp.metrics, exp.objective, exp.slo_ok = metrics, objective, slo_ok
        if engine_log is not None:
            exp.engine_log = engine_log[-20000:]
        end_attempt(session, exp, state, error=error)
        return exp.task_id


def end_attempt(session: Session, exp: Experiment, state: str, error: str | None = None) -> None:
    """Final state for the experiment and its current attempt; GPUs go back to the pool."""
    now = utcnow()
    exp.state, exp.phase, exp.finished_at, exp.error = state, None, now, error
    att = _attempt(session, exp)
    if att is not None:
        att.state, att.finished_at, att.error = state, now, error
    ledger.release(session, exp.id)


def mark_lost(session: Session, exp: Experiment, reason: str) -> None:
    """The attempt's worker vanished: keep the attempt as `lost`, free the GPUs, and
    put the experiment back in line unless it has used up its attempts."""
    att = _attempt(session, exp)
    now = utcnow()
    if att is not None:
        att.state, att.finished_at, att.error = ATTEMPT_LOST, now, reason
    ledger.release(session, exp.id)
    max_attempts = int(exp.task.spec.get("optimization", {}).get("max_attempts") or 3)
    if exp.attempt >= max_attempts:
        exp.state, exp.phase, exp.finished_at = EXP_FAILED, None, now
        exp.error = f"lost {exp.attempt} time(s), giving up: {reason}"
    else:
        exp.state, exp.phase, exp.gpus, exp.group = EXP_PENDING, None, [], None
        exp.error = f"attempt {exp.attempt} lost: {reason}; retrying"
