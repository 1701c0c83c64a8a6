"""What the benchmarks share: a private home and database for one run, and percentiles."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def private_home(prefix: str, database_url: str | None, **env: str) -> Path:
    """A fresh AUTOTUNER_HOME with its own SQLite file (or `database_url`, an empty
    PostgreSQL database), no tokens (the run talks to its own open web server), and `env`."""
    home = Path(tempfile.mkdtemp(prefix=f"autotuner-{prefix}-"))
    os.environ.update({"AUTOTUNER_HOME": str(home), "DATABASE_URL": database_url or f"sqlite:///{home / 'bench.db'}",
                       **env})
    for name in ("AUTOTUNER_AUTH_TOKEN", "AUTOTUNER_VIEWER_TOKEN"):
        os.environ.pop(name, None)
    return home


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]
