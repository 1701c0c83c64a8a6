"""What a scheduling pass reads from the store, read before the planner runs.

`PassReader` gives `app.domain.placement.plan` data, not connections, in two statements: the
pool's groups with their ends unknown, the GPU counts waited for and how many experiments each
task has queued or running (one statement), then the first page of every GPU count's waiting
queue (as many as could start on the free GPUs, plus the one that would wait, all counts in
one statement), each row with what the planner needs of its task: the room it has left and
its expected length (a task's time limit is read from its stored spec by the database).
When the planner raises `MoreData` the reader
reads what it asks for (the next page of one queue, four times larger; the expected ends of
the groups a reservation weighs) and the planner runs again: its cost follows the placements
and GPU counts, not the backlog.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import (CompoundSelect, Float, Integer, Row, Select, String, and_, bindparam, cast, func, null, or_,
                        select, union_all)
from sqlalchemy.orm import Session

from app.domain.lengths import expected_length
from app.domain.placement import Clock, GroupState, MoreData, Page, Plan, Waiting, plan
from app.domain.states import ExperimentState, TaskStatus
from app.domain.taskspec.sections import Optimization
from app.store import ledger
from app.store.models import Experiment, Task

QUEUE_ORDER = (Experiment.priority.desc(), Experiment.share_tag, Experiment.id)
# A task's time limit, read from its stored spec; a spec stored without it (before submission
# normalised specs, or written by hand) has the spec model's default, as its parsed spec would.
_TIME_LIMIT = func.coalesce(Task.spec[("optimization", "timeout_per_iteration")].as_float(),
                            Optimization.model_fields["timeout_per_iteration"].default, type_=Float)
MAX_PAGE = 1024
_EPOCH = datetime(1970, 1, 1)


def epoch(moment: datetime) -> float:
    return (moment - _EPOCH).total_seconds()  # stored times are naive UTC


def from_epoch(seconds: float) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _smallest_need(*where: Any) -> Select:
    return (select(Experiment.gpus_needed).where(Experiment.state == ExperimentState.PENDING, *where)
            .order_by(Experiment.gpus_needed).limit(1))


# The GPU counts that waiting experiments need, by a recursive query that seeks the next larger
# count in ix_experiments_waiting until none is left (a loose index scan: a backlog of ten
# thousand experiments needing 1, 2, 4 or 8 GPUs costs five seeks).
_NEEDS = select(_smallest_need().scalar_subquery().label("need")).cte("needs", recursive=True)
_NEEDS = _NEEDS.union_all(select(_smallest_need(Experiment.gpus_needed > _NEEDS.c.need).scalar_subquery())
                          .where(_NEEDS.c.need.is_not(None)))
# A pass's first read, one round trip (built once): the pool's groups (ledger.GROUP_ROWS), the
# GPU counts waited for, and each task's queued and running experiments (task id, count).
_FIRST_READ = union_all(
    *ledger.GROUP_ROWS,
    ledger.tagged("need", cast(null(), String), _NEEDS.c.need).select_from(_NEEDS),
    ledger.tagged("task", cast(null(), String), Experiment.task_id, func.count())
    .where(Experiment.state.in_((ExperimentState.QUEUED, ExperimentState.RUNNING))).group_by(Experiment.task_id),
)


def _queue_rows(need: int, after: tuple[Any, ...] | None = None) -> Select:
    """Waiting experiments of running tasks needing `need` GPUs, after the order key `after`,
    with what a pass needs of their tasks."""
    query = (
        select(Experiment.priority, Experiment.share_tag, Experiment.id, Experiment.task_id,
               Experiment.promised_start, Experiment.expected_s, Experiment.gpus_needed, Experiment.attempt,
               Experiment.wait_reason, Task.max_parallel, Task.expected_experiment_s, _TIME_LIMIT.label("time_limit"))
        .join(Task, Task.id == Experiment.task_id)
        .where(Experiment.state == ExperimentState.PENDING, Experiment.gpus_needed == need,
               Task.status == TaskStatus.RUNNING)
    )
    if after is not None:
        neg_priority, tag, last = after
        priority = -neg_priority
        query = query.where(or_(
            Experiment.priority < priority,
            and_(Experiment.priority == priority, or_(
                Experiment.share_tag > tag, and_(Experiment.share_tag == tag, Experiment.id > last)))))
    return query.order_by(*QUEUE_ORDER)


@lru_cache(maxsize=64)
def _heads(needs: tuple[int, ...]) -> Select | CompoundSelect:
    """The first page of the queue of each of `needs` GPUs, in one statement, built once per set
    of GPU counts (the page sizes are its parameters `page_<need>`)."""
    heads = [select(_queue_rows(need).limit(bindparam(f"page_{need}", type_=Integer)).subquery()) for need in needs]
    return heads[0] if len(heads) == 1 else union_all(*heads)


class PassReader:
    """The data of one pass, read as the planner needs it (see the module's docstring)."""

    def __init__(self, session: Session, now: datetime, slip: float) -> None:
        self.session = session
        self.clock = Clock(now=epoch(now), durations={}, slip=slip)
        first = session.execute(_FIRST_READ).all()
        self.groups, self.capacity = ledger.group_states_of(first)
        self.needs = sorted(row.first for row in first if row.kind == "need" and row.first is not None)
        self.busy = {row.first: row.second for row in first if row.kind == "task"}  # task id -> queued or running
        self.queues: dict[int, Page] = {}
        self.page_sizes: dict[int, int] = {}
        self.room: dict[int, int] = {}
        self.ends: dict[str, list[tuple[float, int]]] = {}
        # What the pass writes reads these: every experiment read, as read (its attempt, its
        # wait reason, its promised start), and its task's time limit.
        self.read: dict[int, Row] = {}
        self.time_limits: dict[int, float] = {}

    @property
    def free_gpus(self) -> int:
        return sum(len(g.free) for g in self.groups if g.busy_slots < g.slots)

    def read_queues(self, free_gpus: int | None = None) -> None:
        """The first page of every GPU count's queue (as many as could start on `free_gpus`,
        by default the pool's, plus one), in one statement, and their tasks."""
        free = self.free_gpus if free_gpus is None else free_gpus
        self.page_sizes = pages = {need: max(1, min(free // need + 1, MAX_PAGE))
                                   for need in self.needs}
        if not pages:
            return
        first: dict[int, list[Waiting]] = {need: [] for need in pages}
        for row in self.session.execute(_heads(tuple(pages)), {f"page_{need}": page for need, page in pages.items()}):
            first[row.gpus_needed].append(self._waiting(row))
        for need, page in pages.items():
            items = sorted(first[need], key=lambda w: w.key)
            self.queues[need] = Page(items, complete=len(items) < page)

    def read_more(self, need: int) -> None:
        """The next page of one queue (four times the last, at most MAX_PAGE)."""
        queue = self.queues[need]
        self.page_sizes[need] = page = min(self.page_sizes[need] * 4, MAX_PAGE)
        rows = [self._waiting(row) for row in self.session.execute(
            _queue_rows(need, queue.items[-1].key).limit(page))]
        self.queues[need] = Page(queue.items + rows, complete=len(rows) < page)

    def _waiting(self, row: Row) -> Waiting:
        """A queue's row as the planner reads it; kept, with its task's room (its
        max_parallel_experiments less what it has queued or running), expected length and
        time limit, for the planner and for what the pass writes."""
        self.read[row.id] = row
        if row.task_id not in self.room:
            self.room[row.task_id] = row.max_parallel - self.busy.get(row.task_id, 0)
            self.time_limits[row.task_id] = row.time_limit
            self.clock.durations[row.task_id] = expected_length(None, row.expected_experiment_s, row.time_limit)
        return Waiting((-row.priority, row.share_tag, row.id), row.id, row.task_id,
                       epoch(row.promised_start) if row.promised_start else None, row.expected_s)

    def read_ends(self, groups: tuple[str, ...]) -> None:
        """When what runs in `groups` is expected to end: read only for the groups a
        reservation weighs, only in a pass that makes one."""
        wanted = sorted(set(groups) - self.ends.keys())
        running = self.session.execute(
            select(Experiment.group, Experiment.task_id, Experiment.started_at, Experiment.queued_at,
                   Experiment.gpus_needed, Experiment.expected_s)
            .where(Experiment.state.in_((ExperimentState.QUEUED, ExperimentState.RUNNING)),
                   Experiment.group.in_(wanted))
        ).all()
        unknown = sorted({row.task_id for row in running if row.expected_s is None} - self.clock.durations.keys())
        if unknown:  # running tasks with no experiment waiting at a queue's head
            for task_id, average, time_limit in self.session.execute(
                    select(Task.id, Task.expected_experiment_s, _TIME_LIMIT).where(Task.id.in_(unknown))):
                self.clock.durations[task_id] = expected_length(None, average, time_limit)
        now = from_epoch(self.clock.now)
        for group in wanted:
            self.ends[group] = []
        for group, task_id, started, queued, gpus, expected in running:
            since = started or queued or now
            self.ends[group].append((epoch(since) + self.clock.duration(task_id, expected), gpus))

    def groups_to_plan(self) -> list[GroupState]:
        """Fresh copies of the pool's groups (the planner plans into them), with the ends read."""
        return [GroupState(g.group, g.total_gpus, g.slots, g.busy_slots, list(g.free), list(self.ends.get(g.group, ())),
                           g.group in self.ends) for g in self.groups]

    def plan(self) -> Plan:
        """Plan the pass, reading what the planner asks for until it has what it needs."""
        self.read_queues()
        while True:
            try:
                return plan(self.queues, self.groups_to_plan(), self.capacity, self.clock, dict(self.room))
            except MoreData as more:
                if more.need is not None:
                    self.read_more(more.need)
                else:
                    self.read_ends(more.groups)
