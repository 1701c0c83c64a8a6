"""Per-request timing records and their vllm-bench-serve-style summary.

Why: the strategies compare experiments by these numbers, so their definitions follow
``vllm bench serve`` exactly (times in the summary are milliseconds):

* TTFT  = time of the first non-empty content chunk - request start.
* TPOT  = (E2EL - TTFT) / (output_tokens - 1), one value per request with > 1 output token.
* ITL   = gaps between consecutive content chunks, pooled over all requests.
* E2EL  = request end - request start.

Only successful requests of the level enter the statistics. Percentiles interpolate
linearly like ``numpy.percentile``; std is the population std (``numpy.std``). An empty
set gives None rather than raising.

Goodput (``vllm bench serve --goodput ttft:200 tpot:50``): throughput alone rewards a
server that answers everything slowly, so an SLO names per-request limits in ms (keys
``ttft``, ``tpot``, ``e2el``). A request is good when it succeeded and meets every given
limit (``<=``, like vllm); TPOT is only checked for requests with > 1 output token, as a
one-token request has no TPOT. ``goodput`` = good requests / level duration, and
``good_requests`` their count; both are None when no SLO was given.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

PERCENTILES = (90, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")
SLO_KEYS = ("ttft", "tpot", "e2el")


@dataclass
class RequestRecord:
    """One request's timeline, on the ``time.perf_counter()`` clock.

    ``start``/``end`` and ``chunk_times`` are absolute clock values; ``ttft`` is relative
    to ``start`` (None when no content arrived). ``error`` is None for a success, otherwise
    ``"kind: detail"`` (``error_kind`` reads the kind).
    """

    start: float
    ttft: float | None
    end: float
    chunk_times: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def e2el(self) -> float:
        return self.end - self.start


def error_kind(record: RequestRecord) -> str:
    """The part of ``error`` before the first colon ("http_500: ..." -> "http_500")."""
    return (record.error or "").split(":", 1)[0].strip() or "unknown"


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _stats(name: str, values_s: list[float]) -> dict[str, float | None]:
    ms = [v * 1000.0 for v in values_s]
    out: dict[str, float | None] = {
        f"mean_{name}_ms": statistics.fmean(ms) if ms else None,
        f"median_{name}_ms": statistics.median(ms) if ms else None,
        f"std_{name}_ms": statistics.pstdev(ms) if ms else None,
    }
    for q in PERCENTILES:
        out[f"p{q}_{name}_ms"] = percentile(ms, q)
    return out


def _per_request(records: Iterable[RequestRecord]) -> dict[str, list[float]]:
    ttft, tpot, itl, e2el = [], [], [], []
    for r in records:
        e2el.append(r.e2el)
        if r.ttft is not None:
            ttft.append(r.ttft)
            if r.output_tokens > 1:
                tpot.append((r.e2el - r.ttft) / (r.output_tokens - 1))
        itl.extend(b - a for a, b in zip(r.chunk_times, r.chunk_times[1:]))
    return {"ttft": ttft, "tpot": tpot, "itl": itl, "e2el": e2el}


def _rate(x: float, duration_s: float) -> float | None:
    return x / duration_s if duration_s > 0 else None


def check_slo(slo: dict[str, float] | None) -> dict[str, float] | None:
    """Validate a goodput SLO (limits in ms, keys from ``SLO_KEYS``, values >= 0, at least
    one) and return it with float values; None stays None. Raises ValueError early, so a
    typo fails before a level runs rather than after."""
    if slo is None:
        return None
    if not isinstance(slo, dict) or not slo:
        raise ValueError(f"goodput SLO must be a non-empty dict with keys from {SLO_KEYS}, not {slo!r}")
    out: dict[str, float] = {}
    for key, value in slo.items():
        if key not in SLO_KEYS:
            raise ValueError(f"unknown goodput SLO key {key!r}; expected one of {SLO_KEYS}")
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)
                or value < 0):
            raise ValueError(f"goodput SLO {key} must be a number of ms >= 0, not {value!r}")
        out[key] = float(value)
    return out


def meets_slo(record: RequestRecord, slo: dict[str, float]) -> bool:
    """True when ``record`` succeeded and is within every limit of ``slo`` (ms)."""
    if not record.ok:
        return False
    if "e2el" in slo and record.e2el * 1000.0 > slo["e2el"]:
        return False
    if "ttft" in slo or ("tpot" in slo and record.output_tokens > 1):
        if record.ttft is None:  # no first token seen: neither TTFT nor TPOT can be met
            return False
        if "ttft" in slo and record.ttft * 1000.0 > slo["ttft"]:
            return False
        if "tpot" in slo and record.output_tokens > 1:
            tpot_ms = (record.e2el - record.ttft) / (record.output_tokens - 1) * 1000.0
            if tpot_ms > slo["tpot"]:
                return False
    return True


def summarize(records: list[RequestRecord], duration_s: float, num_gpus: int, concurrency: int | None,
              slo: dict[str, float] | None = None) -> dict:
    """Flat summary of one level (keys documented in the module docstring); ``concurrency``
    is None for an open-loop (request-rate) level."""
    slo = check_slo(slo)
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    total_in = sum(r.input_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    good = sum(1 for r in ok if meets_slo(r, slo)) if slo is not None else None
    out: dict = {
        "concurrency": concurrency,
        "completed": len(ok),
        "errors": len(failed),
        "error_kinds": dict(Counter(error_kind(r) for r in failed)),
        "duration": duration_s,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": _rate(len(ok), duration_s),
        "output_throughput": _rate(total_out, duration_s),
        "total_token_throughput": _rate(total_in + total_out, duration_s),
        "goodput_slo": slo,
        "good_requests": good,
        "goodput": _rate(good, duration_s) if good is not None else None,
    }
    for key in ("request_throughput", "output_throughput", "total_token_throughput"):
        v = out[key]
        out[f"{key}_per_gpu"] = v / num_gpus if v is not None and num_gpus > 0 else None
    per = _per_request(ok)
    for name in METRICS:
        out.update(_stats(name, per[name]))
    return out
