"""The simulated engine as a real subprocess, driven by the real benchmark client."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from typing import Iterator

import aiohttp
import pytest

from app.tools.loadgen import Target, run_benchmark, run_level
from tests.helpers import SIM_FAST as FAST
from tests.helpers import SIM_MODEL as MODEL
from tests.helpers import free_port, http_status, sim_cmd, wait_for, wait_healthy
from tests.helpers import stop_process as stop

pytestmark = pytest.mark.process
# Long enough that the server is bound well before it: the 503 window cannot be missed.
SLOW_START_S = 8.0


@pytest.fixture(scope="module")
def server() -> Iterator[dict]:
    port = free_port()
    proc = subprocess.Popen(sim_cmd(port, *FAST), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        yield {"base": base, "proc": proc}
    finally:
        stop(proc)


@contextmanager
def starting_engine(startup_s: float) -> Iterator[tuple[subprocess.Popen, str]]:
    """A simulated engine with a start-up of `startup_s` wall seconds, handed over as soon as
    it says it is bound (its "running on" line): still starting. Yields (process, base URL)."""
    port = free_port()
    proc = subprocess.Popen(sim_cmd(port, "--sim-time-scale", "0.01", "--sim-startup-seconds", str(startup_s)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "running on" in line:
                break
        else:
            raise AssertionError(f"the simulated engine exited: {proc.stderr.read()[-2000:]}")
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_health_is_503_during_startup_then_200() -> None:
    """Bound but still starting: 503; after the start-up: 200. The start-up is long enough
    that the first probe after the engine says it is bound always lands inside the window."""
    with starting_engine(SLOW_START_S) as (proc, base):
        assert http_status(base + "/health") == 503
        assert wait_healthy(proc, base, timeout=60)[-1] == 200


def test_health_wait_answers_when_ready() -> None:
    """`/health?wait=S` holds a 503 for up to S seconds and answers 200 the moment start-up
    ends: a client asking back to back without pausing makes a handful of requests over a
    3-second start-up (one per second at most, plus the last), where a plain /health would
    be asked hundreds of times."""
    with starting_engine(3.0) as (_proc, base):
        assert http_status(base + "/health?wait=nonsense") == 503  # a bad value: no wait, no error
        statuses = []
        while not statuses or statuses[-1] != 200:
            statuses.append(http_status(base + "/health?wait=5"))  # capped at 1 s by the engine
            assert len(statuses) <= 10, statuses
        assert set(statuses[:-1]) <= {503}


def test_models_and_headers_say_simulated(server: dict) -> None:
    with urllib.request.urlopen(server["base"] + "/v1/models") as resp:
        assert resp.headers["X-Simulated"] == "true"
        data = json.load(resp)
    assert data["object"] == "list"
    assert data["data"][0]["id"] == MODEL
    assert "simulated" in data["data"][0]["owned_by"]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_run_benchmark_counts_every_token(server: dict, api: str) -> None:
    n = 8
    results = run_benchmark(Target(server["base"], MODEL, "D(100,20)", max_requests=n, max_time_s=60, api=api),
                            [1, 4])
    assert [r["concurrency"] for r in results] == [1, 4]
    for r in results:
        assert r["completed"] == n and r["errors"] == 0, r["error_kinds"]
        assert r["total_output_tokens"] == 20 * n
        assert r["total_input_tokens"] == 100 * n
        assert r["mean_ttft_ms"] > 0 and r["mean_tpot_ms"] > 0 and r["p99_itl_ms"] > 0
        assert r["output_throughput"] > 0 and r["stopped_early"] is False


def test_metrics_endpoint(server: dict) -> None:
    with urllib.request.urlopen(server["base"] + "/metrics") as resp:
        text = resp.read().decode()
    assert 'sim_engine_info{simulated="true"' in text
    for name in ("sim_num_requests_running", "sim_num_requests_waiting", "sim_generation_tokens_total"):
        assert name in text


def test_hundreds_of_concurrent_streams(server: dict) -> None:
    r = run_benchmark(Target(server["base"], MODEL, "U(20,200)/(5,15)", max_requests=512, max_time_s=120),
                      [256])[0]
    assert r["completed"] == 512 and r["errors"] == 0


def test_server_errors_are_recorded_not_raised(server: dict) -> None:
    r = asyncio.run(run_level(Target(server["base"], MODEL, "D(9000,10)", max_requests=4, max_time_s=30), 2))
    assert r["completed"] == 0 and r["errors"] == 4
    assert r["error_kinds"] == {"context_exceeded": 4}  # a 400 that names the context length
    assert r["mean_ttft_ms"] is None


def test_should_stop_ends_a_level_early(server: dict) -> None:
    polls = 0

    def stop_after_a_few_polls() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3

    # 100 requests of 5000 tokens, 2 at a time: minutes if the level ran to its end.
    r = asyncio.run(run_level(Target(server["base"], MODEL, "D(100,5000)", max_requests=100, max_time_s=600), 2,
                              should_stop=stop_after_a_few_polls))
    assert r["stopped_early"] is True and polls > 3


def _metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise KeyError(name)


def test_client_disconnect_drops_the_request(server: dict) -> None:
    base = server["base"]
    aborted_before = _metric(base, "sim_request_aborted_total")

    async def read_one_chunk_then_leave() -> None:
        async with aiohttp.ClientSession() as session:
            body = {"model": MODEL, "prompt": "hi " * 40, "max_tokens": 4000, "stream": True}
            async with session.post(base + "/v1/completions", json=body) as resp:
                assert resp.status == 200
                await resp.content.readline()

    asyncio.run(read_one_chunk_then_leave())
    wait_for(lambda: _metric(base, "sim_request_aborted_total") > aborted_before
             and _metric(base, "sim_num_requests_running") == 0, 10, "the disconnected request to be dropped",
             interval=0.02)


def test_unknown_flag_exits_non_zero_at_once() -> None:
    res = subprocess.run(sim_cmd(free_port(), "--foo", *FAST), capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert "unrecognized arguments: --foo" in res.stderr
    res = subprocess.run(sim_cmd(free_port(), "--tp-size", "2", engine="vllm"), capture_output=True,
                         text=True, timeout=30)
    assert res.returncode != 0 and "unrecognized arguments" in res.stderr


def test_impossible_config_fails_start_up_like_the_engine() -> None:
    res = subprocess.run(sim_cmd(free_port(), "--mem-fraction-static", "0.1", *FAST), capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 1
    assert "Not enough memory. Please try to increase --mem-fraction-static" in res.stderr
    res = subprocess.run(sim_cmd(free_port(), "--tp", "4", "--num-gpus", "2", *FAST), capture_output=True,
                         text=True, timeout=30)
    assert res.returncode != 0


def test_server_exits_when_parent_pid_is_gone() -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    port = free_port()
    proc = subprocess.Popen(sim_cmd(port, "--parent-pid", str(parent.pid), *FAST),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}")
        parent.kill()
        parent.wait(timeout=5)
        proc.wait(timeout=10)  # the watcher checks every 0.5 s
        assert proc.returncode == 0
    finally:
        stop(proc)
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=5)


def _raw_post(base: str, path: str, body: dict, version: str) -> tuple[dict[str, str], bytes]:
    """POST over a bare socket and read until the server closes: headers and the body as sent."""
    host, port = base.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    request = (f"POST {path} HTTP/{version}\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        raw = b""
        while data := sock.recv(65536):
            raw += data
    head, _, body_bytes = raw.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    return {k.lower(): v for k, v in headers.items()}, body_bytes


def _dechunk(body: bytes) -> tuple[bytes, int]:
    """The chunked transfer coding undone strictly: the data and how many frames carried it."""
    out, frames = b"", 0
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n", "the last frame is followed by nothing but its CRLF"
            return out, frames
        assert body[size:size + 2] == b"\r\n", "every frame is exactly as long as it says"
        out, body, frames = out + body[:size], body[size + 2:], frames + 1


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_streamed_bytes_are_exactly_openais(server: dict, api: str, version: str) -> None:
    """The scheduler writes tokens straight to the socket (server.TokenStream): each SSE event
    must still be the exact JSON an OpenAI server sends, one token each, in order, in valid
    HTTP/1.1 chunks (and as a plain body for an HTTP/1.0 client), ending with usage and [DONE]."""
    chat = api == "chat"
    n = 23  # more than the 9 output words: the per-word chunks wrap around
    body = {"model": MODEL, "max_tokens": n, "stream": True, "stream_options": {"include_usage": True},
            **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    headers, raw = _raw_post(server["base"], "/v1/chat/completions" if chat else "/v1/completions", body, version)
    if version == "1.1":
        assert headers["transfer-encoding"] == "chunked"
        data, frames = _dechunk(raw)
        assert frames > 2, "tokens left in several writes, not buffered to the end"
    else:
        assert "transfer-encoding" not in headers
        data = raw
    assert data.endswith(b"\n\n") and data.startswith(b"data: ")
    events = [e.removeprefix(b"data: ") for e in data[:-2].split(b"\n\n")]
    assert events[-1] == b"[DONE]"
    first = json.loads(events[0])
    head = {k: first[k] for k in ("id", "object", "created", "model")}
    assert head["object"] == ("chat.completion.chunk" if chat else "text_completion")
    words = (" the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog", ".")
    expected = []
    if chat:
        expected.append({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "logprobs": None, "finish_reason": None}]})
    for i in range(n):
        finish = "length" if i == n - 1 else None
        choice = ({"index": 0, "delta": {"content": words[i % 9]}} if chat else {"index": 0, "text": words[i % 9]})
        expected.append({**head, "choices": [{**choice, "logprobs": None, "finish_reason": finish}]})
    assert [e.decode() for e in events[:-2]] == [json.dumps(e) for e in expected]  # byte for byte
    usage = json.loads(events[-2])
    assert {k: usage[k] for k in head} == head and usage["choices"] == []
    assert {k: usage["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == {
        "prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
    assert set(usage["usage"]["sim_token_lag_ms"]) == {"p50", "p99", "max"}
