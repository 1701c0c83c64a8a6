"""Inference engines: the registry of what the tuner can launch, their flag vocabularies,
and the classification of their failures.

This package is pure knowledge (no database, no broker, no processes), so the task spec,
the web app and the workers all read the same facts from one place.
"""
from .failures import FAILURE_KINDS, FailureKind, classify_failure
from .flags import FlagSpec, Vocabulary
from .registry import SIMULATOR, EngineSpec, Launch, UnknownEngine, allowed_images, engines, get_engine

__all__ = [
    "FAILURE_KINDS",
    "SIMULATOR",
    "EngineSpec",
    "FailureKind",
    "FlagSpec",
    "Launch",
    "UnknownEngine",
    "Vocabulary",
    "allowed_images",
    "classify_failure",
    "engines",
    "get_engine",
]
