"""What every runtime (way of starting an inference engine) provides.

A runtime turns one experiment (engine flavour, model, flags, GPUs) into a running
OpenAI-compatible server and back into nothing. The experiment job only talks to this
interface, so `docker`, `process` and `sim` are interchangeable and the job's
"always tear down" guarantee is written once.
"""
from __future__ import annotations

import abc
import time
import http.client
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

from app.domain.engines import EngineSpec, Launch


class EngineError(Exception):
    """An engine could not be started or died; the message is shown to the user and `kind`
    (one of app.domain.engines.FAILURE_KINDS) says why, for the UI and the strategies."""

    def __init__(self, message: str, kind: str = "engine_exited") -> None:
        super().__init__(message)
        self.kind = kind


class ExperimentCancelled(Exception):
    """The experiment was cancelled, or its attempt taken from this job (declared lost),
    while the job ran: stop the engine and record nothing as a result."""


@dataclass(frozen=True)
class EngineRequest:
    """Everything a runtime needs to start one engine.

    `launcher` is the registry entry that starts it (the engine itself, or the simulator
    speaking the engine's flags, `flavour`); `flags` is already an argv fragment
    (["--tp-size", "2", ...]), runtimes never build shell strings. `gpu_indices` are the
    device indices on this host allocated by the ledger.
    """

    experiment_id: int
    attempt: int
    launcher: EngineSpec
    flavour: str
    model: str
    flags: list[str]
    gpu_indices: list[int]
    image: str | None = None  # docker only: repository:tag
    sim: dict[str, Any] = field(default_factory=dict)  # simulator only: performance-model settings

    def sim_flags(self) -> list[str]:
        """The simulator's options from the task's sim section (what its model reads)."""
        flags: list[str] = []
        for key, flag in (("gpu", "--sim-gpu"), ("model_preset", "--sim-model-preset"),
                          ("time_scale", "--sim-time-scale"), ("startup_seconds", "--sim-startup-seconds")):
            if self.sim.get(key) is not None:
                flags += [flag, str(self.sim[key])]
        return flags

    def launch(self, host: str, port: int, extra: list[str] | None = None) -> Launch:
        """The argv template's values; the simulator also gets its task settings."""
        sim_extra: list[str] = []
        if self.launcher.simulated:
            sim_extra = [*self.sim_flags(), "--sim-launched-at", repr(time.time()), *(extra or [])]
        return Launch(model=self.model, host=host, port=port, num_gpus=len(self.gpu_indices),
                      flags=tuple(self.flags), flavour=self.flavour, extra=tuple(sim_extra))


@dataclass
class Deployment:
    """A started engine: where to reach it, what the runtime needs to stop it, and its
    `identity` (recorded on the attempt so a reaper can stop it if we cannot)."""

    base_url: str
    handle: Any
    runtime: str
    identity: dict[str, Any]
    health_path: str = "/health"
    simulated: bool = False


class Runtime(abc.ABC):
    name: str = "base"

    @abc.abstractmethod
    def start(self, request: EngineRequest) -> Deployment:
        """Start the engine and return at once (before it is ready)."""

    @abc.abstractmethod
    def stop(self, deployment: Deployment) -> None:
        """Stop the engine and free everything it holds; must be safe to call twice."""

    @abc.abstractmethod
    def logs(self, deployment: Deployment, tail: int = 200) -> str:
        """The last lines of the engine's output, for the experiment's record."""

    def is_alive(self, deployment: Deployment) -> bool:
        """False once the engine process or container has exited."""
        return True

    def exit_code(self, deployment: Deployment) -> int | None:
        """The engine's exit status once it has exited (None while it runs or if unknown)."""
        return None

    def startup_failure(self, deployment: Deployment) -> EngineError:
        """The engine exited before it was ready: say why, with its last log lines."""
        from app.domain.engines import classify_failure

        tail = self.logs(deployment, tail=30)
        code = self.exit_code(deployment)
        return EngineError(f"engine exited during start-up (exit status {code}):\n{tail}",
                           kind=classify_failure(tail, code))

    def healthy(self, deployment: Deployment, timeout: float = 5.0) -> bool:
        """One health check: True when the engine answers its health path with 200 in time.
        Asked between load levels, so an engine that is alive but no longer serving (hung,
        wedged on a dead NCCL peer) fails its experiment instead of skewing the next level."""
        parts = urllib.parse.urlsplit(deployment.base_url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request("GET", deployment.health_path)
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200
        except (http.client.HTTPException, OSError):
            return False
        finally:
            conn.close()

    def wait_ready(
        self,
        deployment: Deployment,
        timeout: float,
        should_stop: Callable[[], bool] = lambda: False,
        poll_interval: float = 0.02,
    ) -> None:
        """Ask the engine's health path until it answers 200 (every `poll_interval`; the
        simulator's path holds each answer until it is ready, up to a quarter second).

        Raises EngineError with the engine's last log lines if the engine exits or the
        timeout passes, and ExperimentCancelled when `should_stop()` turns true.
        """
        deadline = time.monotonic() + timeout
        parts = urllib.parse.urlsplit(deployment.base_url)
        conn: http.client.HTTPConnection | None = None
        try:
            while True:
                if should_stop():
                    raise ExperimentCancelled("cancelled while the engine was starting")
                if not self.is_alive(deployment):
                    raise self.startup_failure(deployment)
                try:
                    # One kept-alive connection: polling costs the engine (and us) little CPU.
                    conn = conn or http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
                    conn.request("GET", deployment.health_path)
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status == 200:
                        return
                except (http.client.HTTPException, OSError):
                    if conn is not None:
                        conn.close()
                    conn = None
                if time.monotonic() > deadline:
                    raise EngineError(f"engine not ready after {timeout:.0f}s:\n" + self.logs(deployment, tail=30),
                                      kind="startup_timeout")
                time.sleep(poll_interval)
        finally:
            if conn is not None:
                conn.close()
