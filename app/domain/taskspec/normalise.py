"""Semantic pass: build the search space, collect errors and notes (`_derive`)."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from app.domain.engines import SIMULATOR, EngineSpec, builtin_engines, engines, get_engine
from app.domain.engines.registry import SIM_MODELLED_FLAGS
from app.domain.objectives import OBJECTIVES
from app.domain.limits import current, env_name

from .domains import Choice, Domain, FloatRange, IntRange
from .errors import Loc, _Collector, format_loc, pydantic_errors
from .names import _GEMM_OFF, _KV_OFF, DEFAULT_ENGINE, engine_of, infer_engine, normalise_name
from .sections import _STRICT, Benchmark, ModelRef, Optimization, QuantConfig, SimConfig
from .values import Float, Int, PosInt, name_problem, value_problem


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
_KINDS: dict[type[BaseModel], str] = {_ChoiceDef: "choice", _FloatDef: "float", _IntDef: "int"}


def param_kind(type_name: Any) -> str | None:
    """What a parameter definition's `type` (any of its accepted spellings) stands for:
    "choice", "int" or "float"; None when it is not a parameter type."""
    model = _DEF_MODELS.get(type_name) if isinstance(type_name, str) else None
    return _KINDS.get(model) if model is not None else None


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
    engine: str = DEFAULT_ENGINE
    launcher: str = DEFAULT_ENGINE
    deployment_mode: str = "docker"
    search_space: dict[str, Domain] = field(default_factory=dict)
    configs: list[dict[str, Any]] = field(default_factory=list)
    max_iterations: int | None = None
    sim: SimConfig | None = None
    known: dict[str, EngineSpec] = field(default_factory=dict)  # the engines this task was checked against
    errors: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> EngineSpec:
        return self.known[self.engine] if self.engine in self.known else get_engine(self.engine)

    @property
    def reserved(self) -> frozenset[str]:
        """Flags the runtime sets: the engine's own, plus the simulator's when it launches."""
        extra = SIMULATOR.reserved if self.launcher == SIMULATOR.name else frozenset()
        return self.spec.reserved | extra


def _degree_ok(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and 1 <= value <= current().max_parallel_degree)


def _degrees_ok(domain: Domain) -> bool:
    """Parallelism degrees decide how many GPUs an experiment takes: positive ints, each at
    most AUTOTUNER_MAX_PARALLEL_DEGREE (so tp × pp × dp stays a countable number of GPUs)."""
    if isinstance(domain, Choice):
        return all(_degree_ok(v) for v in domain.values)
    return isinstance(domain, IntRange) and _degree_ok(domain.low) and _degree_ok(domain.high)


def _degree_rule() -> str:
    return f"from 1 to {current().max_parallel_degree:,} ({env_name('max_parallel_degree')} raises this limit)"


def _add_param(space: dict[str, Domain], origin: dict[str, str], flag: str, domain: Domain,
               where: str, loc: Loc, d: _Derived, out: _Collector) -> None:
    """Insert one domain after checking it against the flag's type, refusing a second
    definition of the same flag."""
    if flag in d.spec.gpu_flags and not _degrees_ok(domain):
        out.error(loc, f"--{flag} is a parallelism degree: its values must be integers {_degree_rule()}")
        return
    if not _values_fit(flag, domain, loc, d, out):
        return
    if flag in space:
        out.error(loc, f"conflicts with {origin[flag]} (both set --{flag}); define it in one place")
        return
    space[flag] = domain
    origin[flag] = where


def _values_fit(flag: str, domain: Domain, loc: Loc, d: _Derived, out: _Collector) -> bool:
    """Values must be what the engine accepts for this flag (type and choices)."""
    spec = d.spec.flag(flag)
    if spec is None:
        return True
    if isinstance(domain, Choice):
        ok = True
        for i, value in enumerate(domain.values):
            problem = spec.value_problem(value)
            if problem:
                out.error(loc + [i] if domain.size() > 1 else loc, problem)
                ok = False
        return ok
    if spec.is_switch or spec.choices is not None:
        out.error(loc, f"--{flag} takes {'true/false' if spec.is_switch else 'one of ' + ', '.join(spec.choices or ())}"
                  "; list the values instead of a range")
        return False
    if isinstance(domain, FloatRange) and spec.type == "int":
        out.error(loc, f"--{flag} takes integers: use an integer range")
        return False
    return True


def _flag(raw: Any, d: _Derived, loc: Loc, out: _Collector, mapped: str | None = None) -> str | None:
    """A parameter name -> the engine flag it sets, or None after saying why it cannot be one:
    malformed, reserved for the runtime, or not a flag of this engine (with the closest one)."""
    engine = d.spec
    flag = mapped or (normalise_name(raw, engine) if isinstance(raw, str) else raw)
    problem = name_problem(flag)
    if problem:
        out.error(loc, problem)
        return None
    canonical = engine.canonical(flag)
    if flag in d.reserved or canonical in d.reserved:
        out.error(loc, f"--{flag} is set by the runtime, not by a task (reserved for {engine.label}"
                  + (" and the simulated engine" if d.launcher == SIMULATOR.name else "") + ")")
        return None
    if engine.vocabulary is not None and engine.vocabulary.canonical(flag) is None:
        out.error(loc, engine.unknown_flag_message(flag))
        return None
    if canonical != raw:
        out.note(f"{format_loc(loc)} is applied as engine flag --{canonical}")
    if d.launcher == SIMULATOR.name and canonical not in SIM_MODELLED_FLAGS.get(d.engine, ()):
        out.note(f"--{canonical} is accepted by the simulated engine but not modelled: it has no effect there")
    return canonical


def _runtime(sections: dict[str, Any], failed: set[str], d: _Derived, out: _Collector) -> None:
    base = sections.get("base_runtime") or DEFAULT_ENGINE
    sim: SimConfig | None = sections.get("sim")
    mode = sections.get("deployment_mode") or ("sim" if base == "sim" else "docker")
    d.deployment_mode = mode
    try:
        known = engines()
    except ValueError as exc:  # the operator's engines file is broken: say so on every task
        out.error(["engine"], str(exc))
        known = builtin_engines()
    d.known = known
    explicit = sections.get("engine")
    if explicit is not None and explicit not in known:
        if "engine" not in failed:
            out.error(["engine"], f"unknown engine {explicit!r}; known engines: {', '.join(sorted(known))}")
        explicit = None
    if explicit:
        engine = explicit
    elif base == "sim":
        engine = sim.engine if sim is not None else DEFAULT_ENGINE
    elif engine_of(base, known):
        engine = engine_of(base, known)
        if base != engine:
            out.note(f"base_runtime {base!r} is an OME ClusterServingRuntime preset; this system runs "
                     f"its engine ({engine}) directly with deployment_mode {mode!r}")
    else:
        engine, why = infer_engine(sections.get("parameters") or {}, known)
        if "base_runtime" not in failed:
            out.note(f"base_runtime {base!r} is not an engine this system knows (an OME ClusterServingRuntime "
                     f"name?); it runs {engine}, inferred because {why}. Set \"engine\" (or --engine) to choose")
    d.engine = engine if engine in known else DEFAULT_ENGINE
    d.launcher = SIMULATOR.name if base == "sim" or mode == "sim" else d.engine
    if base == "sim" and mode not in ("sim", "docker") and "deployment_mode" not in failed:
        out.error(["deployment_mode"], f"base_runtime 'sim' runs with deployment_mode 'sim' or 'docker', not {mode!r}")
    if d.launcher == SIMULATOR.name and d.engine not in SIM_MODELLED_FLAGS:
        out.error(["engine"], f"the simulated engine speaks SGLang's or vLLM's flags, not {d.engine!r}")
    if mode == "ome":
        out.note("deployment_mode 'ome' (Kubernetes InferenceService) is read but not run by this "
                 "system; use docker, process or sim to run experiments")
    _sim_section(sections, sim, base, mode, d, out)
    model: ModelRef | None = sections.get("model")
    if model is not None and model.namespace is not None:
        out.note(f"model.namespace {model.namespace!r} is only used by OME (Kubernetes) deployments; kept, not used")
    for key, kind in (("clusterbasemodel_config", "ClusterBaseModel"),
                      ("clusterservingruntime_config", "ClusterServingRuntime")):
        if sections.get(key) is not None:
            out.note(f"{key} describes an OME/Kubernetes {kind}; kept for reference, not used here")


def _sim_section(sections: dict[str, Any], sim: SimConfig | None, base: str, mode: str, d: _Derived,
                 out: _Collector) -> None:
    """The simulator's settings follow the engine whose flags it speaks."""
    if d.launcher != SIMULATOR.name:
        if sim is not None:
            d.sim = sim
            out.note(f"the sim section is ignored: deployment_mode is {mode!r}")
        return
    d.sim = sim or SimConfig(engine=d.engine if d.engine in SIM_MODELLED_FLAGS else DEFAULT_ENGINE)
    explicit_engine = sections.get("engine") is not None or base != "sim"
    if sim is not None and explicit_engine and sim.engine != d.engine:
        if "engine" in sim.model_fields_set:
            out.error(["sim", "engine"], f"sim.engine {sim.engine!r} contradicts the task's engine {d.engine!r}")
        elif d.engine in SIM_MODELLED_FLAGS:
            d.sim = sim.model_copy(update={"engine": d.engine})


def _parameters(sections: dict[str, Any], d: _Derived, origin: dict[str, str], out: _Collector) -> None:
    for raw_name, raw in (sections.get("parameters") or {}).items():
        loc: Loc = ["parameters", raw_name]
        flag = _flag(raw_name, d, loc, out)
        if flag is None:
            continue
        domain = _domain(raw, loc, out)
        if domain is not None:
            _add_param(d.search_space, origin, flag, domain, f"parameters.{raw_name}", loc, d, out)


def _parallel(sections: dict[str, Any], d: _Derived, origin: dict[str, str], out: _Collector) -> None:
    table = d.spec.parallel_keys
    for key, raw in (sections.get("parallel_config") or {}).items():
        loc: Loc = ["parallel_config", key]
        if key in ("presets", "preset"):
            out.error(loc, "parallel presets are not supported; list the tp/pp/dp values instead")
            continue
        values = raw if isinstance(raw, list) else [raw]
        if key in ("tp", "pp", "dp") and not all(_degree_ok(v) for v in values):
            out.error(loc, f"{key} must be an integer or a list of integers {_degree_rule()}")
            continue
        flag = _flag(key, d, loc, out, mapped=table.get(key))
        if flag is None:
            continue
        domain = _choice(values, loc, out)
        if domain is not None:
            _add_param(d.search_space, origin, flag, domain, f"parallel_config.{key}", loc, d, out)


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
        loc: Loc = ["quant_config", key]
        if _flag(flag, d, loc, out, mapped=flag) is None:
            continue
        shown = ", ".join("(no flag)" if v is None else v for v in mapped)
        out.note(f"quant_config.{key} is applied as engine flag --{flag} ({shown})")
        _add_param(d.search_space, origin, flag, Choice(tuple(mapped)), f"quant_config.{key}", loc, d, out)
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
    _refusals(d, size, out)
    # Only grid and list have a natural end; the others default to 20 experiments.
    limit = {"grid_search": size, "list": len(d.configs) or None}.get(opt.strategy, None)
    cap = current().max_iterations
    d.max_iterations = opt.max_iterations or min(limit or 20, cap)
    if not opt.max_iterations and limit is not None and limit > cap:
        out.note(f"the search space has {limit:,} parameter sets; at most {cap:,} run "
                 f"({env_name('max_iterations')} raises this limit)")
    if opt.max_iterations and limit is not None and opt.max_iterations > limit:
        out.note(f"max_iterations is {opt.max_iterations} but only {limit} parameter set(s) "
                 "exist; the task stops after those")


def _refusals(d: _Derived, size: int | None, out: _Collector) -> None:
    """What the engine refuses by its own argument checks (app.domain.engines.constraints): the
    strategies skip it; a search space with nothing else is refused here instead of failing
    with no experiment. Spaces above REFUSAL_CHECK_LIMIT points are not enumerated."""
    if size is None or size > REFUSAL_CHECK_LIMIT or not d.search_space or d.engine not in d.known:
        return
    engine, names = d.spec, list(d.search_space)
    refused, example = 0, None
    for values in itertools.product(*(d.search_space[n].grid_values() for n in names)):
        problem = engine.refusal(dict(zip(names, values)))
        if problem:
            refused, example = refused + 1, example or problem
    if refused == size:
        out.error(["parameters"], f"{engine.label} refuses every parameter set of this search space by its own "
                                  f"argument checks, e.g. {example}")
    elif refused:
        out.note(f"{refused} of {size} parameter sets are refused by {engine.label}'s own argument checks "
                 f"(e.g. {example}); no experiment runs them")


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
            probe = _Collector()  # per-config notes ("applied as ...") would repeat the parameters' ones
            flag = _flag(name, d, loc, probe)
            problem = (probe.errors[0]["msg"] if flag is None else
                       value_problem(value) or _config_value_problem(flag, value, d))
            if problem:
                out.error(loc, problem)
                ok = False
                continue
            config[flag] = value
        refusal = d.spec.refusal(config) if ok and d.engine in d.known else None
        if refusal:
            out.error(["optimization", "configs", i], f"{d.spec.label} refuses it by its own argument checks: {refusal}")
            ok = False
        if ok:  # repeats are allowed: re-measuring a config is a reason to use this strategy
            d.configs.append(config)


def _config_value_problem(flag: str, value: Any, d: _Derived) -> str | None:
    if flag in d.spec.gpu_flags and not _degree_ok(value):
        return f"--{flag} is a parallelism degree: it must be an integer {_degree_rule()}"
    spec = d.spec.flag(flag)
    return spec.value_problem(value) if spec is not None else None


REFUSAL_CHECK_LIMIT = 10_000  # parameter sets enumerated at validation to count what the engine refuses
_SECTIONS_NEEDED = ("parameters", "parallel_config", "quant_config", "optimization", "base_runtime")


def _objective_level(sections: dict[str, Any], out: _Collector) -> None:
    """objective_level must name one of the benchmark's load levels."""
    opt: Optimization = sections.get("optimization") or Optimization()
    bench: Benchmark = sections.get("benchmark") or Benchmark()
    if opt.objective_level is not None and opt.objective_level not in bench.levels:
        kind = "request_rate" if bench.request_rate else "num_concurrency"
        out.error(["optimization", "objective_level"],
                  f"{opt.objective_level:g} is not one of benchmark.{kind} {[f'{v:g}' for v in bench.levels]}")
    if bench.request_rate and "num_concurrency" in bench.model_fields_set:
        out.note("benchmark.request_rate is set: levels are request rates; num_concurrency is not used")


def _has_slo(sections: dict[str, Any]) -> bool:
    slo = sections.get("slo")
    return slo is not None and bool(slo.ttft or slo.tpot or (slo.latency and any(
        getattr(slo.latency, p) for p in ("p50", "p90", "p95", "p99"))))


def _multi_objectives(opt: Optimization, out: _Collector) -> list[str]:
    """The task's objectives in order: `objectives` when given (distinct; they replace
    `objective` by their first, with a note when it said otherwise), else `objective` alone."""
    if not opt.objectives:
        if opt.reference_point is not None:
            out.error(["optimization", "reference_point"], "a reference point is for two or three `objectives`")
        return [opt.objective]
    names = list(opt.objectives)
    if len(set(names)) != len(names):
        out.error(["optimization", "objectives"], "names an objective twice")
    if "objective" in opt.model_fields_set and opt.objective != names[0]:
        out.note(f"optimization.objective {opt.objective} is replaced by the first of optimization.objectives, "
                 f"{names[0]}")
    if opt.reference_point is not None and len(opt.reference_point) != len(names):
        out.error(["optimization", "reference_point"],
                  f"has {len(opt.reference_point)} figures for {len(names)} objectives")
    return names


def _objective_needs(sections: dict[str, Any], out: _Collector) -> None:
    """What an objective's figure is made of must be in the task (app.domain.objectives:
    `Objective.needs`): SLOs for goodput and the sustainable rate, a GPU price for cost, the
    search's bounds for the sustainable rate."""
    opt: Optimization = sections.get("optimization") or Optimization()
    bench: Benchmark = sections.get("benchmark") or Benchmark()
    names = _multi_objectives(opt, out)
    loc: Loc = ["optimization", "objectives" if opt.objectives else "objective"]
    needed = {OBJECTIVES[name].needs: name for name in names}
    for needs, name in needed.items():
        if needs in ("slo", "rate_search") and not _has_slo(sections):
            out.error(loc, f"{name} counts what meets the task's SLOs: give the task an slo section "
                      "(ttft, tpot or latency)")
        if needs == "price" and opt.gpu_price_per_hour is None:
            out.error(["optimization", "gpu_price_per_hour"], f"{name} needs what one GPU costs per hour (in dollars)")
    if opt.repeats and len(names) > 1:
        out.error(["optimization", "repeats"], "repeats tell a single objective's winner from noise; a "
                  "multi-objective task's answer is its Pareto set")
    if "rate_search" in needed:
        if len(names) > 1:
            out.error(loc, "maximize_sustainable_rate runs a search over rates of its own: it is a task's only objective")
        search = bench.rate_search
        if search is None:
            out.error(["benchmark", "rate_search"], "maximize_sustainable_rate needs the bounds of its search: "
                      "{\"low\": <req/s>, \"high\": <req/s>}")
        elif search.low >= search.high:
            out.error(["benchmark", "rate_search"], f"low ({search.low:g}) must be below high ({search.high:g})")
        if opt.objective_level is not None:
            out.error(["optimization", "objective_level"],
                      "maximize_sustainable_rate reads every rate its search tried, not one level")
    elif bench.rate_search is not None:
        out.note("benchmark.rate_search is only used by the objective maximize_sustainable_rate")


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
    if not failed.intersection(("optimization", "benchmark")):
        _objective_level(sections, out)
        if "slo" not in failed:
            _objective_needs(sections, out)
    d.errors, d.notes = out.errors, out.notes
    return d
