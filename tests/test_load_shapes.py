"""Open-loop load: arrival schedules (pure, statistical) and request-rate levels driven
against the simulated engine as a real subprocess."""
from __future__ import annotations

import asyncio
import math
import statistics
import subprocess
import urllib.request
from typing import Iterator

import pytest

from app.tools.loadgen import Target, arrival_offsets, arrival_times, run_benchmark, run_level, run_rate_level
from tests.helpers import SIM_FAST as FAST
from tests.helpers import SIM_MODEL as MODEL
from tests.helpers import free_port, sim_cmd, stop_process, wait_healthy


def gaps(rate: float, burstiness: float, n: int = 20000, seed: int = 7) -> list[float]:
    times = arrival_times(n + 1, rate, burstiness, seed)
    return [b - a for a, b in zip(times, times[1:])]


def cv(xs: list[float]) -> float:
    return statistics.pstdev(xs) / statistics.fmean(xs)


# ---- arrival schedules -------------------------------------------------------------------

@pytest.mark.unit
def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    a = arrival_times(200, 5.0, 0.5, seed=3)
    assert a == arrival_times(200, 5.0, 0.5, seed=3)
    assert a != arrival_times(200, 5.0, 0.5, seed=4)
    assert a[0] == 0.0 and all(y >= x for x, y in zip(a, a[1:]))


@pytest.mark.unit
def test_same_seed_at_another_rate_is_the_same_pattern_stretched() -> None:
    slow, fast = arrival_times(50, 2.0, 1.0, seed=1), arrival_times(50, 8.0, 1.0, seed=1)
    assert [s / 4 for s in slow] == pytest.approx(fast)


@pytest.mark.unit
@pytest.mark.parametrize("rate,burstiness", [(4.0, 1.0), (50.0, 1.0), (10.0, 0.25), (10.0, 4.0)])
def test_mean_gap_is_one_over_rate(rate: float, burstiness: float) -> None:
    g = gaps(rate, burstiness)
    # standard error of the mean is CV/sqrt(n) <= 2/141 = 1.4 %; allow 5 %
    assert statistics.fmean(g) == pytest.approx(1.0 / rate, rel=0.05)


@pytest.mark.unit
def test_burstiness_sets_the_spread() -> None:
    poisson, bursty, smooth = cv(gaps(10.0, 1.0)), cv(gaps(10.0, 0.25)), cv(gaps(10.0, 4.0))
    assert poisson == pytest.approx(1.0, rel=0.05)  # exponential gaps
    assert bursty == pytest.approx(2.0, rel=0.1)  # 1 / sqrt(0.25)
    assert smooth == pytest.approx(0.5, rel=0.05)  # 1 / sqrt(4)
    assert bursty > poisson > smooth


@pytest.mark.unit
def test_infinite_rate_is_all_at_once() -> None:
    assert arrival_times(100, math.inf) == [0.0] * 100
    assert arrival_times(5, float("inf"), burstiness=0.3, seed=9) == [0.0] * 5
    assert arrival_times(0, 3.0) == []


@pytest.mark.unit
@pytest.mark.parametrize("rate,burstiness", [(0, 1.0), (-1.0, 1.0), (math.nan, 1.0), ("5", 1.0),
                                             (True, 1.0), (1.0, 0), (1.0, -2.0), (1.0, math.inf)])
def test_bad_rate_or_burstiness_raise_at_the_call(rate: object, burstiness: object) -> None:
    with pytest.raises(ValueError):
        arrival_offsets(rate, burstiness)  # type: ignore[arg-type]


# ---- request-rate levels against the sim engine ------------------------------------------

@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(sim_cmd(port, *FAST), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        yield base
    finally:
        stop_process(proc)


def finished_on_server(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("sim_request_success_total "):
                return float(line.split()[1])
    raise KeyError("sim_request_success_total")


@pytest.mark.process
@pytest.mark.parametrize("api", ["completions", "chat"])
def test_finite_rate_level_completes_every_request(sim: str, api: str) -> None:
    n = 12
    r = asyncio.run(run_rate_level(Target(sim, MODEL, "D(100,20)", n, 60, api=api), 40.0))
    assert r["completed"] == n and r["errors"] == 0, r["error_kinds"]
    assert r["requests_started"] == n and r["stopped_early"] is False
    assert r["request_rate"] == 40.0 and r["burstiness"] == 1.0
    assert r["concurrency"] is None and r["max_concurrency"] is None
    assert r["total_output_tokens"] == 20 * n and r["total_input_tokens"] == 100 * n
    assert r["mean_ttft_ms"] > 0 and r["mean_tpot_ms"] > 0 and r["output_throughput"] > 0
    assert 1 <= r["max_in_flight"] <= n
    assert r["goodput"] is None and r["good_requests"] is None


@pytest.mark.process
def test_max_concurrency_caps_requests_on_the_wire(sim: str) -> None:
    n, cap = 30, 3
    r = asyncio.run(run_rate_level(Target(sim, MODEL, "D(200,40)", n, 120), math.inf, max_concurrency=cap))
    assert r["completed"] == n and r["errors"] == 0, r["error_kinds"]
    assert r["max_concurrency"] == cap and r["request_rate"] == math.inf
    assert 1 <= r["max_in_flight"] <= cap


@pytest.mark.process
def test_warmup_is_sent_but_not_counted(sim: str) -> None:
    before = finished_on_server(sim)
    r = asyncio.run(run_rate_level(Target(sim, MODEL, "D(50,10)", 5, 60), 100.0, warmup_requests=3,
                                   burstiness=0.5, max_concurrency=2))
    assert r["completed"] == 5 and r["requests_started"] == 5 and r["warmup_errors"] == 0
    assert finished_on_server(sim) - before == 8  # 3 warm-up + 5 measured


@pytest.mark.process
def test_max_time_stops_issuing_and_lets_in_flight_finish(sim: str) -> None:
    rate, max_time, seed = 40.0, 0.5, 2
    due = sum(1 for t in arrival_times(1000, rate, seed=seed) if t < max_time)
    r = asyncio.run(run_rate_level(Target(sim, MODEL, "D(50,10)", None, max_time, seed=seed), rate))
    assert 1 <= r["requests_started"] <= due
    assert r["completed"] == r["requests_started"] and r["errors"] == 0


@pytest.mark.process
def test_should_stop_abandons_an_open_loop_level(sim: str) -> None:
    # 100 requests at 1/s would take ~100 s; the first poll (0.5 s in) stops it.
    r = asyncio.run(run_rate_level(Target(sim, MODEL, "D(50,10)", 100, 600), 1.0, should_stop=lambda: True))
    assert r["stopped_early"] is True and r["requests_started"] < 100


@pytest.mark.process
def test_goodput_against_the_sim(sim: str) -> None:
    generous = {"ttft": 60_000, "tpot": 60_000, "e2el": 600_000}
    r = asyncio.run(run_rate_level(Target(sim, MODEL, "D(50,10)", 6, 60, goodput_slo=generous), 50.0))
    assert r["good_requests"] == r["completed"] == 6
    assert r["goodput"] == pytest.approx(r["request_throughput"])
    impossible = asyncio.run(run_level(Target(sim, MODEL, "D(50,10)", 4, 60, goodput_slo={"ttft": 0}), 2))
    assert impossible["good_requests"] == 0 and impossible["goodput"] == 0.0
    assert impossible["goodput_slo"] == {"ttft": 0.0}


@pytest.mark.process
def test_run_benchmark_sweeps_request_rates(sim: str) -> None:
    seen: list[dict] = []
    results = run_benchmark(Target(sim, MODEL, "D(100,20)", max_requests=8, max_time_s=60),
                            request_rates=[20.0, math.inf], burstiness=2.0, max_concurrency=4,
                            warmup_requests=2, on_level=seen.append)
    assert [r["request_rate"] for r in results] == [20.0, math.inf]
    assert seen == results
    for r in results:
        assert r["completed"] == 8 and r["errors"] == 0, r["error_kinds"]
        assert r["concurrency"] is None and r["burstiness"] == 2.0 and r["max_concurrency"] == 4
        assert r["max_in_flight"] <= 4


@pytest.mark.process
def test_closed_loop_summaries_carry_the_new_keys(sim: str) -> None:
    r = run_benchmark(Target(sim, MODEL, "D(50,10)", max_requests=4, max_time_s=60), [2])[0]
    assert r["concurrency"] == 2 and r["completed"] == 4
    assert r["request_rate"] is None and r["burstiness"] is None and r["max_concurrency"] is None
    assert 1 <= r["max_in_flight"] <= 2
    assert r["goodput"] is None and r["good_requests"] is None and r["goodput_slo"] is None


@pytest.mark.parametrize("kwargs", [
    dict(concurrency_levels=[1], request_rates=[1.0]),  # both shapes
    dict(concurrency_levels=None),  # neither
    dict(concurrency_levels=[], request_rates=[0.0]),
    dict(concurrency_levels=[], request_rates=[1.0], burstiness=0.0),
    dict(concurrency_levels=[], request_rates=[1.0], max_concurrency=0),
    dict(concurrency_levels=[], request_rates=[math.inf], target=dict(max_requests=None)),
    dict(concurrency_levels=[1], target=dict(goodput_slo={"latency": 5})),
    dict(concurrency_levels=[1], target=dict(goodput_slo={"ttft": -1})),
    dict(concurrency_levels=[1], target=dict(goodput_slo={})),
])
@pytest.mark.unit
def test_bad_arguments_fail_before_any_request(kwargs: dict) -> None:
    # a closed port: had anything been sent, the result would be connection errors instead
    args = dict(kwargs)
    target = Target(f"http://127.0.0.1:{free_port()}", MODEL, "D(10,2)",
                    **{"max_requests": 4, "max_time_s": 5, **args.pop("target", {})})
    with pytest.raises(ValueError):
        run_benchmark(target, **args)


@pytest.mark.unit
def test_each_level_sends_the_same_lengths_in_other_words() -> None:
    """Levels differ only in load, yet no level's prompts are an earlier level's, so an
    engine's prompt or prefix cache cannot serve them (llama-server keeps them in RAM)."""
    from dataclasses import replace

    from app.tools.loadgen.level import plan_level

    target = Target("http://127.0.0.1:1", "m", "U(50,100)/(10,20)", max_requests=8)
    first, second = plan_level(target), plan_level(replace(target, prompt_salt=1))
    for i in range(8):
        (a, n_a), (b, n_b) = first.spec(i), second.spec(i)
        assert (n_a, a["max_tokens"], len(a["prompt"])) == (n_b, b["max_tokens"], len(b["prompt"]))
        assert a["prompt"] != b["prompt"]
    assert first.spec(3) == plan_level(target).spec(3)  # and the same for the same seed and level
