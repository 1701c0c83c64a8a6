"""The one way a view looks up a row by id: missing means 404, as JSON under /api and as the
short HTML page elsewhere (app/web/errors.py turns NotFound into either)."""
from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.orm import Session

from app.task_service import NotFound

T = TypeVar("T")


def get_or_404(session: Session, model: type[T], ident: Any) -> T:
    """The `model` row with primary key `ident`, or NotFound naming it ("task 7 not found")."""
    row = session.get(model, ident)
    if row is None:
        raise NotFound(model.__tablename__.rstrip("s"), ident)  # type: ignore[attr-defined]
    return row
