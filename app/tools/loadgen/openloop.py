"""Open-loop load: requests start at scheduled arrival times, like ``vllm bench serve
--request-rate R --burstiness B [--max-concurrency C]``.

Why: a closed loop slows down with the server (a slow answer delays the next request), so
it can never show what happens when traffic arrives faster than the server drains it. Here
request i is due at ``arrival_offsets(...)[i]`` seconds after the level starts, whatever
the responses do. ``max_concurrency`` caps requests on the wire with a semaphore, as in
vllm: a due request waits for a slot, and its latencies are timed from when it is sent
(client-side queueing is not server latency).
"""
from __future__ import annotations

import asyncio
import math
import time
from typing import Callable

from .arrivals import arrival_offsets, check_burstiness, check_rate
from .level import InFlight, Target, finish, open_session, plan_level, wait_or_stop, warm_up
from .metrics import RequestRecord
from .request import send_request


async def run_rate_level(
    target: Target,
    request_rate: float,
    *,
    burstiness: float = 1.0,
    max_concurrency: int | None = None,
    warmup_requests: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Run one request-rate level; returns the same summary as ``run_level`` with
    ``concurrency`` None and ``request_rate``/``burstiness``/``max_concurrency`` set.

    Requests are due at seeded gamma arrival times (``inf`` rate: all at once). No request
    is sent once ``max_requests`` were due or ``max_time_s`` passed (including due ones
    still waiting for a ``max_concurrency`` slot); those already sent finish and count.
    Warm-up requests go first, ``max_concurrency`` at a time (all at once without a cap),
    and never enter the figures. ``should_stop`` is polled every 0.5 s; once true, in-flight
    requests are abandoned (not recorded) and the level ends at once.
    """
    rate, shape = check_rate(request_rate), check_burstiness(burstiness)
    if max_concurrency is not None and (isinstance(max_concurrency, bool) or max_concurrency < 1):
        raise ValueError("max_concurrency must be >= 1 or None")
    if math.isinf(rate) and target.max_requests is None:
        raise ValueError("an infinite request rate sends everything at once: give max_requests")
    plan = plan_level(target)
    limit = target.max_requests if target.max_requests is not None else math.inf
    time_limit = target.max_time_s if target.max_time_s is not None else math.inf
    records: list[RequestRecord] = []
    tasks: list[asyncio.Task] = []
    in_flight = InFlight()
    started = 0
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency is not None else None

    async with open_session(target.request_timeout_s) as session:
        warmup_errors = await warm_up(session, plan, warmup_requests, max_concurrency or warmup_requests)
        t0 = time.perf_counter()
        deadline = t0 + time_limit

        async def send(i: int) -> None:
            nonlocal started
            if time.perf_counter() >= deadline:  # due in time but no slot before the end
                return
            started += 1
            body, n_in = plan.spec(i)
            with in_flight.track():
                record = await send_request(session, plan.url, body, n_in)
            records.append(record)

        async def one(i: int) -> None:
            if slots is None:
                await send(i)
            else:
                async with slots:  # FIFO: due requests are sent in arrival order
                    await send(i)

        async def dispatch() -> None:
            for i, offset in enumerate(arrival_offsets(rate, shape, target.seed)):
                if i >= limit or offset >= time_limit:
                    break
                delay = t0 + offset - time.perf_counter()
                if delay > 0:  # behind schedule: send at once, never drift later
                    await asyncio.sleep(delay)
                if time.perf_counter() >= deadline:
                    break
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)

        main = asyncio.ensure_future(dispatch())
        stopped = await wait_or_stop(main, lambda: tasks, should_stop)
        duration = time.perf_counter() - t0
    return finish(records, duration, target.num_gpus, plan, concurrency=None, request_rate=rate,
                  burstiness=shape, max_concurrency=max_concurrency, started=started, stopped=stopped,
                  warmup_errors=warmup_errors, max_in_flight=in_flight.peak)
