"""The simulated engine's token stream in-process: when the scheduler writes tokens itself and
when it leaves them to the request's handler (the socket's transport is the edge, recorded)."""
from __future__ import annotations

import asyncio
import json

import pytest

from app.tools.simengine.lag import LagHistogram
from app.tools.simengine.server import SimRequest
from app.tools.simengine.stream import WRITE_BUFFER_LIMIT, TokenStream

pytestmark = pytest.mark.unit
HEAD = {"id": "cmpl-sim0", "object": "text_completion", "created": 1, "model": "m"}


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


def _event(word: str, finish: str | None) -> bytes:
    choice = {"index": 0, "text": word, "logprobs": None, "finish_reason": finish}
    return b"data: " + json.dumps({**HEAD, "choices": [choice]}).encode() + b"\n\n"


def test_tokens_go_out_as_chunks_until_the_buffer_fills_and_the_end_is_the_handlers() -> None:
    async def scenario() -> None:
        transport, engine_lags = RecordingTransport(), LagHistogram()
        stream = TokenStream(HEAD, False, 3, transport, engine_lags)
        req = SimRequest(0, 1, 3)
        req.generated = 1
        assert stream.deliver(req)
        assert transport.writes == [b"%x\r\n%b\r\n" % (len(_event(" the", None)), _event(" the", None))]
        transport.buffered = WRITE_BUFFER_LIMIT + 1  # the client is not reading: the handler's write drains
        req.generated = 2
        assert not stream.deliver(req) and len(transport.writes) == 1 and stream.sent == 1
        transport.buffered, transport.closing = 0, True
        assert not stream.deliver(req) and len(transport.writes) == 1
        transport.closing = False
        req.generated, req.done = 3, True  # the last tokens travel with usage and [DONE], from the handler
        assert not stream.deliver(req) and len(transport.writes) == 1
        assert stream.take(3, req.due) == _event(" quick", None) + _event(" brown", "length")
        assert sum(stream.lags.counts) == 2 and sum(engine_lags.counts) == 2

    asyncio.run(scenario())


def test_no_transport_means_every_write_is_the_handlers() -> None:
    async def scenario() -> None:
        stream = TokenStream(HEAD, False, 5, None, LagHistogram())  # an HTTP/1.0 client: no chunked coding
        req = SimRequest(0, 1, 5)
        req.generated = 1
        assert not stream.deliver(req) and stream.sent == 0

    asyncio.run(scenario())
