"""Everything Celery: the app object, the send helpers, the control worker's tasks and its
start-up (the queue and task names, which the coordinator shares without Celery, are in
app/dispatch.py). The web app (to enqueue), the coordinator, the GPU workers
(`workers.tasks` registers the experiment job on this app) and Flower
(`celery -A app.celery_app flower`) all use this one module.

Settings suit long GPU jobs: late acks and prefetch 1, so a job leaves the queue only when it
is done and a busy worker never hoards jobs; a worker lost mid-job puts the message back (the
database caps the attempts); the Redis visibility timeout outlives every hard time limit;
events on for Flower; results are rows in our database, so no result backend. The broker URL
is read when Celery first needs its configuration, not at import, so importing this module
(or anything that sends) never fixes the settings too early.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
from typing import Any, Iterable

from celery import Celery
from celery.signals import worker_process_init, worker_ready
from kombu.exceptions import OperationalError as KombuOperationalError

from app import broker_transport, coordinator, upkeep
from app.config import get_settings, host_name
from app.dispatch import CONTROL_QUEUE, COORDINATE, RUN_EXPERIMENT, TICK, Dispatch
from app.processes import die_with_parent
from app.store.db import dispose_engines, ping
from app.store.migrate import upgrade

log = logging.getLogger(__name__)

def _configuration() -> dict[str, Any]:
    settings = get_settings()
    return dict(
        broker_url=settings.broker_url or "redis://127.0.0.1:6379/0",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=CONTROL_QUEUE,
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )


broker_transport.install()  # before any connection: see app/broker_transport.py
app = Celery("autotuner", set_as_current=False)
app.add_defaults(_configuration)  # a promise: evaluated on first use of the configuration


# -- sending (only after the transaction that decided the work has committed) -----------


def send_experiments(dispatches: Iterable[Dispatch]) -> None:
    """One job per `Dispatch`, on its group's queue with its time limits."""
    for d in dispatches:
        app.send_task(RUN_EXPERIMENT, args=[d.experiment_id, d.attempt], queue=d.queue,
                      soft_time_limit=d.soft_time_limit, time_limit=d.time_limit)


def request_coordination(task_id: int | None = None) -> None:
    """Ask the coordinator to look at a task (or all of them) soon. What it should look at
    is already committed, so an unreachable broker loses nothing: the periodic tick does
    the same a little later.

    At most one such request per task waits in the queue (`_mark_pending`): while the
    coordinator is busy (a large pool, many tasks, ends arriving faster than passes), every
    end would otherwise queue a pass of its own, each reading the task's history, when the
    first of them to start sees all of their results. The pass clears the mark it was sent
    with before it reads (`coordinate`), so a result committed after that asks for a pass of
    its own: no result waits for a later one. (Not delayed to gather more: a pass after a
    result renews the predictions and the longest-first order the next placements use;
    deferring it by half a second took the heterogeneous workload from 1.06 to 1.08 of its
    bound, README, *Scheduling*.)"""
    key = _pending_key(task_id)
    if not _mark_pending(key):
        return
    try:
        app.send_task(COORDINATE, args=[task_id], kwargs={"pending": key}, queue=CONTROL_QUEUE)
    except KombuOperationalError:
        _clear_pending(key)
        log.warning("broker unreachable; the coordinator looks at task %s at its next tick", task_id)
    except BaseException:  # nothing was sent: the mark must not hold back the next request
        _clear_pending(key)
        raise


# The mark that a coordinator pass is queued and has not started: a Redis key on the broker,
# set only if absent. It expires after PENDING_TTL_S, so a queued pass that is lost (a broker
# restarted empty) holds back new requests no longer than that; the periodic tick passes over
# every task meanwhile, and a coordinator slower than that gets a second request, as it would
# without the mark. The key names the database (its URL's hash): task ids start again at 1 in
# every database, and one broker may serve several (the tests do).
PENDING_TTL_S = 60


def _pending_key(task_id: int | None) -> str:
    database = hashlib.sha1(get_settings().database_url.encode()).hexdigest()[:12]
    return f"autotuner.coordination-pending.{database}.{'all' if task_id is None else task_id}"


def _redis(conn: Any) -> Any:
    """The broker connection's Redis client; None on another broker (the tests' in-memory one:
    there every request is sent)."""
    return getattr(conn.default_channel, "client", None) if conn.transport_cls in broker_transport.SCHEMES else None


def _mark_pending(key: str) -> bool:
    """True when this call marked the pass as queued (the caller sends it), False when one is
    queued already. A mark that cannot be set counts as set by this call: a request must never
    be lost to it."""
    try:
        with app.pool.acquire(block=True) as conn:
            client = _redis(conn)
            return client is None or bool(client.set(key, 1, nx=True, ex=PENDING_TTL_S))
    except Exception:  # noqa: BLE001 - send; the worst is a pass too many
        return True


def _clear_pending(key: str) -> None:
    """The pass has started (or could not be sent): the next request is sent."""
    try:
        with app.pool.acquire(block=True) as conn:
            client = _redis(conn)
            if client is not None:
                client.delete(key)
    except Exception:  # noqa: BLE001 - the mark expires (PENDING_TTL_S)
        log.warning("could not clear the coordination mark %s; it expires within %ss", key, PENDING_TTL_S)


# -- the control worker's tasks ----------------------------------------------------------


@worker_process_init.connect
def _pool_child_init(**_kwargs: Any) -> None:
    """A forked pool child dies with its worker's main process (a SIGKILLed coordinator or
    worker leaves no pool process behind; an experiment's engine supervisor then ends the
    engine), and must not reuse the parent's database sockets: it opens its own now, so its
    first job does not pay for connecting."""
    die_with_parent(signal.SIGKILL)

    dispose_engines()
    try:
        ping()
    except Exception:  # noqa: BLE001 - the database may come later; the first job connects or fails clearly
        pass


@app.task(name=COORDINATE)
def coordinate(task_id: int | None = None, pending: str | None = None) -> int:
    """One coordinator pass; a placement that lost a race asks for the next one at once.
    `pending`: the mark it was requested under, cleared before the pass reads anything (a
    result committed from now on asks for a pass of its own)."""
    if pending is not None:
        _clear_pending(pending)
    dispatches = coordinator.coordinate(task_id, again=lambda: request_coordination(task_id))
    send_experiments(dispatches)
    return len(dispatches)


@app.task(name=TICK)
def tick() -> int:
    dispatches = upkeep.tick()
    send_experiments(dispatches)
    return len(dispatches)


def run_worker_process(args: list[str]) -> None:
    """Run `celery worker ARGS` in this process and exit with its status. A fatal error
    (Celery's "Unrecoverable error", e.g. a broker outage it cannot recover from) must be a
    failure that systemd, the embedded stack or Kubernetes restarts; `worker_main` drops the
    status, so the worker is started through `start`, which returns it."""
    code = app.start(argv=["worker", *args])
    if code:
        log.error("the Celery worker stopped with status %s", code)
        raise SystemExit(code)


def _tick_every(interval: float, stop: threading.Event) -> None:
    """Send the periodic tick from a thread of the coordinator's main process: it dies with the
    process, so a killed coordinator leaves no scheduler behind (Celery's embedded beat is a
    separate process that a SIGKILL orphans). Ticks are idempotent, so several coordinators
    ticking is harmless; `expires` drops ticks nobody took in time."""
    while not stop.wait(interval):
        try:
            app.send_task(TICK, queue=CONTROL_QUEUE, expires=interval)
        except Exception:  # noqa: BLE001 - the broker may be away; try again next interval
            log.warning("could not send the periodic tick; retrying in %.0fs", interval)


def run_coordinator(concurrency: int = 2, loglevel: str = "INFO") -> None:
    """The control worker: coordinator and tick jobs, with the periodic tick in-process."""
    settings = get_settings()
    upgrade()
    settings.home.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def ready(**_kwargs: Any) -> None:
        threading.Thread(target=_tick_every, args=(settings.tick_interval, stop), name="autotuner-tick",
                         daemon=True).start()
        request_coordination(None)

    worker_ready.connect(ready, weak=False)
    try:
        run_worker_process([
            "-Q", CONTROL_QUEUE, "-c", str(concurrency), "-n", f"coordinator-{os.getpid()}@{host_name()}",
            "--loglevel", loglevel, "-E", "--without-gossip", "--without-mingle",
        ])
    finally:
        stop.set()
