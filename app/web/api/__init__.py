"""The JSON API under /api: one blueprint, one module per resource (tasks, experiments,
the GPU pool, task drafts, this API's own description).

Errors have one shape, `{"errors": [{"loc": [...], "msg": "..."}]}` (app/web/errors.py).
Reads need the viewer or user token when one is set; writes need the user token as a
bearer token, or a logged-in session with the CSRF token in `X-CSRFToken` (`api_write`).
"""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api")

from app.web.api import docs, drafts, experiments, pool, tasks  # noqa: E402,F401 - registers the routes
