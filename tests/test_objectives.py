"""Scoring: which figure each objective reads, SLO penalties and hard failures."""
import math

import pytest

from app.domain.objectives import is_better, score, score_level

pytestmark = pytest.mark.unit


def level(**kw):
    base = {"completed": 10, "mean_e2el_ms": 2000.0, "median_e2el_ms": 1900.0, "p90_e2el_ms": 2500.0,
            "p99_e2el_ms": 3000.0, "mean_ttft_ms": 100.0, "mean_tpot_ms": 20.0, "output_throughput_per_gpu": 500.0}
    base.update(kw)
    return base


@pytest.mark.parametrize("objective,expected", [
    ("minimize_latency", 2.0), ("minimize_ttft", 0.1), ("minimize_tpot", 0.02), ("maximize_throughput", 500.0),
])
def test_objective_reads_its_metric_in_reported_units(objective, expected):
    assert score_level(level(), objective).objective == pytest.approx(expected)


def test_soft_slo_violation_penalises_exponentially():
    slo = {"latency": {"p90": {"threshold": 2.0, "weight": 2.0}}, "steepness": 0.1}
    s = score_level(level(), "minimize_latency", slo)  # p90 2.5 s vs 2.0 s: ratio 0.25
    penalty = 2.0 * math.exp(0.25 / 0.1)
    assert s.slo_ok and s.penalty == pytest.approx(penalty)
    assert s.objective == pytest.approx(2.0 * (1 + penalty))
    t = score_level(level(), "maximize_throughput", slo)
    assert t.objective == pytest.approx(500.0 / (1 + penalty))


def test_hard_fail_beyond_fail_ratio_makes_config_ineligible():
    slo = {"latency": {"p99": {"threshold": 2.0, "hard_fail": True, "fail_ratio": 0.2}}}
    assert score_level(level(), "minimize_latency", slo).slo_ok is False  # 3.0 s: ratio 0.5
    lenient = {"latency": {"p99": {"threshold": 2.8, "hard_fail": True, "fail_ratio": 0.2}}}
    assert score_level(level(), "minimize_latency", lenient).slo_ok is True  # ratio 0.07: penalty only


def test_scores_the_highest_level_and_averages_scenarios():
    low, high = level(concurrency=1, mean_e2el_ms=500.0), level(concurrency=8, mean_e2el_ms=3000.0)
    assert score([[low, high]], "minimize_latency").objective == pytest.approx(3.0)
    assert score([[high], [low]], "minimize_latency").objective == pytest.approx(1.75)


def test_no_completed_request_gives_no_score():
    assert score([[level(completed=0)]], "minimize_latency").objective is None


def test_direction():
    assert is_better(1.0, 2.0, "minimize_latency") and is_better(3.0, 2.0, "maximize_throughput")


def test_objective_level_picks_the_named_level_else_the_highest():
    low, high = level(concurrency=1, mean_e2el_ms=500.0), level(concurrency=8, mean_e2el_ms=3000.0)
    assert score([[low, high]], "minimize_latency", at=1).objective == pytest.approx(0.5)
    assert score([[high, low]], "minimize_latency").objective == pytest.approx(3.0)  # highest, not last
    rated = [level(request_rate=2.0, concurrency=None, mean_ttft_ms=50.0), level(request_rate=16.0, concurrency=None, mean_ttft_ms=900.0)]
    assert score([rated], "minimize_ttft", at=2).objective == pytest.approx(0.05)


def test_a_level_with_too_many_errors_has_no_objective_whatever_the_objective():
    from app.domain.objectives import MAX_ERROR_RATE, score

    good = {"concurrency": 8, "completed": 95, "errors": 5, "output_throughput_per_gpu": 900.0, "mean_e2el_ms": 800.0}
    assert MAX_ERROR_RATE == 0.05
    assert score([[good]], "maximize_throughput").objective == 900.0  # 5 % is still a measurement
    broken = dict(good, completed=24, errors=3105)  # an engine that died two seconds in
    for objective in ("maximize_throughput", "minimize_latency"):
        result = score([[broken]], objective)
        assert result.objective is None and not result.slo_ok
        assert "3105 of 3129 requests failed" in result.problem
