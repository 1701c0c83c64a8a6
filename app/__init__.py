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

    from app.config import get_settings
    from app.store.migrate import upgrade
    from app.web import actions, api, live, pages, submit
    from app.web.auth import init_auth

    settings = get_settings()
    flask_app = Flask(__name__, template_folder="web/templates", static_folder="web/static")
    flask_app.config.update(
        SECRET_KEY=settings.secret_key or secrets.token_hex(32),
        AUTH_TOKEN=settings.auth_token,
        FLOWER_URL=settings.flower_url,
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    if config:
        flask_app.config.update(config)
    if not flask_app.config.get("SKIP_MIGRATIONS"):
        upgrade()
    csrf = CSRFProtect(flask_app)
    init_auth(flask_app)
    # The API blueprints authenticate with a bearer token, not a browser session: no CSRF.
    for blueprint in (api.bp, submit.api_bp, actions.api_bp):
        csrf.exempt(blueprint)
        flask_app.register_blueprint(blueprint)
    for blueprint in (pages.bp, live.bp, submit.bp, actions.bp):
        flask_app.register_blueprint(blueprint)
    return flask_app
