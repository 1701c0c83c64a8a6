"""`autotuner web` is a production server: gunicorn, as a real process on a free port."""
from __future__ import annotations

import pytest
import json
import os
import signal
import subprocess
import sys
import urllib.request

from tests.helpers import ROOT, free_port, wait_for

pytestmark = pytest.mark.process


def _get(url: str):
    try:
        return urllib.request.urlopen(url, timeout=5)
    except OSError:
        return None


def test_autotuner_web_serves_through_gunicorn_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'web.db'}", AUTOTUNER_HOME=str(tmp_path),
               PYTHONPATH=str(ROOT))
    env.pop("AUTOTUNER_SECRET_KEY", None)
    log = open(tmp_path / "web.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "web", "--port", str(port), "--workers", "2", "--threads", "2",
         "--timeout", "30", "--keep-alive", "2"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        resp = wait_for(lambda: _get(f"http://127.0.0.1:{port}/api/openapi.json"), 60,
                        "autotuner web to answer")
        assert resp.status == 200 and json.load(resp)["openapi"].startswith("3.")
        assert resp.headers["Server"].startswith("gunicorn")
        assert resp.headers["X-Frame-Options"] == "DENY"
        text = (tmp_path / "web.log").read_text()
        assert "Using worker: gthread" in text and text.count("Booting worker") == 2
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=40)
        log.close()
    assert code == 0, (tmp_path / "web.log").read_text()[-3000:]
