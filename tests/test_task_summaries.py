"""Task summaries for the list endpoints are computed for all tasks at once: each task's best
experiment is the one the straightforward rule picks (eligible, best objective in the task's
direction, the earlier on a tie), on both databases, and the list's cost in queries does not
grow with the number of tasks."""
from __future__ import annotations

import random

import pytest
from sqlalchemy import event

from tests.test_web_task_page import add_experiments, make_task, spec_dict

pytestmark = pytest.mark.process

OBJECTIVES = ["maximize_throughput", "minimize_latency", "minimize_ttft", "maximize_throughput"]


def _random_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        state = rng.choice(["succeeded", "succeeded", "succeeded", "failed", "running"])
        objective = rng.choice([None, 10.0, 20.0, 20.0, rng.uniform(1, 30)]) if state != "running" else None
        rows.append({"state": state, "objective": objective, "slo_ok": rng.choice([True, True, False, None])})
    return rows


def _straightforward_best(rows: list[dict], minimize: bool) -> int | None:
    """The rule, written out: the seq of the best eligible row, earlier seq on a tie."""
    eligible = [(row["objective"], seq) for seq, row in enumerate(rows, start=1)
                if row["state"] == "succeeded" and row["objective"] is not None and row["slo_ok"] is not False]
    if not eligible:
        return None
    return min(eligible, key=lambda p: (p[0] if minimize else -p[0], p[1]))[1]


def test_best_of_every_task_in_one_query_matches_the_rule(database_url):
    from app.domain.objectives import direction
    from app.serializers import best_by_task, best_experiment
    from app.store.db import session_scope
    from app.store.models import Task

    rng = random.Random(7)
    expected: dict[int, int | None] = {}
    for round_ in range(3):
        for objective in OBJECTIVES:
            rows = _random_rows(rng, rng.randint(0, 12))
            task_id = make_task(spec_dict(objective=objective))
            add_experiments(task_id, rows)
            expected[task_id] = _straightforward_best(rows, direction(objective) == "minimize")
    with session_scope(readonly=True) as s:
        tasks = s.query(Task).all()
        best = best_by_task(s, tasks)
        assert {t.id: best[t.id].seq if t.id in best else None for t in tasks} == expected
        for t in tasks:  # the one-task form is the same rule
            one = best_experiment(s, t)
            assert (one.seq if one else None) == expected[t.id]


def test_the_task_list_costs_the_same_queries_for_two_tasks_or_twelve(database_url):
    from app.serializers import list_tasks
    from app.store.db import get_engine, session_scope

    def queries_for_list() -> tuple[int, int]:
        count = [0]

        def counter(*_args, **_kwargs):
            count[0] += 1

        event.listen(get_engine(), "before_cursor_execute", counter)
        try:
            with session_scope(readonly=True) as s:
                listed = list_tasks(s)
        finally:
            event.remove(get_engine(), "before_cursor_execute", counter)
        return count[0], len(listed)

    rng = random.Random(3)
    for _ in range(2):
        add_experiments(make_task(), _random_rows(rng, 6))
    few = queries_for_list()
    for _ in range(10):
        add_experiments(make_task(), _random_rows(rng, 6))
    many = queries_for_list()
    assert (few[1], many[1]) == (2, 12) and few[0] == many[0], (few, many)
