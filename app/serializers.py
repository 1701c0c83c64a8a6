"""Tasks, experiments and the pool as plain dicts: one shape for the JSON API, the CLI's
`--json` output and the pages, so they can never disagree."""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.domain.engines.failures import is_infeasible, label as failure_label
from app.domain.states import EXP_STATES
from app.store.models import Experiment, Gpu, Task, Worker, utcnow
from app.domain.objectives import direction


def iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value else None


def experiment_dict(exp: Experiment, metrics: bool = False) -> dict[str, Any]:
    out = {
        "id": exp.id,
        "task_id": exp.task_id,
        "seq": exp.seq,
        "params": exp.params,
        "state": exp.state,
        "phase": exp.phase,
        "attempts": exp.attempt,
        "attempt_history": [
            {
                "number": a.number, "state": a.state, "worker": a.worker, "host": a.host, "gpus": a.gpus,
                "queued_at": iso(a.queued_at), "started_at": iso(a.started_at),
                "finished_at": iso(a.finished_at), "error": a.error,
                "failure_kind": a.failure_kind, "failure": failure_label(a.failure_kind) or None,
                "engine": a.engine, "engine_gone_at": iso(a.engine_gone_at),
            }
            for a in exp.attempts
        ],
        "gpus_needed": exp.gpus_needed,
        "gpus": exp.gpus,
        "worker": exp.worker,
        "host": exp.host,
        "queued_at": iso(exp.queued_at),
        "started_at": iso(exp.started_at),
        "finished_at": iso(exp.finished_at),
        "objective": exp.objective,
        "slo_ok": exp.slo_ok,
        "error": exp.error,
        "failure_kind": exp.failure_kind,
        "failure": failure_label(exp.failure_kind) or None,
        "infeasible": is_infeasible(exp.failure_kind),
        "wait_reason": exp.wait_reason,
        "simulated": exp.simulated,
    }
    if metrics:
        out["metrics"] = exp.metrics
        out["engine_log"] = exp.engine_log
    return out


def best_experiment(session: Session, task: Task) -> Experiment | None:
    """The best successful experiment that meets its SLOs; failed ones never qualify."""
    order = Experiment.objective.asc() if direction(task.objective) == "minimize" else Experiment.objective.desc()
    return session.execute(
        select(Experiment)
        .where(
            Experiment.task_id == task.id,
            Experiment.eligible,
        )
        .order_by(order, Experiment.seq)
        .limit(1)
    ).scalar_one_or_none()


def counts(session: Session, task_id: int) -> dict[str, int]:
    found = Counter(
        dict(
            session.execute(
                select(Experiment.state, func.count()).where(Experiment.task_id == task_id).group_by(Experiment.state)
            ).all()
        )
    )
    return {state: found.get(state, 0) for state in EXP_STATES}


def task_dict(session: Session, task: Task, experiments: bool = True) -> dict[str, Any]:
    best = best_experiment(session, task)
    best_out = None
    if best is not None:
        best_out = experiment_dict(best) | {"launch_command": task.parsed_spec.launch_command(best.params)}
    end = task.finished_at or utcnow()
    out = {
        "id": task.id,
        "name": task.name,
        "status": task.status,
        "engine": task.engine,
        "deployment_mode": task.deployment_mode,
        "simulated": task.parsed_spec.launcher.simulated,
        "strategy": task.strategy,
        "objective": task.objective,
        "objective_direction": direction(task.objective),
        "max_parallel_experiments": task.max_parallel,
        "priority": task.priority,
        "max_iterations": task.max_iterations,
        "counts": counts(session, task.id),
        "best": best_out,
        "error": task.error,
        "notes": task.notes,
        "created_at": iso(task.created_at),
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
        "elapsed_s": (end - task.started_at).total_seconds() if task.started_at else None,
    }
    if experiments:
        out["experiments"] = [experiment_dict(e) for e in task.experiments]
    return out


def pool_dict(session: Session) -> dict[str, Any]:
    holders = {
        e.id: e
        for e in session.execute(
            select(Experiment).where(Experiment.id.in_(select(Gpu.held_by).where(Gpu.held_by.is_not(None))))
        ).scalars()
    }
    workers = session.execute(select(Worker).order_by(Worker.host, Worker.group)).scalars().all()
    now = utcnow()
    gpus = session.execute(select(Gpu).order_by(Gpu.host, Gpu.index)).scalars().all()
    from app.backlog import backlog

    return {
        "backlog": backlog(session),
        "workers": [
            {
                "name": w.name, "group": w.group, "host": w.host, "queue": w.queue, "slots": w.slots,
                "simulated": w.simulated, "online": w.online, "started_at": iso(w.started_at),
                "last_heartbeat": iso(w.last_heartbeat), "heartbeat_age_s": (now - w.last_heartbeat).total_seconds(),
            }
            for w in workers
        ],
        "gpus": [
            {
                "id": g.id, "label": g.label, "host": g.host, "index": g.index, "group": g.group, "worker": g.worker,
                "name": g.name, "memory_mb": g.memory_mb, "simulated": g.simulated, "online": g.online,
                "utilization": g.utilization,
                "fenced_by_attempt": g.fenced_by, "fenced_at": iso(g.fenced_at),
                "quarantined_at": iso(g.quarantined_at), "quarantine_reason": g.quarantine_reason,
                "held_by": (
                    {"experiment_id": g.held_by, "task_id": holders[g.held_by].task_id, "seq": holders[g.held_by].seq}
                    if g.held_by in holders else None
                ),
            }
            for g in gpus
        ],
    }


def list_tasks(session: Session, limit: int = 200) -> list[dict[str, Any]]:
    tasks = session.execute(select(Task).order_by(Task.id.desc()).limit(limit)).scalars().all()
    return [task_dict(session, t, experiments=False) for t in tasks]
