"""The store: tasks, experiments with every attempt, workers, GPUs and who held them.

The database is the source of truth (Redis only carries messages), so every fact the
system needs to resume after a crash is a column here.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy import ColumnElement, and_, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.domain.objectives import eligible

if TYPE_CHECKING:
    from app.domain.taskspec import TaskSpec

from app.domain.states import AttemptState, ExperimentState, TaskStatus


def utcnow() -> datetime:
    """Naive UTC: SQLite keeps no zone, so all timestamps are stored the same way."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class seconds_between(FunctionElement):  # noqa: N801 - used like a SQL function
    """Seconds from `start` to `end` (two timestamps) in SQL, on SQLite and PostgreSQL alike:
    a sum of durations is then one aggregate query instead of a read of every row."""

    type = Float()
    name = "seconds_between"
    inherit_cache = True


@compiles(seconds_between, "sqlite")
def _seconds_between_sqlite(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


@compiles(seconds_between, "postgresql")
def _seconds_between_postgresql(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


# An experiment's figures (metrics, measured): absent is SQL NULL, as in a row never written,
# whoever writes None (an end, back to pending through the ORM); JSON's own type writes
# JSON's 'null', which `IS NULL` does not find. The same column in the schema.
NULLABLE_JSON = JSON(none_as_null=True)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=TaskStatus.PENDING, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    engine: Mapped[str] = mapped_column(String(20))
    deployment_mode: Mapped[str] = mapped_column(String(20))
    strategy: Mapped[str] = mapped_column(String(30))
    objective: Mapped[str] = mapped_column(String(40))
    max_parallel: Mapped[int] = mapped_column(Integer, default=1)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A moving average of its succeeded experiments' lengths: when running ones should end.
    expected_experiment_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Where its next experiment's fair-share tag starts (expected GPU-seconds; see coordinator).
    share_finish: Mapped[float | None] = mapped_column(Float, nullable=True)
    # How many of its experiments had succeeded when the coordinator last renewed its waiting
    # experiments' predictions and order: a pass renews them again only after a new result.
    predicted_from: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_iterations: Mapped[int] = mapped_column(Integer)
    notes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The task stop rule (app.domain.stopping.TASK_STOP_REASONS): it creates no more experiments.
    stop_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    experiments: Mapped[list["Experiment"]] = relationship(
        back_populates="task", order_by="Experiment.seq", cascade="all, delete-orphan"
    )

    @property
    def parsed_spec(self) -> "TaskSpec":
        """The stored spec as a typed `TaskSpec` (parsed once per content); read settings
        and defaults from it, never from the raw `spec` dict."""
        from app.domain.taskspec import stored_spec

        return stored_spec(self.spec)


class Experiment(Base):
    __tablename__ = "experiments"
    # The waiting queue, head first for each GPU count: what the scheduler reads (see 0005);
    # each task's waiting experiments by tag: its position, where the virtual time moves (0016).
    __table_args__ = (UniqueConstraint("task_id", "seq"),
                      Index("ix_experiments_waiting", "state", "gpus_needed", text("priority DESC"), "share_tag", "id"),
                      Index("ix_experiments_task_waiting", "task_id", "state", "share_tag"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    gpus_needed: Mapped[int] = mapped_column(Integer, default=1)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # the task's, copied
    share_tag: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")  # fair-share order
    state: Mapped[str] = mapped_column(String(20), default=ExperimentState.PENDING, index=True)
    phase: Mapped[str | None] = mapped_column(String(20), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    group: Mapped[str | None] = mapped_column(String(200), nullable=True)
    gpus: Mapped[list[Any]] = mapped_column(JSON, default=list)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    objective: Mapped[float | None] = mapped_column(Float, nullable=True)
    slo_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Each of the task's objectives' figure in its unit, without the SLO penalty that
    # `objective` (the ranking score) carries; `penalty` is that penalty.
    measured: Mapped[dict[str, float] | None] = mapped_column(NULLABLE_JSON, nullable=True)
    penalty: Mapped[float | None] = mapped_column(Float, nullable=True)
    # A repeat measures `repeat_of`'s configuration again (app.domain.repeats) with the benchmark
    # client's `seed` (request order, arrival times); experiments of the search have seed 0.
    repeat_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Warm start: the earlier task's experiment whose configuration this one is trying first.
    warm_from: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Early stopping (app.domain.stopping.STOP_REASONS): its other load levels were skipped.
    stop_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    wait_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    promised_start: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # while reserved
    # Predicted seconds it will hold its GPUs (app.domain.lengths), when its task's history can tell.
    expected_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    failure_kind: Mapped[str | None] = mapped_column(String(40), nullable=True)
    engine_log: Mapped[str | None] = mapped_column(Text, nullable=True)
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    # The attempt number when an operator last retried it (`retry_failed`), 0 if never: the
    # attempts capped by `max_attempts` (lost, host busy) are counted after it, so a retried
    # experiment gets its attempts again instead of failing at its first such end.
    retried_after: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    task: Mapped[Task] = relationship(back_populates="experiments")
    attempts: Mapped[list["Attempt"]] = relationship(
        back_populates="experiment", order_by="Attempt.number", cascade="all, delete-orphan"
    )

    @hybrid_property
    def eligible(self) -> bool:
        """May be the task's best (app.domain.objectives.eligible), in Python and in SQL."""
        return eligible(self.state, self.objective, self.slo_ok)

    @eligible.inplace.expression
    @classmethod
    def _eligible_sql(cls) -> ColumnElement[bool]:
        return and_(cls.state == ExperimentState.SUCCEEDED, cls.objective.is_not(None), cls.slo_ok.is_not(False))


class Attempt(Base):
    """One dispatch of an experiment to a worker; lost and retried attempts stay visible.

    `engine` is the identity of the engine the attempt started (process group and start
    time, or container id), recorded before the engine is waited for; `engine_gone_at` is
    set once that engine is known to be stopped, by the job or by the reaper. Until then
    the attempt's GPUs stay fenced (see Gpu.fenced_by)."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("experiment_id", "number"), Index("ix_attempts_host_engine_gone", "host", "engine_gone_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), default=AttemptState.QUEUED)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gpus: Mapped[list[Any]] = mapped_column(JSON, default=list)
    queued_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    failure_kind: Mapped[str | None] = mapped_column(String(40), nullable=True)
    engine: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    engine_gone_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    experiment: Mapped[Experiment] = relationship(back_populates="attempts")


class Worker(Base):
    """A Celery worker process pinned to one GPU group (its queue is `gpu.<group>`)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    group: Mapped[str] = mapped_column(String(200), index=True)
    host: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(220))
    slots: Mapped[int] = mapped_column(Integer)
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    online: Mapped[bool] = mapped_column(Boolean, default=True)
    incarnation: Mapped[str] = mapped_column(String(64))
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


#: The ledger index of a host's CPU device (workers/cpu_device.py): GPU indices are >= 0.
CPU_INDEX = -1


def gpu_label(host: str, index: int, slot: int = 0, slots: int = 1) -> str:
    """How a GPU (or one slot of a shared GPU) is named on pages, in the API and the CLI:
    `host:index`, or `host:index/slot` where its worker splits each GPU into slots (or did:
    a retired slot keeps its name); a CPU device is `host:cpu`."""
    name = "cpu" if index == CPU_INDEX else str(index)
    return f"{host}:{name}" if slots <= 1 and slot == 0 else f"{host}:{name}/{slot}"


def slot_share(slots: int) -> float:
    """The fraction of a physical GPU's memory an engine on one of its `slots` rows may use."""
    return 1.0 / max(1, slots)


class Gpu(Base):
    """One GPU of the pool, or one slot of it. `held_by` is the ledger: one column, so one
    holder at most.

    A worker started with `--slots-per-gpu N` registers each physical GPU as N rows (`slot`
    0..N-1, each with `slots` = N): N engines may share the GPU, each told to use 1/N of its
    memory, and an experiment needing k GPUs takes slots on k different physical GPUs."""

    __tablename__ = "gpus"
    __table_args__ = (UniqueConstraint("host", "index", "slot", name="uq_gpus_host_index_slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    index: Mapped[int] = mapped_column(Integer)
    slot: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    slots: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # slots of this physical GPU
    group: Mapped[str] = mapped_column(String(200), index=True)
    worker: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    uuid: Mapped[str] = mapped_column(String(200), default="")
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    online: Mapped[bool] = mapped_column(Boolean, default=True)
    utilization: Mapped[float | None] = mapped_column(Float, nullable=True)
    domain: Mapped[str | None] = mapped_column(String(64), nullable=True)  # NVLink / PCIe-switch domain
    held_by: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL"), nullable=True, index=True
    )
    # An attempt whose engine may still run here: the GPU is not handed on until the reaper
    # confirms that engine gone (or a bounded, logged timeout passes).
    fenced_by: Mapped[int | None] = mapped_column(ForeignKey("attempts.id", ondelete="SET NULL"), nullable=True)
    fenced_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Found busy before a launch (memory in use, a foreign process): not allocated until the
    # operator clears it or its worker sees it free again.
    quarantined_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    quarantine_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)

    @property
    def label(self) -> str:
        return gpu_label(self.host, self.index, self.slot, self.slots)

    @property
    def share(self) -> float:
        """The fraction of the physical GPU's memory an engine on this row may use."""
        return slot_share(self.slots)


class GpuAllocation(Base):
    """Who held which GPU when: the history behind the ledger, closed on release."""

    __tablename__ = "gpu_allocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gpu_id: Mapped[int] = mapped_column(ForeignKey("gpus.id", ondelete="CASCADE"), index=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    allocated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class PassTiming(Base):
    """How long each coordinator pass took (advancing tasks and placing experiments), read by
    /metrics: the coordinator runs in its own processes, so the store is where every web
    process can see it. The tick keeps only the most recent rows."""

    __tablename__ = "pass_timings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    finished_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    seconds: Mapped[float] = mapped_column(Float)
    placed: Mapped[int] = mapped_column(Integer, default=0)


class Lock(Base):
    """Named rows to lock with SELECT ... FOR UPDATE (the scheduler pass is global)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # scheduler: the fair-share virtual time
