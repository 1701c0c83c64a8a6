"""For the machines that run the web app: `/healthz` (load balancers, Kubernetes probes,
the image's HEALTHCHECK) and `/metrics` (Prometheus)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.metrics import registry

bp = Blueprint("ops", __name__)
_REGISTRY = registry()


@bp.get("/healthz")
def healthz():
    """200 when the database and the broker both answer; 503 naming the one that does not.
    Open without a token: it says nothing but "up"."""
    from app.celery_app import app as celery
    from app.store.db import ping

    checks: dict[str, str] = {}
    try:
        ping()
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    resp = jsonify({"status": "ok" if healthy else "unavailable", **checks})
    resp.status_code = 200 if healthy else 503
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/metrics")
def metrics():
    return Response(generate_latest(_REGISTRY), mimetype=CONTENT_TYPE_LATEST)
