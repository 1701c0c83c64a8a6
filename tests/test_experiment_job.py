"""The experiment job's pure parts: what it asks the runtime for, and how simulated
figures are reported in the modelled hardware's time."""
from __future__ import annotations

import pytest
from app.domain.taskspec import parse_task
from tests.helpers import mixed_task
from workers.experiment_job import engine_request, to_simulated_time



@pytest.mark.unit
def test_sim_figures_are_reported_in_modelled_time():
    level = {"concurrency": 8, "completed": 10, "mean_ttft_ms": 2.0, "p99_e2el_ms": 30.0, "duration": 1.5,
             "output_throughput": 1000.0, "output_throughput_per_gpu": 500.0, "errors": 0}
    out = to_simulated_time(level, 0.1)
    assert out["mean_ttft_ms"] == 20.0 and out["p99_e2el_ms"] == 300.0 and out["duration"] == 15.0
    assert out["output_throughput"] == 100.0 and out["output_throughput_per_gpu"] == 50.0
    assert out["concurrency"] == 8 and out["completed"] == 10 and out["time_scale"] == 0.1
    assert to_simulated_time(level, 1.0) is level


@pytest.mark.unit
def test_engine_request_for_docker_uses_the_tagged_image_and_exact_gpus():
    data = mixed_task([{"tp-size": 2}])
    data.update(base_runtime="sglang", deployment_mode="docker", runtime_image_tag="v0.5.2-cu126")
    data.pop("sim")
    spec = parse_task(data)
    req = engine_request(spec, 7, 2, {"tp-size": 2, "schedule-policy": "lpm"}, [2, 3])
    assert req.image == "lmsysorg/sglang:v0.5.2-cu126" and req.launcher.name == "sglang"
    assert req.gpu_indices == [2, 3] and req.experiment_id == 7 and req.attempt == 2
    assert req.flags == ["--tp-size", "2", "--schedule-policy", "lpm"]


@pytest.mark.unit
def test_engine_request_for_sim_carries_the_sim_settings():
    spec = parse_task(mixed_task([{"tp-size": 1}]))
    req = engine_request(spec, 1, 1, {"tp-size": 1}, [0])
    assert req.image is None and req.sim["time_scale"] == 0.02
    assert req.launcher.simulated and req.flavour == "sglang"


@pytest.mark.unit
def test_goodput_limits_come_from_the_slo_in_milliseconds():
    from workers.experiment_job import goodput_limits

    slo = {"ttft": {"threshold": 1.0}, "latency": {"p50": {"threshold": 2.0}, "p99": {"threshold": 10.0}}}
    assert goodput_limits(slo) == {"ttft": 1000.0, "e2el": 10000.0}
    assert goodput_limits(None) is None and goodput_limits({"steepness": 0.1}) is None


def benchmark_on_sim(spec) -> list:
    """The job's benchmark step against a real simulated engine started for `spec`."""
    from workers.experiment_job import benchmark
    from workers.runtimes.process import ProcessRuntime

    runtime = ProcessRuntime(name="sim")
    deployment = runtime.start(engine_request(spec, 1, 1, {"tp-size": 1}, [0]))
    try:
        runtime.wait_ready(deployment, timeout=60)
        return benchmark(spec, deployment, 1, lambda: False)
    finally:
        runtime.stop(deployment)


@pytest.mark.process
def test_open_loop_task_runs_rates_on_the_sim_engine_in_modelled_time():
    """The job's benchmark step against a real sim engine: request rates are given in
    modelled time, sent faster by the time scale, and reported back in modelled time."""
    data = mixed_task([{"tp-size": 1}])
    data["sim"] = {"time_scale": 0.1, "startup_seconds": 0}
    data["benchmark"].update(request_rate=[2.0, 4.0], max_requests_per_iteration=8, max_concurrency=4)
    data["optimization"]["objective_level"] = 4.0
    data["slo"] = {"ttft": {"threshold": 5.0}}
    spec = parse_task(data)
    (scenario,) = benchmark_on_sim(spec)
    levels = scenario["levels"]
    assert [lv["request_rate"] for lv in levels] == [2.0, 4.0]
    assert all(lv["completed"] == 8 and lv["concurrency"] is None for lv in levels)
    assert all(lv["max_in_flight"] <= 4 for lv in levels)
    assert levels[0]["goodput_slo"] == {"ttft": 5000.0}
    assert levels[0]["good_requests"] is not None


@pytest.mark.process
def test_sustainable_rate_searches_rates_on_the_sim_engine_and_reports_both_sides():
    """maximize_sustainable_rate: the job tries the rates the bounded search picks against a
    real sim engine, judges each against the SLO as it ends, and the score is the highest rate
    that met it, with the lowest that did not."""
    from app.domain.objectives import measure_all, sustains
    from app.domain.ratesearch import next_rate
    data = mixed_task([{"tp-size": 1}])
    data["sim"] = {"time_scale": 0.1, "startup_seconds": 0}
    data["benchmark"].update(rate_search={"low": 2.0, "high": 400.0, "steps": 3}, max_requests_per_iteration=40,
                             traffic_scenarios=["D(1024,64)"])
    data["optimization"]["objective"] = "maximize_sustainable_rate"
    data["slo"] = {"ttft": {"threshold": 0.3}}
    spec = parse_task(data)
    (scenario,) = benchmark_on_sim(spec)
    levels, slo = scenario["levels"], spec.to_dict()["slo"]
    tried: dict[float, bool] = {}
    for level in levels:  # each rate is the one the search asks for after the ones before it
        assert level["request_rate"] == next_rate(tried, 2.0, 400.0, 3)
        tried[level["request_rate"]] = sustains(level, slo)
    assert next_rate(tried, 2.0, 400.0, 3) is None and tried[2.0] and not tried[400.0] and len(tried) > 2
    result, measured = measure_all([levels], spec.objective_names, slo)
    (bracket,) = result.bracket
    assert result.objective == measured["maximize_sustainable_rate"] == bracket["passed"] == bracket["rate"]
    assert bracket["failed"] == min(r for r, ok in tried.items() if not ok and r > bracket["passed"])
    assert result.penalty == 0 and result.slo_ok
