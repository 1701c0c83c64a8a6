"""Who may change things. With `AUTOTUNER_AUTH_TOKEN` set, every mutating request needs
`Authorization: Bearer <token>` (API) or a session that logged in with the token (pages);
reading stays open. Without it, the tool trusts its network (the default for a laptop or a
private cluster)."""
from __future__ import annotations

import hmac
from functools import wraps
from typing import Callable

from flask import current_app, jsonify, request, session


def token_ok(given: str | None) -> bool:
    expected = current_app.config.get("AUTH_TOKEN")
    return not expected or (given is not None and hmac.compare_digest(given, expected))


def bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def may_write() -> bool:
    return token_ok(bearer()) or token_ok(session.get("auth_token"))


def api_write(fn: Callable) -> Callable:
    @wraps(fn)
    def wrapper(*args, **kwargs):
        if not may_write():
            return jsonify({"errors": [{"loc": ["header", "Authorization"], "msg": "a valid bearer token is required"}]}), 401
        return fn(*args, **kwargs)

    return wrapper
