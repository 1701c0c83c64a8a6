"""Twelve-factor settings: everything comes from the environment.

`DATABASE_URL` and `CELERY_BROKER_URL` name the store and the broker; `AUTOTUNER_*`
variables tune the rest. Settings are read when asked for (not at import), so the CLI can
set up the embedded defaults before any process reads them, and tests can change them.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from app.domain import limits
from app.domain.engines import registry
from app.limits import get_limits


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    broker_url: str | None
    heartbeat_interval: float
    worker_dead_after: float
    tick_interval: float
    requeue_after: float
    visibility_timeout: int
    time_limit_grace: float
    engine_reap_timeout: float
    gpu_min_free_fraction: float
    db_idle_transaction_timeout: float
    reservation_slip: float
    auth_token: str | None
    secret_key: str | None
    flower_url: str | None


def host_name() -> str:
    """This host's name in the pool: `AUTOTUNER_HOST_NAME`, else the machine's hostname.
    Set it where hostnames are not unique (containers, cloned VMs): GPUs, engines and the
    reaper are keyed by it, so two hosts must never share one."""
    return os.environ.get("AUTOTUNER_HOST_NAME") or socket.gethostname()


def home_dir() -> Path:
    """Where the embedded defaults keep the SQLite file, the bundled Redis and logs."""
    return Path(os.environ.get("AUTOTUNER_HOME") or Path.home() / ".autotuner").expanduser()


def default_database_url() -> str:
    return f"sqlite:///{home_dir() / 'autotuner.db'}"


def database_url() -> str:
    """The store's URL alone (every transaction asks; `get_settings` reads everything)."""
    return os.environ.get("DATABASE_URL") or default_database_url()


def stack_file() -> Path:
    """Written by `autotuner up` so other commands on this machine find its broker."""
    return home_dir() / "stack.json"


def _stack_broker() -> str | None:
    try:
        return json.loads(stack_file().read_text()).get("broker_url")
    except (OSError, ValueError):
        return None


def get_settings() -> Settings:
    return Settings(
        home=home_dir(),
        database_url=database_url(),
        broker_url=os.environ.get("CELERY_BROKER_URL") or _stack_broker(),
        heartbeat_interval=_float("AUTOTUNER_HEARTBEAT_INTERVAL", 5.0),
        worker_dead_after=_float("AUTOTUNER_WORKER_DEAD_AFTER", 30.0),
        tick_interval=_float("AUTOTUNER_TICK_INTERVAL", 10.0),
        requeue_after=_float("AUTOTUNER_REQUEUE_AFTER", 120.0),
        # Redis re-delivers an unacknowledged message after this many seconds; it must be
        # longer than the longest experiment's hard time limit or a long experiment would be
        # handed to a second worker while the first still runs it.
        visibility_timeout=int(_float("AUTOTUNER_VISIBILITY_TIMEOUT", 24 * 3600)),
        time_limit_grace=_float("AUTOTUNER_TIME_LIMIT_GRACE", 60.0),
        # GPUs of an attempt whose engine may still run are handed on once the reaper on its
        # host confirms the engine gone, or after this many seconds (logged) when that host
        # is unreachable.
        engine_reap_timeout=_float("AUTOTUNER_ENGINE_REAP_TIMEOUT", 300.0),
        # Before a launch, each allocated GPU must have this fraction of its memory free and
        # no compute process, else it is quarantined and the experiment placed again.
        gpu_min_free_fraction=_float("AUTOTUNER_GPU_MIN_FREE_FRACTION", 0.9),
        # PostgreSQL ends a session left idle inside a transaction this long (a process frozen
        # or cut off mid-transaction), so the row locks it held cannot stop everyone else.
        db_idle_transaction_timeout=_float("AUTOTUNER_DB_IDLE_TRANSACTION_TIMEOUT", 60.0),
        # Younger experiments may backfill the GPUs reserved for a waiting one only while its
        # expected start has not slipped by more than this past the start first promised to it
        # (expected lengths are estimates); then the reservation is strict.
        reservation_slip=_float("AUTOTUNER_RESERVATION_SLIP", 60.0),
        auth_token=os.environ.get("AUTOTUNER_AUTH_TOKEN") or None,
        secret_key=os.environ.get("AUTOTUNER_SECRET_KEY") or None,
        flower_url=os.environ.get("AUTOTUNER_FLOWER_URL") or None,
    )


def install_for_domain() -> None:
    """Give the domain what this process's environment says it needs, read once here at the
    edge (the domain itself reads no environment): the limits on user input and the
    operator's engines file. The CLI calls this when it starts (its Celery workers' children
    inherit it), the web app when it is built."""
    limits.install(get_limits())
    registry.use_operator_file(os.environ.get("AUTOTUNER_ENGINES_FILE"))
