"""The API's one error shape: `{"errors": [{"loc": [...], "msg": "..."}]}`."""
from __future__ import annotations

from functools import wraps
from typing import Callable

from flask import jsonify

from app.task_service import Conflict, NotFound


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
