"""The GPU pool as workers see it: registration, heartbeats, going offline.

A worker owns one GPU group. Registering makes its GPUs allocatable; a fresh incarnation
of the same worker name means the previous process is gone, so whatever that process was
running is declared lost (retried by the coordinator) before new work arrives.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from app.config import host_name
from app.store import ledger
from app.store.db import session_scope
from app.processes import pid_alive
from app.store.lifecycle import mark_lost
from app.domain.states import ExperimentState
from app.store.models import CPU_INDEX, Attempt, Experiment, Gpu, Task, Worker, utcnow


@dataclass(frozen=True)
class GpuSpec:
    """The facts about one GPU a worker reports (from NVML or simulated)."""

    index: int
    name: str
    memory_mb: int
    uuid: str
    simulated: bool
    utilization: float | None = None
    domain: str | None = None  # topology domain (workers/gpu_discovery.py); None: unknown


class PoolConflict(Exception):
    """Registering would give one GPU to two live workers, or run one worker twice."""


def _check_conflicts(session, name: str, host: str, pid: int, gpus: list[GpuSpec]) -> None:
    worker = session.get(Worker, name)
    local = host == host_name()  # only this host's pids can be checked
    if worker is not None and worker.online and local and worker.host == host and worker.pid != pid and pid_alive(worker.pid):
        raise PoolConflict(f"worker {name} is already running on this host (pid {worker.pid})")
    # Placement counts devices, it does not tell a CPU from a GPU: a pool is one or the other,
    # so no GPU engine is placed on a CPU device and no CPU experiment waits behind GPU ones.
    cpu = all(g.index == CPU_INDEX for g in gpus)
    other_kind = session.execute(select(Gpu.worker).join(Worker, Worker.name == Gpu.worker).where(
        Worker.online.is_(True), Gpu.online.is_(True), Gpu.worker != name,
        (Gpu.index != CPU_INDEX) if cpu else (Gpu.index == CPU_INDEX)).limit(1)).scalar_one_or_none()
    if other_kind is not None:
        mine, theirs = ("a CPU device", "GPUs") if cpu else ("GPUs", "a CPU device")
        raise PoolConflict(f"online worker {other_kind} offers {theirs}; a worker offering {mine} cannot join the "
                           "same pool (placement does not tell CPU and GPU devices apart): give it its own store")
    indices = [g.index for g in gpus]
    for gpu in session.execute(select(Gpu).where(Gpu.host == host, Gpu.index.in_(indices), Gpu.slot == 0)).scalars():
        other = session.get(Worker, gpu.worker)
        if gpu.worker != name and other is not None and other.online:
            raise PoolConflict(
                f"GPU {gpu.label} already belongs to online worker {other.name} (group {other.group}); "
                "give each worker its own GPUs (simulated ones: --first-gpu-index)"
            )


def register_worker(
    name: str, group: str, host: str, queue: str, slots: int, gpus: list[GpuSpec], incarnation: str, pid: int,
    slots_per_gpu: int = 1,
) -> None:
    """Make the worker's GPUs allocatable, each as `slots_per_gpu` ledger rows. Raises
    PoolConflict rather than let two live workers share a GPU."""
    if slots_per_gpu < 1:
        raise ValueError(f"slots per GPU must be >= 1, got {slots_per_gpu}")
    simulated = all(g.simulated for g in gpus)
    with session_scope() as session:
        ledger.lock(session)
        _check_conflicts(session, name, host, pid, gpus)
        worker = session.get(Worker, name)
        if worker is None:
            worker = Worker(name=name)
            session.add(worker)
        worker.group, worker.host, worker.queue, worker.slots = group, host, queue, slots
        worker.simulated, worker.online, worker.incarnation, worker.pid = simulated, True, incarnation, pid
        worker.started_at = worker.last_heartbeat = utcnow()
        # The rows this worker takes over, locked in the ledger's one order (id) like every
        # transaction that changes several GPU rows.
        known = {(g.index, g.slot): g for g in ledger.lock_gpus(session, Gpu.host == host,
                                                                Gpu.index.in_([spec.index for spec in gpus]))}
        for spec in gpus:
            for slot in range(slots_per_gpu):
                gpu = known.pop((spec.index, slot), None)
                if gpu is None:
                    gpu = Gpu(host=host, index=spec.index, slot=slot)
                    session.add(gpu)
                gpu.group, gpu.worker, gpu.name, gpu.memory_mb = group, name, spec.name, spec.memory_mb
                gpu.uuid, gpu.simulated, gpu.online, gpu.utilization = spec.uuid, spec.simulated, True, spec.utilization
                gpu.domain, gpu.slots = spec.domain, slots_per_gpu
        # Slots of an earlier start with more slots per GPU: kept for their history (and any
        # fence), never allocated again while the GPU is split fewer ways.
        for gpu in known.values():
            gpu.group, gpu.worker, gpu.slots, gpu.online = group, name, slots_per_gpu, False
        session.flush()
        # Experiments a previous incarnation of this worker was running died with it.
        orphaned = session.execute(
            select(Experiment)
            .join(Attempt, (Attempt.experiment_id == Experiment.id) & (Attempt.number == Experiment.attempt))
            .where(Experiment.state == ExperimentState.RUNNING, Attempt.worker == name)
        ).scalars()
        for exp in orphaned:
            mark_lost(session, exp, f"worker {name} restarted while running it")


def heartbeat(name: str, incarnation: str, utilization: dict[int, float] | None = None) -> bool:
    """Returns False when the row says another incarnation owns the name (we were replaced)."""
    with session_scope() as session:
        worker = session.get(Worker, name)
        if worker is None or worker.incarnation != incarnation:
            return False
        worker.last_heartbeat, worker.online = utcnow(), True
        utilization = utilization or {}
        for gpu in ledger.lock_gpus(session, Gpu.group == worker.group):
            gpu.online = gpu.slot < gpu.slots  # a retired slot (see register_worker) stays offline
            if gpu.host == worker.host and gpu.index in utilization:
                gpu.utilization = utilization[gpu.index]
        return True


def unregister(name: str, incarnation: str) -> None:
    """Graceful shutdown: stop allocating to this worker at once instead of after the
    heartbeat timeout."""
    with session_scope() as session:
        worker = session.get(Worker, name)
        if worker is None or worker.incarnation != incarnation:
            return
        worker.online = False
        others = session.execute(
            select(Worker).where(Worker.group == worker.group, Worker.online.is_(True), Worker.name != name)
        ).first()
        if others is None:
            for gpu in ledger.lock_gpus(session, Gpu.group == worker.group):
                gpu.online = False


@dataclass(frozen=True)
class EngineRecord:
    """An attempt on this host that may still have an engine, as the reaper sees it."""

    attempt_id: int
    experiment_id: int
    attempt: int
    state: str
    pid: int | None
    runtime: str
    identity: dict | None


def engines_to_check(host: str) -> list[EngineRecord]:
    """Attempts claimed on `host` whose engine is not yet known to be stopped."""
    with session_scope(readonly=True) as session:
        rows = session.execute(
            select(Attempt, Task.deployment_mode)
            .join(Experiment, Experiment.id == Attempt.experiment_id)
            .join(Task, Task.id == Experiment.task_id)
            .where(Attempt.host == host, Attempt.started_at.is_not(None), Attempt.engine_gone_at.is_(None))
        ).all()
        return [
            EngineRecord(att.id, att.experiment_id, att.number, att.state, att.pid,
                         (att.engine or {}).get("runtime") or mode, att.engine)
            for att, mode in rows
        ]


def attempt_owner(experiment_id: int, attempt: int) -> tuple[str, str | None, int | None] | None:
    """(state, host, pid) of one attempt, or None if there is no such attempt."""
    with session_scope(readonly=True) as session:
        row = session.execute(
            select(Attempt.state, Attempt.host, Attempt.pid)
            .where(Attempt.experiment_id == experiment_id, Attempt.number == attempt)
        ).one_or_none()
        return None if row is None else (row[0], row[1], row[2])


def quarantined_gpus(host: str, indices: list[int]) -> list[int]:
    """Indices among `indices` of this host that are quarantined."""
    with session_scope(readonly=True) as session:
        return list(session.execute(
            select(Gpu.index).distinct().where(Gpu.host == host, Gpu.index.in_(indices), Gpu.quarantined_at.is_not(None))
        ).scalars())


def parse_gpu_label(label: str) -> tuple[str, int]:
    """`host:index` or `host:index/slot` (a GPU's label on the pool page) -> (host, index):
    quarantine belongs to the physical GPU, so a slot's label names its GPU. ValueError if
    malformed."""
    host, sep, index = label.rpartition(":")
    index, slash, slot = index.partition("/")
    if slash and (not slot.isdigit() or len(slot) > 6):
        raise ValueError(f"{label!r} is not a GPU label (HOST:INDEX, as the pool page shows it)")
    if index == "cpu" and sep and host:
        return host, CPU_INDEX
    if not sep or not host or not index.isdigit() or len(index) > 6:
        raise ValueError(f"{label!r} is not a GPU label (HOST:INDEX, as the pool page shows it)")
    return host, int(index)


def clear_quarantine(host: str, index: int) -> bool:
    """Make a quarantined GPU allocatable again (the operator checked it, or its worker saw it
    free). Returns False when the GPU is not known."""
    with session_scope() as session:
        rows = ledger.lock_gpus(session, Gpu.host == host, Gpu.index == index)
        for gpu in rows:
            gpu.quarantined_at, gpu.quarantine_reason = None, None
        return bool(rows)
