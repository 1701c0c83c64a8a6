"""The engine registry as a task sees it: vocabularies, reserved flags, GPU counts, argv,
operator-defined engines and failure kinds."""
from __future__ import annotations

import json

import pytest

from app.domain.engines import classify_failure, engines, get_engine
from app.domain.engines.failures import is_infeasible
from app.domain.engines.registry import Launch
from app.domain.taskspec import TaskSpecError, parse_task
from tests.helpers import use_engines_file

pytestmark = pytest.mark.unit


def task(**kw) -> dict:
    base = {"task_name": "t", "model": {"id_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}, "base_runtime": "sglang",
            "deployment_mode": "docker", "parameters": {"tp-size": [1]},
            "optimization": {"strategy": "grid_search", "objective": "maximize_throughput"},
            "benchmark": {"traffic_scenarios": ["D(64,16)"], "num_concurrency": [1]}}
    base.update(kw)
    return base


def errors(data: dict) -> list[dict]:
    with pytest.raises(TaskSpecError) as exc:
        parse_task(data)
    return exc.value.errors


@pytest.mark.parametrize("engine,flag", [
    ("sglang", "host"), ("sglang", "port"), ("sglang", "model-path"), ("sglang", "served-model-name"),
    ("sglang", "api-key"), ("vllm", "model"), ("vllm", "host"), ("vllm", "port"),
])
def test_runtime_owned_flags_are_refused_at_validation(engine, flag):
    (err,) = errors(task(base_runtime=engine, parameters={flag: ["x"]}))
    assert err["loc"] == ["parameters", flag]
    assert "runtime" in err["msg"] and f"--{flag}" in err["msg"]


@pytest.mark.parametrize("flag", ["parent-pid", "num-gpus", "sim-time-scale", "host", "model"])
def test_the_simulators_control_flags_are_refused(flag):
    (err,) = errors(task(base_runtime="sim", deployment_mode="sim", parameters={flag: [1]}))
    assert err["loc"] == ["parameters", flag] and f"--{flag}" in err["msg"]


def test_misspelt_flag_gets_the_closest_known_name():
    (err,) = errors(task(parameters={"schedule-polcy": ["lpm"]}))
    assert err["msg"] == "unknown flag --schedule-polcy for SGLang 0.5.3; did you mean --schedule-policy?"
    (err,) = errors(task(base_runtime="vllm", parameters={"tp-size": [1]}))
    assert "did you mean --tensor-parallel-size?" in err["msg"]
    (err,) = errors(task(parameters={"max-num-seqs": [8]}))
    assert "did you mean --max-running-requests?" in err["msg"]


def test_values_are_checked_against_the_flags_type_and_choices():
    errs = errors(task(parameters={"schedule-policy": ["fastest"], "mem-fraction-static": ["lots"]}))
    by_loc = {tuple(e["loc"]): e["msg"] for e in errs}
    assert "lpm" in by_loc[("parameters", "schedule-policy")]
    assert by_loc[("parameters", "mem-fraction-static")] == "--mem-fraction-static takes a number, not 'lots'"


def test_booleans_become_bare_flags_and_no_flags():
    spec = parse_task(task(parameters={"disable-cuda-graph": [True, False], "tp": [1]}))
    assert spec.launch_flags({"disable-cuda-graph": True, "tp-size": 1}) == ["--disable-cuda-graph", "--tp-size", "1"]
    assert spec.launch_flags({"disable-cuda-graph": False, "tp-size": 1}) == ["--tp-size", "1"]
    vllm = parse_task(task(base_runtime="vllm", parameters={"enforce-eager": [True, False]}))
    assert vllm.launch_flags({"enforce-eager": True}) == ["--enforce-eager"]
    assert vllm.launch_flags({"enforce-eager": False}) == ["--no-enforce-eager"]


def test_gpu_count_is_tp_pp_dp_with_sglangs_dp_attention_inside_tp():
    sglang, vllm = get_engine("sglang"), get_engine("vllm")
    assert sglang.gpus_needed({"tp-size": 2, "pp-size": 2, "dp-size": 2}) == 8
    assert sglang.gpus_needed({"tp-size": 4, "dp-size": 4, "enable-dp-attention": True}) == 4
    assert vllm.gpus_needed({"tensor-parallel-size": 2, "data-parallel-size": 3}) == 6
    assert vllm.gpus_needed({}) == 1


def test_process_and_container_argv_are_lists_with_the_task_flags_last():
    launch = Launch(model="m", host="127.0.0.1", port=1234, num_gpus=2, flags=("--chat-template", "a b; rm -rf /"))
    argv = get_engine("vllm").command(launch, python="python3")
    assert argv == ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "m", "--host", "127.0.0.1",
                    "--port", "1234", "--chat-template", "a b; rm -rf /"]
    assert get_engine("vllm").command(launch, in_container=True)[:2] == ["--model", "m"]


def test_an_operator_engine_is_one_file_entry(tmp_path, monkeypatch):
    path = tmp_path / "engines.json"
    path.write_text(json.dumps({"engines": {"xpyd": {
        "label": "xPyD simulator",
        "command": ["{python}", "-m", "xpyd_sim", "serve", "--host", "{host}", "--port", "{port}", "--model", "{model}"],
        "flags": {"max-num-seqs": {"type": "int"}, "scheduling": {"type": "bool"}},
        "reserved": ["config"],
    }}}))
    use_engines_file(monkeypatch, path)
    assert "xpyd" in engines()
    spec = parse_task(task(base_runtime="xpyd", deployment_mode="process",
                           parameters={"max-num-seqs": [1, 8], "scheduling": [True]}))
    assert spec.engine == "xpyd" and spec.launcher.name == "xpyd"
    assert spec.launch_flags({"max-num-seqs": 8, "scheduling": True}) == ["--max-num-seqs", "8", "--scheduling"]
    (err,) = errors(task(base_runtime="xpyd", deployment_mode="process", parameters={"config": ["/etc/x"]}))
    assert "--config" in err["msg"]
    (err,) = errors(task(base_runtime="xpyd", deployment_mode="process", parameters={"max-num-seq": [1]}))
    assert "did you mean --max-num-seqs?" in err["msg"]


def test_a_broken_engines_file_is_reported_on_the_task(tmp_path, monkeypatch):
    path = tmp_path / "engines.yaml"
    path.write_text("mine:\n  command: python -m server --port {port}\n")
    use_engines_file(monkeypatch, path)
    errs = errors(task())
    assert any(e["loc"] == ["engine"] and "argv, not a shell line" in e["msg"] for e in errs)


@pytest.mark.parametrize("log,code,kind", [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 1, "oom"),
    ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`", 1, "kv_cache"),
    ("RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.", 1, "kv_cache"),
    ("launch_server.py: error: argument --tp-size: invalid int value: 'x'", 2, "invalid_argument"),
    ("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970", 1, "nccl"),
    ("Segmentation fault", 139, "engine_exited"),
    ("", 2, "invalid_argument"),
])
def test_start_up_failures_are_classified(log, code, kind):
    assert classify_failure(log, code) == kind


def test_only_configuration_failures_are_infeasible():
    assert all(is_infeasible(k) for k in ("oom", "kv_cache", "invalid_argument", "nccl", "startup_timeout"))
    assert not any(is_infeasible(k) for k in ("image_pull", "engine_died", "worker_lost", "internal", None))


def test_ome_form_file_loads_with_an_inferred_engine_and_ome_mode_is_refused_at_submission(db):
    from app.task_service import create_task

    data = task(base_runtime="llama-3-2-1b-instruct-rt",
                parameters={"mem_frac": [0.8, 0.9], "schedule_policy": ["lpm", "fcfs"], "max_total_tokens": [4096]})
    spec = parse_task(data)
    assert spec.engine == "sglang"
    assert set(spec.search_space) == {"mem-fraction-static", "schedule-policy", "max-total-tokens"}
    assert any("inferred because 3 of 3 parameter name(s) are sglang flags" in n for n in spec.notes)
    vllm = parse_task({**data, "engine": "vllm", "parameters": {"mem_frac": [0.8], "max_num_seqs": [64]}})
    assert vllm.engine == "vllm" and set(vllm.search_space) == {"gpu-memory-utilization", "max-num-seqs"}
    with pytest.raises(TaskSpecError) as exc:
        create_task(parse_task({**data, "deployment_mode": "ome"}), enqueue=False)
    (err,) = exc.value.errors
    assert err["loc"] == ["deployment_mode"] and "Kubernetes" in err["msg"]


def test_a_stored_spec_keeps_the_parameter_order():
    """Launch commands and CSV columns follow the order the user wrote the parameters in."""
    from app.domain.taskspec import stored_spec

    data = parse_task(task(parameters={"schedule-policy": ["lpm"], "chunked-prefill-size": [512],
                                       "max-running-requests": [64]})).to_dict()
    spec = stored_spec(data)
    assert list(spec.search_space) == ["schedule-policy", "chunked-prefill-size", "max-running-requests"]
    assert stored_spec(dict(data)) is spec  # parsed once per content
