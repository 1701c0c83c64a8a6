"""The limits on user input as this process's environment sets them: read here, at the edge,
and installed for the domain by `app.config.install_for_domain` (app/domain/limits.py has every
bound, its default and the variable that raises it); the coordinator and the login limiter read
them when they apply them."""
from __future__ import annotations

import os

from app.domain.limits import INT32_MAX, LIMIT_NAMES, Limits, env_name


def _read(env: str, default: int) -> int:
    raw = os.environ.get(env)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{env} must be a whole number, got {raw!r}") from None
    if not 1 <= value <= INT32_MAX:
        raise SystemExit(f"{env} must be between 1 and {INT32_MAX}, got {value}")
    return value


def get_limits() -> Limits:
    """The limits the environment sets now (a cheap read)."""
    defaults = Limits()
    return Limits(**{name: _read(env_name(name), getattr(defaults, name)) for name in LIMIT_NAMES})
