"""Run each experiment's engine in its own Docker container.

Containers give every experiment a clean, reproducible environment (the engine's
published image) and a single handle to tear down, so a crashed or cancelled experiment
never leaves a stray server holding GPU memory. A container outlives a killed worker (the
daemon owns it), so its id is recorded on the attempt and every container is labelled with
its experiment, attempt and store: the reaper (workers.reaper) removes what no live job
owns, by id, never by name.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass, replace
from typing import Any

import docker
import docker.errors
import docker.types

from app.domain.engines import allowed_images
from app.processes import free_port
from workers.cpu_device import CPU_INDEX
from workers.runtimes.base import Deployment, EngineError, EngineRequest, Runtime
from workers.runtimes.environment import engine_environment

log = logging.getLogger(__name__)

HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
MODELS_IN_CONTAINER = "/models"
LABEL_EXPERIMENT = "autotuner.experiment"
LABEL_ATTEMPT = "autotuner.attempt"
LABEL_MANAGED = "autotuner.managed"
LABEL_STORE = "autotuner.store"


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
    raw = os.environ.get("AUTOTUNER_ALLOWED_IMAGES")
    if raw is None:
        return allowed_images()
    return [item.strip() for item in raw.split(",") if item.strip()]


def store_label() -> str:
    """Which store's experiments a container belongs to: two installations sharing one
    Docker daemon must never reap each other's engines."""
    from app.config import get_settings
    from sqlalchemy.engine import make_url

    url = make_url(get_settings().database_url).render_as_string(hide_password=True)
    return hashlib.sha256(url.encode()).hexdigest()[:16]




def model_mount(request: EngineRequest) -> tuple[str, str] | None:
    """(host path, container path) of a model that is a file (llama.cpp's GGUF): mounted
    read-only, alone, under MODELS_IN_CONTAINER; None for a hub model name."""
    if not request.launcher.model_is_file:
        return None
    host = os.path.abspath(request.model)
    return host, f"{MODELS_IN_CONTAINER}/{os.path.basename(host)}"


class DockerRuntime(Runtime):
    """Starts SGLang / vLLM in containers pinned to the experiment's GPUs."""

    name = "docker"

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
                raise EngineError(f"cannot reach the Docker daemon: {exc}", kind="internal") from exc
        return self._client

    # -- building the container -------------------------------------------------

    def check_image(self, image: str) -> None:
        """Refuse images outside the allow-list: a tuning request must not be able to
        run arbitrary code with GPU access and host IPC."""
        if image_repository(image) not in self.allowed_images:
            raise EngineError(
                f"image {image} is not allowed; allowed: {', '.join(self.allowed_images)}", kind="image_pull"
            )

    @staticmethod
    def command(request: EngineRequest) -> list[str]:
        """The container command as an argv list (flag values with spaces stay whole); a
        model that is a file is named by where it is mounted (`model_mount`)."""
        launcher = request.launcher
        mount = model_mount(request)
        if mount is not None:
            request = replace(request, model=mount[1])
        return launcher.command(request.launch("0.0.0.0", launcher.container_port), in_container=True)

    @staticmethod
    def _environment(request: EngineRequest) -> dict[str, str]:
        """The allow-listed variables only (HF_TOKEN for gated models, NCCL/CUDA tuning);
        never the worker's secrets. Values are never logged."""
        return engine_environment(local=False)

    def _volumes(self, request: EngineRequest) -> dict[str, dict[str, str]]:
        """Share the host's HF cache so every experiment does not re-download weights; a
        model file is mounted read-only."""
        volumes: dict[str, dict[str, str]] = {}
        if self.hf_cache and os.path.isdir(self.hf_cache):
            volumes[self.hf_cache] = {"bind": HF_CACHE_IN_CONTAINER, "mode": "rw"}
        mount = model_mount(request)
        if mount is not None:
            volumes[mount[0]] = {"bind": mount[1], "mode": "ro"}
        return volumes

    def _ensure_image(self, image: str) -> None:
        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot inspect image {image}: {exc}", kind="image_pull") from exc
        log.info("pulling image %s", image)
        try:
            self.client.images.pull(image)
        except docker.errors.DockerException as exc:
            raise EngineError(
                f"image {image} is not present and could not be pulled: {exc}", kind="image_pull"
            ) from exc

    # -- Runtime interface ------------------------------------------------------

    def start(self, request: EngineRequest) -> Deployment:
        launcher = request.launcher
        if launcher.docker_command is None or not launcher.image:
            raise EngineError(f"engine {launcher.name!r} has no container image; run it with deployment_mode "
                              "'process'", kind="invalid_argument")
        image = request.image or f"{launcher.image}:{launcher.image_tag}"
        self.check_image(image)  # before any Docker call
        if not request.gpu_indices:
            raise EngineError("no GPUs were allocated to this experiment", kind="internal")
        if CPU_INDEX in request.gpu_indices:
            raise EngineError("a CPU device runs its engines with the process runtime (deployment_mode 'process')",
                              kind="invalid_argument")
        argv = self.command(request)
        host_port = free_port()
        name = f"autotuner-exp{request.experiment_id}-{secrets.token_hex(4)}"

        self._ensure_image(image)
        log.info(
            "starting %s for experiment %s on GPUs %s (port %s): %s",
            name, request.experiment_id, request.gpu_indices, host_port, argv,
        )
        options: dict[str, Any] = {}
        if launcher.needs_gpu_devices:
            # Host IPC and a large /dev/shm are what multi-GPU engines need for NCCL.
            options = dict(
                device_requests=[
                    docker.types.DeviceRequest(
                        device_ids=[str(i) for i in request.gpu_indices],
                        capabilities=[["gpu"]],
                    )
                ],
                shm_size="16g",
                ipc_mode="host",
            )
        try:
            container = self.client.containers.run(
                image,
                command=argv,
                detach=True,
                name=name,
                labels={
                    LABEL_EXPERIMENT: str(request.experiment_id),
                    LABEL_ATTEMPT: str(request.attempt),
                    LABEL_MANAGED: "true",
                    LABEL_STORE: store_label(),
                },
                ports={f"{launcher.container_port}/tcp": ("127.0.0.1", host_port)},
                environment=self._environment(request),
                volumes=self._volumes(request),
                **options,
            )
        except docker.errors.DockerException as exc:
            raise EngineError(f"could not start container {name} from {image}: {exc}", kind="engine_exited") from exc
        return Deployment(
            base_url=f"http://127.0.0.1:{host_port}",
            handle=DockerHandle(container=container, name=name),
            runtime=self.name,
            identity={"runtime": self.name, "container": container.id},
            health_path=launcher.health_path,
            simulated=launcher.simulated,
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

    def exit_code(self, deployment: Deployment) -> int | None:
        handle: DockerHandle = deployment.handle
        try:
            handle.container.reload()
        except docker.errors.NotFound:
            return None
        state = handle.container.attrs.get("State") or {}
        return None if state.get("Running") else state.get("ExitCode")

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

    # -- housekeeping (the reaper) --------------------------------------------------

    def remove_container(self, container_id: str) -> bool:
        """Remove one container by id; True once it is gone (also if it never existed)."""
        try:
            self.client.containers.get(container_id).remove(force=True)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as exc:
            log.warning("could not remove container %s: %s", container_id[:12], exc)
            return False
        return True

    def managed_containers(self) -> list[tuple[str, int | None, int | None]]:
        """(id, experiment, attempt) of every container of this store on the daemon, so the
        reaper also finds one whose id was never recorded (a crash right after start)."""
        out = []
        for container in self.client.containers.list(
            all=True, filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_STORE}={store_label()}"]}
        ):
            labels = container.labels or {}
            out.append((container.id, _int(labels.get(LABEL_EXPERIMENT)), _int(labels.get(LABEL_ATTEMPT))))
        return out


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
