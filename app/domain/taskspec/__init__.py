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

from .domains import Choice, Domain, FloatRange, IntRange
from .errors import TaskSpecError, format_loc
from .loader import load_task_file, parse_task, stored_spec
from .spec import TaskSpec
from .values import name_problem, value_problem

__all__ = [
    "Choice",
    "Domain",
    "FloatRange",
    "IntRange",
    "TaskSpec",
    "TaskSpecError",
    "format_loc",
    "load_task_file",
    "name_problem",
    "parse_task",
    "stored_spec",
    "value_problem",
]
