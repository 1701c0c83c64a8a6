"""Request input the routing and JSON layers must refuse before any view runs.

- Ids in URLs: `<int:...>` accepts any number of digits, and an id past the column's range
  made the database driver raise (HTML 500). Ids are INTEGER columns, so a larger one
  cannot exist: it does not match the route and is a plain 404.
- JSON bodies: the standard parser recurses once per nesting level, so a body nested 10^5
  deep raised RecursionError (500). Here it is a decoding error like any other malformed
  body (400/422 with a JSON error); the task document's own depth limit is tighter still.
"""
from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider
from werkzeug.routing import IntegerConverter, Map

from app.domain.limits import MAX_DEPTH

MAX_ID = 2**31 - 1  # ids are INTEGER columns (32-bit on PostgreSQL)


class IdConverter(IntegerConverter):
    """`<int:...>` limited to what an id column can hold."""

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, with too-deep documents refused as invalid JSON."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError(f"JSON nested far deeper than the {MAX_DEPTH} levels a task may have") from None
