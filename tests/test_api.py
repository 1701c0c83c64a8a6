"""The JSON API and the plain pages through Flask's test client, on a real SQLite store.
Submitting enqueues the coordinator job: on the real Redis broker in the test that reads
the message back, on the in-memory broker elsewhere."""
from __future__ import annotations

import json

import pytest

from tests.helpers import build_app, mixed_task


@pytest.fixture
def secured(db):
    return build_app({"AUTH_TOKEN": "s3cret"}).test_client()


@pytest.mark.process
def test_submit_stores_and_enqueues_the_coordinator(client, broker_url):
    import redis

    r = redis.Redis.from_url(broker_url)
    r.delete("control")
    resp = client.post("/api/tasks", json=mixed_task([{"tp-size": 1}, {"tp-size": 2}]))
    assert resp.status_code == 201, resp.json
    body = resp.json
    assert body["status"] == "pending" and body["simulated"] is True
    assert body["counts"]["pending"] == 0 and body["best"] is None
    message = json.loads(r.lpop("control"))
    assert message["headers"]["task"] == "autotuner.coordinate"
    assert message["headers"]["argsrepr"] == f"[{body['id']}]"
    assert client.get(f"/api/tasks/{body['id']}").json["name"] == "mixed-gpu-needs"
    assert [t["id"] for t in client.get("/api/tasks").json["tasks"]] == [body["id"]]


@pytest.mark.unit
def test_invalid_task_gets_every_error_and_stores_nothing(client):
    bad = mixed_task([{"tp-size": 1}])
    bad["optimization"]["objective"] = "fastest"
    bad["benchmark"]["traffic_scenarios"] = ["Z(1,2)"]
    bad["parameters"] = {"Bad Name": [1]}
    resp = client.post("/api/tasks", json=bad)
    assert resp.status_code == 422
    locs = {".".join(map(str, e["loc"])) for e in resp.json["errors"]}
    assert {"optimization.objective", "parameters.Bad Name"} <= locs
    assert any(loc.startswith("benchmark.traffic_scenarios") for loc in locs)
    assert client.get("/api/tasks").json["tasks"] == []
    assert client.post("/api/tasks", data="not json", content_type="application/json").status_code == 422


@pytest.mark.unit
def test_unknown_ids_are_404_with_error_shape(client):
    for url in ("/api/tasks/999", "/api/tasks/999/experiments", "/api/experiments/999"):
        resp = client.get(url)
        assert resp.status_code == 404 and resp.json["errors"][0]["msg"]
    assert client.post("/api/tasks/999/cancel").status_code == 404


@pytest.mark.unit
def test_cancel_then_cancel_again_conflicts(client):
    from app.store.db import session_scope
    from app.store.models import Task

    task_id = client.post("/api/tasks", json=mixed_task([{"tp-size": 1}])).json["id"]
    assert client.post(f"/api/tasks/{task_id}/cancel").json["status"] == "cancelling"
    with session_scope() as s:
        s.get(Task, task_id).status = "cancelled"
    assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 409


@pytest.mark.unit
def test_pool_lists_workers_and_who_holds_each_gpu(client):
    from app.store.pool import GpuSpec, register_worker

    register_worker("gpu-g@h", "g", "h", "gpu.g", 2, [GpuSpec(0, "Simulated H100", 81920, "u0", True),
                                                    GpuSpec(1, "Simulated H100", 81920, "u1", True)], "inc", 1)
    pool = client.get("/api/pool").json
    assert [w["name"] for w in pool["workers"]] == ["gpu-g@h"] and pool["workers"][0]["simulated"]
    assert [g["label"] for g in pool["gpus"]] == ["h:0", "h:1"]
    assert all(g["held_by"] is None for g in pool["gpus"])


@pytest.mark.unit
def test_openapi_describes_every_route(client):
    import re

    doc = client.get("/api/openapi.json").json
    assert doc["openapi"].startswith("3.")
    for rule in client.application.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or rule.rule == "/api/openapi.json":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert path in doc["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], f"{method} {path}"


@pytest.mark.unit
def test_token_required_for_changes_when_configured(secured):
    task = mixed_task([{"tp-size": 1}])
    assert secured.post("/api/tasks", json=task).status_code == 401
    assert secured.post("/api/tasks", json=task, headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = secured.post("/api/tasks", json=task, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 201
    assert secured.get("/api/tasks").status_code == 200  # reading stays open
    assert secured.post(f"/api/tasks/{ok.json['id']}/cancel").status_code == 401


@pytest.mark.unit
def test_pages_render_and_cancel_form_needs_csrf(db):
    from app import create_app

    flask_app = create_app({"TESTING": True})
    c = flask_app.test_client()
    task_id = c.post("/api/tasks", json=mixed_task([{"tp-size": 1}])).json["id"]
    assert b"mixed-gpu-needs" in c.get("/").data
    page = c.get(f"/tasks/{task_id}")
    assert page.status_code == 200 and b"simulated engine and GPUs" in page.data
    assert c.get("/pool").status_code == 200
    # The cancel form without its CSRF token is refused; with it, accepted.
    assert c.post(f"/tasks/{task_id}/cancel").status_code == 400
    token = page.data.split(b'name="csrf_token" value="')[1].split(b'"')[0].decode()
    resp = c.post(f"/tasks/{task_id}/cancel", data={"csrf_token": token})
    assert resp.status_code == 302
    assert c.get(f"/api/tasks/{task_id}").json["status"] == "cancelling"


@pytest.mark.unit
def test_pool_page_shows_utilisation_and_silent_workers(client):
    from datetime import timedelta

    from app.store.db import session_scope
    from app.store.models import Worker, utcnow
    from app.store.pool import GpuSpec, register_worker

    register_worker("gpu-a@h", "a", "h", "gpu.a", 1, [GpuSpec(0, "NVIDIA H100", 81920, "u0", False, 37.0)], "i", 1)
    register_worker("gpu-b@h", "b", "h", "gpu.b", 1, [GpuSpec(1, "NVIDIA H100", 81920, "u1", False)], "j", 1)
    with session_scope() as s:
        w = s.get(Worker, "gpu-b@h")
        w.online, w.last_heartbeat = False, utcnow() - timedelta(seconds=90)
    html = client.get("/pool").data.decode()
    assert "37 %" in html and "offline: stopped heartbeating" in html
    assert "1 of 2 worker(s) online" in html
