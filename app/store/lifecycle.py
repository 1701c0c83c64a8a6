"""Every change of an experiment's or a task's state, in one module: claim, phase changes,
ends, loss, replan, back to pending, cancellation of what has not started.

Ends are named by who decides them: `end_reported` records the end a job reports (in its
caller's transaction: the job's end and the placement of what waits for its GPUs commit
together, `app.coordinator.end_and_place`); `end_experiment` is an end the system decides
(cancelled, impossible to place, timed out); `end_task` ends a task whose experiments are
all over. An experiment that runs again goes through `back_to_pending`, whoever retries it
(a lost worker, a busy GPU, an operator's retry). Every write to an experiment is guarded by
(state, attempt) so a late or duplicate actor finds nothing to change instead of corrupting
a newer attempt.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, exists, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.domain import lengths
from app.domain.engines.failures import HOST_BUSY
from app.store import ledger
from app.processes import pid_alive
from app.store.db import session_scope
from app.domain.states import AttemptState, ExperimentState, TaskStatus
from app.store.models import Attempt, Experiment, Gpu, Task, gpu_label, slot_share, utcnow

log = logging.getLogger(__name__)
_CANCELLED = (TaskStatus.CANCELLING, TaskStatus.CANCELLED)
# The tables, for the statements on the hand-over's path: Core statements, without the ORM's
# unit of work (those rows are written once and not loaded as objects).
_experiments, _attempts, _tasks, _gpus = Experiment.__table__, Attempt.__table__, Task.__table__, Gpu.__table__
# An experiment's attempt, to write the columns given as parameters.
_ATTEMPT = update(_attempts).where(_attempts.c.experiment_id == bindparam("experiment"),
                                   _attempts.c.number == bindparam("attempt_no"))


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
    gpus_simulated: bool = True
    gpu_share: float = 1.0  # < 1: slots of GPUs split between engines (models.Gpu)
    seed: int = 0  # the benchmark client's seed: a repeat's request order differs (app.domain.repeats)
    repeat: bool = False


def _attempt(session: Session, exp: Experiment) -> Attempt | None:
    return session.execute(
        select(Attempt).where(Attempt.experiment_id == exp.id, Attempt.number == exp.attempt)
    ).scalar_one_or_none()


def lock_task(session: Session, task_id: int) -> Task | None:
    """The task's row, locked against other writers of the task (its coordinator pass, a
    cancel, an update) with FOR NO KEY UPDATE, which does not hold up foreign-key checks:
    when a transaction updates an experiment row a second time (a job's claim or end may, as
    its end did until `end_reported` read the attempt first), PostgreSQL checks the task key
    (FOR KEY SHARE); under FOR UPDATE that check waits for the whole coordinator pass, and
    deadlocks with a pass that writes the same experiment. (SQLite: the write lock
    serialises everything anyway.)"""
    return session.execute(select(Task).where(Task.id == task_id).with_for_update(key_share=True)).scalar_one_or_none()


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
        now = utcnow()
        started = session.execute(_START, {"experiment": experiment_id, "attempt_no": attempt, "started_at": now,
                                           "state": ExperimentState.RUNNING, "phase": "deploying", "worker": worker,
                                           "host": host}).first()
        if started is None:
            _not_started(session, experiment_id, attempt, worker)
            return None
        session.execute(_ATTEMPT, {"experiment": experiment_id, "attempt_no": attempt, "started_at": now,
                                       "state": ExperimentState.RUNNING, "worker": worker, "host": host, "pid": pid})
        rows = session.execute(_SPEC_AND_GPUS, {"experiment": experiment_id, "task": started.task_id}).all()
        gpus = [row for row in rows if row.index is not None]
        return Claim(
            experiment_id=experiment_id,
            task_id=started.task_id,
            attempt=attempt,
            params=dict(started.params),
            spec=dict(rows[0].spec),
            gpu_indices=[g.index for g in gpus],
            gpu_labels=[gpu_label(g.host, g.index, g.slot, g.slots) for g in gpus],
            gpus_simulated=all(g.simulated for g in gpus),
            gpu_share=min((slot_share(g.slots) for g in gpus), default=1.0),
            seed=started.seed or 0,
            repeat=started.repeat_of is not None,
        )


# The claim's statements, built once (the columns they set are the parameters given). The
# experiment locked and started in one statement, only if it is queued for this attempt and its
# task is not being cancelled; the task's spec and the experiment's GPUs in one (a row per GPU).
_START = (update(_experiments)
          .where(_experiments.c.id == bindparam("experiment"), _experiments.c.attempt == bindparam("attempt_no"),
                 _experiments.c.state == ExperimentState.QUEUED,
                 exists().where(_tasks.c.id == _experiments.c.task_id, _tasks.c.status.not_in(_CANCELLED)))
          .returning(_experiments.c.task_id, _experiments.c.params, _experiments.c.seed, _experiments.c.repeat_of))
_SPEC_AND_GPUS = (select(_tasks.c.spec, _gpus.c.index, _gpus.c.host, _gpus.c.slot, _gpus.c.slots, _gpus.c.simulated)
                  .select_from(_tasks.outerjoin(_gpus, _gpus.c.held_by == bindparam("experiment")))
                  .where(_tasks.c.id == bindparam("task")).order_by(_gpus.c.index))


def _not_started(session: Session, experiment_id: int, attempt: int, worker: str) -> None:
    """Why a claim found nothing to start, and what follows: a re-delivery after this
    worker's child process died mid-run marks that attempt lost; a queued experiment of a
    cancelled task is cancelled. A duplicate delivery or a stale message of an older attempt
    changes nothing."""
    row = session.execute(
        select(Experiment, Task, Attempt)
        .join(Task, Task.id == Experiment.task_id)
        .outerjoin(Attempt, and_(Attempt.experiment_id == Experiment.id, Attempt.number == attempt))
        .where(Experiment.id == experiment_id)
        .with_for_update(of=Experiment)
    ).first()
    if row is None or row.Experiment.attempt != attempt:
        return
    exp, task, att = row
    if exp.state == ExperimentState.RUNNING:
        if att is not None and att.worker == worker and not pid_alive(att.pid):
            mark_lost(session, exp, "the worker process running it died")
    elif exp.state == ExperimentState.QUEUED and task.status in _CANCELLED:
        end_experiment(session, exp, ExperimentState.CANCELLED, error="task cancelled before it started")


def set_phase(experiment_id: int, attempt: int, phase: str, why: str | None = None, *,
              restart: bool = False) -> None:
    """The running attempt's phase, shown with its state. `why`: what it waits for in this phase
    (its wait reason; the next phase clears it). `restart`: its length starts now, what came
    before being a wait of the host's (workers.sim_admission), not its configuration's: the
    length model, the GPU-hour budget and the planner's expected end read started_at (the
    attempt keeps when it was claimed). One compare-and-set statement: only while this attempt
    runs the experiment."""
    values: dict[str, Any] = {"phase": phase, "wait_reason": why}
    if restart:
        values["started_at"] = utcnow()
    with session_scope() as session:
        session.execute(_RUNNING.values(values), {"experiment": experiment_id, "attempt_no": attempt})


def should_stop(experiment_id: int) -> bool:
    """Cooperative cancellation: the job polls this instead of being killed."""
    with session_scope(readonly=True) as session:
        row = session.execute(
            select(Experiment.state, Task.status).join(Task).where(Experiment.id == experiment_id)
        ).one_or_none()
    return row is None or row[0] == ExperimentState.CANCELLED or row[1] in (TaskStatus.CANCELLING, TaskStatus.CANCELLED)


def record_engine(experiment_id: int, attempt: int, identity: dict[str, Any]) -> bool:
    """Store the identity of the engine an attempt has just started, before it is waited
    for, so a reaper can stop it if this job dies. Recorded whatever the attempt's state (an
    engine exists either way); returns False when the attempt no longer owns the experiment
    (lost or cancelled meanwhile) and the job should stop the engine at once. The experiment's
    row is locked first, as every change of its attempt takes it (a reaper marking it lost
    sees the identity or is seen); two Core statements, no objects loaded."""
    with session_scope() as session:
        owner = session.execute(_OWNER, {"experiment": experiment_id}).first()
        if owner is None:
            return False
        session.execute(_RECORD_ENGINE, {"experiment": experiment_id, "attempt_no": attempt, "identity": identity})
        return owner.state == ExperimentState.RUNNING and owner.attempt == attempt


# The experiment's state and attempt, its row locked; the attempt's engine; a write to the
# experiment only while the attempt runs it.
_RECORD_ENGINE = _ATTEMPT.values(engine=bindparam("identity", type_=_attempts.c.engine.type))
_OWNER = (select(_experiments.c.state, _experiments.c.attempt)
          .where(_experiments.c.id == bindparam("experiment")).with_for_update())
_RUNNING = update(_experiments).where(_experiments.c.id == bindparam("experiment"),
                                      _experiments.c.state == ExperimentState.RUNNING,
                                      _experiments.c.attempt == bindparam("attempt_no"))


@dataclass(frozen=True)
class Ended:
    """An attempt's end as recorded: its task, and its length when it succeeded (what the
    task's expected experiment length learns from)."""

    task_id: int
    seconds: float | None


def end_reported(
    session: Session,
    experiment_id: int,
    attempt: int,
    state: str,
    *,
    metrics: dict[str, Any] | None = None,
    objective: float | None = None,
    slo_ok: bool | None = None,
    measured: dict[str, float] | None = None,
    penalty: float | None = None,
    error: str | None = None,
    failure_kind: str | None = None,
    engine_log: str | None = None,
    engine_gone: bool = True,
    stop_reason: str | None = None,
) -> Ended | None:
    """Record the end of a running attempt and free its GPUs, in the caller's transaction.

    `engine_gone` says the job has stopped its engine (or never started one); if it could not,
    the GPUs stay fenced until the reaper has stopped it. Returns None when this attempt no
    longer owns the experiment (the reaper declared it lost meanwhile): a late result must
    not overwrite a newer attempt. An attempt that ended `HOST_BUSY` is not the experiment's
    end: it runs again (`_end_host_busy`).
    """
    if failure_kind == HOST_BUSY:
        return _end_host_busy(session, experiment_id, attempt, error, engine_log, engine_gone)
    now = utcnow()
    exp_values, att_values = _end_values(state, error, failure_kind, now)
    exp_values.update(new_metrics=metrics, objective=objective, slo_ok=slo_ok, new_measured=measured, penalty=penalty,
                      stop_reason=stop_reason)
    if engine_log is not None:
        exp_values["engine_log"] = engine_log[-20000:]
    ended = session.execute(_END, {"experiment": experiment_id, "attempt_no": attempt, **exp_values}).first()
    if ended is None:
        _not_owned(session, experiment_id, attempt, engine_gone)
        return None
    if engine_gone:
        att_values["engine_gone_at"] = now
    att = session.execute(_END_ATTEMPT, {"experiment": experiment_id, "attempt_no": attempt, **att_values}).first()
    ledger.release(session, experiment_id, fence=att.id if _engine_may_run(att) else None)
    seconds = None
    if state == ExperimentState.SUCCEEDED and ended.started_at is not None:
        seconds = (now - ended.started_at).total_seconds()
    return Ended(ended.task_id, seconds)


# The end's statements, built once (the columns they set are the parameters given). The
# experiment's is a compare-and-set: the row is locked and written in one statement, only
# while this attempt runs it. An absent figure is SQL NULL, as in a row never written (the
# columns' type, models.NULLABLE_JSON).
_END = (update(_experiments)
        .where(_experiments.c.id == bindparam("experiment"), _experiments.c.state == ExperimentState.RUNNING,
               _experiments.c.attempt == bindparam("attempt_no"))
        .values(metrics=bindparam("new_metrics", type_=_experiments.c.metrics.type),
                measured=bindparam("new_measured", type_=_experiments.c.measured.type))
        .returning(_experiments.c.task_id, _experiments.c.started_at))
_END_ATTEMPT = _ATTEMPT.returning(_attempts.c.id, _attempts.c.started_at, _attempts.c.engine_gone_at)


def _not_owned(session: Session, experiment_id: int, attempt: int, engine_gone: bool) -> None:
    """A job's end for an attempt that no longer owns its experiment records nothing but that
    its engine is gone (`engine_gone`), so the GPUs fenced for it are handed on."""
    if engine_gone:
        _confirm_gone(session, session.execute(select(Attempt).where(
            Attempt.experiment_id == experiment_id, Attempt.number == attempt)).scalar_one_or_none())


def _end_host_busy(session: Session, experiment_id: int, attempt: int, error: str | None, engine_log: str | None,
                   engine_gone: bool) -> Ended | None:
    """The attempt's time limit ran out after it had waited for host CPU (workers.sim_admission):
    the limit counts from the claim, so the host took part of the configuration's time, and a
    time-out is no verdict on the configuration. It is measured again as a new attempt with the
    full limit, up to `max_attempts` such ends; then it fails as the host's (`HOST_BUSY`, which
    no strategy reads as infeasible and is never the best). Same guard and GPU release as any
    end (fenced while its engine may run)."""
    exp = _lock_experiment(session, experiment_id)
    if exp is None or exp.state != ExperimentState.RUNNING or exp.attempt != attempt:
        _not_owned(session, experiment_id, attempt, engine_gone)
        return None
    _run_again(session, exp, AttemptState.TIMED_OUT, HOST_BUSY, error or "timed out waiting for host CPU",
               gave_up="the host was too busy: {n} attempt(s) ran out of time waiting for host CPU, giving up "
                       "(last: {reason})", retrying="attempt {attempt}: {reason}; measuring it again",
               engine_gone=engine_gone)
    if engine_log is not None and exp.state == ExperimentState.FAILED:  # one back in line starts afresh
        exp.engine_log = engine_log[-20000:]
    return Ended(exp.task_id, None)


def learn_length(ended: Ended | None) -> int | None:
    """After the end is committed: fold a succeeded experiment's length into its task's
    expected length. Returns the task id (None for an end that was not recorded)."""
    if ended is None:
        return None
    if ended.seconds is not None:
        try:
            _learn_length(ended.task_id, ended.seconds)
        except DBAPIError:  # an estimate: the result is stored, and must not be written again
            log.warning("task %s: could not update its expected experiment length", ended.task_id, exc_info=True)
    return ended.task_id


def _learn_length(task_id: int, seconds: float) -> None:
    """Fold a succeeded experiment's length into its task's expected length
    (`lengths.learned`, in SQL: one UPDATE), in a transaction of its own: the end's
    transaction holds the experiment's row lock, the coordinator takes a task's lock before
    its experiments', and this must not invert that order."""
    average = _tasks.c.expected_experiment_s
    with session_scope() as session:
        session.execute(update(_tasks).where(_tasks.c.id == task_id).values(
            expected_experiment_s=func.coalesce((1 - lengths.LENGTH_WEIGHT) * average + lengths.LENGTH_WEIGHT * seconds,
                                                seconds)))


def _engine_may_run(att: Attempt | Row | None) -> bool:
    """An attempt that was claimed may have started an engine; until one is confirmed
    stopped, its GPUs must not be handed on."""
    return att is not None and att.started_at is not None and att.engine_gone_at is None


def end_experiment(session: Session, exp: Experiment, state: str, error: str | None = None,
                failure_kind: str | None = None) -> None:
    """Final state for the experiment and its current attempt; GPUs go back to the pool
    (fenced while the attempt's engine may still run)."""
    _close(session, exp, _attempt(session, exp), state, error, failure_kind)


def _end_values(state: str, error: str | None, failure_kind: str | None,
                now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """What an end writes to the experiment's row and to its attempt's: an ended experiment
    waits for nothing, so its phase and wait reason go (the pages show a wait reason whatever
    the state: one that ended while waiting for host CPU would still say it waits)."""
    return ({"state": state, "phase": None, "wait_reason": None, "finished_at": now, "error": error,
             "failure_kind": failure_kind},
            {"state": state, "finished_at": now, "error": error, "failure_kind": failure_kind})


def _close(session: Session, exp: Experiment, att: Attempt | None, state: str, error: str | None,
         failure_kind: str | None) -> None:
    exp_values, att_values = _end_values(state, error, failure_kind, utcnow())
    for name, value in exp_values.items():
        setattr(exp, name, value)
    if att is not None:
        for name, value in att_values.items():
            setattr(att, name, value)
    ledger.release(session, exp.id, fence=att.id if _engine_may_run(att) else None)


def end_task(task: Task, exps: list[Experiment]) -> None:
    """The task's end once none of its experiments is active and the strategy suggests no
    more: completed if any succeeded, else failed with what its experiments ended as."""
    task.finished_at = utcnow()
    if any(e.state == ExperimentState.SUCCEEDED for e in exps):
        task.status = TaskStatus.COMPLETED
        return
    task.status = TaskStatus.FAILED
    if not exps:
        task.error = "the strategy suggested no experiment"
    else:
        kinds = sorted({e.state for e in exps})
        task.error = f"all {len(exps)} experiments ended without success ({', '.join(kinds)})"


def mark_lost(session: Session, exp: Experiment, reason: str) -> None:
    """The attempt's worker vanished: keep the attempt as `lost`, fence its GPUs until the
    reaper has stopped its engine, and put the experiment back in line unless it has used
    up its attempts (replanned attempts, which never started an engine, do not count)."""
    _run_again(session, exp, AttemptState.LOST, "worker_lost", reason,
               gave_up="lost {n} time(s), giving up: {reason}", retrying="attempt {attempt} lost: {reason}; retrying")


def _run_again(session: Session, exp: Experiment, state: str, kind: str, reason: str, *, gave_up: str,
               retrying: str, engine_gone: bool = False) -> None:
    """The current attempt ended by no fault of its configuration (failure `kind`): keep it as
    `state`, and put the experiment back in line as a new attempt, unless `max_attempts` of its
    attempts have ended so: then it fails as `kind`. Its GPUs go back to the pool, fenced until
    its engine is confirmed gone (`engine_gone`: the job has stopped it). `gave_up` and
    `retrying` are the experiment's error, formatted with `n` (such ends), `attempt`, `reason`.
    Only the attempts since an operator's retry count (`Experiment.retried_after`)."""
    att = _attempt(session, exp)
    now = utcnow()
    if att is not None:
        att.state, att.finished_at, att.error, att.failure_kind = state, now, reason, kind
        if engine_gone:
            att.engine_gone_at = now
    fence = att.id if _engine_may_run(att) else None
    ended = sum(1 for a in exp.attempts if a.failure_kind == kind and a.number > exp.retried_after)
    if ended >= exp.task.parsed_spec.optimization.max_attempts:
        ledger.release(session, exp.id, fence=fence)
        exp.state, exp.phase, exp.wait_reason, exp.finished_at = ExperimentState.FAILED, None, None, now
        exp.error, exp.failure_kind = gave_up.format(n=ended, reason=reason), kind
    else:
        back_to_pending(session, exp, error=retrying.format(attempt=exp.attempt, reason=reason), fence=fence)


def replan(experiment_id: int, attempt: int, busy: dict[int, str]) -> int | None:
    """Before its engine started, the attempt found some of its GPUs busy (`busy`: GPU
    index -> why): quarantine those GPUs, give the others back, and put the experiment back
    in line to be placed elsewhere instead of failing it. Returns the task id."""
    with session_scope() as session:
        exp = _lock_experiment(session, experiment_id)
        if exp is None or exp.state != ExperimentState.RUNNING or exp.attempt != attempt:
            return None
        now = utcnow()
        labels = []
        for gpu in ledger.lock_gpus(session, Gpu.held_by == exp.id):
            if gpu.index in busy:
                gpu.quarantined_at, gpu.quarantine_reason = now, busy[gpu.index][:300]
                labels.append(gpu.label)
        reason = f"GPU {', '.join(labels)} busy before launch: {'; '.join(busy.values())}"
        att = _attempt(session, exp)
        if att is not None:
            att.state, att.finished_at, att.error, att.engine_gone_at = AttemptState.REPLANNED, now, reason, now
        back_to_pending(session, exp, wait_reason=f"{reason}; placing it again"[:300])
        return exp.task_id


def back_to_pending(session: Session, exp: Experiment, *, error: str | None = None,
                    wait_reason: str | None = None, fence: int | None = None) -> None:
    """The experiment waits for GPUs again, as a new attempt of the same row: everything its
    last attempt left on it is cleared (the attempt rows keep that history), so nothing reads
    it as the outcome of the attempt to come (a strategy would steer away from a retried
    configuration still marked infeasible). Its GPUs go back to the pool, fenced by `fence`
    (an attempt whose engine may still run on them) until that engine is confirmed gone."""
    ledger.release(session, exp.id, fence=fence)
    exp.state, exp.phase, exp.error, exp.wait_reason = ExperimentState.PENDING, None, error, wait_reason
    exp.objective, exp.slo_ok, exp.metrics, exp.failure_kind, exp.measured, exp.penalty = None, None, None, None, None, None
    exp.stop_reason = None
    exp.queued_at, exp.started_at, exp.finished_at, exp.promised_start = None, None, None, None
    exp.gpus, exp.group, exp.worker, exp.host = [], None, None, None


def cancel_unstarted(session: Session, task_id: int, error: str) -> None:
    """End the task's experiments that have not started (waiting, or queued and not yet
    claimed: a claim that comes later finds them cancelled); running ones end on their own."""
    unstarted = session.execute(select(Experiment).where(
        Experiment.task_id == task_id,
        Experiment.state.in_((ExperimentState.PENDING, ExperimentState.QUEUED)))).scalars().all()
    for exp in unstarted:
        end_experiment(session, exp, ExperimentState.CANCELLED, error=error)


def _confirm_gone(session: Session, att: Attempt | None) -> None:
    if att is not None and att.engine_gone_at is None:
        att.engine_gone_at = utcnow()
        ledger.unfence(session, att.id)


def engine_stopped(attempt_id: int) -> None:
    """The reaper has confirmed the attempt's engine gone: its fenced GPUs may be handed on."""
    with session_scope() as session:
        _confirm_gone(session, session.get(Attempt, attempt_id))
