"""Which fields of the task the New task form shows, declared on the model itself.

A field of `TaskSpec` (or of one of its sections) that carries an `OnForm` marker in its
`Annotated[...]` metadata is a form field; `form_fields(model)` walks the models and lists
them with their path in the task, their kind (read from the field's type) and their
default. The web form (app/web/forms.py), its error mapping (app/web/submit.py) and the
page's script all read this list, and the API's OpenAPI document is the models' own JSON
schema (app/web/api/openapi.py): a field is declared once, here, and every edge follows.
Fields without a marker still reach the form through its "Other settings" JSON box.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

Kind = Literal["text", "number", "choice", "list_text", "list_number", "json", "target"]


@dataclass(frozen=True)
class OnForm:
    """Marks a model field as a field of the New task form.

    `name`: the form field's name (default: the model field's); `section`: the fieldset it
    is shown in (default: the first part of its path); `choices`: a registry whose entries
    are the choices ("strategies", "objectives", "engines"; default: a Literal's values);
    `group`: fields shown or hidden together by the page's script ("sim", "docker",
    "list"); `hint`: a line of help shown under it."""

    label: str
    name: str | None = None
    section: str | None = None
    choices: str | None = None
    group: str | None = None
    hint: str | None = None


@dataclass(frozen=True)
class FormField:
    """One field of the form: where its value goes in the task and how it is written."""

    name: str
    path: tuple[str, ...]
    label: str
    kind: Kind
    section: str
    default: Any = None  # the model's default where the section always exists, else None
    choices: str | tuple[str, ...] | None = None
    group: str | None = None
    hint: str | None = None


def _unwrap(annotation: Any) -> Any:
    """The type under Optional[...] and Annotated[...]."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _kind(annotation: Any) -> Kind:
    """How the form writes a value of this type: a text box, a number, a select, a comma
    separated list, a JSON box, or an SLO target (threshold and hard-fail box)."""
    base = _unwrap(annotation)
    origin = get_origin(base)
    if origin is Literal:
        return "choice"
    if origin is list:
        (item,) = get_args(base) or (Any,)
        item = _unwrap(item)
        if item is str:
            return "list_text"
        if item in (int, float):
            return "list_number"
        return "json"
    if origin is dict or base is dict or base is Any:
        return "json"
    if _is_model(base):
        return "target"
    if base in (int, float):
        return "number"
    return "text"


def _default(info: Any) -> Any:
    if info.default_factory is not None:
        return info.default_factory()
    return None if info.default is PydanticUndefined else info.default


@lru_cache(maxsize=None)
def form_fields(model: type[BaseModel]) -> tuple[FormField, ...]:
    """The form fields of `model` and its sections, in declaration order."""
    return tuple(_walk(model, (), always=True))


def _walk(model: type[BaseModel], prefix: tuple[str, ...], always: bool):
    for name, info in model.model_fields.items():
        path = prefix + (name,)
        marker = next((m for m in info.metadata if isinstance(m, OnForm)), None)
        base = _unwrap(info.annotation)
        if marker is None:
            if _is_model(base):  # a section: always there when required or made by default
                yield from _walk(base, path, always and (info.is_required() or _default(info) is not None))
            continue
        kind: Kind = "choice" if marker.choices else _kind(info.annotation)
        choices = marker.choices or (tuple(get_args(base)) if kind == "choice" else None)
        yield FormField(
            name=marker.name or name, path=path, label=marker.label, kind=kind,
            section=marker.section or path[0], default=_default(info) if always else None,
            choices=choices, group=marker.group, hint=marker.hint,
        )
