"""The engine as a local subprocess, in its own process group, on exactly its GPUs.

The command is an argv list (no shell); `CUDA_VISIBLE_DEVICES` pins the GPUs; stopping
signals the whole process group so engine helpers (tokenizer, detokenizer, TP ranks)
go with it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from workers.runtimes.base import Deployment, EngineError, EngineRequest, Runtime


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ProcessHandle:
    proc: subprocess.Popen
    log_path: Path


class ProcessRuntime(Runtime):
    name = "process"

    def command(self, request: EngineRequest, port: int) -> list[str]:
        if request.engine == "sglang":
            head = [sys.executable, "-m", "sglang.launch_server", "--model-path", request.model]
        elif request.engine == "vllm":
            head = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", request.model]
        else:
            raise EngineError(f"unknown engine {request.engine!r}")
        return [*head, "--host", "127.0.0.1", "--port", str(port), *request.flags]

    def environment(self, request: EngineRequest) -> dict[str, str]:
        env = dict(os.environ)
        env.update(request.env)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in request.gpu_indices)
        return env

    def start(self, request: EngineRequest) -> Deployment:
        port = free_port()
        argv = self.command(request, port)
        log_fd, log_name = tempfile.mkstemp(prefix=f"autotuner-exp{request.experiment_id}-", suffix=".log")
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(request),
                start_new_session=True,
            )
        except OSError as exc:
            raise EngineError(f"cannot start {argv[0]}: {exc}") from exc
        finally:
            os.close(log_fd)
        return Deployment(
            base_url=f"http://127.0.0.1:{port}",
            handle=ProcessHandle(proc, Path(log_name)),
            runtime=self.name,
            simulated=self.simulated,
        )

    def is_alive(self, deployment: Deployment) -> bool:
        return deployment.handle.proc.poll() is None

    def logs(self, deployment: Deployment, tail: int = 200) -> str:
        try:
            lines = deployment.handle.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def stop(self, deployment: Deployment) -> None:
        handle: ProcessHandle = deployment.handle
        proc = handle.proc
        if proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Whatever the engine left in its group (helpers) goes too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        handle.log_path.unlink(missing_ok=True)
