"""End to end in a real browser: headless Chromium (Debian's `chromium` package) driven by
Playwright. Fill the new-task form from a pasted task file, submit, watch the task page
until the task completes on simulated GPUs (real Celery workers, real sim engines), open
the best experiment. Screenshots go to $AUTOTUNER_SCREENSHOTS when set (the README's)."""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import Stack, chromium, free_port, mixed_task, wait_for

pytestmark = pytest.mark.integration


CHROMIUM = chromium()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("needs the playwright package and Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def web_stack(sqlite_url, broker_url, tmp_path, monkeypatch):
    """Coordinator, a 2-GPU simulated worker and the web app as real processes."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=sqlite_url, CELERY_BROKER_URL=broker_url, AUTOTUNER_HOME=str(tmp_path / "home"),
               AUTOTUNER_TICK_INTERVAL="1", AUTOTUNER_HEARTBEAT_INTERVAL="1")
    for k in ("DATABASE_URL", "CELERY_BROKER_URL", "AUTOTUNER_HOME"):
        monkeypatch.setenv(k, env[k])
    stack = Stack(env=env, home=tmp_path)
    stack.start("coordinator", "coordinator")
    stack.start("worker", "worker", "--simulated-gpus", "2")
    stack.start("web", "web", "--port", str(port))
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            with urllib.request.urlopen(url + "/api/pool", timeout=2) as resp:
                return any(w["online"] for w in json.load(resp)["workers"])
        except OSError:
            return False

    try:
        wait_for(ready, 90, "the web app and the worker", stack)
        yield url, stack
    finally:
        stack.stop()


def shot(page, name: str) -> None:
    folder = os.environ.get("AUTOTUNER_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_submit_in_the_form_watch_it_complete_open_the_best(browser, web_stack):
    url, stack = web_stack
    task = mixed_task([{"tp-size": 1}, {"tp-size": 2}, {"tp-size": 1}, {"tp-size": 2}], parallel=2)
    task["task_name"] = "browser-e2e"
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1360, "height": 900})
    # Every page runs under the app's self-only CSP: a blocked script or style is a failure.
    csp_violations: list[str] = []
    page.on("console", lambda msg: csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.goto(url + "/tasks/new")
    page.fill("#task-json", json.dumps(task, indent=2))
    page.click("#fill-from-json")
    # Locator assertions, not wait_for_function: the CSP forbids the eval that needs.
    expect(page.locator("#task_name")).to_have_value("browser-e2e")
    assert page.input_value("#strategy") == "list"
    expect(page.locator("#preview")).to_contain_text("4")
    shot(page, "new-task")
    page.click("#submit-task")
    page.wait_for_url("**/tasks/*")
    assert page.locator("#task-status").count() == 1
    expect(page.locator("#task-status")).to_have_text("completed", timeout=180_000)
    page.wait_for_selector("#best")
    shot(page, "task")
    page.locator("#best a").first.click()
    page.wait_for_url("**/experiments/*")
    assert "succeeded" in page.content()
    shot(page, "experiment")
    page.goto(url + "/")
    assert "browser-e2e" in page.content()
    shot(page, "tasks")
    page.goto(url + "/pool")
    assert "simulated" in page.content()
    shot(page, "pool")
    assert not csp_violations, csp_violations
