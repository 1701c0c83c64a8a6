"""Cross-check the benchmark client against an independent simulator, xpyd-sim.

xpyd-sim (``xpyd-sim serve``, non-scheduling mode) sleeps ``--prefill-delay-ms`` before it
starts the response and ``--decode-delay-per-token-ms`` before *each* streamed token,
including the first. So a client measuring like vllm bench serve must see

    TTFT ~= prefill_delay + decode_delay        TPOT ~= decode_delay

Here only what holds on any machine, however loaded, is checked: every request and token
counted, and no latency below the delays the server sleeps (a sleep never ends early, so a
client that measured less would be wrong). How close to the delays the client comes is a
wall-clock accuracy figure, measured by benchmarks/client_accuracy.py.
"""
from __future__ import annotations

import subprocess
import sys
from typing import Iterator

import pytest

from tests.helpers import free_port, stop_process, wait_healthy

from app.tools.loadgen import Target, run_benchmark

pytestmark = pytest.mark.process

pytest.importorskip("xpyd_sim")


def at_least(measured: float, floor: float) -> bool:
    """`measured` is not below `floor` (0.5 ms for rounding and clock granularity)."""
    return measured >= floor - 0.5


@pytest.fixture(params=[(50.0, 10.0), (120.0, 4.0)], ids=["prefill50-decode10", "prefill120-decode4"])
def xpyd(request: pytest.FixtureRequest) -> Iterator[dict]:
    prefill_ms, decode_ms = request.param
    port = free_port()
    cmd = [sys.executable, "-c", "from xpyd_sim.cli import main; main()", "serve",
           "--host", "127.0.0.1", "--port", str(port), "--model", "xpyd-test",
           "--prefill-delay-ms", str(prefill_ms), "--decode-delay-per-token-ms", str(decode_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base, timeout=60)
        yield {"base": base, "prefill_ms": prefill_ms, "decode_ms": decode_ms}
    finally:
        stop_process(proc)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_measured_latencies_match_configured_delays(xpyd: dict, api: str) -> None:
    n, out = 5, 20
    r = run_benchmark(Target(xpyd["base"], "xpyd-test", f"D(100,{out})", max_requests=n, max_time_s=60, api=api),
                      [1])[0]
    assert r["completed"] == n and r["errors"] == 0, r["error_kinds"]
    assert r["total_output_tokens"] == n * out
    expected_ttft = xpyd["prefill_ms"] + xpyd["decode_ms"]
    assert at_least(r["mean_ttft_ms"], expected_ttft), (r["mean_ttft_ms"], expected_ttft)
    expected_e2el = xpyd["prefill_ms"] + out * xpyd["decode_ms"]
    assert at_least(r["mean_e2el_ms"], expected_e2el), (r["mean_e2el_ms"], expected_e2el)
    assert r["mean_tpot_ms"] > 0 and r["median_itl_ms"] > 0
