"""The API's one error shape, `{"errors": [{"loc": [...], "msg": "..."}]}`, for every
refusal under /api: the views' own, routing (404, 405), body limits (413), CSRF (400) and
any unexpected exception (500, logged here; the client sees no traceback or path)."""
from __future__ import annotations

import logging
from functools import wraps
from typing import Callable

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError

from app.task_service import Conflict, NotFound

log = logging.getLogger(__name__)


def json_error(status: int, msg: str, loc: list | None = None):
    return jsonify({"errors": [{"loc": loc or [], "msg": msg}]}), status


def task_errors(view: Callable) -> Callable:
    """A task action's refusals as API errors: unknown task 404, wrong state 409."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except NotFound as exc:
            return json_error(404, str(exc), ["task_id"])
        except Conflict as exc:
            return json_error(409, str(exc), ["task_id"])

    return wrapper


def is_api_request() -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def _http_error(exc: HTTPException):
    if not is_api_request():
        return exc  # pages keep Werkzeug's short HTML error pages
    resp, status = json_error(exc.code or 500, exc.description or exc.name)
    resp.headers.update({k: v for k, v in exc.get_headers() if k in ("Allow", "WWW-Authenticate", "Retry-After")})
    return resp, status


def _unexpected(exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    if is_api_request():
        return json_error(500, "internal error; the server log has the details")
    return InternalServerError()


def init_errors(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
