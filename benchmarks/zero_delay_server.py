"""A zero-delay OpenAI-compatible streaming server, for measuring load *clients*.

It answers ``POST /v1/completions`` and ``POST /v1/chat/completions`` with ``stream: true``
by writing ``max_tokens`` SSE chunks of one token each at once (no model, no sleep), then
the usage chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]``. Each
chunk is its own ``write`` (one HTTP chunk, as an engine that flushes every token), from
bytes built once per model name, so the server spends as little CPU per token as aiohttp
allows. ``stream_options.continuous_usage_stats`` (guidellm sends it) is ignored: usage comes
once, at the end. A non-streaming request gets one JSON body with the same text and usage.
``GET /v1/models`` lists the one model, ``GET /health`` answers 200.

Because nothing waits, any time-to-first-token a client measures against it is overhead:
the client's own, the loopback's and this server's. To separate the last, every generation
request is recorded as ``(wall time at handler entry, this process's CPU seconds so far,
seconds from handler entry until the request body was read, seconds from then to the first
chunk handed to the transport)``, and ``GET /stats?since=T0&until=T1`` (wall-clock seconds,
``time.time()``) summarises the requests that entered in that window: ``requests``,
``median_body_wait_ms`` (headers parsed -> body read: time the *client* took to finish
sending), ``median_server_ttft_ms`` (body read -> first chunk written: this server's own
work) and ``server_cpu_util`` (CPU seconds / wall seconds between the first and last request
of the window; near 1.0 would mean this server, not the client, was the limit).

    python benchmarks/zero_delay_server.py [--host 127.0.0.1] [--port 0] [--model NAME] [--cpu N]

It prints ``AFFINITY <what was done>`` and then, once it listens, ``PORT <n>`` on stdout
(port 0 = a free one). ``--cpu N`` pins the process to CPU core N with
``os.sched_setaffinity`` where the OS has it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import statistics
import time

from aiohttp import web

DEFAULT_MODEL = "zero-delay"
TOKEN = " a"  # one token per chunk; the text is irrelevant to the measurement


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class ZeroDelayServer:
    def __init__(self, model: str) -> None:
        self.model = model
        self._cache: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        # (wall entry, process CPU s at entry, entry -> body read s, body read -> first
        # write s), append-only
        self.records: list[tuple[float, float, float, float]] = []

    def _chunks(self, api: str, model: str) -> tuple[bytes, bytes]:
        """(a content chunk, the last content chunk with finish_reason) for api/model."""
        key = (api, model)
        if key not in self._cache:
            if api == "chat":
                base = {"id": "chatcmpl-zd", "object": "chat.completion.chunk", "created": 0,
                        "model": model}

                def choice(fin: str | None) -> dict:
                    return {"index": 0, "delta": {"content": TOKEN}, "logprobs": None,
                            "finish_reason": fin}
            else:
                base = {"id": "cmpl-zd", "object": "text_completion", "created": 0,
                        "model": model}

                def choice(fin: str | None) -> dict:
                    return {"index": 0, "text": TOKEN, "logprobs": None, "finish_reason": fin}
            self._cache[key] = (_sse({**base, "choices": [choice(None)]}),
                                _sse({**base, "choices": [choice("length")]}))
        return self._cache[key]

    async def generate(self, request: web.Request) -> web.StreamResponse:
        entry_wall, entry_cpu, entry = time.time(), time.process_time(), time.perf_counter()
        api = "chat" if request.path.endswith("/chat/completions") else "completions"
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        got_body = time.perf_counter()
        model = str(body.get("model") or self.model)
        n_out = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        try:
            n_out = max(1, int(n_out))
        except (TypeError, ValueError):
            return web.json_response({"error": {"message": "bad max_tokens"}}, status=400)
        if api == "chat":
            text = "".join(str(m.get("content") or "") for m in body.get("messages") or ())
        else:
            prompt = body.get("prompt") or ""
            text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        usage = {"prompt_tokens": math.ceil(len(text) / 4), "completion_tokens": n_out,
                 "total_tokens": math.ceil(len(text) / 4) + n_out}

        if not body.get("stream"):
            self.records.append((entry_wall, entry_cpu, got_body - entry,
                                 time.perf_counter() - got_body))
            if api == "chat":
                choice = {"index": 0, "message": {"role": "assistant", "content": TOKEN * n_out},
                          "finish_reason": "length"}
            else:
                choice = {"index": 0, "text": TOKEN * n_out, "finish_reason": "length"}
            return web.json_response({"id": "cmpl-zd", "object": "text_completion",
                                      "created": 0, "model": model, "choices": [choice],
                                      "usage": usage})

        chunk, last = self._chunks(api, model)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i in range(n_out):
            await resp.write(last if i == n_out - 1 else chunk)
            if i == 0:
                self.records.append((entry_wall, entry_cpu, got_body - entry,
                                     time.perf_counter() - got_body))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(_sse({"id": "cmpl-zd", "object": "text_completion", "created": 0,
                                   "model": model, "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "zero-delay",
             "max_model_len": 1 << 20}]})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stats(self, request: web.Request) -> web.Response:
        since = float(request.query.get("since", "0"))
        until = float(request.query.get("until", "inf"))
        window = [r for r in self.records if since <= r[0] <= until]
        out: dict = {"requests": len(window), "median_body_wait_ms": None,
                     "median_server_ttft_ms": None, "server_cpu_util": None}
        if window:
            out["median_body_wait_ms"] = statistics.median(r[2] for r in window) * 1000.0
            out["median_server_ttft_ms"] = statistics.median(r[3] for r in window) * 1000.0
            wall = window[-1][0] - window[0][0]
            if wall > 0:
                out["server_cpu_util"] = (window[-1][1] - window[0][1]) / wall
        return web.json_response(out)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/stats", self.stats)
        return app


def pin_to_cpu(cpu: int | None) -> str:
    """Pin this process to one core; returns what was done, for the report."""
    if cpu is None:
        return "not pinned"
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no os.sched_setaffinity on this OS)"
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        return f"not pinned ({exc})"
    return f"pinned to CPU {cpu}"


async def serve(host: str, port: int, model: str) -> None:
    server = ZeroDelayServer(model)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()  # until the process is terminated
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU core")
    args = parser.parse_args()
    print(f"AFFINITY {pin_to_cpu(args.cpu)}", flush=True)
    try:
        asyncio.run(serve(args.host, args.port, args.model))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
