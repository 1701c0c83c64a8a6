"""Prometheus metrics, read from the store at scrape time: every web process reports the
same numbers whatever it served, and nothing is kept in memory between scrapes.

`autotuner_experiments_waiting{group,gpus}` is the backlog to scale GPU workers on
(deploy/k8s has a KEDA example); the rest say what the pool and the tasks are doing.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select

from app.backlog import backlog
from app.domain.states import EXP_STATES, TaskStatus
from app.store.db import session_scope
from app.store.models import Experiment, Gpu, GpuAllocation, PassTiming, Task, Worker, utcnow


# Histograms are computed from the most recent rows at each scrape (bounded work whatever
# the store's size); their buckets in seconds.
RECENT_ROWS = 2000
DURATION_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HANDOVER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _histogram(name: str, doc: str, values: list[float], buckets: tuple[float, ...]) -> HistogramMetricFamily:
    counts = [sum(1 for v in values if v <= b) for b in buckets]
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], [(str(b), c) for b, c in zip(buckets, counts)] + [("+Inf", len(values))],
                      sum_value=sum(values))
    return family


class StoreCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        with session_scope(readonly=True) as session:
            yield from self._experiments(session)
            yield from self._pool(session)
            yield from self._durations(session)

    @staticmethod
    def _durations(session) -> Iterator[Metric]:
        """How long experiments run, and the hand-over gap: from a GPU's release to its next
        allocation, counted only when that next experiment was already waiting (an idle pool
        is not a slow hand-over)."""
        spans = session.execute(
            select(Experiment.started_at, Experiment.finished_at)
            .where(Experiment.started_at.is_not(None), Experiment.finished_at.is_not(None))
            .order_by(Experiment.finished_at.desc()).limit(RECENT_ROWS)
        ).all()
        yield _histogram("autotuner_experiment_duration_seconds", "Wall time of recent finished experiments",
                         [(end - start).total_seconds() for start, end in spans], DURATION_BUCKETS)
        rows = session.execute(
            select(GpuAllocation.gpu_id, GpuAllocation.allocated_at, GpuAllocation.released_at, Experiment.created_at)
            .join(Experiment, Experiment.id == GpuAllocation.experiment_id)
            .order_by(GpuAllocation.id.desc()).limit(RECENT_ROWS)
        ).all()
        gaps: list[float] = []
        last_release: dict[int, Any] = {}
        for gpu_id, allocated, released, created in sorted(rows, key=lambda r: r[1]):
            previous = last_release.get(gpu_id)
            if previous is not None and created <= previous <= allocated:
                gaps.append((allocated - previous).total_seconds())
            last_release[gpu_id] = released
        passes = session.execute(select(PassTiming.seconds).order_by(PassTiming.id.desc()).limit(RECENT_ROWS)).scalars()
        yield _histogram("autotuner_coordinator_pass_seconds", "Duration of recent coordinator passes (advance and place)",
                         list(passes), PASS_BUCKETS)
        yield _histogram("autotuner_handover_gap_seconds",
                         "From a GPU's release to its next allocation while work was waiting", gaps, HANDOVER_BUCKETS)

    @staticmethod
    def _experiments(session) -> Iterator[GaugeMetricFamily]:
        by_state = dict(session.execute(select(Experiment.state, func.count()).group_by(Experiment.state)).all())
        states = GaugeMetricFamily("autotuner_experiments", "Experiments by state", labels=["state"])
        for state in EXP_STATES:
            states.add_metric([str(state)], by_state.get(state, 0))
        yield states
        waiting = GaugeMetricFamily("autotuner_experiments_waiting",
                                    "Experiments waiting for GPUs (group empty until placed), by GPUs needed",
                                    labels=["group", "gpus"])
        queued = GaugeMetricFamily("autotuner_experiments_queued", "Experiments placed, not yet taken by a worker",
                                   labels=["group", "gpus"])
        for row in backlog(session):
            if row["waiting"]:
                waiting.add_metric([row["group"], str(row["gpus"])], row["waiting"])
            if row["queued"]:
                queued.add_metric([row["group"], str(row["gpus"])], row["queued"])
        yield waiting
        yield queued
        tasks = GaugeMetricFamily("autotuner_tasks", "Tasks by status", labels=["status"])
        by_status = dict(session.execute(select(Task.status, func.count()).group_by(Task.status)).all())
        for status in TaskStatus:
            tasks.add_metric([str(status)], by_status.get(status, 0))
        yield tasks

    @staticmethod
    def _pool(session) -> Iterator[GaugeMetricFamily]:
        gpus = GaugeMetricFamily("autotuner_gpus", "Registered GPUs by state", labels=["state", "simulated"])
        counts: dict[tuple[str, str], int] = {}
        for gpu in session.execute(select(Gpu)).scalars():
            if not gpu.online:
                state = "offline"
            elif gpu.held_by is not None:
                state = "held"
            elif gpu.fenced_by is not None:
                state = "fenced"
            elif gpu.quarantined_at is not None:
                state = "quarantined"
            else:
                state = "free"
            key = (state, "true" if gpu.simulated else "false")
            counts[key] = counts.get(key, 0) + 1
        for (state, simulated), n in sorted(counts.items()):
            gpus.add_metric([state, simulated], n)
        yield gpus
        age = GaugeMetricFamily("autotuner_worker_heartbeat_age_seconds", "Seconds since each online worker's last heartbeat",
                                labels=["worker", "group", "host"])
        now = utcnow()
        for w in session.execute(select(Worker).where(Worker.online.is_(True))).scalars():
            age.add_metric([w.name, w.group, w.host], (now - w.last_heartbeat).total_seconds())
        yield age


def registry() -> CollectorRegistry:
    """A registry with the store's metrics only (no per-process defaults: every web process
    would report different ones)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector())
    return reg
