"""The GPU ledger: which GPU is held by which experiment, and who gets free GPUs next.

Correctness comes from the data, not from care in the callers:
- `gpus.held_by` is one column, so a GPU has one holder at most;
- an experiment's GPUs are taken with one conditional UPDATE (`... WHERE held_by IS NULL`)
  whose row count must equal the number asked for, else the whole transaction rolls back
  (all or nothing);
- GPUs are released in the same transaction that records the experiment's end, so a
  finished experiment cannot keep its GPUs.

Placement itself (FIFO with one reservation, best fit, neighbouring GPUs) is the pure
function `app.domain.placement.plan`; this module reads its input from the store and
applies its decisions.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from app.domain.placement import FreeGpu, GroupState
from app.domain.states import ExperimentState
from app.store.models import Attempt, Gpu, GpuAllocation, Lock, Worker, utcnow


class LedgerConflict(Exception):
    """A GPU we meant to take was already held: the transaction must roll back."""


def lock(session: Session, name: str = "scheduler") -> None:
    """Serialise a critical section across processes (FOR UPDATE; IMMEDIATE on SQLite)."""
    session.execute(select(Lock).where(Lock.name == name).with_for_update()).scalar_one()


def group_states(session: Session) -> tuple[list[GroupState], dict[str, int]]:
    """Online groups with their free GPUs and busy slots, plus every group's size."""
    capacity: dict[str, int] = defaultdict(int)
    for group, count in session.execute(select(Gpu.group, func.count()).group_by(Gpu.group)):
        capacity[group] = count
    slots: dict[str, int] = defaultdict(int)
    for group, total in session.execute(
        select(Worker.group, func.sum(Worker.slots)).where(Worker.online.is_(True)).group_by(Worker.group)
    ):
        slots[group] = int(total or 0)
    from app.store.models import Experiment  # local: the model module imports nothing from here

    busy: dict[str, int] = defaultdict(int)
    for group, count in session.execute(
        select(Experiment.group, func.count())
        .where(Experiment.state.in_((ExperimentState.QUEUED, ExperimentState.RUNNING)))
        .group_by(Experiment.group)
    ):
        busy[group] = count
    online: dict[str, GroupState] = {}
    for gpu in session.execute(select(Gpu).where(Gpu.online.is_(True)).order_by(Gpu.index)).scalars():
        if gpu.group not in slots:
            continue
        state = online.setdefault(
            gpu.group, GroupState(gpu.group, 0, slots[gpu.group], busy[gpu.group])
        )
        state.total_gpus += 1
        if gpu.held_by is None and gpu.fenced_by is None and gpu.quarantined_at is None:
            state.free.append(FreeGpu(gpu.id, gpu.index, gpu.utilization or 0.0))
    return list(online.values()), dict(capacity)


def lock_gpus(session: Session, *where: Any) -> list[Gpu]:
    """The GPU rows matching `where`, row-locked in id order. Every transaction that changes
    several GPU rows locks them through here first, so all take their locks in one order and
    two of them (a worker's heartbeat and the scheduler) cannot deadlock on PostgreSQL.
    (SQLite serialises writing transactions anyway.)"""
    return list(session.execute(select(Gpu).where(*where).order_by(Gpu.id).with_for_update()).scalars())


def take(session: Session, experiment_id: int, attempt: int, gpu_ids: tuple[int, ...]) -> list[Gpu]:
    """Give all of `gpu_ids` to the experiment or raise LedgerConflict (nothing taken)."""
    lock_gpus(session, Gpu.id.in_(gpu_ids))
    result = session.execute(
        update(Gpu)
        .where(Gpu.id.in_(gpu_ids), Gpu.held_by.is_(None), Gpu.fenced_by.is_(None), Gpu.quarantined_at.is_(None))
        .values(held_by=experiment_id)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != len(gpu_ids):
        raise LedgerConflict(f"experiment {experiment_id}: GPUs {gpu_ids} are no longer all free")
    now = utcnow()
    session.add_all(
        GpuAllocation(gpu_id=g, experiment_id=experiment_id, attempt=attempt, allocated_at=now)
        for g in gpu_ids
    )
    return list(session.execute(select(Gpu).where(Gpu.id.in_(gpu_ids)).order_by(Gpu.index)).scalars())


def release(session: Session, experiment_id: int, fence: int | None = None) -> None:
    """Free every GPU the experiment holds and close its allocation intervals.

    `fence` is the id of an attempt whose engine may still be running on these GPUs: they
    leave the experiment but are not allocatable until `unfence` (the reaper confirmed the
    engine gone) or `expire_fences` (a bounded timeout) runs."""
    now = utcnow()
    values: dict = {"held_by": None}
    if fence is not None:
        values.update(fenced_by=fence, fenced_at=now)
    lock_gpus(session, Gpu.held_by == experiment_id)
    session.execute(
        update(Gpu)
        .where(Gpu.held_by == experiment_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(GpuAllocation)
        .where(GpuAllocation.experiment_id == experiment_id, GpuAllocation.released_at.is_(None))
        .values(released_at=now)
        .execution_options(synchronize_session=False)
    )


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
