"""The highest sustainable request rate: which rate to try next, per configuration.

Why a search: `vllm bench sweep` answers "how many requests per second can this serve within
my SLO?" by trying rates, and so does this. The search is bounded by the task's
`benchmark.rate_search` (`low`, `high`, `steps`): it tries `low` (a configuration that breaks
an SLO even there sustains nothing), then `high` (one that meets them there sustains at least
the bound), then halves the bracket between the highest rate that met every SLO and the lowest
that did not, on a log scale, `steps` times at most or until the two are within 5 %. The
answer is reported with both sides of the final bracket (app.domain.objectives.sustainable_rate).
"""
from __future__ import annotations

import math

CLOSE_ENOUGH = 1.05  # stop when the failing rate is within 5 % of the passing one


def next_rate(tried: dict[float, bool], low: float, high: float, steps: int) -> float | None:
    """The next rate to try given `tried` (rate -> met every SLO), or None when done."""
    if low not in tried:
        return low
    if not tried[low]:
        return None
    if high not in tried:
        return high
    if tried[high]:
        return None
    passed = max(rate for rate, ok in tried.items() if ok)
    failed = min(rate for rate, ok in tried.items() if not ok and rate > passed)
    if len(tried) >= steps + 2 or failed / passed <= CLOSE_ENOUGH:
        return None
    return round(math.sqrt(passed * failed), 6)
