"""The GPU ledger: which GPU is held by which experiment, and who gets free GPUs next.

Correctness comes from the data, not from care in the callers:
- `gpus.held_by` is one column, so a GPU has one holder at most;
- an experiment's GPUs are taken under row locks (taken in id order) after checking that
  every one is still free, else the whole transaction rolls back (all or nothing);
- GPUs are released in the same transaction that records the experiment's end, so a
  finished experiment cannot keep its GPUs.

Placement itself (priority, then fair-share order, one reservation with backfill, best fit,
neighbouring GPUs) is the pure function `app.domain.placement.plan`; this module reads its
input from the store and applies its decisions.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import (ColumnElement, Float, Row, Select, String, bindparam, case, cast, delete, func, insert, literal,
                        null, select, union_all, update)
from sqlalchemy.orm import Session

from app.domain.placement import FreeGpu, GroupState
from app.domain.states import ExperimentState
from app.store.models import Attempt, Experiment, Gpu, GpuAllocation, Lock, Worker, gpu_label, utcnow


class LedgerConflict(Exception):
    """A GPU we meant to take was already held: the transaction must roll back."""


class GrantedTwice(RuntimeError):
    """A pass granted one GPU to two experiments: a bug of the planner, not a race (a pass that
    retried on it would meet it again every time); the transaction must roll back and the
    error be seen."""


@dataclass(frozen=True)
class Held:
    """A named lock the transaction holds, with the value its row kept when it was taken."""

    name: str
    value: float | None


_locks, _gpus, _allocations = Lock.__table__, Gpu.__table__, GpuAllocation.__table__
_LOCK = select(_locks.c.value).where(_locks.c.name == bindparam("lock")).with_for_update()


def lock(session: Session, name: str = "scheduler") -> Held:
    """Serialise a critical section across processes (FOR UPDATE; IMMEDIATE on SQLite).
    The row's `value` is state its holder may keep there (`keep`)."""
    return Held(name, session.execute(_LOCK, {"lock": name}).scalar_one())


def keep(session: Session, held: Held, value: float | ColumnElement[float]) -> None:
    """Store `value` in the row of a lock the transaction holds: a number, or an SQL
    expression worked out by the same statement (no round trip of its own)."""
    session.execute(update(_locks).where(_locks.c.name == held.name).values(value=value))


_NO_FLOAT, _NO_TEXT = cast(null(), Float), cast(null(), String)


def tagged(kind: str, group: Any, first: Any, second: Any = literal(0), utilization: Any = _NO_FLOAT,
           domain: Any = _NO_TEXT) -> Select:
    """One kind of row of a pass's first read (`GROUP_ROWS`), in the shape they all share:
    (kind, group, first, second, utilization, domain)."""
    return select(literal(kind).label("kind"), group.label("group"), first.label("first"), second.label("second"),
                  utilization.label("utilization"), domain.label("domain"))


# Physical GPUs (slot 0 of each: a GPU split into slots has one row per slot) and how many are
# online, online workers' slots, experiments holding slots, and the free GPUs (id, index): what
# `group_states` reads, in one statement (built once), each row tagged with what it is. A
# pass adds rows of its own to the same statement (app.store.passes).
GROUP_ROWS = (
    tagged("gpus", Gpu.group, func.count(), func.sum(case((Gpu.online.is_(True), 1), else_=0)))
    .where(Gpu.slot == 0).group_by(Gpu.group),
    tagged("slots", Worker.group, func.sum(Worker.slots)).where(Worker.online.is_(True)).group_by(Worker.group),
    tagged("busy", Experiment.group, func.count())
    .where(Experiment.state.in_((ExperimentState.QUEUED, ExperimentState.RUNNING))).group_by(Experiment.group),
    tagged("free", Gpu.group, Gpu.id, Gpu.index, Gpu.utilization, Gpu.domain)
    .where(Gpu.online.is_(True), Gpu.held_by.is_(None), Gpu.fenced_by.is_(None), Gpu.quarantined_at.is_(None)),
)
_GROUP_STATES = union_all(*GROUP_ROWS)


def group_states(session: Session) -> tuple[list[GroupState], dict[str, int]]:
    """Online groups with their free GPUs (free slots of GPUs, where GPUs are split) and busy
    slots, plus every group's size in physical GPUs, in one round trip: grouped counts, and
    only the free GPUs row by row, so a pass over a busy pool of a thousand GPUs reads almost
    none."""
    return group_states_of(session.execute(_GROUP_STATES))


def group_states_of(rows: Iterable[Row]) -> tuple[list[GroupState], dict[str, int]]:
    """`group_states` from the rows of a statement that has `GROUP_ROWS` among its parts
    (rows of other kinds are left out)."""
    capacity: dict[str, int] = {}
    online_gpus: dict[str, int] = {}
    slots: dict[str, int] = defaultdict(int)
    busy: dict[str, int] = defaultdict(int)
    free: list[tuple[int, int, str, FreeGpu]] = []
    for kind, group, first, second, utilization, domain in rows:
        if kind == "gpus":
            capacity[group], online_gpus[group] = int(first), int(second or 0)
        elif kind == "slots":
            slots[group] = int(first or 0)
        elif kind == "busy":
            busy[group] = int(first)
        elif kind == "free":  # its id and index
            free.append((second, first, group, FreeGpu(first, second, utilization or 0.0, domain)))
    online = {g: GroupState(g, online_gpus[g], slots[g], busy[g]) for g in slots if online_gpus.get(g)}
    for _index, _id, group, gpu in sorted(free, key=lambda f: f[:2]):  # by index, then id
        if group in online:
            online[group].free.append(gpu)
    return list(online.values()), capacity


def lock_gpus(session: Session, *where: Any) -> list[Gpu]:
    """The GPU rows matching `where`, row-locked in id order and read afresh. Every
    transaction that changes several GPU rows locks them through here first, so all take
    their locks in one order and two of them (a worker's heartbeat and the scheduler) cannot
    deadlock on PostgreSQL. (SQLite serialises writing transactions anyway.)"""
    return list(session.execute(select(Gpu).where(*where).order_by(Gpu.id).with_for_update()
                                .execution_options(populate_existing=True)).scalars())


Grant = tuple[int, int, tuple[int, ...]]  # (experiment id, attempt, GPU ids)

_CHUNK = 500  # ids per IN list: far below every database's limit on bound parameters


def _locked_in_order(*where: Any) -> Select:
    """The ids of the GPU rows matching `where`, locked in id order (the ledger's one order,
    see `lock_gpus`), for an UPDATE of those rows to name: it changes them in the statement
    that locks them, one round trip. (Core statements on the ledger's hot path: the caller
    flushes the ORM's pending changes first, so the rows they lock are locked before the
    GPUs', as when the ORM flushed them itself before a statement.)"""
    return select(_gpus.c.id).where(*where).order_by(_gpus.c.id).with_for_update().correlate(None)


def take_all(session: Session, grants: list[Grant]) -> dict[int, list[str]]:
    """Give every grant all of its GPUs, or raise LedgerConflict (the caller's transaction
    must roll back: nothing is taken; GrantedTwice for a pass that named a GPU twice). The
    rows are locked in id order and given, when free, in one UPDATE that returns those it
    gave: one that was no longer free is missing from them. A pass placing a thousand
    experiments costs a few statements, not thousands. Returns each experiment's GPU labels in
    index order."""
    wanted = sorted(gpu_id for _, _, gpu_ids in grants for gpu_id in gpu_ids)
    if len(wanted) != len(set(wanted)):
        raise GrantedTwice(f"a pass granted GPUs {sorted({g for g in wanted if wanted.count(g) > 1})} twice")
    session.flush()
    holder = {gpu_id: experiment_id for experiment_id, _, gpu_ids in grants for gpu_id in gpu_ids}
    rows: dict[int, Row] = {}
    for i in range(0, len(wanted), _CHUNK):
        chunk = wanted[i:i + _CHUNK]
        held_by = (literal(holder[chunk[0]]) if len({holder[g] for g in chunk}) == 1
                   else case({g: holder[g] for g in chunk}, value=_gpus.c.id))
        rows.update((row.id, row) for row in session.execute(
            update(_gpus)
            .where(_gpus.c.id.in_(_locked_in_order(_gpus.c.id.in_(chunk))), _gpus.c.held_by.is_(None),
                   _gpus.c.fenced_by.is_(None), _gpus.c.quarantined_at.is_(None))
            .values(held_by=held_by)
            .returning(_gpus.c.id, _gpus.c.host, _gpus.c.index, _gpus.c.slot, _gpus.c.slots)))
    gone = [i for i in wanted if i not in rows]
    if gone:
        raise LedgerConflict(f"GPUs {gone} are no longer all free")
    now = utcnow()
    allocations = [dict(gpu_id=gpu_id, experiment_id=experiment_id, attempt=attempt, allocated_at=now)
                   for experiment_id, attempt, gpu_ids in grants for gpu_id in gpu_ids]
    if allocations:
        session.execute(insert(_allocations), allocations)
    return {experiment_id: [gpu_label(r.host, r.index, r.slot, r.slots)
                            for r in sorted((rows[i] for i in gpu_ids), key=lambda r: r.index)]
            for experiment_id, _, gpu_ids in grants}


def take(session: Session, experiment_id: int, attempt: int, gpu_ids: tuple[int, ...]) -> list[str]:
    """Give all of `gpu_ids` to the experiment or raise LedgerConflict (nothing taken)."""
    return take_all(session, [(experiment_id, attempt, tuple(gpu_ids))])[experiment_id]


_HOLDER = bindparam("holder")
_RELEASE = update(_gpus).where(_gpus.c.id.in_(_locked_in_order(_gpus.c.held_by == _HOLDER)), _gpus.c.held_by == _HOLDER)
_CLOSE = update(_allocations).where(_allocations.c.experiment_id == _HOLDER, _allocations.c.released_at.is_(None))


def release(session: Session, experiment_id: int, fence: int | None = None) -> None:
    """Free every GPU the experiment holds and close its allocation intervals.

    `fence` is the id of an attempt whose engine may still be running on these GPUs: they
    leave the experiment but are not allocatable until `unfence` (the reaper confirmed the
    engine gone) or `expire_fences` (a bounded timeout) runs."""
    now = utcnow()
    values: dict[str, Any] = {"holder": experiment_id, "held_by": None}
    if fence is not None:
        values.update(fenced_by=fence, fenced_at=now)
    session.flush()
    session.execute(_RELEASE, values)
    session.execute(_CLOSE, {"holder": experiment_id, "released_at": now})


def forget(session: Session, experiment_ids: Select) -> list[str]:
    """Deleting experiments (`experiment_ids`: a SELECT of their ids): no GPU may stay held by
    one (it would never be free again) and their allocation history goes with them. GPUs
    still fenced for one of their attempts are not touched; their labels come back, and the
    caller must refuse to delete (an engine there is not yet known to be stopped)."""
    attempt_ids = select(Attempt.id).where(Attempt.experiment_id.in_(experiment_ids))
    fenced = [g for g in lock_gpus(session, Gpu.fenced_by.in_(attempt_ids) | Gpu.held_by.in_(experiment_ids))
              if g.fenced_by is not None]
    if fenced:
        return [g.label for g in fenced]
    session.execute(update(Gpu).where(Gpu.held_by.in_(experiment_ids)).values(held_by=None)
                    .execution_options(synchronize_session=False))
    session.execute(delete(GpuAllocation).where(GpuAllocation.experiment_id.in_(experiment_ids))
                    .execution_options(synchronize_session=False))
    return []


def unfence(session: Session, attempt_id: int) -> None:
    """The attempt's engine is gone: its GPUs may be handed on."""
    lock_gpus(session, Gpu.fenced_by == attempt_id)
    session.execute(
        update(Gpu).where(Gpu.fenced_by == attempt_id).values(fenced_by=None, fenced_at=None)
        .execution_options(synchronize_session=False)
    )


def expire_fences(session: Session, older_than: datetime) -> list[tuple[str, int]]:
    """Hand on GPUs whose engine nobody could confirm stopped within the timeout (its host
    is unreachable, so no reaper runs there); returns (GPU label, attempt id) pairs so the
    caller can log each one."""
    expired = []
    for gpu in lock_gpus(session, Gpu.fenced_by.is_not(None), Gpu.fenced_at < older_than):
        expired.append((gpu.label, gpu.fenced_by))
        gpu.fenced_by, gpu.fenced_at = None, None
    return expired
