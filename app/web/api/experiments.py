"""/api/experiments/<id>: one experiment with its metrics, attempts and engine log."""
from __future__ import annotations

from flask import jsonify

from app.serializers import experiment_dict
from app.store.db import session_scope
from app.store.models import Experiment
from app.web.api import bp
from app.web.lookup import get_or_404


@bp.get("/experiments/<int:experiment_id>")
def experiment(experiment_id: int):
    with session_scope(readonly=True) as session:
        return jsonify(experiment_dict(get_or_404(session, Experiment, experiment_id), metrics=True))
