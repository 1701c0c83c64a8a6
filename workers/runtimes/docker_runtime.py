"""Run each experiment's engine in its own Docker container.

Containers give every experiment a clean, reproducible environment (the engine's
published image) and a single handle to tear down, so a crashed or cancelled experiment
never leaves a stray server holding GPU memory. Every container is labelled with its
experiment id so a restarted worker can find and remove what it left behind.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import docker.types

from workers.runtimes.base import Deployment, EngineError, EngineRequest, Runtime

log = logging.getLogger(__name__)

DEFAULT_ALLOWED_IMAGES = "lmsysorg/sglang,vllm/vllm-openai"
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
LABEL_EXPERIMENT = "autotuner.experiment"
LABEL_MANAGED = "autotuner.managed"


@dataclass(frozen=True)
class _EngineImage:
    """How one engine flavour is launched inside its image."""

    default_image: str
    container_port: int


ENGINES: dict[str, _EngineImage] = {
    "sglang": _EngineImage("lmsysorg/sglang:latest", 30000),
    "vllm": _EngineImage("vllm/vllm-openai:latest", 8000),
}


@dataclass
class DockerHandle:
    """What `stop`/`logs` need; `removed` makes a second `stop` a no-op."""

    container: Any
    name: str
    removed: bool = False


def image_repository(image: str) -> str:
    """The repository part of an image reference, without tag or digest.

    A ':' only starts a tag when it comes after the last '/', so a registry port
    (`localhost:5000/foo`) is not mistaken for one. A `docker.io/` prefix is dropped so
    `docker.io/lmsysorg/sglang` and `lmsysorg/sglang` compare equal.
    """
    ref = image.strip().split("@", 1)[0]
    colon = ref.rfind(":")
    if colon > ref.rfind("/"):
        ref = ref[:colon]
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            break
    return ref


def _allowed_from_env() -> list[str]:
    raw = os.environ.get("AUTOTUNER_ALLOWED_IMAGES", DEFAULT_ALLOWED_IMAGES)
    return [item.strip() for item in raw.split(",") if item.strip()]


def _free_host_port() -> int:
    """A port nobody listens on right now on 127.0.0.1.

    There is a small window before Docker binds it; a clash shows up as an APIError
    from `containers.run`, which becomes an EngineError like any other start failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DockerRuntime(Runtime):
    """Starts SGLang / vLLM in containers pinned to the experiment's GPUs."""

    name = "docker"
    simulated = False

    def __init__(
        self,
        client: Any | None = None,
        allowed_images: list[str] | None = None,
        hf_cache: str | None = None,
    ) -> None:
        """`client` defaults to `docker.from_env()`, made on first use so that importing
        or constructing this runtime never needs a Docker daemon."""
        self._client = client
        allowed = allowed_images if allowed_images is not None else _allowed_from_env()
        self.allowed_images = [image_repository(a) for a in allowed]
        self.hf_cache = hf_cache or os.environ.get("AUTOTUNER_HF_CACHE") or os.path.expanduser(
            "~/.cache/huggingface"
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                self._client = docker.from_env()
            except docker.errors.DockerException as exc:
                raise EngineError(f"cannot reach the Docker daemon: {exc}") from exc
        return self._client

    # -- building the container -------------------------------------------------

    def check_image(self, image: str) -> None:
        """Refuse images outside the allow-list: a tuning request must not be able to
        run arbitrary code with GPU access and host IPC."""
        if image_repository(image) not in self.allowed_images:
            raise EngineError(
                f"image {image} is not allowed; allowed: {', '.join(self.allowed_images)}"
            )

    @staticmethod
    def command(request: EngineRequest) -> list[str]:
        """The container command as an argv list (flag values with spaces stay whole)."""
        if request.engine == "sglang":
            return [
                "python3", "-m", "sglang.launch_server",
                "--model-path", request.model,
                "--host", "0.0.0.0",
                "--port", str(ENGINES["sglang"].container_port),
                *request.flags,
            ]
        if request.engine == "vllm":
            # The vllm/vllm-openai entrypoint already is the OpenAI API server.
            return [
                "--model", request.model,
                "--host", "0.0.0.0",
                "--port", str(ENGINES["vllm"].container_port),
                *request.flags,
            ]
        raise EngineError(f"unknown engine {request.engine!r}; expected one of {sorted(ENGINES)}")

    def _environment(self, request: EngineRequest) -> dict[str, str]:
        env = dict(request.env)
        token = os.environ.get("HF_TOKEN")
        if token and "HF_TOKEN" not in env:
            env["HF_TOKEN"] = token  # gated models; never logged
        return env

    def _volumes(self) -> dict[str, dict[str, str]]:
        """Share the host's HF cache so every experiment does not re-download weights."""
        if self.hf_cache and os.path.isdir(self.hf_cache):
            return {self.hf_cache: {"bind": HF_CACHE_IN_CONTAINER, "mode": "rw"}}
        return {}

    def _ensure_image(self, image: str) -> None:
        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot inspect image {image}: {exc}") from exc
        log.info("pulling image %s", image)
        try:
            self.client.images.pull(image)
        except docker.errors.DockerException as exc:
            raise EngineError(
                f"image {image} is not present and could not be pulled: {exc}"
            ) from exc

    # -- Runtime interface ------------------------------------------------------

    def start(self, request: EngineRequest) -> Deployment:
        if request.engine not in ENGINES:
            raise EngineError(
                f"unknown engine {request.engine!r}; expected one of {sorted(ENGINES)}"
            )
        spec = ENGINES[request.engine]
        image = request.image or spec.default_image
        self.check_image(image)  # before any Docker call
        if not request.gpu_indices:
            raise EngineError("no GPUs were allocated to this experiment")
        argv = self.command(request)
        host_port = _free_host_port()
        name = f"autotuner-exp{request.experiment_id}-{secrets.token_hex(4)}"

        self._ensure_image(image)
        log.info(
            "starting %s for experiment %s on GPUs %s (port %s): %s",
            name, request.experiment_id, request.gpu_indices, host_port, argv,
        )
        try:
            container = self.client.containers.run(
                image,
                command=argv,
                detach=True,
                name=name,
                labels={LABEL_EXPERIMENT: str(request.experiment_id), LABEL_MANAGED: "true"},
                ports={f"{spec.container_port}/tcp": ("127.0.0.1", host_port)},
                device_requests=[
                    docker.types.DeviceRequest(
                        device_ids=[str(i) for i in request.gpu_indices],
                        capabilities=[["gpu"]],
                    )
                ],
                shm_size="16g",
                ipc_mode="host",
                environment=self._environment(request),
                volumes=self._volumes(),
            )
        except docker.errors.DockerException as exc:
            raise EngineError(f"could not start container {name} from {image}: {exc}") from exc
        return Deployment(
            base_url=f"http://127.0.0.1:{host_port}",
            handle=DockerHandle(container=container, name=name),
            runtime=self.name,
        )

    def is_alive(self, deployment: Deployment) -> bool:
        handle: DockerHandle = deployment.handle
        if handle.removed:
            return False
        try:
            handle.container.reload()
        except docker.errors.NotFound:
            return False
        return handle.container.status in ("created", "running")

    def logs(self, deployment: Deployment, tail: int = 200) -> str:
        handle: DockerHandle = deployment.handle
        try:
            raw = handle.container.logs(tail=tail)
        except docker.errors.NotFound:
            return ""
        if isinstance(raw, bytes):
            return raw.decode("utf-8", errors="replace")
        return str(raw)

    def stop(self, deployment: Deployment) -> None:
        handle: DockerHandle = deployment.handle
        if handle.removed:
            return
        try:
            handle.container.stop(timeout=10)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # Removal with force below still kills it; keep going.
            log.warning("stopping %s failed: %s", handle.name, exc)
        try:
            handle.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        handle.removed = True

    # -- housekeeping -----------------------------------------------------------

    def cleanup_orphans(self, keep_experiment_ids: set[int]) -> list[str]:
        """Remove managed containers of experiments not in `keep_experiment_ids`.

        Called when a worker restarts: containers of experiments it no longer runs would
        otherwise hold GPUs forever. A managed container with an unreadable experiment
        label is treated as an orphan too.
        """
        removed: list[str] = []
        containers = self.client.containers.list(
            all=True, filters={"label": f"{LABEL_MANAGED}=true"}
        )
        for container in containers:
            labels = container.labels or {}
            try:
                exp_id: int | None = int(labels.get(LABEL_EXPERIMENT, ""))
            except ValueError:
                exp_id = None
            if exp_id is not None and exp_id in keep_experiment_ids:
                continue
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                continue
            log.info("removed orphan container %s (experiment %s)", container.name, exp_id)
            removed.append(container.name)
        return removed
