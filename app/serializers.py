"""Tasks, experiments and the pool as plain dicts: one shape for the JSON API, the CLI's
`--json` output and the pages, so they can never disagree."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, selectinload

from app.domain.engines.failures import is_infeasible, label as failure_label
from app.domain.states import EXP_STATES
from app.domain.stopping import STOP_REASONS, task_stop_label
from app.store.models import Experiment, Gpu, Task, Worker, gpu_label, utcnow
from app.domain.objectives import OBJECTIVES, direction, figure
from app.results import importance, pareto_set, repeat_verdict


def iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value else None


def sim_clock(spec: Any) -> str | None:
    """Where a simulated task's figures come from: "virtual" (the model's, deterministic) or
    "wall" (measured, lag-checked); None for a real engine."""
    return spec.sim.clock if spec.launcher.simulated and spec.sim is not None else None


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
        "measured": exp.measured,
        "penalty": exp.penalty,
        "slo_ok": exp.slo_ok,
        "error": exp.error,
        "failure_kind": exp.failure_kind,
        "failure": failure_label(exp.failure_kind) or None,
        "infeasible": is_infeasible(exp.failure_kind),
        "stop_reason": exp.stop_reason,
        "stop": STOP_REASONS.get(exp.stop_reason or "") or None,
        "wait_reason": exp.wait_reason,
        "simulated": exp.simulated,
        "repeat_of": exp.repeat_of,
        "seed": exp.seed,
        "warm_from": exp.warm_from,
    }
    if metrics:
        out["metrics"] = exp.metrics
        out["engine_log"] = exp.engine_log
    return out


def best_by_task(session: Session, tasks: list[Task]) -> dict[int, Experiment]:
    """Each task's best successful experiment that meets its SLOs (failed ones never
    qualify), in one query however many tasks: a list page costs the same few queries for
    5 tasks or 200. Ties go to the earlier experiment."""
    if not tasks:
        return {}
    minimizing = [t.id for t in tasks if direction(t.objective) == "minimize"]
    key = case((Experiment.task_id.in_(minimizing), Experiment.objective), else_=-Experiment.objective)
    ranked = (
        select(Experiment.id, func.row_number().over(partition_by=Experiment.task_id,
                                                     order_by=(key.asc(), Experiment.seq.asc())).label("rank"))
        .where(Experiment.task_id.in_([t.id for t in tasks]), Experiment.eligible)
        .subquery()
    )
    best = session.execute(select(Experiment).join(ranked, ranked.c.id == Experiment.id).where(ranked.c.rank == 1)
                           .options(selectinload(Experiment.attempts)))
    return {e.task_id: e for e in best.scalars()}


def best_experiment(session: Session, task: Task) -> Experiment | None:
    return best_by_task(session, [task]).get(task.id)


def counts_by_task(session: Session, task_ids: list[int]) -> dict[int, dict[str, int]]:
    """Experiments per state for each task, in one grouped query."""
    out = {task_id: dict.fromkeys(EXP_STATES, 0) for task_id in task_ids}
    if task_ids:
        rows = session.execute(
            select(Experiment.task_id, Experiment.state, func.count())
            .where(Experiment.task_id.in_(task_ids))
            .group_by(Experiment.task_id, Experiment.state)
        )
        for task_id, state, n in rows:
            if state in out[task_id]:
                out[task_id][state] = n
    return out


def task_dict(session: Session, task: Task, experiments: bool = True) -> dict[str, Any]:
    """One task in full: its summary, a multi-objective task's Pareto set, what the repeats of
    its top configurations say and which flags mattered."""
    out = _summary(task, counts_by_task(session, [task.id])[task.id], best_experiment(session, task), experiments)
    pareto = pareto_set(session, task)
    if pareto is not None:
        out["pareto_set"] = pareto
    repeats = repeat_verdict(session, task)
    if repeats is not None:
        out["repeats"] = repeats
    mattered = importance(session, task)
    if mattered is not None:
        out["importance"] = mattered
    return out


def objectives_of(task: Task) -> list[dict[str, Any]]:
    """The task's objectives with their units: how every view names and labels them."""
    return [OBJECTIVES[name].as_dict() for name in task.parsed_spec.objective_names]


def _summary(task: Task, counts: dict[str, int], best: Experiment | None, experiments: bool) -> dict[str, Any]:
    best_out = None
    if best is not None:
        best_out = experiment_dict(best) | {"launch_command": task.parsed_spec.launch_command(best.params),
                                            "value": figure(best.measured, best.objective, task.objective)}
    end = task.finished_at or utcnow()
    out = {
        "id": task.id,
        "name": task.name,
        "status": task.status,
        "engine": task.engine,
        "deployment_mode": task.deployment_mode,
        "simulated": task.parsed_spec.launcher.simulated,
        "sim_clock": sim_clock(task.parsed_spec),
        "strategy": task.strategy,
        "objective": task.objective,
        "objective_direction": direction(task.objective),
        "objective_unit": OBJECTIVES[task.objective].unit,
        "objective_label": OBJECTIVES[task.objective].label,
        "objectives": objectives_of(task),
        "warm_start_from": task.parsed_spec.optimization.warm_start_from,
        "max_parallel_experiments": task.max_parallel,
        "priority": task.priority,
        "max_iterations": task.max_iterations,
        "counts": counts,
        "best": best_out,
        "error": task.error,
        "stop_reason": task.stop_reason,
        "stop": _task_stop(task),
        "notes": task.notes,
        "created_at": iso(task.created_at),
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
        "elapsed_s": (end - task.started_at).total_seconds() if task.started_at else None,
    }
    if experiments:
        out["experiments"] = [experiment_dict(e) for e in task.experiments]
    return out


def _task_stop(task: Task) -> str | None:
    if task.stop_reason is None:
        return None
    es = task.parsed_spec.optimization.early_stopping
    return task_stop_label(task.stop_reason, es.patience if es else None, es.gpu_hour_budget if es else None)


def pool_dict(session: Session) -> dict[str, Any]:
    holders = {  # only the columns shown: a busy pool of a thousand GPUs has as many holders
        exp_id: {"experiment_id": exp_id, "task_id": task_id, "seq": seq}
        for exp_id, task_id, seq in session.execute(
            select(Experiment.id, Experiment.task_id, Experiment.seq)
            .where(Experiment.id.in_(select(Gpu.held_by).where(Gpu.held_by.is_not(None))))
        )
    }
    workers = session.execute(select(Worker).order_by(Worker.host, Worker.group)).scalars().all()
    now = utcnow()
    gpus = session.execute(select(Gpu).order_by(Gpu.host, Gpu.index, Gpu.slot)).scalars().all()
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
                "id": g.id, "label": g.label, "gpu": gpu_label(g.host, g.index), "host": g.host, "index": g.index,
                "slot": g.slot, "slots": g.slots, "share": g.share, "group": g.group, "worker": g.worker,
                "name": g.name, "memory_mb": g.memory_mb, "simulated": g.simulated, "online": g.online,
                "utilization": g.utilization, "domain": g.domain,
                "fenced_by_attempt": g.fenced_by, "fenced_at": iso(g.fenced_at),
                "quarantined_at": iso(g.quarantined_at), "quarantine_reason": g.quarantine_reason,
                "held_by": holders.get(g.held_by),
            }
            for g in gpus
        ],
    }


def list_tasks(session: Session, limit: int = 200) -> list[dict[str, Any]]:
    """The newest tasks' summaries: four queries whatever the number of tasks."""
    tasks = session.execute(select(Task).order_by(Task.id.desc()).limit(limit)).scalars().all()
    counts = counts_by_task(session, [t.id for t in tasks])
    best = best_by_task(session, tasks)
    return [_summary(t, counts[t.id], best.get(t.id), experiments=False) for t in tasks]
