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
                        "401": _json({"$ref": "#/components/schemas/Errors"}, "Token required"),
                        "422": _json({"$ref": "#/components/schemas/Errors"}, "Every problem of the task file"),
                    },
                },
            },
            "/api/tasks/{task_id}": {
                "get": {
                    "summary": "A task: status, counts by state, best experiment",
                    "parameters": task_id,
                    "responses": {"200": _json(obj, "The task"), "404": _json({"$ref": "#/components/schemas/Errors"}, "No such task")},
                }
            },
            "/api/tasks/{task_id}/experiments": {
                "get": {
                    "summary": "A task's experiments with every attempt",
                    "parameters": task_id + [{"name": "metrics", "in": "query", "schema": {"type": "boolean"}}],
                    "responses": {"200": _json(obj, "Experiments"), "404": _json({"$ref": "#/components/schemas/Errors"}, "No such task")},
                }
            },
            "/api/tasks/{task_id}/cancel": {
                "post": {
                    "summary": "Cancel a task",
                    "security": [{"bearer": []}],
                    "parameters": task_id,
                    "responses": {
                        "200": _json(obj, "Cancelling"),
                        "401": _json({"$ref": "#/components/schemas/Errors"}, "Token required"),
                        "404": _json({"$ref": "#/components/schemas/Errors"}, "No such task"),
                        "409": _json({"$ref": "#/components/schemas/Errors"}, "Already finished"),
                    },
                }
            },
            "/api/experiments/{experiment_id}": {
                "get": {
                    "summary": "One experiment with its metrics and engine log",
                    "parameters": [{"name": "experiment_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "responses": {"200": _json(obj, "The experiment"), "404": _json({"$ref": "#/components/schemas/Errors"}, "Not found")},
                }
            },
            "/api/pool": {"get": {"summary": "Workers, GPUs and who holds each", "responses": {"200": _json(obj, "The pool")}}},
        },
    }
