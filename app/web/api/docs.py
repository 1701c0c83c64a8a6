"""/api/openapi.json: the OpenAPI description of this API."""
from __future__ import annotations

from flask import jsonify

from app.web.api import bp
from app.web.api.openapi import openapi_document


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())
