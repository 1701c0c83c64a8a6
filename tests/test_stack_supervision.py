"""Long-lived processes supervise themselves: a fatal Celery error is a non-zero exit, and
the embedded stack restarts a child that exited (up to a budget), with real processes."""
from __future__ import annotations

import sys

import pytest

from app import stack as stack_module
from app.stack import Stack

pytestmark = pytest.mark.process


def test_a_fatal_worker_error_is_a_non_zero_exit(monkeypatch):
    from app import celery_app

    calls = []
    monkeypatch.setattr(celery_app.app, "start", lambda argv: calls.append(argv) or 1)
    with pytest.raises(SystemExit) as exc:
        celery_app.run_worker_process(["-Q", "control"])
    assert exc.value.code == 1 and calls == [["worker", "-Q", "control"]]
    monkeypatch.setattr(celery_app.app, "start", lambda argv: 0)
    celery_app.run_worker_process(["-Q", "control"])  # a clean stop returns normally


def test_the_embedded_stack_restarts_a_dead_child_then_gives_up(tmp_path, monkeypatch):
    monkeypatch.setattr(stack_module, "MAX_RESTARTS", 2)
    s = Stack(home=tmp_path)
    counter = tmp_path / "starts"
    script = f"open({str(counter)!r}, 'a').write('x'); raise SystemExit(3)"
    child = s._spawn("flaky", [sys.executable, "-c", script], {"PATH": "/usr/bin:/bin"})
    try:
        for expected_starts in (2, 3):
            child.proc.wait(timeout=30)
            restarted, give_up = s.supervise()
            assert give_up is None
            assert restarted == [f"flaky exited with status 3; restarted (see {child.log})"]
            child.proc.wait(timeout=30)
            assert counter.read_text() == "x" * expected_starts
        restarted, give_up = s.supervise()
        assert restarted == [] and give_up.startswith("flaky exited 3 times within 60s (last status 3)")
    finally:
        s.stop()


def _children(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            if int(raw[raw.rfind(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sigkill_of_the_coordinator_leaves_no_process_behind(stack):
    """No embedded beat to orphan (the tick is a thread of the main process), and the pool
    children die with their parent."""
    import os
    import signal

    from tests.conftest import wait_for
    from tests.engine_fixtures import alive, wait_gone

    coordinator = stack.start("coordinator", "coordinator", "--concurrency", "2")
    pool = wait_for(lambda: len(_children(coordinator.pid)) >= 2 and _children(coordinator.pid), 60,
                    "the coordinator's pool processes", stack)
    assert all(alive(p) for p in pool)
    os.kill(coordinator.pid, signal.SIGKILL)
    coordinator.wait()
    wait_gone(pool)
