"""The production HTTP server for the web app: gunicorn, threaded workers.

Werkzeug's development server (one thread per connection, no limits) is for tests only.
Gunicorn's `gthread` workers keep a bounded pool of threads per process, honour
keep-alive, restart a worker whose request hangs past `timeout`, and cap request lines
and headers. Put a reverse proxy (nginx, a load balancer) in front when the server faces
an untrusted network: it buffers slow clients, which a thread pool cannot.

Migrations run once, here, before the workers start; the session and CSRF key is made
here too when `AUTOTUNER_SECRET_KEY` is unset, so every worker signs with the same key.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

from gunicorn.app.base import BaseApplication


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    threads: int = 8
    timeout: int = 60  # seconds a request may take before its worker is restarted
    keepalive: int = 5  # seconds an idle keep-alive connection is held
    graceful_timeout: int = 30  # seconds in-flight requests get on SIGTERM

    def gunicorn_settings(self) -> dict[str, Any]:
        return {
            "bind": f"{self.host}:{self.port}",
            "workers": self.workers,
            "worker_class": "gthread",
            "threads": self.threads,
            "timeout": self.timeout,
            "keepalive": self.keepalive,
            "graceful_timeout": self.graceful_timeout,
            "limit_request_line": 8190,
            "limit_request_fields": 100,
            "limit_request_field_size": 8190,
            "accesslog": "-",
            "errorlog": "-",
            # X-Forwarded-Proto (TLS at the proxy, for Secure cookies) is trusted from these.
            "forwarded_allow_ips": os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1"),
        }


class _Gunicorn(BaseApplication):
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.gunicorn_settings().items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from app import create_app

        return create_app({"SKIP_MIGRATIONS": True})  # the master ran them


def serve(options: ServerOptions) -> None:
    """Run until SIGTERM/SIGINT (graceful: in-flight requests finish)."""
    from app.store.migrate import upgrade

    upgrade()
    os.environ.setdefault("AUTOTUNER_SECRET_KEY", secrets.token_hex(32))
    _Gunicorn(options).run()
