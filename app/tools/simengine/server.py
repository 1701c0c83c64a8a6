"""HTTP front end and continuous-batching scheduler of the simulated engine.

Why: experiments must exercise the same code path as a real engine (spawn a process, poll
/health, stream OpenAI responses, tear it down), only with the GPU replaced by
``model.iteration_time``. One scheduler task per data-parallel replica runs iterations:
pick a batch within the engine's limits, sleep ``iteration_time * time_scale``, then emit
one token to every sequence in the batch. Everything is deterministic for the same arrival
order (the only randomness is the seeded ``random`` schedule policy).

Scheduling follows the engines' default behaviour, simplified:

* SGLang: prefill first. If any prompt work can be scheduled, the iteration is a
  prefill-only batch of up to ``--chunked-prefill-size`` tokens (decodes wait); otherwise
  all running sequences decode one token. Admission reserves KV for the prompt plus
  ``0.7 * schedule_conservativeness`` of the remaining output.
* vLLM: mixed batches. Every running sequence decodes one token, and the rest of the
  ``--max-num-batched-tokens`` budget goes to (chunks of) prompts. Admission only needs
  the prompt's KV.
* Both: when the KV cache runs out during decoding the newest sequence is preempted and
  re-queued at the front; it re-prefills prompt + generated tokens later (recompute).
  Client disconnects drop the request and free its KV at the next iteration.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import signal
import sys
import time
from collections import deque
from typing import Callable

from aiohttp import web

from app.processes import pid_alive

from .flags import SimEngineConfig
from .lag import HISTOGRAMS, LagHistogram, quantile
from .stream import TokenStream, output_text
from .model import Capacity, EngineSettings, GpuHardware, ModelSpec, iteration_time, prompt_tokens_for_text

CATCH_UP_LIMIT_S = 0.02  # wall seconds the loop may lag its schedule and still catch up
UNCHUNKED_PREFILL_LIMIT = 16384  # SGLang's max_prefill_tokens when chunking is disabled
SIM_HEADERS = {"X-Simulated": "true", "Server": "autotuner-sim (simulated)"}
OWNED_BY = "autotuner-sim (simulated)"


class SimRequest:
    """One generation request's progress inside a replica scheduler."""

    __slots__ = ("seq", "prompt_tokens", "max_tokens", "prefill_target", "prefilled", "kv",
                 "generated", "done", "cancelled", "event", "due", "sink")

    def __init__(self, seq: int, prompt_tokens: int, max_tokens: int) -> None:
        self.seq = seq
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.prefill_target = prompt_tokens  # grows to prompt+generated after preemption
        self.prefilled = 0
        self.kv = 0  # tokens of KV cache held
        self.generated = 0
        self.done = False
        self.cancelled = False
        self.event = asyncio.Event()
        self.due = 0.0  # loop time its newest token was due to leave (the iteration's scheduled end)
        # A streamed request's writer, called by the scheduler with the iteration's new tokens
        # (TokenStream.deliver); True if it sent them, else the request's handler is woken.
        self.sink: Callable[[SimRequest], bool] | None = None

    @property
    def decoding(self) -> bool:
        return self.prefilled >= self.prefill_target


class Stats:
    """Counters behind /metrics, shared by all replicas."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished = 0
        self.aborted = 0
        self.preempted = 0
        self.busy_s = 0.0  # wall seconds the schedulers spent with work to do
        self.lag_s = 0.0  # wall seconds the scheduler fell behind its schedule and gave up on
        self.iteration_lag = LagHistogram()  # how late each iteration ended against its schedule
        self.token_lag = LagHistogram()  # how late each write of tokens left against its iteration's end


class ReplicaScheduler:
    """The continuous-batching loop of one data-parallel replica."""

    def __init__(self, model: ModelSpec, gpu: GpuHardware, settings: EngineSettings, cap: Capacity,
                 time_scale: float, stats: Stats, index: int = 0) -> None:
        self.model, self.gpu, self.s, self.cap = model, gpu, settings, cap
        self.time_scale = time_scale
        self.stats = stats
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.wake = asyncio.Event()
        self.rng = random.Random(index)  # only the "random" policy draws from it
        self._deadline = 0.0

    # ---- bookkeeping -------------------------------------------------------------------
    def submit(self, req: SimRequest) -> None:
        self.waiting.append(req)
        self.wake.set()

    def cancel(self, req: SimRequest) -> None:
        """Client went away: forget the request (running ones are dropped next iteration)."""
        if req.done:
            return
        req.cancelled = True
        self.stats.aborted += 1
        try:
            self.waiting.remove(req)
        except ValueError:
            pass

    def kv_used(self) -> int:
        return sum(r.kv for r in self.running)

    def _reserved(self, r: SimRequest) -> int:
        """KV a request holds or will hold for its prompt, plus the estimated share of its
        remaining output (SGLang's new_token_ratio; 0 for vLLM, which allocates on demand)."""
        remaining_out = max(0, r.max_tokens - r.generated)
        return max(r.kv, r.prefill_target) + math.ceil(remaining_out * self.s.new_token_ratio)

    def _fits(self, req: SimRequest) -> bool:
        reserved = sum(self._reserved(r) for r in self.running)
        return reserved + self._reserved(req) <= self.cap.kv_tokens

    def _next_waiting(self) -> SimRequest:
        if self.s.schedule_policy == "random" and len(self.waiting) > 1:
            idx = self.rng.randrange(len(self.waiting))
            self.waiting.rotate(-idx)
            req = self.waiting.popleft()
            self.waiting.rotate(idx)
            return req
        return self.waiting.popleft()

    def _admit(self, budget: int | None, batch: list[tuple[SimRequest, int]], allow_chunk: bool) -> int:
        """Move waiting requests into ``batch`` while limits allow; returns tokens used."""
        used = 0
        limit = budget if budget is not None else UNCHUNKED_PREFILL_LIMIT
        while self.waiting and len(self.running) < self.cap.max_running and used < limit:
            head = self.waiting[0]
            if self.s.schedule_policy != "random" and not self._fits(head):
                break  # head-of-line blocking, as in the real schedulers
            req = self._next_waiting()
            if self.s.schedule_policy == "random" and not self._fits(req):
                self.waiting.appendleft(req)
                break
            need = req.prefill_target - req.prefilled
            if budget is None or not allow_chunk:
                if batch and used + need > limit:
                    self.waiting.appendleft(req)
                    break
                n = need
            else:
                n = min(need, limit - used)
            self.running.append(req)
            batch.append((req, n))
            used += n
        return used

    def _preempt_for_decode(self) -> None:
        """Free KV by re-queueing the newest sequences when decoding would overflow it."""
        while True:
            decoders = [r for r in self.running if r.decoding]
            if self.kv_used() + len(decoders) <= self.cap.kv_tokens or len(self.running) <= 1:
                return
            victim = self.running.pop()  # newest admitted
            victim.prefill_target = victim.prompt_tokens + victim.generated
            victim.prefilled = 0
            victim.kv = 0
            self.waiting.appendleft(victim)
            self.stats.preempted += 1

    # ---- one iteration -----------------------------------------------------------------
    def _plan_sglang(self) -> tuple[list[tuple[SimRequest, int]], list[SimRequest]]:
        prefill: list[tuple[SimRequest, int]] = []
        budget = self.cap.prefill_budget
        used = 0
        for r in self.running:  # the chunked request in progress continues first
            if not r.decoding and (budget is None or used < budget):
                n = r.prefill_target - r.prefilled
                n = n if budget is None else min(n, budget - used)
                prefill.append((r, n))
                used += n
        if budget is None or used < budget:
            self._admit(None if budget is None else budget - used, prefill, allow_chunk=True)
        if prefill:
            return prefill, []
        self._preempt_for_decode()
        return [], [r for r in self.running if r.decoding]

    def _plan_vllm(self) -> tuple[list[tuple[SimRequest, int]], list[SimRequest]]:
        self._preempt_for_decode()
        budget = self.cap.prefill_budget or UNCHUNKED_PREFILL_LIMIT
        decode = [r for r in self.running if r.decoding][:budget]
        left = budget - len(decode)
        prefill: list[tuple[SimRequest, int]] = []
        for r in self.running:
            if not r.decoding and left > 0:
                need = r.prefill_target - r.prefilled
                if not self.s.chunked_prefill and need > left:
                    continue
                n = min(need, left)
                prefill.append((r, n))
                left -= n
        if left > 0:
            self._admit(left, prefill, allow_chunk=self.s.chunked_prefill)
        return prefill, decode

    def _apply(self, prefill: list[tuple[SimRequest, int]], decode: list[SimRequest]) -> None:
        """The iteration finished: advance prefills, emit tokens, retire finished requests."""
        emitted: list[SimRequest] = []
        for r, n in prefill:
            if r.cancelled:
                continue
            r.prefilled += n
            r.kv += n
            self.stats.prompt_tokens += n
            if r.decoding:
                emitted.append(r)
        for r in decode:
            if r.cancelled:
                continue
            r.kv += 1
            emitted.append(r)
        for r in emitted:
            r.generated += 1
            r.due = self._deadline
            self.stats.generation_tokens += 1
            if r.generated >= r.max_tokens:
                r.done = True
                self.stats.finished += 1
            if r.sink is None or not r.sink(r):
                r.event.set()
        self.running = [r for r in self.running if not r.done and not r.cancelled]

    async def run(self) -> None:
        """The scheduler loop; runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            self.running = [r for r in self.running if not r.cancelled]
            if not self.running and not self.waiting:
                self.wake.clear()
                await self.wake.wait()
                self._deadline = loop.time()  # idle time is not lag to catch up on
                continue
            started = loop.time()
            plan = self._plan_sglang if self.s.engine == "sglang" else self._plan_vllm
            prefill, decode = plan()
            if not prefill and not decode:  # nothing schedulable (should not happen): poll, never hang
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=0.05)
                except asyncio.TimeoutError:
                    pass
                self._deadline = loop.time()
                continue
            t = iteration_time(
                self.model, self.gpu, self.s,
                prefill_tokens=sum(n for _, n in prefill),
                decode_seqs=len(decode),
                context_tokens=sum(r.kv for r in decode),
                waiting=len(self.waiting),
            )
            # Sleep until a running deadline rather than for t: the event loop's ~1 ms timer
            # granularity and Python overhead are then absorbed by later, shorter sleeps, so
            # simulated throughput stays right even at small time scales (when hopelessly
            # behind, the deadline restarts from now).
            now = loop.time()
            if now - self._deadline > CATCH_UP_LIMIT_S:
                self.stats.lag_s += now - self._deadline  # wall time lost for good
                self._deadline = now
            self._deadline += t * self.time_scale
            await asyncio.sleep(max(0.0, self._deadline - now))
            self.stats.iteration_lag.observe(loop.time() - self._deadline)
            self._apply(prefill, decode)
            self.stats.busy_s += loop.time() - started


# ---- HTTP layer --------------------------------------------------------------------------
HEALTH_WAIT_MAX_S = 1.0  # the longest a health check may wait for start-up (`/health?wait=S`)


class SimEngine:
    """Holds the schedulers and serves the OpenAI-compatible endpoints."""

    def __init__(self, cfg: SimEngineConfig, model: ModelSpec, gpu: GpuHardware, cap: Capacity, startup_s: float) -> None:
        self.cfg, self.model, self.gpu, self.cap = cfg, model, gpu, cap
        self.startup_s = startup_s
        self.ready = False
        self.started = asyncio.Event()  # set with `ready`: what a waiting health check awaits
        self.stats = Stats()
        self.replicas = [
            ReplicaScheduler(model, gpu, cfg.settings, cap, cfg.time_scale, self.stats, i)
            for i in range(cfg.settings.dp)
        ]
        self._rr = itertools.cycle(range(len(self.replicas)))
        self._ids = itertools.count()
        self.stop = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._sim_headers])
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    @web.middleware
    async def _sim_headers(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        resp = await handler(request)
        if not resp.prepared:
            resp.headers.update(SIM_HEADERS)
        return resp

    async def health(self, request: web.Request) -> web.Response:
        """200 once started, 503 before. `?wait=S` (at most HEALTH_WAIT_MAX_S) holds a 503 for
        up to S seconds and answers the moment the engine is ready: the worker waiting for
        start-up makes a few requests instead of one every 20 ms (a poll costs both processes
        CPU, which four engines starting at once on two cores take from each other), and
        learns of readiness at once instead of up to a poll interval late."""
        if not self.ready:
            try:
                wait = min(max(float(request.query.get("wait", 0)), 0.0), HEALTH_WAIT_MAX_S)
            except ValueError:
                wait = 0.0
            if wait > 0:
                try:
                    await asyncio.wait_for(self.started.wait(), wait)
                except asyncio.TimeoutError:
                    pass
        if not self.ready:
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ok", "simulated": True})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.cfg.model, "object": "model", "created": 0, "owned_by": OWNED_BY,
            "root": self.cfg.model_path, "max_model_len": self.cap.max_context, "simulated": True,
        }]})

    async def metrics(self, request: web.Request) -> web.Response:
        running = sum(len(r.running) for r in self.replicas)
        waiting = sum(len(r.waiting) for r in self.replicas)
        kv_used = sum(r.kv_used() for r in self.replicas)
        kv_cap = self.cap.kv_tokens * len(self.replicas)
        s, c = self.stats, self.cfg
        lines = [
            "# TYPE sim_num_requests_running gauge", f"sim_num_requests_running {running}",
            "# TYPE sim_num_requests_waiting gauge", f"sim_num_requests_waiting {waiting}",
            "# TYPE sim_generation_tokens_total counter", f"sim_generation_tokens_total {s.generation_tokens}",
            "# TYPE sim_prompt_tokens_total counter", f"sim_prompt_tokens_total {s.prompt_tokens}",
            "# TYPE sim_request_success_total counter", f"sim_request_success_total {s.finished}",
            "# TYPE sim_request_aborted_total counter", f"sim_request_aborted_total {s.aborted}",
            "# TYPE sim_num_preemptions_total counter", f"sim_num_preemptions_total {s.preempted}",
            "# HELP sim_scheduler_lag_seconds_total Wall seconds the loop fell behind the model and "
            "could not catch up (if large vs. sim_busy_seconds_total, the CPU limits the simulation: raise "
            "--sim-time-scale).",
            "# TYPE sim_scheduler_lag_seconds_total counter", f"sim_scheduler_lag_seconds_total {s.lag_s:.6f}",
            "# TYPE sim_busy_seconds_total counter", f"sim_busy_seconds_total {s.busy_s:.6f}",
            *s.iteration_lag.prometheus(HISTOGRAMS["iteration"], "Wall seconds each iteration ended after its "
                                        "scheduled end (the model's schedule, at the time scale)."),
            *s.token_lag.prometheus(HISTOGRAMS["token"], "Wall seconds each write of streamed tokens left after "
                                    "the scheduled end of the iteration that made them."),
            "# TYPE sim_kv_cache_capacity_tokens gauge", f"sim_kv_cache_capacity_tokens {kv_cap}",
            "# TYPE sim_kv_cache_usage_perc gauge", f"sim_kv_cache_usage_perc {kv_used / kv_cap:.6f}",
            "# TYPE sim_engine_info gauge",
            f'sim_engine_info{{simulated="true",engine="{c.engine}",model="{c.model}",'
            f'gpu="{self.gpu.name}",preset="{self.model.name}",time_scale="{c.time_scale}"}} 1',
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    # ---- generation ----------------------------------------------------------------------
    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response(
            {"object": "error", "message": message, "type": "BadRequestError", "code": status},
            status=status,
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    def _prompt_tokens(self, body: dict, chat: bool) -> int:
        """Prompt length by the documented approximation ceil(chars / 4); token-id lists count as is."""
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise ValueError("'messages' must be a non-empty list")
            text = ""
            for m in msgs:
                content = m.get("content") if isinstance(m, dict) else None
                if isinstance(content, str):
                    text += content
                elif isinstance(content, list):
                    text += "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return max(1, prompt_tokens_for_text(text))
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return max(1, prompt_tokens_for_text(prompt))
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        raise ValueError("'prompt' must be a string or a list of token ids (one prompt per request)")

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        if not self.ready:
            return web.json_response({"status": "starting"}, status=503)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
            prompt_tokens = self._prompt_tokens(body, chat)
            max_tokens = body.get("max_completion_tokens") if chat else None
            max_tokens = max_tokens if max_tokens is not None else body.get("max_tokens")
            max_tokens = 16 if max_tokens is None else int(max_tokens)
        except (ValueError, TypeError, AttributeError) as exc:
            return self._error(400, f"invalid request: {exc}")
        if max_tokens < 1:
            return self._error(400, "max_tokens must be at least 1")
        total = prompt_tokens + max_tokens
        if total > self.cap.max_context:
            return self._error(400, (
                f"This model's maximum context length is {self.cap.max_context} tokens. However, you "
                f"requested {total} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."))
        if total > self.cap.kv_tokens:
            return self._error(400, f"request needs {total} KV tokens but the cache holds {self.cap.kv_tokens}")
        seq = next(self._ids)
        req = SimRequest(seq, prompt_tokens, max_tokens)
        replica = self.replicas[next(self._rr)]
        replica.submit(req)
        stream_opts = body.get("stream_options") or {}
        try:
            if body.get("stream"):
                return await self._stream(request, req, chat, bool(stream_opts.get("include_usage")))
            while not req.done:
                await req.event.wait()
                req.event.clear()
            return web.json_response(self._full_response(req, chat))
        finally:
            if not req.done:
                replica.cancel(req)

    def _head(self, req: SimRequest, chat: bool) -> dict:
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-sim{req.seq}",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.cfg.model}

    @staticmethod
    def _usage(req: SimRequest, lags: LagHistogram | None = None) -> dict:
        """OpenAI's usage; a streamed request's also says how late its tokens left (wall ms)."""
        usage = {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.generated,
                 "total_tokens": req.prompt_tokens + req.generated}
        if lags is not None:
            cumulative = list(itertools.accumulate(lags.counts))
            usage["sim_token_lag_ms"] = {"p50": _ms(quantile(cumulative, 0.5)), "p99": _ms(quantile(cumulative, 0.99)),
                                         "max": round(lags.max * 1e3, 3)}
        return usage

    def _full_response(self, req: SimRequest, chat: bool) -> dict:
        text = output_text(req.generated)
        head = self._head(req, chat)
        if chat:
            head["object"] = "chat.completion"
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": "length"}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
        return {**head, "choices": [choice], "usage": self._usage(req)}

    async def _stream(self, request: web.Request, req: SimRequest, chat: bool, usage: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           **SIM_HEADERS})
        await resp.prepare(request)
        head = self._head(req, chat)
        # Only a chunked body can take the sink's frames (an HTTP/1.0 client gets every write from here).
        chunked = resp.headers.get("Transfer-Encoding") == "chunked"
        stream = TokenStream(head, chat, req.max_tokens, request.transport if chunked else None,
                             self.stats.token_lag)
        try:
            while True:
                await req.event.wait()
                req.event.clear()
                parts: list[bytes] = []
                if chat and stream.sent == 0 and req.generated > 0:  # vLLM sends the role first, empty content
                    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None}
                    parts.append(b"data: " + json.dumps({**head, "choices": [role]}).encode() + b"\n\n")
                if req.generated > stream.sent:
                    parts.append(stream.take(req.generated, req.due))
                if req.done:
                    if usage:
                        parts.append(b"data: " + json.dumps({**head, "choices": [], "usage": self._usage(req, stream.lags)})
                                     .encode() + b"\n\n")
                    parts.append(b"data: [DONE]\n\n")
                    await resp.write_eof(b"".join(parts))
                    return resp
                if parts:
                    await resp.write(b"".join(parts))  # the first one carries the headers
                    req.sink = stream.deliver
        except ConnectionError:  # client went away; _generate's finally drops the request
            return resp
        finally:
            req.sink = None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isinf(seconds) else round(seconds * 1e3, 3)


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if not pid_alive(pid):
            print(f"parent process {pid} is gone; shutting down", flush=True)
            stop.set()
            return
        await asyncio.sleep(0.5)


async def serve(
    cfg: SimEngineConfig, model: ModelSpec, gpu: GpuHardware, cap: Capacity, startup_s: float, launched_at: float | None = None
) -> int:
    """Bind, stay 503 until ``startup_s`` wall seconds after ``launched_at`` (epoch seconds
    when the launcher started us), serve until a signal or the parent dies.

    Counting from the launch makes the simulated start-up a fixed length whatever the host
    CPU is doing: a real engine's load time is weight I/O and GPU work, while this process's
    own Python start-up is an artefact of the simulation and is hidden inside the window."""
    engine = SimEngine(cfg, model, gpu, cap, startup_s)
    runner = web.AppRunner(engine.app(), handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.host, cfg.port).start()
    except OSError as exc:
        print(f"ERROR: could not bind {cfg.host}:{cfg.port}: {exc}", file=sys.stderr, flush=True)
        await runner.cleanup()
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.stop.set)
    tasks = [asyncio.create_task(r.run()) for r in engine.replicas]
    if cfg.parent_pid is not None:
        tasks.append(asyncio.create_task(_watch_parent(cfg.parent_pid, engine.stop)))

    def _ready() -> None:
        engine.ready = True
        engine.started.set()
        print("The server is fired up and ready to roll! (simulated engine)", flush=True)

    print(f"Uvicorn running on http://{cfg.host}:{cfg.port} (simulated; start-up {startup_s:.2f}s)", flush=True)
    elapsed = time.time() - launched_at if launched_at is not None else 0.0
    loop.call_later(max(0.0, startup_s - elapsed), _ready)
    await engine.stop.wait()
    for t in tasks:
        t.cancel()
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=3.0)
    except asyncio.TimeoutError:
        pass
    return 0
