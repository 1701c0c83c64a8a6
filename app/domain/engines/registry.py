"""The engine registry: one entry per inference server the tuner can launch.

An entry says everything the rest of the system needs about an engine: how to start it as a
process or in a container (argv templates, image, port), where its health check is, which
flags it accepts (the vocabulary), which flags belong to the runtime and may not be tuned,
which flags multiply the number of GPUs, and how the original format's parameter names map
onto its flags. Adding an engine is adding an entry: built-in ones are below, operators add
their own (any OpenAI-compatible server) in a file named by `AUTOTUNER_ENGINES_FILE`.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from .constraints import DEFAULTS, RULES, FlagRule, refusal
from .flags import FlagSpec, Vocabulary, load_vocabulary, vocabulary_from_dict

# Flags that decide where an engine listens, what it serves and who may call it: the runtime
# sets them, a task must not (a task setting --host 0.0.0.0 would expose an unauthenticated
# server; --port would collide with the port the runtime picked).
_RUNTIME_OWNED = frozenset({"host", "port", "served-model-name", "api-key", "ssl-keyfile", "ssl-certfile",
                            "ssl-ca-certs", "download-dir"})
# Control options of our simulated engine: they tie it to its worker and to the task's sim section.
SIM_CONTROL_FLAGS = frozenset({"parent-pid", "num-gpus", "engine", "sim-gpu", "sim-model-preset",
                               "sim-time-scale", "sim-startup-seconds", "sim-launched-at"})
# The flags the simulator's performance model reads, per dialect; it accepts every other flag
# of the dialect's vocabulary and ignores it (the task's notes say so).
SIM_MODELLED_FLAGS: dict[str, frozenset[str]] = {
    "sglang": frozenset({"tp-size", "dp-size", "mem-fraction-static", "max-running-requests", "chunked-prefill-size",
                         "schedule-policy", "schedule-conservativeness", "cuda-graph-max-bs", "disable-cuda-graph",
                         "context-length", "kv-cache-dtype", "quantization"}),
    "vllm": frozenset({"tensor-parallel-size", "pipeline-parallel-size", "data-parallel-size",
                       "gpu-memory-utilization", "max-num-seqs", "max-num-batched-tokens", "enable-chunked-prefill",
                       "enable-prefix-caching", "max-model-len", "enforce-eager", "max-cudagraph-capture-size",
                       "kv-cache-dtype", "quantization"}),
}


# The argv templates' placeholders; any other braces (e.g. in a `python -c` script) stay as written.
_PLACEHOLDER = re.compile(r"\{(python|llama_server|model|host|port|num_gpus|flavour)\}")


class UnknownEngine(LookupError):
    """A task or setting names an engine the registry does not have."""


@dataclass(frozen=True)
class Launch:
    """What a runtime knows when it starts one engine: the values for the argv templates."""

    model: str
    host: str
    port: int
    num_gpus: int
    flags: tuple[str, ...] = ()
    flavour: str = ""  # the simulated engine's flag dialect (sglang / vllm)
    extra: tuple[str, ...] = ()  # launcher-specific control options (the simulator's)


@dataclass(frozen=True)
class EngineSpec:
    """One engine. `vocabulary` None means an open engine: any well-formed flag is passed on."""

    name: str
    label: str
    vocabulary: Vocabulary | None
    process_command: tuple[str, ...]
    docker_command: tuple[str, ...] | None = None
    image: str | None = None
    container_port: int = 8000
    health_path: str = "/health"
    reserved: frozenset[str] = _RUNTIME_OWNED
    # GPU count = product of these flags' values (tp × pp × dp); `dp_inside_tp` names the
    # switch under which the dp replicas live inside the tp group (SGLang's DP attention).
    gpu_flags: tuple[str, ...] = ()
    dp_flag: str | None = None
    dp_inside_tp: str | None = None
    # Original-format names (underscored OME preset names, parallel_config keys) -> flags.
    original_names: Mapping[str, str] = field(default_factory=dict)
    parallel_keys: Mapping[str, str] = field(default_factory=dict)
    # Another engine's spelling -> this engine's (for "vLLM calls it ..." hints).
    equivalents: Mapping[str, str] = field(default_factory=dict)
    simulated: bool = False
    needs_gpu_devices: bool = True
    # The flag that tells the engine what fraction of each GPU's memory it may take, and the
    # engine's default for it: on a GPU split into slots the fraction is scaled to the slot.
    memory_fraction_flag: str | None = None
    memory_fraction_default: float = 0.9
    # The image tag a container runs when the task names none (llama.cpp publishes no `latest`).
    image_tag: str = "latest"
    # The model is a file (llama.cpp's GGUF), not a hub name: a container gets it mounted.
    model_is_file: bool = False
    # It runs on a CPU device (workers/cpu_device.py), where it gets the device's CPU count
    # through `threads_flag` unless the task sets that flag.
    runs_on_cpu: bool = False
    threads_flag: str | None = None
    # GPU count = the number of comma-separated entries of this flag's value (llama.cpp's
    # --tensor-split 3,1 spreads the model over two GPUs; without it, one GPU).
    gpu_list_flag: str | None = None
    # Known constraints between flags (the engine's own argument checks, see constraints.py)
    # and the flag defaults they may assume: the search never suggests a point they refuse.
    constraints: tuple[FlagRule, ...] = ()
    constraint_defaults: Mapping[str, Any] = field(default_factory=dict)

    def refusal(self, params: Mapping[str, Any]) -> str | None:
        """Why this engine would refuse `params` by its own argument checks, or None."""
        if not self.constraints:
            return None
        return refusal(self.constraints, self.constraint_defaults, {self.canonical(k): v for k, v in params.items()})

    def flag(self, name: str) -> FlagSpec | None:
        return self.vocabulary.get(name) if self.vocabulary is not None else None

    def canonical(self, name: str) -> str:
        """The flag's own spelling (aliases resolved); unknown names come back unchanged."""
        if self.vocabulary is None:
            return name
        return self.vocabulary.canonical(name) or name

    def unknown_flag_message(self, name: str) -> str:
        vocab = self.vocabulary
        assert vocab is not None
        hint = self.equivalents.get(name) or vocab.closest(name)
        where = f"{self.label} {vocab.version}".strip()
        return f"unknown flag --{name} for {where}" + (f"; did you mean --{hint}?" if hint else "")

    def flag_argv(self, name: str, value: Any) -> list[str]:
        spec = self.flag(name) or FlagSpec(name, "bool" if isinstance(value, bool) else "str")
        return spec.argv(value)

    def gpus_needed(self, params: Mapping[str, Any]) -> int:
        """How many GPUs one engine with `params` occupies (each GPU flag defaults to 1);
        aliases count as their flag (`tp` is `tp-size`)."""
        params = {self.canonical(k): v for k, v in params.items()}
        def degree(flag: str) -> int:
            value = params.get(flag)
            return max(1, int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else 1

        flags = [f for f in self.gpu_flags if not (f == self.dp_flag and self.dp_inside_tp
                                                   and params.get(self.dp_inside_tp) is True)]
        listed = params.get(self.gpu_list_flag) if self.gpu_list_flag else None
        gpus_listed = len([p for p in listed.split(",") if p.strip()]) if isinstance(listed, str) else 1
        return math.prod(degree(f) for f in flags) * max(1, gpus_listed)

    def on_gpu_share(self, params: Mapping[str, Any], share: float) -> dict[str, Any]:
        """`params` for an engine that may use `share` of each GPU (a slot of a split GPU):
        the memory fraction, the task's or the engine's default, is scaled by the share, so a
        searched fraction keeps its meaning relative to the slot. Raises ValueError for an
        engine with no such flag (it would take the whole GPU from the other slots)."""
        params = dict(params)
        if share >= 1.0:
            return params
        if self.memory_fraction_flag is None:
            raise ValueError(f"engine {self.name!r} has no memory-fraction flag (memory_fraction_flag), so it "
                             "cannot share a GPU; run it on a worker without --slots-per-gpu")
        key = next((k for k in params if self.canonical(k) == self.memory_fraction_flag), self.memory_fraction_flag)
        value = params.get(key)
        fraction = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else self.memory_fraction_default
        params[key] = round(fraction * share, 4)
        return params

    def command(self, launch: Launch, in_container: bool = False, python: str | None = None,
                llama_server: str = "llama-server") -> list[str]:
        """The engine's argv: the template filled in, then the launcher's extras, then the
        task's flags. Values are substituted per element, so nothing is ever a shell string.
        `python` replaces the worker's own interpreter (e.g. "python" for a command to show);
        `llama_server` is the llama-server executable (the process runtime passes its build)."""
        template = self.docker_command if in_container else self.process_command
        if template is None:
            raise UnknownEngine(f"engine {self.name!r} has no container command; run it with the process runtime")
        values = {"python": python or sys.executable, "llama_server": llama_server, "model": launch.model,
                  "host": launch.host, "port": str(launch.port), "num_gpus": str(launch.num_gpus),
                  "flavour": launch.flavour}
        def fill(part: str) -> str:
            return _PLACEHOLDER.sub(lambda m: values[m.group(1)], part)

        return [fill(part) for part in template] + list(launch.extra) + list(launch.flags)


def builtin_engines() -> dict[str, EngineSpec]:
    """The engines this package defines, whatever the operator's file says (validation falls
    back to them to keep checking a task when that file is broken)."""
    sglang = EngineSpec(
        name="sglang", label="SGLang", vocabulary=load_vocabulary("sglang"),
        process_command=("{python}", "-m", "sglang.launch_server", "--model-path", "{model}",
                         "--host", "{host}", "--port", "{port}"),
        docker_command=("python3", "-m", "sglang.launch_server", "--model-path", "{model}",
                        "--host", "{host}", "--port", "{port}"),
        image="lmsysorg/sglang", container_port=30000,
        reserved=_RUNTIME_OWNED | {"model-path", "tokenizer-path", "base-gpu-id", "gpu-id-step", "nnodes",
                                   "node-rank", "dist-init-addr", "admin-api-key"},
        gpu_flags=("tp-size", "pp-size", "dp-size"), dp_flag="dp-size", dp_inside_tp="enable-dp-attention",
        original_names={"tp_size": "tp-size", "pp_size": "pp-size", "dp_size": "dp-size",
                        "mem_frac": "mem-fraction-static", "mem_fraction": "mem-fraction-static"},
        memory_fraction_flag="mem-fraction-static", memory_fraction_default=0.88,
        constraints=RULES["sglang"], constraint_defaults=DEFAULTS["sglang"],
        parallel_keys={"tp": "tp-size", "pp": "pp-size", "dp": "dp-size", "ep": "ep-size",
                       "moe_dense_tp": "moe-dense-tp-size"},
    )
    vllm = EngineSpec(
        name="vllm", label="vLLM", vocabulary=load_vocabulary("vllm"),
        process_command=("{python}", "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}",
                         "--host", "{host}", "--port", "{port}"),
        # The vllm/vllm-openai image's entrypoint already is the OpenAI API server.
        docker_command=("--model", "{model}", "--host", "{host}", "--port", "{port}"),
        image="vllm/vllm-openai", container_port=8000,
        reserved=_RUNTIME_OWNED | {"model", "tokenizer", "uds", "data-parallel-address", "data-parallel-rpc-port",
                                   "headless", "root-path"},
        gpu_flags=("tensor-parallel-size", "pipeline-parallel-size", "data-parallel-size"),
        original_names={"tp_size": "tensor-parallel-size", "pp_size": "pipeline-parallel-size",
                        "dp_size": "data-parallel-size", "mem_frac": "gpu-memory-utilization",
                        "mem_fraction": "gpu-memory-utilization"},
        memory_fraction_flag="gpu-memory-utilization", memory_fraction_default=0.9,
        constraints=RULES["vllm"], constraint_defaults=DEFAULTS["vllm"],
        parallel_keys={"tp": "tensor-parallel-size", "pp": "pipeline-parallel-size", "dp": "data-parallel-size",
                       "dcp": "decode-context-parallel-size", "enable_expert_parallel": "enable-expert-parallel"},
        equivalents={"tp-size": "tensor-parallel-size", "pp-size": "pipeline-parallel-size",
                     "dp-size": "data-parallel-size", "mem-fraction-static": "gpu-memory-utilization",
                     "max-running-requests": "max-num-seqs"},
    )
    # The same names the other way round: a vLLM spelling in an SGLang task gets a hint too.
    sglang = replace(sglang, equivalents={v: k for k, v in vllm.equivalents.items()})
    llamacpp = EngineSpec(
        name="llamacpp", label="llama.cpp", vocabulary=load_vocabulary("llamacpp"),
        # The cached build (app.tools.llamacpp.build) or AUTOTUNER_LLAMA_SERVER; see the process runtime.
        process_command=("{llama_server}", "--model", "{model}", "--host", "{host}", "--port", "{port}"),
        # The published server images' entrypoint is llama-server itself.
        docker_command=("--model", "{model}", "--host", "{host}", "--port", "{port}"),
        image="ghcr.io/ggml-org/llama.cpp", image_tag="server-cuda", container_port=8080, model_is_file=True,
        reserved=_RUNTIME_OWNED | {
            "model", "model-url", "hf-repo", "hf-file", "hf-token", "docker-repo", "api-key-file", "ssl-key-file",
            "ssl-cert-file", "path", "api-prefix", "alias", "reuse-port", "slot-save-path", "media-path",
            "models-dir", "models-preset", "log-file", "log-prompts-dir", "mcp-servers-config", "mcp-servers-json", "offline", "webui-config-file", "chat-template-file", "lookup-cache-static", "lookup-cache-dynamic",
            "lora", "lora-scaled", "control-vector", "control-vector-scaled", "mmproj", "mmproj-url",
            "spec-draft-model", "spec-draft-hf", "help", "version", "cache-list", "completion-bash", "list-devices"},
        gpu_list_flag="tensor-split", runs_on_cpu=True, threads_flag="threads",
    )
    return {e.name: e for e in (sglang, vllm, llamacpp)}


# The simulated engine is a launcher, not a flag dialect: it speaks SGLang's or vLLM's flags
# (its `flavour`) and adds its own control options, which tasks may not set.
SIMULATOR = EngineSpec(
    name="sim", label="simulated engine", vocabulary=None,
    process_command=("{python}", "-m", "app.tools.simengine", "--engine", "{flavour}", "--model", "{model}",
                     "--host", "{host}", "--port", "{port}", "--num-gpus", "{num_gpus}"),
    docker_command=("python3", "-m", "app.tools.simengine", "--engine", "{flavour}", "--model", "{model}",
                    "--host", "{host}", "--port", "{port}", "--num-gpus", "{num_gpus}"),
    image="autotuner-sim", container_port=30000,
    reserved=_RUNTIME_OWNED | SIM_CONTROL_FLAGS | {"model", "model-path"},
    simulated=True, needs_gpu_devices=False, runs_on_cpu=True,
    # A health check waits for start-up up to a quarter second (the simulator's long poll):
    # a few requests per start instead of one every 20 ms; cancellation is seen as often.
    health_path="/health?wait=0.25",
)

_OPERATOR_KEYS = {"label", "command", "docker_command", "image", "container_port", "health_path", "flags",
                  "reserved", "gpu_flags", "simulated", "memory_fraction_flag", "memory_fraction_default"}


def _operator_engine(name: str, raw: dict[str, Any], base: EngineSpec | None) -> EngineSpec:
    """One entry of the operator's engines file: a new engine, or a built-in one with its
    command (and other fields) replaced, e.g. to run SGLang from another virtualenv."""
    unknown = set(raw) - _OPERATOR_KEYS
    if unknown:
        raise ValueError(f"engine {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
    fields: dict[str, Any] = {}
    if "command" in raw:
        fields["process_command"] = _argv_template(name, "command", raw["command"])
    if "docker_command" in raw:
        fields["docker_command"] = _argv_template(name, "docker_command", raw["docker_command"])
    for key in ("label", "image", "health_path"):
        if key in raw:
            fields[key] = str(raw[key])
    if "container_port" in raw:
        fields["container_port"] = int(raw["container_port"])
    if "simulated" in raw:
        fields["simulated"] = bool(raw["simulated"])
    if "flags" in raw:
        fields["vocabulary"] = vocabulary_from_dict({"engine": name, "version": "", "flags": raw["flags"]})
    if "gpu_flags" in raw:
        fields["gpu_flags"] = tuple(str(f) for f in raw["gpu_flags"])
    if "memory_fraction_flag" in raw:
        fields["memory_fraction_flag"] = str(raw["memory_fraction_flag"]).lstrip("-")
    if "memory_fraction_default" in raw:
        default = float(raw["memory_fraction_default"])
        if not 0 < default <= 1:
            raise ValueError(f"engine {name!r}: memory_fraction_default must be in (0, 1], got {default}")
        fields["memory_fraction_default"] = default
    reserved = frozenset(str(f).lstrip("-") for f in raw.get("reserved") or ())
    if base is not None:
        return replace(base, **fields, reserved=base.reserved | reserved)
    if "process_command" not in fields:
        raise ValueError(f"engine {name!r}: 'command' is required (an argv list with {{model}}, {{host}}, {{port}})")
    fields.setdefault("label", name)
    fields.setdefault("vocabulary", None)
    return EngineSpec(name=name, reserved=_RUNTIME_OWNED | reserved, **fields)


def _argv_template(name: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"engine {name!r}: {key} must be a non-empty list of strings (an argv, not a shell line)")
    return tuple(value)


@dataclass(frozen=True)
class _FileState:
    path: str
    mtime: float


def _load_operator_file(path: str) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the engines file must map engine names to their settings")
    return data.get("engines", data) if isinstance(data.get("engines"), dict) else data


_operator_file: str | None = None


def use_operator_file(path: str | None) -> None:
    """The operator's engines file (AUTOTUNER_ENGINES_FILE), named by the process's edge when
    it starts (app.config.install_for_domain); None: the built-in engines only."""
    global _operator_file
    _operator_file = path or None


def engines() -> dict[str, EngineSpec]:
    """Every engine: the built-in ones, overridden or extended by the operator's file.

    The file is re-read when it changes, so a long-running web process picks up a new engine.
    A broken file is an operator error that must not pass silently: it raises ValueError.
    """
    path = _operator_file
    state = None
    if path:
        try:
            state = _FileState(path, os.stat(path).st_mtime)
        except OSError as exc:
            raise ValueError(f"AUTOTUNER_ENGINES_FILE {path}: {exc.strerror}") from None
    return _table(state)


@lru_cache(maxsize=4)
def _table(state: _FileState | None) -> dict[str, EngineSpec]:
    """The engine table for one version of the operator's file (a failed read is not cached)."""
    table = builtin_engines()
    if state is not None:
        try:
            for name, raw in _load_operator_file(state.path).items():
                if not isinstance(raw, dict):
                    raise ValueError(f"engine {name!r}: expected a mapping of settings")
                if name == SIMULATOR.name or not name.replace("-", "").replace("_", "").isalnum():
                    raise ValueError(f"engine name {name!r} is reserved or not a plain name")
                table[name] = _operator_engine(name, raw, table.get(name))
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"AUTOTUNER_ENGINES_FILE {state.path}: {exc}") from None
    return table


def get_engine(name: str) -> EngineSpec:
    """The engine called `name` (`sim` is the simulated engine's launcher)."""
    if name == SIMULATOR.name:
        return SIMULATOR
    table = engines()
    if name not in table:
        raise UnknownEngine(f"unknown engine {name!r}; known engines: {', '.join(sorted(table))}")
    return table[name]


def allowed_images() -> list[str]:
    """Default container allow-list: the images of the registered engines."""
    return sorted({e.image for e in (*engines().values(), SIMULATOR) if e.image})
