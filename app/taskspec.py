"""Task files: parse, validate and normalise them into one `TaskSpec`.

A task file (JSON or YAML, in the format of the original inference-autotuner) says which
model and engine to tune, the parameter search space, the benchmark traffic and the
objective. Users write these by hand, so validation reports EVERY problem at once with
its field path (`TaskSpecError.errors`), and harmless oddities (OME-only sections,
renamed parameters, dtypes that cannot be applied) become human-readable `spec.notes`
instead of failures.

Parameter names and values end up as engine argv (`--name value`), so both are checked
here against a strict alphabet: this module is the security boundary for launch flags.

The raw sections are kept as written (so `to_dict()` shows the user's file and
round-trips); `spec.search_space` is the normalised view every strategy works on, keyed
by the engine flag name without leading dashes.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------

Loc = list[Union[str, int]]


class TaskSpecError(ValueError):
    """Every problem of one task file; `errors` is a list of {"loc": [...], "msg": str}."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__(self.format())

    def format(self) -> str:
        lines = [f"{len(self.errors)} problem(s) in the task:"]
        lines += [f"  {format_loc(e['loc']) or '(file)'}: {e['msg']}" for e in self.errors]
        return "\n".join(lines)


def format_loc(loc: Loc) -> str:
    """["benchmark", "traffic_scenarios", 0] -> "benchmark.traffic_scenarios[0]"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Collector:
    """Accumulates semantic errors and notes so that all of them are reported together."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def error(self, loc: Loc, msg: str) -> None:
        self.errors.append({"loc": list(loc), "msg": msg})

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)


# ---------------------------------------------------------------------------------------
# Search-space domains
# ---------------------------------------------------------------------------------------

Scalar = Union[str, int, float, bool]


@dataclass(frozen=True)
class Choice:
    """A finite set of values. `None` (only produced internally by quant_config) means
    "do not pass this flag at all"."""

    values: tuple[Scalar | None, ...]
    kind: str = field(default="choice", init=False)

    @property
    def is_finite(self) -> bool:
        return True

    def size(self) -> int:
        return len(self.values)

    def value_at(self, index: int) -> Scalar | None:
        return self.values[index]

    def grid_values(self) -> list[Scalar | None]:
        return list(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "choice", "values": list(self.values)}


@dataclass(frozen=True)
class FloatRange:
    """A continuous interval; infinite, so only random/bayesian strategies can use it."""

    low: float
    high: float
    log: bool = False
    kind: str = field(default="float", init=False)

    @property
    def is_finite(self) -> bool:
        return False

    def size(self) -> None:
        return None

    def grid_values(self) -> list[float]:
        raise ValueError("a continuous range has no finite grid")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class IntRange:
    """Integers low, low+step, ... <= high. Finite, so it can be part of a grid."""

    low: int
    high: int
    step: int = 1
    log: bool = False
    kind: str = field(default="int", init=False)

    @property
    def is_finite(self) -> bool:
        return True

    def size(self) -> int:
        return (self.high - self.low) // self.step + 1

    def value_at(self, index: int) -> int:
        return self.low + index * self.step

    def grid_values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "step": self.step, "log": self.log}


Domain = Union[Choice, FloatRange, IntRange]

# ---------------------------------------------------------------------------------------
# Value / name checks shared by pydantic fields and the semantic pass
# ---------------------------------------------------------------------------------------

PARAM_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_TRAFFIC_RE = re.compile(r"^(D\(\d+,\d+\)|[NU]\(\d+,\d+\)/\(\d+,\d+\))$")
_UNSAFE_CHARS_RE = re.compile(r"[\s\x00-\x1f\x7f]")


def value_problem(value: Any) -> str | None:
    """Why `value` cannot become an argv value, or None when it can."""
    if isinstance(value, bool) or isinstance(value, int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "must be a finite number"
    if isinstance(value, str):
        if not value:
            return "must not be an empty string"
        if value.startswith("-"):
            return f"{value!r} must not start with '-' (it would be read as a flag)"
        if _UNSAFE_CHARS_RE.search(value):
            return f"{value!r} must not contain whitespace, newlines or control characters"
        return None
    return f"must be a string, number or boolean, not {type(value).__name__}"


def name_problem(name: Any) -> str | None:
    """Why `name` (already normalised) cannot become `--name`, or None when it can."""
    if not isinstance(name, str):
        return f"parameter names must be strings, not {type(name).__name__}"
    if len(name) > 100 or not PARAM_NAME_RE.fullmatch(name):  # fullmatch: "$" allows a final "\n"
        return (f"invalid parameter name {name!r}: after normalisation it must match "
                f"{PARAM_NAME_RE.pattern} (lower-case letters, digits and '-')")
    return None


def _no_bool(value: Any) -> Any:
    # pydantic's lax int/float accept true/false; a boolean count or timeout is a mistake.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def _traffic(value: Any) -> Any:
    if isinstance(value, str) and not _TRAFFIC_RE.fullmatch(value):
        raise ValueError(
            f"invalid traffic scenario {value!r}: expected D(in,out), N(in_mean,in_std)/"
            "(out_mean,out_std) or U(in_min,in_max)/(out_min,out_max), e.g. D(100,100)")
    return value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
PosInt = Annotated[Int, Field(gt=0)]


def _arg_str(value: Any) -> Any:
    """Strings that end up in argv (model path, dtypes) obey the parameter-value rules."""
    problem = value_problem(value) if isinstance(value, str) else None
    if problem:
        raise ValueError(problem)
    return value


ArgText = Annotated[str, Field(min_length=1, max_length=500), BeforeValidator(_arg_str)]
DtypeList = Annotated[list[ArgText], BeforeValidator(_as_list), Field(min_length=1)]

# ---------------------------------------------------------------------------------------
# Sections of the file (pydantic: structure and per-field checks)
# ---------------------------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid")


class ModelRef(BaseModel):
    model_config = _STRICT
    id_or_path: ArgText
    namespace: str | None = None  # OME (Kubernetes) only; kept, not used here


class SLOTarget(BaseModel):
    """One SLO bound; thresholds are seconds, as in the original format."""

    model_config = _STRICT
    threshold: Annotated[Float, Field(gt=0)]
    weight: Annotated[Float, Field(ge=0)] = 1.0
    hard_fail: bool = False
    fail_ratio: Annotated[Float, Field(ge=0, le=1)] = 0.0


class LatencySLO(BaseModel):
    model_config = _STRICT
    p50: SLOTarget | None = None
    p90: SLOTarget | None = None
    p95: SLOTarget | None = None
    p99: SLOTarget | None = None


class SLO(BaseModel):
    model_config = _STRICT
    latency: LatencySLO | None = None
    ttft: SLOTarget | None = None
    tpot: SLOTarget | None = None
    steepness: Annotated[Float, Field(gt=0)] = 0.1


TrafficScenario = Annotated[str, Field(max_length=100), AfterValidator(_traffic)]


class Benchmark(BaseModel):
    model_config = _STRICT
    # These three may become benchmark-client argv, so they follow the argv value rules.
    task: ArgText = "text-to-text"
    model_name: ArgText | None = None
    model_tokenizer: ArgText | None = None
    traffic_scenarios: Annotated[list[TrafficScenario], Field(min_length=1)] = Field(
        default_factory=lambda: ["D(100,100)"])
    num_concurrency: Annotated[list[PosInt], Field(min_length=1)] = Field(default_factory=lambda: [1])
    max_time_per_iteration: Annotated[Float, Field(gt=0)] = 60.0
    max_requests_per_iteration: PosInt = 100
    additional_params: dict[str, Any] = Field(default_factory=dict)


Strategy = Literal["grid_search", "random", "bayesian", "list"]
Objective = Literal["minimize_latency", "maximize_throughput", "minimize_ttft", "minimize_tpot"]


class Optimization(BaseModel):
    model_config = _STRICT
    strategy: Strategy = "grid_search"
    objective: Objective = "minimize_latency"
    max_iterations: PosInt | None = None  # resolved: grid size for grid/list, else 20
    timeout_per_iteration: Annotated[Float, Field(gt=0, le=86400)] = 600.0
    max_parallel_experiments: PosInt = 1
    seed: Int = 0
    configs: list[dict[str, Any]] | None = None
    max_attempts: PosInt = 3


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
    time_scale: Annotated[Float, Field(gt=0)] = 1.0
    startup_seconds: Annotated[Float, Field(ge=0)] | None = None


def _task_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._ -]{1,100}", value):
        raise ValueError("task_name must be 1-100 characters from letters, digits, '.', '_', '-' and space")
    return value


TaskName = Annotated[str, AfterValidator(_task_name)]
RuntimeName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
ImageTag = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")]
DeploymentMode = Literal["docker", "process", "sim", "ome"]

# ---------------------------------------------------------------------------------------
# Engine naming
# ---------------------------------------------------------------------------------------

# Underscore names of the original format (OME presets) -> engine flag, per engine.
_ALIASES: dict[str, dict[str, str]] = {
    "tp_size": {"sglang": "tp-size", "vllm": "tensor-parallel-size"},
    "pp_size": {"sglang": "pp-size", "vllm": "pipeline-parallel-size"},
    "dp_size": {"sglang": "dp-size", "vllm": "data-parallel-size"},
    "mem_frac": {"sglang": "mem-fraction-static", "vllm": "gpu-memory-utilization"},
    "mem_fraction": {"sglang": "mem-fraction-static", "vllm": "gpu-memory-utilization"},
}
# SGLang-only spellings that vLLM would reject; only a note, the engine has the last word.
_VLLM_SPELLING = {
    "tp-size": "tensor-parallel-size",
    "pp-size": "pipeline-parallel-size",
    "dp-size": "data-parallel-size",
    "mem-fraction-static": "gpu-memory-utilization",
    "max-running-requests": "max-num-seqs",
}
_PARALLEL_FLAGS: dict[str, dict[str, str]] = {
    "sglang": {"tp": "tp-size", "pp": "pp-size", "dp": "dp-size", "ep": "ep-size",
               "moe_dense_tp": "moe-dense-tp-size"},
    "vllm": {"tp": "tensor-parallel-size", "pp": "pipeline-parallel-size",
             "dp": "data-parallel-size", "dcp": "decode-context-parallel-size",
             "enable_expert_parallel": "enable-expert-parallel"},
}
# Names under which each parallelism degree may appear in a parameter set (any engine).
AXIS_NAMES: dict[str, tuple[str, ...]] = {
    "tp": ("tp-size", "tp", "tensor-parallel-size"),
    "pp": ("pp-size", "pp", "pipeline-parallel-size"),
    "dp": ("dp-size", "dp", "data-parallel-size"),
}
_GEMM_OFF = {"auto", "bf16", "bfloat16", "none"}
_KV_OFF = {"auto"}


def engine_of(base_runtime: str, sim_engine: str | None = None) -> str | None:
    """sglang/vllm for "sglang", "vllm", OME presets like "sglang-llama-small", and "sim"."""
    if base_runtime == "sim":
        return sim_engine or "sglang"
    head = base_runtime.split("-", 1)[0]
    return head if head in ("sglang", "vllm") else None


def normalise_name(raw: str, engine: str) -> str:
    """Original-format parameter name -> engine flag name without dashes."""
    name = raw.lstrip("-")
    if name in _ALIASES:
        return _ALIASES[name][engine]
    return name.replace("_", "-")


# ---------------------------------------------------------------------------------------
# Semantic pass: build the search space, collect errors and notes
# ---------------------------------------------------------------------------------------


class _ChoiceDef(BaseModel):
    model_config = _STRICT
    type: Literal["choice"] = "choice"
    values: Annotated[list[Any], Field(min_length=1)]


class _FloatDef(BaseModel):
    model_config = _STRICT
    type: Literal["continuous", "float"]
    low: Float
    high: Float
    log: bool = False


class _IntDef(BaseModel):
    model_config = _STRICT
    type: Literal["integer", "int"]
    low: Int
    high: Int
    step: PosInt = 1
    log: bool = False


_DEF_MODELS: dict[str, type[BaseModel]] = {
    "choice": _ChoiceDef, "continuous": _FloatDef, "float": _FloatDef, "integer": _IntDef, "int": _IntDef,
}


def _choice(values: list[Any], loc: Loc, out: _Collector) -> Choice | None:
    if not values:
        out.error(loc, "needs at least one value")
        return None
    ok, seen = True, set()
    for i, value in enumerate(values):
        problem = value_problem(value)
        if problem:
            out.error(loc + [i], problem)
            ok = False
            continue
        key = (isinstance(value, bool), value)  # 1 == 1.0 are duplicates; True and 1 are not
        if key in seen:
            out.error(loc + [i], f"duplicate value {value!r}")
            ok = False
        seen.add(key)
    return Choice(tuple(values)) if ok else None


def _domain(raw: Any, loc: Loc, out: _Collector) -> Domain | None:
    """One parameter definition in any of the accepted forms -> Domain (or errors)."""
    if isinstance(raw, list):
        return _choice(raw, loc, out)
    if not isinstance(raw, dict):
        return _choice([raw], loc, out)  # a scalar: one fixed value
    kind = raw.get("type", "choice" if "values" in raw else None)
    if not isinstance(kind, str) or kind not in _DEF_MODELS:
        out.error(loc + ["type"], f"unknown parameter type {kind!r}: expected choice, "
                  "continuous (or float) or integer (or int)")
        return None
    try:
        spec = _DEF_MODELS[kind].model_validate(raw)
    except ValidationError as exc:
        out.errors.extend(pydantic_errors(exc, loc))
        return None
    if isinstance(spec, _ChoiceDef):
        return _choice(spec.values, loc + ["values"], out)
    if spec.low >= spec.high:
        out.error(loc, f"low ({spec.low}) must be below high ({spec.high})")
        return None
    if spec.log and spec.low <= 0:
        out.error(loc + ["low"], "a log-scale range needs low > 0")
        return None
    if isinstance(spec, _IntDef):
        if spec.log and spec.step != 1:
            out.error(loc + ["step"], "a log-scale integer range cannot have a step")
            return None
        return IntRange(spec.low, spec.high, spec.step, spec.log)
    return FloatRange(float(spec.low), float(spec.high), spec.log)


@dataclass
class _Derived:
    engine: str = "sglang"
    deployment_mode: str = "docker"
    search_space: dict[str, Domain] = field(default_factory=dict)
    configs: list[dict[str, Any]] = field(default_factory=list)
    max_iterations: int | None = None
    sim: SimConfig | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _axis(flag: str) -> str | None:
    return next((a for a, names in AXIS_NAMES.items() if flag in names), None)


def _degree_ok(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _degrees_ok(domain: Domain) -> bool:
    """Parallelism degrees decide how many GPUs an experiment takes: positive ints only."""
    if isinstance(domain, Choice):
        return all(_degree_ok(v) for v in domain.values)
    return isinstance(domain, IntRange) and domain.low >= 1


def _add_param(space: dict[str, Domain], origin: dict[str, str], flag: str, domain: Domain,
               where: str, loc: Loc, out: _Collector) -> None:
    """Insert one domain, refusing a second definition of the same flag or parallel axis."""
    axis = _axis(flag)
    if axis and not _degrees_ok(domain):
        out.error(loc, f"--{flag} is a parallelism degree: its values must be positive integers")
        return
    clash = [n for n in (AXIS_NAMES[axis] if axis else (flag,)) if n in space]
    if clash:
        out.error(loc, f"conflicts with {origin[clash[0]]} (both set --{clash[0]}"
                  + ("" if clash[0] == flag else f" / --{flag}") + "); define it in one place")
        return
    space[flag] = domain
    origin[flag] = where


def _runtime(sections: dict[str, Any], failed: set[str], d: _Derived, out: _Collector) -> None:
    base = sections.get("base_runtime") or "sglang"
    sim: SimConfig | None = sections.get("sim")
    engine = engine_of(base, sim.engine if sim else None)
    if engine is None:
        if "base_runtime" not in failed:
            out.error(["base_runtime"], f"unknown runtime {base!r}: expected sglang, vllm, sim or an "
                      "OME runtime preset named sglang-... / vllm-...")
        engine = "sglang"
    d.engine = engine
    mode = sections.get("deployment_mode") or ("sim" if base == "sim" else "docker")
    d.deployment_mode = mode
    if base == "sim" and mode != "sim" and "deployment_mode" not in failed:
        out.error(["deployment_mode"], f"base_runtime 'sim' can only run with deployment_mode 'sim', not {mode!r}")
    if base not in ("sglang", "vllm", "sim") and engine_of(base):
        out.note(f"base_runtime {base!r} is an OME ClusterServingRuntime preset; this system runs "
                 f"its engine ({engine}) directly with deployment_mode {mode!r}")
    if mode == "ome":
        out.note("deployment_mode 'ome' (Kubernetes InferenceService) is read but not run by this "
                 "system; use docker, process or sim to run experiments")
    if mode == "sim":
        d.sim = sim or SimConfig(engine=engine)
        if sim is not None and base != "sim" and "engine" in sim.model_fields_set and sim.engine != engine:
            out.error(["sim", "engine"], f"sim.engine {sim.engine!r} contradicts base_runtime {base!r}")
        elif sim is not None and base != "sim" and sim.engine != engine:
            d.sim = sim.model_copy(update={"engine": engine})
    elif sim is not None:
        d.sim = sim
        out.note(f"the sim section is ignored: deployment_mode is {mode!r}")
    model: ModelRef | None = sections.get("model")
    if model is not None and model.namespace is not None:
        out.note(f"model.namespace {model.namespace!r} is only used by OME (Kubernetes) deployments; kept, not used")
    for key, kind in (("clusterbasemodel_config", "ClusterBaseModel"),
                      ("clusterservingruntime_config", "ClusterServingRuntime")):
        if sections.get(key) is not None:
            out.note(f"{key} describes an OME/Kubernetes {kind}; kept for reference, not used here")


def _parameters(sections: dict[str, Any], d: _Derived, origin: dict[str, str], out: _Collector) -> None:
    for raw_name, raw in (sections.get("parameters") or {}).items():
        loc: Loc = ["parameters", raw_name]
        flag = normalise_name(raw_name, d.engine) if isinstance(raw_name, str) else raw_name
        problem = name_problem(flag)
        if problem:
            out.error(loc, problem)
            continue
        if flag != raw_name:
            out.note(f"parameters.{raw_name} is applied as engine flag --{flag}")
        if d.engine == "vllm" and flag in _VLLM_SPELLING:
            out.note(f"parameters.{raw_name}: --{flag} is an SGLang flag; vLLM calls it --{_VLLM_SPELLING[flag]}")
        domain = _domain(raw, loc, out)
        if domain is not None:
            _add_param(d.search_space, origin, flag, domain, f"parameters.{raw_name}", loc, out)


def _parallel(sections: dict[str, Any], d: _Derived, origin: dict[str, str], out: _Collector) -> None:
    table = _PARALLEL_FLAGS[d.engine]
    for key, raw in (sections.get("parallel_config") or {}).items():
        loc: Loc = ["parallel_config", key]
        if key in ("presets", "preset"):
            out.error(loc, "parallel presets are not supported; list the tp/pp/dp values instead")
            continue
        flag = table.get(key) or normalise_name(key, d.engine)
        problem = name_problem(flag)
        if problem:
            out.error(loc, problem)
            continue
        values = raw if isinstance(raw, list) else [raw]
        if key in ("tp", "pp", "dp"):
            bad = [i for i, v in enumerate(values) if isinstance(v, bool) or not isinstance(v, int) or v < 1]
            if bad:
                out.error(loc, f"{key} must be a positive integer or a list of them")
                continue
        elif key not in table:
            out.note(f"parallel_config.{key} is not a known parallelism setting for {d.engine}; passed as --{flag}")
        domain = _choice(values, loc, out)
        if domain is not None:
            out.note(f"parallel_config.{key} expands to engine flag --{flag}")
            _add_param(d.search_space, origin, flag, domain, f"parallel_config.{key}", loc, out)


def _quant(sections: dict[str, Any], d: _Derived, origin: dict[str, str], out: _Collector) -> None:
    quant: QuantConfig | None = sections.get("quant_config")
    if quant is None:
        return
    for key, flag, off in (("gemm_dtype", "quantization", _GEMM_OFF), ("kvcache_dtype", "kv-cache-dtype", _KV_OFF)):
        values: list[str] | None = getattr(quant, key)
        if not values:
            continue
        mapped = list(dict.fromkeys(None if v.lower() in off else v for v in values))
        if mapped == [None]:
            out.note(f"quant_config.{key} {_show(values)} is the engine default; no flag is passed")
            continue
        shown = ", ".join("(no flag)" if v is None else v for v in mapped)
        out.note(f"quant_config.{key} is applied as engine flag --{flag} ({shown})")
        _add_param(d.search_space, origin, flag, Choice(tuple(mapped)), f"quant_config.{key}",
                   ["quant_config", key], out)
    for key in ("attention_dtype", "moe_dtype"):
        values = getattr(quant, key)
        if values and all(v.lower() == "auto" for v in values):
            out.note(f"quant_config.{key} 'auto' is the engine default; nothing to apply")
        elif values:
            out.note(f"quant_config.{key} {_show(values)} has no stable engine flag; kept in the task but not applied")


def _show(values: list[str]) -> str:
    return repr(values[0]) if len(values) == 1 else repr(values)


def _optimization(sections: dict[str, Any], failed: set[str], d: _Derived, out: _Collector) -> None:
    opt: Optimization = sections.get("optimization") or Optimization()
    infinite = [k for k, dom in d.search_space.items() if not dom.is_finite]
    size = None if infinite else math.prod(dom.size() for dom in d.search_space.values())
    if opt.strategy == "grid_search":
        for name in infinite:
            out.error(["parameters", name], f"grid_search needs finite values, but --{name} is a continuous "
                      "range; list its values or use strategy random or bayesian")
    if opt.strategy == "list":
        _configs(opt, d, out)
    elif opt.configs is not None:
        out.note(f"optimization.configs is only used by strategy 'list'; ignored by {opt.strategy!r}")
    # Only grid and list have a natural end; the others default to 20 experiments.
    limit = {"grid_search": size, "list": len(d.configs) or None}.get(opt.strategy, None)
    d.max_iterations = opt.max_iterations or limit or 20
    if opt.max_iterations and limit is not None and opt.max_iterations > limit:
        out.note(f"max_iterations is {opt.max_iterations} but only {limit} parameter set(s) "
                 "exist; the task stops after those")


def _configs(opt: Optimization, d: _Derived, out: _Collector) -> None:
    """strategy "list": validate the explicit configs; single-valued parameters fill gaps."""
    if not opt.configs:
        out.error(["optimization", "configs"], "strategy 'list' needs a non-empty list of parameter sets")
        return
    fixed = {k: dom.values[0] for k, dom in d.search_space.items() if isinstance(dom, Choice) and dom.size() == 1}
    varying = [k for k, dom in d.search_space.items() if k not in fixed]
    if varying:
        out.note("strategy 'list' runs optimization.configs as given; the ranges of "
                 + ", ".join(f"--{k}" for k in varying) + " are not explored")
    for i, raw in enumerate(opt.configs):
        config, ok = dict(fixed), True
        for name, value in raw.items():
            loc: Loc = ["optimization", "configs", i, name]
            flag = normalise_name(name, d.engine)
            problem = name_problem(flag) or value_problem(value)
            if not problem and _axis(flag) and not _degree_ok(value):
                problem = f"--{flag} is a parallelism degree: it must be a positive integer"
            if problem:
                out.error(loc, problem)
                ok = False
                continue
            config[flag] = value
        if ok:  # repeats are allowed: re-measuring a config is a reason to use this strategy
            d.configs.append(config)


_SECTIONS_NEEDED = ("parameters", "parallel_config", "quant_config", "optimization", "base_runtime")


def _derive(sections: dict[str, Any], failed: set[str] = frozenset()) -> _Derived:
    """Everything computed from more than one section; tolerant of sections that failed."""
    out, d = _Collector(), _Derived()
    _runtime(sections, failed, d, out)
    origin: dict[str, str] = {}
    _parameters(sections, d, origin, out)
    _parallel(sections, d, origin, out)
    _quant(sections, d, origin, out)
    if not failed.intersection(_SECTIONS_NEEDED):
        _optimization(sections, failed, d, out)
    d.errors, d.notes = out.errors, out.notes
    return d


# ---------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------


class TaskSpec(BaseModel):
    """A validated task. Treat as immutable: derived views are computed at validation."""

    model_config = ConfigDict(extra="forbid")

    task_name: TaskName
    description: str | None = None
    deployment_mode: DeploymentMode | None = None  # resolved: "sim" if base_runtime is sim, else docker
    model: ModelRef
    base_runtime: RuntimeName = "sglang"
    runtime_image_tag: ImageTag | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    parallel_config: dict[str, Any] | None = None
    quant_config: QuantConfig | None = None
    optimization: Optimization = Field(default_factory=Optimization)
    benchmark: Benchmark = Field(default_factory=Benchmark)
    slo: SLO | None = None
    sim: SimConfig | None = None
    clusterbasemodel_config: dict[str, Any] | None = None  # OME only; kept
    clusterservingruntime_config: dict[str, Any] | None = None  # OME only; kept

    _search_space: dict[str, Domain] = PrivateAttr(default_factory=dict)
    _notes: list[str] = PrivateAttr(default_factory=list)
    _configs: list[dict[str, Any]] = PrivateAttr(default_factory=list)
    _engine: str = PrivateAttr(default="sglang")

    @model_validator(mode="after")
    def _resolve(self) -> "TaskSpec":
        d = _derive({name: getattr(self, name) for name in type(self).model_fields})
        if d.errors:
            raise ValueError("; ".join(f"{format_loc(e['loc'])}: {e['msg']}" for e in d.errors))
        self.deployment_mode = d.deployment_mode  # type: ignore[assignment]
        self.optimization.max_iterations = d.max_iterations
        self.sim = d.sim
        self._search_space, self._notes, self._configs, self._engine = d.search_space, d.notes, d.configs, d.engine
        return self

    # -- derived views ------------------------------------------------------------------

    @property
    def search_space(self) -> dict[str, Domain]:
        """Normalised domains keyed by engine flag name (no dashes)."""
        return self._search_space

    @property
    def notes(self) -> list[str]:
        """Human-readable warnings: what was renamed, ignored or not applied, and why."""
        return self._notes

    @property
    def list_configs(self) -> list[dict[str, Any]]:
        """strategy "list": the configs with normalised names and fixed parameters filled in."""
        return self._configs

    @property
    def engine(self) -> str:
        return self._engine

    @property
    def objective_direction(self) -> Literal["minimize", "maximize"]:
        return "maximize" if self.optimization.objective.startswith("maximize") else "minimize"

    def grid_size(self) -> int | None:
        """Number of distinct parameter sets of the search space; None if it is infinite."""
        if any(not dom.is_finite for dom in self._search_space.values()):
            return None
        return math.prod(dom.size() for dom in self._search_space.values())

    # -- launching ----------------------------------------------------------------------

    def gpus_needed(self, params: dict[str, Any]) -> int:
        """tp * pp * dp read from `params` under either engine's naming (default 1 each).

        SGLang with --enable-dp-attention runs the dp replicas inside the tp group, so
        there the count is tp * pp.
        """
        def degree(axis: str) -> int:
            for name in AXIS_NAMES[axis]:
                if params.get(name) is not None:
                    return max(1, int(params[name]))
            return 1

        dp = 1 if (self.engine == "sglang" and params.get("enable-dp-attention") is True) else degree("dp")
        return degree("tp") * degree("pp") * dp

    def launch_flags(self, params: dict[str, Any]) -> list[str]:
        """argv fragment for one parameter set; re-checks names and values (they may come
        from a database, not from this file)."""
        argv: list[str] = []
        for name, value in params.items():
            problem = name_problem(name) or (None if value is None else value_problem(value))
            if problem:
                raise ValueError(f"refusing to build flag --{name}: {problem}")
            if value is None or value is False:
                continue
            argv += [f"--{name}"] if value is True else [f"--{name}", str(value)]
        return argv

    def launch_command(self, params: dict[str, Any], port: int = 30000) -> list[str]:
        """The full command a user would run to start this engine with `params`."""
        model = self.model.id_or_path
        if self.engine == "vllm":
            head = ["vllm", "serve", model]
        else:
            head = ["python", "-m", "sglang.launch_server", "--model-path", model]
        return head + ["--host", "0.0.0.0", "--port", str(port)] + self.launch_flags(params)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able task with defaults resolved; `parse_task(spec.to_dict())` gives it back."""
        return self.model_dump(mode="json", exclude_none=True)


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------

def _field_adapter(info: Any) -> TypeAdapter[Any]:
    """Validator for one top-level field alone, so a broken section does not hide the
    semantic errors of the others."""
    if info.metadata:
        return TypeAdapter(Annotated[(info.annotation, *info.metadata)])  # type: ignore[misc]
    return TypeAdapter(info.annotation)


_FIELD_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: _field_adapter(info) for name, info in TaskSpec.model_fields.items()
}

_PYDANTIC_MESSAGES = {"extra_forbidden": "unknown field", "missing": "required field is missing"}


def pydantic_errors(exc: ValidationError, prefix: Loc = ()) -> list[dict[str, Any]]:
    """pydantic's errors -> [{"loc", "msg"}], with friendlier wording."""
    out = []
    for err in exc.errors(include_url=False):
        msg = _PYDANTIC_MESSAGES.get(err["type"], err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append({"loc": list(prefix) + list(err["loc"]), "msg": msg})
    return out


def parse_task(data: Any) -> TaskSpec:
    """Validate a task given as a dict; raise TaskSpecError listing every problem."""
    if not isinstance(data, dict):
        raise TaskSpecError([{"loc": [], "msg": f"a task must be a mapping, not {type(data).__name__}"}])
    errors: list[dict[str, Any]] = []
    sections: dict[str, Any] = {}
    failed: set[str] = set()
    for key in data:
        if key not in _FIELD_ADAPTERS:
            errors.append({"loc": [key], "msg": "unknown field"})
    for name, adapter in _FIELD_ADAPTERS.items():
        info = TaskSpec.model_fields[name]
        if name not in data:
            if info.is_required():
                errors.append({"loc": [name], "msg": "required field is missing"})
                failed.add(name)
            else:
                sections[name] = info.get_default(call_default_factory=True)
            continue
        try:
            sections[name] = adapter.validate_python(data[name])
        except ValidationError as exc:
            errors.extend(pydantic_errors(exc, [name]))
            failed.add(name)
    errors.extend(_derive(sections, failed).errors)
    if errors:
        raise TaskSpecError(errors)
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:  # not expected: the sectional pass checks the same things
        raise TaskSpecError(pydantic_errors(exc)) from None


def load_task_file(path: str | Path) -> TaskSpec:
    """Read a JSON or YAML task file (by extension, else by content) and validate it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskSpecError([{"loc": [], "msg": f"file not found: {path}"}]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskSpecError([{"loc": [], "msg": f"cannot read {path}: {exc}"}]) from None
    return parse_task(_parse_text(text, path))


def _parse_text(text: str, path: Path) -> Any:
    suffix = path.suffix.lower()
    as_json = suffix == ".json" or (suffix not in (".yaml", ".yml") and text.lstrip().startswith(("{", "[")))
    if not text.strip():
        raise TaskSpecError([{"loc": [], "msg": f"{path} is empty"}])
    if as_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskSpecError([{"loc": [], "msg": f"invalid JSON in {path} at line {exc.lineno} "
                                  f"column {exc.colno}: {exc.msg}"}]) from None
    import yaml  # only needed for YAML files

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TaskSpecError([{"loc": [], "msg": f"invalid YAML in {path}{where}: {problem}"}]) from None
