"""Cross-site request forgery on the API, and the session cookie's attributes.

The page forms carry Flask-WTF's CSRF token. The API blueprints are exempt from that form
check because scripts authenticate with a bearer token, which a browser never attaches to
a cross-site request. But the API also accepts the page's session, and a browser does
attach cookies: so an API write that is not authenticated by a valid bearer token must
come from this site's own pages, which prove it with the CSRF token in the `X-CSRFToken`
header (whenever a session cookie is sent), and a browser's `Origin`, when present, must
be this site's. The session cookie is `SameSite=Lax` (not sent on cross-site POSTs at all)
and `Secure` whenever the request came over TLS.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, current_app, has_request_context, request
from flask.sessions import SecureCookieSessionInterface

from app.web.errors import json_error


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, marked Secure on requests that came over TLS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return super().get_cookie_secure(app) or (has_request_context() and request.is_secure)


def _same_origin(origin: str) -> bool:
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host


def api_write_refusal(authenticated_by_bearer: bool):
    """None when an API write may proceed; else the JSON refusal (the CSRF check raises
    Flask-WTF's CSRFError, a 400 the error handler answers as JSON)."""
    if authenticated_by_bearer:
        return None
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(origin):
        return json_error(403, f"cross-origin write refused (Origin {origin[:100]!r})", ["header", "Origin"])
    if current_app.config["SESSION_COOKIE_NAME"] in request.cookies:
        current_app.extensions["csrf"].protect()
    return None


def init_session(app: Flask) -> None:
    """Install the session interface; `create_app` sets SESSION_COOKIE_SAMESITE=Lax."""
    app.session_interface = SessionInterface()
