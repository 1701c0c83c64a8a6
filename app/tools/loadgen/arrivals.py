"""Arrival times for open-loop load, the way ``vllm bench serve --request-rate`` draws them.

Why: an open-loop benchmark offers load at a fixed *rate*, independent of how fast the
server answers, so queueing shows up in the latencies instead of silently slowing the
client down. Gaps between requests are gamma-distributed with shape ``burstiness`` and
mean ``1 / rate`` (scale ``1 / (rate * burstiness)``), exactly vllm's choice:

* burstiness 1.0 -> exponential gaps, i.e. a Poisson process (coefficient of variation 1);
* burstiness < 1 -> burstier (CV = 1 / sqrt(burstiness) > 1); > 1 -> more regular;
* rate ``inf``   -> every request at time 0 (all at once).

The first request goes out at offset 0 (classic vllm); vllm's later rescaling of the whole
schedule to ``n / rate`` is not done because a level bounded only by ``max_time_s`` has no
known request count. Pure functions of their arguments: the same seed gives the same
schedule, and because Python's gamma sampler multiplies by the scale last, the same seed at
two rates gives the same pattern stretched - so levels differ only in the rate.
"""
from __future__ import annotations

import math
import random
from itertools import islice, repeat
from typing import Iterator


def check_rate(rate: float) -> float:
    """A request rate in requests/s: > 0, ``inf`` allowed; raises ValueError otherwise."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate) or rate <= 0:
        raise ValueError(f"request rate must be a number > 0 (inf for all at once), not {rate!r}")
    return float(rate)


def check_burstiness(burstiness: float) -> float:
    """The gamma shape: a finite number > 0; raises ValueError otherwise."""
    if (isinstance(burstiness, bool) or not isinstance(burstiness, (int, float))
            or not math.isfinite(burstiness) or burstiness <= 0):
        raise ValueError(f"burstiness must be a finite number > 0, not {burstiness!r}")
    return float(burstiness)


def arrival_offsets(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Endless, non-decreasing send times in seconds from the level's start (first is 0).
    Arguments are checked here, at the call, not at the first ``next``."""
    rate, burstiness = check_rate(rate), check_burstiness(burstiness)
    if math.isinf(rate):
        return repeat(0.0)
    return _gamma_process(1.0 / (rate * burstiness), burstiness, seed)


def _gamma_process(scale: float, shape: float, seed: int) -> Iterator[float]:
    rng = random.Random(f"arrivals:{seed}")  # a stream of its own, unlike per-request seeds
    t = 0.0
    while True:
        yield t
        t += rng.gammavariate(shape, scale)


def arrival_times(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """The first ``n`` offsets of ``arrival_offsets`` as a list."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return list(islice(arrival_offsets(rate, burstiness, seed), n))
