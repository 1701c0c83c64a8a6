"""The environment an engine sees: an allow-list, never the worker's whole environment.

Why: engines run model code (`--trust-remote-code` runs the model repository's Python), so
anything in their environment is readable by code we did not write. The worker's own
environment holds the tuner's secrets and connection strings (`AUTOTUNER_AUTH_TOKEN`,
`DATABASE_URL`, `CELERY_BROKER_URL`, ...). An engine gets what engines need (Hugging Face
access and caches, CUDA / NCCL / PyTorch / engine tuning variables, locale, and for a local
process PATH and HOME) plus the names the operator lists in `AUTOTUNER_ENGINE_ENV`; the
tuner's own variables are refused even when listed.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Mapping

# Passed to every engine, local or containerised.
ENGINE_VARS = (
    "HF_*", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_*", "CUDA_*", "NCCL_*", "NVIDIA_*", "TORCH_*",
    "TORCHINDUCTOR_*", "TRITON_*", "PYTORCH_*", "VLLM_*", "SGLANG_*", "SGL_*", "FLASHINFER_*", "OMP_NUM_THREADS",
    "TOKENIZERS_PARALLELISM", "TZ", "LANG", "LANGUAGE", "LC_*",
)
# Only for a local process: they describe this host (a container has its own).
HOST_VARS = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV",
             "XDG_CACHE_HOME", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
# Never passed, whatever the allow-list says: the tuner's configuration and its secrets.
NEVER = ("AUTOTUNER_*", "DATABASE_URL", "CELERY_*", "FLOWER_*", "REDIS_*", "*PASSWORD*", "*SECRET*",
         "PG*", "AWS_SECRET*")
# Set by the runtime for the experiment's GPUs; inherited values would point elsewhere.
RUNTIME_SET = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


def _matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def operator_names(raw: str | None = None) -> list[str]:
    """Names (or shell-style patterns such as `MY_ENGINE_*`) from `AUTOTUNER_ENGINE_ENV`."""
    raw = os.environ.get("AUTOTUNER_ENGINE_ENV", "") if raw is None else raw
    return [n.strip() for n in raw.split(",") if n.strip()]


def engine_environment(
    source: Mapping[str, str] | None = None, *, local: bool, extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables of `source` (default: this process) an engine may see, plus `extra`
    (values the runtime sets, e.g. CUDA_VISIBLE_DEVICES). `local` adds the host variables a
    local process needs to find its interpreter and libraries."""
    source = os.environ if source is None else source
    allowed = list(ENGINE_VARS) + (list(HOST_VARS) if local else []) + operator_names()
    env = {
        name: value for name, value in source.items()
        if _matches(name, allowed) and not _matches(name, NEVER) and name not in RUNTIME_SET
    }
    env.update(extra or {})
    return env
