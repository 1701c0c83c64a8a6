"""Entry points: parse and validate a task given as a dict or as a JSON/YAML file."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from .documents import DocumentError, document_problems, load_text
from .errors import TaskSpecError, pydantic_errors
from .normalise import _derive
from .spec import TaskSpec


def _field_adapter(info: Any) -> TypeAdapter[Any]:
    """Validator for one top-level field alone, so a broken section does not hide the
    semantic errors of the others."""
    if info.metadata:
        return TypeAdapter(Annotated[(info.annotation, *info.metadata)])  # type: ignore[misc]
    return TypeAdapter(info.annotation)


_FIELD_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: _field_adapter(info) for name, info in TaskSpec.model_fields.items()
}


def parse_task(data: Any) -> TaskSpec:
    """Validate a task given as a dict; raise TaskSpecError listing every problem."""
    if not isinstance(data, dict):
        raise TaskSpecError([{"loc": [], "msg": f"a task must be a mapping, not {type(data).__name__}"}])
    problems = document_problems(data)
    if problems:  # nothing else is looked at: validating an oversized document is work too
        raise TaskSpecError(problems)
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
    try:
        return load_text(text, as_json=as_json)
    except DocumentError as exc:
        raise TaskSpecError([{"loc": [], "msg": f"{path}: {exc}"}]) from None


def stored_spec(data: dict[str, Any]) -> TaskSpec:
    """A task as the store keeps it (validated and normalised at submission), parsed once per
    distinct content: every reader of a stored task (coordinator, worker, pages) gets the same
    typed object with its defaults, instead of reading the raw dict. Do not mutate it."""
    return _parse_stored(json.dumps(data))  # key order kept: it is the order of the parameters


@lru_cache(maxsize=256)
def _parse_stored(text: str) -> TaskSpec:
    return parse_task(json.loads(text))
