"""The API's one error shape, `{"errors": [{"loc": [...], "msg": "..."}]}`, for every
refusal under /api: the views' own, routing (404, 405), body limits (413), CSRF (400) and
any unexpected exception (500, logged here; the client sees no traceback or path)."""
from __future__ import annotations

import logging
from flask import Flask, jsonify, request
from werkzeug.exceptions import Conflict as WerkzeugConflict
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.exceptions import ServiceUnavailable
from sqlalchemy.exc import DBAPIError

from app.store.db import is_transient
from app.task_service import Conflict, NotFound

log = logging.getLogger(__name__)


def json_error(status: int, msg: str, loc: list | None = None):
    return jsonify({"errors": [{"loc": loc or [], "msg": msg}]}), status


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


def _not_found(exc: NotFound):
    """A view's lookup (app/web/lookup.py) or a task action found nothing."""
    return json_error(404, str(exc), exc.loc) if is_api_request() else WerkzeugNotFound(str(exc))


def _conflict(exc: Conflict):
    """A task action the task's state does not allow (pages flash it instead)."""
    return json_error(409, str(exc), exc.loc) if is_api_request() else WerkzeugConflict(str(exc))


def _database_down(exc: DBAPIError):
    """The store cannot be reached (a restart, a fail-over): say so, and when to retry, instead
    of a 500. Other database errors are bugs and stay 500s."""
    if not is_transient(exc):
        return _unexpected(exc)
    log.warning("database unavailable on %s %s: %s", request.method, request.path, exc.orig)
    msg = "the database is unavailable; try again in a few seconds"
    if is_api_request():
        resp, status = json_error(503, msg)
    else:
        resp, status = ServiceUnavailable(msg).get_response(), 503
    resp.headers["Retry-After"] = "5"
    return resp, status


def init_errors(app: Flask) -> None:
    app.register_error_handler(DBAPIError, _database_down)
    app.register_error_handler(NotFound, _not_found)
    app.register_error_handler(Conflict, _conflict)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
