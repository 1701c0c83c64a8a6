"""Value / name checks shared by pydantic fields and the semantic pass.

Parameter names and values end up as engine argv (`--name value`): this is the
security boundary for launch flags."""
from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from app.domain.limits import INT64_MAX, INT64_MIN, MAX_ARG, current, env_name

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
        if len(value) > MAX_ARG:
            return f"must be at most {MAX_ARG:,} characters (it becomes an engine argument), not {len(value):,}"
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


def at_most(limit: str) -> AfterValidator:
    """An upper bound from the limits in force (app.domain.limits), which operators can raise."""

    def check(value: Any) -> Any:
        high = getattr(current(), limit)
        if value > high:
            raise ValueError(f"must be at most {high:,} ({env_name(limit)} raises this limit)")
        return value

    return AfterValidator(check)


# Stored integers fit a signed 64-bit column; floats are finite (an export with a bare
# Infinity is not JSON, and no count or duration is infinite).
Int = Annotated[int, BeforeValidator(_no_bool), Field(ge=INT64_MIN, le=INT64_MAX)]
Float = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
PosInt = Annotated[Int, Field(gt=0)]


def _arg_str(value: Any) -> Any:
    """Strings that end up in argv (model path, dtypes) obey the parameter-value rules."""
    problem = value_problem(value) if isinstance(value, str) else None
    if problem:
        raise ValueError(problem)
    return value


ArgText = Annotated[str, Field(min_length=1, max_length=500), BeforeValidator(_arg_str)]
DtypeList = Annotated[list[ArgText], BeforeValidator(_as_list), Field(min_length=1)]
