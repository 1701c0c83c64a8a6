"""Simulated figures you can trust: the model's own in virtual time (deterministic, the default),
or wall-clock figures whose engine lag is measured, and a starved engine caught and marked."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from app.domain.taskspec import parse_task
from app.tools.loadgen import Target
from app.tools.loadgen.level import plan_level
from app.tools.simengine.lag import BUCKETS_S, LagHistogram, parse_buckets, quantile, window
from app.tools.simengine.virtual import Load, replay_level, request_lengths
from tests.helpers import ROOT, mixed_task
from workers import sim_admission, sim_figures
from workers.experiment_job import benchmark, engine_request
from workers.runtimes.process import ProcessRuntime

ARGV = ["--engine", "sglang", "--model", "meta-llama/Meta-Llama-3-8B-Instruct", "--max-running-requests", "64"]


def _counts(hist: LagHistogram) -> list[int]:
    return parse_buckets("\n".join(hist.prometheus("h", "test")), "h")


@pytest.mark.unit
def test_lag_histogram_round_trips_through_metrics_and_gives_upper_bound_quantiles():
    hist = LagHistogram()
    for late in [0.0001] * 98 + [0.003, 0.5]:
        hist.observe(late)
    first = _counts(hist)
    assert first[-1] == 100 and quantile(first, 0.5) == BUCKETS_S[0]
    assert 0.003 <= quantile(first, 0.99) < 0.003 * 1.42  # the bucket's upper edge: within sqrt(2)
    for _ in range(10):
        hist.observe(2.0)
    since = window(first, _counts(hist))
    assert since[-1] == 10 and 2.0 <= quantile(since, 0.5) < 2.0 * 1.42
    assert quantile(window(first, first), 0.5) is None
    assert parse_buckets("sim_other 1\n", "h") is None


def _scrape(lost: float, busy: float, late_tokens: int, on_time: int = 1000) -> dict:
    hist = LagHistogram()
    for _ in range(on_time):
        hist.observe(0.0005)
    for _ in range(late_tokens):
        hist.observe(0.05)
    counts = _counts(hist)
    return {"iteration": counts, "token": counts, "lost_s": lost, "busy_s": busy}


@pytest.mark.unit
def test_lag_summary_marks_late_tokens_and_lost_time_in_modelled_time():
    before = _scrape(0.0, 0.0, 0, on_time=0)
    ok = sim_figures.lag_summary(before, _scrape(0.001, 10.0, 5), scale=0.5)
    assert ok["reliable"] and "problem" not in ok and ok["token_p50_ms"] <= 2 * 0.5 * 1.42
    assert ok["lost_ms"] == 2.0 and ok["lost_share"] == 0.0001
    late = sim_figures.lag_summary(before, _scrape(0.0, 10.0, 50), scale=0.5)  # 5 % of writes 50 ms late
    assert not late["reliable"] and late["token_p99_ms"] >= 100 and "p99" in late["problem"]
    stalled = sim_figures.lag_summary(before, _scrape(0.5, 10.0, 0), scale=1.0)  # 5 % of the schedule lost
    assert not stalled["reliable"] and "fell behind for good by 500 ms" in stalled["problem"]
    unknown = sim_figures.lag_summary(before, None, scale=1.0)
    assert not unknown["reliable"] and "could not be read" in unknown["problem"]


@pytest.mark.unit
def test_virtual_requests_are_the_clients_requests():
    plan = plan_level(Target("http://x", "m", "N(480,240)/(300,150)", max_requests=4))
    for i in range(20):
        assert request_lengths(plan.scenario, 0, i)[0] == plan.spec(i)[1]


@pytest.mark.unit
def test_virtual_levels_are_deterministic_and_follow_the_load_shape():
    closed = Load(concurrency=16, max_requests=48)
    a, b = replay_level(ARGV, "N(480,240)/(300,150)", closed), replay_level(ARGV, "N(480,240)/(300,150)", closed)
    assert a == b and a["completed"] == 48 and a["virtual"]
    capped = replay_level(ARGV, "D(512,64)", Load(request_rate=50.0, max_requests=20, max_concurrency=2))
    free = replay_level(ARGV, "D(512,64)", Load(request_rate=50.0, max_requests=20))
    assert capped["completed"] == free["completed"] == 20 and capped["concurrency"] is None
    assert capped["mean_e2el_ms"] < free["mean_e2el_ms"] * 2  # timed from the send, as the client does
    assert capped["duration"] > 3 * free["duration"]  # two at a time drain slower than all at once
    cut = replay_level(ARGV, "D(512,64)", Load(request_rate=4.0, max_requests=100, max_time_s=2.0))
    assert cut["completed"] < 12  # nothing starts after two simulated seconds (about 8 arrivals)
    too_long = replay_level(ARGV, "D(200000,10)", Load(concurrency=1, max_requests=2))
    assert too_long["completed"] == 0 and too_long["error_kinds"] == {"http_400": 2}


def _sim_spec(clock: str, time_scale: float = 0.5) -> object:
    data = mixed_task([{"max-running-requests": 16}])
    data["model"] = {"id_or_path": "meta-llama/Meta-Llama-3-8B-Instruct"}
    data["sim"] = {"time_scale": time_scale, "startup_seconds": 0, "clock": clock}
    data["optimization"]["objective"] = "minimize_ttft"
    data["benchmark"].update(traffic_scenarios=["D(256,256)"], num_concurrency=[8], max_requests_per_iteration=16)
    data["slo"] = {"tpot": {"threshold": 0.05}}
    return parse_task(data)


def _metric(base_url: str, name: str) -> float:
    text = urllib.request.urlopen(base_url + "/metrics", timeout=10).read().decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


@pytest.mark.process
def test_a_starved_engine_is_caught_and_its_figures_marked():
    """SIGSTOP the engine for a second while it streams, in every run: the schedule it lost
    shows in its /metrics, the run is measured again once (bounded), and the figures are
    reported unreliable with the reason, which the job turns into a `host_lag` failure."""
    spec = _sim_spec("wall")
    runtime = ProcessRuntime(name="sim")
    request = engine_request(spec, 1, 1, {"max-running-requests": 16}, [0])
    deployment = runtime.start(request)
    supervisor = deployment.handle.proc.pid
    frozen: list[float] = []

    def freeze_while_streaming(tokens_before: float) -> None:
        while _metric(deployment.base_url, "sim_generation_tokens_total") < tokens_before + 50:  # tokens flow
            time.sleep(0.01)
        engines = [int(p) for p in open(f"/proc/{supervisor}/task/{supervisor}/children").read().split()]
        for pid in engines:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(1.0)  # the stimulus: a second without CPU
        for pid in engines:
            os.kill(pid, signal.SIGCONT)
        frozen.append(time.monotonic())

    runs: list[list[dict]] = []

    def run(figures) -> list[dict]:
        assert figures is None  # wall clock: the client's figures
        freezer = threading.Thread(target=freeze_while_streaming,
                                   args=(_metric(deployment.base_url, "sim_generation_tokens_total"),))
        freezer.start()
        runs.append(benchmark(spec, deployment, 1, lambda: False))
        freezer.join()
        return runs[-1]

    try:
        runtime.wait_ready(deployment, timeout=60)
        scenarios, sim = sim_figures.measure(spec, request, deployment, 1, run, lambda: False)
    finally:
        runtime.stop(deployment)
    assert len(frozen) == len(runs) == sim["runs"] == 1 + sim_figures.LAG_REMEASURE
    assert scenarios is runs[-1]  # wall-clock figures are what the client measured
    lag = sim["lag"]
    assert sim["clock"] == "wall" and not sim["reliable"] and not lag["reliable"]
    assert lag["lost_ms"] >= 1800 and lag["lost_share"] > sim_figures.LOST_SHARE_LIMIT  # 1 s lost at time scale 0.5
    assert "could not keep to its model's schedule" in lag["problem"] and "fell behind for good" in lag["problem"]
    assert lag["problem"] in sim["problem"] and sim_figures.unreliable(sim) == sim["problem"]
    assert sim["model_check"]["deviation"] > 0  # a second's stall moves the figures off the model's too


@pytest.mark.process
def test_streamed_usage_and_metrics_report_the_engines_lag():
    spec = _sim_spec("wall", time_scale=0.2)
    runtime = ProcessRuntime(name="sim")
    deployment = runtime.start(engine_request(spec, 1, 1, {}, [0]))
    try:
        runtime.wait_ready(deployment, timeout=60)
        body = json.dumps({"model": "m", "prompt": "hello " * 20, "max_tokens": 8, "stream": True,
                           "stream_options": {"include_usage": True}}).encode()
        req = urllib.request.Request(deployment.base_url + "/v1/completions", body, {"Content-Type": "application/json"})
        chunks = [line for line in urllib.request.urlopen(req, timeout=30).read().decode().splitlines()
                  if line.startswith("data: {")]
        usage = json.loads(chunks[-1][6:])["usage"]
        lag = sim_figures.scrape_lag(deployment.base_url)
    finally:
        runtime.stop(deployment)
    assert usage["completion_tokens"] == 8 and set(usage["sim_token_lag_ms"]) == {"p50", "p99", "max"}
    assert lag is not None and lag["token"][-1] >= 1 and lag["iteration"][-1] >= 8


@pytest.mark.process
def test_virtual_figures_are_the_models_whatever_the_wall_clock_measured():
    """Default mode: the engine is run and benchmarked over HTTP, and the figures recorded are
    the model's for the same load, identical from run to run; the HTTP run is kept beside them."""
    spec = _sim_spec("virtual", time_scale=0.1)
    assert spec.sim.clock == "virtual" and parse_task(mixed_task([{}])).sim.clock == "virtual"
    runtime = ProcessRuntime(name="sim")
    request = engine_request(spec, 1, 1, {"max-running-requests": 16}, [0])
    deployment = runtime.start(request)
    try:
        runtime.wait_ready(deployment, timeout=60)
        results = [sim_figures.measure(spec, request, deployment, 1,
                                       lambda figures: benchmark(spec, deployment, 1, lambda: False, figures=figures),
                                       lambda: False) for _ in range(2)]
    finally:
        runtime.stop(deployment)
    (level_a,), (level_b,) = [r[0][0]["levels"] for r in results]
    model = replay_level(sim_figures.sim_argv(request), "D(256,256)", Load(concurrency=8, max_requests=16, max_time_s=60),
                         num_gpus=1, slo={"tpot": 50.0})
    for key in ("mean_ttft_ms", "p99_tpot_ms", "output_throughput", "good_requests", "duration"):
        assert level_a[key] == level_b[key] == model[key]
    assert level_a["clock"] == "virtual" and level_a["http"]["completed"] == 16 and level_a["max_in_flight"] <= 8
    assert all(r[1]["clock"] == "virtual" and r[1]["reliable"] and r[1]["runs"] == 1 for r in results)
    assert sim_figures.unreliable(results[0][1]) is None


@pytest.mark.unit
def test_wall_clock_figures_far_from_the_models_are_caught():
    """What the engine's lag cannot see (a benchmark client starved of CPU stamps requests
    late) shows as figures away from the model's for the same load."""
    spec = _sim_spec("wall")
    argv = sim_figures.sim_argv(engine_request(spec, 1, 1, {"max-running-requests": 16}, [0]))
    model = replay_level(argv, "D(256,256)", Load(concurrency=8, max_requests=16, max_time_s=60), num_gpus=1)
    level = {**model, "scenario": "D(256,256)", "request_rate": None, "goodput_slo": None}
    close = sim_figures.model_check(argv, [{"scenario": "D(256,256)", "levels": [
        {**level, "mean_ttft_ms": model["mean_ttft_ms"] * 1.05}]}], spec, 1)
    assert close["deviation"] == pytest.approx(0.05, abs=1e-3) and "problem" not in close
    far = sim_figures.model_check(argv, [{"scenario": "D(256,256)", "levels": [
        {**level, "output_throughput": model["output_throughput"] * 0.7}]}], spec, 1)
    assert far["figure"] == "output_throughput" and far["deviation"] == pytest.approx(0.3, abs=1e-3)
    assert "30% off" in far["problem"]
    sample = {**level, "scenario": "N(256,128)/(256,128)", "seed": 7}
    repeat = sim_figures.virtual_level(argv, sample, spec, 1)
    expected = replay_level(argv, "N(256,128)/(256,128)", Load(concurrency=8, max_requests=16, max_time_s=60, seed=7),
                            num_gpus=1)
    assert repeat["seed"] == 7 and repeat["mean_ttft_ms"] == expected["mean_ttft_ms"]  # the repeat's sample
    assert repeat["mean_ttft_ms"] != sim_figures.virtual_level(argv, {**sample, "seed": 0}, spec, 1)["mean_ttft_ms"]
    failed = sim_figures.model_check(argv, [{"scenario": "D(256,256)", "levels": [{**level, "errors": 3}]}], spec, 1)
    assert failed["deviation"] == 0.0  # a level that failed over HTTP is judged by its errors


@pytest.mark.unit
def test_an_engines_cpu_demand_follows_its_token_rate_in_wall_time():
    argv = ["--engine", "sglang", "--model", "meta-llama/Meta-Llama-3-8B-Instruct", "--max-running-requests", "64"]
    base = sim_admission.demand_cores(argv, "D(2048,128)", 128, 0.5)
    assert sim_admission.demand_cores(argv, "D(2048,128)", 128, 1.0) == pytest.approx(base / 2)  # half as fast
    assert sim_admission.demand_cores(argv, "D(2048,128)", 8, 0.5) < base  # fewer sequences stream
    assert sim_admission.demand_cores(argv, "D(2048,128)", 1000, 0.5) == base  # the engine's batch limit
    spec = _sim_spec("wall")
    request = engine_request(spec, 1, 1, {}, [0])
    assert sim_admission.for_engine(spec, request, "1:1").demand > 0
    assert sim_admission.for_engine(_sim_spec("virtual"), request, "1:1") is None  # the model's figures need no CPU


@pytest.mark.unit
def test_a_host_admits_engines_while_its_cpu_share_lasts(tmp_path):
    ledger = tmp_path / "ledger.json"
    first, second = (sim_admission.Admission(k, 0.6, cores=2, path=ledger) for k in ("a", "b"))  # room for 1.0
    assert first.try_admit() and not second.try_admit()
    assert not second.wait(lambda: True)  # gives up when its experiment is stopped
    assert second.waited_s() > 0 and first.waited_s() == 0  # the host's time, which the job reads at a time-out
    first.release()
    assert second.try_admit()
    alone = sim_admission.Admission("big", 5.0, cores=2, path=tmp_path / "other.json")
    assert alone.try_admit()  # a demand above the host runs alone rather than never
    ghost = {"pid": os.getpid(), "ticks": -1, "demand": 9.0}  # an entry whose process is gone
    ledger.write_text(json.dumps({"ghost": ghost}))
    assert sim_admission.Admission("c", 0.6, cores=2, path=ledger).try_admit()
    assert set(json.loads(ledger.read_text())) == {"c"}


@contextmanager
def host_cpu_held(ledger: Path, monkeypatch):
    """Another engine's admission on this host, so large that nothing else fits: held by a live
    process until its stdin closes (yielded, to release it) or the block ends."""
    monkeypatch.setattr(sim_admission, "ledger_path", lambda: ledger)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from workers.sim_admission import Admission; "
         "assert Admission('other', 1000.0, path=sys.argv[1]).try_admit(); print('held', flush=True); "
         "sys.stdin.read()", str(ledger)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


@contextmanager
def soft_time_limit(seconds: float):
    """Celery's soft time limit as its pool gives it to a job: the exception raised in the job's
    (this, the main) thread once `seconds` have passed."""
    def expire(_signum, _frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _wall_clock_task(timeout: float = 120.0, max_attempts: int = 3) -> dict:
    data = mixed_task([{"max-running-requests": 16}])
    data["sim"] = {"time_scale": 1.0, "startup_seconds": 0, "clock": "wall"}
    data["benchmark"].update(traffic_scenarios=["D(4096,64)"], num_concurrency=[1], max_requests_per_iteration=2)
    data["optimization"].update(timeout_per_iteration=timeout, max_attempts=max_attempts)
    return data


@pytest.mark.process
def test_an_engine_waiting_for_host_cpu_shows_it_and_its_length_starts_when_admitted(client, tmp_path, monkeypatch):
    """A wall-clock engine that does not fit the host's CPU share waits after its experiment
    has claimed its GPUs: the experiment shows the phase and what it waits for (pages, API,
    `status --json`), and once admitted its length starts then, not at the claim (the wait is
    the host's: the length model and the GPU-hour budget read started_at..finished_at)."""
    from click.testing import CliRunner

    from app.cli import main
    from app.coordinator import coordinate
    from app.store.db import session_scope
    from app.store.models import Attempt, Experiment, utcnow
    from app.store.pool import GpuSpec, register_worker
    from tests.helpers import experiments, submit, wait_for
    from workers.experiment_job import execute

    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "60")
    with host_cpu_held(tmp_path / "admission.json", monkeypatch) as holder:
        register_worker("gpu-g@h", "g", "h", "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "inc1", 1)
        task_id = submit(_wall_clock_task())
        (d,) = coordinate(task_id)
        outcome: list[str] = []
        job = threading.Thread(target=lambda: outcome.append(execute(d.experiment_id, d.attempt, "gpu-g@h", "h")),
                               daemon=True)
        job.start()
        wait_for(lambda: experiments(task_id)[0].phase == sim_admission.PHASE, 30, "the job to wait for host CPU")
        shown = client.get(f"/api/experiments/{d.experiment_id}").get_json()
        assert (shown["state"], shown["phase"]) == ("running", "waiting for host CPU")
        assert shown["wait_reason"].startswith("waiting for host CPU: its engine and client need ")
        assert "hold 1000.00 of the" in shown["wait_reason"]
        assert "running (waiting for host CPU)" in client.get(f"/experiments/{d.experiment_id}").data.decode()
        page = client.get(f"/tasks/{task_id}").data.decode()
        assert "running (waiting for host CPU)" in page and "its engine and client need" in page
        report = json.loads(CliRunner().invoke(main, ["status", str(task_id), "--json"]).output)
        assert report["experiments"][0]["phase"] == "waiting for host CPU"
        released = utcnow()
        holder.stdin.close()  # its process ends: its admission no longer counts
        holder.wait(timeout=30)
        job.join(timeout=120)
        # admitted and run (succeeded, or host_lag on a busy machine: not what this test is about)
        assert not job.is_alive() and outcome and outcome[0] != "cancelled"
    with session_scope() as s:
        exp = s.get(Experiment, d.experiment_id)
        claimed = s.query(Attempt).filter_by(experiment_id=exp.id).one().started_at
        assert claimed < released <= exp.started_at  # the length starts at admission; the attempt keeps the claim
        assert exp.wait_reason is None and exp.phase is None


@pytest.mark.process
def test_a_time_limit_that_runs_out_waiting_for_host_cpu_is_no_verdict_on_the_configuration(
        database_url, tmp_path, monkeypatch):
    """The soft time limit counts from the claim: an attempt whose limit runs out after it has
    waited for host CPU is measured again as a new attempt with the full limit (its GPUs freed
    and handed on at its end, as any end's), not `timed_out` (the configuration's verdict);
    after `max_attempts` such attempts the experiment fails as the host's (`host_busy`: not
    infeasible, never the best) with the reason, and every GPU is free."""
    from sqlalchemy import select

    from app.coordinator import coordinate
    from app.store.db import session_scope
    from app.store.models import Attempt, Gpu
    from app.store.pool import GpuSpec, register_worker
    from tests.helpers import experiments, submit
    from workers import experiment_job

    sent: list = []
    monkeypatch.setattr(experiment_job, "send_experiments", sent.extend)
    with host_cpu_held(tmp_path / "admission.json", monkeypatch):
        register_worker("gpu-g@h", "g", "h", "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "inc1", 1)
        task_id = submit(_wall_clock_task(timeout=1.5, max_attempts=2))
        (d,) = coordinate(task_id)
        for attempt in (1, 2):
            with soft_time_limit(d.soft_time_limit):
                assert experiment_job.execute(d.experiment_id, attempt, "gpu-g@h", "h") == "timed_out"
            (exp,) = experiments(task_id)
            if attempt == 1:  # placed again at its end, on the GPU it freed, with the full limit
                (d,) = sent
                assert (exp.state, exp.attempt, d.attempt, d.soft_time_limit) == ("queued", 2, 2, 1.5)
                assert "waiting for host CPU; measuring it again" in exp.error and exp.failure_kind is None
    assert (exp.state, exp.failure_kind, exp.phase, exp.wait_reason) == ("failed", "host_busy", None, None)
    assert exp.error.startswith("the host was too busy: 2 attempt(s) ran out of time waiting for host CPU")
    with session_scope() as s:
        attempts = s.execute(select(Attempt.state, Attempt.failure_kind).where(Attempt.experiment_id == exp.id)
                             .order_by(Attempt.number)).all()
        assert [tuple(a) for a in attempts] == [("timed_out", "host_busy")] * 2
        assert s.execute(select(Gpu.held_by, Gpu.fenced_by)).all() == [(None, None)]


@pytest.mark.process
def test_a_time_out_after_a_short_wait_for_host_cpu_is_the_configurations(database_url, tmp_path, monkeypatch):
    """A wait for host CPU shorter than HOST_BUSY_SHARE of the limit leaves the time-out its
    verdict (`timed_out`, no new attempt): a slow configuration must not run `max_attempts`
    times because it was once refused for a fifth of a second."""
    from app.coordinator import coordinate
    from app.store.pool import GpuSpec, register_worker
    from tests.helpers import experiments, submit
    from workers import experiment_job, sim_admission

    monkeypatch.setattr(experiment_job, "send_experiments", lambda dispatches: None)
    monkeypatch.setattr(sim_admission.Admission, "waited_s",
                        lambda self: 0.9 * experiment_job.HOST_BUSY_SHARE * 1.5)  # just under the share of 1.5 s
    with host_cpu_held(tmp_path / "admission.json", monkeypatch):
        register_worker("gpu-g@h", "g", "h", "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "inc1", 1)
        task_id = submit(_wall_clock_task(timeout=1.5, max_attempts=2))
        (d,) = coordinate(task_id)
        with soft_time_limit(d.soft_time_limit):
            assert experiment_job.execute(d.experiment_id, 1, "gpu-g@h", "h") == "timed_out"
    (exp,) = experiments(task_id)
    assert (exp.state, exp.attempt, exp.failure_kind) == ("timed_out", 1, None)
    assert exp.error.startswith("exceeded timeout_per_iteration")
