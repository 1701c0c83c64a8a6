"""Requests for a coordinator pass on the real Redis broker: at most one per task waits in the
queue, and the pass clears its mark before it reads (app.celery_app.request_coordination)."""
from __future__ import annotations

import json

import pytest
from kombu.exceptions import OperationalError

from app import celery_app


def _queued(r) -> list[dict]:
    return [json.loads(m) for m in r.lrange("control", 0, -1)]


@pytest.fixture
def control(broker_url, db):
    import redis

    r = redis.Redis.from_url(broker_url)
    r.delete("control", *r.keys("autotuner.coordination-pending.*"))
    yield r
    r.delete("control", *r.keys("autotuner.coordination-pending.*"))


@pytest.mark.process
def test_requests_while_a_pass_is_queued_send_nothing_more(control):
    for _ in range(3):
        celery_app.request_coordination(7)
    celery_app.request_coordination(8)
    celery_app.request_coordination()
    sent = [(m["headers"]["argsrepr"], m["headers"]["kwargsrepr"]) for m in _queued(control)]
    assert sorted(args for args, _ in sent) == ["[7]", "[8]", "[None]"]
    assert all("coordination-pending" in kwargs for _, kwargs in sent)  # the mark each pass clears


@pytest.mark.process
def test_the_pass_clears_its_mark_before_it_reads(control, monkeypatch):
    celery_app.request_coordination(7)
    (message,) = _queued(control)
    control.delete("control")
    key = celery_app._pending_key(7)
    assert message["headers"]["kwargsrepr"] == repr({"pending": key})
    seen = []
    # What the pass reads comes after the mark is gone: a result committed meanwhile asks again.
    monkeypatch.setattr(celery_app.coordinator, "coordinate",
                        lambda task_id, again=None: seen.append(control.exists(key)) or [])
    assert celery_app.coordinate.run(7, pending=key) == 0
    assert seen == [0]
    celery_app.request_coordination(7)
    assert [m["headers"]["argsrepr"] for m in _queued(control)] == ["[7]"]


@pytest.mark.process
def test_a_request_the_broker_refused_leaves_no_mark(control, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise OperationalError("broker away")

    with monkeypatch.context() as m:
        m.setattr(celery_app.app, "send_task", refuse)
        celery_app.request_coordination(7)
    assert not control.exists(celery_app._pending_key(7))
    celery_app.request_coordination(7)  # the broker is back: the request is sent
    assert [m["headers"]["argsrepr"] for m in _queued(control)] == ["[7]"]


@pytest.mark.process
def test_marks_are_per_database(control, monkeypatch, tmp_path):
    celery_app.request_coordination(7)
    with monkeypatch.context() as m:
        m.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
        celery_app.request_coordination(7)  # task 7 of another database: a pass of its own
    assert [m["headers"]["argsrepr"] for m in _queued(control)] == ["[7]", "[7]"]
