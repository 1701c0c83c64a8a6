"""How engines are started: `docker` (a container) and `process` (a local subprocess).

`deployment_mode: sim` is the process runtime with the simulated engine as the launcher;
what starts (argv, image, health path) comes from the engine registry (app.domain.engines).
"""
from __future__ import annotations

from workers.runtimes.base import Runtime


def get_runtime(mode: str) -> Runtime:
    if mode in ("process", "sim"):
        from workers.runtimes.process import ProcessRuntime

        return ProcessRuntime(name=mode)
    if mode == "docker":
        from workers.runtimes.docker_runtime import DockerRuntime

        return DockerRuntime()
    raise ValueError(f"deployment mode {mode!r} cannot be run by this system (use docker, process or sim)")
