"""Task files: the original format loads unchanged, errors come all at once with paths,
parameters normalise into one search space, and launch argv is safe."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.domain.taskspec import (
    Choice,
    FloatRange,
    IntRange,
    TaskSpecError,
    load_task_file,
    parse_task,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parent / "data" / "examples-original"
EXAMPLES = sorted(DATA.glob("*.json"))


def minimal(**extra) -> dict:
    task = {"task_name": "t", "model": {"id_or_path": "org/model"}, "base_runtime": "sglang"}
    task.update(extra)
    return task


def locs(exc: TaskSpecError) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in exc.errors]


# --- the original examples -------------------------------------------------------------


def test_copied_examples_are_present():
    assert len(EXAMPLES) >= 7


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_original_example_loads(path):
    spec = load_task_file(path)
    assert spec.engine == "sglang"
    assert spec.deployment_mode == "docker"
    assert spec.search_space
    assert spec.grid_size() >= 1
    assert spec.optimization.max_iterations >= 1
    # round trip through to_dict / parse_task, and JSON-able
    data = spec.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert parse_task(data).to_dict() == data


def test_simple_task_ome_sections_and_underscore_names():
    spec = load_task_file(DATA / "simple_task.json")
    assert set(spec.search_space) == {"tp-size", "mem-fraction-static"}
    assert spec.search_space["mem-fraction-static"] == Choice((0.8,))
    notes = "\n".join(spec.notes)
    for word in ("sglang-llama-small", "clusterbasemodel_config", "clusterservingruntime_config",
                 "namespace", "tp_size", "mem_frac"):
        assert word in notes
    assert spec.clusterbasemodel_config == {"preset": "llama-3-2-1b-instruct"}
    assert spec.benchmark.additional_params == {"temperature": "0.0"}  # string kept as written
    assert spec.optimization.timeout_per_iteration == 1200


def test_defaults_when_missing():
    spec = load_task_file(DATA / "quant_custom_task.json")
    assert spec.optimization.timeout_per_iteration == 600
    assert spec.optimization.max_parallel_experiments == 1
    assert spec.optimization.max_attempts == 3
    assert spec.benchmark.max_time_per_iteration == 60
    assert spec.benchmark.max_requests_per_iteration == 100
    assert spec.objective_direction == "maximize"


def test_slo_blocks():
    spec = load_task_file(DATA / "docker_task_with_slo.json")
    assert spec.slo.latency.p90.threshold == 5.0 and spec.slo.latency.p90.hard_fail
    assert spec.slo.tpot.threshold == 0.05 and spec.slo.steepness == 0.1
    minimal_slo = load_task_file(DATA / "docker_task_minimal_slo.json").slo.latency.p99
    assert (minimal_slo.weight, minimal_slo.hard_fail, minimal_slo.fail_ratio) == (1.0, False, 0.0)


def test_bayesian_example_is_a_finite_grid():
    spec = load_task_file(DATA / "bayesian_task.json")
    assert spec.grid_size() == 2 * 5 * 2 * 4
    assert spec.optimization.max_iterations == 30


# --- parallel_config / quant_config ---------------------------------------------------


def test_parallel_config_expands_for_sglang():
    spec = load_task_file(DATA / "parallel_config_test.json")
    assert spec.search_space["tp-size"] == Choice((2, 4))
    assert spec.search_space["dp-size"] == Choice((1, 2))
    assert spec.grid_size() == 4


def test_parallel_config_expands_for_vllm():
    spec = parse_task(minimal(base_runtime="vllm", parallel_config={"tp": [1, 2], "pp": 2, "dp": [1]}))
    assert spec.search_space["tensor-parallel-size"] == Choice((1, 2))
    assert spec.search_space["pipeline-parallel-size"] == Choice((2,))
    assert spec.search_space["data-parallel-size"] == Choice((1,))


def test_parallel_config_conflicting_with_parameters_is_an_error():
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(parameters={"tp-size": [1, 2]}, parallel_config={"tp": [2]}))
    assert locs(info.value) == ["parallel_config.tp"]
    with pytest.raises(TaskSpecError):  # same axis under another spelling
        parse_task(minimal(parameters={"tensor-parallel-size": [1]}, parallel_config={"tp": [2]}))


def test_parallel_config_rejects_bad_degrees():
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(parallel_config={"tp": [0, 2], "dp": "x"}))
    assert set(locs(info.value)) == {"parallel_config.tp", "parallel_config.dp"}


def test_quant_config_expansion():
    spec = load_task_file(DATA / "quant_custom_task.json")
    assert spec.search_space["quantization"] == Choice(("fp8",))
    assert spec.search_space["kv-cache-dtype"] == Choice(("fp8_e5m2",))
    assert not {"attention-dtype", "moe-dtype"} & set(spec.search_space)
    notes = "\n".join(spec.notes)
    assert "attention_dtype" in notes and "not applied" in notes
    assert spec.launch_flags({"tp-size": 1, "quantization": "fp8", "kv-cache-dtype": "fp8_e5m2"}) == [
        "--tp-size", "1", "--quantization", "fp8", "--kv-cache-dtype", "fp8_e5m2"]


def test_quant_config_auto_is_omitted_and_lists_keep_a_no_flag_option():
    spec = parse_task(minimal(quant_config={"gemm_dtype": "auto", "kvcache_dtype": ["auto", "fp8_e4m3"]}))
    assert "quantization" not in spec.search_space
    assert spec.search_space["kv-cache-dtype"] == Choice((None, "fp8_e4m3"))
    assert spec.launch_flags({"kv-cache-dtype": None}) == []
    spec = parse_task(minimal(quant_config={"gemm_dtype": ["bf16", "fp8", "none"]}))
    assert spec.search_space["quantization"] == Choice((None, "fp8"))


def test_quant_config_conflicting_with_parameters_is_an_error():
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(parameters={"quantization": ["fp8"]}, quant_config={"gemm_dtype": "fp8"}))
    assert locs(info.value) == ["quant_config.gemm_dtype"]


# --- parameter forms ------------------------------------------------------------------


def test_parameter_forms_normalise_into_domains():
    spec = parse_task(minimal(
        optimization={"strategy": "bayesian"},
        parameters={
            "schedule-policy": ["lpm", "fcfs"],
            "chunked_prefill_size": {"type": "choice", "values": [512, 1024]},
            "mem_frac": {"type": "continuous", "low": 0.7, "high": 0.9},
            "max_running_requests": {"type": "integer", "low": 8, "high": 64, "step": 8},
            "cuda-graph-max-bs": {"type": "int", "low": 1, "high": 256, "log": True},
            "enable-torch-compile": [True, False],
            "stream-interval": 4,
        },
    ))
    space = spec.search_space
    assert space["schedule-policy"] == Choice(("lpm", "fcfs"))
    assert space["chunked-prefill-size"] == Choice((512, 1024))
    assert space["mem-fraction-static"] == FloatRange(0.7, 0.9, False)
    assert space["max-running-requests"] == IntRange(8, 64, 8, False)
    assert list(space["max-running-requests"].grid_values()) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert space["cuda-graph-max-bs"] == IntRange(1, 256, 1, True)
    assert space["stream-interval"] == Choice((4,))
    assert space["mem-fraction-static"].is_finite is False
    assert spec.grid_size() is None
    assert spec.optimization.max_iterations == 20
    notes = "\n".join(spec.notes)
    assert "mem_frac" in notes and "--mem-fraction-static" in notes


def test_underscore_aliases_follow_the_engine():
    spec = parse_task(minimal(base_runtime="vllm", parameters={"tp_size": [1, 2], "mem_frac": [0.9]}))
    assert set(spec.search_space) == {"tensor-parallel-size", "gpu-memory-utilization"}


def test_two_names_for_one_flag_is_an_error():
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(parameters={"tp_size": [1], "tp-size": [2]}))
    assert len(info.value.errors) == 1


@pytest.mark.parametrize("definition, where", [
    ({"type": "continuous", "low": 1.0, "high": 1.0}, "P"),
    ({"type": "integer", "low": 5, "high": 2}, "P"),
    ({"type": "choice", "values": []}, "P.values"),
    ({"type": "choice", "values": [1, 1]}, "P.values.1"),
    ([], "P"),
    ({"type": "gaussian"}, "P.type"),
    ({"type": ["choice"]}, "P.type"),
    ({"low": 1, "high": 2}, "P.type"),
    ({"type": "float", "low": 0, "high": 1, "log": True}, "P.low"),
    ({"type": "int", "low": 1, "high": 2, "stride": 1}, "P.stride"),
])
def test_bad_parameter_definitions(definition, where):
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(optimization={"strategy": "random"}, parameters={"schedule-conservativeness": definition}))
    assert "parameters." + where.replace("P", "schedule-conservativeness") in locs(info.value)


@pytest.mark.parametrize("name", ["Tp-Size", "--", "a b", "x;rm -rf", "-", "é", "a/b", "", "a=b", "tp-size\n", "a\x00"])
def test_dangerous_parameter_names_refused(name):
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(parameters={name: [1]}))
    assert info.value.errors[0]["loc"][:2] == ["parameters", name]


@pytest.mark.parametrize("value", ["--evil", "-1", "a b", "x\ny", "nul\x00", "tab\t", "", None, [1], {"a": 1}, float("nan")])
def test_dangerous_parameter_values_refused(value):
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(parameters={"schedule-policy": ["lpm", value]}))
    assert info.value.errors[0]["loc"] == ["parameters", "schedule-policy", 1]


def test_dangerous_model_path_refused():
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(model={"id_or_path": "--trust-remote-code"}))
    assert locs(info.value) == ["model.id_or_path"]


def test_launch_flags_revalidate_params_from_elsewhere():
    spec = parse_task(minimal())
    with pytest.raises(ValueError):
        spec.launch_flags({"bad name": 1})
    with pytest.raises(ValueError):
        spec.launch_flags({"ok": "--evil"})


# --- all errors at once ---------------------------------------------------------------


def test_bad_file_reports_all_errors_with_paths(tmp_path):
    bad = {
        "task_name": "no/slashes",
        "model": {"namespace": "x"},
        "base_runtime": "tensorrt",
        "parameters": {"Bad Name": [1], "chat-template": ["--x"], "f": {"type": "continuous", "low": 0, "high": 1}},
        "optimization": {"strategy": "grid_search", "objective": "fastest", "timeout_per_iteration": 100000},
        "benchmark": {"traffic_scenarios": ["D(100,100)", "Q(1,2)"], "num_concurrency": [0, 4]},
        "slo": {"latency": {"p42": {"threshold": 1}}},
        "surprise": True,
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(TaskSpecError) as info:
        load_task_file(path)
    found = set(locs(info.value))
    expected = {
        "task_name", "model.id_or_path", "parameters.Bad Name", "parameters.chat-template.0",
        "optimization.objective", "optimization.timeout_per_iteration",
        "benchmark.traffic_scenarios.1", "benchmark.num_concurrency.0", "slo.latency.p42", "surprise",
    }
    assert expected <= found, found
    assert all(e["msg"] for e in info.value.errors)
    assert "unknown field" in [e["msg"] for e in info.value.errors if e["loc"] == ["surprise"]]
    assert "surprise" in str(info.value)


def test_semantic_and_structural_errors_are_reported_together():
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(
            parameters={"x": {"type": "float", "low": 0, "high": 1}},  # infinite under grid_search
            benchmark={"num_concurrency": "many"},
        ))
    assert set(locs(info.value)) == {"parameters.x", "benchmark.num_concurrency"}


def test_missing_required_fields():
    with pytest.raises(TaskSpecError) as info:
        parse_task({"parameters": {}})
    assert {"task_name", "model"} <= set(locs(info.value))


def test_timeout_bounds():
    assert parse_task(minimal(optimization={"timeout_per_iteration": 86400})).optimization.timeout_per_iteration == 86400
    for bad in (0, -1, 86401):
        with pytest.raises(TaskSpecError):
            parse_task(minimal(optimization={"timeout_per_iteration": bad}))


@pytest.mark.parametrize("scenario", ["D(100,100)", "N(480,240)/(300,150)", "U(50,100)/(10,20)"])
def test_traffic_scenarios_accepted(scenario):
    assert parse_task(minimal(benchmark={"traffic_scenarios": [scenario]})).benchmark.traffic_scenarios == [scenario]


@pytest.mark.parametrize("scenario", ["D(100)", "N(1,2)", "D(1,2)/(3,4)", "X(1,2)", "d(1,2)", "D(1, 2)"])
def test_traffic_scenarios_refused(scenario):
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(benchmark={"traffic_scenarios": [scenario]}))
    assert locs(info.value) == ["benchmark.traffic_scenarios.0"]


# --- files ----------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(TaskSpecError) as info:
        load_task_file(tmp_path / "nope.json")
    assert "not found" in info.value.errors[0]["msg"]


def test_json_syntax_error_has_line_number(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{\n  "task_name": "x",\n  "model": }\n')
    with pytest.raises(TaskSpecError) as info:
        load_task_file(path)
    assert len(info.value.errors) == 1 and "line 3" in info.value.errors[0]["msg"]


def test_yaml_file_and_yaml_syntax_error(tmp_path):
    good = tmp_path / "t.yaml"
    good.write_text(
        "task_name: yaml-task\nmodel: {id_or_path: org/m}\nbase_runtime: sim\n"
        "parameters:\n  tensor-parallel-size: [1, 2]\nsim: {engine: vllm, time_scale: 0.01}\n"
        "optimization: {max_parallel_experiments: 4}\n")
    spec = load_task_file(good)
    assert (spec.deployment_mode, spec.engine, spec.sim.gpu) == ("sim", "vllm", "H100-80GB")
    bad = tmp_path / "bad.yml"
    bad.write_text("task_name: x\nmodel: [unclosed\n")
    with pytest.raises(TaskSpecError) as info:
        load_task_file(bad)
    assert "line" in info.value.errors[0]["msg"]
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(TaskSpecError):
        load_task_file(notmap)


# --- runtime / sim --------------------------------------------------------------------


def test_sim_runtime_defaults():
    spec = parse_task(minimal(base_runtime="sim"))
    assert spec.deployment_mode == "sim" and spec.engine == "sglang"
    assert spec.sim.time_scale == 1.0
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(base_runtime="sim", deployment_mode="process"))
    assert locs(info.value) == ["deployment_mode"]
    # The simulator also runs in a container (its own image, no GPU devices).
    assert parse_task(minimal(base_runtime="sim", deployment_mode="docker")).launcher.simulated
    with pytest.raises(TaskSpecError):
        parse_task(minimal(base_runtime="sim", sim={"time_scale": 0}))


def test_sim_mode_with_real_engine_name():
    spec = parse_task(minimal(base_runtime="vllm", deployment_mode="sim"))
    assert spec.engine == "vllm" and spec.sim.engine == "vllm"
    with pytest.raises(TaskSpecError):
        parse_task(minimal(base_runtime="vllm", deployment_mode="sim", sim={"engine": "sglang"}))


def test_list_strategy_requires_configs():
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(optimization={"strategy": "list"}))
    assert locs(info.value) == ["optimization.configs"]
    spec = parse_task(minimal(
        parameters={"mem-fraction-static": [0.8]},
        optimization={"strategy": "list", "configs": [{"tp_size": 1}, {"tp-size": 2, "schedule-policy": "lpm"}]}))
    assert spec.list_configs == [
        {"mem-fraction-static": 0.8, "tp-size": 1},
        {"mem-fraction-static": 0.8, "tp-size": 2, "schedule-policy": "lpm"},
    ]
    assert spec.optimization.max_iterations == 2
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(optimization={"strategy": "list", "configs": [{"Bad!": 1}, {"ok": "-x"}, {}, {}]}))
    assert set(locs(info.value)) == {"optimization.configs.0.Bad!", "optimization.configs.1.ok"}
    # Repeats are allowed: re-measuring one configuration is a use of this strategy.
    again = parse_task(minimal(optimization={"strategy": "list", "configs": [{"tp-size": 1}] * 3}))
    assert again.list_configs == [{"tp-size": 1}] * 3 and again.optimization.max_iterations == 3


# --- helpers --------------------------------------------------------------------------


@pytest.mark.parametrize("runtime, params, expected", [
    ("sglang", {}, 1),
    ("sglang", {"tp-size": 2}, 2),
    ("sglang", {"tp-size": 2, "dp-size": 2}, 4),
    ("sglang", {"tp": 4, "pp-size": 2, "dp": 2}, 16),
    ("sglang", {"tp-size": 4, "dp-size": 2, "enable-dp-attention": True}, 4),
    ("vllm", {"tensor-parallel-size": 2, "pipeline-parallel-size": 2}, 4),
    ("vllm", {"tensor-parallel-size": 2, "data-parallel-size": 3}, 6),
    ("vllm", {"gpu-memory-utilization": 0.9}, 1),
])
def test_gpus_needed(runtime, params, expected):
    assert parse_task(minimal(base_runtime=runtime)).gpus_needed(params) == expected


def test_launch_flags_and_command():
    spec = parse_task(minimal())
    params = {"tp-size": 2, "mem-fraction-static": 0.85, "enable-torch-compile": True,
              "disable-radix-cache": False, "schedule-policy": "lpm", "quantization": None}
    flags = ["--tp-size", "2", "--mem-fraction-static", "0.85", "--enable-torch-compile",
             "--schedule-policy", "lpm"]
    assert spec.launch_flags(params) == flags
    assert spec.launch_command(params, port=31000) == [
        "python", "-m", "sglang.launch_server", "--model-path", "org/model",
        "--host", "0.0.0.0", "--port", "31000", *flags]
    vllm = parse_task(minimal(base_runtime="vllm"))
    assert vllm.launch_command({"tensor-parallel-size": 2}) == [
        "python", "-m", "vllm.entrypoints.openai.api_server", "--model", "org/model", "--host", "0.0.0.0",
        "--port", "30000", "--tensor-parallel-size", "2"]
    assert spec.launch_flags({"mem-fraction-static": 1e-05}) == ["--mem-fraction-static", "1e-05"]


def test_grid_size_and_domain_helpers():
    spec = parse_task(minimal(parameters={"max-running-requests": [1, 2, 3],
                                          "chunked-prefill-size": {"type": "int", "low": 0, "high": 10, "step": 5}}))
    assert spec.grid_size() == 9
    assert list(spec.search_space["chunked-prefill-size"].grid_values()) == [0, 5, 10]
    assert parse_task(minimal()).grid_size() == 1
    with pytest.raises(ValueError):
        FloatRange(0.0, 1.0).grid_values()


def test_unknown_runtime_and_ome_mode():
    spec = parse_task(minimal(base_runtime="vllm-llama-8b", deployment_mode="ome"))
    assert spec.engine == "vllm"
    assert any("ome" in n for n in spec.notes)
    # A name this system does not know (an OME ClusterServingRuntime) loads with a note.
    other = parse_task(minimal(base_runtime="trtllm", parameters={"max_total_tokens": [4096]}))
    assert other.engine == "sglang" and any("'trtllm' is not an engine this system knows" in n for n in other.notes)


def test_round_trip_of_a_task_using_every_feature():
    data = minimal(
        base_runtime="sim", description="all features",
        sim={"engine": "vllm", "gpu": "A100-80GB", "time_scale": 0.5, "startup_seconds": 0},
        parameters={"mem_frac": {"type": "float", "low": 0.5, "high": 0.9, "log": True},
                    "max-num-seqs": {"type": "int", "low": 8, "high": 64, "step": 8}},
        parallel_config={"tp": [1, 2], "enable_expert_parallel": [True, False]},
        quant_config={"kvcache_dtype": ["auto", "fp8"], "moe_dtype": "fp8"},
        optimization={"strategy": "bayesian", "objective": "minimize_ttft", "max_parallel_experiments": 3, "seed": 4},
        benchmark={"traffic_scenarios": ["N(480,240)/(300,150)"], "num_concurrency": [1, 8],
                   "additional_params": {"temperature": "0.0", "stop": None}},
        slo={"ttft": {"threshold": 0.5, "hard_fail": True}, "latency": {"p95": {"threshold": 3}}},
    )
    spec = parse_task(data)
    assert spec.engine == "vllm" and spec.deployment_mode == "sim"
    assert set(spec.search_space) == {"gpu-memory-utilization", "max-num-seqs", "tensor-parallel-size",
                                      "enable-expert-parallel", "kv-cache-dtype"}
    again = parse_task(spec.to_dict())
    assert again.to_dict() == spec.to_dict()
    assert again.search_space == spec.search_space and again.notes == spec.notes
    assert spec.gpus_needed({"tensor-parallel-size": 2, "enable-expert-parallel": True}) == 2


def test_parallelism_degrees_must_be_positive_integers():
    for bad in (["lpm"], [0, 1], [1.5], [True], {"type": "float", "low": 1, "high": 4}):
        with pytest.raises(TaskSpecError) as info:
            parse_task(minimal(parameters={"tp-size": bad}, optimization={"strategy": "random"}))
        assert locs(info.value) == ["parameters.tp-size"]
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(optimization={"strategy": "list", "configs": [{"dp-size": "two"}]}))
    assert locs(info.value) == ["optimization.configs.0.dp-size"]


# --- robustness: any JSON-like input gives a spec or a TaskSpecError, nothing else ----

_leaf = (st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(allow_nan=True) | st.text(max_size=8)
         | st.sampled_from(["grid_search", "list", "bayesian", "sim", "vllm", "D(1,2)", "choice", "continuous"]))
_json = st.recursive(_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.text(max_size=6) | st.sampled_from(["type", "low", "high", "values", "tp", "strategy", "configs", "engine"]),
    c, max_size=4), max_leaves=15)
_BASE = json.loads((DATA / "bayesian_task.json").read_text())


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(sorted(_BASE) + ["parallel_config", "quant_config", "sim"]), _json, max_size=4),
       st.lists(st.sampled_from(sorted(_BASE)), max_size=3))
def test_any_input_gives_a_spec_or_a_task_spec_error(overrides, dropped):
    data = {**_BASE, **overrides}
    for key in dropped:
        data.pop(key, None)
    try:
        spec = parse_task(data)
    except TaskSpecError as exc:
        assert exc.errors and all(isinstance(e["loc"], list) and e["msg"] for e in exc.errors)
        return
    assert parse_task(spec.to_dict()).to_dict() == spec.to_dict()


@pytest.mark.parametrize("objective,extra,loc", [
    ("maximize_goodput", {}, "optimization.objective"),  # goodput counts requests meeting the SLOs
    ("minimize_cost", {}, "optimization.gpu_price_per_hour"),
    ("maximize_sustainable_rate", {"slo": {"ttft": {"threshold": 1.0}}}, "benchmark.rate_search"),
    ("maximize_sustainable_rate", {"slo": {"ttft": {"threshold": 1.0}},
                                   "benchmark": {"rate_search": {"low": 8, "high": 2}}}, "benchmark.rate_search"),
])
def test_an_objective_missing_what_its_figure_needs_is_a_field_error(objective, extra, loc):
    with pytest.raises(TaskSpecError) as info:
        parse_task(minimal(optimization={"objective": objective}, **extra))
    assert locs(info.value) == [loc]


def test_new_objectives_load_with_what_they_need():
    cost = parse_task(minimal(optimization={"objective": "minimize_cost", "gpu_price_per_hour": 2.5}))
    assert cost.objective_names == ["minimize_cost"] and not cost.uses_rate_search
    rate = parse_task(minimal(optimization={"objective": "maximize_sustainable_rate"},
                              slo={"ttft": {"threshold": 1.0}}, benchmark={"rate_search": {"low": 1, "high": 32}}))
    assert rate.uses_rate_search and rate.benchmark.rate_search.steps == 4
    assert parse_task(rate.to_dict()).to_dict() == rate.to_dict()
