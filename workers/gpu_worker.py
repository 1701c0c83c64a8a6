"""Start a GPU worker: a Celery worker pinned to one GPU group.

It consumes only `gpu.<group>`, runs at most `slots` experiments at once (Celery
concurrency), registers its GPUs in the ledger when ready, heartbeats from a thread of the
main process, and marks itself offline on a clean shutdown.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from celery.signals import worker_ready, worker_shutdown

from app.config import get_settings
from app.coordinator import queue_for
from app.dispatch import request_coordination
from app.migrate import upgrade
from app.pool import GpuSpec, PoolConflict, heartbeat, register_worker, unregister
from workers.celery_app import app as celery

log = logging.getLogger(__name__)


def default_group(host: str, gpus: list[GpuSpec]) -> str:
    kind = "sim" if all(g.simulated for g in gpus) else "gpu"
    return f"{host}-{kind}-" + "-".join(str(g.index) for g in gpus)


class _Membership:
    """Registration and heartbeat of this worker process, driven by Celery's signals."""

    def __init__(self, name: str, group: str, slots: int, gpus: list[GpuSpec], utilization) -> None:
        self.name, self.group, self.slots, self.gpus = name, group, slots, gpus
        self.utilization = utilization
        self.incarnation = uuid.uuid4().hex
        self.host = socket.gethostname()
        self._stop = threading.Event()

    def register(self) -> None:
        register_worker(
            self.name, self.group, self.host, queue_for(self.group), self.slots,
            self.gpus, self.incarnation, os.getpid(),
        )
        log.info("registered %s: group %s, %d GPU(s), %d slot(s)", self.name, self.group, len(self.gpus), self.slots)

    def on_ready(self, **_kwargs) -> None:
        threading.Thread(target=self._beat, name="autotuner-heartbeat", daemon=True).start()
        request_coordination(None)  # a new worker means free GPUs: let waiting work start

    def _beat(self) -> None:
        interval = get_settings().heartbeat_interval
        while not self._stop.wait(interval):
            try:
                if not heartbeat(self.name, self.incarnation, self.utilization()):
                    log.error("worker %s was replaced by another process of the same name", self.name)
            except Exception:  # the database may be briefly unreachable; keep beating
                log.exception("heartbeat failed")

    def on_shutdown(self, **_kwargs) -> None:
        self._stop.set()
        try:
            unregister(self.name, self.incarnation)
        except Exception:
            log.exception("could not mark %s offline", self.name)


def run_worker(gpus: list[GpuSpec], group: str | None, slots: int | None, utilization=lambda: {}, loglevel: str = "INFO") -> None:
    """Block running the worker until it is stopped (SIGTERM / Ctrl-C)."""
    if not gpus:
        raise SystemExit("a GPU worker needs at least one GPU")
    # Import the experiment code once here, before Celery forks its pool, so no child pays
    # for it while an experiment's GPUs are already allocated.
    import workers.experiment_job  # noqa: F401

    upgrade()
    host = socket.gethostname()
    group = group or default_group(host, gpus)
    slots = slots or len(gpus)
    name = f"gpu-{group}@{host}"
    member = _Membership(name, group, slots, gpus, utilization)
    try:
        member.register()  # before consuming: a conflict stops us with one line, not a half-started worker
    except PoolConflict as exc:
        raise SystemExit(f"error: {exc}")
    worker_ready.connect(member.on_ready, weak=False)
    worker_shutdown.connect(member.on_shutdown, weak=False)
    celery.worker_main([
        "worker", "-Q", queue_for(group), "-c", str(slots), "-n", name,
        "--loglevel", loglevel, "-E", "--without-gossip", "--without-mingle",
    ])


def run_coordinator(concurrency: int = 2, loglevel: str = "INFO") -> None:
    """The control worker: coordinator and tick jobs, with the periodic tick (beat) in-process."""
    settings = get_settings()
    upgrade()
    settings.home.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    worker_ready.connect(lambda **_: request_coordination(None), weak=False)
    celery.worker_main([
        "worker", "-Q", "control", "-c", str(concurrency), "-n", f"coordinator-{os.getpid()}@{host}",
        "--loglevel", loglevel, "-E", "-B", "--without-gossip", "--without-mingle",
        "--schedule", str(settings.home / f"celerybeat-schedule-{os.getpid()}"),
    ])
