"""DockerRuntime against a mocked docker client: the exact calls it makes."""
from __future__ import annotations

from unittest import mock

import os

import docker.errors
import docker.types
import pytest

from app.domain.engines import get_engine
from workers.runtimes.base import EngineError, EngineRequest
from workers.runtimes.docker_runtime import DockerRuntime, image_repository, store_label

pytestmark = pytest.mark.unit


def _request(engine: str = "sglang", **kw) -> EngineRequest:
    base = dict(
        experiment_id=7,
        attempt=1,
        launcher=get_engine(engine),
        flavour=engine,
        model="Qwen/Qwen2.5-0.5B-Instruct",
        flags=["--tp-size", "2"],
        gpu_indices=[2, 3],
    )
    base.update(kw)
    return EngineRequest(**base)


@pytest.fixture
def client() -> mock.MagicMock:
    return mock.MagicMock()


@pytest.fixture
def runtime(client, tmp_path, monkeypatch) -> DockerRuntime:
    for name in list(os.environ):
        if name.startswith(("HF_", "NCCL_", "CUDA_", "VLLM_", "SGLANG_", "LC_")) or name in ("LANG", "TZ"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    monkeypatch.setenv("AUTOTUNER_AUTH_TOKEN", "tuner-secret")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@db/x")
    monkeypatch.delenv("AUTOTUNER_ALLOWED_IMAGES", raising=False)
    monkeypatch.setattr(
        "workers.runtimes.docker_runtime.free_port", lambda: 41234
    )
    # A cache dir that exists, so the volume is mounted.
    return DockerRuntime(client=client, hf_cache=str(tmp_path))


def test_sglang_run_call_is_exact(runtime, client, tmp_path):
    dep = runtime.start(_request())

    client.containers.run.assert_called_once()
    args, kwargs = client.containers.run.call_args
    assert args == ("lmsysorg/sglang:latest",)
    assert kwargs["command"] == [
        "python3", "-m", "sglang.launch_server",
        "--model-path", "Qwen/Qwen2.5-0.5B-Instruct",
        "--host", "0.0.0.0", "--port", "30000",
        "--tp-size", "2",
    ]
    assert kwargs["detach"] is True
    assert kwargs["name"].startswith("autotuner-exp7-")
    assert len(kwargs["name"]) > len("autotuner-exp7-")
    assert kwargs["labels"] == {"autotuner.experiment": "7", "autotuner.attempt": "1", "autotuner.managed": "true",
                                "autotuner.store": store_label()}
    assert kwargs["ports"] == {"30000/tcp": ("127.0.0.1", 41234)}
    assert kwargs["device_requests"] == [
        docker.types.DeviceRequest(device_ids=["2", "3"], capabilities=[["gpu"]])
    ]
    dr = kwargs["device_requests"][0]
    assert dr["DeviceIDs"] == ["2", "3"] and dr["Capabilities"] == [["gpu"]]
    assert kwargs["shm_size"] == "16g"
    assert kwargs["ipc_mode"] == "host"
    # The allow-list only: never the tuner's token or database URL, nor host PATH/HOME.
    assert kwargs["environment"] == {"NCCL_DEBUG": "INFO"}
    assert kwargs["volumes"] == {
        str(tmp_path): {"bind": "/root/.cache/huggingface", "mode": "rw"}
    }
    assert dep.base_url == "http://127.0.0.1:41234"
    assert dep.runtime == "docker"
    assert dep.handle.container is client.containers.run.return_value
    assert dep.identity == {"runtime": "docker", "container": client.containers.run.return_value.id}


def test_vllm_command_and_port(runtime, client):
    dep = runtime.start(_request("vllm", flags=["--max-num-seqs", "64"]))
    args, kwargs = client.containers.run.call_args
    assert args == ("vllm/vllm-openai:latest",)
    assert kwargs["command"] == [
        "--model", "Qwen/Qwen2.5-0.5B-Instruct",
        "--host", "0.0.0.0", "--port", "8000",
        "--max-num-seqs", "64",
    ]
    assert kwargs["ports"] == {"8000/tcp": ("127.0.0.1", 41234)}
    assert dep.base_url == "http://127.0.0.1:41234"


def test_flag_with_spaces_stays_one_argv_element(runtime, client):
    runtime.start(_request(flags=["--chat-template", "a b; rm -rf /"]))
    argv = client.containers.run.call_args.kwargs["command"]
    assert isinstance(argv, list)
    assert argv[-2:] == ["--chat-template", "a b; rm -rf /"]


def test_disallowed_image_refused_before_any_docker_call(runtime, client):
    with pytest.raises(EngineError, match="image evil/miner:latest is not allowed; allowed: "):
        runtime.start(_request(image="evil/miner:latest"))
    assert client.mock_calls == []


def test_allowed_images_from_env(monkeypatch, client):
    monkeypatch.setenv("AUTOTUNER_ALLOWED_IMAGES", "myreg:5000/sglang-custom, other/img")
    rt = DockerRuntime(client=client, hf_cache="/nonexistent-autotuner-test")
    rt.check_image("myreg:5000/sglang-custom:v1")
    rt.check_image("other/img@sha256:" + "0" * 64)
    with pytest.raises(EngineError):
        rt.check_image("lmsysorg/sglang:latest")


def test_image_repository_parsing():
    assert image_repository("lmsysorg/sglang:latest") == "lmsysorg/sglang"
    assert image_repository("lmsysorg/sglang") == "lmsysorg/sglang"
    assert image_repository("lmsysorg/sglang:v0.4@sha256:abc") == "lmsysorg/sglang"
    assert image_repository("localhost:5000/foo") == "localhost:5000/foo"
    assert image_repository("docker.io/vllm/vllm-openai:v0.6") == "vllm/vllm-openai"


def test_hf_token_passed_through_and_no_cache_volume(client, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setattr("workers.runtimes.docker_runtime.free_port", lambda: 40000)
    rt = DockerRuntime(client=client, hf_cache="/nonexistent-autotuner-test")
    rt.start(_request())
    kwargs = client.containers.run.call_args.kwargs
    assert kwargs["environment"]["HF_TOKEN"] == "hf_secret"
    assert kwargs["volumes"] == {}


def test_missing_image_is_pulled(runtime, client):
    client.images.get.side_effect = docker.errors.ImageNotFound("nope")
    runtime.start(_request())
    client.images.pull.assert_called_once_with("lmsysorg/sglang:latest")
    client.containers.run.assert_called_once()


def test_pull_failure_is_clear(runtime, client):
    client.images.get.side_effect = docker.errors.ImageNotFound("nope")
    client.images.pull.side_effect = docker.errors.APIError("registry unreachable")
    with pytest.raises(EngineError, match="could not be pulled"):
        runtime.start(_request())
    client.containers.run.assert_not_called()


def test_run_failure_becomes_engine_error(runtime, client):
    client.containers.run.side_effect = docker.errors.APIError("port is already allocated")
    with pytest.raises(EngineError, match="port is already allocated"):
        runtime.start(_request())


def test_stop_removes_and_is_safe_twice(runtime, client):
    dep = runtime.start(_request())
    container = client.containers.run.return_value
    runtime.stop(dep)
    runtime.stop(dep)
    container.stop.assert_called_once_with(timeout=10)
    container.remove.assert_called_once_with(force=True)
    assert runtime.is_alive(dep) is False


def test_stop_ignores_not_found(runtime, client):
    dep = runtime.start(_request())
    container = client.containers.run.return_value
    container.stop.side_effect = docker.errors.NotFound("gone")
    container.remove.side_effect = docker.errors.NotFound("gone")
    runtime.stop(dep)
    runtime.stop(dep)
    container.remove.assert_called_once_with(force=True)


def test_logs_decoded(runtime, client):
    dep = runtime.start(_request())
    container = client.containers.run.return_value
    container.logs.return_value = "loading weights…\nready\n".encode()
    assert runtime.logs(dep, tail=30) == "loading weights…\nready\n"
    container.logs.assert_called_once_with(tail=30)


def test_is_alive_reloads_status(runtime, client):
    dep = runtime.start(_request())
    container = client.containers.run.return_value
    container.status = "running"
    assert runtime.is_alive(dep) is True
    container.reload.assert_called()
    container.status = "exited"
    assert runtime.is_alive(dep) is False
    container.reload.side_effect = docker.errors.NotFound("gone")
    assert runtime.is_alive(dep) is False


def test_simulated_engine_gets_no_gpu_devices_and_its_own_image(runtime, client):
    req = _request("sim", flavour="sglang", flags=["--tp-size", "2"], sim={"time_scale": 0.1})
    runtime.start(req)
    args, kwargs = client.containers.run.call_args
    assert args == ("autotuner-sim:latest",)
    assert "device_requests" not in kwargs and "ipc_mode" not in kwargs
    argv = kwargs["command"]
    assert argv[:4] == ["python3", "-m", "app.tools.simengine", "--engine"] and "--sim-time-scale" in argv
    assert argv[-2:] == ["--tp-size", "2"]


def test_managed_containers_lists_only_this_stores_labelled_containers(runtime, client):
    def fake(cid: str, exp: str, attempt: str) -> mock.MagicMock:
        c = mock.MagicMock()
        c.id = cid
        c.labels = {"autotuner.experiment": exp, "autotuner.attempt": attempt, "autotuner.managed": "true"}
        return c

    client.containers.list.return_value = [fake("aa", "1", "2"), fake("bb", "x", "1")]
    assert runtime.managed_containers() == [("aa", 1, 2), ("bb", None, 1)]
    client.containers.list.assert_called_once_with(
        all=True, filters={"label": ["autotuner.managed=true", f"autotuner.store={store_label()}"]}
    )


def test_remove_container_by_id(runtime, client):
    assert runtime.remove_container("abc") is True
    client.containers.get.assert_called_once_with("abc")
    client.containers.get.return_value.remove.assert_called_once_with(force=True)
    client.containers.get.side_effect = docker.errors.NotFound("gone")
    assert runtime.remove_container("abc") is True
    client.containers.get.side_effect = docker.errors.APIError("daemon busy")
    assert runtime.remove_container("abc") is False


def test_client_created_lazily(monkeypatch):
    from_env = mock.MagicMock()
    monkeypatch.setattr(docker, "from_env", from_env)
    rt = DockerRuntime()
    from_env.assert_not_called()
    assert rt.client is from_env.return_value
    from_env.assert_called_once_with()


def test_unreachable_daemon_is_engine_error(monkeypatch):
    monkeypatch.setattr(
        docker, "from_env", mock.MagicMock(side_effect=docker.errors.DockerException("no socket"))
    )
    rt = DockerRuntime(hf_cache="/nonexistent-autotuner-test")
    with pytest.raises(EngineError, match="cannot reach the Docker daemon"):
        rt.start(_request())
