"""The coordinator: the only place that makes decisions.

`coordinate(task_id)` moves one task forward under that task's row lock (feed the history
to the strategy, create as many experiments as there are free slots, finish the task when
nothing is left), then `schedule()` hands free GPUs to waiting experiments under the global
scheduler lock. Both commit before anything is sent to Celery, and both are idempotent:
running them twice changes nothing the second time. The caller sends the returned
dispatches; a dispatch lost between commit and send is re-sent by `tick()`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterator, MutableMapping

from sqlalchemy import Row, Select, and_, delete, func, insert, or_, select, union_all
from sqlalchemy.orm import Session, defer, joinedload

from app.domain.placement import Clock, Waiting, plan as plan_placements
from app.domain.objectives import trial_values
from app.domain.lengths import LengthModel, expected_length
from app.store import ledger
from app.celery_app import queue_for
from app.config import get_settings
from app.domain.engines.failures import is_infeasible
from app.store.db import is_transient, session_scope
from app.store.lifecycle import Ended, cancel_unstarted, end_experiment, end_reported, end_task, lock_task, mark_lost
from app.limits import get_limits
from app.domain.states import AttemptState, ExperimentState, TaskStatus, TASK_TERMINAL, EXP_ACTIVE
from app.store.models import Attempt, Experiment, Gpu, Lock, PassTiming, Task, Worker, utcnow
from app.domain.strategies import STRATEGIES, make_strategy
from app.domain.stopping import task_stop, task_stop_label
from app.domain.strategies.base import Trial
from app.domain.taskspec import TaskSpec

log = logging.getLogger(__name__)
REPREDICT_CHANGE = 0.05  # a waiting experiment's prediction is renewed when it moves this much
_UNREAD = (defer(Experiment.metrics), defer(Experiment.engine_log))  # what a pass never needs of an experiment


@dataclass(frozen=True)
class Dispatch:
    """One Celery job to send: run `experiment_id`'s attempt on the group's queue."""

    experiment_id: int
    attempt: int
    queue: str
    soft_time_limit: float
    time_limit: float


def _timeout(exp: Experiment) -> float:
    return float(exp.task.parsed_spec.optimization.timeout_per_iteration)


def _dispatch(exp: Experiment) -> Dispatch:
    """Soft limit = the task's per-experiment timeout (the job cleans up); the hard limit
    leaves a grace period for that clean-up before Celery kills the child."""
    timeout = _timeout(exp)
    return Dispatch(exp.id, exp.attempt, queue_for(exp.group), timeout, timeout + get_settings().time_limit_grace)


def _trial(exp: Experiment, objectives: list[str] | tuple[str, ...] = ()) -> Trial:
    # An experiment that broke a hard SLO has no objective for the strategy: it is a constraint
    # violation the search learns to steer away from, like a configuration that cannot run.
    objective = exp.objective if exp.eligible else None
    return Trial(params=dict(exp.params), state=exp.state, objective=objective,
                 infeasible=exp.state == ExperimentState.FAILED and is_infeasible(exp.failure_kind),
                 slo_broken=exp.state == ExperimentState.SUCCEEDED and exp.slo_ok is False,
                 values=trial_values(exp.measured, exp.penalty, objectives) if objective is not None else None)


def pool_capacity(session: Session) -> int:
    """How many experiments the pool could run at once: one per online GPU at best (at
    least 1, so a task submitted before any worker joined still shows what it waits for)."""
    return max(1, session.execute(select(func.count()).select_from(Gpu).where(Gpu.online.is_(True))).scalar_one())


def advance(session: Session, task: Task) -> None:
    """One step of one task, inside the caller's transaction holding the task's lock.

    New experiments are bounded three ways: the task's `max_parallel_experiments`, what the
    pool can run at once (more waiting rows would only queue), and AUTOTUNER_MAX_NEW_PER_PASS
    per pass (a short write transaction; the next pass creates the rest)."""
    if task.status == TaskStatus.CANCELLING:
        cancel_unstarted(session, task.id, "task cancelled")
        if not _states(session, task.id).get(ExperimentState.RUNNING):
            task.status, task.finished_at = TaskStatus.CANCELLED, utcnow()
        return
    if task.status == TaskStatus.PENDING:
        task.status, task.started_at = TaskStatus.RUNNING, utcnow()
    if task.stop_reason is None and _stops(task.parsed_spec):
        _apply_stop_rule(session, task)
    # Counts first: the history is read only when the strategy is asked for more (a task
    # whose backlog is full costs two small queries, however many experiments it has).
    states = _states(session, task.id)
    active = sum(n for state, n in states.items() if state in EXP_ACTIVE)
    total = sum(states.values())
    parallel = min(task.max_parallel, pool_capacity(session))
    # A strategy that does not learn from results gets the next round created ahead: the
    # scheduler holds the task to max_parallel running (its `room`), and a job that ends hands
    # its GPUs straight to a waiting experiment of its task (end_and_place).
    learns = getattr(STRATEGIES.get(task.strategy), "learns_from_results", True)
    ahead = 0 if learns else parallel
    free = min(parallel + ahead - active, task.max_iterations - total, get_limits().max_new_per_pass)
    created = 0
    if task.stop_reason is not None:  # the task stop rule: no more experiments, the running ones end
        free = 0
    if free > 0:
        spec = task.parsed_spec
        exps = _history(session, task.id)
        virtual = _virtual_time(session)
        lengths = LengthModel.fit([(e.params, (e.finished_at - e.started_at).total_seconds()) for e in exps
                                   if e.state == ExperimentState.SUCCEEDED and e.started_at and e.finished_at])
        for params in make_strategy(spec).suggest([_trial(e, spec.objective_names) for e in exps], free):
            session.add(_new_experiment(task, spec, params, total + created + 1, virtual, lengths.predict(params)))
            created += 1
        _repredict(exps, lengths)
    if not active and not created:
        end_task(task, list(task.experiments))


def _stops(spec: TaskSpec) -> bool:
    """Whether the task has a stop rule (it is then checked on every pass, backlog full or not:
    a strategy that does not learn has its next round created ahead)."""
    es = spec.optimization.early_stopping
    return es is not None and (es.patience is not None or es.gpu_hour_budget is not None)


def _apply_stop_rule(session: Session, task: Task) -> None:
    """The task stop rule: once it says stop, the reason is kept, nothing new is created and
    what has not started is cancelled (no GPU is spent on it); running experiments end."""
    spec = task.parsed_spec
    task.stop_reason = _stop_rule(spec, _history(session, task.id))
    if task.stop_reason is not None:
        es = spec.optimization.early_stopping
        cancel_unstarted(session, task.id, task_stop_label(task.stop_reason, es.patience if es else None,
                                                           es.gpu_hour_budget if es else None) or "task stopped")


def _stop_rule(spec: TaskSpec, exps: list[Experiment]) -> str | None:
    """Why the task should create no more experiments (app.domain.stopping.task_stop): no
    improvement beyond noise in `patience` finished experiments, or its GPU-hour budget spent
    (running experiments count up to now)."""
    es = spec.optimization.early_stopping
    assert es is not None
    now = utcnow()
    done = sorted((e for e in exps if e.finished_at is not None and e.state != ExperimentState.CANCELLED),
                  key=lambda e: (e.finished_at, e.seq))
    gpu_s = sum(e.gpus_needed * ((e.finished_at or now) - e.started_at).total_seconds() for e in exps if e.started_at)
    return task_stop([e.objective if e.eligible else None for e in done], spec.optimization.objective, es.patience,
                     es.noise, gpu_s / 3600, es.gpu_hour_budget)


def _history(session: Session, task_id: int) -> list[Experiment]:
    """The task's experiments as the strategy and the length model read them: without their
    measurements and engine logs (up to 20 KB each), which a task's next step never needs and
    which would otherwise be read again at every experiment's end."""
    return list(session.execute(select(Experiment).where(Experiment.task_id == task_id).order_by(Experiment.seq)
                                .options(*_UNREAD)).scalars())


def _repredict(exps: list[Experiment], lengths: LengthModel) -> None:
    """What was created before the latest results learns from them too: the reservation
    weighs how long waiting experiments will take and when running ones end. A waiting
    experiment's prediction is renewed when it moves by more than REPREDICT_CHANGE; a queued
    or running one only gets one if it had none (its row is the one its job claims and
    ends: the coordinator writes it at most once)."""
    for exp in exps:
        if exp.state not in EXP_ACTIVE:
            continue
        predicted = lengths.predict(exp.params)
        if predicted is None:
            continue
        if exp.expected_s is None or (exp.state == ExperimentState.PENDING
                                      and abs(predicted - exp.expected_s) > REPREDICT_CHANGE * exp.expected_s):
            exp.expected_s = predicted


def _states(session: Session, task_id: int) -> dict[str, int]:
    """How many of the task's experiments are in each state, in one grouped query."""
    return dict(session.execute(select(Experiment.state, func.count()).where(Experiment.task_id == task_id)
                                .group_by(Experiment.state)).all())


def _new_experiment(task: Task, spec: TaskSpec, params: dict, seq: int, virtual: float,
                    expected: float | None = None) -> Experiment:
    """A new waiting experiment with its fair-share tag (start-time fair queuing): it starts
    where its task's previous experiment's expected GPU-seconds end, or at the scheduler's
    virtual time if the task has fallen behind. Within a priority the queue is served by tag,
    so tasks share GPUs by expected GPU-seconds and one task's experiments keep their order.
    `expected`: its predicted length (app.domain.lengths), if the task's history can tell."""
    gpus = spec.gpus_needed(params)
    tag = max(virtual, task.share_finish or 0.0)
    length = expected_length(expected, task.expected_experiment_s, float(spec.optimization.timeout_per_iteration))
    task.share_finish = tag + gpus * length
    return Experiment(
        task=task,
        seq=seq,
        params=params,
        gpus_needed=gpus,
        priority=task.priority,
        share_tag=tag,
        expected_s=expected,
        state=ExperimentState.PENDING,
        simulated=spec.launcher.simulated,
    )


def _virtual_time(session: Session) -> float:
    """The highest fair-share tag the scheduler has served (kept with its lock): where a task
    that was idle (or new) starts, so it neither jumps ahead of the others nor pays for the
    time it was not asking for GPUs."""
    return session.execute(select(Lock.value).where(Lock.name == "scheduler")).scalar_one_or_none() or 0.0


def schedule(session: Session, scheduler: Lock | None = None) -> list[Dispatch]:
    """Give free GPUs to waiting experiments (priority, then FIFO across all tasks, with one
    reservation and backfill), in the caller's transaction. Returns the jobs to send once that
    transaction has committed.

    Reads the head of the waiting queue for each GPU count, only as far as placements go
    (see app.domain.placement), and writes the placements together: its cost follows the
    number of placements and GPU counts, not the backlog. `scheduler`: the scheduler's lock row,
    when the caller has taken it already."""
    scheduler = scheduler or ledger.lock(session)
    groups, capacity = ledger.group_states(session)
    now = utcnow()
    clock = _clock(session, now)
    free_gpus = sum(len(g.free) for g in groups if g.busy_slots < g.slots)
    queues = _waiting_queues(session, free_gpus)
    room = _Room(session)
    _read_tasks(queues, room, clock.durations)
    plan = plan_placements(queues, groups, capacity, clock, room)
    touched = [*plan.waiting, *plan.impossible, *(p.experiment_id for p in plan.placements)]
    if not touched:
        return []
    by_id = _experiments(session, touched)
    for exp_id, reason in plan.waiting.items():
        by_id[exp_id].wait_reason = reason
    reserved = plan.reservation
    if reserved is not None and reserved.start != float("inf") and by_id[reserved.experiment_id].promised_start is None:
        by_id[reserved.experiment_id].promised_start = _from_epoch(reserved.start)
    for exp_id, reason in plan.impossible.items():
        end_experiment(session, by_id[exp_id], ExperimentState.FAILED, error=reason)
    grants = [(p.experiment_id, by_id[p.experiment_id].attempt + 1, p.gpu_ids) for p in plan.placements]
    taken = ledger.take_all(session, grants)
    dispatches = []
    attempts = []
    for placement in plan.placements:
        exp = by_id[placement.experiment_id]
        exp.attempt += 1
        labels = [g.label for g in taken[exp.id]]
        exp.state, exp.group, exp.gpus, exp.queued_at, exp.wait_reason, exp.promised_start = (
            ExperimentState.QUEUED, placement.group, labels, now, None, None,
        )
        attempts.append(dict(experiment_id=exp.id, number=exp.attempt, state=AttemptState.QUEUED, gpus=labels,
                             queued_at=now))
        dispatches.append(_dispatch(exp))
    if attempts:
        session.execute(insert(Attempt), attempts)
        served = max(by_id[p.experiment_id].share_tag for p in plan.placements)
        scheduler.value = max(scheduler.value or 0.0, served)
    return dispatches


_EPOCH = datetime(1970, 1, 1)


def _epoch(moment: datetime) -> float:
    return (moment - _EPOCH).total_seconds()  # stored times are naive UTC


def _from_epoch(seconds: float) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


class _Lengths(dict):
    """Expected experiment length per task, read from the store on first use in a pass: the
    task's moving average, else its time limit (only then is its spec parsed). `_read_tasks`
    fills it for the tasks at the queues' heads beforehand."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def __missing__(self, task_id: int) -> float:
        task = self.session.get(Task, task_id)
        if task is None:
            raise KeyError(task_id)
        self[task_id] = length = expected_length(None, task.expected_experiment_s,
                                                 float(task.parsed_spec.optimization.timeout_per_iteration))
        return length


class _Room(dict):
    """How many more experiments each task may start now (max_parallel_experiments less what
    it has queued or running), read from the store on first use in a pass. `_read_tasks`
    fills it for the tasks at the queues' heads beforehand."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def __missing__(self, task_id: int) -> int:
        self.read([task_id])
        if task_id not in self:
            raise KeyError(task_id)
        return dict.__getitem__(self, task_id)

    def read(self, task_ids: list[int]) -> dict[int, float | None]:
        """Room of `task_ids` in one query; returns their expected lengths, read on the way."""
        busy = (select(func.count()).select_from(Experiment)
                .where(Experiment.task_id == Task.id, Experiment.state.in_((ExperimentState.QUEUED,
                                                                            ExperimentState.RUNNING)))
                .scalar_subquery())
        lengths = {}
        for task_id, limit, running, expected in self.session.execute(
                select(Task.id, Task.max_parallel, busy, Task.expected_experiment_s).where(Task.id.in_(task_ids))):
            self[task_id], lengths[task_id] = limit - running, expected
        return lengths


def _read_tasks(queues: dict[int, "_Queue"], room: _Room, lengths: MutableMapping[int, float]) -> None:
    """What the planner asks of each task at the queues' heads (its room, its expected
    length), for all of them in one query instead of two per task as each comes up."""
    task_ids = sorted({item.task_id for queue in queues.values() for item in queue.first} - room.keys())
    if task_ids:
        for task_id, expected in room.read(task_ids).items():
            if expected is not None:
                lengths.setdefault(task_id, expected)


def _clock(session: Session, now: datetime) -> Clock:
    """The pass's clock: expected lengths per task (read as needed), and a loader for when what
    runs in a group is expected to end: read only for the few groups a reservation weighs,
    only in a pass that makes one."""
    clock = Clock(now=_epoch(now), durations=_Lengths(session), slip=get_settings().reservation_slip)
    loaded: set[str] = set()

    def load_ends(groups: list) -> None:
        wanted = {g.group: g for g in groups if g.group not in loaded}
        loaded.update(wanted)
        if not wanted:
            return
        running = session.execute(
            select(Experiment.group, Experiment.task_id, Experiment.started_at, Experiment.queued_at,
                   Experiment.gpus_needed, Experiment.expected_s)
            .where(Experiment.state.in_((ExperimentState.QUEUED, ExperimentState.RUNNING)),
                   Experiment.group.in_(sorted(wanted)))
        )
        for group, task_id, started, queued, gpus, expected in running:
            since = started or queued or now
            wanted[group].ends.append((_epoch(since) + clock.duration(task_id, expected), gpus))

    clock.load_ends = load_ends
    return clock


def _waiting_needs(session: Session) -> list[int]:
    """The GPU counts that waiting experiments need, in one recursive query that seeks the next
    larger count in ix_experiments_waiting until none is left (a loose index scan: a backlog
    of ten thousand experiments needing 1, 2, 4 or 8 GPUs costs five seeks, one round trip)."""
    def smallest_need(*where: Any) -> Select:
        return (select(Experiment.gpus_needed).where(Experiment.state == ExperimentState.PENDING, *where)
                .order_by(Experiment.gpus_needed).limit(1))

    needs = select(smallest_need().scalar_subquery().label("need")).cte("needs", recursive=True)
    needs = needs.union_all(select(smallest_need(Experiment.gpus_needed > needs.c.need).scalar_subquery())
                            .where(needs.c.need.is_not(None)))
    return [need for need in session.execute(select(needs.c.need)).scalars() if need is not None]


_QUEUE_ORDER = (Experiment.priority.desc(), Experiment.share_tag, Experiment.id)
_MAX_PAGE = 1024


def _queue_rows(need: int, after: tuple[int, float, int] | None = None) -> Select:
    """Waiting experiments of running tasks needing `need` GPUs, after the key `after`."""
    query = (
        select(Experiment.priority, Experiment.share_tag, Experiment.id, Experiment.task_id,
               Experiment.promised_start, Experiment.expected_s, Experiment.gpus_needed)
        .join(Task, Task.id == Experiment.task_id)
        .where(Experiment.state == ExperimentState.PENDING, Experiment.gpus_needed == need,
               Task.status == TaskStatus.RUNNING)
    )
    if after is not None:
        priority, tag, last = after
        query = query.where(or_(
            Experiment.priority < priority,
            and_(Experiment.priority == priority, or_(
                Experiment.share_tag > tag, and_(Experiment.share_tag == tag, Experiment.id > last)))))
    return query.order_by(*_QUEUE_ORDER)


class _Queue:
    """The waiting queue of one GPU count, in queue order (priority first, then fair-share tag,
    then age), read page by page from ix_experiments_waiting as the planner asks. Its first
    page comes with the other counts' (`_waiting_queues`)."""

    def __init__(self, session: Session, need: int, page: int, first: list[Waiting]) -> None:
        self.session, self.need, self.page, self.first = session, need, page, first

    def __iter__(self) -> Iterator[Waiting]:
        yield from self.first
        rows, page = self.first, self.page
        while len(rows) == page:
            last = rows[-1]
            page = min(page * 4, _MAX_PAGE)
            rows = [_waiting(row) for row in self.session.execute(
                _queue_rows(self.need, (-last.key[0], last.key[1], last.key[2])).limit(page))]
            yield from rows


def _waiting(row: Row) -> Waiting:
    priority, tag, exp_id, task_id, promised, expected, _need = row
    return Waiting((-priority, tag, exp_id), exp_id, task_id, _epoch(promised) if promised else None, expected)


def _waiting_queues(session: Session, free_gpus: int) -> dict[int, _Queue]:
    """The waiting queue of every GPU count waited for. The first page of each (as many as
    could start on the free GPUs, plus the one that would wait) is read in one statement;
    the planner rarely reads further."""
    pages = {need: max(1, min(free_gpus // need + 1, _MAX_PAGE)) for need in _waiting_needs(session)}
    if not pages:
        return {}
    heads = [select(_queue_rows(need).limit(page).subquery()) for need, page in pages.items()]
    first: dict[int, list[Waiting]] = {need: [] for need in pages}
    for row in session.execute(heads[0] if len(heads) == 1 else union_all(*heads)):
        first[row.gpus_needed].append(_waiting(row))
    return {need: _Queue(session, need, page, sorted(first[need], key=lambda w: w.key))
            for need, page in pages.items()}


def _experiments(session: Session, ids: list[int]) -> dict[int, Experiment]:
    """The experiments a pass writes, with their tasks, in a few IN queries."""
    out: dict[int, Experiment] = {}
    for i in range(0, len(ids), 500):
        out.update((e.id, e) for e in session.execute(
            select(Experiment).where(Experiment.id.in_(ids[i:i + 500])).options(joinedload(Experiment.task), *_UNREAD))
            .scalars())
    return out


def end_and_place(experiment_id: int, attempt: int, state: str,
                     **outcome: Any) -> tuple[Ended | None, list[Dispatch]]:
    """The end of a job, in one transaction: record its result, free its GPUs and place
    waiting experiments on them (placement only, no strategy), so the next experiment is
    queued without a message to the coordinator and a pass of its own. Returns the end as
    recorded (None when the attempt no longer owned the experiment; the caller passes it to
    `lifecycle.learn_length` once the jobs are sent) and the jobs to send.

    The scheduler's lock is taken first, the order every placing transaction takes its locks
    in. A placement that fails rolls back to its savepoint alone: the result is committed
    whatever happens to the placement, and the coordinator's next pass places what waits."""
    with session_scope() as session:
        scheduler = ledger.lock(session)
        ended = end_reported(session, experiment_id, attempt, state, **outcome)
        dispatches: list[Dispatch] = []
        if ended is not None:
            try:
                with session.begin_nested():
                    dispatches = schedule(session, scheduler)
            except Exception:  # noqa: BLE001 - the result must be kept; the coordinator places them
                log.exception("placement after experiment %s failed; the coordinator will place the waiting "
                              "experiments", experiment_id)
                dispatches = []
    return ended, dispatches


def coordinate(task_id: int | None = None) -> list[Dispatch]:
    """Advance one task (or every unfinished one) and schedule; returns jobs to send."""
    ids = [task_id]
    if task_id is None:
        with session_scope(readonly=True) as session:
            ids = list(session.execute(select(Task.id).where(Task.status.not_in(TASK_TERMINAL))).scalars())
    started = time.perf_counter()
    for tid in ids:
        try:
            with session_scope() as session:
                task = lock_task(session, tid)
                if task is not None and task.status not in TASK_TERMINAL:
                    advance(session, task)
        except Exception as exc:  # noqa: BLE001 - one task's fault must not stop the others
            if is_transient(exc):  # a deadlock victim, the database away: the next pass tries again
                log.warning("task %s: the coordinator's pass will be retried: %s", tid, exc)
            else:
                _fail_task(tid, exc)
    with session_scope() as session:
        dispatches = schedule(session)
        session.add(PassTiming(seconds=time.perf_counter() - started, placed=len(dispatches)))
        return dispatches


def _fail_task(task_id: int, exc: Exception) -> None:
    """Isolate a task whose pass raised: it fails with the reason (logged once, here: a
    failed task is not advanced again) and gives up what it had not started yet."""
    log.exception("task %s: the coordinator's pass raised; the task is marked failed", task_id)
    reason = f"coordinator error: {type(exc).__name__}: {exc}"[:1000]
    try:
        with session_scope() as session:
            task = lock_task(session, task_id)
            if task is None or task.status in TASK_TERMINAL:
                return
            cancel_unstarted(session, task_id, "task failed: " + reason)
            task.status, task.finished_at, task.error = TaskStatus.FAILED, utcnow(), reason
    except Exception:  # noqa: BLE001 - e.g. the database is down: the next pass tries again
        log.exception("task %s: could not be marked failed", task_id)


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
    orphans = session.execute(
        select(Experiment).where(Experiment.state.in_((ExperimentState.QUEUED, ExperimentState.RUNNING)))
    ).scalars()
    for exp in orphans:
        if exp.group not in online_groups:
            mark_lost(session, exp, f"no live worker left in group {exp.group}")
            continue
        hard_deadline = _timeout(exp) + 2 * settings.time_limit_grace
        if exp.state == ExperimentState.RUNNING and exp.started_at and exp.started_at + timedelta(seconds=hard_deadline) < now:
            end_experiment(session, exp, ExperimentState.TIMED_OUT, error=f"no result {hard_deadline:.0f}s after start; worker killed it?")


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
        out.append(_dispatch(exp))
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
