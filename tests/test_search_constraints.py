"""Constraints, not fake scores: the engines' own argument checks refuse a point before it is
suggested, and what cannot run or breaks a hard SLO steers the Bayesian search away."""
from __future__ import annotations

import itertools

import pytest

from app.domain.engines import get_engine
from app.domain.strategies import make_strategy
from app.domain.strategies.base import Trial, canonical
from app.domain.taskspec import parse_task

pytestmark = pytest.mark.unit


def vllm_task(strategy: str, parameters: dict | None = None, **optimization) -> object:
    return parse_task({
        "task_name": "t", "model": {"id_or_path": "meta-llama/Meta-Llama-3-70B-Instruct"}, "base_runtime": "sim",
        "sim": {"engine": "vllm"},
        "parameters": parameters or {"max-num-seqs": [64, 256, 1024], "max-num-batched-tokens": [128, 512, 2048, 16384],
                                     "enable-chunked-prefill": [True, False], "max-model-len": [8192]},
        "optimization": {"strategy": strategy, "objective": "maximize_throughput", **optimization},
    })


def test_vllm_refuses_what_its_scheduler_config_refuses():
    vllm = get_engine("vllm")
    assert "greater than or equal to max_num_seqs" in vllm.refusal({"max-num-seqs": 512, "max-num-batched-tokens": 256})
    assert vllm.refusal({"max-num-seqs": 256, "max-num-batched-tokens": 256}) is None
    no_chunking = {"enable-chunked-prefill": False, "max-num-batched-tokens": 2048, "max-model-len": 8192}
    assert "smaller than max_model_len" in vllm.refusal(no_chunking)
    assert vllm.refusal({**no_chunking, "enable-chunked-prefill": True}) is None
    assert vllm.refusal({**no_chunking, "max-num-batched-tokens": 8192}) is None
    # a flag left to a default that depends on the model is not judged: no false refusal
    assert vllm.refusal({"enable-chunked-prefill": False, "max-num-batched-tokens": 2048}) is None
    assert vllm.refusal({"max-num-partial-prefills": 2, "enable-chunked-prefill": False}) is not None
    assert vllm.refusal({"max-long-partial-prefills": 2}) is not None  # default max_num_partial_prefills is 1
    assert vllm.refusal({"gpu-memory-utilization": 1.2}) is not None


def test_sglang_rules_read_aliases_and_defaults():
    sglang = get_engine("sglang")
    assert sglang.refusal({"tp": 4, "dp": 3, "enable-dp-attention": True}) is not None
    assert sglang.refusal({"tp": 4, "dp": 3}) is None  # without DP attention the replicas are separate
    assert sglang.refusal({"chunked-prefill-size": 100, "page-size": 16}) is not None
    assert sglang.refusal({"chunked-prefill-size": 100}) is None  # page size 1 by default
    assert sglang.refusal({"chunked-prefill-size": -1, "page-size": 16}) is None  # chunking off


@pytest.mark.parametrize("strategy,slots", [("grid_search", 5), ("random", 5), ("bayesian", 1), ("bayesian", 6)])
def test_known_constraints_refuse_a_point_before_it_is_suggested(strategy, slots):
    spec = vllm_task(strategy, seed=4)
    names = list(spec.search_space)
    grid = [dict(zip(names, v)) for v in itertools.product(*(spec.search_space[n].grid_values() for n in names))]
    allowed = {canonical(p) for p in grid if spec.engine_spec.refusal(p) is None}
    assert 0 < len(allowed) < len(grid)
    strat, history = make_strategy(spec), []
    while True:
        batch = strat.suggest(history, slots)
        if not batch:
            break
        history += [Trial(p, "succeeded", objective=float(len(history))) for p in batch]
    suggested = [canonical(t.params) for t in history]
    assert set(suggested) <= allowed  # nothing the engine refuses ever reaches a GPU
    assert len(suggested) == len(set(suggested)) == len(allowed)  # and the rest is still covered


def throughput_task(strategy: str = "bayesian", **optimization) -> object:
    return vllm_task(strategy, {"max-num-seqs": [16, 32, 64, 128, 256, 512, 1024, 2048],
                                "max-num-batched-tokens": [2048, 4096, 8192, 16384],
                                "gpu-memory-utilization": [0.5, 0.6, 0.7, 0.8, 0.9]}, **optimization)


def bad(params: dict) -> bool:
    """The region that breaks the hard SLO in this made-up landscape: large batches."""
    return params["max-num-seqs"] >= 512


def outcome(params: dict, slo_broken_taught: bool) -> Trial:
    if bad(params):  # a constraint violation, or (the old way) a plain failure TPE ignores
        return Trial(params, "succeeded", slo_broken=True) if slo_broken_taught else Trial(params, "failed")
    return Trial(params, "succeeded", objective=float(params["max-num-seqs"]))  # the optimum borders it


def in_bad_region(slo_broken_taught: bool, seed: int) -> int:
    """How many of 20 sequential suggestions land in the region that breaks the hard SLO."""
    strategy, history = make_strategy(throughput_task(seed=seed)), []
    for _ in range(20):
        history += [outcome(p, slo_broken_taught) for p in strategy.suggest(history, 1)]
    return sum(bad(t.params) for t in history)


def test_hard_slo_violations_stop_the_region_being_sampled():
    taught = sum(in_bad_region(True, seed) for seed in range(4))
    ignored = sum(in_bad_region(False, seed) for seed in range(4))
    assert taught < ignored


def test_the_coordinator_gives_hard_slo_violations_as_constraints():
    from app.coordinator import _trial
    from app.store.models import Experiment

    broke = _trial(Experiment(params={"tp-size": 1}, state="succeeded", objective=3.0, slo_ok=False))
    assert broke.slo_broken and broke.objective is None and not broke.infeasible
    kept = _trial(Experiment(params={"tp-size": 1}, state="succeeded", objective=3.0, slo_ok=True))
    assert not kept.slo_broken and kept.objective == 3.0


def test_numeric_choices_are_searched_by_position():
    from app.domain.strategies.bayesian import Encoding

    spec = throughput_task()
    enc = Encoding(spec.search_space)
    dist = enc.dists["max-num-seqs"]
    assert (dist.low, dist.high) == (0, 7)  # an ordered integer, not eight unrelated categories
    point = {"max-num-seqs": 256, "max-num-batched-tokens": 8192, "gpu-memory-utilization": 0.7}
    assert enc.decode(enc.encode(point)) == point
    assert enc.encode({**point, "max-num-seqs": 300}) is None  # not in this space


def test_the_first_parallel_batch_is_spread_over_every_value():
    spec = throughput_task(seed=1)
    batch = make_strategy(spec).suggest([], 8)
    assert len({canonical(p) for p in batch}) == 8
    assert {p["max-num-seqs"] for p in batch} == {16, 32, 64, 128, 256, 512, 1024, 2048}
    assert len({p["max-num-batched-tokens"] for p in batch}) == 4
    assert make_strategy(spec).suggest([], 8) == batch  # replayable


def test_submission_says_what_the_engine_refuses_and_refuses_a_space_of_nothing_else():
    from app.domain.taskspec import TaskSpecError

    spec = vllm_task("grid_search", {"max-num-seqs": [64, 512], "max-num-batched-tokens": [256, 1024]})
    assert any("1 of 4 parameter sets are refused by vLLM's own argument checks" in n for n in spec.notes)
    with pytest.raises(TaskSpecError) as refused:
        vllm_task("grid_search", {"max-num-seqs": [512], "max-num-batched-tokens": [256]})
    assert list(refused.value.errors[0]["loc"]) == ["parameters"]
    assert "refuses every parameter set" in refused.value.errors[0]["msg"]
    with pytest.raises(TaskSpecError) as listed:
        vllm_task("list", {}, configs=[{"max-num-seqs": 64}, {"max-num-seqs": 512, "max-num-batched-tokens": 256}])
    assert list(listed.value.errors[0]["loc"]) == ["optimization", "configs", 1]


def test_a_probed_running_experiment_gives_tpe_its_final_score():
    """The constant liar treats running experiments as bad results; one whose probe has measured
    its deciding level has its final score, and a liar's bad value would steer the search away
    from the most promising running experiments."""
    from app.coordinator import _trial
    from app.domain.strategies.bayesian import Encoding, _frozen
    from app.store.models import Experiment

    probed = _trial(Experiment(params={"max-num-seqs": 64}, state="running", objective=5.0, slo_ok=True))
    waiting = _trial(Experiment(params={"max-num-seqs": 64}, state="running", objective=None, slo_ok=None))
    assert probed.objective == 5.0 and waiting.objective is None
    enc = Encoding(throughput_task().search_space)
    params = {"max-num-seqs": 64, "max-num-batched-tokens": 8192, "gpu-memory-utilization": 0.7}
    frozen = _frozen(Trial(params, "running", objective=5.0), enc)
    assert frozen.state.name == "COMPLETE" and frozen.values == [5.0]
    assert _frozen(Trial(params, "running"), enc).state.name == "RUNNING"
