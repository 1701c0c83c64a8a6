"""The API's one error shape: `{"errors": [{"loc": [...], "msg": "..."}]}`."""
from __future__ import annotations

from flask import jsonify


def json_error(status: int, msg: str, loc: list | None = None):
    return jsonify({"errors": [{"loc": loc or [], "msg": msg}]}), status
