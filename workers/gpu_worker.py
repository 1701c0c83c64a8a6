"""Start a GPU worker: a Celery worker pinned to one GPU group.

It consumes only `gpu.<group>`, runs at most `slots` experiments at once (the ledger's
bound; Celery's pool has spare processes for hand-overs), optionally splits each GPU into several slots (several small engines on one
large GPU), registers its GPUs in the ledger when ready, reaps engines that no live job
of this host owns (before taking work, then on every tick), heartbeats from a thread of the
main process, clears the quarantine of its GPUs once they are free again, and marks itself
offline on a clean shutdown.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid

from celery.signals import worker_ready, worker_shutdown

from app.config import get_settings, host_name
from app.celery_app import request_coordination, run_worker_process
from app.dispatch import CPU_GROUP_SUFFIX, is_cpu_group, queue_for
from app.store.migrate import upgrade
from app.store.pool import GpuSpec, PoolConflict, clear_quarantine, heartbeat, quarantined_gpus, register_worker, unregister
from workers.cpu_device import CPU_INDEX
from workers.gpu_discovery import busy_gpus
from workers.reaper import reap_engines

log = logging.getLogger(__name__)


def pool_size(slots: int) -> int:
    """Celery pool processes for a worker running `slots` experiments at once: one spare per
    four slots, at least one. With late acks and prefetch 1, a finishing job still holds its
    process (and its message) while it hands its GPUs on, so the job it places on them is
    fetched at once only if a process is spare, and experiments that end together (short
    ones on a large worker) need one each. The ledger, not Celery, bounds how many
    experiments run."""
    return slots + max(1, -(-slots // 4))


def default_group(host: str, gpus: list[GpuSpec]) -> str:
    if all(g.index == CPU_INDEX for g in gpus):
        return f"{host}{CPU_GROUP_SUFFIX}"
    kind = "sim" if all(g.simulated for g in gpus) else "gpu"
    return f"{host}-{kind}-" + "-".join(str(g.index) for g in gpus)


class _Membership:
    """Registration and heartbeat of this worker process, driven by Celery's signals."""

    def __init__(self, name: str, group: str, slots: int, gpus: list[GpuSpec], utilization,
                 slots_per_gpu: int = 1) -> None:
        self.name, self.group, self.slots, self.gpus = name, group, slots, gpus
        self.slots_per_gpu = slots_per_gpu
        self.utilization = utilization
        self.incarnation = uuid.uuid4().hex
        self.host = host_name()
        self._stop = threading.Event()

    def register(self) -> None:
        register_worker(
            self.name, self.group, self.host, queue_for(self.group), self.slots,
            self.gpus, self.incarnation, os.getpid(), slots_per_gpu=self.slots_per_gpu,
        )
        log.info("registered %s: group %s, %d GPU(s)%s, %d experiment(s) at once", self.name, self.group,
                 len(self.gpus), f" split into {self.slots_per_gpu} slots each" if self.slots_per_gpu > 1 else "",
                 self.slots)

    def on_ready(self, **_kwargs) -> None:
        threading.Thread(target=self._beat, name="autotuner-heartbeat", daemon=True).start()
        request_coordination(None)  # a new worker means free GPUs: let waiting work start

    def _beat(self) -> None:
        settings = get_settings()
        last_reap = time.monotonic()
        while not self._stop.wait(settings.heartbeat_interval):
            try:
                if not heartbeat(self.name, self.incarnation, self.utilization()):
                    log.error("worker %s was replaced by another process of the same name", self.name)
            except Exception:  # the database may be briefly unreachable; keep beating
                log.exception("heartbeat failed")
            if time.monotonic() - last_reap >= settings.tick_interval:
                last_reap = time.monotonic()
                self.housekeeping()

    def housekeeping(self) -> None:
        """Reap this host's orphaned engines and release GPUs that are free again."""
        try:
            reap_engines(self.host)
            self.release_quarantine()
        except Exception:  # the database or the Docker daemon may be briefly unreachable
            log.exception("engine reaper failed")

    def release_quarantine(self) -> None:
        real = [g.index for g in self.gpus if not g.simulated]
        held = quarantined_gpus(self.host, real) if real else []
        if not held:
            return
        still_busy = busy_gpus(held, get_settings().gpu_min_free_fraction, 1.0 / self.slots_per_gpu)
        for index in held:
            if index not in still_busy:
                clear_quarantine(self.host, index)
                log.info("GPU %s:%s is free again; quarantine cleared", self.host, index)

    def on_shutdown(self, **_kwargs) -> None:
        self._stop.set()
        try:
            unregister(self.name, self.incarnation)
        except Exception:
            log.exception("could not mark %s offline", self.name)


def run_worker(gpus: list[GpuSpec], group: str | None, slots: int | None, utilization=lambda: {}, loglevel: str = "INFO",
               slots_per_gpu: int = 1) -> None:
    """Block running the worker until it is stopped (SIGTERM / Ctrl-C). `slots_per_gpu` > 1
    splits each GPU between that many engines (each told to use its share of the memory)."""
    if not gpus:
        raise SystemExit("a GPU worker needs at least one GPU")
    if slots_per_gpu < 1:
        raise SystemExit(f"error: --slots-per-gpu must be at least 1, got {slots_per_gpu}")
    # Import the experiment code once here, before Celery forks its pool, so no child pays
    # for it while an experiment's GPUs are already allocated; it registers the job's task.
    import workers.experiment_job  # noqa: F401
    import workers.tasks  # noqa: F401 - registers the experiment job on the Celery app

    cpu = all(g.index == CPU_INDEX for g in gpus)
    if group and is_cpu_group(group) != cpu:
        raise SystemExit(f"error: --group {group}: a CPU device's group name ends in {CPU_GROUP_SUFFIX!r} "
                         f"and a GPU group's does not (the name gives its queue, {queue_for(group)})")
    upgrade()
    host = host_name()
    group = group or default_group(host, gpus)
    slots = slots or len(gpus) * slots_per_gpu
    name = f"{queue_for(group).split('.', 1)[0]}-{group}@{host}"
    member = _Membership(name, group, slots, gpus, utilization, slots_per_gpu)
    try:
        member.register()  # before consuming: a conflict stops us with one line, not a half-started worker
    except PoolConflict as exc:
        raise SystemExit(f"error: {exc}")
    # Engines a previous process of this host left behind are stopped before any work is
    # taken (registering has just fenced the GPUs of its experiments).
    member.housekeeping()
    worker_ready.connect(member.on_ready, weak=False)
    worker_shutdown.connect(member.on_shutdown, weak=False)
    run_worker_process([
        "-Q", queue_for(group), "-c", str(pool_size(slots)), "-n", name,
        "--loglevel", loglevel, "-E", "--without-gossip", "--without-mingle",
    ])
