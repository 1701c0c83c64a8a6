"""Security headers on every response.

Every script, stylesheet and image is served by the app itself (Chart.js is vendored), so
the Content-Security-Policy allows this origin only, with no inline script or style: an
injected `<script>` or `onclick=` cannot run even if escaping were ever missed. Framing is
refused (clickjacking), MIME sniffing is off, and the Referer sent elsewhere carries the
origin only (task pages' paths never leave the site).
"""
from __future__ import annotations

from flask import Flask, Response

CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _add_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def init_headers(app: Flask) -> None:
    app.after_request(_add_headers)
