"""How engines are started: `docker`, `process` (a local subprocess) and `sim`."""
from __future__ import annotations

from workers.runtimes.base import Runtime


def get_runtime(mode: str) -> Runtime:
    if mode == "sim":
        from workers.runtimes.sim import SimRuntime

        return SimRuntime()
    if mode == "process":
        from workers.runtimes.process import ProcessRuntime

        return ProcessRuntime()
    if mode == "docker":
        from workers.runtimes.docker_runtime import DockerRuntime

        return DockerRuntime()
    raise ValueError(f"deployment mode {mode!r} cannot be run by this system (use docker, process or sim)")
