"""How late the simulated engine runs against its model's schedule: a fixed-bucket histogram.

Why: on the wall clock the engine sleeps until each iteration's scheduled end and then emits
its tokens; when the host's CPUs are busy it wakes late, the tokens leave late and the
client measures the host instead of the model. The engine counts every iteration's and
every token write's lateness here and exposes the counts on ``/metrics`` as Prometheus
histograms; whoever benchmarks it scrapes them before and after and reads p50/p99 of the
difference (``quantile``), so a run's lag is known exactly for that run. Buckets are fixed
(powers of sqrt(2) from 0.25 ms to 16 s) so that two scrapes can be subtracted, and a
quantile is reported as its bucket's upper edge: an upper bound within 41 %.
Standard library only: the worker reads these without importing the server.
"""
from __future__ import annotations

import bisect
import math
import re

BUCKETS_S: tuple[float, ...] = tuple(0.00025 * 2 ** (k / 2) for k in range(33))  # 0.25 ms .. 16 s
HISTOGRAMS = {"iteration": "sim_iteration_lag_seconds", "token": "sim_token_lag_seconds"}


class LagHistogram:
    """Counts of lateness observations per bucket (the last one is +Inf), their sum and max."""

    __slots__ = ("counts", "total", "max")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.total = 0.0
        self.max = 0.0

    def observe(self, late_s: float) -> None:
        late_s = late_s if late_s > 0.0 else 0.0
        self.counts[bisect.bisect_left(BUCKETS_S, late_s)] += 1
        self.total += late_s
        if late_s > self.max:
            self.max = late_s

    def prometheus(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for edge, n in zip(BUCKETS_S, self.counts):
            running += n
            lines.append(f'{name}_bucket{{le="{edge:.6g}"}} {running}')
        lines += [f'{name}_bucket{{le="+Inf"}} {running + self.counts[-1]}',
                  f"{name}_sum {self.total:.6f}", f"{name}_count {running + self.counts[-1]}"]
        return lines


def parse_buckets(metrics_text: str, name: str) -> list[int] | None:
    """Cumulative bucket counts of histogram `name` in a /metrics page (None if absent)."""
    found = re.findall(rf'^{re.escape(name)}_bucket\{{le="([^"]+)"\}} (\d+)$', metrics_text, re.M)
    if len(found) != len(BUCKETS_S) + 1:
        return None
    return [int(n) for _, n in found]


def quantile(cumulative: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of cumulative bucket counts as its bucket's upper edge in
    seconds (inf beyond the last edge); None without observations."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    i = bisect.bisect_left(cumulative, rank)
    return BUCKETS_S[i] if i < len(BUCKETS_S) else math.inf


def window(before: list[int] | None, after: list[int]) -> list[int]:
    """The counts observed between two scrapes of the same engine."""
    return after if before is None else [a - b for a, b in zip(after, before)]
