"""The GPU ledger: which GPU is held by which experiment, and who gets free GPUs next.

Correctness comes from the data, not from care in the callers:
- `gpus.held_by` is one column, so a GPU has one holder at most;
- an experiment's GPUs are taken with one conditional UPDATE (`... WHERE held_by IS NULL`)
  whose row count must equal the number asked for, else the whole transaction rolls back
  (all or nothing);
- GPUs are released in the same transaction that records the experiment's end, so a
  finished experiment cannot keep its GPUs.

Order is FIFO with one reservation: waiting experiments are served oldest first; when the
oldest cannot be placed, the group it will start on is reserved for it and younger
experiments may only backfill *other* groups, so a stream of 1-GPU experiments cannot
starve a waiting 4-GPU one.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from app.domain.states import ExperimentState
from app.store.models import Attempt, Gpu, GpuAllocation, Lock, Worker, utcnow


class LedgerConflict(Exception):
    """A GPU we meant to take was already held: the transaction must roll back."""


@dataclass
class FreeGpu:
    id: int
    index: int
    utilization: float = 0.0


@dataclass
class GroupState:
    """What the planner needs to know about one worker group right now."""

    group: str
    total_gpus: int
    slots: int
    busy_slots: int
    free: list[FreeGpu] = field(default_factory=list)

    def can_host(self, need: int) -> bool:
        return self.busy_slots < self.slots and len(self.free) >= need


@dataclass(frozen=True)
class Placement:
    experiment_id: int
    group: str
    gpu_ids: tuple[int, ...]


@dataclass
class Plan:
    placements: list[Placement]
    waiting: dict[int, str]  # experiment id -> why it waits
    impossible: dict[int, str]  # experiment id -> why no registered group can ever host it


def pick_gpus(free: list[FreeGpu], need: int) -> list[FreeGpu]:
    """Prefer a run of neighbouring indices (on one board they share the fastest links),
    and among those the least utilised; else the least utilised GPUs."""
    by_index = sorted(free, key=lambda g: g.index)
    windows = [
        by_index[i : i + need]
        for i in range(len(by_index) - need + 1)
        if by_index[i + need - 1].index - by_index[i].index == need - 1
    ]
    if windows:
        return min(windows, key=lambda w: (sum(g.utilization for g in w), w[0].index))
    return sorted(free, key=lambda g: (g.utilization, g.index))[:need]


def plan(waiting: list[tuple[int, int]], groups: list[GroupState], capacity: dict[str, int]) -> Plan:
    """Decide placements for `waiting` [(experiment id, GPUs needed)] in FIFO order.

    `capacity` is the size of every registered group, online or not: an experiment larger
    than all of them can never run and is reported as impossible rather than waiting forever.
    Mutates nothing it is given except the `groups` it plans into.
    """
    placements: list[Placement] = []
    reasons: dict[int, str] = {}
    impossible: dict[int, str] = {}
    reserved: str | None = None
    largest = max(capacity.values(), default=0)
    for exp_id, need in waiting:
        if not capacity:
            reasons[exp_id] = "waiting for a GPU worker to register"
            continue
        if need > largest:
            impossible[exp_id] = (
                f"needs {need} GPUs but the largest worker group has {largest}; "
                "start a worker with more GPUs in one group"
            )
            continue
        fits = [g for g in groups if g.group != reserved and g.can_host(need)]
        if fits:
            # Best fit: the group left with the fewest free GPUs keeps big holes for big jobs.
            chosen = min(fits, key=lambda g: (len(g.free) - need, g.group))
            taken = pick_gpus(chosen.free, need)
            taken_ids = {g.id for g in taken}
            chosen.free = [g for g in chosen.free if g.id not in taken_ids]
            chosen.busy_slots += 1
            placements.append(Placement(exp_id, chosen.group, tuple(sorted(taken_ids))))
            continue
        if reserved is None:
            candidates = [g for g in groups if g.total_gpus >= need and g.slots > 0]
            if candidates:
                reserved = max(candidates, key=lambda g: (len(g.free), g.group)).group
                reasons[exp_id] = f"waiting for {need} free GPU(s); group {reserved} is reserved for it"
                continue
        reasons[exp_id] = (
            f"waiting for {need} free GPU(s)"
            if any(g.total_gpus >= need for g in groups)
            else f"waiting for an online worker group with {need} GPU(s)"
        )
    return Plan(placements, reasons, impossible)


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


def take(session: Session, experiment_id: int, attempt: int, gpu_ids: tuple[int, ...]) -> list[Gpu]:
    """Give all of `gpu_ids` to the experiment or raise LedgerConflict (nothing taken)."""
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
    fenced = list(session.execute(select(Gpu).where(Gpu.fenced_by.in_(attempt_ids)).order_by(Gpu.id)).scalars())
    if fenced:
        return [g.label for g in fenced]
    session.execute(update(Gpu).where(Gpu.held_by.in_(experiment_ids)).values(held_by=None)
                    .execution_options(synchronize_session=False))
    session.execute(delete(GpuAllocation).where(GpuAllocation.experiment_id.in_(experiment_ids))
                    .execution_options(synchronize_session=False))
    return []


def unfence(session: Session, attempt_id: int) -> None:
    """The attempt's engine is gone: its GPUs may be handed on."""
    session.execute(
        update(Gpu).where(Gpu.fenced_by == attempt_id).values(fenced_by=None, fenced_at=None)
        .execution_options(synchronize_session=False)
    )


def expire_fences(session: Session, older_than: datetime) -> list[tuple[str, int]]:
    """Hand on GPUs whose engine nobody could confirm stopped within the timeout (its host
    is unreachable, so no reaper runs there); returns (GPU label, attempt id) pairs so the
    caller can log each one."""
    expired = []
    for gpu in session.execute(
        select(Gpu).where(Gpu.fenced_by.is_not(None), Gpu.fenced_at < older_than).order_by(Gpu.id)
    ).scalars():
        expired.append((gpu.label, gpu.fenced_by))
        gpu.fenced_by, gpu.fenced_at = None, None
    return expired
