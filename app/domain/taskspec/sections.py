"""Sections of the file (pydantic: structure and per-field checks)."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.domain.objectives import OBJECTIVES
from app.domain.limits import INT32_MAX, MAX_FACTOR, MAX_SLO_SECONDS

from .fields import OnForm
from .values import ArgText, DtypeList, Float, Int, PosInt, _traffic, at_most

_STRICT = ConfigDict(extra="forbid")


class ModelRef(BaseModel):
    model_config = _STRICT
    id_or_path: Annotated[ArgText, OnForm("Model (Hugging Face id or path)", name="model", section="engine")]
    namespace: str | None = None  # OME (Kubernetes) only; kept, not used here


class SLOTarget(BaseModel):
    """One SLO bound; thresholds are seconds, as in the original format."""

    model_config = _STRICT
    threshold: Annotated[Float, Field(gt=0, le=MAX_SLO_SECONDS)]
    weight: Annotated[Float, Field(ge=0, le=MAX_FACTOR)] = 1.0
    hard_fail: bool = False
    fail_ratio: Annotated[Float, Field(ge=0, le=1)] = 0.0


class LatencySLO(BaseModel):
    model_config = _STRICT
    p50: SLOTarget | None = None
    p90: Annotated[SLOTarget | None, OnForm("p90 latency (s)", name="slo_p90", section="slos")] = None
    p95: SLOTarget | None = None
    p99: Annotated[SLOTarget | None, OnForm("p99 latency (s)", name="slo_p99", section="slos")] = None


class SLO(BaseModel):
    model_config = _STRICT
    ttft: Annotated[SLOTarget | None, OnForm("TTFT (s)", name="slo_ttft", section="slos")] = None
    tpot: Annotated[SLOTarget | None, OnForm("TPOT (s)", name="slo_tpot", section="slos")] = None
    latency: LatencySLO | None = None
    steepness: Annotated[Float, Field(gt=0, le=MAX_FACTOR)] = 0.1


Concurrency = Annotated[PosInt, at_most("max_concurrency")]
RequestRate = Annotated[Float, Field(gt=0), at_most("max_request_rate")]
Seconds = Annotated[Float, Field(gt=0), at_most("max_seconds")]
TrafficScenario = Annotated[str, Field(max_length=100), AfterValidator(_traffic)]


class RateSearch(BaseModel):
    """Bounds of the search for the highest sustainable request rate (req/s; see
    app.domain.ratesearch): tried between `low` and `high`, `steps` halvings at most."""

    model_config = _STRICT
    low: RequestRate
    high: RequestRate
    steps: Annotated[Int, Field(ge=1, le=10)] = 4


class Benchmark(BaseModel):
    model_config = _STRICT
    # These three may become benchmark-client argv, so they follow the argv value rules.
    task: ArgText = "text-to-text"
    model_name: ArgText | None = None
    model_tokenizer: ArgText | None = None
    traffic_scenarios: Annotated[list[TrafficScenario], Field(min_length=1), OnForm(
        "Traffic scenarios (comma separated)",
        hint="D(in,out), N(in_mean,in_std)/(out_mean,out_std) or U(in_min,in_max)/(out_min,out_max)")] = Field(
        default_factory=lambda: ["D(100,100)"])
    num_concurrency: Annotated[list[Concurrency], Field(min_length=1),
                               OnForm("Concurrency levels (comma separated)")] = Field(default_factory=lambda: [1])
    # Open loop: requests per second per level (Poisson, or gamma with `burstiness`); when
    # given, these are the load levels and num_concurrency is not used.
    request_rate: Annotated[Annotated[list[RequestRate], Field(min_length=1)] | None, OnForm(
        "Request rates, req/s (comma separated; replaces concurrency levels)")] = None
    burstiness: Annotated[Float, Field(gt=0, le=MAX_FACTOR)] = 1.0
    max_concurrency: Concurrency | None = None
    warmup_requests: Annotated[Int, Field(ge=0), at_most("max_warmup")] = 0
    api: Literal["completions", "chat"] = "completions"
    max_requests_per_iteration: Annotated[PosInt, at_most("max_requests"), OnForm("Max requests per level")] = 100
    max_time_per_iteration: Annotated[Seconds, OnForm("Max time per level (s)")] = 60.0
    additional_params: dict[str, Any] = Field(default_factory=dict)
    # Objective maximize_sustainable_rate: the levels are the rates this search tries.
    rate_search: RateSearch | None = None

    @property
    def levels(self) -> list[float]:
        """The load levels in order: request rates (open loop) or concurrencies."""
        return list(self.request_rate) if self.request_rate else [float(c) for c in self.num_concurrency]


StrategyName = Literal["grid_search", "random", "bayesian", "list"]  # = app.domain.strategies.STRATEGIES
ObjectiveName = Literal[tuple(OBJECTIVES)]  # type: ignore[valid-type]


PRIORITY_RANGE = 1000


class EarlyStopping(BaseModel):
    """Early stopping that frees GPUs (app.domain.stopping). `probe`: each experiment measures
    the deciding load level first and skips the others when it cannot beat the best finished
    experiment or breaks a hard SLO there. `patience`: the task creates no more experiments
    after this many finished ones without an improvement beyond `noise` (relative). And
    `gpu_hour_budget`: none after the task's experiments (repeats included) have used this many
    GPU-hours."""

    model_config = _STRICT
    probe: bool = True
    patience: Annotated[PosInt, at_most("max_iterations")] | None = None
    noise: Annotated[Float, Field(ge=0, lt=1)] = 0.01
    gpu_hour_budget: Annotated[Float, Field(gt=0)] | None = None


class Optimization(BaseModel):
    model_config = _STRICT
    strategy: Annotated[StrategyName, OnForm("Strategy", choices="strategies")] = "grid_search"
    objective: Annotated[ObjectiveName, OnForm("Objective", choices="objectives")] = "minimize_latency"
    # Two or three objectives searched together (a multi-objective sampler; the result is the
    # Pareto set): `objective` is then the first of them. `reference_point`: the point the
    # front's hypervolume is measured against, one figure per objective in its unit (default:
    # each objective's worst measured figure made 10 % worse, stated in the result).
    objectives: Annotated[Annotated[list[ObjectiveName], Field(min_length=2, max_length=3)] | None, OnForm(
        "Several objectives (a JSON list of two or three: the answer is their Pareto set)")] = None
    reference_point: Annotated[list[Float], Field(min_length=2, max_length=3)] | None = None
    # resolved: grid size for grid/list (at most AUTOTUNER_MAX_ITERATIONS), else 20
    max_iterations: Annotated[Annotated[PosInt, at_most("max_iterations")] | None,
                              OnForm("Max experiments (iterations)")] = None
    max_parallel_experiments: Annotated[PosInt, at_most("max_parallel"), OnForm("Max parallel experiments")] = 1
    timeout_per_iteration: Annotated[Seconds, OnForm("Timeout per experiment (s)")] = 600.0
    seed: Int = 0
    configs: Annotated[list[dict[str, Any]] | None, OnForm(
        "Configurations for strategy list (JSON list of objects)", name="list_configs", group="list")] = None
    max_attempts: Annotated[PosInt, at_most("max_attempts")] = 3
    # Higher first: waiting experiments of a higher-priority task are placed before older ones
    # of lower priority (changeable while the task runs: `autotuner set`, PATCH /api/tasks/<id>).
    priority: Annotated[int, Field(strict=True, ge=-PRIORITY_RANGE, le=PRIORITY_RANGE)] = 0
    # Which load level the objective reads (a value of num_concurrency or request_rate);
    # default: the highest level.
    objective_level: Annotated[Float, Field(gt=0)] | None = None
    # What one GPU costs per hour, in dollars: the objective minimize_cost (dollars per
    # million output tokens) needs it, so a 1-GPU and an 8-GPU answer compare on cost.
    gpu_price_per_hour: Annotated[Annotated[Float, Field(gt=0, le=MAX_FACTOR)] | None,
                                  OnForm("GPU price per hour ($, for minimize_cost)")] = None
    # After the search, the `repeat_top` best configurations are each measured `repeats` more
    # times with other seeds: the answer is the figure to rely on, or a tie (app.domain.repeats).
    repeats: Annotated[Annotated[Int, Field(ge=0, le=10)], OnForm("Repeats of the top configurations")] = 0
    repeat_top: Annotated[Int, Field(ge=2, le=5)] = 4
    # Warm start from an earlier task with the same model, engine, hardware and traffic
    # (app.domain.warmstart): its `warm_start_top` best configurations are tried first and, for
    # the Bayesian strategy, its history is given to the sampler.
    warm_start_from: Annotated[Annotated[Int, Field(ge=1, le=INT32_MAX)] | None, OnForm("Warm start from task #")] = None
    warm_start_top: Annotated[Int, Field(ge=0, le=20)] = 3
    # Off unless given: skip the load levels of what cannot win, stop the task on a plateau.
    early_stopping: EarlyStopping | None = None


class QuantConfig(BaseModel):
    """The original's four-field quantization block; scalars or lists of dtype names."""

    model_config = _STRICT
    gemm_dtype: DtypeList | None = None
    kvcache_dtype: DtypeList | None = None
    attention_dtype: DtypeList | None = None
    moe_dtype: DtypeList | None = None


class SimConfig(BaseModel):
    """Settings of the simulated engine (deployment_mode "sim"): no GPU, fake timings."""

    model_config = _STRICT
    engine: Literal["sglang", "vllm"] = "sglang"
    gpu: ArgText = "H100-80GB"
    model_preset: ArgText | None = None
    time_scale: Annotated[Float, Field(gt=0, le=MAX_FACTOR),
                          OnForm("Simulated time scale", name="sim_time_scale", section="engine", group="sim",
                                 hint="used with deployment mode sim")] = 1.0
    startup_seconds: Annotated[Annotated[Float, Field(ge=0), at_most("max_seconds")] | None,
                               OnForm("Simulated startup (s)", name="sim_startup_seconds", section="engine",
                                      group="sim")] = None
    # Where the figures come from: "virtual" (default, deterministic): the engine is started and
    # benchmarked over HTTP as usual, but the recorded figures are the performance model's own in
    # virtual time (app.tools.simengine.virtual), whatever the host's load; "wall": measured on
    # the wall clock, with the engine's lag checked (workers.sim_figures).
    clock: Annotated[Literal["virtual", "wall"],
                     OnForm("Simulated figures", name="sim_clock", section="engine", group="sim",
                            hint="virtual: the model's own, deterministic; wall: measured, lag-checked")] = "virtual"


def _task_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._ -]{1,100}", value):
        raise ValueError("task_name must be 1-100 characters from letters, digits, '.', '_', '-' and space")
    return value


TaskName = Annotated[str, AfterValidator(_task_name)]
RuntimeName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
EngineName = Annotated[str, Field(min_length=1, max_length=50, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
ImageTag = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")]
DeploymentMode = Literal["docker", "process", "sim", "ome"]
