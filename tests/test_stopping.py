"""Early stopping's decisions: the deciding level first, the incumbent probe, the task stop rule."""
from __future__ import annotations

import pytest

from app.domain.objectives import Score
from app.domain.stopping import (CANNOT_WIN, GPU_BUDGET, HARD_SLO, NO_IMPROVEMENT, probe_order, probe_verdict,
                                 task_stop)

pytestmark = pytest.mark.unit


def test_the_deciding_level_is_measured_first():
    assert probe_order([1, 8, 32], None) == [32, 1, 8]  # the objective reads the highest by default
    assert probe_order([1, 8, 32], 8) == [8, 1, 32]
    assert probe_order([4.0], None) == [4.0]


def test_the_probe_stops_what_cannot_win_or_breaks_a_hard_slo():
    assert probe_verdict(Score(objective=900.0), 1000.0, "maximize_throughput") == CANNOT_WIN
    assert probe_verdict(Score(objective=1000.0), 1000.0, "maximize_throughput") == CANNOT_WIN  # a tie cannot win
    assert probe_verdict(Score(objective=1100.0), 1000.0, "maximize_throughput") is None
    assert probe_verdict(Score(objective=0.5), 0.4, "minimize_ttft") == CANNOT_WIN
    assert probe_verdict(Score(objective=0.3), 0.4, "minimize_ttft") is None
    assert probe_verdict(Score(objective=0.3, slo_ok=False), None, "minimize_ttft") == HARD_SLO
    assert probe_verdict(Score(objective=0.3), None, "minimize_ttft") is None  # nothing to beat yet
    assert probe_verdict(Score(objective=None, slo_ok=False), 0.4, "minimize_ttft") is None  # no figure: not a stop


def test_the_task_stops_after_patience_without_an_improvement_beyond_noise():
    rising = [100.0, 110.0, 120.0]
    assert task_stop(rising, "maximize_throughput", patience=2, noise=0.01) is None
    flat = [100.0, 110.0, 110.5, None, 109.0]  # +0.45 % is noise; a failure is no improvement
    assert task_stop(flat, "maximize_throughput", patience=3, noise=0.01) == NO_IMPROVEMENT
    assert task_stop(flat, "maximize_throughput", patience=4, noise=0.01) is None
    assert task_stop([2.0, 1.0, 1.5, 1.2], "minimize_ttft", patience=2, noise=0.01) == NO_IMPROVEMENT
    assert task_stop([None, None, None], "minimize_ttft", patience=2, noise=0.01) is None  # nothing found yet
    assert task_stop(rising, "maximize_throughput", patience=None, noise=0.01, gpu_hours=5.0,
                     gpu_hour_budget=4.0) == GPU_BUDGET
