"""Closed-loop streaming load generator for OpenAI-compatible servers.

Why: each experiment measures an engine at several concurrency levels the way
``vllm bench serve --max-concurrency`` / genai-bench do: ``concurrency`` workers each send
one streaming request at a time, back-to-back, so the offered load is exactly the level.
Failures are data (recorded per request with a kind), never exceptions, so one bad level
does not lose the others.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Callable

import aiohttp

from .metrics import RequestRecord, summarize
from .scenarios import Scenario, make_prompt, parse_scenario

STOP_POLL_S = 0.5


def _request_body(model: str, api: str, prompt: str, max_tokens: int) -> dict:
    body: dict = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "temperature": 0,
    }
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def _content_of(chunk: dict) -> str:
    """Text carried by a completions (``text``) or chat (``delta.content``) chunk."""
    for choice in chunk.get("choices") or ():
        text = choice.get("text")
        if text is None:
            text = (choice.get("delta") or {}).get("content")
        if text:
            return text
    return ""


async def send_request(
    session: aiohttp.ClientSession, url: str, body: dict, input_tokens: int
) -> RequestRecord:
    """Send one streaming request and time it; errors end up in ``RequestRecord.error``."""
    start = time.perf_counter()
    ttft: float | None = None
    chunks: list[float] = []
    usage_tokens: int | None = None
    error: str | None = None
    done = False
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                detail = (await resp.text())[:300]
                error = f"http_{resp.status}: {detail}"
            else:
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    obj = json.loads(data)
                    if "error" in obj and not obj.get("choices"):
                        error = f"stream_error: {str(obj['error'])[:300]}"
                        break
                    if _content_of(obj):
                        now = time.perf_counter()
                        if ttft is None:
                            ttft = now - start
                        chunks.append(now)
                    usage = obj.get("usage")
                    if usage and usage.get("completion_tokens") is not None:
                        usage_tokens = int(usage["completion_tokens"])
                if error is None and not done:
                    error = "incomplete_stream: stream ended before [DONE]"
    except asyncio.TimeoutError:
        error = "timeout: request timed out"
    except aiohttp.ClientPayloadError as exc:
        error = f"incomplete_stream: {exc}"
    except (aiohttp.ClientError, OSError) as exc:
        error = f"connection: {type(exc).__name__}: {exc}"
    except (ValueError, TypeError, AttributeError) as exc:  # undecodable or odd JSON
        error = f"bad_response: {exc}"
    end = time.perf_counter()
    output_tokens = usage_tokens if usage_tokens is not None else len(chunks)
    if error is None and not chunks:
        error = "empty_output: no content chunk received"
    return RequestRecord(start, ttft, end, chunks, input_tokens, output_tokens, error)


async def run_level(
    base_url: str,
    model: str,
    scenario: str | Scenario,
    concurrency: int,
    max_requests: int | None,
    max_time_s: float | None,
    num_gpus: int,
    api: str = "completions",
    warmup_requests: int = 0,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
    request_timeout_s: float | None = None,
) -> dict:
    """Run one concurrency level and return its ``summarize`` dict plus ``scenario``, ``api``,
    ``requests_started``, ``stopped_early`` and ``warmup_errors``.

    New requests start until ``max_requests`` were started or ``max_time_s`` passed
    (requests already running finish). ``should_stop`` is polled every 0.5 s; when it turns
    true the in-flight requests are abandoned (not recorded) and the level ends at once.
    Request i always gets the same lengths and prompt for a given seed.
    """
    if api not in ("completions", "chat"):
        raise ValueError(f"api must be 'completions' or 'chat', not {api!r}")
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if max_requests is None and max_time_s is None:
        raise ValueError("give max_requests or max_time_s (or both)")
    sc = parse_scenario(scenario) if isinstance(scenario, str) else scenario
    url = base_url.rstrip("/") + ("/v1/chat/completions" if api == "chat" else "/v1/completions")
    limit = max_requests if max_requests is not None else float("inf")

    def spec(i: int) -> tuple[dict, int]:
        rng = random.Random(seed * 1_000_003 + i)
        n_in, n_out = sc.sample(rng)
        return _request_body(model, api, make_prompt(n_in, rng), n_out), n_in

    timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=30)
    connector = aiohttp.TCPConnector(limit=0)
    records: list[RequestRecord] = []
    state = {"started": 0, "stopped": False, "warmup_errors": 0}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if warmup_requests > 0:
            warm = [spec(-1 - i) for i in range(warmup_requests)]
            for k in range(0, warmup_requests, concurrency):
                batch = warm[k:k + concurrency]
                done = await asyncio.gather(*(send_request(session, url, b, n) for b, n in batch))
                state["warmup_errors"] += sum(1 for r in done if not r.ok)

        t0 = time.perf_counter()
        deadline = t0 + max_time_s if max_time_s is not None else float("inf")

        async def worker() -> None:
            while state["started"] < limit and time.perf_counter() < deadline and not state["stopped"]:
                i = state["started"]
                state["started"] += 1
                body, n_in = spec(i)
                records.append(await send_request(session, url, body, n_in))

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        all_done = asyncio.gather(*workers)
        if should_stop is None:
            await all_done
        else:
            while not all_done.done():
                await asyncio.wait([all_done], timeout=STOP_POLL_S)
                if not all_done.done() and _stop_requested(should_stop):
                    state["stopped"] = True
                    for w in workers:
                        w.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
                    break
        duration = time.perf_counter() - t0
    summary = summarize(records, duration, num_gpus, concurrency)
    summary.update(scenario=str(sc), api=api, requests_started=state["started"],
                   stopped_early=state["stopped"], warmup_errors=state["warmup_errors"])
    return summary


def _stop_requested(should_stop: Callable[[], bool]) -> bool:
    try:
        return bool(should_stop())
    except Exception:  # a broken callback must not kill the benchmark
        return False


def run_benchmark(
    base_url: str,
    model: str,
    scenario: str | Scenario,
    concurrency_levels: list[int],
    max_requests: int | None,
    max_time_s: float | None,
    num_gpus: int,
    api: str = "completions",
    warmup_requests: int = 0,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
    request_timeout_s: float | None = None,
    on_level: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run ``run_level`` for each level in order (synchronous; uses ``asyncio.run``, so it
    must not be called from inside a running event loop). Warm-up requests are sent before
    the first level only. Stops after the current level once ``should_stop()`` is true;
    ``on_level`` is called with each level's summary as soon as it is ready."""

    async def _all() -> list[dict]:
        out: list[dict] = []
        for k, level in enumerate(concurrency_levels):
            if should_stop is not None and _stop_requested(should_stop):
                break
            summary = await run_level(
                base_url, model, scenario, level, max_requests, max_time_s, num_gpus, api=api,
                warmup_requests=warmup_requests if k == 0 else 0, seed=seed,
                should_stop=should_stop, request_timeout_s=request_timeout_s,
            )
            out.append(summary)
            if on_level is not None:
                on_level(summary)
            if summary["stopped_early"]:
                break
        return out

    return asyncio.run(_all())
