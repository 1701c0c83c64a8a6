"""Engine naming: which engine a task runs, and original-format names -> engine flags."""
from __future__ import annotations

from typing import Iterable

from app.domain.engines import EngineSpec, engines

# quant_config dtypes that mean "the engine's default": no flag is passed for them.
_GEMM_OFF = {"auto", "bf16", "bfloat16", "none"}
_KV_OFF = {"auto"}
# The engine the original project ran when nothing says otherwise.
DEFAULT_ENGINE = "sglang"


def engine_of(base_runtime: str) -> str | None:
    """The engine a `base_runtime` names: a registered engine ("sglang", "vllm", an operator's
    own), or an OME runtime preset spelled after its engine ("sglang-llama-small"); None for
    anything else (e.g. a ClusterServingRuntime called "llama-3-2-1b-instruct-rt")."""
    table = engines()
    if base_runtime in table:
        return base_runtime
    head = base_runtime.split("-", 1)[0]
    return head if head in ("sglang", "vllm") else None


def normalise_name(raw: str, engine: EngineSpec) -> str:
    """Original-format parameter name -> engine flag name without dashes."""
    name = raw.lstrip("-")
    if name in engine.original_names:
        return engine.original_names[name]
    return name.replace("_", "-")


def infer_engine(names: Iterable[str]) -> tuple[str, str]:
    """The built-in engine whose vocabulary knows the most of `names` (ties go to SGLang,
    the original project's engine), with the reason in words for the task's notes."""
    names = [n for n in names if isinstance(n, str)]
    scores = {}
    for name, spec in engines().items():
        if spec.vocabulary is None or name not in ("sglang", "vllm"):
            continue
        known = sum(1 for n in names if spec.vocabulary.canonical(normalise_name(n, spec)) is not None)
        scores[name] = known
    best = max(scores, key=lambda e: (scores[e], e == DEFAULT_ENGINE))
    if not names:
        return DEFAULT_ENGINE, f"no parameters name an engine; {DEFAULT_ENGINE} is assumed"
    return best, f"{scores[best]} of {len(names)} parameter name(s) are {best} flags"
