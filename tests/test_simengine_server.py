"""The simulated engine as a real subprocess, driven by the real benchmark client."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator

import aiohttp
import pytest

from app.tools.loadgen import run_benchmark, run_level
from tests.conftest import stop_process as stop

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# Start-up counts from process launch (imports included), so leave a visible 503 window.
FAST = ["--sim-time-scale", "0.01", "--sim-startup-seconds", "1.5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sim_cmd(port: int, *extra: str, engine: str = "sglang") -> list[str]:
    return [sys.executable, "-m", "app.tools.simengine", "--host", "127.0.0.1", "--port", str(port),
            "--engine", engine, "--model", MODEL, *extra]


def http_status(url: str) -> int | None:
    """HTTP status of a GET, or None while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def wait_healthy(proc: subprocess.Popen, base: str, timeout: float = 30.0) -> list[int]:
    """Poll /health until 200; returns the distinct statuses seen, in order."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "engine exited"
        status = http_status(base + "/health")
        if status is not None and (not seen or seen[-1] != status):
            seen.append(status)
        if status == 200:
            return seen
        time.sleep(0.01)
    raise AssertionError(f"not healthy after {timeout}s; saw {seen}")


@pytest.fixture(scope="module")
def server() -> Iterator[dict]:
    port = free_port()
    proc = subprocess.Popen(sim_cmd(port, *FAST), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        seen = wait_healthy(proc, base)
        yield {"base": base, "proc": proc, "seen": seen}
    finally:
        stop(proc)


def test_health_is_503_during_startup_then_200(server: dict) -> None:
    assert server["seen"] == [503, 200]


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
    results = run_benchmark(server["base"], MODEL, "D(100,20)", [1, 4], max_requests=n, max_time_s=60,
                            num_gpus=1, api=api)
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
    r = run_benchmark(server["base"], MODEL, "U(20,200)/(5,15)", [256], max_requests=512, max_time_s=120,
                      num_gpus=1)[0]
    assert r["completed"] == 512 and r["errors"] == 0


def test_server_errors_are_recorded_not_raised(server: dict) -> None:
    r = asyncio.run(run_level(server["base"], MODEL, "D(9000,10)", 2, 4, 30, 1))
    assert r["completed"] == 0 and r["errors"] == 4
    assert r["error_kinds"] == {"http_400": 4}
    assert r["mean_ttft_ms"] is None


def test_should_stop_ends_a_level_early(server: dict) -> None:
    t0 = time.monotonic()
    r = asyncio.run(run_level(server["base"], MODEL, "D(100,5000)", 2, 100, 600, 1,
                              should_stop=lambda: time.monotonic() - t0 > 0.3))
    assert r["stopped_early"] is True and time.monotonic() - t0 < 10


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
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _metric(base, "sim_request_aborted_total") > aborted_before and \
                _metric(base, "sim_num_requests_running") == 0:
            return
        time.sleep(0.02)
    raise AssertionError("disconnected request was not dropped")


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


# ---- the scheduler in-process: limits, preemption, determinism ---------------------------
from dataclasses import replace  # noqa: E402

from app.tools.simengine.model import GPU_PRESETS, MODEL_PRESETS, EngineSettings, plan  # noqa: E402
from app.tools.simengine.server import ReplicaScheduler, SimRequest, Stats  # noqa: E402


async def _drive(settings: EngineSettings, kv_tokens: int, n: int = 10, prompt: int = 100, out: int = 50):
    model, gpu = MODEL_PRESETS["llama-3-8b"], GPU_PRESETS["H100-80GB"]
    cap = replace(plan(model, gpu, settings), kv_tokens=kv_tokens, max_running=8)
    stats = Stats()
    sched = ReplicaScheduler(model, gpu, settings, cap, 1e-6, stats)
    task = asyncio.create_task(sched.run())
    reqs = [SimRequest(i, prompt, out) for i in range(n)]
    order: list[int] = []
    max_running = 0

    async def follow(r: SimRequest) -> None:
        nonlocal max_running
        while not r.done:
            await r.event.wait()
            r.event.clear()
            max_running = max(max_running, len(sched.running))
        order.append(r.seq)

    for r in reqs:
        sched.submit(r)
    await asyncio.wait_for(asyncio.gather(*(follow(r) for r in reqs)), 30)
    task.cancel()
    return reqs, stats, order, max_running


@pytest.mark.parametrize("settings", [
    EngineSettings(engine="vllm", prefill_budget=64, new_token_ratio=0.0),
    EngineSettings(engine="sglang", prefill_budget=64, new_token_ratio=0.2),
])
def test_scheduler_preempts_when_kv_runs_out_and_still_finishes(settings: EngineSettings) -> None:
    reqs, stats, _, max_running = asyncio.run(_drive(settings, kv_tokens=600))
    assert all(r.done and r.generated == 50 for r in reqs)
    assert stats.preempted > 0
    assert stats.generation_tokens == 10 * 50
    assert max_running <= 8


def test_scheduler_is_deterministic_for_same_arrivals() -> None:
    s = EngineSettings(engine="sglang", prefill_budget=128, schedule_policy="random")
    first = asyncio.run(_drive(s, kv_tokens=2000))[2]
    second = asyncio.run(_drive(s, kv_tokens=2000))[2]
    assert first == second
