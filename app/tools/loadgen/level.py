"""Plumbing shared by the two load shapes (closed-loop workers, open-loop arrivals).

Why: a level is the same thing in both shapes apart from *when* requests start - same
argument checks, same request i for a given seed, same warm-up, same stop polling, same
summary keys - so those live here once and the two shapes cannot drift apart.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import aiohttp

from .metrics import RequestRecord, check_slo, summarize
from .request import request_body, send_request
from .scenarios import Scenario, make_prompt, parse_scenario

STOP_POLL_S = 0.5


@dataclass(frozen=True)
class LevelPlan:
    """What every request of a level is sent with; ``spec(i)`` is request i's body."""

    url: str
    model: str
    api: str
    scenario: Scenario
    seed: int
    slo: dict[str, float] | None
    prompt_salt: int = 0

    def spec(self, i: int) -> tuple[dict, int]:
        """(body, input_tokens) of request i. Its lengths are the same for a given seed in
        every level and shape, so levels differ only in load; its words also depend on the
        level (``prompt_salt``), so that an engine's prefix or prompt cache (SGLang's radix
        cache, vLLM's prefix caching, llama-server's slot and RAM prompt cache) cannot serve
        a later level's prompts from an earlier level's. Warm-up requests use negative i."""
        n_in, n_out = self.scenario.sample(random.Random(self.seed * 1_000_003 + i))
        words = random.Random(f"{self.seed}/{self.prompt_salt}/{i}")
        return request_body(self.model, self.api, make_prompt(n_in, words), n_out), n_in


@dataclass(frozen=True)
class Target:
    """What every level of one benchmark shares: the server and model, the traffic, and the
    bounds of a level (new requests start until ``max_requests`` were started or
    ``max_time_s`` passed). Both load shapes and ``run_benchmark`` take one.
    ``goodput_slo`` (ms limits, keys ttft/tpot/e2el) adds ``goodput`` and ``good_requests``."""

    base_url: str
    model: str
    scenario: str | Scenario
    max_requests: int | None = None
    max_time_s: float | None = None
    num_gpus: int = 1
    api: str = "completions"
    seed: int = 0
    request_timeout_s: float | None = None
    goodput_slo: dict[str, float] | None = None
    prompt_salt: int = 0  # run_benchmark gives each of its levels its own (LevelPlan.spec)


def plan_level(target: Target) -> LevelPlan:
    """Check what both shapes share (ValueError) and build the level's plan."""
    if target.api not in ("completions", "chat"):
        raise ValueError(f"api must be 'completions' or 'chat', not {target.api!r}")
    if target.max_requests is None and target.max_time_s is None:
        raise ValueError("give max_requests or max_time_s (or both)")
    sc = parse_scenario(target.scenario) if isinstance(target.scenario, str) else target.scenario
    url = target.base_url.rstrip("/") + ("/v1/chat/completions" if target.api == "chat" else "/v1/completions")
    return LevelPlan(url, target.model, target.api, sc, target.seed, check_slo(target.goodput_slo), target.prompt_salt)


def open_session(request_timeout_s: float | None) -> aiohttp.ClientSession:
    """A session without a connection cap (the load shape, not the pool, limits
    concurrency) that opens one connection per request and says so (`Connection: close`).

    Why not keep-alive: whether a connection survives a *streamed* response is up to the
    server, and servers differ without saying so. llama.cpp's llama-server answers every
    request with `Keep-Alive: timeout=5, max=100` but closes the connection right after the
    last chunk of a stream (its content provider reports the stream's end as a cancelled
    write, and cpp-httplib then drops the socket). A pooled client that believed the header
    reused the dead connection for the next request whenever the FIN had not yet been
    processed: "Can not write request body", about every other request. With
    `Connection: close` both sides agree that a connection carries one request; the price is
    one connect per request, timed in TTFT as vllm bench serve's per-request sessions did.
    """
    timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=30)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True), timeout=timeout)


async def warm_up(session: aiohttp.ClientSession, plan: LevelPlan, n: int, batch: int) -> int:
    """Send ``n`` warm-up requests, ``batch`` at a time, before the level's clock starts;
    they never enter the figures. Returns how many failed."""
    errors, batch = 0, max(1, batch)
    warm = [plan.spec(-1 - i) for i in range(n)]
    for k in range(0, n, batch):
        done = await asyncio.gather(*(send_request(session, plan.url, b, m) for b, m in warm[k:k + batch]))
        errors += sum(1 for r in done if not r.ok)
    return errors


@dataclass
class InFlight:
    """Requests on the wire right now and the most seen at once (``max_in_flight``), so a
    concurrency cap can be checked from the client side."""

    now: int = 0
    peak: int = 0

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            self.now -= 1


def stop_requested(should_stop: Callable[[], bool]) -> bool:
    try:
        return bool(should_stop())
    except Exception:  # a broken callback must not kill the benchmark
        return False


async def wait_or_stop(done: asyncio.Future, tasks: Callable[[], Iterable[asyncio.Future]],
                       should_stop: Callable[[], bool] | None) -> bool:
    """Wait for ``done``; poll ``should_stop`` every ``STOP_POLL_S`` and, once it is true,
    cancel ``done`` and every task in ``tasks()`` (in-flight requests are abandoned, not
    recorded). Returns whether the level was stopped."""
    if should_stop is None:
        await done
        return False
    while not done.done():
        await asyncio.wait([done], timeout=STOP_POLL_S)
        if not done.done() and stop_requested(should_stop):
            pending = [done, *tasks()]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            return True
    done.result()  # re-raise anything unexpected
    return False


def finish(records: list[RequestRecord], duration_s: float, num_gpus: int, plan: LevelPlan, *,
           concurrency: int | None, request_rate: float | None, burstiness: float | None,
           max_concurrency: int | None, started: int, stopped: bool, warmup_errors: int,
           max_in_flight: int) -> dict:
    """The level's summary: ``summarize`` plus what describes the level and how it ran."""
    summary = summarize(records, duration_s, num_gpus, concurrency, slo=plan.slo)
    summary.update(scenario=str(plan.scenario), api=plan.api, request_rate=request_rate,
                   burstiness=burstiness, max_concurrency=max_concurrency, requests_started=started,
                   stopped_early=stopped, warmup_errors=warmup_errors, max_in_flight=max_in_flight)
    return summary
