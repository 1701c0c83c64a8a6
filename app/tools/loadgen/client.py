"""Load levels against OpenAI-compatible servers: closed loop (``run_level``) and the
``run_benchmark`` entry point that sweeps concurrency levels or request rates.

Why: each experiment measures an engine at several load levels the way ``vllm bench
serve`` / genai-bench do. Closed loop: ``concurrency`` workers each send one streaming
request at a time, back-to-back, so the offered load is exactly the level. Open loop
(``request_rates``, see ``openloop``): requests arrive at a rate regardless of responses.
Failures are data (recorded per request with a kind), never exceptions, so one bad level
does not lose the others.
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from typing import Callable

from .arrivals import check_burstiness, check_rate
from .level import STOP_POLL_S, InFlight, Target, finish, open_session, plan_level, stop_requested, wait_or_stop
from .level import warm_up
from .metrics import RequestRecord, check_slo
from .openloop import run_rate_level
from .request import send_request

__all__ = ["STOP_POLL_S", "Target", "run_benchmark", "run_level", "run_rate_level", "send_request"]


async def run_level(
    target: Target,
    concurrency: int,
    *,
    warmup_requests: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Run one concurrency level and return its ``summarize`` dict plus ``scenario``, ``api``,
    ``requests_started``, ``stopped_early``, ``warmup_errors``, ``max_in_flight`` and the
    open-loop keys ``request_rate``/``burstiness``/``max_concurrency`` (None here).

    New requests start until ``max_requests`` were started or ``max_time_s`` passed
    (requests already running finish). ``should_stop`` is polled every 0.5 s; when it turns
    true the in-flight requests are abandoned (not recorded) and the level ends at once.
    Request i always gets the same lengths and prompt for a given seed.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    plan = plan_level(target)
    limit = target.max_requests if target.max_requests is not None else math.inf
    records: list[RequestRecord] = []
    in_flight = InFlight()
    started = 0
    async with open_session(target.request_timeout_s) as session:
        warmup_errors = await warm_up(session, plan, warmup_requests, concurrency)
        t0 = time.perf_counter()
        deadline = t0 + target.max_time_s if target.max_time_s is not None else math.inf

        async def worker() -> None:
            nonlocal started
            while started < limit and time.perf_counter() < deadline:
                i = started
                started += 1
                body, n_in = plan.spec(i)
                with in_flight.track():
                    record = await send_request(session, plan.url, body, n_in)
                records.append(record)

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        stopped = await wait_or_stop(asyncio.gather(*workers), lambda: workers, should_stop)
        duration = time.perf_counter() - t0
    return finish(records, duration, target.num_gpus, plan, concurrency=concurrency, request_rate=None,
                  burstiness=None, max_concurrency=None, started=started, stopped=stopped,
                  warmup_errors=warmup_errors, max_in_flight=in_flight.peak)


def run_benchmark(
    target: Target,
    concurrency_levels: list[int] | None = None,
    *,
    request_rates: list[float] | None = None,
    burstiness: float = 1.0,
    max_concurrency: int | None = None,
    warmup_requests: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_level: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run each level in order and return their summaries (synchronous; uses
    ``asyncio.run``, so it must not be called from inside a running event loop).

    Levels are ``concurrency_levels`` (closed loop, ``run_level``) or, when
    ``request_rates`` is given, request rates (open loop, ``run_rate_level`` with
    ``burstiness`` and ``max_concurrency``); give exactly one of the two. Everything is
    checked before the first request. Warm-up requests are sent before the first level
    only. Stops after the current level once ``should_stop()`` is true; ``on_level`` is
    called with each level's summary as soon as it is ready.
    """
    open_loop = request_rates is not None
    if open_loop and concurrency_levels:
        raise ValueError("give concurrency_levels (closed loop) or request_rates (open loop), not both")
    if not open_loop and concurrency_levels is None:
        raise ValueError("give concurrency_levels (closed loop) or request_rates (open loop)")
    check_slo(target.goodput_slo)
    if open_loop:
        rates = [check_rate(r) for r in request_rates or ()]
        check_burstiness(burstiness)
        if target.max_requests is None and any(math.isinf(r) for r in rates):
            raise ValueError("an infinite request rate sends everything at once: give max_requests")
        if max_concurrency is not None and (isinstance(max_concurrency, bool) or max_concurrency < 1):
            raise ValueError("max_concurrency must be >= 1 or None")
    levels: list = list(request_rates if open_loop else concurrency_levels)  # type: ignore[arg-type]

    async def _all() -> list[dict]:
        out: list[dict] = []
        for k, level in enumerate(levels):
            if should_stop is not None and stop_requested(should_stop):
                break
            common = dict(warmup_requests=warmup_requests if k == 0 else 0, should_stop=should_stop)
            salted = replace(target, prompt_salt=target.prompt_salt + k)  # fresh prompts, same lengths
            if open_loop:
                summary = await run_rate_level(salted, level, burstiness=burstiness,
                                               max_concurrency=max_concurrency, **common)
            else:
                summary = await run_level(salted, level, **common)
            out.append(summary)
            if on_level is not None:
                on_level(summary)
            if summary["stopped_early"]:
                break
        return out

    return asyncio.run(_all())


def first_model(base_url: str, timeout_s: float = 10.0) -> str:
    """The first model a server lists at /v1/models: what to send when the user named none."""
    import json
    import urllib.request

    with urllib.request.urlopen(base_url.rstrip("/") + "/v1/models", timeout=timeout_s) as resp:
        data = json.load(resp).get("data") or []
    if not data:
        raise ValueError(f"{base_url} lists no model at /v1/models; pass --model")
    return data[0]["id"]
