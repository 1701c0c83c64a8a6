"""llama.cpp in the engine registry: its vocabulary (from the pinned build's own --help),
runtime-owned flags, GPU count, argv for a process and for its published image, and its
failure kinds, read from what the real llama-server prints."""
from __future__ import annotations

import json
import subprocess

import pytest

from app.domain.engines import classify_failure, get_engine
from app.domain.engines.failures import measurement_failure
from app.domain.engines.flags import VOCAB_DIR
from app.domain.engines.registry import Launch
from app.domain.taskspec import TaskSpecError, parse_task
from app.tools.llamacpp.build import LLAMA_CPP_PYTHON_VERSION
from app.tools.llamacpp.vocab import vocabulary_from_help
from workers.runtimes.base import EngineRequest
from workers.runtimes.docker_runtime import DockerRuntime
from workers.runtimes.process import ProcessRuntime

LLAMACPP = get_engine("llamacpp")


def task(parameters: dict, mode: str = "process") -> dict:
    return {"task_name": "t", "model": {"id_or_path": "/models/tiny.gguf"}, "base_runtime": "llamacpp",
            "deployment_mode": mode, "parameters": parameters,
            "optimization": {"strategy": "grid_search", "objective": "maximize_throughput"},
            "benchmark": {"traffic_scenarios": ["D(64,16)"], "num_concurrency": [1]}}


def request(flags: list[str], gpus: list[int], model: str = "/data/models/tiny.gguf") -> EngineRequest:
    return EngineRequest(experiment_id=7, attempt=1, launcher=LLAMACPP, flavour="llamacpp", model=model,
                         flags=flags, gpu_indices=gpus)


@pytest.mark.unit
def test_the_tuned_flags_have_their_types_and_choices():
    flag = LLAMACPP.flag
    assert {n: flag(n).type for n in ("parallel", "batch-size", "ubatch-size", "threads", "threads-batch",
                                      "ctx-size")} == dict.fromkeys(
        ("parallel", "batch-size", "ubatch-size", "threads", "threads-batch", "ctx-size"), "int")
    assert flag("cont-batching").type == "bool_optional"
    assert flag("flash-attn").choices == ("on", "off", "auto")
    assert flag("split-mode").choices == ("none", "layer", "row", "tensor")
    assert "q8_0" in flag("cache-type-k").choices and "q4_0" in flag("cache-type-v").choices
    assert LLAMACPP.canonical("n-gpu-layers") == LLAMACPP.canonical("ngl") == "gpu-layers"
    assert LLAMACPP.canonical("np") == "parallel" and LLAMACPP.canonical("ub") == "ubatch-size"


@pytest.mark.unit
def test_a_task_is_checked_against_the_vocabulary():
    parse_task(task({"parallel": [1, 4], "ubatch-size": [128, 512], "flash-attn": ["on"], "n-gpu-layers": [0]}))
    with pytest.raises(TaskSpecError) as exc:
        parse_task(task({"paralel": [2], "flash-attn": ["maybe"], "threads": ["many"]}))
    msgs = {e["loc"][-1]: e["msg"] for e in exc.value.errors}
    assert "did you mean --parallel?" in msgs["paralel"]
    assert "on, off, auto" in msgs["flash-attn"] and "integer" in msgs["threads"]


@pytest.mark.unit
@pytest.mark.parametrize("flag", ["host", "port", "model", "m", "api-key", "api-key-file", "hf-repo", "model-url",
                                  "slot-save-path", "log-file", "ssl-key-file"])
def test_runtime_owned_flags_are_refused(flag):
    with pytest.raises(TaskSpecError) as exc:
        parse_task(task({flag: ["x"]}))
    (err,) = exc.value.errors
    assert err["loc"][-1] == flag and "runtime" in err["msg"]


@pytest.mark.unit
def test_one_gpu_unless_the_tensor_split_lists_more():
    assert LLAMACPP.gpus_needed({"parallel": 4}) == 1
    assert LLAMACPP.gpus_needed({"tensor-split": "3,1"}) == 2
    assert LLAMACPP.gpus_needed({"ts": "1,1,1,1"}) == 4


@pytest.mark.unit
def test_process_argv_runs_the_given_llama_server_with_the_task_flags_last():
    argv = LLAMACPP.command(Launch("/m/tiny.gguf", "127.0.0.1", 8123, 1, ("--parallel", "4")),
                            llama_server="/cache/llama-server")
    assert argv == ["/cache/llama-server", "--model", "/m/tiny.gguf", "--host", "127.0.0.1", "--port", "8123",
                    "--parallel", "4"]


@pytest.mark.unit
def test_the_process_runtime_uses_the_configured_server(monkeypatch):
    monkeypatch.setenv("AUTOTUNER_LLAMA_SERVER", "/opt/llama/llama-server")
    argv = ProcessRuntime().command(request(["--threads", "2"], []), 9000)
    assert argv[0] == "/opt/llama/llama-server" and argv[-2:] == ["--threads", "2"]


@pytest.mark.unit
def test_the_container_runs_the_published_server_image_with_the_model_file_mounted():
    req = request(["--parallel", "2"], [0])
    assert DockerRuntime.command(req) == ["--model", "/models/tiny.gguf", "--host", "0.0.0.0", "--port", "8080",
                                          "--parallel", "2"]
    runtime = DockerRuntime(client=object(), allowed_images=["ghcr.io/ggml-org/llama.cpp"], hf_cache="/nonexistent")
    assert runtime._volumes(req) == {"/data/models/tiny.gguf": {"bind": "/models/tiny.gguf", "mode": "ro"}}
    assert (LLAMACPP.image, LLAMACPP.image_tag, LLAMACPP.health_path) == ("ghcr.io/ggml-org/llama.cpp",
                                                                          "server-cuda", "/health")


@pytest.mark.unit
@pytest.mark.parametrize("log,code,kind", [
    ("error: invalid argument: --bogus", 1, "invalid_argument"),
    ('error while handling argument "--flash-attn": error: unknown value for --flash-attn: \'maybe\'', 1,
     "invalid_argument"),
    ("E ggml_aligned_malloc: insufficient memory (attempted to allocate 7812.50 MB)\n"
     "E llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache", 1, "oom"),
    ("E alloc_tensor_range: failed to allocate CPU buffer of size 8192000000", 1, "oom"),
    ("I srv  llama_server: model loaded", 1, "engine_exited"),
])
def test_start_up_failures_are_classified(log, code, kind):
    assert classify_failure(log, code) == kind


@pytest.mark.unit
def test_requests_beyond_the_context_make_the_configuration_infeasible():
    assert measurement_failure([{}, {"context_exceeded": 3, "http_500": 1}]) == "kv_cache"
    assert measurement_failure([{"connection": 9}]) == "bad_measurement"


# ---- against the real llama-server ---------------------------------------------------------


@pytest.mark.process
def test_the_packaged_vocabulary_is_the_pinned_builds_own_help(llama_server_binary):
    help_text = subprocess.run([str(llama_server_binary), "--help"], capture_output=True, text=True,
                               timeout=60, check=True).stdout
    packaged = json.loads((VOCAB_DIR / "llamacpp.json").read_text())
    assert packaged == vocabulary_from_help(help_text, LLAMA_CPP_PYTHON_VERSION)


@pytest.mark.process
@pytest.mark.parametrize("flags,kind", [
    (["--flash-attn", "maybe"], "invalid_argument"),
    (["--threads", "many"], "invalid_argument"),
    (["--ctx-size", "4000000"], "oom"),  # 8 GB of KV cache under a 1.5 GB address-space limit
])
def test_real_start_up_failures_are_classified(llama_server_binary, tiny_gguf, flags, kind):
    launch = Launch(str(tiny_gguf), "127.0.0.1", 1, 1, tuple(flags))
    argv = ["prlimit", "--as=1500000000", *LLAMACPP.command(launch, llama_server=str(llama_server_binary))]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert classify_failure(proc.stdout + proc.stderr, proc.returncode) == kind
