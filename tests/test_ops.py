"""/healthz, /metrics and the backlog: what a load balancer, Prometheus and an autoscaler read."""
from __future__ import annotations

import pytest

from app.domain.taskspec import parse_task
from app.store.pool import GpuSpec, register_worker
from app.task_service import create_task
from tests.helpers import build_app, mixed_task


@pytest.mark.unit
def test_the_backlog_is_visible_in_the_pool_api_the_page_and_metrics(db, monkeypatch):
    from app.coordinator import coordinate

    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "60")
    register_worker("gpu-g@h", "g", "h", "gpu.g", 2, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(2)], "i", 1)
    task_id = create_task(parse_task(mixed_task([{"tp-size": 2}] * 3, parallel=3)), enqueue=False)
    assert len(coordinate(task_id)) == 1
    client = build_app().test_client()
    backlog = client.get("/api/pool").json["backlog"]
    # All three exist (the list strategy's next round is created ahead), one placed; the
    # first waiting one holds the reservation, the one behind it was not read this pass.
    assert backlog == [
        {"group": "", "gpus": 2, "waiting": 2, "queued": 0,
         "reasons": {"waiting for 2 free GPU(s); group g is reserved for it": 1}},
        {"group": "g", "gpus": 2, "waiting": 0, "queued": 1, "reasons": {}},
    ]
    page = client.get("/pool").get_data(as_text=True)
    assert 'id="backlog"' in page and "not placed yet" in page
    text = client.get("/metrics").get_data(as_text=True)
    assert "autotuner_coordinator_pass_seconds_count 1.0" in text  # the pass above, recorded by the coordinator
    assert 'autotuner_experiments_waiting{gpus="2",group=""} 2.0' in text
    assert 'autotuner_experiments_queued{gpus="2",group="g"} 1.0' in text
    assert 'autotuner_experiments{state="pending"} 2.0' in text and 'autotuner_experiments{state="queued"} 1.0' in text
    assert 'autotuner_gpus{simulated="true",state="held"} 2.0' in text
    assert 'autotuner_tasks{status="running"} 1.0' in text
    assert 'autotuner_worker_heartbeat_age_seconds{group="g",host="h",worker="gpu-g@h"}' in text


@pytest.mark.unit
def test_healthz_is_open_and_checks_the_database_and_the_broker(db, monkeypatch):
    monkeypatch.setenv("AUTOTUNER_AUTH_TOKEN", "t" * 32)
    monkeypatch.setenv("AUTOTUNER_VIEWER_TOKEN", "v" * 32)
    client = build_app().test_client()
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.json == {"status": "ok", "database": "ok", "broker": "ok"}
    assert client.get("/metrics").status_code == 401  # reading the numbers needs the viewer token
    assert client.get("/metrics", headers={"Authorization": "Bearer " + "v" * 32}).status_code == 200


@pytest.mark.process
def test_healthz_is_503_naming_what_is_down(db, monkeypatch):
    from tests.helpers import free_port

    client = build_app().test_client()
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    resp = client.get("/healthz")
    assert resp.status_code == 503
    assert resp.json["status"] == "unavailable" and resp.json["database"].startswith("unavailable")


@pytest.mark.unit
def test_metrics_histograms_of_experiment_durations_and_hand_over_gaps(db):
    from datetime import timedelta

    from app.store.db import session_scope
    from app.store.models import Experiment, Gpu, GpuAllocation, Task, utcnow

    register_worker("gpu-g@h", "g", "h", "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "i", 1)
    t0 = utcnow() - timedelta(minutes=10)
    with session_scope() as s:
        gpu = s.query(Gpu).one()
        task = Task(name="t", spec={}, engine="sglang", deployment_mode="sim", strategy="list",
                    objective="minimize_latency", max_iterations=3)
        s.add(task)
        s.flush()
        first = Experiment(task_id=task.id, seq=1, params={}, state="succeeded", created_at=t0,
                           started_at=t0, finished_at=t0 + timedelta(seconds=45))
        waiting = Experiment(task_id=task.id, seq=2, params={}, state="succeeded", created_at=t0,
                             started_at=t0 + timedelta(seconds=45.04), finished_at=t0 + timedelta(seconds=400))
        idle = Experiment(task_id=task.id, seq=3, params={}, state="succeeded", created_at=t0 + timedelta(seconds=500),
                          started_at=t0 + timedelta(seconds=500), finished_at=t0 + timedelta(seconds=510))
        s.add_all([first, waiting, idle])
        s.flush()
        for exp, start, end in ((first, 0, 45), (waiting, 45.04, 400), (idle, 500, 510)):
            s.add(GpuAllocation(gpu_id=gpu.id, experiment_id=exp.id, attempt=1,
                                allocated_at=t0 + timedelta(seconds=start), released_at=t0 + timedelta(seconds=end)))
    text = build_app().test_client().get("/metrics").get_data(as_text=True)
    # One hand-over (40 ms, the second experiment was waiting); the idle gap before the third is not one.
    assert 'autotuner_handover_gap_seconds_bucket{le="0.025"} 0.0' in text
    assert 'autotuner_handover_gap_seconds_bucket{le="0.05"} 1.0' in text
    assert "autotuner_handover_gap_seconds_count 1.0" in text
    assert 'autotuner_experiment_duration_seconds_bucket{le="60.0"} 2.0' in text
    assert "autotuner_experiment_duration_seconds_count 3.0" in text


@pytest.mark.unit
def test_the_tick_keeps_only_the_recent_pass_timings(db):
    from app import upkeep
    from app.store.db import session_scope
    from app.store.models import PassTiming

    with session_scope() as s:
        s.add_all(PassTiming(seconds=0.01, placed=0) for _ in range(upkeep.KEPT_PASS_TIMINGS + 5))
    upkeep.tick()
    with session_scope() as s:
        # the tick's own pass adds one after pruning
        assert s.query(PassTiming).count() == upkeep.KEPT_PASS_TIMINGS + 1
