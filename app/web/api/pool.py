"""/api/pool and /api/gpus: workers, GPUs and who holds each; clearing a quarantine."""
from __future__ import annotations

from flask import jsonify

from app.serializers import pool_dict
from app.store.db import session_scope
from app.store.pool import clear_quarantine, parse_gpu_label
from app.web.api import bp
from app.web.auth import api_write
from app.web.errors import json_error


@bp.get("/pool")
def pool():
    with session_scope(readonly=True) as session:
        return jsonify(pool_dict(session))


@bp.post("/gpus/<label>/clear-quarantine")
@api_write
def clear_gpu_quarantine(label: str):
    """The operator has checked a quarantined GPU: make it allocatable again."""
    try:
        host, index = parse_gpu_label(label)
    except ValueError as exc:
        return json_error(422, str(exc), ["label"])
    if not clear_quarantine(host, index):
        return json_error(404, f"GPU {label} not found", ["label"])
    return jsonify({"gpu": label, "quarantined": False})
