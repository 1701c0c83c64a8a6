"""The task: the validated `TaskSpec` model and its derived views and launch helpers."""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from app.domain.limits import MAX_DESCRIPTION
from app.domain.engines import SIMULATOR, EngineSpec, Launch, get_engine
from app.domain.objectives import OBJECTIVES

from .domains import Domain
from .errors import format_loc
from .fields import OnForm
from .normalise import _derive
from .sections import (
    SLO,
    Benchmark,
    DeploymentMode,
    EngineName,
    ImageTag,
    ModelRef,
    Optimization,
    QuantConfig,
    RuntimeName,
    SimConfig,
    TaskName,
)
from .values import name_problem, value_problem


class TaskSpec(BaseModel):
    """A validated task. Treat as immutable: derived views are computed at validation."""

    model_config = ConfigDict(extra="forbid")

    task_name: Annotated[TaskName, OnForm("Task name", section="general")]
    description: Annotated[Annotated[str, Field(max_length=MAX_DESCRIPTION)] | None,
                           OnForm("Description", section="general")] = None
    model: ModelRef
    base_runtime: Annotated[RuntimeName, OnForm("Engine", section="engine", choices="engines")] = "sglang"
    # The engine whose flags the parameters are (sglang, vllm or an operator's own); resolved
    # from base_runtime, or inferred from the parameter names when base_runtime names an OME
    # ClusterServingRuntime. An extension of the original format.
    engine: EngineName | None = None
    runtime_image_tag: Annotated[ImageTag | None, OnForm("Image tag (docker)", section="engine", group="docker")] = None
    # resolved: "sim" if base_runtime is sim, else docker
    deployment_mode: Annotated[DeploymentMode | None, OnForm("Deployment mode", section="engine")] = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    parallel_config: dict[str, Any] | None = None
    quant_config: QuantConfig | None = None
    optimization: Optimization = Field(default_factory=Optimization)
    benchmark: Benchmark = Field(default_factory=Benchmark)
    slo: SLO | None = None
    sim: SimConfig | None = None
    clusterbasemodel_config: dict[str, Any] | None = None  # OME only; kept
    clusterservingruntime_config: dict[str, Any] | None = None  # OME only; kept

    _search_space: dict[str, Domain] = PrivateAttr(default_factory=dict)
    _notes: list[str] = PrivateAttr(default_factory=list)
    _configs: list[dict[str, Any]] = PrivateAttr(default_factory=list)
    _launcher: str = PrivateAttr(default="sglang")

    @model_validator(mode="after")
    def _resolve(self) -> "TaskSpec":
        d = _derive({name: getattr(self, name) for name in type(self).model_fields})
        if d.errors:
            raise ValueError("; ".join(f"{format_loc(e['loc'])}: {e['msg']}" for e in d.errors))
        self.deployment_mode = d.deployment_mode  # type: ignore[assignment]
        self.engine = d.engine
        self.optimization.max_iterations = d.max_iterations
        if self.optimization.objectives:
            self.optimization.objective = self.optimization.objectives[0]
        self.sim = d.sim
        self._search_space, self._notes, self._configs, self._launcher = d.search_space, d.notes, d.configs, d.launcher
        return self

    # -- derived views ------------------------------------------------------------------

    @property
    def search_space(self) -> dict[str, Domain]:
        """Normalised domains keyed by engine flag name (no dashes)."""
        return self._search_space

    @property
    def notes(self) -> list[str]:
        """Human-readable warnings: what was renamed, ignored or not applied, and why."""
        return self._notes

    @property
    def list_configs(self) -> list[dict[str, Any]]:
        """strategy "list": the configs with normalised names and fixed parameters filled in."""
        return self._configs

    @property
    def engine_spec(self) -> EngineSpec:
        """The registry entry of the engine whose flags this task tunes."""
        return get_engine(self.engine or "sglang")

    @property
    def launcher(self) -> EngineSpec:
        """What starts the engine: the engine itself, or the simulator speaking its flags."""
        return SIMULATOR if self._launcher == SIMULATOR.name else self.engine_spec

    @property
    def objective_direction(self) -> Literal["minimize", "maximize"]:
        return OBJECTIVES[self.optimization.objective].direction  # type: ignore[return-value]

    @property
    def objective_names(self) -> list[str]:
        """The objectives in order: several for a multi-objective task, else the one."""
        return list(self.optimization.objectives or [self.optimization.objective])

    @property
    def multi_objective(self) -> bool:
        return len(self.objective_names) > 1

    @property
    def uses_rate_search(self) -> bool:
        """The levels are the rates of a search for the highest sustainable rate."""
        return OBJECTIVES[self.optimization.objective].needs == "rate_search"

    def grid_size(self) -> int | None:
        """Number of distinct parameter sets of the search space; None if it is infinite."""
        if any(not dom.is_finite for dom in self._search_space.values()):
            return None
        return math.prod(dom.size() for dom in self._search_space.values())

    # -- launching ----------------------------------------------------------------------

    def gpus_needed(self, params: dict[str, Any]) -> int:
        """GPUs one engine with `params` occupies (tp × pp × dp for SGLang and vLLM; SGLang
        with --enable-dp-attention runs the dp replicas inside the tp group)."""
        return self.engine_spec.gpus_needed(params)

    def launch_flags(self, params: dict[str, Any], gpu_share: float = 1.0) -> list[str]:
        """argv fragment for one parameter set; re-checks names and values (they may come
        from a database, not from this file). `gpu_share` < 1: the engine runs in a slot of
        a split GPU and its memory fraction is scaled to it (EngineSpec.on_gpu_share)."""
        argv: list[str] = []
        engine = self.engine_spec
        for name, value in engine.on_gpu_share(params, gpu_share).items():
            problem = name_problem(name) or (None if value is None else value_problem(value))
            if problem:
                raise ValueError(f"refusing to build flag --{name}: {problem}")
            argv += engine.flag_argv(name, value)
        return argv

    def launch_command(self, params: dict[str, Any], port: int = 30000) -> list[str]:
        """The full command a user would run to start this engine with `params`."""
        launch = Launch(model=self.model.id_or_path, host="0.0.0.0", port=port, num_gpus=self.gpus_needed(params),
                        flags=tuple(self.launch_flags(params)))
        return self.engine_spec.command(launch, python="python")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able task with defaults resolved; `parse_task(spec.to_dict())` gives it back."""
        return self.model_dump(mode="json", exclude_none=True)
