"""The coordinator's periodic upkeep (`tick`): declare silent workers dead and give back what
their experiments held, hand on GPUs whose lost engine was never confirmed stopped, time out
experiments nobody reports on, re-send jobs the broker seems to have lost, then move every
task on (`app.coordinator.coordinate`).
"""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, delete, func, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.coordinator import coordinate, dispatch_of, timeout_of
from app.dispatch import Dispatch
from app.domain.states import ExperimentState
from app.store import ledger
from app.store.db import session_scope
from app.store.lifecycle import end_experiment, mark_lost
from app.store.models import Attempt, Experiment, PassTiming, Worker, utcnow

log = logging.getLogger(__name__)


def reap(session: Session) -> None:
    """Declare silent workers dead and give back what their experiments held."""
    settings = get_settings()
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.worker_dead_after)
    for worker in session.execute(
        select(Worker).where(Worker.online.is_(True), Worker.last_heartbeat < cutoff)
    ).scalars():
        log.warning("worker %s stopped heartbeating; marking it offline", worker.name)
        worker.online = False
    session.flush()
    for label, attempt_id in ledger.expire_fences(session, now - timedelta(seconds=settings.engine_reap_timeout)):
        log.warning("handing on GPU %s: the engine of attempt %s was not confirmed stopped within %.0fs "
                    "(AUTOTUNER_ENGINE_REAP_TIMEOUT); its host's worker is unreachable", label, attempt_id,
                    settings.engine_reap_timeout)
    online_groups = set(session.execute(select(Worker.group).where(Worker.online.is_(True))).scalars())
    for gpu in ledger.lock_gpus(session):
        gpu.online = gpu.group in online_groups
    # A job's deadline counts from its attempt's claim, as Celery's time limit does: the
    # experiment's started_at moves on to the end of a wait for host CPU (workers.sim_admission).
    orphans = session.execute(
        select(Experiment, Attempt.started_at)
        .outerjoin(Attempt, and_(Attempt.experiment_id == Experiment.id, Attempt.number == Experiment.attempt))
        .where(Experiment.state.in_((ExperimentState.QUEUED, ExperimentState.RUNNING)))
    ).all()
    for exp, claimed in orphans:
        if exp.group not in online_groups:
            mark_lost(session, exp, f"no live worker left in group {exp.group}")
            continue
        hard_deadline = timeout_of(exp) + 2 * settings.time_limit_grace
        if exp.state == ExperimentState.RUNNING and claimed and claimed + timedelta(seconds=hard_deadline) < now:
            end_experiment(session, exp, ExperimentState.TIMED_OUT,
                           error=f"no result {hard_deadline:.0f}s after its claim; worker killed it?")


def stale_dispatches(session: Session) -> list[Dispatch]:
    """Experiments queued for too long were probably lost by the broker: send them again.
    A duplicate is harmless, the claim is a compare-and-set."""
    now = utcnow()
    cutoff = now - timedelta(seconds=get_settings().requeue_after)
    out = []
    for exp in session.execute(
        select(Experiment).where(Experiment.state == ExperimentState.QUEUED, Experiment.queued_at < cutoff)
    ).scalars():
        exp.queued_at = now
        out.append(dispatch_of(exp))
    return out


KEPT_PASS_TIMINGS = 2000


def _prune_pass_timings(session: Session) -> None:
    newest = session.execute(select(func.max(PassTiming.id))).scalar_one_or_none()
    if newest is not None and newest > KEPT_PASS_TIMINGS:
        session.execute(delete(PassTiming).where(PassTiming.id <= newest - KEPT_PASS_TIMINGS))


def tick() -> list[Dispatch]:
    """The periodic pass: reap dead workers, re-send stale jobs, move every task on."""
    with session_scope() as session:
        ledger.lock(session)
        reap(session)
        _prune_pass_timings(session)
    with session_scope() as session:
        resend = stale_dispatches(session)
    return resend + coordinate(None)
