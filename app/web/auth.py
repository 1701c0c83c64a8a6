"""Who may read and who may change things.

Two roles, each configured by a token:

- `AUTOTUNER_AUTH_TOKEN` (`AUTH_TOKEN`): *users*, who may submit, cancel, retry and delete.
  With it set, every mutating request needs `Authorization: Bearer <token>` (API) or a
  session that logged in with it (pages).
- `AUTOTUNER_VIEWER_TOKEN` (`VIEWER_TOKEN`): *viewers*. With it set, reading (pages and
  `GET /api/...`) also needs a token, the viewer's or the user's, as a bearer token or a
  logged-in session; anonymous requests get `401` (API) or a redirect to `/login` (pages).
  `/login`, `/logout` and `/static` stay open.

Without either, the tool trusts its network (the default for a laptop or a private
cluster). With only a viewer token, whoever may read may also change things: set both to
separate the roles.

Sessions keep a keyed fingerprint of the token, never the token itself, so changing a
token logs out every session that used it. Tokens are compared with
`hmac.compare_digest` and never logged. Failed logins, and wrong bearer tokens, are
limited per client (`AUTOTUNER_LOGIN_ATTEMPTS` per five minutes); logging out is a CSRF-protected POST, so
no other site can log a user out; API writes by session need the CSRF header (`csrf`).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from functools import wraps
from typing import Callable
from urllib.parse import urlsplit

from flask import Flask, current_app, flash, jsonify, redirect, render_template, request, session, url_for

from app.limits import get_limits
from app.web.csrf import api_write_refusal
from app.web.errors import is_api_request
from app.web.ratelimit import FailureLimiter

USER, VIEWER = "user", "viewer"
# Endpoints anyone may reach even when reading needs a token.
OPEN_ENDPOINTS = {"static", "pages.login", "actions.logout", "ops.healthz"}
# Read by programs (Prometheus), not people: a 401 naming the bearer token, never a login page.
MACHINE_ENDPOINTS = {"ops.metrics"}
_FP_KEY = "token_fp"
LOGIN_WINDOW = 300.0  # seconds over which failed logins are counted
# Browsers drop tabs and newlines from URLs and read "\\" as "/": "/\t/evil.example" is
# "//evil.example" to them. Any such character (or non-ASCII) makes a `next` unusable.
_UNSAFE_NEXT = re.compile(r"[\x00-\x20\x7f\\]")


def _configured(name: str) -> str | None:
    return current_app.config.get(name) or None


def _same(given: str | None, expected: str | None) -> bool:
    if not isinstance(given, str) or not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def _fingerprint(token: str) -> str:
    key = str(current_app.config.get("SECRET_KEY") or "").encode()
    return hmac.new(key, b"autotuner-login\0" + token.encode(), hashlib.sha256).hexdigest()


def role_of_token(given: str | None) -> str | None:
    """USER, VIEWER or None for a presented token (the user token wins if both match)."""
    if _same(given, _configured("AUTH_TOKEN")):
        return USER
    if _same(given, _configured("VIEWER_TOKEN")):
        return VIEWER
    return None


def _session_role() -> str | None:
    fp = session.get(_FP_KEY)
    if not isinstance(fp, str) or not fp:
        return None
    for name, role in (("AUTH_TOKEN", USER), ("VIEWER_TOKEN", VIEWER)):
        token = _configured(name)
        if token and hmac.compare_digest(fp.encode(), _fingerprint(token).encode()):
            return role
    return None


def bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def current_role() -> str | None:
    """The strongest role the request proves, by bearer token or by its session."""
    roles = {role_of_token(bearer()), _session_role()}
    return USER if USER in roles else VIEWER if VIEWER in roles else None


def token_ok(given: str | None) -> bool:
    """May this token log in? Any configured token may; anything may when none is set."""
    if not _configured("AUTH_TOKEN") and not _configured("VIEWER_TOKEN"):
        return True
    return role_of_token(given) is not None


def may_read() -> bool:
    return not _configured("VIEWER_TOKEN") or current_role() is not None


def may_write() -> bool:
    if not _configured("AUTH_TOKEN"):
        return may_read()
    return current_role() == USER


def _unauthorized(msg: str, status: int = 401):
    resp = jsonify({"errors": [{"loc": ["header", "Authorization"], "msg": msg}]})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="autotuner"'
    return resp


def api_write(fn: Callable) -> Callable:
    """API routes that change things: 401 without a user token, 403 for a viewer's token,
    and without a valid bearer token the CSRF checks of `csrf.api_write_refusal`."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        if not may_write():
            if current_role() == VIEWER:
                return _unauthorized("the viewer token may only read; this needs the user token", 403)
            return _unauthorized("a valid bearer token is required")
        refusal = api_write_refusal(role_of_token(bearer()) is not None)
        if refusal is not None:
            return refusal
        return fn(*args, **kwargs)

    return wrapper


def _safe_next(target: str | None) -> str | None:
    """Only paths on this site are followed after logging in: printable ASCII without
    spaces or backslashes (what a browser would strip or rewrite), then no scheme, no host,
    and one leading slash."""
    if not target or not target.isascii() or _UNSAFE_NEXT.search(target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


def require_reader():
    """`before_request` hook: with a viewer token configured, reading needs a token too."""
    if not _configured("VIEWER_TOKEN") or request.endpoint in OPEN_ENDPOINTS:
        return None
    if request.endpoint is None and not is_api_request():
        return None  # an unknown page: let it be a 404
    if may_read():
        return None
    if is_api_request() or request.endpoint in MACHINE_ENDPOINTS:
        return _unauthorized("a valid bearer token (viewer or user) is required")
    target = request.full_path.rstrip("?") if request.method == "GET" else None
    return redirect(url_for("pages.login", next=target) if target else url_for("pages.login"))


def _client() -> str:
    return request.remote_addr or "unknown"


def guard_bearer():
    """`before_request` hook: a wrong bearer token is a failed login too, so the API is no
    faster a way to guess a token than the login page."""
    given = bearer()
    if not given or not (_configured("AUTH_TOKEN") or _configured("VIEWER_TOKEN")):
        return None
    limiter: FailureLimiter = current_app.extensions["login_limiter"]
    wait = limiter.retry_after(_client())
    if wait is not None:
        resp = _unauthorized(f"too many failed logins; try again in {wait:.0f} s", 429)
        resp.headers["Retry-After"] = str(max(1, round(wait)))
        return resp
    if role_of_token(given) is None:
        limiter.failed(_client())
    return None


def login_view():
    """Log in with either token (the page stores a fingerprint of it in the session)."""
    if request.method == "POST":
        csrf = current_app.extensions.get("csrf")
        if csrf is not None:
            csrf.protect()  # also when this runs from a hook ahead of CSRFProtect's own check
        limiter: FailureLimiter = current_app.extensions["login_limiter"]
        client = _client()
        wait = limiter.retry_after(client)
        if wait is not None:
            flash(f"Too many failed logins; try again in {wait:.0f} s.")
            return render_template("login.html"), 429, {"Retry-After": str(max(1, round(wait)))}
        token = request.form.get("token", "")
        role = role_of_token(token)
        if role is not None:
            session[_FP_KEY] = _fingerprint(token)
            flash("Logged in (may submit and cancel)." if role == USER else "Logged in (read only).")
            return redirect(_safe_next(request.args.get("next")) or url_for("pages.index"))
        if token_ok(token):  # nothing configured: there is nothing to log in to
            return redirect(_safe_next(request.args.get("next")) or url_for("pages.index"))
        limiter.failed(client)
        flash("Wrong token.")
    return render_template("login.html")


def logout():
    session.pop(_FP_KEY, None)
    flash("Logged out.")
    return redirect(url_for("pages.login") if current_app.config.get("VIEWER_TOKEN") else url_for("pages.index"))


def init_auth(app: Flask) -> None:
    """Read the viewer token and install the read check; call once in `create_app`."""
    if app.config.get("VIEWER_TOKEN") is None:
        app.config["VIEWER_TOKEN"] = os.environ.get("AUTOTUNER_VIEWER_TOKEN") or None
    if app.extensions.get("autotuner_auth"):
        return
    app.extensions["autotuner_auth"] = True
    app.extensions["login_limiter"] = FailureLimiter(get_limits().login_attempts, LOGIN_WINDOW)
    app.before_request(guard_bearer)
    app.before_request(require_reader)

    @app.context_processor
    def _auth_globals():
        return {
            "auth_role": current_role(),
            "auth_configured": bool(app.config.get("AUTH_TOKEN") or app.config.get("VIEWER_TOKEN")),
        }
