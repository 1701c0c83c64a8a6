"""The engine reaper of one host: stop engines that no live job owns, by recorded identity.

Why here and not in the coordinator: a process group or a container can only be signalled on
the host it runs on, so every GPU worker reaps its own host when it starts (before it takes
work) and then on every tick of its heartbeat thread. An engine is reaped when its attempt
is no longer running, or is running on a pool process of this host that has died; stopping
it is confirmed to the store, which hands the attempt's fenced GPUs on. The embedded
supervisor (workers.runtimes.supervisor) already stops process engines when their job dies;
the reaper is the second line, and the only one for containers, which the Docker daemon
keeps alive whatever happens to the worker.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from app.processes import pid_alive
from app.store import lifecycle, pool
from app.domain.states import ExperimentState
from workers.runtimes import procs

log = logging.getLogger(__name__)


def _job_alive(state: str, pid: int | None) -> bool:
    return state == ExperimentState.RUNNING and pid_alive(pid)


def _docker() -> Any | None:
    """The Docker runtime when this host can have containers, else None (no daemon socket)."""
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return None
    from workers.runtimes.docker_runtime import DockerRuntime

    return DockerRuntime()


def reap_engines(host: str, docker: Any | None = None, scan_containers: bool = True) -> list[str]:
    """Stop every engine of `host` whose job is gone; returns what was stopped, in words.

    `scan_containers` also looks for labelled containers whose id was never recorded (a
    crash between `docker run` and the record)."""
    stopped: list[str] = []
    docker = docker if docker is not None else _docker()
    for rec in pool.engines_to_check(host):
        if _job_alive(rec.state, rec.pid):
            continue
        gone = _stop(rec, docker)
        if gone:
            lifecycle.engine_stopped(rec.attempt_id)
            stopped.append(f"experiment {rec.experiment_id} attempt {rec.attempt} ({rec.runtime})")
        else:
            log.warning("could not stop the engine of experiment %s attempt %s yet (%s); its GPUs stay fenced",
                        rec.experiment_id, rec.attempt, rec.identity)
    if docker is not None and scan_containers:
        stopped += _unrecorded_containers(host, docker)
    for item in stopped:
        log.warning("reaped the engine of %s: its job is gone", item)
    return stopped


def _stop(rec: pool.EngineRecord, docker: Any | None) -> bool:
    identity = rec.identity or {}
    if rec.runtime == "docker":
        if docker is None:
            return False
        if identity.get("container"):
            return bool(docker.remove_container(identity["container"]))
        return _remove_labelled(docker, rec.experiment_id, rec.attempt)
    if identity.get("pgid"):
        return procs.stop_group(identity)
    # A process engine never recorded: the job died before or while starting it, and the
    # supervisor dies with the job, taking the engine with it.
    return True


def _remove_labelled(docker: Any, experiment_id: int, attempt: int) -> bool:
    try:
        containers = docker.managed_containers()
    except Exception as exc:  # the daemon is down: try again next tick
        log.warning("cannot list containers: %s", exc)
        return False
    return all(docker.remove_container(cid) for cid, exp, att in containers if (exp, att) == (experiment_id, attempt))


def _unrecorded_containers(host: str, docker: Any) -> list[str]:
    """Containers of this store whose attempt is not running on a live job of this host."""
    try:
        containers = docker.managed_containers()
    except Exception as exc:  # noqa: BLE001 - no daemon here after all: nothing to scan
        log.debug("container scan skipped: %s", exc)
        return []
    removed = []
    for container_id, experiment_id, attempt in containers:
        owner = pool.attempt_owner(experiment_id, attempt) if experiment_id and attempt else None
        if owner is not None and owner[0] == ExperimentState.RUNNING and (owner[1] != host or pid_alive(owner[2])):
            continue  # a live job here, or a job of another host sharing this daemon: not ours to judge
        if docker.remove_container(container_id):
            removed.append(f"container {container_id[:12]} (experiment {experiment_id} attempt {attempt})")
    return removed
