"""One experiment on a GPU worker: claim, check the GPUs, deploy, benchmark, score, tear
down, record.

The order matters: the engine's identity is recorded as soon as it is started (so a reaper
can stop it if this job dies), and the engine is stopped *before* the result is recorded,
because recording frees the GPUs in the same transaction and a GPU must never be handed to
the next experiment while the previous engine still runs on it. If the engine cannot be
confirmed stopped, the result says so and the GPUs stay fenced until the reaper has.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import replace
from typing import Any, Callable, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError
from tenacity import Retrying, before_sleep_log, retry_if_exception_type, stop_after_delay, wait_exponential

from app.store import lifecycle
from app.tools.loadgen import Target, run_benchmark
from app.config import get_settings
from app.celery_app import request_coordination, send_experiments
from app.coordinator import end_and_place
from app.domain.engines.failures import HOST_BUSY, measurement_failure
from app.domain.states import ExperimentState
from app.domain.objectives import level_value, measure_all, sustains
from app.domain.ratesearch import next_rate
from app.domain.taskspec import TaskSpec, stored_spec
from workers import sim_admission, sim_figures
from workers.cpu_device import CPU_INDEX
from workers.gpu_discovery import busy_gpus
from workers.probe import Probe
from workers.runtimes import get_runtime
from workers.runtimes.base import Deployment, ExperimentCancelled, EngineError, EngineRequest, Runtime

log = logging.getLogger(__name__)
ENGINE_CHECK_EVERY_S = 0.5
FINAL_WRITE_PATIENCE_S = 600.0  # how long the final write waits for the database
# A time-out is the host's (HOST_BUSY: measured again) when the wait for host CPU took at least
# this share of the limit; a shorter wait leaves the configuration its verdict (a slow one would
# otherwise run max_attempts times for a 0.2 s wait each).
HOST_BUSY_SHARE = 0.1
T = TypeVar("T")


class EngineWatch:
    """`should_stop()` for the benchmark: true when the experiment is cancelled or when the
    engine has exited (checked at most every ENGINE_CHECK_EVERY_S), so a dead engine ends
    the level at once instead of the client firing at a closed port until time runs out."""

    def __init__(self, stop: "StopPoller", runtime: Runtime, deployment: Deployment) -> None:
        self.stop, self.runtime, self.deployment = stop, runtime, deployment
        self.died = False
        self._last = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.died and now - self._last >= ENGINE_CHECK_EVERY_S:
            self._last = now
            self.died = not self.runtime.is_alive(self.deployment)
        return self.died or self.stop()

    def between_levels(self, _summary: dict[str, Any]) -> None:
        """After each load level: an engine that is alive but does not answer its health
        check fails the experiment now, not after the next level's time runs out."""
        self.check()
        if not self.runtime.healthy(self.deployment):
            raise EngineError("engine stopped answering its health check between load levels:\n"
                              + self.runtime.logs(self.deployment, tail=30), kind="engine_died")

    def check(self) -> None:
        """Raise EngineError if the engine died during the benchmark."""
        if self.died or not self.runtime.is_alive(self.deployment):
            code = self.runtime.exit_code(self.deployment)
            raise EngineError(f"engine died during benchmark (exit status {code}):\n"
                              + self.runtime.logs(self.deployment, tail=30), kind="engine_died")


class StopPoller:
    """`should_stop()` for long waits, asking the database at most once a second."""

    def __init__(self, experiment_id: int, every: float = 1.0) -> None:
        self.experiment_id, self.every = experiment_id, every
        self._last, self._stop = 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last >= self.every:
            self._last = now
            self._stop = lifecycle.should_stop(self.experiment_id)
        return self._stop


def engine_request(spec: TaskSpec, experiment_id: int, attempt: int, params: dict[str, Any],
                   gpu_indices: list[int], gpu_share: float = 1.0) -> EngineRequest:
    """What to start for one attempt; `gpu_share` < 1 when its GPUs are slots shared with
    other engines (the memory fraction is scaled to the slot)."""
    launcher = spec.launcher
    try:
        flags = spec.launch_flags(params, gpu_share)
    except ValueError as exc:
        raise EngineError(str(exc), kind="internal") from None
    image = None
    if spec.deployment_mode == "docker" and launcher.image:
        image = f"{launcher.image}:{spec.runtime_image_tag or 'latest'}"
    return EngineRequest(
        experiment_id=experiment_id,
        attempt=attempt,
        launcher=launcher,
        flavour=spec.engine or "",
        model=spec.model.id_or_path,
        flags=flags,
        gpu_indices=gpu_indices,
        image=image,
        sim=spec.sim.model_dump() if spec.sim is not None and launcher.simulated else {},
    )


def sim_time_scale(spec: TaskSpec) -> float:
    if not spec.launcher.simulated or spec.sim is None:
        return 1.0
    return float(spec.sim.time_scale or 1.0)


def to_simulated_time(level: dict[str, Any], scale: float) -> dict[str, Any]:
    """The sim engine runs `scale` times faster than the hardware it models; report its
    figures in the modelled hardware's time so they read like real measurements."""
    if scale == 1.0:
        return level
    out = dict(level)
    for key, value in level.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key.endswith("_ms") or key == "duration":
            out[key] = value / scale
        elif "throughput" in key or key in ("goodput", "request_rate"):
            out[key] = value * scale
    if level.get("goodput_slo"):
        out["goodput_slo"] = {k: v / scale for k, v in level["goodput_slo"].items()}
    out["time_scale"] = scale
    return out


def goodput_limits(slo: dict[str, Any] | None) -> dict[str, float] | None:
    """Per-request limits (ms) for goodput from the task's SLOs: TTFT, TPOT, and for E2E
    latency the threshold of its highest percentile SLO (a request slower than that counts
    against the tail the operator cares about)."""
    if not slo:
        return None
    limits = {}
    for name in ("ttft", "tpot"):
        if slo.get(name):
            limits[name] = float(slo[name]["threshold"]) * 1000
    latency = {k: v for k, v in (slo.get("latency") or {}).items() if v}
    if latency:
        limits["e2el"] = float(latency[max(latency, key=lambda p: int(p[1:]))]["threshold"]) * 1000
    return limits or None


Level = dict[str, Any]


def benchmark(spec: TaskSpec, deployment: Deployment, num_gpus: int, should_stop,
              on_level: Callable[[Level], None] | None = None,
              probe: Probe | None = None,
              figures: Callable[[Level], Level] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Every traffic scenario at every load level; one list of level summaries each, in the
    levels' written order. For the sim engine, rates and limits are converted to wall-clock
    terms on the way in and the figures back to modelled time on the way out; `figures` then
    gives each level the figures that count (the model's, in the simulated engine's virtual
    clock), once per level as soon as it ends: `on_level`, the probe and the rate search read
    the level as it is kept. With a `probe` (early stopping), the deciding level runs first and
    may end the benchmark after it. `seed`: the benchmark client's request sample, order and
    arrival times (a repeat's differ); each level records it."""
    bench = spec.benchmark
    scale = sim_time_scale(spec)
    if probe is not None and probe.active:
        should_stop = _either(should_stop, probe.stopped)
        on_level = _both(on_level, probe.after_level)
    limits = goodput_limits(spec.to_dict().get("slo"))
    counted = figures or (lambda level: level)

    def keep(level: Level, **exact: Any) -> Level:
        """A level as it counts: in modelled time (`exact`: figures known exactly there), with
        the request sample it ran (a repeat's differs) and the figures that count."""
        return counted({**to_simulated_time(level, scale), "seed": seed, **exact})

    results = []
    for scenario in bench.traffic_scenarios:
        target = Target(
            deployment.base_url, spec.model.id_or_path, scenario,
            max_requests=int(bench.max_requests_per_iteration),
            max_time_s=float(bench.max_time_per_iteration) * scale,
            num_gpus=num_gpus,
            api=bench.api,
            goodput_slo={k: v * scale for k, v in limits.items()} if limits else None,
            seed=seed,
        )
        if bench.rate_search is not None and spec.uses_rate_search:
            levels = _search_rates(spec, target, scale, should_stop, on_level, keep)
        else:
            order = probe.order if probe is not None else list
            levels = []
            run_benchmark(
                target,
                None if bench.request_rate else order(list(bench.num_concurrency)),
                request_rates=[r / scale for r in order(list(bench.request_rate))] if bench.request_rate else None,
                burstiness=bench.burstiness,
                max_concurrency=bench.max_concurrency,
                warmup_requests=bench.warmup_requests,
                should_stop=should_stop,
                on_level=_kept(levels, keep, on_level),
            )
            written = [float(v) for v in bench.levels]
            levels.sort(key=lambda lv: written.index(level_value(lv)) if level_value(lv) in written else len(written))
        results.append({"scenario": scenario, "levels": levels})
        if should_stop():
            break
    return results


def _kept(into: list[Level], keep: Callable[[Level], Level],
          then: Callable[[Level], None] | None) -> Callable[[Level], None]:
    """The client's per-level callback: each level is kept (`keep`: its figures are the model's
    replay in virtual time, not cheap) once, as soon as it ends, and `then` reads that same kept
    level; the client calls it for every level it returns."""
    def ended(summary: Level) -> None:
        into.append(keep(summary))
        if then is not None:
            then(into[-1])
    return ended


def _either(a: Callable[[], bool], b: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: a() or b()


def _both(a: Callable[[dict[str, Any]], None] | None,
          b: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def call(summary: dict[str, Any]) -> None:
        b(summary)  # the probe first: a failing health check after it must not hide its verdict
        if a is not None:
            a(summary)
    return call


def _search_rates(spec: TaskSpec, target: Target, scale: float, should_stop,
                  on_level: Callable[[Level], None] | None, keep: Callable[..., Level]) -> list[Level]:
    """One open-loop level per rate the bounded search picks (app.domain.ratesearch), each
    judged against the task's SLOs as it ends; the levels in the order they ran."""
    bench, slo = spec.benchmark, spec.to_dict().get("slo")
    search = bench.rate_search
    assert search is not None
    tried: dict[float, bool] = {}
    levels: list[dict[str, Any]] = []
    while (rate := next_rate(tried, search.low, search.high, search.steps)) is not None and not should_stop():
        def at_rate(summary: Level, rate: float = rate) -> Level:
            return keep(summary, request_rate=rate)  # the rate asked for, not its wall-clock conversion back

        ran: list[Level] = []
        run_benchmark(replace(target, prompt_salt=len(levels)), None, request_rates=[rate / scale],
                      burstiness=bench.burstiness,
                      max_concurrency=bench.max_concurrency,
                      warmup_requests=bench.warmup_requests if not levels else 0,
                      should_stop=should_stop, on_level=_kept(ran, at_rate, on_level))
        if not ran:
            break
        level = ran[0]
        levels.append(level)
        tried[rate] = sustains(level, slo)
        if level.get("stopped_early"):
            break
    return levels


def _stop_engine(runtime: Runtime, deployment: Deployment) -> tuple[str, bool]:
    """Collect the engine's log and stop it; returns (log, stopped). A soft time limit
    landing here must not leave the engine running, so stopping is retried once; if it
    still fails the GPUs stay fenced and the reaper finishes the job."""
    log_text = ""
    try:
        log_text = runtime.logs(deployment)
    finally:
        for _ in range(2):
            try:
                runtime.stop(deployment)
                return log_text, True
            except SoftTimeLimitExceeded:
                continue
            except Exception:  # noqa: BLE001 - recorded; the reaper will stop it by identity
                log.exception("could not stop engine %s", deployment.identity)
                break
    return log_text, False


def _gpus_busy(claim: lifecycle.Claim) -> dict[int, str]:
    """Real GPUs must be free before a launch; simulated ones (and a CPU device) are never checked."""
    real = [i for i in claim.gpu_indices if i != CPU_INDEX]
    if claim.gpus_simulated or not real:
        return {}
    return busy_gpus(real, get_settings().gpu_min_free_fraction, claim.gpu_share)


def persistently(write: Callable[[], T]) -> T:
    """Run the job's final database write, retrying with back-off while the database is
    unreachable (a restart, a fail-over): an hour of measurement must not be lost to a
    blip. After FINAL_WRITE_PATIENCE_S the error is raised; the coordinator then treats the
    attempt as lost and runs it again."""
    for attempt in Retrying(retry=retry_if_exception_type(DBAPIError), wait=wait_exponential(multiplier=0.5, max=15),
                            stop=stop_after_delay(FINAL_WRITE_PATIENCE_S), reraise=True,
                            before_sleep=before_sleep_log(log, logging.WARNING)):
        with attempt:
            return write()
    raise AssertionError("unreachable: Retrying either returns or raises")


def send_placed(dispatches: list[Any]) -> None:
    """Send the jobs placed on the GPUs this job has just freed. They are committed: if the
    broker is away, the coordinator re-sends what nobody claimed (`stale_dispatches`)."""
    try:
        send_experiments(dispatches)
    except Exception:  # noqa: BLE001 - committed work is re-sent by the coordinator's tick
        log.exception("could not send the experiments placed on the freed GPUs; the coordinator will re-send them")


def admit(admission: sim_admission.Admission, experiment_id: int, attempt: int, stop: Callable[[], bool]) -> None:
    """Wait for the host to admit a wall-clock simulated engine (the GPUs are claimed already),
    in the open: while it waits, its experiment's phase and wait reason say what for; once
    admitted it is deploying again and its length starts then (the wait is the host's). Raises
    ExperimentCancelled when the experiment is stopped meanwhile."""
    def waiting(why: str) -> None:
        lifecycle.set_phase(experiment_id, attempt, sim_admission.PHASE, why)

    if not admission.wait(stop, waiting):
        raise ExperimentCancelled()
    if admission.waited_s() > 0:
        lifecycle.set_phase(experiment_id, attempt, "deploying", restart=True)


def execute(experiment_id: int, attempt: int, worker: str, host: str) -> str:
    """Run one claimed attempt to its recorded end. Everything after the claim is inside the
    `try`: the claim has committed `running` and holds the GPUs, so whatever raises (the
    NVML check, the replan, the stored spec) must still end the attempt and free them."""
    claim = lifecycle.claim(experiment_id, attempt, worker=worker, host=host, pid=os.getpid())
    if claim is None:
        log.info("experiment %s attempt %s: nothing to claim (duplicate or stale)", experiment_id, attempt)
        return "skipped"
    stop = StopPoller(experiment_id)
    outcome: dict[str, Any] = {"state": ExperimentState.FAILED}
    runtime: Runtime | None = None
    deployment: Deployment | None = None
    engine_log: str | None = None
    engine_gone = True
    admission: sim_admission.Admission | None = None
    timeout = claim.spec.get("optimization", {}).get("timeout_per_iteration")
    try:
        try:
            busy = _gpus_busy(claim)
            if busy:
                log.warning("experiment %s: GPU(s) busy before launch, quarantining and placing it again: %s",
                            experiment_id, "; ".join(busy.values()))
                request_coordination(lifecycle.replan(experiment_id, attempt, busy) or claim.task_id)
                return "replanned"
            spec = stored_spec(claim.spec)
            runtime = get_runtime(spec.deployment_mode)
            request = engine_request(spec, experiment_id, attempt, claim.params, claim.gpu_indices, claim.gpu_share)
            admission = sim_admission.for_engine(spec, request, f"{experiment_id}:{attempt}")
            if admission is not None:
                admit(admission, experiment_id, attempt, stop)
            deployment = runtime.start(request)
            if not lifecycle.record_engine(experiment_id, attempt, deployment.identity):
                raise ExperimentCancelled()  # the attempt was taken from us meanwhile (lost or cancelled)
            runtime.wait_ready(deployment, timeout=float(spec.optimization.timeout_per_iteration), should_stop=stop)
            lifecycle.set_phase(experiment_id, attempt, "benchmarking")
            watch = EngineWatch(stop, runtime, deployment)
            num_gpus = len(claim.gpu_indices)
            probes: list[Probe] = []

            def run(figures: Callable[[Level], Level] | None = None) -> list[dict[str, Any]]:
                probes.append(Probe(spec, claim.task_id, experiment_id, attempt))
                # A repeat is measured in full, and so is a re-measure (its first run's probe has
                # recorded a score the incumbent would count: it would be judged against itself).
                probes[-1].active = probes[-1].active and not claim.repeat and len(probes) == 1
                return benchmark(spec, deployment, num_gpus, watch, on_level=watch.between_levels, probe=probes[-1],
                                 figures=figures, seed=claim.seed)

            sim = sim_figures.measure(spec, request, deployment, num_gpus, run, watch) if deployment.simulated else None
            scenarios = sim[0] if sim is not None else run()
            probe = probes[-1]
            watch.check()
            if stop():
                raise ExperimentCancelled()
            result, measured = measure_all([s["levels"] for s in scenarios], spec.objective_names,
                                           spec.to_dict().get("slo"), spec.optimization.objective_level,
                                           spec.optimization.gpu_price_per_hour)
            ok = result.objective is not None
            late = sim_figures.unreliable(sim[1] if sim is not None else None) if ok else None  # the host's figures
            outcome = {
                "state": ExperimentState.SUCCEEDED if ok and not late else ExperimentState.FAILED,
                "metrics": {"scenarios": scenarios, "score": result.as_dict(), "simulated": deployment.simulated,
                            **({"sim": sim[1]} if sim is not None else {}),
                            **({"gpu_share": claim.gpu_share} if claim.gpu_share < 1 else {}),
                            **({"early_stop": probe.record()} if ok and probe.stopped() else {})},
                "stop_reason": probe.reason if ok else None,
                "objective": result.objective,
                "measured": measured if ok else None,
                "penalty": result.penalty if ok else None,
                "slo_ok": result.slo_ok,
                "error": late or (None if ok else result.problem),
                "failure_kind": "host_lag" if late else (None if ok else measurement_failure(
                    [lv.get("error_kinds") or {} for sc in scenarios for lv in sc["levels"]])),
            }
        finally:
            if runtime is not None and deployment is not None:
                engine_log, engine_gone = _stop_engine(runtime, deployment)
            if admission is not None:
                admission.release()
    except SoftTimeLimitExceeded:
        outcome = {"state": ExperimentState.TIMED_OUT, "error": f"exceeded timeout_per_iteration ({timeout}s)"}
        waited = admission.waited_s() if admission is not None else 0.0
        if waited > 0 and waited >= HOST_BUSY_SHARE * float(timeout or 0):  # the host took a share: run again
            outcome.update(error=f"{outcome['error']}, {waited:.0f}s of it waiting for host CPU",
                           failure_kind=HOST_BUSY)
    except ExperimentCancelled:
        outcome = {"state": ExperimentState.CANCELLED, "error": "cancelled"}
    except EngineError as exc:
        outcome = {"state": ExperimentState.FAILED, "error": str(exc), "failure_kind": exc.kind}
    except Exception as exc:  # an experiment's failure must never take the worker down
        log.exception("experiment %s failed", experiment_id)
        outcome = {"state": ExperimentState.FAILED, "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}",
                   "failure_kind": "internal"}
    state = outcome.pop("state")
    ended, placed = persistently(lambda: end_and_place(experiment_id, attempt, state, engine_log=engine_log,
                                                          engine_gone=engine_gone, **outcome))
    send_placed(placed)  # first: what waits for these GPUs is the hand-over; the rest can follow
    task_id = lifecycle.learn_length(ended)
    request_coordination(task_id if task_id is not None else claim.task_id)
    return state
