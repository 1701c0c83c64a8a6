"""The coordinator: what each task does next, and which waiting experiment gets which GPUs.

`coordinate(task_id)` moves one task forward under that task's row lock (feed the history
to the strategy, create as many experiments as there are free slots, renew the predicted
lengths and the longest-first order of what waits once a result is in, end the task when
nothing is left), then `schedule()` hands free GPUs to waiting experiments under the global
scheduler lock; a finishing job runs `schedule()` too, in the transaction that records its
end (`end_and_place`). All commit before anything is sent to Celery, and all are idempotent:
running them twice changes nothing the second time. The caller sends the returned
dispatches; a dispatch lost between commit and send is re-sent by `app.upkeep.tick()`.
Placement decisions are the pure planner's (app.domain.placement), on data read for it by
app.store.passes; state changes are app.store.lifecycle's.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import ColumnElement, Float, Row, bindparam, case, func, insert, literal, select, union_all, update
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value

from app.domain.objectives import trial_values
from app.config import get_settings
from app.dispatch import Dispatch, queue_for
from app.domain.engines.failures import is_infeasible
from app.domain.lengths import LengthModel, expected_length
from app.domain.placement import longest_first
from app.domain.states import EXP_ACTIVE, TASK_TERMINAL, AttemptState, ExperimentState, TaskStatus
from app.domain.strategies import STRATEGIES, make_strategy
from app.domain.stopping import GPU_BUDGET, task_stop, task_stop_label
from app.domain.strategies.base import Trial, canonical, seen_keys
from app.store.warmstart import warm_start
from app.domain.taskspec import TaskSpec
from app.limits import get_limits
from app.store import ledger
from app.store.db import is_transient, session_scope
from app.store.lifecycle import Ended, cancel_unstarted, end_experiment, end_reported, end_task, lock_task
from app.store.models import Attempt, Experiment, Gpu, Lock, PassTiming, Task, seconds_between, utcnow
from app.store.passes import PassReader, from_epoch

log = logging.getLogger(__name__)
REPREDICT_CHANGE = 0.05  # a waiting experiment's prediction is renewed when it moves this much
AHEAD_ROUNDS = 2  # rounds of max_parallel created ahead for a strategy that does not learn from results
_UNREAD = (defer(Experiment.metrics), defer(Experiment.engine_log))  # what a pass never needs of an experiment


def timeout_of(exp: Experiment) -> float:
    return float(exp.task.parsed_spec.optimization.timeout_per_iteration)


def dispatch_of(exp: Experiment) -> Dispatch:
    """The job that runs the experiment's current attempt (see `_dispatch`)."""
    return _dispatch(exp.id, exp.attempt, exp.group, timeout_of(exp), get_settings().time_limit_grace)


def _dispatch(experiment_id: int, attempt: int, group: str, timeout: float, grace: float) -> Dispatch:
    """Soft limit = the task's per-experiment timeout (the job cleans up); the hard limit
    leaves a grace period for that clean-up before Celery kills the child."""
    return Dispatch(experiment_id, attempt, queue_for(group), timeout, timeout + grace)


def _trial(exp: Experiment, objectives: list[str] | tuple[str, ...] = ()) -> Trial:
    # An experiment that broke a hard SLO has no objective for the strategy: it is a constraint
    # violation the search learns to steer away from, like a configuration that cannot run. A
    # running one whose incumbent probe kept its score (workers/probe.py) has its final score.
    probed = exp.state == ExperimentState.RUNNING and exp.objective is not None and exp.slo_ok is True
    objective = exp.objective if exp.eligible or probed else None
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

    New experiments are bounded three ways: the task's `max_parallel_experiments` (and for a
    strategy that does not learn from results, AHEAD_ROUNDS more rounds of it created ahead),
    what the pool can run at once (more waiting rows would only queue), and
    AUTOTUNER_MAX_NEW_PER_PASS per pass (a short write transaction; the next pass creates the
    rest). When it creates experiments, or when one of its experiments has succeeded since the
    last time (`Task.predicted_from`), the pass renews the predicted lengths of what is
    active and serves what waits longest predicted first (`_renew`)."""
    if task.status == TaskStatus.CANCELLING:
        cancel_unstarted(session, task.id, "task cancelled")
        if not _states(session, task.id).get(ExperimentState.RUNNING):
            task.status, task.finished_at = TaskStatus.CANCELLED, utcnow()
        return
    if task.status == TaskStatus.PENDING:
        task.status, task.started_at = TaskStatus.RUNNING, utcnow()
    exps: list[Experiment] | None = None  # the history, read at most once per pass
    if task.stop_reason is None and _stops(task.parsed_spec):
        exps = _history(session, task.id)
        _apply_stop_rule(session, task, exps)
    elif task.stop_reason not in (None, GPU_BUDGET):
        _apply_budget(session, task)
    # Counts first: the history is read only when the strategy is asked for more or a new
    # result is to be learned from (a task whose backlog is full costs two small queries,
    # however many experiments it has).
    states = _states(session, task.id)
    active = sum(n for state, n in states.items() if state in EXP_ACTIVE)
    total = sum(states.values())
    succeeded = states.get(ExperimentState.SUCCEEDED, 0)
    parallel = min(task.max_parallel, pool_capacity(session))
    # A strategy that does not learn from results gets its next rounds created ahead: the
    # scheduler holds the task to max_parallel running (its `room`), a job that ends hands
    # its GPUs straight to a waiting experiment of its task (end_and_place), and the longer
    # list of waiting experiments gives the longest-first order more to choose from.
    learns = getattr(STRATEGIES.get(task.strategy), "learns_from_results", True)
    ahead = 0 if learns else AHEAD_ROUNDS * parallel
    free = min(parallel + ahead - active, task.max_iterations - total, get_limits().max_new_per_pass)
    if task.stop_reason is not None:  # the task stop rule: no more experiments, the running ones end
        free = 0
    new: list[Experiment] = []
    new_result = task.stop_reason is None and active > 0 and succeeded != task.predicted_from
    if free > 0 or new_result:
        exps = exps if exps is not None else _history(session, task.id)  # nothing was cancelled: no stop
        lengths = LengthModel.fit([(e.params, (e.finished_at - e.started_at).total_seconds()) for e in exps
                                   if e.state == ExperimentState.SUCCEEDED and e.started_at and e.finished_at])
        if free > 0:
            new = _create(session, task, exps, lengths, free, total, learns)
        _renew(session, task, [*exps, *new], lengths)
        task.predicted_from = succeeded
    created = len(new)
    if not active and not created:  # the search is over: the top configurations measured again, once
        created = _add_repeats(session, task, total)
    if not active and not created:
        end_task(task, list(task.experiments))


def _create(session: Session, task: Task, exps: list[Experiment], lengths: LengthModel, free: int, total: int,
            learns: bool) -> list[Experiment]:
    """Up to `free` new waiting experiments, as the strategy suggests them after the task's
    history `exps` (a warm start's configurations first), each with its predicted length."""
    spec = task.parsed_spec
    virtual = _virtual_time(session)
    history = [_trial(e, spec.objective_names) for e in exps]
    new: list[Experiment] = []

    def add(params: dict) -> Experiment:
        exp = _new_experiment(task, spec, params, total + len(new) + 1, virtual, lengths.predict(params))
        session.add(exp)
        new.append(exp)
        return exp

    warm = warm_start(session, spec)
    if warm is not None:  # the earlier task's best first; its history for a sampler that learns
        done = seen_keys(history)
        for origin, params in [(o, p) for o, p in warm.first if canonical(p) not in done][:free]:
            add(params).warm_from = origin
            history.append(Trial(params=params, state=ExperimentState.PENDING))
        if learns:
            history += warm.trials
    for params in make_strategy(spec).suggest(history, free - len(new)):
        add(params)
    return new


def _add_repeats(session: Session, task: Task, total: int) -> int:
    """The `repeat_top` best configurations of the search, each measured `repeats` more times
    with seeds 1, 2, ... (app.domain.repeats), when the task asks for repeats and has none yet.
    Not after the task's GPU-hour budget is spent, and within what is left of it: seed by seed
    across the configurations, only the repeats expected to fit are created (each as long as its
    configuration's run, or its predicted length if longer: a run the incumbent probe stopped
    measured one level, a repeat measures all). Returns how many were created."""
    spec = task.parsed_spec
    opt = spec.optimization
    if not opt.repeats or task.stop_reason == GPU_BUDGET or session.execute(
            select(func.count()).select_from(Experiment)
            .where(Experiment.task_id == task.id, Experiment.repeat_of.is_not(None))).scalar_one():
        return 0
    ranked = session.execute(
        select(Experiment).where(Experiment.task_id == task.id, Experiment.eligible).options(*_UNREAD)
        .order_by(Experiment.objective if spec.objective_direction == "minimize" else Experiment.objective.desc(),
                  Experiment.seq)).scalars()
    top: dict[str, Experiment] = {}
    for exp in ranked:
        top.setdefault(canonical(exp.params), exp)
        if len(top) == opt.repeat_top:
            break
    if len(top) < 2:  # nothing to tell apart
        return 0
    budget = opt.early_stopping.gpu_hour_budget if opt.early_stopping else None
    left = budget * 3600 - _gpu_s(session, task.id, utcnow()) if budget is not None else float("inf")
    virtual = _virtual_time(session)
    created = 0
    for seed in range(1, opt.repeats + 1):
        for exp in top.values():
            cost = exp.gpus_needed * max((exp.finished_at - exp.started_at).total_seconds(), exp.expected_s or 0.0)
            if cost > left:
                continue
            left -= cost
            created += 1
            repeat = _new_experiment(task, spec, dict(exp.params), total + created, virtual, exp.expected_s)
            repeat.repeat_of, repeat.seed = exp.id, seed
            session.add(repeat)
    return created


def _stops(spec: TaskSpec) -> bool:
    """Whether the task has a stop rule (it is then checked on every pass, backlog full or not:
    a strategy that does not learn has its next rounds created ahead)."""
    es = spec.optimization.early_stopping
    return es is not None and (es.patience is not None or es.gpu_hour_budget is not None)


def _apply_stop_rule(session: Session, task: Task, exps: list[Experiment]) -> None:
    """The task stop rule over its history `exps`: once it says stop, the reason is kept,
    nothing new is created and what has not started is cancelled (no GPU is spent on it);
    running experiments end."""
    spec = task.parsed_spec
    es = spec.optimization.early_stopping
    gpu_s = _gpu_s(session, task.id, utcnow()) if es is not None and es.gpu_hour_budget is not None else 0.0
    _stop(session, task, _stop_rule(spec, exps, gpu_s))


def _apply_budget(session: Session, task: Task) -> None:
    """The budget part of the stop rule for a task stopped for another reason (patience): its
    repeats still run and spend GPU-hours, and one that runs over stops the task like any
    experiment. One aggregate query over the search and its repeats."""
    es = task.parsed_spec.optimization.early_stopping
    if es is not None and es.gpu_hour_budget is not None and \
            _gpu_s(session, task.id, utcnow()) / 3600 >= es.gpu_hour_budget:
        _stop(session, task, GPU_BUDGET)


def _stop(session: Session, task: Task, reason: str | None) -> None:
    """Keep the stop rule's `reason` (None: go on) and cancel what has not started."""
    task.stop_reason = reason
    if reason is not None:
        es = task.parsed_spec.optimization.early_stopping
        cancel_unstarted(session, task.id, task_stop_label(reason, es.patience if es else None,
                                                           es.gpu_hour_budget if es else None) or "task stopped")


def _stop_rule(spec: TaskSpec, exps: list[Experiment], gpu_s: float = 0.0) -> str | None:
    """Why the task should create no more experiments (app.domain.stopping.task_stop): no
    improvement beyond noise in `patience` finished experiments of its search `exps`, or its
    GPU-hour budget spent (`gpu_s`: by the search and its repeats, running experiments up to
    now, `_gpu_s`): the GPU-hours a task reports stay within its budget."""
    es = spec.optimization.early_stopping
    assert es is not None
    done = sorted((e for e in exps if e.finished_at is not None and e.state != ExperimentState.CANCELLED),
                  key=lambda e: (e.finished_at, e.seq))
    return task_stop([e.objective if e.eligible else None for e in done], spec.optimization.objective, es.patience,
                     es.noise, gpu_s / 3600, es.gpu_hour_budget)


def _gpu_s(session: Session, task_id: int, now: datetime, *where: Any) -> float:
    """GPU-seconds the task's experiments (those matching `where`) have used, running ones up
    to `now`, in one aggregate query: the stop rule runs on every pass."""
    held = seconds_between(Experiment.started_at, func.coalesce(Experiment.finished_at, now))
    return float(session.execute(select(func.coalesce(func.sum(Experiment.gpus_needed * held), 0.0))
                                 .where(Experiment.task_id == task_id, Experiment.started_at.is_not(None), *where))
                 .scalar_one())


def _history(session: Session, task_id: int) -> list[Experiment]:
    """The task's search as the strategy, the stop rule, the length model and the
    longest-first order read it (its repeats are not part of it; the GPU-hour budget is summed
    in SQL by `_gpu_s`): without measurements and engine logs (up to 20 KB each),
    which a task's next step never needs and which would otherwise be read again at every
    experiment's end."""
    return list(session.execute(select(Experiment).where(Experiment.task_id == task_id,
                                                         Experiment.repeat_of.is_(None))
                                .order_by(Experiment.seq).options(*_UNREAD)).scalars())


def _repredict(exps: list[Experiment],
               lengths: LengthModel) -> tuple[dict[int, float], dict[int, str], dict[int, float]]:
    """What was created before the latest results learns from them too: the reservation
    weighs how long waiting experiments will take and when running ones end. A waiting
    experiment's prediction is renewed when it moves by more than REPREDICT_CHANGE; a queued
    or running one only gets one if it had none (its row is the one its job claims and
    ends: the coordinator writes it at most once). Returns the renewed predictions and the
    state each row was read in (`_write_renewed` writes them only onto rows still in it: the
    task's lock does not hold off a job's claim or end, nor a finishing job's placement; one
    placed since keeps the prediction it was placed with, the one the reservation weighed, and
    one ended since gets none). Those created in this pass were given this prediction. The
    third dict: every stored active experiment's prediction now (written or not), what the
    longest-first order compares."""
    renewed: dict[int, float] = {}
    read: dict[int, str] = {}
    now: dict[int, float] = {}
    for exp in exps:
        if exp.state not in EXP_ACTIVE or exp.id is None:
            continue
        predicted = lengths.predict(exp.params)
        if predicted is None:
            continue
        now[exp.id] = predicted
        if exp.expected_s is None or (exp.state == ExperimentState.PENDING
                                      and abs(predicted - exp.expected_s) > REPREDICT_CHANGE * exp.expected_s):
            renewed[exp.id], read[exp.id] = predicted, exp.state
            set_committed_value(exp, "expected_s", predicted)  # the session's copy, as the UPDATE writes it
    return renewed, read, now


def _renew(session: Session, task: Task, exps: list[Experiment], lengths: LengthModel) -> None:
    """After new results or with new experiments: the predictions renewed (`_repredict`),
    then the task's waiting experiments among `exps` (in creation order) served longest
    predicted first, by dealing their fair-share tags out again (placement.longest_first; an
    unknown length counts as the task's moving average). The order compares every waiting
    experiment's prediction *now*, not the one stored: a stored prediction is renewed only
    when it moves by more than REPREDICT_CHANGE, so stored ones differ by when they were
    written (the starvation workload's 1-GPU ones held 1.040-1.074 s for the same
    parameters). Ranked by them, its 8-GPU experiment fell behind a 1-GPU one created after
    it and stored at 1.074 s, where the model, having seen only 1-GPU results, predicted the
    same for both; it started 1.1 s after strict FIFO would have (one PostgreSQL run). Equal
    predictions keep creation order. It runs after every new result under the task's lock,
    so it is bounded: nothing to deal with fewer than two waiting, and only
    the task's max_parallel smallest tags are dealt (to its longest; the rows they displace take
    the tags those held): at most 2 × max_parallel rows written, the queue's head longest first.

    Only rows whose tag changes are written, and they lose any promised start: the promise was
    made to the queue's head, and one moved back would find its reservation strict at once
    (placement._reserve) when it is the head again; the head reserves anew. They are written
    guarded by the waiting state: the task's lock does not hold off a finishing job's
    placement (`end_and_place`), and an experiment it queued after this pass read it keeps its
    tag (written onto a queued row, a tag would be served twice).

    Repeats are not in `exps`: they wait in the order they were created (seed by seed, the best
    configuration first: if the task stops during them, the best has been measured again), and
    what they measure changes no prediction."""
    renewed, read, now = _repredict(exps, lengths)
    waiting = [e for e in exps if e.state == ExperimentState.PENDING]
    order = [now.get(e.id) if e.id is not None else e.expected_s for e in waiting]  # None: the task's average
    dealt = longest_first([e.share_tag for e in waiting], order, task.expected_experiment_s,
                          task.max_parallel) if len(waiting) >= 2 else None
    moved: dict[int, float] = {}
    for exp, tag in zip(waiting, dealt or ()):
        if exp.share_tag == tag:
            continue
        if exp.id is None:  # created in this pass: no other transaction sees it yet
            exp.share_tag = tag
            continue
        moved[exp.id] = tag
        set_committed_value(exp, "share_tag", tag)  # the session's copy, as the UPDATE below writes it
        set_committed_value(exp, "promised_start", None)
    _write_renewed(session, renewed, read, moved)


def _write_renewed(session: Session, renewed: dict[int, float], read: dict[int, str], moved: dict[int, float]) -> None:
    """Write the renewed predictions and the re-dealt tags, each in one UPDATE guarded by the
    state the pass read, after locking every row either touches in id order. Why the order:
    the rows include running and queued ones (a first prediction) that finishing jobs are
    ending while their placements take waiting ones; an UPDATE locks its rows in the order it
    scans them, and a pass holding a waiting row one job is about to place while waiting for
    the running row that job holds is a deadlock (PostgreSQL breaks it after its
    deadlock_timeout, one second: a round's hand-overs stalled that long). A finishing job
    locks the row it ends and then the one it places, which is newer unless it was retried;
    taking the older first, the pass waits for the job instead. (SQLite: one writer at a time.)"""
    if not renewed and not moved:
        return
    table = Experiment.__table__
    session.execute(select(table.c.id).where(table.c.id.in_(sorted({*renewed, *moved})))
                    .order_by(table.c.id).with_for_update())
    if renewed:
        session.execute(update(table).where(table.c.id.in_(renewed), table.c.state == case(read, value=table.c.id))
                        .values(expected_s=case(renewed, value=table.c.id)))
    if moved:
        session.execute(update(table).where(table.c.id.in_(moved), table.c.state == ExperimentState.PENDING)
                        .values(share_tag=case(moved, value=table.c.id), promised_start=None))


def _states(session: Session, task_id: int) -> dict[str, int]:
    """How many of the task's experiments are in each state, in one grouped query."""
    return dict(session.execute(select(Experiment.state, func.count()).where(Experiment.task_id == task_id)
                                .group_by(Experiment.state)).all())


def _new_experiment(task: Task, spec: TaskSpec, params: dict, seq: int, virtual: float,
                    expected: float | None = None) -> Experiment:
    """A new waiting experiment with its fair-share tag (start-time fair queuing): it starts
    where its task's previous experiment's expected GPU-seconds end, or at the scheduler's
    virtual time if the task has fallen behind. Within a priority the queue is served by tag,
    so tasks share GPUs by expected GPU-seconds; within a task, `_renew` deals the waiting
    experiments' tags out again longest predicted first. `expected`: its predicted length
    (app.domain.lengths), if the task's history can tell."""
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
    """How far the scheduler has served in fair-share tags (kept with its lock; each task
    served counts by its position, `_served`): where a task that was idle (or new) starts, so
    it neither jumps ahead of the others nor pays for the time it was not asking for GPUs."""
    return session.execute(select(Lock.value).where(Lock.name == "scheduler")).scalar_one_or_none() or 0.0


def schedule(session: Session, scheduler: ledger.Held | None = None) -> list[Dispatch]:
    """Give free GPUs to waiting experiments (priority, then fair-share tag: fair queuing
    between tasks, longest predicted first within one; with one reservation and backfill), in
    the caller's transaction. Returns the jobs to send once that
    transaction has committed.

    Reads the head of the waiting queue for each GPU count, only as far as placements go
    (see app.domain.placement), and writes the placements together: its cost follows the
    number of placements and GPU counts, not the backlog. What it writes comes from what the
    pass read (an experiment's attempt, its wait reason; its task's time limit), in a few
    statements: no experiment or task is loaded as an object. `scheduler`: the scheduler's
    lock, when the caller has taken it already."""
    scheduler = scheduler or ledger.lock(session)
    now = utcnow()
    settings = get_settings()
    reader = PassReader(session, now, settings.reservation_slip)
    plan = reader.plan()
    read = reader.read
    changes: dict[int, dict[str, Any]] = {}  # experiment id -> what changes in its row (waiting ones)
    for exp_id, reason in plan.waiting.items():
        if read[exp_id].wait_reason != reason:
            changes[exp_id] = {"wait_reason": reason}
    reserved = plan.reservation
    if reserved is not None and reserved.start != float("inf") and read[reserved.experiment_id].promised_start is None:
        changes.setdefault(reserved.experiment_id, {})["promised_start"] = from_epoch(reserved.start)
    _write_waiting(session, changes)
    if plan.impossible:  # those still waiting (one cancelled meanwhile stays cancelled)
        for exp in session.execute(select(Experiment).where(Experiment.id.in_(plan.impossible),
                                                            Experiment.state == ExperimentState.PENDING)
                                   .with_for_update().options(*_UNREAD)).scalars():
            end_experiment(session, exp, ExperimentState.FAILED, error=plan.impossible[exp.id])
    if not plan.placements:
        return []
    grants = [(p.experiment_id, read[p.experiment_id].attempt + 1, p.gpu_ids) for p in plan.placements]
    labels = ledger.take_all(session, grants)
    queued = [dict(placed=exp_id, read_attempt=attempt - 1, attempt=attempt, state=ExperimentState.QUEUED,
                   group=p.group, gpus=labels[exp_id], queued_at=now, wait_reason=None, promised_start=None)
              for (exp_id, attempt, _), p in zip(grants, plan.placements)]
    if session.execute(_QUEUE, queued).rowcount != len(queued):
        raise PlacementConflict("an experiment placed by this pass is no longer waiting (cancelled meanwhile)")
    session.execute(insert(Attempt.__table__), [
        dict(experiment_id=q["placed"], number=q["attempt"], state=AttemptState.QUEUED, gpus=q["gpus"], queued_at=now)
        for q in queued])
    served = _served([read[p.experiment_id] for p in plan.placements], scheduler.value or 0.0)
    if served is not None:
        ledger.keep(session, scheduler, served)
    return [_dispatch(q["placed"], q["attempt"], q["group"], reader.time_limits[read[q["placed"]].task_id],
                      settings.time_limit_grace) for q in queued]


def _served(placed: list[Row], virtual: float) -> ColumnElement[float] | None:
    """How far the experiments `placed` by a pass (their rows as read) move the virtual time
    from `virtual`: each task by its position, the smaller of its largest tag placed and its
    smallest tag still waiting, not by the tag placed. With backfill a pass may place a later
    tag of a task (a short experiment that fits now) while the task's head (a smaller tag:
    a multi-GPU experiment holding the reservation) waits; the task has been served up to its
    head, not up to that tag, and a task that starts now (new or idle, `_new_experiment`)
    starts there: after the head (older, at most the same tag), before the task's later tags
    still waiting. Measured by the tag placed, it would start behind up to one waiting set of
    the other task, charged for work not served.

    The tags stay where they are (rather than the one placed taking its task's smallest
    waiting tag from the head): a head given a later tag would fall behind other tasks' tags
    in between, lose the reservation to one of them and its promised start, and its row would
    be written while its task's pass may be dealing the tags again (`_renew`). What the task
    got ahead by backfill stays counted in its `share_finish`, as with the longest-first order.

    Returns the new virtual time as an SQL expression for the lock's UPDATE (`ledger.keep`),
    so the smallest waiting tags cost no round trip of their own: one seek per task whose tag
    placed is past `virtual` (ix_experiments_task_waiting), not its backlog. None: nothing
    placed is past it, nothing moves."""
    largest: dict[int, float] = {}
    for row in placed:
        largest[row.task_id] = max(row.share_tag, largest.get(row.task_id, row.share_tag))
    ahead = {task_id: tag for task_id, tag in largest.items() if tag > virtual}
    if not ahead:
        return None
    smallest_waiting = [
        select(Experiment.share_tag).where(Experiment.task_id == task_id, Experiment.state == ExperimentState.PENDING,
                                           Experiment.share_tag < tag)
        .order_by(Experiment.share_tag).limit(1).scalar_subquery()
        for task_id, tag in ahead.items()]
    positions = union_all(select(literal(virtual, Float).label("tag")),
                          *(select(func.coalesce(waiting, tag).label("tag"))
                            for waiting, tag in zip(smallest_waiting, ahead.values()))).subquery()
    return select(func.max(positions.c.tag)).scalar_subquery()


class PlacementConflict(Exception):
    """An experiment a pass placed was no longer waiting as the pass read it when its row was
    written: the pass takes only its scheduler's lock, and a task's pass (under the task's lock:
    a stop rule, a cancel, a failed task) may have cancelled it since. The placement must roll
    back (as for ledger.LedgerConflict): no GPU taken, nothing sent; the next pass reads again."""


# A placement's row, a compare-and-set: only while it waits in the attempt the pass read.
_waiting_rows = Experiment.__table__
_QUEUE = update(_waiting_rows).where(_waiting_rows.c.id == bindparam("placed"),
                                     _waiting_rows.c.state == ExperimentState.PENDING,
                                     _waiting_rows.c.attempt == bindparam("read_attempt"))


def _write_waiting(session: Session, changes: dict[int, dict[str, Any]]) -> None:
    """What changed in the waiting experiments' rows (their wait reasons, a promised start),
    one UPDATE per distinct change however many experiments it concerns: a pass often tells
    many the same reason."""
    alike: dict[tuple, list[int]] = {}
    for exp_id, values in changes.items():
        alike.setdefault(tuple(sorted(values.items())), []).append(exp_id)
    for values, ids in alike.items():  # only those still waiting: a wait reason is no cancelled one's
        session.execute(update(_waiting_rows).where(_waiting_rows.c.id.in_(ids),
                                                    _waiting_rows.c.state == ExperimentState.PENDING)
                        .values(dict(values)))


def end_and_place(experiment_id: int, attempt: int, state: str,
                  **outcome: Any) -> tuple[Ended | None, list[Dispatch]]:
    """The end of a job, in one transaction: record its result, free its GPUs and place
    waiting experiments on them (placement only, no strategy), so the next experiment is
    queued without a message to the coordinator and a pass of its own. Returns the end as
    recorded (None when the attempt no longer owned the experiment; the caller passes it to
    `lifecycle.learn_length` once the jobs are sent) and the jobs to send.

    The scheduler's lock is taken first, the order every placing transaction takes its locks
    in. The placement runs in a savepoint: one that fails (a conflict, a bug, a database
    error) is rolled back to it and the end commits alone, in the same transaction. The result
    is kept whatever the placement does: recorded again in a second transaction, it could
    find the experiment marked lost or timed out in between (the scheduler's lock free,
    upkeep's tick or a worker's registration), and be dropped. The coordinator's next pass
    places what waits. (The savepoint costs two statements per hand-over: README, *The
    hand-over alone*.)"""
    with session_scope() as session:
        scheduler = ledger.lock(session)
        ended = end_reported(session, experiment_id, attempt, state, **outcome)
        if ended is None:
            return None, []
        try:
            with session.begin_nested():
                return ended, schedule(session, scheduler)
        except (ledger.LedgerConflict, PlacementConflict) as exc:  # a race, not a fault
            log.warning("placement after experiment %s rolled back: %s; the coordinator will place the waiting "
                        "experiments", experiment_id, exc)
            return ended, []
        except Exception:  # noqa: BLE001 - the result must commit whatever the placement does
            log.exception("placement after experiment %s failed; the coordinator will place the waiting experiments",
                          experiment_id)
            return ended, []


def coordinate(task_id: int | None = None, again: Callable[[], None] | None = None) -> list[Dispatch]:
    """Advance one task (or every unfinished one) and schedule; returns jobs to send.

    A placement that meets a race (`PlacementConflict`: a task's pass cancelled what it
    placed; `ledger.LedgerConflict`: a GPU it took was no longer free) or a transient database
    error (a deadlock victim, the database restarting) rolls back, takes nothing and sends
    nothing: it is not the job's fault, so it must not fail it. The pass then returns no
    dispatches; after a race it calls `again` (the caller's way to ask for the next pass now;
    the coordinator sends nothing itself), which places what still waits; after a transient
    error the periodic tick does (asking at once would spin while the database is away). A
    placement that names a GPU twice (`ledger.GrantedTwice`) is a bug and is raised."""
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
    try:
        with session_scope() as session:
            dispatches = schedule(session)
            session.add(PassTiming(seconds=time.perf_counter() - started, placed=len(dispatches)))
            return dispatches
    except (ledger.LedgerConflict, PlacementConflict) as exc:  # a race, not a fault
        log.warning("the coordinator's placement rolled back: %s; the next pass places the waiting experiments", exc)
        if again is not None:
            again()
        return []
    except Exception as exc:  # noqa: BLE001 - a transient error is not the job's fault; a bug is raised
        if not is_transient(exc):
            raise
        log.warning("the coordinator's placement rolled back: %s; the next tick places the waiting experiments", exc)
        return []


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


