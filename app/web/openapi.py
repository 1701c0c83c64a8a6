"""The OpenAPI description of the JSON API, served at /api/openapi.json."""
from __future__ import annotations

from typing import Any

ERRORS = {
    "type": "object",
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


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Errors"}, description)


def openapi_document() -> dict[str, Any]:
    obj = {"type": "object"}
    task_id = [{"name": "task_id", "in": "path", "required": True, "schema": {"type": "integer"}}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "LLM inference autotuner API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Errors": ERRORS},
        },
        "paths": {
            "/api/tasks": {
                "get": {"summary": "List tasks", "responses": {"200": _json(obj, "Tasks, newest first")}},
                "post": {
                    "summary": "Submit a task (the task file as JSON)",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": obj}}},
                    "responses": {
                        "201": _json(obj, "The stored task"),
                        "401": errors("Token required"),
                        "422": errors("Every problem of the task file"),
                    },
                },
            },
            "/api/tasks/{task_id}": {
                "get": {
                    "summary": "A task: status, counts by state, best experiment",
                    "parameters": task_id,
                    "responses": {"200": _json(obj, "The task"), "404": errors("No such task")},
                },
                "delete": {
                    "summary": "Delete a finished task and all its results",
                    "security": [{"bearer": []}],
                    "parameters": task_id,
                    "responses": {"200": _json(obj, "Deleted"), "404": errors("No such task"),
                                  "409": errors("The task has not finished")},
                },
            },
            "/api/tasks/{task_id}/experiments": {
                "get": {
                    "summary": "A task's experiments with every attempt",
                    "parameters": task_id + [{"name": "metrics", "in": "query", "schema": {"type": "boolean"}}],
                    "responses": {"200": _json(obj, "Experiments"), "404": errors("No such task")},
                }
            },
            "/api/tasks/{task_id}/cancel": {
                "post": {
                    "summary": "Cancel a task",
                    "security": [{"bearer": []}],
                    "parameters": task_id,
                    "responses": {
                        "200": _json(obj, "Cancelling"),
                        "401": errors("Token required"),
                        "404": errors("No such task"),
                        "409": errors("Already finished"),
                    },
                }
            },
            "/api/experiments/{experiment_id}": {
                "get": {
                    "summary": "One experiment with its metrics and engine log",
                    "parameters": [{"name": "experiment_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "responses": {"200": _json(obj, "The experiment"), "404": errors("Not found")},
                }
            },
            "/api/pool": {"get": {"summary": "Workers, GPUs and who holds each", "responses": {"200": _json(obj, "The pool")}}},
            "/api/gpus/{label}/clear-quarantine": {
                "post": {
                    "summary": "Make a quarantined GPU allocatable again (label HOST:INDEX)",
                    "security": [{"bearer": []}],
                    "parameters": [{"name": "label", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json(obj, "Cleared"), "401": errors("Token required"),
                                  "404": errors("No such GPU"), "422": errors("Not a HOST:INDEX label")},
                }
            },
            "/api/tasks/{task_id}/retry": {
                "post": {
                    "summary": "Run the failed and timed-out experiments again (new attempts)",
                    "security": [{"bearer": []}],
                    "parameters": task_id,
                    "responses": {"200": _json(obj, "How many were retried"), "404": errors("No such task"),
                                  "409": errors("Nothing to retry, or the task is cancelled")},
                }
            },
            "/api/tasks/{task_id}/export": {
                "get": {"summary": "The task, its spec and every experiment with metrics", "parameters": task_id,
                        "responses": {"200": _json(obj, "Export"), "404": errors("No such task")}}
            },
            "/api/tasks/{task_id}/live": {
                "get": {
                    "summary": "Task summary and one page of experiments (what the live page polls)",
                    "parameters": task_id + [
                        {"name": "page", "in": "query", "schema": {"type": "integer"}},
                        {"name": "per_page", "in": "query", "schema": {"type": "integer", "maximum": 200}},
                        {"name": "state", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _json(obj, "Summary and page"), "404": errors("No such task")},
                }
            },
            "/api/tasks/{task_id}/charts": {
                "get": {"summary": "Chart series aggregated on the server", "parameters": task_id,
                        "responses": {"200": _json(obj, "Series"), "404": errors("No such task")}}
            },
            "/api/tasks/parse": {
                "post": {"summary": "Normalise a JSON or YAML task file (nothing is stored)",
                         "responses": {"200": _json(obj, "The normalised task"), "422": errors("Every problem")}}
            },
            "/api/tasks/preview": {
                "post": {"summary": "How many experiments a task would run and the GPUs each needs",
                         "responses": {"200": _json(obj, "Preview")}}
            },
        },
    }
