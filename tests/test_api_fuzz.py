"""Fuzzing the JSON API from its own OpenAPI document (schemathesis, bounded).

Every operation of /api/openapi.json gets generated requests, valid and invalid per its
schema, including ids no column can hold and bodies the task validator refuses. Whatever
comes in, the API must answer without a server error, and every 4xx must carry the JSON
error shape (never an HTML page or a traceback). Bounded: MAX_EXAMPLES per operation and
no shrinking beyond hypothesis's defaults, about half a minute in all on a 2-core machine.
"""
from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.unit

MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
    old = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url  # module scope: monkeypatch is per test
    from app import create_app

    flask_app = create_app({"TESTING": True})
    yield schemathesis.openapi.from_wsgi("/api/openapi.json", flask_app)
    if old is None:
        os.environ.pop("DATABASE_URL", None)
    else:
        os.environ["DATABASE_URL"] = old
    from app.store.db import dispose_engines

    dispose_engines()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_api_never_fails_and_refuses_in_json(case):
    response = case.call()
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, where
    if 400 <= response.status_code < 500:
        content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [""])
        assert content_type[0].startswith("application/json"), where
        body = json.loads(response.text)
        assert isinstance(body.get("errors"), list) and body["errors"], where
        assert "Traceback" not in response.text, where
