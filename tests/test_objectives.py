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


def test_every_objective_has_a_unit_a_label_and_a_direction():
    from app.domain.objectives import OBJECTIVES

    assert {"minimize_latency", "maximize_throughput", "minimize_ttft", "minimize_tpot"} <= set(OBJECTIVES)
    for o in OBJECTIVES.values():
        assert o.unit and o.label and o.direction in ("minimize", "maximize"), o
        assert o.show(1.5) == f"1.5 {o.unit}"


def test_the_original_objectives_keep_their_meaning():
    """The original format's four objectives read the same figures in the same units."""
    from app.domain.objectives import OBJECTIVES

    assert [(o.metric, o.factor, o.unit, o.direction) for o in map(OBJECTIVES.get, (
        "minimize_latency", "maximize_throughput", "minimize_ttft", "minimize_tpot"))] == [
        ("mean_e2el_ms", 1e-3, "s", "minimize"), ("output_throughput_per_gpu", 1.0, "tok/s/GPU", "maximize"),
        ("mean_ttft_ms", 1e-3, "s", "minimize"), ("mean_tpot_ms", 1e-3, "s", "minimize")]


@pytest.mark.parametrize("objective,expected", [
    ("minimize_p50_e2el", 1.9), ("minimize_p90_e2el", 2.5), ("minimize_p99_e2el", 3.0),
    ("minimize_p99_ttft", 0.4), ("minimize_p90_tpot", 30.0), ("minimize_p99_itl", 60.0), ("maximize_goodput", 7.5),
])
def test_percentile_and_goodput_objectives_read_their_figures_in_their_units(objective, expected):
    lv = level(p99_ttft_ms=400.0, p90_tpot_ms=30.0, p99_itl_ms=60.0, goodput=7.5)
    s = score_level(lv, objective)
    assert s.objective == s.measured == pytest.approx(expected)


def test_cost_per_million_output_tokens_compares_gpu_counts_on_price():
    """$2.50 per GPU-hour at 500 output tok/s per GPU: 2.5 / 3600 / 500 * 1e6 = $1.389 per
    million tokens, whether the engine has 1 GPU or 8 (the figure is per GPU)."""
    s = score_level(level(), "minimize_cost", price=2.5)
    assert s.measured == pytest.approx(2.5 / 3600 / 500 * 1e6)
    slower = score_level(level(output_throughput_per_gpu=250.0), "minimize_cost", price=2.5)
    assert slower.measured == pytest.approx(2 * s.measured)
    assert score_level(level(), "minimize_cost").objective is None  # no price: no figure


def test_measured_figure_stays_apart_from_the_penalised_score():
    slo = {"latency": {"p90": {"threshold": 2.0}}, "steepness": 0.1}
    s = score([[level()]], "minimize_latency", slo)
    assert s.measured == pytest.approx(2.0) and s.objective == pytest.approx(2.0 * (1 + s.penalty)) and s.penalty > 5


def test_sustainable_rate_is_the_highest_rate_meeting_every_slo_with_both_sides():
    from app.domain.objectives import sustainable_rate

    slo = {"ttft": {"threshold": 0.5}}
    rates = [level(request_rate=r, concurrency=None, mean_ttft_ms=ms) for r, ms in
             ((1.0, 100.0), (16.0, 2000.0), (4.0, 300.0), (8.0, 700.0))]
    assert sustainable_rate(rates, slo) == {"rate": 4.0, "passed": 4.0, "failed": 8.0}
    s = score([rates], "maximize_sustainable_rate", slo)
    assert s.objective == s.measured == 4.0 and s.bracket == [{"rate": 4.0, "passed": 4.0, "failed": 8.0}]
    too_slow = [level(request_rate=1.0, concurrency=None, mean_ttft_ms=900.0)]
    assert sustainable_rate(too_slow, slo) == {"rate": 0.0, "passed": None, "failed": 1.0}
    erroring = [level(request_rate=1.0, concurrency=None, errors=5)]  # errors are not sustained
    assert sustainable_rate(erroring, slo)["passed"] is None


def test_rate_search_is_bounded_and_brackets_the_answer():
    from app.domain.ratesearch import next_rate

    truth = 13.0  # rates up to this meet the SLOs
    tried: dict[float, bool] = {}
    while (rate := next_rate(tried, 1.0, 64.0, 4)) is not None:
        tried[rate] = rate <= truth
    assert list(tried)[:2] == [1.0, 64.0] and len(tried) == 6  # low, high, then 4 halvings at most
    passed = max(r for r, ok in tried.items() if ok)
    failed = min(r for r, ok in tried.items() if not ok)
    assert passed <= truth < failed and failed / passed < 64 / 2 ** 4
    assert next_rate({1.0: False}, 1.0, 64.0, 4) is None  # nothing sustained at the lowest rate
    assert next_rate({1.0: True, 64.0: True}, 1.0, 64.0, 4) is None  # the upper bound was sustained
