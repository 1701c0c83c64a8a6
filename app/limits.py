"""Every upper bound a request or a task is held to, in one place.

The web app is reachable by anyone holding a viewer token (or by anyone, when no token is
set), so no input may buy unbounded memory, CPU or database rows. Each bound below has a
default that fits real tuning work with room to spare; the ones an operator may need to
raise are read from an `AUTOTUNER_MAX_*` variable *when checked* (not at import), so tests
and processes started with a different environment see their own values.

| variable | default | bounds |
| --- | --- | --- |
| AUTOTUNER_MAX_CONCURRENCY | 10000 | benchmark.num_concurrency, max_concurrency |
| AUTOTUNER_MAX_REQUEST_RATE | 100000 | benchmark.request_rate (requests/s) |
| AUTOTUNER_MAX_REQUESTS | 1000000 | benchmark.max_requests_per_iteration |
| AUTOTUNER_MAX_WARMUP | 100000 | benchmark.warmup_requests |
| AUTOTUNER_MAX_SECONDS | 86400 | max_time_per_iteration, timeout_per_iteration, sim.startup_seconds |
| AUTOTUNER_MAX_ITERATIONS | 100000 | optimization.max_iterations (a larger grid runs its first ones) |
| AUTOTUNER_MAX_PARALLEL | 1024 | optimization.max_parallel_experiments |
| AUTOTUNER_MAX_ATTEMPTS | 100 | optimization.max_attempts |
| AUTOTUNER_MAX_PARALLEL_DEGREE | 1024 | each tp / pp / dp value: GPUs of one engine |
| AUTOTUNER_MAX_NEW_PER_PASS | 64 | experiments one coordinator pass creates for one task |
| AUTOTUNER_LOGIN_ATTEMPTS | 10 | failed logins per client per five minutes (per web process) |

Fixed (not configurable, they protect the process itself): integers in the signed 64-bit
range, floats finite, documents at most `MAX_DEPTH` deep and `MAX_NODES` values, strings at
most `MAX_TEXT` characters (descriptions `MAX_DESCRIPTION`, argv values `MAX_ARG`), request
bodies at most `MAX_BODY` bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_BODY = 2 * 1024 * 1024  # bytes of one request body (Flask's MAX_CONTENT_LENGTH)
MAX_DEPTH = 32  # nesting of a task document (JSON or YAML); real files use 4
MAX_NODES = 100_000  # values in one task document
MAX_TEXT = 10_000  # characters of any string in a task document
MAX_DESCRIPTION = 10_000  # characters of a task's description
MAX_ARG = 1_000  # characters of one value that becomes an engine argument
MAX_SLO_SECONDS = 1e6  # an SLO threshold; far above any latency worth measuring
MAX_FACTOR = 1e6  # SLO weights, burstiness, sim.time_scale

_DEFAULTS = {
    "max_concurrency": ("AUTOTUNER_MAX_CONCURRENCY", 10_000),
    "max_request_rate": ("AUTOTUNER_MAX_REQUEST_RATE", 100_000),
    "max_requests": ("AUTOTUNER_MAX_REQUESTS", 1_000_000),
    "max_warmup": ("AUTOTUNER_MAX_WARMUP", 100_000),
    "max_seconds": ("AUTOTUNER_MAX_SECONDS", 86_400),
    "max_iterations": ("AUTOTUNER_MAX_ITERATIONS", 100_000),
    "max_parallel": ("AUTOTUNER_MAX_PARALLEL", 1_024),
    "max_attempts": ("AUTOTUNER_MAX_ATTEMPTS", 100),
    "max_parallel_degree": ("AUTOTUNER_MAX_PARALLEL_DEGREE", 1_024),
    "max_new_per_pass": ("AUTOTUNER_MAX_NEW_PER_PASS", 64),
    "login_attempts": ("AUTOTUNER_LOGIN_ATTEMPTS", 10),
}
# Counts stored in 32-bit INTEGER columns (PostgreSQL) may not be raised past this.
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    max_concurrency: int
    max_request_rate: int
    max_requests: int
    max_warmup: int
    max_seconds: int
    max_iterations: int
    max_parallel: int
    max_attempts: int
    max_parallel_degree: int
    max_new_per_pass: int
    login_attempts: int


def _read(env: str, default: int) -> int:
    raw = os.environ.get(env)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{env} must be a whole number, got {raw!r}") from None
    if not 1 <= value <= _INT32_MAX:
        raise SystemExit(f"{env} must be between 1 and {_INT32_MAX}, got {value}")
    return value


def get_limits() -> Limits:
    """The limits in force now (environment read on each call: it is cheap)."""
    return Limits(**{name: _read(env, default) for name, (env, default) in _DEFAULTS.items()})


def env_name(limit: str) -> str:
    """The variable that raises `limit`, for error messages that say how."""
    return _DEFAULTS[limit][0]
