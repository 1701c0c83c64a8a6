"""The backlog: experiments that wait for GPUs, by how many GPUs they need and where they
will run, with why they wait. Experiments wait in the store until GPUs are free (the broker's
queues only ever hold placed jobs, so their lengths stay near zero): this is the number an
operator or an autoscaler watches to add workers (`autotuner_experiments_waiting` in /metrics).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.domain.states import ExperimentState
from app.store.models import Experiment


def backlog(session: Session) -> list[dict[str, Any]]:
    """One row per (group, GPUs needed): `waiting` pending experiments (group "" while not yet
    placed) or `queued` ones placed on a group whose worker has not taken them yet, with the
    wait reasons counted."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    found = session.execute(  # counted by the database: ten thousand waiting rows stay there
        select(Experiment.state, Experiment.group, Experiment.gpus_needed, Experiment.wait_reason, func.count())
        .where(Experiment.state.in_((ExperimentState.PENDING, ExperimentState.QUEUED)))
        .group_by(Experiment.state, Experiment.group, Experiment.gpus_needed, Experiment.wait_reason)
    ).all()
    for state, group, gpus, reason, n in found:
        key = (group or "", int(gpus or 1))
        row = rows.setdefault(key, {"group": key[0], "gpus": key[1], "waiting": 0, "queued": 0, "reasons": Counter()})
        row["waiting" if state == ExperimentState.PENDING else "queued"] += n
        if state == ExperimentState.PENDING and reason:
            row["reasons"][reason] += n
    return [dict(r, reasons=dict(r["reasons"].most_common(5))) for _, r in sorted(rows.items())]
