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

# The package replaces the former single module; every name it defined is re-exported
# here so that `from app.taskspec import X` keeps working.
from .errors import (
    _Collector,
    format_loc,
    Loc,
    pydantic_errors,
    _PYDANTIC_MESSAGES,
    TaskSpecError,
)
from .domains import (
    Choice,
    Domain,
    FloatRange,
    IntRange,
    Scalar,
)
from .values import (
    _arg_str,
    ArgText,
    _as_list,
    DtypeList,
    Float,
    Int,
    name_problem,
    _no_bool,
    PARAM_NAME_RE,
    PosInt,
    _traffic,
    _TRAFFIC_RE,
    _UNSAFE_CHARS_RE,
    value_problem,
)
from .sections import (
    Benchmark,
    DeploymentMode,
    ImageTag,
    LatencySLO,
    ModelRef,
    Objective,
    Optimization,
    QuantConfig,
    RuntimeName,
    SimConfig,
    SLO,
    SLOTarget,
    Strategy,
    _STRICT,
    _task_name,
    TaskName,
    TrafficScenario,
)
from .names import (
    _ALIASES,
    AXIS_NAMES,
    engine_of,
    _GEMM_OFF,
    _KV_OFF,
    normalise_name,
    _PARALLEL_FLAGS,
    _VLLM_SPELLING,
)
from .normalise import (
    _add_param,
    _axis,
    _choice,
    _ChoiceDef,
    _configs,
    _DEF_MODELS,
    _degree_ok,
    _degrees_ok,
    _derive,
    _Derived,
    _domain,
    _FloatDef,
    _IntDef,
    _optimization,
    _parallel,
    _parameters,
    _quant,
    _runtime,
    _SECTIONS_NEEDED,
    _show,
)
from .spec import (
    TaskSpec,
)
from .loader import (
    _field_adapter,
    _FIELD_ADAPTERS,
    load_task_file,
    parse_task,
    _parse_text,
)

__all__ = [
    "Loc",
    "TaskSpecError",
    "format_loc",
    "Scalar",
    "Choice",
    "FloatRange",
    "IntRange",
    "Domain",
    "PARAM_NAME_RE",
    "value_problem",
    "name_problem",
    "Int",
    "Float",
    "PosInt",
    "ArgText",
    "DtypeList",
    "ModelRef",
    "SLOTarget",
    "LatencySLO",
    "SLO",
    "TrafficScenario",
    "Benchmark",
    "Strategy",
    "Objective",
    "Optimization",
    "QuantConfig",
    "SimConfig",
    "TaskName",
    "RuntimeName",
    "ImageTag",
    "DeploymentMode",
    "AXIS_NAMES",
    "engine_of",
    "normalise_name",
    "TaskSpec",
    "pydantic_errors",
    "parse_task",
    "load_task_file",
]
