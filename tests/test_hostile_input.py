"""One test per row of issue 8's table: what an attacker with a viewer token (or none) sent,
and what must happen now. Each of these failed on the code before the fix.

Memory probes run the app in a child process whose address space is capped with
RLIMIT_AS, so a regression fails with MemoryError there instead of eating the machine.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import select

from app.coordinator import coordinate
from app.store.db import session_scope
from app.store.models import Experiment, Task
from tests.helpers import (ROOT, USER, VIEWER, bearer, build_app, csrf_from, experiments, login, mixed_task, submit,
                           task_status)

PROBE_MEMORY = 768 * 1024 * 1024  # the app needs ~100 MB; the old code needed gigabytes


def run_capped(body: str, tmp_path) -> str:
    """Run `body` (with `client`, a test client of a fresh app) in a child process limited
    to PROBE_MEMORY of address space; returns its stdout, fails with its output."""
    script = textwrap.dedent('''
        import json, os
        from app import create_app
        client = create_app({"TESTING": True}).test_client()
    ''') + textwrap.dedent(body)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (PROBE_MEMORY, PROBE_MEMORY))

    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'probe.db'}", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=cap, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def sim_task(**overrides) -> dict:
    task = {"task_name": "hostile", "base_runtime": "sim", "model": {"id_or_path": "llama-3-8b"},
            "parameters": {"max-running-requests": [16, 32]}}
    task.update(overrides)
    return task


def raw(client, path: str, text: str):
    return client.post(path, data=text, content_type="application/json")


def assert_json_refusal(resp, status: int | tuple = (400, 404, 413, 422)) -> list[dict]:
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.data[:300])
    assert resp.is_json and resp.json["errors"], resp.data[:300]
    assert b"Traceback" not in resp.data and str(ROOT).encode() not in resp.data
    return resp.json["errors"]


# -- row 1: a huge integer range in the preview ------------------------------------------------


@pytest.mark.process
def test_row01_preview_of_huge_integer_ranges_is_computed_not_materialised(tmp_path):
    out = run_capped('''
        base = {"task_name": "x", "base_runtime": "sim", "model": {"id_or_path": "m"},
                "optimization": {"strategy": "random"}}
        for high in (10**7, 10**9):  # as the issue sent it, and 100x more
            r = client.post("/api/tasks/preview", json=dict(base, parameters={"tp-size": {"type": "int", "low": 1, "high": high}}))
            assert r.status_code == 200 and r.json["errors"], r.json  # a parallelism degree above the limit
        r = client.post("/api/tasks/preview", json=dict(base, parameters={
            "max-running-requests": {"type": "int", "low": 1, "high": 10**15},
            "tp-size": {"type": "int", "low": 1, "high": 1024}}))
        print(json.dumps(r.json))
    ''', tmp_path)
    preview = json.loads(out)
    assert preview["errors"] == [] and preview["grid_size"] == 10**15 * 1024
    assert preview["gpus_per_experiment"][0] == 1


# -- row 2: a YAML alias bomb --------------------------------------------------------------------


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.process
def test_row02_yaml_alias_bomb_is_refused_quickly(tmp_path):
    assert len(BOMB) < 500
    out = run_capped(f'''
        bomb = {BOMB!r}
        for path in ("/api/tasks/parse?form=1", "/api/tasks/parse"):
            for r in (client.post(path, data=bomb, content_type="text/plain"), client.post(path, json={{"text": bomb}})):
                assert r.status_code == 422, (r.status_code, r.data[:200])
                print(r.json["errors"][0]["msg"])
    ''', tmp_path)
    assert out.count("aliases (*name) are not allowed") == 4


@pytest.mark.process
def test_row02_task_files_get_the_same_limits(tmp_path):
    from app.domain.taskspec import TaskSpecError, load_task_file

    for name, text, why in (("bomb.yaml", BOMB, "aliases"), ("deep.yaml", "[" * 100 + "]" * 100, "nested deeper"),
                            ("deep.json", "[" * 100_000 + "]" * 100_000, "nested deeper")):
        (tmp_path / name).write_text(text)
        with pytest.raises(TaskSpecError) as info:
            load_task_file(tmp_path / name)
        assert why in info.value.errors[0]["msg"], info.value.errors


# -- row 3: cross-site writes riding on the session cookie ---------------------------------------


@pytest.mark.unit
def test_row03_session_cookie_alone_cannot_write_through_the_api(pool):
    flask_app = build_app({"AUTH_TOKEN": USER, "VIEWER_TOKEN": VIEWER})
    c = flask_app.test_client()
    task_id = submit(mixed_task([{"tp-size": 1}] * 2, parallel=1))
    assert login(c, USER).status_code == 302
    for path in (f"/api/tasks/{task_id}/cancel", f"/api/tasks/{task_id}/retry"):
        errors = assert_json_refusal(c.post(path), 400)  # what a cross-site form post carries
        assert "CSRF" in errors[0]["msg"]
        assert_json_refusal(c.post(path, headers={"Origin": "https://evil.example"}), 403)
    assert task_status(task_id) == "pending"
    # The site's own page (CSRF header) and scripts (bearer token) still may.
    token = csrf_from(c, "/")
    assert c.post(f"/api/tasks/{task_id}/cancel", headers={"X-CSRFToken": token}).status_code == 200
    assert c.post(f"/api/tasks/{task_id}/cancel", headers=bearer(USER)).status_code == 200


@pytest.mark.unit
def test_row03_session_cookie_is_samesite_lax_and_secure_over_tls(pool):
    flask_app = build_app({"AUTH_TOKEN": USER})
    plain = flask_app.test_client()
    assert "SameSite=Lax" in login(plain, USER).headers["Set-Cookie"]
    tls = flask_app.test_client()
    page = tls.get("/login", base_url="https://localhost")
    token = page.data.split(b'name="csrf_token" value="')[1].split(b'"')[0].decode()
    resp = tls.post("/login", data={"token": USER, "csrf_token": token}, base_url="https://localhost",
                    headers={"Referer": "https://localhost/login"})
    cookie = resp.headers["Set-Cookie"]
    assert resp.status_code == 302 and "Secure" in cookie and "SameSite=Lax" in cookie and "HttpOnly" in cookie


# -- row 4: open redirect after login ------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("target", [
    "/%09/evil.example", "/%0a/evil.example", "/%0d/evil.example", "/%00/evil.example", "/%20/evil.example",
    "/\\evil.example", "//evil.example", "https://evil.example", "javascript:alert(1)", "/%E3%80%80/evil.example",
    "%2F%2Fevil.example",
])
def test_row04_login_next_never_leaves_the_site(pool, target):
    c = build_app({"AUTH_TOKEN": USER}).test_client()
    resp = c.post(f"/login?next={target}", data={"token": USER, "csrf_token": csrf_from(c)})
    assert resp.status_code == 302 and resp.headers["Location"] == "/", resp.headers["Location"]


@pytest.mark.unit
def test_row04_login_next_on_the_site_is_followed(pool):
    c = build_app({"AUTH_TOKEN": USER}).test_client()
    resp = c.post("/login?next=/tasks/3?page=2", data={"token": USER, "csrf_token": csrf_from(c)})
    assert resp.headers["Location"] == "/tasks/3?page=2"


# -- rows 5, 6, 7, 8, 10: numbers, lengths and shapes a task may not have ------------------------


@pytest.mark.parametrize("change, where", [
    ({"benchmark": {"num_concurrency": [100000000000000000000]}}, ["benchmark", "num_concurrency", 0]),
    ({"benchmark": {"num_concurrency": [1e20]}}, ["benchmark", "num_concurrency", 0]),
    ({"benchmark": {"max_concurrency": 10**9}}, ["benchmark", "max_concurrency"]),
    ({"benchmark": {"max_requests_per_iteration": 10**12}}, ["benchmark", "max_requests_per_iteration"]),
    ({"benchmark": {"warmup_requests": 10**12}}, ["benchmark", "warmup_requests"]),
    ({"parameters": {"tp-size": [100000000000000000000]}}, ["parameters", "tp-size"]),
    ({"parameters": {"tp-size": [4096]}}, ["parameters", "tp-size"]),
    ({"optimization": {"max_parallel_experiments": 100000000000000000000}}, ["optimization", "max_parallel_experiments"]),
    ({"optimization": {"max_iterations": 10**9}}, ["optimization", "max_iterations"]),
    ({"optimization": {"max_attempts": 10**6}}, ["optimization", "max_attempts"]),
    ({"optimization": {"seed": 2**64}}, ["optimization", "seed"]),
    ({"description": "d" * 1_900_000}, ["description"]),
    ({"parameters": {"max-running-requests": ["v" * 200_000]}}, ["parameters", "max-running-requests"]),
])
@pytest.mark.unit
def test_rows_05_06_07_10_out_of_range_numbers_and_long_text_are_422(pool, change, where):
    c = build_app().test_client()
    errors = assert_json_refusal(c.post("/api/tasks", json=sim_task(**change)), 422)
    assert any(e["loc"][: len(where)] == where for e in errors), errors
    with session_scope() as s:
        assert s.execute(select(Task)).first() is None


@pytest.mark.parametrize("body", [
    '"optimization": {"timeout_per_iteration": Infinity}',
    '"benchmark": {"max_time_per_iteration": Infinity}',
    '"benchmark": {"request_rate": [1, Infinity]}',
    '"benchmark": {"request_rate": [NaN]}',
    '"slo": {"ttft": {"threshold": Infinity}}',
    '"parameters": {"mem-fraction-static": [0.8, -Infinity]}',
    '"benchmark": {"additional_params": {"x": NaN}}',
])
@pytest.mark.unit
def test_row08_infinity_and_nan_are_422(pool, body):
    c = build_app().test_client()
    text = '{"task_name": "inf", "base_runtime": "sim", "model": {"id_or_path": "m"}, ' + body + "}"
    errors = assert_json_refusal(raw(c, "/api/tasks", text), 422)
    assert any("finite" in e["msg"] for e in errors), errors


@pytest.mark.unit
def test_row07_hostile_shapes_get_json_4xx_never_html_500(pool):
    c = build_app().test_client()
    task_id = submit(mixed_task([{"tp-size": 1}], parallel=1))
    huge = 2**63
    for method, path in (("get", f"/api/tasks/{huge}"), ("get", f"/api/experiments/{huge}"),
                         ("get", f"/api/tasks/{huge}/live"), ("get", f"/api/tasks/{huge}/export"),
                         ("post", f"/api/tasks/{huge}/cancel"), ("post", f"/api/tasks/{huge}/retry"),
                         ("delete", f"/api/tasks/{huge}"), ("get", f"/api/tasks/{2**31}/charts"),
                         ("get", "/api/no-such-route"), ("put", "/api/tasks")):
        assert_json_refusal(getattr(c, method)(path), (404, 405))
    pages = build_app().test_client()  # pages set a session cookie, which API writes would then need CSRF for
    for path in (f"/tasks/{huge}", f"/experiments/{huge}", f"/tasks/new?clone={huge}"):
        assert pages.get(path).status_code == 404
    # A page far past the end is the last page.
    live = c.get(f"/api/tasks/{task_id}/live?page={10**30}&per_page={10**30}")
    assert live.status_code == 200 and live.json["experiments"]["page"] == 1
    assert pages.get(f"/tasks/{task_id}?page={10**30}").status_code == 200
    # JSON nested 10^5 deep, on every route that reads a JSON body.
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/api/tasks", "/api/tasks/preview", "/api/tasks/parse"):
        assert_json_refusal(raw(c, path, deep))
    assert_json_refusal(raw(c, "/api/tasks/parse", json.dumps({"text": deep})))
    assert_json_refusal(raw(c, "/api/tasks", json.dumps(sim_task(sim={"x": json.loads("[" * 50 + "]" * 50)}))), 422)
    for field in ("extra_json", "list_configs"):  # the New task form's JSON boxes
        form = c.post("/api/tasks/preview", data={field: "[" * 900 + "]" * 900})
        assert form.status_code == 200 and "nested deeper" in form.json["errors"][0]["msg"]
    # A lone surrogate (valid JSON escape, not valid Unicode) in a stored field.
    text = json.dumps(sim_task(description="PLACEHOLDER")).replace("PLACEHOLDER", "\\ud800")
    errors = assert_json_refusal(raw(c, "/api/tasks", text), 422)
    assert errors[0]["loc"] == ["description"] and "surrogate" in errors[0]["msg"]
    # Over the body limit.
    assert_json_refusal(raw(c, "/api/tasks", " " * (3 * 1024 * 1024)), 413)


# -- row 6: one bad task never stops the others ----------------------------------------------------


@pytest.mark.unit
def test_row06_a_task_whose_pass_raises_fails_alone(pool, caplog):
    bad = submit(mixed_task([{"tp-size": 1}], parallel=1))
    good = submit(mixed_task([{"tp-size": 1}] * 2, parallel=2))
    with session_scope() as s:  # as stored by the old code, which accepted it
        task = s.get(Task, bad)
        task.spec = dict(task.spec, parameters={"tp-size": [100000000000000000000]},
                         optimization=dict(task.spec["optimization"], strategy="grid_search", configs=None))
    coordinate(None)
    coordinate(None)
    with session_scope() as s:
        failed = s.get(Task, bad)
        assert failed.status == "failed" and "coordinator error" in failed.error and "tp-size" in failed.error
    assert task_status(good) == "running" and len(experiments(good)) == 2
    assert sum("marked failed" in r.getMessage() for r in caplog.records) == 1  # logged once


# -- row 9: many parallel experiments on a huge grid ---------------------------------------------------


@pytest.mark.unit
def test_row09_parallelism_is_capped_per_pass_and_by_the_pool(pool, monkeypatch):
    c = build_app().test_client()
    grid = sim_task(parameters={"max-running-requests": {"type": "int", "low": 1, "high": 10**7}},
                    optimization={"strategy": "grid_search", "max_parallel_experiments": 2000})
    assert_json_refusal(c.post("/api/tasks", json=grid), 422)  # above AUTOTUNER_MAX_PARALLEL
    grid["optimization"]["max_parallel_experiments"] = 1000
    task_id = submit(grid)
    with session_scope() as s:
        assert s.get(Task, task_id).max_iterations == 100_000  # the grid's first ones, with a note
    monkeypatch.setenv("AUTOTUNER_MAX_NEW_PER_PASS", "3")
    coordinate(task_id)
    assert len(experiments(task_id)) == 3  # one pass creates at most AUTOTUNER_MAX_NEW_PER_PASS
    for _ in range(8):
        coordinate(task_id)
    with session_scope() as s:  # never more than the pool's 8 GPUs can run, and twice as many created ahead
        assert s.execute(select(Experiment).where(Experiment.task_id == task_id)).scalars().all().__len__() == 24


# -- row 11: headers, logout, failed logins ---------------------------------------------------------


@pytest.mark.unit
def test_row11_security_headers_on_every_response(pool):
    c = build_app({"AUTH_TOKEN": USER}).test_client()
    task_id = submit(mixed_task([{"tp-size": 1}], parallel=1))
    for path in ("/", f"/tasks/{task_id}", "/tasks/new", "/login", "/static/style.css", "/api/tasks",
                 "/api/openapi.json", "/nowhere", "/api/nowhere"):
        resp = c.get(path)
        csp = resp.headers.get("Content-Security-Policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert resp.headers["X-Frame-Options"] == "DENY", path
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        assert resp.headers["Referrer-Policy"], path
    # No page carries inline script or style the CSP would block.
    for path in ("/", f"/tasks/{task_id}", "/tasks/new", "/login", "/pool"):
        html = c.get(path).data.decode()
        assert "<style" not in html and " style=" not in html and " onsubmit=" not in html, path
        assert "<script>" not in html, path


@pytest.mark.unit
def test_row11_logout_is_a_post_with_csrf(pool):
    c = build_app({"AUTH_TOKEN": USER, "VIEWER_TOKEN": VIEWER}).test_client()
    assert login(c, VIEWER).status_code == 302
    assert c.get("/logout").status_code == 405
    assert c.post("/logout").status_code == 400  # no CSRF token: another site cannot log you out
    assert c.get("/").status_code == 200
    assert c.post("/logout", data={"csrf_token": csrf_from(c, "/")}).status_code == 302
    assert c.get("/").status_code == 302


@pytest.mark.unit
def test_row11_failed_logins_are_limited_per_client(pool, monkeypatch):
    monkeypatch.setenv("AUTOTUNER_LOGIN_ATTEMPTS", "3")
    flask_app = build_app({"AUTH_TOKEN": USER})
    c = flask_app.test_client()
    for _ in range(3):
        assert login(c, "guess").status_code == 200
    blocked = login(c, USER)  # even the right token waits now
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    other = flask_app.test_client()  # another client is not affected
    resp = other.post("/login", data={"token": USER, "csrf_token": csrf_from(other)},
                      environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert resp.status_code == 302


@pytest.mark.unit
def test_row11_wrong_bearer_tokens_count_as_failed_logins(pool, monkeypatch):
    monkeypatch.setenv("AUTOTUNER_LOGIN_ATTEMPTS", "3")
    c = build_app({"AUTH_TOKEN": USER}).test_client()
    for _ in range(3):
        assert_json_refusal(c.post("/api/tasks/1/cancel", headers=bearer("guess")), 401)
    assert_json_refusal(c.get("/api/tasks", headers=bearer(USER)), 429)
    assert login(c, USER).status_code == 429  # one allowance for the page and the API
