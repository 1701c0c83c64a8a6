"""Database engines and transactions, the same code on SQLite and PostgreSQL.

SQLite is the embedded default and is shared by several processes (web, coordinator,
workers), so every connection uses WAL, a busy timeout, and `BEGIN IMMEDIATE`: a
transaction takes the write lock when it starts, which makes the read-check-write steps of
the coordinator and the ledger serial exactly as `SELECT ... FOR UPDATE` does on PostgreSQL.
"""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.config import database_url, get_settings

_engines: dict[tuple[str, int], Engine] = {}
_factories: dict[tuple[Engine, bool], sessionmaker] = {}
MIN_SQLITE = "3.35"  # UPDATE ... RETURNING (README, "Two commands")


class UnsupportedDatabase(RuntimeError):
    """The database cannot run the store's statements: said in one line when the engine is
    made, instead of an error in every claim and end (each result lost) once work runs."""


def require_returning(engine: Engine) -> None:
    """The claim's and the end's compare-and-set and the ledger's take are `UPDATE ...
    RETURNING`: SQLite has it from 3.35 (RHEL 9's libsqlite3 is 3.34.1), PostgreSQL always."""
    if engine.dialect.update_returning:
        return
    if engine.dialect.name == "sqlite":
        raise UnsupportedDatabase(
            f"SQLite {engine.dialect.dbapi.sqlite_version} is too old: the autotuner needs SQLite {MIN_SQLITE} or "
            "newer (UPDATE ... RETURNING); use a Python whose sqlite3 is built on a newer SQLite, or PostgreSQL "
            "(DATABASE_URL)")
    raise UnsupportedDatabase(f"{engine.dialect.name} cannot run UPDATE ... RETURNING, which the store needs")


def _sqlite_engine(url: str) -> Engine:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
        dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below take effect
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover
        # Readers (pages, progress, cancellation checks) must not queue behind writers for
        # the write lock: in WAL mode a deferred transaction reads a consistent snapshot.
        if conn.get_execution_options().get("readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            _begin_immediate(conn.connection.dbapi_connection)

    return engine


def _begin_immediate(dbapi_conn, patience: float = 30.0) -> None:
    """Take SQLite's write lock, retrying every millisecond or so.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries, so a
    writer that queues behind three short transactions waits tens of milliseconds for
    locks held for one or two; with several workers finishing at once that delay is the
    gap between one experiment and the next on a GPU.
    """
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=0")
    deadline = time.monotonic() + patience
    delay = 0.0005
    try:
        while True:
            try:
                cur.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 1.5, 0.005)
    finally:
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()


def normalize_url(url: str) -> str:
    """Plain `postgresql://` URLs mean psycopg2 here (SQLAlchemy 2.1 would pick psycopg 3)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _postgres_connect_args() -> dict:
    """A host that freezes or drops off the network mid-transaction holds its row locks until
    the server notices: the server ends a session idle in a transaction after
    `AUTOTUNER_DB_IDLE_TRANSACTION_TIMEOUT`, and TCP keepalives on both ends notice a dead
    peer within about a minute instead of the operating system's two hours."""
    idle_ms = int(get_settings().db_idle_transaction_timeout * 1000)
    keepalive = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}
    options = " ".join([f"-c idle_in_transaction_session_timeout={idle_ms}",
                        *(f"-c {name}={value}" for name, value in keepalive.items())])
    return {"options": options, "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
            "keepalives_interval": 10, "keepalives_count": 3}


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL and per process: forked Celery children must not share sockets.
    Raises UnsupportedDatabase for a database the store's statements cannot run on."""
    url = normalize_url(url or database_url())
    key = (url, os.getpid())
    engine = _engines.get(key)
    if engine is None:
        if url.startswith("sqlite"):
            engine = _sqlite_engine(url)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                                   connect_args=_postgres_connect_args())
        require_returning(engine)
        _engines[key] = engine
    return engine


def dispose_engines() -> None:
    """Forget engines inherited from a parent process (called after fork)."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _factories.clear()


@contextmanager
def session_scope(url: str | None = None, readonly: bool = False) -> Iterator[Session]:
    """A transaction: committed when the block ends, rolled back on any exception.

    `readonly=True` is for code that only reads: on SQLite it does not take the write lock.
    """
    session = _factory(url, readonly)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _factory(url: str | None, readonly: bool) -> sessionmaker:
    """The session factory of an engine, made once: each `sessionmaker` defines a Session
    class of its own, whose set-up (event dispatch) cost a transaction more CPU than most of
    its statements did."""
    engine = get_engine(url)
    key = (engine, readonly)
    factory = _factories.get(key)
    if factory is None:
        factory = _factories[key] = sessionmaker(bind=engine.execution_options(readonly=True) if readonly else engine,
                                                 expire_on_commit=False)
    return factory


def is_transient(exc: BaseException) -> bool:
    """A database error that the same work, done again later, does not meet: the server
    unreachable or restarting, a deadlock or serialisation failure (PostgreSQL rolls back one
    of the transactions), SQLite's write lock not had in time. Other errors are bugs."""
    return isinstance(exc, DBAPIError) and (exc.connection_invalidated or isinstance(exc, OperationalError))


def ping(url: str | None = None) -> None:
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT 1"))
