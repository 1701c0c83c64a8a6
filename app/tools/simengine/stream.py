"""The bytes of one streamed request, and how its tokens reach the socket without waking its handler.

Why: on the wall clock every iteration emits one token to every running request, so the
engine's cost per token is what a busy host starves first (lag) and what limits how many
engines one worker can feed. Per token the engine used to wake the request's handler task
(an event, a task switch, an awaited write): most of its CPU per token. Now the handler sends
the first write itself through aiohttp (which sends the response's headers with it), then
registers ``TokenStream.deliver`` as the request's sink, and from there the scheduler writes
each iteration's tokens straight to the connection's transport as one HTTP/1.1 chunk, in the
same loop turn that made them. The handler is woken only to finish the response (usage chunk,
``[DONE]``, the last chunk), when the transport's buffer is full (its awaited write then
waits for the client to drain it) or when the connection is closing. Every SSE chunk's bytes
are built once per request (one per output word), so a token costs no JSON and no
formatting. The bytes on the wire are the same as when every write went through aiohttp: the
chunked transfer coding's frames (``<hex length>\\r\\n<data>\\r\\n``) are what aiohttp writes.
"""
from __future__ import annotations

import asyncio
import json

from .lag import LagHistogram

OUTPUT_WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog", ".")
WORDS_JSON = tuple(json.dumps(w).encode() for w in OUTPUT_WORDS)
WRITE_BUFFER_LIMIT = 0x10000  # bytes waiting in a transport beyond which the handler's write drains (aiohttp's)


def output_text(tokens: int) -> str:
    """What a non-streamed request's `tokens` tokens read."""
    return "".join(OUTPUT_WORDS[i % len(OUTPUT_WORDS)] for i in range(tokens))


class TokenStream:
    """One streamed request's SSE chunks and the tokens of it already sent."""

    __slots__ = ("chunks", "last", "max_tokens", "sent", "transport", "loop", "lags", "engine_lags")

    def __init__(self, head: dict, chat: bool, max_tokens: int, transport: asyncio.Transport | None,
                 engine_lags: LagHistogram) -> None:
        field = '"delta": {"content": ' if chat else '"text": '
        prefix = ("data: " + json.dumps(head)[:-1] + ', "choices": [{"index": 0, ' + field).encode()
        suffix = (('}' if chat else '') + ', "logprobs": null, "finish_reason": ').encode()
        self.chunks = tuple(prefix + w + suffix + b"null}]}\n\n" for w in WORDS_JSON)
        self.last = prefix + WORDS_JSON[(max_tokens - 1) % len(WORDS_JSON)] + suffix + b'"length"}]}\n\n'
        self.max_tokens = max_tokens
        self.sent = 0
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.lags = LagHistogram()  # this request's, for its usage chunk
        self.engine_lags = engine_lags  # the engine's, for /metrics

    def take(self, generated: int, due: float) -> bytes:
        """The SSE chunks of the tokens made since the last call; counts how late they leave."""
        late = self.loop.time() - due
        self.lags.observe(late)
        self.engine_lags.observe(late)
        n = len(self.chunks)
        if generated - self.sent == 1 and generated < self.max_tokens:
            body = self.chunks[self.sent % n]
        else:
            body = b"".join([self.chunks[i % n] for i in range(self.sent, min(generated, self.max_tokens - 1))])
            if generated >= self.max_tokens:
                body += self.last
        self.sent = generated
        return body

    def deliver(self, req) -> bool:  # type: ignore[no-untyped-def]  # a server.SimRequest
        """The scheduler's sink: write the new tokens as one HTTP chunk now, or return False to
        leave them (and the end of the response) to the request's handler."""
        t = self.transport
        if req.done or t is None or t.is_closing() or t.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            return False
        body = self.take(req.generated, req.due)
        t.write(b"%x\r\n%b\r\n" % (len(body), body))
        return True
