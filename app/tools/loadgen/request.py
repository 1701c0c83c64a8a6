"""One streaming request against an OpenAI-compatible server, timed like vllm bench serve.

Why a module of its own: both load shapes (closed-loop workers and open-loop arrivals)
send requests the same way, so the request body and the stream timing live here once.
Failures are data (recorded per request with a kind), never exceptions.
"""
from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp

from .metrics import RequestRecord

# A 400 for a prompt longer than the engine's context: llama.cpp's "exceeds the available
# context size", vLLM's "maximum context length", SGLang's "longer than the model's context length".
_CONTEXT = re.compile(r"context (size|length)", re.I)


def request_body(model: str, api: str, prompt: str, max_tokens: int) -> dict:
    """Streaming body with usage and ``ignore_eos`` so the requested output length is met."""
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


def content_of(chunk: dict) -> str:
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
    """Send one streaming request and time it; errors end up in ``RequestRecord.error``
    (``context_exceeded`` for a prompt the engine's context cannot hold, ``short_output``
    when fewer than ``max_tokens`` tokens came back although ``ignore_eos`` was sent)."""
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
                kind = "context_exceeded" if resp.status == 400 and _CONTEXT.search(detail) else f"http_{resp.status}"
                error = f"{kind}: {detail}"
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
                    if content_of(obj):
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
    elif error is None and usage_tokens is not None and usage_tokens < body.get("max_tokens", 0):
        # ignore_eos asked for exactly max_tokens; fewer means the engine cut the output
        # (llama.cpp does when prompt + output outgrow a slot's context): not the traffic asked for.
        error = f"short_output: {usage_tokens} of {body['max_tokens']} tokens generated"
    return RequestRecord(start, ttft, end, chunks, input_tokens, output_tokens, error)
