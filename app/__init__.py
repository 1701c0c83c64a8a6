"""Parallel autotuner for LLM inference servers: the Flask application factory."""
from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing app.* in workers must not pull in Flask
    from flask import Flask


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the web app (pages + JSON API). It stores tasks and enqueues the coordinator;
    it never runs experiments itself."""
    from flask import Flask
    from flask_wtf.csrf import CSRFProtect

    from app.config import get_settings, install_for_domain
    from app.domain.limits import MAX_BODY
    from app.store.migrate import upgrade
    from app.web import actions, api, live, ops, pages, submit
    from app.web.auth import init_auth
    from app.web.csrf import init_session
    from app.web.errors import init_errors
    from app.web.headers import init_headers
    from app.web.inputs import BoundedJSONProvider, IdConverter

    settings = get_settings()
    install_for_domain()
    flask_app = Flask(__name__, template_folder="web/templates", static_folder="web/static")
    flask_app.json = BoundedJSONProvider(flask_app)
    flask_app.url_map.converters["int"] = IdConverter  # before any route is added
    flask_app.config.update(
        SECRET_KEY=settings.secret_key or secrets.token_hex(32),
        AUTH_TOKEN=settings.auth_token,
        FLOWER_URL=settings.flower_url,
        MAX_CONTENT_LENGTH=MAX_BODY,
        MAX_FORM_MEMORY_SIZE=MAX_BODY,
        SESSION_COOKIE_SAMESITE="Lax",  # Secure is added per request over TLS (web/csrf.py)
        JSON_SORT_KEYS=False,
    )
    if config:
        flask_app.config.update(config)
    if not flask_app.config.get("SKIP_MIGRATIONS"):
        upgrade()
    csrf = CSRFProtect(flask_app)
    init_session(flask_app)
    init_errors(flask_app)
    init_headers(flask_app)
    init_auth(flask_app)
    # The API is exempt from the *form* CSRF check: its writes are checked by
    # `auth.api_write` (bearer token, or the CSRF header when a session cookie is sent).
    csrf.exempt(api.bp)
    flask_app.register_blueprint(api.bp)
    for blueprint in (pages.bp, live.bp, submit.bp, actions.bp, ops.bp):
        flask_app.register_blueprint(blueprint)
    return flask_app
