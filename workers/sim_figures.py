"""The figures of a simulated engine: the model's own (deterministic), or measured on the wall
clock with the engine's lag checked.

Why: a simulated engine's figures must be the model's, not the host's. In the default mode
(`sim.clock: "virtual"`) the engine is started and benchmarked over HTTP as always (the
pipeline, the engine process and the client all run, and a level that fails over HTTP
stays failed), but each level's figures are the performance model's for the same requests
and load shape in virtual time (app.tools.simengine.virtual): the same answer however
busy the host is. In wall-clock mode (`sim.clock: "wall"`) the figures are what the client
measured; the engine counts how late its tokens left against the model's schedule, and a
run whose p99 token lag exceeds LAG_P99_LIMIT_MS of modelled time, whose schedule lost for
good exceeds LOST_SHARE_LIMIT of its busy time, or whose figures are further than
DEVIATION_LIMIT from the model's own for the same load (what the host added on the client's
side too) is measured again (at most LAG_REMEASURE times) and, if still off, reported as
unreliable: the experiment fails with kind `host_lag` and can never be the best. The lag is
recorded in both modes.
"""
from __future__ import annotations

import http.client
import re
import urllib.parse
from typing import Any, Callable

from app.domain.taskspec import TaskSpec
from app.tools.simengine.lag import HISTOGRAMS, parse_buckets, quantile, window
from app.tools.simengine.model import StartupError
from app.tools.simengine.virtual import Load, replay_level
from workers.runtimes.base import Deployment, EngineRequest

LAG_P99_LIMIT_MS = 20.0  # modelled ms: p99 of how late tokens left; above it the figures are the host's
LOST_SHARE_LIMIT = 0.01  # schedule time lost for good (stalls the engine could not catch up), of its busy time
COUNTERS = {"lost_s": "sim_scheduler_lag_seconds_total", "busy_s": "sim_busy_seconds_total"}
DEVIATION_LIMIT = 0.10  # a wall-clock figure further than this from the model's own is the host's
LAG_REMEASURE = 1  # extra wall-clock runs when the first one was too late
# The figures compared with the model's in wall-clock mode (means and throughput: what objectives read).
COMPARED = ("mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms", "output_throughput")
# What a level says about how it ran (kept from the HTTP run when the figures are the model's).
LEVEL_KEYS = ("scenario", "api", "request_rate", "burstiness", "max_concurrency", "warmup_errors", "stopped_early",
              "requests_started", "max_in_flight", "seed")
HTTP_KEYS = ("completed", "errors", "duration", "mean_ttft_ms", "mean_tpot_ms", "output_throughput")


def clock(spec: TaskSpec) -> str:
    return spec.sim.clock if spec.sim is not None else "virtual"


def scrape_lag(base_url: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """The engine's cumulative lag histograms and lost/busy seconds from its /metrics (None
    if it cannot say)."""
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
    except (http.client.HTTPException, OSError):
        return None
    finally:
        conn.close()
    found: dict[str, Any] = {kind: parse_buckets(text, name) for kind, name in HISTOGRAMS.items()}
    for key, name in COUNTERS.items():
        value = re.search(rf"^{name} ([0-9.eE+-]+)$", text, re.M)
        found[key] = float(value.group(1)) if value else None
    return None if resp.status != 200 or any(v is None for v in found.values()) else found


def lag_summary(before: dict[str, Any] | None, after: dict[str, Any] | None, scale: float) -> dict[str, Any]:
    """How late the engine ran between two scrapes, in modelled ms (the figures' unit): p50/p99
    of its iterations' and token writes' lateness, and the schedule time it lost for good
    (stalls longer than it can catch up on) as a share of its busy time; and whether the run's
    figures can be trusted. A run whose lag cannot be read is not trusted."""
    out: dict[str, Any] = {"limit_p99_ms": LAG_P99_LIMIT_MS, "limit_lost_share": LOST_SHARE_LIMIT, "time_scale": scale}
    if after is None:
        return {**out, "reliable": False, "problem": "the engine's lag could not be read from its /metrics"}
    for kind in HISTOGRAMS:
        seen = window(before[kind] if before else None, after[kind])
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            value = quantile(seen, q)
            out[f"{kind}_{name}_ms"] = None if value is None else round(value * 1e3 / scale, 3)
        out[f"{kind}s"] = seen[-1]
    lost = after["lost_s"] - (before["lost_s"] if before else 0.0)
    busy = after["busy_s"] - (before["busy_s"] if before else 0.0)
    out["lost_ms"] = round(lost * 1e3 / scale, 3)
    out["lost_share"] = round(lost / busy, 4) if busy > 0 else 0.0
    p99, problems = out["token_p99_ms"], []
    if p99 is not None and p99 > LAG_P99_LIMIT_MS:
        problems.append(f"tokens left up to {p99:g} ms late (p99, modelled time; limit {LAG_P99_LIMIT_MS:g} ms)")
    if out["lost_share"] > LOST_SHARE_LIMIT:
        problems.append(f"it fell behind for good by {out['lost_ms']:g} ms, {out['lost_share']:.1%} of its busy time "
                        f"(limit {LOST_SHARE_LIMIT:.0%})")
    out["reliable"] = not problems
    if problems:
        out["problem"] = ("unreliable figures: the simulated engine could not keep to its model's schedule ("
                          + "; ".join(problems) + "): the host's CPUs were too busy")
    return out


def sim_argv(request: EngineRequest) -> list[str]:
    """The simulator's own flags for this engine (what its process gets, minus where to listen)."""
    launch = request.launch("127.0.0.1", 0)
    return ["--engine", request.flavour, "--model", request.model, "--num-gpus", str(launch.num_gpus),
            *launch.flags, *request.sim_flags()]


def virtual_level(argv: list[str], http_level: dict[str, Any], spec: TaskSpec, num_gpus: int) -> dict[str, Any]:
    """One level's figures from the model in virtual time, for the load the HTTP run offered.
    A level that failed or was stopped over HTTP keeps what HTTP measured: the model must not
    paper over a broken pipeline."""
    if http_level.get("errors") or http_level.get("stopped_early") or not http_level.get("completed"):
        return {**http_level, "clock": "wall"}
    bench = spec.benchmark
    load = Load(concurrency=http_level.get("concurrency"), request_rate=http_level.get("request_rate"),
                burstiness=http_level.get("burstiness") or 1.0, max_concurrency=http_level.get("max_concurrency"),
                max_requests=int(bench.max_requests_per_iteration), max_time_s=float(bench.max_time_per_iteration),
                seed=int(http_level.get("seed") or 0))  # the same request sample as the client's
    try:
        level = replay_level(argv, http_level["scenario"], load, num_gpus=num_gpus, slo=http_level.get("goodput_slo"))
    except StartupError:  # cannot happen for an engine that served the level; keep the measurement
        return {**http_level, "clock": "wall"}
    level.pop("virtual", None)
    level.update({k: http_level.get(k) for k in LEVEL_KEYS}, clock="virtual",
                 time_scale=http_level.get("time_scale", 1.0),
                 http={k: http_level.get(k) for k in HTTP_KEYS})
    return level


Run = Callable[[Callable[[dict[str, Any]], dict[str, Any]] | None], list[dict[str, Any]]]


def measure(spec: TaskSpec, request: EngineRequest, deployment: Deployment, num_gpus: int, run: Run,
            should_stop: Callable[[], bool]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Benchmark a simulated engine with `run(figures)` (the HTTP benchmark: scenarios of levels
    in modelled time, each level passed through `figures` as soon as it ends); returns the
    scenarios whose figures count and what says how they were made: {"clock", "lag", "runs"}."""
    mode, scale = clock(spec), float(spec.sim.time_scale if spec.sim is not None else 1.0)
    argv, figures, check = sim_argv(request), None, None
    if mode == "virtual":
        def figures(level: dict[str, Any]) -> dict[str, Any]:
            return virtual_level(argv, level, spec, num_gpus)
    runs = 0
    while True:
        before = scrape_lag(deployment.base_url)
        scenarios = run(figures)
        lag = lag_summary(before, scrape_lag(deployment.base_url), scale)
        runs += 1
        if mode == "virtual":  # the figures are the model's; the lag only says how busy the host was
            return scenarios, {"clock": mode, "lag": lag, "runs": runs, "reliable": True}
        check = model_check(argv, scenarios, spec, num_gpus)
        problems = [p for p in (lag.get("problem"), check.get("problem")) if p]
        if not problems or runs > LAG_REMEASURE or should_stop():
            break
    out = {"clock": mode, "lag": lag, "model_check": check, "runs": runs, "reliable": not problems}
    return scenarios, ({**out, "problem": "; ".join(problems)} if problems else out)


def model_check(argv: list[str], scenarios: list[dict[str, Any]], spec: TaskSpec, num_gpus: int) -> dict[str, Any]:
    """How far a wall-clock run's figures are from the model's own for the same load: for a
    simulated engine the model is the truth, so the difference is what the host added, on
    either side of the HTTP connection (the engine's lag only sees its own side; a benchmark
    client starved of CPU stamps its requests late too)."""
    worst: dict[str, Any] = {"deviation": 0.0, "limit": DEVIATION_LIMIT}
    for scenario in scenarios:
        for level in scenario["levels"]:
            model = virtual_level(argv, level, spec, num_gpus)
            if model.get("clock") != "virtual":
                continue  # a failed level is judged by its errors
            for key in COMPARED:
                measured, expected = level.get(key), model.get(key)
                if isinstance(measured, (int, float)) and isinstance(expected, (int, float)) and expected > 0:
                    deviation = abs(measured - expected) / expected
                    if deviation > worst["deviation"]:
                        worst.update(deviation=round(deviation, 4), figure=key, measured=round(measured, 3),
                                     model=round(expected, 3), scenario=scenario["scenario"])
    if worst["deviation"] > DEVIATION_LIMIT:
        worst["problem"] = (f"unreliable figures: {worst['figure']} measured {worst['measured']:g} where the model "
                            f"gives {worst['model']:g} ({worst['deviation']:.0%} off; limit {DEVIATION_LIMIT:.0%}): "
                            "the host's CPUs were too busy")
    return worst


def unreliable(sim: dict[str, Any] | None) -> str | None:
    """Why a simulated run's figures cannot be ranked (None when they can): the experiment
    then fails with kind `host_lag`, keeping its figures for the record."""
    return sim.get("problem") if sim is not None and not sim["reliable"] else None
