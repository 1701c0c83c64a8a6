"""The OpenAPI description of the JSON API, served at /api/openapi.json.

It is also what CI fuzzes (tests/test_api_fuzz.py, schemathesis): request schemas say what
a client may send, and every operation lists the refusals it can give, all in the one
error shape. Path ids are plain integers on purpose: the fuzzer then also tries ids no
column can hold, which must be a JSON 404 like any unknown id.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.domain.engines import SIMULATOR, builtin_engines, engines
from app.domain.objectives import OBJECTIVES
from app.domain.strategies import STRATEGIES
from app.domain.taskspec import TaskSpec

ERRORS = {
    "type": "object",
    "required": ["errors"],
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"loc": {"type": "array", "items": {}}, "msg": {"type": "string"}},
                "required": ["loc", "msg"],
            },
        }
    },
}
_REFS = "#/components/schemas/{model}"


def task_schemas(model: type[BaseModel] = TaskSpec) -> dict[str, Any]:
    """The task file's schema and its sections', for components/schemas: the model's own
    JSON schema (what validation checks field by field; the semantic checks it cannot say
    answer 422), with the names the registries know as of now: strategies, objectives and
    engines (an operator's engines file included; `base_runtime` also takes an OME runtime
    name, so its engines are examples, not a closed list)."""
    schema = _bounds(model.model_json_schema(ref_template=_REFS))
    schemas = schema.pop("$defs", {})
    schemas["Task"] = schema
    optimization = _section(schemas, schema, "optimization")
    if optimization is not None:
        optimization["properties"]["strategy"]["enum"] = list(STRATEGIES)
        optimization["properties"]["objective"]["enum"] = list(OBJECTIVES)
    try:
        names = sorted(engines()) + [SIMULATOR.name]
    except ValueError:  # a broken engines file: submission says so; the document still serves
        names = sorted(builtin_engines()) + [SIMULATOR.name]
    schema["properties"]["base_runtime"]["examples"] = names
    return schemas


_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def _bounds(node: Any) -> Any:
    """Pydantic writes the bounds of a number it validates with a function first (our Int
    and Float refuse booleans that way) under their Python names (ge, gt, ...): give them
    their JSON schema names, so clients and fuzzers see them."""
    if isinstance(node, list):
        return [_bounds(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {_BOUNDS[key] if key in _BOUNDS and "type" in node else key: _bounds(value) for key, value in node.items()}


def _section(schemas: dict[str, Any], schema: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The schema of one section of the task (the component its property refers to)."""
    ref = schema["properties"].get(name, {}).get("$ref", "")
    return schemas.get(ref.rsplit("/", 1)[-1]) if ref else None


OBJ = {"type": "object"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Errors"}, description)


def _path_id(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}]


def _read(summary: str, ok: str, params: list[dict[str, Any]] | None = None, *, found: bool = True) -> dict[str, Any]:
    responses = {"200": _json(OBJ, ok), "401": errors("A token is required to read")}
    if found:
        responses["404"] = errors("Not found")
    return {"summary": summary, "parameters": params or [], "responses": responses}


def _write(summary: str, ok: str, params: list[dict[str, Any]] | None = None, *, status: str = "200",
           body: dict[str, Any] | None = None, **more: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "description": "Needs the user token as a bearer token, or a logged-in session with the "
                       "CSRF token in the X-CSRFToken header.",
        "security": [{"bearer": []}, {}],
        "parameters": params or [],
        "responses": {status: _json(OBJ, ok), "400": errors("Malformed body, or CSRF token missing"),
                      "401": errors("Token required"), "403": errors("Viewer token, or a cross-origin request"),
                      **more},
    }
    if body is not None:
        op["requestBody"] = body
    return op


def openapi_document() -> dict[str, Any]:
    task_id = _path_id("task_id")
    page = [
        {"name": "page", "in": "query", "schema": {"type": "integer"}},
        {"name": "per_page", "in": "query", "schema": {"type": "integer"}},
        {"name": "state", "in": "query", "schema": {"type": "string"}},
        {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]}},
    ]
    task_body = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Task"}}}}
    conflict = {"404": errors("No such task"), "409": errors("Not possible in the task's state")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "LLM inference autotuner API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Errors": ERRORS, **task_schemas()},
        },
        "paths": {
            "/api/tasks": {
                "get": _read("List tasks, newest first", "Tasks", found=False),
                "post": _write("Submit a task (the task file as JSON)", "The stored task", status="201",
                               body=task_body, **{"413": errors("Body too large"),
                                                  "422": errors("Every problem of the task file")}),
            },
            "/api/tasks/{task_id}": {
                "get": _read("A task: status, counts by state, best experiment", "The task", task_id),
                "delete": _write("Delete a finished task and all its results", "Deleted", task_id, **conflict),
                "patch": _write("Change a running task's max_parallel_experiments and/or priority", "The new values",
                                task_id, body={"required": True, "content": {"application/json": {"schema": {
                                    "type": "object", "additionalProperties": False, "minProperties": 1,
                                    "properties": {"max_parallel_experiments": {"type": "integer", "minimum": 1},
                                                   "priority": {"type": "integer", "minimum": -1000,
                                                                "maximum": 1000}}}}}},
                                **conflict, **{"422": errors("A value out of range")}),
            },
            "/api/tasks/{task_id}/experiments": {
                "get": _read("A task's experiments with every attempt", "Experiments",
                             task_id + [{"name": "metrics", "in": "query", "schema": {"type": "boolean"}}]),
            },
            "/api/tasks/{task_id}/cancel": {"post": _write("Cancel a task", "Cancelling", task_id, **conflict)},
            "/api/tasks/{task_id}/retry": {
                "post": _write("Run the failed and timed-out experiments again (new attempts)",
                               "How many were retried", task_id, **conflict),
            },
            "/api/experiments/{experiment_id}": {
                "get": _read("One experiment with its metrics and engine log", "The experiment",
                             _path_id("experiment_id")),
            },
            "/api/pool": {"get": _read("Workers, GPUs and who holds each", "The pool", found=False)},
            "/api/gpus/{label}/clear-quarantine": {
                "post": _write("Make a quarantined GPU allocatable again (label HOST:INDEX)", "Cleared",
                               [{"name": "label", "in": "path", "required": True, "schema": {"type": "string"}}],
                               **{"404": errors("No such GPU"), "422": errors("Not a HOST:INDEX label")}),
            },
            "/api/tasks/{task_id}/export": {
                "get": _read("The task, its spec and every experiment with metrics", "Export", task_id),
            },
            "/api/tasks/{task_id}/live": {
                "get": _read("Task summary and one page of experiments (what the live page polls)",
                             "Summary and page", task_id + page),
            },
            "/api/tasks/{task_id}/charts": {
                "get": _read("Chart series aggregated on the server", "Series", task_id),
            },
            "/api/tasks/parse": {
                "post": {
                    "summary": "Normalise a JSON or YAML task file (nothing is stored)",
                    "parameters": [{"name": "form", "in": "query", "schema": {"type": "string", "enum": ["1"]}}],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": {"oneOf": [
                            {"$ref": "#/components/schemas/Task"},
                            {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
                        ]}},
                        "text/plain": {"schema": {"type": "string"}},
                    }},
                    "responses": {"200": _json(OBJ, "The normalised task (or its form layout)"),
                                  "413": errors("Body too large"),
                                  "422": errors("Every problem (YAML aliases and over-deep nesting included)")},
                }
            },
            "/api/tasks/preview": {
                "post": {
                    "summary": "How many experiments a task would run and the GPUs each needs",
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Task"}},
                        "application/x-www-form-urlencoded": {"schema": OBJ},
                    }},
                    "responses": {"200": _json(OBJ, "Preview (errors listed inside)"),
                                  "413": errors("Body too large"), "422": errors("Not a JSON object")},
                }
            },
        },
    }
