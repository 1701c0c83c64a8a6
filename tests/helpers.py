"""Plain helpers shared by the test modules (fixtures live in conftest.py).

Nothing here starts a service or opens a connection when imported: the functions that
reach the store, the broker or a process do so only when a test calls them. No test module
imports from another test module; what two of them share lives here.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from app.processes import free_port  # noqa: F401 - re-exported for the tests
from app.processes import pid_alive as alive  # noqa: F401 - zombie-aware, re-exported for the tests

ROOT = Path(__file__).resolve().parents[1]


def chromium() -> str | None:
    """Debian's Chromium for Playwright (executable_path), or None when it or the playwright
    package is missing: browser tests skip, saying so."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None
    return shutil.which("chromium") or shutil.which("chromium-browser")


# ---- waiting and processes ----------------------------------------------------------------


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for(predicate, timeout: float, what: str, stack: "Stack | None" = None, interval: float = 0.2):
    """Wait for a condition of the system (polling the store), failing with context."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{stack.logs()}" if stack else ""))
        time.sleep(interval)


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a server a test started: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


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


# ---- tasks and the Celery stack ----------------------------------------------------------


def point_celery_at(url: str) -> None:
    """Make this process's Celery app send to `url`. Its configuration is read lazily on
    first use, from CELERY_BROKER_URL (which the callers set); once read, it is changed
    here and the broker connection pools are dropped so the next send uses the new URL."""
    module = sys.modules.get("app.celery_app")
    if module is None:
        return  # not imported yet: it will read CELERY_BROKER_URL when first used
    capp = module.app
    # No early return on `conf.broker_url == url`: Celery reads CELERY_BROKER_URL first, which
    # the callers have already set, while the pools below may still hold the old broker.
    capp.conf.broker_url = url
    capp._pool = None  # Celery's own reset after fork does the same two things
    amqp = capp.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


def mixed_task(configs: list[dict], parallel: int = 4, startup: float = 0.3) -> dict:
    """A simulated task that runs exactly `configs` (the `list` strategy)."""
    return {
        "task_name": "mixed-gpu-needs",
        "base_runtime": "sim",
        "model": {"id_or_path": "llama-3-8b"},
        "sim": {"time_scale": 0.02, "startup_seconds": startup},
        "parameters": {},
        "optimization": {
            "strategy": "list",
            "configs": configs,
            "objective": "maximize_throughput",
            "max_parallel_experiments": parallel,
            "timeout_per_iteration": 120,
        },
        "benchmark": {
            "traffic_scenarios": ["D(64,16)"],
            "num_concurrency": [2],
            "max_requests_per_iteration": 6,
            "max_time_per_iteration": 60,
        },
    }


def submit(data: dict) -> int:
    """Store a task without asking the coordinator (tests call `coordinate` themselves)."""
    from app.domain.taskspec import parse_task
    from app.task_service import create_task

    return create_task(parse_task(data), enqueue=False)


def experiments(task_id: int) -> list:
    from sqlalchemy import select

    from app.store.db import session_scope
    from app.store.models import Experiment

    with session_scope() as s:
        return list(s.execute(select(Experiment).where(Experiment.task_id == task_id).order_by(Experiment.seq)).scalars())


def task_status(task_id: int) -> str:
    from app.store.db import session_scope
    from app.store.models import Task

    with session_scope() as s:
        return s.get(Task, task_id).status


OK = {"objective": 1.0, "slo_ok": True, "metrics": {}}


def run_attempt(d, state: str = "succeeded", *, seconds: float | None = None, worker: str = "gpu-g@h",
                **outcome) -> list:
    """What an experiment job does, without an engine: claim the dispatched attempt, then end
    it the way the job does (`end_and_place`, then `learn_length`). `seconds`: how long it
    ran (its start is moved back by that much); `outcome`: the result (a success by
    default). Returns the jobs placed on the GPUs it freed (committed, not sent)."""
    from datetime import timedelta

    from app.coordinator import end_and_place
    from app.store import lifecycle
    from app.store.db import session_scope
    from app.store.models import Experiment

    assert lifecycle.claim(d.experiment_id, d.attempt, worker=worker, host="h", pid=1) is not None
    if seconds is not None:
        with session_scope() as s:
            s.get(Experiment, d.experiment_id).started_at -= timedelta(seconds=seconds)
    ended, placed = end_and_place(d.experiment_id, d.attempt, state, **(outcome or (OK if state == "succeeded" else {})))
    lifecycle.learn_length(ended)
    return placed


def attempt_of(session, task_id: int, number: int):
    """The attempt `number` of the task's (single) experiment, or None."""
    from sqlalchemy import select

    from app.store.models import Attempt, Experiment

    return session.execute(
        select(Attempt).join(Experiment).where(Experiment.task_id == task_id, Attempt.number == number)
    ).scalar_one_or_none()


def wait_for_lost(stack: Stack, task_id: int, timeout: float = 60) -> tuple:
    """Wait until the single experiment's first attempt is declared lost (its worker died);
    returns (that attempt, the pool's only GPU) as the store has them then."""
    from sqlalchemy import select

    from app.domain.states import AttemptState
    from app.store.db import session_scope
    from app.store.models import Gpu

    def lost():
        with session_scope() as s:
            att = attempt_of(s, task_id, 1)
            return att.state == AttemptState.LOST and (att, s.execute(select(Gpu)).scalar_one())

    return wait_for(lost, timeout, "the attempt to be declared lost", stack)


def wait_for_retry(stack: Stack, task_id: int, timeout: float = 120) -> tuple:
    """Wait until the single experiment's second attempt has started; returns (when the first
    attempt's engine was confirmed gone, when the second started)."""
    from app.store.db import session_scope

    def retried():
        with session_scope() as s:
            second = attempt_of(s, task_id, 2)
            return second is not None and second.started_at is not None and (
                attempt_of(s, task_id, 1).engine_gone_at, second.started_at)

    return wait_for(retried, timeout, "the retry to start after the first attempt's engine is gone", stack)


def docker_client_or_skip():
    """The Docker daemon's client, or skip the test saying why (no daemon answers here)."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no daemon here"
        import pytest

        pytest.skip(f"no Docker daemon answers here ({exc}); .ci/run starts one where docker.io installs")
    return client


def start_stack(stack: Stack, gpus: int = 4, workers: list[list[str]] | None = None) -> None:
    """Coordinator plus simulated GPU workers (one of `gpus` GPUs, or one per arg list)."""
    from sqlalchemy import select

    from app.store.db import session_scope
    from app.store.models import Worker

    stack.start("coordinator", "coordinator", "--concurrency", "2")
    worker_args = workers or [["--simulated-gpus", str(gpus)]]
    for i, args in enumerate(worker_args):
        stack.start(f"worker{i}", "worker", *args)

    def online():
        with session_scope() as s:
            return len(s.execute(select(Worker).where(Worker.online.is_(True))).all()) == len(worker_args)

    wait_for(online, 60, "the simulated GPU workers to register", stack)


def run_to_end(stack: Stack, data: dict, timeout: float = 240) -> int:
    """Submit through the service (which asks the coordinator) and wait for the task to end."""
    from app.domain.taskspec import parse_task
    from app.task_service import create_task

    task_id = create_task(parse_task(data))
    wait_for_end(stack, task_id, timeout)
    return task_id


def wait_for_end(stack: Stack | None, task_id: int, timeout: float, what: str | None = None) -> None:
    """Wait for the task to reach a terminal state (the stack's logs in the failure message)."""
    from app.domain.states import TASK_TERMINAL
    from app.store.db import session_scope
    from app.store.models import Task

    def ended():
        with session_scope() as s:
            return s.get(Task, task_id).status in TASK_TERMINAL

    wait_for(ended, timeout, what or f"task {task_id} to end", stack, interval=0.3)


def use_engines_file(monkeypatch, path) -> None:
    """An operator's engines file for this test: named in the environment (for the processes
    it starts) and installed in this one, as a process's start installs it."""
    from app.domain.engines import registry

    monkeypatch.setenv("AUTOTUNER_ENGINES_FILE", str(path))
    registry.use_operator_file(str(path))


# ---- the web app ----------------------------------------------------------------------------

USER, VIEWER = "user-s3cret", "viewer-s3cret"


def build_app(config: dict | None = None):
    """The app as create_app builds it."""
    from app import create_app

    return create_app({"TESTING": True, **(config or {})})


def csrf_from(client, url: str = "/login") -> str:
    page = client.get(url)
    return page.data.split(b'name="csrf_token" value="')[1].split(b'"')[0].decode()


def login(client, token: str):
    return client.post("/login", data={"token": token, "csrf_token": csrf_from(client)})


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# ---- the simulated engine as a process -------------------------------------------------------

SIM_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# Ready at once and fast: tests that need the start-up window ask for one explicitly.
SIM_FAST = ["--sim-time-scale", "0.01", "--sim-startup-seconds", "0"]


def migration_config(request, kind: str) -> tuple:
    """(engine, Alembic config) for a fresh, unmigrated store of `kind` (sqlite or postgresql):
    a test walks its migrations up and down by hand."""
    from app.store.db import get_engine
    from app.store.migrate import alembic_config

    engine = get_engine(request.getfixturevalue("sqlite_url" if kind == "sqlite" else "postgres_url"))
    return engine, alembic_config(engine.url.render_as_string(hide_password=False))


def schema_diff(engine, table: str) -> list:
    """What Alembic's autogenerate finds between the database and the models for `table`
    (empty: the migrations built exactly what the models say)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.store.models import Base

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)

    def table_of(change) -> str | None:
        change = change[0] if isinstance(change, list) else change  # column changes come as lists
        for part in change[1:]:
            if isinstance(part, str) and part in Base.metadata.tables:
                return part
            if getattr(part, "table", None) is not None:
                return part.table.name
        return None

    return [d for d in diff if table_of(d) == table]


def sim_cmd(port: int, *extra: str, engine: str = "sglang") -> list[str]:
    return [sys.executable, "-m", "app.tools.simengine", "--host", "127.0.0.1", "--port", str(port),
            "--engine", engine, "--model", SIM_MODEL, *extra]


def http_status(url: str) -> int | None:
    """HTTP status of a GET, or None while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def wait_healthy(proc: subprocess.Popen, base: str, timeout: float = 30.0) -> list[int]:
    """Poll /health until 200; returns the distinct statuses seen, in order."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "engine exited"
        status = http_status(base + "/health")
        if status is not None and (not seen or seen[-1] != status):
            seen.append(status)
        if status == 200:
            return seen
        time.sleep(0.01)
    raise AssertionError(f"not healthy after {timeout}s; saw {seen}")


# ---- engines for lifetime tests: real process trees ---------------------------------------
#
# `family_engine` starts a helper in its own process group and one that leaves the group with
# setsid (as engines' tokenizer and rank processes may), writes every pid to a file, and
# sleeps; it is what an engine that must be taken down whole looks like from outside.

FAMILY_SCRIPT = r"""
import json, os, subprocess, sys, time
out = sys.argv[1]
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
escaped = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(3600)"])
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump({"engine": os.getpid(), "helper": helper.pid, "escaped": escaped.pid}, f)
os.replace(tmp, out)
time.sleep(3600)
"""


def family_engine(pid_file: Path):
    """A launcher whose process command runs FAMILY_SCRIPT, reporting pids to `pid_file`."""
    from app.domain.engines import EngineSpec

    return EngineSpec(name="family", label="process family", vocabulary=None,
                      process_command=(sys.executable, "-c", FAMILY_SCRIPT, str(pid_file)))


def family_request(pid_file: Path, gpus=(2, 3)):
    """An EngineRequest that starts the family engine on `gpus`."""
    from workers.runtimes.base import EngineRequest

    return EngineRequest(experiment_id=1, attempt=1, launcher=family_engine(pid_file), flavour="", model="m",
                         flags=[], gpu_indices=list(gpus))


def read_pids(pid_file: Path, timeout: float = 30.0) -> dict[str, int]:
    """The family's pids, once the engine has written them (polling the file it writes)."""
    deadline = time.monotonic() + timeout
    while not pid_file.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine did not write {pid_file}")
        time.sleep(0.02)
    return json.loads(pid_file.read_text())


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def wait_gone(pids, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise AssertionError(f"still running: {[p for p in pids if alive(p)]}")
        time.sleep(0.05)


def kill_quietly(pids) -> None:
    """Test clean-up: SIGKILL whatever a failed test left behind, by pid."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_owner(owner: subprocess.Popen, supervisor: int, victim: str) -> None:
    """SIGKILL the process that started an engine, and before it the engine's supervisor when
    `victim` is "owner_and_supervisor" (a worker dying with everything it could clean up with)."""
    if victim == "owner_and_supervisor":
        os.kill(supervisor, signal.SIGKILL)
    owner.kill()
    owner.wait()
