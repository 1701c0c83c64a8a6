"""Schema migrations that change tables with history: applied, undone and applied again on
both databases, the rows (and their children) kept."""
from __future__ import annotations

import pytest

from tests.helpers import migration_config, schema_diff


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_retried_after_migration_keeps_experiments_and_their_attempts(kind, request):
    """0016 -> 0017 -> 0016 -> 0017 with an experiment and its attempt stored: the experiment
    reads `retried_after` 0, its attempt survives the downgrade (a table rebuild on SQLite
    would drop `experiments` and cascade to `attempts`), and the columns match the models."""
    from alembic import command
    from sqlalchemy import text

    engine, cfg = migration_config(request, kind)
    command.upgrade(cfg, "0016")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tasks (id, name, status, spec, engine, deployment_mode, strategy, objective,"
                          " max_parallel, max_iterations, priority, notes, created_at, predicted_from)"
                          " VALUES (1, 't', 'running', '{}', 'sglang', 'process', 'grid', 'minimize_latency', 1, 1, 0,"
                          " '[]', CURRENT_TIMESTAMP, 0)"))
        conn.execute(text("INSERT INTO experiments (id, task_id, seq, params, gpus_needed, state, attempt, gpus,"
                          " created_at, simulated) VALUES (1, 1, 0, '{}', 1, 'failed', 1, '[]', CURRENT_TIMESTAMP, false)"))
        conn.execute(text("INSERT INTO attempts (experiment_id, number, state, gpus, queued_at)"
                          " VALUES (1, 1, 'lost', '[]', CURRENT_TIMESTAMP)"))
    with engine.connect() as conn:  # the store's own connection (SQLite: foreign keys on), as app.store.migrate
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        command.downgrade(cfg, "0016")
        command.upgrade(cfg, "head")
        conn.commit()
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, retried_after FROM experiments")).all() == [(1, 0)]
        assert conn.execute(text("SELECT experiment_id, number FROM attempts")).all() == [(1, 1)]
    # The columns as the models say (SQLite's reflection cannot compare the expression index
    # `ix_experiments_waiting`, priority DESC, and reports it whatever the migrations did).
    columns = [d for d in schema_diff(engine, "experiments") if isinstance(d, list) or "column" in d[0]]
    assert columns == []
