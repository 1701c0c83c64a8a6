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
    from app.migrate import upgrade
    from app.web import api, pages

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
    csrf.exempt(api.bp)  # the API authenticates with a bearer token, not a browser session
    flask_app.register_blueprint(api.bp)
    flask_app.register_blueprint(pages.bp)
    return flask_app
