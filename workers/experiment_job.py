"""One experiment on a GPU worker: claim, deploy, benchmark, score, tear down, record.

The order matters: the engine is stopped *before* the result is recorded, because
recording frees the GPUs in the same transaction and a GPU must never be handed to the
next experiment while the previous engine still runs on it.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from app import lifecycle
from app.benchmark import run_benchmark
from app.dispatch import request_coordination
from app.models import EXP_CANCELLED, EXP_FAILED, EXP_SUCCEEDED, EXP_TIMED_OUT
from app.objectives import score
from app.taskspec import TaskSpec, parse_task
from workers.runtimes import get_runtime
from workers.runtimes.base import Deployment, DeploymentCancelled, EngineError, EngineRequest, Runtime

log = logging.getLogger(__name__)

DEFAULT_IMAGES = {"sglang": "lmsysorg/sglang", "vllm": "vllm/vllm-openai"}


class Cancelled(Exception):
    pass


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


def engine_request(spec: TaskSpec, experiment_id: int, params: dict[str, Any], gpu_indices: list[int]) -> EngineRequest:
    raw = spec.to_dict()
    image = None
    if spec.deployment_mode == "docker":
        tag = raw.get("runtime_image_tag") or "latest"
        image = f"{DEFAULT_IMAGES[spec.engine]}:{tag}"
    return EngineRequest(
        experiment_id=experiment_id,
        engine=spec.engine,
        model=spec.model.id_or_path,
        flags=spec.launch_flags(params),
        gpu_indices=gpu_indices,
        image=image,
        sim=dict(raw.get("sim") or {}),
    )


def sim_time_scale(spec: TaskSpec) -> float:
    if spec.deployment_mode != "sim":
        return 1.0
    return float((spec.to_dict().get("sim") or {}).get("time_scale") or 1.0)


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


def benchmark(spec: TaskSpec, deployment: Deployment, num_gpus: int, should_stop) -> list[dict[str, Any]]:
    """Every traffic scenario at every load level; one list of level summaries each.
    For the sim engine, rates and limits are converted to wall-clock terms on the way in
    and the figures back to modelled time on the way out."""
    bench = spec.benchmark
    scale = sim_time_scale(spec)
    limits = goodput_limits(spec.to_dict().get("slo"))
    results = []
    for scenario in bench.traffic_scenarios:
        levels = run_benchmark(
            deployment.base_url,
            spec.model.id_or_path,
            scenario,
            None if bench.request_rate else list(bench.num_concurrency),
            max_requests=int(bench.max_requests_per_iteration),
            max_time_s=float(bench.max_time_per_iteration) * scale,
            num_gpus=num_gpus,
            api=bench.api,
            warmup_requests=bench.warmup_requests,
            should_stop=should_stop,
            request_rates=[r / scale for r in bench.request_rate] if bench.request_rate else None,
            burstiness=bench.burstiness,
            max_concurrency=bench.max_concurrency,
            goodput_slo={k: v * scale for k, v in limits.items()} if limits else None,
        )
        if should_stop():
            raise Cancelled()
        results.append({"scenario": scenario, "levels": [to_simulated_time(lv, scale) for lv in levels]})
    return results


def _stop_engine(runtime: Runtime, deployment: Deployment) -> str:
    """Collect the engine's log and stop it; a soft time limit landing here must not leave
    the engine running, so stopping is retried once."""
    log_text = ""
    try:
        log_text = runtime.logs(deployment)
    finally:
        try:
            runtime.stop(deployment)
        except SoftTimeLimitExceeded:
            runtime.stop(deployment)
    return log_text


def execute(experiment_id: int, attempt: int, worker: str, host: str) -> str:
    claim = lifecycle.claim(experiment_id, attempt, worker=worker, host=host, pid=os.getpid())
    if claim is None:
        log.info("experiment %s attempt %s: nothing to claim (duplicate or stale)", experiment_id, attempt)
        return "skipped"
    spec = parse_task(claim.spec)
    stop = StopPoller(experiment_id)
    outcome: dict[str, Any] = {"state": EXP_FAILED}
    runtime: Runtime | None = None
    deployment: Deployment | None = None
    engine_log: str | None = None
    try:
        try:
            runtime = get_runtime(spec.deployment_mode)
            deployment = runtime.start(engine_request(spec, experiment_id, claim.params, claim.gpu_indices))
            timeout = float(spec.optimization.timeout_per_iteration)
            runtime.wait_ready(deployment, timeout=timeout, should_stop=stop)
            lifecycle.set_phase(experiment_id, attempt, "benchmarking")
            scenarios = benchmark(spec, deployment, len(claim.gpu_indices), stop)
            result = score([s["levels"] for s in scenarios], spec.optimization.objective, spec.to_dict().get("slo"),
                           at=spec.optimization.objective_level)
            ok = result.objective is not None
            outcome = {
                "state": EXP_SUCCEEDED if ok else EXP_FAILED,
                "metrics": {"scenarios": scenarios, "score": result.as_dict(), "simulated": runtime.simulated},
                "objective": result.objective,
                "slo_ok": result.slo_ok,
                "error": None if ok else "no request completed at the scored load level",
            }
        finally:
            if runtime is not None and deployment is not None:
                engine_log = _stop_engine(runtime, deployment)
    except SoftTimeLimitExceeded:
        outcome = {"state": EXP_TIMED_OUT, "error": f"exceeded timeout_per_iteration ({spec.optimization.timeout_per_iteration}s)"}
    except (DeploymentCancelled, Cancelled):
        outcome = {"state": EXP_CANCELLED, "error": "cancelled"}
    except EngineError as exc:
        outcome = {"state": EXP_FAILED, "error": str(exc)}
    except Exception as exc:  # an experiment's failure must never take the worker down
        log.exception("experiment %s failed", experiment_id)
        outcome = {"state": EXP_FAILED, "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"}
    state = outcome.pop("state")
    task_id = lifecycle.finish(experiment_id, attempt, state, engine_log=engine_log, **outcome)
    request_coordination(task_id if task_id is not None else claim.task_id)
    return state
