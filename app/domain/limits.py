"""Every upper bound a request or a task is held to, in one place.

The web app is reachable by anyone holding a viewer token (or by anyone, when no token is
set), so no input may buy unbounded memory, CPU or database rows. Each bound below has a
default that fits real tuning work with room to spare; the ones an operator may need to
raise come from an `AUTOTUNER_MAX_*` variable, read once per process at its edge (the CLI's
start, the web app's factory: `app.config.install_for_domain`) and installed here; the
domain reads the installed values (`current()`) and never the environment. Unset, the
defaults below apply.

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

from dataclasses import dataclass, fields

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_BODY = 2 * 1024 * 1024  # bytes of one request body (Flask's MAX_CONTENT_LENGTH)
MAX_DEPTH = 32  # nesting of a task document (JSON or YAML); real files use 4
MAX_NODES = 100_000  # values in one task document
MAX_TEXT = 10_000  # characters of any string in a task document
MAX_DESCRIPTION = 10_000  # characters of a task's description
MAX_ARG = 1_000  # characters of one value that becomes an engine argument
MAX_SLO_SECONDS = 1e6  # an SLO threshold; far above any latency worth measuring
MAX_FACTOR = 1e6  # SLO weights, burstiness, sim.time_scale
INT32_MAX = 2**31 - 1  # counts stored in 32-bit INTEGER columns (PostgreSQL) may not be raised past this


@dataclass(frozen=True)
class Limits:
    """The configurable bounds, with their defaults."""

    max_concurrency: int = 10_000
    max_request_rate: int = 100_000
    max_requests: int = 1_000_000
    max_warmup: int = 100_000
    max_seconds: int = 86_400
    max_iterations: int = 100_000
    max_parallel: int = 1_024
    max_attempts: int = 100
    max_parallel_degree: int = 1_024
    max_new_per_pass: int = 64
    login_attempts: int = 10


LIMIT_NAMES = tuple(f.name for f in fields(Limits))
_current = Limits()


def env_name(limit: str) -> str:
    """The variable that raises `limit`, for error messages that say how."""
    return f"AUTOTUNER_{limit.upper()}"


def current() -> Limits:
    """The limits installed in this process (the defaults until its edge installs others)."""
    return _current


def install(limits: Limits) -> None:
    """Make `limits` the ones in force in this process (its edge calls this once)."""
    global _current
    _current = limits
