"""The engine as a local subprocess, in its own process group, on exactly its GPUs (or its
CPU device's CPUs, workers/cpu_device.py).

The command is an argv list (no shell); `CUDA_VISIBLE_DEVICES` pins the GPUs (and hides
them from an engine on a CPU device, which its supervisor pins to the device's CPUs); the
environment is an allow-list (workers.runtimes.environment). The engine runs under a small
supervisor (workers.runtimes.supervisor) that leads its process group and takes the whole
group down when this worker process dies, so an engine never outlives its experiment even
when the worker is killed; the group's identity is recorded for the reaper as well. The
simulated engine is forked, supervisor and all, by a fork server that has imported it once
(workers.runtimes.forkserver), with the same guarantees at a fraction of the CPU.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from app.processes import free_port
from app.tools.llamacpp.build import server_executable
from workers.cpu_device import CPU_INDEX, device_cpus
from workers.runtimes import forkserver
from workers.runtimes.base import Deployment, EngineError, EngineRequest, Runtime
from workers.runtimes.forkserver import ForkedProcess
from workers.runtimes.environment import engine_environment
from workers.runtimes.procs import process_identity, stop_group

STOP_GRACE_S = 10.0
SUPERVISOR = Path(__file__).resolve().with_name("supervisor.py")


@dataclass
class ProcessHandle:
    proc: subprocess.Popen | ForkedProcess
    log_path: Path
    identity: dict


class ProcessRuntime(Runtime):
    """Runs the launcher's process command (a real engine, an operator's server, or the
    simulator: `deployment_mode: sim` is this runtime with the simulator as launcher)."""

    name = "process"

    def __init__(self, name: str = "process") -> None:
        self.name = name

    def command(self, request: EngineRequest, port: int) -> list[str]:
        # The simulator also watches this process directly (a second line of defence, and
        # the only one when it is started without the supervisor, e.g. by `autotuner sim`).
        extra = ["--parent-pid", str(os.getpid())] if request.launcher.simulated else None
        argv = request.launcher.command(request.launch("127.0.0.1", port, extra), llama_server=server_executable())
        cpus = self.cpus(request)
        flag = request.launcher.threads_flag
        if cpus is not None and flag and f"--{flag}" not in argv:
            argv += [f"--{flag}", str(len(cpus))]  # the device's threads, unless the task tunes them
        return argv

    @staticmethod
    def cpus(request: EngineRequest) -> list[int] | None:
        """The CPUs of the CPU device the experiment holds, or None when it holds GPUs."""
        if request.gpu_indices != [CPU_INDEX]:
            return None
        if not request.launcher.runs_on_cpu:
            raise EngineError(f"{request.launcher.label} needs GPUs but was placed on a CPU device; run it on a "
                              "pool of GPU workers", kind="invalid_argument")
        cpus = device_cpus()
        if cpus is None:
            raise EngineError("the experiment holds a CPU device but this worker offers none", kind="internal")
        return cpus

    def environment(self, request: EngineRequest) -> dict[str, str]:
        visible = "" if request.gpu_indices == [CPU_INDEX] else ",".join(map(str, request.gpu_indices))
        env = engine_environment(local=True, extra={"CUDA_VISIBLE_DEVICES": visible})
        if request.launcher.simulated:
            # Our own package must be importable by the simulator wherever the worker runs from.
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    def start(self, request: EngineRequest) -> Deployment:
        port = free_port()
        engine_argv = self.command(request, port)
        log_fd, log_name = tempfile.mkstemp(prefix=f"autotuner-exp{request.experiment_id}-", suffix=".log")
        try:
            proc = self._fork(request, engine_argv, log_fd) or self._spawn(engine_argv, log_fd, self.environment(request),
                                                                           self.cpus(request))
        finally:
            os.close(log_fd)
        identity = {"runtime": "process", **process_identity(proc.pid)}
        return Deployment(
            base_url=f"http://127.0.0.1:{port}",
            handle=ProcessHandle(proc, Path(log_name), identity),
            runtime=self.name,
            identity=identity,
            health_path=request.launcher.health_path,
            simulated=request.launcher.simulated,
        )

    def _fork(self, request: EngineRequest, engine_argv: list[str], log_fd: int) -> ForkedProcess | None:
        """The simulator, forked by this process's fork server (workers.runtimes.forkserver):
        milliseconds of CPU instead of two interpreter start-ups. None for anything else."""
        if not request.launcher.simulated or engine_argv[:3] != [sys.executable, "-m", forkserver.MODULE]:
            return None
        env = self.environment(request)
        server_env = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
        try:
            return forkserver.client(server_env).start(engine_argv[3:], env, log_fd, STOP_GRACE_S)
        except forkserver.ForkServerError as exc:
            raise EngineError(f"cannot start the simulated engine: {exc}", kind="engine_exited") from exc

    @staticmethod
    def _spawn(engine_argv: list[str], log_fd: int, env: dict[str, str], cpus: list[int] | None) -> subprocess.Popen:
        # Run by path in isolated mode: it needs only the standard library, whatever the
        # engine's PYTHONPATH says. On a CPU device the supervisor pins itself, and so the
        # engine and all it starts, to the device's CPUs.
        pinning = ["--cpus", ",".join(map(str, cpus))] if cpus is not None else []
        argv = [sys.executable, "-I", str(SUPERVISOR), "--parent", str(os.getpid()),
                "--grace", str(STOP_GRACE_S), *pinning, "--", *engine_argv]
        try:
            return subprocess.Popen(
                argv,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # the supervisor leads the engine's process group
                close_fds=True,
            )
        except OSError as exc:
            raise EngineError(f"cannot start {engine_argv[0]}: {exc}", kind="engine_exited") from exc

    def is_alive(self, deployment: Deployment) -> bool:
        return deployment.handle.proc.poll() is None

    def exit_code(self, deployment: Deployment) -> int | None:
        return deployment.handle.proc.poll()

    def logs(self, deployment: Deployment, tail: int = 200) -> str:
        try:
            lines = deployment.handle.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def stop(self, deployment: Deployment) -> None:
        """SIGTERM to the supervisor, which stops the engine and its helpers; SIGKILL to the
        whole group if that takes longer than the grace period. Returns once none is left."""
        handle: ProcessHandle = deployment.handle
        proc = handle.proc
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=STOP_GRACE_S + 5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if not stop_group(handle.identity, grace=0):
            raise EngineError(f"engine process group {handle.identity['pgid']} did not stop", kind="internal")
        proc.poll()
        handle.log_path.unlink(missing_ok=True)
